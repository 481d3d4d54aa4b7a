/*
 * inventory.c - what ferry-center knows of the hosts and their VMs.
 *
 * Every second: the live hosts are the keys under /ferry/hosts/ in etcd
 * (each held by its ferryd's lease, so a host that stops beating vanishes);
 * each live host's ferryd is asked for its report (CPU, memory, datastores,
 * networks, its VMs). The rows for hosts, datastores, networks and the
 * state of each VM (running, exited with its status and console's last
 * lines) are updated from that, one transaction per host.
 *
 * The hosts are asked concurrently and independently: each second every
 * live host not already waiting or being asked joins a queue, which
 * SWEEP_WORKERS threads work through, each report with a timeout of
 * REPORT_TIMEOUT_MS, paced to SWEEP_REPORTS_PER_S. A host whose ferryd accepts connections but does not
 * answer holds one worker for that long and is marked unreachable with the
 * reason (HOST's "unreachable"); the others go on being refreshed.
 */
#include "cluster/center/center.h"
#include "cluster/center/ft.h"

#include "cluster/common/http_client.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_WORKERS 4
#define REPORT_TIMEOUT_MS 5000
/* each host is asked at most every second, and the whole sweep at most
 * this many reports a second (at 2,500 hosts: each every 5 s, the rate of
 * the one-at-a-time sweep before, which left the API its CPU) */
#define SWEEP_REPORTS_PER_S 500

static json_t *ferryd_call_within(const char *url, const char *method, const char *path,
				  json_t *body, long timeout_ms, long *status, char *err,
				  size_t errlen)
{
	char full[600];
	snprintf(full, sizeof(full), "%s%s", url, path);
	return http_json(method, full, ctr.auth.present, body, timeout_ms, status, err, errlen);
}

json_t *ferryd_call(const char *url, const char *method, const char *path, json_t *body,
		    long *status, char *err, size_t errlen)
{
	return ferryd_call_within(url, method, path, body, 20000, status, err, errlen);
}

int host_migrations_running(const char *host)
{
	json_t *r = db_row("SELECT count(*) AS n FROM tasks WHERE kind = 'migrate' AND "
			   "state = 'running' AND (source = ? OR destination = ?)",
			   json_pack("[s, s]", host, host));
	int n = (int)json_integer_value(json_object_get(r, "n"));
	json_decref(r);
	return n;
}

int host_migration_limit(const char *host)
{
	char key[128];
	snprintf(key, sizeof(key), "host.%s.migrations", host);
	long long dflt = db_setting_int("migrations_per_host", 4);
	return (int)db_setting_int(key, dflt);
}

json_t *host_json(json_t *row)
{
	const char *name = json_string_value(json_object_get(row, "name"));
	json_t *rep = json_loads(json_string_value(json_object_get(row, "report")) ?: "{}", 0, NULL);
	if (!rep)
		rep = json_object();
	json_object_del(rep, "vm_list");
	json_object_set(rep, "name", json_object_get(row, "name"));
	json_object_set(rep, "url", json_object_get(row, "url"));
	json_object_set(rep, "address", json_object_get(row, "address"));
	json_object_set_new(rep, "alive", json_boolean(json_integer_value(json_object_get(row, "alive"))));
	json_object_set_new(rep, "maintenance",
			    json_boolean(json_integer_value(json_object_get(row, "maintenance"))));
	/* DPM: ferry-center's word (1 standby, 2 entering it), or the host's own */
	long long standby = json_integer_value(json_object_get(row, "standby"));
	json_object_set_new(rep, "standby", json_boolean(standby == 1 ||
							  json_is_true(json_object_get(rep, "standby"))));
	json_object_set_new(rep, "entering_standby", json_boolean(standby == 2));
	iso_or_null(rep, "last_seen", json_object_get(row, "last_seen"));
	json_t *why = json_object_get(row, "unreachable");
	json_object_set_new(rep, "reachable", json_boolean(!json_is_string(why)));
	json_object_set(rep, "unreachable", json_is_string(why) ? why : json_null());
	iso_or_null(rep, "unreachable_since", json_object_get(row, "unreachable_since"));
	json_t *n = db_row("SELECT count(*) AS n FROM vms WHERE host = ?", json_pack("[s]", name));
	json_object_set(rep, "vms", json_object_get(n, "n"));
	json_decref(n);
	json_object_set_new(rep, "migrations_running", json_integer(host_migrations_running(name)));
	json_object_set_new(rep, "migration_limit", json_integer(host_migration_limit(name)));
	return rep;
}

