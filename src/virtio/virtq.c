/*
 * virtq.c - split virtqueues (virtio 1.2 section 2.7): taking descriptor
 * chains from the available ring, returning them on the used ring, and
 * deciding when the driver wants an interrupt.
 *
 * Layout in guest memory, all little-endian:
 *   descriptor table  num x { u64 addr, u32 len, u16 flags, u16 next }
 *   available ring    u16 flags, u16 idx, u16 ring[num], u16 used_event
 *   used ring         u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event
 *
 * Trust nothing: every index is bounds-checked, every buffer must lie
 * wholly in RAM (mem_ptr), a chain may visit each descriptor of its table
 * at most once (so loops end), indirect tables may not nest, and readable
 * buffers come before writable ones. Values are copied out of guest
 * memory once and then checked, so a guest changing a descriptor under
 * our feet gains nothing. A violation marks the device NEEDS_RESET.
 *
 * Guest memory is reached through mem_ptr() at every access rather than
 * cached pointers, because during post-copy it also fetches pages that
 * have not arrived yet. Everything the device writes (used ring, the
 * avail_event word, buffers) is reported with mem_dirty() for the dirty
 * log. Ordering with the driver on other harts: the available index is
 * read with acquire, the used index published with release, and a full
 * fence separates publishing from reading the driver's event index.
 */
#include "virtio/virtio.h"

#include <endian.h>
#include <stdio.h>
#include <string.h>

#define DESC_SIZE 16

struct vq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

/* ---- ring fields ---------------------------------------------------------- */

static bool vq_failed(const struct virtio_dev *d)
{
	return d->status & VIRTIO_CONFIG_S_NEEDS_RESET;
}

static bool vq_load16(struct virtio_dev *d, uint64_t gpa, uint16_t *v, int order)
{
	uint16_t *p = mem_ptr(d->m, gpa, 2);
	if (!p) {
		virtio_fail(d, "ring word at 0x%llx is outside RAM", (unsigned long long)gpa);
		return false;
	}
	*v = le16toh(__atomic_load_n(p, order));
	return true;
}

static bool vq_store16(struct virtio_dev *d, uint64_t gpa, uint16_t v, int order)
{
	uint16_t *p = mem_ptr(d->m, gpa, 2);
	if (!p) {
		virtio_fail(d, "ring word at 0x%llx is outside RAM", (unsigned long long)gpa);
		return false;
	}
	__atomic_store_n(p, htole16(v), order);
	mem_dirty(d->m, gpa, 2);
	return true;
}

static uint64_t avail_idx_gpa(const struct virtq *q)   { return q->avail + 2; }
static uint64_t avail_ring_gpa(const struct virtq *q, uint16_t i)
{
	return q->avail + 4 + 2 * (uint64_t)(i % q->num);
}
static uint64_t used_event_gpa(const struct virtq *q)  { return q->avail + 4 + 2 * (uint64_t)q->num; }
static uint64_t used_idx_gpa(const struct virtq *q)    { return q->used + 2; }
static uint64_t used_elem_gpa(const struct virtq *q, uint16_t i)
{
	return q->used + 4 + 8 * (uint64_t)(i % q->num);
}
static uint64_t avail_event_gpa(const struct virtq *q) { return q->used + 4 + 8 * (uint64_t)q->num; }

bool virtq_check_layout(const struct virtq *q, char *why, size_t len)
{
	uint64_t n = q->num;
	if (n == 0 || n > VQ_MAX_SIZE || (n & (n - 1))) {
		snprintf(why, len, "size %u is not a power of 2 from 1 to %u", q->num, VQ_MAX_SIZE);
		return false;
	}
	if ((q->desc & 15) || (q->avail & 1) || (q->used & 3)) {
		snprintf(why, len, "rings are misaligned");
		return false;
	}
	return true;
}

