/*
 * ha.c - restart on host failure (vSphere HA's basic promise).
 *
 * When a host's etcd lease goes, its VMs are gone with it. Each VM whose
 * spec asks for HA (`ha` high, medium or low; high first) is started
 * afresh from its files on another host, the placement wizard's first
 * choice; the restart is a task (kind "ha-restart") and is audited. VMs
 * with HA off are marked `lost`. This runs in ferry-center (not yet in
 * an etcd-elected agent, so HA waits for ferry-center to be up).
 */
#include "cluster/center/center.h"

#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void restart_one(json_t *row, const char *dead)
{
	const char *name = json_string_value(json_object_get(row, "name"));
	const char *spec_text = json_string_value(json_object_get(row, "spec"));
	json_t *rec = wizard_recommend(row);
	json_t *first = json_array_get(json_object_get(rec, "candidates"), 0);
	if (!first) {
		db_exec("UPDATE vms SET state = 'lost' WHERE name = ?", json_pack("[s]", name));
		audit_append("ferry-center", "-", "ha.restart", name, "error: no host can run it",
			     json_object_get(rec, "refused"));
		logf_("HA: VM %s (on %s) lost: no host can run it", name, dead);
		json_decref(rec);
		return;
	}
	char dest[64], url[200], err[512];
	snprintf(dest, sizeof(dest), "%s", json_string_value(json_object_get(first, "host")));
	json_decref(rec);
	json_t *h = db_row("SELECT url FROM hosts WHERE name = ?", json_pack("[s]", dest));
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(h, "url")) ?: "");
	json_decref(h);
	long long task = task_insert("ha-restart", name, dead, dest, "running", 1, 0,
				     "ferry-center", NULL);
	json_t *body = json_pack("{s:s, s:o}", "name", name, "spec",
				 json_loads(spec_text ? spec_text : "{}", 0, NULL));
	long status;
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(url, "POST", "/agent/v1/vms", body, &status, err, sizeof(err));
	pthread_mutex_lock(&db_lock);
	json_decref(body);
	bool ok = r && status == 201;
	if (r && !ok)
		snprintf(err, sizeof(err), "host %s: %s", dest, json_string_value(json_object_get(
			json_object_get(r, "error"), "message")) ?: "refused");
	json_decref(r);
	json_t *details = json_pack("{s:s, s:s, s:I}", "from", dead, "to", dest, "task",
				    (json_int_t)task);
	if (ok) {
		task_finish(task, "succeeded", NULL);
		db_exec("UPDATE vms SET host = ?, state = 'running', exit_status = NULL, "
			"last_console = NULL WHERE name = ?", json_pack("[s, s]", dest, name));
		audit_append("ferry-center", "-", "ha.restart", name, "ok", details);
		logf_("HA: VM %s restarted on %s (its host %s died)", name, dest, dead);
	} else {
		task_finish(task, "failed", err);
		db_exec("UPDATE vms SET state = 'lost' WHERE name = ?", json_pack("[s]", name));
		audit_append("ferry-center", "-", "ha.restart", name, "error", details);
		logf_("HA: VM %s could not restart on %s: %s", name, dest, err);
	}
	json_decref(details);
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
			restart_one(row, host);
		} else if (strcmp(json_string_value(json_object_get(row, "state")) ?: "", "exited")) {
			db_exec("UPDATE vms SET state = 'lost' WHERE name = ?", json_pack("[s]", name));
			logf_("VM %s lost with its host %s (HA off)", name, host);
		}
		json_decref(spec);
	}
	json_decref(rows);
	pthread_mutex_unlock(&db_lock);
}
