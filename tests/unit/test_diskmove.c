/*
 * test_diskmove.c - the pieces of a storage move that need no machine:
 * the dirty-block bitmap, sparse copying (bulk pass over data extents,
 * rounds over dirty blocks, zero pages punched, an image that ends
 * inside a page, a destination that starts empty and grows, its size set
 * at the end, a bulk pass with a guest writing), a stop from the pacing
 * callback, a write error, disk_create's refusals and lock, and the disk
 * backend's write hook.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/disk.h"
#include "storage/copy.h"
#include "storage/dirty.h"

#define MIB (1u << 20)
#define KIB (1u << 10)

/* ---- the bitmap ------------------------------------------------------------- */

static void bitmap_marks_every_touched_block(void **state)
{
	(void)state;
	struct dirty_map m;
	assert_int_equal(dirty_map_init(&m, 100 * 4096 + 1, 12), 0);   /* 101 blocks */
	assert_int_equal(m.nblocks, 101);
	assert_int_equal(dirty_map_count(&m), 0);
	assert_int_equal(dirty_map_next(&m, 0), 101);

	dirty_map_mark(&m, 4095, 2);                /* straddles blocks 0 and 1 */
	dirty_map_mark(&m, 63 * 4096, 4096 * 2);    /* 63 and 64: across a word */
	dirty_map_mark(&m, 100 * 4096, 1 << 20);    /* clipped at the end */
	dirty_map_mark(&m, 200 * 4096, 10);         /* past the end: nothing */
	dirty_map_mark(&m, 50 * 4096, 0);           /* empty: nothing */
	assert_int_equal(dirty_map_count(&m), 5);
	assert_int_equal(dirty_map_next(&m, 0), 0);
	assert_int_equal(dirty_map_next(&m, 2), 63);
	assert_int_equal(dirty_map_next(&m, 64), 64);
	assert_int_equal(dirty_map_next(&m, 65), 100);
	assert_true(dirty_map_test_and_clear(&m, 63));
	assert_false(dirty_map_test_and_clear(&m, 63));
	assert_false(dirty_map_test_and_clear(&m, 1000));
	assert_false(dirty_map_test(&m, 63));
	assert_true(dirty_map_test(&m, 64));
	assert_int_equal(dirty_map_count(&m), 4);

	dirty_map_set_all(&m, true);
	assert_int_equal(dirty_map_count(&m), 101);     /* no bit past the end */
	dirty_map_set_all(&m, false);
	assert_int_equal(dirty_map_count(&m), 0);
	dirty_map_free(&m);
	assert_int_equal(dirty_map_init(&m, 4096, 8), -1);     /* blocks under a sector */
}

/* ---- copying ------------------------------------------------------------------ */

struct files {
	char src[64], dst[64];
	int sfd, dfd;
	struct dirty_map map;
	struct copier c;
};

