/*
 * stream.c - migration stream framing, pages and configuration (see
 * stream.h and docs/stream.md).
 *
 * Writes go through a 1 MiB buffer; a RAM batch is built in its own
 * buffer and becomes one section when it holds RAM_BATCH pages. Reads
 * take a whole section into memory, verify its checksum, and only then
 * parse it, so a corrupt section never reaches guest RAM; pages are
 * checked against the RAM size one by one as they are applied.
 *
 * Zero pages travel as a page number alone. Others go raw, or as zstd
 * when compression is on and saves at least an eighth of the page:
 * compressing costs more CPU than a fast local link saves (docs/stream.md
 * has the figures), so the outgoing side turns it on only for slow links.
 */
#include "migrate/stream.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define PAGE 4096u
#define WBUF_SIZE (1u << 20)
#define RAM_BATCH 256
#define HEADER_BYTES 16
#define ZSTD_LEVEL 1

struct mig_stream {
	int fd;
	bool failed;
	char error[256];
	uint64_t bytes;
	bool compress;

	uint8_t *wbuf;          /* pending writes */
	size_t wlen;

	uint8_t *batch;         /* the RAM section being built */
	size_t batch_len;
	unsigned batch_pages;

	uint8_t *rbuf;          /* the last section read */
	size_t rcap;

	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	mig_page_sink sink;
	void *sink_opaque;
};

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

struct mig_stream *mig_stream_new(int fd)
{
	struct mig_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->fd = fd;
	s->wbuf = malloc(WBUF_SIZE);
	s->batch = malloc(4 + RAM_BATCH * (8 + 1 + 4 + PAGE));
	s->cctx = ZSTD_createCCtx();
	s->dctx = ZSTD_createDCtx();
	if (!s->wbuf || !s->batch || !s->cctx || !s->dctx) {
		mig_stream_free(s);
		return NULL;
	}
	return s;
}

void mig_stream_free(struct mig_stream *s)
{
	if (!s)
		return;
	free(s->wbuf);
	free(s->batch);
	free(s->rbuf);
	ZSTD_freeCCtx(s->cctx);
	ZSTD_freeDCtx(s->dctx);
	free(s);
}

uint64_t mig_stream_bytes(struct mig_stream *s) { return s->bytes; }
const char *mig_stream_error(struct mig_stream *s)
{
	return s->failed ? s->error : "no error";
}
void mig_stream_set_compress(struct mig_stream *s, bool on) { s->compress = on; }
void mig_stream_set_sink(struct mig_stream *s, mig_page_sink sink, void *opaque)
{
	s->sink = sink;
	s->sink_opaque = opaque;
}

/* ---- raw I/O ---------------------------------------------------------------- */

static int write_all(struct mig_stream *s, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t r = write(s->fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return fail(s, "migration stream: write failed: %s",
				    r < 0 ? (errno == EAGAIN ? "peer not reading (timed out)"
						: strerror(errno)) : "closed");
		b += r;
		n -= (size_t)r;
	}
	return 0;
}

int mig_flush(struct mig_stream *s)
{
	if (s->failed)
		return -1;
	if (s->wlen && write_all(s, s->wbuf, s->wlen))
		return -1;
	s->wlen = 0;
	return 0;
}

static int put(struct mig_stream *s, const void *p, size_t n)
{
	if (s->failed)
		return -1;
	s->bytes += n;
	if (s->wlen + n > WBUF_SIZE) {
		if (mig_flush(s))
			return -1;
		if (n > WBUF_SIZE)
			return write_all(s, p, n);
	}
	memcpy(s->wbuf + s->wlen, p, n);
	s->wlen += n;
	return 0;
}

