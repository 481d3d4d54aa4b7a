/*
 * stream.h - the migration stream: format, writer and reader.
 *
 * A stream is what one side sends the other, or what `save` writes to a
 * file. docs/stream.md is the format specification; in short:
 *   header   "FERRYMIG", u32 format version, u32 reserved (0)
 *   sections u32 type, u32 flags (0), u64 length, payload,
 *            u64 XXH64 of the 16 section-header bytes and the payload
 * A CONFIG section (a JSON object: the machine's shape) comes first; RAM
 * sections carry batches of pages, each a page frame number and an
 * encoding (zero, raw, zstd); CPU, DEVICE and CLOCK sections carry state
 * with versions of their own; DIGEST and END close it. Control messages
 * (ACK, ERROR, RELEASED, ...) use the same framing in either direction.
 *
 * The library knows nothing of CPUs or devices: they hand it opaque,
 * versioned blobs. It knows guest RAM only as an array of 4 KiB pages.
 * Everything read is checked before it is used: lengths against per-type
 * limits, the checksum before parsing, page numbers against the RAM size,
 * zstd pages against their exact size; a hostile stream can make a read
 * fail, never write outside the caller's RAM.
 *
 * Errors are sticky: the first failure is kept as a sentence ("migration
 * stream: section 'ram' at offset 123456 fails its checksum") and every
 * later call returns -1 at once. Functions return 0 or -1; read
 * mig_stream_error() for the reason. One thread may read a stream while
 * another writes it (post-copy does), but not two readers or two writers.
 */
#ifndef FERRY_STREAM_H
#define FERRY_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_MAGIC               "FERRYMIG"      /* 8 bytes, no NUL */
#define MIG_VERSION             1u              /* stream format version */
#define MIG_PAGE_SIZE           4096u
#define MIG_SECTION_MAX         (64u << 20)     /* no section is longer */
#define MIG_BATCH_PAGES         256             /* pages in one RAM section we write */
#define MIG_QUICK_PAGES         16              /* ... at the start (quick start) */
#define MIG_ZSTD_LEVEL          1               /* default page compression level */
/* A compressed page is sent only if it saves more than 1/8 of a page. */
#define MIG_ZSTD_KEEP_MAX       (MIG_PAGE_SIZE - MIG_PAGE_SIZE / 8 - 1)

/* Section types: machine state from 0x001, control messages from 0x101.
 * To add one: a value here, a row in stream.c's section table (name and
 * payload size limits), a line in docs/stream.md. */
enum mig_section_type {
	MIG_SEC_CONFIG          = 0x001,        /* JSON: the machine's shape */
	MIG_SEC_RAM             = 0x002,        /* a batch of pages */
	MIG_SEC_CPU             = 0x003,        /* u32 hart, u32 version, state */
	MIG_SEC_DEVICE          = 0x004,        /* u16 name length, name, u32 version, state */
	MIG_SEC_CLOCK           = 0x005,        /* u64 guest time in timebase ticks */
	MIG_SEC_DIGEST          = 0x006,        /* u64 mig_ram_digest() of all of RAM */
	MIG_SEC_END             = 0x007,        /* no more state */
	MIG_SEC_DISK            = 0x008,        /* disks: copy: an extent of a disk image */
	MIG_SEC_DISK_DIGEST     = 0x009,        /* disks: copy: u32 disk, u32 0, u64 digest */
	MIG_SEC_FT_WRITE        = 0x00a,        /* FT: a guest write of the epoch (ft_grammar.h) */
	MIG_SEC_SYNC            = 0x00b,        /* channels: u64 round, all its pages sent */

