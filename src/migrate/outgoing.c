/*
 * outgoing.c - the source side of a live migration, and `save`.
 *
 * One thread per migration runs the flow of DESIGN.md:
 *   1. handshake: we state what the guest needs (our configuration) and,
 *      without waiting, start pre-copy; the destination states what it
 *      can run (its configuration), which we check against ours on the
 *      way, and answers ACK; a refusal, with the reason, comes before
 *      anything stops, since we wait for the ACK before any pause;
 *   2. pre-copy: the dirty log starts with every page dirty; each round
 *      harvests it and sends those pages, measuring the link; the planner
 *      decides after each round: another round, a vCPU throttle, or
 *      switchover;
 *   3. switchover: stop the world, send the last pages, every hart's and
 *      device's state, the clock, and a digest of all of RAM;
 *   4. handoff: wait for the destination to confirm it verified and holds
 *      everything; only then release the disks (flush, unlock), tell the
 *      destination, and wait until it runs. Until the confirmation any
 *      failure resumes the guest here with nothing lost.
 * Every wait has a deadline (deadline.h): the budget (max_total_s) for the
 * whole migration, the pause bound (plan_pause_bound_ms) for a switchover
 * until the destination confirms, a lifted throttle for a throttled round
 * that runs long, and STALL_S without progress for a peer that stops
 * reading. When one passes, the socket is shut down and the migration
 * fails with that reason, the guest resumed here.
 * `save` writes the same stream to a file with the guest stopped.
 */
#include "migrate/deadline.h"
#include "migrate/channel.h"
#include "migrate/channels.h"
#include "migrate/diskstream.h"
#include "migrate/migrate.h"
#include "migrate/migration.h"
#include "migrate/planner.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "storage/diskmove.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STALL_S MIG_IO_TIMEOUT_S    /* the same for a peer that stops reading */
#define DIRTY_SAMPLE_MS 250     /* into a round, measure the dirty rate */
#define HANDOFF_TIMEOUT_S 30
#define QUICK_START_BYTES (1u << 20)  /* slow start's first round trips carry less */

static const char *status_names[] = {
	[MIG_NONE] = "none", [MIG_SETUP] = "setup", [MIG_ACTIVE] = "active",
	[MIG_POSTCOPY] = "postcopy", [MIG_COMPLETED] = "completed",
	[MIG_FAILED] = "failed", [MIG_CANCELLED] = "cancelled",
};

uint64_t mig_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static json_t *migration_figures(struct migration *mg);

/* Every change of status is an event; the last one carries the figures. */
static void set_status(struct migration *mg, enum mig_status st)
{
	pthread_mutex_lock(&mg->lock);
	mg->status = st;
	pthread_mutex_unlock(&mg->lock);
	if (st == MIG_COMPLETED || st == MIG_FAILED || st == MIG_CANCELLED)
		vmm_event(mg->vmm, "MIGRATION", migration_figures(mg));
	else
		vmm_event(mg->vmm, "MIGRATION", json_pack("{s:s}", "status", status_names[st]));
}

