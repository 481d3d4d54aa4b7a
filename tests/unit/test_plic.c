/*
 * test_plic.c - the PLIC's priorities, thresholds, claim/complete, level
 * semantics, contexts and state round trip, against the fake machine.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "fake_machine.h"
#include "machine/devices.h"
#include "util/sbuf.h"

#define MEIP (1ULL << 11)
#define SEIP (1ULL << 9)

#define PRIO(src)      (PLIC_BASE + 4 * (src))
#define PENDING        (PLIC_BASE + 0x1000)
#define ENABLE(ctx)    (PLIC_BASE + 0x2000 + 0x80 * (ctx))
#define THRESHOLD(ctx) (PLIC_BASE + 0x200000 + 0x1000 * (ctx))
#define CLAIM(ctx)     (THRESHOLD(ctx) + 4)

struct fixture {
	struct machine *m;
	struct plic *p;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->m = fake_machine_create();
	f->p = plic_create(f->m, 2);
	assert_non_null(f->p);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	plic_destroy(f->p);
	fake_machine_destroy(f->m);
	free(f);
	return 0;
}

static uint32_t rd(struct fixture *f, uint64_t pa)
{
	return (uint32_t)fake_mmio_read(f->m, pa, 4);
}

static void wr(struct fixture *f, uint64_t pa, uint32_t v)
{
	fake_mmio_write(f->m, pa, v, 4);
}

static void claim_takes_the_highest_priority(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(3), 2);
	wr(f, PRIO(5), 6);
	wr(f, PRIO(7), 6);
	wr(f, ENABLE(1), (1u << 3) | (1u << 5) | (1u << 7));    /* hart 0 S mode */
	assert_false(f->m->mip[0] & SEIP);

	plic_set_level(f->p, 3, 1);
	plic_set_level(f->p, 7, 1);
	plic_set_level(f->p, 5, 1);
	assert_true(f->m->mip[0] & SEIP);
	assert_false(f->m->mip[0] & MEIP);      /* context 0 enabled nothing */
	assert_int_equal(rd(f, PENDING), (1u << 3) | (1u << 5) | (1u << 7));

	/* 5 and 7 tie on priority: the lower number wins */
	assert_int_equal(rd(f, CLAIM(1)), 5);
	assert_int_equal(rd(f, CLAIM(1)), 7);
	assert_int_equal(rd(f, CLAIM(1)), 3);
	assert_int_equal(rd(f, CLAIM(1)), 0);   /* all in service */
	assert_false(f->m->mip[0] & SEIP);
	assert_int_equal(rd(f, PENDING), 0);
}

static void threshold_masks_low_priorities(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(4), 3);
	wr(f, ENABLE(1), 1u << 4);
	wr(f, THRESHOLD(1), 3);
	assert_int_equal(rd(f, THRESHOLD(1)), 3);
	plic_set_level(f->p, 4, 1);
	assert_false(f->m->mip[0] & SEIP);      /* priority must exceed it */
	assert_int_equal(rd(f, CLAIM(1)), 0);
	wr(f, THRESHOLD(1), 2);
	assert_true(f->m->mip[0] & SEIP);
	wr(f, PRIO(4), 0);                      /* priority 0 never interrupts */
	assert_false(f->m->mip[0] & SEIP);
}

static void complete_repends_a_line_still_high(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(10), 1);
	wr(f, ENABLE(1), 1u << 10);
	plic_set_level(f->p, 10, 1);
	assert_int_equal(rd(f, CLAIM(1)), 10);
	assert_false(f->m->mip[0] & SEIP);
	/* raising it again while in service changes nothing */
	plic_set_level(f->p, 10, 1);
	assert_false(f->m->mip[0] & SEIP);
	wr(f, CLAIM(1), 10);                    /* complete, line still high */
	assert_true(f->m->mip[0] & SEIP);
	assert_int_equal(rd(f, CLAIM(1)), 10);
	plic_set_level(f->p, 10, 0);
	wr(f, CLAIM(1), 10);                    /* complete, line low now */
	assert_false(f->m->mip[0] & SEIP);
	assert_int_equal(rd(f, CLAIM(1)), 0);
}

static void lowering_the_line_withdraws(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(2), 1);
	wr(f, ENABLE(1), 1u << 2);
	plic_set_level(f->p, 2, 1);
	assert_true(f->m->mip[0] & SEIP);
	plic_set_level(f->p, 2, 0);
	assert_false(f->m->mip[0] & SEIP);
	assert_int_equal(rd(f, CLAIM(1)), 0);
}

