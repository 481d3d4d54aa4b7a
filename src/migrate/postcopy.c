/*
 * postcopy.c - post-copy: resume on the destination, fetch the rest.
 *
 * When pre-copy cannot converge and the user allowed it, the source stops
 * the guest, sends CPU and device state and a bitmap of the pages the
 * destination does not have yet (those dirtied since they were last
 * sent), and hands the guest over exactly as pre-copy does. The guest
 * then runs on the destination at once. A page it touches that is still
 * missing is requested from the source (a PAGE_REQ section) and the
 * touching hart or device waits for it; meanwhile the source pushes every
 * other missing page in the background, requested pages first.
 *
 * On the destination the missing bitmap (machine.missing) is checked on
 * every TLB fill, page-table walk and device DMA (mem_ptr), so nothing
 * reads a stale page; the TLB only ever maps pages that are present.
 * Pages arriving for a page the guest already has (requested and pushed
 * both) are dropped, so a page is never overwritten after the guest
 * wrote it.
 *
 * The price of post-copy: from the handoff on, the guest's memory is split
 * between two hosts, so losing the source or the link loses the guest.
 * The destination then stops with an error rather than run with holes.
 */
#include "migrate/deadline.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "vmm.h"

#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PUSH_BATCH 64           /* background pages between request checks */

/* ---- source ------------------------------------------------------------------ */

/* Send the pages listed in a PAGE_REQ section, if still unsent. */
static int serve_request(struct migration *mg, struct mig_stream *s, uint64_t *bitmap,
			 const struct mig_section *sec)
{
	struct machine *m = mg->vmm->machine;
	uint64_t pages = m->ram_size / PAGE_SIZE;
	for (uint32_t off = 0; off + 8 <= sec->len; off += 8) {
		uint64_t pfn;
		memcpy(&pfn, sec->data + off, 8);
		if (pfn >= pages || !(bitmap[pfn / 64] & (1ULL << (pfn % 64))))
			continue;
		bitmap[pfn / 64] &= ~(1ULL << (pfn % 64));
		if (mig_put_page(s, pfn, m->ram + pfn * PAGE_SIZE))
			return -1;
	}
	pthread_mutex_lock(&mg->lock);
	mg->postcopy_requests++;
	pthread_mutex_unlock(&mg->lock);
	return mig_flush_pages(s) || mig_flush(s) ? -1 : 0;
}

/* Push up to PUSH_BATCH missing pages from *cursor on. Returns how many. */
static int push_some(struct machine *m, struct mig_stream *s, uint64_t *bitmap,
		     uint64_t *cursor)
{
	uint64_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	int sent = 0;
	while (*cursor < words && sent < PUSH_BATCH) {
		uint64_t w = bitmap[*cursor];
		if (!w) {
			(*cursor)++;
			continue;
		}
		uint64_t pfn = *cursor * 64 + (uint64_t)__builtin_ctzll(w);
		bitmap[*cursor] &= w - 1;
		if (mig_put_page(s, pfn, m->ram + pfn * PAGE_SIZE))
			return -1;
		sent++;
	}
	return sent;
}

