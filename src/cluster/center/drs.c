/*
 * drs.c - DRS: the balancer that live-migrates VMs to even out the hosts'
 * load, and the etcd election that decides who runs it (and DPM).
 *
 * Who decides: the ferry-center holding /ferry/drs-leader, a key created
 * "only if absent" on a lease of its own (5 s, renewed every second), so
 * a second ferry-center takes over when the first dies, and nobody
 * decides while etcd has no quorum.
 *
 * What it sees (drs.h): each VM's CPU demand is the rate its ferry-vm
 * burns CPU seconds (ferryd reads /proc/PID/stat for its host report;
 * drs_sample_vm turns successive samples into a rate smoothed over about
 * DRS_TAU_S, kept across a migration since the demand moves with the VM),
 * and its memory; a host's load is its VMs' demand over its capacity; the
 * imbalance is the standard deviation of the CPU loads plus that of the
 * memory loads.
 *
 * A pass (every drs.interval_s, default 10 s), while no migration is
 * queued or running and none ended in the last DRS_SETTLE_S:
 * 1. a VM that breaks one of its rules (a rule added after placement) is
 *    moved where the rules allow, to the host that balances best;
 * 2. while the imbalance is above the threshold's tolerance (threshold 1,
 *    conservative: 0.30 ... 5, aggressive: 0.02), the move that lowers it
 *    most is taken in the model, if it narrows the gap between its two
 *    hosts' loads by at least half the tolerance (the cluster-wide
 *    deviation changes by ~1/N of that, so that would not scale), up to
 *    DRS_MAX_MOVES moves. Candidates: the running VMs, measured,
 *    without a migration in the last drs.cooldown_s (default 300 s: no
 *    ping-pong), on the DRS_SPAN most loaded hosts, to the DRS_SPAN least
 *    loaded, each move checked by the wizard on that host (memory, ISA,
 *    datastores, networks) and by the rules on the model's placement; a
 *    fault-tolerant VM stays (its migration is refused).
 * Modes (cluster set drs=...): off; manual (the moves are recommendations,
 * shown by GET /api/v1/drs and `ferry cluster show`, applied by hand with
 * POST /api/v1/drs/apply); partial (the same, and a new VM is placed by
 * DRS: the wizard's candidate that leaves the least load); full (the
 * moves become migration tasks of user "drs", queued under the usual
 * limits, each audited "drs.migrate").
 */
#include "cluster/center/drs.h"

#include "cluster/center/ft.h"

#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEADER_KEY "/ferry/drs-leader"
#define LEASE_TTL_S 5
#define DRS_TAU_S 3.0
#define DRS_SETTLE_S 5
#define DRS_MAX_MOVES 4
#define DRS_SPAN 8

static const double tolerance_of[6] = { 0, 0.30, 0.20, 0.10, 0.05, 0.02 };

/* ---- settings --------------------------------------------------------------- */

struct int_setting {
	const char *key;
	long long dflt, min, max;
};

static const struct int_setting int_settings[] = {
	{ "drs.threshold", 3, 1, 5 },
	{ "drs.cooldown_s", 300, 0, 86400 },
	{ "drs.interval_s", 10, 1, 3600 },
	{ "dpm.min_hosts", 1, 1, 4096 },
	{ "dpm.delay_s", 60, 0, 86400 },
};
#define NINT (sizeof(int_settings) / sizeof(int_settings[0]))

static long long setting(const char *key)
{
	for (size_t i = 0; i < NINT; i++)
		if (!strcmp(int_settings[i].key, key))
			return db_setting_int(key, int_settings[i].dflt);
	return 0;
}

static void mode(char *out, size_t len)
{
	db_setting_str("drs", "off", out, len);
}

int drs_setting_check(const char *key, json_t *v, char *text, size_t tlen, char *err,
		      size_t errlen)
{
	const char *s = json_string_value(v);
	if (!strcmp(key, "drs") || !strcmp(key, "dpm")) {
		const char *words = !strcmp(key, "drs") ? " off manual partial full " : " off on ";
		char word[32];
		snprintf(word, sizeof(word), " %s ", s ? s : "");
		if (s && *s && !strchr(s, ' ') && strstr(words, word)) {
			snprintf(text, tlen, "%s", s);
			return 1;
		}
		snprintf(err, errlen, "%s: want one of%s", key, words);
		err[strlen(err) - 1] = 0;
		return 0;
	}
	for (size_t i = 0; i < NINT; i++) {
		const struct int_setting *is = &int_settings[i];
		if (strcmp(is->key, key))
			continue;
		char *end = NULL;
		long long n = json_is_integer(v) ? json_integer_value(v)
			    : s ? strtoll(s, &end, 10) : is->min - 1;
		if ((s && (!*s || *end)) || n < is->min || n > is->max) {
			snprintf(err, errlen, "%s: want %lld to %lld", key, is->min, is->max);
			return 0;
		}
		snprintf(text, tlen, "%lld", n);
		return 1;
	}
	return -1;
}

