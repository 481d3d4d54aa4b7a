/*
 * blk.c - virtio-blk over a raw image file (backend/disk.c).
 *
 * One request queue. A request is a chain: a 16-byte readable header
 * { u32 type, u32 reserved, u64 sector }, the data buffers, and a last
 * writable byte for the status. IN, OUT, FLUSH and GET_ID are served;
 * anything else answers UNSUPP; a transfer that is not whole sectors or
 * runs past the end of the disk, or a host I/O error, answers IOERR.
 * A chain without room for a header or a status byte is a broken driver:
 * the device needs a reset.
 *
 * Requests are served synchronously inside the QueueNotify write, on the
 * vCPU thread that wrote it, straight between the image and guest memory
 * (pread/pwrite into mem_ptr pointers, then mem_dirty). So when the
 * machine is paused no request is in flight, and migration needs nothing
 * but the transport's indices.
 *
 * Offered features: FLUSH (the guest treats the disk as a write-back cache
 * and flushes, which becomes fdatasync), SEG_MAX, BLK_SIZE, and RO for a
 * read-only disk. Handoff: release flushes and unlocks the image on the
 * source; acquire locks it on the destination. A request on a disk that is
 * not locked (a destination that skipped acquire, a source that resumed
 * after letting go) first tries to take the lock, and fails with IOERR if
 * another process holds it, so two hosts never write one image.
 *
 * Fault tolerance (migrate/ft.c, docs/stream.md "Output commit for
 * disks"): while a hold is on, a write does not reach the image. Its data
 * is copied into a log, tagged with the epoch it was made in, and the
 * guest sees it complete at once; reads are served from the image and then
 * overlaid with the log, oldest first, so the guest reads its own writes.
 * ft.c sends each epoch's writes with its checkpoint and, once the
 * secondary has acknowledged that epoch, writes them to the image in
 * order (virtio_blk_hold_apply). A FLUSH completes at once while holding:
 * the checkpoint, not the image, is what makes a held write durable.
 *
 * Storage move: virtio/blk.h hands the disk and the device lock to
 * storage/diskmove.c, which watches writes through the disk's on_write
 * and swaps the image while it holds the lock. The serial (GET_ID) keeps
 * the first image's name: the guest's view of the disk does not change.
 */
#include "virtio/virtio.h"
#include "virtio/blk.h"
#include "backend/disk.h"

#include <endian.h>
#include <errno.h>
#include <linux/virtio_blk.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECTOR_SIZE   512
#define BLK_SEG_MAX   (VQ_MAX_SIZE - 2)
#define BLK_ID_BYTES  20
#define BLK_HDR_SIZE  16

struct blk {
	struct virtio_dev vdev;         /* first: the transport frees us */
	struct disk disk;
	char serial[BLK_ID_BYTES];
	bool lock_warned;
	struct iovec iov[VQ_MAX_SEGS];

	/* writes held for fault tolerance (under vdev.lock; see the top) */
	bool holding;
	uint64_t hold_epoch;            /* writes made now belong to this epoch */
	struct blk_write *held, **held_tail;
	uint64_t held_count, held_bytes;
};

static struct blk *to_blk(struct virtio_dev *d)
{
	return (struct blk *)d;
}

static uint64_t blk_sectors(const struct blk *b)
{
	return b->disk.size / SECTOR_SIZE;
}

/* ---- serving requests ---------------------------------------------------------- */

/* The image must be ours before we touch it (see the note at the top). */
static bool blk_owns_image(struct blk *b)
{
	char err[256];
	if (b->disk.locked)
		return true;
	if (disk_lock(&b->disk, err, sizeof(err)) == 0)
		return true;
	if (!b->lock_warned)
		fprintf(stderr, "ferry-vm: %s: %s; failing guest I/O\n", b->vdev.state_name, err);
	b->lock_warned = true;
	return false;
}

/* Move len bytes between the image at `pos` and the chain's buffers that
 * start `off` bytes into the readable (OUT) or writable (IN) part. */
static uint8_t blk_transfer(struct blk *b, const struct vq_req *r, bool in,
			    uint64_t off, uint64_t len, uint64_t pos)
{
	struct virtio_dev *d = &b->vdev;
	int n = vq_req_iov(d, r, in, off, len, b->iov, VQ_MAX_SEGS);
	int ret = n < 0 ? -1 : 0;
	for (int i = 0; i < n && ret == 0; i++) {
		struct iovec *v = &b->iov[i];
		ret = in ? disk_read(&b->disk, v->iov_base, v->iov_len, pos)
			 : disk_write(&b->disk, v->iov_base, v->iov_len, pos);
		pos += v->iov_len;
	}
	if (in && n > 0)    /* even a failed read may have filled some of it */
		vq_req_dirty(d, r, off, len);
	return ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK;
}

