/*
 * drs.h - the load model DRS (drs.c) and DPM (dpm.c) share.
 *
 * A snapshot of the hosts that take VMs (alive, not in maintenance, not
 * in standby) and of every placed VM: each VM's CPU demand (cores, the
 * rate its ferry-vm burns CPU seconds, smoothed) and memory (its spec's
 * mem_mib); each host's capacity (harts; vm_memory_mib, else its RAM).
 * A host's load is its VMs' demand over its capacity, for CPU and for
 * memory; the cluster's imbalance is the standard deviation of the CPU
 * loads plus that of the memory loads (vSphere's "host load standard
 * deviation"), kept as running sums so that trying a move costs O(1).
 */
#ifndef FERRY_DRS_H
#define FERRY_DRS_H

#include "cluster/center/center.h"

struct mhost {
	char name[64];
	double cpu_cap, mem_cap;   /* harts, MiB */
	double cpu, mem;           /* demand placed on it */
	int nvms;
	bool active;               /* takes VMs (not in maintenance nor standby) */
	int standby;               /* 0, 1 standby, 2 entering standby */
};

struct mvm {
	char name[64];
	char host[64];   /* where it is (on any host, active or not) */
	int h;           /* index in hosts, or -1 when the host is not in the model */
	double cpu, mem;
	bool measured;   /* its CPU rate is known */
	bool running;    /* state running: may be moved */
};

struct model {
	struct mhost *hosts;   /* every alive host, by name */
	int nhosts, nactive;
	struct mvm *vms;       /* every placed VM, by name */
	int nvms;
	double s1c, s2c, s1m, s2m;   /* sums over active hosts of loads and their squares */
};

/* Under db_lock. */
bool model_load(struct model *m);
void model_free(struct model *m);
struct mhost *model_host(struct model *m, const char *name);
struct mvm *model_vm(struct model *m, const char *name);
double model_imbalance(const struct model *m);
double host_cpu_load(const struct mhost *h);
double host_mem_load(const struct mhost *h);
double host_load(const struct mhost *h);   /* the larger of the two */
/* Moves vm to host index to in the model (sums updated). */
void model_move(struct model *m, struct mvm *v, int to);
/* rules.c's view of the model: where a VM would be */
const char *model_host_of(const char *vm, void *ctx);
/* May v go to host (wizard's checks on that host, the rules on the model's
 * placement, memory in the model)? false with why. Under db_lock. */
bool model_can_place(struct model *m, struct mvm *v, const struct mhost *to, char *why,
		     size_t len);

/* dpm.c: one DPM pass by the leader, on the model of this pass; under db_lock
 * except for the calls to ferryds. */
void dpm_run(struct model *m, bool on, json_t *status);

/* A ferryd's standby order; false with err. Not under db_lock. */
bool dpm_order(const char *host, bool standby, char *err, size_t errlen);

#endif
