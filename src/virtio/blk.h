/*
 * blk.h - what a storage move (storage/diskmove.c) needs of a virtio-blk
 * device: its disk backend, and a way to hold its I/O back.
 *
 * Requests are served whole under the device's lock (see blk.c), so while
 * the lock is held no request is in flight and none starts: the guest's
 * other work goes on, only its I/O to this disk waits.
 */
#ifndef FERRY_BLK_H
#define FERRY_BLK_H

#include <stddef.h>
#include <stdint.h>

struct virtio_dev;
struct disk;

/* The image behind d; touch its fields only while quiesced. */
struct disk *virtio_blk_disk(struct virtio_dev *d);
void virtio_blk_quiesce(struct virtio_dev *d);
void virtio_blk_unquiesce(struct virtio_dev *d);

/* Fault tolerance (migrate/ft.c): the guest's writes held in memory,
 * each tagged with the epoch it was made in, until the secondary has
 * acknowledged that epoch; the guest's reads see them (blk.c). */
struct blk_write {
	struct blk_write *next;
	uint64_t epoch;
	uint64_t off, len;              /* bytes, whole sectors */
	uint8_t data[];
};
/* The writes of one epoch: count entries from first on (their next
 * pointers, not the last one's), unchanged until applied. */
struct blk_epoch_writes {
	const struct blk_write *first;
	uint64_t count, bytes;
};
/* Hold writes from now on, as epoch `epoch`'s. */
void virtio_blk_hold_start(struct virtio_dev *d, uint64_t epoch);
/* With the machine paused at the end of epoch-1: writes from now on are
 * `epoch`'s; returns those made before (all of epoch-1's, since older
 * ones were applied). */
struct blk_epoch_writes virtio_blk_hold_epoch(struct virtio_dev *d, uint64_t epoch);
/* The secondary has epochs <= upto: write their writes to the image, in
 * order. 0, or -1 with err (the rest stay held). */
int virtio_blk_hold_apply(struct virtio_dev *d, uint64_t upto, char *err, size_t errlen);
/* Write everything held to the image, flush, and stop holding. 0, or -1
 * with err (what the image refused is dropped). */
int virtio_blk_hold_stop(struct virtio_dev *d, char *err, size_t errlen);
/* Drop everything held, unwritten, and stop holding (an FT primary that
 * lost the guest to its secondary: the image must not get them). */
void virtio_blk_hold_discard(struct virtio_dev *d);
void virtio_blk_held(struct virtio_dev *d, uint64_t *writes, uint64_t *bytes);

#endif
