/*
 * test_stream.c - the migration stream: round trips over a socketpair,
 * configuration refusals with their reasons, and the reader against
 * broken streams: truncated at every byte, a flipped byte at every
 * offset, zstd pages of the wrong size, pages beyond RAM, unknown
 * section types, hostile configurations. Run it under ASan too
 * (meson setup build-asan -Db_sanitize=address,undefined).
 *
 * With FERRY_STREAM_SEEDS=DIR set, it only writes the sample streams into
 * DIR (the fuzz target's seed corpus: fuzz/run-short.sh does that).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "migrate/grammar.h"
#include "migrate/stream.h"
#include "stream_sample.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <zstd.h>

/* ---- helpers -------------------------------------------------------------------- */

struct blob {
	uint8_t *data;
	size_t len;
};

static int memfd_with(const void *data, size_t len)
{
	int fd = memfd_create("stream-test", MFD_CLOEXEC);
	assert_true(fd >= 0);
	const uint8_t *p = data;
	size_t done = 0;
	while (done < len) {
		ssize_t r = write(fd, p + done, len - done);
		assert_true(r > 0);
		done += (size_t)r;
	}
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

static struct blob slurp(int fd)
{
	struct blob b = { NULL, 0 };
	off_t end = lseek(fd, 0, SEEK_END);
	assert_true(end >= 0);
	b.len = (size_t)end;
	b.data = malloc(b.len + 1);
	assert_non_null(b.data);
	assert_int_equal(pread(fd, b.data, b.len, 0), (ssize_t)b.len);
	return b;
}

/* Bytes written by fn(fd, arg) into a fresh memfd. */
static struct blob capture(int (*fn)(int fd, bool arg), bool arg)
{
	int fd = memfd_create("stream-out", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fn(fd, arg), 0);
	struct blob b = slurp(fd);
	close(fd);
	return b;
}

static int control_writer(int fd, bool arg)
{
	(void)arg;
	return sample_write_control(fd);
}

/* Run the destination-side reader over these bytes. */
static int read_bytes(const uint8_t *data, size_t len, uint8_t *ram, char *err,
		      size_t errlen)
{
	int fd = memfd_with(data, len);
	err[0] = 0;
	int r = sample_read(fd, ram, SAMPLE_RAM, err, errlen);
	close(fd);
	return r;
}

/* A stream: header, config, then raw sections written by the caller. */
static bool crafted_copy_disks;     /* crafted streams say disks: copy */

static struct mig_stream *crafted_stream(int fd)
{
	struct mig_config cfg;
	struct mig_stream *s = mig_stream_new(fd);
	sample_config(&cfg);
	cfg.copy_disks = crafted_copy_disks;
	assert_int_equal(mig_write_config(s, &cfg), 0);
	return s;
}

/* Read a crafted stream to its first failure; return the error text. */
static const char *first_error(int wfd, struct mig_stream *w, char *buf, size_t len)
{
	static uint8_t ram[SAMPLE_RAM];
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
	assert_int_equal(lseek(wfd, 0, SEEK_SET), 0);
	struct mig_stream *r = mig_stream_new(wfd);
	struct mig_config cfg;
	struct mig_section sec;
	int rc = mig_read_config(r, &cfg);
	while (rc == 0) {
		rc = mig_read_section(r, &sec, ram, SAMPLE_RAM);
		if (rc == 0 && sec.type == MIG_SEC_END)
			break;
	}
	snprintf(buf, len, "%s", rc ? mig_stream_error(r) : "");
	mig_stream_free(r);
	return buf;
}

static void assert_contains(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("\"%s\" does not contain \"%s\"", text, want);
}

/* ---- round trips ---------------------------------------------------------------- */

static void sample_stream_loads(void **state)
{
	(void)state;
	static uint8_t want[SAMPLE_RAM], ram[SAMPLE_RAM];
	char err[512];
	sample_ram(want);
	for (int compress = 0; compress < 2; compress++) {
		struct blob b = capture(sample_write, compress);
		memset(ram, 0xaa, sizeof(ram));
		if (read_bytes(b.data, b.len, ram, err, sizeof(err)))
			fail_msg("sample stream (compress %d): %s", compress, err);
		assert_memory_equal(ram, want, SAMPLE_RAM);
		free(b.data);
	}
}

static void config_round_trip(void **state)
{
	(void)state;
	int sv[2];
	struct mig_config out, in;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	sample_config(&out);
	struct mig_stream *w = mig_stream_new(sv[0]), *r = mig_stream_new(sv[1]);
	assert_int_equal(mig_write_config(w, &out), 0);
	assert_int_equal(mig_flush(w), 0);
	assert_int_equal(mig_read_config(r, &in), 0);
	assert_int_equal(in.version, MIG_VERSION);
	assert_string_equal(in.isa, SAMPLE_ISA);
	assert_true(in.ram_size == SAMPLE_RAM);
	assert_int_equal(in.harts, 2);
	assert_int_equal(in.ndevices, 2);
	assert_string_equal(in.devices[1].name, "virtio-blk@10001000");
	assert_int_equal(in.devices[1].version, 2);
	assert_int_equal(in.ndisks, 1);
	assert_string_equal(in.disks[0].path, "/srv/images/a.img");
	assert_true(in.disks[0].size == 1u << 30);
	assert_true(in.disks[0].id == 0xfedcba9876543210ull);
	assert_true(mig_stream_bytes_out(w) == mig_stream_bytes_in(r));
	mig_stream_free(w);
	mig_stream_free(r);
	close(sv[0]);
	close(sv[1]);
}

/* Many pages through a socketpair: the writer runs on a thread. */
#define BIG_PAGES 2048
struct big_writer {
	int fd;
	const uint8_t *ram;
	struct mig_page_stats stats;
	int rc;
};

static void *big_write(void *arg)
{
	struct big_writer *bw = arg;
	struct mig_stream *s = mig_stream_new(bw->fd);
	struct mig_config cfg;
	mig_config_init(&cfg, BIG_PAGES * MIG_PAGE_SIZE, 1, "rv64gc");
	mig_stream_set_compress(s, true);
	bw->rc = mig_write_config(s, &cfg);
	for (uint64_t pfn = BIG_PAGES; pfn-- > 0 && !bw->rc;)
		bw->rc = mig_put_page(s, pfn, bw->ram + pfn * MIG_PAGE_SIZE);
	bw->rc = bw->rc || mig_write_digest(s, mig_ram_digest(bw->ram,
				BIG_PAGES * MIG_PAGE_SIZE)) || mig_write_end(s) || mig_flush(s);
	mig_stream_page_stats(s, &bw->stats);
	mig_stream_free(s);
	return NULL;
}

static void many_pages_round_trip(void **state)
{
	(void)state;
	size_t size = BIG_PAGES * MIG_PAGE_SIZE;
	uint8_t *src = calloc(1, size), *dst = malloc(size);
	uint64_t x = 88172645463325252ull;
	assert_non_null(src);
	assert_non_null(dst);
	memset(dst, 0x55, size);
	for (size_t pfn = 0; pfn < BIG_PAGES; pfn++) {
		uint8_t *p = src + pfn * MIG_PAGE_SIZE;
		if (pfn % 3 == 1) {             /* random: raw */
			for (unsigned i = 0; i < MIG_PAGE_SIZE; i++) {
				x ^= x << 13; x ^= x >> 7; x ^= x << 17;
				p[i] = (uint8_t)x;
			}
		} else if (pfn % 3 == 2) {      /* text: zstd */
			for (unsigned i = 0; i < MIG_PAGE_SIZE; i++)
				p[i] = (uint8_t)("abcdefgh"[(i * 7 + pfn) % 8]);
		}                               /* else zero */
	}
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct big_writer bw = { .fd = sv[0], .ram = src };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, big_write, &bw), 0);

	struct mig_stream *r = mig_stream_new(sv[1]);
	struct mig_config cfg;
	struct mig_section sec;
	uint64_t pages = 0;
	bool digest = false;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	assert_true(cfg.ram_size == size);
	for (;;) {
		if (mig_read_section(r, &sec, dst, size))
			fail_msg("%s", mig_stream_error(r));
		if (sec.type == MIG_SEC_RAM)
			pages += sec.pages;
		if (sec.type == MIG_SEC_DIGEST)
			digest = sec.digest == mig_ram_digest(dst, size);
		if (sec.type == MIG_SEC_END)
			break;
	}
	pthread_join(t, NULL);
	assert_int_equal(bw.rc, 0);
	assert_int_equal(pages, BIG_PAGES);
	assert_true(digest);
	assert_memory_equal(src, dst, size);
	assert_true(bw.stats.zero == 683 && bw.stats.raw == 683 && bw.stats.zstd == 682);
	assert_true(bw.stats.zstd_bytes < 682 * MIG_ZSTD_KEEP_MAX);
	mig_stream_free(r);
	close(sv[0]);
	close(sv[1]);
	free(src);
	free(dst);
}

