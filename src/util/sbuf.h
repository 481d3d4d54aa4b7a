/*
 * sbuf.h - a growable byte buffer for writing state, and a cursor for
 * reading it back.
 *
 * Device, CPU and machine state is serialized with these helpers in
 * little-endian order. Writing never fails (it aborts only when the host
 * is out of memory). Reading is bounds-checked: a short or hostile input
 * sets `error` and every later get returns zero, so a loader reads all
 * fields and checks sbuf_ok() once at the end.
 */
#ifndef FERRY_SBUF_H
#define FERRY_SBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sbuf {
	uint8_t *data;
	size_t len;     /* bytes written, or bytes available to read */
	size_t cap;     /* allocated (writer) */
	size_t pos;     /* read cursor (reader) */
	bool error;     /* a read went past the end */
	bool owned;     /* data was allocated here and is freed by sbuf_free */
};

void sbuf_init(struct sbuf *b);
/* A reader over bytes that stay owned by the caller. */
void sbuf_reader(struct sbuf *b, const void *data, size_t len);
void sbuf_free(struct sbuf *b);

void sbuf_put(struct sbuf *b, const void *p, size_t n);
void sbuf_put_u8(struct sbuf *b, uint8_t v);
void sbuf_put_u16(struct sbuf *b, uint16_t v);
void sbuf_put_u32(struct sbuf *b, uint32_t v);
void sbuf_put_u64(struct sbuf *b, uint64_t v);

bool sbuf_get(struct sbuf *b, void *p, size_t n);
uint8_t sbuf_get_u8(struct sbuf *b);
uint16_t sbuf_get_u16(struct sbuf *b);
uint32_t sbuf_get_u32(struct sbuf *b);
uint64_t sbuf_get_u64(struct sbuf *b);

/* No read went past the end. */
static inline bool sbuf_ok(const struct sbuf *b) { return !b->error; }
/* Everything was consumed and nothing went past the end. */
static inline bool sbuf_done(const struct sbuf *b)
{
	return !b->error && b->pos == b->len;
}

#endif
