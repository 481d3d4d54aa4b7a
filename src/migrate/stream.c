/*
 * stream.c - the migration stream (see stream.h, docs/stream.md).
 *
 * Transport: writes gather in a 1 MiB buffer; a big payload (a RAM batch)
 * goes out with the buffer in one writev instead of being copied. Reads
 * take exactly what the next section needs, no more, so poll() on the fd
 * still tells whether a section is coming; the payload is read whole into
 * memory, growing the buffer only as bytes arrive (a lying length costs
 * nothing until the bytes exist). Each syscall waits for the peer at most
 * the timeout (poll), and the token bucket paces the writes. One thread
 * may read while another writes (post-copy does); not two of either.
 *
 * Sections: the reader looks the type up in one table (name and payload
 * size limits), reads the payload and the checksum, verifies it, and only
 * then decodes the payload by type. So a corrupt section never reaches
 * guest RAM, and a hostile but well-checksummed one is checked field by
 * field: every page number against the RAM size, every zstd page against
 * its exact size, every string for length and printable bytes.
 *
 * Pages: a zero page is its page number alone. Other pages go raw, or,
 * with compression on, as zstd when that saves more than 1/8 of the page:
 * the compressor writes straight into the batch with room for only that
 * much, so a page that does not pay fails fast and goes raw.
 */
#include "migrate/stream.h"
#include "migrate/channel.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY         /* XXH64_state_t on the stack */
#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#define PAGE            MIG_PAGE_SIZE
#define WBUF_SIZE       (1u << 20)
#define HDR_BYTES       16              /* stream header; section header */
#define SUM_BYTES       8
#define ENTRY_MAX       (8 + 1 + PAGE)  /* the largest page entry */
#define BATCH_CAP       (4 + MIG_BATCH_PAGES * ENTRY_MAX)
#define GROW_STEP       (1u << 20)      /* payload buffer growth while reading */
#define QUICK_WRITE     (64u << 10)     /* quick start: write when this much is ready */

struct mig_stream {
	struct mig_channel *ch;
	int timeout_ms;
	struct mig_rate rate;

	bool failed;
	bool write_broken;              /* a write failed: sending is pointless */
	int write_errno;                /* why, when that is the stream's failure (else 0) */
	bool conn_lost;                 /* the failure is the connection's, not the bytes' */
	bool peer_gave_up;              /* the failure is an ERROR section the peer sent */
	char error[320];
	uint64_t bytes_out, bytes_in;

	/* writing */
	uint8_t *wbuf;
	size_t wlen;
	uint8_t *batch;                 /* RAM section being built */
	size_t batch_len;
	unsigned batch_pages;
	bool compress;
	uint64_t quick_until;           /* mig_stream_set_quick_start */
	int zstd_level;
	ZSTD_CCtx *cctx;
	struct mig_page_stats stats;

	/* reading */
	uint8_t *payload;               /* the last section's payload + NUL */
	size_t payload_cap;
	ZSTD_DCtx *dctx;
	uint8_t scratch[PAGE];          /* one decoded page */
	uint8_t *extent;                /* one decoded ZSTD disk extent */
	mig_page_sink sink;
	void *sink_opaque;
};

/* ---- Errors and small helpers --------------------------------------------------- */