static void page_encodings(void **state)
{
	(void)state;
	static uint8_t ram[SAMPLE_RAM];
	struct mig_page_stats st;
	int fd = memfd_create("enc", MFD_CLOEXEC);
	sample_ram(ram);
	struct mig_stream *s = mig_stream_new(fd);
	for (unsigned pfn = 0; pfn < 4; pfn++)
		assert_int_equal(mig_put_page(s, pfn, ram + pfn * MIG_PAGE_SIZE), 0);
	mig_stream_page_stats(s, &st);
	assert_true(st.zero == 1 && st.raw == 3 && st.zstd == 0);     /* compression off */
	mig_stream_set_compress(s, true);
	for (unsigned pfn = 0; pfn < 4; pfn++)
		assert_int_equal(mig_put_page(s, pfn, ram + pfn * MIG_PAGE_SIZE), 0);
	mig_stream_page_stats(s, &st);
	/* text and counter pages compress; the random one is tried and sent raw */
	assert_true(st.zero == 2 && st.raw == 4 && st.zstd == 2);
	assert_true(st.zstd_rejected == 1);
	assert_int_equal(mig_flush(s), 0);
	mig_stream_free(s);
	close(fd);
	assert_true(mig_page_is_zero(ram + 2 * MIG_PAGE_SIZE));
	ram[2 * MIG_PAGE_SIZE + MIG_PAGE_SIZE - 1] = 1;
	assert_false(mig_page_is_zero(ram + 2 * MIG_PAGE_SIZE));
}

static void state_records_and_control(void **state)
{
	(void)state;
	struct blob b = capture(sample_write, false);
	static uint8_t ram[SAMPLE_RAM];
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *s = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_section sec;
	assert_int_equal(mig_read_config(s, &cfg), 0);
	do
		assert_int_equal(mig_read_section(s, &sec, ram, SAMPLE_RAM), 0);
	while (sec.type == MIG_SEC_RAM);
	assert_int_equal(sec.type, MIG_SEC_CPU);
	assert_int_equal(sec.hart, 0);
	assert_int_equal(sec.version, 1);
	assert_int_equal(sec.state_len, 16);
	assert_int_equal(sec.state[15], 16);
	assert_int_equal(mig_read_section(s, &sec, ram, SAMPLE_RAM), 0);
	assert_int_equal(sec.hart, 1);
	assert_int_equal(mig_read_section(s, &sec, ram, SAMPLE_RAM), 0);
	assert_int_equal(sec.type, MIG_SEC_DEVICE);
	assert_string_equal(sec.name, "uart");
	assert_string_equal((const char *)sec.state, "uart state");
	assert_int_equal(mig_read_section(s, &sec, ram, SAMPLE_RAM), 0);
	assert_string_equal(sec.name, "virtio-blk@10001000");
	assert_int_equal(sec.version, 2);
	assert_int_equal(sec.state_len, 0);
	assert_int_equal(mig_read_section(s, &sec, ram, SAMPLE_RAM), 0);
	assert_int_equal(sec.type, MIG_SEC_CLOCK);
	assert_true(sec.ticks == 123456789);
	mig_stream_free(s);
	close(fd);
	free(b.data);

	/* control messages, and ERROR's reason through mig_expect */
	b = capture(control_writer, false);
	fd = memfd_with(b.data, b.len);
	s = mig_stream_new(fd);
	char why[256];
	assert_int_equal(mig_read_config(s, &cfg), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_READY, why, sizeof(why)), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_ACK, why, sizeof(why)), 0);
	assert_int_equal(mig_read_section(s, &sec, NULL, SAMPLE_RAM), 0);
	assert_int_equal(sec.type, MIG_SEC_PAGE_REQUEST);
	assert_int_equal(sec.npfns, 3);
	assert_true(mig_section_pfn(&sec, 1) == 7);
	assert_true(mig_section_pfn(&sec, 3) == UINT64_MAX);
	assert_int_equal(mig_expect(s, MIG_SEC_POSTCOPY, why, sizeof(why)), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_HANDOFF_CONFIRM, why, sizeof(why)), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_RELEASED, why, sizeof(why)), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_STARTED, why, sizeof(why)), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_ACK, why, sizeof(why)), -1);
	assert_string_equal(why, "sample error: disk lock lost");
	assert_contains(mig_stream_error(s), "the peer gave up");
	mig_stream_free(s);
	close(fd);
	free(b.data);
}

static void wrong_section_type_is_refused(void **state)
{
	(void)state;
	struct blob b = capture(control_writer, false);
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *s = mig_stream_new(fd);
	struct mig_config cfg;
	char why[256];
	assert_int_equal(mig_read_config(s, &cfg), 0);
	assert_int_equal(mig_expect(s, MIG_SEC_ACK, why, sizeof(why)), -1);
	assert_contains(why, "expected a 'ack' section, got 'ready'");
	/* sticky */
	assert_int_equal(mig_expect(s, MIG_SEC_ACK, why, sizeof(why)), -1);
	mig_stream_free(s);
	close(fd);
	free(b.data);
}

static int sink_calls;
static uint64_t sink_last;
static void sink(void *opaque, uint64_t pfn, const void *page)
{
	(void)opaque;
	assert_non_null(page);
	sink_calls++;
	sink_last = pfn;
}

static void pages_can_go_to_a_sink(void **state)
{
	(void)state;
	struct blob b = capture(sample_write, true);
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *s = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_section sec;
	mig_stream_set_sink(s, sink, NULL);
	assert_int_equal(mig_read_config(s, &cfg), 0);
	assert_int_equal(mig_read_section(s, &sec, NULL, SAMPLE_RAM), 0);
	assert_int_equal(sec.type, MIG_SEC_RAM);
	assert_int_equal(sink_calls, SAMPLE_PAGES);
	assert_int_equal(sink_last, SAMPLE_PAGES - 1);
	mig_stream_free(s);
	close(fd);
	free(b.data);
}

static void send_error_after_read_failure(void **state)
{
	(void)state;
	int sv[2];
	char why[256];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct mig_stream *a = mig_stream_new(sv[0]), *b = mig_stream_new(sv[1]);
	assert_int_equal(write(sv[1], "garbage!garbage!", 16), 16);
	struct mig_config cfg;
	assert_int_equal(mig_read_config(a, &cfg), -1);
	assert_contains(mig_stream_error(a), "not a ferry migration stream");
	mig_send_error(a, "bad header");
	assert_int_equal(mig_expect(b, MIG_SEC_ACK, why, sizeof(why)), -1);
	assert_string_equal(why, "bad header");
	mig_stream_free(a);
	mig_stream_free(b);
	close(sv[0]);
	close(sv[1]);
}

/* ---- the transport -------------------------------------------------------------- */

/* Post-copy polls the fd between sections: the reader must not take
 * bytes of the next section with this one. */
static void no_read_ahead(void **state)
{
	(void)state;
	int sv[2];
	char why[256];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct mig_stream *w = mig_stream_new(sv[0]), *r = mig_stream_new(sv[1]);
	const uint64_t pfn = 3;
	assert_int_equal(mig_write_page_request(w, &pfn, 1), 0);
	assert_int_equal(mig_write_section(w, MIG_SEC_ACK, NULL, 0), 0);
	assert_int_equal(mig_flush(w), 0);
	assert_int_equal(mig_expect(r, MIG_SEC_PAGE_REQUEST, why, sizeof(why)), 0);
	struct pollfd p = { .fd = sv[1], .events = POLLIN };
	assert_int_equal(poll(&p, 1, 0), 1);
	assert_int_equal(mig_expect(r, MIG_SEC_ACK, why, sizeof(why)), 0);
	assert_int_equal(poll(&p, 1, 0), 0);
	assert_true(mig_stream_bytes_in(r) == mig_stream_bytes_out(w));
	mig_stream_free(w);
	mig_stream_free(r);
	close(sv[0]);
	close(sv[1]);
}

