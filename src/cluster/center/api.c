/*
 * api.c - ferry-center's REST API under /api/v1/ (docs/api.md) and the web
 * console's static files at /.
 *
 * Every API call needs a bearer token; read-only tokens may only GET.
 * Every call that changes something (any other method) is written to the
 * audit trail afterwards with its result.
 */
#include "cluster/center/center.h"
#include "cluster/center/ft.h"

#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PREFIX "/api/v1/"

struct call {
	const struct http_request *req;
	struct http_response *resp;
	char user[64];
	enum auth_role role;
	char action[64];
	char target[128];
	json_t *details;
};

static bool is(struct call *c, const char *method)
{
	return !strcmp(c->req->method, method);
}

static void audit_as(struct call *c, const char *action, const char *target)
{
	snprintf(c->action, sizeof(c->action), "%s", action);
	snprintf(c->target, sizeof(c->target), "%s", target ? target : "");
}

static long long query_int(struct call *c, const char *key, long long dflt, long long max)
{
	const char *v = http_query(c->req, key);
	long long n = v ? atoll(v) : dflt;
	if (n < 0)
		n = 0;
	return n > max ? max : n;
}

static json_t *vm_row(const char *name)
{
	return db_row("SELECT * FROM vms WHERE name = ?", json_pack("[s]", name));
}

static bool valid_name(const char *name)
{
	if (!name || !*name || strlen(name) > 48 || name[0] == '.')
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
			return false;
	return true;
}

static void not_found_vm(struct call *c, const char *name)
{
	char msg[200];
	snprintf(msg, sizeof(msg), "no VM named %s", name);
	reply_error(c->resp, 404, msg, "ferry vm list shows the VMs");
}

static void reply_task(struct call *c, int status, long long id)
{
	reply_json(c->resp, status, json_pack("{s:o}", "task", task_get(id) ?: json_null()));
}

static const char *ferryd_message(json_t *reply, const char *fallback)
{
	return json_string_value(json_object_get(json_object_get(reply, "error"), "message"))
		?: fallback;
}

/* ---- hosts, datastores, networks ---------------------------------------- */

static void where_add(char *where, size_t len, json_t *params, const char *cond, json_t *value)
{
	if (!value)
		return;
	size_t n = strlen(where);
	snprintf(where + n, len - n, "%s %s", n ? " AND" : "WHERE", cond);
	json_array_append_new(params, value);
}

/*
 * A list call's reply: one page (?offset, ?limit) of table's rows that
 * match where (with params, which this steals), in order, each through
 * to_json, beside the count of all that match, under key.
 */
static void reply_page(struct call *c, const char *key, const char *table, const char *where,
		       json_t *params, const char *order, json_t *(*to_json)(json_t *row))
{
	long long off = query_int(c, "offset", 0, 1LL << 40), lim = query_int(c, "limit", 100, 1000);
	char sql[300];
	snprintf(sql, sizeof(sql), "SELECT count(*) AS n FROM %s %s", table, where);
	json_t *total = db_row(sql, json_deep_copy(params));
	snprintf(sql, sizeof(sql), "SELECT * FROM %s %s ORDER BY %s LIMIT ? OFFSET ?", table,
		 where, order);
	json_array_append_new(params, json_integer((json_int_t)lim));
	json_array_append_new(params, json_integer((json_int_t)off));
	json_t *rows = db_query(sql, params);
	json_decref(params);
	json_t *out = json_array();
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
		json_array_append_new(out, to_json(r));
	json_decref(rows);
	reply_json(c->resp, 200, json_pack("{s:o, s:O}", key, out, "total",
					   json_object_get(total, "n")));
	json_decref(total);
}

static void hosts_list(struct call *c)
{
	const char *q = http_query(c->req, "q");
	char like[200];
	snprintf(like, sizeof(like), "%%%s%%", q ? q : "");
	reply_page(c, "hosts", "hosts", "WHERE name LIKE ?", json_pack("[s]", like), "name",
		   host_json);
}


/*
 * Entering maintenance empties the host: every running VM on it gets a
 * migration task (standard priority) to the wizard's first choice; VMs
 * that no host can take stay, with the reason.
 */
static json_t *evacuate(struct call *c, const char *host)
{
	json_t *rows = db_query("SELECT * FROM vms WHERE host = ? AND state = 'running' ORDER BY "
				"name", json_pack("[s]", host));
	json_t *tasks = json_array(), *refused = json_array();
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row) {
		const char *vm = json_string_value(json_object_get(row, "name"));
		json_t *busy = db_row("SELECT id FROM tasks WHERE vm = ? AND kind = 'migrate' AND "
				      "state IN ('queued', 'running')", json_pack("[s]", vm));
		if (busy) {
			json_array_append(tasks, json_object_get(busy, "id"));
			json_decref(busy);
			continue;
		}
		json_t *ft = ft_status(vm);
		bool fault_tolerant = ft != NULL;
		json_decref(ft);
		if (fault_tolerant) {   /* FT decides where it runs */
			json_array_append_new(refused, json_pack("{s:s, s:s}", "vm", vm, "reason",
				"fault tolerant: its primary does not migrate (ferry vm ft disable NAME)"));
			continue;
		}
		json_t *rec = wizard_recommend_n(row, 1, -1, NULL, NULL);
		json_t *first = json_array_get(json_object_get(rec, "candidates"), 0);
		if (!first) {   /* a host at its limit is fine: the task waits */
			size_t k;
			json_t *r;
			json_array_foreach(json_object_get(rec, "refused"), k, r)
				if (!first && !strncmp(json_string_value(json_object_get(r, "reason")) ?: "",
						       "at its limit", 12))
					first = r;
		}
		if (!first) {
			json_array_append_new(refused, json_pack("{s:s, s:s}", "vm", vm, "reason",
				"no other host can take it (ferry vm recommend NAME says why)"));
		} else {
			json_t *extra = json_pack("{s:O}", "estimate",
						  json_object_get(first, "estimate") ?: json_null());
			long long id = task_insert("migrate", vm, host,
						   json_string_value(json_object_get(first, "host")),
						   "queued", 0, 0, c->user, extra);
			json_decref(extra);
			json_array_append_new(tasks, json_integer(id));
		}
		json_decref(rec);
	}
	json_decref(rows);
	tasks_wake();
	return json_pack("{s:o, s:o}", "tasks", tasks, "refused", refused);
}

