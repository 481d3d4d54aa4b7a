/*
 * vmstate.c - the machine as migration stream sections, and back.
 *
 * The configuration (what a destination must be able to run) comes from
 * the machine: ISA, RAM, harts, every registered device state with its
 * version, and the disk images, so a destination that cannot see the same image is
 * refused in the handshake (same path, size and inode). State is one CPU section per hart, one DEVICE
 * section per registered device (its own two versioned functions), and
 * the guest clock.
 */
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "util/sbuf.h"
#include "vmm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ISA_STRING "rv64imafdc_zicsr_zifencei_zicntr"

/* Identity of a disk image: its size and inode, which shared storage
 * shows alike to every host (its contents change while the guest runs). */
static int disk_identity(const char *path, uint64_t *size, uint64_t *id)
{
	struct stat st;
	if (stat(path, &st))
		return -1;
	*size = (uint64_t)st.st_size;
	*id = (uint64_t)st.st_ino;
	return 0;
}

void vmstate_config(struct vmm *v, struct mig_config *cfg)
{
	struct machine *m = v->machine;
	memset(cfg, 0, sizeof(*cfg));
	cfg->version = MIG_VERSION;
	snprintf(cfg->isa, sizeof(cfg->isa), "%s", ISA_STRING);
	cfg->ram_size = m->ram_size;
	cfg->harts = m->nharts;
	for (unsigned i = 0; i < m->nstates && cfg->ndevices < MIG_MAX_DEVICES; i++) {
		snprintf(cfg->devices[cfg->ndevices].name, sizeof(cfg->devices[0].name), "%s",
			 m->states[i].ops->name);
		cfg->devices[cfg->ndevices++].version = m->states[i].ops->version;
	}
	for (unsigned i = 0; i < v->ndisks && cfg->ndisks < MIG_MAX_DISKS; i++) {
		char *real = realpath(v->disks[i], NULL);
		snprintf(cfg->disks[cfg->ndisks].path, sizeof(cfg->disks[0].path), "%s",
			 real ? real : v->disks[i]);
		free(real);
		disk_identity(v->disks[i], &cfg->disks[cfg->ndisks].size,
			      &cfg->disks[cfg->ndisks].id);
		cfg->ndisks++;
	}
}

int vmstate_send(struct machine *m, struct mig_stream *s)
{
	struct sbuf b;
	int r = 0;
	for (unsigned i = 0; i < m->nharts && !r; i++) {
		sbuf_init(&b);
		hart_save(m->harts[i], &b);
		r = mig_write_cpu(s, i, HART_STATE_VERSION, b.data, b.len);
		sbuf_free(&b);
	}
	for (unsigned i = 0; i < m->nstates && !r; i++) {
		const struct device_state_ops *ops = m->states[i].ops;
		sbuf_init(&b);
		ops->save(m->states[i].dev, &b);
		r = mig_write_device(s, ops->name, ops->version, b.data, b.len);
		sbuf_free(&b);
	}
	return r ? r : mig_write_clock(s, machine_time(m));
}

int vmstate_load(struct machine *m, const struct mig_section *sec, char *err, size_t errlen)
{
	struct sbuf in;
	const char *why = NULL;
	sbuf_reader(&in, sec->state, sec->state_len);
	switch (sec->type) {
	case MIG_SEC_CPU:
		if (sec->hart >= m->nharts) {
			snprintf(err, errlen, "CPU state for hart %u, but this machine has %u",
				 sec->hart, m->nharts);
			return -1;
		}
		if (hart_load(m->harts[sec->hart], &in, sec->version, &why)) {
			snprintf(err, errlen, "hart %u: %s", sec->hart, why);
			return -1;
		}
		return 0;
	case MIG_SEC_DEVICE: {
		const struct state_entry *e = machine_state_find(m, sec->name);
		if (!e) {
			snprintf(err, errlen, "state for device '%s', which this machine lacks",
				 sec->name);
			return -1;
		}
		if (sec->version > e->ops->version) {
			snprintf(err, errlen, "device '%s' state version %u is newer than %u",
				 sec->name, sec->version, e->ops->version);
			return -1;
		}
		if (e->ops->load(e->dev, &in, sec->version, &why)) {
			snprintf(err, errlen, "device '%s': %s", sec->name, why ? why : "bad state");
			return -1;
		}
		return 0;
	}
	case MIG_SEC_CLOCK:
		machine_set_time(m, sec->ticks);
		return 0;
	}
	snprintf(err, errlen, "unexpected section '%s' in the state", mig_section_name(sec->type));
	return -1;
}

int vmstate_release(struct machine *m, const char **why)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct device_state_ops *ops = m->states[i].ops;
		if (ops->release && ops->release(m->states[i].dev, why)) {
			/* take back what was already let go */
			for (unsigned j = 0; j < i; j++)
				if (m->states[j].ops->acquire) {
					const char *ignore;
					m->states[j].ops->acquire(m->states[j].dev, &ignore);
				}
			return -1;
		}
	}
	return 0;
}

int vmstate_acquire(struct machine *m, const char **why)
{
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct device_state_ops *ops = m->states[i].ops;
		if (ops->acquire && ops->acquire(m->states[i].dev, why)) {
			for (unsigned j = 0; j < i; j++)
				if (m->states[j].ops->release) {
					const char *ignore;
					m->states[j].ops->release(m->states[j].dev, &ignore);
				}
			return -1;
		}
	}
	return 0;
}

bool vmstate_has_disks(struct machine *m)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->acquire)
			return true;
	return false;
}

void vmstate_resumed_elsewhere(struct machine *m)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (m->states[i].ops->resumed_elsewhere)
			m->states[i].ops->resumed_elsewhere(m->states[i].dev);
}