/* ---- writes held for fault tolerance --------------------------------------- */

/* Keep a write of the epoch under way instead of writing the image. */
static uint8_t blk_hold_write(struct blk *b, const struct vq_req *r, uint64_t len,
			      uint64_t pos)
{
	struct blk_write *w = malloc(sizeof(*w) + len);
	if (!w)
		return VIRTIO_BLK_S_IOERR;      /* the guest sees it fail: nothing lost */
	w->next = NULL;
	w->epoch = b->hold_epoch;
	w->off = pos;
	w->len = len;
	if (vq_req_read(&b->vdev, r, BLK_HDR_SIZE, w->data, len) != len) {
		free(w);
		return VIRTIO_BLK_S_IOERR;
	}
	*b->held_tail = w;
	b->held_tail = &w->next;
	b->held_count++;
	b->held_bytes += len;
	return VIRTIO_BLK_S_OK;
}

/* After a read of [pos, pos+len) from the image: lay the held writes that
 * overlap it over the guest's buffers, oldest first, so the newest wins. */
static void blk_overlay_held(struct blk *b, const struct vq_req *r, uint64_t len,
			     uint64_t pos)
{
	for (const struct blk_write *w = b->held; w; w = w->next) {
		uint64_t from = w->off > pos ? w->off : pos;
		uint64_t to = w->off + w->len < pos + len ? w->off + w->len : pos + len;
		if (from < to)
			vq_req_write(&b->vdev, r, from - pos, w->data + (from - w->off),
				     to - from);
	}
}

static uint8_t blk_rw(struct blk *b, const struct vq_req *r, bool in, uint64_t sector,
		      uint32_t *written)
{
	uint64_t len = in ? r->write_len - 1 : r->read_len - BLK_HDR_SIZE;
	if (len >= UINT32_MAX)
		return VIRTIO_BLK_S_IOERR;
	if (in)
		*written = (uint32_t)len + 1;
	if (len % SECTOR_SIZE || sector > blk_sectors(b) ||
	    len / SECTOR_SIZE > blk_sectors(b) - sector)
		return VIRTIO_BLK_S_IOERR;
	if (!in && b->disk.readonly)
		return VIRTIO_BLK_S_IOERR;
	if (!blk_owns_image(b))
		return VIRTIO_BLK_S_IOERR;
	if (b->holding && !in)
		return len ? blk_hold_write(b, r, len, sector * SECTOR_SIZE) : VIRTIO_BLK_S_OK;
	uint8_t status = blk_transfer(b, r, in, in ? 0 : BLK_HDR_SIZE, len,
				      sector * SECTOR_SIZE);
	if (in && status == VIRTIO_BLK_S_OK)
		blk_overlay_held(b, r, len, sector * SECTOR_SIZE);
	return status;
}

static uint8_t blk_get_id(struct blk *b, const struct vq_req *r, uint32_t *written)
{
	uint64_t room = r->write_len - 1;
	size_t n = room < BLK_ID_BYTES ? (size_t)room : BLK_ID_BYTES;
	vq_req_write(&b->vdev, r, 0, b->serial, n);
	*written = (uint32_t)n + 1;
	return VIRTIO_BLK_S_OK;
}

static uint8_t blk_flush(struct blk *b)
{
	if (b->holding)
		return VIRTIO_BLK_S_OK;         /* held writes: the checkpoint keeps them */
	if (!blk_owns_image(b) || disk_flush(&b->disk))
		return VIRTIO_BLK_S_IOERR;
	return VIRTIO_BLK_S_OK;
}

/* Serve one chain; returns the bytes written into it, or -1 when the
 * chain is malformed (the device was failed). */
static int64_t blk_handle(struct blk *b, const struct vq_req *r)
{
	struct virtio_dev *d = &b->vdev;
	uint8_t hdr[BLK_HDR_SIZE];
	uint32_t type, written = 1;
	uint64_t sector;
	uint8_t status;

	if (r->read_len < BLK_HDR_SIZE || r->write_len < 1) {
		virtio_fail(d, "block request without a header or a status byte");
		return -1;
	}
	vq_req_read(d, r, 0, hdr, sizeof(hdr));
	memcpy(&type, hdr, 4);
	memcpy(&sector, hdr + 8, 8);
	type = le32toh(type);
	sector = le64toh(sector);

	switch (type) {
	case VIRTIO_BLK_T_IN:     status = blk_rw(b, r, true, sector, &written); break;
	case VIRTIO_BLK_T_OUT:    status = blk_rw(b, r, false, sector, &written); break;
	case VIRTIO_BLK_T_FLUSH:  status = blk_flush(b); break;
	case VIRTIO_BLK_T_GET_ID: status = blk_get_id(b, r, &written); break;
	default:                  status = VIRTIO_BLK_S_UNSUPP; break;
	}
	vq_req_write(d, r, r->write_len - 1, &status, 1);
	return written;
}

