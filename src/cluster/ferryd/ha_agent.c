/*
 * ha_agent.c - HA without ferry-center: the ferryds elect one of them to
 * restart the VMs of hosts whose lease has expired.
 *
 * What the decider needs lives in etcd, not in ferry-center's database:
 * each ferryd publishes its running HA VMs (spec `ha` high, medium or low)
 * as /ferry/ha/NAME = {"host", "spec"} (no lease: the record must outlive
 * the host) and removes the record when such a VM ends on its own or is
 * stopped. A migration's destination takes the record over once the VM
 * runs there.
 *
 * The election: /ferry/ha-leader = NAME, created by a transaction "only if
 * absent" and held by the ferryd's heartbeat lease, so it is renewed with
 * the heartbeat and goes when the holder's lease does (a holder cut off
 * has also fenced itself). Every ferryd campaigns each second; the holder
 * runs the HA pass: a record whose host has no key under /ferry/hosts/
 * (its lease has expired, so that host's ferryd has killed its VMs, see
 * fence.c) is started on a live host, high before medium before low, the
 * VM rules honoured (see rules_load), then the host with the most room
 * first (less what this pass already placed there, so restarts spread),
 * the next host if one refuses (its
 * own checks: memory, datastores, networks), up to HA_MAX_ATTEMPTS passes.
 * The decider first claims the record (a transaction on its revision),
 * and so does a host that fenced its VMs during a blip shorter than the
 * lease and got its lease back (restart_fenced: it starts them again
 * itself): one of the two wins. A claim is {"by", "lease"} in the record,
 * the lease granted for it alone (CLAIM_TTL_S, never renewed): a claimer
 * that dies or hangs between the claim and the start loses it when that
 * lease lapses, and the next decider claims the record again (first
 * checking the live hosts' reports: a claimer that died may have started
 * it); a claimer checks its lease still lives before asking a host to
 * start the VM, and a host's answer is awaited less than the claim lasts.
 * The record then names the new host and says who restarted it, from
 * where and when; ferry-center adopts the VM when it sees it run there
 * and writes the task and the audit record (inventory.c).
 * The decider waits on an etcd watch of /ferry/hosts/ deletes (a lease
 * expiring deletes its host's key), so its pass starts at once.
 *
 * Storage: a record also names the datastores the VM's files are on with
 * their ids ("datastores": {"local": ID}, host.c), and the VM is started
 * only on a host that sees each under that name with that id: another
 * host's `local` may hold a file of the same path (a stale copy) that the
 * path alone would take. When no live host sees them the VM waits
 * (wait_for_storage: "waiting" in the record, reported once per reason,
 * no attempt spent) until one does: another host that shares the
 * datastore, or its own host back, whose ferryd finds the VM killed and,
 * the record still naming it, starts it (restart_fenced).
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/etcd.h"
#include "cluster/common/http_client.h"
#include "cluster/common/qmp_client.h"
#include "cluster/common/util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HA_PREFIX "/ferry/ha/"
#define LEADER_KEY "/ferry/ha-leader"
#define HA_MAX_ATTEMPTS 5
#define HA_PERIOD_MS 500   /* the loop: records, election, a pass */
#define CLAIM_TTL_S 10     /* a claim not followed by a start lapses */
#define START_TIMEOUT_MS 6000   /* a host's answer to a start, within the claim */
#define START_CONFIRM_MS 3000   /* then ferry-vm running, or ended at once */
#define RETRY_AFTER_MS 2000     /* a failed restart is tried again after N x this */
#define VM_OVERHEAD_MIB 32

static struct etcd etcd_ha;

bool ha_wanted(json_t *spec)
{
	const char *ha = json_string_value(json_object_get(spec, "ha"));
	return ha && (!strcmp(ha, "high") || !strcmp(ha, "medium") || !strcmp(ha, "low"));
}

static int ha_rank(json_t *spec)
{
	const char *ha = json_string_value(json_object_get(spec, "ha")) ?: "";
	return !strcmp(ha, "high") ? 0 : !strcmp(ha, "medium") ? 1 : 2;
}

static json_t *record_get(const char *key, bool *ok)
{
	char err[256];
	char *text = etcd_get(&etcd_ha, key, ok, err, sizeof(err));
	json_t *rec = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
	return rec;
}

/* A file of a spec ("DS:PATH[,opts]"): its datastore's id here into ids. */
static void add_datastore_id(json_t *ids, json_t *ref)
{
	const char *r = json_string_value(ref);
	const char *colon = r ? strchr(r, ':') : NULL;
	if (!colon || colon == r || colon - r >= 64)
		return;
	char name[64];
	snprintf(name, sizeof(name), "%.*s", (int)(colon - r), r);
	const char *id = host_datastore_id(name);
	if (id)
		json_object_set_new(ids, name, json_string(id));
}

/* The datastores spec's files are on (kernel, initrd, disks), as this host
 * sees them: {"local": ID, "shared": ID}. The HA record carries them, so
 * the decider restarts the VM only on a host that sees the same storage
 * (the same id under that name), not merely a file at the same path. */
static json_t *spec_datastore_ids(json_t *spec)
{
	json_t *ids = json_object();
	add_datastore_id(ids, json_object_get(spec, "kernel"));
	add_datastore_id(ids, json_object_get(spec, "initrd"));
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(spec, "disks"), i, d)
		add_datastore_id(ids, d);
	return ids;
}

/* Puts the records of this host's running HA VMs, once per VM, unless the
 * record already names this host with the VM's spec and datastores as
 * they are (a record of this host keeps who restarted the VM; a storage
 * move changes the spec: vm_set_spec has it published again).
 * Called by the loop and, so that a VM is protected as soon as its start
 * is answered, before ferryd answers a start. */
