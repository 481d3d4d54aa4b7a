/*
 * hart.c - the hart thread: requests, timer, interrupts, sleep, bursts.
 *
 * A hart thread loops: handle requests from other threads, update the
 * timer interrupt, take a pending interrupt, then execute a burst of up to
 * BURST instructions, with the JIT (jit.c, through the decoded executor,
 * exec.c), the decoded executor alone (FERRY_CPU=decoded) or the
 * reference interpreter (FERRY_CPU=interp, interp.c). Interrupts are
 * taken only between bursts, so always at an instruction boundary; a burst also ends early when an instruction
 * changes what the loop must look at (WFI, a CSR write, xRET) or another
 * thread posts a request.
 */
#include "cpu/hart.h"
#include "cpu/internal.h"
#include "util/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BURST 8192

void hart_run_burst(struct hart *h, uint64_t budget)
{
	if (unlikely(h->reference))
		cpu_run_reference(h, budget);
	else
		cpu_run_decoded(h, budget);
}

/* ---- the hart thread ---------------------------------------------------- */

/* FERRY_CPU picks the executor: "jit" (the default on x86-64 hosts),
 * "decoded" (the decoded executor alone, the default elsewhere) or
 * "interp" (the reference interpreter). */
enum executor { EXECUTOR_JIT, EXECUTOR_DECODED, EXECUTOR_INTERP, EXECUTOR_BAD };

static enum executor executor_from_env(void)
{
	const char *cpu = getenv("FERRY_CPU");
	if (!cpu || !*cpu || !strcmp(cpu, "jit"))
		return EXECUTOR_JIT;
	if (!strcmp(cpu, "decoded"))
		return EXECUTOR_DECODED;
	if (!strcmp(cpu, "interp"))
		return EXECUTOR_INTERP;
	return EXECUTOR_BAD;
}

const char *cpu_executor_error(void)
{
	if (executor_from_env() == EXECUTOR_BAD)
		return "FERRY_CPU must be jit (the default), decoded or interp";
	return NULL;
}

void hart_init(struct hart *h, const struct cpu_bus *bus, unsigned id)
{
	memset(h, 0, offsetof(struct hart, tlbs));
	h->bus = bus;
	h->id = id;
	h->dpages = xcalloc(bus->ram_size >> PAGE_SHIFT, sizeof(*h->dpages), "decoded code");
	enum executor ex = executor_from_env();
	h->reference = ex == EXECUTOR_INTERP;
#if defined(__x86_64__)
	h->jit = ex == EXECUTOR_JIT || ex == EXECUTOR_BAD;   /* ferry-vm refused a bad one */
#endif
	hart_reset_csrs(h);
	h->jtc_filled = (1u << TLBCTX_COUNT) - 1;   /* so that the flush empties them */
	tlb_flush_all(h);
	atomic_store(&h->hsm, id == 0 ? HSM_STARTED : HSM_STOPPED);
	pthread_mutex_init(&h->sleep_lock, NULL);
	/* hart_sleep's deadlines are CLOCK_MONOTONIC: the condition variable
	 * must wait on that clock, or every timed wait returns at once and an
	 * idle hart spins */
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->sleep_cond, &ca);
	pthread_condattr_destroy(&ca);
}

void hart_kick(struct hart *h)
{
	pthread_mutex_lock(&h->sleep_lock);
	pthread_cond_signal(&h->sleep_cond);
	pthread_mutex_unlock(&h->sleep_lock);
}

void hart_raise(struct hart *h, uint64_t bit)
{
	if (atomic_fetch_or(&h->mip, bit) & bit)
		return;
	atomic_fetch_or(&h->requests, REQ_INTERRUPT);
	hart_kick(h);
}

void hart_request(struct hart *h, unsigned req)
{
	atomic_fetch_or(&h->requests, req);
	hart_kick(h);
}

void hart_serve_flushes(struct hart *h)
{
	unsigned req = atomic_load(&h->requests);
	if (req & REQ_TLB_FLUSH) {
		tlb_flush_all(h);
		atomic_fetch_and(&h->requests, ~REQ_TLB_FLUSH);
	}
	if (req & REQ_WTLB_FLUSH) {
		tlb_flush_writes(h);
		atomic_fetch_and(&h->requests, ~REQ_WTLB_FLUSH);
	}
}

