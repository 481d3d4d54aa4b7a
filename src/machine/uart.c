/*
 * uart.c - an ns16550a serial port, enough for Linux's 8250 driver and
 * earlycon=uart8250,mmio.
 *
 * Byte-wide registers at UART_BASE (reg-shift 0):
 *   0 RBR (read) / THR (write) / DLL (DLAB)   4 MCR
 *   1 IER / DLM (DLAB)                        5 LSR
 *   2 IIR (read) / FCR (write)                6 MSR
 *   3 LCR (bit 7 = DLAB)                      7 SCR
 *
 * How it works: transmission is instant. A byte written to THR goes
 * straight to out_fd, so THR is always empty and the "THR empty"
 * interrupt fires right after each write (and when the guest enables it
 * while THR is empty, as on the real chip, which the 8250 driver relies
 * on). Input is read from in_fd by the I/O thread into a small receive
 * FIFO; while the FIFO is full, or after in_fd reaches its end, in_fd is
 * not watched, so a slow guest never makes the I/O thread spin, and
 * reading RBR resumes the watch. The interrupt line (UART_IRQ) is high
 * while IIR has something to report: line status, data, THR empty.
 * Loopback (MCR bit 4) feeds THR back into the FIFO, for the driver's
 * self test. Baud rate and line settings are stored and ignored.
 *
 * Migration carries the registers and the unread input bytes; there is
 * never output in flight.
 */
#include "machine/devices.h"
#include "machine/machine.h"
#include "util/sbuf.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UART_FIFO_SIZE 64
#define UART_STATE_VERSION 1

/* register offsets */
enum { UART_RBR = 0, UART_IER = 1, UART_IIR = 2, UART_LCR = 3, UART_MCR = 4,
       UART_LSR = 5, UART_MSR = 6, UART_SCR = 7 };

#define IER_RDI    0x01    /* receive data available */
#define IER_THRI   0x02    /* THR empty */
#define IER_RLSI   0x04    /* receiver line status */
#define IER_MSI    0x08    /* modem status */
#define IIR_NONE   0x01
#define IIR_MSI    0x00
#define IIR_THRI   0x02
#define IIR_RDI    0x04
#define IIR_RLSI   0x06
#define IIR_FIFO   0xc0    /* FIFOs enabled */
#define FCR_ENABLE 0x01
#define FCR_CLR_RX 0x02
#define LCR_DLAB   0x80
#define MCR_DTR    0x01
#define MCR_RTS    0x02
#define MCR_OUT1   0x04
#define MCR_OUT2   0x08
#define MCR_LOOP   0x10
#define LSR_DR     0x01
#define LSR_OE     0x02
#define LSR_ERRORS 0x1e    /* overrun, parity, framing, break */
#define LSR_THRE   0x20
#define LSR_TEMT   0x40
#define MSR_CTS    0x10
#define MSR_DSR    0x20
#define MSR_RI     0x40
#define MSR_DCD    0x80

struct uart {
	struct machine *m;
	int in_fd, out_fd;
	pthread_mutex_t lock;
	bool watching;          /* in_fd is in the I/O thread's poll set */
	bool in_eof;            /* in_fd ended: never watch it again */

	uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
	uint8_t lsr_err;        /* sticky error bits, cleared by reading LSR */
	bool thr_irq;           /* the THR-empty interrupt is pending */
	uint8_t fifo[UART_FIFO_SIZE];
	unsigned head, count;
};

/* ---- interrupt ---------------------------------------------------------- */

static uint8_t uart_iir(const struct uart *u)
{
	if ((u->ier & IER_RLSI) && u->lsr_err)
		return IIR_RLSI;
	if ((u->ier & IER_RDI) && u->count)
		return IIR_RDI;
	if ((u->ier & IER_THRI) && u->thr_irq)
		return IIR_THRI;
	return IIR_NONE;    /* no modem status changes are ever reported */
}

static void uart_update_irq(struct uart *u)
{
	machine_set_irq(u->m, UART_IRQ, uart_iir(u) != IIR_NONE);
}

/* ---- receive FIFO and the input watch ------------------------------------ */

static void uart_rx_ready(void *opaque);

static void uart_watch(struct uart *u, bool on)
{
	if (u->in_fd < 0 || u->in_eof || u->watching == on)
		return;
	if (on && io_watch(u->m, u->in_fd, uart_rx_ready, u))
		return;
	if (!on)
		io_unwatch(u->m, u->in_fd);
	u->watching = on;
}

static void uart_fifo_push(struct uart *u, uint8_t c)
{
	if (u->count == UART_FIFO_SIZE) {
		u->lsr_err |= LSR_OE;
		return;
	}
	u->fifo[(u->head + u->count) % UART_FIFO_SIZE] = c;
	u->count++;
}