bool virtq_check(struct virtio_dev *d, const struct virtq *q, char *why, size_t len)
{
	uint64_t n = q->num;
	if (!virtq_check_layout(q, why, len))
		return false;
	if (!mem_ptr(d->m, q->desc, DESC_SIZE * n) || !mem_ptr(d->m, q->avail, 6 + 2 * n) ||
	    !mem_ptr(d->m, q->used, 6 + 8 * n)) {
		snprintf(why, len, "rings lie outside RAM");
		return false;
	}
	return true;
}

/* ---- taking chains ------------------------------------------------------------ */

int virtq_avail(struct virtio_dev *d, struct virtq *q)
{
	uint16_t idx;
	if (vq_failed(d))
		return -1;
	if (!q->ready)
		return 0;
	if (!vq_load16(d, avail_idx_gpa(q), &idx, __ATOMIC_ACQUIRE))
		return -1;
	if (idx == q->last_avail && virtio_has(d, VIRTIO_RING_F_EVENT_IDX)) {
		/* ask for a notification on the next buffer, then look again
		 * in case it came before the driver could see our request */
		if (!vq_store16(d, avail_event_gpa(q), q->last_avail, __ATOMIC_RELAXED))
			return -1;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (!vq_load16(d, avail_idx_gpa(q), &idx, __ATOMIC_ACQUIRE))
			return -1;
	}
	uint16_t n = (uint16_t)(idx - q->last_avail);
	if (n > q->num) {
		virtio_fail(d, "available index jumped from %u to %u on a %u-entry queue",
			    q->last_avail, idx, q->num);
		return -1;
	}
	return n;
}

static bool vq_read_desc(struct virtio_dev *d, uint64_t table, uint32_t i,
			 struct vq_desc *out)
{
	const uint8_t *p = mem_ptr(d->m, table + (uint64_t)i * DESC_SIZE, DESC_SIZE);
	uint8_t raw[DESC_SIZE];
	if (!p) {
		virtio_fail(d, "descriptor table at 0x%llx is outside RAM",
			    (unsigned long long)table);
		return false;
	}
	memcpy(raw, p, sizeof(raw));    /* one snapshot, then check it */
	memcpy(&out->addr, raw, 8);
	memcpy(&out->len, raw + 8, 4);
	memcpy(&out->flags, raw + 12, 2);
	memcpy(&out->next, raw + 14, 2);
	out->addr = le64toh(out->addr);
	out->len = le32toh(out->len);
	out->flags = le16toh(out->flags);
	out->next = le16toh(out->next);
	return true;
}

