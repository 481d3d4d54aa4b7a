/*
 * dirty.c - the dirty-block bitmap (see dirty.h): 64 blocks a word,
 * marked with atomic OR, cleared with atomic AND, scanned a word at a time.
 */
#include "storage/dirty.h"

#include <stdlib.h>

#define WORD_BITS 64

static uint64_t words_for(uint64_t nblocks)
{
	return (nblocks + WORD_BITS - 1) / WORD_BITS;
}

int dirty_map_init(struct dirty_map *m, uint64_t bytes, unsigned block_shift)
{
	m->words = NULL;
	if (block_shift < 9 || block_shift > 30)
		return -1;
	m->bytes = bytes;
	m->block_shift = block_shift;
	m->nblocks = (bytes + (1ULL << block_shift) - 1) >> block_shift;
	m->words = calloc(words_for(m->nblocks) ? words_for(m->nblocks) : 1,
			  sizeof(*m->words));
	return m->words ? 0 : -1;
}

void dirty_map_free(struct dirty_map *m)
{
	free((void *)m->words);
	m->words = NULL;
	m->nblocks = 0;
}

uint64_t dirty_block_size(const struct dirty_map *m)
{
	return 1ULL << m->block_shift;
}

static void mark_block(struct dirty_map *m, uint64_t b)
{
	atomic_fetch_or(&m->words[b / WORD_BITS], 1ULL << (b % WORD_BITS));
}

void dirty_map_mark(struct dirty_map *m, uint64_t off, uint64_t len)
{
	if (len == 0 || off >= m->bytes)
		return;
	if (len > m->bytes - off)
		len = m->bytes - off;
	uint64_t last = (off + len - 1) >> m->block_shift;
	for (uint64_t b = off >> m->block_shift; b <= last; b++)
		mark_block(m, b);
}

void dirty_map_set_all(struct dirty_map *m, bool dirty)
{
	uint64_t n = words_for(m->nblocks);
	for (uint64_t w = 0; w < n; w++) {
		uint64_t bits = 0;
		if (dirty) {
			uint64_t left = m->nblocks - w * WORD_BITS;
			bits = left >= WORD_BITS ? ~0ULL : (1ULL << left) - 1;
		}
		atomic_store(&m->words[w], bits);
	}
}

bool dirty_map_test_and_clear(struct dirty_map *m, uint64_t b)
{
	if (b >= m->nblocks)
		return false;
	uint64_t bit = 1ULL << (b % WORD_BITS);
	return atomic_fetch_and(&m->words[b / WORD_BITS], ~bit) & bit;
}

bool dirty_map_test(const struct dirty_map *m, uint64_t b)
{
	if (b >= m->nblocks)
		return false;
	return atomic_load(&m->words[b / WORD_BITS]) & (1ULL << (b % WORD_BITS));
}

uint64_t dirty_map_next(const struct dirty_map *m, uint64_t b)
{
	while (b < m->nblocks) {
		uint64_t w = atomic_load(&m->words[b / WORD_BITS]) >> (b % WORD_BITS);
		if (w)
			return b + (uint64_t)__builtin_ctzll(w);
		b = (b / WORD_BITS + 1) * WORD_BITS;
	}
	return m->nblocks;
}

uint64_t dirty_map_count(const struct dirty_map *m)
{
	uint64_t n = 0, nw = words_for(m->nblocks);
	for (uint64_t w = 0; w < nw; w++)
		n += (uint64_t)__builtin_popcountll(atomic_load(&m->words[w]));
	return n;
}
