/*
 * fake_machine.c - machine.h for device unit tests (see fake_machine.h).
 *
 * Single-threaded: the test is the hart, the I/O thread and the driver.
 */
#include "fake_machine.h"

#include <endian.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>

struct machine *fake_machine_create(void)
{
	struct machine *m = calloc(1, sizeof(*m));
	m->ram = calloc(1, FAKE_RAM_SIZE);
	m->dirty = calloc(1, FAKE_RAM_SIZE);
	m->running = true;
	return m;
}

void fake_machine_destroy(struct machine *m)
{
	free(m->ram);
	free(m->dirty);
	free(m);
}

/* ---- machine.h ------------------------------------------------------------ */

int machine_add_mmio(struct machine *m, uint64_t base, uint64_t size,
		     const struct mmio_ops *ops, void *dev)
{
	for (unsigned i = 0; i < m->nmmio; i++)
		if (base < m->mmio[i].base + m->mmio[i].size && m->mmio[i].base < base + size)
			return -1;
	if (m->nmmio == FAKE_MAX)
		return -1;
	m->mmio[m->nmmio++] = (struct fake_mmio){ base, size, ops, dev };
	return 0;
}

void machine_add_state(struct machine *m, const struct device_state_ops *ops, void *dev)
{
	if (m->nstates < FAKE_MAX)
		m->states[m->nstates++] = (struct fake_state){ ops, dev };
}

void *mem_ptr(struct machine *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - RAM_BASE;
	if (off >= FAKE_RAM_SIZE || len > FAKE_RAM_SIZE - off)
		return NULL;
	return m->ram + off;
}

void mem_dirty(struct machine *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - RAM_BASE;
	if (off >= FAKE_RAM_SIZE || len > FAKE_RAM_SIZE - off) {
		fprintf(stderr, "fake machine: dirty range 0x%llx+%llu outside RAM\n",
			(unsigned long long)gpa, (unsigned long long)len);
		abort();
	}
	memset(m->dirty + off, 1, len);
}

void machine_set_irq(struct machine *m, unsigned irq, int level)
{
	if (irq == 0 || irq >= PLIC_SOURCES)
		abort();
	if (level && !m->irq[irq])
		m->irq_raised[irq]++;
	m->irq[irq] = level != 0;
}

int io_watch(struct machine *m, int fd, void (*ready)(void *opaque), void *opaque)
{
	if (m->nwatches == FAKE_MAX)
		return -1;
	m->watches[m->nwatches++] = (struct fake_watch){ fd, ready, opaque };
	return 0;
}

void io_unwatch(struct machine *m, int fd)
{
	for (unsigned i = 0; i < m->nwatches; i++) {
		if (m->watches[i].fd == fd) {
			m->watches[i] = m->watches[--m->nwatches];
			return;
		}
	}
}

void io_kick(struct machine *m)
{
	m->kicks++;
}

void machine_hart_irq(struct machine *m, unsigned hart, uint64_t bit, int level)
{
	if (hart >= MAX_HARTS)
		abort();
	if (level)
		m->mip[hart] |= bit;
	else
		m->mip[hart] &= ~bit;
}

bool machine_running(struct machine *m)
{
	return m->running;
}

/* ---- test helpers ------------------------------------------------------------ */

uint64_t fake_mmio_read(struct machine *m, uint64_t pa, unsigned size)
{
	for (unsigned i = 0; i < m->nmmio; i++)
		if (pa - m->mmio[i].base < m->mmio[i].size)
			return m->mmio[i].ops->read(m->mmio[i].dev, pa - m->mmio[i].base, size);
	fprintf(stderr, "fake machine: no device at 0x%llx\n", (unsigned long long)pa);
	abort();
}

