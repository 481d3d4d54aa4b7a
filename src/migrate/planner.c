/*
 * planner.c - the convergence policy of pre-copy (see planner.h).
 *
 * Switch over as soon as what is left fits the downtime target at the
 * measured bandwidth. A round that leaves more than 90% of what the round
 * before left counts as a stall; two stalls in a row, or one while the
 * guest dirties memory faster than the link carries it, mean pre-copy
 * will not converge. Then, in order of preference: go post-copy if the
 * user allowed it, else throttle the vCPUs: aim at a dirty rate of half
 * the bandwidth (the unthrottled rate is the measured one scaled back by
 * the current throttle), at least 15% more than before, at most 95%.
 * Rounds of a big hot set on a slow link last long, so guessing the
 * needed throttle in one step beats creeping up on it. With a completion budget
 * (max_total_ms), escalate early: past half the budget a stall goes
 * straight to post-copy or a bigger throttle step, and at 90% of the
 * budget switch over whatever the downtime, so the migration ends in time
 * (post-copy first if allowed, since it keeps downtime short).
 */
#include "migrate/planner.h"

#define STALL_RATIO_PCT 90
#define THROTTLE_FIRST  20
#define THROTTLE_STEP   15
#define THROTTLE_MAX    95

static uint64_t expected_ms(uint64_t bytes, uint64_t bps)
{
	if (bps == 0)
		return UINT64_MAX;
	return bytes * 1000 / bps;
}

static int throttle_up(const struct plan_state *st, int step)
{
	int pct = st->throttle_pct ? st->throttle_pct + step : THROTTLE_FIRST;
	if (st->dirty_bps && st->bandwidth_bps) {
		/* what the guest would dirty unthrottled, and the share of
		 * time that brings it to half the link */
		double unthrottled = (double)st->dirty_bps * 100.0 / (100 - st->throttle_pct);
		double want = 100.0 - 100.0 * (double)st->bandwidth_bps / 2 / unthrottled;
		if (want > pct)
			pct = (int)want + 1;
	}
	return pct > THROTTLE_MAX ? THROTTLE_MAX : pct;
}

struct plan_decision plan_next(const struct plan_params *p, struct plan_state *st)
{
	struct plan_decision d = { PLAN_NEXT_ROUND, st->throttle_pct, false, 0, "pre-copy" };
	d.expected_downtime_ms = expected_ms(st->remaining_bytes, st->bandwidth_bps);

	if (st->round > 1 && st->remaining_bytes * 100 > st->prev_remaining * STALL_RATIO_PCT)
		st->stall_rounds++;
	else
		st->stall_rounds = 0;
	d.stalled = st->stall_rounds >= 2 ||
		    (st->stall_rounds && st->dirty_bps > st->bandwidth_bps);

	if (st->round >= 1 && d.expected_downtime_ms <= p->downtime_ms) {
		d.action = PLAN_SWITCHOVER;
		d.why = "remaining memory fits the downtime target";
		return d;
	}

	bool over_half = p->max_total_ms && st->elapsed_ms * 2 >= p->max_total_ms;
	bool nearly_out = p->max_total_ms && st->elapsed_ms * 10 >= p->max_total_ms * 9;
	if (nearly_out) {
		d.action = p->postcopy ? PLAN_POSTCOPY : PLAN_SWITCHOVER;
		d.why = "completion budget nearly spent";
		return d;
	}
	if (!d.stalled && !(over_half && st->stall_rounds))
		return d;

	if (p->postcopy) {
		d.action = PLAN_POSTCOPY;
		d.why = "pre-copy stalled: switching to post-copy";
		return d;
	}
	if (p->throttle && st->throttle_pct < THROTTLE_MAX) {
		d.throttle_pct = throttle_up(st, over_half ? 2 * THROTTLE_STEP : THROTTLE_STEP);
		st->stall_rounds = 0;
		d.why = "pre-copy stalled: throttling vCPUs";
		return d;
	}
	d.why = "pre-copy stalled at the maximum throttle; waiting for the guest to slow "
		"down (set max_total_s or postcopy to bound the migration)";
	return d;
}
