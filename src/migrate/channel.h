/*
 * channel.h - the byte pipe a migration stream runs over.
 *
 * A channel is plain TCP, TLS 1.3 over TCP, or any file descriptor (a
 * saved file, a pipe, a socketpair in the tests), behind one small set of
 * calls: read, writev, wait until readable, close. The stream library
 * (stream.c) uses nothing else, so multi-channel and disk streams reuse
 * the same transport.
 *
 * Who may use a channel (DESIGN.md "Control socket"):
 *   - TLS (`--tls-creds DIR`, QEMU's file layout): TLS 1.3 only, both
 *     sides present a certificate signed by DIR/ca-cert.pem and check the
 *     other's; the source also checks that the destination's certificate
 *     names the host it connected to.
 *   - a shared secret (`--incoming tcp:H:P,secret-file=F` on the
 *     destination, `secret_file` in `migrate`): challenge and response
 *     before anything else, HMAC-SHA256 over both sides' fresh nonces, in
 *     both directions, so neither side talks to a peer that does not know
 *     the secret and a recorded exchange cannot be replayed. Without TLS
 *     this authenticates the peers, it does not encrypt the stream.
 *   - both (TLS first, the secret inside), or neither: a destination with
 *     neither accepts anyone who reaches its port.
 *
 * I/O errors come back as -1 with errno: ETIMEDOUT (the peer was silent
 * for the channel's timeout), ECANCELED (the cancel descriptor became
 * readable: the process is quitting), EPROTO (TLS; mig_channel_error()
 * says what), or the system's own.
 */
#ifndef FERRY_CHANNEL_H
#define FERRY_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define MIG_SECRET_MIN 16       /* bytes */
#define MIG_SECRET_MAX 4096
#define MIG_CHANNEL_IO_TIMEOUT_MS 10000 /* a secured channel's peer silent this long is dead */

struct mig_channel;
struct mig_tls;                 /* certificates loaded from --tls-creds DIR */

struct mig_secret {
	uint8_t key[MIG_SECRET_MAX];
	size_t len;                     /* 0: none */
};

/* What this side requires of its peer and proves to it (either may be
 * NULL or empty). */
struct mig_auth {
	const struct mig_tls *tls;
	const struct mig_secret *secret;
};

/* ---- credentials ----------------------------------------------------------------- */
/* Load DIR/ca-cert.pem and whichever of the server and client key pairs
 * exist (at least one). NULL with the reason in err. */
struct mig_tls *mig_tls_load(const char *dir, char *err, size_t errlen);
void mig_tls_free(struct mig_tls *tls);
bool mig_tls_can_serve(const struct mig_tls *tls);     /* server-cert.pem, -key */
bool mig_tls_can_connect(const struct mig_tls *tls);   /* client-cert.pem, -key */
/* Read a secret file (trailing newline dropped): 0, or -1 with err. */
int mig_secret_load(const char *path, struct mig_secret *out, char *err, size_t errlen);
/* "TLS", "secret", "TLS and secret" or "nothing": for messages. */
const char *mig_auth_describe(const struct mig_auth *auth);

/* ---- setting up -------------------------------------------------------------------- */
/* A channel over an fd the caller keeps (closes it after the channel);
 * NULL when out of memory. */
struct mig_channel *mig_channel_wrap(int fd);
/* Secure a connected TCP socket as its client (the source): TLS with the
 * server's certificate checked against host, then the secret, as auth
 * says, within timeout_ms. The channel owns fd from here on, also on
 * failure. NULL with the reason in err. */
struct mig_channel *mig_channel_client(int fd, const char *host, const struct mig_auth *auth,
				       int timeout_ms, char *err, size_t errlen);
/* The same as the server (the destination, on an accepted socket),
 * stopping early if cancel_fd (>= 0) becomes readable. */
struct mig_channel *mig_channel_server(int fd, const struct mig_auth *auth, int timeout_ms,
				       int cancel_fd, char *err, size_t errlen);

/* ---- I/O ----------------------------------------------------------------------------- */
/* Like read(2): >0 bytes, 0 at the end, -1 with errno. */
ssize_t mig_channel_read(struct mig_channel *c, void *buf, size_t n);
/* Like writev(2), without SIGPIPE: bytes written (maybe fewer), or -1. */
ssize_t mig_channel_writev(struct mig_channel *c, const struct iovec *iov, int cnt);
/* 1 when a read would not wait, 0 after timeout_ms (-1: forever), -1 on error. */
int mig_channel_wait_readable(struct mig_channel *c, int timeout_ms);
/* A peer silent this long fails the I/O with ETIMEDOUT (0: wait forever). */
void mig_channel_set_timeout(struct mig_channel *c, int timeout_ms);
/* No wait goes past ms_from_now from now (0: no such bound), whatever
 * the timeout: bounds a whole exchange, not each silence. */
void mig_channel_set_deadline(struct mig_channel *c, int ms_from_now);
/* Reads fail with ECANCELED once fd is readable (-1: never). */
void mig_channel_set_cancel_fd(struct mig_channel *c, int fd);
int mig_channel_fd(const struct mig_channel *c);
/* The last TLS error as a sentence, or "". */
const char *mig_channel_error(const struct mig_channel *c);
/* End it: a TLS close notify if possible, then close the fd if owned. */
void mig_channel_close(struct mig_channel *c);

#endif
