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

static bool has_named(json_t *list, const char *name)
{
	size_t i;
	json_t *v;
	json_array_foreach(list, i, v)
		if (!strcmp(json_string_value(json_object_get(v, "name")) ?: "", name) &&
		    !json_is_false(json_object_get(v, "present")))
			return true;
	return false;
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
	json_t *src_row = db_row("SELECT report FROM hosts WHERE name = ?", json_pack("[s]", source));
	json_t *src_rep = json_loads(json_string_value(json_object_get(src_row, "report")) ?: "{}",
				     0, NULL);
	const char *src_isa = json_string_value(json_object_get(src_rep, "isa"));
	json_t *hosts = db_query("SELECT * FROM hosts ORDER BY name", NULL);
	json_t *ok = json_array(), *refused = json_array();
	json_t *est = estimate(mem);
	size_t i;
	json_t *h;
	json_array_foreach(hosts, i, h) {
		const char *name = json_string_value(json_object_get(h, "name"));
		json_t *rep = json_loads(json_string_value(json_object_get(h, "report")) ?: "{}", 0, NULL);
		char reason[300] = "";
		long long free_mib = json_integer_value(json_object_get(rep, "free_mib"));
		const char *isa = json_string_value(json_object_get(rep, "isa"));
		int running = host_migrations_running(name), limit = host_migration_limit(name);
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
			if (!has_named(json_object_get(rep, "datastores"), dsnames[d]))
				snprintf(reason, sizeof(reason), "datastore %s is not visible there",
					 dsnames[d]);
		if (!reason[0] && network[0] && !has_named(json_object_get(rep, "networks"), network))
			snprintf(reason, sizeof(reason), "network %s is not there", network);
		if (!reason[0] && running >= limit)
			snprintf(reason, sizeof(reason), "at its limit: %d of %d migrations running",
				 running, limit);
		if (reason[0])
			json_array_append_new(refused, json_pack("{s:s, s:s}", "host", name, "reason",
								 reason));
		else
			json_array_append_new(ok, json_pack("{s:s, s:I, s:O, s:i, s:O}", "host", name,
				"free_mib", (json_int_t)free_mib, "load",
				json_object_get(rep, "load") ?: json_real(0), "migrations_running",
				running, "estimate", est));
		json_decref(rep);
	}
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
	json_decref(src_rep);
	json_decref(src_row);
	json_decref(spec);
	return out;
}
