/*
 * planner.c - the convergence policy of pre-copy (see planner.h).
 *
 * The planner plans rather than reacts. After each round it knows the
 * link's rate B, the guest's dirty rate (measured early in the round,
 * before the hot set saturates, and scaled back by the throttle it ran
 * under to the unthrottled rate D), the biggest dirty set seen (the hot
 * set H) and what is left (R). A round sends R in R/B seconds, during
 * which a guest throttled by t dirties min(H, D(1-t)R/B); so rounds shrink
 * by D(1-t)/B each, and pre-copy ends when R fits the downtime target at
 * B. forecast() runs that recurrence for a throttle level: when it ends,
 * with what pause, how much guest time the throttle takes. It assumes the
 * guest dirties half again as fast as the fastest it was seen to (scaled
 * back by the throttle): on a busy host the guest gets less CPU in an
 * unthrottled round than its fair share, so it looks slower than it is,
 * and an underestimate costs the budget while an overestimate costs only
 * some throttle.
 *
 * With a completion budget (max_total_ms), every round picks the smallest
 * throttle whose forecast ends a margin before the budget (15%, at least
 * 1 s, for what the measurements get wrong): it escalates as soon as the
 * numbers say so, not when the budget is nearly spent. If no throttle up to
 * 99% gets there: post-copy if allowed; else the biggest throttle if it
 * still ends within the budget itself; else switch over at once if that
 * pause stays within the pause bound; else give up, and the guest keeps
 * running here untouched, rather than break the budget or the pause.
 *
 * Without a budget the planner keeps the reactive policy: a round that
 * leaves more than 90% of what the one before left counts as a stall; two
 * in a row, or one while the guest dirties faster than the link carries,
 * mean pre-copy will not converge: go post-copy if allowed, else throttle
 * to a dirty rate of half the link (at least 15 points more than before).
 */
#include "migrate/planner.h"

#define STALL_RATIO_PCT     90
#define THROTTLE_FIRST      20
#define THROTTLE_STEP       15
#define BUDGET_MARGIN_PCT   15
#define BUDGET_MARGIN_MIN   1000    /* ms */
#define FORECAST_ROUNDS     64
#define PAUSE_BOUND_FACTOR  3
#define PAUSE_BOUND_MIN     1000    /* ms */
#define DIRTY_MARGIN_PCT    150     /* plan for a guest this much faster */

uint64_t plan_pause_bound_ms(uint64_t downtime_ms)
{
	uint64_t b = downtime_ms * PAUSE_BOUND_FACTOR;
	return b < PAUSE_BOUND_MIN ? PAUSE_BOUND_MIN : b;
}

uint64_t plan_throttled_ms(uint64_t ms, int pct)
{
	return pct > 0 ? ms * (uint64_t)pct / 100 : 0;
}

static uint64_t expected_ms(uint64_t bytes, uint64_t bps)
{
	if (bps == 0)
		return UINT64_MAX;
	return (uint64_t)((unsigned __int128)bytes * 1000 / bps);
}

/* What the guest would dirty without any throttle, in bytes/s. */
static double unthrottled_dirty_bps(const struct plan_state *st)
{
	int t = st->throttle_pct > PLAN_THROTTLE_MAX ? PLAN_THROTTLE_MAX : st->throttle_pct;
	return (double)st->dirty_bps * 100.0 / (100 - t);
}

struct forecast {
	bool converges;
	uint64_t total_ms;          /* from the start of the migration */
	uint64_t pause_ms;
	uint64_t round_ms;          /* the next round */
};

/* The rest of the migration at throttle pct, round by round. */
static struct forecast forecast(const struct plan_params *p, const struct plan_state *st,
				int pct)
{
	struct forecast f = { false, UINT64_MAX, UINT64_MAX, UINT64_MAX };
	if (!st->bandwidth_bps)
		return f;
	double bw = (double)st->bandwidth_bps;
	double dirty = (double)st->peak_dirty_bps * DIRTY_MARGIN_PCT / 100.0 *
		       (100 - pct) / 100.0;
	double hot = (double)(st->hot_bytes > st->remaining_bytes ? st->hot_bytes
								     : st->remaining_bytes);
	double left = (double)st->remaining_bytes;
	double fits = bw * (double)p->downtime_ms / 1000.0;
	double t = (double)st->elapsed_ms / 1000.0;
	for (int i = 0; i < FORECAST_ROUNDS; i++) {
		if (left <= fits) {
			f.converges = true;
			f.pause_ms = (uint64_t)(left / bw * 1000.0);
			f.total_ms = (uint64_t)(t * 1000.0) + f.pause_ms;
			if (i == 0)
				f.round_ms = 0;
			return f;
		}
		double round_s = left / bw;
		if (i == 0)
			f.round_ms = (uint64_t)(round_s * 1000.0);
		t += round_s;
		double next = dirty * round_s;
		if (next > hot)
			next = hot;
		if (next >= left)
			return f;       /* rounds stop shrinking: never ends */
		left = next;
	}
	return f;
}

static void predict(struct plan_decision *d, const struct forecast *f)
{
	d->predicted_total_ms = f->total_ms;
	d->predicted_downtime_ms = f->pause_ms;
	d->predicted_round_ms = f->round_ms;
}