static void fail(struct migration *mg, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fail(struct migration *mg, const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&mg->lock);
	if (!mg->error[0]) {
		va_start(ap, fmt);
		vsnprintf(mg->error, sizeof(mg->error), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&mg->lock);
}

/* A failed stream operation at `stage`: a deadline that cut the socket is
 * the real reason, the broken pipe only its consequence. */
static void fail_stream(struct migration *mg, struct mig_stream *s, const char *stage,
			const char *why)
{
	char deadline[240];
	if (mig_watchdog_fired(mg->watchdog, deadline, sizeof(deadline)))
		fail(mg, "%s: %s", stage, deadline);
	else
		fail(mg, "%s: %s", stage, why ? why : mig_stream_error(s));
}

/* ---- connecting ----------------------------------------------------------------- */

/* Connect to the destination and secure the channel (TLS with the
 * process's --tls-creds, the migration's secret) before anything of the
 * guest is sent. NULL with the reason in err. */
static struct mig_channel *connect_channel(struct migration *mg, char *err, size_t errlen)
{
	const char *uri = mg->uri;
	char host[256];
	int fd = mig_tcp_connect(uri, host, sizeof(host), err, errlen);
	if (fd < 0)
		return NULL;
	struct mig_auth auth = { mg->vmm->tls, &mg->secret };
	char why[320];
	struct mig_channel *ch = mig_channel_client(fd, host, &auth, MIG_IO_TIMEOUT_S * 1000, why,
						    sizeof(why));
	if (!ch)
		snprintf(err, errlen, "%.200s: %s", uri, why);
	return ch;
}

/* ---- sending RAM ------------------------------------------------------------------ */

static bool cancelled(struct migration *mg)
{
	return atomic_load(&mg->cancel);
}

/* Early in a round, before the guest has rewritten its whole hot set,
 * the dirty log grows at the guest's dirty rate: note it once. */
static void sample_dirty_rate(struct migration *mg)
{
	uint64_t since = mig_now_ms() - mg->round_start_ms;
	if (mg->sample_ms || since < DIRTY_SAMPLE_MS)
		return;
	mg->sample_pages = dirty_log_count(mg->vmm->machine);
	mg->sample_ms = since;
}

/* zstd costs ~30 us a page: it pays only below ~1 Gbit/s (docs/stream.md),
 * so on when the user's cap or the link's measured rate (window.c) is
 * below that. */
static void choose_compression(struct migration *mg, struct mig_stream *s)
{
	pthread_mutex_lock(&mg->lock);
	uint64_t mbps = mg->bandwidth_mbps;
	mg->link_shown = mg->link;
	pthread_mutex_unlock(&mg->lock);
	mig_stream_set_compress(s, (mbps && mbps < 1000) || mg->link.compress);
	if (mg->senders)
		mig_senders_set_compress(mg->senders, mbps && mbps < 1000);
}

/* Bytes sent so far, the page channels' included. */
static uint64_t sent_bytes(struct migration *mg, struct mig_stream *s)
{
	return mig_stream_bytes(s) + mig_senders_bytes(mg->senders);
}

/* Of them, those the destination acknowledged. */
static uint64_t delivered_bytes(struct migration *mg, struct mig_stream *s)
{
	uint64_t written = sent_bytes(mg, s) - mig_stream_bytes_buffered(s);
	uint64_t queued = mig_window_queued(&mg->link) + mig_senders_queued(mg->senders);
	return written > queued ? written - queued : 0;
}

/* What this guest needs of a host, as our CONFIG says it. */
static void local_config(struct migration *mg, struct mig_config *local)
{
	vmstate_config(mg->vmm, local);
	local->copy_disks = mg->copy_disks;
}

/* The destination's CONFIG checked as it checks ours, so a host that
 * cannot run the guest is refused with the reason on both sides. */
static int check_remote(struct migration *mg, struct mig_stream *s,
			const struct mig_config *remote)
{
	struct mig_config local;
	char why[256];
	mg->remote_config_read = true;
	local_config(mg, &local);
	if (mig_config_check(&local, remote, why, sizeof(why)) == 0)
		return 0;
	fail(mg, "destination cannot run this guest: %s", why);
	mig_send_error(s, why);
	return -1;
}

/* The destination's CONFIG, when we sent ours without waiting for it
 * (handshake()): read when it has come, or, with wait, waited for. 0, or
 * -1 with the migration failed. */
static int collect_remote_config(struct migration *mg, struct mig_stream *s, bool wait)
{
	struct mig_config remote;
	if (mg->remote_config_read)
		return 0;
	if (!wait && mig_stream_wait_readable(s, 0) != 1)
		return 0;
	if (mig_read_config(s, &remote)) {
		fail_stream(mg, s, "handshake", NULL);
		return -1;
	}
	return check_remote(mg, s, &remote);
}

/* The destination's ACK of our configuration (or its ERROR, with why it
 * refuses), after its own CONFIG: read when it has come, or, with wait,
 * waited for (before the guest pauses: never switch over to a
 * destination that has not said yes). 0, or -1 with the migration
 * failed. */
static int collect_ack(struct migration *mg, struct mig_stream *s, bool wait)
{
	char why[256];
	if (mg->config_acked)
		return 0;
	if (collect_remote_config(mg, s, wait))
		return -1;
	if (!mg->remote_config_read || (!wait && mig_stream_wait_readable(s, 0) != 1))
		return 0;
	if (mig_expect(s, MIG_SEC_ACK, why, sizeof(why))) {
		fail(mg, "destination refused: %s", why);
		return -1;
	}
	mg->config_acked = true;
	return 0;
}

/* Pages go out before the destination's answer; when a write then finds
 * the connection closed, the destination most likely refused us and said
 * why before it closed (its CONFIG, its ERROR: still in our socket). True
 * when that reason is now the migration's error. */
static bool explain_closed(struct migration *mg, struct mig_stream *s)
{
	struct mig_config remote;
	char why[256];
	if (mg->config_acked || mig_stream_resume_reads(s))
		return false;
	if (!mg->remote_config_read) {
		if (mig_read_config(s, &remote)) {
			if (mig_stream_connection_lost(s))
				return false;
			fail(mg, "handshake: %s", mig_stream_error(s));
			return true;
		}
		if (check_remote(mg, s, &remote))
			return true;
	}
	if (mig_expect(s, MIG_SEC_ACK, why, sizeof(why)) == 0 || !mig_stream_peer_gave_up(s))
		return false;
	fail(mg, "destination refused: %s", why);
	return true;
}

/* While the page channels carry a round: the outgoing thread's own
 * bookkeeping; true stops the round (cancel, a deadline fired). */
struct round_tick {
	struct migration *mg;
	struct mig_stream *s;
};

static bool channels_tick(void *opaque)
{
	struct round_tick *rt = opaque;
	struct migration *mg = rt->mg;
	if (mg->sample_dirty)
		sample_dirty_rate(mg);
	if (mig_window_tune(&mg->link))
		choose_compression(mg, rt->s);
	pthread_mutex_lock(&mg->lock);
	mg->transferred = sent_bytes(mg, rt->s);
	pthread_mutex_unlock(&mg->lock);
	return cancelled(mg) || mig_watchdog_fired(mg->watchdog, NULL, 0) ||
	       collect_ack(mg, rt->s, false);
}

/* A round over the page channels, then its SYNC on the main stream. */
static int send_pages_channels(struct migration *mg, struct mig_stream *s,
			       const uint64_t *bitmap, const unsigned char *resident)
{
	struct machine *m = mg->vmm->machine;
	struct round_tick rt = { mg, s };
	char err[400];
	int64_t round = mig_senders_round(mg->senders, m->ram, m->ram_size / PAGE_SIZE, bitmap,
					  resident, channels_tick, &rt, err, sizeof(err));
	if (round < 0)
		return mig_stream_fail(s, "%s", err);
	return mig_write_sync(s, (uint64_t)round) || mig_flush(s) ? -1 : 0;
}

/* Send the pages set in bitmap; returns bytes written, or -1. */
static int64_t send_pages(struct migration *mg, struct mig_stream *s, const uint64_t *bitmap)
{
	struct machine *m = mg->vmm->machine;
	uint64_t pages = m->ram_size / PAGE_SIZE;
	uint64_t start = sent_bytes(mg, s);
	static const uint8_t zeros[PAGE_SIZE];
	/* Pages the host never mapped read as zeros: send them as such
	 * without touching them, which would map them in (slow, and it would
	 * make the switchover's digest hash all of RAM). A page the guest
	 * writes after this look is dirty and goes again next round. */
	unsigned char *resident = malloc(pages);
	if (resident && mincore(m->ram, m->ram_size, resident)) {
		free(resident);
		resident = NULL;
	}
	/* the cap may change between rounds (migrate-set-parameters) */
	pthread_mutex_lock(&mg->lock);
	uint64_t mbps = mg->bandwidth_mbps;
	pthread_mutex_unlock(&mg->lock);
	mig_stream_set_rate(s, mbps * 1000000 / 8);
	if (mg->senders) {
		mig_senders_set_rate(mg->senders, mbps * 1000000 / 8);
		int r = send_pages_channels(mg, s, bitmap, resident);
		free(resident);
		return r ? -1 : (int64_t)(sent_bytes(mg, s) - start);
	}
	for (uint64_t w = 0; w < (pages + 63) / 64; w++) {
		uint64_t bits = bitmap[w];
		if (bits && mg->sample_dirty)
			sample_dirty_rate(mg);
		if (bits && mig_window_tune(&mg->link))
			choose_compression(mg, s);
		/* until the destination's CONFIG came, look for it (or its
		 * refusal) every 64 pages: before our first write fails */
		if (!mg->remote_config_read && collect_ack(mg, s, false)) {
			free(resident);
			return -1;
		}
		while (bits) {
			uint64_t pfn = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
			const void *page = resident && !(resident[pfn] & 1)
					   ? zeros : m->ram + pfn * PAGE_SIZE;
			if (mig_put_page(s, pfn, page)) {
				free(resident);
				return -1;
			}
		}
		if ((w & 63) == 63) {
			if (cancelled(mg) || collect_ack(mg, s, false)) {
				free(resident);
				return -1;
			}
			pthread_mutex_lock(&mg->lock);
			mg->transferred = mig_stream_bytes(s);
			pthread_mutex_unlock(&mg->lock);
		}
	}
	free(resident);
	if (mig_flush_pages(s))
		return -1;
	return (int64_t)(mig_stream_bytes(s) - start);
}

/* ---- the flow ---------------------------------------------------------------------- */


/* The configurations, checked both ways; *remote is the destination's,
 * or all zero if we did not wait for it.
 * Ours goes first when we need nothing of theirs to write it (no page
 * channels: their join nonce; no disks: copy, below): the destination
 * then has it one round trip after the connect, and pre-copy starts at
 * once, the round trip TCP's slow start needs anyway. Theirs is read and
 * checked on the way (collect_remote_config) and before the guest
 * pauses; until the destination said ACK nothing of ours stops. */
static int handshake(struct migration *mg, struct mig_stream *s, struct mig_config *remote_out)
{
	struct mig_config local, remote;
	local_config(mg, &local);
	memset(remote_out, 0, sizeof(*remote_out));
	mg->config_acked = false;
	mg->remote_config_read = false;
	if (mg->channels < 2 && !mg->copy_disks) {
		if (mig_write_config(s, &local) || mig_flush(s)) {
			fail_stream(mg, s, "handshake", NULL);
			return -1;
		}
		return 0;
	}
	if (mig_read_config(s, &remote)) {
		fail_stream(mg, s, "handshake", NULL);
		return -1;
	}
	mg->remote_config_read = true;
	/* page channels, if the destination takes them (its join nonce) */
	if (mg->channels > 1 && remote.has_join)
		local.channels = mg->channels;
	*remote_out = remote;
	char why[256];
	if (mig_config_check(&local, &remote, why, sizeof(why))) {
		fail(mg, "destination cannot run this guest: %s", why);
		mig_send_error(s, why);
		return -1;
	}
	if (mig_write_config(s, &local) || mig_flush(s)) {
		fail_stream(mg, s, "handshake", NULL);
		return -1;
	}
	/* Pre-copy starts now, without waiting the round trip for the
	 * destination's ACK: it checks our configuration exactly as we
	 * checked its own, so it says yes; pages sent to one that refuses
	 * anyway are only lost bytes. collect_ack() reads it on the way.
	 * With disks: copy it also checks its images, a likelier refusal
	 * whose reason a broken pipe would hide: wait for it then. */
	return mg->copy_disks ? collect_ack(mg, s, true) : 0;
}


/* After the handshake: the page channels the configuration announced. */
static int open_channels(struct migration *mg, struct mig_stream *s,
			 const struct mig_config *remote)
{
	char err[500];
	if (mg->channels < 2 || !remote->has_join) {
		pthread_mutex_lock(&mg->lock);
		mg->channels = 1;       /* pages on the main stream */
		pthread_mutex_unlock(&mg->lock);
		return 0;
	}
	mg->senders = mig_senders_open(mg, remote->join, mg->channels, err, sizeof(err));
	if (!mg->senders) {
		fail(mg, "%s", err);
		mig_send_error(s, err);
		return -1;
	}
	return 0;
}

/* No more pages on the page channels (END on each). */
static int close_channels(struct migration *mg, struct mig_stream *s)
{
	char err[400];
	if (mg->senders && mig_senders_finish(mg->senders, err, sizeof(err)))
		return mig_stream_fail(s, "%s", err);
	return 0;
}

/* The parameters migrate-set-parameters may change while it runs; the
 * budget's deadline it re-arms itself. */
static void current_params(struct migration *mg, struct plan_params *p)
{
	pthread_mutex_lock(&mg->lock);
	p->downtime_ms = mg->downtime_ms;
	p->max_total_ms = mg->max_total_s * 1000;
	pthread_mutex_unlock(&mg->lock);
}

/* The whole migration ends by start + max_total_s, whatever it waits for
 * (with mg->lock held: migrate-set-parameters calls it too). */
static void arm_budget(struct migration *mg)
{
	char why[200];
	snprintf(why, sizeof(why), "the migration ran past its budget (max_total_s %llu); "
		 "the guest keeps running here", (unsigned long long)mg->max_total_s);
	mig_watchdog_set(mg->watchdog, MIG_DEADLINE_BUDGET,
			 mg->max_total_s ? mg->start_ms + mg->max_total_s * 1000 : 0, why);
}

/* A throttled round is nearly a pause for the guest: if it runs well past
 * what the planner predicted (the link slowed down), lift the throttle. */
static uint64_t arm_throttle_deadline(struct migration *mg, const struct plan_decision *d)
{
	struct machine *m = mg->vmm->machine;
	uint64_t at = 0;
	if (d->throttle_pct > 0 && d->predicted_round_ms != UINT64_MAX) {
		uint64_t late = d->predicted_round_ms * 2;
		if (late < d->predicted_round_ms + 2000)
			late = d->predicted_round_ms + 2000;
		at = mig_now_ms() + late;
	}
	mig_watchdog_set_throttle(mg->watchdog, at, &m->throttle_pct);
	return at;
}

/* The guest's dirty rate over the round just sent: the early sample, or
 * the whole round if that says more (a short round has no sample). */
static uint64_t round_dirty_bps(struct migration *mg, uint64_t dirtied, uint64_t dt)
{
	uint64_t whole = dirtied * PAGE_SIZE * 1000 / (dt ? dt : 1);
	uint64_t early = mg->sample_ms ? mg->sample_pages * PAGE_SIZE * 1000 / mg->sample_ms : 0;
	return early > whole ? early : whole;
}

static void publish_round(struct migration *mg, struct mig_stream *s,
			  const struct plan_state *st, const struct plan_decision *d,
			  uint64_t round_ms, int round_throttle, const char *why)
{
	pthread_mutex_lock(&mg->lock);
	mg->rounds = st->round;
	mg->remaining = st->remaining_bytes;
	mg->bandwidth_bps = st->bandwidth_bps;
	mg->expected_downtime_ms = d->expected_downtime_ms;
	mg->predicted_total_ms = d->predicted_total_ms;
	mg->predicted_downtime_ms = d->predicted_downtime_ms;
	mg->throttled_ms += plan_throttled_ms(round_ms, round_throttle);
	mg->round_start_ms = 0;         /* counted: no round under way */
	mg->stalled = d->stalled;
	snprintf(mg->phase, sizeof(mg->phase), "%s", why);
	mg->transferred = sent_bytes(mg, s);
	mg->throttle_pct = d->throttle_pct;
	mg->link_shown = mg->link;
	pthread_mutex_unlock(&mg->lock);
}

/* Pre-copy rounds until the planner says switch over (returns 0), or
 * post-copy (1), or failure (-1). */
static int precopy(struct migration *mg, struct mig_stream *s, uint64_t *bitmap)
{
	struct machine *m = mg->vmm->machine;
	struct plan_params params = { .postcopy = mg->postcopy, .throttle = true };
	struct plan_state st = { 0 };
	uint64_t t_start = mg->start_ms, lift_at = 0;
	dirty_log_start(m);
	for (;;) {
		/* disks: copy: the dirty blocks first (the bulk copy, the
		 * first time), then the memory round */
		uint64_t delivered0 = delivered_bytes(mg, s);
		int64_t disk_bytes = disk_source_round(mg->disks, s);
		if (disk_bytes < 0)
			return -1;
		dirty_log_harvest(m, bitmap);
		uint64_t t0 = mig_now_ms();
		pthread_mutex_lock(&mg->lock);
		mg->round_start_ms = t0;
		pthread_mutex_unlock(&mg->lock);
		mg->sample_dirty = true;
		mg->sample_ms = mg->sample_pages = 0;
		int64_t bytes = send_pages(mg, s, bitmap);
		mg->sample_dirty = false;
		if (bytes < 0)
			return -1;
		/* what the destination acknowledged, not what the buffers took */
		if (mg->link.open) {
			uint64_t delivered = delivered_bytes(mg, s);
			bytes = delivered > delivered0 ? (int64_t)(delivered - delivered0) : 0;
		}
		else
			bytes += disk_bytes;
		uint64_t dt = mig_now_ms() - t0;
		int round_throttle = st.throttle_pct;
		bool lifted = mig_watchdog_throttle_lifted(mg->watchdog);
		mig_watchdog_set_throttle(mg->watchdog, 0, NULL);
		uint64_t throttled_for = dt;
		if (lifted) {
			st.throttle_pct = 0;
			throttled_for = lift_at > t0 ? lift_at - t0 : 0;
		}
		st.round++;
		st.elapsed_ms = mig_now_ms() - t_start;
		/* the link's speed, measured on rounds long enough to mean it */
		if (dt >= 20 || !st.bandwidth_bps)
			st.bandwidth_bps = (uint64_t)bytes * 1000 / (dt ? dt : 1);
		/* Pages dirtied since are counted at full size: the average of
		 * a round full of zero pages would promise a switchover far
		 * shorter than sending the hot set really takes. */
		st.prev_remaining = st.remaining_bytes;
		uint64_t dirtied = dirty_log_count(m);
		st.remaining_bytes = dirtied * PAGE_SIZE + disk_source_remaining(mg->disks) +
				     mig_window_backlog(&mg->link, st.bandwidth_bps);
		st.dirty_bps = round_dirty_bps(mg, dirtied, dt);
		current_params(mg, &params);
		struct plan_decision d = plan_next(&params, &st);
		char why[160];
		snprintf(why, sizeof(why), "%s%s", lifted ? "the last round ran long: throttle "
			 "lifted; " : "", d.why);
		publish_round(mg, s, &st, &d, throttled_for, round_throttle, why);

		if (d.throttle_pct != st.throttle_pct) {
			st.throttle_pct = d.throttle_pct;
			atomic_store(&m->throttle_pct, d.throttle_pct);
		}
		if (d.action == PLAN_SWITCHOVER)
			return 0;
		if (d.action == PLAN_POSTCOPY)
			return 1;
		if (d.action == PLAN_GIVE_UP) {
			fail(mg, "%s (%llu MiB left at %llu KB/s after %llu ms)", d.why,
			     (unsigned long long)(st.remaining_bytes >> 20),
			     (unsigned long long)(st.bandwidth_bps / 1000),
			     (unsigned long long)st.elapsed_ms);
			return -1;
		}
		if (cancelled(mg))
			return -1;
		lift_at = arm_throttle_deadline(mg, &d);
	}
}

/* Everything the destination needs to run, with the guest stopped. */
static int send_final_state(struct migration *mg, struct mig_stream *s, uint64_t *bitmap)
{
	struct machine *m = mg->vmm->machine;
	dirty_log_harvest(m, bitmap);
	if (send_pages(mg, s, bitmap) < 0 || close_channels(mg, s))
		return -1;
	dirty_log_stop(m);
	if (mg->disks && disk_source_finish(mg->disks, s))
		return -1;
	if (vmstate_send(m, s))
		return -1;
	if (mig_write_digest(s, mig_ram_digest(m->ram, m->ram_size)) ||
	    mig_write_end(s) || mig_flush(s))
		return -1;
	return 0;
}

/* Let go of the disks and hand the guest over. Returns 0 when the
 * destination runs the guest; -1 if we may resume; -2 if the outcome is
 * unknown (we must not resume: the destination may be running). */
static int handoff(struct migration *mg, struct mig_stream *s)
{
	struct machine *m = mg->vmm->machine;
	char why[256];
	if (mig_expect(s, MIG_SEC_ACK, why, sizeof(why))) {
		fail_stream(mg, s, "destination did not confirm the switchover", why);
		return -1;
	}
	/* The point of no return: the destination holds everything, so the
	 * pause bound no longer applies; finishing is the shortest way on. */
	mig_watchdog_disarm(mg->watchdog);
	const char *reason = NULL;
	if (vmstate_release(m, &reason)) {
		fail(mg, "cannot release devices: %s", reason);
		mig_send_error(s, reason);
		return -1;
	}
	if (mig_write_section(s, MIG_SEC_RELEASED, NULL, 0) || mig_flush(s)) {
		fail_stream(mg, s, "handoff", NULL);
		goto reclaim;
	}
	if (mig_expect(s, MIG_SEC_STARTED, why, sizeof(why))) {
		fail_stream(mg, s, "handoff: destination did not start", why);
		goto reclaim;
	}
	return 0;
reclaim:
	/* The destination may or may not hold the disks now. Taking the
	 * locks back decides it: if we get them, it cannot run. Not with
	 * disks: copy: it runs on images of its own, so we cannot know. */
	if (vmstate_acquire(m, &reason) == 0 && vmstate_has_disks(m) && !mg->copy_disks)
		return -1;
	return -2;
}

/* A switchover may pause the guest for plan_pause_bound_ms(downtime_ms)
 * at most, and never past the budget; then it gives up and resumes it. */
static void arm_pause_bound(struct migration *mg, uint64_t t_stop)
{
	char why[200];
	pthread_mutex_lock(&mg->lock);
	uint64_t bound = plan_pause_bound_ms(mg->downtime_ms);
	uint64_t budget_end = mg->max_total_s ? mg->start_ms + mg->max_total_s * 1000 : 0;
	pthread_mutex_unlock(&mg->lock);
	uint64_t at = t_stop + bound;
	snprintf(why, sizeof(why), "the switchover ran past its pause bound of %llu ms "
		 "(3x downtime_ms, at least 1 s); the guest resumed here",
		 (unsigned long long)bound);
	if (budget_end && budget_end < at) {
		at = budget_end;
		snprintf(why, sizeof(why), "the switchover ran past the migration's budget "
			 "(max_total_s); the guest resumed here");
	}
	mig_watchdog_set(mg->watchdog, MIG_DEADLINE_STEP, at, why);
}

/* A post-copy switchover cut by a deadline: say which. */
static void postcopy_deadline_reason(struct migration *mg)
{
	char why[200];
	if (!mig_watchdog_fired(mg->watchdog, why, sizeof(why)))
		return;
	pthread_mutex_lock(&mg->lock);
	snprintf(mg->error, sizeof(mg->error), "post-copy switchover: %s", why);
	pthread_mutex_unlock(&mg->lock);
}

static void stop_watchdog(struct migration *mg)
{
	pthread_mutex_lock(&mg->lock);
	struct mig_watchdog *w = mg->watchdog;
	mg->watchdog = NULL;
	pthread_mutex_unlock(&mg->lock);
	mig_watchdog_stop(w);
}

static void finish_failed(struct migration *mg, bool paused)
{
	struct machine *m = mg->vmm->machine;
	dirty_log_stop(m);
	atomic_store(&m->throttle_pct, 0);
	if (paused)
		machine_resume(m);
	set_status(mg, cancelled(mg) ? MIG_CANCELLED : MIG_FAILED);
}

static void *outgoing_thread(void *arg)
{
	struct migration *mg = arg;
	struct machine *m = mg->vmm->machine;
	char err[600];
	size_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	uint64_t *bitmap = calloc(words, sizeof(uint64_t));
	struct mig_stream *s = NULL;
	bool paused = false;
	uint64_t t_stop = 0;

	if (!bitmap) {
		fail(mg, "out of memory for the dirty page bitmap (%zu bytes)", words * 8);
		goto failed;
	}
	struct mig_channel *ch = connect_channel(mg, err, sizeof(err));
	if (!ch) {
		fail(mg, "%s", err);
		goto failed;
	}
	pthread_mutex_lock(&mg->lock);
	mg->fd = mig_channel_fd(ch);
	pthread_mutex_unlock(&mg->lock);
	s = mig_stream_new_channel(ch);         /* closes the socket when freed */
	if (!s) {
		fail(mg, "out of memory for the migration stream");
		goto failed;
	}
	struct mig_watchdog *w = mig_watchdog_start(mig_channel_fd(ch), STALL_S * 1000);
	if (!w) {
		fail(mg, "cannot start the migration's watchdog thread");
		goto failed;
	}
	pthread_mutex_lock(&mg->lock);
	mg->watchdog = w;
	arm_budget(mg);
	pthread_mutex_unlock(&mg->lock);
	/* the buffers sized from the connect's RTT, before our first byte;
	 * on a long link the first pages go out as soon as encoded */
	mig_window_open(&mg->link, mig_channel_fd(ch));
	if (mg->link.wan)
		mig_stream_set_quick_start(s, QUICK_START_BYTES);
	choose_compression(mg, s);
	struct mig_config remote;
	if (handshake(mg, s, &remote) || open_channels(mg, s, &remote))
		goto failed;
	if (mg->copy_disks && !(mg->disks = disk_source_start(mg->vmm, err, sizeof(err)))) {
		fail(mg, "%s", err);
		mig_send_error(s, err);
		goto failed;
	}
	mg->setup_ms = mig_now_ms() - mg->start_ms;
	set_status(mg, MIG_ACTIVE);

	int r = precopy(mg, s, bitmap);
	if (r < 0) {
		char was[480];
		snprintf(was, sizeof(was), "%s%s", mig_stream_error(s), !mg->remote_config_read ?
			 "; it closed the connection before sending its configuration: does "
			 "it ask for a secret_file, or not trust our certificate?" : "");
		if (!cancelled(mg) && !explain_closed(mg, s))
			fail_stream(mg, s, "pre-copy", was);
		goto failed;
	}
	if (r == 1) {
		/* its switchover has the same pause bound, up to the
		 * destination's confirmation; postcopy_run disarms the deadlines
		 * there, since from then on the guest needs this link */
		if (collect_ack(mg, s, true))
			goto failed;
		uint64_t t_pc = mig_now_ms();
		arm_pause_bound(mg, t_pc);
		if (close_channels(mg, s)) {
			fail_stream(mg, s, "post-copy", NULL);
			goto failed;
		}
		r = postcopy_run(mg, s, bitmap);
		postcopy_deadline_reason(mg);
		if (r == -1) {  /* resumed here: what the attempt cost the guest */
			pthread_mutex_lock(&mg->lock);
			mg->downtime_ms_measured = mig_now_ms() - t_pc;
			pthread_mutex_unlock(&mg->lock);
		}
		if (r == 0)
			goto completed;
		if (r == -2)
			goto unknown;
		goto failed;
	}

	if (collect_ack(mg, s, true))
		goto failed;
	t_stop = mig_now_ms();
	arm_pause_bound(mg, t_stop);
	machine_pause(m);
	paused = true;
	pthread_mutex_lock(&mg->lock);
	mg->pause_start_ms = t_stop;
	char decided[sizeof(mg->phase)];
	memcpy(decided, mg->phase, sizeof(decided));
	snprintf(mg->phase, sizeof(mg->phase), "switchover, guest paused: %.130s", decided);
	pthread_mutex_unlock(&mg->lock);
	if (send_final_state(mg, s, bitmap)) {
		fail_stream(mg, s, "switchover", NULL);
		goto failed;
	}
	r = handoff(mg, s);
	if (r == -1)
		goto failed;
	if (r == -2)
		goto unknown;
	mg->downtime_ms_measured = mig_now_ms() - t_stop;
completed:
	pthread_mutex_lock(&mg->lock);
	mg->done = true;
	mg->total_ms = mig_now_ms() - mg->start_ms;
	mg->transferred = sent_bytes(mg, s);
	mg->remaining = 0;
	pthread_mutex_unlock(&mg->lock);
	vmm_migrated(mg->vmm, mg->uri);    /* postmigrate, until quit */
	set_status(mg, MIG_COMPLETED);
	goto out;
unknown:
	/* stay paused: resuming could run the guest twice */
	pthread_mutex_lock(&mg->lock);
	mg->total_ms = mig_now_ms() - mg->start_ms;
	pthread_mutex_unlock(&mg->lock);
	vmm_handoff_unknown(mg->vmm, mg->uri, mg->error);
	dirty_log_stop(m);
	atomic_store(&m->throttle_pct, 0);
	set_status(mg, MIG_FAILED);
	goto out;
failed:
	pthread_mutex_lock(&mg->lock);
	mg->total_ms = mig_now_ms() - mg->start_ms;
	if (paused)     /* what the failed switchover cost the guest */
		mg->downtime_ms_measured = mig_now_ms() - t_stop;
	pthread_mutex_unlock(&mg->lock);
	finish_failed(mg, paused);
out:
	mig_senders_abort(mg->senders);         /* a failure leaves them blocked */
	mig_senders_close(mg->senders);
	pthread_mutex_lock(&mg->lock);
	mg->senders = NULL;
	pthread_mutex_unlock(&mg->lock);
	disk_source_stop(mg->disks);    /* our image was only read: it is intact */
	mg->disks = NULL;
	stop_watchdog(mg);
	pthread_mutex_lock(&mg->lock);
	mg->fd = -1;            /* no more shutdown() from cancel: it closes now */
	pthread_mutex_unlock(&mg->lock);
	if (s)
		mig_stream_free(s);
	free(bitmap);
	return NULL;
}

/* ---- save to a file ------------------------------------------------------------------ */

/* Where a save may go: nothing, or a regular file that is not a
 * symbolic link (rename would replace the link, not what it points to,
 * and a device node or FIFO is not ours to replace). */
static int save_target_ok(const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(path, &st)) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "save %s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISLNK(st.st_mode)) {
		snprintf(err, errlen, "save %s: is a symbolic link; give the real path", path);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "save %s: exists and is not a regular file (a device, "
			 "directory or FIFO): refusing to replace it", path);
		return -1;
	}
	return 0;
}

