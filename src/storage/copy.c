/*
 * copy.c - sparse block copying for storage moves (see copy.h).
 *
 * A block is read whole, then split into pages: a run of non-zero pages
 * is written with one pwrite, a run of zero pages is skipped (bulk pass:
 * the fresh destination has nothing there, a hole or past its end) or
 * punched (later passes). If the destination's file system cannot punch
 * holes, zeros are written.
 */
#include "storage/copy.h"
#include "util/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int copier_init(struct copier *c, int src, int dst, uint64_t size, struct dirty_map *map)
{
	memset(c, 0, sizeof(*c));
	c->src = src;
	c->dst = dst;
	c->size = size;
	c->map = map;
	/* A second open file description of dst for O_DIRECT (setting the
	 * flag on dst itself would bind the guest's I/O to alignment after the
	 * switch). Where O_DIRECT is refused, writes stay buffered. */
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", dst);
	c->direct_fd = open(self, O_WRONLY | O_DIRECT | O_CLOEXEC);
	c->buf_len = dirty_block_size(map) > COPY_CHUNK ? dirty_block_size(map) : COPY_CHUNK;
	if (posix_memalign((void **)&c->buf, COPY_PAGE, c->buf_len))
		c->buf = NULL;
	return c->buf ? 0 : -1;
}

void copier_free(struct copier *c)
{
	if (c->direct_fd >= 0)
		close(c->direct_fd);
	c->direct_fd = -1;
	free(c->buf);
	c->buf = NULL;
}


/* A write that bypasses the page cache when it can (aligned whole pages).
 * Measured here with a guest doing 160 O_DSYNC writes a second: a 1 GiB
 * move took 1.3-6 s this way against 8-23 s through the page cache, since
 * every guest fdatasync (a journal commit) waited for our dirty pages. */
static int write_direct(struct copier *c, const uint8_t *p, size_t len, uint64_t off)
{
	if (c->direct_fd >= 0 && len % COPY_PAGE == 0 && off % COPY_PAGE == 0) {
		ssize_t n = pwrite(c->direct_fd, p, len, (off_t)off);
		if (n == (ssize_t)len)
			return 0;
		if (n < 0 && errno != EINVAL)
			return -1;
		if (n >= 0) {       /* short: finish buffered */
			p += n;
			off += (uint64_t)n;
			len -= (size_t)n;
		}
	}
	return pwrite_full(c->dst, p, len, off);
}

static bool page_is_zero(const uint8_t *p, size_t len)
{
	static const uint8_t zeros[COPY_PAGE];
	return memcmp(p, zeros, len) == 0;
}

static int punch(int fd, const uint8_t *zeros, size_t len, uint64_t off)
{
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) == 0)
		return 0;
	if (errno != EOPNOTSUPP && errno != ENOSYS)
		return -1;
	return pwrite_full(fd, zeros, len, off);     /* zeros: the buffer's own */
}

/* Write buf[0, len) at off, page run by page run. The bulk pass's
 * writers call this side by side: the counters are added atomically. */
static int write_sparse(struct copier *c, const uint8_t *buf, size_t len, uint64_t off,
			bool do_punch)
{
	size_t i = 0;
	while (i < len) {
		size_t page = len - i < COPY_PAGE ? len - i : COPY_PAGE;
		bool zero = page_is_zero(buf + i, page);
		size_t j = i + page;
		while (j < len) {
			size_t next = len - j < COPY_PAGE ? len - j : COPY_PAGE;
			if (page_is_zero(buf + j, next) != zero)
				break;
			j += next;
		}
		if (!zero) {
			if (write_direct(c, buf + i, j - i, off + i))
				return -1;
			__atomic_fetch_add(&c->written_bytes, j - i, __ATOMIC_RELAXED);
			__atomic_fetch_add(&c->unflushed, j - i, __ATOMIC_RELAXED);
		} else if (do_punch && punch(c->dst, buf + i, j - i, off + i)) {
			return -1;
		}
		i = j;
	}
	return 0;
}

/* Start writing back what we wrote, without waiting for it. */
static void start_writeback(struct copier *c)
{
	if (c->unflushed < COPY_WRITEBACK)
		return;
	sync_file_range(c->dst, 0, 0, SYNC_FILE_RANGE_WRITE);
	c->unflushed = 0;
}

/* Read blocks [b, b + n) (the part inside the image) into buf; *off and
 * *len say what was read (*len 0: past the end). 0, or -1 with errno. */