static uint8_t uart_fifo_pop(struct uart *u)
{
	if (!u->count)
		return 0;
	uint8_t c = u->fifo[u->head];
	u->head = (u->head + 1) % UART_FIFO_SIZE;
	u->count--;
	return c;
}

/* I/O thread: in_fd is readable. Read only what fits in the FIFO. */
static void uart_rx_ready(void *opaque)
{
	struct uart *u = opaque;
	uint8_t buf[UART_FIFO_SIZE];
	pthread_mutex_lock(&u->lock);
	if (!machine_running(u->m) || !u->watching)
		goto out;
	size_t room = UART_FIFO_SIZE - u->count;
	if (room == 0) {
		uart_watch(u, false);
		goto out;
	}
	ssize_t n = read(u->in_fd, buf, room);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		goto out;
	if (n <= 0) {
		/* end of input (or a dead descriptor): stop polling it */
		uart_watch(u, false);
		u->in_eof = true;
		goto out;
	}
	for (ssize_t i = 0; i < n; i++)
		uart_fifo_push(u, buf[i]);
	if (u->count == UART_FIFO_SIZE)
		uart_watch(u, false);
	uart_update_irq(u);
out:
	pthread_mutex_unlock(&u->lock);
}

/* ---- transmit ------------------------------------------------------------ */

static void uart_output(struct uart *u, uint8_t c)
{
	if (u->out_fd < 0)
		return;
	for (;;) {
		ssize_t n = write(u->out_fd, &c, 1);
		if (n == 1)
			return;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			/* a non-blocking terminal is full: wait a little, then drop */
			struct pollfd pfd = { .fd = u->out_fd, .events = POLLOUT };
			if (poll(&pfd, 1, 100) > 0)
				continue;
		}
		return;     /* output is gone (closed pipe, full disk): drop */
	}
}

static void uart_transmit(struct uart *u, uint8_t c)
{
	if (u->mcr & MCR_LOOP)
		uart_fifo_push(u, c);
	else
		uart_output(u, c);
	u->thr_irq = true;
}

/* ---- registers ----------------------------------------------------------- */

static uint8_t uart_msr(const struct uart *u)
{
	if (!(u->mcr & MCR_LOOP))
		return MSR_DCD | MSR_DSR | MSR_CTS;     /* a cable is always there */
	uint8_t msr = 0;
	if (u->mcr & MCR_RTS)
		msr |= MSR_CTS;
	if (u->mcr & MCR_DTR)
		msr |= MSR_DSR;
	if (u->mcr & MCR_OUT1)
		msr |= MSR_RI;
	if (u->mcr & MCR_OUT2)
		msr |= MSR_DCD;
	return msr;
}

static uint8_t uart_reg_read(struct uart *u, unsigned reg)
{
	uint8_t v = 0;
	switch (reg) {
	case UART_RBR:
		if (u->lcr & LCR_DLAB)
			return u->dll;
		v = uart_fifo_pop(u);
		uart_watch(u, true);
		break;
	case UART_IER:
		return (u->lcr & LCR_DLAB) ? u->dlm : u->ier;
	case UART_IIR:
		v = uart_iir(u);
		if (v == IIR_THRI)
			u->thr_irq = false;     /* reading IIR acknowledges THR empty */
		if (u->fcr & FCR_ENABLE)
			v |= IIR_FIFO;
		break;
	case UART_LCR:
		return u->lcr;
	case UART_MCR:
		return u->mcr;
	case UART_LSR:
		v = LSR_THRE | LSR_TEMT | u->lsr_err | (u->count ? LSR_DR : 0);
		u->lsr_err = 0;
		break;
	case UART_MSR:
		return uart_msr(u);
	case UART_SCR:
		return u->scr;
	}
	uart_update_irq(u);
	return v;
}

static void uart_reg_write(struct uart *u, unsigned reg, uint8_t v)
{
	switch (reg) {
	case UART_RBR:
		if (u->lcr & LCR_DLAB)
			u->dll = v;
		else
			uart_transmit(u, v);
		break;
	case UART_IER:
		if (u->lcr & LCR_DLAB) {
			u->dlm = v;
			break;
		}
		/* enabling the THR-empty interrupt while THR is empty raises it */
		if ((v & IER_THRI) && !(u->ier & IER_THRI))
			u->thr_irq = true;
		u->ier = v & 0x0f;
		break;
	case UART_IIR:     /* FCR */
		if ((v ^ u->fcr) & FCR_ENABLE || (v & FCR_CLR_RX)) {
			u->head = u->count = 0;
			uart_watch(u, true);
		}
		u->fcr = v & (FCR_ENABLE | 0xc0);   /* enable and trigger level */
		break;
	case UART_LCR:
		u->lcr = v;
		break;
	case UART_MCR:
		u->mcr = v & 0x1f;
		break;
	case UART_SCR:
		u->scr = v;
		break;
	default:            /* LSR and MSR are read-only */
		break;
	}
	uart_update_irq(u);
}

