/*
 * ha.c - restart on host failure (vSphere HA's basic promise).
 *
 * When a host's etcd lease goes, its VMs are gone with it (its ferryd
 * has fenced them). The restart of each VM whose spec asks for HA (`ha`
 * high, medium or low) is decided by the ferryd that holds the etcd
 * election (ferryd/ha_agent.c), so it happens while ferry-center is down
 * too; here such a VM is only marked `restarting`, and ferry-center
 * adopts it when a host reports it running (ha_adopt: the task of kind
 * "ha-restart" and the audit record, written then, from the agent's
 * record in etcd). VMs with HA off are marked `lost`.
 */
#include "cluster/center/center.h"

#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* VM name's HA record in etcd (/ferry/ha/NAME), or NULL. */
static json_t *ha_record(const char *name)
{
	char key[128], err[256];
	snprintf(key, sizeof(key), "/ferry/ha/%s", name);
	bool ok;
	char *text = etcd_get(&ctr.etcd, key, &ok, err, sizeof(err));
	json_t *rec = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
	return rec;
}

/* A host reports a VM running that the inventory puts on a host whose
 * lease is gone: the HA decider restarted it there. Under db_lock. */
void ha_adopt(const char *name, const char *host, const char *dead)
{
	json_t *rec = ha_record(name);
	const char *by = json_string_value(json_object_get(rec, "restarted_by"));
	char user[80];
	snprintf(user, sizeof(user), "ferryd-%s", by ? by : "?");
	long long task = task_insert("ha-restart", name, dead, host, "running", 1, 0, user, NULL);
	task_finish(task, "succeeded", NULL);
	db_exec("UPDATE vms SET host = ?, state = 'running', exit_status = NULL, "
		"last_console = NULL, ha_waiting = NULL WHERE name = ?", json_pack("[s, s]", host,
										  name));
	json_t *details = json_pack("{s:s, s:s, s:I, s:s, s:O?}", "from", dead, "to", host,
				    "task", (json_int_t)task, "decided_by", by ? by : "?",
				    "at_ms", json_object_get(rec, "at_ms"));
	audit_append(user, "-", "ha.restart", name, "ok", details);
	logf_("HA: VM %s restarted on %s by the HA decider %s (its host %s died)", name, host,
	      by ? by : "?", dead);
	json_decref(details);
	json_decref(rec);
}

bool ha_record_names(const char *name, const char *host)
{
	json_t *rec = ha_record(name);
	bool names = rec && json_object_get(rec, "restarted_by") &&
		     !strcmp(json_string_value(json_object_get(rec, "host")) ?: "", host);
	json_decref(rec);
	return names;
}

void ha_host_lost(const char *host)
{
	pthread_mutex_lock(&db_lock);
	json_t *rows = db_query(
		"SELECT * FROM vms WHERE host = ? AND state IN ('running', 'starting', 'exited') "
		"ORDER BY CASE json_extract(spec, '$.ha') WHEN 'high' THEN 0 WHEN 'medium' THEN 1 "
		"WHEN 'low' THEN 2 ELSE 3 END, name", json_pack("[s]", host));
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row) {
		json_t *spec = json_loads(json_string_value(json_object_get(row, "spec")) ?: "{}", 0,
					  NULL);
		const char *ha = json_string_value(json_object_get(spec, "ha"));
		bool wanted = ha && (!strcmp(ha, "high") || !strcmp(ha, "medium") || !strcmp(ha, "low"));
		const char *name = json_string_value(json_object_get(row, "name"));
		if (wanted && strcmp(json_string_value(json_object_get(row, "state")) ?: "", "exited")) {
			/* the elected ferryd restarts it; adopted when seen running */
			db_exec("UPDATE vms SET state = 'restarting' WHERE name = ?",
				json_pack("[s]", name));
			logf_("VM %s: its host %s is gone; HA restarts it", name, host);
		} else if (strcmp(json_string_value(json_object_get(row, "state")) ?: "", "exited")) {
			db_exec("UPDATE vms SET state = 'lost' WHERE name = ?", json_pack("[s]", name));
			logf_("VM %s lost with its host %s (HA off)", name, host);
		}
		json_decref(spec);
	}
	json_decref(rows);
	pthread_mutex_unlock(&db_lock);
}

