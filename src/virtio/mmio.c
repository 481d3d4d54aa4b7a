/*
 * mmio.c - the virtio-mmio transport, version 2 (virtio 1.2 section 4.2):
 * registers, feature negotiation, device status, interrupts, and the
 * migration state of every virtio device.
 *
 * Modern only: the device offers VIRTIO_F_VERSION_1 and refuses
 * FEATURES_OK without it. Control registers are 32-bit; the device-type
 * configuration space at 0x100 is read byte-wise from d->config and is
 * read-only for every device type here.
 *
 * Interrupts: InterruptStatus bit 0 (used buffer) and bit 1 (config
 * change) drive PLIC source VIRTIO_IRQ0+slot as a level: high while any
 * bit is set, low once the driver acknowledges them all.
 *
 * Migration: one versioned section per device, "virtio-TYPE.SLOT", holds
 * the status, features, selectors, interrupt status, config bytes and each
 * queue's addresses and indices, then the device type's own fields. A
 * paused machine has no request in flight (blk completes requests inside
 * the notify write; net and console only move data while the machine
 * runs), so these fields are the whole truth.
 */
#include "virtio/virtio.h"
#include "util/sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VIRTIO_MAGIC     0x74726976u    /* "virt" */
#define VIRTIO_VERSION   2
#define VIRTIO_VENDOR    0x59524546u    /* "FERY" */

/* Feature bits the transport itself offers. */
#define TRANSPORT_FEATURES ((1ULL << VIRTIO_F_VERSION_1) | \
			    (1ULL << VIRTIO_RING_F_INDIRECT_DESC) | \
			    (1ULL << VIRTIO_RING_F_EVENT_IDX))

static uint64_t virtio_offered(const struct virtio_dev *d)
{
	return d->ops->features | TRANSPORT_FEATURES;
}

bool virtio_live(const struct virtio_dev *d)
{
	return (d->status & VIRTIO_CONFIG_S_DRIVER_OK) &&
	       !(d->status & VIRTIO_CONFIG_S_NEEDS_RESET);
}

bool virtio_has(const struct virtio_dev *d, unsigned bit)
{
	return bit < 64 && ((d->driver_features >> bit) & 1);
}

void virtio_interrupt(struct virtio_dev *d, uint32_t bits)
{
	d->isr |= bits;
	machine_set_irq(d->m, d->irq, 1);
}

void virtio_fail(struct virtio_dev *d, const char *fmt, ...)
{
	if (d->status & VIRTIO_CONFIG_S_NEEDS_RESET)
		return;
	char msg[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "ferry-vm: %s: the guest driver broke the virtio rules (%s); "
		"the device waits for a reset\n", d->state_name, msg);
	d->status |= VIRTIO_CONFIG_S_NEEDS_RESET;
	if (d->status & VIRTIO_CONFIG_S_DRIVER_OK)
		virtio_interrupt(d, VIRTIO_MMIO_INT_CONFIG);
}

/* ---- status and reset ------------------------------------------------------ */

static void virtio_reset(struct virtio_dev *d)
{
	if (d->ops->reset)
		d->ops->reset(d);
	d->status = 0;
	d->isr = 0;
	d->dev_feat_sel = d->drv_feat_sel = d->queue_sel = 0;
	d->driver_features = 0;
	memset(d->vq, 0, sizeof(d->vq));
	machine_set_irq(d->m, d->irq, 0);
}

/* FEATURES_OK is accepted only for a subset of what was offered that
 * includes VERSION_1; otherwise the bit does not stick and the driver,
 * reading status back, gives up. */
static bool virtio_features_ok(const struct virtio_dev *d)
{
	uint64_t f = d->driver_features;
	return !(f & ~virtio_offered(d)) && (f & (1ULL << VIRTIO_F_VERSION_1));
}

static void virtio_set_status(struct virtio_dev *d, uint32_t val)
{
	if (val == 0) {
		virtio_reset(d);
		return;
	}
	uint32_t old = d->status;
	val &= 0xff;
	if ((val & VIRTIO_CONFIG_S_FEATURES_OK) && !(old & VIRTIO_CONFIG_S_FEATURES_OK) &&
	    !virtio_features_ok(d))
		val &= ~VIRTIO_CONFIG_S_FEATURES_OK;
	/* NEEDS_RESET is the device's to set, and only a reset clears it */
	val = (val & ~VIRTIO_CONFIG_S_NEEDS_RESET) | (old & VIRTIO_CONFIG_S_NEEDS_RESET);
	d->status = val;
	if ((val & VIRTIO_CONFIG_S_DRIVER_OK) && !(old & VIRTIO_CONFIG_S_DRIVER_OK) &&
	    d->ops->driver_ok && virtio_live(d))
		d->ops->driver_ok(d);
}

