/*
 * rules.c - affinity and anti-affinity rules between VMs (vSphere's
 * VM-VM rules), which every placement honours.
 *
 * A rule has a name, a kind and two or more VMs:
 * - anti-affinity: no two of its VMs on one host;
 * - affinity: its VMs on one host. A VM may go to the host where the most
 *   of the rule's other placed VMs are (with all of them together, that is
 *   their host; split, the VMs gather where most already are).
 * "Placed" means running, starting, paused, migrating or restarting; a
 * VM with a migration queued or running counts where it is going.
 *
 * Checks: the wizard (create, migrate, maintenance evacuations, recommend)
 * asks rules_permit with the real placement; DRS and DPM ask it with their
 * model's placement (a function that says where each VM would be). The
 * rules are also written to etcd as /ferry/rules/NAME = {"name", "kind",
 * "vms"} (rules_sync_etcd, from the DRS leader's loop), where the HA
 * decider, which restarts VMs while ferry-center may be down, can read
 * them. A rule naming both VMs of an affinity rule as anti-affine (or the
 * reverse) is refused: nothing could satisfy both.
 */
#include "cluster/center/center.h"

#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RULE_MAX_VMS 64

struct rule {
	char name[64];
	bool affinity;
	int n;
	char vms[RULE_MAX_VMS][64];
};

struct rule_set {
	int n;
	struct rule *r;
};

static void rule_from_row(struct rule *r, json_t *row)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", json_string_value(json_object_get(row, "name")));
	r->affinity = !strcmp(json_string_value(json_object_get(row, "kind")) ?: "", "affinity");
	json_t *vms = json_loads(json_string_value(json_object_get(row, "vms")) ?: "[]", 0, NULL);
	size_t i;
	json_t *v;
	json_array_foreach(vms, i, v)
		if (r->n < RULE_MAX_VMS)
			snprintf(r->vms[r->n++], 64, "%s", json_string_value(v));
	json_decref(vms);
}

struct rule_set *rules_for_vm(const char *vm)
{
	struct rule_set *rs = calloc(1, sizeof(*rs));
	json_t *rows = db_query("SELECT r.* FROM rules r, json_each(r.vms) e WHERE e.value = ? "
				"ORDER BY r.name", json_pack("[s]", vm));
	rs->r = calloc(json_array_size(rows) + 1, sizeof(struct rule));
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row)
		rule_from_row(&rs->r[rs->n++], row);
	json_decref(rows);
	return rs;
}

void rules_free(struct rule_set *rs)
{
	if (rs)
		free(rs->r);
	free(rs);
}

const char *rules_placed_host(const char *vm, void *ctx)
{
	(void)ctx;
	static __thread char host[64];
	json_t *r = db_row("SELECT coalesce((SELECT destination FROM tasks t WHERE t.vm = v.name "
			   "AND t.kind = 'migrate' AND t.state IN ('queued', 'running') ORDER BY "
			   "t.id DESC LIMIT 1), v.host) AS host FROM vms v WHERE v.name = ? AND "
			   "v.state IN ('running', 'starting', 'paused', 'migrating', 'restarting')",
			   json_pack("[s]", vm));
	const char *h = json_string_value(json_object_get(r, "host"));
	snprintf(host, sizeof(host), "%s", h ? h : "");
	json_decref(r);
	return host[0] ? host : NULL;
}

/* Affinity: the host holding the most of the rule's other placed VMs
 * ("" when none is placed); ties: host itself counts as one of the best. */
static bool affinity_allows(const struct rule *r, const char *vm, const char *host,
			    vm_host_fn host_of, void *ctx, char *best, size_t blen)
{
	char hosts[RULE_MAX_VMS][64];
	int count[RULE_MAX_VMS] = { 0 }, nh = 0, top = 0, mine = 0;
	best[0] = 0;
	for (int i = 0; i < r->n; i++) {
		if (!strcmp(r->vms[i], vm))
			continue;
		const char *h = host_of(r->vms[i], ctx);
		if (!h)
			continue;
		int k = 0;
		while (k < nh && strcmp(hosts[k], h))
			k++;
		if (k == nh)
			snprintf(hosts[nh++], 64, "%s", h);
		count[k]++;
		if (count[k] > top) {
			top = count[k];
			snprintf(best, blen, "%s", h);
		}
		if (!strcmp(h, host))
			mine = count[k];
	}
	return top == 0 || mine == top;
}

