/*
 * diskmove.c - storage vMotion: move a running VM's disk image to another
 * path while the guest keeps reading and writing it.
 *
 *   1. disk-move creates the destination (disk_create: refused if the path
 *      exists, is a symlink or is locked) already locked and empty (size 0:
 *      the copy grows it, see copy.h) before it answers;
 *   2. a thread of its own installs a write hook on the disk backend that
 *      marks a dirty-block bitmap (64 KiB blocks), then copies the source's
 *      data extents (copy.c: holes and zero pages are never written);
 *   3. rounds copy the blocks dirtied meanwhile, until what is left is
 *      small (SWITCH_BYTES) or MAX_ROUNDS have run;
 *   4. the switch: give the destination the source's size, fdatasync it, copy what the guest wrote
 *      meanwhile, quiesce the virtio-blk device (take its lock: requests
 *      are served whole under it, so none is in flight and the guest's I/O
 *      to this disk waits while its vCPUs run on), copy the last dirty
 *      blocks, fdatasync again, swap the backend's image, unquiesce. The
 *      guest-visible I/O pause is that window only (pause_ms); the rest of
 *      the machine never stops;
 *   5. close the old image, which drops its lock.
 * A cancel, an I/O error or a full destination before the swap removes the
 * hook, deletes the partial destination and leaves the guest on the old
 * image: nothing was written there by the move, so nothing is lost.
 * bandwidth_mbps paces steps 2 and 3, never the switch.
 *
 * Where the time went is part of the figures: bulk_ms (from the command
 * to the end of step 2), rounds_ms (3), flush_ms (4's first fdatasync and
 * the copy of what the guest wrote during it, before the pause); total_ms
 * less these is the pause and the close. bench/diskmove.py prints them.
 *
 * One move at a time per VM; a migration and a move refuse each other,
 * since the migration handshake names the image the guest runs on.
 */
#include "storage/diskmove.h"
#include "storage/copy.h"
#include "storage/dirty.h"
#include "backend/disk.h"
#include "virtio/blk.h"
#include "migrate/migrate.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK_SHIFT   16                /* 64 KiB dirty blocks */
#define SWITCH_BYTES  (1ULL << 20)      /* switch when at most this is dirty */
#define MAX_ROUNDS    30
#define PACE_SLICE_NS 20000000L         /* sleep at most this long between cancel checks */

enum dm_status { DM_NONE, DM_ACTIVE, DM_COMPLETED, DM_FAILED, DM_CANCELLED };

static const char *const dm_status_names[] = {
	[DM_NONE] = "none", [DM_ACTIVE] = "active", [DM_COMPLETED] = "completed",
	[DM_FAILED] = "failed", [DM_CANCELLED] = "cancelled",
};

struct disk_move {
	struct vmm *vmm;
	struct virtio_dev *blk;
	unsigned index;
	pthread_t thread;
	atomic_bool cancel;

	struct disk dst;            /* the new image; the old one after the swap */
	char *dst_path, *src_path;
	struct dirty_map map;
	struct copier copier;
	uint64_t rate;              /* bytes a second, 0: unlimited */
	uint64_t paced_bytes;
	uint64_t start_ns;

