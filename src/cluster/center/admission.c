/*
 * admission.c - HA admission control: refuse a VM start or a migration
 * that would leave too little room to restart every HA VM after
 * `ha.host_failures_tolerated` (N) host failures (0, the default: off).
 *
 * The model is memory: a host offers `vm_memory_mib` from its report
 * (ferryd --vm-memory-mib, else the host's RAM); every running VM uses
 * its spec's mem_mib on its host; the HA VMs (ha high|medium|low) are
 * what must restart. With the hosts F failed, the cluster copes when
 * sum over F of HA demand <= sum over the others of free room (capacity
 * minus use). demand_F - room_others = sum over F of (demand + free) -
 * total free, so the worst F is simply the N hosts with the largest
 * demand + free: one sort, no enumeration. Hosts in maintenance, in DPM
 * standby or dead offer nothing (DPM wakes a standby host when the check
 * fails). The check runs on the layout as it would be after the
 * start or migration.
 */
#include "cluster/center/center.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct slot {
	char name[64];
	long long capacity, used, demand;
};

static int worst_first(const void *a, const void *b)
{
	const struct slot *x = a, *y = b;
	long long kx = x->demand + x->capacity - x->used, ky = y->demand + y->capacity - y->used;
	return kx < ky ? 1 : kx > ky ? -1 : strcmp(x->name, y->name);
}

static bool spec_ha(json_t *spec)
{
	const char *ha = json_string_value(json_object_get(spec, "ha"));
	return ha && (!strcmp(ha, "high") || !strcmp(ha, "medium") || !strcmp(ha, "low"));
}

static struct slot *slot_of(struct slot *s, int n, const char *host)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s[i].name, host))
			return &s[i];
	return NULL;
}

bool admission_check(const char *vm, json_t *spec, const char *host, char *why, size_t len)
{
	long long tolerated = db_setting_int("ha.host_failures_tolerated", 0);
	if (tolerated <= 0)
		return true;
	json_t *hosts = db_query("SELECT name, coalesce(json_extract(report, '$.vm_memory_mib'),"
				 " json_extract(report, '$.mem_mib'), 0) AS cap FROM hosts WHERE "
				 "alive = 1 AND maintenance = 0 AND coalesce(standby, 0) = 0 ORDER BY "
				 "name", NULL);
	int n = (int)json_array_size(hosts);
	struct slot *s = calloc(n ? n : 1, sizeof(*s));
	size_t i;
	json_t *r;
	json_array_foreach(hosts, i, r) {
		snprintf(s[i].name, sizeof(s[i].name), "%s",
			 json_string_value(json_object_get(r, "name")));
		s[i].capacity = json_integer_value(json_object_get(r, "cap"));
	}
	json_decref(hosts);
	/* the VMs that run now, this one where it would be */
	json_t *vms = db_query("SELECT name, host, spec FROM vms WHERE state IN ('running', "
			       "'starting', 'migrating', 'restarting')", NULL);
	json_array_foreach(vms, i, r) {
		if (!strcmp(json_string_value(json_object_get(r, "name")), vm))
			continue;
		json_t *sp = json_loads(json_string_value(json_object_get(r, "spec")) ?: "{}", 0,
					NULL);
		struct slot *at = slot_of(s, n, json_string_value(json_object_get(r, "host")) ?: "");
		long long mem = json_integer_value(json_object_get(sp, "mem_mib"));
		if (at) {
			at->used += mem;
			at->demand += spec_ha(sp) ? mem : 0;
		}
		json_decref(sp);
	}
	json_decref(vms);
	struct slot *at = slot_of(s, n, host);
	long long mem = json_integer_value(json_object_get(spec, "mem_mib"));
	if (at) {
		at->used += mem;
		at->demand += spec_ha(spec) ? mem : 0;
	}
	qsort(s, n, sizeof(*s), worst_first);
	long long demand = 0, room = 0;
	char failed[256] = "";
	for (int k = 0; k < n; k++) {
		if (k < tolerated) {
			demand += s[k].demand;
			snprintf(failed + strlen(failed), sizeof(failed) - strlen(failed), "%s%s",
				 k ? ", " : "", s[k].name);
		} else {
			room += s[k].capacity - s[k].used;
		}
	}
	bool ok = demand <= room && (n > tolerated || demand == 0);
	if (!ok && n <= tolerated)
		snprintf(why, len, "admission control (ha.host_failures_tolerated=%lld): only %d "
			 "host(s) can take VMs, so no host would be left to restart the HA VMs on",
			 tolerated, n);
	else if (!ok)
		snprintf(why, len, "admission control (ha.host_failures_tolerated=%lld): with VM %s "
			 "on %s, if %s failed their HA VMs would need %lld MiB and the other hosts "
			 "would have %lld MiB free", tolerated, vm, host, failed, demand, room);
	free(s);
	return ok;
}