json_t *vm_json(json_t *row)
{
	json_t *spec = json_loads(json_string_value(json_object_get(row, "spec")) ?: "{}", 0, NULL);
	if (!spec)
		spec = json_object();
	json_t *j = json_pack("{s:O, s:O, s:O}", "name", json_object_get(row, "name"), "host",
			      json_object_get(row, "host"), "state", json_object_get(row, "state"));
	const char *keys[] = { "mem_mib", "smp", "kernel", "initrd", "append", "disks", "net",
			       "ha" };
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		json_t *v = json_object_get(spec, keys[i]);
		json_object_set(j, keys[i], v ? v : json_null());
	}
	iso_or_null(j, "created", json_object_get(row, "created"));
	json_object_set(j, "exit_status", json_object_get(row, "exit_status"));
	json_object_set(j, "last_console", json_object_get(row, "last_console"));
	json_t *waiting = json_object_get(row, "ha_waiting");   /* why HA has not restarted it */
	bool restarting = !strcmp(json_string_value(json_object_get(row, "state")) ?: "",
				  "restarting");
	json_object_set(j, "ha_waiting", waiting && restarting ? waiting : json_null());
	json_decref(spec);
	return j;
}

/* The states a host's report gives its VMs, copied to the vms table
 * (except for VMs in a migration: the task owns those). */
/* A VM this host runs that ferry-center knows to run elsewhere (it was
 * restarted by HA while this host was cut off) or not at all, and that
 * no migration involves, and that its FT owner key does not give to this
 * host: a copy to stop. */
static bool stray(const char *host, const char *name)
{
	json_t *row = db_row("SELECT host, state FROM vms WHERE name = ?", json_pack("[s]", name));
	json_t *mig = db_row("SELECT id FROM tasks WHERE vm = ? AND kind = 'migrate' AND "
			     "state IN ('queued', 'running')", json_pack("[s]", name));
	const char *at = json_string_value(json_object_get(row, "host")) ?: "";
	const char *state = json_string_value(json_object_get(row, "state")) ?: "";
	bool elsewhere = row && strcmp(at, host) &&
			 (!strcmp(state, "running") || !strcmp(state, "restarting"));
	bool is_stray = !mig && elsewhere;
	if (is_stray && ft_owned_by(name, host)) {
		/* its FT secondary took over here: the owner key, not the old
		 * host's lease, says which copy is the VM (ft.c) */
		ft_adopt(name);
		is_stray = false;
	}
	if (is_stray) {
		/* the host it was on: if its lease is gone (asked now, after this
		 * report), the HA decider restarted the VM here */
		char key[128], err[256];
		bool ok;
		snprintf(key, sizeof(key), "/ferry/hosts/%s", at);
		char *v = etcd_get(&ctr.etcd, key, &ok, err, sizeof(err));
		if (ok && !v) {
			char dead[64];
			snprintf(dead, sizeof(dead), "%s", at);
			if (!ft_adopt(name))   /* its FT secondary took over (ft.c) */
				ha_adopt(name, host, dead);
			is_stray = false;
		} else if (!ok) {
			is_stray = false;   /* no word from etcd: decide nothing */
		} else if (ha_record_names(name, host)) {
			/* its host is back, but the HA decider had restarted it here */
			char dead[64];
			snprintf(dead, sizeof(dead), "%s", at);
			ha_adopt(name, host, dead);
			is_stray = false;
		}
		free(v);
	}
	json_decref(row);
	json_decref(mig);
	return is_stray;
}