static uint64_t allocated(int fd)
{
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

static void put(int fd, uint64_t off, size_t len, uint8_t byte)
{
	uint8_t *p = malloc(len);
	memset(p, byte, len);
	assert_int_equal(pwrite(fd, p, len, (off_t)off), (ssize_t)len);
	free(p);
}

static void assert_same(struct files *f)
{
	uint8_t *a = malloc(MIB), *b = malloc(MIB);
	for (uint64_t off = 0; off < f->c.size; off += MIB) {
		assert_int_equal(pread(f->sfd, a, MIB, (off_t)off), MIB);
		assert_int_equal(pread(f->dfd, b, MIB, (off_t)off), MIB);
		assert_memory_equal(a, b, MIB);
	}
	free(a);
	free(b);
}

/* An 8 MiB source: 200 KiB of 0x11 at 1 MiB, a page of zeros written
 * inside 64 KiB of 0x22 at 5 MiB, holes elsewhere; an empty destination
 * (size 0, as a move creates it). */
static int setup_files(void **state)
{
	struct files *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	snprintf(f->src, sizeof(f->src), "/tmp/ferry-mv-src-XXXXXX");
	snprintf(f->dst, sizeof(f->dst), "/tmp/ferry-mv-dst-XXXXXX");
	f->sfd = mkstemp(f->src);
	f->dfd = mkstemp(f->dst);
	assert_true(f->sfd >= 0 && f->dfd >= 0);
	assert_int_equal(ftruncate(f->sfd, 8 * MIB), 0);
	put(f->sfd, 1 * MIB, 200 * KIB, 0x11);
	put(f->sfd, 5 * MIB, 64 * KIB, 0x22);
	put(f->sfd, 5 * MIB + 8 * KIB, 4 * KIB, 0);
	assert_int_equal(dirty_map_init(&f->map, 8 * MIB, 16), 0);
	assert_int_equal(copier_init(&f->c, f->sfd, f->dfd, 8 * MIB, &f->map), 0);
	*state = f;
	return 0;
}

static int teardown_files(void **state)
{
	struct files *f = *state;
	copier_free(&f->c);
	dirty_map_free(&f->map);
	close(f->sfd);
	close(f->dfd);
	unlink(f->src);
	unlink(f->dst);
	free(f);
	return 0;
}

static void bulk_copies_data_and_keeps_holes(void **state)
{
	struct files *f = *state;
	uint64_t data = copy_data_bytes(f->sfd, 8 * MIB);
	assert_true(data >= 264 * KIB && data < 1 * MIB);
	dirty_map_mark(&f->map, 1 * MIB, 1);        /* cleared as the pass reaches it */
	assert_int_equal(copier_bulk(&f->c), COPY_OK);
	assert_int_equal(copier_set_size(&f->c), 0);
	assert_same(f);
	assert_int_equal(dirty_map_count(&f->map), 0);
	/* only the source's data extents were read, and no zero page written */
	assert_true(f->c.read_bytes <= data + 2 * 64 * KIB);
	assert_int_equal(f->c.written_bytes, 200 * KIB + 60 * KIB);
	assert_true(allocated(f->dfd) <= 300 * KIB);
	assert_true(allocated(f->dfd) < allocated(f->sfd));
}

static void round_copies_dirty_blocks_and_punches_zeros(void **state)
{
	struct files *f = *state;
	assert_int_equal(copier_bulk(&f->c), COPY_OK);
	assert_int_equal(copier_set_size(&f->c), 0);
	uint64_t before = allocated(f->dfd);
	/* the guest writes: zeros over data, data into a hole, data over data */
	put(f->sfd, 1 * MIB, 128 * KIB, 0);
	dirty_map_mark(&f->map, 1 * MIB, 128 * KIB);
	put(f->sfd, 7 * MIB + 100, 3000, 0x33);
	dirty_map_mark(&f->map, 7 * MIB + 100, 3000);
	put(f->sfd, 5 * MIB + 512, 512, 0x44);
	dirty_map_mark(&f->map, 5 * MIB + 512, 512);
	/* an unmarked write is not the copier's business: marked ones only */
	uint64_t blocks;
	assert_int_equal(copier_round(&f->c, &blocks), COPY_OK);
	assert_int_equal(blocks, 2 + 1 + 1);
	assert_same(f);
	assert_int_equal(dirty_map_count(&f->map), 0);
	assert_true(allocated(f->dfd) < before);     /* 128 KiB punched, 4 KiB added */
	off_t hole = lseek(f->dfd, 1 * MIB, SEEK_HOLE);
	assert_int_equal(hole, 1 * MIB);
}

/* An image whose end is not a whole page: the tail cannot go O_DIRECT. */
static void ragged_tail_is_copied(void **state)
{
	struct files *f = *state;
	uint64_t size = 8 * MIB + 1536;
	assert_int_equal(ftruncate(f->sfd, (off_t)size), 0);
	put(f->sfd, 8 * MIB - 2048, 3584, 0x55);
	dirty_map_free(&f->map);
	copier_free(&f->c);
	assert_int_equal(dirty_map_init(&f->map, size, 16), 0);
	assert_int_equal(copier_init(&f->c, f->sfd, f->dfd, size, &f->map), 0);
	assert_int_equal(copier_bulk(&f->c), COPY_OK);
	assert_int_equal(lseek(f->dfd, 0, SEEK_END), (off_t)size);   /* data to the end */
	uint8_t a[4096], b[4096];
	assert_int_equal(pread(f->sfd, a, 3584, 8 * MIB - 2048), 3584);
	assert_int_equal(pread(f->dfd, b, 3584, 8 * MIB - 2048), 3584);
	assert_memory_equal(a, b, 3584);
	f->c.size = 8 * MIB;        /* assert_same compares whole MiBs */
	assert_same(f);
}

/* The bulk pass grows the empty destination in ascending order, over the
 * hole in the middle (sparse), and stops at the end of the last data;
 * copier_set_size() makes the hole at the end. */
static void destination_grows_and_gets_its_size(void **state)
{
	struct files *f = *state;
	struct stat st;
	assert_int_equal(copier_bulk(&f->c), COPY_OK);
	assert_int_equal(fstat(f->dfd, &st), 0);
	assert_int_equal(st.st_size, 5 * MIB + 64 * KIB);
	assert_int_equal(lseek(f->dfd, 0, SEEK_DATA), 1 * MIB);             /* hole at the start */
	off_t hole = lseek(f->dfd, 1 * MIB, SEEK_HOLE);                     /* and in the middle */
	assert_true(hole >= 1 * MIB + 200 * KIB && hole <= 2 * MIB);
	assert_int_equal(copier_set_size(&f->c), 0);
	assert_int_equal(fstat(f->dfd, &st), 0);
	assert_int_equal(st.st_size, 8 * MIB);
	assert_int_equal(lseek(f->dfd, 5 * MIB + 64 * KIB, SEEK_HOLE), 5 * MIB + 64 * KIB);
	assert_int_equal(lseek(f->dfd, 5 * MIB + 64 * KIB, SEEK_DATA), -1);   /* hole at the end */
	assert_int_equal(errno, ENXIO);
	assert_same(f);
	assert_true(allocated(f->dfd) <= 300 * KIB);
}

/* A "guest" writing the source while the bulk pass runs: after the pass
 * and the rounds the copy is exact. 48 MiB of data (48 chunks), the guest
 * writing records of 4 KiB anywhere and marking them after each write, as
 * the disk backend's hook does. */
struct guest {
	struct files *f;
	volatile bool stop;
	unsigned writes;
};

static void *guest_writes(void *arg)
{
	struct guest *g = arg;
	uint8_t rec[4096];
	unsigned seed = 7;
	while (!g->stop || g->writes < 64) {
		uint64_t off = (uint64_t)(rand_r(&seed) % (48 * 256)) * 4096;
		memset(rec, (int)(g->writes % 250) + 1, sizeof(rec));
		assert_int_equal(pwrite(g->f->sfd, rec, sizeof(rec), (off_t)off), (ssize_t)sizeof(rec));
		dirty_map_mark(&g->f->map, off, sizeof(rec));
		g->writes++;
	}
	return NULL;
}

static void bulk_pass_with_a_writing_guest_is_exact(void **state)
{
	struct files *f = *state;
	uint64_t size = 48 * MIB;
	assert_int_equal(ftruncate(f->sfd, (off_t)size), 0);
	for (unsigned i = 0; i < 48; i++)
		put(f->sfd, (uint64_t)i * MIB, MIB, (uint8_t)(0x40 + i));
	put(f->sfd, 20 * MIB + 4096, 8192, 0);         /* zeros inside the data */
	dirty_map_free(&f->map);
	copier_free(&f->c);
	assert_int_equal(dirty_map_init(&f->map, size, 16), 0);
	assert_int_equal(copier_init(&f->c, f->sfd, f->dfd, size, &f->map), 0);
	struct guest g = { .f = f };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, guest_writes, &g), 0);
	assert_int_equal(copier_bulk(&f->c), COPY_OK);
	g.stop = true;
	pthread_join(t, NULL);
	uint64_t blocks;
	do
		assert_int_equal(copier_round(&f->c, &blocks), COPY_OK);
	while (blocks);
	assert_int_equal(copier_set_size(&f->c), 0);
	assert_same(f);
	/* the zero pages the guest did not overwrite are holes, not written */
	assert_true(f->c.written_bytes >= size - 8192);
	assert_true(allocated(f->dfd) <= size);
}