	pthread_mutex_t lock;       /* what query-disk-move reads, below */
	enum dm_status status;
	uint64_t size, data_bytes, copied_bytes, written_bytes, rounds, dirty_blocks;
	uint64_t pause_us, total_ms;
	uint64_t bulk_ms, rounds_ms, flush_ms;  /* where the time went */
	bool bulk_done;
	unsigned updates;
	char error[256];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- figures ---------------------------------------------------------------- */

static void dm_update(struct disk_move *dm)
{
	/* counting the bitmap costs a word per 64 blocks: not on every block */
	uint64_t dirty = dm->updates++ % 64 ? 0 : dirty_map_count(&dm->map) + 1;
	pthread_mutex_lock(&dm->lock);
	if (dirty)
		dm->dirty_blocks = dirty - 1;
	dm->copied_bytes = dm->copier.read_bytes;
	dm->written_bytes = dm->copier.written_bytes;
	pthread_mutex_unlock(&dm->lock);
}

static json_t *dm_figures(struct disk_move *dm)
{
	pthread_mutex_lock(&dm->lock);
	uint64_t total = dm->status == DM_ACTIVE ? (now_ns() - dm->start_ns) / 1000000
						 : dm->total_ms;
	uint64_t left = dm->dirty_blocks << BLOCK_SHIFT;
	if (!dm->bulk_done && dm->status == DM_ACTIVE)
		left += dm->data_bytes - (dm->copied_bytes < dm->data_bytes ? dm->copied_bytes
									   : dm->data_bytes);
	json_t *r = json_pack("{s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, "
			      "s:I, s:I, s:I, s:I}",
		"status", dm_status_names[dm->status], "disk", (int)dm->index,
		"source", dm->src_path, "path", dm->dst_path,
		"size", (json_int_t)dm->size, "total_bytes", (json_int_t)dm->data_bytes,
		"copied_bytes", (json_int_t)dm->copied_bytes,
		"written_bytes", (json_int_t)dm->written_bytes,
		"rounds", (json_int_t)dm->rounds, "dirty_blocks", (json_int_t)dm->dirty_blocks,
		"remaining_bytes", (json_int_t)left,
		"pause_ms", dm->pause_us / 1000.0, "total_ms", (json_int_t)total,
		"bulk_ms", (json_int_t)dm->bulk_ms, "rounds_ms", (json_int_t)dm->rounds_ms,
		"flush_ms", (json_int_t)dm->flush_ms);
	if (dm->error[0])
		json_object_set_new(r, "error", json_string(dm->error));
	pthread_mutex_unlock(&dm->lock);
	return r;
}

/* ---- the copy ----------------------------------------------------------------- */

static void dm_on_write(void *opaque, uint64_t off, uint64_t len)
{
	struct disk_move *dm = opaque;
	dirty_map_mark(&dm->map, off, len);
}

static void dm_track(struct disk_move *dm, bool on)
{
	virtio_blk_quiesce(dm->blk);
	struct disk *d = virtio_blk_disk(dm->blk);
	d->on_write = on ? dm_on_write : NULL;
	d->on_write_opaque = on ? dm : NULL;
	virtio_blk_unquiesce(dm->blk);
}

/* After each block: figures, the bandwidth limit, and cancel. */
static bool dm_pace(void *ctx, uint64_t bytes)
{
	struct disk_move *dm = ctx;
	dm_update(dm);
	if (dm->rate) {
		dm->paced_bytes += bytes;
		uint64_t due = dm->start_ns + dm->paced_bytes * 1000000000ULL / dm->rate;
		for (uint64_t t = now_ns(); t < due && !atomic_load(&dm->cancel); t = now_ns()) {
			uint64_t left = due - t;
			struct timespec ts = { 0, left < PACE_SLICE_NS ? (long)left : PACE_SLICE_NS };
			nanosleep(&ts, NULL);
		}
	}
	return !atomic_load(&dm->cancel);
}

/* Record the milliseconds since *since (now_ns) in *ms, and restart it. */
static void dm_phase(struct disk_move *dm, uint64_t *ms, uint64_t *since)
{
	uint64_t t = now_ns();
	pthread_mutex_lock(&dm->lock);
	*ms = (t - *since) / 1000000;
	pthread_mutex_unlock(&dm->lock);
	*since = t;
}

static void dm_set_dirty(struct disk_move *dm)
{
	uint64_t n = dirty_map_count(&dm->map);
	pthread_mutex_lock(&dm->lock);
	dm->dirty_blocks = n;
	pthread_mutex_unlock(&dm->lock);
}

/* Rounds of dirty blocks until the rest is small. */
static enum copy_result dm_rounds(struct disk_move *dm)
{
	pthread_mutex_lock(&dm->lock);
	dm->bulk_done = true;
	pthread_mutex_unlock(&dm->lock);
	for (;;) {
		dm_set_dirty(dm);
		uint64_t dirty = dirty_map_count(&dm->map);
		if ((dirty << BLOCK_SHIFT) <= SWITCH_BYTES || dm->rounds >= MAX_ROUNDS)
			return COPY_OK;
		uint64_t n;
		enum copy_result r = copier_round(&dm->copier, &n);
		pthread_mutex_lock(&dm->lock);
		dm->rounds++;
		pthread_mutex_unlock(&dm->lock);
		if (r != COPY_OK)
			return r;
	}
}

/* The new image's name must survive a crash too: sync its directory. */
static int dm_sync_dir(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return -1;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return -1;
	int ret = fsync(fd);
	close(fd);
	return ret;
}

/* The last dirty blocks and the swap, with the device's I/O held back. */
static int dm_switch(struct disk_move *dm, char *why, size_t len)
{
	uint64_t n = 0, t = now_ns();
	dm->copier.pace = NULL;     /* from here on nothing is paced */
	if (copier_set_size(&dm->copier)) {
		snprintf(why, len, "cannot make %s %llu bytes: %s", dm->dst_path,
			 (unsigned long long)dm->size, strerror(errno));
		return -1;
	}
	dm->dst.size = dm->size;
	if (fdatasync(dm->dst.fd) || dm_sync_dir(dm->dst_path)) {
		snprintf(why, len, "cannot flush %s: %s", dm->dst_path, strerror(errno));
		return -1;
	}
	/* what the guest wrote during that flush, so the pause finds little */
	if (copier_round(&dm->copier, &n) != COPY_OK) {
		snprintf(why, len, "cannot write %s: %s", dm->dst_path, strerror(errno));
		return -1;
	}
	dm_phase(dm, &dm->flush_ms, &t);
	uint64_t t0 = now_ns();
	virtio_blk_quiesce(dm->blk);
	struct disk *d = virtio_blk_disk(dm->blk);
	int ret = 0;
	if (copier_round(&dm->copier, &n) != COPY_OK) {
		snprintf(why, len, "cannot write %s: %s", dm->dst_path, strerror(errno));
		ret = -1;
	} else if (fdatasync(dm->dst.fd)) {
		snprintf(why, len, "cannot flush %s: %s", dm->dst_path, strerror(errno));
		ret = -1;
	}
	d->on_write = NULL;
	d->on_write_opaque = NULL;
	if (ret == 0) {
		disk_swap(d, &dm->dst);
		dm->vmm->disks[dm->index] = d->path;
	}
	virtio_blk_unquiesce(dm->blk);
	uint64_t pause = now_ns() - t0;
	pthread_mutex_lock(&dm->lock);
	dm->pause_us = pause / 1000;
	dm->dirty_blocks = 0;
	pthread_mutex_unlock(&dm->lock);
	if (ret == 0)
		disk_close(&dm->dst);   /* the old image: drops its lock */
	return ret;
}

static void dm_finish(struct disk_move *dm, enum dm_status status, const char *why)
{
	if (status != DM_COMPLETED) {
		dm_track(dm, false);
		unlink(dm->dst_path);
		disk_close(&dm->dst);
	}
	dm_update(dm);
	pthread_mutex_lock(&dm->lock);
	dm->status = status;
	dm->total_ms = (now_ns() - dm->start_ns) / 1000000;
	if (why)
		snprintf(dm->error, sizeof(dm->error), "%s", why);
	pthread_mutex_unlock(&dm->lock);
	if (status == DM_COMPLETED)
		fprintf(stderr, "ferry-vm: disk %u moved to %s\n", dm->index, dm->dst_path);
	else
		fprintf(stderr, "ferry-vm: disk %u: move to %s %s%s%s; the guest stays on %s\n",
			dm->index, dm->dst_path, dm_status_names[status], why ? ": " : "",
			why ? why : "", dm->src_path);
	vmm_event(dm->vmm, "DISK_MOVE", dm_figures(dm));
}

static void *dm_thread(void *arg)
{
	struct disk_move *dm = arg;
	char why[256] = "";
	uint64_t t = dm->start_ns;
	dm_track(dm, true);
	enum copy_result r = copier_bulk(&dm->copier);
	dm_phase(dm, &dm->bulk_ms, &t);
	if (r == COPY_OK) {
		r = dm_rounds(dm);
		dm_phase(dm, &dm->rounds_ms, &t);
	}
	if (r == COPY_OK && atomic_load(&dm->cancel))
		r = COPY_STOPPED;
	if (r == COPY_ERROR)
		snprintf(why, sizeof(why), "copying to %s: %s", dm->dst_path, strerror(errno));
	else if (r == COPY_OK && dm_switch(dm, why, sizeof(why)))
		r = COPY_ERROR;
	dm_finish(dm, r == COPY_OK ? DM_COMPLETED : r == COPY_STOPPED ? DM_CANCELLED
							    : DM_FAILED,
		  r == COPY_STOPPED ? "cancelled" : why[0] ? why : NULL);
	return NULL;
}

/* ---- control commands --------------------------------------------------------- */

static void dm_free(struct disk_move *dm)
{
	if (!dm)
		return;
	pthread_join(dm->thread, NULL);
	copier_free(&dm->copier);
	dirty_map_free(&dm->map);
	pthread_mutex_destroy(&dm->lock);
	free(dm->dst_path);
	free(dm->src_path);
	free(dm);
}

bool disk_move_active(struct vmm *v)
{
	struct disk_move *dm = v->disk_move;
	if (!dm)
		return false;
	pthread_mutex_lock(&dm->lock);
	bool active = dm->status == DM_ACTIVE;
	pthread_mutex_unlock(&dm->lock);
	return active;
}

void disk_move_destroy(struct vmm *v)
{
	if (!v->disk_move)
		return;
	atomic_store(&v->disk_move->cancel, true);
	dm_free(v->disk_move);
	v->disk_move = NULL;
}

/* Why this VM cannot start a move now, or NULL. */
static const char *dm_refusal(struct vmm *v)
{
	if (v->in)
		return "the guest is not running here yet (incoming migration)";
	if (v->mig && migration_is_done(v->mig))
		return "the guest has migrated away; it runs elsewhere now";
	if (v->mig && migration_is_active(v->mig))
		return "a migration is in progress; wait for it or cancel it first";
	if (disk_move_active(v))
		return "a disk move is already in progress (query-disk-move, "
		       "disk-move-cancel)";
	if (v->ndisks == 0)
		return "this VM has no disk";
	return NULL;
}

static bool dm_args(struct vmm *v, json_t *args, unsigned *index, const char **path,
		    const char **beneath, uint64_t *mbps, char *err, size_t errlen)
{
	json_t *disk = json_object_get(args, "disk");
	json_t *p = json_object_get(args, "path");
	json_t *under = json_object_get(args, "beneath");
	json_t *bw = json_object_get(args, "bandwidth_mbps");
	if (!json_is_integer(disk) || json_integer_value(disk) < 0 ||
	    json_integer_value(disk) >= (json_int_t)v->ndisks) {
		snprintf(err, errlen, "'disk' must be a disk index from 0 to %u", v->ndisks - 1);
		return false;
	}
	if (!json_is_string(p) || !json_string_value(p)[0]) {
		snprintf(err, errlen, "'path' (the new image's path) is required");
		return false;
	}
	if (under && (!json_is_string(under) || !json_string_value(under)[0])) {
		snprintf(err, errlen, "'beneath' must be a directory's path");
		return false;
	}
	if (bw && (!json_is_integer(bw) || json_integer_value(bw) < 0 ||
		   json_integer_value(bw) > 1000000)) {
		snprintf(err, errlen, "'bandwidth_mbps' must be an integer from 0 to 1000000");
		return false;
	}
	*index = (unsigned)json_integer_value(disk);
	*path = json_string_value(p);
	*beneath = under ? json_string_value(under) : NULL;
	*mbps = bw ? (uint64_t)json_integer_value(bw) : 0;
	return true;
}

/* Everything but the thread: the destination exists and is locked. */
static struct disk_move *dm_prepare(struct vmm *v, unsigned index, const char *path,
				    const char *beneath, uint64_t mbps, char *err, size_t errlen)
{
	struct virtio_dev *blk = v->blk[index];
	struct disk *src = virtio_blk_disk(blk);
	if (src->readonly) {
		snprintf(err, errlen, "disk %u (%s) is read-only: copy it while no guest "
			 "writes it", index, src->path);
		return NULL;
	}
	struct stat st;
	if (fstat(src->fd, &st)) {
		snprintf(err, errlen, "disk %s: %s", src->path, strerror(errno));
		return NULL;
	}
	struct disk_move *dm = calloc(1, sizeof(*dm));
	if (!dm) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&dm->lock, NULL);
	dm->vmm = v;
	dm->blk = blk;
	dm->index = index;
	dm->rate = mbps * 1000000 / 8;
	dm->size = src->size;
	dm->dst_path = strdup(path);
	dm->src_path = strdup(src->path);
	if (!dm->dst_path || !dm->src_path ||
	    disk_create(&dm->dst, path, 0, st.st_mode & 0777, beneath, err, errlen)) {
		if (!dm->dst_path || !dm->src_path)
			snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (dirty_map_init(&dm->map, src->size, BLOCK_SHIFT) ||
	    copier_init(&dm->copier, src->fd, dm->dst.fd, src->size, &dm->map)) {
		snprintf(err, errlen, "out of memory for the dirty-block bitmap");
		unlink(path);
		disk_close(&dm->dst);
		goto fail;
	}
	dm->copier.pace = dm_pace;
	dm->copier.ctx = dm;
	dm->data_bytes = copy_data_bytes(src->fd, src->size);
	return dm;
fail:
	dirty_map_free(&dm->map);
	pthread_mutex_destroy(&dm->lock);
	free(dm->dst_path);
	free(dm->src_path);
	free(dm);
	return NULL;
}

json_t *disk_move_cmd_start(void *ctx, json_t *args, const char **cls, char *err,
			    size_t errlen)
{
	struct vmm *v = ctx;
	*cls = "GenericError";
	const char *refusal = dm_refusal(v), *path, *beneath;
	if (refusal) {
		snprintf(err, errlen, "%s", refusal);
		return NULL;
	}
	unsigned index;
	uint64_t mbps;
	if (!dm_args(v, args, &index, &path, &beneath, &mbps, err, errlen))
		return NULL;
	struct disk_move *dm = dm_prepare(v, index, path, beneath, mbps, err, errlen);
	if (!dm)
		return NULL;
	/* a full file system under RLIMIT_FSIZE is an error to report, not a signal */
	signal(SIGXFSZ, SIG_IGN);
	dm_free(v->disk_move);      /* the last one, finished */
	dm->status = DM_ACTIVE;
	dm->start_ns = now_ns();
	v->disk_move = dm;
	if (pthread_create(&dm->thread, NULL, dm_thread, dm)) {
		v->disk_move = NULL;
		unlink(path);
		disk_close(&dm->dst);
		copier_free(&dm->copier);
		dirty_map_free(&dm->map);
		free(dm->dst_path);
		free(dm->src_path);
		free(dm);
		snprintf(err, errlen, "cannot start the copy thread");
		return NULL;
	}
	vmm_event(v, "DISK_MOVE", json_pack("{s:s, s:i, s:s}", "status", "active",
					    "disk", (int)index, "path", path));
	return json_object();
}

json_t *disk_move_cmd_query(void *ctx, json_t *args, const char **cls, char *err,
			    size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	if (!v->disk_move)
		return json_pack("{s:s}", "status", "none");
	return dm_figures(v->disk_move);
}

json_t *disk_move_cmd_cancel(void *ctx, json_t *args, const char **cls, char *err,
			     size_t errlen)
{
	struct vmm *v = ctx;
	(void)args;
	if (!disk_move_active(v)) {
		*cls = "GenericError";
		snprintf(err, errlen, "no disk move is in progress");
		return NULL;
	}
	atomic_store(&v->disk_move->cancel, true);
	return json_object();
}