static int read_all(struct mig_stream *s, void *p, size_t n, const char *what)
{
	uint8_t *b = p;
	size_t want = n;
	while (n) {
		ssize_t r = read(s->fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail(s, "migration stream: reading %s: %s", what,
				    errno == EAGAIN ? "peer silent (timed out)" : strerror(errno));
		if (r == 0)
			return fail(s, "migration stream: truncated in %s (%zu of %zu bytes)",
				    what, want - n, want);
		b += r;
		n -= (size_t)r;
		s->bytes += (uint64_t)r;
	}
	return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static void le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
	return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* ---- sections ----------------------------------------------------------------- */

int mig_write_section(struct mig_stream *s, uint32_t type, const void *data, size_t len)
{
	uint8_t hdr[HEADER_BYTES], sum[8];
	if (len > MIG_SECTION_MAX)
		return fail(s, "migration stream: section of %zu bytes is too large", len);
	le32(hdr, type);
	le32(hdr + 4, 0);
	le64(hdr + 8, len);
	XXH64_state_t *h = XXH64_createState();
	XXH64_reset(h, 0);
	XXH64_update(h, hdr, sizeof(hdr));
	if (len)
		XXH64_update(h, data, len);
	le64(sum, XXH64_digest(h));
	XXH64_freeState(h);
	if (put(s, hdr, sizeof(hdr)) || (len && put(s, data, len)) || put(s, sum, sizeof(sum)))
		return -1;
	return 0;
}

static const char *section_name(uint32_t type)
{
	static const char *names[] = {
		"?", "config", "ram", "cpu", "device", "clock", "digest", "end", "ack",
		"error", "released", "started", "postcopy", "page-request",
	};
	return type <= MIG_SEC_TYPE_MAX ? names[type] : "unknown";
}

/* Read a section's bytes into rbuf and verify it. */
static int read_raw_section(struct mig_stream *s, uint32_t *type, uint32_t *len)
{
	uint8_t hdr[HEADER_BYTES], sum[8];
	if (s->failed)
		return -1;
	uint64_t at = s->bytes;
	if (read_all(s, hdr, sizeof(hdr), "a section header"))
		return -1;
	*type = rd32(hdr);
	uint64_t n = rd64(hdr + 8);
	if (*type == 0 || *type > MIG_SEC_TYPE_MAX)
		return fail(s, "migration stream: unknown section type %u at offset %llu",
			    *type, (unsigned long long)at);
	if (rd32(hdr + 4) != 0)
		return fail(s, "migration stream: section '%s' has unknown flags %#x",
			    section_name(*type), rd32(hdr + 4));
	if (n > MIG_SECTION_MAX)
		return fail(s, "migration stream: section '%s' claims %llu bytes (limit %u)",
			    section_name(*type), (unsigned long long)n, MIG_SECTION_MAX);
	if (n + 1 > s->rcap) {
		uint8_t *p = realloc(s->rbuf, n + 1);
		if (!p)
			return fail(s, "migration stream: out of memory");
		s->rbuf = p;
		s->rcap = n + 1;
	}
	if (read_all(s, s->rbuf, n, section_name(*type)) ||
	    read_all(s, sum, sizeof(sum), "a section checksum"))
		return -1;
	XXH64_state_t *h = XXH64_createState();
	XXH64_reset(h, 0);
	XXH64_update(h, hdr, sizeof(hdr));
	XXH64_update(h, s->rbuf, n);
	uint64_t want = XXH64_digest(h);
	XXH64_freeState(h);
	if (want != rd64(sum))
		return fail(s, "migration stream: section '%s' at offset %llu fails its checksum",
			    section_name(*type), (unsigned long long)at);
	s->rbuf[n] = 0;     /* text sections end in a NUL for free */
	*len = (uint32_t)n;
	return 0;
}

/* ---- pages ------------------------------------------------------------------------ */

static bool page_is_zero(const void *page)
{
	const uint64_t *w = page;
	for (unsigned i = 0; i < PAGE / 8; i += 4)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3])
			return false;
	return true;
}

int mig_flush_pages(struct mig_stream *s)
{
	if (!s->batch_pages)
		return s->failed ? -1 : 0;
	le32(s->batch, s->batch_pages);
	int r = mig_write_section(s, MIG_SEC_RAM, s->batch, s->batch_len);
	s->batch_pages = 0;
	s->batch_len = 0;
	return r;
}