void drs_settings_json(json_t *settings)
{
	char m[16], d[16];
	mode(m, sizeof(m));
	db_setting_str("dpm", "off", d, sizeof(d));
	json_object_set_new(settings, "drs", json_string(m));
	json_object_set_new(settings, "dpm", json_string(d));
	for (size_t i = 0; i < NINT; i++)
		json_object_set_new(settings, int_settings[i].key,
				    json_integer(setting(int_settings[i].key)));
}

bool drs_auto_placement(void)
{
	char m[16];
	mode(m, sizeof(m));
	return !strcmp(m, "partial") || !strcmp(m, "full");
}

/* ---- CPU samples -------------------------------------------------------------- */

void drs_sample_vm(const char *vm, const char *host, json_t *report_vm)
{
	json_t *cpu = json_object_get(report_vm, "cpu_s");
	if (!json_is_number(cpu))
		return;
	double cpu_s = json_number_value(cpu);
	long long pid = json_integer_value(json_object_get(report_vm, "pid"));
	long long now = now_ms();
	json_t *row = db_row("SELECT cpu_pid, cpu_s, cpu_at, cpu_rate FROM vms WHERE name = ? AND "
			     "host = ?", json_pack("[s, s]", vm, host));
	if (!row)
		return;
	long long at = json_integer_value(json_object_get(row, "cpu_at"));
	double before = json_number_value(json_object_get(row, "cpu_s"));
	json_t *rate = json_object_get(row, "cpu_rate");
	bool same = json_integer_value(json_object_get(row, "cpu_pid")) == pid && at > 0 &&
		    cpu_s >= before;
	double dt = (now - at) / 1000.0;
	if (same && dt < 0.5) {
		json_decref(row);
		return;
	}
	json_t *next = json_incref(rate);   /* a new process: the same demand, a new baseline */
	if (same) {
		double inst = (cpu_s - before) / dt;
		double r = json_is_number(rate) ? json_number_value(rate) +
			   (1 - exp(-dt / DRS_TAU_S)) * (inst - json_number_value(rate)) : inst;
		json_decref(next);
		next = json_real(r);
	}
	db_exec("UPDATE vms SET cpu_pid = ?, cpu_s = ?, cpu_at = ?, cpu_rate = ? WHERE name = ?",
		json_pack("[I, f, I, o, s]", (json_int_t)pid, cpu_s, (json_int_t)now,
			  next ? next : json_null(), vm));
	json_decref(row);
}

/* ---- the model ---------------------------------------------------------------- */

double host_cpu_load(const struct mhost *h)
{
	return h->cpu_cap > 0 ? h->cpu / h->cpu_cap : 0;
}

double host_mem_load(const struct mhost *h)
{
	return h->mem_cap > 0 ? h->mem / h->mem_cap : 0;
}

double host_load(const struct mhost *h)
{
	double c = host_cpu_load(h), m = host_mem_load(h);
	return c > m ? c : m;
}

static void sums_add(struct model *m, const struct mhost *h, double sign)
{
	if (!h->active)
		return;
	double c = host_cpu_load(h), u = host_mem_load(h);
	m->s1c += sign * c;
	m->s2c += sign * c * c;
	m->s1m += sign * u;
	m->s2m += sign * u * u;
}

static double stddev(double s1, double s2, int n)
{
	if (n < 2)
		return 0;
	double mean = s1 / n, var = s2 / n - mean * mean;
	return var > 0 ? sqrt(var) : 0;
}

double model_imbalance(const struct model *m)
{
	return stddev(m->s1c, m->s2c, m->nactive) + stddev(m->s1m, m->s2m, m->nactive);
}

static int by_host_name(const void *a, const void *b)
{
	return strcmp(((const struct mhost *)a)->name, ((const struct mhost *)b)->name);
}

static int by_vm_name(const void *a, const void *b)
{
	return strcmp(((const struct mvm *)a)->name, ((const struct mvm *)b)->name);
}

struct mhost *model_host(struct model *m, const char *name)
{
	struct mhost key;
	snprintf(key.name, sizeof(key.name), "%s", name ? name : "");
	return bsearch(&key, m->hosts, m->nhosts, sizeof(key), by_host_name);
}

struct mvm *model_vm(struct model *m, const char *name)
{
	struct mvm key;
	snprintf(key.name, sizeof(key.name), "%s", name ? name : "");
	return bsearch(&key, m->vms, m->nvms, sizeof(key), by_vm_name);
}

