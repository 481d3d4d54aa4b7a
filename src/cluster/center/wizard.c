/*
 * wizard.c - the placement wizard: where can this VM go?
 *
 * Every host is checked: alive (its etcd lease), not in maintenance nor
 * in DPM's standby, the same ISA, enough free memory, every datastore and
 * network the VM uses present, the VM's affinity and anti-affinity rules
 * (rules.c), under its limit of concurrent migrations. Refused hosts come
 * with the reason; the rest are ranked by free memory, then load. The
 * estimate of a migration's time and downtime comes from the migrations
 * this cluster has finished (time per MiB of guest memory, median
 * downtime), or from a default of 2 ms per MiB and 30 ms when there are
 * none yet.
 *
 * At vCenter's scale (2,500 hosts) a query per host is too slow, so the
 * facts about every host are read up front in a few queries: free memory,
 * ISA and load from the columns the inventory sweep writes (no report
 * parsed), the datastores and networks it sees through their primary keys,
 * in one statement stepped directly (no JSON row objects), the running
 * migrations and the limits grouped by host. The reply is written as JSON
 * text row by row (jsonw.h): a json_t per candidate and a json_dumps of
 * ~370 KB were most of the call.
 *
 * A datastore is "visible" on a host when it has one of that name with the
 * id the VM's own host reports for it (host.c: each host's `local` is its
 * own, `shared` is one). When the caller allows copying (copy_to not NULL:
 * `vm migrate` and `vm recommend`), a host that does not see a datastore
 * holding the VM's disks is still a candidate, for a shared-nothing
 * migration: the disks are copied into copy_to there, or by default into
 * the datastore named like the first disk's, which must be present with
 * room for the images' full size (they are sparse, but the guest may fill
 * them); the candidate says "datastore" and "note": "disks copied: N MiB"
 * (the data allocated in the images) and ranks after the hosts that need
 * no copy. DRS, DPM, HA and evacuations never copy disks (copy_to NULL).
 */
#include "cluster/center/center.h"

#include "cluster/common/jsonw.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void spec_network(json_t *spec, char *out, size_t len)
{
	const char *net = json_string_value(json_object_get(spec, "net"));
	snprintf(out, len, "%.*s", net ? (int)strcspn(net, ",") : 0, net ? net : "");
}

/* The datastore names a VM's spec refers to ("DS:PATH" values). */
void spec_datastores(json_t *spec, char names[][64], int *n)
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
			   "  t.state = 'succeeded' AND t.total_ms > 0 AND t.datastore IS NULL"
			   "  ORDER BY t.id DESC LIMIT 20)",
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

/* A host that can take the VM, for ranking. */
struct candidate {
	char *host;
	long long free_mib;
	double load;
	int running;
	bool copy;         /* its disks would be copied there */
};

static int by_rank(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	if (x->copy != y->copy)   /* no copy first */
		return x->copy ? 1 : -1;
	/* free memory in 256 MiB steps, then load */
	if (x->free_mib / 256 != y->free_mib / 256)
		return x->free_mib < y->free_mib ? 1 : -1;
	return x->load < y->load ? -1 : x->load > y->load;
}

/* One row per host, by name: name, alive, maintenance, free_mib, isa,
 * load, why its ferryd is unreachable (NULL: it answers), whether the
 * network is there, then whether each datastore is (host.c reports a
 * datastore it cannot see with free_mib -1; the same id as on the source,
 * when the source has one: a VM being created has no source),
 * then DPM's standby, then the free MiB of datastore target there (NULL:
 * none). */