int mig_put_page(struct mig_stream *s, uint64_t pfn, const void *page)
{
	if (s->failed)
		return -1;
	if (!s->batch_pages)
		s->batch_len = 4;
	uint8_t *p = s->batch + s->batch_len;
	le64(p, pfn);
	p += 8;
	if (page_is_zero(page)) {
		*p++ = MIG_PAGE_ZERO;
	} else {
		size_t c = 0;
		if (s->compress) {
			c = ZSTD_compressCCtx(s->cctx, p + 5, PAGE, page, PAGE, ZSTD_LEVEL);
			if (ZSTD_isError(c) || c > PAGE - PAGE / 8)
				c = 0;
		}
		if (c) {
			*p = MIG_PAGE_ZSTD;
			le32(p + 1, (uint32_t)c);
			p += 5 + c;
		} else {
			*p++ = MIG_PAGE_RAW;
			memcpy(p, page, PAGE);
			p += PAGE;
		}
	}
	s->batch_len = (size_t)(p - s->batch);
	if (++s->batch_pages == RAM_BATCH)
		return mig_flush_pages(s);
	return 0;
}

/* Apply a verified RAM section. */
static int apply_pages(struct mig_stream *s, const uint8_t *p, uint32_t len, uint8_t *ram,
		       uint64_t ram_size, uint64_t *count)
{
	static __thread uint8_t page[PAGE];
	const uint8_t *end = p + len;
	if (!ram && !s->sink)
		return fail(s, "migration stream: RAM where no RAM was expected");
	if (len < 4)
		return fail(s, "migration stream: RAM section too short");
	uint32_t n = rd32(p);
	p += 4;
	for (uint32_t i = 0; i < n; i++) {
		if (end - p < 9)
			return fail(s, "migration stream: RAM section ends inside page %u", i);
		uint64_t pfn = rd64(p);
		uint8_t enc = p[8];
		p += 9;
		if (pfn >= ram_size / PAGE)
			return fail(s, "migration stream: page %llu is beyond guest RAM (%llu pages)",
				    (unsigned long long)pfn, (unsigned long long)(ram_size / PAGE));
		uint8_t *dst = s->sink ? page : ram + pfn * PAGE;
		switch (enc) {
		case MIG_PAGE_ZERO:
			memset(dst, 0, PAGE);
			break;
		case MIG_PAGE_RAW:
			if (end - p < PAGE)
				return fail(s, "migration stream: raw page %llu is cut short",
					    (unsigned long long)pfn);
			memcpy(dst, p, PAGE);
			p += PAGE;
			break;
		case MIG_PAGE_ZSTD: {
			if (end - p < 4)
				return fail(s, "migration stream: compressed page cut short");
			uint32_t c = rd32(p);
			p += 4;
			if (c > (uint64_t)(end - p))
				return fail(s, "migration stream: compressed page %llu is cut short",
					    (unsigned long long)pfn);
			size_t got = ZSTD_decompressDCtx(s->dctx, page, PAGE, p, c);
			if (ZSTD_isError(got) || got != PAGE)
				return fail(s, "migration stream: compressed page %llu does not "
					    "decompress to one page", (unsigned long long)pfn);
			if (dst != page)
				memcpy(dst, page, PAGE);
			p += c;
			break;
		}
		default:
			return fail(s, "migration stream: page %llu has unknown encoding %u",
				    (unsigned long long)pfn, enc);
		}
		if (s->sink)
			s->sink(s->sink_opaque, pfn, page);
	}
	if (p != end)
		return fail(s, "migration stream: %zu stray bytes after the pages",
			    (size_t)(end - p));
	*count = n;
	return 0;
}

int mig_read_section(struct mig_stream *s, struct mig_section *sec, uint8_t *ram,
		     uint64_t ram_size)
{
	memset(sec, 0, sizeof(*sec));
	if (read_raw_section(s, &sec->type, &sec->len))
		return -1;
	sec->data = s->rbuf;
	switch (sec->type) {
	case MIG_SEC_RAM:
		return apply_pages(s, s->rbuf, sec->len, ram, ram_size, &sec->pages);
	case MIG_SEC_DIGEST:
		if (sec->len != 8)
			return fail(s, "migration stream: digest section of %u bytes", sec->len);
		sec->digest = rd64(s->rbuf);
		return 0;
	case MIG_SEC_CONFIG:
		return fail(s, "migration stream: a second configuration section");
	}
	return 0;
}