static void measure_round(struct plan_state *st)
{
	if (st->round > 1 && st->remaining_bytes * 100 > st->prev_remaining * STALL_RATIO_PCT)
		st->stall_rounds++;
	else
		st->stall_rounds = 0;
	if (st->round >= 1 && st->remaining_bytes > st->hot_bytes)
		st->hot_bytes = st->remaining_bytes;
	uint64_t unthrottled = (uint64_t)unthrottled_dirty_bps(st);
	if (unthrottled > st->peak_dirty_bps)
		st->peak_dirty_bps = unthrottled;
}

/* With a completion budget: the smallest throttle that ends in time. */
static void plan_for_budget(const struct plan_params *p, struct plan_state *st,
			    struct plan_decision *d)
{
	uint64_t budget = p->max_total_ms;
	uint64_t margin = budget * BUDGET_MARGIN_PCT / 100;
	if (margin < BUDGET_MARGIN_MIN)
		margin = BUDGET_MARGIN_MIN;
	uint64_t goal = budget > margin ? budget - margin : budget / 2;
	int lo = st->throttle_pct, hi = p->throttle ? PLAN_THROTTLE_MAX : st->throttle_pct;

	for (int pct = lo; pct <= hi; pct++) {
		struct forecast f = forecast(p, st, pct);
		if (f.converges && f.total_ms <= goal) {
			d->throttle_pct = pct;
			predict(d, &f);
			d->why = pct > lo ? "planned: throttling the vCPUs to end within the budget"
					  : "pre-copy, on course to end within the budget";
			return;
		}
	}
	if (p->postcopy) {
		struct forecast f = forecast(p, st, lo);
		predict(d, &f);
		d->action = PLAN_POSTCOPY;
		d->why = "pre-copy cannot end within the budget: switching to post-copy";
		return;
	}
	struct forecast f = forecast(p, st, hi);
	if (f.converges && f.total_ms <= budget) {
		d->throttle_pct = hi;
		predict(d, &f);
		d->why = "planned: the biggest throttle, to end within the budget";
		return;
	}
	uint64_t pause_now = d->expected_downtime_ms;
	if (pause_now <= plan_pause_bound_ms(p->downtime_ms) &&
	    st->elapsed_ms + pause_now <= budget) {
		d->action = PLAN_SWITCHOVER;
		d->predicted_total_ms = st->elapsed_ms + pause_now;
		d->predicted_downtime_ms = pause_now;
		d->why = "budget: switching over now, above the downtime target but within "
			 "the pause bound";
		return;
	}
	predict(d, &f);
	d->action = PLAN_GIVE_UP;
	d->why = "cannot end within the budget (max_total_s) with the pause within its "
		 "bound, even throttled: allow post-copy, a bigger budget or downtime, or "
		 "more bandwidth";
}

/* Without a budget: react to stalls. */
static int throttle_up(const struct plan_state *st)
{
	int pct = st->throttle_pct ? st->throttle_pct + THROTTLE_STEP : THROTTLE_FIRST;
	if (st->dirty_bps && st->bandwidth_bps) {
		/* the share of time that brings the guest to half the link */
		double want = 100.0 - 100.0 * (double)st->bandwidth_bps / 2 /
				      unthrottled_dirty_bps(st);
		if (want > pct)
			pct = (int)want + 1;
	}
	return pct > PLAN_THROTTLE_MAX ? PLAN_THROTTLE_MAX : pct;
}

static void plan_on_stalls(const struct plan_params *p, struct plan_state *st,
			   struct plan_decision *d)
{
	if (!d->stalled)
		return;
	if (p->postcopy) {
		d->action = PLAN_POSTCOPY;
		d->why = "pre-copy stalled: switching to post-copy";
		return;
	}
	if (p->throttle && st->throttle_pct < PLAN_THROTTLE_MAX) {
		d->throttle_pct = throttle_up(st);
		st->stall_rounds = 0;
		struct forecast f = forecast(p, st, d->throttle_pct);
		predict(d, &f);
		d->why = "pre-copy stalled: throttling vCPUs";
		return;
	}
	d->why = "pre-copy stalled at the maximum throttle; waiting for the guest to slow "
		"down (set max_total_s or postcopy to bound the migration)";
}

struct plan_decision plan_next(const struct plan_params *p, struct plan_state *st)
{
	struct plan_decision d = { PLAN_NEXT_ROUND, st->throttle_pct, false, 0,
				   UINT64_MAX, UINT64_MAX, UINT64_MAX, "pre-copy" };
	d.expected_downtime_ms = expected_ms(st->remaining_bytes, st->bandwidth_bps);
	measure_round(st);
	d.stalled = st->stall_rounds >= 2 ||
		    (st->stall_rounds && st->dirty_bps > st->bandwidth_bps);
	if (st->round == 0)
		return d;       /* nothing is measured before the first full copy */

	struct forecast now = forecast(p, st, st->throttle_pct);
	predict(&d, &now);
	bool in_budget = !p->max_total_ms ||
			 st->elapsed_ms + d.expected_downtime_ms <= p->max_total_ms;
	if (d.expected_downtime_ms <= p->downtime_ms && in_budget) {
		d.action = PLAN_SWITCHOVER;
		d.why = "remaining memory fits the downtime target";
		return d;
	}
	if (p->max_total_ms)
		plan_for_budget(p, st, &d);
	else
		plan_on_stalls(p, st, &d);
	return d;
}
