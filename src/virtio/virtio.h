/*
 * virtio.h - the virtio-mmio transport and split virtqueues, as the
 * device types (blk, net, console, rng) see them.
 *
 * A device type embeds `struct virtio_dev` as its first member, fills a
 * `struct virtio_dev_ops` (device id, features, queues, callbacks) and
 * calls virtio_init(). The transport (mmio.c) owns the registers, feature
 * negotiation, status, interrupts and migration of all of that; virtq.c
 * walks the rings. Device callbacks run with d->lock held, so a device
 * type needs no lock of its own for what the transport hands it.
 *
 * Guest mistakes (a descriptor outside RAM, a chain that loops, an index
 * that jumps) never crash ferry-vm: virtio_fail() marks the device
 * DEVICE_NEEDS_RESET, tells the driver with a configuration interrupt,
 * and the device stops touching its queues until the driver resets it.
 */
#ifndef FERRY_VIRTIO_H
#define FERRY_VIRTIO_H

#include "machine/devices.h"
#include "machine/machine.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <linux/virtio_config.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>

struct sbuf;

#define VIRTIO_MAX_QUEUES  2
#define VIRTIO_CONFIG_MAX  64
#define VQ_MAX_SIZE        256      /* QueueNumMax */
#define VQ_MAX_SEGS        1024     /* buffers in one chain, indirect included */
#define VIRTIO_STATE_VERSION 1

/* One buffer of a descriptor chain, checked to lie wholly in RAM. */
struct vq_seg {
	uint64_t gpa;
	uint32_t len;
};

/* A popped descriptor chain: nread device-readable segments, then
 * nwrite device-writable ones (the virtio order). */
struct vq_req {
	uint16_t head;
	unsigned nread, nwrite;
	uint64_t read_len, write_len;
	struct vq_seg seg[VQ_MAX_SEGS];
};

/* One split virtqueue: the driver's addresses and the device's indices. */
struct virtq {
	uint16_t num;
	bool ready;
	uint64_t desc, avail, used;
	uint16_t last_avail;    /* next avail ring entry the device takes */
	uint16_t used_idx;      /* the device's used->idx */
	uint16_t signalled;     /* used_idx when the driver was last interrupted */
};

struct virtio_dev;

struct virtio_dev_ops {
	const char *type;           /* "blk": the state section is virtio-blk.SLOT */
	uint32_t device_id;         /* VIRTIO_ID_* */
	uint64_t features;          /* device-type feature bits offered */
	unsigned nqueues;
	/* The driver notified queue q (vCPU thread). Runs only while the
	 * device is live (DRIVER_OK and not NEEDS_RESET). */
	void (*notify)(struct virtio_dev *d, unsigned q);
	/* The driver set DRIVER_OK (optional). */
	void (*driver_ok)(struct virtio_dev *d);
	/* The driver reset the device: forget device-type state (optional). */
	void (*reset)(struct virtio_dev *d);
	/* Device-type state after the transport's (optional, both or none). */
	void (*save)(struct virtio_dev *d, struct sbuf *out);
	int (*load)(struct virtio_dev *d, struct sbuf *in, const char **why);
	/* Migration handoff and announce, as in device_state_ops (optional).
	 * These run WITHOUT d->lock: take it if needed. */
	int (*release)(struct virtio_dev *d, const char **why);
	int (*acquire)(struct virtio_dev *d, const char **why);
	void (*resumed_elsewhere)(struct virtio_dev *d);
	/* Free the device-type part's resources (optional, without d->lock). */
	void (*destroy)(struct virtio_dev *d);
};

struct virtio_dev {
	struct machine *m;
	const struct virtio_dev_ops *ops;
	unsigned slot, irq;
	pthread_mutex_t lock;

	uint32_t status;
	uint32_t isr;               /* InterruptStatus */
	uint32_t dev_feat_sel, drv_feat_sel, queue_sel;
	uint64_t driver_features;
	struct virtq vq[VIRTIO_MAX_QUEUES];
	uint8_t config[VIRTIO_CONFIG_MAX];  /* device-type config, little-endian */
	unsigned config_len;

	char state_name[32];
	struct device_state_ops state_ops;
	struct vq_req req;          /* the chain being handled (under lock) */
	char why[192];              /* the last failure, for device_state_ops */
};

/* ---- transport (mmio.c) --------------------------------------------------- */
/* Register slot's MMIO region and state. 0, or -1 with a reason in err. */
int virtio_init(struct virtio_dev *d, struct machine *m, unsigned slot,
		const struct virtio_dev_ops *ops, char *err, size_t errlen);
/* DRIVER_OK is set and NEEDS_RESET is not: queues may be used. */
bool virtio_live(const struct virtio_dev *d);
bool virtio_has(const struct virtio_dev *d, unsigned feature_bit);
/* The guest broke the rules: mark NEEDS_RESET, interrupt, say so once. */
void virtio_fail(struct virtio_dev *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Raise InterruptStatus bits (VIRTIO_MMIO_INT_VRING / _CONFIG). */
void virtio_interrupt(struct virtio_dev *d, uint32_t bits);

/* ---- split virtqueues (virtq.c) -------------------------------------------- */
/* Check a queue the driver is enabling; false (and a reason) if unusable.
 * The _layout variant checks size and alignment only, without touching
 * guest memory (loading state, when RAM may still be on its way). */
bool virtq_check(struct virtio_dev *d, const struct virtq *q, char *why, size_t len);
bool virtq_check_layout(const struct virtq *q, char *why, size_t len);
/* Take the next available chain: 1 got one, 0 none, -1 the guest broke
 * the rules (the device is marked NEEDS_RESET). */
int virtq_pop(struct virtio_dev *d, struct virtq *q, struct vq_req *r);
/* Give the last popped chain back unused (it will be popped again). */
void virtq_unpop(struct virtq *q);
/* Chains waiting: >0 some, 0 none, -1 the guest broke the rules. With
 * EVENT_IDX an empty queue also asks the driver to notify on the next. */
int virtq_avail(struct virtio_dev *d, struct virtq *q);
/* Return chain `head` to the driver with `len` bytes written into it. */
void virtq_push(struct virtio_dev *d, struct virtq *q, uint16_t head, uint32_t len);
/* Interrupt the driver for pushed chains, unless it asked not to be. */
void virtq_notify(struct virtio_dev *d, struct virtq *q);

/* Copy between a chain and host memory; off counts from the start of the
 * readable (or writable) part. Return the bytes copied. Writes are
 * reported to the dirty log. */
size_t vq_req_read(struct virtio_dev *d, const struct vq_req *r, uint64_t off,
		   void *dst, size_t len);
size_t vq_req_write(struct virtio_dev *d, const struct vq_req *r, uint64_t off,
		    const void *src, size_t len);
/* Host iovecs for [off, off+len) of the readable or writable part.
 * Returns the count, or -1 if it does not fit in max. Who writes through
 * them must call vq_req_dirty() afterwards. */
int vq_req_iov(struct virtio_dev *d, const struct vq_req *r, bool writable,
	       uint64_t off, uint64_t len, struct iovec *iov, int max);
void vq_req_dirty(struct virtio_dev *d, const struct vq_req *r, uint64_t off,
		  uint64_t len);

/* ---- device types, for tests: virtio-net over an already open frame fd --- */
struct virtio_dev *virtio_net_create_fd(struct machine *m, unsigned slot, int fd,
					const uint8_t mac[6], char *err, size_t errlen);

#endif
