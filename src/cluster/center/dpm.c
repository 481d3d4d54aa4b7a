/*
 * dpm.c - DPM: hosts the cluster does not need go to standby, and come
 * back when it does (`cluster set dpm=on`). Run by the DRS decider after
 * each DRS pass, on the same load model (drs.h).
 *
 * A host's utilisation is the larger of its CPU and memory loads. Aims
 * (vSphere's defaults, 63% +- 18%):
 * - wake: a host in standby is woken (ordered out of standby) when an
 *   active host is above DPM_HIGH, when a host has died (HA may need the
 *   room), when HA admission control fails on the layout as it is, or
 *   when DPM is turned off;
 * - standby: when more than dpm.min_hosts hosts are active (and more than
 *   ha.host_failures_tolerated + 1), no migration is queued or running and
 *   no host needs waking, the active host with the fewest VMs (then the
 *   least load) that was not woken in the last dpm.delay_s is a candidate:
 *   its VMs are placed in the model, each on the least loaded host the
 *   wizard and the rules allow; if they all fit and no host ends above
 *   DPM_TARGET, HA admission control still passes without the host (tried
 *   in a rolled-back savepoint), and this has held for dpm.delay_s, the host is marked
 *   "entering standby" (the wizard refuses it from then on) and its VMs
 *   get migration tasks (user "dpm"); once it holds no VM, its ferryd is
 *   told to enter standby (it refuses VM starts and incoming migrations,
 *   and reports "standby": true). An evacuation that leaves a VM behind
 *   (a failed task) gives up: the host is active again.
 * Every step is audited: dpm.evacuate, dpm.standby, dpm.wake (with the
 * reason). hosts.standby is ferry-center's word (0 active, 1 standby, 2
 * entering standby); a ferryd whose report disagrees is told again. A
 * ferryd that refuses standby (it still runs something, such as an FT
 * secondary, that ferry-center does not list as a VM) is not asked again
 * for DPM_REFUSED_BACKOFF_S.
 */
#include "cluster/center/drs.h"

#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DPM_HIGH 0.81
#define DPM_TARGET 0.63

static time_t low_since;          /* since when a standby would fit (0: it would not) */
static json_t *woken_at;          /* host -> time it was woken */
static json_t *refused_at;        /* host -> time its ferryd refused standby */
#define DPM_REFUSED_BACKOFF_S 300   /* e.g. it holds an FT secondary ferry-center does not list */

bool dpm_order(const char *host, bool standby, char *err, size_t errlen)
{
	pthread_mutex_lock(&db_lock);
	json_t *r = db_row("SELECT url FROM hosts WHERE name = ?", json_pack("[s]", host));
	char url[200];
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(r, "url")) ?: "");
	json_decref(r);
	pthread_mutex_unlock(&db_lock);
	long status;
	json_t *body = json_pack("{s:b}", "enabled", standby);
	json_t *reply = ferryd_call(url, "POST", "/agent/v1/standby", body, &status, err, errlen);
	json_decref(body);
	bool ok = reply && status == 200;
	if (reply && !ok)
		snprintf(err, errlen, "host %s: %s", host, json_string_value(json_object_get(
			json_object_get(reply, "error"), "message")) ?: "refused");
	json_decref(reply);
	return ok;
}

static void set_standby(const char *host, int value)
{
	db_exec("UPDATE hosts SET standby = ? WHERE name = ?", json_pack("[i, s]", value, host));
}

/* Orders a ferryd (db_lock let go around the call); audited when asked. */
static bool order(const char *host, bool standby, const char *action, json_t *details)
{
	char err[400], name[64];
	snprintf(name, sizeof(name), "%s", host);
	pthread_mutex_unlock(&db_lock);
	bool ok = dpm_order(name, standby, err, sizeof(err));
	pthread_mutex_lock(&db_lock);
	if (action) {
		char result[460];
		snprintf(result, sizeof(result), ok ? "ok" : "error: %s", err);
		audit_append("dpm", "-", action, name, result, details);
	}
	logf_("DPM: host %s %s%s%s", name, standby ? "to standby" : "woken", ok ? "" : ": ",
	      ok ? "" : err);
	return ok;
}

static void wake(struct mhost *h, const char *why)
{
	set_standby(h->name, 0);
	json_t *d = json_pack("{s:s}", "reason", why);
	order(h->name, false, "dpm.wake", d);
	json_decref(d);
	if (!woken_at)
		woken_at = json_object();
	json_object_set_new(woken_at, h->name, json_integer((json_int_t)time(NULL)));
}