static void dead_peer_times_out(void **state)
{
	(void)state;
	int sv[2];
	struct mig_config cfg;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct mig_stream *s = mig_stream_new(sv[0]);
	mig_stream_set_timeout(s, 50);
	assert_int_equal(mig_read_config(s, &cfg), -1);     /* nobody writes */
	assert_contains(mig_stream_error(s), "is it still alive?");
	mig_stream_free(s);
	close(sv[0]);
	close(sv[1]);
}

static void closed_peer_is_an_error_not_a_signal(void **state)
{
	(void)state;
	static uint8_t page[MIG_PAGE_SIZE];
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	struct mig_stream *s = mig_stream_new(sv[0]);
	int r = 0;
	memset(page, 1, sizeof(page));
	for (int i = 0; i < 1024 && !r; i++)
		r = mig_put_page(s, (uint64_t)i, page);
	r = r || mig_flush(s);
	assert_int_equal(r, 1);
	assert_contains(mig_stream_error(s), "closed the connection");
	mig_stream_free(s);
	close(sv[0]);
}

/* A peer that refused and closed while we were sending: after the write
 * fails, what it said before closing (its ERROR) can still be read. */
static void reads_resume_after_the_peer_closed(void **state)
{
	(void)state;
	static uint8_t page[MIG_PAGE_SIZE];
	int sv[2];
	char why[256];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct mig_stream *a = mig_stream_new(sv[0]), *b = mig_stream_new(sv[1]);
	mig_send_error(b, "not enough memory here");
	mig_stream_free(b);
	close(sv[1]);
	memset(page, 1, sizeof(page));
	int r = 0;
	for (int i = 0; i < 1024 && !r; i++)
		r = mig_put_page(a, (uint64_t)i, page);
	assert_int_equal(r || mig_flush(a), 1);
	assert_true(mig_stream_connection_lost(a));
	assert_int_equal(mig_stream_resume_reads(a), 0);
	assert_int_equal(mig_expect(a, MIG_SEC_ACK, why, sizeof(why)), -1);
	assert_string_equal(why, "not enough memory here");
	assert_true(mig_stream_peer_gave_up(a));
	assert_false(mig_stream_connection_lost(a));
	/* only a write's failure: a stream that failed reading stays failed */
	assert_int_equal(mig_stream_resume_reads(a), -1);
	assert_int_equal(mig_put_page(a, 0, page), -1);
	mig_stream_free(a);
	close(sv[0]);
}

/* Quick start: the first pages are written as soon as 64 KiB of them are
 * ready, not when the 1 MiB buffer fills; zero pages (a few bytes each)
 * are not written a small section at a time (each would be a packet of
 * TCP's ten-segment first flight). */
static void quick_start_writes_the_first_pages_early(void **state)
{
	(void)state;
	static uint8_t page[MIG_PAGE_SIZE], zero[MIG_PAGE_SIZE];
	for (int quick = 0; quick < 2; quick++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
		struct mig_stream *w = mig_stream_new(sv[0]);
		if (quick)
			mig_stream_set_quick_start(w, 1 << 20);
		struct pollfd p = { .fd = sv[1], .events = POLLIN };
		for (int i = 0; i < 4 * MIG_QUICK_PAGES; i++)
			assert_int_equal(mig_put_page(w, (uint64_t)i, zero), 0);
		assert_int_equal(poll(&p, 1, 0), 0);
		memset(page, 0x5a, sizeof(page));
		for (int i = 0; i < MIG_QUICK_PAGES; i++)
			assert_int_equal(mig_put_page(w, (uint64_t)i, page), 0);
		assert_int_equal(poll(&p, 1, 0), quick);
		mig_stream_free(w);
		close(sv[0]);
		close(sv[1]);
	}
}

static void token_bucket(void **state)
{
	(void)state;
	struct mig_rate r;
	const uint64_t ms = 1000000;
	mig_rate_init(&r, 1000000);             /* 1 MB/s, 64 KiB burst */
	assert_true(mig_rate_take(&r, 65536, 0) == 0);
	/* 100 000 bytes more owed: 0.1 s */
	assert_true(mig_rate_take(&r, 100000, 0) == 100 * ms);
	/* 100 ms later the debt is paid */
	assert_true(mig_rate_take(&r, 0, 100 * ms) == 0);
	/* a long pause refills only the burst */
	assert_true(mig_rate_take(&r, 65536, 100000 * ms) == 0);
	assert_true(mig_rate_take(&r, 1000, 100000 * ms) == 1 * ms);
	mig_rate_init(&r, 0);                   /* no cap */
	assert_true(mig_rate_take(&r, 1u << 30, 0) == 0);
	mig_rate_init(&r, 100ull << 30);        /* 100 GiB/s: no overflow */
	assert_true(mig_rate_take(&r, 16ull << 30, 1) > 0);
	assert_true(mig_rate_take(&r, 0, 1000000000ull * 3600) == 0);
}

static void digest(void **state)
{
	(void)state;
	size_t len = 5 * MIG_PAGE_SIZE + 100;
	uint8_t *a = calloc(1, len);
	assert_non_null(a);
	uint64_t d0 = mig_ram_digest(a, len);
	assert_true(d0 == mig_ram_digest(a, len));
	a[len - 1] = 1;                         /* in the partial last page */
	uint64_t d1 = mig_ram_digest(a, len);
	assert_true(d1 != d0);
	a[len - 1] = 0;
	a[2 * MIG_PAGE_SIZE] = 1;
	assert_true(mig_ram_digest(a, len) != d0);
	a[2 * MIG_PAGE_SIZE] = 0;
	assert_true(mig_ram_digest(a, len - 1) != d0);  /* length counts */
	free(a);
}

/* ---- configuration checks ------------------------------------------------------- */

static void expect_refusal(const struct mig_config *g, const struct mig_config *h,
			   const char *reason)
{
	char why[256] = "";
	assert_int_equal(mig_config_check(g, h, why, sizeof(why)), -1);
	assert_contains(why, reason);
}

static void config_check(void **state)
{
	(void)state;
	struct mig_config g, h;
	char why[256];
	sample_config(&g);
	sample_config(&h);
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), 0);

	/* what a destination may have more of */
	h.ram_size *= 2;
	snprintf(h.isa, sizeof(h.isa), "rv64gc_zicntr_zihpm");
	h.devices[0].version = 7;
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), 0);

	sample_config(&h);
	h.version = 2;
	expect_refusal(&g, &h, "stream format version 1, the destination reads 2");
	sample_config(&h);
	snprintf(h.isa, sizeof(h.isa), "rv64imafdc_zicsr_zifencei");
	expect_refusal(&g, &h, "ISA extension 'zicntr'");
	snprintf(h.isa, sizeof(h.isa), "rv64imafd_zicsr_zifencei_zicntr");
	expect_refusal(&g, &h, "ISA extension 'c'");
	snprintf(h.isa, sizeof(h.isa), "rv32imafdc_zicsr_zifencei_zicntr");
	expect_refusal(&g, &h, "the guest is RV64, the destination RV32");
	snprintf(h.isa, sizeof(h.isa), "x86_64");
	expect_refusal(&g, &h, "cannot read the ISA string 'x86_64'");
	sample_config(&h);
	h.ram_size = g.ram_size - MIG_PAGE_SIZE;
	expect_refusal(&g, &h, "destination only");
	sample_config(&h);
	h.harts = 4;
	expect_refusal(&g, &h, "the guest has 2 harts, the destination 4");
	sample_config(&h);
	h.ndevices = 1;
	expect_refusal(&g, &h, "device 'virtio-blk@10001000', the destination does not");
	sample_config(&h);
	h.devices[1].version = 1;
	expect_refusal(&g, &h, "device 'virtio-blk@10001000' state is version 2, the "
		       "destination reads up to 1");
	sample_config(&h);
	h.ndisks = 0;
	expect_refusal(&g, &h, "disk /srv/images/a.img is not attached");
	sample_config(&h);
	h.disks[0].id++;
	expect_refusal(&g, &h, "is another image");
}

