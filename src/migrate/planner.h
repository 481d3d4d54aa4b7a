/*
 * planner.h - when to switch over, how hard to throttle, when to go
 * post-copy, and when to give up.
 *
 * Pure decision logic, apart from the I/O, so it can be tested on its own.
 * After each pre-copy round the outgoing side feeds the planner what it
 * measured (link rate, the guest's dirty rate, what is left); the planner
 * predicts how the rest of the migration goes at each throttle level and
 * answers with the next step, the predicted end and the predicted pause.
 */
#ifndef FERRY_PLANNER_H
#define FERRY_PLANNER_H

#include <stdbool.h>
#include <stdint.h>

#define PLAN_THROTTLE_MAX 99            /* the guest keeps 1% of its time */

struct plan_params {
	uint64_t downtime_ms;       /* target for the stop-and-copy phase */
	uint64_t max_total_ms;      /* completion budget, 0 = none */
	bool postcopy;              /* allowed to switch to post-copy */
	bool throttle;              /* allowed to throttle the vCPUs */
};

struct plan_state {
	unsigned round;             /* rounds done */
	uint64_t elapsed_ms;        /* since the migration started */
	uint64_t bandwidth_bps;     /* measured bytes/s of the link */
	uint64_t remaining_bytes;   /* what the next round would send */
	uint64_t dirty_bps;         /* bytes/s the guest dirtied in the last round,
	                             * at the throttle it ran under */
	uint64_t prev_remaining;    /* the same, one round before */
	uint64_t hot_bytes;         /* the biggest dirty set seen after a round:
	                             * no round leaves more than this */
	uint64_t peak_dirty_bps;    /* the biggest unthrottled dirty rate seen
	                             * (dirty_bps scaled back by the throttle) */
	unsigned stall_rounds;      /* consecutive rounds that did not shrink */
	int throttle_pct;           /* current vCPU throttle */
};

enum plan_action {
	PLAN_NEXT_ROUND,
	PLAN_SWITCHOVER,
	PLAN_POSTCOPY,
	PLAN_GIVE_UP,               /* the budget cannot be kept: fail, guest stays */
};

struct plan_decision {
	enum plan_action action;
	int throttle_pct;           /* throttle to apply for the next round */
	bool stalled;               /* rounds stopped shrinking */
	uint64_t expected_downtime_ms;  /* switching over now would pause this long */
	uint64_t predicted_total_ms;    /* when the migration ends (from its start);
	                                 * UINT64_MAX: it does not converge */
	uint64_t predicted_downtime_ms; /* the pause the plan ends with */
	uint64_t predicted_round_ms;    /* how long the next round should take */
	const char *why;            /* a short reason, for query-migrate */
};

/* Update st->stall_rounds and st->hot_bytes from the round just measured,
 * then decide. */
struct plan_decision plan_next(const struct plan_params *p, struct plan_state *st);

/* The longest pause the outgoing side allows a switchover before it gives
 * up and resumes the guest here: 3x the target, at least 1 s. */
uint64_t plan_pause_bound_ms(uint64_t downtime_ms);

/* Guest time taken by a throttle of pct over ms of wall time. */
uint64_t plan_throttled_ms(uint64_t ms, int pct);

#endif