	MIG_SEC_READY           = 0x101,        /* ready to receive */
	MIG_SEC_ACK             = 0x102,        /* the last step succeeded */
	MIG_SEC_ERROR           = 0x103,        /* text: why the sender gives up */
	MIG_SEC_RELEASED        = 0x104,        /* source: disks flushed and unlocked */
	MIG_SEC_STARTED         = 0x105,        /* destination: the guest runs here */
	MIG_SEC_POSTCOPY        = 0x106,        /* source: switching to post-copy (opaque) */
	MIG_SEC_PAGE_REQUEST    = 0x107,        /* destination: u64 page numbers wanted */
	MIG_SEC_HANDOFF_CONFIRM = 0x108,        /* destination: holds everything */
	MIG_SEC_EPOCH           = 0x109,        /* FT primary: u64 epoch, a checkpoint follows */
	MIG_SEC_EPOCH_ACK       = 0x10a,        /* FT secondary: u64 epoch, applied whole */
	MIG_SEC_JOIN            = 0x10b,        /* channels: nonce[32], u32 index, u32 count */
	MIG_SEC_FT_ALIVE        = 0x10c,        /* FT primary: between epochs, still here */
};
#define MIG_SEC_PAGE_REQ MIG_SEC_PAGE_REQUEST

/* How one page travels in a RAM section. */
enum mig_page_encoding {
	MIG_PAGE_ZERO = 0,      /* all zero, no data */
	MIG_PAGE_RAW  = 1,      /* 4096 bytes */
	MIG_PAGE_ZSTD = 2,      /* u32 length, then zstd data of exactly 4096 bytes */
};

/* Shared-nothing migration (disks: copy): DISK sections carry one extent
 * each, u32 disk, u32 kind (0 zero, 1 data), u64 offset, u64 length, then
 * the data (kind 1). Offsets are whole MIG_DISK_BLOCKs; a length is whole
 * blocks, or ends at the image's end; at most MIG_DISK_EXTENT_MAX. */
#define MIG_DISK_BLOCK          (64u << 10)
#define MIG_DISK_EXTENT_MAX     (1u << 20)
#define MIG_DISK_HDR            24
enum mig_disk_kind { MIG_DISK_ZERO = 0, MIG_DISK_DATA = 1,
		     MIG_DISK_ZSTD = 2 };        /* zstd of length bytes, smaller by > 1/8 */
/* Fault tolerance: FT_WRITE carries one guest write of an epoch, u32 disk,
 * u32 0, u64 offset, then the data: whole sectors (ft_grammar.c checks). */
#define MIG_FT_WRITE_HDR        16
#define MIG_FT_WRITE_MAX        (1u << 20)
#define MIG_FT_SECTOR           512

/* ---- Machine configuration (the CONFIG section) ------------------------------ */
#define MIG_MAX_DEVICES         32
#define MIG_MAX_DISKS           4
#define MIG_NAME_MAX            64      /* device names, with the NUL */
#define MIG_ISA_MAX             128
#define MIG_PATH_MAX            256
#define MIG_CHANNELS_MAX        16      /* page channels of one migration */
#define MIG_JOIN_NONCE          32      /* bytes of the per-migration join nonce */

struct mig_device_version {
	char name[MIG_NAME_MAX];        /* printable, no spaces */
	uint32_t version;               /* version of its state record */
};

struct mig_disk {
	char path[MIG_PATH_MAX];        /* as the destination must open it */
	uint64_t size;                  /* bytes */
	uint64_t id;                    /* identity on shared storage (inode) */
};

struct mig_config {
	uint32_t version;               /* stream format version: MIG_VERSION */
	char isa[MIG_ISA_MAX];          /* "rv64imafdc_zicsr_zifencei_zicntr" */
	uint64_t ram_size;              /* bytes */
	uint32_t harts;
	unsigned ndevices;
	struct mig_device_version devices[MIG_MAX_DEVICES];
	unsigned ndisks;
	struct mig_disk disks[MIG_MAX_DISKS];
	bool copy_disks;                /* source: disks: copy ("disk_mode") */
	uint32_t channels;              /* source: page channels besides this one
	                                 * (0 or 1: pages on this stream) */
	bool has_join;                  /* destination: it takes page channels that */
	uint8_t join[MIG_JOIN_NONCE];   /* present this nonce ("join", hex) */
};