bool rules_permit(struct rule_set *rs, const char *vm, const char *host, vm_host_fn host_of,
		  void *ctx, char *why, size_t len)
{
	if (!host_of)
		host_of = rules_placed_host;
	for (int k = 0; rs && k < rs->n; k++) {
		const struct rule *r = &rs->r[k];
		if (r->affinity) {
			char best[64];
			if (!affinity_allows(r, vm, host, host_of, ctx, best, sizeof(best))) {
				snprintf(why, len, "affinity rule %s: its VMs run on %s", r->name, best);
				return false;
			}
			continue;
		}
		for (int i = 0; i < r->n; i++) {
			if (!strcmp(r->vms[i], vm))
				continue;
			const char *h = host_of(r->vms[i], ctx);
			if (h && !strcmp(h, host)) {
				snprintf(why, len, "anti-affinity rule %s: VM %s runs there", r->name,
					 r->vms[i]);
				return false;
			}
		}
	}
	return true;
}

/* Is the rule broken by the real placement now? */
static bool violated(const struct rule *r)
{
	char why[200];
	struct rule_set one = { 1, (struct rule *)r };
	for (int i = 0; i < r->n; i++) {
		const char *h = rules_placed_host(r->vms[i], NULL);
		char host[64];
		if (!h)
			continue;
		snprintf(host, sizeof(host), "%s", h);
		if (!rules_permit(&one, r->vms[i], host, NULL, NULL, why, sizeof(why)))
			return true;
	}
	return false;
}

static json_t *rule_json(json_t *row)
{
	struct rule r;
	rule_from_row(&r, row);
	json_t *j = json_pack("{s:O, s:O, s:o, s:s?, s:b}", "name", json_object_get(row, "name"),
			      "kind", json_object_get(row, "kind"), "vms",
			      json_loads(json_string_value(json_object_get(row, "vms")) ?: "[]", 0,
					 NULL),
			      "user", json_string_value(json_object_get(row, "user")), "violated",
			      violated(&r));
	iso_or_null(j, "created", json_object_get(row, "created"));
	return j;
}

json_t *rules_list_json(void)
{
	json_t *rows = db_query("SELECT * FROM rules ORDER BY name", NULL);
	json_t *out = json_array();
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row)
		json_array_append_new(out, rule_json(row));
	json_decref(rows);
	return out;
}

/* Mirrors the table to /ferry/rules/ when it changed since the last
 * successful sync (and once at start). Not under db_lock. */
static unsigned rules_gen = 1, synced_gen;

void rules_sync_etcd(struct etcd *e)
{
	pthread_mutex_lock(&db_lock);
	unsigned gen = rules_gen;
	json_t *rows = gen != synced_gen ? db_query("SELECT name, kind, vms FROM rules", NULL)
					 : NULL;
	pthread_mutex_unlock(&db_lock);
	if (!rows)
		return;
	char err[256];
	json_t *there = etcd_get_prefix(e, "/ferry/rules/", err, sizeof(err));
	bool ok = there != NULL;
	size_t i;
	json_t *row;
	json_array_foreach(rows, i, row) {
		char key[128];
		snprintf(key, sizeof(key), "/ferry/rules/%s",
			 json_string_value(json_object_get(row, "name")));
		json_t *rec = json_pack("{s:O, s:O, s:o}", "name", json_object_get(row, "name"),
					"kind", json_object_get(row, "kind"), "vms",
					json_loads(json_string_value(json_object_get(row, "vms")), 0,
						   NULL));
		char *text = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
		const char *old = json_string_value(json_object_get(there, key));
		if (ok && (!old || strcmp(old, text)))
			ok = etcd_put(e, key, text, 0, err, sizeof(err));
		json_object_del(there, key);
		free(text);
		json_decref(rec);
	}
	const char *key;
	json_t *v;
	json_object_foreach(there, key, v)
		if (ok)
			ok = etcd_delete(e, key, err, sizeof(err));
	if (ok)
		synced_gen = gen;
	else
		logf_("rules: not written to etcd yet: %s", err);
	json_decref(there);
	json_decref(rows);
}

/* ---- the API: /api/v1/rules ------------------------------------------------ */

/* Two rules of opposite kinds sharing two VMs can never both hold. */
static bool conflicts(const char *kind, json_t *vms, char *why, size_t len)
{
	json_t *rows = db_query("SELECT * FROM rules WHERE kind != ?", json_pack("[s]", kind));
	bool bad = false;
	size_t i, a;
	json_t *row, *x;
	json_array_foreach(rows, i, row) {
		struct rule r;
		rule_from_row(&r, row);
		int shared = 0;
		const char *first = NULL;
		json_array_foreach(vms, a, x)
			for (int k = 0; k < r.n; k++)
				if (!strcmp(json_string_value(x), r.vms[k]) && shared++ == 0)
					first = r.vms[k];
		if (shared >= 2 && !bad) {
			snprintf(why, len, "rule %s (%s) names %d of these VMs (%s, ...): they cannot be "
				 "together and apart", r.name, r.affinity ? "affinity" : "anti-affinity",
				 shared, first);
			bad = true;
		}
	}
	json_decref(rows);
	return bad;
}