static void update_vms(const char *host, json_t *vm_list, json_t *strays)
{
	size_t i;
	json_t *v;
	json_array_foreach(vm_list, i, v) {
		const char *name = json_string_value(json_object_get(v, "name"));
		const char *state = json_string_value(json_object_get(v, "state"));
		if (!name || !state || !strcmp(state, "incoming"))
			continue;
		if (strcmp(state, "exited") && stray(host, name)) {
			json_array_append_new(strays, json_string(name));
			continue;
		}
		if (!strcmp(state, "exited")) {
			json_t *row = db_row("SELECT state FROM vms WHERE name = ? AND host = ?",
					     json_pack("[s, s]", name, host));
			const char *old = json_string_value(json_object_get(row, "state"));
			if (old && strcmp(old, "exited") && strcmp(old, "migrating") &&
			    strcmp(old, "restarting"))
				logf_("VM %s on %s ended: %s", name, host,
				      json_string_value(json_object_get(v, "exit")) ?: "?");
			json_decref(row);
			/* (restarting: the copy killed with its host, which HA restarts) */
			db_exec("UPDATE vms SET state = 'exited', exit_status = ?, last_console = ? "
				"WHERE name = ? AND host = ? AND state NOT IN ('migrating', 'stopped', "
				"'restarting')",
				json_pack("[O, O, s, s]", json_object_get(v, "exit_status"),
					  json_object_get(v, "last_console"), name, host));
		} else {
			/* restarting here: HA started it again on its own host, back
			 * (its storage is there: a host-local datastore) */
			json_t *was = db_row("SELECT state FROM vms WHERE name = ? AND host = ?",
					     json_pack("[s, s]", name, host));
			bool back = !strcmp(json_string_value(json_object_get(was, "state")) ?: "",
					    "restarting");
			json_decref(was);
			json_t *size = json_object_get(v, "disk_mib");
			json_t *alloc = json_object_get(v, "disk_alloc_mib");
			db_exec("UPDATE vms SET state = 'running', exit_status = NULL, "
				"last_console = NULL, ha_waiting = NULL, disk_mib = ?, "
				"disk_alloc_mib = ? WHERE name = ? AND host = ? AND state IN "
				"('starting', 'running', 'exited', 'restarting')",
				json_pack("[O, O, s, s]", size ? size : json_null(),
					  alloc ? alloc : json_null(), name, host));
			if (back)
				ha_adopt(name, host, host);
			drs_sample_vm(name, host, v);
		}
	}
}

/* The hosts with a lease at the last look at etcd (name -> their key's
 * value), under db_lock: a report that comes back after its host's lease
 * went (a sweep worker is slower than the loop) must not make it alive
 * again. */
static json_t *live_hosts;

/* The datastores and networks last written for each host (name -> their
 * report's text), under db_lock: rewritten only when they change, which
 * at 2,500 hosts spares the API most of the sweep's writes. */
static json_t *devices_written;

static void write_devices(const char *name, json_t *rep)
{
	json_t *devices = json_pack("[O?, O?]", json_object_get(rep, "datastores"),
				    json_object_get(rep, "networks"));
	char *text = json_dumps(devices, JSON_COMPACT);
	json_decref(devices);
	if (!devices_written)
		devices_written = json_object();
	const char *was = json_string_value(json_object_get(devices_written, name));
	if (text && was && !strcmp(was, text)) {
		free(text);
		return;
	}
	db_exec("DELETE FROM datastores WHERE host = ?", json_pack("[s]", name));
	db_exec("DELETE FROM networks WHERE host = ?", json_pack("[s]", name));
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(rep, "datastores"), i, d)
		db_exec("INSERT OR REPLACE INTO datastores(host, name, path, free_mib, id) "
			"VALUES(?, ?, ?, ?, ?)",
			json_pack("[s, O, O, O, O]", name, json_object_get(d, "name"),
				  json_object_get(d, "path"), json_object_get(d, "free_mib"),
				  json_object_get(d, "id") ?: json_null()));
	json_array_foreach(json_object_get(rep, "networks"), i, d)
		db_exec("INSERT OR REPLACE INTO networks VALUES(?, ?, ?, ?)",
			json_pack("[s, O, O, b]", name, json_object_get(d, "name"),
				  json_object_get(d, "bridge"),
				  json_is_true(json_object_get(d, "present"))));
	if (text)
		json_object_set_new(devices_written, name, json_string(text));
	free(text);
}

/* A host whose ferryd did not answer its report: unreachable, with why
 * (said in the log when it starts). Under db_lock. */