static bool stop_after_two(void *ctx, uint64_t bytes)
{
	int *n = ctx;
	(void)bytes;
	return ++*n < 2;
}

static void pace_can_stop_a_pass(void **state)
{
	struct files *f = *state;
	int n = 0;
	f->c.pace = stop_after_two;
	f->c.ctx = &n;
	assert_int_equal(copier_bulk(&f->c), COPY_STOPPED);
	assert_int_equal(n, 2);
	dirty_map_set_all(&f->map, true);
	n = 0;
	uint64_t blocks;
	assert_int_equal(copier_round(&f->c, &blocks), COPY_STOPPED);
	assert_int_equal(blocks, 2);
}

static void write_error_is_reported(void **state)
{
	struct files *f = *state;
	struct rlimit old, small = { 1 * MIB, 1 * MIB };
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	small.rlim_max = old.rlim_max;
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
	enum copy_result r = copier_bulk(&f->c);
	int e = errno;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_int_equal(r, COPY_ERROR);
	assert_int_equal(e, EFBIG);
}

/* ---- creating the destination, and the write hook -------------------------------- */

static void create_refuses_existing_symlink_and_locked(void **state)
{
	(void)state;
	char dir[] = "/tmp/ferry-mv-dir-XXXXXX", path[128], link[128], err[256];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/new.img", dir);
	snprintf(link, sizeof(link), "%s/link.img", dir);
	struct disk d, other;
	assert_int_equal(disk_create(&d, path, 64 * MIB, 0600, NULL, err, sizeof(err)), 0);
	assert_int_equal(d.size, 64 * MIB);
	assert_true(d.locked);
	assert_int_equal(disk_lock_state(path), F_WRLCK);
	assert_int_equal(allocated(d.fd), 0);
	assert_int_equal(disk_create(&other, path, MIB, 0600, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "in use by another process (locked)"));
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(disk_create(&other, link, MIB, 0600, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "is a symlink"));
	disk_close(&d);
	assert_int_equal(disk_lock_state(path), F_UNLCK);
	assert_int_equal(disk_create(&other, path, MIB, 0600, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "already exists"));
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 64 * MIB);      /* a refusal changes nothing */
	unlink(link);
	unlink(path);
	rmdir(dir);
}

