/*
 * dirty.h - a dirty-block bitmap: which blocks of a disk image the guest
 * wrote since they were last copied.
 *
 * A storage move (diskmove.c) copies an image while the guest keeps
 * writing it. Every guest write marks the blocks it touched; the copier
 * clears a block's bit just before it reads the block. Marking after the
 * write and clearing before the read means that a write the copier may
 * have missed always leaves its bit set for the next round. Bits are
 * atomic: the guest's vCPU threads mark while the copier clears.
 */
#ifndef FERRY_DIRTY_H
#define FERRY_DIRTY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct dirty_map {
	uint64_t bytes;          /* the image size the map covers */
	uint64_t nblocks;
	unsigned block_shift;    /* a block is 1 << block_shift bytes */
	_Atomic uint64_t *words;
};

/* A map of a `bytes`-long image in blocks of 1 << block_shift bytes, all
 * clean. 0, or -1 (out of memory, or a block_shift outside 9..30). */
int dirty_map_init(struct dirty_map *m, uint64_t bytes, unsigned block_shift);
void dirty_map_free(struct dirty_map *m);
uint64_t dirty_block_size(const struct dirty_map *m);
/* Mark every block that [off, off+len) touches (clipped to the image). */
void dirty_map_mark(struct dirty_map *m, uint64_t off, uint64_t len);
/* Mark or clear every block. */
void dirty_map_set_all(struct dirty_map *m, bool dirty);
/* Clear block b; true if it was dirty. */
bool dirty_map_test_and_clear(struct dirty_map *m, uint64_t b);
bool dirty_map_test(const struct dirty_map *m, uint64_t b);
/* The first dirty block at or after b, or nblocks if none. */
uint64_t dirty_map_next(const struct dirty_map *m, uint64_t b);
uint64_t dirty_map_count(const struct dirty_map *m);

#endif
