/*
 * copy.h - copying a disk image's blocks from one file to another, keeping
 * holes: the bulk pass of a storage move walks only the source's data
 * extents (SEEK_DATA/SEEK_HOLE), and no pass writes a page of zeros (a
 * later pass punches it out instead, as the destination may hold old data
 * there). Both passes clear a block's dirty bit just before reading it
 * (see dirty.h), so a guest write the pass may have missed stays marked.
 *
 * The bulk pass moves COPY_CHUNK bytes a system call. Writes of whole
 * pages go around the page cache (O_DIRECT, through a second descriptor)
 * where the file system allows it; buffered writes start the
 * destination's writeback every COPY_WRITEBACK bytes (without waiting).
 * Either way the flush before the switch finds little left to do.
 *
 * The destination starts empty (size 0) and grows as the bulk pass writes
 * it, in ascending order: a write past the end of the file makes ext4
 * allocate written extents at once, where a write into a hole inside the
 * file allocates unwritten ones and converts them when it completes (a
 * journal update, and on a `discard` mount a synchronous discard). A hole
 * in the middle is skipped (the next write extends the file over it,
 * sparse); copier_set_size() sets the image's size at the end, which also
 * makes the hole at its end. Rounds write wherever the guest wrote.
 *
 * Works on plain file descriptors, so the unit tests drive it without a
 * machine.
 */
#ifndef FERRY_COPY_H
#define FERRY_COPY_H

#include "storage/dirty.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define COPY_PAGE 4096u
#define COPY_CHUNK (1u << 20)        /* the bulk pass reads this much at a time */
#define COPY_WRITEBACK (16u << 20)   /* start writeback after this much */

struct copier {
	int src, dst;
	uint64_t size;              /* bytes of the image */
	struct dirty_map *map;      /* its block size is the unit of copying */
	uint8_t *buf;               /* COPY_CHUNK bytes, at least one block */
	size_t buf_len;
	/* Called after each block: return false to stop (a cancel). May
	 * sleep (a bandwidth limit). NULL: never stop. */
	bool (*pace)(void *ctx, uint64_t bytes);
	void *ctx;
	uint64_t read_bytes;        /* bytes read from src so far */
	uint64_t written_bytes;     /* bytes written to dst so far */
	uint64_t unflushed;         /* written since writeback was last started */
	int direct_fd;              /* dst opened O_DIRECT, or -1 */
};

enum copy_result { COPY_OK = 0, COPY_ERROR = -1, COPY_STOPPED = 1 };

/* A copier over src and dst for a size-byte image, copying map's blocks.
 * 0, or -1 (out of memory). */
int copier_init(struct copier *c, int src, int dst, uint64_t size, struct dirty_map *map);
void copier_free(struct copier *c);
/* Bytes of data (not holes) in the first size bytes of fd. */
uint64_t copy_data_bytes(int fd, uint64_t size);
/* Every data extent of src, block by block. COPY_ERROR leaves errno. */
enum copy_result copier_bulk(struct copier *c);
/* Every block dirty when reached, once. *blocks counts them. */
enum copy_result copier_round(struct copier *c, uint64_t *blocks);
/* Give dst the image's size (the bulk pass leaves it at the end of the
 * last data it wrote). 0, or -1 with errno. */
int copier_set_size(struct copier *c);
/* Copy block b (the part inside the image); punch: zero pages are punched
 * out of dst (else skipped: dst is known to be a hole there). */
int copier_block(struct copier *c, uint64_t b, bool punch);

#endif