static void host_routes(struct call *c, const char *name, const char *action)
{
	json_t *row = db_row("SELECT * FROM hosts WHERE name = ?", json_pack("[s]", name));
	if (!row) {
		char msg[200];
		snprintf(msg, sizeof(msg), "no host named %s", name);
		reply_error(c->resp, 404, msg, "ferry host list shows the hosts");
		return;
	}
	if (!action && is(c, "GET")) {
		reply_json(c->resp, 200, host_json(row));
	} else if (action && !strcmp(action, "maintenance") && is(c, "POST")) {
		audit_as(c, "host.maintenance", name);
		json_t *body = parse_body(c->req, c->resp);
		if (body) {
			json_t *en = json_object_get(body, "enabled");
			if (!json_is_boolean(en)) {
				reply_error(c->resp, 400, "want {\"enabled\": true|false}", NULL);
			} else {
				db_exec("UPDATE hosts SET maintenance = ? WHERE name = ?",
					json_pack("[b, s]", json_is_true(en), name));
				c->details = json_pack("{s:O}", "enabled", en);
				json_t *evac = NULL;
				if (json_is_true(en) && !json_is_false(json_object_get(body, "evacuate")))
					evac = evacuate(c, name);
				json_decref(row);
				row = db_row("SELECT * FROM hosts WHERE name = ?", json_pack("[s]", name));
				json_t *out = host_json(row);
				if (evac) {
					json_object_set(c->details, "evacuation", evac);
					json_object_set_new(out, "evacuation", evac);
				}
				reply_json(c->resp, 200, out);
			}
			json_decref(body);
		}
	} else {
		reply_error(c->resp, 404, "no such call", "see docs/api.md");
	}
	json_decref(row);
}

static void grouped(struct call *c, const char *table, const char *key)
{
	char sql[300];
	snprintf(sql, sizeof(sql), "SELECT name, json_group_array(host) AS hosts%s FROM %s "
		 "GROUP BY name ORDER BY name", !strcmp(table, "datastores") ?
		 ", min(free_mib) AS free_mib" : "", table);
	json_t *rows = db_query(sql, NULL);
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
		json_object_set_new(r, "hosts", json_loads(json_string_value(
			json_object_get(r, "hosts")), 0, NULL));
	reply_json(c->resp, 200, json_pack("{s:o}", key, rows));
}

/* ---- VMs ------------------------------------------------------------------ */

static json_t *host_row_alive(const char *name)
{
	return db_row("SELECT * FROM hosts WHERE name = ? AND alive = 1", json_pack("[s]", name));
}

/* Starts a VM on its host through ferryd; false with a message. */
static bool start_on_host(const char *name, const char *host, const char *spec_text,
			  char *err, size_t errlen)
{
	json_t *h = host_row_alive(host);
	if (!h) {
		snprintf(err, errlen, "host %s is not alive", host);
		return false;
	}
	char url[200];
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(h, "url")));
	json_decref(h);
	json_t *body = json_pack("{s:s, s:o}", "name", name, "spec", json_loads(spec_text, 0, NULL));
	long status;
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(url, "POST", "/agent/v1/vms", body, &status, err, errlen);
	pthread_mutex_lock(&db_lock);
	json_decref(body);
	bool ok = r && status == 201;
	if (r && !ok)
		snprintf(err, errlen, "host %s: %s", host, ferryd_message(r, "refused"));
	json_decref(r);
	return ok;
}

static bool stop_on_host(const char *name, const char *host, char *err, size_t errlen)
{
	json_t *h = host_row_alive(host);
	if (!h)
		return true;   /* nothing runs on a dead host */
	char url[200], path[200];
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(h, "url")));
	json_decref(h);
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/stop", name);
	long status;
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(url, "POST", path, json_object(), &status, err, errlen);
	pthread_mutex_lock(&db_lock);
	bool ok = r && (status == 200 || status == 404);
	if (r && !ok)
		snprintf(err, errlen, "host %s: %s", host, ferryd_message(r, "refused"));
	json_decref(r);
	return ok;
}

/* A host in DPM standby, or the VM's rules, refuse it there: why (false). */
static bool placement_allowed(const char *vm, json_t *host_row, char *why, size_t len)
{
	const char *host = json_string_value(json_object_get(host_row, "name")) ?: "";
	if (json_integer_value(json_object_get(host_row, "standby"))) {
		snprintf(why, len, "host %s is in standby (DPM)", host);
		return false;
	}
	struct rule_set *rs = rules_for_vm(vm);
	bool ok = rules_permit(rs, vm, host, NULL, NULL, why, len);
	rules_free(rs);
	return ok;
}

static const char *opt_str(json_t *body, const char *key, bool *bad)
{
	json_t *v = json_object_get(body, key);
	if (v && !json_is_string(v) && !json_is_null(v))
		*bad = true;
	return json_string_value(v);
}

