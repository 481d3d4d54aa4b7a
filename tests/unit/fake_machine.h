/*
 * fake_machine.h - a stand-in for machine.c in device unit tests.
 *
 * It implements machine.h over a calloc'd RAM array and records what the
 * devices do: MMIO regions, state sections, interrupt line levels, mip
 * bits, every byte reported dirty, watched descriptors. Tests play the
 * I/O thread (fake_io_poll) and the guest driver (the fake_vq helpers,
 * which build split virtqueues in the fake RAM as a driver would).
 */
#ifndef FERRY_FAKE_MACHINE_H
#define FERRY_FAKE_MACHINE_H

#include "machine/machine.h"

#include <stdbool.h>
#include <stdint.h>

#define FAKE_RAM_SIZE (1u << 20)
#define FAKE_MAX      16

struct fake_mmio {
	uint64_t base, size;
	const struct mmio_ops *ops;
	void *dev;
};

struct fake_state {
	const struct device_state_ops *ops;
	void *dev;
};

struct fake_watch {
	int fd;
	void (*ready)(void *opaque);
	void *opaque;
};

struct machine {
	uint8_t *ram;
	uint8_t *dirty;                 /* one byte a RAM byte: reported dirty */
	struct fake_mmio mmio[FAKE_MAX];
	unsigned nmmio;
	struct fake_state states[FAKE_MAX];
	unsigned nstates;
	int irq[PLIC_SOURCES];          /* line levels */
	unsigned irq_raised[PLIC_SOURCES];  /* 0 -> 1 edges */
	uint64_t mip[MAX_HARTS];
	struct fake_watch watches[FAKE_MAX];
	unsigned nwatches;
	unsigned kicks;
	bool running;
};

struct machine *fake_machine_create(void);
void fake_machine_destroy(struct machine *m);

uint64_t fake_mmio_read(struct machine *m, uint64_t pa, unsigned size);
void fake_mmio_write(struct machine *m, uint64_t pa, uint64_t val, unsigned size);

/* Guest RAM by guest physical address. */
void *fake_gpa(struct machine *m, uint64_t gpa);
bool fake_dirty_covers(struct machine *m, uint64_t gpa, uint64_t len);
bool fake_dirty_any(struct machine *m);
void fake_dirty_clear(struct machine *m);

/* The I/O thread, one round: call the callbacks of readable watched fds.
 * Returns how many were called. */
int fake_io_poll(struct machine *m);
bool fake_watching(struct machine *m, int fd);

/* Registered state by name (NULL if none). */
const struct fake_state *fake_state(struct machine *m, const char *name);

/* ---- a guest virtio driver ------------------------------------------------ */
struct fake_vq {
	uint16_t num;
	uint64_t desc, avail, used;
	uint16_t avail_idx;     /* driver's next avail index */
	uint16_t used_seen;     /* used entries consumed */
	uint16_t next_desc;     /* next free descriptor (round robin) */
};

struct fake_buf {
	uint64_t gpa;
	uint32_t len;
	bool write;             /* device-writable */
};

/* Bring a virtio-mmio device at `base` to DRIVER_OK with the given driver
 * features and nq queues of num entries placed in RAM from ring_gpa
 * (0x3000 bytes apart). Returns the final status register. */
uint32_t fake_virtio_setup(struct machine *m, uint64_t base, uint64_t features,
			   struct fake_vq *q, unsigned nq, uint16_t num, uint64_t ring_gpa);
/* Write a chain (descriptors from next_desc on), post it on the avail
 * ring; returns the head. */
uint16_t fake_vq_add(struct machine *m, struct fake_vq *q, const struct fake_buf *b,
		     unsigned n);
/* Same, but the chain lives in an indirect table at table_gpa. */
uint16_t fake_vq_add_indirect(struct machine *m, struct fake_vq *q,
			      const struct fake_buf *b, unsigned n, uint64_t table_gpa);
void fake_vq_kick(struct machine *m, uint64_t base, unsigned qi);
/* Next used element, if any. */
bool fake_vq_used(struct machine *m, struct fake_vq *q, uint32_t *id, uint32_t *len);
/* Raw descriptor write, for building malformed chains. */
void fake_vq_desc(struct machine *m, struct fake_vq *q, uint16_t i, uint64_t addr,
		  uint32_t len, uint16_t flags, uint16_t next);
void fake_vq_post(struct machine *m, struct fake_vq *q, uint16_t head);

#endif