/* Create a fresh temporary beside path (same directory, so rename is
 * atomic): O_EXCL|O_NOFOLLOW, never an existing file or link. */
static int save_temp_open(const char *path, char *tmp, size_t tmplen, char *err,
			  size_t errlen)
{
	const char *slash = strrchr(path, '/');
	int dirlen = slash ? (int)(slash - path) + 1 : 0;
	const char *base = slash ? slash + 1 : path;
	for (int attempt = 0; attempt < 64; attempt++) {
		unsigned rnd = (unsigned)getpid() * 2654435761u ^ (unsigned)mig_now_ms() ^
			       (unsigned)attempt * 40503u;
		if (snprintf(tmp, tmplen, "%.*s.%s.%08x.tmp", dirlen, path, base, rnd) >=
		    (int)tmplen) {
			snprintf(err, errlen, "save %s: path too long", path);
			return -1;
		}
		int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0)
			return fd;
		if (errno != EEXIST) {
			snprintf(err, errlen, "save %s: cannot create %s: %s", path, tmp,
				 strerror(errno));
			return -1;
		}
	}
	snprintf(err, errlen, "save %s: cannot find a free temporary name", path);
	return -1;
}

/* Make the rename itself durable. */
static int fsync_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	char dir[4096];
	snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) + 1 : 1,
		 slash ? path : ".");
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = fsync(fd);
	close(fd);
	return r;
}

