/*
 * rng.c - virtio-rng (entropy source): fills every writable buffer the
 * driver offers with bytes from the host's getrandom() (/dev/urandom's
 * pool), in the QueueNotify write. It has no state beyond the transport's.
 */
#include "virtio/virtio.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>

#define RNG_MAX_REQ (64 * 1024)     /* bytes given per request at most */

struct rng {
	struct virtio_dev vdev;     /* first: the transport frees us */
	struct iovec iov[VQ_MAX_SEGS];
};

/* Fill one buffer; false if the host could not. */
static bool rng_fill(void *p, size_t len)
{
	uint8_t *b = p;
	while (len) {
		ssize_t n = getrandom(b, len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		b += n;
		len -= (size_t)n;
	}
	return true;
}

static void rng_notify(struct virtio_dev *d, unsigned qi)
{
	struct rng *r = (struct rng *)d;
	struct virtq *q = &d->vq[qi];
	while (virtq_pop(d, q, &d->req) > 0) {
		uint64_t want = d->req.write_len < RNG_MAX_REQ ? d->req.write_len : RNG_MAX_REQ;
		uint64_t done = 0;
		int n = vq_req_iov(d, &d->req, true, 0, want, r->iov, VQ_MAX_SEGS);
		for (int i = 0; i < n && rng_fill(r->iov[i].iov_base, r->iov[i].iov_len); i++)
			done += r->iov[i].iov_len;
		if (n > 0)  /* a fill that failed half way still wrote: all of it */
			vq_req_dirty(d, &d->req, 0, want);
		virtq_push(d, q, d->req.head, (uint32_t)done);
	}
	virtq_notify(d, q);
}

static const struct virtio_dev_ops rng_ops = {
	.type = "rng",
	.device_id = VIRTIO_ID_RNG,
	.features = 0,
	.nqueues = 1,
	.notify = rng_notify,
};

struct virtio_dev *virtio_rng_create(struct machine *m, unsigned slot)
{
	char err[128];
	struct rng *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	if (virtio_init(&r->vdev, m, slot, &rng_ops, err, sizeof(err))) {
		free(r);
		return NULL;
	}
	return &r->vdev;
}
