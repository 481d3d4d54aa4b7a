/*
 * test_uart.c - the ns16550a: output to out_fd, input through the I/O
 * watch into the FIFO, interrupts, loopback, divisor latch, and the state
 * round trip with unread input.
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

#include "fake_machine.h"
#include "machine/devices.h"
#include "util/sbuf.h"

enum { RBR = 0, IER = 1, IIR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

struct fixture {
	struct machine *m;
	struct uart *u;
	int in[2], out[2];      /* pipes: test -> uart, uart -> test */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->m = fake_machine_create();
	assert_int_equal(pipe2(f->in, O_NONBLOCK), 0);
	assert_int_equal(pipe2(f->out, O_NONBLOCK), 0);
	f->u = uart_create(f->m, f->in[0], f->out[1]);
	assert_non_null(f->u);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	uart_destroy(f->u);
	fake_machine_destroy(f->m);
	close(f->in[0]);
	close(f->in[1]);
	close(f->out[0]);
	close(f->out[1]);
	free(f);
	return 0;
}

static uint8_t rd(struct fixture *f, unsigned reg)
{
	return (uint8_t)fake_mmio_read(f->m, UART_BASE + reg, 1);
}

static void wr(struct fixture *f, unsigned reg, uint8_t v)
{
	fake_mmio_write(f->m, UART_BASE + reg, v, 1);
}

static void output_goes_to_out_fd(void **state)
{
	struct fixture *f = *state;
	char buf[16] = "";
	wr(f, RBR, 'o');
	wr(f, RBR, 'k');
	assert_int_equal(read(f->out[0], buf, sizeof(buf)), 2);
	assert_memory_equal(buf, "ok", 2);
	assert_int_equal(rd(f, LSR) & 0x60, 0x60);     /* THR and shifter empty */
}

static void thr_empty_interrupt(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(f->m->irq[UART_IRQ], 0);
	wr(f, IER, 0x02);                   /* enabling it while empty raises it */
	assert_int_equal(f->m->irq[UART_IRQ], 1);
	assert_int_equal(rd(f, IIR) & 0x0f, 0x02);
	assert_int_equal(f->m->irq[UART_IRQ], 0);   /* reading IIR acknowledged it */
	assert_int_equal(rd(f, IIR) & 0x0f, 0x01);
	wr(f, RBR, 'x');                    /* each byte sent raises it again */
	assert_int_equal(f->m->irq[UART_IRQ], 1);
	wr(f, IER, 0);
	assert_int_equal(f->m->irq[UART_IRQ], 0);
}

static void input_arrives_through_the_watch(void **state)
{
	struct fixture *f = *state;
	assert_true(fake_watching(f->m, f->in[0]));
	wr(f, IER, 0x01);
	assert_int_equal(write(f->in[1], "hi", 2), 2);
	assert_int_equal(fake_io_poll(f->m), 1);
	assert_int_equal(f->m->irq[UART_IRQ], 1);
	assert_int_equal(rd(f, IIR) & 0x0f, 0x04);
	assert_int_equal(rd(f, LSR) & 0x01, 1);
	assert_int_equal(rd(f, RBR), 'h');
	assert_int_equal(rd(f, RBR), 'i');
	assert_int_equal(rd(f, LSR) & 0x01, 0);
	assert_int_equal(f->m->irq[UART_IRQ], 0);
}

static void a_paused_machine_reads_nothing(void **state)
{
	struct fixture *f = *state;
	f->m->running = false;
	assert_int_equal(write(f->in[1], "z", 1), 1);
	fake_io_poll(f->m);
	assert_int_equal(rd(f, LSR) & 0x01, 0);
	f->m->running = true;
	fake_io_poll(f->m);
	assert_int_equal(rd(f, RBR), 'z');
}

static void a_full_fifo_stops_the_watch(void **state)
{
	struct fixture *f = *state;
	char big[200];
	memset(big, 'a', sizeof(big));
	big[0] = '0';
	assert_int_equal(write(f->in[1], big, sizeof(big)), sizeof(big));
	fake_io_poll(f->m);
	assert_false(fake_watching(f->m, f->in[0]));    /* FIFO full */
	assert_int_equal(rd(f, RBR), '0');
	assert_true(fake_watching(f->m, f->in[0]));     /* room again */
	unsigned n = 1;
	for (int round = 0; round < 10; round++) {
		fake_io_poll(f->m);
		while (rd(f, LSR) & 0x01) {
			assert_int_equal(rd(f, RBR), 'a');
			n++;
		}
	}
	assert_int_equal(n, sizeof(big));               /* nothing lost */
	assert_int_equal(rd(f, LSR) & 0x02, 0);         /* no overrun */
}