static int write_saved_stream(struct vmm *v, int fd, char *err, size_t errlen)
{
	struct machine *m = v->machine;
	size_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	uint64_t *all = malloc(words * sizeof(uint64_t));
	if (!all) {
		snprintf(err, errlen, "out of memory for the page bitmap");
		return -1;
	}
	memset(all, 0xff, words * sizeof(uint64_t));
	if ((m->ram_size / PAGE_SIZE) % 64)
		all[words - 1] = (1ULL << ((m->ram_size / PAGE_SIZE) % 64)) - 1;
	struct mig_config cfg;
	vmstate_config(v, &cfg);
	struct mig_stream *s = mig_stream_new(fd);
	if (!s) {
		snprintf(err, errlen, "out of memory for the stream");
		free(all);
		return -1;
	}
	struct migration dummy = { .vmm = v, .config_acked = true, .remote_config_read = true };  /* a file says nothing */
	pthread_mutex_init(&dummy.lock, NULL);
	int r = -1;
	if (mig_write_config(s, &cfg) == 0 && send_pages(&dummy, s, all) >= 0 &&
	    vmstate_send(m, s) == 0 &&
	    mig_write_digest(s, mig_ram_digest(m->ram, m->ram_size)) == 0 &&
	    mig_write_end(s) == 0 && mig_flush(s) == 0)
		r = 0;
	if (r)
		snprintf(err, errlen, "%s", mig_stream_error(s));
	mig_stream_free(s);
	pthread_mutex_destroy(&dummy.lock);
	free(all);
	return r;
}