void ha_publish(void)
{
	json_t *todo = json_object();
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	for (int i = 0; i < n; i++)
		if (!list[i]->published && !list[i]->exited && !list[i]->leaving &&
		    !list[i]->incoming && list[i]->pid > 0 && ha_wanted(list[i]->spec))
			json_object_set(todo, list[i]->name, list[i]->spec);
	pthread_mutex_unlock(&vms_lock);
	const char *name;
	json_t *spec;
	json_object_foreach(todo, name, spec) {
		char key[128], err[256];
		snprintf(key, sizeof(key), HA_PREFIX "%s", name);
		bool ok;
		json_t *rec = record_get(key, &ok);
		const char *host = json_string_value(json_object_get(rec, "host"));
		bool mine = host && !strcmp(host, fd_cfg.name);
		json_t *ids = spec_datastore_ids(spec);
		bool current = mine && json_equal(json_object_get(rec, "spec"), spec) &&
			       json_equal(json_object_get(rec, "datastores"), ids);
		if (ok && !current) {
			json_t *next = mine ? json_deep_copy(rec) : json_object();
			json_object_set_new(next, "host", json_string(fd_cfg.name));
			json_object_set(next, "spec", spec);
			json_object_set(next, "datastores", ids);
			char *text = json_dumps(next, JSON_COMPACT);
			json_decref(next);
			ok = etcd_put(&etcd_ha, key, text, 0, err, sizeof(err));
			free(text);
			if (ok)
				logf_(mine ? "HA: VM %s: its HA record follows its spec (disks moved)"
					   : "HA: VM %s runs here: its HA record is in etcd", name);
		}
		json_decref(ids);
		json_decref(rec);
		if (!ok)
			continue;
		pthread_mutex_lock(&vms_lock);
		struct vm *vm = vm_find(name);
		if (vm && ok)
			vm->published = true;
		pthread_mutex_unlock(&vms_lock);
	}
	json_decref(todo);
}

/* Removes the records naming this host whose VM no longer runs here (ended
 * or stopped), except those the self-fence killed: HA restarts those. */
static void unpublish(json_t *records)
{
	const char *key;
	json_t *value;
	json_object_foreach(records, key, value) {
		json_t *rec = json_loads(json_string_value(value), 0, NULL);
		const char *host = json_string_value(json_object_get(rec, "host"));
		const char *name = key + strlen(HA_PREFIX);
		if (host && !strcmp(host, fd_cfg.name)) {
			pthread_mutex_lock(&vms_lock);
			struct vm *vm = vm_find(name);
			bool gone = !vm || (vm->exited && !vm->fenced);
			pthread_mutex_unlock(&vms_lock);
			char err[256];
			if (gone && etcd_delete(&etcd_ha, key, err, sizeof(err)))
				logf_("HA: VM %s no longer runs here: its HA record is removed", name);
		}
		json_decref(rec);
	}
}

/* Is the claim in a record (if any) still held? Its lease tells: the
 * claimer grants a lease of CLAIM_TTL_S for each claim and does not renew
 * it, so a claimer that dies or stalls between the claim and the start
 * loses the claim within CLAIM_TTL_S. Unknown (etcd silent): held. */
static bool claim_held(json_t *rec)
{
	json_t *c = json_object_get(rec, "claim");
	if (!c)
		return false;
	char err[256];
	int64_t left = etcd_lease_ttl(&etcd_ha, json_integer_value(json_object_get(c, "lease")),
				      err, sizeof(err));
	if (left == -1)
		logf_("HA: VM %s: the claim of %s has expired (it died or stalled before the "
		      "start): it may be claimed again", json_string_value(json_object_get(rec, "name"))
		      ?: "?", json_string_value(json_object_get(c, "by")) ?: "?");
	return left != -1;
}

/* Takes a record for a restart: only if it still names host `from`, holds
 * no live claim, and has not changed since read (a transaction on its
 * mod_revision), so the decider and a host restarting its own fenced VMs
 * never both start it. extra (stolen) is merged into the record. Returns
 * the claim's lease (0: not claimed). */
static int64_t claim(const char *name, const char *from, json_t *extra)
{
	char key[128], err[256];
	snprintf(key, sizeof(key), HA_PREFIX "%s", name);
	bool ok, swapped = false;
	int64_t rev, lease = 0;
	char *text = etcd_get_rev(&etcd_ha, key, &ok, &rev, err, sizeof(err));
	json_t *rec = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
	const char *host = json_string_value(json_object_get(rec, "host"));
	if (rec && host && !strcmp(host, from)) {
		json_object_set_new(rec, "name", json_string(name));
		if (!claim_held(rec))
			lease = etcd_lease_grant(&etcd_ha, CLAIM_TTL_S, err, sizeof(err));
		json_object_del(rec, "name");
	}
	if (lease) {
		json_object_update(rec, extra);
		json_object_set_new(rec, "claim", json_pack("{s:s, s:I}", "by", fd_cfg.name, "lease",
							    (json_int_t)lease));
		char *next = json_dumps(rec, JSON_COMPACT);
		etcd_put_if_rev(&etcd_ha, key, next, rev, &swapped, err, sizeof(err));
		free(next);
	}
	json_decref(extra);
	json_decref(rec);
	return swapped ? lease : 0;
}

/* Still ours to start? (the claim's lease lives) */
static bool claim_alive(int64_t lease)
{
	char err[256];
	return etcd_lease_ttl(&etcd_ha, lease, err, sizeof(err)) >= 0;
}

static void record_put(const char *name, json_t *rec)
{
	char key[128], err[256];
	snprintf(key, sizeof(key), HA_PREFIX "%s", name);
	char *text = json_dumps(rec, JSON_COMPACT);
	etcd_put(&etcd_ha, key, text, 0, err, sizeof(err));
	free(text);
}

/* A test hook (FERRYD_TEST_HA_AFTER_CLAIM, tests/integration/test_ha.py):
 * "exit:FLAG" ends this ferryd right after its first claim, "stall:S:FLAG"
 * stops this thread S seconds there; once in the whole lab (whoever
 * creates the file FLAG first). Stands for a decider that dies or hangs
 * between the claim and the start. */
static void test_hook_after_claim(const char *name)
{
	const char *hook = getenv("FERRYD_TEST_HA_AFTER_CLAIM");
	if (!hook)
		return;
	bool stall = !strncmp(hook, "stall:", 6);
	const char *flag = strrchr(hook, ':');
	int fd = flag ? open(flag + 1, O_WRONLY | O_CREAT | O_EXCL, 0600) : -1;
	if (fd < 0)
		return;
	close(fd);
	if (!stall) {
		logf_("HA: test hook: dying right after claiming VM %s", name);
		_exit(9);
	}
	int seconds = atoi(hook + 6);
	logf_("HA: test hook: stalling %d s right after claiming VM %s", seconds, name);
	sleep(seconds);
}