static void vm_create(struct call *c)
{
	json_t *body = parse_body(c->req, c->resp);
	if (!body)
		return;
	bool bad = false;
	const char *name = opt_str(body, "name", &bad);
	audit_as(c, "vm.create", name);
	const char *kernel = opt_str(body, "kernel", &bad);
	const char *host = opt_str(body, "host", &bad);
	json_t *mem = json_object_get(body, "mem_mib"), *smp = json_object_get(body, "smp");
	json_t *disks = json_object_get(body, "disks");
	opt_str(body, "initrd", &bad);
	opt_str(body, "append", &bad);
	opt_str(body, "net", &bad);
	if (bad || !valid_name(name) || !kernel || !strchr(kernel, ':') || !json_is_integer(mem) ||
	    json_integer_value(mem) < 16 || (smp && !json_is_integer(smp)) ||
	    (disks && !json_is_array(disks))) {
		reply_error(c->resp, 400, "a VM needs name (letters, digits, - _ .), kernel "
			    "(DATASTORE:PATH) and mem_mib (>= 16); smp is an integer, disks a list, "
			    "initrd, append and net strings", "see docs/api.md, POST /api/v1/vms");
		json_decref(body);
		return;
	}
	json_t *old = vm_row(name);
	if (old) {
		char msg[200];
		snprintf(msg, sizeof(msg), "a VM named %s exists already", name);
		reply_error(c->resp, 409, msg, "pick another name, or ferry vm delete it first");
		json_decref(old);
		json_decref(body);
		return;
	}
	json_t *spec = json_pack("{s:s, s:O, s:I}", "kernel", kernel, "mem_mib", mem, "smp",
				 smp ? json_integer_value(smp) : (json_int_t)1);
	const char *keys[] = { "initrd", "append", "net", "ha" };
	for (int i = 0; i < 4; i++)
		if (json_is_string(json_object_get(body, keys[i])))
			json_object_set(spec, keys[i], json_object_get(body, keys[i]));
	json_object_set_new(spec, "disks", disks ? json_incref(disks) : json_array());
	char *spec_text = json_dumps(spec, JSON_COMPACT);
	char chosen[64] = "";
	if (host) {
		json_t *h = host_row_alive(host);
		if (!h || json_integer_value(json_object_get(h, "maintenance"))) {
			char msg[200];
			snprintf(msg, sizeof(msg), "host %s is %s", host,
				 h ? "in maintenance" : "unknown or not alive");
			reply_error(c->resp, h ? 409 : 404, msg, "ferry host list shows the hosts");
			json_decref(h);
			goto out;
		}
		char why[300];
		bool allowed = placement_allowed(name, h, why, sizeof(why));
		json_decref(h);
		if (!allowed) {
			reply_error(c->resp, 409, why, "ferry vm recommend NAME lists the hosts that can");
			goto out;
		}
		snprintf(chosen, sizeof(chosen), "%s", host);
	} else {
		json_t *fake = json_pack("{s:s, s:s, s:s}", "name", name, "host", "", "spec", spec_text);
		json_t *rec = wizard_recommend_n(fake, drs_auto_placement() ? -1 : 1, -1, NULL,
						 NULL);
		json_decref(fake);
		json_t *first = json_array_get(json_object_get(rec, "candidates"), 0);
		if (!first) {
			char *why = json_dumps(json_object_get(rec, "refused"), JSON_COMPACT);
			char msg[1200];
			snprintf(msg, sizeof(msg), "no host can run this VM: %s", why);
			free(why);
			reply_error(c->resp, 409, msg, "free a host, or check the datastores");
			json_decref(rec);
			goto out;
		}
		snprintf(chosen, sizeof(chosen), "%s", json_string_value(json_object_get(first, "host")));
		drs_initial_host(spec, json_object_get(rec, "candidates"), chosen, sizeof(chosen));
		json_decref(rec);
	}
	bool start = !json_is_false(json_object_get(body, "start"));
	char why[600];
	if (start && !admission_check(name, spec, chosen, why, sizeof(why))) {
		reply_error(c->resp, 409, why, "add hosts or memory, create it with --ha off or "
			    "--no-start, or lower ha.host_failures_tolerated");
		goto out;
	}
	db_exec("INSERT INTO vms(name, host, state, spec, created) VALUES(?, ?, ?, ?, ?)",
		json_pack("[s, s, s, s, I]", name, chosen, start ? "starting" : "stopped", spec_text,
			  (json_int_t)time(NULL)));
	long long task = task_insert("create", name, chosen, NULL, "running", 0, 0, c->user, NULL);
	c->details = json_pack("{s:s, s:O, s:I}", "host", chosen, "spec", spec, "task",
			       (json_int_t)task);
	char err[1024];
	if (start && !start_on_host(name, chosen, spec_text, err, sizeof(err))) {
		task_finish(task, "failed", err);
		db_exec("DELETE FROM vms WHERE name = ?", json_pack("[s]", name));
		reply_error(c->resp, 400, err, "check the VM's files on the datastore "
			    "(DATASTORE:PATH) and ferry host show HOST");
		goto out;
	}
	task_finish(task, "succeeded", NULL);
	if (start)
		db_exec("UPDATE vms SET state = 'running' WHERE name = ? AND state = 'starting'",
			json_pack("[s]", name));
	json_t *row = vm_row(name);
	reply_json(c->resp, 201, json_pack("{s:o, s:o}", "vm", vm_json(row), "task",
					   task_get(task)));
	json_decref(row);
out:
	free(spec_text);
	json_decref(spec);
	json_decref(body);
}

/* Adds COND to a WHERE clause (which starts empty) and its value to params,
 * only when the filter is given (value not NULL): a clause of just the
 * filters asked for lets SQLite walk an index, and none at all lets it
 * count a whole table without reading its rows. */


