/*
 * host.c - what ferryd reports about its host: CPU, memory, load, the ISA
 * ferry-vm runs, datastores with free space, networks and their bridges,
 * the CPU seconds each VM's ferry-vm has used (for DRS), and standby.
 *
 * Standby (DPM): ferry-center's DPM tells an empty host it is not needed;
 * the host then refuses VM starts and incoming migrations (503, so the HA
 * decider tries the next host) and reports "standby": true until told to
 * wake. A real host would power off here; in the lab ferryd stays alive.
 * The state is kept in STATE/standby, so a restarted ferryd stays put.
 *
 * A datastore's "id" tells two hosts' datastores of the same name apart
 * (each host's own `local`) from one storage that both see (`shared`): a
 * random id kept in the datastore's DIR/.ferry-datastore-id, written by
 * the first ferryd to look (link(2) of a file of its own: one id wins when
 * several start at once) and read by every other. Each VM's "disk_mib" and
 * "disk_alloc_mib" (size and allocation of its images) tell ferry-center
 * what a shared-nothing migration would copy.
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/util.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
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

/* The id in dir/.ferry-datastore-id, written first if there is none;
 * "" when the datastore cannot be read nor written. */
static void datastore_id(const char *dir, char *out, size_t len)
{
	char path[PATH_MAX + 40], tmp[PATH_MAX + 120];
	snprintf(path, sizeof(path), "%s/.ferry-datastore-id", dir);
	char *text = read_file(path, NULL);
	if (!text) {
		unsigned char raw[16];
		char id[40] = "";
		if (getrandom(raw, sizeof(raw), 0) == sizeof(raw))
			for (int i = 0; i < 16; i++)
				sprintf(id + 2 * i, "%02x", raw[i]);
		snprintf(tmp, sizeof(tmp), "%s.%s.%d", path, fd_cfg.name, (int)getpid());
		write_file(tmp, id);
		if (link(tmp, path) != 0 && errno != EEXIST)
			logf_("datastore %s: cannot write its id: %s", dir, strerror(errno));
		unlink(tmp);
		text = read_file(path, NULL);
	}
	snprintf(out, len, "%.*s", text ? (int)strcspn(text, "\n") : 0, text ? text : "");
	free(text);
}

/* Datastore i's id, read (or written) once it can be; NULL until then. */
static const char *datastore_id_of(int i)
{
	static char ids[16][40];
	static pthread_mutex_t ids_lock = PTHREAD_MUTEX_INITIALIZER;
	pthread_mutex_lock(&ids_lock);
	if (!ids[i][0] && access(fd_cfg.datastores[i].path, F_OK) == 0)
		datastore_id(fd_cfg.datastores[i].path, ids[i], sizeof(ids[i]));
	pthread_mutex_unlock(&ids_lock);
	return ids[i][0] ? ids[i] : NULL;
}

const char *host_datastore_id(const char *name)
{
	for (int i = 0; i < fd_cfg.ndatastores; i++)
		if (!strcmp(fd_cfg.datastores[i].name, name))
			return datastore_id_of(i);
	return NULL;
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
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I, s:b, s:s?}", "name",
			fd_cfg.datastores[i].name, "path", fd_cfg.datastores[i].path, "free_mib",
			free_mib, "total_mib", total_mib, "present", free_mib >= 0, "id",
			free_mib >= 0 ? datastore_id_of(i) : NULL));
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

static atomic_bool standby;
static atomic_bool standby_loaded;

static void standby_path(char *out, size_t len)
{
	snprintf(out, len, "%s/standby", fd_cfg.state_dir);
}

bool host_standby(void)
{
	if (!standby_loaded) {
		char p[PATH_MAX + 16];
		standby_path(p, sizeof(p));
		standby = access(p, F_OK) == 0;
		standby_loaded = true;
	}
	return standby;
}

