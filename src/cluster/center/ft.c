/*
 * ft.c - fault tolerance as ferry-center sees it.
 *
 * The decisions are the ferryds' (ferryd/ft.c: the owner key in etcd
 * says which host may run the guest); ferry-center asks for FT and shows
 * it:
 * - `ft enable` (task ft-enable): the secondary is the host asked for, or
 *   the wizard's first choice (the VM's own host is refused there); the
 *   primary's ferryd starts the secondary and ft-start; the task runs
 *   until the status key says protected (at most FT_ENABLE_MS);
 * - `ft disable` (task ft-disable): the owner's ferryd stops FT, removes
 *   the secondary and the keys;
 * - the figures (`vm show`, the console) are the status key as written by
 *   the owner's ferryd, so they are there while ferry-center restarts and
 *   say "failing-over" while a host dies;
 * - after a failover the VM runs on the former secondary's host: once the
 *   owner key names that host and the status says it took over, the VM is
 *   moved there in the inventory (task ft-failover and audit record
 *   ft.failover, user ferryd-HOST, with the epoch it resumed from);
 * - the inventory's stray-stopper (inventory.c) asks ft_owned_by first: a
 *   secondary that took over runs on a host the inventory does not name
 *   yet, while the old primary's host may still hold its lease (ferryd
 *   takes over as soon as it wins the owner key), and that copy is the VM.
 */
#include "cluster/center/ft.h"

#include "cluster/center/center.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FT_PREFIX "/ferry/ft/"
#define FT_ENABLE_MS 120000
#define FT_GRACE_S 40   /* the ferryd's call may take 30 s before it writes a key */

static json_t *etcd_json(const char *key)
{
	char err[256];
	bool ok;
	char *text = etcd_get(&ctr.etcd, key, &ok, err, sizeof(err));
	json_t *j = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
	return j;
}

json_t *ft_status(const char *name)
{
	char key[200];
	snprintf(key, sizeof(key), FT_PREFIX "%s/status", name);
	json_t *s = etcd_json(key);
	if (!s) {   /* enabled a moment ago, nothing written yet */
		snprintf(key, sizeof(key), FT_PREFIX "%s/owner", name);
		json_t *owner = etcd_json(key);
		if (owner)
			s = json_pack("{s:s, s:O}", "state", "starting", "primary",
				      json_object_get(owner, "host"));
		json_decref(owner);
	}
	return s;
}

static json_t *host_alive_row(const char *host)
{
	return db_row("SELECT * FROM hosts WHERE name = ? AND alive = 1", json_pack("[s]", host));
}

/* The secondary's host: the one asked for if the wizard accepts it, else
 * the wizard's first choice; NULL with the reason. */
static char *pick_secondary(json_t *row, const char *asked, char *err, size_t errlen)
{
	json_t *rec = wizard_recommend_n(row, asked ? -1 : 1, -1, asked, NULL);
	char *pick = NULL;
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(rec, "candidates"), i, c)
		if (!pick && (!asked || !strcmp(json_string_value(json_object_get(c, "host")), asked)))
			pick = strdup(json_string_value(json_object_get(c, "host")));
	json_array_foreach(json_object_get(rec, "refused"), i, c) {
		const char *host = json_string_value(json_object_get(c, "host"));
		const char *reason = json_string_value(json_object_get(c, "reason"));
		if (!pick && asked && !strcmp(host, asked)) {
			if (!strncmp(reason, "at its limit", 12))   /* of migrations: FT may */
				pick = strdup(host);
			else
				snprintf(err, errlen, "host %s cannot hold the secondary: %s", host,
					 reason);
		}
	}
	if (!pick && !err[0]) {
		if (asked) {
			snprintf(err, errlen, "no host named %s", asked);
		} else {
			char *why = json_dumps(json_object_get(rec, "refused"), JSON_COMPACT);
			snprintf(err, errlen, "no host can hold a secondary of VM %s: %s",
				 json_string_value(json_object_get(row, "name")), why);
			free(why);
		}
	}
	json_decref(rec);
	return pick;
}