static void vm_list(struct call *c)
{
	const char *q = http_query(c->req, "q"), *host = http_query(c->req, "host");
	char like[200], where[100] = "";
	json_t *params = json_array();
	snprintf(like, sizeof(like), "%%%s%%", q ? q : "");
	where_add(where, sizeof(where), params, "host = ?", host && *host ? json_string(host) : NULL);
	where_add(where, sizeof(where), params, "name LIKE ?", q && *q ? json_string(like) : NULL);
	reply_page(c, "vms", "vms", where, params, "name", vm_json);
}

static void vm_power(struct call *c, json_t *row, const char *name, const char *action)
{
	const char *state = json_string_value(json_object_get(row, "state"));
	const char *host = json_string_value(json_object_get(row, "host"));
	char err[1024], act[32];
	snprintf(act, sizeof(act), "vm.%s", action);
	audit_as(c, act, name);
	bool running = !strcmp(state, "running") || !strcmp(state, "starting");
	if (!strcmp(state, "migrating")) {
		reply_error(c->resp, 409, "the VM is migrating", "wait for its task, or cancel it");
		return;
	}
	if (!strcmp(action, "start") && running) {
		reply_error(c->resp, 409, "the VM runs already", NULL);
		return;
	}
	json_t *host_row = !strcmp(action, "start") ? db_row("SELECT * FROM hosts WHERE name = ?",
							      json_pack("[s]", host ? host : "")) : NULL;
	bool allowed = !host_row || placement_allowed(name, host_row, err, sizeof(err));
	json_decref(host_row);
	if (!allowed) {
		reply_error(c->resp, 409, err, "ferry vm recommend NAME lists the hosts that can");
		return;
	}
	if (!strcmp(action, "start")) {
		json_t *spec = json_loads(json_string_value(json_object_get(row, "spec")) ?: "{}", 0,
					  NULL);
		bool admitted = admission_check(name, spec, host, err, sizeof(err));
		json_decref(spec);
		if (!admitted) {
			reply_error(c->resp, 409, err, "add hosts or memory, or lower "
				    "ha.host_failures_tolerated");
			return;
		}
	}
	long long task = task_insert(action, name, host, NULL, "running", 0, 0, c->user, NULL);
	bool ok = true;
	if (!strcmp(action, "start")) {
		ok = start_on_host(name, host, json_string_value(json_object_get(row, "spec")), err,
				   sizeof(err));
		if (ok)
			db_exec("UPDATE vms SET state = 'running', exit_status = NULL, last_console = "
				"NULL WHERE name = ?", json_pack("[s]", name));
	} else {
		ok = stop_on_host(name, host, err, sizeof(err));
		if (ok && !strcmp(action, "delete"))
			db_exec("DELETE FROM vms WHERE name = ?", json_pack("[s]", name));
		else if (ok)
			db_exec("UPDATE vms SET state = 'stopped' WHERE name = ?", json_pack("[s]", name));
	}
	task_finish(task, ok ? "succeeded" : "failed", ok ? NULL : err);
	if (!ok)
		reply_error(c->resp, 502, err, "ferry host show HOST says whether the host answers");
	else
		reply_task(c, 200, task);
}

/* Why VM row's disks cannot move into datastore ds on its own host (a
 * storage move), in why; "" when they can. */
static void storage_move_refusal(json_t *row, const char *ds, char *why, size_t len)
{
	const char *host = json_string_value(json_object_get(row, "host")) ?: "";
	json_t *d = db_row("SELECT free_mib FROM datastores WHERE host = ? AND name = ?",
			   json_pack("[s, s]", host, ds));
	json_t *spec = json_loads(json_string_value(json_object_get(row, "spec")) ?: "{}", 0, NULL);
	int movable = 0;
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(spec, "disks"), i, v) {
		const char *ref = json_string_value(v) ?: "";
		const char *colon = strchr(ref, ':');
		movable += colon && !strstr(ref, ",ro") &&
			   (strlen(ds) != (size_t)(colon - ref) || strncmp(ref, ds, colon - ref));
	}
	why[0] = 0;
	if (!d)
		snprintf(why, len, "host %s has no datastore %s", host, ds);
	else if (json_integer_value(json_object_get(d, "free_mib")) < 0)
		snprintf(why, len, "datastore %s is not available on host %s", ds, host);
	else if (!movable)
		snprintf(why, len, "no disk of the VM to move: its disks are on %s already, or "
			 "read-only (those stay where they are)", ds);
	json_decref(spec);
	json_decref(d);
}