static sqlite3_stmt *host_facts(char dsnames[][64], int nds, const char *network,
				const char *only_host, const char *source, const char *target)
{
	char sql[4096];
	size_t n = (size_t)snprintf(sql, sizeof(sql),
		"SELECT name, alive, maintenance, free_mib, isa, load, unreachable,"
		" EXISTS(SELECT 1 FROM networks n WHERE n.host = h.name AND n.name = ?1 AND"
		" n.present)");
	for (int d = 0; d < nds; d++)
		n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", EXISTS(SELECT 1 FROM datastores d"
				      " WHERE d.host = h.name AND d.name = ?%d AND"
				      " coalesce(d.free_mib, 0) >= 0 AND NOT EXISTS(SELECT 1 FROM"
				      " datastores s WHERE s.host = ?%d AND s.name = d.name AND"
				      " s.id IS NOT d.id))", d + 2, nds + 3);
	n += (size_t)snprintf(sql + n, sizeof(sql) - n, ", coalesce(standby, 0), (SELECT"
			      " t.free_mib FROM datastores t WHERE t.host = h.name AND t.name ="
			      " ?%d AND t.free_mib >= 0)", nds + 4);
	snprintf(sql + n, sizeof(sql) - n, " FROM hosts h WHERE ?%d IS NULL OR name = ?%d ORDER BY"
		 " name", nds + 2, nds + 2);
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(ctr.db, sql, -1, &st, NULL) != SQLITE_OK) {
		logf_("sqlite: %s: %s", sqlite3_errmsg(ctr.db), sql);
		return NULL;
	}
	sqlite3_bind_text(st, 1, network, -1, SQLITE_TRANSIENT);
	for (int d = 0; d < nds; d++)
		sqlite3_bind_text(st, d + 2, dsnames[d], -1, SQLITE_TRANSIENT);
	if (only_host)
		sqlite3_bind_text(st, nds + 2, only_host, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, nds + 3, source, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, nds + 4, target ? target : "", -1, SQLITE_TRANSIENT);
	return st;
}

/* The reply's "estimate" of every candidate, as JSON text (the same for each). */
static char *estimate_text(long long mem_mib)
{
	json_t *est = estimate(mem_mib);
	char *t = json_dumps(est, JSON_COMPACT);
	json_decref(est);
	return t;
}

/* What the VM asks of a host. */
struct needs {
	const char *source;    /* the host it runs on */
	const char *isa;       /* the source's ISA, or NULL when unknown */
	long long mem_mib;
	char datastores[16][64];
	int ndatastores;
	char network[64];      /* "" for none */
	const char *name;
	struct rule_set *rules;   /* the rules naming it */
	const char *copy_to;      /* NULL: no copying; "": the default target */
	char target[64];          /* where copied disks go ("": nowhere) */
	char disk_ds[16][64];     /* the datastores its disks are on */
	int ndisk_ds;
	bool ro_disk;             /* a read-only disk: it does not travel */
	long long disk_mib, disk_alloc_mib;   /* its images (the last host report) */
};

static bool is_disk_ds(const struct needs *vm, const char *ds)
{
	for (int i = 0; i < vm->ndisk_ds; i++)
		if (!strcmp(vm->disk_ds[i], ds))
			return true;
	return false;
}

/* Why the VM's disks cannot be copied to this host (host_facts' row), or
 * "" when they can. */
static void copy_refusal(sqlite3_stmt *st, const struct needs *vm, char *reason, size_t len)
{
	const char *name = (const char *)sqlite3_column_text(st, 0);
	int col = 9 + vm->ndatastores;
	if (vm->ro_disk)
		snprintf(reason, len, "a read-only disk cannot be copied (shared-nothing): "
			 "the VM's disks must be on a datastore both hosts see");
	else if (!vm->target[0] || sqlite3_column_type(st, col) == SQLITE_NULL)
		snprintf(reason, len, "datastore %s is not visible there, and %s has no "
			 "datastore %s to copy the disks into: name one with --datastore",
			 vm->disk_ds[0], name, vm->target[0] ? vm->target : vm->disk_ds[0]);
	else if (sqlite3_column_int64(st, col) < vm->disk_mib)
		snprintf(reason, len, "datastore %s there has %lld MiB free, the disks need "
			 "%lld MiB", vm->target, sqlite3_column_int64(st, col), vm->disk_mib);
}

/* Why the host of host_facts()'s current row cannot take the VM, in
 * reason (empty: it can). */