bool model_load(struct model *m)
{
	memset(m, 0, sizeof(*m));
	json_t *hosts = db_query("SELECT name, maintenance, coalesce(standby, 0) AS standby, "
				 "coalesce(json_extract(report, '$.harts'), 1) AS harts, "
				 "coalesce(json_extract(report, '$.vm_memory_mib'), "
				 "json_extract(report, '$.mem_mib'), 0) AS mem FROM hosts WHERE "
				 "alive = 1 ORDER BY name", NULL);
	if (!hosts)
		return false;
	m->hosts = calloc(json_array_size(hosts) + 1, sizeof(struct mhost));
	size_t i;
	json_t *r;
	json_array_foreach(hosts, i, r) {
		struct mhost *h = &m->hosts[m->nhosts++];
		snprintf(h->name, sizeof(h->name), "%s", json_string_value(json_object_get(r, "name")));
		h->cpu_cap = json_number_value(json_object_get(r, "harts"));
		h->mem_cap = json_number_value(json_object_get(r, "mem"));
		h->standby = (int)json_integer_value(json_object_get(r, "standby"));
		h->active = !json_integer_value(json_object_get(r, "maintenance")) && !h->standby;
		m->nactive += h->active;
	}
	qsort(m->hosts, m->nhosts, sizeof(struct mhost), by_host_name);   /* SQL's order may differ */
	/* the VMs stepped straight from SQLite: 40,000 JSON rows cost most of a pass */
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(ctr.db, "SELECT name, coalesce(host, ''), state = 'running', cpu_rate,"
			       " coalesce(json_extract(spec, '$.mem_mib'), 0) FROM vms WHERE state IN"
			       " ('running', 'starting', 'paused', 'migrating', 'restarting')", -1,
			       &st, NULL) != SQLITE_OK) {
		logf_("sqlite: %s", sqlite3_errmsg(ctr.db));
		json_decref(hosts);
		free(m->hosts);
		return false;
	}
	size_t cap = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		if ((size_t)m->nvms == cap) {
			cap = cap ? cap * 2 : 256;
			m->vms = realloc(m->vms, (cap + 1) * sizeof(struct mvm));
			if (!m->vms)
				abort();
		}
		struct mvm *v = &m->vms[m->nvms++];
		snprintf(v->name, sizeof(v->name), "%s", (const char *)sqlite3_column_text(st, 0));
		snprintf(v->host, sizeof(v->host), "%s", (const char *)sqlite3_column_text(st, 1));
		v->running = sqlite3_column_int(st, 2);
		v->measured = sqlite3_column_type(st, 3) != SQLITE_NULL;
		v->cpu = sqlite3_column_double(st, 3);
		v->mem = sqlite3_column_double(st, 4);
	}
	sqlite3_finalize(st);
	if (!m->vms)
		m->vms = calloc(1, sizeof(struct mvm));
	qsort(m->vms, m->nvms, sizeof(struct mvm), by_vm_name);
	for (int k = 0; k < m->nvms; k++) {
		struct mvm *v = &m->vms[k];
		struct mhost *h = model_host(m, v->host);
		v->h = h ? (int)(h - m->hosts) : -1;
		if (h) {
			h->cpu += v->cpu;
			h->mem += v->mem;
			h->nvms++;
		}
	}
	for (int k = 0; k < m->nhosts; k++)
		sums_add(m, &m->hosts[k], 1);
	json_decref(hosts);
	return true;
}

void model_free(struct model *m)
{
	free(m->vms);
	free(m->hosts);
	memset(m, 0, sizeof(*m));
}

void model_move(struct model *m, struct mvm *v, int to)
{
	struct mhost *a = v->h >= 0 ? &m->hosts[v->h] : NULL, *b = &m->hosts[to];
	if (a) {
		sums_add(m, a, -1);
		a->cpu -= v->cpu;
		a->mem -= v->mem;
		a->nvms--;
		sums_add(m, a, 1);
	}
	sums_add(m, b, -1);
	b->cpu += v->cpu;
	b->mem += v->mem;
	b->nvms++;
	sums_add(m, b, 1);
	v->h = to;
	snprintf(v->host, sizeof(v->host), "%s", b->name);
}

const char *model_host_of(const char *vm, void *ctx)
{
	struct mvm *v = model_vm(ctx, vm);
	return v && v->host[0] ? v->host : NULL;
}