static void vm_migrate(struct call *c, json_t *row, const char *name)
{
	audit_as(c, "vm.migrate", name);
	json_t *body = parse_body(c->req, c->resp);
	if (!body)
		return;
	bool bad = false;
	const char *to = opt_str(body, "to", &bad), *prio = opt_str(body, "priority", &bad);
	const char *at_text = opt_str(body, "at", &bad);
	const char *ds = opt_str(body, "datastore", &bad);
	json_t *dt = json_object_get(body, "downtime_ms");
	json_t *bw = json_object_get(body, "bandwidth_mbps");
	time_t at = at_text ? parse_time(at_text) : 0;
	if (bad || (dt && (!json_is_integer(dt) || json_integer_value(dt) <= 0)) || at < 0 ||
	    (bw && (!json_is_integer(bw) || json_integer_value(bw) <= 0)) ||
	    (prio && strcmp(prio, "high") && strcmp(prio, "standard"))) {
		reply_error(c->resp, 400, "migrate takes to (a host), datastore, priority "
			    "(high|standard), at "
			    "(ISO time such as 2026-12-02T05:00:00Z, or +10m), downtime_ms and "
			    "bandwidth_mbps (positive integers)", "see docs/api.md");
		json_decref(body);
		return;
	}
	json_t *ft = ft_status(name);
	bool fault_tolerant = ft != NULL;
	json_decref(ft);
	if (fault_tolerant) {
		reply_error(c->resp, 409, "the VM is fault tolerant: its primary does not migrate",
			    "ferry vm ft disable NAME first");
		json_decref(body);
		return;
	}
	const char *state = json_string_value(json_object_get(row, "state"));
	json_t *active = db_row("SELECT id FROM tasks WHERE vm = ? AND kind = 'migrate' AND state "
				"IN ('queued', 'running')", json_pack("[s]", name));
	if (active || strcmp(state, "running")) {
		char msg[200];
		if (active)
			snprintf(msg, sizeof(msg), "VM %s has a migration already (task %lld)", name,
				 json_integer_value(json_object_get(active, "id")));
		else
			snprintf(msg, sizeof(msg), "VM %s is %s, not running", name, state);
		reply_error(c->resp, 409, msg, active ? "ferry task show ID, or ferry task cancel ID"
						      : "ferry vm start NAME first");
		json_decref(active);
		json_decref(body);
		return;
	}
	/* a storage move: its disks into ds, on the host it runs on */
	const char *host = json_string_value(json_object_get(row, "host")) ?: "";
	json_t *rec = NULL, *pick = NULL;
	size_t i;
	json_t *cand;
	const char *dest = host;
	if (ds && (!to || !strcmp(to, host))) {
		char why[400];
		storage_move_refusal(row, ds, why, sizeof(why));
		if (why[0]) {
			reply_error(c->resp, 409, why, "ferry datastore list shows the datastores");
			goto out;
		}
		goto queue;
	}
	/* a named destination: that host alone is checked; else the best one */
	rec = wizard_recommend_n(row, to ? -1 : 1, -1, to, ds ? ds : "");
	if (to) {
		json_array_foreach(json_object_get(rec, "candidates"), i, cand)
			if (!strcmp(json_string_value(json_object_get(cand, "host")), to))
				pick = cand;
		json_array_foreach(json_object_get(rec, "refused"), i, cand) {
			const char *reason = json_string_value(json_object_get(cand, "reason"));
			if (strcmp(json_string_value(json_object_get(cand, "host")), to))
				continue;
			if (!strncmp(reason, "at its limit", 12)) {
				pick = cand;   /* over its limit: the task waits in the queue */
				continue;
			}
			char msg[400];
			snprintf(msg, sizeof(msg), "host %s cannot take VM %s: %s", to, name, reason);
			reply_error(c->resp, 409, msg, "ferry vm recommend NAME lists the hosts that can");
			goto out;
		}
		if (!pick) {
			char msg[200];
			snprintf(msg, sizeof(msg), "no host named %s", to);
			reply_error(c->resp, 404, msg, "ferry host list shows the hosts");
			goto out;
		}
	} else {
		pick = json_array_get(json_object_get(rec, "candidates"), 0);
		if (!pick) {
			char *why = json_dumps(json_object_get(rec, "refused"), JSON_COMPACT);
			char msg[1500];
			snprintf(msg, sizeof(msg), "no host can take VM %s: %s", name, why);
			free(why);
			reply_error(c->resp, 409, msg, "ferry vm recommend NAME explains each host");
			goto out;
		}
	}
	dest = json_string_value(json_object_get(pick, "host"));
	/* shared-nothing: the wizard says where the disks go; else none move */
	ds = json_string_value(json_object_get(pick, "datastore"));
	const char *vstate = json_string_value(json_object_get(row, "state")) ?: "";
	if (!strcmp(vstate, "running") || !strcmp(vstate, "starting")) {
		char why[600];
		json_t *spec = json_loads(json_string_value(json_object_get(row, "spec")) ?: "{}", 0,
					  NULL);
		bool admitted = admission_check(name, spec, dest, why, sizeof(why));
		json_decref(spec);
		if (!admitted) {
			reply_error(c->resp, 409, why, "pick another host (--to), or lower "
				    "ha.host_failures_tolerated");
			goto out;
		}
	}
queue:;
	json_t *extra = json_pack("{s:O}", "estimate",
				  json_object_get(pick, "estimate") ?: json_null());
	if (ds)
		json_object_set_new(extra, "datastore", json_string(ds));
	if (dt)
		json_object_set(extra, "downtime_ms", dt);
	if (bw)
		json_object_set(extra, "bandwidth_mbps", bw);
	long long id = task_insert("migrate", name, json_string_value(json_object_get(row, "host")),
				   dest, "queued", prio && !strcmp(prio, "high"), at, c->user, extra);
	json_decref(extra);
	c->details = json_pack("{s:I, s:s, s:s, s:s, s:s?}", "task", (json_int_t)id, "destination",
			       dest, "priority", prio ? prio : "standard", "at",
			       at_text ? at_text : "now", "datastore", ds);
	reply_task(c, 202, id);
	tasks_wake();
out:
	json_decref(rec);
	json_decref(body);
}

static void vm_console(struct call *c, json_t *row, const char *name)
{
	const char *host = json_string_value(json_object_get(row, "host"));
	json_t *h = host_row_alive(host);
	if (!h) {
		reply_error(c->resp, 503, "the VM's host does not answer", NULL);
		return;
	}
	char url[200], path[200], err[512];
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(h, "url")));
	json_decref(h);
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/console", name);
	long status;
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(url, "GET", path, NULL, &status, err, sizeof(err));
	pthread_mutex_lock(&db_lock);
	if (r && status == 200) {
		json_object_set_new(r, "host", json_string(host));
		reply_json(c->resp, 200, r);
		return;
	}
	reply_error(c->resp, r ? status : 502, r ? ferryd_message(r, "?") : err, NULL);
	json_decref(r);
}