/* Clear cfg and fill the basics (version = MIG_VERSION). */
void mig_config_init(struct mig_config *cfg, uint64_t ram_size, uint32_t harts,
		     const char *isa);
/* Add a device, or update its version; -1 if the list is full or the name
 * is empty, too long, or not printable ASCII without spaces. */
int mig_config_add_device(struct mig_config *cfg, const char *name, uint32_t version);
/* Can a host shaped like `local` run the guest described by `stream_cfg`?
 * 0 if so; -1 with the reason in why: format version, ISA (an extension the
 * host lacks, another XLEN), less memory, another hart count, a device
 * missing or newer than the host's, a disk the host does not see. */
int mig_config_check(const struct mig_config *stream_cfg, const struct mig_config *local,
		     char *why, size_t len);

/* ---- The stream ---------------------------------------------------------------- */
struct mig_stream;

/* A stream over fd (TCP socket, socketpair, pipe or file). The caller
 * keeps the fd and closes it after mig_stream_free(). Reads take only the
 * bytes of the next section, so poll() on the fd tells whether another is
 * coming. Writes are buffered until mig_flush(). Aborts only when the host
 * is out of memory. */
struct mig_stream *mig_stream_new(int fd);
/* A stream over a channel (channel.h: TCP, TLS), which it owns from here
 * on: mig_stream_free() closes it. */
struct mig_channel;
struct mig_stream *mig_stream_new_channel(struct mig_channel *ch);
struct mig_channel *mig_stream_channel(struct mig_stream *s);
void mig_stream_free(struct mig_stream *s);
/* Is a section coming? 1 when a read would not wait, 0 after timeout_ms
 * (-1: forever), -1 on error. Unlike poll() on the fd, it sees bytes TLS
 * has already decrypted. */
int mig_stream_wait_readable(struct mig_stream *s, int timeout_ms);

/* A peer silent for this long fails the stream (0, the default: wait;
 * SO_RCVTIMEO/SO_SNDTIMEO on the socket work too). */
void mig_stream_set_timeout(struct mig_stream *s, int timeout_ms);
/* Cap the write rate with a token bucket (0: no cap); any time. */
void mig_stream_set_rate(struct mig_stream *s, uint64_t bytes_per_sec);
/* zstd for pages and disk extents (off by default): at level 1 it costs about 30 us of CPU
 * a non-zero page (~130 MB/s) and sends 32-40% of the bytes
 * (docs/stream.md), so it pays on links slower than about 1 Gbit/s. */
void mig_stream_set_compress(struct mig_stream *s, bool on);
/* Compression level when on (default MIG_ZSTD_LEVEL; negative: faster). */
void mig_stream_set_zstd_level(struct mig_stream *s, int level);
/* Until `bytes` have been written, pages go MIG_QUICK_PAGES to a section
 * and the buffer is written whenever 64 KiB are ready, not when a full
 * batch and the 1 MiB buffer are: a new connection's first flight (ten
 * segments, whatever their size: so never a small write each) leaves as
 * soon as its pages are encoded, and TCP's slow start, paced by round
 * trips from that flight, begins tens of ms earlier on a long link. 0
 * (the default): never. */
void mig_stream_set_quick_start(struct mig_stream *s, uint64_t bytes);

/* Bytes written (accepted, sent or buffered) plus bytes read. */
uint64_t mig_stream_bytes(const struct mig_stream *s);
uint64_t mig_stream_bytes_out(const struct mig_stream *s);
/* Of the bytes written, those still in the write buffer (not yet handed
 * to the channel, so not in the socket's queue either). */
uint64_t mig_stream_bytes_buffered(const struct mig_stream *s);
uint64_t mig_stream_bytes_in(const struct mig_stream *s);

bool mig_stream_failed(const struct mig_stream *s);
/* Did it fail on an ERROR section from the peer (a peer that speaks the
 * protocol and said why), rather than on bytes that make no sense? */