bool model_can_place(struct model *m, struct mvm *v, const struct mhost *to, char *why,
		     size_t len)
{
	if (!to->active) {
		snprintf(why, len, "host %s takes no VMs", to->name);
		return false;
	}
	if (to->mem_cap > 0 && to->mem + v->mem > to->mem_cap) {
		snprintf(why, len, "host %s: its VMs' memory would pass its %.0f MiB", to->name,
			 to->mem_cap);
		return false;
	}
	json_t *ft = ft_status(v->name);   /* FT pins a VM (api.c refuses its migration) */
	json_decref(ft);
	if (ft) {
		snprintf(why, len, "VM %s is fault tolerant", v->name);
		return false;
	}
	struct rule_set *rs = rules_for_vm(v->name);
	bool ok = rules_permit(rs, v->name, to->name, model_host_of, m, why, len);
	rules_free(rs);
	if (!ok)
		return false;
	/* the wizard's own checks on that host; the rules it checks on the real
	 * placement are the model's business here, and a host at its limit
	 * only makes the task wait */
	json_t *row = db_row("SELECT name, host, spec FROM vms WHERE name = ?",
			     json_pack("[s]", v->name));
	json_t *rec = row ? wizard_recommend_n(row, 1, -1, to->name, NULL) : NULL;
	json_decref(row);
	if (!rec) {
		snprintf(why, len, "VM %s is gone", v->name);
		return false;
	}
	json_t *ref = json_array_get(json_object_get(rec, "refused"), 0);
	const char *reason = json_string_value(json_object_get(ref, "reason"));
	ok = !reason || !strncmp(reason, "at its limit", 12) || strstr(reason, "affinity rule ") ==
	     reason || strstr(reason, "anti-affinity rule ") == reason ||
	     !strcmp(reason, "the VM runs there");
	if (!ok)
		snprintf(why, len, "host %s: %s", to->name, reason);
	json_decref(rec);
	return ok;
}

/* ---- a pass ------------------------------------------------------------------- */

struct move {
	struct mvm *v;
	int from, to;
	double before, after;
	char reason[200];
};

/* The tried move's imbalance (the model is put back). */
static double try_move(struct model *m, struct mvm *v, int to)
{
	int from = v->h;
	char host[64];
	snprintf(host, sizeof(host), "%s", v->host);
	model_move(m, v, to);
	double after = model_imbalance(m);
	if (from >= 0) {
		model_move(m, v, from);
	} else {
		/* not in the model before: take it out again */
		struct mhost *b = &m->hosts[to];
		sums_add(m, b, -1);
		b->cpu -= v->cpu;
		b->mem -= v->mem;
		b->nvms--;
		sums_add(m, b, 1);
		v->h = -1;
	}
	snprintf(v->host, sizeof(v->host), "%s", host);
	return after;
}

/* Seconds since this VM's last migration (any state), or -1 for never. */
static long long since_migrated(const char *vm)
{
	json_t *r = db_row("SELECT max(coalesce(finished, started, created)) AS t FROM tasks WHERE "
			   "vm = ? AND kind = 'migrate' AND state != 'cancelled'",
			   json_pack("[s]", vm));
	json_t *t = json_object_get(r, "t");
	long long s = json_is_integer(t) ? (long long)time(NULL) - json_integer_value(t) : -1;
	json_decref(r);
	return s;
}

static int by_load_desc(const void *a, const void *b, void *ctx)
{
	const struct model *m = ctx;
	double x = host_cpu_load(&m->hosts[*(const int *)a]) + host_mem_load(&m->hosts[*(const int *)a]);
	double y = host_cpu_load(&m->hosts[*(const int *)b]) + host_mem_load(&m->hosts[*(const int *)b]);
	return x < y ? 1 : x > y ? -1 : 0;
}

struct candidate_move {
	struct mvm *v;
	int to;
	double after;
};

static int by_after(const void *a, const void *b)
{
	double x = ((const struct candidate_move *)a)->after,
	       y = ((const struct candidate_move *)b)->after;
	return x < y ? -1 : x > y;
}

/* Why DRS leaves a VM where it is (NULL: it may move). */
static const char *pinned(struct mvm *v, long long cooldown, char *buf, size_t len)
{
	if (!v->running)
		return "not running";
	json_t *ft = ft_status(v->name);   /* ferry-vm refuses to migrate an FT guest */
	if (ft) {
		snprintf(buf, len, "fault tolerance on: %s (ft disable to let DRS move it)",
			 json_string_value(json_object_get(ft, "state")) ?: "starting");
		json_decref(ft);
		return buf;
	}
	if (!v->measured)
		return "CPU use not measured yet";
	long long since = since_migrated(v->name);
	if (since >= 0 && since < cooldown) {
		snprintf(buf, len, "cool-down: migrated %lld s ago (drs.cooldown_s=%lld)", since,
			 cooldown);
		return buf;
	}
	return NULL;
}

/* Which VMs DRS may move, found out when first asked (a pass looks at the
 * VMs of the busiest hosts only); the others are listed in skipped. */
struct movers {
	signed char *state;   /* per VM: -1 not asked yet, 0 stays, 1 may move */
	long long cooldown;
	json_t *skipped;
};

