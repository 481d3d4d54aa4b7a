/*
 * heartbeat.h - is the guest kernel alive? (machine/heartbeat.c)
 */
#ifndef FERRY_HEARTBEAT_H
#define FERRY_HEARTBEAT_H

#include <jansson.h>

struct machine;

/* {"beats": N, "stalled_ms": S} once a hart has beaten (hart_beat), else NULL
 * (no heartbeat yet: booting). Call from one thread (the control thread). */
json_t *guest_heartbeat(struct machine *m);

#endif