/* ---- queue registers -------------------------------------------------------- */

static struct virtq *virtio_cur_queue(struct virtio_dev *d)
{
	return d->queue_sel < d->ops->nqueues ? &d->vq[d->queue_sel] : NULL;
}

static void virtq_set_ready(struct virtio_dev *d, struct virtq *q, bool ready)
{
	if (!ready) {
		q->ready = false;
		return;
	}
	if (q->ready)
		return;
	char why[96];
	if (!virtq_check(d, q, why, sizeof(why))) {
		virtio_fail(d, "queue %u: %s", d->queue_sel, why);
		return;
	}
	q->last_avail = q->used_idx = q->signalled = 0;
	q->ready = true;
}

static void set_lo(uint64_t *v, uint32_t lo)
{
	*v = (*v & ~0xffffffffULL) | lo;
}

static void set_hi(uint64_t *v, uint32_t hi)
{
	*v = (*v & 0xffffffffULL) | (uint64_t)hi << 32;
}

static void virtq_reg_write(struct virtio_dev *d, uint64_t off, uint32_t val)
{
	struct virtq *q = virtio_cur_queue(d);
	if (!q)
		return;
	if (off == VIRTIO_MMIO_QUEUE_READY) {
		virtq_set_ready(d, q, val & 1);
		return;
	}
	if (q->ready)
		return;     /* a live queue's layout does not change */
	switch (off) {
	case VIRTIO_MMIO_QUEUE_NUM:        q->num = (uint16_t)(val > 0xffff ? 0 : val); break;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:   set_lo(&q->desc, val); break;
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:  set_hi(&q->desc, val); break;
	case VIRTIO_MMIO_QUEUE_AVAIL_LOW:  set_lo(&q->avail, val); break;
	case VIRTIO_MMIO_QUEUE_AVAIL_HIGH: set_hi(&q->avail, val); break;
	case VIRTIO_MMIO_QUEUE_USED_LOW:   set_lo(&q->used, val); break;
	case VIRTIO_MMIO_QUEUE_USED_HIGH:  set_hi(&q->used, val); break;
	}
}

static uint32_t virtq_reg_read(struct virtio_dev *d, uint64_t off)
{
	struct virtq *q = virtio_cur_queue(d);
	if (!q)
		return 0;
	switch (off) {
	case VIRTIO_MMIO_QUEUE_NUM_MAX:    return VQ_MAX_SIZE;
	case VIRTIO_MMIO_QUEUE_NUM:        return q->num;
	case VIRTIO_MMIO_QUEUE_READY:      return q->ready;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:   return (uint32_t)q->desc;
	case VIRTIO_MMIO_QUEUE_DESC_HIGH:  return (uint32_t)(q->desc >> 32);
	case VIRTIO_MMIO_QUEUE_AVAIL_LOW:  return (uint32_t)q->avail;
	case VIRTIO_MMIO_QUEUE_AVAIL_HIGH: return (uint32_t)(q->avail >> 32);
	case VIRTIO_MMIO_QUEUE_USED_LOW:   return (uint32_t)q->used;
	case VIRTIO_MMIO_QUEUE_USED_HIGH:  return (uint32_t)(q->used >> 32);
	}
	return 0;
}

/* ---- register file ------------------------------------------------------------ */

static uint32_t virtio_reg_read(struct virtio_dev *d, uint64_t off)
{
	switch (off) {
	case VIRTIO_MMIO_MAGIC_VALUE:     return VIRTIO_MAGIC;
	case VIRTIO_MMIO_VERSION:         return VIRTIO_VERSION;
	case VIRTIO_MMIO_DEVICE_ID:       return d->ops->device_id;
	case VIRTIO_MMIO_VENDOR_ID:       return VIRTIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		return d->dev_feat_sel < 2 ?
			(uint32_t)(virtio_offered(d) >> (32 * d->dev_feat_sel)) : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return d->isr;
	case VIRTIO_MMIO_STATUS:          return d->status;
	case VIRTIO_MMIO_SHM_LEN_LOW:
	case VIRTIO_MMIO_SHM_LEN_HIGH:
		return 0xffffffffu;     /* no shared memory regions */
	case VIRTIO_MMIO_CONFIG_GENERATION: return 0;   /* config never changes */
	}
	return virtq_reg_read(d, off);
}

static void virtio_ack(struct virtio_dev *d, uint32_t bits)
{
	d->isr &= ~bits;
	if (!d->isr)
		machine_set_irq(d->m, d->irq, 0);
}

static void virtio_notify(struct virtio_dev *d, uint32_t q)
{
	if (q >= d->ops->nqueues || !d->vq[q].ready || !virtio_live(d))
		return;
	d->ops->notify(d, q);
}