static bool may_move(struct movers *mv, struct model *m, int k)
{
	if (mv->state[k] < 0) {
		char buf[200];
		const char *why = pinned(&m->vms[k], mv->cooldown, buf, sizeof(buf));
		mv->state[k] = !why && m->vms[k].h >= 0;
		if (why && m->vms[k].running && json_array_size(mv->skipped) < 50)
			json_array_append_new(mv->skipped, json_pack("{s:s, s:s}", "vm", m->vms[k].name,
								     "reason", why));
	}
	return mv->state[k] > 0;
}

/* How much a move narrows the gap between its two hosts' loads (CPU plus
 * memory): a move worth making closes a real gap, whatever the number of
 * hosts (the cluster-wide deviation moves by 1/N of that). */
static double pair_gain(const struct model *m, const struct mvm *v, int to)
{
	const struct mhost *a = &m->hosts[v->h], *b = &m->hosts[to];
	double la = host_cpu_load(a) + host_mem_load(a), lb = host_cpu_load(b) + host_mem_load(b);
	double da = (a->cpu_cap > 0 ? v->cpu / a->cpu_cap : 0) + (a->mem_cap > 0 ? v->mem / a->mem_cap : 0);
	double db = (b->cpu_cap > 0 ? v->cpu / b->cpu_cap : 0) + (b->mem_cap > 0 ? v->mem / b->mem_cap : 0);
	return fabs(la - lb) - fabs((la - da) - (lb + db));
}

/*
 * The best allowed move of a VM (only that VM when only >= 0) on the
 * hosts srcs to the hosts dests, by the imbalance after it; false when
 * none is allowed. With min_gain >= 0 (balancing) a move must also lower
 * the imbalance and narrow its hosts' gap by min_gain.
 */
static bool best_move(struct model *m, struct movers *movers, int only, const int *srcs,
		      int nsrc, const int *dests, int ndest, double min_gain, struct move *out)
{
	struct candidate_move *c = NULL;
	size_t n = 0, cap = 0;
	for (int k = only >= 0 ? only : 0; k < (only >= 0 ? only + 1 : m->nvms); k++) {
		struct mvm *v = &m->vms[k];
		bool on_src = false;
		for (int s = 0; s < nsrc && !on_src; s++)
			on_src = v->h == srcs[s];
		if (!on_src || !may_move(movers, m, k))
			continue;
		for (int d = 0; d < ndest; d++) {
			if (dests[d] == v->h || !m->hosts[dests[d]].active)
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				c = realloc(c, cap * sizeof(*c));
			}
			c[n++] = (struct candidate_move){ v, dests[d], try_move(m, v, dests[d]) };
		}
	}
	qsort(c, n, sizeof(*c), by_after);
	bool found = false;
	double before = model_imbalance(m);
	for (size_t i = 0; i < n && !found; i++) {
		char why[300];
		if (min_gain >= 0 && (c[i].after >= before - 1e-9 ||
				      pair_gain(m, c[i].v, c[i].to) < min_gain))
			continue;
		if (model_can_place(m, c[i].v, &m->hosts[c[i].to], why, sizeof(why))) {
			*out = (struct move){ c[i].v, c[i].v->h, c[i].to, model_imbalance(m), c[i].after,
					      "" };
			found = true;
		}
	}
	free(c);
	return found;
}

static pthread_mutex_t status_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *status;          /* the last pass, for GET /api/v1/drs */
static json_t *last_recs;       /* its recommendations, with their ids */
static long long next_rec_id = 1;
static long long passes;

static json_t *move_json(struct model *m, const struct move *mv)
{
	return json_pack("{s:s, s:s, s:s, s:f, s:f, s:s}", "vm", mv->v->name, "from",
			 mv->from >= 0 ? m->hosts[mv->from].name : "", "to", m->hosts[mv->to].name,
			 "imbalance_before", mv->before, "imbalance_after", mv->after, "reason",
			 mv->reason);
}

/* The same move as last pass keeps its id (to apply it by id). */
static void number(json_t *recs)
{
	size_t i, j;
	json_t *r, *o;
	json_array_foreach(recs, i, r) {
		json_int_t id = 0;
		json_array_foreach(last_recs, j, o)
			if (!strcmp(json_string_value(json_object_get(r, "vm")),
				    json_string_value(json_object_get(o, "vm"))) &&
			    !strcmp(json_string_value(json_object_get(r, "to")),
				    json_string_value(json_object_get(o, "to"))))
				id = json_integer_value(json_object_get(o, "id"));
		json_object_set_new(r, "id", json_integer(id ? id : next_rec_id++));
	}
}