int mig_expect(struct mig_stream *s, uint32_t type, char *why, size_t len)
{
	struct mig_section sec;
	if (mig_read_section(s, &sec, NULL, 0)) {
		snprintf(why, len, "%s", mig_stream_error(s));
		return -1;
	}
	if (sec.type == MIG_SEC_ERROR) {
		snprintf(why, len, "%s", (const char *)sec.data);
		return fail(s, "peer gave up: %s", (const char *)sec.data);
	}
	if (sec.type != type) {
		snprintf(why, len, "expected '%s', got '%s'", section_name(type),
			 section_name(sec.type));
		return fail(s, "migration stream: %s", why);
	}
	return 0;
}

int mig_write_digest(struct mig_stream *s, uint64_t digest)
{
	uint8_t b[8];
	le64(b, digest);
	return mig_write_section(s, MIG_SEC_DIGEST, b, sizeof(b));
}

int mig_write_end(struct mig_stream *s)
{
	return mig_write_section(s, MIG_SEC_END, NULL, 0);
}

void mig_send_error(struct mig_stream *s, const char *why)
{
	bool failed = s->failed;
	s->failed = false;      /* say why even after our own error */
	s->wlen = 0;
	mig_write_section(s, MIG_SEC_ERROR, why, strlen(why));
	mig_flush(s);
	s->failed = failed || s->failed;
}

/* ---- configuration -------------------------------------------------------------------- */

int mig_write_config(struct mig_stream *s, const struct mig_config *cfg)
{
	uint8_t hdr[16];
	memcpy(hdr, MIG_MAGIC, 8);
	le32(hdr + 8, MIG_VERSION);
	le32(hdr + 12, 0);
	json_t *devs = json_array(), *disks = json_array();
	for (unsigned i = 0; i < cfg->ndevices; i++)
		json_array_append_new(devs, json_pack("{s:s, s:i}", "name", cfg->devices[i].name,
						      "version", (int)cfg->devices[i].version));
	for (unsigned i = 0; i < cfg->ndisks; i++)
		json_array_append_new(disks, json_pack("{s:s, s:I, s:I}", "path", cfg->disks[i].path,
			"size", (json_int_t)cfg->disks[i].size,
			"id", (json_int_t)(cfg->disks[i].id >> 1)));
	json_t *o = json_pack("{s:i, s:s, s:I, s:i, s:o, s:o}", "version", (int)cfg->version,
			      "isa", cfg->isa, "ram_size", (json_int_t)cfg->ram_size,
			      "harts", (int)cfg->harts, "devices", devs, "disks", disks);
	char *text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	int r = put(s, hdr, sizeof(hdr)) ||
		mig_write_section(s, MIG_SEC_CONFIG, text, strlen(text)) ? -1 : 0;
	free(text);
	return r;
}

static int parse_config(struct mig_stream *s, const char *text, struct mig_config *cfg)
{
	json_error_t jerr;
	json_t *o = json_loads(text, 0, &jerr), *devs, *disks;
	const char *isa;
	json_int_t version, ram, harts;
	memset(cfg, 0, sizeof(*cfg));
	if (!o || json_unpack(o, "{s:I, s:s, s:I, s:I, s:o, s:o}", "version", &version, "isa", &isa,
			      "ram_size", &ram, "harts", &harts, "devices", &devs,
			      "disks", &disks) ||
	    !json_is_array(devs) || !json_is_array(disks) ||
	    json_array_size(devs) > MIG_MAX_DEVICES || json_array_size(disks) > MIG_MAX_DISKS ||
	    ram < 0 || harts < 0 || version < 0) {
		json_decref(o);
		return fail(s, "migration stream: malformed configuration");
	}
	cfg->version = (uint32_t)version;
	snprintf(cfg->isa, sizeof(cfg->isa), "%s", isa);
	cfg->ram_size = (uint64_t)ram;
	cfg->harts = (uint32_t)harts;
	size_t i;
	json_t *d;
	json_array_foreach(devs, i, d) {
		const char *name;
		json_int_t v;
		if (json_unpack(d, "{s:s, s:I}", "name", &name, "version", &v) || v < 0) {
			json_decref(o);
			return fail(s, "migration stream: malformed device in the configuration");
		}
		snprintf(cfg->devices[i].name, sizeof(cfg->devices[i].name), "%s", name);
		cfg->devices[i].version = (uint32_t)v;
		cfg->ndevices++;
	}
	json_array_foreach(disks, i, d) {
		const char *path;
		json_int_t size, id;
		if (json_unpack(d, "{s:s, s:I, s:I}", "path", &path, "size", &size, "id", &id)) {
			json_decref(o);
			return fail(s, "migration stream: malformed disk in the configuration");
		}
		snprintf(cfg->disks[i].path, sizeof(cfg->disks[i].path), "%s", path);
		cfg->disks[i].size = (uint64_t)size;
		cfg->disks[i].id = (uint64_t)id << 1;
		cfg->ndisks++;
	}
	json_decref(o);
	return 0;
}

