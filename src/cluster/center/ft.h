/*
 * ft.h - fault tolerance as ferry-center sees it (ft.c).
 */
#ifndef FERRY_CENTER_FT_H
#define FERRY_CENTER_FT_H

#include <jansson.h>
#include <stdbool.h>

/* The VM's FT status (etcd /ferry/ft/NAME/status, written by the owner's
 * ferryd), or NULL when FT is off. */
json_t *ft_status(const char *name);

/* POST /api/v1/vms/NAME/ft {"enabled": true|false, "secondary", "epoch_ms"}:
 * the ft-enable or ft-disable task. Under db_lock (released around the
 * ferryd call). Returns the HTTP status: < 300 with *reply, else err (and
 * *hint, may stay NULL). *details gets what the audit record keeps. */
int ft_request(json_t *row, const char *name, json_t *body, const char *user, json_t **reply,
	       json_t **details, char *err, size_t errlen, const char **hint);

/* A VM that runs on a host other than the inventory's: if its FT owner
 * key names that host (its secondary took over), it is moved there
 * (task ft-failover, audit ft.failover) and true is returned. Under
 * db_lock. The inventory asks before taking such a VM for HA's. */
bool ft_adopt(const char *name);

/* The VM's FT owner key names host as the one that may run it (not given
 * up): that host's copy is the VM, never a stray to stop, even while the
 * inventory still says its old host (a secondary takes over before the
 * old primary's lease expires). False when etcd does not answer. */
bool ft_owned_by(const char *name, const char *host);

/* From the task scheduler: ft-enable tasks end when the VM is protected;
 * a VM that failed over is adopted on its new host (task ft-failover,
 * audit ft.failover). Takes db_lock itself. */
void ft_tick(void);

#endif