static void isa_spellings(void **state)
{
	(void)state;
	struct mig_config g, h;
	char why[256];
	mig_config_init(&g, 1 << 20, 1, "rv64imafdc_zicsr_zifencei");
	mig_config_init(&h, 1 << 20, 1, "RV64GC");
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), 0);
	mig_config_init(&g, 1 << 20, 1, "rv64i2p1m2p0a2p1f2p2d2p2c2p0_zicsr2p0_zifencei2p0");
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), 0);
	mig_config_init(&g, 1 << 20, 1, "rv64gcv");
	expect_refusal(&g, &h, "ISA extension 'v'");
}

static void config_device_list(void **state)
{
	(void)state;
	struct mig_config c;
	char name[16];
	mig_config_init(&c, 1 << 20, 1, "rv64gc");
	assert_int_equal(mig_config_add_device(&c, "has space", 1), -1);
	assert_int_equal(mig_config_add_device(&c, "", 1), -1);
	assert_int_equal(mig_config_add_device(&c, "uart", 1), 0);
	assert_int_equal(mig_config_add_device(&c, "uart", 2), 0);    /* update */
	assert_int_equal(c.ndevices, 1);
	assert_int_equal(c.devices[0].version, 2);
	for (int i = 1; i < MIG_MAX_DEVICES; i++) {
		snprintf(name, sizeof(name), "dev%d", i);
		assert_int_equal(mig_config_add_device(&c, name, 1), 0);
	}
	assert_int_equal(mig_config_add_device(&c, "one-too-many", 1), -1);
}

/* ---- hostile streams ------------------------------------------------------------ */

static void truncated_at_every_offset(void **state)
{
	(void)state;
	static uint8_t ram[SAMPLE_RAM];
	char err[512];
	for (int compress = 0; compress < 2; compress++) {
		struct blob b = capture(sample_write, compress);
		for (size_t len = 0; len < b.len; len++) {
			if (read_bytes(b.data, len, ram, err, sizeof(err)) == 0)
				fail_msg("a stream cut at %zu of %zu bytes was accepted", len,
					 b.len);
			if (!strstr(err, "truncated at offset"))
				fail_msg("cut at %zu: unexpected error '%s'", len, err);
		}
		free(b.data);
	}
}

static void flipped_byte_at_every_offset(void **state)
{
	(void)state;
	static uint8_t ram[SAMPLE_RAM];
	char err[512];
	const uint8_t masks[] = { 0x01, 0x80, 0xff };
	for (int compress = 0; compress < 2; compress++) {
		struct blob b = capture(sample_write, compress);
		for (size_t off = 0; off < b.len; off++)
			for (size_t m = 0; m < sizeof(masks); m++) {
				b.data[off] ^= masks[m];
				if (read_bytes(b.data, b.len, ram, err, sizeof(err)) == 0)
					fail_msg("byte %zu ^ %#x was not noticed", off, masks[m]);
				assert_true(err[0] != 0);
				b.data[off] ^= masks[m];
			}
		free(b.data);
	}
}

static void flipped_control_stream(void **state)
{
	(void)state;
	struct blob b = capture(control_writer, false);
	for (size_t off = 0; off < b.len; off++) {
		b.data[off] ^= 0x10;
		int fd = memfd_with(b.data, b.len);
		struct mig_stream *s = mig_stream_new(fd);
		struct mig_config cfg;
		struct mig_section sec;
		int r = mig_read_config(s, &cfg);
		int n = 0;
		while (r == 0 && n++ < 8)
			r = mig_read_section(s, &sec, NULL, SAMPLE_RAM);
		if (r == 0 || n > 8)
			fail_msg("control stream byte %zu flipped, not noticed", off);
		mig_stream_free(s);
		close(fd);
		b.data[off] ^= 0x10;
	}
	free(b.data);
}

/* A RAM section holding one page entry, with a valid checksum. */
static const char *ram_section_error(uint64_t pfn, uint8_t enc, const void *data,
				     size_t len, bool with_len, char *buf, size_t buflen)
{
	uint8_t p[8192 + 32];
	size_t n = 0;
	uint32_t one = 1;
	memcpy(p, &one, 4);
	n = 4;
	memcpy(p + n, &pfn, 8);
	p[n + 8] = enc;
	n += 9;
	if (with_len) {
		uint32_t l = (uint32_t)len;
		memcpy(p + n, &l, 4);
		n += 4;
	}
	if (len)
		memcpy(p + n, data, len);
	n += len;
	int fd = memfd_create("crafted", MFD_CLOEXEC);
	struct mig_stream *w = crafted_stream(fd);
	assert_int_equal(mig_write_section(w, MIG_SEC_RAM, p, n), 0);
	assert_int_equal(mig_write_end(w), 0);
	first_error(fd, w, buf, buflen);
	close(fd);
	return buf;
}

static void zstd_page_of_the_wrong_size(void **state)
{
	(void)state;
	static uint8_t src[2 * MIG_PAGE_SIZE];
	uint8_t z[1024];
	char err[512];
	memset(src, 'x', sizeof(src));
	size_t c = ZSTD_compress(z, sizeof(z), src, MIG_PAGE_SIZE / 2, 1);
	assert_false(ZSTD_isError(c));
	ram_section_error(1, MIG_PAGE_ZSTD, z, c, true, err, sizeof(err));
	assert_contains(err, "compressed page 1 decompresses to 2048 bytes, not 4096");
	c = ZSTD_compress(z, sizeof(z), src, 2 * MIG_PAGE_SIZE, 1);
	ram_section_error(1, MIG_PAGE_ZSTD, z, c, true, err, sizeof(err));
	assert_contains(err, "decompresses to more than 4096 bytes");
	ram_section_error(1, MIG_PAGE_ZSTD, "not zstd at all", 15, true, err, sizeof(err));
	assert_contains(err, "compressed page 1 is corrupt");
	c = ZSTD_compress(z, sizeof(z), src, MIG_PAGE_SIZE, 1);
	ram_section_error(2, MIG_PAGE_ZSTD, z, c, true, err, sizeof(err));
	assert_string_equal(err, "");           /* the right size is fine */
}

static void page_beyond_ram(void **state)
{
	(void)state;
	static uint8_t page[MIG_PAGE_SIZE];
	char err[512];
	ram_section_error(SAMPLE_PAGES, MIG_PAGE_RAW, page, sizeof(page), false, err,
			  sizeof(err));
	assert_contains(err, "page 16 (offset 0x10000) is beyond the end of guest RAM");
	ram_section_error(UINT64_MAX >> 12, MIG_PAGE_ZERO, NULL, 0, false, err, sizeof(err));
	assert_contains(err, "is beyond the end of guest RAM");
	ram_section_error(UINT64_MAX, MIG_PAGE_ZERO, NULL, 0, false, err, sizeof(err));
	assert_contains(err, "is beyond the end of guest RAM");
	ram_section_error(SAMPLE_PAGES - 1, MIG_PAGE_ZERO, NULL, 0, false, err, sizeof(err));
	assert_string_equal(err, "");
	ram_section_error(3, 7, NULL, 0, false, err, sizeof(err));
	assert_contains(err, "page 3 has unknown encoding 7");
	ram_section_error(3, MIG_PAGE_RAW, page, 100, false, err, sizeof(err));
	assert_contains(err, "raw page 3 is cut short");
}

/* Frame a section by hand (any type number) with a valid checksum. */
static void raw_section(int fd, uint32_t type, uint32_t flags, const void *p, uint64_t len)
{
	uint8_t hdr[16];
	memcpy(hdr, &type, 4);
	memcpy(hdr + 4, &flags, 4);
	memcpy(hdr + 8, &len, 8);
	XXH64_state_t h;
	XXH64_reset(&h, 0);
	XXH64_update(&h, hdr, 16);
	XXH64_update(&h, p, (size_t)len);
	uint64_t sum = XXH64_digest(&h);
	assert_int_equal(write(fd, hdr, 16), 16);
	assert_int_equal(write(fd, p, (size_t)len), (ssize_t)len);
	assert_int_equal(write(fd, &sum, 8), 8);
}

static const char *raw_section_error(uint32_t type, uint32_t flags, const void *p,
				     uint64_t len, char *buf, size_t buflen)
{
	int fd = memfd_create("crafted", MFD_CLOEXEC);
	struct mig_stream *w = crafted_stream(fd);
	assert_int_equal(mig_flush(w), 0);
	raw_section(fd, type, flags, p, len);
	raw_section(fd, MIG_SEC_END, 0, "", 0);
	first_error(fd, w, buf, buflen);
	close(fd);
	return buf;
}