static void virtio_reg_write(struct virtio_dev *d, uint64_t off, uint32_t val)
{
	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: d->dev_feat_sel = val; return;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: d->drv_feat_sel = val; return;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (d->drv_feat_sel == 0)
			set_lo(&d->driver_features, val);
		else if (d->drv_feat_sel == 1)
			set_hi(&d->driver_features, val);
		return;
	case VIRTIO_MMIO_QUEUE_SEL:       d->queue_sel = val; return;
	case VIRTIO_MMIO_QUEUE_NOTIFY:    virtio_notify(d, val & 0xffff); return;
	case VIRTIO_MMIO_INTERRUPT_ACK:   virtio_ack(d, val); return;
	case VIRTIO_MMIO_STATUS:          virtio_set_status(d, val); return;
	}
	virtq_reg_write(d, off, val);
}

static uint64_t virtio_config_read(struct virtio_dev *d, uint64_t off, unsigned size)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < size; i++)
		if (off + i < d->config_len)
			v |= (uint64_t)d->config[off + i] << (8 * i);
	return v;
}

static uint64_t virtio_mmio_read(void *dev, uint64_t off, unsigned size)
{
	struct virtio_dev *d = dev;
	uint64_t v = 0;
	pthread_mutex_lock(&d->lock);
	if (off >= VIRTIO_MMIO_CONFIG)
		v = virtio_config_read(d, off - VIRTIO_MMIO_CONFIG, size);
	else if (size == 4 && !(off & 3))
		v = virtio_reg_read(d, off);
	pthread_mutex_unlock(&d->lock);
	return v;
}

static void virtio_mmio_write(void *dev, uint64_t off, uint64_t val, unsigned size)
{
	struct virtio_dev *d = dev;
	if (off >= VIRTIO_MMIO_CONFIG || size != 4 || (off & 3))
		return;     /* the config spaces here are read-only */
	pthread_mutex_lock(&d->lock);
	virtio_reg_write(d, off, (uint32_t)val);
	pthread_mutex_unlock(&d->lock);
}

/* ---- migration ---------------------------------------------------------------- */

static void virtq_save(const struct virtq *q, struct sbuf *out)
{
	sbuf_put_u16(out, q->num);
	sbuf_put_u8(out, q->ready);
	sbuf_put_u64(out, q->desc);
	sbuf_put_u64(out, q->avail);
	sbuf_put_u64(out, q->used);
	sbuf_put_u16(out, q->last_avail);
	sbuf_put_u16(out, q->used_idx);
	sbuf_put_u16(out, q->signalled);
}

static void virtq_load(struct virtq *q, struct sbuf *in)
{
	q->num = sbuf_get_u16(in);
	q->ready = sbuf_get_u8(in) != 0;
	q->desc = sbuf_get_u64(in);
	q->avail = sbuf_get_u64(in);
	q->used = sbuf_get_u64(in);
	q->last_avail = sbuf_get_u16(in);
	q->used_idx = sbuf_get_u16(in);
	q->signalled = sbuf_get_u16(in);
}

static void virtio_save(void *dev, struct sbuf *out)
{
	struct virtio_dev *d = dev;
	pthread_mutex_lock(&d->lock);
	sbuf_put_u32(out, d->ops->device_id);
	sbuf_put_u32(out, d->status);
	sbuf_put_u32(out, d->isr);
	sbuf_put_u32(out, d->dev_feat_sel);
	sbuf_put_u32(out, d->drv_feat_sel);
	sbuf_put_u32(out, d->queue_sel);
	sbuf_put_u64(out, d->driver_features);
	sbuf_put_u32(out, d->config_len);
	sbuf_put(out, d->config, d->config_len);
	sbuf_put_u32(out, d->ops->nqueues);
	for (unsigned i = 0; i < d->ops->nqueues; i++)
		virtq_save(&d->vq[i], out);
	if (d->ops->save)
		d->ops->save(d, out);
	pthread_mutex_unlock(&d->lock);
}

