/*
 * wizard.c - the placement wizard: where can this VM go?
 *
 * Every host is checked: alive (its etcd lease), not in maintenance, the
 * same ISA, enough free memory, every datastore and network the VM uses
 * present, under its limit of concurrent migrations. Refused hosts come
 * with the reason; the rest are ranked by free memory, then load. The
 * estimate of a migration's time and downtime comes from the migrations
 * this cluster has finished (time per MiB of guest memory, median
 * downtime), or from a default of 2 ms per MiB and 30 ms when there are
 * none yet.
 *
 * At vCenter's scale (2,500 hosts) a query per host is too slow, so the
 * facts about every host are read up front in a few queries: the report's
 * fields through json_extract, the running migrations and the limits
 * grouped by host, and the hosts that see each datastore and network.
 */
#include "cluster/center/center.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The datastore names a VM's spec refers to ("DS:PATH" values). */
static void spec_datastores(json_t *spec, char names[][64], int *n)
{
	const char *single[] = { "kernel", "initrd" };
	*n = 0;
	json_t *refs = json_array();
	for (int i = 0; i < 2; i++) {
		json_t *v = json_object_get(spec, single[i]);
		if (json_is_string(v))
			json_array_append(refs, v);
	}
	json_array_extend(refs, json_object_get(spec, "disks"));
	size_t i;
	json_t *v;
	json_array_foreach(refs, i, v) {
		const char *s = json_string_value(v);
		const char *colon = s ? strchr(s, ':') : NULL;
		if (!colon || *n == 16)
			continue;
		snprintf(names[*n], 64, "%.*s", (int)(colon - s), s);
		bool dup = false;
		for (int k = 0; k < *n; k++)
			dup = dup || !strcmp(names[k], names[*n]);
		if (!dup)
			(*n)++;
	}
	json_decref(refs);
}

/* Rows (k, n) as an object k -> n; params stolen. */
static json_t *by_host(const char *sql, json_t *params)
{
	json_t *rows = db_query(sql, params);
	json_decref(params);
	json_t *map = json_object();
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r)
		json_object_set(map, json_string_value(json_object_get(r, "k")) ?: "",
				json_object_get(r, "n"));
	json_decref(rows);
	return map;
}

static int int_of(json_t *map, const char *host, int dflt)
{
	json_t *v = json_object_get(map, host);
	return v ? (int)json_integer_value(v) : dflt;
}

static json_t *estimate(long long mem_mib)
{
	json_t *r = db_row("SELECT avg(total_ms * 1.0 / m) AS per_mib, avg(downtime_ms) AS dt FROM"
			   " (SELECT t.total_ms, t.downtime_ms, json_extract(v.spec, '$.mem_mib') AS m"
			   "  FROM tasks t JOIN vms v ON v.name = t.vm WHERE t.kind = 'migrate' AND"
			   "  t.state = 'succeeded' AND t.total_ms > 0 ORDER BY t.id DESC LIMIT 20)",
			   NULL);
	double per_mib = json_number_value(json_object_get(r, "per_mib"));
	double dt = json_number_value(json_object_get(r, "dt"));
	bool measured = per_mib > 0;
	json_decref(r);
	if (!measured) {
		per_mib = 2.0;
		dt = 30;
	}
	return json_pack("{s:I, s:I, s:s}", "total_ms", (json_int_t)(per_mib * mem_mib),
			 "downtime_ms", (json_int_t)dt, "from",
			 measured ? "this cluster's last migrations" : "default (no migration yet)");
}

static int by_rank(const void *a, const void *b)
{
	json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	long long fx = json_integer_value(json_object_get(x, "free_mib"));
	long long fy = json_integer_value(json_object_get(y, "free_mib"));
	/* free memory in 256 MiB steps, then load */
	if (fx / 256 != fy / 256)
		return fx < fy ? 1 : -1;
	double lx = json_number_value(json_object_get(x, "load"));
	double ly = json_number_value(json_object_get(y, "load"));
	return lx < ly ? -1 : lx > ly;
}

