/*
 * console.c - virtio-console with one port (no MULTIPORT): Linux's hvc0.
 *
 * Queue 0 carries input to the guest, queue 1 output from it. Output is
 * written straight to out_fd in the QueueNotify write (dropped when
 * out_fd < 0). Input works like the UART's: the I/O thread reads in_fd
 * straight into the driver's receive buffers while the machine runs; with
 * no buffers left, or once in_fd has ended, in_fd leaves the poll set
 * until the driver adds buffers (its kick on queue 0 brings it back). The
 * device has no state of its own beyond the transport's.
 */
#include "virtio/virtio.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#define CONS_RXQ 0
#define CONS_TXQ 1

struct console {
	struct virtio_dev vdev;     /* first: the transport frees us */
	int in_fd, out_fd;
	bool watching, in_eof;
	struct iovec iov[VQ_MAX_SEGS];
};

static struct console *to_console(struct virtio_dev *d)
{
	return (struct console *)d;
}

/* ---- input ------------------------------------------------------------------ */

static void console_rx_ready(void *opaque);

static void console_watch(struct console *c, bool on)
{
	if (c->in_fd < 0 || c->in_eof || c->watching == on)
		return;
	if (on && io_watch(c->vdev.m, c->in_fd, console_rx_ready, c))
		return;
	if (!on)
		io_unwatch(c->vdev.m, c->in_fd);
	c->watching = on;
}

/* Read what in_fd has into one receive chain. */
static void console_rx(struct console *c)
{
	struct virtio_dev *d = &c->vdev;
	struct virtq *q = &d->vq[CONS_RXQ];
	int r = virtq_pop(d, q, &d->req);
	if (r <= 0) {
		console_watch(c, false);    /* until the driver kicks */
		return;
	}
	int n = vq_req_iov(d, &d->req, true, 0, d->req.write_len, c->iov, VQ_MAX_SEGS);
	if (n <= 0) {
		virtio_fail(d, "console receive buffer has no writable part");
		return;
	}
	ssize_t got = readv(c->in_fd, c->iov, n);
	if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
		virtq_unpop(q);
		return;
	}
	if (got <= 0) {
		virtq_unpop(q);
		console_watch(c, false);
		c->in_eof = true;           /* end of input: stop polling it */
		return;
	}
	vq_req_dirty(d, &d->req, 0, (uint64_t)got);
	virtq_push(d, q, d->req.head, (uint32_t)got);
	virtq_notify(d, q);
}

static void console_rx_ready(void *opaque)
{
	struct console *c = opaque;
	struct virtio_dev *d = &c->vdev;
	pthread_mutex_lock(&d->lock);
	if (machine_running(d->m) && c->watching) {
		if (virtio_live(d) && d->vq[CONS_RXQ].ready)
			console_rx(c);
		else
			console_watch(c, false);
	}
	pthread_mutex_unlock(&d->lock);
}

/* ---- output ----------------------------------------------------------------- */

static void console_write_all(struct console *c, const struct iovec *iov, int n)
{
	for (int i = 0; i < n; i++) {
		const uint8_t *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;
		while (left) {
			ssize_t w = write(c->out_fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && errno == EAGAIN) {
				struct pollfd pfd = { .fd = c->out_fd, .events = POLLOUT };
				if (poll(&pfd, 1, 100) > 0)
					continue;
			}
			if (w <= 0)
				return;     /* output is gone: drop the rest */
			p += w;
			left -= (size_t)w;
		}
	}
}

static void console_tx(struct console *c)
{
	struct virtio_dev *d = &c->vdev;
	struct virtq *q = &d->vq[CONS_TXQ];
	while (virtq_pop(d, q, &d->req) > 0) {
		int n = vq_req_iov(d, &d->req, false, 0, d->req.read_len, c->iov, VQ_MAX_SEGS);
		if (c->out_fd >= 0 && n > 0)
			console_write_all(c, c->iov, n);
		virtq_push(d, q, d->req.head, 0);
	}
	virtq_notify(d, q);
}

static void console_notify(struct virtio_dev *d, unsigned q)
{
	struct console *c = to_console(d);
	if (q == CONS_TXQ)
		console_tx(c);
	else
		console_watch(c, true);
}

static void console_driver_ok(struct virtio_dev *d)
{
	console_watch(to_console(d), true);
}

static void console_reset(struct virtio_dev *d)
{
	console_watch(to_console(d), false);
}

/* After loading state the guest may have buffers waiting for input. */
static int console_load(struct virtio_dev *d, struct sbuf *in, const char **why)
{
	(void)in;
	(void)why;
	console_watch(to_console(d), virtio_live(d));
	return 0;
}

static void console_save(struct virtio_dev *d, struct sbuf *out)
{
	(void)d;
	(void)out;
}

static void console_destroy(struct virtio_dev *d)
{
	pthread_mutex_lock(&d->lock);
	console_watch(to_console(d), false);
	pthread_mutex_unlock(&d->lock);
}

static const struct virtio_dev_ops console_ops = {
	.type = "console",
	.device_id = VIRTIO_ID_CONSOLE,
	.features = 0,
	.nqueues = 2,
	.notify = console_notify,
	.driver_ok = console_driver_ok,
	.reset = console_reset,
	.save = console_save,
	.load = console_load,
	.destroy = console_destroy,
};

struct virtio_dev *virtio_console_create(struct machine *m, unsigned slot,
					 int in_fd, int out_fd)
{
	char err[128];
	struct console *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->in_fd = in_fd;
	c->out_fd = out_fd;
	if (virtio_init(&c->vdev, m, slot, &console_ops, err, sizeof(err))) {
		free(c);
		return NULL;
	}
	return &c->vdev;
}