static uint64_t uart_read(void *dev, uint64_t off, unsigned size)
{
	struct uart *u = dev;
	if (off >= 8 || size != 1)
		return 0;
	pthread_mutex_lock(&u->lock);
	uint8_t v = uart_reg_read(u, (unsigned)off);
	pthread_mutex_unlock(&u->lock);
	return v;
}

static void uart_write(void *dev, uint64_t off, uint64_t val, unsigned size)
{
	struct uart *u = dev;
	if (off >= 8 || size != 1)
		return;
	pthread_mutex_lock(&u->lock);
	uart_reg_write(u, (unsigned)off, (uint8_t)val);
	pthread_mutex_unlock(&u->lock);
}

/* ---- migration ----------------------------------------------------------- */

static void uart_save(void *dev, struct sbuf *out)
{
	struct uart *u = dev;
	pthread_mutex_lock(&u->lock);
	sbuf_put_u8(out, u->ier);
	sbuf_put_u8(out, u->lcr);
	sbuf_put_u8(out, u->mcr);
	sbuf_put_u8(out, u->scr);
	sbuf_put_u8(out, u->dll);
	sbuf_put_u8(out, u->dlm);
	sbuf_put_u8(out, u->fcr);
	sbuf_put_u8(out, u->lsr_err);
	sbuf_put_u8(out, u->thr_irq);
	sbuf_put_u8(out, (uint8_t)u->count);
	for (unsigned i = 0; i < u->count; i++)
		sbuf_put_u8(out, u->fifo[(u->head + i) % UART_FIFO_SIZE]);
	pthread_mutex_unlock(&u->lock);
}

static int uart_load(void *dev, struct sbuf *in, uint32_t version, const char **why)
{
	struct uart *u = dev;
	struct uart s = { 0 };
	if (version != UART_STATE_VERSION) {
		*why = "UART state has an unknown version";
		return -1;
	}
	s.ier = sbuf_get_u8(in) & 0x0f;
	s.lcr = sbuf_get_u8(in);
	s.mcr = sbuf_get_u8(in) & 0x1f;
	s.scr = sbuf_get_u8(in);
	s.dll = sbuf_get_u8(in);
	s.dlm = sbuf_get_u8(in);
	s.fcr = sbuf_get_u8(in);
	s.lsr_err = sbuf_get_u8(in) & LSR_ERRORS;
	s.thr_irq = sbuf_get_u8(in) != 0;
	s.count = sbuf_get_u8(in);
	if (s.count > UART_FIFO_SIZE) {
		*why = "UART state has more input than its FIFO holds";
		return -1;
	}
	for (unsigned i = 0; i < s.count; i++)
		s.fifo[i] = sbuf_get_u8(in);
	if (!sbuf_ok(in)) {
		*why = "UART state is truncated";
		return -1;
	}
	pthread_mutex_lock(&u->lock);
	u->ier = s.ier;
	u->lcr = s.lcr;
	u->mcr = s.mcr;
	u->scr = s.scr;
	u->dll = s.dll;
	u->dlm = s.dlm;
	u->fcr = s.fcr;
	u->lsr_err = s.lsr_err;
	u->thr_irq = s.thr_irq;
	memcpy(u->fifo, s.fifo, sizeof(u->fifo));
	u->head = 0;
	u->count = s.count;
	uart_watch(u, u->count < UART_FIFO_SIZE);
	uart_update_irq(u);
	pthread_mutex_unlock(&u->lock);
	return 0;
}

static void uart_free(void *dev)
{
	uart_destroy(dev);
}

static const struct mmio_ops uart_mmio_ops = { uart_read, uart_write, uart_free };

static const struct device_state_ops uart_state_ops = {
	.name = "uart",
	.version = UART_STATE_VERSION,
	.save = uart_save,
	.load = uart_load,
};

struct uart *uart_create(struct machine *m, int in_fd, int out_fd)
{
	struct uart *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->m = m;
	u->in_fd = in_fd;
	u->out_fd = out_fd;
	pthread_mutex_init(&u->lock, NULL);
	if (machine_add_mmio(m, UART_BASE, UART_SIZE, &uart_mmio_ops, u)) {
		pthread_mutex_destroy(&u->lock);
		free(u);
		return NULL;
	}
	machine_add_state(m, &uart_state_ops, u);
	pthread_mutex_lock(&u->lock);
	uart_watch(u, true);
	pthread_mutex_unlock(&u->lock);
	return u;
}

void uart_destroy(struct uart *u)
{
	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	uart_watch(u, false);
	pthread_mutex_unlock(&u->lock);
	pthread_mutex_destroy(&u->lock);
	free(u);
}
