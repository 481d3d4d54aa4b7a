/*
 * channel.c - the byte pipe under a migration stream (see channel.h).
 *
 * Plain channels read and write the fd directly; with a timeout or a
 * cancel descriptor set, every wait is a poll() on the fd and the cancel
 * descriptor first. TLS channels put the socket in non-blocking mode and
 * loop on GnuTLS's "again" answers with the same poll, so a peer that
 * stops half-way through a record still times out; data GnuTLS already
 * decrypted counts as readable without touching the socket. One thread
 * may read while another writes (post-copy does; GnuTLS allows it for TLS
 * 1.3 sessions).
 *
 * The secret exchange (after TLS, when both are used), 8-byte magics and
 * 32-byte nonces and MACs:
 *   destination -> source   "FERRYKEY" u32 version=1 u32 0  nonce_d
 *   source -> destination   nonce_s  HMAC(K, "ferry source" nonce_d nonce_s)
 *   destination -> source   HMAC(K, "ferry destination" nonce_d nonce_s)
 * Each side checks the other's MAC (constant time) before the migration
 * stream's own header is sent. A wrong MAC closes the connection without
 * a word: a guessing peer learns nothing but that it failed.
 */
#include "migrate/channel.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TLS_PRIORITY    "NORMAL:-VERS-ALL:+VERS-TLS1.3"
#define AUTH_MAGIC      "FERRYKEY"
#define AUTH_VERSION    1u
#define NONCE_BYTES     32
#define MAC_BYTES       32      /* HMAC-SHA256 */
#define TLS_CHUNK       (16u << 10)     /* one TLS record's worth */

struct mig_tls {
	gnutls_certificate_credentials_t server;        /* NULL: no server pair */
	gnutls_certificate_credentials_t client;        /* NULL: no client pair */
};

struct mig_channel {
	int fd;
	bool owns_fd;
	bool is_socket;
	int timeout_ms;                 /* 0: wait forever */
	int64_t deadline_ms;            /* 0: none; else no wait goes past it */
	int cancel_fd;                  /* -1: none */
	gnutls_session_t tls;           /* NULL: plain */
	char host[256];                 /* what the server's certificate must name */
	char error[256];
};

/* ---- credentials ----------------------------------------------------------------- */