/* Queues one migration for a move, audited; the task id (0 on failure). */
static long long queue_move(json_t *rec, const char *user, const char *action)
{
	const char *vm = json_string_value(json_object_get(rec, "vm"));
	json_t *row = db_row("SELECT * FROM vms WHERE name = ?", json_pack("[s]", vm));
	json_t *busy = db_row("SELECT id FROM tasks WHERE vm = ? AND kind = 'migrate' AND state IN "
			      "('queued', 'running')", json_pack("[s]", vm));
	const char *host = json_string_value(json_object_get(row, "host"));
	long long id = 0;
	if (row && !busy && host && !strcmp(host, json_string_value(json_object_get(rec, "from"))) &&
	    !strcmp(json_string_value(json_object_get(row, "state")) ?: "", "running")) {
		json_t *w = wizard_recommend_n(row, 1, 0,
					       json_string_value(json_object_get(rec, "to")), NULL);
		json_t *extra = json_pack("{s:O}", "estimate", json_object_get(json_array_get(
			json_object_get(w, "candidates"), 0), "estimate") ?: json_null());
		id = task_insert("migrate", vm, host, json_string_value(json_object_get(rec, "to")),
				 "queued", 0, 0, user, extra);
		json_decref(extra);
		json_decref(w);
	}
	json_t *details = json_deep_copy(rec);
	json_object_set_new(details, "task", id ? json_integer(id) : json_null());
	audit_append(user, "-", action, vm, id ? "ok" : "error: the VM moved or is busy meanwhile",
		     details);
	json_decref(details);
	json_decref(row);
	json_decref(busy);
	return id;
}

/* Rules broken by the placement: each such VM to its best allowed host. */
static int fix_rules(struct model *m, struct movers *movers, json_t *recs, int *all, int nall)
{
	int moves = 0;
	json_t *named = db_query("SELECT DISTINCT e.value AS vm FROM rules r, json_each(r.vms) e "
				 "ORDER BY vm", NULL);
	size_t i;
	json_t *r;
	json_array_foreach(named, i, r) {
		struct mvm *v = model_vm(m, json_string_value(json_object_get(r, "vm")));
		if (!v || v->h < 0 || moves >= DRS_MAX_MOVES)
			continue;
		char why[300];
		struct rule_set *rs = rules_for_vm(v->name);
		bool broken = !rules_permit(rs, v->name, v->host, model_host_of, m, why, sizeof(why));
		rules_free(rs);
		struct move mv;
		int k = (int)(v - m->vms), src = v->h;
		if (!broken || !best_move(m, movers, k, &src, 1, all, nall, -1, &mv))
			continue;
		snprintf(mv.reason, sizeof(mv.reason), "rule: %s", why);
		json_array_append_new(recs, move_json(m, &mv));
		model_move(m, v, mv.to);
		movers->state[k] = 0;
		moves++;
	}
	json_decref(named);
	return moves;
}

static json_t *hosts_json(struct model *m)
{
	json_t *a = json_array();
	for (int k = 0; k < m->nhosts && k < 100; k++) {
		struct mhost *h = &m->hosts[k];
		json_array_append_new(a, json_pack("{s:s, s:b, s:f, s:f, s:f, s:i}", "name", h->name,
						   "active", h->active, "cpu", h->cpu, "cpu_load",
						   host_cpu_load(h), "mem_load", host_mem_load(h),
						   "vms", h->nvms));
	}
	return a;
}