static int read_blocks(struct copier *c, uint8_t *buf, uint64_t b, uint64_t n,
		       uint64_t *off, size_t *len)
{
	uint64_t bs = dirty_block_size(c->map);
	*off = b * bs;
	*len = 0;
	if (*off >= c->size)
		return 0;
	*len = (size_t)(c->size - *off < n * bs ? c->size - *off : n * bs);
	if (pread_full(c->src, buf, *len, *off))
		return -1;
	c->read_bytes += *len;
	return 0;
}

/* Copy blocks [b, b + n) (the part inside the image). */
static int copy_blocks(struct copier *c, uint64_t b, uint64_t n, bool do_punch)
{
	uint64_t off;
	size_t len;
	if (read_blocks(c, c->buf, b, n, &off, &len))
		return -1;
	if (len && write_sparse(c, c->buf, len, off, do_punch))
		return -1;
	start_writeback(c);
	return 0;
}

int copier_block(struct copier *c, uint64_t b, bool do_punch)
{
	return copy_blocks(c, b, 1, do_punch);
}

/* The next data extent [*start, *end) at or after off; false when none. */
static bool next_extent(int fd, uint64_t off, uint64_t size, uint64_t *start,
			uint64_t *end)
{
	if (off >= size)
		return false;
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		if (errno == ENXIO)
			return false;   /* only holes from here on */
		*start = off;           /* no SEEK_DATA here: all of it is data */
		*end = size;
		return true;
	}
	off_t h = lseek(fd, d, SEEK_HOLE);
	*start = (uint64_t)d;
	*end = h < 0 || (uint64_t)h > size ? size : (uint64_t)h;
	return *start < size;
}

uint64_t copy_data_bytes(int fd, uint64_t size)
{
	uint64_t off = 0, start, end, n = 0;
	while (next_extent(fd, off, size, &start, &end)) {
		n += end - start;
		off = end;
	}
	return n;
}

/* ---- the bulk pass's writers ---------------------------------------------------- */

/* The move thread reads chunks into free buffers and queues them; the
 * writers write them (O_DIRECT, COPY_WRITERS at a time) and give the
 * buffers back. Completion order does not matter: every chunk goes to its
 * own place, and the rounds start only after the pool is closed. */
struct chunk_job {
	uint8_t *buf;
	size_t len;
	uint64_t off;
};

struct writer_pool {
	struct copier *c;
	pthread_mutex_t lock;
	pthread_cond_t changed;
	uint8_t *bufs;                          /* COPY_SLOTS chunks */
	uint8_t *free[COPY_SLOTS];
	unsigned nfree;
	struct chunk_job queue[COPY_SLOTS];     /* a ring */
	unsigned head, queued;
	bool closing;
	int error;                              /* the first failed write's errno */
	pthread_t threads[COPY_WRITERS];
	unsigned nthreads;
};

static void *writer_main(void *arg)
{
	struct writer_pool *p = arg;
	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->queued && !p->closing)
			pthread_cond_wait(&p->changed, &p->lock);
		if (!p->queued)
			break;
		struct chunk_job job = p->queue[p->head];
		p->head = (p->head + 1) % COPY_SLOTS;
		p->queued--;
		bool failed = p->error != 0;
		pthread_mutex_unlock(&p->lock);
		int err = 0;
		if (!failed && write_sparse(p->c, job.buf, job.len, job.off, true))
			err = errno ? errno : EIO;
		pthread_mutex_lock(&p->lock);
		if (err && !p->error)
			p->error = err;
		p->free[p->nfree++] = job.buf;
		pthread_cond_broadcast(&p->changed);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static int pool_open(struct writer_pool *p, struct copier *c)
{
	memset(p, 0, sizeof(*p));
	p->c = c;
	if (posix_memalign((void **)&p->bufs, COPY_PAGE, (size_t)COPY_SLOTS * c->buf_len))
		return -1;
	for (unsigned i = 0; i < COPY_SLOTS; i++)
		p->free[p->nfree++] = p->bufs + (size_t)i * c->buf_len;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->changed, NULL);
	while (p->nthreads < COPY_WRITERS &&
	       pthread_create(&p->threads[p->nthreads], NULL, writer_main, p) == 0)
		p->nthreads++;
	return 0;
}

/* A free buffer, waiting for one; NULL once a write has failed. */
static uint8_t *pool_take(struct writer_pool *p)
{
	pthread_mutex_lock(&p->lock);
	while (!p->nfree && !p->error)
		pthread_cond_wait(&p->changed, &p->lock);
	uint8_t *buf = p->error ? NULL : p->free[--p->nfree];
	pthread_mutex_unlock(&p->lock);
	return buf;
}