static int save_to_file(struct vmm *v, const char *path, char *err, size_t errlen)
{
	char tmp[4096], why[400];
	if (save_target_ok(path, err, errlen))
		return -1;
	int fd = save_temp_open(path, tmp, sizeof(tmp), err, errlen);
	if (fd < 0)
		return -1;
	int r = write_saved_stream(v, fd, why, sizeof(why));
	if (r == 0 && fsync(fd)) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		r = -1;
	}
	if (close(fd) && r == 0) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		r = -1;
	}
	/* the target may have become something else while we wrote */
	if (r == 0 && save_target_ok(path, err, errlen)) {
		unlink(tmp);
		return -1;
	}
	if (r == 0 && rename(tmp, path)) {
		snprintf(why, sizeof(why), "%s", strerror(errno));
		r = -1;
	}
	if (r) {
		snprintf(err, errlen, "save %s: %s", path, why);
		unlink(tmp);
		return -1;
	}
	if (fsync_parent(path)) {
		snprintf(err, errlen, "save %s: written, but syncing its directory failed: %s",
			 path, strerror(errno));
		return -1;
	}
	return 0;
}

/* ---- control commands ------------------------------------------------------------------ */

void migration_destroy(struct migration *mg)
{
	if (!mg)
		return;
	pthread_mutex_lock(&mg->lock);
	if (mg->status == MIG_SETUP || mg->status == MIG_ACTIVE || mg->status == MIG_POSTCOPY) {
		atomic_store(&mg->cancel, true);
		if (mg->fd >= 0)
			shutdown(mg->fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&mg->lock);
	pthread_join(mg->thread, NULL);
	free(mg);
}

bool migration_is_active(struct migration *mg)
{
	if (!mg)
		return false;
	pthread_mutex_lock(&mg->lock);
	bool active = mg->status == MIG_SETUP || mg->status == MIG_ACTIVE ||
		      mg->status == MIG_POSTCOPY;
	pthread_mutex_unlock(&mg->lock);
	return active;
}

bool migration_is_done(struct migration *mg)
{
	if (!mg)
		return false;
	pthread_mutex_lock(&mg->lock);
	bool done = mg->done;
	pthread_mutex_unlock(&mg->lock);
	return done;
}

static bool get_uint(json_t *args, const char *key, uint64_t *out, uint64_t max,
		     char *err, size_t errlen)
{
	json_t *v = json_object_get(args, key);
	if (!v)
		return true;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) > max) {
		snprintf(err, errlen, "'%s' must be an integer from 0 to %llu", key,
			 (unsigned long long)max);
		return false;
	}
	*out = (uint64_t)json_integer_value(v);
	return true;
}

