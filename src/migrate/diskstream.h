/*
 * diskstream.h - shared-nothing migration (migrate with disks: copy): the
 * guest's disk images travel in the migration stream as DISK extents.
 * See diskstream.c.
 */
#ifndef FERRY_DISKSTREAM_H
#define FERRY_DISKSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct vmm;
struct mig_stream;
struct mig_section;
struct mig_config;

/* Source: track the guest's writes and mark every data extent to send. */
struct disk_source;
struct disk_source *disk_source_start(struct vmm *v, char *err, size_t errlen);
/* Send every block dirty now (the first call: the bulk pass). Bytes sent
 * or -1 (the stream's error). */
int64_t disk_source_round(struct disk_source *ds, struct mig_stream *s);
/* Bytes still to send (dirty blocks at full size). */
uint64_t disk_source_remaining(struct disk_source *ds);
/* At the switchover, the guest paused: the last blocks, then a digest a
 * disk. 0 or -1. */
int disk_source_finish(struct disk_source *ds, struct mig_stream *s);
/* Stop tracking and free (NULL is fine). */
void disk_source_stop(struct disk_source *ds);

/* Destination: the images of its --disk, locked now and empty. */
struct disk_sink;
struct disk_sink *disk_sink_open(struct vmm *v, const struct mig_config *remote, char *err,
				 size_t errlen);
/* A DISK section (the grammar checked its bounds) or a DISK_DIGEST. */
int disk_sink_extent(struct disk_sink *dk, const struct mig_section *sec, char *err,
		     size_t errlen);
int disk_sink_verify(struct disk_sink *dk, const struct mig_section *sec, char *err,
		     size_t errlen);
/* A failed migration: empty the images again (a partial copy is never
 * left looking like a disk), unlock, free. */
void disk_sink_abandon(struct disk_sink *dk);
/* Success: free, keeping the images (and their locks). */
void disk_sink_free(struct disk_sink *dk);

#endif
