/*
 * vmm.h - the monitor around one machine: control socket commands,
 * signals, and the migration entry points.
 */
#ifndef FERRY_VMM_H
#define FERRY_VMM_H

#include <stddef.h>

struct machine;
struct control;
struct migration;
struct virtio_dev;
struct disk_move;

struct vmm {
	struct machine *machine;
	struct control *control;
	struct migration *mig;     /* the current or last outgoing migration */
	struct migration *in;      /* the incoming migration, while it runs */
	const char *disks[4];      /* disk image paths, for storage checks */
	unsigned ndisks;
	struct virtio_dev *blk[4];         /* their virtio-blk devices */
	struct disk_move *disk_move;       /* the current or last disk move */
};

/* Block the usual termination signals in every thread and turn them into
 * a clean `quit` on a thread of their own. Call before any thread starts. */
void vmm_handle_signals(struct vmm *v);
int vmm_control_start(struct vmm *v, const char *path, char *err, size_t errlen);
/* Receive a migration (tcp:HOST:PORT or file:PATH) and start the guest. */
int vmm_incoming(struct vmm *v, const char *uri, char *err, size_t errlen);
void vmm_shutdown(struct vmm *v);
/* Send an event on the control socket, if any (steals data). */
struct json_t;
void vmm_event(struct vmm *v, const char *name, struct json_t *data);

#endif