void fake_mmio_write(struct machine *m, uint64_t pa, uint64_t val, unsigned size)
{
	for (unsigned i = 0; i < m->nmmio; i++) {
		if (pa - m->mmio[i].base < m->mmio[i].size) {
			m->mmio[i].ops->write(m->mmio[i].dev, pa - m->mmio[i].base, val, size);
			return;
		}
	}
	fprintf(stderr, "fake machine: no device at 0x%llx\n", (unsigned long long)pa);
	abort();
}

void *fake_gpa(struct machine *m, uint64_t gpa)
{
	void *p = mem_ptr(m, gpa, 1);
	if (!p)
		abort();
	return p;
}

bool fake_dirty_covers(struct machine *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - RAM_BASE;
	for (uint64_t i = 0; i < len; i++)
		if (!m->dirty[off + i])
			return false;
	return true;
}

bool fake_dirty_any(struct machine *m)
{
	for (uint64_t i = 0; i < FAKE_RAM_SIZE; i++)
		if (m->dirty[i])
			return true;
	return false;
}

void fake_dirty_clear(struct machine *m)
{
	memset(m->dirty, 0, FAKE_RAM_SIZE);
}

int fake_io_poll(struct machine *m)
{
	struct fake_watch w[FAKE_MAX];
	struct pollfd pfd[FAKE_MAX];
	unsigned n = m->nwatches;
	int called = 0;
	memcpy(w, m->watches, sizeof(w));
	for (unsigned i = 0; i < n; i++)
		pfd[i] = (struct pollfd){ .fd = w[i].fd, .events = POLLIN };
	if (poll(pfd, n, 0) <= 0)
		return 0;
	for (unsigned i = 0; i < n; i++) {
		if (pfd[i].revents) {
			w[i].ready(w[i].opaque);
			called++;
		}
	}
	return called;
}

bool fake_watching(struct machine *m, int fd)
{
	for (unsigned i = 0; i < m->nwatches; i++)
		if (m->watches[i].fd == fd)
			return true;
	return false;
}

const struct fake_state *fake_state(struct machine *m, const char *name)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (!strcmp(m->states[i].ops->name, name))
			return &m->states[i];
	return NULL;
}

/* ---- guest driver -------------------------------------------------------------- */

static void put16(struct machine *m, uint64_t gpa, uint16_t v)
{
	v = htole16(v);
	memcpy(fake_gpa(m, gpa), &v, 2);
}

static uint16_t get16(struct machine *m, uint64_t gpa)
{
	uint16_t v;
	memcpy(&v, fake_gpa(m, gpa), 2);
	return le16toh(v);
}

static uint32_t get32(struct machine *m, uint64_t gpa)
{
	uint32_t v;
	memcpy(&v, fake_gpa(m, gpa), 4);
	return le32toh(v);
}

static void wr(struct machine *m, uint64_t base, uint64_t off, uint32_t v)
{
	fake_mmio_write(m, base + off, v, 4);
}

