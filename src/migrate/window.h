/*
 * window.h - a migration connection sized to its link (window.c).
 */
#ifndef FERRY_MIGRATE_WINDOW_H
#define FERRY_MIGRATE_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

/* The source's view of its connection; zeroed = not measured (a save to
 * a file, or before the handshake). Only the outgoing thread writes it;
 * query-migrate reads the figures under the migration's lock. */
struct mig_window {
	int fd;
	bool open;                  /* measured after the handshake */
	bool wan;                   /* RTT at least MIG_WAN_RTT_US: sized to the BDP */
	uint64_t rtt_us;            /* the connection's smoothed RTT */
	uint64_t window_bytes;      /* send buffer granted (SO_SNDBUF / 2) */
	uint64_t peer_window_bytes; /* the largest window the destination offered */
	uint64_t rate_bps;          /* bytes/s: fastest delivery rate the kernel saw
	                             * while we kept the link busy (0: none yet) */
	uint64_t open_ms, tuned_ms;
	bool compress;              /* what the measured rate says */
	bool compress_decided;
};

#define MIG_WAN_RTT_US 1000u    /* a link slower to answer than this is "long" */

/* Destination, after the handshake: open the receive window to the RTT. */
void mig_window_receiver(int fd);

/* Source, after the handshake: read the RTT, size the buffers. */
void mig_window_open(struct mig_window *w, int fd);

/* Source, often while sending (cheap unless TUNE_MS passed): re-measure,
 * re-size, decide compression. Returns true when w->compress changed. */
bool mig_window_tune(struct mig_window *w);

/* Bytes written but not yet acknowledged by the destination (SIOCOUTQ). */
uint64_t mig_window_queued(const struct mig_window *w);

/* Of `written` stream bytes, those the destination has acknowledged. */
uint64_t mig_window_delivered(const struct mig_window *w, uint64_t written);

/* What a switchover must still get through besides the dirty pages, in
 * bytes: the queue beyond one BDP, plus the handoff's two round trips at
 * bandwidth_bps. */
uint64_t mig_window_backlog(const struct mig_window *w, uint64_t bandwidth_bps);

#endif
