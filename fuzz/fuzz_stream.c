/*
 * fuzz_stream.c - libFuzzer target: arbitrary bytes as a migration stream.
 *
 * Each input goes through the whole reader the way the destination reads
 * (header, configuration and its check, then sections up to END, pages
 * into a 16-page RAM buffer of exactly that size so ASan sees any write
 * past it), twice: once as it is, and once with every section checksum
 * that the framing lets us find recomputed, so the fuzzer also gets past
 * the checksums into the decoders (pages, zstd, records, the JSON
 * configuration). Odd-sized inputs take pages through a sink instead of
 * RAM, as post-copy does. Every section also goes through the section
 * grammar (grammar.c) as a file or, for inputs with bit 1 of the size
 * set, as a live stream, and through the fault-tolerance stream's
 * grammar (ft_grammar.c: initial copy, then whole epochs) for inputs with
 * bit 2 set. Compressed disk extents are read whole. Inputs with bit 3 set are also read as a page channel
 * (channels: N): header, JOIN, then pages, SYNCs and END through the
 * page channel's grammar. DISK extents (disks: copy) must stay inside their payload and,
 * once the grammar accepts them, inside their image. fuzz_load.c goes further, into the loaders.
 *
 * Build and run: fuzz/run-short.sh SECONDS (clang -fsanitize=fuzzer).
 * Seeds: the sample streams of tests/unit/stream_sample.h.
 */
#include "fix_checksums.h"
#include "migrate/ft_grammar.h"
#include "migrate/grammar.h"
#include "migrate/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#define RAM_PAGES 16
#define RAM_SIZE (RAM_PAGES * MIG_PAGE_SIZE)
#define MAX_SECTIONS 4096

static uint8_t *ram;
static int fd = -1;
static uint64_t sink_sum;

/* An accepted FT_WRITE: whole sectors, inside a disk of the configuration,
 * its data the rest of its payload. */
static bool ft_write_inside(const struct mig_section *sec, const struct mig_config *cfg)
{
	struct ft_write w;
	char why[320];
	return ft_write_decode(sec, &w, why, sizeof(why)) == 0 && w.disk < cfg->ndisks &&
	       w.off % MIG_FT_SECTOR == 0 && w.len % MIG_FT_SECTOR == 0 && w.len > 0 &&
	       w.off + w.len <= cfg->disks[w.disk].size && w.data + w.len == sec->data + sec->len;
}

static void sink(void *opaque, uint64_t pfn, const void *page)
{
	(void)opaque;
	if (pfn >= RAM_PAGES)
		abort();        /* the reader let a page beyond RAM through */
	sink_sum += ((const uint8_t *)page)[MIG_PAGE_SIZE - 1];
}

/* The same bytes as a page channel: JOIN, then what its grammar allows. */
static void feed_page_channel(bool use_sink)
{
	struct mig_section sec;
	struct mig_pages_grammar g = { 0 };
	uint8_t nonce[MIG_JOIN_NONCE];
	uint32_t index, count;
	char why[256];
	if (lseek(fd, 0, SEEK_SET))
		abort();
	struct mig_stream *s = mig_stream_new(fd);
	if (use_sink)
		mig_stream_set_sink(s, sink, NULL);
	if (mig_read_join(s, nonce, &index, &count) == 0) {
		for (int i = 0; i < MAX_SECTIONS; i++) {
			if (mig_read_section(s, &sec, use_sink ? NULL : ram, RAM_SIZE))
				break;
			bool was_ended = g.ended;
			uint64_t last = g.last_sync;
			if (mig_pages_grammar_step(&g, &sec, why, sizeof(why))) {
				if (!why[0])
					abort();
				break;
			}
			if (was_ended || (sec.type == MIG_SEC_SYNC && sec.round != last + 1))
				abort();        /* accepted after END, or a round out of order */
		}
	}
	if (strlen(mig_stream_error(s)) >= 320)
		abort();
	mig_stream_free(s);
}