/* `secret_file`: the destination's secret, read now so a bad path fails
 * the command, not the migration. */
static bool migration_secret_arg(json_t *args, struct mig_secret *secret, char *err,
				 size_t errlen)
{
	json_t *f = json_object_get(args, "secret_file");
	if (!f)
		return true;
	if (!json_is_string(f) || !json_string_length(f)) {
		snprintf(err, errlen, "'secret_file' must be the path of the destination's "
			 "secret file");
		return false;
	}
	return mig_secret_load(json_string_value(f), secret, err, errlen) == 0;
}

json_t *migration_cmd_migrate(void *ctx, json_t *args, const char **cls, char *err,
			      size_t errlen)
{
	struct vmm *v = ctx;
	*cls = "GenericError";
	if (migration_is_active(v->mig)) {
		snprintf(err, errlen, "a migration is already in progress");
		return NULL;
	}
	if (migration_is_done(v->mig) || v->in) {
		snprintf(err, errlen, "this guest is not running here");
		return NULL;
	}
	json_t *disks = json_object_get(args, "disks");
	const char *dmode = json_is_string(disks) ? json_string_value(disks) : "";
	if (disks && strcmp(dmode, "shared") && strcmp(dmode, "copy")) {
		snprintf(err, errlen, "'disks' must be \"shared\" (the destination sees the "
			 "images) or \"copy\" (they travel with the guest)");
		return NULL;
	}
	bool copy_disks = !strcmp(dmode, "copy");
	if (disk_move_active(v)) {
		snprintf(err, errlen, "a disk move is in progress: wait for it "
			 "(query-disk-move) or cancel it (disk-move-cancel)");
		return NULL;
	}
	json_t *uri = json_object_get(args, "uri");
	if (!json_is_string(uri)) {
		snprintf(err, errlen, "'uri' (tcp:HOST:PORT) is required");
		return NULL;
	}
	char host[256], port[32];
	if (mig_parse_tcp(json_string_value(uri), host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "bad uri '%s': want tcp:HOST:PORT (use 'save' for files)",
			 json_string_value(uri));
		return NULL;
	}
	uint64_t downtime = 300, bw = 0, max_total = 0, channels = mig_default_channels();
	if (!get_uint(args, "channels", &channels, MIG_CHANNELS_MAX, err, errlen) ||
	    !get_uint(args, "downtime_ms", &downtime, 600000, err, errlen) ||
	    !get_uint(args, "bandwidth_mbps", &bw, 1000000, err, errlen) ||
	    !get_uint(args, "max_total_s", &max_total, 86400, err, errlen))
		return NULL;
	json_t *pc = json_object_get(args, "postcopy");
	if (pc && !json_is_boolean(pc)) {
		snprintf(err, errlen, "'postcopy' must be true or false");
		return NULL;
	}
	if (copy_disks && pc && json_is_true(pc)) {
		snprintf(err, errlen, "'postcopy' with disks: copy is not built: the disks "
			 "would have to be fetched on demand too");
		return NULL;
	}
	if (!machine_running(v->machine)) {
		snprintf(err, errlen, "the guest is stopped; 'cont' it first or use 'save'");
		return NULL;
	}
	struct mig_secret secret = { .len = 0 };
	if (!migration_secret_arg(args, &secret, err, errlen))
		return NULL;

	struct migration *mg = calloc(1, sizeof(*mg));
	if (!mg) {
		snprintf(err, errlen, "out of memory for the migration");
		return NULL;
	}
	pthread_mutex_init(&mg->lock, NULL);
	mg->vmm = v;
	mg->fd = -1;
	snprintf(mg->uri, sizeof(mg->uri), "%s", json_string_value(uri));
	mg->downtime_ms = downtime;
	mg->bandwidth_mbps = bw;
	mg->max_total_s = max_total;
	mg->postcopy = pc && json_is_true(pc);
	mg->copy_disks = copy_disks;
	mg->channels = channels ? (unsigned)channels : 1;
	mg->predicted_total_ms = mg->predicted_downtime_ms = UINT64_MAX;
	mg->secret = secret;
	explicit_bzero(&secret, sizeof(secret));
	mg->start_ms = mig_now_ms();
	mg->status = MIG_SETUP;
	struct migration *old = v->mig;
	v->mig = mg;
	if (old) {
		pthread_join(old->thread, NULL);
		free(old);
	}
	vmm_event(v, "MIGRATION", json_pack("{s:s}", "status", "setup"));
	int e = pthread_create(&mg->thread, NULL, outgoing_thread, mg);
	if (e) {
		/* nothing started: the guest runs on, and no thread to join */
		v->mig = NULL;
		pthread_mutex_destroy(&mg->lock);
		free(mg);
		snprintf(err, errlen, "cannot start the migration thread: %s", strerror(e));
		vmm_event(v, "MIGRATION", json_pack("{s:s, s:s}", "status", "failed",
						    "error", err));
		return NULL;
	}
	return json_object();
}