/* Switch the walk to the indirect table that descriptor `dsc` points at. */
static bool vq_enter_indirect(struct virtio_dev *d, const struct vq_desc *dsc,
			      bool *indirect, uint64_t *table, uint32_t *size)
{
	if (!virtio_has(d, VIRTIO_RING_F_INDIRECT_DESC)) {
		virtio_fail(d, "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
		return false;
	}
	if (*indirect || (dsc->flags & VRING_DESC_F_NEXT)) {
		virtio_fail(d, "indirect descriptor nested or chained");
		return false;
	}
	if (dsc->len == 0 || dsc->len % DESC_SIZE || dsc->len / DESC_SIZE > VQ_MAX_SEGS ||
	    !mem_ptr(d->m, dsc->addr, dsc->len)) {
		virtio_fail(d, "bad indirect table (0x%llx, %u bytes)",
			    (unsigned long long)dsc->addr, dsc->len);
		return false;
	}
	*indirect = true;
	*table = dsc->addr;
	*size = dsc->len / DESC_SIZE;
	return true;
}

static bool vq_add_seg(struct virtio_dev *d, struct vq_req *r, const struct vq_desc *dsc)
{
	bool writable = dsc->flags & VRING_DESC_F_WRITE;
	if (r->nread + r->nwrite == VQ_MAX_SEGS) {
		virtio_fail(d, "descriptor chain longer than %u buffers", VQ_MAX_SEGS);
		return false;
	}
	if (!writable && r->nwrite) {
		virtio_fail(d, "device-readable buffer after a device-writable one");
		return false;
	}
	if (!mem_ptr(d->m, dsc->addr, dsc->len)) {
		virtio_fail(d, "buffer 0x%llx+%u is outside RAM",
			    (unsigned long long)dsc->addr, dsc->len);
		return false;
	}
	r->seg[r->nread + r->nwrite] = (struct vq_seg){ dsc->addr, dsc->len };
	if (writable) {
		r->nwrite++;
		r->write_len += dsc->len;
	} else {
		r->nread++;
		r->read_len += dsc->len;
	}
	return true;
}

/* Follow the chain starting at `head` into r. */
static bool vq_walk(struct virtio_dev *d, const struct virtq *q, uint16_t head,
		    struct vq_req *r)
{
	uint64_t table = q->desc;
	uint32_t size = q->num, i = head, visited = 0;
	bool indirect = false;
	struct vq_desc dsc;

	memset(r, 0, offsetof(struct vq_req, seg));
	r->head = head;
	for (;;) {
		if (i >= size) {
			virtio_fail(d, "descriptor index %u out of range (table of %u)", i, size);
			return false;
		}
		if (++visited > size) {
			virtio_fail(d, "descriptor chain from %u loops", head);
			return false;
		}
		if (!vq_read_desc(d, table, i, &dsc))
			return false;
		if (dsc.flags & VRING_DESC_F_INDIRECT) {
			if (!vq_enter_indirect(d, &dsc, &indirect, &table, &size))
				return false;
			i = 0;
			visited = 0;
			continue;
		}
		if (!vq_add_seg(d, r, &dsc))
			return false;
		if (!(dsc.flags & VRING_DESC_F_NEXT))
			return true;
		i = dsc.next;
	}
}

int virtq_pop(struct virtio_dev *d, struct virtq *q, struct vq_req *r)
{
	int n = virtq_avail(d, q);
	if (n <= 0)
		return n;
	uint16_t head;
	if (!vq_load16(d, avail_ring_gpa(q, q->last_avail), &head, __ATOMIC_RELAXED))
		return -1;
	if (!vq_walk(d, q, head, r))
		return -1;
	q->last_avail++;
	if (virtio_has(d, VIRTIO_RING_F_EVENT_IDX) &&
	    !vq_store16(d, avail_event_gpa(q), q->last_avail, __ATOMIC_RELAXED))
		return -1;
	return 1;
}

void virtq_unpop(struct virtq *q)
{
	q->last_avail--;
}

/* ---- returning chains ------------------------------------------------------------ */

void virtq_push(struct virtio_dev *d, struct virtq *q, uint16_t head, uint32_t len)
{
	if (vq_failed(d) || !q->ready)
		return;
	uint64_t gpa = used_elem_gpa(q, q->used_idx);
	uint8_t *p = mem_ptr(d->m, gpa, 8);
	if (!p) {
		virtio_fail(d, "used ring at 0x%llx is outside RAM", (unsigned long long)q->used);
		return;
	}
	uint32_t id_le = htole32(head), len_le = htole32(len);
	memcpy(p, &id_le, 4);
	memcpy(p + 4, &len_le, 4);
	mem_dirty(d->m, gpa, 8);
	q->used_idx++;
	vq_store16(d, used_idx_gpa(q), q->used_idx, __ATOMIC_RELEASE);
}

/* virtio's vring_need_event: did used_idx pass the driver's event index
 * since we last interrupted at `old`? */
static bool vq_need_event(uint16_t event, uint16_t now, uint16_t old)
{
	return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

void virtq_notify(struct virtio_dev *d, struct virtq *q)
{
	uint16_t old = q->signalled, v;
	bool need;
	if (vq_failed(d) || !q->ready || q->used_idx == old)
		return;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (virtio_has(d, VIRTIO_RING_F_EVENT_IDX)) {
		if (!vq_load16(d, used_event_gpa(q), &v, __ATOMIC_RELAXED))
			return;
		need = vq_need_event(v, q->used_idx, old);
	} else {
		if (!vq_load16(d, q->avail, &v, __ATOMIC_RELAXED))
			return;
		need = !(v & VRING_AVAIL_F_NO_INTERRUPT);
	}
	q->signalled = q->used_idx;
	if (need)
		virtio_interrupt(d, VIRTIO_MMIO_INT_VRING);
}

/* ---- buffers ------------------------------------------------------------------------ */

/* Walk [off, off+len) of the readable or writable part of r, one piece of
 * a segment at a time: fn(gpa, n, pos, arg) with pos counting from off.
 * Stops early when fn returns false. Returns the bytes walked. */
typedef bool (*vq_piece_fn)(struct virtio_dev *d, uint64_t gpa, size_t n, size_t pos,
			    void *arg);

static size_t vq_req_walk(struct virtio_dev *d, const struct vq_req *r, bool writable,
			  uint64_t off, uint64_t len, vq_piece_fn fn, void *arg)
{
	unsigned first = writable ? r->nread : 0;
	unsigned count = writable ? r->nwrite : r->nread;
	size_t done = 0;
	for (unsigned i = first; i < first + count && done < len; i++) {
		const struct vq_seg *s = &r->seg[i];
		if (off >= s->len) {
			off -= s->len;
			continue;
		}
		size_t n = s->len - off;
		if (n > len - done)
			n = len - done;
		if (!fn(d, s->gpa + off, n, done, arg))
			break;
		done += n;
		off = 0;
	}
	return done;
}

static bool vq_piece_read(struct virtio_dev *d, uint64_t gpa, size_t n, size_t pos, void *arg)
{
	const void *p = mem_ptr(d->m, gpa, n);
	if (!p)
		return false;
	memcpy((uint8_t *)arg + pos, p, n);
	return true;
}

size_t vq_req_read(struct virtio_dev *d, const struct vq_req *r, uint64_t off,
		   void *dst, size_t len)
{
	return vq_req_walk(d, r, false, off, len, vq_piece_read, dst);
}

static bool vq_piece_write(struct virtio_dev *d, uint64_t gpa, size_t n, size_t pos, void *arg)
{
	void *p = mem_ptr(d->m, gpa, n);
	if (!p)
		return false;
	memcpy(p, (const uint8_t *)arg + pos, n);
	mem_dirty(d->m, gpa, n);
	return true;
}

size_t vq_req_write(struct virtio_dev *d, const struct vq_req *r, uint64_t off,
		    const void *src, size_t len)
{
	return vq_req_walk(d, r, true, off, len, vq_piece_write, (void *)src);
}

struct vq_iov_arg {
	struct iovec *iov;
	int n, max;
};

static bool vq_piece_iov(struct virtio_dev *d, uint64_t gpa, size_t n, size_t pos, void *arg)
{
	struct vq_iov_arg *a = arg;
	(void)pos;
	void *p = mem_ptr(d->m, gpa, n);
	if (!p || a->n == a->max)
		return false;
	a->iov[a->n++] = (struct iovec){ p, n };
	return true;
}

int vq_req_iov(struct virtio_dev *d, const struct vq_req *r, bool writable,
	       uint64_t off, uint64_t len, struct iovec *iov, int max)
{
	struct vq_iov_arg a = { iov, 0, max };
	if (vq_req_walk(d, r, writable, off, len, vq_piece_iov, &a) != len)
		return -1;
	return a.n;
}

static bool vq_piece_dirty(struct virtio_dev *d, uint64_t gpa, size_t n, size_t pos, void *arg)
{
	(void)pos;
	(void)arg;
	mem_dirty(d->m, gpa, n);
	return true;
}

void vq_req_dirty(struct virtio_dev *d, const struct vq_req *r, uint64_t off, uint64_t len)
{
	vq_req_walk(d, r, true, off, len, vq_piece_dirty, NULL);
}