static bool file_exists(const char *dir, const char *name, char *path, size_t len)
{
	snprintf(path, len, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/* One key pair with the CA: NULL and err if anything is wrong. */
static gnutls_certificate_credentials_t load_pair(const char *ca, const char *cert,
						  const char *key, char *err, size_t errlen)
{
	gnutls_certificate_credentials_t c;
	if (gnutls_certificate_allocate_credentials(&c) < 0) {
		snprintf(err, errlen, "out of memory for TLS credentials");
		return NULL;
	}
	int r = gnutls_certificate_set_x509_trust_file(c, ca, GNUTLS_X509_FMT_PEM);
	if (r <= 0) {
		snprintf(err, errlen, "%s: %s", ca, r < 0 ? gnutls_strerror(r)
							 : "no CA certificate in it");
		gnutls_certificate_free_credentials(c);
		return NULL;
	}
	r = gnutls_certificate_set_x509_key_file(c, cert, key, GNUTLS_X509_FMT_PEM);
	if (r < 0) {
		snprintf(err, errlen, "%s with %s: %s", cert, key, gnutls_strerror(r));
		gnutls_certificate_free_credentials(c);
		return NULL;
	}
	return c;
}

/* The pair NAME-cert.pem, NAME-key.pem if present: 0 (maybe none), -1. */
static int load_role(const char *dir, const char *ca, const char *role,
		     gnutls_certificate_credentials_t *out, char *err, size_t errlen)
{
	char cert[4200], key[4200], name[32];
	snprintf(name, sizeof(name), "%s-cert.pem", role);
	bool have_cert = file_exists(dir, name, cert, sizeof(cert));
	snprintf(name, sizeof(name), "%s-key.pem", role);
	bool have_key = file_exists(dir, name, key, sizeof(key));
	*out = NULL;
	if (!have_cert && !have_key)
		return 0;
	if (have_cert != have_key) {
		snprintf(err, errlen, "%s: has %s-%s.pem but not %s-%s.pem", dir, role,
			 have_cert ? "cert" : "key", role, have_cert ? "key" : "cert");
		return -1;
	}
	*out = load_pair(ca, cert, key, err, errlen);
	return *out ? 0 : -1;
}

struct mig_tls *mig_tls_load(const char *dir, char *err, size_t errlen)
{
	char ca[4200];
	if (!file_exists(dir, "ca-cert.pem", ca, sizeof(ca))) {
		snprintf(err, errlen, "%s: %s", ca, strerror(errno));
		return NULL;
	}
	struct mig_tls *t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (load_role(dir, ca, "server", &t->server, err, errlen) ||
	    load_role(dir, ca, "client", &t->client, err, errlen)) {
		mig_tls_free(t);
		return NULL;
	}
	if (!t->server && !t->client) {
		snprintf(err, errlen, "%s holds neither server-cert.pem and server-key.pem "
			 "nor client-cert.pem and client-key.pem", dir);
		mig_tls_free(t);
		return NULL;
	}
	return t;
}

void mig_tls_free(struct mig_tls *t)
{
	if (!t)
		return;
	if (t->server)
		gnutls_certificate_free_credentials(t->server);
	if (t->client)
		gnutls_certificate_free_credentials(t->client);
	free(t);
}

bool mig_tls_can_serve(const struct mig_tls *t) { return t && t->server; }
bool mig_tls_can_connect(const struct mig_tls *t) { return t && t->client; }

int mig_secret_load(const char *path, struct mig_secret *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
		return -1;
	}
	uint8_t buf[MIG_SECRET_MAX + 2];
	size_t n = 0;
	ssize_t r;
	while (n < sizeof(buf) && (r = read(fd, buf + n, sizeof(buf) - n)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "secret file %s: %s", path, strerror(errno));
			close(fd);
			return -1;
		}
		n += (size_t)r;
	}
	close(fd);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	if (n < MIG_SECRET_MIN || n > MIG_SECRET_MAX) {
		snprintf(err, errlen, "secret file %s: %zu bytes; want %d to %d (for example "
			 "head -c 32 /dev/urandom | base64 > FILE)", path, n, MIG_SECRET_MIN,
			 MIG_SECRET_MAX);
		explicit_bzero(buf, sizeof(buf));
		return -1;
	}
	memcpy(out->key, buf, n);
	out->len = n;
	explicit_bzero(buf, sizeof(buf));
	return 0;
}

const char *mig_auth_describe(const struct mig_auth *a)
{
	bool tls = a && a->tls, secret = a && a->secret && a->secret->len;
	return tls && secret ? "TLS and secret" : tls ? "TLS" : secret ? "secret" : "nothing";
}

/* ---- waiting ------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for events on the fd, at most timeout_ms (<0: forever); the cancel
 * descriptor ends the wait when `cancellable`. 0, or -1 with errno. */