static void completion_of_a_disabled_source_is_ignored(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(6), 1);
	wr(f, ENABLE(1), 1u << 6);
	plic_set_level(f->p, 6, 1);
	assert_int_equal(rd(f, CLAIM(1)), 6);
	wr(f, CLAIM(0), 6);         /* context 0 has not enabled 6 */
	assert_int_equal(rd(f, CLAIM(1)), 0);
	wr(f, CLAIM(1), 6);
	assert_int_equal(rd(f, CLAIM(1)), 6);
}

static void contexts_reach_the_right_hart_and_mode(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(9), 1);
	wr(f, ENABLE(2), 1u << 9);      /* hart 1, M mode */
	plic_set_level(f->p, 9, 1);
	assert_true(f->m->mip[1] & MEIP);
	assert_false(f->m->mip[1] & SEIP);
	assert_int_equal(f->m->mip[0], 0);
	wr(f, ENABLE(3), 1u << 9);      /* hart 1, S mode too */
	assert_true(f->m->mip[1] & SEIP);
	assert_int_equal(rd(f, CLAIM(3)), 9);   /* one claim serves both */
	assert_int_equal(f->m->mip[1], 0);
	/* beyond the last context: reads zero, writes do nothing */
	assert_int_equal(rd(f, CLAIM(4)), 0);
	wr(f, ENABLE(4), ~0u);
	assert_int_equal(rd(f, ENABLE(4)), 0);
	/* source 0 does not exist */
	wr(f, ENABLE(0), ~0u);
	assert_int_equal(rd(f, ENABLE(0)), 0xfffffffeu);
	plic_set_level(f->p, 0, 1);
	plic_set_level(f->p, 99, 1);
	assert_int_equal(rd(f, PENDING), 0);    /* 9 is in service */
}

static void state_round_trips(void **state)
{
	struct fixture *f = *state;
	wr(f, PRIO(1), 5);
	wr(f, PRIO(8), 7);
	wr(f, ENABLE(1), (1u << 1) | (1u << 8));
	wr(f, ENABLE(2), 1u << 8);
	wr(f, THRESHOLD(1), 1);
	plic_set_level(f->p, 1, 1);
	plic_set_level(f->p, 8, 1);
	assert_int_equal(rd(f, CLAIM(2)), 8);   /* 8 in service, 1 pending */

	const struct fake_state *s = fake_state(f->m, "plic");
	assert_non_null(s);
	struct sbuf out, in;
	sbuf_init(&out);
	s->ops->save(s->dev, &out);

	struct machine *m2 = fake_machine_create();
	struct plic *p2 = plic_create(m2, 2);
	const struct fake_state *s2 = fake_state(m2, "plic");
	const char *why = NULL;
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), 0);
	assert_true(sbuf_done(&in));

	assert_int_equal(fake_mmio_read(m2, PRIO(8), 4), 7);
	assert_int_equal(fake_mmio_read(m2, THRESHOLD(1), 4), 1);
	assert_int_equal(fake_mmio_read(m2, ENABLE(2), 4), 1u << 8);
	assert_true(m2->mip[0] & SEIP);         /* outputs driven after load */
	assert_int_equal(fake_mmio_read(m2, CLAIM(1), 4), 1);
	assert_int_equal(fake_mmio_read(m2, CLAIM(1), 4), 0);   /* 8 still in service */
	fake_mmio_write(m2, CLAIM(2), 8, 4);
	assert_int_equal(fake_mmio_read(m2, CLAIM(1), 4), 8);   /* line still high */

	/* truncated state and another hart count are refused */
	sbuf_reader(&in, out.data, out.len - 1);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), -1);
	assert_non_null(why);
	struct machine *m3 = fake_machine_create();
	struct plic *p3 = plic_create(m3, 1);
	const struct fake_state *s3 = fake_state(m3, "plic");
	sbuf_reader(&in, out.data, out.len);
	why = NULL;
	assert_int_equal(s3->ops->load(s3->dev, &in, s3->ops->version, &why), -1);
	assert_non_null(why);

	plic_destroy(p3);
	fake_machine_destroy(m3);
	plic_destroy(p2);
	fake_machine_destroy(m2);
	sbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(claim_takes_the_highest_priority, setup, teardown),
		cmocka_unit_test_setup_teardown(threshold_masks_low_priorities, setup, teardown),
		cmocka_unit_test_setup_teardown(complete_repends_a_line_still_high, setup, teardown),
		cmocka_unit_test_setup_teardown(lowering_the_line_withdraws, setup, teardown),
		cmocka_unit_test_setup_teardown(completion_of_a_disabled_source_is_ignored, setup,
						teardown),
		cmocka_unit_test_setup_teardown(contexts_reach_the_right_hart_and_mode, setup,
						teardown),
		cmocka_unit_test_setup_teardown(state_round_trips, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