/* A ferryd whose report disagrees with ferry-center is told again. */
static void reconcile(void)
{
	json_t *rows = db_query("SELECT name, coalesce(standby, 0) AS want, coalesce(json_extract("
				"report, '$.standby'), 0) AS has FROM hosts WHERE alive = 1", NULL);
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r) {
		long long want = json_integer_value(json_object_get(r, "want"));
		long long has = json_integer_value(json_object_get(r, "has"));
		if ((want == 1) != (has != 0))
			order(json_string_value(json_object_get(r, "name")), want == 1, NULL, NULL);
	}
	json_decref(rows);
}

/* Why a standby host is needed now (NULL: it is not). */
static const char *need_more(struct model *m, long long tolerated, char *buf, size_t len)
{
	for (int k = 0; k < m->nhosts; k++)
		if (m->hosts[k].active && host_load(&m->hosts[k]) > DPM_HIGH) {
			snprintf(buf, len, "host %s is %.0f%% used (above %.0f%%)", m->hosts[k].name,
				 100 * host_load(&m->hosts[k]), 100 * DPM_HIGH);
			return buf;
		}
	json_t *dead = db_row("SELECT name FROM hosts WHERE alive = 0 AND maintenance = 0 LIMIT 1",
			      NULL);
	if (dead) {
		snprintf(buf, len, "host %s is down: HA may need the room",
			 json_string_value(json_object_get(dead, "name")));
		json_decref(dead);
		return buf;
	}
	char why[600];
	json_t *none = json_pack("{s:i}", "mem_mib", 0);
	bool admitted = tolerated <= 0 || admission_check("", none, "", why, sizeof(why));
	json_decref(none);
	if (!admitted) {
		snprintf(buf, len, "HA admission control: %s", why);
		return buf;
	}
	return NULL;
}

static int by_load(const void *a, const void *b, void *ctx)
{
	const struct model *m = ctx;
	double x = host_load(&m->hosts[*(const int *)a]), y = host_load(&m->hosts[*(const int *)b]);
	return x < y ? -1 : x > y;
}

/* The least loaded active host that may take v (the wizard asked in
 * that order until one says yes), or NULL. */
static struct mhost *least_loaded_taker(struct model *m, struct mvm *v)
{
	if (!v->running)
		return NULL;
	int *order = calloc(m->nhosts + 1, sizeof(int)), n = 0;
	for (int j = 0; j < m->nhosts; j++)
		if (m->hosts[j].active)
			order[n++] = j;
	qsort_r(order, n, sizeof(int), by_load, m);
	struct mhost *to = NULL;
	char why[300];
	for (int j = 0; j < n && !to; j++)
		if (model_can_place(m, v, &m->hosts[order[j]], why, sizeof(why)))
			to = &m->hosts[order[j]];
	free(order);
	return to;
}

/* The candidate for standby and where its VMs would go (NULL: none). */
static struct mhost *plan_standby(struct model *m, long long delay, json_t *moves)
{
	struct mhost *best = NULL;
	time_t now = time(NULL);
	for (int k = 0; k < m->nhosts; k++) {
		struct mhost *h = &m->hosts[k];
		json_t *w = json_object_get(woken_at, h->name);
		json_t *r = json_object_get(refused_at, h->name);
		if (!h->active || (w && now - json_integer_value(w) < delay) ||
		    (r && now - json_integer_value(r) < DPM_REFUSED_BACKOFF_S))
			continue;
		if (!best || h->nvms < best->nvms ||
		    (h->nvms == best->nvms && host_load(h) < host_load(best)))
			best = h;
	}
	if (!best)
		return NULL;
	best->active = false;   /* the model without it */
	m->nactive--;
	for (int k = 0; k < m->nvms; k++) {
		struct mvm *v = &m->vms[k];
		if (v->h != best - m->hosts)
			continue;
		struct mhost *to = least_loaded_taker(m, v);
		if (!to)
			return NULL;
		model_move(m, v, (int)(to - m->hosts));
		json_array_append_new(moves, json_pack("{s:s, s:s}", "vm", v->name, "to", to->name));
	}
	for (int k = 0; k < m->nhosts; k++)
		if (m->hosts[k].active && host_load(&m->hosts[k]) > DPM_TARGET)
			return NULL;
	return best;
}

/* Would HA admission control still pass with host h in standby and its
 * VMs where the plan puts them? Tried in the database inside a savepoint
 * that is rolled back (admission.c reads the layout from there). */
static bool admitted_without(const char *host, json_t *moves, char *why, size_t len)
{
	if (db_setting_int("ha.host_failures_tolerated", 0) <= 0)
		return true;
	db_exec("SAVEPOINT dpm_plan", NULL);
	set_standby(host, 1);
	size_t i;
	json_t *mv;
	json_array_foreach(moves, i, mv)
		db_exec("UPDATE vms SET host = ? WHERE name = ?", json_pack("[O, O]",
			json_object_get(mv, "to"), json_object_get(mv, "vm")));
	json_t *none = json_pack("{s:i}", "mem_mib", 0);
	bool ok = admission_check("", none, "", why, len);
	json_decref(none);
	db_exec("ROLLBACK TO dpm_plan", NULL);
	db_exec("RELEASE dpm_plan", NULL);
	return ok;
}