json_t *wizard_recommend(json_t *vm_row)
{
	const char *source = json_string_value(json_object_get(vm_row, "host")) ?: "";
	json_t *spec = json_loads(json_string_value(json_object_get(vm_row, "spec")) ?: "{}", 0, NULL);
	long long mem = json_integer_value(json_object_get(spec, "mem_mib"));
	char dsnames[16][64];
	int nds;
	spec_datastores(spec, dsnames, &nds);
	char network[64] = "";
	const char *net = json_string_value(json_object_get(spec, "net"));
	if (net)
		snprintf(network, sizeof(network), "%.*s", (int)strcspn(net, ","), net);
	json_t *src_row = db_row("SELECT json_extract(report, '$.isa') AS isa FROM hosts WHERE "
				 "name = ?", json_pack("[s]", source));
	const char *src_isa = json_string_value(json_object_get(src_row, "isa"));
	json_t *hosts = db_query("SELECT name, alive, maintenance, json_extract(report, '$.free_mib')"
				 " AS free_mib, json_extract(report, '$.isa') AS isa,"
				 " json_extract(report, '$.load') AS load FROM hosts ORDER BY name", NULL);
	json_t *running_by = by_host("SELECT h AS k, count(*) AS n FROM (SELECT source AS h FROM "
				     "tasks WHERE kind = 'migrate' AND state = 'running' UNION ALL "
				     "SELECT destination FROM tasks WHERE kind = 'migrate' AND "
				     "state = 'running') GROUP BY h", NULL);
	json_t *limit_by = by_host("SELECT substr(key, 6, length(key) - 16) AS k, CAST(value AS "
				   "INTEGER) AS n FROM settings WHERE key LIKE 'host.%.migrations'",
				   NULL);
	int default_limit = (int)db_setting_int("migrations_per_host", 4);
	json_t *ds_seen[16];
	for (int d = 0; d < nds; d++)   /* present: host.c reports free_mib -1 otherwise */
		ds_seen[d] = by_host("SELECT host AS k, 1 AS n FROM datastores WHERE name = ? AND "
				     "coalesce(free_mib, 0) >= 0", json_pack("[s]", dsnames[d]));
	json_t *net_seen = by_host("SELECT host AS k, 1 AS n FROM networks WHERE name = ? AND "
				   "present", json_pack("[s]", network));
	json_t *ok = json_array(), *refused = json_array();
	json_t *est = estimate(mem);
	size_t i;
	json_t *h;
	json_array_foreach(hosts, i, h) {
		const char *name = json_string_value(json_object_get(h, "name"));
		char reason[300] = "";
		long long free_mib = json_integer_value(json_object_get(h, "free_mib"));
		const char *isa = json_string_value(json_object_get(h, "isa"));
		int running = int_of(running_by, name, 0);
		int limit = int_of(limit_by, name, default_limit);
		if (!strcmp(name, source))
			snprintf(reason, sizeof(reason), "the VM runs there");
		else if (!json_integer_value(json_object_get(h, "alive")))
			snprintf(reason, sizeof(reason), "not responding (no heartbeat in etcd)");
		else if (json_integer_value(json_object_get(h, "maintenance")))
			snprintf(reason, sizeof(reason), "in maintenance");
		else if (src_isa && (!isa || strcmp(isa, src_isa)))
			snprintf(reason, sizeof(reason), "ISA %s cannot run a guest from %s",
				 isa ? isa : "unknown", src_isa);
		else if (free_mib < mem)
			snprintf(reason, sizeof(reason), "not enough free memory: %lld MiB free, the "
				 "VM needs %lld MiB", free_mib, mem);
		for (int d = 0; d < nds && !reason[0]; d++)
			if (!json_object_get(ds_seen[d], name))
				snprintf(reason, sizeof(reason), "datastore %s is not visible there",
					 dsnames[d]);
		if (!reason[0] && network[0] && !json_object_get(net_seen, name))
			snprintf(reason, sizeof(reason), "network %s is not there", network);
		if (!reason[0] && running >= limit)
			snprintf(reason, sizeof(reason), "at its limit: %d of %d migrations running",
				 running, limit);
		json_t *load = json_object_get(h, "load");
		load = json_is_number(load) ? json_incref(load) : json_real(0);
		if (reason[0])
			json_array_append_new(refused, json_pack("{s:s, s:s}", "host", name, "reason",
								 reason));
		else
			json_array_append_new(ok, json_pack("{s:s, s:I, s:o, s:i, s:O}", "host", name,
				"free_mib", (json_int_t)free_mib, "load",
				json_incref(load), "migrations_running", running, "estimate", est));
		json_decref(load);
	}
	for (int d = 0; d < nds; d++)
		json_decref(ds_seen[d]);
	json_decref(net_seen);
	json_decref(running_by);
	json_decref(limit_by);
	/* rank */
	size_t n = json_array_size(ok);
	json_t **list = calloc(n + 1, sizeof(json_t *));
	for (size_t k = 0; k < n; k++)
		list[k] = json_incref(json_array_get(ok, k));
	qsort(list, n, sizeof(json_t *), by_rank);
	json_t *ranked = json_array();
	for (size_t k = 0; k < n; k++) {
		json_object_set_new(list[k], "rank", json_integer((json_int_t)k + 1));
		json_array_append_new(ranked, list[k]);
	}
	free(list);
	json_t *out = json_pack("{s:O, s:s, s:o, s:o}", "vm", json_object_get(vm_row, "name"),
				"source", source, "candidates", ranked, "refused", refused);
	json_decref(ok);
	json_decref(est);
	json_decref(hosts);
	json_decref(src_row);
	json_decref(spec);
	return out;
}