static void mark_unreachable(const char *name, const char *url, const char *address,
			     json_t *reply, long status, const char *err)
{
	char why[600];
	if (reply)
		snprintf(why, sizeof(why), "its ferryd answered HTTP %ld to GET /agent/v1/host",
			 status);
	else
		snprintf(why, sizeof(why), "its ferryd does not answer: %s", err);
	json_t *was = db_row("SELECT unreachable FROM hosts WHERE name = ?", json_pack("[s]", name));
	if (!json_is_string(json_object_get(was, "unreachable")))
		logf_("host %s: %s", name, why);
	json_decref(was);
	db_exec("INSERT INTO hosts(name, url, address, alive, unreachable, unreachable_since)"
		" VALUES(?, ?, ?, 1, ?, ?) ON CONFLICT(name) DO UPDATE SET url = excluded.url,"
		" address = excluded.address, alive = 1, unreachable = excluded.unreachable,"
		" unreachable_since = coalesce(unreachable_since, excluded.unreachable_since)",
		json_pack("[s, s, s, s, I]", name, url, address, why, (json_int_t)time(NULL)));
}

static void refresh_host(const char *name, json_t *info)
{
	json_t *strays = json_array();
	const char *url = json_string_value(json_object_get(info, "url"));
	const char *address = json_string_value(json_object_get(info, "address"));
	if (!url || !address)
		return;
	long status;
	char err[512];
	json_t *rep = ferryd_call_within(url, "GET", "/agent/v1/host", NULL, REPORT_TIMEOUT_MS,
					 &status, err, sizeof(err));
	db_lock_background();
	db_exec("BEGIN", NULL);   /* one commit for the host's rows */
	if (!json_object_get(live_hosts, name)) {
		/* its lease went while it was asked: the loop has marked it dead */
	} else if (rep && status == 200) {
		char *text = json_dumps(rep, JSON_COMPACT);
		/* free memory, ISA and load also as columns: the wizard reads
		 * them for every host on every call */
		db_exec("INSERT INTO hosts(name, url, address, alive, last_seen, report, free_mib,"
			" isa, load) VALUES(?, ?, ?, 1, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE"
			" SET url = excluded.url, address = excluded.address, alive = 1,"
			" last_seen = excluded.last_seen, report = excluded.report,"
			" free_mib = excluded.free_mib, isa = excluded.isa, load = excluded.load,"
			" unreachable = NULL, unreachable_since = NULL",
			json_pack("[s, s, s, I, s, O, O, O]", name, url, address,
				  (json_int_t)time(NULL), text, json_object_get(rep, "free_mib") ?: json_null(),
				  json_object_get(rep, "isa") ?: json_null(),
				  json_object_get(rep, "load") ?: json_null()));
		free(text);
		write_devices(name, rep);
		update_vms(name, json_object_get(rep, "vm_list"), strays);
		ha_audit_monitor(name, json_object_get(rep, "monitor_events"));
	} else {
		/* its lease says it lives: a ferryd restarting, busy or hung; the
		 * host counts as dead only when the lease goes (below) */
		mark_unreachable(name, url, address, rep, status, err);
	}
	db_exec("COMMIT", NULL);
	pthread_mutex_unlock(&db_lock);
	json_decref(rep);
	size_t i;
	json_t *s;
	json_array_foreach(strays, i, s) {   /* fence: one copy of a VM runs */
		char path[300];
		snprintf(path, sizeof(path), "/agent/v1/vms/%s", json_string_value(s));
		json_decref(ferryd_call(url, "DELETE", path, NULL, &status, err, sizeof(err)));
		logf_("host %s ran a copy of VM %s, which runs elsewhere now: stopped it", name,
		      json_string_value(s));
		json_t *details = json_pack("{s:s}", "host", name);
		pthread_mutex_lock(&db_lock);
		audit_append("ferry-center", "-", "ha.fence", json_string_value(s), "ok", details);
		pthread_mutex_unlock(&db_lock);
		json_decref(details);
	}
	json_decref(strays);
}

