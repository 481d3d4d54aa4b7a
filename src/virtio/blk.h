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

struct virtio_dev;
struct disk;

/* The image behind d; touch its fields only while quiesced. */
struct disk *virtio_blk_disk(struct virtio_dev *d);
void virtio_blk_quiesce(struct virtio_dev *d);
void virtio_blk_unquiesce(struct virtio_dev *d);

#endif