int mig_read_config(struct mig_stream *s, struct mig_config *cfg)
{
	uint8_t hdr[16];
	if (read_all(s, hdr, sizeof(hdr), "the stream header"))
		return -1;
	if (memcmp(hdr, MIG_MAGIC, 8))
		return fail(s, "migration stream: not a ferry migration stream (bad magic)");
	if (rd32(hdr + 8) != MIG_VERSION)
		return fail(s, "migration stream: format version %u, this ferry-vm reads %u",
			    rd32(hdr + 8), MIG_VERSION);
	uint32_t type, len;
	if (read_raw_section(s, &type, &len))
		return -1;
	if (type == MIG_SEC_ERROR)
		return fail(s, "peer refused: %s", (const char *)s->rbuf);
	if (type != MIG_SEC_CONFIG)
		return fail(s, "migration stream: expected the configuration, got '%s'",
			    section_name(type));
	return parse_config(s, (const char *)s->rbuf, cfg);
}

int mig_config_check(const struct mig_config *src, const struct mig_config *local,
		     char *why, size_t len)
{
	if (src->version != local->version) {
		snprintf(why, len, "stream version %u, destination runs %u", src->version,
			 local->version);
		return -1;
	}
	if (strcmp(src->isa, local->isa)) {
		snprintf(why, len, "ISA %s, destination has %s", src->isa, local->isa);
		return -1;
	}
	if (src->ram_size > local->ram_size) {
		snprintf(why, len, "guest has %llu MiB of memory, destination only %llu MiB",
			 (unsigned long long)(src->ram_size >> 20),
			 (unsigned long long)(local->ram_size >> 20));
		return -1;
	}
	if (src->harts != local->harts) {
		snprintf(why, len, "guest has %u harts, destination %u", src->harts, local->harts);
		return -1;
	}
	for (unsigned i = 0; i < src->ndevices; i++) {
		unsigned j;
		for (j = 0; j < local->ndevices; j++)
			if (!strcmp(src->devices[i].name, local->devices[j].name))
				break;
		if (j == local->ndevices) {
			snprintf(why, len, "destination lacks device %s", src->devices[i].name);
			return -1;
		}
		if (src->devices[i].version > local->devices[j].version) {
			snprintf(why, len, "device %s state version %u is newer than the "
				 "destination's %u", src->devices[i].name, src->devices[i].version,
				 local->devices[j].version);
			return -1;
		}
	}
	for (unsigned i = 0; i < src->ndisks; i++) {
		if (i >= local->ndisks || strcmp(src->disks[i].path, local->disks[i].path)) {
			snprintf(why, len, "disk %s is not attached on the destination "
				 "(give it the same --disk on shared storage)", src->disks[i].path);
			return -1;
		}
		if (src->disks[i].size != local->disks[i].size ||
		    (src->disks[i].id >> 1) != (local->disks[i].id >> 1)) {
			snprintf(why, len, "disk %s on the destination is not the same image "
				 "(size or contents differ)", src->disks[i].path);
			return -1;
		}
	}
	return 0;
}

uint64_t mig_ram_digest(const void *ram, size_t len)
{
	return XXH3_64bits(ram, len);
}