/* The wizard's answer, each list cut to ?limit= (the console shows the
 * best few of 2,500 hosts), with the full counts beside; written as text
 * (at 2,500 hosts a json_t tree was most of the call). */
static void recommend_page(struct call *c, json_t *row)
{
	long long lim = http_query(c->req, "limit") ? query_int(c, "limit", 0, 1LL << 40) : -1;
	size_t len;
	char *text = wizard_recommend_text(row, lim, lim, NULL, "", &len);
	http_respond(c->resp, 200, "application/json", text, len);
}

/* POST /api/v1/vms/NAME/ft (center/ft.c) */
static void vm_ft(struct call *c, json_t *row, const char *name)
{
	json_t *body = parse_body(c->req, c->resp);
	if (!body)
		return;
	audit_as(c, json_is_false(json_object_get(body, "enabled")) ? "vm.ft.disable"
								     : "vm.ft.enable", name);
	json_t *reply = NULL;
	const char *hint = NULL;
	char err[1600];
	int status = ft_request(row, name, body, c->user, &reply, &c->details, err, sizeof(err),
				&hint);
	if (status < 300)
		reply_json(c->resp, status, reply);
	else
		reply_error(c->resp, status, err, hint);
	json_decref(body);
}

static void vm_routes(struct call *c, const char *name, const char *action)
{
	json_t *row = vm_row(name);
	if (!row) {
		not_found_vm(c, name);
		return;
	}
	if (!action && is(c, "GET")) {
		json_t *j = vm_json(row);
		json_object_set_new(j, "ft", ft_status(name) ?: json_null());
		json_t *mig = db_row("SELECT * FROM tasks WHERE vm = ? AND kind = 'migrate' AND "
				     "state IN ('queued', 'running') ORDER BY id DESC",
				     json_pack("[s]", name));
		json_object_set_new(j, "migration", mig ? task_json(mig) : json_null());
		json_decref(mig);
		reply_json(c->resp, 200, j);
	} else if (action && !strcmp(action, "ft") && is(c, "POST"))
		vm_ft(c, row, name);
	else if (action && !strcmp(action, "ft") && is(c, "GET"))
		reply_json(c->resp, 200, ft_status(name) ?: json_pack("{s:s}", "state", "off"));
	else if (!action && is(c, "DELETE"))
		vm_power(c, row, name, "delete");
	else if (action && (!strcmp(action, "start") || !strcmp(action, "stop")) && is(c, "POST"))
		vm_power(c, row, name, action);
	else if (action && !strcmp(action, "migrate") && is(c, "POST"))
		vm_migrate(c, row, name);
	else if (action && !strcmp(action, "recommend") && is(c, "GET"))
		recommend_page(c, row);
	else if (action && !strcmp(action, "console") && is(c, "GET"))
		vm_console(c, row, name);
	else
		reply_error(c->resp, 404, "no such call", "see docs/api.md");
	json_decref(row);
}

/* ---- tasks, audit, cluster ------------------------------------------------ */

static void tasks_list(struct call *c)
{
	const char *state = http_query(c->req, "state"), *vm = http_query(c->req, "vm");
	char where[100] = "";
	json_t *params = json_array();
	where_add(where, sizeof(where), params, "state = ?", state ? json_string(state) : NULL);
	where_add(where, sizeof(where), params, "vm = ?", vm ? json_string(vm) : NULL);
	reply_page(c, "tasks", "tasks", where, params, "id DESC", task_json);
}


/* ?wait=MS: hold the reply until the task has ended or MS have passed
 * (at most 30 s), so that a waiting client hears of the end at once. */
static json_t *task_wait_end(struct call *c, long long id, json_t *t)
{
	if (!http_query(c->req, "wait"))
		return t;
	long long ms = query_int(c, "wait", 0, 30000);
	long long deadline = now_ms() + ms;
	for (;;) {
		const char *state = json_string_value(json_object_get(t, "state")) ?: "";
		long long left = deadline - now_ms();
		if ((strcmp(state, "queued") && strcmp(state, "running")) || left <= 0)
			return t;
		unsigned long long gen = tasks_ended_gen();
		pthread_mutex_unlock(&db_lock);
		tasks_wait_ended(gen, left);
		pthread_mutex_lock(&db_lock);
		json_t *again = task_get(id);
		if (!again)
			return t;
		json_decref(t);
		t = again;
	}
}

static void task_routes(struct call *c, const char *idtext, const char *action)
{
	char *end;
	long long id = strtoll(idtext, &end, 10);
	json_t *t = *end ? NULL : task_get(id);
	if (!t) {
		char msg[200];
		snprintf(msg, sizeof(msg), "no task %s", idtext);
		reply_error(c->resp, 404, msg, "ferry task list shows the tasks");
		return;
	}
	if (!action && is(c, "GET")) {
		t = task_wait_end(c, id, t);
		reply_json(c->resp, 200, t);
		return;
	}
	if (action && !strcmp(action, "cancel") && is(c, "POST")) {
		audit_as(c, "task.cancel", idtext);
		const char *state = json_string_value(json_object_get(t, "state"));
		if (!strcmp(state, "queued")) {
			task_finish(id, "cancelled", "cancelled while queued");
		} else if (!strcmp(state, "running") &&
			   !strcmp(json_string_value(json_object_get(t, "kind")), "migrate")) {
			db_exec("UPDATE tasks SET cancel = 1 WHERE id = ? AND cancel = 0",
				json_pack("[I]", (json_int_t)id));
			tasks_wake();
		} else {
			char msg[200];
			snprintf(msg, sizeof(msg), "task %lld is %s: nothing to cancel", id, state);
			reply_error(c->resp, 409, msg, NULL);
			json_decref(t);
			return;
		}
		json_decref(t);
		reply_task(c, 200, id);
		return;
	}
	json_decref(t);
	reply_error(c->resp, 404, "no such call", "see docs/api.md");
}