/* The transport's fields as read from a stream, before they are applied. */
struct virtio_saved {
	uint32_t status, isr, dev_feat_sel, drv_feat_sel, queue_sel;
	uint64_t driver_features;
	struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Read the transport part into `s`, checking it against this device. */
static int virtio_load_transport(struct virtio_dev *d, struct virtio_saved *s,
				 struct sbuf *in, const char **why)
{
	uint8_t config[VIRTIO_CONFIG_MAX];
	if (sbuf_get_u32(in) != d->ops->device_id) {
		*why = "virtio state is for another device type";
		return -1;
	}
	s->status = sbuf_get_u32(in) & 0xff;
	s->isr = sbuf_get_u32(in) & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
	s->dev_feat_sel = sbuf_get_u32(in);
	s->drv_feat_sel = sbuf_get_u32(in);
	s->queue_sel = sbuf_get_u32(in);
	s->driver_features = sbuf_get_u64(in);
	uint32_t config_len = sbuf_get_u32(in);
	if (config_len != d->config_len || !sbuf_get(in, config, config_len) ||
	    memcmp(config, d->config, config_len)) {
		*why = "virtio device configuration differs here (disk size, MAC address?)";
		return -1;
	}
	if (sbuf_get_u32(in) != d->ops->nqueues) {
		*why = "virtio state has another number of queues";
		return -1;
	}
	for (unsigned i = 0; i < d->ops->nqueues; i++)
		virtq_load(&s->vq[i], in);
	if (!sbuf_ok(in)) {
		*why = "virtio state is truncated";
		return -1;
	}
	if (s->driver_features & ~virtio_offered(d)) {
		*why = "virtio state has features this device does not offer";
		return -1;
	}
	for (unsigned i = 0; i < d->ops->nqueues; i++) {
		char reason[96];
		if (s->vq[i].ready && !virtq_check_layout(&s->vq[i], reason, sizeof(reason))) {
			*why = "virtio state has a queue of a bad size or alignment";
			return -1;
		}
	}
	return 0;
}

static int virtio_load(void *dev, struct sbuf *in, uint32_t version, const char **why)
{
	struct virtio_dev *d = dev;
	struct virtio_saved s = { 0 };
	if (version != VIRTIO_STATE_VERSION) {
		*why = "virtio state has an unknown version";
		return -1;
	}
	pthread_mutex_lock(&d->lock);
	int ret = virtio_load_transport(d, &s, in, why);
	if (ret == 0) {
		d->status = s.status;
		d->isr = s.isr;
		d->dev_feat_sel = s.dev_feat_sel;
		d->drv_feat_sel = s.drv_feat_sel;
		d->queue_sel = s.queue_sel;
		d->driver_features = s.driver_features;
		memcpy(d->vq, s.vq, sizeof(d->vq));
		if (d->ops->load)
			ret = d->ops->load(d, in, why);
		if (ret == 0 && !sbuf_ok(in)) {
			*why = "virtio state is truncated";
			ret = -1;
		}
		if (ret)
			virtio_reset(d);
	}
	machine_set_irq(d->m, d->irq, d->isr != 0);
	pthread_mutex_unlock(&d->lock);
	return ret;
}

static int virtio_release(void *dev, const char **why)
{
	struct virtio_dev *d = dev;
	return d->ops->release(d, why);
}

static int virtio_acquire(void *dev, const char **why)
{
	struct virtio_dev *d = dev;
	return d->ops->acquire(d, why);
}

static void virtio_resumed_elsewhere(void *dev)
{
	struct virtio_dev *d = dev;
	d->ops->resumed_elsewhere(d);
}

/* ---- setup -------------------------------------------------------------------- */

static void virtio_mmio_free(void *dev)
{
	virtio_destroy(dev);
}

static const struct mmio_ops virtio_mmio_ops = { virtio_mmio_read, virtio_mmio_write,
						 virtio_mmio_free };

int virtio_init(struct virtio_dev *d, struct machine *m, unsigned slot,
		const struct virtio_dev_ops *ops, char *err, size_t errlen)
{
	if (slot >= VIRTIO_SLOTS) {
		snprintf(err, errlen, "virtio-%s: no free virtio-mmio slot (%u are used)",
			 ops->type, VIRTIO_SLOTS);
		return -1;
	}
	d->m = m;
	d->ops = ops;
	d->slot = slot;
	d->irq = VIRTIO_IRQ0 + slot;
	pthread_mutex_init(&d->lock, NULL);
	snprintf(d->state_name, sizeof(d->state_name), "virtio-%s.%u", ops->type, slot);
	d->state_ops = (struct device_state_ops){
		.name = d->state_name,
		.version = VIRTIO_STATE_VERSION,
		.save = virtio_save,
		.load = virtio_load,
		/* only what the device type has: migration asks "any disks?"
		 * by looking for acquire */
		.release = ops->release ? virtio_release : NULL,
		.acquire = ops->acquire ? virtio_acquire : NULL,
		.resumed_elsewhere = ops->resumed_elsewhere ? virtio_resumed_elsewhere : NULL,
	};
	if (machine_add_mmio(m, VIRTIO_BASE + slot * VIRTIO_STRIDE, VIRTIO_STRIDE,
			     &virtio_mmio_ops, d)) {
		snprintf(err, errlen, "virtio-%s: slot %u is already taken", ops->type, slot);
		pthread_mutex_destroy(&d->lock);
		return -1;
	}
	machine_add_state(m, &d->state_ops, d);
	return 0;
}

void virtio_destroy(struct virtio_dev *d)
{
	if (!d)
		return;
	if (d->ops->destroy)
		d->ops->destroy(d);
	pthread_mutex_destroy(&d->lock);
	free(d);
}
