/*
 * stream.h - the migration stream: framing, pages, configuration.
 *
 * On the wire (docs/stream.md has the full layout):
 *   header   "FERRYMIG", u32 format version, u32 reserved
 *   sections u32 type, u32 flags, u64 length, payload, u64 XXH64 of
 *            the 16 header bytes and the payload
 * A CONFIG section (a JSON object: the machine's shape) follows the header;
 * RAM sections carry batches of pages, each a page frame number and an
 * encoding (zero, raw, zstd); CPU, DEVICE and CLOCK sections carry state
 * with versions of their own; DIGEST and END close it. The same stream
 * runs over TCP (with ACK/ERROR/RELEASED/STARTED going back) or into a
 * file (save).
 *
 * Everything read is checked before it is used: lengths against limits,
 * checksums before parsing, page numbers against the RAM size, zstd pages
 * against their exact size. Errors are sticky and say what failed where.
 */
#ifndef FERRY_STREAM_H
#define FERRY_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_MAGIC "FERRYMIG"
#define MIG_VERSION 1
#define MIG_SECTION_MAX (64u << 20)

enum mig_section_type {
	MIG_SEC_CONFIG = 1,     /* JSON: the machine's shape */
	MIG_SEC_RAM = 2,        /* a batch of pages */
	MIG_SEC_CPU = 3,        /* u32 hart, u32 version, state */
	MIG_SEC_DEVICE = 4,     /* u16 name length, name, u32 version, state */
	MIG_SEC_CLOCK = 5,      /* u64 guest time in timebase ticks */
	MIG_SEC_DIGEST = 6,     /* u64 digest of all of RAM */
	MIG_SEC_END = 7,        /* no more state */
	MIG_SEC_ACK = 8,        /* destination: accepted / holds everything */
	MIG_SEC_ERROR = 9,      /* text: why the sender gives up */
	MIG_SEC_RELEASED = 10,  /* source: disks flushed and unlocked */
	MIG_SEC_STARTED = 11,   /* destination: the guest runs here */
	MIG_SEC_POSTCOPY = 12,  /* source: bitmap of pages still to come */
	MIG_SEC_PAGE_REQ = 13,  /* destination: u64 page frame numbers wanted */
	MIG_SEC_TYPE_MAX = 13,
};

enum mig_page_encoding { MIG_PAGE_ZERO = 0, MIG_PAGE_RAW = 1, MIG_PAGE_ZSTD = 2 };

#define MIG_MAX_DEVICES 32
#define MIG_MAX_DISKS 4

struct mig_config {
	uint32_t version;
	char isa[64];
	uint64_t ram_size;
	uint32_t harts;
	unsigned ndevices;
	struct { char name[48]; uint32_t version; } devices[MIG_MAX_DEVICES];
	unsigned ndisks;
	struct { char path[256]; uint64_t size; uint64_t id; } disks[MIG_MAX_DISKS];
};

/* A section as read; data stays valid until the next read. */
struct mig_section {
	uint32_t type;
	uint32_t len;
	const uint8_t *data;
	uint64_t digest;        /* MIG_SEC_DIGEST */
	uint64_t pages;         /* MIG_SEC_RAM: pages written into RAM */
};

struct mig_stream;

struct mig_stream *mig_stream_new(int fd);
void mig_stream_free(struct mig_stream *s);
/* Bytes written plus bytes read so far. */
uint64_t mig_stream_bytes(struct mig_stream *s);
const char *mig_stream_error(struct mig_stream *s);
/* Compress pages with zstd when it saves (worth it on slow links). */
void mig_stream_set_compress(struct mig_stream *s, bool on);

int mig_flush(struct mig_stream *s);
int mig_write_section(struct mig_stream *s, uint32_t type, const void *data, size_t len);
int mig_write_config(struct mig_stream *s, const struct mig_config *cfg);
int mig_write_digest(struct mig_stream *s, uint64_t digest);
int mig_write_end(struct mig_stream *s);
/* Queue page pfn for the current RAM batch (sent when full or flushed). */
int mig_put_page(struct mig_stream *s, uint64_t pfn, const void *page);
int mig_flush_pages(struct mig_stream *s);
/* Send an ERROR section with the reason and flush; best effort. */
void mig_send_error(struct mig_stream *s, const char *why);

/* Read the header and the CONFIG section. */
int mig_read_config(struct mig_stream *s, struct mig_config *cfg);
/* Where received pages go: straight into RAM, or through a sink (post-
 * copy keeps pages the guest already has). */
typedef void (*mig_page_sink)(void *opaque, uint64_t pfn, const void *page);
void mig_stream_set_sink(struct mig_stream *s, mig_page_sink sink, void *opaque);

/* Read one section. RAM sections are applied to ram (ram_size bytes;
 * NULL refuses them); DIGEST is decoded into sec->digest. */
int mig_read_section(struct mig_stream *s, struct mig_section *sec, uint8_t *ram,
		     uint64_t ram_size);
/* Read one section and require `type`; an ERROR section's text or the
 * stream's error goes to why. */
int mig_expect(struct mig_stream *s, uint32_t type, char *why, size_t len);

/* Can a machine shaped like `local` run the guest described by `src`?
 * Returns 0, or -1 with the reason. */
int mig_config_check(const struct mig_config *src, const struct mig_config *local,
		     char *why, size_t len);
/* A digest of all of RAM, the same on both sides for the same bytes. */
uint64_t mig_ram_digest(const void *ram, size_t len);

#endif