static void blk_notify(struct virtio_dev *d, unsigned qi)
{
	struct blk *b = to_blk(d);
	struct virtq *q = &d->vq[qi];
	while (virtq_pop(d, q, &d->req) > 0) {
		int64_t written = blk_handle(b, &d->req);
		if (written < 0)
			return;
		virtq_push(d, q, d->req.head, (uint32_t)written);
	}
	virtq_notify(d, q);
}

/* ---- migration handoff ------------------------------------------------------------ */

static int blk_release(struct virtio_dev *d, const char **why)
{
	struct blk *b = to_blk(d);
	pthread_mutex_lock(&d->lock);
	int ret = disk_unlock(&b->disk, d->why, sizeof(d->why));
	pthread_mutex_unlock(&d->lock);
	if (ret)
		*why = d->why;
	return ret;
}

static int blk_acquire(struct virtio_dev *d, const char **why)
{
	struct blk *b = to_blk(d);
	pthread_mutex_lock(&d->lock);
	int ret = disk_lock(&b->disk, d->why, sizeof(d->why));
	if (ret == 0)
		b->lock_warned = false;
	pthread_mutex_unlock(&d->lock);
	if (ret)
		*why = d->why;
	return ret;
}

static void blk_destroy(struct virtio_dev *d)
{
	struct blk *b = to_blk(d);
	char err[256] = "";
	if (b->holding && virtio_blk_hold_stop(d, err, sizeof(err)))
		fprintf(stderr, "ferry-vm: %s: held writes: %s\n", d->state_name, err);
	if (b->disk.locked)
		disk_unlock(&b->disk, err, sizeof(err));
	disk_close(&b->disk);
}

/* ---- storage move (virtio/blk.h) ------------------------------------------------ */

struct disk *virtio_blk_disk(struct virtio_dev *d)
{
	return &to_blk(d)->disk;
}

void virtio_blk_quiesce(struct virtio_dev *d)
{
	pthread_mutex_lock(&d->lock);
}

void virtio_blk_unquiesce(struct virtio_dev *d)
{
	pthread_mutex_unlock(&d->lock);
}

/* ---- writes held for fault tolerance (virtio/blk.h) ---------------------------- */

void virtio_blk_hold_start(struct virtio_dev *d, uint64_t epoch)
{
	struct blk *b = to_blk(d);
	pthread_mutex_lock(&d->lock);
	if (!b->holding) {
		b->held = NULL;
		b->held_tail = &b->held;
	}
	b->holding = true;
	b->hold_epoch = epoch;
	pthread_mutex_unlock(&d->lock);
}

struct blk_epoch_writes virtio_blk_hold_epoch(struct virtio_dev *d, uint64_t epoch)
{
	struct blk *b = to_blk(d);
	struct blk_epoch_writes ew = { NULL, 0, 0 };
	pthread_mutex_lock(&d->lock);
	for (const struct blk_write *w = b->held; w; w = w->next) {
		if (w->epoch >= epoch)
			break;
		if (!ew.first)
			ew.first = w;
		ew.count++;
		ew.bytes += w->len;
	}
	b->hold_epoch = epoch;
	pthread_mutex_unlock(&d->lock);
	return ew;
}

/* Drop every held write (under the device lock). */
static void blk_hold_free(struct blk *b)
{
	while (b->held) {
		struct blk_write *w = b->held;
		b->held = w->next;
		free(w);
	}
	b->held_tail = &b->held;
	b->held_count = b->held_bytes = 0;
}

/* Write the held writes of epochs <= upto to the image, oldest first, and
 * drop them; under the device lock, so no read sees a write in neither
 * place. On an I/O error the rest stays held. */
static int blk_hold_drain(struct blk *b, uint64_t upto, char *err, size_t errlen)
{
	while (b->held && b->held->epoch <= upto) {
		struct blk_write *w = b->held;
		if (disk_write(&b->disk, w->data, w->len, w->off)) {
			snprintf(err, errlen, "writing %llu held bytes at %llu to %s: %s",
				 (unsigned long long)w->len, (unsigned long long)w->off,
				 b->disk.path, strerror(errno));
			return -1;
		}
		b->held = w->next;
		b->held_count--;
		b->held_bytes -= w->len;
		free(w);
	}
	if (!b->held)
		b->held_tail = &b->held;
	return 0;
}

