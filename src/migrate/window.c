/*
 * window.c - a migration connection sized to its link.
 *
 * On a LAN the socket buffers stay small (mig_socket_tune): what the source
 * has written is then close to what the destination has applied. On a
 * long fat pipe that is a cap: 100 ms x 200 Mbit/s holds 2.5 MB in flight
 * and a 256 KiB window carries ~20 Mbit/s. So once the connect has given
 * TCP its first RTT sample (the source opens the window before its first
 * byte; the destination once it has read the source's configuration,
 * which comes with the first pages), a connection whose smallest RTT is at least
 * MIG_WAN_RTT_US gets buffers sized to its bandwidth-delay product (from
 * the smoothed RTT, which includes the bottleneck's queue):
 *  - the destination does not know the bandwidth: it opens its receive
 *    buffer to 2 x RTT x GUESS_BPS (bounded); that memory only fills if it
 *    falls behind, and it applies pages far faster than such a link
 *    brings them;
 *  - the source starts from the same guess and then, every TUNE_MS, sizes
 *    its send buffer to 2 x RTT x the kernel's delivery rate (TCP_INFO),
 *    bounded. TCP_NOTSENT_LOWAT keeps the part of the queue not yet on
 *    the wire small whatever the buffer, so a switchover never waits
 *    behind a backlog of stale pages.
 * Honest figures: the bytes a round counts are those the destination
 * acknowledged (written minus SIOCOUTQ), and the switchover's pause
 * estimate adds the queue beyond one BDP (what is not yet in the pipe)
 * plus the handoff's two round trips (mig_window_backlog).
 * Compression follows the measured link (docs/stream.md: zstd level 1
 * pays below about 1 Gbit/s, ~130 MB/s a core): after WARMUP_MS and
 * 5 RTTs of sending, on when the fastest delivery rate the kernel saw
 * while we kept the link busy is below COMPRESS_BELOW_BPS, off above. A
 * link we never keep busy (loopback) is fast: off. Before that a long
 * link compresses (bench/wan.py: at 100 ms x 200 Mbit/s the warm-up's raw
 * pages were a third of what the small guest sent).
 */
#include "migrate/window.h"
#include "migrate/migration.h"

#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define GUESS_BPS (1000000000ull / 8)      /* before a measurement: 1 Gbit/s */
#define COMPRESS_BELOW_BPS (1000000000ull / 8)
#define WINDOW_MIN (256u << 10)
#define WINDOW_MAX (32u << 20)
#define NOTSENT_LOWAT (256u << 10)
#define TUNE_MS 50
#define WARMUP_MS 500

static bool tcp_info_of(int fd, struct tcp_info *ti)
{
	socklen_t len = sizeof(*ti);
	memset(ti, 0, sizeof(*ti));
	return getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) == 0;
}

/* Long or short link: the smallest RTT seen, which a loaded host's
 * scheduling delays inflate less than the smoothed one (a loopback
 * handshake on a busy machine can show an srtt of 2 ms). */
static uint32_t base_rtt_us(const struct tcp_info *ti)
{
	return ti->tcpi_min_rtt ? ti->tcpi_min_rtt : ti->tcpi_rtt;
}

static uint64_t clamp_window(uint64_t bytes)
{
	return bytes < WINDOW_MIN ? WINDOW_MIN : bytes > WINDOW_MAX ? WINDOW_MAX : bytes;
}

/* 2 x RTT x rate: the BDP with room for the rate to grow. */
static uint64_t window_for(uint64_t rtt_us, uint64_t rate_bps)
{
	return clamp_window(2 * rtt_us * rate_bps / 1000000);
}

/* Past net.core.[rw]mem_max when we may (CAP_NET_ADMIN), else up to it. */
static void set_buffer(int fd, int force_opt, int opt, uint64_t bytes)
{
	int v = (int)bytes;
	if (setsockopt(fd, SOL_SOCKET, force_opt, &v, sizeof(v)))
		setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v));
}

void mig_window_receiver(int fd)
{
	struct tcp_info ti;
	if (!tcp_info_of(fd, &ti) || base_rtt_us(&ti) < MIG_WAN_RTT_US)
		return;
	uint64_t bytes = window_for(ti.tcpi_rtt, GUESS_BPS);
	set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, bytes);
	/* the window's clamp was fixed from the small buffer at connect */
	int clamp = (int)bytes;
	setsockopt(fd, IPPROTO_TCP, TCP_WINDOW_CLAMP, &clamp, sizeof(clamp));
}