static bool valid_rule_name(const char *name)
{
	if (!name || !*name || strlen(name) > 48)
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
			return false;
	return name[0] != '.';
}

static void rule_add(const struct http_request *req, struct http_response *resp,
		     const char *user, struct api_audit *audit)
{
	json_t *body = parse_body(req, resp);
	if (!body)
		return;
	const char *name = json_string_value(json_object_get(body, "name"));
	const char *kind = json_string_value(json_object_get(body, "kind"));
	json_t *vms = json_object_get(body, "vms");
	snprintf(audit->action, sizeof(audit->action), "rule.add");
	snprintf(audit->target, sizeof(audit->target), "%s", name ? name : "");
	bool ok = valid_rule_name(name) && kind && (!strcmp(kind, "affinity") ||
		  !strcmp(kind, "anti-affinity")) && json_is_array(vms) &&
		  json_array_size(vms) >= 2 && json_array_size(vms) <= RULE_MAX_VMS;
	size_t i, j;
	json_t *v, *w;
	json_array_foreach(vms, i, v)
		ok = ok && json_is_string(v);
	if (!ok) {
		reply_error(resp, 400, "a rule needs name (letters, digits, - _ .), kind (affinity "
			    "or anti-affinity) and vms (2 to 64 VM names)", "see docs/api.md, "
			    "POST /api/v1/rules");
		goto out;
	}
	json_array_foreach(vms, i, v) {
		json_array_foreach(vms, j, w)
			if (j > i && !strcmp(json_string_value(v), json_string_value(w))) {
				reply_error(resp, 400, "a VM is named twice in the rule", NULL);
				goto out;
			}
		json_t *row = db_row("SELECT name FROM vms WHERE name = ?",
				     json_pack("[O]", v));
		if (!row) {
			char msg[200];
			snprintf(msg, sizeof(msg), "no VM named %s", json_string_value(v));
			reply_error(resp, 404, msg, "ferry vm list shows the VMs");
			goto out;
		}
		json_decref(row);
	}
	json_t *old = db_row("SELECT name FROM rules WHERE name = ?", json_pack("[s]", name));
	char why[400];
	if (old) {
		json_decref(old);
		snprintf(why, sizeof(why), "a rule named %s exists already", name);
		reply_error(resp, 409, why, "ferry cluster rule delete NAME first");
		goto out;
	}
	if (conflicts(kind, vms, why, sizeof(why))) {
		reply_error(resp, 409, why, "delete one of the two rules");
		goto out;
	}
	char *text = json_dumps(vms, JSON_COMPACT);
	db_exec("INSERT INTO rules(name, kind, vms, created, user) VALUES(?, ?, ?, ?, ?)",
		json_pack("[s, s, s, I, s]", name, kind, text, (json_int_t)time(NULL), user));
	free(text);
	rules_gen++;
	audit->details = json_pack("{s:s, s:O}", "kind", kind, "vms", vms);
	json_t *row = db_row("SELECT * FROM rules WHERE name = ?", json_pack("[s]", name));
	reply_json(resp, 201, rule_json(row));
	json_decref(row);
out:
	json_decref(body);
}

void rules_api(const struct http_request *req, struct http_response *resp, const char *rest,
	       const char *user, struct api_audit *audit)
{
	bool get = !strcmp(req->method, "GET");
	if (!strcmp(rest, "rules") && get) {
		reply_json(resp, 200, json_pack("{s:o}", "rules", rules_list_json()));
		return;
	}
	if (!strcmp(rest, "rules") && !strcmp(req->method, "POST")) {
		rule_add(req, resp, user, audit);
		return;
	}
	const char *name = rest + strlen("rules/");
	json_t *row = strncmp(rest, "rules/", 6) ? NULL
		    : db_row("SELECT * FROM rules WHERE name = ?", json_pack("[s]", name));
	if (!row) {
		char msg[200];
		snprintf(msg, sizeof(msg), "no rule named %s", name);
		reply_error(resp, 404, msg, "ferry cluster rule list shows the rules");
		return;
	}
	if (get) {
		reply_json(resp, 200, rule_json(row));
	} else if (!strcmp(req->method, "DELETE")) {
		snprintf(audit->action, sizeof(audit->action), "rule.delete");
		snprintf(audit->target, sizeof(audit->target), "%s", name);
		audit->details = json_pack("{s:O, s:o}", "kind", json_object_get(row, "kind"), "vms",
					   json_loads(json_string_value(json_object_get(row, "vms")),
						      0, NULL));
		db_exec("DELETE FROM rules WHERE name = ?", json_pack("[s]", name));
		rules_gen++;
		reply_json(resp, 200, json_pack("{s:s}", "deleted", name));
	} else {
		reply_error(resp, 404, "no such call", "see docs/api.md");
	}
	json_decref(row);
}