static void end_of_input_stops_the_watch(void **state)
{
	struct fixture *f = *state;
	close(f->in[1]);
	f->in[1] = open("/dev/null", O_WRONLY);
	fake_io_poll(f->m);
	assert_false(fake_watching(f->m, f->in[0]));
	rd(f, RBR);
	assert_false(fake_watching(f->m, f->in[0]));    /* never again */
}

static void loopback_and_registers(void **state)
{
	struct fixture *f = *state;
	char buf[4];
	wr(f, MCR, 0x10 | 0x0a);                /* loop, RTS, OUT2 */
	assert_int_equal(rd(f, MSR) & 0xf0, 0x90);   /* CTS, DCD */
	wr(f, RBR, 'L');
	assert_int_equal(read(f->out[0], buf, sizeof(buf)), -1);   /* not sent */
	assert_int_equal(rd(f, RBR), 'L');
	wr(f, MCR, 0);
	assert_int_equal(rd(f, MSR) & 0xb0, 0xb0);

	wr(f, LCR, 0x83);                       /* DLAB */
	wr(f, RBR, 0x12);
	wr(f, IER, 0x34);
	assert_int_equal(rd(f, RBR), 0x12);
	assert_int_equal(rd(f, IER), 0x34);
	wr(f, LCR, 0x03);
	assert_int_equal(rd(f, IER), 0);
	wr(f, SCR, 0x5a);
	assert_int_equal(rd(f, SCR), 0x5a);
	wr(f, IIR, 0x07);                       /* FCR: FIFOs on */
	assert_int_equal(rd(f, IIR) & 0xc0, 0xc0);
}

static void state_round_trips(void **state)
{
	struct fixture *f = *state;
	wr(f, LCR, 0x80);
	wr(f, RBR, 0x01);
	wr(f, LCR, 0x03);
	wr(f, SCR, 0x77);
	wr(f, IER, 0x01);
	assert_int_equal(write(f->in[1], "abc", 3), 3);
	fake_io_poll(f->m);
	assert_int_equal(rd(f, RBR), 'a');

	const struct fake_state *s = fake_state(f->m, "uart");
	struct sbuf out, in;
	sbuf_init(&out);
	s->ops->save(s->dev, &out);

	struct machine *m2 = fake_machine_create();
	struct uart *u2 = uart_create(m2, -1, -1);
	const struct fake_state *s2 = fake_state(m2, "uart");
	const char *why = NULL;
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), 0);
	assert_true(sbuf_done(&in));
	assert_int_equal(m2->irq[UART_IRQ], 1);         /* data waiting */
	assert_int_equal(fake_mmio_read(m2, UART_BASE + SCR, 1), 0x77);
	assert_int_equal(fake_mmio_read(m2, UART_BASE + RBR, 1), 'b');
	assert_int_equal(fake_mmio_read(m2, UART_BASE + RBR, 1), 'c');
	assert_int_equal(fake_mmio_read(m2, UART_BASE + LSR, 1) & 1, 0);
	fake_mmio_write(m2, UART_BASE + LCR, 0x80, 1);
	assert_int_equal(fake_mmio_read(m2, UART_BASE + RBR, 1), 0x01);

	sbuf_reader(&in, out.data, out.len - 1);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), -1);
	uart_destroy(u2);
	fake_machine_destroy(m2);
	sbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(output_goes_to_out_fd, setup, teardown),
		cmocka_unit_test_setup_teardown(thr_empty_interrupt, setup, teardown),
		cmocka_unit_test_setup_teardown(input_arrives_through_the_watch, setup, teardown),
		cmocka_unit_test_setup_teardown(a_paused_machine_reads_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(a_full_fifo_stops_the_watch, setup, teardown),
		cmocka_unit_test_setup_teardown(end_of_input_stops_the_watch, setup, teardown),
		cmocka_unit_test_setup_teardown(loopback_and_registers, setup, teardown),
		cmocka_unit_test_setup_teardown(state_round_trips, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
