/*
 * test_planner.c - the pre-copy convergence policy: switch over when the
 * rest fits the downtime, plan the throttle that meets a completion budget
 * from the measured rates (early, not when the budget is nearly spent), go
 * post-copy or give up when nothing can, and react to stalls without one.
 *
 * simulate() plays a whole migration against the planner with the model
 * the planner itself assumes (a link of B bytes/s, a guest dirtying D
 * bytes/s of a hot set of H bytes, slowed by the throttle), so the tests
 * check the decisions end to end, round after round.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "migrate/planner.h"

#define MB (1024ULL * 1024)

static struct plan_state state(unsigned round, uint64_t remaining, uint64_t prev)
{
	struct plan_state st = { 0 };
	st.round = round;
	st.elapsed_ms = 1000;
	st.bandwidth_bps = 100 * MB;          /* 100 MiB/s */
	st.remaining_bytes = remaining;
	st.prev_remaining = prev;
	return st;
}

/* The reproduction of issue 7: 64 MiB hot, incompressible, rewritten at
 * 15 MB/s, on a 10 MB/s (80 Mbit/s) link, just after the first full copy
 * took 7 s. */
static struct plan_state hot_guest_on_a_slow_link(void)
{
	struct plan_state st = { 0 };
	st.round = 1;
	st.elapsed_ms = 7000;
	st.bandwidth_bps = 10000000;
	st.dirty_bps = 15000000;
	st.remaining_bytes = 64 * MB;
	st.prev_remaining = 0;
	return st;
}

struct outcome {
	enum plan_action action;
	uint64_t total_ms, pause_ms;
	int first_throttle;             /* chosen right after the first copy */
	int max_throttle;
	unsigned rounds;
};

static struct outcome simulate(const struct plan_params *p, struct plan_state st,
			       uint64_t unthrottled_dirty_bps, uint64_t hot)
{
	struct outcome o = { PLAN_NEXT_ROUND, 0, 0, 0, -1, 0 };
	for (unsigned i = 0; i < 100; i++) {
		struct plan_decision d = plan_next(p, &st);
		if (o.first_throttle < 0)
			o.first_throttle = d.throttle_pct;
		if (d.throttle_pct > o.max_throttle)
			o.max_throttle = d.throttle_pct;
		o.rounds = st.round;
		if (d.action != PLAN_NEXT_ROUND) {
			o.action = d.action;
			o.pause_ms = st.remaining_bytes * 1000 / st.bandwidth_bps;
			o.total_ms = st.elapsed_ms + o.pause_ms;
			return o;
		}
		st.throttle_pct = d.throttle_pct;
		uint64_t round_ms = st.remaining_bytes * 1000 / st.bandwidth_bps;
		uint64_t dirty = unthrottled_dirty_bps * (uint64_t)(100 - st.throttle_pct) / 100;
		uint64_t next = dirty * round_ms / 1000;
		st.prev_remaining = st.remaining_bytes;
		st.remaining_bytes = next < hot ? next : hot;
		st.dirty_bps = dirty;
		st.elapsed_ms += round_ms;
		st.round++;
	}
	o.total_ms = st.elapsed_ms;
	return o;
}

static void switches_over_when_the_rest_fits(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(2, 20 * MB, 200 * MB);  /* 200 ms at 100 MiB/s */
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_SWITCHOVER);
	assert_int_equal(d.expected_downtime_ms, 200);
	assert_int_equal(d.predicted_downtime_ms, 200);
	assert_int_equal(d.predicted_total_ms, 1200);
}

static void keeps_copying_while_rounds_shrink(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(2, 100 * MB, 200 * MB);
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_NEXT_ROUND);
	assert_int_equal(d.throttle_pct, 0);
	assert_false(d.stalled);
	/* nothing dirtied: one more round of 1 s, then a switchover */
	assert_int_equal(d.predicted_round_ms, 1000);
	assert_int_equal(d.predicted_total_ms, 2000);
	assert_int_equal(d.predicted_downtime_ms, 0);
}

static void throttles_after_two_stalled_rounds(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(3, 200 * MB, 200 * MB);
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_NEXT_ROUND);
	assert_int_equal(d.throttle_pct, 0);             /* one stall is noise */
	st.round++;
	d = plan_next(&p, &st);
	assert_true(d.stalled);
	assert_int_equal(d.throttle_pct, 20);
	st.throttle_pct = d.throttle_pct;
	st.round++;
	plan_next(&p, &st);
	st.round++;
	d = plan_next(&p, &st);
	assert_int_equal(d.throttle_pct, 35);
}

static void throttles_hard_when_the_guest_outruns_the_link(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(3, 200 * MB, 200 * MB);
	st.dirty_bps = 400 * MB;              /* 4x the link */
	struct plan_decision d = plan_next(&p, &st);
	assert_true(d.stalled);               /* one round is enough evidence */
	/* dirty 400 -> at most 50 MiB/s: 87.5% or more */
	assert_true(d.throttle_pct >= 88 && d.throttle_pct <= PLAN_THROTTLE_MAX);
}

static void goes_postcopy_on_stall_when_allowed(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, true, true };
	struct plan_state st = state(3, 200 * MB, 210 * MB);
	plan_next(&p, &st);
	st.round++;
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_POSTCOPY);
}

