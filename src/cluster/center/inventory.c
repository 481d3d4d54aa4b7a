/*
 * inventory.c - what ferry-center knows of the hosts and their VMs.
 *
 * Every second: the live hosts are the keys under /ferry/hosts/ in etcd
 * (each held by its ferryd's lease, so a host that stops beating vanishes);
 * each live host's ferryd is asked for its report (CPU, memory, datastores,
 * networks, its VMs). The rows for hosts, datastores, networks and the
 * state of each VM (running, exited with its status and console's last
 * lines) are updated from that.
 */
#include "cluster/center/center.h"

#include "cluster/common/http_client.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

json_t *ferryd_call(const char *url, const char *method, const char *path, json_t *body,
		    long *status, char *err, size_t errlen)
{
	char full[600];
	snprintf(full, sizeof(full), "%s%s", url, path);
	return http_json(method, full, ctr.auth.present, body, 20000, status, err, errlen);
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
	json_decref(spec);
	return j;
}

/* The states a host's report gives its VMs, copied to the vms table
 * (except for VMs in a migration: the task owns those). */
/* A VM this host runs that ferry-center knows to run elsewhere (it was
 * restarted by HA while this host was cut off) or not at all, and that
 * no migration involves: a copy to stop. */
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
			ha_adopt(name, host, dead);
			is_stray = false;
		} else if (!ok) {
			is_stray = false;   /* no word from etcd: decide nothing */
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
			if (old && strcmp(old, "exited") && strcmp(old, "migrating"))
				logf_("VM %s on %s ended: %s", name, host,
				      json_string_value(json_object_get(v, "exit")) ?: "?");
			json_decref(row);
			db_exec("UPDATE vms SET state = 'exited', exit_status = ?, last_console = ? "
				"WHERE name = ? AND host = ? AND state NOT IN ('migrating', 'stopped')",
				json_pack("[O, O, s, s]", json_object_get(v, "exit_status"),
					  json_object_get(v, "last_console"), name, host));
		} else {
			db_exec("UPDATE vms SET state = 'running', exit_status = NULL, "
				"last_console = NULL WHERE name = ? AND host = ? AND state IN "
				"('starting', 'running', 'exited', 'restarting')",
				json_pack("[s, s]", name, host));
			drs_sample_vm(name, host, v);
		}
	}
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
	json_t *rep = ferryd_call(url, "GET", "/agent/v1/host", NULL, &status, err, sizeof(err));
	pthread_mutex_lock(&db_lock);
	if (rep && status == 200) {
		char *text = json_dumps(rep, JSON_COMPACT);
		/* free memory, ISA and load also as columns: the wizard reads
		 * them for every host on every call */
		db_exec("INSERT INTO hosts(name, url, address, alive, last_seen, report, free_mib,"
			" isa, load) VALUES(?, ?, ?, 1, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE"
			" SET url = excluded.url, address = excluded.address, alive = 1,"
			" last_seen = excluded.last_seen, report = excluded.report,"
			" free_mib = excluded.free_mib, isa = excluded.isa, load = excluded.load",
			json_pack("[s, s, s, I, s, O, O, O]", name, url, address,
				  (json_int_t)time(NULL), text, json_object_get(rep, "free_mib") ?: json_null(),
				  json_object_get(rep, "isa") ?: json_null(),
				  json_object_get(rep, "load") ?: json_null()));
		free(text);
		db_exec("DELETE FROM datastores WHERE host = ?", json_pack("[s]", name));
		db_exec("DELETE FROM networks WHERE host = ?", json_pack("[s]", name));
		size_t i;
		json_t *d;
		json_array_foreach(json_object_get(rep, "datastores"), i, d)
			db_exec("INSERT OR REPLACE INTO datastores VALUES(?, ?, ?, ?)",
				json_pack("[s, O, O, O]", name, json_object_get(d, "name"),
					  json_object_get(d, "path"), json_object_get(d, "free_mib")));
		json_array_foreach(json_object_get(rep, "networks"), i, d)
			db_exec("INSERT OR REPLACE INTO networks VALUES(?, ?, ?, ?)",
				json_pack("[s, O, O, b]", name, json_object_get(d, "name"),
					  json_object_get(d, "bridge"),
					  json_is_true(json_object_get(d, "present"))));
		update_vms(name, json_object_get(rep, "vm_list"), strays);
	} else {
		/* its lease says it lives: a ferryd restarting, or busy; the host
		 * counts as dead only when the lease goes (below) */
		static __thread time_t last_said;
		if (time(NULL) - last_said > 10)
			logf_("host %s: its ferryd does not answer: %s", name, err);
		last_said = time(NULL);
	}
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

void *inventory_loop(void *arg)
{
	(void)arg;
	bool complained = false;
	for (;;) {
		char err[512];
		json_t *live = etcd_get_prefix(&ctr.etcd, "/ferry/hosts/", err, sizeof(err));
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
		json_t *names = json_array();
		json_object_foreach(live, key, value) {
			json_t *info = json_loads(json_string_value(value), 0, NULL);
			const char *name = json_string_value(json_object_get(info, "name"));
			if (name) {
				refresh_host(name, info);
				json_array_append_new(names, json_string(name));
			}
			json_decref(info);
		}
		/* hosts whose lease is gone */
		pthread_mutex_lock(&db_lock);
		json_t *rows = db_query("SELECT name FROM hosts WHERE alive = 1", NULL);
		json_t *lost = json_array();
		size_t i, j;
		json_t *r, *n;
		json_array_foreach(rows, i, r) {
			const char *h = json_string_value(json_object_get(r, "name"));
			bool found = false;
			json_array_foreach(names, j, n)
				found = found || !strcmp(json_string_value(n), h);
			if (!found) {
				logf_("host %s: no heartbeat in etcd", h);
				db_exec("UPDATE hosts SET alive = 0 WHERE name = ?", json_pack("[s]", h));
				json_array_append_new(lost, json_string(h));
			}
		}
		pthread_mutex_unlock(&db_lock);
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
