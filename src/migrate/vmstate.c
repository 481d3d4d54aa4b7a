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
	for (unsigned i = 0; i < m->nharts; i++) {
		sbuf_init(&b);
		sbuf_put_u32(&b, i);
		sbuf_put_u32(&b, HART_STATE_VERSION);
		hart_save(m->harts[i], &b);
		int r = mig_write_section(s, MIG_SEC_CPU, b.data, b.len);
		sbuf_free(&b);
		if (r)
			return -1;
	}
	for (unsigned i = 0; i < m->nstates; i++) {
		const struct device_state_ops *ops = m->states[i].ops;
		sbuf_init(&b);
		size_t n = strlen(ops->name);
		sbuf_put_u16(&b, (uint16_t)n);
		sbuf_put(&b, ops->name, n);
		sbuf_put_u32(&b, ops->version);
		ops->save(m->states[i].dev, &b);
		int r = mig_write_section(s, MIG_SEC_DEVICE, b.data, b.len);
		sbuf_free(&b);
		if (r)
			return -1;
	}
	sbuf_init(&b);
	sbuf_put_u64(&b, machine_time(m));
	int r = mig_write_section(s, MIG_SEC_CLOCK, b.data, b.len);
	sbuf_free(&b);
	return r;
}

int vmstate_load(struct machine *m, const struct mig_section *sec, char *err, size_t errlen)
{
	struct sbuf in;
	sbuf_reader(&in, sec->data, sec->len);
	const char *why = NULL;
	switch (sec->type) {
	case MIG_SEC_CPU: {
		uint32_t hart = sbuf_get_u32(&in), version = sbuf_get_u32(&in);
		if (!sbuf_ok(&in) || hart >= m->nharts) {
			snprintf(err, errlen, "CPU state for hart %u, but this machine has %u",
				 hart, m->nharts);
			return -1;
		}
		struct sbuf rest;
		sbuf_reader(&rest, sec->data + in.pos, sec->len - in.pos);
		if (hart_load(m->harts[hart], &rest, version, &why)) {
			snprintf(err, errlen, "hart %u: %s", hart, why);
			return -1;
		}
		return 0;
	}
	case MIG_SEC_DEVICE: {
		char name[64];
		uint16_t n = sbuf_get_u16(&in);
		if (n >= sizeof(name) || !sbuf_get(&in, name, n)) {
			snprintf(err, errlen, "device state with a bad name");
			return -1;
		}
		name[n] = 0;
		uint32_t version = sbuf_get_u32(&in);
		const struct state_entry *e = machine_state_find(m, name);
		if (!sbuf_ok(&in) || !e) {
			snprintf(err, errlen, "state for device '%s', which this machine lacks", name);
			return -1;
		}
		if (version > e->ops->version) {
			snprintf(err, errlen, "device '%s' state version %u is newer than %u",
				 name, version, e->ops->version);
			return -1;
		}
		struct sbuf rest;
		sbuf_reader(&rest, sec->data + in.pos, sec->len - in.pos);
		if (e->ops->load(e->dev, &rest, version, &why)) {
			snprintf(err, errlen, "device '%s': %s", name, why ? why : "bad state");
			return -1;
		}
		return 0;
	}
	case MIG_SEC_CLOCK: {
		uint64_t t = sbuf_get_u64(&in);
		if (!sbuf_done(&in)) {
			snprintf(err, errlen, "bad clock section");
			return -1;
		}
		machine_set_time(m, t);
		return 0;
	}
	}
	snprintf(err, errlen, "unexpected section type %u in the state", sec->type);
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