static void unknown_and_malformed_sections(void **state)
{
	(void)state;
	char err[512];
	raw_section_error(0x999, 0, "x", 1, err, sizeof(err));
	assert_contains(err, "unknown section type 2457 (0x999) at offset");
	raw_section_error(MIG_SEC_ACK, 4, "", 0, err, sizeof(err));
	assert_contains(err, "section 'ack' at offset");
	assert_contains(err, "unknown flags 0x4");
	raw_section_error(MIG_SEC_DIGEST, 0, "1234", 4, err, sizeof(err));
	assert_contains(err, "claims 4 bytes; it must have 8 to 8");
	raw_section_error(MIG_SEC_CONFIG, 0, "{}", 2, err, sizeof(err));
	assert_contains(err, "a second 'config' section");
	raw_section_error(MIG_SEC_DEVICE, 0, "\x40\x00xxxxxxx", 9, err, sizeof(err));
	assert_contains(err, "device section at offset");
	raw_section_error(MIG_SEC_DEVICE, 0, "\x02\x00a b\x01\x00\x00\x00", 9, err,
			  sizeof(err));
	assert_contains(err, "bad name");
	raw_section_error(MIG_SEC_PAGE_REQUEST, 0, "123456789", 9, err, sizeof(err));
	assert_contains(err, "not a multiple of 8");
	uint64_t far = SAMPLE_PAGES;
	raw_section_error(MIG_SEC_PAGE_REQUEST, 0, &far, 8, err, sizeof(err));
	assert_contains(err, "request for page 16, beyond the end of guest RAM");
	uint8_t empty[4] = { 0 };
	raw_section_error(MIG_SEC_RAM, 0, empty, 4, err, sizeof(err));
	assert_contains(err, "claims 0 pages");
	/* a huge claimed length is refused before anything is allocated */
	int fd = memfd_create("crafted", MFD_CLOEXEC);
	struct mig_stream *w = crafted_stream(fd);
	assert_int_equal(mig_flush(w), 0);
	uint8_t hdr[16] = { MIG_SEC_POSTCOPY & 0xff, MIG_SEC_POSTCOPY >> 8 };
	memset(hdr + 8, 0xff, 8);
	assert_int_equal(write(fd, hdr, 16), 16);
	first_error(fd, w, err, sizeof(err));
	assert_contains(err, "section 'postcopy' at offset");
	assert_contains(err, "claims 18446744073709551615 bytes");
	close(fd);
	/* an ERROR section's text is made printable */
	fd = memfd_create("crafted", MFD_CLOEXEC);
	w = crafted_stream(fd);
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
	raw_section(fd, MIG_SEC_ERROR, 0, "bad\n\x1b[2Jthing", 13);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	struct mig_stream *r = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_section sec;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	assert_int_equal(mig_read_section(r, &sec, NULL, 0), 0);
	assert_string_equal(sec.text, "bad??[2Jthing");
	mig_stream_free(r);
	close(fd);
}

static const char *config_error(const char *header, const char *json, char *buf,
				size_t len)
{
	int fd = memfd_create("crafted", MFD_CLOEXEC);
	struct mig_stream *s;
	struct mig_config cfg;
	assert_int_equal(write(fd, header, 16), 16);
	if (json) {
		s = mig_stream_new(fd);
		assert_int_equal(mig_write_section(s, MIG_SEC_CONFIG, json, strlen(json)), 0);
		assert_int_equal(mig_flush(s), 0);
		mig_stream_free(s);
	}
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = mig_stream_new(fd);
	buf[0] = 0;
	if (mig_read_config(s, &cfg))
		snprintf(buf, len, "%s", mig_stream_error(s));
	mig_stream_free(s);
	close(fd);
	return buf;
}

static void hostile_configurations(void **state)
{
	(void)state;
	const char *hdr = "FERRYMIG\x01\x00\x00\x00\x00\x00\x00\x00";
	const char *good = "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":65536,\"harts\":1}";
	char err[512];
	assert_string_equal(config_error(hdr, good, err, sizeof(err)), "");
	assert_contains(config_error("FERRYMIG\x02\x00\x00\x00\x00\x00\x00\x00", good, err,
				     sizeof(err)), "format version 2, this ferry reads version 1");
	assert_contains(config_error("FERRYMAG\x01\x00\x00\x00\x00\x00\x00\x00", good, err,
				     sizeof(err)), "not a ferry migration stream");
	assert_contains(config_error("FERRYMIG\x01\x00\x00\x00\x01\x00\x00\x00", good, err,
				     sizeof(err)), "header has unknown flags");
	assert_contains(config_error(hdr, "[1,2]", err, sizeof(err)), "not a JSON object");
	assert_contains(config_error(hdr, "{\"version\":1,", err, sizeof(err)),
			"not a JSON object");
	assert_contains(config_error(hdr, "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":1,"
				     "\"harts\":0}", err, sizeof(err)), "'harts' must be");
	assert_contains(config_error(hdr, "{\"version\":-1,\"isa\":\"rv64gc\",\"ram_size\":1,"
				     "\"harts\":1}", err, sizeof(err)), "'version' must be");
	assert_contains(config_error(hdr, "{\"version\":1,\"isa\":\"rv64\\u0001\","
				     "\"ram_size\":1,\"harts\":1}", err, sizeof(err)),
			"'isa' must be");
	assert_contains(config_error(hdr, "{\"version\":1,\"version\":1,\"isa\":\"rv64gc\","
				     "\"ram_size\":1,\"harts\":1}", err, sizeof(err)),
			"not a JSON object");
	assert_contains(config_error(hdr, "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":1,"
				     "\"harts\":1,\"devices\":[{\"name\":\"a b\",\"version\":1}]}",
				     err, sizeof(err)), "'name' must be");
	assert_contains(config_error(hdr, "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":1,"
				     "\"harts\":1,\"devices\":7}", err, sizeof(err)),
			"'devices' must be a list");
	assert_contains(config_error(hdr, "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":1,"
				     "\"harts\":1,\"disks\":[{\"path\":\"/a\",\"size\":1,"
				     "\"id\":\"xyz\"}]}", err, sizeof(err)), "bad id 'xyz'");
	/* 33 devices: one too many */
	char big[4096];
	int n = snprintf(big, sizeof(big), "{\"version\":1,\"isa\":\"rv64gc\",\"ram_size\":1,"
			 "\"harts\":1,\"devices\":[");
	for (int i = 0; i <= MIG_MAX_DEVICES; i++)
		n += snprintf(big + n, sizeof(big) - (size_t)n, "%s{\"name\":\"d%d\","
			      "\"version\":1}", i ? "," : "", i);
	snprintf(big + n, sizeof(big) - (size_t)n, "]}");
	assert_contains(config_error(hdr, big, err, sizeof(err)), "at most 32");
	/* an ERROR where the configuration should be */
	int fd = memfd_create("crafted", MFD_CLOEXEC);
	struct mig_config cfg;
	assert_int_equal(write(fd, hdr, 16), 16);
	struct mig_stream *s = mig_stream_new(fd);
	mig_send_error(s, "not enough memory here");
	mig_stream_free(s);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = mig_stream_new(fd);
	assert_int_equal(mig_read_config(s, &cfg), -1);
	assert_contains(mig_stream_error(s), "the peer refused: not enough memory here");
	mig_stream_free(s);
	close(fd);
}

/* ---- seed corpus for the fuzz target -------------------------------------------- */

static void write_seed(const char *dir, const char *name, struct blob b)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f)
		fail_msg("cannot write seed %s: %s", path, strerror(errno));
	assert_int_equal(fwrite(b.data, 1, b.len, f), b.len);
	fclose(f);
	free(b.data);
}

/* A shared-nothing stream (disks: copy): extents of the sample's 1 GiB
 * disk among the pages, its digest, then the state. */
static uint8_t disk_block[2 * MIG_DISK_BLOCK];  /* two alike: what the seed's disk holds */

