/*
 * deadline.h - bound every wait of an outgoing migration.
 *
 * The planner decides between rounds; inside a round, a switchover or a
 * handoff the outgoing thread blocks in the stream's syscalls, and the
 * socket's own timeouts apply per syscall (a peer that reads a trickle, a
 * partial write or the token bucket stretch them without bound). So a
 * watchdog thread beside it enforces absolute deadlines instead: when one
 * passes, or the peer has acknowledged nothing for the stall time while we
 * have bytes waiting for it, it shuts the socket down, which wakes the
 * blocked thread with an error, and keeps the reason for the user. A
 * second deadline lifts the vCPU throttle (a round under a heavy throttle
 * is nearly a pause for the guest) without failing anything.
 */
#ifndef FERRY_DEADLINE_H
#define FERRY_DEADLINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mig_watchdog;

/* Watch fd (a connected TCP socket); stall_ms 0: no stall detection.
 * NULL if the thread cannot start. */
struct mig_watchdog *mig_watchdog_start(int fd, uint64_t stall_ms);
/* Stop the thread and free (NULL is fine); fd stays open. */
void mig_watchdog_stop(struct mig_watchdog *w);

/* Two deadlines, the earlier one counts: the whole migration's budget,
 * and the deadline of the step under way (the switchover's pause bound). */
enum mig_deadline { MIG_DEADLINE_BUDGET, MIG_DEADLINE_STEP, MIG_DEADLINES };

/* Shut fd down at at_ms (mig_now_ms() clock; 0: none). `why` says what the
 * deadline was, for the error. Ignored after mig_watchdog_disarm(). */
void mig_watchdog_set(struct mig_watchdog *w, enum mig_deadline which, uint64_t at_ms,
		      const char *why);
/* The point of no return: from now on no deadline cuts the socket (the
 * stall detection stays). */
void mig_watchdog_disarm(struct mig_watchdog *w);
/* Store 0 in *throttle at at_ms (0: never). */
void mig_watchdog_set_throttle(struct mig_watchdog *w, uint64_t at_ms, atomic_int *throttle);
/* Did the throttle deadline lift the throttle since the last call? */
bool mig_watchdog_throttle_lifted(struct mig_watchdog *w);
/* Did the watchdog shut the socket down? Then why (if not NULL). */
bool mig_watchdog_fired(struct mig_watchdog *w, char *why, size_t len);

#endif
