/*
 * stream_sample.h - a small valid migration stream, and a reader that
 * takes any stream the way the destination does, for the stream unit
 * tests and the fuzz target (whose seed corpus is these streams).
 *
 * The sample machine has 16 pages of RAM: zero pages, a compressible
 * page, an incompressible one; two harts, two devices, one disk. The
 * reader checks the configuration, loads every section into a RAM buffer
 * of the caller's, and succeeds only at END with a matching digest.
 */
#ifndef FERRY_STREAM_SAMPLE_H
#define FERRY_STREAM_SAMPLE_H

#include "migrate/stream.h"

#include <stdio.h>
#include <string.h>

#define SAMPLE_PAGES 16
#define SAMPLE_RAM (SAMPLE_PAGES * MIG_PAGE_SIZE)
#define SAMPLE_ISA "rv64imafdc_zicsr_zifencei_zicntr"

static inline void sample_config(struct mig_config *cfg)
{
	mig_config_init(cfg, SAMPLE_RAM, 2, SAMPLE_ISA);
	mig_config_add_device(cfg, "uart", 1);
	mig_config_add_device(cfg, "virtio-blk@10001000", 2);
	cfg->ndisks = 1;
	snprintf(cfg->disks[0].path, sizeof(cfg->disks[0].path), "/srv/images/a.img");
	cfg->disks[0].size = 1 << 30;
	cfg->disks[0].id = 0xfedcba9876543210ull;
}

/* RAM: page 0 text-like, 1 random, 3 a counter pattern, the rest zero. */
static inline void sample_ram(uint8_t *ram)
{
	static const char text[] = "the quick brown fox jumps over the lazy dog; ";
	uint64_t x = 0x9e3779b97f4a7c15ull;
	memset(ram, 0, SAMPLE_RAM);
	for (unsigned i = 0; i < MIG_PAGE_SIZE; i++)
		ram[i] = (uint8_t)text[i % (sizeof(text) - 1)];
	for (unsigned i = 0; i < MIG_PAGE_SIZE; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		ram[MIG_PAGE_SIZE + i] = (uint8_t)x;
	}
	for (unsigned i = 0; i < MIG_PAGE_SIZE / 4; i++)
		memcpy(ram + 3 * MIG_PAGE_SIZE + 4 * i, &i, 4);
}

/* Write the whole sample stream (what a `save` would) to fd. */
static inline int sample_write(int fd, bool compress)
{
	static uint8_t ram[SAMPLE_RAM];
	struct mig_config cfg;
	struct mig_stream *s = mig_stream_new(fd);
	const uint8_t hart[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
	const char uart[] = "uart state";
	sample_config(&cfg);
	sample_ram(ram);
	mig_stream_set_compress(s, compress);
	int r = mig_write_config(s, &cfg);
	for (unsigned pfn = 0; pfn < SAMPLE_PAGES && !r; pfn++)
		r = mig_put_page(s, pfn, ram + pfn * MIG_PAGE_SIZE);
	r = r || mig_flush_pages(s) ||
	    mig_write_cpu(s, 0, 1, hart, sizeof(hart)) ||
	    mig_write_cpu(s, 1, 1, hart, 8) ||
	    mig_write_device(s, "uart", 1, uart, sizeof(uart)) ||
	    mig_write_device(s, "virtio-blk@10001000", 2, NULL, 0) ||
	    mig_write_clock(s, 123456789) ||
	    mig_write_digest(s, mig_ram_digest(ram, SAMPLE_RAM)) ||
	    mig_write_end(s) || mig_flush(s);
	mig_stream_free(s);
	return r ? -1 : 0;
}

/* Control messages, as the two sides exchange them. */
static inline int sample_write_control(int fd)
{
	struct mig_stream *s = mig_stream_new(fd);
	struct mig_config cfg;
	const uint64_t pfns[3] = { 0, 7, SAMPLE_PAGES - 1 };
	sample_config(&cfg);
	int r = mig_write_config(s, &cfg) ||
		mig_write_section(s, MIG_SEC_READY, NULL, 0) ||
		mig_write_section(s, MIG_SEC_ACK, "ok", 2) ||
		mig_write_page_request(s, pfns, 3) ||
		mig_write_section(s, MIG_SEC_POSTCOPY, "\xff\x0f", 2) ||
		mig_write_section(s, MIG_SEC_HANDOFF_CONFIRM, NULL, 0) ||
		mig_write_section(s, MIG_SEC_RELEASED, NULL, 0) ||
		mig_write_section(s, MIG_SEC_STARTED, NULL, 0) || mig_flush(s);
	mig_send_error(s, "sample error: disk lock lost");
	mig_stream_free(s);
	return r ? -1 : 0;
}

/* Read a stream as the destination does, into ram (ram_size bytes):
 * 0 at END with a matching digest; -1 with the reason in err. */
static inline int sample_read(int fd, uint8_t *ram, uint64_t ram_size, char *err,
			      size_t errlen)
{
	struct mig_stream *s = mig_stream_new(fd);
	struct mig_config local, remote;
	struct mig_section sec;
	char why[256];
	bool digest_ok = false;
	int r = -1;
	mig_config_init(&local, ram_size, 2, SAMPLE_ISA "_zihpm");
	mig_config_add_device(&local, "uart", 1);
	mig_config_add_device(&local, "virtio-blk@10001000", 3);
	sample_config(&remote);
	local.ndisks = 1;
	local.disks[0] = remote.disks[0];
	if (mig_read_config(s, &remote)) {
		snprintf(err, errlen, "%s", mig_stream_error(s));
		goto out;
	}
	if (mig_config_check(&remote, &local, why, sizeof(why))) {
		snprintf(err, errlen, "cannot run this guest here: %s", why);
		goto out;
	}
	for (unsigned n = 0; n < 100000; n++) {
		if (mig_read_section(s, &sec, ram, ram_size)) {
			snprintf(err, errlen, "%s", mig_stream_error(s));
			goto out;
		}
		if (sec.type == MIG_SEC_DIGEST)
			digest_ok = sec.digest == mig_ram_digest(ram, ram_size);
		if (sec.type == MIG_SEC_ERROR) {
			snprintf(err, errlen, "peer gave up: %s", sec.text);
			goto out;
		}
		if (sec.type == MIG_SEC_END) {
			if (!digest_ok)
				snprintf(err, errlen, "ended without a matching digest");
			r = digest_ok ? 0 : -1;
			goto out;
		}
	}
	snprintf(err, errlen, "too many sections");
out:
	mig_stream_free(s);
	return r;
}

#endif
