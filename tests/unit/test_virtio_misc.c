/*
 * test_virtio_misc.c - virtio-rng fills the guest's buffers, and
 * virtio-console moves bytes between its descriptors and the guest.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <linux/virtio_config.h>

#include "fake_machine.h"
#include "machine/devices.h"
#include "util/sbuf.h"

#define BASE    VIRTIO_BASE
#define QSIZE   8
#define RINGS   (RAM_BASE + 0x10000)
#define BUF     (RAM_BASE + 0x20000)
#define FEATURES (1ULL << VIRTIO_F_VERSION_1)

static void rng_fills_buffers(void **state)
{
	(void)state;
	struct machine *m = fake_machine_create();
	struct virtio_dev *d = virtio_rng_create(m, 0);
	struct fake_vq q;
	assert_non_null(d);
	assert_int_equal(fake_mmio_read(m, BASE + 8, 4), 4);
	assert_true(fake_virtio_setup(m, BASE, FEATURES, &q, 1, QSIZE, RINGS) &
		    VIRTIO_CONFIG_S_DRIVER_OK);
	struct fake_buf b[2] = { { BUF, 64, true }, { BUF + 0x1000, 32, true } };
	fake_vq_add(m, &q, b, 2);
	fake_vq_kick(m, BASE, 0);
	uint32_t id, len;
	assert_true(fake_vq_used(m, &q, &id, &len));
	assert_int_equal(len, 96);
	assert_true(fake_dirty_covers(m, BUF, 64));
	assert_true(fake_dirty_covers(m, BUF + 0x1000, 32));
	static const uint8_t zero[64];
	assert_memory_not_equal(fake_gpa(m, BUF), zero, 64);
	assert_memory_not_equal(fake_gpa(m, BUF + 0x1000), zero, 32);
	assert_int_equal(m->irq[VIRTIO_IRQ0], 1);
	/* no host resource to hand over: migration must not count it a disk */
	const struct fake_state *s = fake_state(m, "virtio-rng.0");
	assert_non_null(s);
	assert_null(s->ops->acquire);
	assert_null(s->ops->release);
	virtio_destroy(d);
	fake_machine_destroy(m);
}

struct console_fixture {
	struct machine *m;
	struct virtio_dev *d;
	int in[2], out[2];
	struct fake_vq q[2];    /* receive, transmit */
};

static int console_setup(void **state)
{
	struct console_fixture *f = calloc(1, sizeof(*f));
	assert_int_equal(pipe2(f->in, O_NONBLOCK), 0);
	assert_int_equal(pipe2(f->out, O_NONBLOCK), 0);
	f->m = fake_machine_create();
	f->d = virtio_console_create(f->m, 2, f->in[0], f->out[1]);
	assert_non_null(f->d);
	assert_true(fake_virtio_setup(f->m, BASE + 2 * VIRTIO_STRIDE, FEATURES, f->q, 2, QSIZE,
				      RINGS) & VIRTIO_CONFIG_S_DRIVER_OK);
	*state = f;
	return 0;
}

static int console_teardown(void **state)
{
	struct console_fixture *f = *state;
	virtio_destroy(f->d);
	fake_machine_destroy(f->m);
	for (int i = 0; i < 2; i++) {
		close(f->in[i]);
		close(f->out[i]);
	}
	free(f);
	return 0;
}

static void console_output(void **state)
{
	struct console_fixture *f = *state;
	char got[16];
	memcpy(fake_gpa(f->m, BUF), "hel", 3);
	memcpy(fake_gpa(f->m, BUF + 0x100), "lo", 2);
	struct fake_buf b[2] = { { BUF, 3, false }, { BUF + 0x100, 2, false } };
	fake_vq_add(f->m, &f->q[1], b, 2);
	fake_vq_kick(f->m, BASE + 2 * VIRTIO_STRIDE, 1);
	assert_int_equal(read(f->out[0], got, sizeof(got)), 5);
	assert_memory_equal(got, "hello", 5);
	uint32_t id, len;
	assert_true(fake_vq_used(f->m, &f->q[1], &id, &len));
	assert_int_equal(f->m->irq[VIRTIO_IRQ0 + 2], 1);
}

static void console_input(void **state)
{
	struct console_fixture *f = *state;
	uint64_t base = BASE + 2 * VIRTIO_STRIDE;
	uint32_t id, len;
	assert_int_equal(write(f->in[1], "abc", 3), 3);
	fake_io_poll(f->m);                             /* no buffers yet */
	assert_false(fake_watching(f->m, f->in[0]));
	struct fake_buf b = { BUF, 64, true };
	fake_vq_add(f->m, &f->q[0], &b, 1);
	fake_vq_kick(f->m, base, 0);
	assert_true(fake_watching(f->m, f->in[0]));
	fake_io_poll(f->m);
	assert_true(fake_vq_used(f->m, &f->q[0], &id, &len));
	assert_int_equal(len, 3);
	assert_memory_equal(fake_gpa(f->m, BUF), "abc", 3);
	assert_true(fake_dirty_covers(f->m, BUF, 3));
	assert_false(fake_dirty_covers(f->m, BUF + 3, 1));

	/* the end of input stops the watch for good */
	fake_vq_add(f->m, &f->q[0], &b, 1);
	fake_vq_kick(f->m, base, 0);
	close(f->in[1]);
	f->in[1] = open("/dev/null", O_WRONLY);
	fake_io_poll(f->m);
	assert_false(fake_watching(f->m, f->in[0]));
	assert_false(fake_vq_used(f->m, &f->q[0], &id, &len));     /* buffer kept */
	fake_vq_kick(f->m, base, 0);
	assert_false(fake_watching(f->m, f->in[0]));
}

static void console_state_round_trips(void **state)
{
	struct console_fixture *f = *state;
	const char *why = NULL;
	struct fake_buf b = { BUF, 64, true };
	fake_vq_add(f->m, &f->q[0], &b, 1);
	fake_vq_kick(f->m, BASE + 2 * VIRTIO_STRIDE, 0);

	struct sbuf out, in;
	sbuf_init(&out);
	const struct fake_state *s = fake_state(f->m, "virtio-console.2");
	assert_non_null(s);
	s->ops->save(s->dev, &out);

	int p[2];
	assert_int_equal(pipe2(p, O_NONBLOCK), 0);
	struct machine *m2 = fake_machine_create();
	struct virtio_dev *d2 = virtio_console_create(m2, 2, p[0], -1);
	memcpy(m2->ram, f->m->ram, FAKE_RAM_SIZE);
	const struct fake_state *s2 = fake_state(m2, "virtio-console.2");
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), 0);
	assert_true(fake_watching(m2, p[0]));
	assert_int_equal(write(p[1], "z", 1), 1);
	fake_io_poll(m2);
	assert_int_equal(*(char *)fake_gpa(m2, BUF), 'z');
	/* a state saved by another device type is refused */
	struct machine *m3 = fake_machine_create();
	struct virtio_dev *d3 = virtio_rng_create(m3, 2);
	const struct fake_state *s3 = fake_state(m3, "virtio-rng.2");
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s3->ops->load(s3->dev, &in, s3->ops->version, &why), -1);

	virtio_destroy(d3);
	fake_machine_destroy(m3);
	virtio_destroy(d2);
	fake_machine_destroy(m2);
	close(p[0]);
	close(p[1]);
	sbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(rng_fills_buffers),
		cmocka_unit_test_setup_teardown(console_output, console_setup, console_teardown),
		cmocka_unit_test_setup_teardown(console_input, console_setup, console_teardown),
		cmocka_unit_test_setup_teardown(console_state_round_trips, console_setup,
						console_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
