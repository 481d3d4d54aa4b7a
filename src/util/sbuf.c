/*
 * sbuf.c - growable write buffer and bounds-checked reader (see sbuf.h).
 */
#include "sbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sbuf_init(struct sbuf *b)
{
	memset(b, 0, sizeof(*b));
	b->owned = true;
}

void sbuf_reader(struct sbuf *b, const void *data, size_t len)
{
	memset(b, 0, sizeof(*b));
	b->data = (uint8_t *)data;
	b->len = len;
}

void sbuf_free(struct sbuf *b)
{
	if (b->owned)
		free(b->data);
	memset(b, 0, sizeof(*b));
}

static void sbuf_reserve(struct sbuf *b, size_t n)
{
	if (b->len + n <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	uint8_t *p = realloc(b->data, cap);
	if (!p) {
		fprintf(stderr, "ferry: out of memory growing a %zu-byte buffer\n", cap);
		abort();
	}
	b->data = p;
	b->cap = cap;
}

void sbuf_put(struct sbuf *b, const void *p, size_t n)
{
	sbuf_reserve(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_le(struct sbuf *b, uint64_t v, unsigned bytes)
{
	uint8_t tmp[8];
	for (unsigned i = 0; i < bytes; i++)
		tmp[i] = (uint8_t)(v >> (8 * i));
	sbuf_put(b, tmp, bytes);
}

void sbuf_put_u8(struct sbuf *b, uint8_t v) { put_le(b, v, 1); }
void sbuf_put_u16(struct sbuf *b, uint16_t v) { put_le(b, v, 2); }
void sbuf_put_u32(struct sbuf *b, uint32_t v) { put_le(b, v, 4); }
void sbuf_put_u64(struct sbuf *b, uint64_t v) { put_le(b, v, 8); }

bool sbuf_get(struct sbuf *b, void *p, size_t n)
{
	if (b->error || n > b->len - b->pos) {
		b->error = true;
		memset(p, 0, n);
		return false;
	}
	memcpy(p, b->data + b->pos, n);
	b->pos += n;
	return true;
}

static uint64_t get_le(struct sbuf *b, unsigned bytes)
{
	uint8_t tmp[8];
	uint64_t v = 0;
	if (!sbuf_get(b, tmp, bytes))
		return 0;
	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)tmp[i] << (8 * i);
	return v;
}

uint8_t sbuf_get_u8(struct sbuf *b) { return (uint8_t)get_le(b, 1); }
uint16_t sbuf_get_u16(struct sbuf *b) { return (uint16_t)get_le(b, 2); }
uint32_t sbuf_get_u32(struct sbuf *b) { return (uint32_t)get_le(b, 4); }
uint64_t sbuf_get_u64(struct sbuf *b) { return get_le(b, 8); }