static void pool_give_back(struct writer_pool *p, uint8_t *buf)
{
	pthread_mutex_lock(&p->lock);
	p->free[p->nfree++] = buf;
	pthread_mutex_unlock(&p->lock);
}

static void pool_submit(struct writer_pool *p, uint8_t *buf, size_t len, uint64_t off)
{
	pthread_mutex_lock(&p->lock);
	p->queue[(p->head + p->queued) % COPY_SLOTS] = (struct chunk_job){ buf, len, off };
	p->queued++;
	pthread_cond_broadcast(&p->changed);
	pthread_mutex_unlock(&p->lock);
}

/* Wait for the queued writes and the writers. 0, or -1 with errno of the
 * first write that failed. */
static int pool_close(struct writer_pool *p)
{
	pthread_mutex_lock(&p->lock);
	p->closing = true;
	pthread_cond_broadcast(&p->changed);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->changed);
	pthread_mutex_destroy(&p->lock);
	free(p->bufs);
	if (p->error) {
		errno = p->error;
		return -1;
	}
	return 0;
}

/* Allocate the destination under every data extent of the source (the
 * file's size follows), so that the writers write inside the file: ext4
 * serializes writes that extend a file, not these. 0; 1 where the file
 * system cannot (the pass then writes one chunk at a time, growing the
 * file); -1 with errno (ENOSPC: a full destination fails here, first). */
static int preallocate(struct copier *c)
{
	uint64_t off = 0, start, end;
	while (next_extent(c->src, off, c->size, &start, &end)) {
		if (fallocate(c->dst, 0, (off_t)start, (off_t)(end - start)) != 0)
			return errno == EOPNOTSUPP || errno == ENOSYS ? 1 : -1;
		off = end;
	}
	return 0;
}

/* Read blocks [b, b + n) into a free buffer and queue it for the writers. */
static int queue_blocks(struct copier *c, struct writer_pool *p, uint64_t b, uint64_t n)
{
	uint8_t *buf = pool_take(p);
	if (!buf)
		return -1;          /* a writer failed: pool_close says why */
	uint64_t off;
	size_t len;
	if (read_blocks(c, buf, b, n, &off, &len)) {
		pool_give_back(p, buf);
		return -1;
	}
	if (len)
		pool_submit(p, buf, len, off);
	else
		pool_give_back(p, buf);
	return 0;
}

enum copy_result copier_bulk(struct copier *c)
{
	struct writer_pool pool;
	bool parallel = false;
	if (c->direct_fd >= 0) {
		int r = preallocate(c);
		if (r < 0)
			return COPY_ERROR;
		parallel = r == 0 && pool_open(&pool, c) == 0;
	}
	unsigned shift = c->map->block_shift;
	uint64_t per_chunk = c->buf_len >> shift, off = 0, start, end;
	enum copy_result result = COPY_OK;
	while (result == COPY_OK && next_extent(c->src, off, c->size, &start, &end)) {
		uint64_t last = (end - 1) >> shift;
		for (uint64_t b = start >> shift; b <= last; b += per_chunk) {
			uint64_t n = last - b + 1 < per_chunk ? last - b + 1 : per_chunk;
			for (uint64_t i = 0; i < n; i++)
				dirty_map_test_and_clear(c->map, b + i);
			if (parallel ? queue_blocks(c, &pool, b, n) : copy_blocks(c, b, n, false)) {
				result = COPY_ERROR;
				break;
			}
			if (c->pace && !c->pace(c->ctx, n << shift)) {
				result = COPY_STOPPED;
				break;
			}
		}
		off = (last + 1) << shift;
	}
	int saved = errno;
	if (parallel && pool_close(&pool))
		return COPY_ERROR;          /* a failed write says why first */
	errno = saved;
	return result;
}

int copier_set_size(struct copier *c)
{
	return ftruncate(c->dst, (off_t)c->size);
}

enum copy_result copier_round(struct copier *c, uint64_t *blocks)
{
	*blocks = 0;
	for (uint64_t b = dirty_map_next(c->map, 0); b < c->map->nblocks;
	     b = dirty_map_next(c->map, b + 1)) {
		if (!dirty_map_test_and_clear(c->map, b))
			continue;
		if (copier_block(c, b, true))
			return COPY_ERROR;
		(*blocks)++;
		if (c->pace && !c->pace(c->ctx, dirty_block_size(c->map)))
			return COPY_STOPPED;
	}
	return COPY_OK;
}