static int disks_copy_writer(int fd, bool compress)
{
	static uint8_t ram[SAMPLE_RAM];
	uint8_t *block = disk_block;
	const uint8_t hart[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct mig_config cfg;
	struct mig_stream *s = mig_stream_new(fd);
	uint64_t hashes[4];
	mig_stream_set_compress(s, compress);
	sample_config(&cfg);
	cfg.copy_disks = true;
	cfg.disks[0].size = 4 * MIG_DISK_BLOCK - 512;   /* a short last block */
	sample_ram(ram);
	memcpy(block, ram, SAMPLE_RAM < MIG_DISK_BLOCK ? SAMPLE_RAM : MIG_DISK_BLOCK);
	memcpy(block + MIG_DISK_BLOCK, block, MIG_DISK_BLOCK);
	for (unsigned b = 0; b < 4; b++)
		hashes[b] = mig_block_hash(block, b == 3 ? MIG_DISK_BLOCK - 512 : MIG_DISK_BLOCK);
	int r = mig_write_config(s, &cfg) ||
		mig_write_disk(s, 0, 0, block, MIG_DISK_BLOCK) ||
		mig_put_page(s, 1, ram + MIG_PAGE_SIZE) || mig_flush_pages(s) ||
		mig_write_disk(s, 0, MIG_DISK_BLOCK, NULL, MIG_DISK_BLOCK) ||
		mig_write_disk(s, 0, MIG_DISK_BLOCK, block, MIG_DISK_BLOCK) ||
		mig_write_disk(s, 0, 2 * MIG_DISK_BLOCK, block, 2 * MIG_DISK_BLOCK - 512) ||
		mig_write_disk_digest(s, 0, mig_digest_of_hashes(hashes, 4, cfg.disks[0].size)) ||
		mig_write_cpu(s, 0, 1, hart, sizeof(hart)) ||
		mig_write_cpu(s, 1, 1, hart, sizeof(hart)) ||
		mig_write_device(s, "uart", 1, "u", 1) ||
		mig_write_device(s, "virtio-blk@10001000", 2, NULL, 0) ||
		mig_write_clock(s, 42) || mig_write_digest(s, 7) || mig_write_end(s) ||
		mig_flush(s);
	mig_stream_free(s);
	return r ? -1 : 0;
}

/* The seed above reads back through the grammar, whole, its extents as
 * written (compressed: decoded to the same bytes, and smaller). */
static void disks_copy_reads_back(bool compress)
{
	static uint8_t ram[SAMPLE_RAM];
	struct blob b = capture(disks_copy_writer, compress);
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *r = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_grammar g;
	struct mig_section sec;
	char err[256] = "";
	unsigned extents = 0, compressed = 0;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	assert_true(cfg.copy_disks);
	mig_grammar_init(&g, &cfg, true);
	for (;;) {
		assert_int_equal(mig_read_section(r, &sec, ram, SAMPLE_RAM), 0);
		assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), 0);
		if (sec.type == MIG_SEC_DISK) {
			extents++;
			if (!sec.disk_zero)
				assert_memory_equal(sec.disk_data, disk_block, sec.disk_len);
			if (!sec.disk_zero && sec.len < MIG_DISK_HDR + sec.disk_len)
				compressed++;
		}
		if (sec.type == MIG_SEC_END)
			break;
	}
	assert_int_equal(extents, 4);
	assert_int_equal(compressed, compress ? 3 : 0);
	mig_stream_free(r);
	close(fd);
	free(b.data);
}

static void disks_copy_stream_reads_back(void **state)
{
	(void)state;
	disks_copy_reads_back(false);
	disks_copy_reads_back(true);
}

/* A ZSTD extent that decodes to other than its length is refused. */
static void disk_zstd_extent_checked(void **state)
{
	(void)state;
	static uint8_t data[MIG_DISK_BLOCK], payload[MIG_DISK_HDR + MIG_DISK_BLOCK];
	size_t c = ZSTD_compress(payload + MIG_DISK_HDR, MIG_DISK_BLOCK, data,
				 MIG_DISK_BLOCK / 2, 1);       /* half a block */
	assert_false(ZSTD_isError(c));
	uint32_t hdr[2] = { 0, MIG_DISK_ZSTD };
	uint64_t ext[2] = { 0, MIG_DISK_BLOCK };        /* claims a whole block */
	memcpy(payload, hdr, 8);
	memcpy(payload + 8, ext, 16);
	int fd = memfd_create("zstd-extent", MFD_CLOEXEC);
	struct mig_stream *w = mig_stream_new(fd);
	struct mig_config cfg;
	sample_config(&cfg);
	cfg.copy_disks = true;
	assert_int_equal(mig_write_config(w, &cfg), 0);
	assert_int_equal(mig_write_section(w, MIG_SEC_DISK, payload, MIG_DISK_HDR + c), 0);
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
	lseek(fd, 0, SEEK_SET);
	struct mig_stream *r = mig_stream_new(fd);
	struct mig_section sec;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	assert_int_equal(mig_read_section(r, &sec, NULL, 0), -1);
	assert_non_null(strstr(mig_stream_error(r), "does not decompress to its"));
	mig_stream_free(r);
	close(fd);
}

/* ---- page channels (channels: N) --------------------------------------------------- */

static const uint8_t join_nonce[MIG_JOIN_NONCE] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };

/* A multi-channel migration's main stream: rounds closed by SYNC, no pages. */
static int channels_main_writer(int fd, bool arg)
{
	(void)arg;
	const uint8_t hart[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	struct mig_config cfg;
	struct mig_stream *s = mig_stream_new(fd);
	sample_config(&cfg);
	cfg.channels = 2;
	cfg.has_join = true;
	memcpy(cfg.join, join_nonce, sizeof(cfg.join));
	int r = mig_write_config(s, &cfg) || mig_write_sync(s, 1) || mig_write_sync(s, 2) ||
		mig_write_cpu(s, 0, 1, hart, sizeof(hart)) ||
		mig_write_cpu(s, 1, 1, hart, sizeof(hart)) ||
		mig_write_device(s, "uart", 1, "u", 1) ||
		mig_write_device(s, "virtio-blk@10001000", 2, NULL, 0) ||
		mig_write_clock(s, 42) || mig_write_digest(s, 7) || mig_write_end(s) ||
		mig_flush(s);
	mig_stream_free(s);
	return r ? -1 : 0;
}

/* Page channel 1 of 2: JOIN, two rounds of pages, END. */
static int page_channel_writer(int fd, bool compress)
{
	static uint8_t ram[SAMPLE_RAM];
	struct mig_stream *s = mig_stream_new(fd);
	sample_ram(ram);
	mig_stream_set_compress(s, compress);
	int r = mig_write_join(s, join_nonce, 1, 2) ||
		mig_put_page(s, 0, ram) || mig_put_page(s, 1, ram + MIG_PAGE_SIZE) ||
		mig_put_page(s, 2, ram + 2 * MIG_PAGE_SIZE) || mig_write_sync(s, 1) ||
		mig_put_page(s, 3, ram + 3 * MIG_PAGE_SIZE) || mig_write_sync(s, 2) ||
		mig_write_end(s) || mig_flush(s);
	mig_stream_free(s);
	return r ? -1 : 0;
}

/* Both read back: the configuration keeps its channels and nonce, the
 * main stream passes the grammar, the page channel its own. */
static void channel_streams_read_back(void **state)
{
	(void)state;
	static uint8_t ram[SAMPLE_RAM], want[SAMPLE_RAM];
	struct blob b = capture(channels_main_writer, false);
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *r = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_grammar g;
	struct mig_section sec;
	char err[256] = "";
	assert_int_equal(mig_read_config(r, &cfg), 0);
	assert_int_equal(cfg.channels, 2);
	assert_true(cfg.has_join);
	assert_memory_equal(cfg.join, join_nonce, MIG_JOIN_NONCE);
	mig_grammar_init(&g, &cfg, true);
	do {
		assert_int_equal(mig_read_section(r, &sec, ram, SAMPLE_RAM), 0);
		assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), 0);
	} while (sec.type != MIG_SEC_END);
	assert_int_equal(g.last_sync, 2);
	mig_stream_free(r);
	close(fd);
	free(b.data);

	b = capture(page_channel_writer, true);
	fd = memfd_with(b.data, b.len);
	r = mig_stream_new(fd);
	uint8_t nonce[MIG_JOIN_NONCE];
	uint32_t index, count;
	struct mig_pages_grammar pg = { 0 };
	assert_int_equal(mig_read_join(r, nonce, &index, &count), 0);
	assert_memory_equal(nonce, join_nonce, MIG_JOIN_NONCE);
	assert_int_equal(index, 1);
	assert_int_equal(count, 2);
	do {
		assert_int_equal(mig_read_section(r, &sec, ram, SAMPLE_RAM), 0);
		assert_int_equal(mig_pages_grammar_step(&pg, &sec, err, sizeof(err)), 0);
	} while (sec.type != MIG_SEC_END);
	sample_ram(want);
	assert_memory_equal(ram, want, 4 * MIG_PAGE_SIZE);
	/* nothing after the end */
	assert_int_equal(mig_pages_grammar_step(&pg, &sec, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "after its end"));
	mig_stream_free(r);
	close(fd);
	free(b.data);
}