static int fail(struct mig_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int fail(struct mig_stream *s, const char *fmt, ...)
{
	if (!s->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(s->error, sizeof(s->error), fmt, ap);
		va_end(ap);
		s->failed = true;
	}
	return -1;
}

int mig_stream_fail(struct mig_stream *s, const char *fmt, ...)
{
	if (!s->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(s->error, sizeof(s->error), fmt, ap);
		va_end(ap);
		s->failed = true;
	}
	return -1;
}

/* Out of memory fails the stream (and so the migration), never the VM. */
static void *stream_alloc(struct mig_stream *s, size_t n, const char *what)
{
	void *p = malloc(n);
	if (!p)
		fail(s, "migration stream: out of memory for %s (%zu bytes)", what, n);
	return p;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
	return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- The section table ---------------------------------------------------------- */

struct section_kind {
	uint32_t type;
	const char *name;
	uint64_t min_len, max_len;      /* payload bytes */
};

static const struct section_kind section_kinds[] = {
	{ MIG_SEC_CONFIG,          "config",          2,  64u << 10 },
	{ MIG_SEC_RAM,             "ram",             4,  16u << 20 },
	{ MIG_SEC_CPU,             "cpu",             8,  16u << 20 },
	{ MIG_SEC_DEVICE,          "device",          7,  16u << 20 },
	{ MIG_SEC_CLOCK,           "clock",           8,  8 },
	{ MIG_SEC_DIGEST,          "digest",          8,  8 },
	{ MIG_SEC_END,             "end",             0,  0 },
	{ MIG_SEC_DISK,            "disk",            MIG_DISK_HDR,
						      MIG_DISK_HDR + MIG_DISK_EXTENT_MAX },
	{ MIG_SEC_DISK_DIGEST,     "disk-digest",     16, 16 },
	{ MIG_SEC_FT_WRITE,        "ft-write",        MIG_FT_WRITE_HDR + MIG_FT_SECTOR,
						      MIG_FT_WRITE_HDR + MIG_FT_WRITE_MAX },
	{ MIG_SEC_SYNC,            "sync",            8,  8 },
	{ MIG_SEC_READY,           "ready",           0,  4096 },
	{ MIG_SEC_ACK,             "ack",             0,  4096 },
	{ MIG_SEC_ERROR,           "error",           0,  4096 },
	{ MIG_SEC_RELEASED,        "released",        0,  4096 },
	{ MIG_SEC_STARTED,         "started",         0,  4096 },
	{ MIG_SEC_POSTCOPY,        "postcopy",        0,  MIG_SECTION_MAX },
	{ MIG_SEC_PAGE_REQUEST,    "page-request",    8,  64u << 10 },
	{ MIG_SEC_HANDOFF_CONFIRM, "handoff-confirm", 0,  4096 },
	{ MIG_SEC_EPOCH,           "epoch",           8,  8 },
	{ MIG_SEC_EPOCH_ACK,       "epoch-ack",       8,  8 },
	{ MIG_SEC_JOIN,            "join",            MIG_JOIN_NONCE + 8, MIG_JOIN_NONCE + 8 },
	{ MIG_SEC_FT_ALIVE,        "ft-alive",        0,  0 },
};

static const struct section_kind *section_kind(uint32_t type)
{
	for (size_t i = 0; i < sizeof(section_kinds) / sizeof(section_kinds[0]); i++)
		if (section_kinds[i].type == type)
			return &section_kinds[i];
	return NULL;
}

const char *mig_section_name(uint32_t type)
{
	const struct section_kind *k = section_kind(type);
	return k ? k->name : NULL;
}

static const char *type_name(uint32_t type)
{
	const char *n = mig_section_name(type);
	return n ? n : "unknown";
}

/* ---- Life cycle and settings ---------------------------------------------------- */

struct mig_stream *mig_stream_new_channel(struct mig_channel *ch)
{
	struct mig_stream *s = calloc(1, sizeof(*s));
	if (!s) {
		mig_channel_close(ch);
		return NULL;    /* the caller fails its migration, not the VM */
	}
	s->ch = ch;
	s->zstd_level = MIG_ZSTD_LEVEL;
	mig_rate_init(&s->rate, 0);
	return s;
}

struct mig_stream *mig_stream_new(int fd)
{
	struct mig_channel *ch = mig_channel_wrap(fd);
	return ch ? mig_stream_new_channel(ch) : NULL;
}

struct mig_channel *mig_stream_channel(struct mig_stream *s)
{
	return s->ch;
}

int mig_stream_wait_readable(struct mig_stream *s, int timeout_ms)
{
	return mig_channel_wait_readable(s->ch, timeout_ms);
}

void mig_stream_free(struct mig_stream *s)
{
	if (!s)
		return;
	free(s->wbuf);
	free(s->batch);
	free(s->payload);
	free(s->extent);
	ZSTD_freeCCtx(s->cctx);
	ZSTD_freeDCtx(s->dctx);
	mig_channel_close(s->ch);
	free(s);
}

void mig_stream_set_timeout(struct mig_stream *s, int timeout_ms)
{
	s->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
	mig_channel_set_timeout(s->ch, s->timeout_ms);
}

void mig_stream_set_rate(struct mig_stream *s, uint64_t bytes_per_sec)
{
	if (bytes_per_sec != s->rate.bytes_per_sec)
		mig_rate_init(&s->rate, bytes_per_sec);
}

void mig_stream_set_compress(struct mig_stream *s, bool on)
{
	s->compress = on;
}

void mig_stream_set_quick_start(struct mig_stream *s, uint64_t bytes)
{
	s->quick_until = bytes;
}

void mig_stream_set_zstd_level(struct mig_stream *s, int level)
{
	s->zstd_level = level;
}

void mig_stream_set_sink(struct mig_stream *s, mig_page_sink sink, void *opaque)
{
	s->sink = sink;
	s->sink_opaque = opaque;
}

uint64_t mig_stream_bytes(const struct mig_stream *s) { return s->bytes_out + s->bytes_in; }
uint64_t mig_stream_bytes_buffered(const struct mig_stream *s) { return s->wlen; }
uint64_t mig_stream_bytes_out(const struct mig_stream *s) { return s->bytes_out; }
uint64_t mig_stream_bytes_in(const struct mig_stream *s) { return s->bytes_in; }
bool mig_stream_failed(const struct mig_stream *s) { return s->failed; }
bool mig_stream_peer_gave_up(const struct mig_stream *s) { return s->peer_gave_up; }

int mig_stream_resume_reads(struct mig_stream *s)
{
	if (!s->failed || (s->write_errno != EPIPE && s->write_errno != ECONNRESET))
		return -1;
	s->failed = false;      /* writes stay broken: mig_send_error says nothing */
	s->write_errno = 0;
	s->conn_lost = false;
	s->error[0] = 0;
	return 0;
}

bool mig_stream_connection_lost(const struct mig_stream *s) { return s->failed && s->conn_lost; }

const char *mig_stream_error(const struct mig_stream *s)
{
	return s->failed ? s->error : "no error";
}

void mig_stream_page_stats(const struct mig_stream *s, struct mig_page_stats *st)
{
	*st = s->stats;
}

/* ---- Bandwidth cap -------------------------------------------------------------- */

void mig_rate_init(struct mig_rate *r, uint64_t bytes_per_sec)
{
	memset(r, 0, sizeof(*r));
	r->bytes_per_sec = bytes_per_sec;
	/* 50 ms worth of bytes, at least 64 KiB: smooth, yet not one syscall
	 * a sleep on slow links */
	r->burst = bytes_per_sec / 20;
	if (r->burst < (64u << 10))
		r->burst = 64u << 10;
}

uint64_t mig_rate_take(struct mig_rate *r, uint64_t n, uint64_t now_ns)
{
	if (!r->bytes_per_sec)
		return 0;
	if (!r->started) {
		r->started = true;
		r->tokens = (int64_t)r->burst;
		r->last_ns = now_ns;
	}
	if (now_ns > r->last_ns) {
		/* refill at the rate, pay any debt, never beyond the burst */
		__int128 add = (__int128)((unsigned __int128)(now_ns - r->last_ns) *
					  r->bytes_per_sec / 1000000000u);
		__int128 room = (__int128)r->burst - r->tokens;
		r->tokens += (int64_t)(add < room ? add : room);
		r->last_ns = now_ns;
	}
	const int64_t floor = -(INT64_MAX / 4);
	if (n > (uint64_t)INT64_MAX / 4)
		n = (uint64_t)INT64_MAX / 4;
	r->tokens -= (int64_t)n;
	if (r->tokens < floor)
		r->tokens = floor;
	if (r->tokens >= 0)
		return 0;
	return (uint64_t)((unsigned __int128)(uint64_t)-r->tokens * 1000000000u /
			  r->bytes_per_sec);
}

static void rate_pace(struct mig_stream *s, size_t n)
{
	uint64_t wait = mig_rate_take(&s->rate, n, now_ns());
	if (wait) {
		struct timespec ts = { (time_t)(wait / 1000000000u),
				       (long)(wait % 1000000000u) };
		while (nanosleep(&ts, &ts) && errno == EINTR)
			;
	}
}

/* ---- Raw I/O -------------------------------------------------------------------- */

/* The channel gave up on a wait: say why, in the stream's words. */
static int io_failed(struct mig_stream *s, bool reading)
{
	int err = errno;
	if (err == ETIMEDOUT)
		return fail(s, "migration stream: the peer has not %s for %d ms: is it still "
			    "alive?", reading ? "sent anything" : "read anything",
			    s->timeout_ms ? s->timeout_ms : MIG_CHANNEL_IO_TIMEOUT_MS);
	if (err == ECANCELED)
		return fail(s, "migration stream: stopped: this process is quitting");
	if (err == EPROTO)
		return fail(s, "migration stream: %s", mig_channel_error(s->ch));
	return -2;      /* not a wait: the caller words it */
}

static int write_failed(struct mig_stream *s, int err)
{
	s->write_broken = true;
	if (!s->failed)
		s->write_errno = err;
	s->conn_lost = s->conn_lost || !s->failed;
	errno = err;
	if (io_failed(s, false) == -1)
		return -1;
	if (err == EAGAIN || err == EWOULDBLOCK)
		return fail(s, "migration stream: sending timed out: the peer does not read "
			    "(is it still alive?)");
	if (err == EPIPE || err == ECONNRESET)
		return fail(s, "migration stream: the peer closed the connection (%s)",
			    strerror(err));
	return fail(s, "migration stream: write failed: %s", strerror(err));
}

/* Write all of iov[0..cnt) (modifies iov). */
static int write_iov(struct mig_stream *s, struct iovec *iov, int cnt)
{
	while (cnt && !iov->iov_len) {
		iov++;
		cnt--;
	}
	while (cnt) {
		ssize_t r = mig_channel_writev(s->ch, iov, cnt);
		if (r < 0)
			return write_failed(s, errno);
		if (r == 0)
			return write_failed(s, EPIPE);
		rate_pace(s, (size_t)r);
		size_t done = (size_t)r;
		while (cnt && done >= iov->iov_len) {
			done -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + done;
			iov->iov_len -= done;
		}
	}
	return 0;
}

static int flush_wbuf(struct mig_stream *s)
{
	if (!s->wlen)
		return 0;
	struct iovec iov = { s->wbuf, s->wlen };
	s->wlen = 0;
	return write_iov(s, &iov, 1);
}

int mig_flush(struct mig_stream *s)
{
	if (s->failed || mig_flush_pages(s))
		return -1;
	return flush_wbuf(s);
}

/* Queue parts[] as one unit: buffered, or with the buffer in one writev
 * when large. */
static int out_put(struct mig_stream *s, struct iovec *parts, int cnt)
{
	size_t n = 0;
	for (int i = 0; i < cnt; i++)
		n += parts[i].iov_len;
	if (!s->wbuf && !(s->wbuf = stream_alloc(s, WBUF_SIZE, "the write buffer")))
		return -1;
	s->bytes_out += n;
	if (n > WBUF_SIZE - s->wlen && n >= WBUF_SIZE / 4) {
		struct iovec iov[8];
		int k = 0;
		iov[k++] = (struct iovec){ s->wbuf, s->wlen };
		for (int i = 0; i < cnt && k < 8; i++)
			iov[k++] = parts[i];
		s->wlen = 0;
		return write_iov(s, iov, k);
	}
	if (n > WBUF_SIZE - s->wlen && flush_wbuf(s))
		return -1;
	for (int i = 0; i < cnt; i++) {
		if (!parts[i].iov_len)
			continue;
		memcpy(s->wbuf + s->wlen, parts[i].iov_base, parts[i].iov_len);
		s->wlen += parts[i].iov_len;
	}
	return 0;
}

/* Read exactly n bytes; `what` names them for the error message. There
 * is no read-ahead: what the stream has not consumed is still in the fd,
 * so callers may poll() the fd to learn whether a section is coming. */
static int in_get(struct mig_stream *s, void *dst, size_t n, const char *what)
{
	uint8_t *d = dst;
	while (n) {
		ssize_t r = mig_channel_read(s->ch, d, n);
		if (r > 0) {
			s->bytes_in += (uint64_t)r;
			d += r;
			n -= (size_t)r;
			continue;
		}
		s->conn_lost = s->conn_lost || !s->failed;
		if (r == 0)
			return fail(s, "migration stream: truncated at offset %llu, in %s: the "
				    "peer closed the connection or the file is incomplete",
				    (unsigned long long)s->bytes_in, what);
		if (io_failed(s, true) == -1)
			return -1;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return fail(s, "migration stream: receiving timed out at offset %llu: "
				    "the peer sent nothing (is it still alive?)",
				    (unsigned long long)s->bytes_in);
		return fail(s, "migration stream: read failed at offset %llu: %s",
			    (unsigned long long)s->bytes_in, strerror(errno));
	}
	return 0;
}

/* ---- Writing sections ----------------------------------------------------------- */

static int emit_section(struct mig_stream *s, uint32_t type, const void *data, size_t len)
{
	uint8_t hdr[HDR_BYTES], sum[SUM_BYTES];
	XXH64_state_t h;
	if (s->failed)
		return -1;
	if (len > MIG_SECTION_MAX)
		return fail(s, "migration stream: a '%s' section of %zu bytes is over the "
			    "%u-byte limit", type_name(type), len, MIG_SECTION_MAX);
	put_le32(hdr, type);
	put_le32(hdr + 4, 0);
	put_le64(hdr + 8, len);
	XXH64_reset(&h, 0);
	XXH64_update(&h, hdr, sizeof(hdr));
	if (len)
		XXH64_update(&h, data, len);
	put_le64(sum, XXH64_digest(&h));
	struct iovec parts[3] = {
		{ hdr, sizeof(hdr) }, { (void *)data, len }, { sum, sizeof(sum) },
	};
	return out_put(s, parts, 3);
}

int mig_write_section(struct mig_stream *s, uint32_t type, const void *data, size_t len)
{
	if (!section_kind(type))
		return fail(s, "migration stream: cannot write section type %u: no such type",
			    type);
	if (mig_flush_pages(s))
		return -1;
	return emit_section(s, type, data, len);
}

int mig_write_cpu(struct mig_stream *s, uint32_t hart, uint32_t version,
		  const void *state, size_t len)
{
	if (len > MIG_SECTION_MAX - 8)
		return fail(s, "migration stream: hart %u state of %zu bytes is too large",
			    hart, len);
	uint8_t *p = stream_alloc(s, 8 + len, "a hart's state");
	if (!p)
		return -1;
	put_le32(p, hart);
	put_le32(p + 4, version);
	if (len)
		memcpy(p + 8, state, len);
	int r = mig_write_section(s, MIG_SEC_CPU, p, 8 + len);
	free(p);
	return r;
}

static bool name_ok(const char *name, size_t n)
{
	if (n == 0 || n >= MIG_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (name[i] <= ' ' || name[i] > '~')
			return false;
	return true;
}

int mig_write_device(struct mig_stream *s, const char *name, uint32_t version,
		     const void *state, size_t len)
{
	size_t n = strlen(name);
	if (!name_ok(name, n))
		return fail(s, "migration stream: bad device name '%s' (1 to %d printable "
			    "characters, no spaces)", name, MIG_NAME_MAX - 1);
	if (len > MIG_SECTION_MAX - 6 - n)
		return fail(s, "migration stream: device '%s' state of %zu bytes is too large",
			    name, len);
	uint8_t *p = stream_alloc(s, 6 + n + len, "a device's state");
	if (!p)
		return -1;
	p[0] = (uint8_t)n;
	p[1] = (uint8_t)(n >> 8);
	memcpy(p + 2, name, n);
	put_le32(p + 2 + n, version);
	if (len)
		memcpy(p + 6 + n, state, len);
	int r = mig_write_section(s, MIG_SEC_DEVICE, p, 6 + n + len);
	free(p);
	return r;
}

int mig_write_clock(struct mig_stream *s, uint64_t ticks)
{
	uint8_t b[8];
	put_le64(b, ticks);
	return mig_write_section(s, MIG_SEC_CLOCK, b, sizeof(b));
}

int mig_write_digest(struct mig_stream *s, uint64_t digest)
{
	uint8_t b[8];
	put_le64(b, digest);
	return mig_write_section(s, MIG_SEC_DIGEST, b, sizeof(b));
}

/* zstd of a disk extent into dst (room for len bytes), if that saves more
 * than 1/8 of it: its size, or 0. */
static size_t extent_compress(struct mig_stream *s, uint8_t *dst, const void *data,
			      uint64_t len)
{
	if (!s->cctx && !(s->cctx = ZSTD_createCCtx()))
		return 0;
	size_t keep = (size_t)(len - len / 8 - 1);
	size_t c = ZSTD_compressCCtx(s->cctx, dst, keep, data, (size_t)len, s->zstd_level);
	if (ZSTD_isError(c) || c > keep) {
		s->stats.disk_zstd_rejected++;
		return 0;
	}
	s->stats.disk_zstd++;
	s->stats.disk_zstd_bytes += c;
	return c;
}

int mig_write_disk(struct mig_stream *s, uint32_t disk, uint64_t off, const void *data,
		   uint64_t len)
{
	if (!len || len > MIG_DISK_EXTENT_MAX || off % MIG_DISK_BLOCK)
		return fail(s, "migration stream: a disk extent of %llu bytes at %llu is not "
			    "one we send", (unsigned long long)len, (unsigned long long)off);
	size_t n = MIG_DISK_HDR + (data ? (size_t)len : 0);
	uint8_t *p = stream_alloc(s, n, "a disk extent");
	if (!p)
		return -1;
	uint32_t kind = data ? MIG_DISK_DATA : MIG_DISK_ZERO;
	/* the pages' rule: zstd when on and it saves more than 1/8 */
	size_t c = data && s->compress ? extent_compress(s, p + MIG_DISK_HDR, data, len) : 0;
	if (c) {
		kind = MIG_DISK_ZSTD;
		n = MIG_DISK_HDR + c;
	} else if (data) {
		memcpy(p + MIG_DISK_HDR, data, (size_t)len);
	}
	put_le32(p, disk);
	put_le32(p + 4, kind);
	put_le64(p + 8, off);
	put_le64(p + 16, len);
	int r = mig_write_section(s, MIG_SEC_DISK, p, n);
	free(p);
	return r;
}

int mig_write_disk_digest(struct mig_stream *s, uint32_t disk, uint64_t digest)
{
	uint8_t b[16];
	put_le32(b, disk);
	put_le32(b + 4, 0);
	put_le64(b + 8, digest);
	return mig_write_section(s, MIG_SEC_DISK_DIGEST, b, sizeof(b));
}

int mig_write_sync(struct mig_stream *s, uint64_t round)
{
	uint8_t b[8];
	put_le64(b, round);
	return mig_write_section(s, MIG_SEC_SYNC, b, sizeof(b));
}

int mig_write_end(struct mig_stream *s)
{
	return mig_write_section(s, MIG_SEC_END, NULL, 0);
}

int mig_write_page_request(struct mig_stream *s, const uint64_t *pfns, size_t n)
{
	uint8_t b[512];
	if (n == 0)
		return 0;
	while (n) {
		size_t k = n < sizeof(b) / 8 ? n : sizeof(b) / 8;
		for (size_t i = 0; i < k; i++)
			put_le64(b + 8 * i, pfns[i]);
		if (mig_write_section(s, MIG_SEC_PAGE_REQUEST, b, 8 * k))
			return -1;
		pfns += k;
		n -= k;
	}
	return 0;
}

void mig_send_error(struct mig_stream *s, const char *why)
{
	if (s->write_broken)
		return;
	bool failed = s->failed;
	size_t n = strlen(why);
	if (n > 4096)
		n = 4096;
	/* say why even after a read-side failure; pages not yet in a
	 * section are dropped, whole sections already queued go first */
	s->failed = false;
	s->batch_pages = 0;
	s->batch_len = 0;
	if (emit_section(s, MIG_SEC_ERROR, why, n) == 0)
		flush_wbuf(s);
	s->failed = failed || s->failed;
}

/* ---- Pages ---------------------------------------------------------------------- */

bool mig_page_is_zero(const void *page)
{
	const uint8_t *p = page;
	uint64_t w;
	memcpy(&w, p, 8);
	/* the first word is zero and every byte equals the one 8 before */
	return w == 0 && memcmp(p, p + 8, PAGE - 8) == 0;
}

int mig_flush_pages(struct mig_stream *s)
{
	if (s->failed)
		return -1;
	if (!s->batch_pages)
		return 0;
	put_le32(s->batch, s->batch_pages);
	size_t len = s->batch_len;
	s->batch_pages = 0;
	s->batch_len = 0;
	return emit_section(s, MIG_SEC_RAM, s->batch, len);
}

/* Compress page into dst if that saves more than 1/8; its size, or 0. */
static size_t page_compress(struct mig_stream *s, uint8_t *dst, const void *page)
{
	if (!s->cctx) {
		s->cctx = ZSTD_createCCtx();
		if (!s->cctx)
			return 0;
	}
	size_t c = ZSTD_compressCCtx(s->cctx, dst, MIG_ZSTD_KEEP_MAX, page, PAGE,
				     s->zstd_level);
	if (ZSTD_isError(c) || c > MIG_ZSTD_KEEP_MAX) {
		s->stats.zstd_rejected++;
		return 0;
	}
	return c;
}

int mig_put_page(struct mig_stream *s, uint64_t pfn, const void *page)
{
	if (s->failed)
		return -1;
	if (!s->batch && !(s->batch = stream_alloc(s, BATCH_CAP, "a batch of pages")))
		return -1;
	if (!s->batch_pages)
		s->batch_len = 4;
	uint8_t *p = s->batch + s->batch_len;
	put_le64(p, pfn);
	p += 8;
	if (mig_page_is_zero(page)) {
		*p++ = MIG_PAGE_ZERO;
		s->stats.zero++;
	} else {
		size_t c = s->compress ? page_compress(s, p + 5, page) : 0;
		if (c) {
			*p = MIG_PAGE_ZSTD;
			put_le32(p + 1, (uint32_t)c);
			p += 5 + c;
			s->stats.zstd++;
			s->stats.zstd_bytes += c;
		} else {
			*p++ = MIG_PAGE_RAW;
			memcpy(p, page, PAGE);
			p += PAGE;
			s->stats.raw++;
		}
	}
	s->batch_len = (size_t)(p - s->batch);
	bool quick = s->bytes_out < s->quick_until;
	if (++s->batch_pages < (quick ? MIG_QUICK_PAGES : MIG_BATCH_PAGES))
		return 0;
	if (mig_flush_pages(s))
		return -1;
	/* TCP's first flight is ten segments, whatever their size: write
	 * full ones, never a section at a time */
	return quick && s->wlen >= QUICK_WRITE ? flush_wbuf(s) : 0;
}

/* ---- Reading sections ----------------------------------------------------------- */

/* A bounds-checked cursor over a verified payload. */
struct cursor {
	const uint8_t *p, *end;
};

static bool cur_has(const struct cursor *c, size_t n)
{
	return (size_t)(c->end - c->p) >= n;
}

/* Read the payload of n bytes, growing the buffer as the bytes arrive. */
static int read_payload(struct mig_stream *s, uint64_t n, const char *name)
{
	char what[64];
	snprintf(what, sizeof(what), "the payload of a '%s' section", name);
	uint64_t got = 0;
	do {
		uint64_t want = n - got < GROW_STEP ? n - got : GROW_STEP;
		if (got + want + 1 > s->payload_cap) {
			size_t cap = (size_t)(got + want + 1);
			uint8_t *p = realloc(s->payload, cap);
			if (!p)
				return fail(s, "migration stream: out of memory for a %llu-byte "
					    "'%s' section", (unsigned long long)n, name);
			s->payload = p;
			s->payload_cap = cap;
		}
		if (in_get(s, s->payload + got, (size_t)want, what))
			return -1;
		got += want;
	} while (got < n);
	s->payload[n] = 0;
	return 0;
}

/* The rest of a framed section whose 16 header bytes were read already
 * (from stream offset `at`): payload, checksum, verified. */
static int read_frame_after(struct mig_stream *s, struct mig_section *sec,
			    const uint8_t *hdr, uint64_t at);

/* Read one framed section and verify its checksum (no decoding). */
static int read_frame(struct mig_stream *s, struct mig_section *sec)
{
	uint8_t hdr[HDR_BYTES];
	uint64_t at = s->bytes_in;
	if (s->failed)
		return -1;
	if (in_get(s, hdr, sizeof(hdr), "a section header"))
		return -1;
	return read_frame_after(s, sec, hdr, at);
}

static int read_frame_after(struct mig_stream *s, struct mig_section *sec,
			    const uint8_t *hdr, uint64_t at_offset)
{
	uint8_t sum[SUM_BYTES];
	XXH64_state_t h;
	memset(sec, 0, sizeof(*sec));
	if (s->failed)
		return -1;
	sec->offset = at_offset;
	sec->type = get_le32(hdr);
	sec->flags = get_le32(hdr + 4);
	sec->len = get_le64(hdr + 8);
	const struct section_kind *k = section_kind(sec->type);
	unsigned long long at = (unsigned long long)sec->offset;
	if (!k)
		return fail(s, "migration stream: unknown section type %u (%#x) at offset %llu: "
			    "corrupt stream, or a newer ferry wrote it", sec->type, sec->type, at);
	if (sec->flags)
		return fail(s, "migration stream: section '%s' at offset %llu has unknown "
			    "flags %#x", k->name, at, sec->flags);
	if (sec->len < k->min_len || sec->len > k->max_len)
		return fail(s, "migration stream: section '%s' at offset %llu claims %llu bytes; "
			    "it must have %llu to %llu", k->name, at,
			    (unsigned long long)sec->len, (unsigned long long)k->min_len,
			    (unsigned long long)k->max_len);
	if (read_payload(s, sec->len, k->name) ||
	    in_get(s, sum, sizeof(sum), "a section checksum"))
		return -1;
	XXH64_reset(&h, 0);
	XXH64_update(&h, hdr, HDR_BYTES);
	XXH64_update(&h, s->payload, (size_t)sec->len);
	if (XXH64_digest(&h) != get_le64(sum))
		return fail(s, "migration stream: section '%s' at offset %llu fails its "
			    "checksum: the stream is corrupt", k->name, at);
	sec->data = s->payload;
	return 0;
}

static int zstd_page(struct mig_stream *s, uint64_t pfn, const uint8_t *src, size_t n)
{
	if (!s->dctx) {
		s->dctx = ZSTD_createDCtx();
		if (!s->dctx)
			return fail(s, "migration stream: out of memory for zstd");
	}
	size_t got = ZSTD_decompressDCtx(s->dctx, s->scratch, PAGE, src, n);
	if (ZSTD_isError(got)) {
		if (ZSTD_getErrorCode(got) == ZSTD_error_dstSize_tooSmall)
			return fail(s, "migration stream: compressed page %llu decompresses to "
				    "more than %u bytes", (unsigned long long)pfn, PAGE);
		return fail(s, "migration stream: compressed page %llu is corrupt: %s",
			    (unsigned long long)pfn, ZSTD_getErrorName(got));
	}
	if (got != PAGE)
		return fail(s, "migration stream: compressed page %llu decompresses to %zu "
			    "bytes, not %u", (unsigned long long)pfn, got, PAGE);
	return 0;
}

/* Decode one page entry into the scratch page (or straight into RAM). */
static int ram_entry(struct mig_stream *s, struct cursor *c, uint8_t *ram, uint64_t npages,
		     uint32_t i)
{
	if (!cur_has(c, 9))
		return fail(s, "migration stream: RAM section ends inside page entry %u", i);
	uint64_t pfn = get_le64(c->p);
	uint8_t enc = c->p[8];
	c->p += 9;
	if (pfn >= npages)
		return fail(s, "migration stream: page %llu (offset %#llx) is beyond the end of "
			    "guest RAM (%llu pages)", (unsigned long long)pfn,
			    (unsigned long long)pfn * PAGE, (unsigned long long)npages);
	uint8_t *dst = s->sink ? s->scratch : ram + pfn * PAGE;
	switch (enc) {
	case MIG_PAGE_ZERO:
		memset(dst, 0, PAGE);
		break;
	case MIG_PAGE_RAW:
		if (!cur_has(c, PAGE))
			return fail(s, "migration stream: raw page %llu is cut short",
				    (unsigned long long)pfn);
		memcpy(dst, c->p, PAGE);
		c->p += PAGE;
		break;
	case MIG_PAGE_ZSTD: {
		if (!cur_has(c, 4))
			return fail(s, "migration stream: compressed page %llu is cut short",
				    (unsigned long long)pfn);
		uint32_t n = get_le32(c->p);
		c->p += 4;
		if (n == 0 || n > PAGE || !cur_has(c, n))
			return fail(s, "migration stream: compressed page %llu claims %u bytes "
				    "(1 to %u, within the section)", (unsigned long long)pfn, n,
				    PAGE);
		if (zstd_page(s, pfn, c->p, n))
			return -1;
		c->p += n;
		if (dst != s->scratch)
			memcpy(dst, s->scratch, PAGE);
		break;
	}
	default:
		return fail(s, "migration stream: page %llu has unknown encoding %u",
			    (unsigned long long)pfn, enc);
	}
	if (s->sink)
		s->sink(s->sink_opaque, pfn, s->scratch);
	return 0;
}

static int decode_ram(struct mig_stream *s, struct mig_section *sec, uint8_t *ram,
		      uint64_t ram_size)
{
	struct cursor c = { sec->data, sec->data + sec->len };
	if (!ram && !s->sink)
		return fail(s, "migration stream: a 'ram' section at offset %llu, where no "
			    "pages were expected", (unsigned long long)sec->offset);
	uint32_t n = get_le32(c.p);
	c.p += 4;
	if (n == 0 || n > sec->len / 9)
		return fail(s, "migration stream: RAM section at offset %llu claims %u pages "
			    "in %llu bytes", (unsigned long long)sec->offset, n,
			    (unsigned long long)sec->len);
	uint64_t npages = ram_size / PAGE;
	for (uint32_t i = 0; i < n; i++)
		if (ram_entry(s, &c, ram, npages, i))
			return -1;
	if (c.p != c.end)
		return fail(s, "migration stream: %zu stray bytes after the pages of the RAM "
			    "section at offset %llu", (size_t)(c.end - c.p),
			    (unsigned long long)sec->offset);
	sec->pages = n;
	return 0;
}

static int decode_cpu(struct mig_stream *s, struct mig_section *sec)
{
	(void)s;
	sec->hart = get_le32(sec->data);
	sec->version = get_le32(sec->data + 4);
	sec->state = sec->data + 8;
	sec->state_len = (size_t)sec->len - 8;
	return 0;
}

static int decode_device(struct mig_stream *s, struct mig_section *sec)
{
	size_t n = (size_t)sec->data[0] | (size_t)sec->data[1] << 8;
	if (n + 6 > sec->len || !name_ok((const char *)sec->data + 2, n))
		return fail(s, "migration stream: device section at offset %llu has a bad "
			    "name (%zu bytes)", (unsigned long long)sec->offset, n);
	memcpy(sec->name, sec->data + 2, n);
	sec->name[n] = 0;
	sec->version = get_le32(sec->data + 2 + n);
	sec->state = sec->data + 6 + n;
	sec->state_len = (size_t)sec->len - 6 - n;
	return 0;
}

static int decode_error(struct mig_stream *s, struct mig_section *sec)
{
	(void)s;
	/* the peer's words end up in logs and replies: printable only */
	for (uint64_t i = 0; i < sec->len; i++)
		if (s->payload[i] < ' ' || s->payload[i] > '~')
			s->payload[i] = '?';
	sec->text = sec->len ? (const char *)sec->data : "(no reason given)";
	return 0;
}

static int decode_page_request(struct mig_stream *s, struct mig_section *sec,
			       uint64_t ram_size)
{
	if (sec->len % 8)
		return fail(s, "migration stream: page request at offset %llu is %llu bytes, "
			    "not a multiple of 8", (unsigned long long)sec->offset,
			    (unsigned long long)sec->len);
	sec->npfns = (uint32_t)(sec->len / 8);
	for (uint32_t i = 0; ram_size && i < sec->npfns; i++) {
		uint64_t pfn = mig_section_pfn(sec, i);
		if (pfn >= ram_size / PAGE)
			return fail(s, "migration stream: request for page %llu, beyond the end "
				    "of guest RAM (%llu pages)", (unsigned long long)pfn,
				    (unsigned long long)(ram_size / PAGE));
	}
	return 0;
}

uint64_t mig_section_pfn(const struct mig_section *sec, uint32_t i)
{
	if (sec->type != MIG_SEC_PAGE_REQUEST || i >= sec->npfns)
		return UINT64_MAX;
	return get_le64(sec->data + 8 * (size_t)i);
}

/* A ZSTD extent's data, decoded into the stream's extent buffer: exactly
 * disk_len bytes, or the stream fails. */
static int extent_decompress(struct mig_stream *s, struct mig_section *sec)
{
	if (!s->extent && !(s->extent = stream_alloc(s, MIG_DISK_EXTENT_MAX,
						     "a compressed disk extent")))
		return -1;
	if (!s->dctx && !(s->dctx = ZSTD_createDCtx()))
		return fail(s, "migration stream: out of memory for zstd");
	size_t got = ZSTD_decompressDCtx(s->dctx, s->extent, (size_t)sec->disk_len,
					 sec->data + MIG_DISK_HDR,
					 (size_t)sec->len - MIG_DISK_HDR);
	if (ZSTD_isError(got) || got != sec->disk_len)
		return fail(s, "migration stream: 'disk' section at offset %llu: compressed "
			    "extent does not decompress to its %llu bytes%s%s",
			    (unsigned long long)sec->offset, (unsigned long long)sec->disk_len,
			    ZSTD_isError(got) ? ": " : "",
			    ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
	sec->disk_data = s->extent;
	return 0;
}

/* The extent's shape; its bounds against the image are the grammar's. */
static int decode_disk(struct mig_stream *s, struct mig_section *sec)
{
	uint32_t kind = get_le32(sec->data + 4);
	sec->disk = get_le32(sec->data);
	sec->disk_off = get_le64(sec->data + 8);
	sec->disk_len = get_le64(sec->data + 16);
	sec->disk_zero = kind == MIG_DISK_ZERO;
	sec->disk_data = sec->data + MIG_DISK_HDR;
	const char *bad = NULL;
	uint64_t data_len = sec->len - MIG_DISK_HDR;
	if (kind != MIG_DISK_ZERO && kind != MIG_DISK_DATA && kind != MIG_DISK_ZSTD)
		bad = "unknown extent kind";
	else if (!sec->disk_len || sec->disk_len > MIG_DISK_EXTENT_MAX)
		bad = "extent length 0 or over 1 MiB";
	else if (sec->disk_off % MIG_DISK_BLOCK)
		bad = "extent not on a 64 KiB block";
	else if (kind == MIG_DISK_ZSTD ? !data_len || data_len >= sec->disk_len
		 : data_len != (sec->disk_zero ? 0 : sec->disk_len))
		bad = "payload length does not match the extent";
	if (bad)
		return fail(s, "migration stream: 'disk' section at offset %llu: %s",
			    (unsigned long long)sec->offset, bad);
	return kind == MIG_DISK_ZSTD ? extent_decompress(s, sec) : 0;
}

int mig_read_section(struct mig_stream *s, struct mig_section *sec, void *ram,
		     uint64_t ram_size)
{
	if (read_frame(s, sec))
		return -1;
	switch (sec->type) {
	case MIG_SEC_CONFIG:
		return fail(s, "migration stream: a second 'config' section at offset %llu",
			    (unsigned long long)sec->offset);
	case MIG_SEC_RAM:
		return decode_ram(s, sec, ram, ram_size);
	case MIG_SEC_CPU:
		return decode_cpu(s, sec);
	case MIG_SEC_DEVICE:
		return decode_device(s, sec);
	case MIG_SEC_CLOCK:
		sec->ticks = get_le64(sec->data);
		return 0;
	case MIG_SEC_DIGEST:
		sec->digest = get_le64(sec->data);
		return 0;
	case MIG_SEC_SYNC:
		sec->round = get_le64(sec->data);
		return 0;
	case MIG_SEC_ERROR:
		return decode_error(s, sec);
	case MIG_SEC_PAGE_REQUEST:
		return decode_page_request(s, sec, ram_size);
	case MIG_SEC_DISK:
		return decode_disk(s, sec);
	case MIG_SEC_DISK_DIGEST:
		sec->disk = get_le32(sec->data);
		sec->digest = get_le64(sec->data + 8);
		if (get_le32(sec->data + 4))
			return fail(s, "migration stream: 'disk-digest' at offset %llu: reserved "
				    "word not 0", (unsigned long long)sec->offset);
		return 0;
	}
	return 0;       /* END and control messages: nothing to decode */
}

int mig_expect(struct mig_stream *s, uint32_t type, char *why, size_t len)
{
	struct mig_section sec;
	if (mig_read_section(s, &sec, NULL, 0)) {
		snprintf(why, len, "%s", mig_stream_error(s));
		return -1;
	}
	if (sec.type == MIG_SEC_ERROR) {
		snprintf(why, len, "%s", sec.text);
		s->peer_gave_up = true;
		return fail(s, "migration stream: the peer gave up: %s", sec.text);
	}
	if (sec.type != type) {
		snprintf(why, len, "expected a '%s' section, got '%s' at offset %llu",
			 type_name(type), type_name(sec.type), (unsigned long long)sec.offset);
		return fail(s, "migration stream: %s", why);
	}
	return 0;
}

/* ---- Configuration: JSON in the CONFIG section ---------------------------------- */

void mig_config_init(struct mig_config *cfg, uint64_t ram_size, uint32_t harts,
		     const char *isa)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->version = MIG_VERSION;
	cfg->ram_size = ram_size;
	cfg->harts = harts;
	snprintf(cfg->isa, sizeof(cfg->isa), "%s", isa ? isa : "");
}

int mig_config_add_device(struct mig_config *cfg, const char *name, uint32_t version)
{
	if (!name_ok(name, strlen(name)))
		return -1;
	for (unsigned i = 0; i < cfg->ndevices; i++)
		if (!strcmp(cfg->devices[i].name, name)) {
			cfg->devices[i].version = version;
			return 0;
		}
	if (cfg->ndevices >= MIG_MAX_DEVICES)
		return -1;
	snprintf(cfg->devices[cfg->ndevices].name, MIG_NAME_MAX, "%s", name);
	cfg->devices[cfg->ndevices++].version = version;
	return 0;
}

static json_t *config_to_json(const struct mig_config *cfg)
{
	json_t *devs = json_array(), *disks = json_array();
	unsigned nd = cfg->ndevices < MIG_MAX_DEVICES ? cfg->ndevices : MIG_MAX_DEVICES;
	unsigned nk = cfg->ndisks < MIG_MAX_DISKS ? cfg->ndisks : MIG_MAX_DISKS;
	char id[24];
	for (unsigned i = 0; i < nd; i++)
		json_array_append_new(devs, json_pack("{s:s%, s:I}",
			"name", cfg->devices[i].name, strnlen(cfg->devices[i].name, MIG_NAME_MAX),
			"version", (json_int_t)cfg->devices[i].version));
	for (unsigned i = 0; i < nk; i++) {
		snprintf(id, sizeof(id), "%016llx", (unsigned long long)cfg->disks[i].id);
		json_array_append_new(disks, json_pack("{s:s%, s:I, s:s}",
			"path", cfg->disks[i].path, strnlen(cfg->disks[i].path, MIG_PATH_MAX),
			"size", (json_int_t)(cfg->disks[i].size & INT64_MAX), "id", id));
	}
	json_t *o = json_pack("{s:I, s:s%, s:I, s:I, s:o, s:o}",
			 "version", (json_int_t)cfg->version,
			 "isa", cfg->isa, strnlen(cfg->isa, MIG_ISA_MAX),
			 "ram_size", (json_int_t)(cfg->ram_size & INT64_MAX),
			 "harts", (json_int_t)cfg->harts, "devices", devs, "disks", disks);
	if (o && cfg->copy_disks)
		json_object_set_new(o, "disk_mode", json_string("copy"));
	if (o && cfg->channels > 1)
		json_object_set_new(o, "channels", json_integer(cfg->channels));
	if (o && cfg->has_join) {
		char hex[2 * MIG_JOIN_NONCE + 1];
		for (unsigned i = 0; i < MIG_JOIN_NONCE; i++)
			snprintf(hex + 2 * i, 3, "%02x", cfg->join[i]);
		json_object_set_new(o, "join", json_string(hex));
	}
	return o;
}

static void stream_header(uint8_t hdr[HDR_BYTES])
{
	memcpy(hdr, MIG_MAGIC, 8);
	put_le32(hdr + 8, MIG_VERSION);
	put_le32(hdr + 12, 0);
}

int mig_write_join(struct mig_stream *s, const uint8_t nonce[MIG_JOIN_NONCE],
		   uint32_t index, uint32_t count)
{
	uint8_t hdr[HDR_BYTES], join[MIG_JOIN_NONCE + 8];
	stream_header(hdr);
	memcpy(join, nonce, MIG_JOIN_NONCE);
	put_le32(join + MIG_JOIN_NONCE, index);
	put_le32(join + MIG_JOIN_NONCE + 4, count);
	struct iovec part = { hdr, sizeof(hdr) };
	if (s->failed || mig_flush_pages(s))
		return -1;
	return out_put(s, &part, 1) || emit_section(s, MIG_SEC_JOIN, join, sizeof(join))
	       ? -1 : 0;
}

int mig_write_config(struct mig_stream *s, const struct mig_config *cfg)
{
	uint8_t hdr[HDR_BYTES];
	stream_header(hdr);
	json_t *o = config_to_json(cfg);
	char *text = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	json_decref(o);
	if (!text)
		return fail(s, "migration stream: cannot encode the configuration (a name "
			    "or path that is not UTF-8?)");
	if (s->failed || mig_flush_pages(s)) {
		free(text);
		return -1;
	}
	struct iovec part = { hdr, sizeof(hdr) };
	int r = out_put(s, &part, 1) || emit_section(s, MIG_SEC_CONFIG, text,
						     strlen(text)) ? -1 : 0;
	free(text);
	return r;
}

/* Config fields, checked: each returns false after failing the stream. */
static bool cfg_uint(struct mig_stream *s, json_t *o, const char *key, uint64_t min,
		     uint64_t max, uint64_t *out)
{
	json_t *v = json_object_get(o, key);
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    (uint64_t)json_integer_value(v) < min || (uint64_t)json_integer_value(v) > max) {
		fail(s, "migration stream: configuration: '%s' must be an integer from %llu "
		     "to %llu", key, (unsigned long long)min, (unsigned long long)max);
		return false;
	}
	*out = (uint64_t)json_integer_value(v);
	return true;
}

static bool cfg_string(struct mig_stream *s, json_t *o, const char *key, char *out,
		       size_t size, bool spaces)
{
	json_t *v = json_object_get(o, key);
	size_t n = json_string_length(v);
	const char *t = json_string_value(v);
	bool ok = t && n > 0 && n < size;
	for (size_t i = 0; ok && i < n; i++)
		ok = (unsigned char)t[i] >= (spaces ? ' ' : '!') && t[i] != 0x7f;
	if (!ok) {
		fail(s, "migration stream: configuration: '%s' must be a string of 1 to %zu "
		     "printable characters", key, size - 1);
		return false;
	}
	memcpy(out, t, n);
	out[n] = 0;
	return true;
}

static bool cfg_array(struct mig_stream *s, json_t *o, const char *key, size_t max,
		      json_t **out)
{
	json_t *v = json_object_get(o, key);
	*out = v;
	if (!v)
		return true;    /* optional: none */
	if (!json_is_array(v) || json_array_size(v) > max) {
		fail(s, "migration stream: configuration: '%s' must be a list of at most %zu",
		     key, max);
		return false;
	}
	return true;
}

static bool cfg_devices(struct mig_stream *s, json_t *devs, struct mig_config *cfg)
{
	size_t i;
	json_t *d;
	json_array_foreach(devs, i, d) {
		struct mig_device_version *dv = &cfg->devices[cfg->ndevices];
		uint64_t ver;
		if (!json_is_object(d)) {
			fail(s, "migration stream: configuration: device %zu is not an object",
			     i);
			return false;
		}
		if (!cfg_string(s, d, "name", dv->name, sizeof(dv->name), false) ||
		    !cfg_uint(s, d, "version", 0, UINT32_MAX, &ver))
			return false;
		dv->version = (uint32_t)ver;
		cfg->ndevices++;
	}
	return true;
}

static bool cfg_disks(struct mig_stream *s, json_t *disks, struct mig_config *cfg)
{
	size_t i;
	json_t *d;
	json_array_foreach(disks, i, d) {
		struct mig_disk *dk = &cfg->disks[cfg->ndisks];
		char id[24], *end;
		if (!json_is_object(d)) {
			fail(s, "migration stream: configuration: disk %zu is not an object", i);
			return false;
		}
		if (!cfg_string(s, d, "path", dk->path, sizeof(dk->path), true) ||
		    !cfg_uint(s, d, "size", 0, INT64_MAX, &dk->size) ||
		    !cfg_string(s, d, "id", id, sizeof(id), false))
			return false;
		errno = 0;
		dk->id = strtoull(id, &end, 16);
		if (errno || *end || strlen(id) > 16) {
			fail(s, "migration stream: configuration: disk '%s' has a bad id '%s'",
			     dk->path, id);
			return false;
		}
		cfg->ndisks++;
	}
	return true;
}

/* Multi-channel: the source's "channels" (2..MIG_CHANNELS_MAX), the
 * destination's "join" nonce (64 hex digits); both optional. */
static bool cfg_channels(struct mig_stream *s, json_t *o, struct mig_config *cfg)
{
	uint64_t n = 0;
	if (json_object_get(o, "channels") &&
	    !cfg_uint(s, o, "channels", 2, MIG_CHANNELS_MAX, &n))
		return false;
	cfg->channels = (uint32_t)n;
	json_t *j = json_object_get(o, "join");
	if (!j)
		return true;
	const char *hex = json_string_value(j);
	bool ok = hex && strlen(hex) == 2 * MIG_JOIN_NONCE;
	for (unsigned i = 0; ok && i < MIG_JOIN_NONCE; i++) {
		unsigned byte = 0;
		ok = isxdigit((unsigned char)hex[2 * i]) && isxdigit((unsigned char)hex[2 * i + 1]) &&
		     sscanf(hex + 2 * i, "%2x", &byte) == 1;
		cfg->join[i] = (uint8_t)byte;
	}
	if (!ok) {
		fail(s, "migration stream: configuration: 'join' must be %u hex digits",
		     2 * MIG_JOIN_NONCE);
		return false;
	}
	cfg->has_join = true;
	return true;
}

static int config_from_json(struct mig_stream *s, const struct mig_section *sec,
			    struct mig_config *cfg)
{
	json_error_t jerr;
	json_t *o = json_loadb((const char *)sec->data, (size_t)sec->len,
			       JSON_REJECT_DUPLICATES, &jerr);
	json_t *devs, *disks;
	uint64_t version, ram, harts;
	memset(cfg, 0, sizeof(*cfg));
	if (!json_is_object(o)) {
		json_decref(o);
		return fail(s, "migration stream: the configuration is not a JSON object%s%s",
			    o ? "" : ": ", o ? "" : jerr.text);
	}
	bool ok = cfg_uint(s, o, "version", 0, UINT32_MAX, &version) &&
		  cfg_string(s, o, "isa", cfg->isa, sizeof(cfg->isa), false) &&
		  cfg_uint(s, o, "ram_size", 0, INT64_MAX, &ram) &&
		  cfg_uint(s, o, "harts", 1, 4096, &harts) &&
		  cfg_array(s, o, "devices", MIG_MAX_DEVICES, &devs) &&
		  cfg_array(s, o, "disks", MIG_MAX_DISKS, &disks) &&
		  cfg_devices(s, devs, cfg) && cfg_disks(s, disks, cfg);
	json_t *mode = json_object_get(o, "disk_mode");
	if (ok && mode) {
		if (!json_is_string(mode) || (strcmp(json_string_value(mode), "copy") &&
					      strcmp(json_string_value(mode), "shared")))
			ok = !fail(s, "migration stream: configuration: 'disk_mode' must be "
				   "\"copy\" or \"shared\"");
		else
			cfg->copy_disks = !strcmp(json_string_value(mode), "copy");
	}
	ok = ok && cfg_channels(s, o, cfg);
	json_decref(o);
	if (!ok)
		return -1;
	cfg->version = (uint32_t)version;
	cfg->ram_size = ram;
	cfg->harts = (uint32_t)harts;
	return 0;
}

/* The stream header, then the first section framed and checked (CONFIG
 * or JOIN; an ERROR in its place fails with the peer's reason). */
static int read_header_and_first(struct mig_stream *s, struct mig_section *out)
{
	uint8_t hdr[HDR_BYTES];
	struct mig_section sec;
	if (s->failed || in_get(s, hdr, 1, "the stream header"))
		return -1;
	/* a TLS record (alert 0x15, handshake 0x16) where 'F' was due */
	if (hdr[0] == 0x15 || hdr[0] == 0x16)
		return fail(s, "migration stream: the peer speaks TLS: start this ferry-vm "
			    "with --tls-creds too");
	if (in_get(s, hdr + 1, sizeof(hdr) - 1, "the stream header"))
		return -1;
	if (get_le32(hdr) == MIG_SEC_ERROR && get_le32(hdr + 4) == 0) {
		/* a peer that refuses us before its own header says why */
		if (read_frame_after(s, &sec, hdr, 0))
			return -1;
		decode_error(s, &sec);
		s->peer_gave_up = true;
		return fail(s, "migration stream: the peer refused: %s", sec.text);
	}
	if (!memcmp(hdr, "FERRYKEY", 8))
		return fail(s, "migration stream: the destination asks for a secret: give "
			    "'migrate' the secret_file it was started with");
	if (memcmp(hdr, MIG_MAGIC, 8))
		return fail(s, "migration stream: not a ferry migration stream (no FERRYMIG "
			    "header)");
	if (get_le32(hdr + 8) != MIG_VERSION)
		return fail(s, "migration stream: format version %u, this ferry reads version "
			    "%u: run the same ferry version on both hosts", get_le32(hdr + 8),
			    MIG_VERSION);
	if (get_le32(hdr + 12))
		return fail(s, "migration stream: header has unknown flags %#x",
			    get_le32(hdr + 12));
	if (read_frame(s, &sec))
		return -1;
	if (sec.type == MIG_SEC_ERROR) {
		decode_error(s, &sec);
		s->peer_gave_up = true;
		return fail(s, "migration stream: the peer refused: %s", sec.text);
	}
	*out = sec;
	return 0;
}

int mig_read_join(struct mig_stream *s, uint8_t nonce[MIG_JOIN_NONCE], uint32_t *index,
		  uint32_t *count)
{
	struct mig_section sec;
	if (read_header_and_first(s, &sec))
		return -1;
	if (sec.type != MIG_SEC_JOIN)
		return fail(s, "migration stream: expected a page channel's 'join' section, "
			    "got '%s'", type_name(sec.type));
	memcpy(nonce, sec.data, MIG_JOIN_NONCE);
	*index = get_le32(sec.data + MIG_JOIN_NONCE);
	*count = get_le32(sec.data + MIG_JOIN_NONCE + 4);
	return 0;
}

int mig_read_config(struct mig_stream *s, struct mig_config *cfg)
{
	struct mig_section sec;
	memset(cfg, 0, sizeof(*cfg));
	if (read_header_and_first(s, &sec))
		return -1;
	if (sec.type != MIG_SEC_CONFIG)
		return fail(s, "migration stream: expected the 'config' section, got '%s'",
			    type_name(sec.type));
	return config_from_json(s, &sec, cfg);
}

/* ---- Compatibility -------------------------------------------------------------- */

/* Parse an ISA string into XLEN and the extensions, canonical or not:
 * "rv64imafdc_zicsr_zifencei", "rv64gc", "RV64IMAC_Zicsr". Extension
 * version suffixes ("2p0") are ignored. Returns the count, or -1. */
#define ISA_EXTS 64
static int isa_parse(const char *isa, unsigned *xlen, char ext[][24])
{
	int n = 0;
	char buf[MIG_ISA_MAX];
	size_t len = strnlen(isa, MIG_ISA_MAX - 1);
	for (size_t i = 0; i <= len; i++)
		buf[i] = (char)((isa[i] >= 'A' && isa[i] <= 'Z') ? isa[i] + 32 : isa[i]);
	buf[len] = 0;
	if (strncmp(buf, "rv", 2))
		return -1;
	char *p = buf + 2, *end;
	unsigned long x = strtoul(p, &end, 10);
	if (end == p || (x != 32 && x != 64 && x != 128))
		return -1;
	*xlen = (unsigned)x;
	p = end;
	/* single letters up to the first '_' or multi-letter extension */
	while (*p && *p != '_' && *p != 'z' && *p != 's' && *p != 'x' && n < ISA_EXTS) {
		if (*p >= 'a' && *p <= 'z') {
			if (*p == 'g') {
				static const char *g[] = { "i", "m", "a", "f", "d", "zicsr",
							   "zifencei" };
				for (size_t k = 0; k < 7 && n < ISA_EXTS; k++)
					snprintf(ext[n++], 24, "%s", g[k]);
			} else {
				ext[n][0] = *p;
				ext[n++][1] = 0;
			}
			p++;
			while ((*p >= '0' && *p <= '9') || (*p == 'p' && p[1] >= '0' &&
							    p[1] <= '9'))
				p++;
		} else {
			return -1;
		}
	}
	/* multi-letter extensions, '_'-separated */
	while (*p && n < ISA_EXTS) {
		if (*p == '_') {
			p++;
			continue;
		}
		size_t k = strcspn(p, "_");
		while (k > 1 && ((p[k - 1] >= '0' && p[k - 1] <= '9') ||
				 (p[k - 1] == 'p' && p[k] >= '0' && p[k] <= '9')))
			k--;    /* version suffix */
		if (k >= 24)
			return -1;
		memcpy(ext[n], p, k);
		ext[n++][k] = 0;
		p += strcspn(p, "_");
	}
	return n;
}

static int check_isa(const char *want, const char *have, char *why, size_t len)
{
	char we[ISA_EXTS][24], he[ISA_EXTS][24];
	unsigned wx, hx;
	int nw = isa_parse(want, &wx, we), nh = isa_parse(have, &hx, he);
	if (nw < 0 || nh < 0) {
		snprintf(why, len, "cannot read the ISA string '%s'", nw < 0 ? want : have);
		return -1;
	}
	if (wx != hx) {
		snprintf(why, len, "the guest is RV%u, the destination RV%u", wx, hx);
		return -1;
	}
	for (int i = 0; i < nw; i++) {
		int j = 0;
		while (j < nh && strcmp(we[i], he[j]))
			j++;
		if (j == nh) {
			snprintf(why, len, "the guest uses ISA extension '%s', which the "
				 "destination lacks (guest %s, destination %s)", we[i], want,
				 have);
			return -1;
		}
	}
	return 0;
}

static int check_devices(const struct mig_config *g, const struct mig_config *h, char *why,
			 size_t len)
{
	for (unsigned i = 0; i < g->ndevices && i < MIG_MAX_DEVICES; i++) {
		const struct mig_device_version *d = &g->devices[i];
		unsigned j = 0;
		while (j < h->ndevices && j < MIG_MAX_DEVICES &&
		       strncmp(d->name, h->devices[j].name, MIG_NAME_MAX))
			j++;
		if (j == h->ndevices || j == MIG_MAX_DEVICES) {
			snprintf(why, len, "the guest has device '%.63s', the destination "
				 "does not: start it with the same devices", d->name);
			return -1;
		}
		if (d->version > h->devices[j].version) {
			snprintf(why, len, "device '%.63s' state is version %u, the destination "
				 "reads up to %u: upgrade ferry there", d->name, d->version,
				 h->devices[j].version);
			return -1;
		}
	}
	return 0;
}

/* disks: copy: the destination has an image of its own for each disk, of
 * the same size, and not the source's own (the same inode: it would copy
 * the image onto itself while the guest writes it). */
static int check_disks_copy(const struct mig_config *g, const struct mig_config *h,
			    char *why, size_t len)
{
	if (g->ndisks != h->ndisks) {
		snprintf(why, len, "disks: copy: the guest has %u disks, the destination %u: "
			 "give it one --disk (a new, empty image of the same size) for each",
			 g->ndisks, h->ndisks);
		return -1;
	}
	for (unsigned i = 0; i < g->ndisks && i < MIG_MAX_DISKS; i++) {
		const struct mig_disk *d = &g->disks[i], *e = &h->disks[i];
		if (d->size != e->size) {
			snprintf(why, len, "disks: copy: disk %u is %llu bytes here, the "
				 "destination's image %.200s %llu: create it with the same size", i,
				 (unsigned long long)d->size, e->path, (unsigned long long)e->size);
			return -1;
		}
		if (d->id == e->id) {
			snprintf(why, len, "disks: copy: the destination's image %.200s is the "
				 "source's own (same inode): copying would overwrite it "
				 "with itself; give the destination an image of its own, or use "
				 "disks: shared", e->path);
			return -1;
		}
	}
	return 0;
}

static int check_disks(const struct mig_config *g, const struct mig_config *h, char *why,
		       size_t len)
{
	if (g->copy_disks)
		return check_disks_copy(g, h, why, len);
	for (unsigned i = 0; i < g->ndisks && i < MIG_MAX_DISKS; i++) {
		const struct mig_disk *d = &g->disks[i];
		if (i >= h->ndisks || strncmp(d->path, h->disks[i].path, MIG_PATH_MAX)) {
			snprintf(why, len, "disk %.200s is not attached on the destination: give "
				 "it the same --disk on storage both hosts see (disk-move it there "
				 "first if needed, or migrate with disks: copy)", d->path);
			return -1;
		}
		if (d->size != h->disks[i].size || d->id != h->disks[i].id) {
			snprintf(why, len, "disk %.200s on the destination is another image "
				 "(size or inode differ): the hosts do not share this storage; "
				 "disk-move it to storage both see, or migrate with disks: copy",
				 d->path);
			return -1;
		}
	}
	return 0;
}

int mig_config_check(const struct mig_config *stream_cfg, const struct mig_config *local,
		     char *why, size_t len)
{
	const struct mig_config *g = stream_cfg, *h = local;
	if (g->version != h->version) {
		snprintf(why, len, "stream format version %u, the destination reads %u: run "
			 "the same ferry version on both hosts", g->version, h->version);
		return -1;
	}
	if (check_isa(g->isa, h->isa, why, len))
		return -1;
	if (g->ram_size > h->ram_size) {
		snprintf(why, len, "the guest has %llu MiB of memory, the destination only "
			 "%llu MiB: start it with --mem %llu",
			 (unsigned long long)(g->ram_size >> 20),
			 (unsigned long long)(h->ram_size >> 20),
			 (unsigned long long)((g->ram_size + (1u << 20) - 1) >> 20));
		return -1;
	}
	if (g->harts != h->harts) {
		snprintf(why, len, "the guest has %u harts, the destination %u: start it with "
			 "--smp %u", g->harts, h->harts, g->harts);
		return -1;
	}
	return check_devices(g, h, why, len) || check_disks(g, h, why, len) ? -1 : 0;
}

/* ---- Digest --------------------------------------------------------------------- */

uint64_t mig_block_hash(const void *data, size_t len)
{
	return XXH3_64bits(data, len);
}

uint64_t mig_page_hash(const void *page)
{
	return XXH3_64bits(page, PAGE);
}

uint64_t mig_digest_of_hashes(const uint64_t *hashes, size_t npages, size_t len)
{
	uint8_t buf[64 * 8], tail[8];
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	for (size_t i = 0; i < npages; ) {
		unsigned k = 0;
		for (; k < 64 && i < npages; k++, i++)
			put_le64(buf + 8 * k, hashes[i]);
		XXH3_64bits_update(&st, buf, 8 * k);
	}
	put_le64(tail, len);
	XXH3_64bits_update(&st, tail, sizeof(tail));
	return XXH3_64bits_digest(&st);
}

/* The same digest as mig_digest_of_hashes over every page's hash, a
 * chunk of pages at a time: nothing to allocate, so nothing to fail. */
uint64_t mig_ram_digest(const void *ram, size_t len)
{
	enum { CHUNK = 512 };
	const uint8_t *p = ram;
	size_t full = len / PAGE, npages = (len + PAGE - 1) / PAGE;
	static const uint8_t zeros[PAGE];
	uint64_t zero_hash = mig_page_hash(zeros);
	uint8_t buf[CHUNK * 8], tail[8];
	unsigned char resident[CHUNK];
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	for (size_t first = 0; first < npages; first += CHUNK) {
		size_t k = npages - first < CHUNK ? npages - first : CHUNK;
		const uint8_t *at = p + first * PAGE;
		/* a page the host never mapped reads as zeros: hash it without
		 * touching it (faulting in the zero page costs more than
		 * hashing) */
		size_t span = len - first * PAGE < k * PAGE ? len - first * PAGE : k * PAGE;
		bool know = ((uintptr_t)at % PAGE) == 0 &&
			    mincore((void *)at, span, resident) == 0;
		for (size_t i = 0; i < k; i++) {
			size_t pfn = first + i;
			uint64_t h;
			if (pfn >= full)        /* a partial last page: its own bytes */
				h = XXH3_64bits(p + pfn * PAGE, len - pfn * PAGE);
			else if (know && !(resident[i] & 1))
				h = zero_hash;
			else
				h = mig_page_hash(p + pfn * PAGE);
			put_le64(buf + 8 * i, h);
		}
		XXH3_64bits_update(&st, buf, 8 * k);
	}
	put_le64(tail, len);
	XXH3_64bits_update(&st, tail, sizeof(tail));
	return XXH3_64bits_digest(&st);
}