/* After a self-fence, once the lease is renewed: a killed HA VM whose
 * record still names this host (the lease never expired, or no decider
 * acted) is started again here; one whose record moved runs elsewhere. */
static int own_host_locked(void);

static void restart_fenced(void)
{
	json_t *todo = json_object();
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	for (int i = 0; i < n; i++)
		if (list[i]->fenced && list[i]->exited && ha_wanted(list[i]->spec))
			json_object_set(todo, list[i]->name, list[i]->spec);
	pthread_mutex_unlock(&vms_lock);
	if (json_object_size(todo) && own_host_locked() != 0) {
		static int64_t said;
		if (mono_ms() - said > 10000)
			logf_("HA: the HA decider holds this host's HA lock: its fenced VMs are "
			      "HA's to restart, not this host's");
		said = mono_ms();
		json_object_clear(todo);
	}
	const char *name;
	json_t *spec;
	json_object_foreach(todo, name, spec) {
		json_t *done = json_pack("{s:s, s:O, s:s, s:s, s:s, s:I}", "host", fd_cfg.name, "spec",
					 spec, "restarted_by", fd_cfg.name, "from", fd_cfg.name,
					 "after", "self-fence", "at_ms", (json_int_t)now_ms());
		bool mine = claim(name, fd_cfg.name, json_deep_copy(done)) != 0;
		char err[512];
		int rc = mine ? vm_start(name, json_incref(spec), NULL, NULL, err, sizeof(err)) : 0;
		if (mine)
			logf_("HA: VM %s ended here (fenced, or its host died with it) and its HA "
			      "record still leaves it to this host: %s", name,
			      rc == 201 ? "started again here" : err);
		else
			logf_("HA: VM %s ended here (fenced, or its host died with it): its HA "
			      "record does not leave it to this host (it runs elsewhere, or another "
			      "claimed it): not started here", name);
		if (rc == 201)
			record_put(name, done);   /* the claim is spent */
		json_decref(done);
		pthread_mutex_lock(&vms_lock);
		struct vm *vm = vm_find(name);
		if (vm && rc != 201) {   /* runs elsewhere, or failed: leave it */
			vm->fenced = false;
			vm->monitor_done = true;   /* killed by the fence: not a crash to restart */
		}
		pthread_mutex_unlock(&vms_lock);
		if (rc == 201)
			ha_publish();
	}
	json_decref(todo);
}

/* What VM monitoring did (ha.monitor) and the HA decider's failed
 * restarts (ha.restart, failed), for ferry-center's audit trail: the last
 * MONITOR_EVENTS events, in the host report (ha_monitor_events). */
#define MONITOR_EVENTS 16
static json_t *monitor_events;
static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;

static void ha_event(const char *action, const char *name, const char *why,
		     const char *outcome, bool ok)
{
	pthread_mutex_lock(&events_lock);
	if (!monitor_events)
		monitor_events = json_array();
	json_array_append_new(monitor_events, json_pack("{s:s, s:s, s:s, s:s, s:b, s:I}", "action",
							action, "vm", name, "why", why, "outcome",
							outcome, "ok", ok, "at_ms",
							(json_int_t)now_ms()));
	while (json_array_size(monitor_events) > MONITOR_EVENTS)
		json_array_remove(monitor_events, 0);
	pthread_mutex_unlock(&events_lock);
}

static void monitor_event(const char *name, const char *why, const char *outcome, bool ok)
{
	ha_event("ha.monitor", name, why, outcome, ok);
}

json_t *ha_monitor_events(void)
{
	pthread_mutex_lock(&events_lock);
	json_t *copy = monitor_events ? json_deep_copy(monitor_events) : json_array();
	pthread_mutex_unlock(&events_lock);
	return copy;
}

/* VM monitoring: an HA VM whose ferry-vm died (a signal, or vanished) on
 * this live host, not by the fence nor by a stop, starts again here, at
 * most MONITOR_RESTARTS_PER_HOUR times an hour; a guest that powered
 * itself off (exit status) stays off. */
#define MONITOR_RESTARTS_PER_HOUR 3
struct restarts {
	char name[64];
	int64_t at_ms[MONITOR_RESTARTS_PER_HOUR];
};
static struct restarts restarts_table[64];

static struct restarts *restarts_of(const char *name)
{
	struct restarts *free_slot = NULL;
	for (size_t i = 0; i < sizeof(restarts_table) / sizeof(restarts_table[0]); i++) {
		if (!strcmp(restarts_table[i].name, name))
			return &restarts_table[i];
		if (!restarts_table[i].name[0] && !free_slot)
			free_slot = &restarts_table[i];
	}
	if (free_slot)
		snprintf(free_slot->name, sizeof(free_slot->name), "%s", name);
	return free_slot;
}

/* Room for one more restart this hour? (not counted) */
static bool restart_allowed_peek(const char *name)
{
	struct restarts *r = restarts_of(name);
	for (int i = 0; r && i < MONITOR_RESTARTS_PER_HOUR; i++)
		if (!r->at_ms[i] || now_ms() - r->at_ms[i] > 3600 * 1000)
			return true;
	return false;
}

/* Room for one more restart this hour? Then it is counted. */
static bool restart_allowed(const char *name)
{
	struct restarts *r = restarts_of(name);
	if (!r)
		return false;
	int64_t now = now_ms();
	for (int i = 0; i < MONITOR_RESTARTS_PER_HOUR; i++)
		if (!r->at_ms[i] || now - r->at_ms[i] > 3600 * 1000) {
			r->at_ms[i] = now;
			return true;
		}
	return false;
}