/* An audit row as the API shows it: ISO time, "from", details as JSON. */
static json_t *audit_json(json_t *row)
{
	json_t *r = json_incref(row);           /* the page's own rows: edit in place */
	iso_or_null(r, "time", json_object_get(r, "time"));
	json_object_set(r, "from", json_object_get(r, "addr"));
	json_object_del(r, "addr");
	json_t *d = json_loads(json_string_value(json_object_get(r, "details")) ?: "{}", 0, NULL);
	json_object_set_new(r, "details", d ? d : json_object());
	return r;
}

static void audit_list(struct call *c)
{
	const char *vm = http_query(c->req, "vm"), *since = http_query(c->req, "since");
	time_t t = since ? parse_time(since) : 0;
	if (t < 0) {
		reply_error(c->resp, 400, "since: want an ISO time such as 2026-12-02T05:00:00Z",
			    NULL);
		return;
	}
	char where[100] = "";
	json_t *params = json_array();
	where_add(where, sizeof(where), params, "target = ?", vm ? json_string(vm) : NULL);
	where_add(where, sizeof(where), params, "time >= ?", t ? json_integer((json_int_t)t) : NULL);
	reply_page(c, "records", "audit", where, params, "id DESC", audit_json);
}

static json_t *cluster_json(void)
{
	json_t *s = json_object();
	json_object_set_new(s, "migrations_per_host",
			    json_integer(db_setting_int("migrations_per_host", 4)));
	json_object_set_new(s, "standard_share_mbps",
			    json_integer(db_setting_int("standard_share_mbps", 100)));
	json_object_set_new(s, "ha.host_failures_tolerated",
			    json_integer(db_setting_int("ha.host_failures_tolerated", 0)));
	json_t *rows = db_query("SELECT key, value FROM settings WHERE key LIKE 'host.%' OR "
				 "key LIKE 'datastore.%' OR key LIKE 'network.%'", NULL);
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
		json_object_set_new(s, json_string_value(json_object_get(r, "key")),
				    json_integer(atoll(json_string_value(json_object_get(r, "value")))));
	json_decref(rows);
	drs_settings_json(s);
	json_t *n = db_row("SELECT (SELECT count(*) FROM hosts) AS hosts, (SELECT count(*) FROM vms)"
			   " AS vms, (SELECT count(*) FROM tasks WHERE state = 'running') AS running,"
			   " (SELECT count(*) FROM tasks WHERE state = 'queued') AS queued", NULL);
	json_t *out = json_pack("{s:o, s:O, s:O, s:O, s:O}", "settings", s, "hosts",
				json_object_get(n, "hosts"), "vms", json_object_get(n, "vms"),
				"tasks_running", json_object_get(n, "running"), "tasks_queued",
				json_object_get(n, "queued"));
	json_object_set_new(out, "drs", drs_status_json());
	json_object_set_new(out, "etcd", ha_etcd_json());
	json_decref(n);
	return out;
}

static void cluster_set(struct call *c)
{
	audit_as(c, "cluster.set", "cluster");
	json_t *body = parse_body(c->req, c->resp);
	if (!body)
		return;
	const char *key;
	json_t *v;
	json_t *texts = json_object();   /* DRS and DPM keys, checked, as stored */
	json_object_foreach(body, key, v) {
		char text[32], err[300];
		int mine = drs_setting_check(key, v, text, sizeof(text), err, sizeof(err));
		if (mine == 0) {
			reply_error(c->resp, 400, err, NULL);
			json_decref(texts);
			json_decref(body);
			return;
		}
		if (mine > 0) {
			json_object_set_new(texts, key, json_string(text));
			continue;
		}
		long long n = json_is_integer(v) ? json_integer_value(v)
			    : json_is_string(v) ? atoll(json_string_value(v)) : 0;
		bool ha_key = !strcmp(key, "ha.host_failures_tolerated");
		if (ha_key && (n < 0 || n > 64 || (json_is_string(v) && !isdigit((unsigned char)
				*json_string_value(v))))) {
			reply_error(c->resp, 400, "ha.host_failures_tolerated: want 0 (off) to 64",
				    NULL);
			json_decref(body);
			return;
		}
		if (ha_key)
			continue;
		bool known = !strcmp(key, "migrations_per_host") || !strcmp(key, "standard_share_mbps") ||
			     ((!strncmp(key, "host.", 5) || !strncmp(key, "datastore.", 10) ||
			       !strncmp(key, "network.", 8)) && strstr(key, ".migrations"));
		if (!known || n < 1 || (n > 64 && strcmp(key, "standard_share_mbps"))) {
			char msg[300];
			snprintf(msg, sizeof(msg), "%s: want migrations_per_host or "
				 "host.NAME.migrations, datastore.NAME.migrations, network.NAME.migrations "
				 "(1 to 64), standard_share_mbps or ha.host_failures_tolerated", key);
			reply_error(c->resp, 400, msg, NULL);
			json_decref(texts);
			json_decref(body);
			return;
		}
	}
	json_object_foreach(body, key, v) {
		char text[32];
		if (json_object_get(texts, key)) {
			db_setting_set(key, json_string_value(json_object_get(texts, key)));
			continue;
		}
		snprintf(text, sizeof(text), "%lld", json_is_integer(v) ? json_integer_value(v)
						   : atoll(json_string_value(v)));
		db_setting_set(key, text);
	}
	c->details = json_incref(body);
	json_decref(texts);
	json_decref(body);
	reply_json(c->resp, 200, cluster_json());
}