/* One pass; the status it leaves for the API. Under db_lock. */
static json_t *pass(const char *m_mode, bool *dpm_on)
{
	struct timespec c0, c1;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
	int threshold = (int)setting("drs.threshold");
	double tol = tolerance_of[threshold];
	long long cooldown = setting("drs.cooldown_s");
	char d[16];
	db_setting_str("dpm", "off", d, sizeof(d));
	*dpm_on = !strcmp(d, "on");
	json_t *st = json_pack("{s:s, s:i, s:f, s:[], s:[], s:[]}", "mode", m_mode, "threshold",
			       threshold, "tolerance", tol, "recommendations", "applied", "skipped");
	struct model m;
	if (!strcmp(m_mode, "off") && !*dpm_on)
		return st;   /* nothing to decide: no model loaded (40,000 VMs cost) */
	if (!model_load(&m))
		return st;
	double imbalance = model_imbalance(&m);
	json_object_set_new(st, "imbalance", json_real(imbalance));
	json_object_set_new(st, "hosts", hosts_json(&m));
	json_t *recs = json_array(), *skipped = json_array();
	json_t *busy = db_row("SELECT (SELECT count(*) FROM tasks WHERE kind = 'migrate' AND state "
			      "IN ('queued', 'running')) AS n, (SELECT count(*) FROM tasks WHERE "
			      "kind = 'migrate' AND finished > ?) AS recent",
			      json_pack("[I]", (json_int_t)(time(NULL) - DRS_SETTLE_S)));
	const char *waiting = json_integer_value(json_object_get(busy, "n")) ? "migrations are "
			      "queued or running" : json_integer_value(json_object_get(busy, "recent"))
			      ? "a migration ended less than 5 s ago (loads settle)" : NULL;
	json_decref(busy);
	if (strcmp(m_mode, "off") && !waiting) {
		struct movers movers = { malloc(m.nvms + 1), cooldown, skipped };
		memset(movers.state, -1, m.nvms + 1);
		int *order = calloc(m.nhosts + 1, sizeof(int)), nact = 0;
		for (int k = 0; k < m.nhosts; k++)
			if (m.hosts[k].active)
				order[nact++] = k;
		int moves = fix_rules(&m, &movers, recs, order, nact);
		while (moves < DRS_MAX_MOVES && model_imbalance(&m) > tol) {
			qsort_r(order, nact, sizeof(int), by_load_desc, &m);
			int span = nact < DRS_SPAN ? nact : DRS_SPAN;
			struct move mv;
			if (!best_move(&m, &movers, -1, order, span, order + (nact - span), span,
				       tol / 2, &mv))
				break;
			snprintf(mv.reason, sizeof(mv.reason), "balance: imbalance %.3f -> %.3f "
				 "(tolerance %.2f at threshold %d)", mv.before, mv.after, tol, threshold);
			json_array_append_new(recs, move_json(&m, &mv));
			movers.state[mv.v - m.vms] = 0;
			model_move(&m, mv.v, mv.to);
			moves++;
		}
		free(order);
		free(movers.state);
	}
	json_object_set_new(st, "imbalance_after", json_real(model_imbalance(&m)));
	json_object_set_new(st, "waiting", waiting ? json_string(waiting) : json_null());
	model_free(&m);
	pthread_mutex_lock(&status_lock);
	number(recs);
	json_decref(last_recs);
	last_recs = json_incref(recs);
	pthread_mutex_unlock(&status_lock);
	if (!strcmp(m_mode, "full")) {
		size_t i;
		json_t *r;
		json_array_foreach(recs, i, r)
			json_object_set_new(r, "task", json_integer(queue_move(r, "drs", "drs.migrate")));
		if (json_array_size(recs))
			tasks_wake();
	}
	json_object_set_new(st, strcmp(m_mode, "full") ? "recommendations" : "applied", recs);
	if (!strcmp(m_mode, "full"))
		json_object_set_new(st, "recommendations", json_array());
	json_object_set_new(st, "skipped", skipped);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
	json_object_set_new(st, "pass_cpu_ms", json_real((c1.tv_sec - c0.tv_sec) * 1e3 +
							 (c1.tv_nsec - c0.tv_nsec) / 1e6));
	return st;
}

/* ---- the election and the loop -------------------------------------------------- */

static char leader_holder[160];
static bool is_leader;

static bool campaign(struct etcd *e, int64_t *lease, const char *me)
{
	char err[256];
	if (*lease && !etcd_lease_keepalive(e, *lease, err, sizeof(err)))
		*lease = 0;
	if (!*lease)
		*lease = etcd_lease_grant(e, LEASE_TTL_S, err, sizeof(err));
	bool created, ok = false;
	char *holder = NULL;
	if (*lease && etcd_create(e, LEADER_KEY, me, *lease, &created, err, sizeof(err)))
		holder = etcd_get(e, LEADER_KEY, &ok, err, sizeof(err));
	bool leader = holder && !strcmp(holder, me);
	pthread_mutex_lock(&status_lock);
	if (leader != is_leader)
		logf_("DRS: %s the DRS and DPM decider (%s holds %s)", leader ? "now" : "no longer",
		      holder ? holder : "nobody", LEADER_KEY);
	is_leader = leader;
	snprintf(leader_holder, sizeof(leader_holder), "%s", holder ? holder : "");
	pthread_mutex_unlock(&status_lock);
	free(holder);
	return leader;
}