static int vms_running(void)
{
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list), running = 0;
	for (int i = 0; i < n; i++)
		running += !list[i]->exited && !list[i]->leaving;
	pthread_mutex_unlock(&vms_lock);
	return running;
}

bool host_set_standby(bool on, char *err, size_t errlen)
{
	char p[PATH_MAX + 16];
	standby_path(p, sizeof(p));
	int running = on ? vms_running() : 0;
	if (running) {
		snprintf(err, errlen, "host %s still runs %d VM(s): evacuate it first", fd_cfg.name,
			 running);
		return false;
	}
	if (on) {
		FILE *f = fopen(p, "w");
		if (!f || fclose(f) != 0) {
			snprintf(err, errlen, "%s: %s", p, strerror(errno));
			return false;
		}
	} else if (unlink(p) != 0 && errno != ENOENT) {
		snprintf(err, errlen, "%s: %s", p, strerror(errno));
		return false;
	}
	if (host_standby() != on)
		logf_("standby: %s", on ? "entered (DPM): no VM starts or incoming migrations"
					: "left (DPM): taking VMs again");
	standby = on;
	return true;
}

/* CPU seconds (user + system) a process has used, from /proc/PID/stat; -1 if gone. */
static double cpu_seconds(int pid)
{
	char p[64], buf[1024];
	snprintf(p, sizeof(p), "/proc/%d/stat", pid);
	FILE *f = fopen(p, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *rp = strrchr(buf, ')');   /* the name may hold spaces */
	unsigned long long utime, stime;
	if (!rp || sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			  &utime, &stime) != 2)
		return -1;
	return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

void host_add_cpu(json_t *vm_list)
{
	size_t i;
	json_t *v;
	json_array_foreach(vm_list, i, v) {
		int pid = (int)json_integer_value(json_object_get(v, "pid"));
		double s = pid > 0 && strcmp(json_string_value(json_object_get(v, "state")) ?: "",
					     "exited") ? cpu_seconds(pid) : -1;
		if (s >= 0)
			json_object_set_new(v, "cpu_s", json_real(s));
	}
}

void host_add_disks(json_t *vm_list)
{
	size_t i, k;
	json_t *v, *d;
	json_array_foreach(vm_list, i, v) {
		long long size = 0, alloc = 0;
		json_array_foreach(json_object_get(json_object_get(v, "spec"), "disks"), k, d) {
			char ref[PATH_MAX], err[256];
			snprintf(ref, sizeof(ref), "%s", json_string_value(d) ?: "");
			ref[strcspn(ref, ",")] = 0;
			char *p = vm_datastore_path(ref, err, sizeof(err));
			struct stat st;
			if (p && stat(p, &st) == 0) {
				size += st.st_size;
				alloc += (long long)st.st_blocks * 512;
			}
			free(p);
		}
		json_object_set_new(v, "disk_mib", json_integer((size + (1 << 20) - 1) >> 20));
		json_object_set_new(v, "disk_alloc_mib",
				    json_integer((alloc + (1 << 20) - 1) >> 20));
	}
}

json_t *host_report(void)
{
	double load[1] = { 0 };
	getloadavg(load, 1);
	long total = meminfo_mib("MemTotal");
	return json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:f, s:s, s:s, s:o, s:o, s:i, s:I, s:b}",
		"name", fd_cfg.name, "address", fd_cfg.address, "url", fd_cfg.url,
		"harts", (int)sysconf(_SC_NPROCESSORS_ONLN),
		"mem_mib", (json_int_t)total,
		"free_mib", (json_int_t)meminfo_mib("MemAvailable"),
		"load", load[0], "isa", host_isa(), "vmm_version", fd_cfg.vmm_version,
		"datastores", datastores_json(), "networks", networks_json(),
		"vms", vms_count(), "vm_memory_mib",
		(json_int_t)(fd_cfg.vm_memory_mib > 0 ? fd_cfg.vm_memory_mib : total),
		"standby", host_standby());
}
