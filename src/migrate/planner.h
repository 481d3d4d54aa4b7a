/*
 * planner.h - when to switch over, when to throttle, when to go post-copy.
 *
 * Pure decision logic, apart from the I/O, so it can be tested on its own.
 * After each pre-copy round the outgoing side feeds the planner what it
 * measured; the planner answers with the next step.
 */
#ifndef FERRY_PLANNER_H
#define FERRY_PLANNER_H

#include <stdbool.h>
#include <stdint.h>

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
	uint64_t dirty_bps;         /* bytes/s the guest dirtied in the last round */
	uint64_t prev_remaining;    /* the same, one round before */
	unsigned stall_rounds;      /* consecutive rounds that did not shrink */
	int throttle_pct;           /* current vCPU throttle */
};

enum plan_action {
	PLAN_NEXT_ROUND,
	PLAN_SWITCHOVER,
	PLAN_POSTCOPY,
};

struct plan_decision {
	enum plan_action action;
	int throttle_pct;           /* throttle to apply for the next round */
	bool stalled;               /* rounds stopped shrinking */
	uint64_t expected_downtime_ms;
	const char *why;            /* a short reason, for query-migrate */
};

/* Update st->stall_rounds from the round just measured, then decide. */
struct plan_decision plan_next(const struct plan_params *p, struct plan_state *st);

#endif