int postcopy_run(struct migration *mg, struct mig_stream *s, uint64_t *bitmap)
{
	struct machine *m = mg->vmm->machine;
	uint64_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	uint64_t t_stop = mig_now_ms();
	char why[200];

	machine_pause(m);
	atomic_store(&m->throttle_pct, 0);
	uint64_t missing = dirty_log_harvest(m, bitmap);
	dirty_log_stop(m);
	if (vmstate_send(m, s) ||
	    mig_write_section(s, MIG_SEC_POSTCOPY, bitmap, words * sizeof(uint64_t)) ||
	    mig_write_end(s) || mig_flush(s)) {
		snprintf(mg->error, sizeof(mg->error), "post-copy switchover: %s",
			 mig_stream_error(s));
		machine_resume(m);
		return -1;
	}
	if (mig_expect(s, MIG_SEC_ACK, why, sizeof(why))) {
		snprintf(mg->error, sizeof(mg->error), "destination did not confirm: %s", why);
		machine_resume(m);
		return -1;
	}
	/* the destination holds the state: from here no deadline may cut
	 * the link the guest will fetch its pages over (deadline.h) */
	mig_watchdog_disarm(mg->watchdog);
	const char *reason = NULL;
	if (vmstate_release(m, &reason)) {
		snprintf(mg->error, sizeof(mg->error), "post-copy handoff: cannot release "
			 "devices: %s", reason);
		mig_send_error(s, reason);
		machine_resume(m);
		return -1;
	}
	if (mig_write_section(s, MIG_SEC_RELEASED, NULL, 0) || mig_flush(s) ||
	    mig_expect(s, MIG_SEC_STARTED, why, sizeof(why))) {
		snprintf(mg->error, sizeof(mg->error), "post-copy handoff failed: %s",
			 mig_stream_error(s));
		/* as in pre-copy: only disks taken back prove the destination
		 * cannot run; otherwise the outcome is unknown */
		if (vmstate_acquire(m, &reason) == 0 && vmstate_has_disks(m)) {
			machine_resume(m);
			return -1;
		}
		return -2;
	}

	/* the guest runs on the destination now; feed it */
	pthread_mutex_lock(&mg->lock);
	mg->downtime_ms_measured = mig_now_ms() - t_stop;
	mg->status = MIG_POSTCOPY;
	mg->remaining = missing * PAGE_SIZE;
	pthread_mutex_unlock(&mg->lock);
	vmm_event(mg->vmm, "MIGRATION", json_pack("{s:s}", "status", "postcopy"));

	uint64_t cursor = 0;
	for (;;) {
		bool done = cursor >= words;
		if (mig_stream_wait_readable(s, done ? 100 : 0) > 0) {
			struct mig_section sec;
			if (mig_read_section(s, &sec, NULL, 0))
				goto lost;
			if (sec.type == MIG_SEC_ACK && done)
				break;      /* the destination holds every page */
			if (sec.type != MIG_SEC_PAGE_REQ ||
			    serve_request(mg, s, bitmap, &sec))
				goto lost;
			continue;
		}
		if (done)
			continue;
		int n = push_some(m, s, bitmap, &cursor);
		if (n < 0)
			goto lost;
		if (cursor >= words && (mig_flush_pages(s) || mig_write_end(s) || mig_flush(s)))
			goto lost;
		pthread_mutex_lock(&mg->lock);
		mg->remaining = mg->remaining > (uint64_t)n * PAGE_SIZE
				? mg->remaining - (uint64_t)n * PAGE_SIZE : 0;
		mg->transferred = mig_stream_bytes(s);
		pthread_mutex_unlock(&mg->lock);
	}
	return 0;
lost:
	snprintf(mg->error, sizeof(mg->error), "post-copy: lost the destination: %s (the "
		 "guest ran there after the handoff; its memory here is as it was then, "
		 "its disks may have moved on)", mig_stream_error(s));
	return -2;
}

/* ---- destination ------------------------------------------------------------------ */

static void postcopy_fetch(struct machine *m, uint64_t pfn);

struct postcopy {
	pthread_mutex_t lock;           /* the missing bitmap's changes, failed */
	pthread_mutex_t write_lock;     /* requests to the source */
	pthread_cond_t arrived;
	struct mig_stream *s;
	int fd;
	struct vmm *vmm;
	uint64_t *requested;        /* pages asked for already */
	bool failed;
};

int postcopy_incoming_begin(struct vmm *v, struct mig_stream *s,
			    const struct mig_section *sec, char *err, size_t errlen)
{
	struct machine *m = v->machine;
	uint64_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	(void)s;
	if (sec->len != words * sizeof(uint64_t)) {
		snprintf(err, errlen, "post-copy page bitmap of %u bytes, want %llu",
			 (unsigned)sec->len,
			 (unsigned long long)(words * sizeof(uint64_t)));
		return -1;
	}
	_Atomic uint64_t *missing = calloc(words, sizeof(uint64_t));
	struct postcopy *pc = calloc(1, sizeof(*pc));
	uint64_t *requested = calloc(words, sizeof(uint64_t));
	if (!missing || !pc || !requested) {
		snprintf(err, errlen, "out of memory for the post-copy page bitmaps");
		free((void *)missing);
		free(pc);
		free(requested);
		return -1;
	}
	pc->requested = requested;
	for (uint64_t i = 0; i < words; i++) {
		uint64_t w;
		memcpy(&w, sec->data + i * 8, 8);
		atomic_store(&missing[i], w);
	}
	pthread_mutex_init(&pc->lock, NULL);
	pthread_mutex_init(&pc->write_lock, NULL);
	pthread_cond_init(&pc->arrived, NULL);
	pc->vmm = v;
	m->postcopy = pc;
	m->fetch_missing = postcopy_fetch;
	m->missing = missing;
	return 0;
}