static void restart_crashed(void)
{
	json_t *todo = json_object();
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	for (int i = 0; i < n; i++) {
		struct vm *vm = list[i];
		if (vm->exited && !vm->fenced && !vm->leaving && !vm->monitor_done &&
		    ha_wanted(vm->spec) && (!strncmp(vm->exit_desc, "signal", 6) ||
					    !strcmp(vm->exit_desc, "vanished"))) {
			vm->monitor_done = true;
			json_object_set_new(todo, vm->name, json_pack("{s:O, s:s}", "spec", vm->spec,
								       "how", vm->exit_desc));
		}
	}
	pthread_mutex_unlock(&vms_lock);
	const char *name;
	json_t *what;
	json_object_foreach(todo, name, what) {
		char why[128];
		snprintf(why, sizeof(why), "died (%s)",
			 json_string_value(json_object_get(what, "how")));
		if (!restart_allowed(name)) {
			logf_("VM monitoring: VM %s %s: not restarted, %d restarts in the last "
			      "hour already", name, why, MONITOR_RESTARTS_PER_HOUR);
			monitor_event(name, why, "not restarted: the limit an hour", false);
			continue;
		}
		char err[512];
		int rc = vm_start(name, json_incref(json_object_get(what, "spec")), NULL, NULL, err,
				  sizeof(err));
		logf_("VM monitoring: VM %s %s: %s", name, why,
		      rc == 201 ? "started again here" : err);
		monitor_event(name, why, rc == 201 ? "started again here" : err, rc == 201);
		if (rc == 201)
			ha_publish();
	}
	json_decref(todo);
}

/* Hung guests: ferry-vm alive, its guest's kernel stalled. ferry-vm's
 * query-status gives a heartbeat once the guest has one
 * (machine/heartbeat.c: returns to user mode and WFIs, on the guest
 * clock, which stops while paused); an HA VM running whose heartbeat has
 * stalled HUNG_AFTER_MS is killed and started again here, within the
 * same limit an hour as a crash. Looked at every HUNG_LOOK_MS. */
#define HUNG_AFTER_MS 10000
#define HUNG_LOOK_MS 1000

/* The VM's heartbeat stall (ms) if it runs with one, else -1. */
static json_int_t heartbeat_stall(const char *ctl)
{
	char e[256];
	json_t *st = qmp_call(ctl, "query-status", NULL, e, sizeof(e));
	json_t *beat = json_object_get(st, "heartbeat");
	bool running = json_is_true(json_object_get(st, "running"));
	json_int_t stall = running && beat ? json_integer_value(json_object_get(beat,
									  "stalled_ms")) : -1;
	json_decref(st);
	return stall;
}

/* Kills a hung VM's ferry-vm and starts it again here. */
static void restart_hung(const char *name, json_t *spec, json_int_t stall_ms)
{
	char why[128], err[512];
	snprintf(why, sizeof(why), "hung: no guest heartbeat for %lld s (ferry-vm alive)",
		 (long long)(stall_ms / 1000));
	if (!restart_allowed(name)) {
		logf_("VM monitoring: VM %s %s: not restarted, %d restarts in the last hour "
		      "already", name, why, MONITOR_RESTARTS_PER_HOUR);
		monitor_event(name, why, "not restarted: the limit an hour", false);
		return;
	}
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (vm && !vm->exited) {
		vm->monitor_done = true;   /* not a crash for restart_crashed */
		kill(vm->pid, SIGKILL);
	}
	pthread_mutex_unlock(&vms_lock);
	bool ended = false;
	for (int i = 0; i < 200 && !ended; i++) {   /* 10 s: the monitor notes the end */
		usleep(50 * 1000);
		pthread_mutex_lock(&vms_lock);
		vm = vm_find(name);
		ended = !vm || vm->exited;
		pthread_mutex_unlock(&vms_lock);
	}
	int rc = ended ? vm_start(name, json_incref(spec), NULL, NULL, err, sizeof(err)) : 0;
	if (!ended)
		snprintf(err, sizeof(err), "its ferry-vm did not end after SIGKILL");
	logf_("VM monitoring: VM %s %s: %s", name, why, rc == 201 ? "started again here" : err);
	monitor_event(name, why, rc == 201 ? "started again here" : err, rc == 201);
	if (rc == 201)
		ha_publish();
}

static void watch_heartbeats(void)
{
	static int64_t last_look;
	static json_t *given_up;   /* name -> pid left hung (over the limit) */
	if (mono_ms() - last_look < HUNG_LOOK_MS)
		return;
	last_look = mono_ms();
	if (!given_up)
		given_up = json_object();
	json_t *todo = json_object();
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	for (int i = 0; i < n; i++) {
		struct vm *vm = list[i];
		if (vm->exited || vm->incoming || vm->leaving || vm->fenced || vm->pid <= 0 ||
		    !ha_wanted(vm->spec))
			continue;
		char *ctl = vm_control_path(vm);
		json_object_set_new(todo, vm->name, json_pack("{s:s, s:O, s:i}", "ctl", ctl, "spec",
							      vm->spec, "pid", (int)vm->pid));
		free(ctl);
	}
	pthread_mutex_unlock(&vms_lock);
	const char *name;
	json_t *what;
	json_object_foreach(todo, name, what) {
		json_int_t pid = json_integer_value(json_object_get(what, "pid"));
		if (json_integer_value(json_object_get(given_up, name)) == pid)
			continue;
		json_int_t stall = heartbeat_stall(json_string_value(json_object_get(what, "ctl")));
		if (stall < HUNG_AFTER_MS)
			continue;
		if (!restart_allowed_peek(name))
			json_object_set_new(given_up, name, json_integer(pid));
		restart_hung(name, json_object_get(what, "spec"), stall);
	}
	json_decref(todo);
}

static bool campaign(void)
{
	static bool was_leader;
	int64_t lease = heartbeat_lease();
	if (!lease || fence_isolated())
		return was_leader = false;
	char err[256];
	bool created, ok;
	etcd_create(&etcd_ha, LEADER_KEY, fd_cfg.name, lease, &created, err, sizeof(err));
	char *holder = etcd_get(&etcd_ha, LEADER_KEY, &ok, err, sizeof(err));
	bool leader = holder && !strcmp(holder, fd_cfg.name);
	if (leader != was_leader)
		logf_("HA: %s the HA decider (%s holds %s)", leader ? "now" : "no longer",
		      holder ? holder : "nobody", LEADER_KEY);
	free(holder);
	return was_leader = leader;
}

/* What a host can still give a VM: the memory it offers VMs less what its
 * VMs take (as ferry-center counts it), and never more than the machine
 * has free. */