/* Handle requests; returns true when the thread must end. */
static bool handle_requests(struct hart *h)
{
	unsigned req = atomic_load(&h->requests);
	if (req & REQ_EXIT)
		return true;
	if (req & REQ_INTERRUPT)     /* the loop looks at mip next anyway */
		atomic_fetch_and(&h->requests, ~REQ_INTERRUPT);
	hart_serve_flushes(h);
	if (req & REQ_PAUSE) {
		atomic_store(&h->in_guest, false);
		h->bus->ops->park(h->bus->ctx, h);
		atomic_store(&h->in_guest, true);
	}
	return false;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A hart that can never run again by itself: stopped in HSM (only a
 * running hart could start it), or waiting in WFI with every interrupt
 * disabled in mie (WFI wakes only for an interrupt enabled there). Read
 * from other harts' threads: the fields of a hart in that state no longer
 * change. */
static bool hart_hopeless(struct hart *h)
{
	int hsm = atomic_load(&h->hsm);
	if (hsm == HSM_STOPPED)
		return true;
	return hsm == HSM_STARTED && __atomic_load_n(&h->wfi, __ATOMIC_RELAXED) &&
	       __atomic_load_n(&h->mie, __ATOMIC_RELAXED) == 0;
}

/* When no hart can ever run again the guest is dead (a kernel cut short
 * parks its harts like that): say so and end, rather than sleep forever.
 * Every hart that sleeps hopelessly checks, and a WFI sleeper checks again
 * at each timed wake-up, so the last one to get there sees it. */
static void check_guest_alive(struct hart *h)
{
	const struct cpu_bus *b = h->bus;
	for (unsigned i = 0; i < b->nharts; i++)
		if (!hart_hopeless(b->harts[i]))
			return;
	char why[200];
	snprintf(why, sizeof(why), "the guest can never run again: every hart is stopped "
		 "or waits for an interrupt with all interrupts disabled (hart %u waits at "
		 "pc %#llx with mie 0); is the kernel complete?", h->id,
		 (unsigned long long)h->pc);
	b->ops->fail(b->ctx, why);
}

/* Sleep until an interrupt is pending (WFI) or the hart is started (HSM),
 * a request arrives, or the timer fires. */
static void hart_sleep(struct hart *h)
{
	atomic_store(&h->in_guest, false);
	pthread_mutex_lock(&h->sleep_lock);
	for (;;) {
		if (atomic_load(&h->requests))
			break;
		int hsm = atomic_load(&h->hsm);
		if (hsm == HSM_START_PENDING)
			break;
		if (hart_hopeless(h))
			check_guest_alive(h);
		if (hsm == HSM_STARTED) {
			if (atomic_load(&h->mip) & h->mie)
				break;
			/* a timer whose interrupt is disabled in mie cannot wake
			 * the hart: a deadline already past would make it spin */
			uint64_t now = hart_read_time(h);
			uint64_t next = (h->mie & MIP_STIP) ? h->timecmp : ~0ULL;
			if ((h->mie & MIP_MTIP) && h->mtimecmp < next)
				next = h->mtimecmp;
			if (now >= next)
				break;
			/* sleep until the timer deadline, at most 100 ms at a time */
			uint64_t wait = (next - now) * (1000000000ULL / h->bus->timebase_hz);
			if (wait > 100000000ULL)
				wait = 100000000ULL;
			uint64_t deadline = now_ns() + wait;
			struct timespec ts = { (time_t)(deadline / 1000000000ULL),
					       (long)(deadline % 1000000000ULL) };
			pthread_cond_timedwait(&h->sleep_cond, &h->sleep_lock, &ts);
		} else {
			pthread_cond_wait(&h->sleep_cond, &h->sleep_lock);
		}
	}
	pthread_mutex_unlock(&h->sleep_lock);
	atomic_store(&h->in_guest, true);
}

/* HSM: a stopped hart begins at start_addr in S mode, a0 = hartid,
 * a1 = opaque, with translation off (SBI spec, hart_start). */
static void hart_begin(struct hart *h)
{
	h->priv = PRV_S;
	h->satp = 0;
	h->mstatus &= ~MSTATUS_SIE;
	h->pc = h->start_addr;
	h->x[10] = h->id;
	h->x[11] = h->start_opaque;
	h->wfi = false;
	hart_update_tlb_context(h);
	tlb_flush_all(h);
	atomic_store(&h->hsm, HSM_STARTED);
}

static void update_timer_bit(struct hart *h, uint64_t bit, bool due)
{
	uint64_t mip = atomic_load_explicit(&h->mip, memory_order_relaxed);
	if (due != !!(mip & bit)) {
		if (due)
			atomic_fetch_or(&h->mip, bit);
		else
			atomic_fetch_and(&h->mip, ~bit);
	}
}

static void update_timer(struct hart *h)
{
	uint64_t now = hart_read_time(h);
	update_timer_bit(h, MIP_STIP, now >= h->timecmp);
	update_timer_bit(h, MIP_MTIP, now >= h->mtimecmp);
}

/* Migration throttle: run a burst, then sleep so that the hart runs only
 * (100 - pct)% of the time. Sleep debt accumulates to whole milliseconds,
 * since shorter sleeps are not honoured precisely. */
static void run_throttled(struct hart *h)
{
	uint64_t t0 = now_ns();
	hart_run_burst(h, BURST);
	int pct = atomic_load(h->bus->throttle_pct);
	if (pct <= 0)
		return;
	if (pct > 99)
		pct = 99;
	h->sleep_debt_ns += (now_ns() - t0) * (uint64_t)pct / (uint64_t)(100 - pct);
	if (h->sleep_debt_ns >= 1000000) {
		struct timespec ts = { 0, (long)h->sleep_debt_ns };
		if (h->sleep_debt_ns >= 1000000000ULL)
			ts = (struct timespec){ 0, 999999999 };
		h->sleep_debt_ns = 0;
		nanosleep(&ts, NULL);
	}
}

void *hart_thread(void *arg)
{
	struct hart *h = arg;
	atomic_store(&h->in_guest, true);
	for (;;) {
		if (atomic_load_explicit(&h->requests, memory_order_acquire) &&
		    handle_requests(h))
			break;
		int hsm = atomic_load(&h->hsm);
		if (hsm != HSM_STARTED) {
			if (hsm == HSM_START_PENDING)
				hart_begin(h);
			else
				hart_sleep(h);
			continue;
		}
		update_timer(h);
		if (h->wfi) {
			if (atomic_load(&h->mip) & h->mie)
				h->wfi = false;
			else {
				hart_sleep(h);
				continue;
			}
		}
		hart_check_interrupts(h);
		if (atomic_load_explicit(h->bus->throttle_pct, memory_order_relaxed))
			run_throttled(h);
		else
			hart_run_burst(h, BURST);
	}
	atomic_store(&h->in_guest, false);
	return NULL;
}