uint32_t fake_virtio_setup(struct machine *m, uint64_t base, uint64_t features,
			   struct fake_vq *q, unsigned nq, uint16_t num, uint64_t ring_gpa)
{
	wr(m, base, VIRTIO_MMIO_STATUS, 0);
	wr(m, base, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
	wr(m, base, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
	wr(m, base, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(m, base, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
	wr(m, base, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(m, base, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
	uint32_t st = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
		      VIRTIO_CONFIG_S_FEATURES_OK;
	wr(m, base, VIRTIO_MMIO_STATUS, st);
	if (!(fake_mmio_read(m, base + VIRTIO_MMIO_STATUS, 4) & VIRTIO_CONFIG_S_FEATURES_OK))
		return (uint32_t)fake_mmio_read(m, base + VIRTIO_MMIO_STATUS, 4);
	for (unsigned i = 0; i < nq; i++) {
		struct fake_vq *v = &q[i];
		memset(v, 0, sizeof(*v));
		v->num = num;
		v->desc = ring_gpa + i * 0x3000;
		v->avail = v->desc + 0x1000;
		v->used = v->desc + 0x2000;
		memset(fake_gpa(m, v->desc), 0, 0x3000);
		wr(m, base, VIRTIO_MMIO_QUEUE_SEL, i);
		wr(m, base, VIRTIO_MMIO_QUEUE_NUM, num);
		wr(m, base, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)v->desc);
		wr(m, base, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(v->desc >> 32));
		wr(m, base, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)v->avail);
		wr(m, base, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint32_t)(v->avail >> 32));
		wr(m, base, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)v->used);
		wr(m, base, VIRTIO_MMIO_QUEUE_USED_HIGH, (uint32_t)(v->used >> 32));
		wr(m, base, VIRTIO_MMIO_QUEUE_READY, 1);
	}
	wr(m, base, VIRTIO_MMIO_STATUS, st | VIRTIO_CONFIG_S_DRIVER_OK);
	return (uint32_t)fake_mmio_read(m, base + VIRTIO_MMIO_STATUS, 4);
}

void fake_vq_desc(struct machine *m, struct fake_vq *q, uint16_t i, uint64_t addr,
		  uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *d = fake_gpa(m, q->desc + 16ULL * i);
	uint64_t a = htole64(addr);
	uint32_t l = htole32(len);
	uint16_t f = htole16(flags), n = htole16(next);
	memcpy(d, &a, 8);
	memcpy(d + 8, &l, 4);
	memcpy(d + 12, &f, 2);
	memcpy(d + 14, &n, 2);
}

void fake_vq_post(struct machine *m, struct fake_vq *q, uint16_t head)
{
	put16(m, q->avail + 4 + 2ULL * (q->avail_idx % q->num), head);
	q->avail_idx++;
	put16(m, q->avail + 2, q->avail_idx);
}

uint16_t fake_vq_add(struct machine *m, struct fake_vq *q, const struct fake_buf *b,
		     unsigned n)
{
	uint16_t head = q->next_desc;
	for (unsigned i = 0; i < n; i++) {
		uint16_t cur = (uint16_t)((head + i) % q->num);
		uint16_t next = (uint16_t)((head + i + 1) % q->num);
		uint16_t flags = (b[i].write ? VRING_DESC_F_WRITE : 0) |
				 (i + 1 < n ? VRING_DESC_F_NEXT : 0);
		fake_vq_desc(m, q, cur, b[i].gpa, b[i].len, flags, next);
	}
	q->next_desc = (uint16_t)((head + n) % q->num);
	fake_vq_post(m, q, head);
	return head;
}

uint16_t fake_vq_add_indirect(struct machine *m, struct fake_vq *q,
			      const struct fake_buf *b, unsigned n, uint64_t table_gpa)
{
	struct fake_vq table = { .num = 0xffff, .desc = table_gpa };
	for (unsigned i = 0; i < n; i++)
		fake_vq_desc(m, &table, (uint16_t)i, b[i].gpa, b[i].len,
			     (b[i].write ? VRING_DESC_F_WRITE : 0) |
			     (i + 1 < n ? VRING_DESC_F_NEXT : 0), (uint16_t)(i + 1));
	uint16_t head = q->next_desc;
	fake_vq_desc(m, q, head, table_gpa, 16 * n, VRING_DESC_F_INDIRECT, 0);
	q->next_desc = (uint16_t)((head + 1) % q->num);
	fake_vq_post(m, q, head);
	return head;
}

void fake_vq_kick(struct machine *m, uint64_t base, unsigned qi)
{
	wr(m, base, VIRTIO_MMIO_QUEUE_NOTIFY, qi);
}

bool fake_vq_used(struct machine *m, struct fake_vq *q, uint32_t *id, uint32_t *len)
{
	if (get16(m, q->used + 2) == q->used_seen)
		return false;
	uint64_t e = q->used + 4 + 8ULL * (q->used_seen % q->num);
	*id = get32(m, e);
	*len = get32(m, e + 4);
	q->used_seen++;
	return true;
}
