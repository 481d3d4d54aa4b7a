/*
 * channels.h - RAM pages over several TCP connections (channels.c).
 *
 * `migrate` `channels: N` (N >= 2) opens N page channels beside the main
 * connection, each its own TCP flow, secured like the main one and served
 * by a thread of its own on each side. The main connection keeps
 * everything else (configurations, disks, the rounds' SYNC markers, the
 * machine state, the digest, the handoff). docs/stream.md "Page channels".
 */
#ifndef FERRY_MIGRATE_CHANNELS_H
#define FERRY_MIGRATE_CHANNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/stream.h"

struct migration;
struct mig_auth;

/* The default for `channels`: what bench/channels.py showed pays here. */
unsigned mig_default_channels(void);

/* ---- source --------------------------------------------------------------------- */
struct mig_senders;

/* Connect n page channels to mg->uri (in parallel), secure each as the
 * main connection, present the destination's join nonce and wait for its
 * ACK. NULL with the reason in err. */
struct mig_senders *mig_senders_open(struct migration *mg,
				     const uint8_t nonce[MIG_JOIN_NONCE], unsigned n,
				     char *err, size_t errlen);
unsigned mig_senders_count(const struct mig_senders *tx);
/* zstd for pages (the user's cap says so; each channel also follows its
 * own link measurement); the write rate cap, shared out over them. */
void mig_senders_set_compress(struct mig_senders *tx, bool on);
void mig_senders_set_rate(struct mig_senders *tx, uint64_t bytes_per_sec);

/* Send the pages set in bitmap (resident: mincore's answer per page, or
 * NULL; pages not resident go as zero pages) spread over the channels,
 * each channel ending the round with SYNC(round). Returns the round's
 * number (1, 2, ...) once every channel has written it, or -1 with err.
 * While it waits it calls tick(opaque) every few ms; a tick that returns
 * true aborts the round (cancel, a deadline). */
int64_t mig_senders_round(struct mig_senders *tx, const uint8_t *ram, uint64_t npages,
			  const uint64_t *bitmap, const unsigned char *resident,
			  bool (*tick)(void *opaque), void *opaque, char *err, size_t errlen);
/* END on every channel, flushed: no more pages. 0, or -1 with err. */
int mig_senders_finish(struct mig_senders *tx, char *err, size_t errlen);
/* Bytes written on the channels; of them, not yet acknowledged. */
uint64_t mig_senders_bytes(const struct mig_senders *tx);
uint64_t mig_senders_queued(const struct mig_senders *tx);
/* Shut every channel down (wakes blocked writes); any thread. */
void mig_senders_abort(struct mig_senders *tx);
void mig_senders_close(struct mig_senders *tx);   /* NULL is fine */

/* ---- destination ---------------------------------------------------------------- */
struct mig_receivers;

/* Accept n page channels on lfd (secured with auth, JOIN with this nonce
 * and an unused index, else refused with a line on stderr) and read each
 * on a thread of its own, pages to sink (called from several threads at
 * once, never for the same page). A failure shuts main_fd's reading
 * side, to wake the main stream's reader. auth must outlive it. NULL
 * with err. */
struct mig_receivers *mig_receivers_start(int lfd, const struct mig_auth *auth,
					  const uint8_t nonce[MIG_JOIN_NONCE], unsigned n,
					  uint64_t ram_size, mig_page_sink sink, void *opaque,
					  int main_fd, char *err, size_t errlen);
/* The main stream's SYNC(round): wait until every channel has applied its
 * pages of that round. 0, or -1 with err (a channel failed, never joined,
 * or made no progress for MIG_IO_TIMEOUT_S). */
int mig_receivers_sync(struct mig_receivers *rx, uint64_t round, char *err, size_t errlen);
/* While the main stream has been silent since main_idle_ms (mig_now_ms):
 * false, with err, once a channel failed or nothing moved on any channel
 * either for MIG_IO_TIMEOUT_S. */
bool mig_receivers_alive(struct mig_receivers *rx, uint64_t main_idle_ms, char *err,
			 size_t errlen);
/* Every channel has ended (END) after its last round. 0, or -1 with err. */
int mig_receivers_finish(struct mig_receivers *rx, char *err, size_t errlen);
/* Stop accepting, shut the channels down, join the threads, free. */
void mig_receivers_stop(struct mig_receivers *rx);   /* NULL is fine */

#endif
