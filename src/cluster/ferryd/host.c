/*
 * host.c - what ferryd reports about its host: CPU, memory, load, the ISA
 * ferry-vm runs, datastores with free space, networks and their bridges.
 */
#include "cluster/ferryd/ferryd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* ferry-vm's software CPU: RV64GC with Zicsr and Zifencei, on any host */
const char *host_isa(void)
{
	return "rv64imafdc_zicsr_zifencei";
}

static long meminfo_mib(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return -1;
	char line[256];
	long kib = -1;
	size_t klen = strlen(key);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			kib = strtol(line + klen + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kib < 0 ? -1 : kib / 1024;
}

static json_t *datastores_json(void)
{
	json_t *a = json_array();
	for (int i = 0; i < fd_cfg.ndatastores; i++) {
		struct statvfs st;
		long long free_mib = -1, total_mib = -1;
		if (statvfs(fd_cfg.datastores[i].path, &st) == 0) {
			free_mib = (long long)st.f_bavail * st.f_frsize >> 20;
			total_mib = (long long)st.f_blocks * st.f_frsize >> 20;
		}
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I, s:b}", "name",
			fd_cfg.datastores[i].name, "path", fd_cfg.datastores[i].path, "free_mib",
			free_mib, "total_mib", total_mib, "present", free_mib >= 0));
	}
	return a;
}

static json_t *networks_json(void)
{
	json_t *a = json_array();
	for (int i = 0; i < fd_cfg.nnetworks; i++) {
		char sys[PATH_MAX + 32];
		snprintf(sys, sizeof(sys), "/sys/class/net/%s", fd_cfg.networks[i].path);
		json_array_append_new(a, json_pack("{s:s, s:s, s:b}", "name",
			fd_cfg.networks[i].name, "bridge", fd_cfg.networks[i].path, "present",
			access(sys, F_OK) == 0));
	}
	return a;
}

json_t *host_report(void)
{
	double load[1] = { 0 };
	getloadavg(load, 1);
	long total = meminfo_mib("MemTotal");
	return json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:f, s:s, s:s, s:o, s:o, s:i, s:I}",
		"name", fd_cfg.name, "address", fd_cfg.address, "url", fd_cfg.url,
		"harts", (int)sysconf(_SC_NPROCESSORS_ONLN),
		"mem_mib", (json_int_t)total,
		"free_mib", (json_int_t)meminfo_mib("MemAvailable"),
		"load", load[0], "isa", host_isa(), "vmm_version", fd_cfg.vmm_version,
		"datastores", datastores_json(), "networks", networks_json(),
		"vms", vms_count(), "vm_memory_mib",
		(json_int_t)(fd_cfg.vm_memory_mib > 0 ? fd_cfg.vm_memory_mib : total));
}