static void refusal(sqlite3_stmt *st, const struct needs *vm, int running, int limit,
		    bool *copy, char *reason, size_t len)
{
	const char *source = vm->source, *src_isa = vm->isa, *network = vm->network;
	long long mem = vm->mem_mib;
	const char *name = (const char *)sqlite3_column_text(st, 0);
	long long free_mib = sqlite3_column_int64(st, 3);
	const char *isa = (const char *)sqlite3_column_text(st, 4);
	reason[0] = 0;
	if (!strcmp(name, source))
		snprintf(reason, len, "the VM runs there");
	else if (!sqlite3_column_int(st, 1))
		snprintf(reason, len, "not responding (no heartbeat in etcd)");
	else if (sqlite3_column_int(st, 2))
		snprintf(reason, len, "in maintenance");
	else if (sqlite3_column_type(st, 6) != SQLITE_NULL)
		snprintf(reason, len, "not answering: %s", sqlite3_column_text(st, 6));
	else if (sqlite3_column_int(st, 8 + vm->ndatastores))
		snprintf(reason, len, "in standby (DPM)");
	else if (src_isa && (!isa || strcmp(isa, src_isa)))
		snprintf(reason, len, "ISA %s cannot run a guest from %s", isa ? isa : "unknown",
			 src_isa);
	else if (free_mib < mem)
		snprintf(reason, len, "not enough free memory: %lld MiB free, the VM needs %lld MiB",
			 free_mib, mem);
	*copy = false;
	for (int d = 0; d < vm->ndatastores && !reason[0]; d++) {
		if (sqlite3_column_int(st, 8 + d))
			continue;
		if (vm->copy_to && is_disk_ds(vm, vm->datastores[d]))
			*copy = true;
		else
			snprintf(reason, len, "datastore %s is not visible there", vm->datastores[d]);
	}
	for (int d = 0; vm->copy_to && vm->copy_to[0] && d < vm->ndisk_ds; d++)
		*copy = *copy || strcmp(vm->disk_ds[d], vm->copy_to);   /* asked to move them */
	if (!reason[0] && *copy)
		copy_refusal(st, vm, reason, len);
	if (!reason[0] && network[0] && !sqlite3_column_int(st, 7))
		snprintf(reason, len, "network %s is not there", network);
	if (!reason[0])
		rules_permit(vm->rules, vm->name, name, NULL, NULL, reason, len);
	if (!reason[0] && running >= limit)
		snprintf(reason, len, "at its limit: %d of %d migrations running", running, limit);
}

/*
 * The wizard's answer written straight as JSON text (docs/api.md): the
 * refused hosts as they are met (in name order), the candidates ranked
 * as C structs and written row by row; no json_t per host.
 */
/* The datastores of the VM's disks, whether one is read-only, where copies go. */
static void disk_needs(json_t *spec, json_t *vm_row, struct needs *vm)
{
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(spec, "disks"), i, v) {
		const char *ref = json_string_value(v) ?: "";
		const char *colon = strchr(ref, ':');
		vm->ro_disk = vm->ro_disk || strstr(ref, ",ro");
		if (!colon || vm->ndisk_ds == 16)
			continue;
		snprintf(vm->disk_ds[vm->ndisk_ds], 64, "%.*s", (int)(colon - ref), ref);
		if (!is_disk_ds(vm, vm->disk_ds[vm->ndisk_ds]))
			vm->ndisk_ds++;
	}
	if (vm->copy_to)
		snprintf(vm->target, sizeof(vm->target), "%s",
			 vm->copy_to[0] ? vm->copy_to : vm->ndisk_ds ? vm->disk_ds[0] : "");
	vm->disk_mib = json_integer_value(json_object_get(vm_row, "disk_mib"));
	vm->disk_alloc_mib = json_integer_value(json_object_get(vm_row, "disk_alloc_mib"));
}