static json_int_t offered_room_mib(json_t *rep)
{
	json_int_t offered = json_integer_value(json_object_get(rep, "vm_memory_mib"));
	json_int_t free_mib = json_integer_value(json_object_get(rep, "free_mib"));
	size_t i;
	json_t *vm;
	json_array_foreach(json_object_get(rep, "vm_list"), i, vm)
		if (strcmp(json_string_value(json_object_get(vm, "state")) ?: "", "exited"))
			offered -= json_integer_value(json_object_get(json_object_get(vm, "spec"),
								      "mem_mib")) + VM_OVERHEAD_MIB;
	return offered > 0 && offered < free_mib ? offered : offered > 0 ? free_mib : 0;
}

/* The live hosts' reports, with "room_mib", and "planned_mib" and
 * "planned_vms" for what this pass puts there. */
static json_t *live_reports(json_t *live)
{
	json_t *out = json_array();
	const char *key;
	json_t *value;
	json_object_foreach(live, key, value) {
		json_t *info = json_loads(json_string_value(value), 0, NULL);
		const char *url = json_string_value(json_object_get(info, "url"));
		char full[300], err[256];
		long status;
		snprintf(full, sizeof(full), "%s/agent/v1/host", url ? url : "");
		json_t *rep = url ? http_json("GET", full, fd_cfg.auth.present, NULL, 3000, &status,
					      err, sizeof(err)) : NULL;
		if (rep && status == 200) {
			json_object_set(rep, "url", json_object_get(info, "url"));
			json_object_set_new(rep, "planned_mib", json_integer(0));
			json_object_set_new(rep, "planned_vms", json_array());
			json_object_set_new(rep, "room_mib", json_integer(offered_room_mib(rep)));
			json_array_append(out, rep);
		}
		json_decref(rep);
		json_decref(info);
	}
	return out;
}

static json_int_t room_mib(json_t *rep)
{
	return json_integer_value(json_object_get(rep, "room_mib")) -
	       json_integer_value(json_object_get(rep, "planned_mib"));
}

/*
 * VM rules: ferry-center's affinity and anti-affinity rules (rules.c),
 * copied by the DRS decider to /ferry/rules/NAME = {"name", "kind", "vms"}
 * so that HA honours them while ferry-center is down. A restart goes to a
 * host that holds none of the VM's anti-affinity partners, preferring the
 * one holding most of its affinity partners; only when no such host takes
 * it does it go next to a partner (running beats a rule: the restart is
 * logged as breaking it, and DRS mends broken rules when it can).
 */
static json_t *rules_load(void)
{
	char err[256];
	json_t *kv = etcd_get_prefix(&etcd_ha, "/ferry/rules/", err, sizeof(err));
	json_t *rules = json_array();
	const char *key;
	json_t *value;
	json_object_foreach(kv, key, value) {
		json_t *rule = json_loads(json_string_value(value) ?: "", 0, NULL);
		if (json_is_array(json_object_get(rule, "vms")))
			json_array_append(rules, rule);
		json_decref(rule);
	}
	json_decref(kv);
	return rules;
}

static bool holds_vm(json_t *rep, const char *vm)
{
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(rep, "vm_list"), i, v)
		if (!strcmp(json_string_value(json_object_get(v, "name")) ?: "", vm) &&
		    strcmp(json_string_value(json_object_get(v, "state")) ?: "", "exited"))
			return true;
	json_array_foreach(json_object_get(rep, "planned_vms"), i, v)
		if (!strcmp(json_string_value(v) ?: "", vm))
			return true;
	return false;
}

/* How many of VM name's anti-affinity (apart) and affinity (together)
 * partners host rep holds; *rule names the first rule it would break. */
static void rule_partners(json_t *rules, const char *name, json_t *rep, int *apart,
			  int *together, const char **rule)
{
	size_t i, j;
	json_t *r, *vm;
	*apart = *together = 0;
	*rule = NULL;
	json_array_foreach(rules, i, r) {
		json_t *vms = json_object_get(r, "vms");
		bool member = false;
		json_array_foreach(vms, j, vm)
			member |= !strcmp(json_string_value(vm) ?: "", name);
		if (!member)
			continue;
		bool anti = !strcmp(json_string_value(json_object_get(r, "kind")) ?: "",
				    "anti-affinity");
		json_array_foreach(vms, j, vm) {
			const char *other = json_string_value(vm) ?: "";
			if (!strcmp(other, name) || !holds_vm(rep, other))
				continue;
			if (anti) {
				(*apart)++;
				*rule = *rule ?: json_string_value(json_object_get(r, "name"));
			} else {
				(*together)++;
			}
		}
	}
}

struct candidate {
	json_t *rep;
	int apart, together;
	const char *rule;   /* the anti-affinity rule a start there breaks */
};

/* Rules first (no partner to keep apart from, most partners to join),
 * then room. */
static int by_rules_then_room(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	if (x->apart != y->apart)
		return x->apart - y->apart;
	if (x->together != y->together)
		return y->together - x->together;
	json_int_t rx = room_mib(x->rep), ry = room_mib(y->rep);
	return rx < ry ? 1 : rx > ry ? -1 : 0;
}

/* After a host answered 201: does the VM run there, or did ferry-vm end
 * at once? (above all: its disk image is locked by a copy still running
 * somewhere, the second line of fencing after the lease). Watched up to
 * START_CONFIRM_MS; still starting then counts as started. */
static bool start_confirmed(const char *url, const char *name, char *why, size_t whylen)
{
	char full[400], err[256];
	snprintf(full, sizeof(full), "%s/agent/v1/vms/%s", url, name);
	int64_t end = mono_ms() + START_CONFIRM_MS;
	while (mono_ms() < end) {
		long status;
		json_t *vm = http_json("GET", full, fd_cfg.auth.present, NULL, 3000, &status, err,
				       sizeof(err));
		const char *state = json_string_value(json_object_get(vm, "state"));
		bool running = state && !strcmp(state, "running") &&
			       json_object_get(vm, "vm_status");
		bool ended = state && !strcmp(state, "exited");
		if (ended) {
			const char *out = json_string_value(json_object_get(vm, "last_output"));
			char last[300] = "";
			if (out) {   /* its last line */
				const char *nl = out + strlen(out);
				while (nl > out && nl[-1] == '\n')
					nl--;
				const char *start = nl;
				while (start > out && start[-1] != '\n')
					start--;
				snprintf(last, sizeof(last), "%.*s", (int)(nl - start), start);
			}
			snprintf(why, whylen, "ferry-vm ended at once (%s)%s%s",
				 json_string_value(json_object_get(vm, "exit")) ?: "?",
				 last[0] ? ": " : "", last);
		}
		json_decref(vm);
		if (running)
			return true;
		if (ended)
			return false;
		usleep(100 * 1000);
	}
	return true;
}