struct hooked {
	uint64_t off, len;
	int calls;
};

static void on_write(void *opaque, uint64_t off, uint64_t len)
{
	struct hooked *h = opaque;
	h->off = off;
	h->len = len;
	h->calls++;
}

static void write_hook_sees_every_write(void **state)
{
	struct files *f = *state;
	struct disk d;
	char err[256];
	struct hooked h = { 0 };
	assert_int_equal(disk_open(&d, f->src, false, false, NULL, false, err, sizeof(err)), 0);
	d.on_write = on_write;
	d.on_write_opaque = &h;
	uint8_t buf[1024] = { 1 };
	assert_int_equal(disk_write(&d, buf, sizeof(buf), 4096), 0);
	assert_int_equal(h.calls, 1);
	assert_int_equal(h.off, 4096);
	assert_int_equal(h.len, 1024);
	assert_int_equal(disk_read(&d, buf, sizeof(buf), 0), 0);
	assert_int_equal(h.calls, 1);               /* reads are not writes */
	disk_close(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(bitmap_marks_every_touched_block),
		cmocka_unit_test_setup_teardown(bulk_copies_data_and_keeps_holes, setup_files,
						teardown_files),
		cmocka_unit_test_setup_teardown(round_copies_dirty_blocks_and_punches_zeros,
						setup_files, teardown_files),
		cmocka_unit_test_setup_teardown(ragged_tail_is_copied, setup_files,
						teardown_files),
		cmocka_unit_test_setup_teardown(destination_grows_and_gets_its_size, setup_files,
						teardown_files),
		cmocka_unit_test_setup_teardown(bulk_pass_with_a_writing_guest_is_exact,
						setup_files, teardown_files),
		cmocka_unit_test_setup_teardown(pace_can_stop_a_pass, setup_files,
						teardown_files),
		cmocka_unit_test_setup_teardown(write_error_is_reported, setup_files,
						teardown_files),
		cmocka_unit_test(create_refuses_existing_symlink_and_locked),
		cmocka_unit_test_setup_teardown(write_hook_sees_every_write, setup_files,
						teardown_files),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