void *drs_loop(void *arg)
{
	(void)arg;
	struct etcd e;
	char urls[4096] = "";
	for (int i = 0; i < ctr.etcd.n; i++)
		snprintf(urls + strlen(urls), sizeof(urls) - strlen(urls), "%s%s", i ? "," : "",
			 ctr.etcd.urls[i]);
	etcd_init(&e, urls);
	e.timeout_ms = 1000;
	char me[160], host[64] = "?";
	gethostname(host, sizeof(host));
	snprintf(me, sizeof(me), "ferry-center@%s:%d", host, (int)getpid());
	int64_t lease = 0;
	long long last = 0;
	for (;;) {
		sleep(1);
		if (!campaign(&e, &lease, me))
			continue;
		rules_sync_etcd(&e);
		pthread_mutex_lock(&db_lock);
		long long interval = setting("drs.interval_s");
		char m[16];
		mode(m, sizeof(m));
		pthread_mutex_unlock(&db_lock);
		if (time(NULL) - last < interval)
			continue;
		last = time(NULL);
		pthread_mutex_lock(&db_lock);
		bool dpm_on;
		json_t *st = pass(m, &dpm_on);
		pthread_mutex_unlock(&db_lock);
		struct model model;
		pthread_mutex_lock(&db_lock);
		json_t *asleep = db_row("SELECT name FROM hosts WHERE coalesce(standby, 0) != 0 LIMIT 1",
					NULL);
		bool loaded = (dpm_on || asleep) && model_load(&model);
		json_decref(asleep);
		if (loaded)
			dpm_run(&model, dpm_on, st);   /* lets go of db_lock around ferryd calls */
		pthread_mutex_unlock(&db_lock);
		if (loaded)
			model_free(&model);
		pthread_mutex_lock(&status_lock);
		json_object_set_new(st, "passes", json_integer(++passes));
		char t[40];
		iso_time(time(NULL), t, sizeof(t));
		json_object_set_new(st, "last_pass", json_string(t));
		json_decref(status);
		status = st;
		pthread_mutex_unlock(&status_lock);
	}
	return NULL;
}

json_t *drs_status_json(void)
{
	pthread_mutex_lock(&status_lock);
	json_t *s = status ? json_deep_copy(status)
			   : json_pack("{s:i, s:[], s:[], s:[]}", "passes", 0, "recommendations",
				       "applied", "skipped");
	json_object_set_new(s, "leader", leader_holder[0] ? json_string(leader_holder) : json_null());
	json_object_set_new(s, "decides_here", json_boolean(is_leader));
	pthread_mutex_unlock(&status_lock);
	return s;
}

bool drs_initial_host(json_t *spec, json_t *candidates, char *out, size_t len)
{
	if (!drs_auto_placement() || json_array_size(candidates) < 2)
		return false;
	struct model m;
	if (!model_load(&m))
		return false;
	double mem = (double)json_integer_value(json_object_get(spec, "mem_mib")), best = 1e300;
	size_t i;
	json_t *c;
	json_array_foreach(candidates, i, c) {
		struct mhost *h = model_host(&m, json_string_value(json_object_get(c, "host")));
		if (!h || !h->active)
			continue;
		double load = host_cpu_load(h) + (h->mem_cap > 0 ? (h->mem + mem) / h->mem_cap : 0);
		if (load < best) {
			best = load;
			snprintf(out, len, "%s", h->name);
		}
	}
	model_free(&m);
	return best < 1e300;
}

/* ---- the API: /api/v1/drs ------------------------------------------------------- */

void drs_api(const struct http_request *req, struct http_response *resp, const char *rest,
	     const char *user, struct api_audit *audit)
{
	if (!strcmp(rest, "drs") && !strcmp(req->method, "GET")) {
		reply_json(resp, 200, drs_status_json());
		return;
	}
	if (strcmp(rest, "drs/apply") || strcmp(req->method, "POST")) {
		reply_error(resp, 404, "no such call", "see docs/api.md");
		return;
	}
	snprintf(audit->action, sizeof(audit->action), "drs.apply");
	snprintf(audit->target, sizeof(audit->target), "cluster");
	json_t *body = parse_body(req, resp);
	if (!body)
		return;
	json_t *want = json_object_get(body, "id");
	if (want && !json_is_integer(want)) {
		reply_error(resp, 400, "want {\"id\": N} (a recommendation's id) or {} for all", NULL);
		json_decref(body);
		return;
	}
	pthread_mutex_lock(&status_lock);
	json_t *recs = json_deep_copy(last_recs ? last_recs : json_array());
	pthread_mutex_unlock(&status_lock);
	json_t *tasks = json_array();
	size_t i;
	json_t *r;
	json_array_foreach(recs, i, r) {
		if (want && json_integer_value(json_object_get(r, "id")) != json_integer_value(want))
			continue;
		if (json_object_get(r, "task"))
			continue;   /* full mode queued it already */
		long long id = queue_move(r, user, "drs.migrate");
		if (id)
			json_array_append_new(tasks, json_integer(id));
	}
	if (want && !json_array_size(tasks)) {
		char msg[200];
		snprintf(msg, sizeof(msg), "no recommendation %lld to apply now",
			 (long long)json_integer_value(want));
		reply_error(resp, 404, msg, "ferry cluster show lists DRS's recommendations");
	} else {
		audit->details = json_pack("{s:O}", "tasks", tasks);
		reply_json(resp, 200, json_pack("{s:O}", "tasks", tasks));
		tasks_wake();
	}
	json_decref(tasks);
	json_decref(recs);
	json_decref(body);
}