static void feed(const uint8_t *data, size_t size, bool use_sink)
{
	struct mig_config local, remote;
	struct mig_section sec;
	struct mig_grammar grammar;
	struct ft_grammar ft;
	char why[256];
	bool in_order = true, ft_order = true;
	if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size ||
	    lseek(fd, 0, SEEK_SET))
		abort();
	struct mig_stream *s = mig_stream_new(fd);
	if (use_sink)
		mig_stream_set_sink(s, sink, NULL);
	mig_config_init(&local, RAM_SIZE, 2, "rv64imafdc_zicsr_zifencei_zicntr");
	mig_config_add_device(&local, "uart", 1);
	if (mig_read_config(s, &remote) == 0) {
		mig_config_check(&remote, &local, why, sizeof(why));
		/* the section order as a destination checks it, live or not */
		mig_grammar_init(&grammar, &remote, size & 2);
		ft_grammar_init(&ft, &remote);
		for (int i = 0; i < MAX_SECTIONS; i++) {
			if (mig_read_section(s, &sec, use_sink ? NULL : ram, RAM_SIZE))
				break;
			if (in_order && sec.type != MIG_SEC_ERROR &&
			    mig_grammar_step(&grammar, &sec, why, sizeof(why))) {
				in_order = false;
				if (!why[0])
					abort();        /* a refusal always says why */
			}
			if ((size & 4) && ft_order && sec.type != MIG_SEC_ERROR &&
			    ft_grammar_step(&ft, &sec, why, sizeof(why))) {
				ft_order = false;
				if (!why[0])
					abort();
			}
			if (in_order && sec.type == MIG_SEC_END &&
			    grammar.phase != MIG_G_END)
				abort();        /* END accepted before the state was whole */
			if (in_order && sec.type == MIG_SEC_SYNC &&
			    (remote.channels < 2 || grammar.last_sync != sec.round))
				abort();        /* a round marker the main stream may not have */
			if (sec.type == MIG_SEC_DIGEST)
				sink_sum += sec.digest == mig_ram_digest(ram, RAM_SIZE);
			if (sec.type == MIG_SEC_PAGE_REQUEST)
				for (uint32_t k = 0; k < sec.npfns; k++)
					if (mig_section_pfn(&sec, k) >= RAM_PAGES)
						abort();
			bool zstd_extent = sec.type == MIG_SEC_DISK && !sec.disk_zero &&
					   sec.len < MIG_DISK_HDR + sec.disk_len;
			if (sec.type == MIG_SEC_DISK && !zstd_extent &&
			    (sec.disk_data + (sec.disk_zero ? 0 : sec.disk_len) !=
			     sec.data + sec.len || sec.disk_off % MIG_DISK_BLOCK))
				abort();        /* an extent that is not its payload */
			for (uint64_t k = 0; zstd_extent && k < sec.disk_len; k += 512)
				sink_sum += sec.disk_data[k];   /* decoded: all of it there */
			if (in_order && sec.type == MIG_SEC_DISK &&
			    (sec.disk >= remote.ndisks ||
			     sec.disk_off + sec.disk_len > remote.disks[sec.disk].size))
				abort();        /* the grammar let an extent outside its image */
			if ((size & 4) && ft_order && sec.type == MIG_SEC_FT_WRITE &&
			    !ft_write_inside(&sec, &remote))
				abort();        /* the FT grammar let a write outside its disk */
			if (sec.type == MIG_SEC_DEVICE &&
			    (strlen(sec.name) == 0 || sec.state + sec.state_len !=
			     sec.data + sec.len))
				abort();
			if (sec.type == MIG_SEC_END && !((size & 4) && ft_order))
				break;  /* an FT stream goes on with the next epoch */
		}
		ft_grammar_free(&ft);
		/* what may follow END on a live connection */
		mig_expect(s, MIG_SEC_ACK, why, sizeof(why));
	}
	/* the error text is always a C string */
	if (strlen(mig_stream_error(s)) >= 320)
		abort();
	mig_stream_free(s);
	if (size & 8)
		feed_page_channel(use_sink);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fd < 0) {
		fd = memfd_create("fuzz-stream", MFD_CLOEXEC);
		ram = malloc(RAM_SIZE);
		if (fd < 0 || !ram)
			abort();
	}
	if (size > (8u << 20))
		return 0;
	bool use_sink = size & 1;
	feed(data, size, use_sink);
	uint8_t *copy = malloc(size ? size : 1);
	if (!copy)
		abort();
	memcpy(copy, data, size);
	fix_checksums(copy, size);
	if (memcmp(copy, data, size))
		feed(copy, size, use_sink);
	free(copy);
	return 0;
}