bool mig_stream_peer_gave_up(const struct mig_stream *s);
/* After a write found the connection closed by the peer (EPIPE,
 * ECONNRESET), let reads go on: what the peer sent before it closed (its
 * ERROR, saying why) is still ours to read. 0, or -1 if the stream did not
 * fail that way. Writes stay failed. */
int mig_stream_resume_reads(struct mig_stream *s);
/* The stream failed because the connection did (closed, reset, silent),
 * not because of what the peer sent. */
bool mig_stream_connection_lost(const struct mig_stream *s);
/* The first error, or "no error". */
const char *mig_stream_error(const struct mig_stream *s);
/* Record an error the caller found (the first one wins); returns -1. */
int mig_stream_fail(struct mig_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* ---- Writing -------------------------------------------------------------------- */
/* The stream header and the CONFIG section: what each side writes first. */
int mig_write_config(struct mig_stream *s, const struct mig_config *cfg);
/* A section with the given payload; pages queued before it go first. */
int mig_write_section(struct mig_stream *s, uint32_t type, const void *data, size_t len);
/* Queue the page with page frame number pfn (its offset in guest RAM / 4096)
 * and choose its encoding; every MIG_BATCH_PAGES pages make a RAM section. */
int mig_put_page(struct mig_stream *s, uint64_t pfn, const void *page);
/* Send the queued pages now as a RAM section. */
int mig_flush_pages(struct mig_stream *s);
/* State records in the CPU, DEVICE and CLOCK layouts above. */
int mig_write_cpu(struct mig_stream *s, uint32_t hart, uint32_t version,
		  const void *state, size_t len);
int mig_write_device(struct mig_stream *s, const char *name, uint32_t version,
		     const void *state, size_t len);
int mig_write_clock(struct mig_stream *s, uint64_t ticks);
int mig_write_digest(struct mig_stream *s, uint64_t digest);
int mig_write_end(struct mig_stream *s);
/* A DISK extent of disk `disk` at off; data NULL: a zero extent. */
int mig_write_disk(struct mig_stream *s, uint32_t disk, uint64_t off, const void *data,
		   uint64_t len);
int mig_write_disk_digest(struct mig_stream *s, uint32_t disk, uint64_t digest);
/* Multi-channel (channels.c): the end of round `round` on a stream. */
int mig_write_sync(struct mig_stream *s, uint64_t round);
/* A page channel's first words: the stream header and JOIN (the nonce of
 * the destination's CONFIG, this channel's index of count). */
int mig_write_join(struct mig_stream *s, const uint8_t nonce[MIG_JOIN_NONCE],
		   uint32_t index, uint32_t count);
/* Post-copy: ask the source for these pages. */
int mig_write_page_request(struct mig_stream *s, const uint64_t *pfns, size_t n);
/* Tell the peer why we give up (ERROR) and flush. Best effort: it is sent
 * after a read-side failure too, not after a failed write. */
void mig_send_error(struct mig_stream *s, const char *why);
/* Send everything buffered. */
int mig_flush(struct mig_stream *s);

/* What the page encoder chose so far. */
struct mig_page_stats {
	uint64_t zero, raw, zstd;       /* pages sent each way */
	uint64_t zstd_bytes;            /* compressed bytes of the zstd pages */
	uint64_t zstd_rejected;         /* compressed, did not pay, sent raw */
	uint64_t disk_zstd, disk_zstd_bytes, disk_zstd_rejected;  /* disk extents alike */
};
void mig_stream_page_stats(const struct mig_stream *s, struct mig_page_stats *st);

/* ---- Reading -------------------------------------------------------------------- */
/* A section as read; pointers stay valid until the next read. */
struct mig_section {
	uint32_t type;
	uint32_t flags;
	uint64_t len;                   /* payload bytes */
	uint64_t offset;                /* stream offset of the section */
	const uint8_t *data;            /* payload, followed by a NUL */
	/* decoded, by type */
	uint64_t pages;                 /* RAM: pages written */
	uint64_t digest;                /* DIGEST */
	uint64_t ticks;                 /* CLOCK */
	const char *text;               /* ERROR: the reason, made printable */
	uint32_t npfns;                 /* PAGE_REQUEST: mig_section_pfn() */
	uint32_t hart;                  /* CPU */
	char name[MIG_NAME_MAX];        /* DEVICE */
	uint32_t version;               /* CPU, DEVICE: state version */
	const uint8_t *state;           /* CPU, DEVICE: the state blob */
	size_t state_len;
	uint32_t disk;                  /* DISK, DISK_DIGEST: which image */
	bool disk_zero;                 /* DISK: a zero extent (no data) */
	uint64_t disk_off, disk_len;    /* DISK: the extent */
	const uint8_t *disk_data;       /* DISK: disk_len bytes unless zero */
	uint64_t round;                 /* SYNC */
};

/* Read the stream header and the peer's CONFIG section. An ERROR section
 * in its place fails with the peer's reason. */
int mig_read_config(struct mig_stream *s, struct mig_config *cfg);
/* A page channel's header and JOIN section (mig_write_join); index and
 * count are checked against nothing: the caller does that. */
int mig_read_join(struct mig_stream *s, uint8_t nonce[MIG_JOIN_NONCE], uint32_t *index,
		  uint32_t *count);
/* Where received pages go instead of RAM (post-copy keeps pages the guest
 * already has): called with each decoded page. */
typedef void (*mig_page_sink)(void *opaque, uint64_t pfn, const void *page);
void mig_stream_set_sink(struct mig_stream *s, mig_page_sink sink, void *opaque);
/* Read, verify and decode the next section. RAM sections are written into
 * ram (ram_size bytes) or given to the sink; with neither they are an
 * error. ram_size also bounds PAGE_REQUEST page numbers (0: unchecked). */
int mig_read_section(struct mig_stream *s, struct mig_section *sec, void *ram,
		     uint64_t ram_size);
/* Read a section and require `type` (control messages: no RAM). An ERROR
 * section's reason, another type or the stream's error goes to why. */
int mig_expect(struct mig_stream *s, uint32_t type, char *why, size_t len);
/* The i-th page number of a PAGE_REQUEST (i < sec->npfns). */
uint64_t mig_section_pfn(const struct mig_section *sec, uint32_t i);
/* "ram", "device", ... or NULL for a type this build does not know. */
const char *mig_section_name(uint32_t type);

/* ---- Helpers -------------------------------------------------------------------- */
/* Digest of RAM: xxh3 of each 4 KiB page, then xxh3 of those hashes and
 * the length, so the pages can be hashed in parallel later. */
uint64_t mig_ram_digest(const void *ram, size_t len);
/* The same digest from per-page hashes (mig_page_hash of each 4 KiB page
 * of len bytes), for a side that hashed its pages as they arrived. */
uint64_t mig_page_hash(const void *page);
uint64_t mig_digest_of_hashes(const uint64_t *hashes, size_t npages, size_t len);
bool mig_page_is_zero(const void *page);
/* A disk's digest is mig_digest_of_hashes() over mig_block_hash() of each
 * MIG_DISK_BLOCK of the image (the last may be shorter) and its size. */
uint64_t mig_block_hash(const void *data, size_t len);

/* Token bucket: mig_rate_take() spends n bytes at time now_ns and returns
 * how many ns to wait before going on (0: none). Arithmetic only. */
struct mig_rate {
	uint64_t bytes_per_sec;         /* 0: no cap */
	uint64_t burst;                 /* bucket size, bytes */
	int64_t tokens;                 /* negative: bytes owed */
	uint64_t last_ns;
	bool started;
};
void mig_rate_init(struct mig_rate *r, uint64_t bytes_per_sec);
uint64_t mig_rate_take(struct mig_rate *r, uint64_t n, uint64_t now_ns);

#endif