/* The sweep's queue: hosts to ask, each at most once in it or in hand. */
static pthread_mutex_t sweep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sweep_more = PTHREAD_COND_INITIALIZER;
static json_t *sweep_queue;   /* [[name, info]...], oldest first */
static json_t *sweep_busy;    /* name -> true while queued or being asked */
static json_t *sweep_next;    /* name -> when it may be asked again (ms) */
static int64_t sweep_interval_ms = 1000;

static void sweep_add(const char *name, json_t *info)
{
	pthread_mutex_lock(&sweep_lock);
	if (!json_object_get(sweep_busy, name) &&
	    now_ms() >= json_integer_value(json_object_get(sweep_next, name))) {
		json_object_set_new(sweep_busy, name, json_true());
		json_array_append_new(sweep_queue, json_pack("[s, O]", name, info));
		pthread_cond_signal(&sweep_more);
	}
	pthread_mutex_unlock(&sweep_lock);
}

static void *sweep_worker(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&sweep_lock);
		while (!json_array_size(sweep_queue))
			pthread_cond_wait(&sweep_more, &sweep_lock);
		json_t *job = json_incref(json_array_get(sweep_queue, 0));
		json_array_remove(sweep_queue, 0);
		pthread_mutex_unlock(&sweep_lock);
		const char *name = json_string_value(json_array_get(job, 0));
		refresh_host(name, json_array_get(job, 1));
		pthread_mutex_lock(&sweep_lock);
		json_object_del(sweep_busy, name);
		/* (less the loop's jitter: a 1 s interval is every loop, not every other) */
		json_object_set_new(sweep_next, name,
				    json_integer(now_ms() + sweep_interval_ms - 200));
		pthread_mutex_unlock(&sweep_lock);
		json_decref(job);
	}
	return NULL;
}

void *inventory_loop(void *arg)
{
	(void)arg;
	sweep_queue = json_array();
	sweep_busy = json_object();
	sweep_next = json_object();
	for (int i = 0; i < SWEEP_WORKERS; i++) {
		pthread_t t;
		pthread_create(&t, NULL, sweep_worker, NULL);
		pthread_detach(t);
	}
	bool complained = false;
	for (;;) {
		char err[512];
		json_t *live = etcd_get_prefix(&ctr.etcd, "/ferry/hosts/", err, sizeof(err));
		ha_etcd_state(live != NULL, err);
		if (!live) {
			if (!complained)
				logf_("etcd: %s (hosts keep their last state)", err);
			complained = true;
			sleep(1);
			continue;
		}
		complained = false;
		const char *key;
		json_t *value;
		json_t *names = json_object();   /* the live hosts: name -> their key's value */
		json_object_foreach(live, key, value) {
			json_t *info = json_loads(json_string_value(value), 0, NULL);
			const char *name = json_string_value(json_object_get(info, "name"));
			if (name && json_is_string(json_object_get(info, "url")) &&
			    json_is_string(json_object_get(info, "address")))
				json_object_set(names, name, info);
			json_decref(info);
		}
		/* hosts whose lease is gone */
		pthread_mutex_lock(&db_lock);
		json_decref(live_hosts);
		live_hosts = json_incref(names);
		json_t *rows = db_query("SELECT name FROM hosts WHERE alive = 1", NULL);
		json_t *lost = json_array();
		size_t i;
		json_t *r;
		json_array_foreach(rows, i, r) {
			const char *h = json_string_value(json_object_get(r, "name"));
			if (!json_object_get(names, h)) {
				logf_("host %s: no heartbeat in etcd", h);
				db_exec("UPDATE hosts SET alive = 0 WHERE name = ?", json_pack("[s]", h));
				json_array_append_new(lost, json_string(h));
			}
		}
		pthread_mutex_unlock(&db_lock);
		int64_t interval = (int64_t)json_object_size(names) * 1000 / SWEEP_REPORTS_PER_S;
		pthread_mutex_lock(&sweep_lock);
		sweep_interval_ms = interval > 1000 ? interval : 1000;
		pthread_mutex_unlock(&sweep_lock);
		json_object_foreach(names, key, value)
			sweep_add(key, value);
		json_array_foreach(lost, i, r)
			ha_host_lost(json_string_value(r));
		json_decref(lost);
		json_decref(rows);
		json_decref(names);
		json_decref(live);
		sleep(1);
	}
	return NULL;
}