/* Issue 7: with max_total_s 20 the old planner waited for stalls, then
 * switched over at 90% of the budget with a 6.7 s pause. */
static void plans_the_throttle_that_ends_within_the_budget(void **s)
{
	(void)s;
	struct plan_params p = { 100, 20000, false, true };
	struct plan_state st = hot_guest_on_a_slow_link();
	struct plan_decision d = plan_next(&p, &st);
	/* right after the first copy, at 35% of the budget, it throttles */
	assert_int_equal(d.action, PLAN_NEXT_ROUND);
	assert_true(d.throttle_pct > 50);
	assert_true(d.predicted_total_ms <= 20000);
	assert_true(d.predicted_downtime_ms <= 100);
	assert_int_equal(d.predicted_round_ms, 64 * MB * 1000 / 10000000);

	struct outcome o = simulate(&p, hot_guest_on_a_slow_link(), 15000000, 64 * MB);
	assert_int_equal(o.action, PLAN_SWITCHOVER);
	assert_true(o.total_ms <= 20000);
	assert_true(o.pause_ms <= 100);
}

static void picks_the_smallest_throttle_that_fits(void **s)
{
	(void)s;
	struct plan_params tight = { 100, 20000, false, true };
	struct plan_params loose = { 100, 30000, false, true };
	struct outcome a = simulate(&tight, hot_guest_on_a_slow_link(), 15000000, 64 * MB);
	struct outcome b = simulate(&loose, hot_guest_on_a_slow_link(), 15000000, 64 * MB);
	assert_int_equal(b.action, PLAN_SWITCHOVER);
	assert_true(b.total_ms <= 30000 && b.pause_ms <= 100);
	assert_true(b.max_throttle > 0);
	assert_true(b.max_throttle < a.max_throttle);  /* a looser budget, a lighter hand */
}

static void goes_postcopy_when_no_throttle_can_do_it(void **s)
{
	(void)s;
	/* 64 MiB at 10 MB/s needs 6.7 s more: a 10 s budget cannot be met */
	struct plan_params p = { 100, 10000, true, true };
	struct plan_state st = hot_guest_on_a_slow_link();
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_POSTCOPY);
}

static void gives_up_rather_than_break_a_bound(void **s)
{
	(void)s;
	struct plan_params p = { 100, 10000, false, true };
	struct plan_state st = hot_guest_on_a_slow_link();
	struct plan_decision d = plan_next(&p, &st);
	/* switching over now would pause 6.7 s, far over the 1 s bound */
	assert_int_equal(d.action, PLAN_GIVE_UP);
	assert_true(d.predicted_total_ms > 10000);
	assert_non_null(d.why);
}

static void switches_over_within_the_pause_bound_when_the_budget_demands(void **s)
{
	(void)s;
	/* no throttle allowed, the guest outruns the link: 5 MB left is a
	 * 500 ms pause, over the 100 ms target but within the 1 s bound */
	struct plan_params p = { 100, 20000, false, false };
	struct plan_state st = hot_guest_on_a_slow_link();
	st.remaining_bytes = 5000000;
	st.hot_bytes = 64 * MB;
	st.elapsed_ms = 12000;
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_SWITCHOVER);
	assert_int_equal(d.predicted_downtime_ms, 500);
}

static void never_breaks_the_budget_to_switch_over(void **s)
{
	(void)s;
	/* 800 MiB left at 100 MiB/s, half a second of budget left */
	struct plan_params p = { 300, 10000, false, true };
	struct plan_state st = state(5, 800 * MB, 100 * MB);
	st.elapsed_ms = 9500;
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_GIVE_UP);
	p.postcopy = true;
	d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_POSTCOPY);
}

static void the_pause_bound(void **s)
{
	(void)s;
	assert_int_equal(plan_pause_bound_ms(0), 1000);
	assert_int_equal(plan_pause_bound_ms(100), 1000);
	assert_int_equal(plan_pause_bound_ms(500), 1500);
	assert_int_equal(plan_throttled_ms(2000, 99), 1980);
	assert_int_equal(plan_throttled_ms(2000, 0), 0);
}

static void never_switches_before_the_first_full_copy(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(0, 1 * MB, 0);
	assert_int_equal(plan_next(&p, &st).action, PLAN_NEXT_ROUND);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(switches_over_when_the_rest_fits),
		cmocka_unit_test(keeps_copying_while_rounds_shrink),
		cmocka_unit_test(throttles_after_two_stalled_rounds),
		cmocka_unit_test(throttles_hard_when_the_guest_outruns_the_link),
		cmocka_unit_test(goes_postcopy_on_stall_when_allowed),
		cmocka_unit_test(plans_the_throttle_that_ends_within_the_budget),
		cmocka_unit_test(picks_the_smallest_throttle_that_fits),
		cmocka_unit_test(goes_postcopy_when_no_throttle_can_do_it),
		cmocka_unit_test(gives_up_rather_than_break_a_bound),
		cmocka_unit_test(switches_over_within_the_pause_bound_when_the_budget_demands),
		cmocka_unit_test(never_breaks_the_budget_to_switch_over),
		cmocka_unit_test(the_pause_bound),
		cmocka_unit_test(never_switches_before_the_first_full_copy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