char *wizard_recommend_text(json_t *vm_row, long long max_candidates, long long max_refused,
			    const char *only_host, const char *copy_to, size_t *len)
{
	struct needs vm = { .source = json_string_value(json_object_get(vm_row, "host")) ?: "" };
	json_t *spec = json_loads(json_string_value(json_object_get(vm_row, "spec")) ?: "{}", 0, NULL);
	vm.mem_mib = json_integer_value(json_object_get(spec, "mem_mib"));
	spec_datastores(spec, vm.datastores, &vm.ndatastores);
	spec_network(spec, vm.network, sizeof(vm.network));
	vm.copy_to = copy_to;
	disk_needs(spec, vm_row, &vm);
	json_t *src_row = db_row("SELECT isa FROM hosts WHERE name = ?", json_pack("[s]", vm.source));
	vm.isa = json_string_value(json_object_get(src_row, "isa"));
	vm.name = json_string_value(json_object_get(vm_row, "name")) ?: "";
	vm.rules = rules_for_vm(vm.name);
	json_t *running_by = by_host("SELECT h AS k, count(*) AS n FROM (SELECT source AS h FROM "
				     "tasks WHERE kind = 'migrate' AND state = 'running' UNION ALL "
				     "SELECT destination FROM tasks WHERE kind = 'migrate' AND "
				     "state = 'running') GROUP BY h", NULL);
	json_t *limit_by = by_host("SELECT substr(key, 6, length(key) - 16) AS k, CAST(value AS "
				   "INTEGER) AS n FROM settings WHERE key LIKE 'host.%.migrations'",
				   NULL);
	int default_limit = (int)db_setting_int("migrations_per_host", 4);
	struct jsonw refused;
	jw_init(&refused);
	jw_array(&refused);
	struct candidate *cands = NULL;
	size_t ncands = 0, cap = 0, nrefused = 0;
	sqlite3_stmt *st = host_facts(vm.datastores, vm.ndatastores, vm.network, only_host,
				      vm.source, vm.target);
	while (st && sqlite3_step(st) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		int running = int_of(running_by, name, 0);
		char reason[400];
		bool copy;
		refusal(st, &vm, running, int_of(limit_by, name, default_limit), &copy, reason,
			sizeof(reason));
		if (reason[0]) {
			if (max_refused < 0 || (long long)nrefused < max_refused) {
				jw_object(&refused);
				jw_key(&refused, "host");
				jw_string(&refused, name);
				jw_key(&refused, "reason");
				jw_string(&refused, reason);
				if (copy && !strncmp(reason, "at its limit", 12)) {
					/* a migration there waits in the queue: it copies */
					jw_key(&refused, "datastore");
					jw_string(&refused, vm.target);
				}
				jw_object_end(&refused);
			}
			nrefused++;
			continue;
		}
		if (ncands == cap) {
			cap = cap ? cap * 2 : 64;
			cands = realloc(cands, cap * sizeof(*cands));
			if (!cands)
				abort();
		}
		cands[ncands++] = (struct candidate){ strdup(name), sqlite3_column_int64(st, 3),
						      sqlite3_column_double(st, 5), running, copy };
	}
	sqlite3_finalize(st);
	jw_array_end(&refused);
	qsort(cands, ncands, sizeof(*cands), by_rank);
	char *est = estimate_text(vm.mem_mib);
	struct jsonw w;
	jw_init(&w);
	jw_object(&w);
	jw_key(&w, "vm");
	jw_string(&w, json_string_value(json_object_get(vm_row, "name")));
	jw_key(&w, "source");
	jw_string(&w, vm.source);
	jw_key(&w, "candidates");
	jw_array(&w);
	for (size_t k = 0; k < ncands; k++) {
		if (max_candidates < 0 || (long long)k < max_candidates) {
			jw_object(&w);
			jw_key(&w, "host");
			jw_string(&w, cands[k].host);
			jw_key(&w, "rank");
			jw_integer(&w, (long long)k + 1);
			jw_key(&w, "free_mib");
			jw_integer(&w, cands[k].free_mib);
			jw_key(&w, "load");
			jw_real(&w, cands[k].load);
			jw_key(&w, "migrations_running");
			jw_integer(&w, cands[k].running);
			jw_key(&w, "estimate");
			jw_raw(&w, est, strlen(est));
			if (cands[k].copy) {
				char note[80];
				snprintf(note, sizeof(note), "disks copied: %lld MiB",
					 vm.disk_alloc_mib);
				jw_key(&w, "datastore");
				jw_string(&w, vm.target);
				jw_key(&w, "disks_copied_mib");
				jw_integer(&w, vm.disk_alloc_mib);
				jw_key(&w, "note");
				jw_string(&w, note);
			}
			jw_object_end(&w);
		}
		free(cands[k].host);
	}
	jw_array_end(&w);
	jw_key(&w, "refused");
	jw_raw(&w, refused.buf, refused.len);
	jw_key(&w, "candidates_total");
	jw_integer(&w, (long long)ncands);
	jw_key(&w, "refused_total");
	jw_integer(&w, (long long)nrefused);
	jw_object_end(&w);
	free(est);
	free(cands);
	jw_free(&refused);
	rules_free(vm.rules);
	json_decref(running_by);
	json_decref(limit_by);
	json_decref(src_row);
	json_decref(spec);
	return jw_take(&w, len);
}

json_t *wizard_recommend_n(json_t *vm_row, long long max_candidates, long long max_refused,
			   const char *only_host, const char *copy_to)
{
	size_t len;
	char *text = wizard_recommend_text(vm_row, max_candidates, max_refused, only_host, copy_to,
					   &len);
	json_t *r = json_loadb(text, len, 0, NULL);
	free(text);
	return r;
}
