/*
 * diskmove.h - storage vMotion: move a running VM's disk image to another
 * path while the guest keeps using it (control commands disk-move,
 * query-disk-move, disk-move-cancel; see diskmove.c).
 */
#ifndef FERRY_DISKMOVE_H
#define FERRY_DISKMOVE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct vmm;

json_t *disk_move_cmd_start(void *ctx, json_t *args, const char **cls, char *err,
			    size_t errlen);
json_t *disk_move_cmd_query(void *ctx, json_t *args, const char **cls, char *err,
			    size_t errlen);
json_t *disk_move_cmd_cancel(void *ctx, json_t *args, const char **cls, char *err,
			     size_t errlen);
/* A move is copying (a migration must wait for it). */
bool disk_move_active(struct vmm *v);
/* Cancel a running move (its partial image is removed) and free it. */
void disk_move_destroy(struct vmm *v);

#endif