/* A host entering standby: empty -> standby; a VM left with no task -> give up. */
static void finish_entering(struct mhost *h)
{
	json_t *left = db_row("SELECT count(*) AS n, (SELECT count(*) FROM tasks t WHERE t.kind = "
			      "'migrate' AND t.state IN ('queued', 'running') AND t.source = ?) AS "
			      "moving FROM vms WHERE host = ? AND state IN ('running', 'starting', "
			      "'paused', 'migrating', 'restarting')", json_pack("[s, s]", h->name,
										h->name));
	long long n = json_integer_value(json_object_get(left, "n"));
	long long moving = json_integer_value(json_object_get(left, "moving"));
	json_decref(left);
	if (n == 0) {
		set_standby(h->name, 1);
		if (!order(h->name, true, "dpm.standby", NULL)) {
			set_standby(h->name, 0);
			if (!refused_at)
				refused_at = json_object();
			json_object_set_new(refused_at, h->name, json_integer((json_int_t)time(NULL)));
		}
	} else if (!moving) {
		set_standby(h->name, 0);
		json_t *d = json_pack("{s:I}", "vms_left", (json_int_t)n);
		audit_append("dpm", "-", "dpm.standby", h->name,
			     "error: the evacuation left VMs behind; the host stays active", d);
		json_decref(d);
	}
}

void dpm_run(struct model *m, bool on, json_t *status)
{
	json_t *st = json_object();
	json_object_set_new(status, "dpm", st);
	json_object_set_new(st, "enabled", json_boolean(on));
	reconcile();
	char buf[700];
	long long tolerated = db_setting_int("ha.host_failures_tolerated", 0);
	const char *need = need_more(m, tolerated, buf, sizeof(buf));
	for (int k = 0; k < m->nhosts; k++) {
		struct mhost *h = &m->hosts[k];
		if (h->standby && (!on || need)) {
			wake(h, on ? need : "DPM turned off");
			if (on)
				return;   /* one at a time: look again next pass */
		}
	}
	if (!on)
		return;
	for (int k = 0; k < m->nhosts; k++)
		if (m->hosts[k].standby == 2) {
			json_object_set_new(st, "waiting", json_string("a host is entering standby"));
			finish_entering(&m->hosts[k]);
			return;
		}
	json_t *busy = db_row("SELECT count(*) AS n FROM tasks WHERE kind = 'migrate' AND state IN "
			      "('queued', 'running')", NULL);
	bool migrating = json_integer_value(json_object_get(busy, "n")) > 0;
	json_decref(busy);
	long long min_hosts = db_setting_int("dpm.min_hosts", 1);
	long long delay = db_setting_int("dpm.delay_s", 60);
	if (need || migrating || m->nactive <= min_hosts || m->nactive <= tolerated + 1) {
		low_since = 0;
		return;
	}
	json_t *moves = json_array();
	struct mhost *h = plan_standby(m, delay, moves);
	time_t now = time(NULL);
	if (h && !admitted_without(h->name, moves, buf, sizeof(buf))) {
		json_object_set_new(st, "refused", json_pack("{s:s, s:s}", "host", h->name, "reason",
							      buf));
		h = NULL;
	}
	if (!h) {
		low_since = 0;
		json_decref(moves);
		return;
	}
	if (!low_since)
		low_since = now;
	if (now - low_since < delay) {
		json_object_set_new(st, "candidate", json_string(h->name));
		json_decref(moves);
		return;
	}
	low_since = 0;
	set_standby(h->name, 2);
	json_t *tasks = json_array();
	size_t i;
	json_t *mv;
	json_array_foreach(moves, i, mv) {
		const char *vm = json_string_value(json_object_get(mv, "vm"));
		long long id = task_insert("migrate", vm, h->name,
					   json_string_value(json_object_get(mv, "to")), "queued", 0,
					   0, "dpm", NULL);
		json_object_set_new(mv, "task", json_integer(id));
		json_array_append_new(tasks, json_integer(id));
	}
	json_t *d = json_pack("{s:O, s:s}", "moves", moves, "reason", "the other hosts can take "
			      "its VMs and stay under 63%");
	audit_append("dpm", "-", "dpm.evacuate", h->name, "ok", d);
	json_decref(d);
	logf_("DPM: host %s is not needed: evacuating %zu VM(s) before standby", h->name,
	      json_array_size(moves));
	bool empty = json_array_size(tasks) == 0;
	json_decref(moves);
	json_decref(tasks);
	tasks_wake();
	if (empty)
		finish_entering(h);
}