/* Rounds skipped, repeated or on a stream without channels; a page
 * channel read as a main stream; a state section on a page channel. */
static void channel_sections_refused(void **state)
{
	(void)state;
	struct mig_config cfg;
	struct mig_grammar g;
	struct mig_pages_grammar pg = { 0 };
	struct mig_section sec = { .type = MIG_SEC_SYNC, .round = 1 };
	char err[256];
	sample_config(&cfg);
	mig_grammar_init(&g, &cfg, true);
	assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "without page channels"));
	cfg.channels = 2;
	mig_grammar_init(&g, &cfg, true);
	assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), 0);
	assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), -1);   /* again */
	sec.round = 3;
	assert_int_equal(mig_grammar_step(&g, &sec, err, sizeof(err)), -1);   /* skipped */
	sec.round = 1;
	assert_int_equal(mig_pages_grammar_step(&pg, &sec, err, sizeof(err)), 0);
	sec.round = 3;
	assert_int_equal(mig_pages_grammar_step(&pg, &sec, err, sizeof(err)), -1);
	sec.type = MIG_SEC_CPU;
	assert_int_equal(mig_pages_grammar_step(&pg, &sec, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "only pages"));

	struct blob b = capture(page_channel_writer, false);
	int fd = memfd_with(b.data, b.len);
	struct mig_stream *r = mig_stream_new(fd);
	assert_int_equal(mig_read_config(r, &cfg), -1);
	assert_non_null(strstr(mig_stream_error(r), "expected the 'config' section"));
	mig_stream_free(r);
	close(fd);
	free(b.data);
}

/* FERRY_STREAM_SEEDS=DIR: write the fuzzer's seed corpus instead of
 * testing (fuzz/run-short.sh). */
static void write_seeds(const char *dir)
{
	write_seed(dir, "disks-copy", capture(disks_copy_writer, false));
	write_seed(dir, "disks-copy-zstd", capture(disks_copy_writer, true));
	write_seed(dir, "sample-raw", capture(sample_write, false));
	write_seed(dir, "sample-zstd", capture(sample_write, true));
	write_seed(dir, "control", capture(control_writer, false));
	write_seed(dir, "channels-main", capture(channels_main_writer, false));
	write_seed(dir, "page-channel", capture(page_channel_writer, true));
}

/* ---- the section grammar ------------------------------------------------------------ */

/* Write the sections named in `script` (space-separated: ram, cpu0, cpu1,
 * uart, blk, clock, digest, postcopy, end, ack) after the sample config,
 * then read them back through the grammar as a file (live false) or a
 * connection would. Returns the grammar's (or the reader's) error, or ""
 * when the stream was accepted up to END. */
static const char *grammar_run(const char *script, bool live, char *err, size_t errlen)
{
	static uint8_t ram[SAMPLE_RAM];
	const uint8_t hart[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	int fd = memfd_create("grammar", MFD_CLOEXEC);
	assert_true(fd >= 0);
	struct mig_stream *w = crafted_stream(fd);
	char buf[256], *save = NULL;
	snprintf(buf, sizeof(buf), "%s", script);
	sample_ram(ram);
	for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
		int r = -1;
		if (!strcmp(t, "ram"))
			r = mig_put_page(w, 1, ram + MIG_PAGE_SIZE) || mig_flush_pages(w);
		else if (!strncmp(t, "cpu", 3))
			r = mig_write_cpu(w, (uint32_t)atoi(t + 3), 1, hart, sizeof(hart));
		else if (!strcmp(t, "uart"))
			r = mig_write_device(w, "uart", 1, "u", 1);
		else if (!strcmp(t, "blk"))
			r = mig_write_device(w, "virtio-blk@10001000", 2, NULL, 0);
		else if (!strcmp(t, "clock"))
			r = mig_write_clock(w, 42);
		else if (!strcmp(t, "digest"))
			r = mig_write_digest(w, 7);
		else if (!strcmp(t, "postcopy"))
			r = mig_write_section(w, MIG_SEC_POSTCOPY, "\xff", 1);
		else if (!strcmp(t, "end"))
			r = mig_write_end(w);
		else if (!strcmp(t, "ack"))
			r = mig_write_section(w, MIG_SEC_ACK, NULL, 0);
		else if (!strcmp(t, "disk"))       /* a data extent of disk 0 */
			r = mig_write_disk(w, 0, MIG_DISK_BLOCK, ram, MIG_DISK_BLOCK);
		else if (!strcmp(t, "diskzero"))
			r = mig_write_disk(w, 0, 0, NULL, MIG_DISK_EXTENT_MAX);
		else if (!strcmp(t, "diskpast"))   /* past the 1 GiB image */
			r = mig_write_disk(w, 0, (1ull << 30) - MIG_DISK_BLOCK, NULL,
					   2 * MIG_DISK_BLOCK);
		else if (!strcmp(t, "disk1"))      /* no such disk */
			r = mig_write_disk(w, 1, 0, NULL, MIG_DISK_BLOCK);
		else if (!strcmp(t, "ddigest0"))
			r = mig_write_disk_digest(w, 0, 9);
		else
			fail_msg("unknown token %s", t);
		assert_int_equal(r, 0);
	}
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);

	struct mig_stream *r = mig_stream_new(fd);
	struct mig_config cfg;
	struct mig_grammar g;
	struct mig_section sec;
	err[0] = 0;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	mig_grammar_init(&g, &cfg, live);
	for (;;) {
		if (mig_read_section(r, &sec, ram, SAMPLE_RAM)) {
			snprintf(err, errlen, "%s", mig_stream_error(r));
			break;
		}
		if (mig_grammar_step(&g, &sec, err, errlen) || sec.type == MIG_SEC_END)
			break;
	}
	mig_stream_free(r);
	close(fd);
	return err;
}

/* disks: copy: extents among the pages, a digest per disk before the
 * state, nothing of either after it, and extents inside the image. */