/* VM monitoring's restarts (a guest hung, a ferry-vm died) happen on the
 * VM's own host without ferry-center, and the HA decider's failed restarts
 * on no host at all; each host report carries its ferryd's last such
 * events ("monitor_events"), and each new one becomes an audit record
 * (its "action": ha.monitor, or ha.restart failed; user ferryd-HOST). New: later than the last one recorded
 * for that host, remembered here and, after a restart of ferry-center,
 * read back from the audit trail once. Under db_lock. */
struct monitor_seen {
	char host[64];
	json_int_t last_at_ms;
};
static struct monitor_seen monitor_seen[256];

static struct monitor_seen *monitor_seen_of(const char *host)
{
	for (size_t i = 0; i < sizeof(monitor_seen) / sizeof(monitor_seen[0]); i++) {
		struct monitor_seen *m = &monitor_seen[i];
		if (!strcmp(m->host, host))
			return m;
		if (!m->host[0]) {
			snprintf(m->host, sizeof(m->host), "%s", host);
			json_t *row = db_row("SELECT max(json_extract(details, '$.at_ms')) AS at FROM "
					     "audit WHERE action IN ('ha.monitor', 'ha.restart') AND "
					     "json_extract(details, '$.host') = ?",
					     json_pack("[s]", host));
			m->last_at_ms = json_integer_value(json_object_get(row, "at"));
			json_decref(row);
			return m;
		}
	}
	return NULL;
}

void ha_audit_monitor(const char *host, json_t *events)
{
	if (!json_array_size(events))
		return;
	struct monitor_seen *seen = monitor_seen_of(host);
	if (!seen)
		return;
	size_t i;
	json_t *ev;
	json_array_foreach(events, i, ev) {
		json_int_t at = json_integer_value(json_object_get(ev, "at_ms"));
		const char *vm = json_string_value(json_object_get(ev, "vm"));
		if (at <= seen->last_at_ms || !vm)
			continue;
		seen->last_at_ms = at;
		char user[80];
		snprintf(user, sizeof(user), "ferryd-%s", host);
		json_t *details = json_pack("{s:s, s:O, s:O, s:I}", "host", host, "why",
					    json_object_get(ev, "why"), "outcome",
					    json_object_get(ev, "outcome"), "at_ms", at);
		const char *action = json_string_value(json_object_get(ev, "action"));
		bool ok = json_is_true(json_object_get(ev, "ok"));
		audit_append(user, "-", action ? action : "ha.monitor", vm, ok ? "ok" : "failed",
			     details);
		/* why it is not running (shown while it is "restarting"; this
		 * report may come before ferry-center has seen its host die, and
		 * its host's next report of it running clears it) */
		if (!ok && action && !strcmp(action, "ha.restart"))
			db_exec("UPDATE vms SET ha_waiting = ? WHERE name = ?",
				json_pack("[O?, s]", json_object_get(ev, "outcome"), vm));
		logf_("%s by %s: VM %s %s: %s", action ? action : "ha.monitor", host, vm,
		      json_string_value(json_object_get(ev, "why")) ?: "?",
		      json_string_value(json_object_get(ev, "outcome")) ?: "?");
		json_decref(details);
	}
}

/* etcd's state as the inventory last found it: while etcd does not answer
 * (no quorum), nothing HA does can happen (no host is seen dead, the
 * decider cannot claim a record) and ferry-center says so in
 * GET /api/v1/cluster ("etcd"), which `ferry cluster show` prints. */
static pthread_mutex_t etcd_state_lock = PTHREAD_MUTEX_INITIALIZER;
static char etcd_error[300];
static time_t etcd_down_since;

void ha_etcd_state(bool ok, const char *err)
{
	pthread_mutex_lock(&etcd_state_lock);
	if (ok) {
		etcd_down_since = 0;
		etcd_error[0] = 0;
	} else {
		if (!etcd_down_since)
			etcd_down_since = time(NULL);
		snprintf(etcd_error, sizeof(etcd_error), "%s", err ? err : "?");
	}
	pthread_mutex_unlock(&etcd_state_lock);
}

json_t *ha_etcd_json(void)
{
	pthread_mutex_lock(&etcd_state_lock);
	json_t *j;
	if (!etcd_down_since) {
		j = json_pack("{s:b}", "ok", 1);
	} else {
		j = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", etcd_error, "ha",
			      "no HA action while etcd does not answer (no quorum?): no host is "
			      "declared dead and no VM restarted until it is back; meanwhile every "
			      "ferryd that cannot renew its lease fences its own VMs");
		iso_or_null(j, "since", json_integer(etcd_down_since));
	}
	pthread_mutex_unlock(&etcd_state_lock);
	return j;
}