static int ft_enable(json_t *row, const char *name, json_t *body, const char *user,
		     json_t **reply, json_t **details, char *err, size_t errlen, const char **hint)
{
	json_t *sec = json_object_get(body, "secondary");
	json_t *ep = json_object_get(body, "epoch_ms");
	if ((sec && !json_is_string(sec) && !json_is_null(sec)) ||
	    (ep && (!json_is_integer(ep) || json_integer_value(ep) < 5 ||
		    json_integer_value(ep) > 10000))) {
		snprintf(err, errlen, "ft takes enabled (true|false), secondary (a host) and "
			 "epoch_ms (5 to 10000)");
		*hint = "see docs/api.md";
		return 400;
	}
	const char *state = json_string_value(json_object_get(row, "state")) ?: "";
	const char *primary = json_string_value(json_object_get(row, "host")) ?: "";
	if (strcmp(state, "running")) {
		snprintf(err, errlen, "VM %s is %s, not running", name, state);
		*hint = "ferry vm start NAME first";
		return 409;
	}
	json_t *now = ft_status(name);
	if (now) {
		snprintf(err, errlen, "VM %s is fault tolerant already (%s)", name,
			 json_string_value(json_object_get(now, "state")) ?: "?");
		*hint = "ferry vm show NAME; ferry vm ft disable NAME first to change it";
		json_decref(now);
		return 409;
	}
	json_t *active = db_row("SELECT id FROM tasks WHERE vm = ? AND kind IN ('migrate', "
				"'ft-enable') AND state IN ('queued', 'running')",
				json_pack("[s]", name));
	if (active) {
		snprintf(err, errlen, "VM %s has a task under way (%lld)", name,
			 json_integer_value(json_object_get(active, "id")));
		*hint = "ferry task show ID";
		json_decref(active);
		return 409;
	}
	char *secondary = pick_secondary(row, json_string_value(sec), err, errlen);
	if (!secondary) {
		*hint = "ferry vm recommend NAME explains each host";
		return sec && json_is_string(sec) && !strncmp(err, "no host named", 13) ? 404 : 409;
	}
	json_t *ph = host_alive_row(primary), *sh = host_alive_row(secondary);
	int rc = 0;
	if (!ph || !sh) {
		snprintf(err, errlen, "host %s is not alive", !ph ? primary : secondary);
		rc = 503;
	}
	char purl[200] = "", surl[200] = "";
	if (!rc) {
		snprintf(purl, sizeof(purl), "%s", json_string_value(json_object_get(ph, "url")));
		snprintf(surl, sizeof(surl), "%s", json_string_value(json_object_get(sh, "url")));
	}
	json_decref(ph);
	json_decref(sh);
	if (rc) {
		free(secondary);
		return rc;
	}
	long long task = task_insert("ft-enable", name, primary, secondary, "running", 0, 0, user,
				     NULL);
	*details = json_pack("{s:I, s:s, s:s}", "task", (json_int_t)task, "primary", primary,
			     "secondary", secondary);
	json_t *req = json_pack("{s:s, s:s}", "secondary", secondary, "secondary_url", surl);
	if (ep)
		json_object_set(req, "epoch_ms", ep);
	char path[200], e[1024];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/ft", name);
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(purl, "POST", path, req, &status, e, sizeof(e));
	pthread_mutex_lock(&db_lock);
	json_decref(req);
	if (!r || status >= 300) {
		snprintf(err, errlen, "host %s: %s", primary, r ? json_string_value(json_object_get(
			 json_object_get(r, "error"), "message")) ?: "refused" : e);
		task_finish(task, "failed", err);
		rc = 502;
	} else {
		*reply = json_pack("{s:o}", "task", task_get(task) ?: json_null());
		rc = 202;
	}
	json_decref(r);
	free(secondary);
	return rc;
}