static void grammar_disks_copy(void **state)
{
	(void)state;
	char err[512];
	const char *tail = " cpu0 cpu1 uart blk clock digest end";
	char s[256];
	crafted_copy_disks = true;
	snprintf(s, sizeof(s), "disk ram diskzero ram ddigest0%s", tail);
	assert_string_equal(grammar_run(s, false, err, sizeof(err)), "");
	assert_string_equal(grammar_run(s, true, err, sizeof(err)), "");
	snprintf(s, sizeof(s), "ddigest0%s", tail);            /* an empty image */
	assert_string_equal(grammar_run(s, true, err, sizeof(err)), "");
	snprintf(s, sizeof(s), "disk ram%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "the digest of disk 0 was due");
	snprintf(s, sizeof(s), "disk ddigest0 disk%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "disk data after the disk digests");
	snprintf(s, sizeof(s), "ddigest0 ram%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "pages after the disk digests");
	snprintf(s, sizeof(s), "ddigest0 ddigest0%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "'disk-digest' section");
	snprintf(s, sizeof(s), "diskpast ddigest0%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "outside the image");
	snprintf(s, sizeof(s), "disk1 ddigest0%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "outside the image");
	crafted_copy_disks = false;
	snprintf(s, sizeof(s), "disk%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "disk data without disks: copy");
	snprintf(s, sizeof(s), "ddigest0%s", tail);
	assert_contains(grammar_run(s, true, err, sizeof(err)), "'disk-digest' section");
}

/* DISK sections whose own shape is wrong, with valid checksums. */
static void disk_section_shapes(void **state)
{
	(void)state;
	char buf[512];
	struct { uint32_t kind; uint64_t off, len; size_t data; const char *why; } bad[] = {
		{ 3, 0, 4096, 0, "unknown extent kind" },
		{ 2, 0, 4096, 0, "does not match" },       /* zstd of nothing */
		{ 0, 4096, 4096, 0, "not on a 64 KiB block" },
		{ 0, 0, 0, 0, "length 0" },
		{ 0, 0, 2u << 20, 0, "over 1 MiB" },
		{ 1, 0, 8192, 4096, "does not match" },
		{ 0, 0, 4096, 16, "does not match" },
	};
	static uint8_t p[MIG_DISK_HDR + 8192];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(p, 0, sizeof(p));
		p[4] = (uint8_t)bad[i].kind;
		memcpy(p + 8, &bad[i].off, 8);          /* little-endian host */
		memcpy(p + 16, &bad[i].len, 8);
		int fd = memfd_create("disk", MFD_CLOEXEC);
		struct mig_stream *w = crafted_stream(fd);
		assert_int_equal(mig_write_section(w, MIG_SEC_DISK, p,
						   MIG_DISK_HDR + bad[i].data), 0);
		assert_int_equal(mig_write_end(w), 0);
		assert_contains(first_error(fd, w, buf, sizeof(buf)), bad[i].why);
		close(fd);
	}
}

/* disks: copy in the handshake: the flag travels; sizes must match; the
 * source's own image (same inode) is refused; paths may differ. */
static void config_check_disks_copy(void **state)
{
	(void)state;
	struct mig_config g, h, in;
	char why[256];
	sample_config(&g);
	g.copy_disks = true;
	int fd = memfd_create("cfg", MFD_CLOEXEC);
	struct mig_stream *w = mig_stream_new(fd);
	assert_int_equal(mig_write_config(w, &g), 0);
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	struct mig_stream *r = mig_stream_new(fd);
	assert_int_equal(mig_read_config(r, &in), 0);
	assert_true(in.copy_disks);
	mig_stream_free(r);
	close(fd);

	sample_config(&h);
	snprintf(h.disks[0].path, sizeof(h.disks[0].path), "/other/b.img");
	h.disks[0].id = 1234;
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), 0);
	g.copy_disks = false;           /* shared: another image is refused */
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), -1);
	g.copy_disks = true;
	h.disks[0].size /= 2;
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "create it with the same size"));
	sample_config(&h);              /* the very same image */
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "source's own"));
	h.ndisks = 0;
	assert_int_equal(mig_config_check(&g, &h, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "give it one --disk"));
}

static void grammar_accepts_whole_streams(void **state)
{
	(void)state;
	char err[512];
	const char *ok = "ram ram cpu0 cpu1 uart blk clock digest end";
	assert_string_equal(grammar_run(ok, false, err, sizeof(err)), "");
	assert_string_equal(grammar_run(ok, true, err, sizeof(err)), "");
	/* no pages at all is a stream too (all of RAM zero) */
	assert_string_equal(grammar_run("cpu0 cpu1 uart blk clock digest end", false, err,
					sizeof(err)), "");
	/* post-copy closes a live stream instead of the digest */
	assert_string_equal(grammar_run("ram cpu0 cpu1 uart blk clock postcopy end", true,
					err, sizeof(err)), "");
}

static void grammar_refuses_missing_state(void **state)
{
	(void)state;
	char err[512];
	assert_contains(grammar_run("ram cpu0 uart blk clock digest end", false, err,
				    sizeof(err)), "where the state of hart 1 was due");
	assert_contains(grammar_run("ram cpu1 cpu0 uart blk clock digest end", false, err,
				    sizeof(err)), "the state of hart 1 in a 'cpu' section");
	assert_contains(grammar_run("ram cpu0 cpu1 uart clock digest end", false, err,
				    sizeof(err)), "device 'virtio-blk@10001000' was due");
	assert_contains(grammar_run("ram cpu0 cpu1 blk uart clock digest end", false, err,
				    sizeof(err)), "device 'uart' was due");
	assert_contains(grammar_run("ram cpu0 cpu1 uart blk digest end", false, err,
				    sizeof(err)), "where the clock was due");
	assert_contains(grammar_run("ram cpu0 cpu1 uart blk clock end", false, err,
				    sizeof(err)), "ended at offset");
	assert_contains(err, "without the memory digest");
	assert_contains(grammar_run("ram end", false, err, sizeof(err)),
			"without the state of hart 0");
}

static void grammar_refuses_repeats_and_disorder(void **state)
{
	(void)state;
	char err[512];
	assert_contains(grammar_run("cpu0 cpu0 cpu1 uart blk clock digest end", false, err,
				    sizeof(err)), "the state of hart 0 in a 'cpu' section");
	assert_contains(grammar_run("cpu0 cpu1 uart uart blk clock digest end", false, err,
				    sizeof(err)), "device 'uart' in a 'device' section");
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock digest ram end", false, err,
				    sizeof(err)), "pages after the machine state began");
	assert_contains(grammar_run("cpu0 ram cpu1 uart blk clock digest end", false, err,
				    sizeof(err)), "pages after the machine state began");
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock digest digest end", false, err,
				    sizeof(err)), "'digest' section");
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock clock digest end", false, err,
				    sizeof(err)), "'clock' section");
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock ack digest end", false, err,
				    sizeof(err)), "control message");
}

static void grammar_postcopy_only_once_and_only_live(void **state)
{
	(void)state;
	char err[512];
	/* the reproducer: a saved file with a POSTCOPY section */
	assert_contains(grammar_run("ram cpu0 cpu1 uart blk clock postcopy end", false, err,
				    sizeof(err)), "post-copy needs a live source");
	assert_contains(grammar_run("ram cpu0 cpu1 uart blk clock digest postcopy end", false,
				    err, sizeof(err)), "post-copy needs a live source");
	/* repeated (it leaked), or after the digest, or before the state */
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock postcopy postcopy end", true,
				    err, sizeof(err)), "'postcopy' section");
	assert_contains(grammar_run("cpu0 cpu1 uart blk clock digest postcopy end", true, err,
				    sizeof(err)), "where the end marker was due");
	assert_contains(grammar_run("ram postcopy cpu0 cpu1 uart blk clock end", true, err,
				    sizeof(err)), "'postcopy' section");
}

int main(void)
{
	const char *seed_dir = getenv("FERRY_STREAM_SEEDS");
	if (seed_dir) {
		write_seeds(seed_dir);
		return 0;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sample_stream_loads),
		cmocka_unit_test(config_round_trip),
		cmocka_unit_test(many_pages_round_trip),
		cmocka_unit_test(page_encodings),
		cmocka_unit_test(state_records_and_control),
		cmocka_unit_test(wrong_section_type_is_refused),
		cmocka_unit_test(pages_can_go_to_a_sink),
		cmocka_unit_test(send_error_after_read_failure),
		cmocka_unit_test(no_read_ahead),
		cmocka_unit_test(dead_peer_times_out),
		cmocka_unit_test(closed_peer_is_an_error_not_a_signal),
		cmocka_unit_test(reads_resume_after_the_peer_closed),
		cmocka_unit_test(quick_start_writes_the_first_pages_early),
		cmocka_unit_test(token_bucket),
		cmocka_unit_test(digest),
		cmocka_unit_test(config_check),
		cmocka_unit_test(isa_spellings),
		cmocka_unit_test(config_device_list),
		cmocka_unit_test(truncated_at_every_offset),
		cmocka_unit_test(flipped_byte_at_every_offset),
		cmocka_unit_test(flipped_control_stream),
		cmocka_unit_test(zstd_page_of_the_wrong_size),
		cmocka_unit_test(page_beyond_ram),
		cmocka_unit_test(unknown_and_malformed_sections),
		cmocka_unit_test(hostile_configurations),
		cmocka_unit_test(grammar_accepts_whole_streams),
		cmocka_unit_test(grammar_disks_copy),
		cmocka_unit_test(disks_copy_stream_reads_back),
		cmocka_unit_test(disk_section_shapes),
		cmocka_unit_test(config_check_disks_copy),
		cmocka_unit_test(grammar_refuses_missing_state),
		cmocka_unit_test(channel_streams_read_back),
		cmocka_unit_test(disk_zstd_extent_checked),
		cmocka_unit_test(channel_sections_refused),
		cmocka_unit_test(grammar_refuses_repeats_and_disorder),
		cmocka_unit_test(grammar_postcopy_only_once_and_only_live),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