/* The bounds and the planner's forecast (with mg->lock held): the budget,
 * the pause bound, the predicted end and pause while it runs, and the
 * guest time the throttle took, which the guest lost as surely as a pause
 * (a round at 99% is one), so guest_lost_ms adds the two. */
static void add_bounds(struct migration *mg, json_t *r)
{
	bool running = mg->status == MIG_SETUP || mg->status == MIG_ACTIVE;
	uint64_t throttled = mg->throttled_ms;
	if (running) {
		/* the throttle in force: the watchdog may have lifted it */
		int pct = atomic_load(&mg->vmm->machine->throttle_pct);
		json_object_set_new(r, "throttle_pct", json_integer(pct));
		if (mg->round_start_ms)
			throttled += plan_throttled_ms(mig_now_ms() - mg->round_start_ms, pct);
		/* a switchover under way: the pause so far */
		if (mg->pause_start_ms)
			json_object_set_new(r, "downtime_ms",
					    json_integer((json_int_t)(mig_now_ms() -
								      mg->pause_start_ms)));
	}
	json_object_set_new(r, "max_total_s", json_integer((json_int_t)mg->max_total_s));
	json_object_set_new(r, "pause_bound_ms",
			    json_integer((json_int_t)plan_pause_bound_ms(mg->downtime_ms)));
	json_object_set_new(r, "throttled_ms", json_integer((json_int_t)throttled));
	json_object_set_new(r, "guest_lost_ms",
			    json_integer((json_int_t)(throttled + mg->downtime_ms_measured)));
	if (running && mg->predicted_total_ms != UINT64_MAX && mg->rounds) {
		json_object_set_new(r, "predicted_total_ms",
				    json_integer((json_int_t)mg->predicted_total_ms));
		json_object_set_new(r, "predicted_downtime_ms",
				    json_integer((json_int_t)mg->predicted_downtime_ms));
	}
}