/* A page from the source: keep it only if the guest does not have it. */
static void page_arrived(void *opaque, uint64_t pfn, const void *page)
{
	struct machine *m = opaque;
	struct postcopy *pc = m->postcopy;
	pthread_mutex_lock(&pc->lock);
	if (page_missing(m, pfn)) {
		memcpy(m->ram + pfn * PAGE_SIZE, page, PAGE_SIZE);
		atomic_fetch_and_explicit(&m->missing[pfn / 64], ~(1ULL << (pfn % 64)),
					  memory_order_release);
		pthread_cond_broadcast(&pc->arrived);
	}
	pthread_mutex_unlock(&pc->lock);
}

/* The machine's fetch_missing hook while pages are missing. */
static void postcopy_fetch(struct machine *m, uint64_t pfn)
{
	struct postcopy *pc = m->postcopy;
	if (!pc)
		return;
	pthread_mutex_lock(&pc->lock);
	bool ask = page_missing(m, pfn) && !pc->failed &&
		   !(pc->requested[pfn / 64] & (1ULL << (pfn % 64)));
	pc->requested[pfn / 64] |= 1ULL << (pfn % 64);
	pthread_mutex_unlock(&pc->lock);
	if (ask) {
		/* not under pc->lock: the receiver needs it to store pages */
		pthread_mutex_lock(&pc->write_lock);
		bool bad = mig_write_section(pc->s, MIG_SEC_PAGE_REQ, &pfn, sizeof(pfn)) ||
			   mig_flush(pc->s);
		pthread_mutex_unlock(&pc->write_lock);
		if (bad) {
			pthread_mutex_lock(&pc->lock);
			pc->failed = true;
			pthread_mutex_unlock(&pc->lock);
		}
	}
	pthread_mutex_lock(&pc->lock);
	while (page_missing(m, pfn)) {
		if (pc->failed) {
			/* the rest of the guest is gone with the source: never run
			 * on with a hole in its memory */
			pthread_mutex_unlock(&pc->lock);
			machine_exit(m, EXIT_ERROR);
			for (;;)
				pause();
		}
		pthread_cond_wait(&pc->arrived, &pc->lock);
	}
	pthread_mutex_unlock(&pc->lock);
}

static void *receiver_thread(void *arg)
{
	struct postcopy *pc = arg;
	struct machine *m = pc->vmm->machine;
	uint64_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	for (;;) {
		struct mig_section sec;
		if (mig_read_section(pc->s, &sec, NULL, m->ram_size))
			break;
		if (sec.type == MIG_SEC_RAM)
			continue;
		if (sec.type != MIG_SEC_END)
			break;
		/* every page must be here now */
		for (uint64_t i = 0; i < words; i++)
			if (atomic_load(&m->missing[i])) {
				fprintf(stderr, "ferry-vm: post-copy ended with pages missing\n");
				goto fail;
			}
		m->missing = NULL;      /* the bitmap stays allocated: harts may read it */
		pthread_mutex_lock(&pc->write_lock);
		mig_write_section(pc->s, MIG_SEC_ACK, NULL, 0);
		mig_flush(pc->s);
		pthread_mutex_unlock(&pc->write_lock);
		mig_stream_free(pc->s);
		close(pc->fd);
		return NULL;
	}
	fprintf(stderr, "ferry-vm: post-copy: %s; the guest cannot run without its "
		"memory\n", mig_stream_error(pc->s));
fail:
	pthread_mutex_lock(&pc->lock);
	pc->failed = true;
	pthread_cond_broadcast(&pc->arrived);
	pthread_mutex_unlock(&pc->lock);
	machine_exit(m, EXIT_ERROR);
	return NULL;
}

int postcopy_incoming_run(struct vmm *v, struct mig_stream *s, int fd, char *err,
			  size_t errlen)
{
	struct machine *m = v->machine;
	struct postcopy *pc = m->postcopy;
	pc->s = s;
	pc->fd = fd;
	mig_stream_set_sink(s, page_arrived, m);
	pthread_t t;
	if (pthread_create(&t, NULL, receiver_thread, pc)) {
		snprintf(err, errlen, "cannot start the post-copy receiver");
		return -1;
	}
	pthread_detach(t);
	if (machine_start(m)) {
		snprintf(err, errlen, "cannot start threads");
		return -1;
	}
	vmstate_resumed_elsewhere(m);
	vmm_event(v, "RESUME", json_object());
	return 0;
}