/* Does host report rep see datastore name with this id? */
static bool sees_datastore(json_t *rep, const char *name, const char *id)
{
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(rep, "datastores"), i, d)
		if (!strcmp(json_string_value(json_object_get(d, "name")) ?: "", name) &&
		    !strcmp(json_string_value(json_object_get(d, "id")) ?: "", id))
			return true;
	return false;
}

/* Does the host see every datastore of ids (the record's "datastores":
 * name -> id)? false with why. A record without ids (an older ferryd's)
 * is checked by the host itself, by path, as before. */
static bool sees_storage(json_t *rep, json_t *ids, char *why, size_t whylen)
{
	const char *name;
	json_t *id;
	json_object_foreach(ids, name, id) {
		if (sees_datastore(rep, name, json_string_value(id) ?: ""))
			continue;
		snprintf(why, whylen, "host %s does not see datastore %s (id %.8s)",
			 json_string_value(json_object_get(rep, "name")) ?: "?", name,
			 json_string_value(id) ?: "?");
		return false;
	}
	return true;
}

/* Can a live host see all of the VM's storage? false with why: a
 * datastore no live host sees (named with its id and the host it was
 * on), or none that sees them all. Such a VM waits, its attempts not
 * spent, until a host that sees its storage is live (vSphere HA's rule:
 * a VM is restarted only where its storage is). */
static bool storage_reachable(json_t *reports, json_t *ids, const char *from, char *why,
			      size_t whylen)
{
	size_t i;
	json_t *rep;
	const char *name;
	json_t *id;
	char skip[512];
	json_array_foreach(reports, i, rep)
		if (sees_storage(rep, ids, skip, sizeof(skip)))
			return true;
	json_object_foreach(ids, name, id) {
		bool seen = false;
		json_array_foreach(reports, i, rep)
			seen = seen || sees_datastore(rep, name, json_string_value(id) ?: "");
		if (!seen) {
			snprintf(why, whylen, "datastore %s (id %.8s, as host %s had it) not visible "
				 "from any live host: the VM restarts once a host that sees it is live",
				 name, json_string_value(id) ?: "?", from);
			return false;
		}
	}
	snprintf(why, whylen, "no live host sees all of its datastores: the VM restarts once "
		 "one does");
	return false;
}

/* Starts one VM on the live host that accepts it, in the order of the VM
 * rules, then room, among those that see its storage (ids); the host or
 * NULL. */
static const char *restart_on_some_host(const char *name, json_t *spec, json_t *ids,
					json_t *reports, json_t *rules, int64_t claim_lease,
					char *why, size_t whylen)
{
	size_t n = json_array_size(reports);
	struct candidate *cand = calloc(n ? n : 1, sizeof(*cand));
	json_t **order = calloc(n ? n : 1, sizeof(json_t *));
	for (size_t i = 0; i < n; i++) {
		cand[i].rep = json_array_get(reports, i);
		rule_partners(rules, name, cand[i].rep, &cand[i].apart, &cand[i].together,
			      &cand[i].rule);
	}
	qsort(cand, n, sizeof(*cand), by_rules_then_room);
	for (size_t i = 0; i < n; i++)
		order[i] = cand[i].rep;
	json_int_t need = json_integer_value(json_object_get(spec, "mem_mib")) + VM_OVERHEAD_MIB;
	const char *chosen = NULL;
	snprintf(why, whylen, "no live host");
	for (size_t i = 0; i < n && !chosen; i++) {
		const char *host = json_string_value(json_object_get(order[i], "name"));
		if (!sees_storage(order[i], ids, why, whylen))
			continue;
		if (room_mib(order[i]) < need) {
			snprintf(why, whylen, "host %s: not enough free memory", host);
			continue;
		}
		if (!claim_alive(claim_lease)) {   /* the hosts before were slow */
			snprintf(why, whylen, "the claim expired before host %s was asked", host);
			break;
		}
		char url[300], err[512];
		long status;
		snprintf(url, sizeof(url), "%s/agent/v1/vms",
			 json_string_value(json_object_get(order[i], "url")));
		json_t *body = json_pack("{s:s, s:O}", "name", name, "spec", spec);
		json_t *r = http_json("POST", url, fd_cfg.auth.present, body, START_TIMEOUT_MS, &status, err,
				      sizeof(err));
		json_decref(body);
		char failed[600];
		if (r && status == 201 && !start_confirmed(json_string_value(json_object_get(
				order[i], "url")), name, failed, sizeof(failed))) {
			snprintf(why, whylen, "host %s: %s", host, failed);
			snprintf(url, sizeof(url), "%s/agent/v1/vms/%s", json_string_value(
				 json_object_get(order[i], "url")), name);   /* tidy: forget it */
			json_decref(http_json("DELETE", url, fd_cfg.auth.present, NULL, 5000, &status,
					      err, sizeof(err)));
		} else if (r && (status == 201 || status == 409)) {   /* 409: runs there already */
			chosen = host;
			json_object_set_new(order[i], "planned_mib",
				json_integer(json_integer_value(json_object_get(order[i],
					"planned_mib")) + need));
			json_array_append_new(json_object_get(order[i], "planned_vms"),
					      json_string(name));
			if (cand[i].apart)
				logf_("HA: VM %s restarted on %s against anti-affinity rule %s: no "
				      "other host took it (DRS mends the rule when it can)", name,
				      host, cand[i].rule);
		} else {
			snprintf(why, whylen, "host %s: %s", host, r ? json_string_value(
				json_object_get(json_object_get(r, "error"), "message")) ?: "refused"
				: err);
		}
		json_decref(r);
	}
	free(order);
	free(cand);
	return chosen;
}

