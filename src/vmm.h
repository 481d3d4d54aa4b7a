/*
 * vmm.h - the monitor around one machine: control socket commands,
 * signals, and the migration entry points.
 */
#ifndef FERRY_VMM_H
#define FERRY_VMM_H

#include <pthread.h>
#include <stddef.h>

struct machine;
struct control;
struct migration;
struct mig_tls;
struct virtio_dev;
struct disk_move;
struct ft;
struct ft_secondary;

/*
 * Why the guest is held paused, beyond a migration's own pause (which
 * query-status reports while the migration runs). Each hold is a decision
 * someone must undo explicitly:
 *   USER             `stop`; `cont` resumes.
 *   SAVE             `save` of a running guest; `cont` resumes.
 *   POSTMIGRATE      handed over: the guest runs on the destination; only
 *                    `quit` is left to do (QEMU's postmigrate).
 *   HANDOFF_UNKNOWN  the destination went silent after this host let go of
 *                    the disks: the guest may run there. `cont` refuses
 *                    unless forced, and a forced one is an event.
 */
enum vmm_hold {
	VMM_HOLD_NONE, VMM_HOLD_USER, VMM_HOLD_SAVE, VMM_HOLD_POSTMIGRATE,
	VMM_HOLD_HANDOFF_UNKNOWN,
};

struct vmm {
	struct machine *machine;
	struct control *control;
	struct migration *mig;     /* the current or last outgoing migration */
	struct migration *in;      /* the incoming migration, while it runs */
	const char *disks[4];      /* disk image paths, for storage checks */
	struct mig_tls *tls;       /* --tls-creds: every migration channel is TLS */
	unsigned ndisks;
	struct virtio_dev *blk[4];         /* their virtio-blk devices */
	struct disk_move *disk_move;       /* the current or last disk move */
	struct virtio_dev *net;            /* virtio-net, if any (FT holds its output) */
	struct ft *ft;                     /* FT primary: the current or last run */
	struct ft_secondary *ft_sec;       /* FT secondary (--ft-secondary) */

	pthread_mutex_t lock;      /* guards the hold and its description */
	enum vmm_hold hold;
	char hold_desc[640];       /* for query-status, when the hold says more */
};

#define VMM_INIT { .lock = PTHREAD_MUTEX_INITIALIZER }

/* Block the usual termination signals in every thread and turn them into
 * a clean `quit` on a thread of their own. Call before any thread starts.
 * Returns 0, or -1 with the reason in err. */
int vmm_handle_signals(struct vmm *v, char *err, size_t errlen);
int vmm_control_start(struct vmm *v, const char *path, char *err, size_t errlen);
/* Receive a migration (tcp:HOST:PORT or file:PATH) and start the guest. */
int vmm_incoming(struct vmm *v, const char *uri, char *err, size_t errlen);
void vmm_shutdown(struct vmm *v);
/* Send an event on the control socket, if any (steals data). */
struct json_t;
void vmm_event(struct vmm *v, const char *name, struct json_t *data);

/*
 * From the migration thread, once the destination runs the guest: stay
 * paused in postmigrate, answering queries, until `quit`. Without a
 * control socket nobody could send `quit` (nor have started the
 * migration), so the process ends at once with status 0, as it always did.
 */
void vmm_migrated(struct vmm *v, const char *uri);
/* From the migration thread: the handoff's outcome is unknown (see
 * VMM_HOLD_HANDOFF_UNKNOWN); why is the migration's error. The guest
 * stays paused. */
void vmm_handoff_unknown(struct vmm *v, const char *uri, const char *why);

#endif