static int ft_disable(const char *name, const char *user, json_t **reply, json_t **details,
		      char *err, size_t errlen, const char **hint)
{
	char key[200];
	snprintf(key, sizeof(key), FT_PREFIX "%s/owner", name);
	json_t *owner = etcd_json(key);
	if (!owner) {
		snprintf(err, errlen, "VM %s is not fault tolerant", name);
		*hint = "ferry vm ft enable NAME";
		return 409;
	}
	char host[64];
	snprintf(host, sizeof(host), "%s", json_string_value(json_object_get(owner, "host")) ?: "");
	json_decref(owner);
	json_t *h = host_alive_row(host);
	char url[200];
	snprintf(url, sizeof(url), "%s", h ? json_string_value(json_object_get(h, "url")) : "");
	json_decref(h);
	if (!url[0]) {
		snprintf(err, errlen, "host %s, which owns VM %s, is not alive", host, name);
		*hint = "wait for the failover (ferry vm show NAME)";
		return 503;
	}
	long long task = task_insert("ft-disable", name, host, NULL, "running", 0, 0, user, NULL);
	*details = json_pack("{s:I, s:s}", "task", (json_int_t)task, "primary", host);
	char path[200], e[1024];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/ft", name);
	pthread_mutex_unlock(&db_lock);
	json_t *r = ferryd_call(url, "DELETE", path, NULL, &status, e, sizeof(e));
	pthread_mutex_lock(&db_lock);
	int rc = 200;
	if (!r || status >= 300) {
		snprintf(err, errlen, "host %s: %s", host, r ? json_string_value(json_object_get(
			 json_object_get(r, "error"), "message")) ?: "refused" : e);
		task_finish(task, "failed", err);
		rc = 502;
	} else {
		task_finish(task, "succeeded", NULL);
		*reply = json_pack("{s:o}", "task", task_get(task) ?: json_null());
	}
	json_decref(r);
	return rc;
}

int ft_request(json_t *row, const char *name, json_t *body, const char *user, json_t **reply,
	       json_t **details, char *err, size_t errlen, const char **hint)
{
	json_t *enabled = json_object_get(body, "enabled");
	err[0] = 0;
	if (!json_is_boolean(enabled)) {
		snprintf(err, errlen, "ft wants {\"enabled\": true|false} (and secondary, epoch_ms)");
		*hint = "see docs/api.md";
		return 400;
	}
	if (json_is_true(enabled))
		return ft_enable(row, name, body, user, reply, details, err, errlen, hint);
	return ft_disable(name, user, reply, details, err, errlen, hint);
}

/* A running ft-enable task ends when its VM is protected. Under db_lock. */
static void follow_enable(json_t *task)
{
	long long id = json_integer_value(json_object_get(task, "id"));
	const char *vm = json_string_value(json_object_get(task, "vm"));
	json_t *s = ft_status(vm);
	const char *state = json_string_value(json_object_get(s, "state")) ?: "";
	long long started = json_integer_value(json_object_get(task, "started"));
	if (!strcmp(state, "protected")) {
		task_finish(id, "succeeded", NULL);
	} else if (!s && time(NULL) - started > FT_GRACE_S) {
		/* (before that, the ferryd may not have written a key yet: the
		 * task runs from before the call to it) */
		task_finish(id, "failed", "fault tolerance ended before the VM was protected "
			    "(ferry vm show NAME; the ferryd logs say why)");
	} else if (time(NULL) - started > FT_ENABLE_MS / 1000) {
		char why[600];
		snprintf(why, sizeof(why), "not protected after %d s: %s", FT_ENABLE_MS / 1000,
			 json_string_value(json_object_get(s, "error")) ?: state);
		task_finish(id, "failed", why);
	} else if (s) {
		json_t *p = json_pack("{s:s, s:s}", "phase", state, "status", state);
		char *text = json_dumps(p, JSON_COMPACT);
		json_decref(p);
		db_exec("UPDATE tasks SET progress = ? WHERE id = ?",
			json_pack("[s, I]", text, (json_int_t)id));
		free(text);
	}
	json_decref(s);
}

