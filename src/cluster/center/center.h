/*
 * center.h - ferry-center's shared state.
 *
 * ferry-center keeps the inventory and history in SQLite (db.c), learns
 * which hosts live from their etcd leases and what they hold from their
 * ferryds (inventory.c), runs tasks within limits, by priority and at
 * their time (tasks.c), ranks destinations (wizard.c), keeps a hash-chained
 * audit trail (audit.c) and serves the REST API and the web console
 * (api.c). One SQLite connection, guarded by db_lock; calls to ferryds are
 * made without holding it.
 */
#ifndef FERRY_CENTER_H
#define FERRY_CENTER_H

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>

#include "cluster/common/auth.h"
#include "cluster/common/etcd.h"

struct center {
	sqlite3 *db;
	struct auth auth;
	struct etcd etcd;
	char web_dir[4096];
};

extern struct center ctr;
extern pthread_mutex_t db_lock;
/* db_lock for an API call, and for background writers (the inventory
 * sweep), which first let waiting API calls go (up to 50 ms): at 2,500
 * hosts the sweep's writes would otherwise keep the API waiting. */
void db_lock_api(void);
void db_lock_background(void);

/* db.c */
bool db_open(const char *path, char *err, size_t errlen);
/* Runs SQL with "?" bound to the JSON array's items (strings, integers,
 * reals, null); returns the rows as an array of objects (column -> value),
 * or NULL on error (logged). Caller holds db_lock. */
json_t *db_query(const char *sql, json_t *params);
bool db_exec(const char *sql, json_t *params);   /* params stolen */
json_t *db_row(const char *sql, json_t *params); /* first row or NULL; params stolen */
long long db_setting_int(const char *key, long long dflt);
void db_setting_set(const char *key, const char *value);
void db_setting_str(const char *key, const char *dflt, char *out, size_t len);
void iso_or_null(json_t *obj, const char *key, json_t *secs);

/* inventory.c */
void *inventory_loop(void *arg);
json_t *host_json(json_t *row);          /* from a hosts row; under db_lock */
json_t *vm_json(json_t *row);
int host_migrations_running(const char *host);
int host_migration_limit(const char *host);
/* Calls a ferryd: method, host's URL + path; the reply (status set). */
json_t *ferryd_call(const char *url, const char *method, const char *path, json_t *body,
		    long *status, char *err, size_t errlen);

/* tasks.c */
void *tasks_loop(void *arg);
void tasks_wake(void);   /* a task was queued or cancelled: look now */
unsigned long long tasks_ended_gen(void);   /* bumped when any task ends */
void tasks_wait_ended(unsigned long long seen, long ms);   /* until the gen moves, or ms */
json_t *task_json(json_t *row);
long long task_insert(const char *kind, const char *vm, const char *source,
		      const char *dest, const char *state, int priority, long long at,
		      const char *user, json_t *extra);
json_t *task_get(long long id);   /* under db_lock */
void task_finish(long long id, const char *state, const char *error);

/* wizard.c: what a VM's spec uses (datastore names, up to 16; network name) */
void spec_datastores(json_t *spec, char names[][64], int *n);
void spec_network(json_t *spec, char *out, size_t len);
/* wizard.c, under db_lock: the best max_candidates and first max_refused
 * (< 0: all), with their totals; only_host: that host alone (NULL: every
 * host). As JSON text (malloc'd; the API's reply) or parsed. */
/* copy_to: NULL, no host that would need the VM's disks copied; else such
 * hosts are candidates too, the disks copied into copy_to ("": the
 * datastore named like the first disk's). */
char *wizard_recommend_text(json_t *vm_row, long long max_candidates, long long max_refused,
			    const char *only_host, const char *copy_to, size_t *len);
json_t *wizard_recommend_n(json_t *vm_row, long long max_candidates, long long max_refused,
			   const char *only_host, const char *copy_to);

/* audit.c: under db_lock */
void audit_append(const char *user, const char *from, const char *action, const char *target,
		  const char *result, json_t *details);
json_t *audit_verify(void);

/* ha.c: a host's lease is gone; restart its HA VMs elsewhere */
void ha_host_lost(const char *host);
/* VM monitoring's events in a host report -> ha.monitor audit records */
void ha_audit_monitor(const char *host, json_t *events);
/* a VM runs on host, restarted there by the HA decider (under db_lock) */
void ha_adopt(const char *name, const char *host, const char *dead);
/* Does VM name's HA record in etcd put it on host? (the decider moved it) */
bool ha_record_names(const char *name, const char *host);
/* etcd answered the inventory or not; the state for GET /api/v1/cluster */
void ha_etcd_state(bool ok, const char *err);
json_t *ha_etcd_json(void);

/* admission.c: would the layout with VM (spec) on host still restart
 * every HA VM after ha.host_failures_tolerated failures? false with the
 * reason. Under db_lock. */
bool admission_check(const char *vm, json_t *spec, const char *host, char *why, size_t len);

/* rules.c: affinity and anti-affinity rules between VMs (under db_lock).
 * Where a VM is, for a check: the real placement (NULL) or a model's. */
typedef const char *(*vm_host_fn)(const char *vm, void *ctx);
struct rule_set;
struct rule_set *rules_for_vm(const char *vm);   /* the rules naming vm */
void rules_free(struct rule_set *rs);
/* May vm run on host, other VMs where host_of says (NULL: where they are)?
 * false with the rule and why */
bool rules_permit(struct rule_set *rs, const char *vm, const char *host, vm_host_fn host_of,
		  void *ctx, char *why, size_t len);
const char *rules_placed_host(const char *vm, void *ctx);   /* a VM's host, or where it goes */
json_t *rules_list_json(void);
/* /ferry/rules/NAME for the HA decider; not under db_lock */
void rules_sync_etcd(struct etcd *e);

/* API routes kept beside their feature (rules.c, drs.c): what the call
 * changed, for api.c's audit record */
struct http_request;
struct http_response;
struct api_audit {
	char action[64];
	char target[128];
	json_t *details;
};
void rules_api(const struct http_request *req, struct http_response *resp, const char *rest,
	       const char *user, struct api_audit *audit);
void drs_api(const struct http_request *req, struct http_response *resp, const char *rest,
	     const char *user, struct api_audit *audit);

/* drs.c: the balancer and its etcd election; dpm.c: standby hosts */
void *drs_loop(void *arg);
/* a VM's CPU seconds from its host's report; under db_lock */
void drs_sample_vm(const char *vm, const char *host, json_t *report_vm);
json_t *drs_status_json(void);   /* mode, leader, imbalance, recommendations */
/* partial/full: the balanced host among the wizard's candidates (NULL: the
 * wizard's first choice stands); under db_lock */
bool drs_auto_placement(void);
bool drs_initial_host(json_t *spec, json_t *candidates, char *out, size_t len);
/* cluster set: a DRS or DPM key? 1 valid (text set), 0 bad (err), -1 not ours */
int drs_setting_check(const char *key, json_t *v, char *text, size_t tlen, char *err,
		      size_t errlen);
void drs_settings_json(json_t *settings);

/* api.c */
void api_handle(void *ctx, const struct http_request *req, struct http_response *resp);

#endif