static int wait_for(struct mig_channel *c, short events, int timeout_ms, bool cancellable)
{
	struct pollfd p[2] = {
		{ .fd = c->fd, .events = events },
		{ .fd = cancellable ? c->cancel_fd : -1, .events = POLLIN },
	};
	int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : 0;
	for (;;) {
		int left = -1;
		if (timeout_ms >= 0) {
			int64_t l = deadline - now_ms();
			left = l > 0 ? (int)l : 0;
		}
		int r = poll(p, 2, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (p[1].revents) {
			errno = ECANCELED;
			return -1;
		}
		if (p[0].revents)
			return 0;
		if (r == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
	}
}

static int io_timeout(const struct mig_channel *c)
{
	int t = c->timeout_ms > 0 ? c->timeout_ms : -1;
	if (c->deadline_ms) {
		int64_t left = c->deadline_ms - now_ms();
		if (left < 0)
			left = 0;
		if (t < 0 || left < t)
			t = (int)left;
	}
	return t;
}

/* ---- plain I/O ---------------------------------------------------------------------- */

static bool fd_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

static ssize_t plain_read(struct mig_channel *c, void *buf, size_t n)
{
	bool waits = c->timeout_ms > 0 || c->deadline_ms || c->cancel_fd >= 0;
	for (;;) {
		if (waits && wait_for(c, POLLIN, io_timeout(c), true))
			return -1;
		ssize_t r = read(c->fd, buf, n);
		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if ((errno == EAGAIN || errno == EWOULDBLOCK) && fd_nonblocking(c->fd)) {
			if (wait_for(c, POLLIN, io_timeout(c), true))
				return -1;
			continue;
		}
		return -1;
	}
}

static ssize_t plain_writev(struct mig_channel *c, const struct iovec *iov, int cnt)
{
	for (;;) {
		if ((c->timeout_ms > 0 || c->deadline_ms) &&
		    wait_for(c, POLLOUT, io_timeout(c), false))
			return -1;
		ssize_t r;
		if (c->is_socket) {
			struct msghdr mh = { .msg_iov = (struct iovec *)iov,
					     .msg_iovlen = (size_t)cnt };
			r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		} else {
			r = writev(c->fd, iov, cnt);
		}
		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if ((errno == EAGAIN || errno == EWOULDBLOCK) && fd_nonblocking(c->fd)) {
			if (wait_for(c, POLLOUT, io_timeout(c), false))
				return -1;
			continue;
		}
		return -1;
	}
}

/* ---- TLS I/O ------------------------------------------------------------------------ */

static int tls_failed(struct mig_channel *c, const char *what, int code)
{
	snprintf(c->error, sizeof(c->error), "TLS %s: %s", what, gnutls_strerror(code));
	errno = EPROTO;
	return -1;
}

/* Which way GnuTLS is waiting after an "again". */
static short tls_direction(struct mig_channel *c)
{
	return gnutls_record_get_direction(c->tls) ? POLLOUT : POLLIN;
}

static ssize_t tls_read(struct mig_channel *c, void *buf, size_t n)
{
	for (;;) {
		ssize_t r = gnutls_record_recv(c->tls, buf, n);
		if (r >= 0)
			return r;
		if (r == GNUTLS_E_PREMATURE_TERMINATION)
			return 0;       /* the peer closed without a close notify */
		if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
			/* TLS 1.3: a client learns only now that the server
			 * refused its certificate */
			snprintf(c->error, sizeof(c->error), "TLS: the peer ended the session "
				 "with alert '%s' (does it trust our certificate?)",
				 gnutls_alert_get_name(gnutls_alert_get(c->tls)));
			errno = EPROTO;
			return -1;
		}
		if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED)
			return tls_failed(c, "receive", (int)r);
		if (wait_for(c, tls_direction(c), io_timeout(c), true))
			return -1;
	}
}

static ssize_t tls_send(struct mig_channel *c, const void *data, size_t n)
{
	for (;;) {
		ssize_t r = gnutls_record_send(c->tls, data, n);
		if (r >= 0)
			return r;
		if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) {
			if (r == GNUTLS_E_PUSH_ERROR) {
				errno = EPIPE;
				return -1;
			}
			return tls_failed(c, "send", (int)r);
		}
		/* GnuTLS wants the same call again once the socket has room */
		if (wait_for(c, POLLOUT, io_timeout(c), false))
			return -1;
	}
}

static ssize_t tls_writev(struct mig_channel *c, const struct iovec *iov, int cnt)
{
	size_t done = 0;
	for (int i = 0; i < cnt; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;
		while (left) {
			size_t k = left < TLS_CHUNK ? left : TLS_CHUNK;
			ssize_t r = tls_send(c, p, k);
			if (r < 0)
				return done ? (ssize_t)done : -1;
			p += r;
			left -= (size_t)r;
			done += (size_t)r;
		}
	}
	return (ssize_t)done;
}

/* ---- the public I/O calls ---------------------------------------------------------- */

ssize_t mig_channel_read(struct mig_channel *c, void *buf, size_t n)
{
	return c->tls ? tls_read(c, buf, n) : plain_read(c, buf, n);
}

ssize_t mig_channel_writev(struct mig_channel *c, const struct iovec *iov, int cnt)
{
	return c->tls ? tls_writev(c, iov, cnt) : plain_writev(c, iov, cnt);
}

int mig_channel_wait_readable(struct mig_channel *c, int timeout_ms)
{
	if (c->tls && gnutls_record_check_pending(c->tls) > 0)
		return 1;
	if (wait_for(c, POLLIN, timeout_ms, true) == 0)
		return 1;
	return errno == ETIMEDOUT ? 0 : -1;
}