int virtio_blk_hold_apply(struct virtio_dev *d, uint64_t upto, char *err, size_t errlen)
{
	pthread_mutex_lock(&d->lock);
	int r = blk_hold_drain(to_blk(d), upto, err, errlen);
	pthread_mutex_unlock(&d->lock);
	return r;
}

int virtio_blk_hold_stop(struct virtio_dev *d, char *err, size_t errlen)
{
	struct blk *b = to_blk(d);
	int r = 0;
	pthread_mutex_lock(&d->lock);
	if (b->holding) {
		r = blk_hold_drain(b, UINT64_MAX, err, errlen);
		if (r == 0)
			r = disk_flush(&b->disk);
		if (r && !err[0])
			snprintf(err, errlen, "flushing %s: %s", b->disk.path, strerror(errno));
		/* what the image refused is lost, as a failed write-back is */
		blk_hold_free(b);
	}
	b->holding = false;
	pthread_mutex_unlock(&d->lock);
	return r;
}

void virtio_blk_hold_discard(struct virtio_dev *d)
{
	struct blk *b = to_blk(d);
	pthread_mutex_lock(&d->lock);
	if (b->holding)
		blk_hold_free(b);
	b->holding = false;
	pthread_mutex_unlock(&d->lock);
}

void virtio_blk_held(struct virtio_dev *d, uint64_t *writes, uint64_t *bytes)
{
	struct blk *b = to_blk(d);
	pthread_mutex_lock(&d->lock);
	*writes = b->held_count;
	*bytes = b->held_bytes;
	pthread_mutex_unlock(&d->lock);
}

/* ---- setup ------------------------------------------------------------------------ */

static void put_le32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static void put_le64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static void blk_fill_config(struct blk *b)
{
	uint8_t *c = b->vdev.config;
	put_le64(c + offsetof(struct virtio_blk_config, capacity), blk_sectors(b));
	put_le32(c + offsetof(struct virtio_blk_config, seg_max), BLK_SEG_MAX);
	put_le32(c + offsetof(struct virtio_blk_config, blk_size), SECTOR_SIZE);
	b->vdev.config_len = offsetof(struct virtio_blk_config, max_discard_sectors);
}

static void blk_fill_serial(struct blk *b, const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	/* not NUL-terminated when all 20 bytes are used, as the spec allows */
	size_t n = strlen(base);
	memcpy(b->serial, base, n < sizeof(b->serial) ? n : sizeof(b->serial));
}

#define BLK_FEATURES ((1ULL << VIRTIO_BLK_F_FLUSH) | (1ULL << VIRTIO_BLK_F_SEG_MAX) | \
		      (1ULL << VIRTIO_BLK_F_BLK_SIZE))

static const struct virtio_dev_ops blk_ops = {
	.type = "blk",
	.device_id = VIRTIO_ID_BLOCK,
	.features = BLK_FEATURES,
	.nqueues = 1,
	.notify = blk_notify,
	.release = blk_release,
	.acquire = blk_acquire,
	.destroy = blk_destroy,
};

static const struct virtio_dev_ops blk_ro_ops = {
	.type = "blk",
	.device_id = VIRTIO_ID_BLOCK,
	.features = BLK_FEATURES | (1ULL << VIRTIO_BLK_F_RO),
	.nqueues = 1,
	.notify = blk_notify,
	.release = blk_release,
	.acquire = blk_acquire,
	.destroy = blk_destroy,
};

struct virtio_dev *virtio_blk_create(struct machine *m, unsigned slot,
				     const char *path, bool readonly, bool follow,
				     const char *beneath, bool defer_lock, char *err, size_t errlen)
{
	struct blk *b = calloc(1, sizeof(*b));
	if (!b) {
		snprintf(err, errlen, "disk %s: out of memory", path);
		return NULL;
	}
	if (disk_open(&b->disk, path, readonly, follow, beneath, defer_lock, err, errlen)) {
		free(b);
		return NULL;
	}
	if (b->disk.size < SECTOR_SIZE)
		fprintf(stderr, "ferry-vm: disk %s: smaller than one sector; the guest "
			"sees an empty disk\n", path);
	blk_fill_config(b);
	blk_fill_serial(b, path);
	if (virtio_init(&b->vdev, m, slot, readonly ? &blk_ro_ops : &blk_ops, err, errlen)) {
		disk_close(&b->disk);
		free(b);
		return NULL;
	}
	return &b->vdev;
}
