/*
 * test_sbuf.c - the state buffer round-trips values and refuses to read
 * past its end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util/sbuf.h"

static void roundtrip(void **state)
{
	(void)state;
	struct sbuf w, r;
	sbuf_init(&w);
	sbuf_put_u8(&w, 0xab);
	sbuf_put_u16(&w, 0x1234);
	sbuf_put_u32(&w, 0xdeadbeef);
	sbuf_put_u64(&w, 0x0123456789abcdefULL);
	assert_int_equal(w.len, 15);
	sbuf_reader(&r, w.data, w.len);
	assert_int_equal(sbuf_get_u8(&r), 0xab);
	assert_int_equal(sbuf_get_u16(&r), 0x1234);
	assert_int_equal(sbuf_get_u32(&r), 0xdeadbeef);
	assert_true(sbuf_get_u64(&r) == 0x0123456789abcdefULL);
	assert_true(sbuf_done(&r));
	sbuf_free(&w);
}

static void short_read_is_an_error(void **state)
{
	(void)state;
	uint8_t three[3] = {1, 2, 3};
	struct sbuf r;
	sbuf_reader(&r, three, sizeof(three));
	assert_int_equal(sbuf_get_u32(&r), 0);
	assert_false(sbuf_ok(&r));
	assert_int_equal(sbuf_get_u8(&r), 0);  /* stays failed */
	assert_false(sbuf_done(&r));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(roundtrip),
		cmocka_unit_test(short_read_is_an_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
