/*
 * ferryd.h - the host agent's shared state.
 *
 * ferryd runs on every host: it keeps a lease in etcd (its heartbeat),
 * reports the host, starts and watches ferry-vm processes and runs
 * migrations to other ferryds. Pieces: main.c (options, heartbeat),
 * host.c (the host report), vms.c (VM processes: start, watch, find again
 * after a restart), migration.c (both ends of a migration), api.c (the
 * HTTP API under /agent/v1/).
 */
#ifndef FERRY_FERRYD_H
#define FERRY_FERRYD_H

#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "cluster/common/auth.h"

struct named_dir {
	char name[64];
	char path[PATH_MAX];
};

struct ferryd {
	char name[64];
	char listen[128];
	char address[64];      /* the host's own address (from --listen) */
	char url[160];         /* http://ADDRESS:PORT */
	char state_dir[PATH_MAX];
	char ferry_vm[PATH_MAX];
	char vmm_version[128];
	struct named_dir datastores[16];
	int ndatastores;
	struct named_dir networks[16];   /* path holds the bridge */
	int nnetworks;
	struct auth auth;
	bool secure_incoming;  /* ferry-vm takes --incoming ...,secret-file= */
	long vm_memory_mib;    /* what this host offers to VMs (--vm-memory-mib; 0: its RAM) */
	char isolation_response[32];   /* "power-off" (default) or "leave-running" */
};

extern struct ferryd fd_cfg;

/* main.c: ferryd's own command line, which a VM's monitor process
 * overwrites to "ferryd-monitor VM" (what ps and /proc show) */
extern char *cmdline_area;
extern size_t cmdline_len;

/* One VM process this host runs (or ran). */
struct vm {
	char name[64];
	char dir[PATH_MAX];
	json_t *spec;          /* as ferry-center sent it */
	pid_t pid;
	bool incoming;         /* started with --incoming */
	bool exited;
	char exit_desc[64];    /* "exited 1", "signal 9" */
	int exit_status;       /* -1 when killed by a signal */
	bool leaving;          /* migrated away: being removed */
	bool fenced;           /* killed (or left running) by the self-fence */
	bool published;        /* its HA record is in etcd (ha_agent.c) */
	bool monitor_done;     /* VM monitoring has looked at its end */
	int64_t arrived_ms;    /* incoming: when ferry-vm first said it runs (test hook) */
	json_t *created;       /* incoming with disks: copy: the images made for it (paths),
				  removed with it unless the guest arrived */
};

/* host.c */
json_t *host_report(void);
const char *host_isa(void);
void host_add_cpu(json_t *vm_list);   /* each running VM's "cpu_s" */
void host_add_disks(json_t *vm_list); /* each VM's "disk_mib", "disk_alloc_mib" */
bool host_standby(void);              /* DPM standby: no VM starts, no incoming */
bool host_set_standby(bool on, char *err, size_t errlen);
/* The id of this host's datastore NAME (DIR/.ferry-datastore-id), NULL
 * when there is no such datastore or its id cannot be had */
const char *host_datastore_id(const char *name);

/* vms.c: the table is guarded by vms_lock */
extern pthread_mutex_t vms_lock;
bool vms_init(char *err, size_t errlen);
struct vm *vm_find(const char *name);   /* under vms_lock */
int vms_snapshot(struct vm ***list);    /* the table itself; under vms_lock */
json_t *vm_json(struct vm *vm, bool with_status);
json_t *vms_list(void);
int vms_count(void);
/* Starts a VM from spec (stolen); incoming_uri NULL for a fresh boot.
 * Returns an HTTP status (201 or an error) with a message in err. */
int vm_start(const char *name, json_t *spec, const char *incoming_uri, const char *secret,
	     char *err, size_t errlen);
/* Ends the process and forgets the VM (its directory goes too). */
int vm_destroy(const char *name, char *err, size_t errlen);
char *vm_control_path(const struct vm *vm);
/* "DS:PATH" -> the file on this host (malloc'd); NULL with a message. */
char *vm_datastore_path(const char *ref, char *err, size_t errlen);
/* "DS:PATH" for a file to be made (no such file yet, no symlink on the way). */
char *vm_datastore_new_path(const char *ref, char *err, size_t errlen);
/* The directory of the datastore "DS:PATH" names; NULL if none. Files
 * below it are opened with open_beneath() (util/beneath.h). */
const char *datastore_root(const char *ref);
/* A VM's spec changed (its disks moved): kept, and in spec.json. */
void vm_set_spec(const char *name, json_t *spec);
char *vm_console(const char *name, bool *found);
void *vms_watch(void *arg);

/* fence.c: self-fencing (see there). The deadline is the sent time of the
 * last good lease renewal + TTL - FENCE_MARGIN_MS (monotonic ms). */
#define FENCE_MARGIN_MS 1000
int64_t mono_ms(void);
void fence_init(int lease_ttl_s);
void fence_renewed(int64_t sent_ms);
int64_t fence_deadline_ms(void);
bool fence_isolated(void);      /* past the deadline: start nothing */
void *fence_watch(void *arg);

/* main.c: the heartbeat's lease (0 while it has none) */
int64_t heartbeat_lease(void);

/*
 * main.c: test hooks that widen a race's window so that an integration
 * test can reproduce it every time; 0 (no hook) unless the environment
 * variable is set to a number of milliseconds. Never set in production.
 *   FERRYD_TEST_DELAY_ARRIVAL_MS  an incoming VM whose ferry-vm runs the
 *       guest is still reported "incoming" for this long (a slow resume)
 *   FERRYD_TEST_DELAY_REMOVE_MS   vm_destroy waits this long after the
 *       process ended, before the VM's directory is removed
 */
long test_delay_ms(const char *var);

/* ha_agent.c: HA records in etcd, the election, the holder's HA pass */
void ha_agent_start(const char *etcd_urls);
void ha_publish(void);   /* this host's running HA VMs' records, now */
bool ha_wanted(json_t *spec);   /* spec's "ha" is high, medium or low */
json_t *ha_monitor_events(void);   /* VM monitoring's last restarts (host report) */

/* ft.c: fault tolerance (a VM's primary and secondary, failover decided
 * through etcd); its HTTP calls are answered by ft_route */
void ft_agent_start(const char *etcd_urls);
struct http_request;
struct http_response;
bool ft_route(const struct http_request *req, struct http_response *resp, const char *rest);

/* migration.c */
int migration_start(const char *name, json_t *req, char *err, size_t errlen);
json_t *migration_status(const char *name);
/* The long poll: waits up to wait_ms for news (a generation other than
 * since) of a migration this ferryd runs; "generation" in the reply. */
json_t *migration_status_wait(const char *name, unsigned long long since, long wait_ms);
int migration_cancel(const char *name, char *err, size_t errlen);
/* Changes a running migration's bandwidth cap ({"bandwidth_mbps": N}, 0: none). */
int migration_set_bandwidth(const char *name, json_t *req, char *err, size_t errlen);
int incoming_start(json_t *req, json_t **reply, char *err, size_t errlen);
/* Makes the empty images a shared-nothing migration copies into: each disk
 * of spec, sizes[i] bytes, sparse, a new file; the paths made (NULL with
 * err, nothing left behind). */
json_t *images_create(json_t *spec, json_t *sizes, char *err, size_t errlen);
void images_remove(json_t *paths);

/* api.c */
struct http_request;
struct http_response;
void api_handle(void *ctx, const struct http_request *req, struct http_response *resp);

#endif
