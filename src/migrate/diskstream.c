/*
 * diskstream.c - shared-nothing migration: the guest's disk images go to
 * the destination in the migration stream, with its memory.
 *
 * Source. When the migration starts, every image gets a dirty-block map
 * (storage/dirty.h, 64 KiB blocks) and the backend's on_write hook marks
 * the guest's writes in it; then the image's data extents (SEEK_DATA) are
 * marked too, so holes are never read or sent: a sparse image stays sparse.
 * Before each memory round every dirty block is sent (the first time, that
 * is the bulk copy): its bit is cleared just before the block is read, so
 * a write the read may have missed leaves the bit set for the next round.
 * A block of zeros goes as a zero extent (the destination punches it). At
 * the switchover, with the guest paused and the device held, the last
 * dirty blocks go, then a digest per image. The source only reads its
 * image: whatever fails, it keeps running on it, locked, intact.
 *
 * The digest is mig_digest_of_hashes() over a hash per block: each side
 * keeps the hash of every block as it read (source) or wrote (destination)
 * it, blocks never sent being holes on both sides; so verifying costs no
 * pass over the images. It proves the destination holds what the source
 * sent; that what was sent is the image, the dirty tracking proves (and
 * the tests compare the images byte for byte).
 *
 * Destination. The images named by its --disk are locked at the handshake
 * and must be new (no data extents: `truncate -s SIZE` or `ferry-img
 * create`) and of the source's size: nothing of value can be overwritten,
 * and holes need no sending. Each DISK extent is written (or punched) and
 * its blocks' hashes kept; each DISK_DIGEST is checked after an
 * fdatasync, before the switchover is confirmed (writeback is started
 * every 16 MiB on the way, so that flush finds little left). A failed migration
 * empties the images again (truncated to 0 and back to their size), so a
 * partial copy never looks like a disk and the next attempt may reuse them.
 */
#include "migrate/diskstream.h"
#include "migrate/stream.h"
#include "backend/disk.h"
#include "storage/dirty.h"
#include "virtio/blk.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK_SHIFT 16
_Static_assert((1u << BLOCK_SHIFT) == MIG_DISK_BLOCK, "one block size");