void mig_channel_set_timeout(struct mig_channel *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

void mig_channel_set_deadline(struct mig_channel *c, int ms_from_now)
{
	c->deadline_ms = ms_from_now > 0 ? now_ms() + ms_from_now : 0;
}

void mig_channel_set_cancel_fd(struct mig_channel *c, int fd)
{
	c->cancel_fd = fd;
}

int mig_channel_fd(const struct mig_channel *c) { return c->fd; }
const char *mig_channel_error(const struct mig_channel *c) { return c->error; }

/* ---- life cycle ---------------------------------------------------------------------- */

static struct mig_channel *channel_new(int fd, bool owns_fd)
{
	struct mig_channel *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	int type;
	socklen_t len = sizeof(type);
	c->fd = fd;
	c->owns_fd = owns_fd;
	c->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
	c->cancel_fd = -1;
	return c;
}

struct mig_channel *mig_channel_wrap(int fd)
{
	return channel_new(fd, false);
}

void mig_channel_close(struct mig_channel *c)
{
	if (!c)
		return;
	if (c->tls) {
		/* a close notify if the socket takes it now; never wait */
		gnutls_bye(c->tls, GNUTLS_SHUT_WR);
		gnutls_deinit(c->tls);
	}
	if (c->owns_fd && c->fd >= 0)
		close(c->fd);
	free(c);
}

/* Fail setting up: the reason to err, the channel (and its fd) closed. */
static struct mig_channel *setup_failed(struct mig_channel *c, char *err, size_t errlen,
					const char *fmt, const char *detail)
{
	snprintf(err, errlen, fmt, detail);
	mig_channel_close(c);
	return NULL;
}

/* ---- TLS handshake ---------------------------------------------------------------- */

static const char *verify_status_text(struct mig_channel *c, char *buf, size_t len)
{
	gnutls_datum_t out = { NULL, 0 };
	unsigned status = gnutls_session_get_verify_cert_status(c->tls);
	if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0))
		snprintf(buf, len, "verification status %#x", status);
	else
		snprintf(buf, len, "%s", out.data);
	gnutls_free(out.data);
	return buf;
}

static bool host_is_address(const char *host)
{
	unsigned char a[16];
	return strchr(host, ':') || (sscanf(host, "%hhu.%hhu.%hhu.%hhu", &a[0], &a[1], &a[2],
					    &a[3]) == 4);
}

static int tls_start(struct mig_channel *c, const struct mig_tls *tls, bool server,
		     int timeout_ms, char *err, size_t errlen)
{
	const char *role = server ? "destination" : "source";
	gnutls_certificate_credentials_t cred = server ? tls->server : tls->client;
	if (!cred) {
		snprintf(err, errlen, "the --tls-creds directory has no %s-cert.pem and "
			 "%s-key.pem, which a TLS %s needs", server ? "server" : "client",
			 server ? "server" : "client", role);
		return -1;
	}
	int r = gnutls_init(&c->tls, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK);
	if (r < 0) {
		c->tls = NULL;
		snprintf(err, errlen, "TLS: %s", gnutls_strerror(r));
		return -1;
	}
	if ((r = gnutls_priority_set_direct(c->tls, TLS_PRIORITY, NULL)) < 0 ||
	    (r = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, cred)) < 0) {
		snprintf(err, errlen, "TLS set-up: %s", gnutls_strerror(r));
		return -1;
	}
	if (server) {
		gnutls_certificate_server_set_request(c->tls, GNUTLS_CERT_REQUIRE);
		gnutls_session_set_verify_cert(c->tls, NULL, 0);
	} else {
		if (!host_is_address(c->host))
			gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, c->host, strlen(c->host));
		gnutls_session_set_verify_cert(c->tls, c->host, 0);
	}
	int flags = fcntl(c->fd, F_GETFL);
	if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK)) {
		snprintf(err, errlen, "TLS set-up: %s", strerror(errno));
		return -1;
	}
	gnutls_transport_set_int(c->tls, c->fd);
	int64_t deadline = now_ms() + timeout_ms;
	while ((r = gnutls_handshake(c->tls)) < 0) {
		char why[256];
		if (gnutls_error_is_fatal(r))
			gnutls_alert_send_appropriate(c->tls, r);       /* best effort */
		if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
			snprintf(err, errlen, "TLS: the %s's certificate is refused: %s",
				 server ? "source" : "destination",
				 verify_status_text(c, why, sizeof(why)));
			return -1;
		}
		if (gnutls_error_is_fatal(r)) {
			snprintf(err, errlen, "TLS handshake failed: %s", gnutls_strerror(r));
			return -1;
		}
		int64_t left = deadline - now_ms();
		if (wait_for(c, tls_direction(c), left > 0 ? (int)left : 0, true)) {
			snprintf(err, errlen, "TLS handshake: %s", errno == ETIMEDOUT
				 ? "the peer did not complete it in time" : strerror(errno));
			return -1;
		}
	}
	/* belt and braces: a certificate was presented and it verified */
	unsigned status = 1;
	if (!gnutls_certificate_get_peers(c->tls, NULL) ||
	    gnutls_certificate_verify_peers2(c->tls, &status) < 0 || status) {
		snprintf(err, errlen, "TLS: the %s presented no valid certificate",
			 server ? "source" : "destination");
		return -1;
	}
	if (gnutls_protocol_get_version(c->tls) != GNUTLS_TLS1_3) {
		snprintf(err, errlen, "TLS: the peer did not negotiate TLS 1.3");
		return -1;
	}
	return 0;
}