/* ---- dispatch ------------------------------------------------------------- */

static void split(const char *rest, char *first, size_t flen, const char **second)
{
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	snprintf(first, flen, "%.*s", (int)n, rest);
	*second = slash && slash[1] ? slash + 1 : NULL;
}

static void route(struct call *c, const char *rest)
{
	char name[128];
	const char *sub;
	if (!strcmp(rest, "whoami") && is(c, "GET"))
		reply_json(c->resp, 200, json_pack("{s:s, s:s}", "user", c->user, "role",
						   auth_role_name(c->role)));
	else if (!strcmp(rest, "hosts") && is(c, "GET"))
		hosts_list(c);
	else if (!strncmp(rest, "hosts/", 6)) {
		split(rest + 6, name, sizeof(name), &sub);
		host_routes(c, name, sub);
	} else if (!strcmp(rest, "datastores") && is(c, "GET"))
		grouped(c, "datastores", "datastores");
	else if (!strcmp(rest, "networks") && is(c, "GET"))
		grouped(c, "networks", "networks");
	else if (!strcmp(rest, "vms") && is(c, "GET"))
		vm_list(c);
	else if (!strcmp(rest, "vms") && is(c, "POST"))
		vm_create(c);
	else if (!strncmp(rest, "vms/", 4)) {
		split(rest + 4, name, sizeof(name), &sub);
		vm_routes(c, name, sub);
	} else if (!strcmp(rest, "tasks") && is(c, "GET"))
		tasks_list(c);
	else if (!strncmp(rest, "tasks/", 6)) {
		split(rest + 6, name, sizeof(name), &sub);
		task_routes(c, name, sub);
	} else if (!strcmp(rest, "audit") && is(c, "GET"))
		audit_list(c);
	else if (!strcmp(rest, "audit/verify") && is(c, "GET"))
		reply_json(c->resp, 200, audit_verify());
	else if (!strcmp(rest, "rules") || !strncmp(rest, "rules/", 6) || !strcmp(rest, "drs") ||
		 !strncmp(rest, "drs/", 4)) {
		struct api_audit a = { 0 };
		(rest[0] == 'r' ? rules_api : drs_api)(c->req, c->resp, rest, c->user, &a);
		if (a.action[0])
			audit_as(c, a.action, a.target);
		c->details = a.details;
	} else if (!strcmp(rest, "cluster") && is(c, "GET"))
		reply_json(c->resp, 200, cluster_json());
	else if (!strcmp(rest, "cluster") && (is(c, "POST") || is(c, "PUT")))
		cluster_set(c);
	else
		reply_error(c->resp, 404, "no such call", "see docs/api.md");
}

static const char *mime(const char *path)
{
	const char *dot = strrchr(path, '.');
	if (!dot)
		return "application/octet-stream";
	if (!strcmp(dot, ".html"))
		return "text/html; charset=utf-8";
	if (!strcmp(dot, ".js"))
		return "text/javascript";
	if (!strcmp(dot, ".css"))
		return "text/css";
	if (!strcmp(dot, ".json"))
		return "application/json";
	if (!strcmp(dot, ".svg"))
		return "image/svg+xml";
	if (!strcmp(dot, ".png"))
		return "image/png";
	return "application/octet-stream";
}

static void serve_static(const struct http_request *req, struct http_response *resp)
{
	if (strcmp(req->method, "GET") || strstr(req->path, "..") || !ctr.web_dir[0]) {
		reply_error(resp, 404, "not found", NULL);
		return;
	}
	char path[8192];
	snprintf(path, sizeof(path), "%s%s%s", ctr.web_dir, req->path,
		 req->path[strlen(req->path) - 1] == '/' ? "index.html" : "");
	size_t len;
	char *data = read_file(path, &len);
	if (!data) {
		reply_error(resp, 404, "not found", NULL);
		return;
	}
	http_respond(resp, 200, mime(path), data, len);
}

void api_handle(void *ctx, const struct http_request *req, struct http_response *resp)
{
	(void)ctx;
	if (strncmp(req->path, PREFIX, strlen(PREFIX))) {
		serve_static(req, resp);
		return;
	}
	struct call c = { .req = req, .resp = resp };
	c.role = auth_check(&ctr.auth, req->auth, c.user, sizeof(c.user));
	if (c.role == ROLE_NONE || c.role == ROLE_AGENT) {
		reply_error(resp, 401, req->auth ? "the token is not valid" : "no token",
			    "send Authorization: Bearer TOKEN (ferry reads it from --token-file, "
			    "FERRY_TOKEN_FILE or the lab's DIR/token)");
		return;
	}
	bool changes = strcmp(req->method, "GET") != 0;
	if (changes && c.role != ROLE_ADMIN) {
		reply_error(resp, 403, "a read-only token cannot change anything",
			    "use an admin token");
		return;
	}
	db_lock_api();
	route(&c, req->path + strlen(PREFIX));
	if (changes) {
		char result[400] = "ok";
		if (resp->status >= 400) {
			json_t *b = json_loadb(resp->body, resp->body_len, 0, NULL);
			snprintf(result, sizeof(result), "error %d: %s", resp->status,
				 json_string_value(json_object_get(json_object_get(b, "error"),
								   "message")) ?: "?");
			json_decref(b);
		}
		if (!c.action[0])
			snprintf(c.action, sizeof(c.action), "%s %s", req->method, req->path);
		audit_append(c.user, req->peer, c.action, c.target, result, c.details);
	}
	pthread_mutex_unlock(&db_lock);
	json_decref(c.details);
}