static uint64_t block_len(uint64_t size, uint64_t b)
{
	uint64_t off = b << BLOCK_SHIFT;
	return size - off < MIG_DISK_BLOCK ? size - off : MIG_DISK_BLOCK;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

/* The hash a block of zeros has (the last block may be shorter). */
static uint64_t zero_hash(uint64_t len)
{
	static const uint8_t zeros[MIG_DISK_BLOCK];
	return mig_block_hash(zeros, (size_t)len);
}

static uint64_t *zero_hashes(uint64_t size, uint64_t nblocks)
{
	uint64_t *h = malloc((nblocks ? nblocks : 1) * sizeof(uint64_t));
	if (!h)
		return NULL;
	uint64_t full = zero_hash(MIG_DISK_BLOCK);
	for (uint64_t b = 0; b < nblocks; b++)
		h[b] = block_len(size, b) == MIG_DISK_BLOCK ? full : zero_hash(block_len(size, b));
	return h;
}

/* ---- source --------------------------------------------------------------------- */

struct source_disk {
	struct virtio_dev *blk;
	struct disk *d;
	struct dirty_map map;
	uint64_t *hash;                 /* of each block as last sent */
	bool tracking;
};

struct disk_source {
	unsigned n;
	struct source_disk disks[4];
	uint8_t buf[MIG_DISK_BLOCK];
};

static void on_guest_write(void *opaque, uint64_t off, uint64_t len)
{
	dirty_map_mark(opaque, off, len);
}

static void track(struct source_disk *sd, bool on)
{
	virtio_blk_quiesce(sd->blk);
	sd->d->on_write = on ? on_guest_write : NULL;
	sd->d->on_write_opaque = on ? &sd->map : NULL;
	virtio_blk_unquiesce(sd->blk);
	sd->tracking = on;
}

/* Mark every data extent of the image (holes stay unsent). */
static int mark_data(struct source_disk *sd)
{
	uint64_t size = sd->d->size;
	off_t pos = 0;
	while ((uint64_t)pos < size) {
		off_t data = lseek(sd->d->fd, pos, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : -1;
		off_t hole = lseek(sd->d->fd, data, SEEK_HOLE);
		if (hole < 0)
			hole = (off_t)size;
		dirty_map_mark(&sd->map, (uint64_t)data, (uint64_t)(hole - data));
		pos = hole;
	}
	return 0;
}

struct disk_source *disk_source_start(struct vmm *v, char *err, size_t errlen)
{
	struct disk_source *ds = calloc(1, sizeof(*ds));
	if (!ds) {
		snprintf(err, errlen, "out of memory for the disk copy");
		return NULL;
	}
	for (unsigned i = 0; i < v->ndisks && i < 4; i++) {
		struct source_disk *sd = &ds->disks[i];
		sd->blk = v->blk[i];
		sd->d = virtio_blk_disk(v->blk[i]);
		ds->n = i + 1;
		if (dirty_map_init(&sd->map, sd->d->size, BLOCK_SHIFT) ||
		    !(sd->hash = zero_hashes(sd->d->size, sd->map.nblocks))) {
			snprintf(err, errlen, "out of memory for the dirty map of disk %u", i);
			goto fail;
		}
		track(sd, true);
		if (mark_data(sd)) {
			snprintf(err, errlen, "disk %s: cannot find its data extents: %s",
				 sd->d->path, strerror(errno));
			goto fail;
		}
	}
	return ds;
fail:
	disk_source_stop(ds);
	return NULL;
}

/* Test only: FERRY_TEST_FAULT=disk-corrupt sends the first data block
 * with a byte changed after it was hashed, as a bug between the read and
 * the wire would; the destination's digest check must refuse it. */
static void corrupt_for_test(uint8_t *buf, uint64_t len)
{
	static bool done;
	const char *want = getenv("FERRY_TEST_FAULT");
	if (!done && want && !strcmp(want, "disk-corrupt") && len) {
		buf[len / 2] ^= 0x01;
		done = true;
	}
}

/* Send block b of one disk: clear, read, hash, send. Bytes or -1. */
static int64_t send_block(struct source_disk *sd, unsigned i, uint64_t b, uint8_t *buf,
			  struct mig_stream *s)
{
	uint64_t off = b << BLOCK_SHIFT, len = block_len(sd->d->size, b);
	dirty_map_test_and_clear(&sd->map, b);
	ssize_t got = pread(sd->d->fd, buf, (size_t)len, (off_t)off);
	if (got != (ssize_t)len)
		return mig_stream_fail(s, "disk %s: read at %llu failed: %s", sd->d->path,
				       (unsigned long long)off,
				       got < 0 ? strerror(errno) : "short read");
	bool zero = all_zero(buf, (size_t)len);
	sd->hash[b] = mig_block_hash(buf, (size_t)len);
	if (!zero)
		corrupt_for_test(buf, len);
	if (mig_write_disk(s, i, off, zero ? NULL : buf, len))
		return -1;
	return zero ? MIG_DISK_HDR : MIG_DISK_HDR + (int64_t)len;
}

int64_t disk_source_round(struct disk_source *ds, struct mig_stream *s)
{
	int64_t sent = 0;
	for (unsigned i = 0; ds && i < ds->n; i++) {
		struct source_disk *sd = &ds->disks[i];
		for (uint64_t b = dirty_map_next(&sd->map, 0); b < sd->map.nblocks;
		     b = dirty_map_next(&sd->map, b + 1)) {
			int64_t n = send_block(sd, i, b, ds->buf, s);
			if (n < 0)
				return -1;
			sent += n;
		}
	}
	return sent;
}

uint64_t disk_source_remaining(struct disk_source *ds)
{
	uint64_t n = 0;
	for (unsigned i = 0; ds && i < ds->n; i++)
		n += dirty_map_count(&ds->disks[i].map) << BLOCK_SHIFT;
	return n;
}

int disk_source_finish(struct disk_source *ds, struct mig_stream *s)
{
	int r = 0;
	/* hold the devices: no request may slip in between the last round
	 * and the digest (the guest is paused; this covers a request a
	 * device thread still completes) */
	for (unsigned i = 0; ds && i < ds->n; i++)
		virtio_blk_quiesce(ds->disks[i].blk);
	if (disk_source_round(ds, s) < 0)
		r = -1;
	for (unsigned i = 0; ds && i < ds->n && !r; i++) {
		struct source_disk *sd = &ds->disks[i];
		uint64_t digest = mig_digest_of_hashes(sd->hash, sd->map.nblocks, sd->d->size);
		r = mig_write_disk_digest(s, i, digest);
	}
	for (unsigned i = 0; ds && i < ds->n; i++)
		virtio_blk_unquiesce(ds->disks[i].blk);
	return r;
}

void disk_source_stop(struct disk_source *ds)
{
	if (!ds)
		return;
	for (unsigned i = 0; i < ds->n; i++) {
		struct source_disk *sd = &ds->disks[i];
		if (sd->tracking)
			track(sd, false);
		if (sd->map.words)
			dirty_map_free(&sd->map);
		free(sd->hash);
	}
	free(ds);
}

/* ---- destination ---------------------------------------------------------------- */

#define SINK_WRITEBACK (16u << 20)   /* start writeback after this much */

struct sink_disk {
	struct disk *d;
	uint64_t unflushed;             /* written since writeback was started */
	uint64_t nblocks;
	uint64_t *hash;                 /* of each block as written here */
};

struct disk_sink {
	unsigned n;
	struct sink_disk disks[4];
};

/* Does fd hold any data in its first size bytes? */
static int has_data(int fd, uint64_t size)
{
	off_t data = lseek(fd, 0, SEEK_DATA);
	if (data < 0)
		return errno == ENXIO ? 0 : -1;
	return (uint64_t)data < size;
}

struct disk_sink *disk_sink_open(struct vmm *v, const struct mig_config *remote, char *err,
				 size_t errlen)
{
	struct disk_sink *dk = calloc(1, sizeof(*dk));
	if (!dk) {
		snprintf(err, errlen, "out of memory for the disk copy");
		return NULL;
	}
	for (unsigned i = 0; i < v->ndisks && i < 4 && i < remote->ndisks; i++) {
		struct sink_disk *k = &dk->disks[i];
		k->d = virtio_blk_disk(v->blk[i]);
		if (k->d->readonly) {
			snprintf(err, errlen, "disks: copy: %s is attached read-only here: the "
				 "copy must write it", k->d->path);
			goto fail;
		}
		if (k->d->size != remote->disks[i].size) {
			snprintf(err, errlen, "disks: copy: %s is %llu bytes, the guest's disk %u "
				 "%llu", k->d->path, (unsigned long long)k->d->size, i,
				 (unsigned long long)remote->disks[i].size);
			goto fail;
		}
		if (disk_lock(k->d, err, errlen))
			goto fail;
		int data = has_data(k->d->fd, k->d->size);
		if (data) {
			snprintf(err, errlen, "disks: copy: %s %s: the copy goes only into a new, "
				 "empty image (truncate -s %llu, or ferry-img create)", k->d->path,
				 data < 0 ? "cannot be checked for data" : "already holds data",
				 (unsigned long long)k->d->size);
			goto fail;
		}
		k->nblocks = (k->d->size + MIG_DISK_BLOCK - 1) / MIG_DISK_BLOCK;
		if (!(k->hash = zero_hashes(k->d->size, k->nblocks))) {
			snprintf(err, errlen, "out of memory for the block hashes");
			goto fail;
		}
		dk->n = i + 1;
	}
	return dk;
fail:
	for (unsigned i = 0; i < 4; i++)
		if (dk->disks[i].d && dk->disks[i].d->locked) {
			char ignore[200];
			disk_unlock(dk->disks[i].d, ignore, sizeof(ignore));
		}
	disk_sink_free(dk);
	return NULL;
}

int disk_sink_extent(struct disk_sink *dk, const struct mig_section *sec, char *err,
		     size_t errlen)
{
	if (!dk || sec->disk >= dk->n) {
		snprintf(err, errlen, "disks: copy: an extent of disk %u, which is not here",
			 sec->disk);
		return -1;
	}
	struct sink_disk *k = &dk->disks[sec->disk];
	int r;
	if (sec->disk_zero)
		r = fallocate(k->d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)sec->disk_off, (off_t)sec->disk_len);
	else
		r = pwrite(k->d->fd, sec->disk_data, (size_t)sec->disk_len,
			   (off_t)sec->disk_off) == (ssize_t)sec->disk_len ? 0 : -1;
	if (r) {
		snprintf(err, errlen, "disks: copy: writing %s at %llu: %s", k->d->path,
			 (unsigned long long)sec->disk_off, strerror(errno ? errno : EIO));
		return -1;
	}
	/* start writing back as we go, without waiting, so the fdatasync
	 * before the digest (inside the guest's pause) finds little to do */
	k->unflushed += sec->disk_len;
	if (k->unflushed >= SINK_WRITEBACK) {
		sync_file_range(k->d->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		k->unflushed = 0;
	}
	for (uint64_t o = 0; o < sec->disk_len; o += MIG_DISK_BLOCK) {
		uint64_t b = (sec->disk_off + o) >> BLOCK_SHIFT;
		uint64_t len = block_len(k->d->size, b);
		k->hash[b] = sec->disk_zero ? zero_hash(len)
					    : mig_block_hash(sec->disk_data + o, (size_t)len);
	}
	return 0;
}

int disk_sink_verify(struct disk_sink *dk, const struct mig_section *sec, char *err,
		     size_t errlen)
{
	if (!dk || sec->disk >= dk->n) {
		snprintf(err, errlen, "disks: copy: a digest of disk %u, which is not here",
			 sec->disk);
		return -1;
	}
	struct sink_disk *k = &dk->disks[sec->disk];
	if (fdatasync(k->d->fd)) {
		snprintf(err, errlen, "disks: copy: flushing %s: %s", k->d->path,
			 strerror(errno));
		return -1;
	}
	uint64_t mine = mig_digest_of_hashes(k->hash, k->nblocks, k->d->size);
	if (mine != sec->digest) {
		snprintf(err, errlen, "disk %u digest mismatch after transfer (source %016llx, "
			 "here %016llx): refusing to run", sec->disk,
			 (unsigned long long)sec->digest, (unsigned long long)mine);
		return -1;
	}
	return 0;
}

void disk_sink_abandon(struct disk_sink *dk)
{
	for (unsigned i = 0; dk && i < dk->n; i++) {
		struct sink_disk *k = &dk->disks[i];
		char ignore[200];
		if (ftruncate(k->d->fd, 0) || ftruncate(k->d->fd, (off_t)k->d->size))
			fprintf(stderr, "ferry-vm: cannot empty the partial copy %s: %s\n",
				k->d->path, strerror(errno));
		else
			fsync(k->d->fd);
		disk_unlock(k->d, ignore, sizeof(ignore));
	}
	disk_sink_free(dk);
}

void disk_sink_free(struct disk_sink *dk)
{
	for (unsigned i = 0; dk && i < 4; i++)
		free(dk->disks[i].hash);
	free(dk);
}