static void set_send_window(struct mig_window *w, uint64_t bytes)
{
	set_buffer(w->fd, SO_SNDBUFFORCE, SO_SNDBUF, bytes);
	/* what the kernel granted (it doubles the request for its own
	 * bookkeeping), so a cap such as wmem_max shows in query-migrate */
	int got = 0;
	socklen_t len = sizeof(got);
	if (getsockopt(w->fd, SOL_SOCKET, SO_SNDBUF, &got, &len) == 0 && got > 0)
		w->window_bytes = (uint64_t)got / 2;
}

void mig_window_open(struct mig_window *w, int fd)
{
	struct tcp_info ti;
	memset(w, 0, sizeof(*w));
	w->fd = fd;
	w->open = true;
	w->open_ms = w->tuned_ms = mig_now_ms();
	w->window_bytes = WINDOW_MIN;           /* mig_socket_tune's */
	if (!tcp_info_of(fd, &ti))
		return;
	w->rtt_us = ti.tcpi_rtt;
	if (base_rtt_us(&ti) < MIG_WAN_RTT_US)
		return;
	w->wan = true;
	/* until the rate is measured, a long link is taken for a slow one:
	 * its first half second of raw pages cost more time on the wire
	 * than compressing them costs a fast one */
	w->compress = true;
	int lowat = NOTSENT_LOWAT;
	setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
	set_send_window(w, window_for(w->rtt_us, GUESS_BPS));
}

/* The compression rule of the header comment. */
static bool decide_compress(struct mig_window *w, uint64_t now)
{
	uint64_t warm = WARMUP_MS, rtts = 5 * w->rtt_us / 1000;
	if (now - w->open_ms < (rtts > warm ? rtts : warm))
		return false;
	bool want = w->rate_bps && w->rate_bps < COMPRESS_BELOW_BPS;
	bool changed = !w->compress_decided || want != w->compress;
	w->compress_decided = true;
	w->compress = want;
	return changed;
}

bool mig_window_tune(struct mig_window *w)
{
	struct tcp_info ti;
	uint64_t now = mig_now_ms();
	if (!w->open || now - w->tuned_ms < TUNE_MS || !tcp_info_of(w->fd, &ti))
		return false;
	w->tuned_ms = now;
	if (ti.tcpi_rtt)
		w->rtt_us = ti.tcpi_rtt;
	if (ti.tcpi_snd_wnd > w->peer_window_bytes)
		w->peer_window_bytes = ti.tcpi_snd_wnd;
	if (!ti.tcpi_delivery_rate_app_limited && ti.tcpi_delivery_rate > w->rate_bps)
		w->rate_bps = ti.tcpi_delivery_rate;
	if (w->wan && w->rate_bps) {
		/* grow with the measured rate at once; shrink only after the
		 * warm-up (a slow start's first samples say little) and only
		 * by half or more, so the buffer does not flap */
		uint64_t want = window_for(w->rtt_us, w->rate_bps);
		if (want > w->window_bytes ||
		    (w->compress_decided && want < w->window_bytes / 2))
			set_send_window(w, want);
	}
	return decide_compress(w, now);
}

uint64_t mig_window_queued(const struct mig_window *w)
{
	int n = 0;
	if (!w->open || ioctl(w->fd, SIOCOUTQ, &n) || n < 0)
		return 0;
	return (uint64_t)n;
}

uint64_t mig_window_delivered(const struct mig_window *w, uint64_t written)
{
	uint64_t q = mig_window_queued(w);
	return written > q ? written - q : 0;
}

uint64_t mig_window_backlog(const struct mig_window *w, uint64_t bandwidth_bps)
{
	if (!w->open)
		return 0;
	/* The last pages reach the destination, its confirmation comes
	 * back, then released goes and started returns: two round trips.
	 * Up to one BDP of the queue is already in the pipe (sent, or
	 * arrived with its acknowledgement on the way back): it lands
	 * within those round trips; only what lies beyond it adds time. */
	uint64_t bdp = w->rtt_us * bandwidth_bps / 1000000;
	uint64_t queued = mig_window_queued(w);
	return (queued > bdp ? queued - bdp : 0) + 2 * bdp;
}
