/*
 * test_planner.c - the pre-copy convergence policy: switch over when the
 * rest fits the downtime, throttle or go post-copy on stalls, and meet a
 * completion budget.
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

static void switches_over_when_the_rest_fits(void **s)
{
	(void)s;
	struct plan_params p = { 300, 0, false, true };
	struct plan_state st = state(2, 20 * MB, 200 * MB);  /* 200 ms at 100 MiB/s */
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_SWITCHOVER);
	assert_int_equal(d.expected_downtime_ms, 200);
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
	assert_true(d.throttle_pct >= 88 && d.throttle_pct <= 95);
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

static void meets_the_completion_budget(void **s)
{
	(void)s;
	struct plan_params p = { 300, 10000, false, true };
	struct plan_state st = state(5, 800 * MB, 100 * MB);   /* growing */
	st.elapsed_ms = 9500;
	struct plan_decision d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_SWITCHOVER);
	p.postcopy = true;
	d = plan_next(&p, &st);
	assert_int_equal(d.action, PLAN_POSTCOPY);
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
		cmocka_unit_test(meets_the_completion_budget),
		cmocka_unit_test(never_switches_before_the_first_full_copy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