static int by_rank(const void *a, const void *b)
{
	json_t *ra = *(json_t *const *)a, *rb = *(json_t *const *)b;
	int d = ha_rank(json_object_get(ra, "spec")) - ha_rank(json_object_get(rb, "spec"));
	return d ? d : strcmp(json_string_value(json_object_get(ra, "name")),
			      json_string_value(json_object_get(rb, "name")));
}

/* The live host whose report lists VM name, not ended; NULL when none. */
static const char *runs_on(json_t *reports, const char *name)
{
	size_t i, j;
	json_t *rep, *vm;
	json_array_foreach(reports, i, rep)
		json_array_foreach(json_object_get(rep, "vm_list"), j, vm)
			if (!strcmp(json_string_value(json_object_get(vm, "name")) ?: "", name) &&
			    strcmp(json_string_value(json_object_get(vm, "state")) ?: "", "exited"))
				return json_string_value(json_object_get(rep, "name"));
	return NULL;
}

/* The HA lock of a dead host, /ferry/ha-lock/HOST: the decider restarts a
 * host's VMs only once that host's lease has expired AND it holds this
 * lock (created only if absent, held by the decider's heartbeat lease, so
 * it goes with a decider that dies). The host, its lease back, starts
 * none of its fenced VMs again while the lock is there (restart_fenced):
 * they are HA's. Released once no record names the host. True when held
 * by this host now. */
#define LOCK_PREFIX "/ferry/ha-lock/"
static bool host_locked(const char *host)
{
	char key[128], err[256];
	snprintf(key, sizeof(key), LOCK_PREFIX "%s", host);
	bool created, ok;
	etcd_create(&etcd_ha, key, fd_cfg.name, heartbeat_lease(), &created, err, sizeof(err));
	char *holder = etcd_get(&etcd_ha, key, &ok, err, sizeof(err));
	bool mine = holder && !strcmp(holder, fd_cfg.name);
	if (created)
		logf_("HA: holds the HA lock of host %s (%s)", host, key);
	free(holder);
	return mine;
}

/* Releases the locks this decider holds of hosts that left HA's hands:
 * back alive, or no record it may still restart names them. */
static void release_locks(json_t *records, json_t *live)
{
	char err[256];
	json_t *locks = etcd_get_prefix(&etcd_ha, LOCK_PREFIX, err, sizeof(err));
	const char *key, *rkey;
	json_t *value, *rvalue;
	json_object_foreach(locks, key, value) {
		const char *host = key + strlen(LOCK_PREFIX);
		if (strcmp(json_string_value(value) ?: "", fd_cfg.name))
			continue;
		char hkey[128];
		snprintf(hkey, sizeof(hkey), "/ferry/hosts/%s", host);
		bool pending = false;
		json_object_foreach(records, rkey, rvalue) {
			json_t *rec = json_loads(json_string_value(rvalue), 0, NULL);
			pending = pending || (!strcmp(json_string_value(json_object_get(rec, "host"))
						      ?: "", host) &&
					      json_integer_value(json_object_get(rec, "attempts")) <
					      HA_MAX_ATTEMPTS);
			json_decref(rec);
		}
		if ((!pending || json_object_get(live, hkey)) &&
		    etcd_delete(&etcd_ha, key, err, sizeof(err)))
			logf_("HA: released the HA lock of host %s", host);
	}
	json_decref(locks);
}

/* Does HA hold this host's lock? (then its fenced VMs are HA's) -1: unknown */
static int own_host_locked(void)
{
	char key[128], err[256];
	snprintf(key, sizeof(key), LOCK_PREFIX "%s", fd_cfg.name);
	bool ok;
	char *holder = etcd_get(&etcd_ha, key, &ok, err, sizeof(err));
	free(holder);
	return !ok ? -1 : holder != NULL;
}

/* VMs waiting for their storage (name -> when to look again, monotonic
 * ms): a waiting VM is looked at every STRANDED_LOOK_MS, not every pass. */
#define STRANDED_LOOK_MS 2000
static json_t *stranded_look;

static bool stranded_rest(json_t *rec, const char *name)
{
	return json_object_get(rec, "waiting") && stranded_look &&
	       mono_ms() < json_integer_value(json_object_get(stranded_look, name));
}

/* No live host sees the VM's storage: it is not started anywhere (a host
 * without its datastore would boot it from another disk of the same
 * name, or not at all) and no attempt is spent; the record says why in
 * "waiting" and, once per reason, the decider logs it and reports a
 * failed ha.restart (ferry-center audits it and shows it in the VM's
 * "ha_waiting"). A host that sees the storage, once live, restarts it:
 * its own host back (restart_fenced) or, by this pass, another. */
static void wait_for_storage(json_t *rec, const char *name, const char *from, const char *why)
{
	if (!stranded_look)
		stranded_look = json_object();
	json_object_set_new(stranded_look, name, json_integer(mono_ms() + STRANDED_LOOK_MS));
	if (!strcmp(json_string_value(json_object_get(rec, "waiting")) ?: "", why))
		return;   /* said already */
	if (!claim(name, from, json_object()))
		return;   /* changed meanwhile, or claimed by another */
	json_t *next = json_deep_copy(rec);
	json_object_del(next, "name");
	json_object_del(next, "claim");
	json_object_set_new(next, "waiting", json_string(why));
	record_put(name, next);
	json_decref(next);
	logf_("HA: VM %s (host %s gone) is not restarted: %s", name, from, why);
	char what[128];
	snprintf(what, sizeof(what), "restart after host %s died", from);
	ha_event("ha.restart", name, what, why, false);
}

/* The holder's pass: restart the HA VMs of hosts whose lease has gone.
 * *hosts_rev: the revision at which the live hosts were read. */