/* ---- the secret exchange --------------------------------------------------------------- */

/* Read or write exactly n bytes within the deadline. */
static int exact_io(struct mig_channel *c, void *buf, size_t n, bool reading,
		    int64_t deadline)
{
	uint8_t *p = buf;
	int saved = c->timeout_ms;
	while (n) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			c->timeout_ms = saved;
			return -1;
		}
		c->timeout_ms = (int)left;
		ssize_t r;
		if (reading) {
			r = mig_channel_read(c, p, n);
		} else {
			struct iovec iov = { p, n };
			r = mig_channel_writev(c, &iov, 1);
		}
		if (r == 0 && reading) {
			errno = ECONNRESET;
			r = -1;
		}
		if (r < 0) {
			c->timeout_ms = saved;
			return -1;
		}
		p += r;
		n -= (size_t)r;
	}
	c->timeout_ms = saved;
	return 0;
}

static void auth_mac(const struct mig_secret *k, const char *label, const uint8_t *nonce_d,
		     const uint8_t *nonce_s, uint8_t *mac)
{
	uint8_t text[32 + 2 * NONCE_BYTES];
	size_t n = strlen(label);
	memcpy(text, label, n);
	memcpy(text + n, nonce_d, NONCE_BYTES);
	memcpy(text + n + NONCE_BYTES, nonce_s, NONCE_BYTES);
	gnutls_hmac_fast(GNUTLS_MAC_SHA256, k->key, k->len, text, n + 2 * NONCE_BYTES, mac);
}

static const char *io_reason(struct mig_channel *c, const char *closed)
{
	if (errno == ETIMEDOUT)
		return "the peer did not answer in time";
	if (errno == ECONNRESET || errno == EPIPE)
		return closed;
	if (errno == EPROTO)
		return c->error;
	return strerror(errno);
}

static int secret_server(struct mig_channel *c, const struct mig_secret *k, int64_t deadline,
			 char *err, size_t errlen)
{
	uint8_t hello[16 + NONCE_BYTES], answer[NONCE_BYTES + MAC_BYTES], mac[MAC_BYTES];
	memcpy(hello, AUTH_MAGIC, 8);
	for (int i = 0; i < 4; i++)
		hello[8 + i] = (uint8_t)(AUTH_VERSION >> (8 * i));
	memset(hello + 12, 0, 4);
	uint8_t *nonce_d = hello + 16, *nonce_s = answer, *their_mac = answer + NONCE_BYTES;
	if (gnutls_rnd(GNUTLS_RND_NONCE, nonce_d, NONCE_BYTES)) {
		snprintf(err, errlen, "secret: no random numbers");
		return -1;
	}
	if (exact_io(c, hello, sizeof(hello), false, deadline) ||
	    exact_io(c, answer, sizeof(answer), true, deadline)) {
		snprintf(err, errlen, "secret: %s", io_reason(c, "the peer closed the connection"));
		return -1;
	}
	auth_mac(k, "ferry source", nonce_d, nonce_s, mac);
	if (gnutls_memcmp(mac, their_mac, MAC_BYTES)) {
		snprintf(err, errlen, "secret: the peer does not know the secret (wrong "
			 "proof)");
		return -1;
	}
	auth_mac(k, "ferry destination", nonce_d, nonce_s, mac);
	if (exact_io(c, mac, sizeof(mac), false, deadline)) {
		snprintf(err, errlen, "secret: %s", io_reason(c, "the peer closed the connection"));
		return -1;
	}
	return 0;
}