/* The figures of query-migrate (and of the final MIGRATION event). */
static json_t *migration_figures(struct migration *mg)
{
	pthread_mutex_lock(&mg->lock);
	uint64_t total = mg->total_ms;
	if (mg->status == MIG_SETUP || mg->status == MIG_ACTIVE || mg->status == MIG_POSTCOPY)
		total = mig_now_ms() - mg->start_ms;
	json_t *r = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:s, s:I, s:I}",
		"status", status_names[mg->status],
		"total_ms", (json_int_t)total,
		"downtime_ms", (json_int_t)mg->downtime_ms_measured,
		"setup_ms", (json_int_t)mg->setup_ms,
		"transferred_bytes", (json_int_t)mg->transferred,
		"remaining_bytes", (json_int_t)mg->remaining,
		"rounds", (json_int_t)mg->rounds,
		"bandwidth_bps", (json_int_t)mg->bandwidth_bps,
		"expected_downtime_ms", (json_int_t)mg->expected_downtime_ms,
		"stalled", mg->stalled,
		"phase", mg->phase,
		"throttle_pct", (json_int_t)mg->throttle_pct,
		"downtime_target_ms", (json_int_t)mg->downtime_ms);
	json_object_set_new(r, "channels", json_integer((json_int_t)mg->channels));
	if (mg->error[0])
		json_object_set_new(r, "error", json_string(mg->error));
	if (mg->link_shown.open) {
		const struct mig_window *w = &mg->link_shown;
		json_object_set_new(r, "rtt_ms", json_real((double)(w->rtt_us / 10) / 100));
		json_object_set_new(r, "window_bytes", json_integer((json_int_t)w->window_bytes));
		json_object_set_new(r, "peer_window_bytes",
				    json_integer((json_int_t)w->peer_window_bytes));
		json_object_set_new(r, "link_rate_bps", json_integer((json_int_t)w->rate_bps));
		json_object_set_new(r, "compress", json_boolean(w->compress));
	}
	if (mg->postcopy_requests)
		json_object_set_new(r, "postcopy_requests", json_integer((json_int_t)mg->postcopy_requests));
	add_bounds(mg, r);
	pthread_mutex_unlock(&mg->lock);
	return r;
}

json_t *migration_cmd_query(void *ctx, json_t *args, const char **cls, char *err,
			    size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	if (!v->mig)
		return json_pack("{s:s}", "status", "none");
	return migration_figures(v->mig);
}

json_t *migration_cmd_cancel(void *ctx, json_t *args, const char **cls, char *err,
			     size_t errlen)
{
	struct vmm *v = ctx;
	struct migration *mg = v->mig;
	(void)args;
	if (!migration_is_active(mg)) {
		*cls = "GenericError";
		snprintf(err, errlen, "no migration is in progress");
		return NULL;
	}
	pthread_mutex_lock(&mg->lock);
	if (mg->status == MIG_POSTCOPY) {
		pthread_mutex_unlock(&mg->lock);
		*cls = "GenericError";
		snprintf(err, errlen, "a post-copy migration cannot be cancelled: the guest "
			 "already runs on the destination");
		return NULL;
	}
	atomic_store(&mg->cancel, true);
	if (mg->fd >= 0)
		shutdown(mg->fd, SHUT_RDWR);   /* wake any blocking I/O */
	snprintf(mg->error, sizeof(mg->error), "cancelled by the user");
	pthread_mutex_unlock(&mg->lock);
	return json_object();
}

json_t *migration_cmd_set_parameters(void *ctx, json_t *args, const char **cls, char *err,
				     size_t errlen)
{
	struct vmm *v = ctx;
	struct migration *mg = v->mig;
	*cls = "GenericError";
	if (!migration_is_active(mg)) {
		snprintf(err, errlen, "no migration is in progress");
		return NULL;
	}
	pthread_mutex_lock(&mg->lock);
	uint64_t downtime = mg->downtime_ms, bw = mg->bandwidth_mbps, max_total = mg->max_total_s;
	pthread_mutex_unlock(&mg->lock);
	if (!get_uint(args, "downtime_ms", &downtime, 600000, err, errlen) ||
	    !get_uint(args, "bandwidth_mbps", &bw, 1000000, err, errlen) ||
	    !get_uint(args, "max_total_s", &max_total, 86400, err, errlen))
		return NULL;
	/* the planner reads them before its next decision; the budget and
	 * pause deadlines take them from the next round or switchover on */
	pthread_mutex_lock(&mg->lock);
	mg->downtime_ms = downtime;
	mg->bandwidth_mbps = bw;
	mg->max_total_s = max_total;
	arm_budget(mg);
	pthread_mutex_unlock(&mg->lock);
	return json_object();
}

json_t *migration_cmd_save(void *ctx, json_t *args, const char **cls, char *err,
			   size_t errlen)
{
	struct vmm *v = ctx;
	*cls = "GenericError";
	json_t *path = json_object_get(args, "path");
	if (!json_is_string(path) || !json_string_length(path)) {
		snprintf(err, errlen, "'path' is required");
		return NULL;
	}
	if (migration_is_active(v->mig) || v->in) {
		snprintf(err, errlen, "a migration is in progress");
		return NULL;
	}
	bool was_running = machine_running(v->machine);
	machine_pause(v->machine);
	uint64_t t0 = mig_now_ms();
	int r = save_to_file(v, json_string_value(path), err, errlen);
	uint64_t ms = mig_now_ms() - t0;
	/* the guest stays stopped after a save, as its disks must not move
	 * on past the saved state; `cont` resumes it, `quit` ends it */
	if (r || !was_running)
		machine_resume(v->machine);     /* undo our own pause */
	if (r)
		return NULL;
	if (was_running)
		vmm_event(v, "STOP", json_object());
	return json_pack("{s:I}", "save_ms", (json_int_t)ms);
}