static void ha_pass(json_t *records, int64_t *hosts_rev)
{
	char err[512];
	int64_t pass_start = mono_ms();
	json_t *live = etcd_get_prefix_rev(&etcd_ha, "/ferry/hosts/", hosts_rev, err, sizeof(err));
	if (!live)
		return;   /* no quorum, no decision */
	json_t *orphans = json_array();
	const char *key;
	json_t *value;
	json_object_foreach(records, key, value) {
		json_t *rec = json_loads(json_string_value(value), 0, NULL);
		const char *host = json_string_value(json_object_get(rec, "host"));
		char hkey[128];
		snprintf(hkey, sizeof(hkey), "/ferry/hosts/%s", host ? host : "");
		json_int_t attempts = json_integer_value(json_object_get(rec, "attempts"));
		json_int_t retry_at = json_integer_value(json_object_get(rec, "retry_at_ms"));
		if (host && !json_object_get(live, hkey) && attempts < HA_MAX_ATTEMPTS &&
		    now_ms() >= retry_at && !stranded_rest(rec, key + strlen(HA_PREFIX)) &&
		    host_locked(host)) {
			json_object_set_new(rec, "name", json_string(key + strlen(HA_PREFIX)));
			json_array_append(orphans, rec);
		}
		json_decref(rec);
	}
	size_t n = json_array_size(orphans);
	if (!n) {
		release_locks(records, live);
		json_decref(orphans);
		json_decref(live);
		return;
	}
	json_t **order = calloc(n, sizeof(json_t *));
	for (size_t i = 0; i < n; i++)
		order[i] = json_array_get(orphans, i);
	qsort(order, n, sizeof(json_t *), by_rank);
	json_t *reports = live_reports(live);
	json_t *rules = rules_load();
	for (size_t i = 0; i < n; i++) {
		json_t *rec = order[i];
		const char *name = json_string_value(json_object_get(rec, "name"));
		json_t *spec = json_object_get(rec, "spec");
		char from[64], why[512];
		snprintf(from, sizeof(from), "%s", json_string_value(json_object_get(rec, "host")));
		json_t *ids = json_object_get(rec, "datastores");
		if (!storage_reachable(reports, ids, from, why, sizeof(why))) {
			wait_for_storage(rec, name, from, why);
			continue;
		}
		int64_t lease = claim(name, from, json_object());
		if (!lease)
			continue;   /* changed meanwhile, or claimed by another */
		test_hook_after_claim(name);
		const char *there = runs_on(reports, name);
		if (there) {   /* a claimer that died had started it after all */
			logf_("HA: VM %s already runs on %s", name, there);
			json_t *next = json_pack("{s:s, s:O, s:O?, s:s, s:s, s:I}", "host", there,
						 "spec", spec, "datastores", ids, "restarted_by",
						 fd_cfg.name, "from", from, "at_ms", (json_int_t)now_ms());
			record_put(name, next);
			json_decref(next);
			continue;
		}
		if (!claim_alive(lease)) {
			logf_("HA: VM %s: this host's claim expired before the start (a stall): not "
			      "started now", name);
			continue;
		}
		const char *to = restart_on_some_host(name, spec, ids, reports, rules, lease, why,
						      sizeof(why));
		json_t *next = json_pack("{s:s, s:O, s:O?, s:s, s:s, s:I}", "host", to ? to : from,
					 "spec", spec, "datastores", ids, "restarted_by",
					 fd_cfg.name, "from", from, "at_ms", (json_int_t)now_ms());
		if (to) {
			logf_("HA: VM %s restarted on %s (the lease of its host %s expired; "
			      "%lld ms into the pass)", name, to, from,
			      (long long)(mono_ms() - pass_start));
		} else {
			json_int_t attempts = json_integer_value(json_object_get(rec, "attempts")) + 1;
			json_object_set_new(next, "attempts", json_integer(attempts));
			json_object_set_new(next, "error", json_string(why));
			json_object_set_new(next, "retry_at_ms", json_integer(now_ms() +
					    attempts * RETRY_AFTER_MS));
			logf_("HA: VM %s (host %s gone) could not restart, attempt %lld of %d: %s",
			      name, from, (long long)attempts, HA_MAX_ATTEMPTS, why);
			char what[128];
			snprintf(what, sizeof(what), "restart after host %s died, attempt %lld of %d",
				 from, (long long)attempts, HA_MAX_ATTEMPTS);
			ha_event("ha.restart", name, what, why, false);
		}
		record_put(name, next);
		json_decref(next);
	}
	free(order);
	json_t *now = etcd_get_prefix(&etcd_ha, HA_PREFIX, err, sizeof(err));
	if (now)   /* as they are after this pass */
		release_locks(now, live);
	json_decref(now);
	json_decref(rules);
	json_decref(reports);
	json_decref(orphans);
	json_decref(live);
}

/* Until something may need the decider: a host's key deleted (its lease
 * expired) since revision hosts_rev, or HA_PERIOD_MS. The holder watches
 * (so a restart starts as soon as etcd has expired the lease); the others
 * only sleep. True when a host's key went. */
static bool ha_wait(bool leader, int64_t hosts_rev)
{
	int64_t start = mono_ms();
	int r = leader && hosts_rev ? etcd_watch_delete(&etcd_ha, "/ferry/hosts/", hosts_rev + 1,
						       HA_PERIOD_MS) : -1;
	int64_t left = HA_PERIOD_MS - (mono_ms() - start);
	if (r < 0 && left > 0)
		usleep(left * 1000);
	return r == 1;
}

static void *ha_agent_loop(void *arg)
{
	(void)arg;
	bool leader = false;
	int64_t hosts_rev = 0;
	for (;;) {
		bool host_gone = ha_wait(leader, hosts_rev);
		if (fence_isolated()) {
			leader = false;
			continue;
		}
		if (!host_gone) {   /* a host's lease expiring: straight to the pass */
			ha_publish();
			restart_fenced();
			restart_crashed();
			watch_heartbeats();
		}
		char err[512];
		json_t *records = etcd_get_prefix(&etcd_ha, HA_PREFIX, err, sizeof(err));
		if (!records)
			continue;
		if (!host_gone)
			unpublish(records);
		leader = campaign();
		if (leader)
			ha_pass(records, &hosts_rev);
		json_decref(records);
	}
	return NULL;
}

void ha_agent_start(const char *etcd_urls)
{
	etcd_init(&etcd_ha, etcd_urls);
	etcd_ha.timeout_ms = 1000;
	pthread_t t;
	pthread_create(&t, NULL, ha_agent_loop, NULL);
}