static int secret_client(struct mig_channel *c, const struct mig_secret *k, int64_t deadline,
			 char *err, size_t errlen)
{
	uint8_t hello[16 + NONCE_BYTES], answer[NONCE_BYTES + MAC_BYTES], mac[MAC_BYTES];
	uint8_t *nonce_d = hello + 16, *nonce_s = answer;
	if (exact_io(c, hello, sizeof(hello), true, deadline)) {
		snprintf(err, errlen, "secret: %s", io_reason(c, "the destination closed the "
							      "connection"));
		return -1;
	}
	if (memcmp(hello, AUTH_MAGIC, 8)) {
		snprintf(err, errlen, "the destination does not ask for the secret, so it "
			 "cannot prove it knows it: refusing to send the guest (start it with "
			 "--incoming tcp:HOST:PORT,secret-file=FILE)");
		return -1;
	}
	if (hello[8] != AUTH_VERSION || hello[9] || hello[10] || hello[11]) {
		snprintf(err, errlen, "secret: the destination speaks exchange version %u, "
			 "this ferry %u", hello[8], AUTH_VERSION);
		return -1;
	}
	if (gnutls_rnd(GNUTLS_RND_NONCE, nonce_s, NONCE_BYTES)) {
		snprintf(err, errlen, "secret: no random numbers");
		return -1;
	}
	auth_mac(k, "ferry source", nonce_d, nonce_s, answer + NONCE_BYTES);
	if (exact_io(c, answer, sizeof(answer), false, deadline) ||
	    exact_io(c, mac, sizeof(mac), true, deadline)) {
		snprintf(err, errlen, "secret: %s", io_reason(c, "the destination refused the "
			 "secret (it closed the connection): is it the same secret?"));
		return -1;
	}
	uint8_t want[MAC_BYTES];
	auth_mac(k, "ferry destination", nonce_d, nonce_s, want);
	if (gnutls_memcmp(mac, want, MAC_BYTES)) {
		snprintf(err, errlen, "secret: the destination does not know the secret: "
			 "refusing to send the guest");
		return -1;
	}
	return 0;
}

/* ---- setting up ------------------------------------------------------------------------ */

static struct mig_channel *secure(struct mig_channel *c, const struct mig_auth *auth,
				  bool server, int timeout_ms, char *err, size_t errlen)
{
	char why[700];
	int64_t deadline = now_ms() + timeout_ms;
	if (auth && auth->tls && tls_start(c, auth->tls, server, timeout_ms, why, sizeof(why)))
		return setup_failed(c, err, errlen, "%s", why);
	if (auth && auth->secret && auth->secret->len &&
	    (server ? secret_server : secret_client)(c, auth->secret, deadline, why,
						     sizeof(why)))
		return setup_failed(c, err, errlen, "%s", why);
	c->timeout_ms = MIG_CHANNEL_IO_TIMEOUT_MS;
	return c;
}

/* A channel that owns fd, or NULL (fd closed) with err. */
static struct mig_channel *owning_channel(int fd, char *err, size_t errlen)
{
	struct mig_channel *c = channel_new(fd, true);
	if (!c) {
		snprintf(err, errlen, "out of memory for a migration channel");
		close(fd);
	}
	return c;
}

struct mig_channel *mig_channel_client(int fd, const char *host, const struct mig_auth *auth,
				       int timeout_ms, char *err, size_t errlen)
{
	struct mig_channel *c = owning_channel(fd, err, errlen);
	if (!c)
		return NULL;
	snprintf(c->host, sizeof(c->host), "%s", host);
	return secure(c, auth, false, timeout_ms, err, errlen);
}

struct mig_channel *mig_channel_server(int fd, const struct mig_auth *auth, int timeout_ms,
				       int cancel_fd, char *err, size_t errlen)
{
	struct mig_channel *c = owning_channel(fd, err, errlen);
	if (!c)
		return NULL;
	c->cancel_fd = cancel_fd;
	return secure(c, auth, true, timeout_ms, err, errlen);
}