/* The VM runs on the host that took it over: the inventory follows. */
static bool adopt(const char *name, json_t *owner, json_t *status)
{
	const char *host = json_string_value(json_object_get(owner, "host"));
	json_t *fo = json_object_get(status, "last_failover");
	const char *to = json_string_value(json_object_get(fo, "to"));
	if (!host || !to || strcmp(host, to) || json_object_get(owner, "gave_up"))
		return false;
	json_t *row = db_row("SELECT host FROM vms WHERE name = ?", json_pack("[s]", name));
	const char *at = json_string_value(json_object_get(row, "host"));
	json_t *alive = host_alive_row(host);
	if (row && alive && at && strcmp(at, host)) {
		const char *from = json_string_value(json_object_get(fo, "from")) ?: at;
		char user[80];
		snprintf(user, sizeof(user), "ferryd-%s", host);
		long long task = task_insert("ft-failover", name, from, host, "running", 1, 0, user,
					     NULL);
		task_finish(task, "succeeded", NULL);
		db_exec("UPDATE vms SET host = ?, state = 'running', exit_status = NULL, "
			"last_console = NULL WHERE name = ?", json_pack("[s, s]", host, name));
		json_t *details = json_pack("{s:s, s:s, s:I, s:O?, s:O?}", "from", from, "to", host,
					    "task", (json_int_t)task, "epoch",
					    json_object_get(fo, "epoch"), "at", json_object_get(fo, "at"));
		audit_append(user, "-", "ft.failover", name, "ok", details);
		json_decref(details);
		logf_("FT: VM %s failed over from %s to %s", name, from, host);
	}
	bool here = row && at && !strcmp(at, host);   /* (adopted now or before) */
	bool moved = alive && row && at && strcmp(at, host);
	json_decref(alive);
	json_decref(row);
	return here || moved;
}

bool ft_adopt(const char *name)
{
	char key[200];
	snprintf(key, sizeof(key), FT_PREFIX "%s/owner", name);
	json_t *owner = etcd_json(key);
	snprintf(key, sizeof(key), FT_PREFIX "%s/status", name);
	json_t *status = owner ? etcd_json(key) : NULL;
	bool adopted = owner && status && adopt(name, owner, status);
	json_decref(owner);
	json_decref(status);
	return adopted;
}

bool ft_owned_by(const char *name, const char *host)
{
	char key[200];
	snprintf(key, sizeof(key), FT_PREFIX "%s/owner", name);
	json_t *owner = etcd_json(key);
	const char *holder = json_string_value(json_object_get(owner, "host"));
	bool owned = holder && !strcmp(holder, host) && !json_object_get(owner, "gave_up");
	json_decref(owner);
	return owned;
}

void ft_tick(void)
{
	static int64_t last;
	if (now_ms() - last < 500)
		return;
	last = now_ms();
	char err[256];
	json_t *keys = etcd_get_prefix(&ctr.etcd, FT_PREFIX, err, sizeof(err));
	pthread_mutex_lock(&db_lock);
	json_t *tasks = db_query("SELECT * FROM tasks WHERE state = 'running' AND kind = "
				 "'ft-enable'", NULL);
	size_t i;
	json_t *t;
	json_array_foreach(tasks, i, t)
		follow_enable(t);
	const char *key;
	json_t *value;
	json_object_foreach(keys, key, value) {
		size_t len = strlen(key);
		if (len < 6 || strcmp(key + len - 6, "/owner"))
			continue;
		char name[80], sk[200];
		snprintf(name, sizeof(name), "%.*s", (int)(len - 6 - strlen(FT_PREFIX)),
			 key + strlen(FT_PREFIX));
		snprintf(sk, sizeof(sk), FT_PREFIX "%s/status", name);
		json_t *owner = json_loads(json_string_value(value), 0, NULL);
		json_t *status = json_loads(json_string_value(json_object_get(keys, sk)) ?: "{}", 0,
					    NULL);
		adopt(name, owner, status);
		json_decref(owner);
		json_decref(status);
	}
	pthread_mutex_unlock(&db_lock);
	json_decref(tasks);
	json_decref(keys);
}
