/*
 * machine.h - the virtual machine as devices and the CPU see it.
 *
 * A machine is guest RAM at RAM_BASE, a table of MMIO regions, a PLIC, a
 * CLINT-style timer, the harts, and one I/O thread that watches host file
 * descriptors (TAP, stdin) for the devices. Everything a device needs from
 * the machine goes through the small API below, so a device never sees the
 * CPU and the CPU never sees a device.
 *
 * Threads: one host thread per hart runs guest code and calls MMIO handlers;
 * the I/O thread calls io_watch() callbacks; the control socket and migration
 * run on their own threads and use machine_pause()/machine_resume() to stop
 * the world. Devices therefore guard their own state with a mutex.
 *
 * Memory map (same shape as QEMU's virt board, so guests feel at home):
 *   0x0200_0000  CLINT          0x0c00_0000  PLIC
 *   0x1000_0000  ns16550a UART  0x1000_1000  virtio-mmio slots, 0x1000 apart
 *   0x8000_0000  RAM
 */
#ifndef FERRY_MACHINE_H
#define FERRY_MACHINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#define RAM_BASE        0x80000000ULL
#define CLINT_BASE      0x02000000ULL
#define CLINT_SIZE      0x00010000ULL
#define PLIC_BASE       0x0c000000ULL
#define PLIC_SIZE       0x04000000ULL
#define UART_BASE       0x10000000ULL
#define UART_SIZE       0x00000100ULL
#define UART_IRQ        10
#define VIRTIO_BASE     0x10001000ULL
#define VIRTIO_STRIDE   0x00001000ULL
#define VIRTIO_IRQ0     1       /* slot i uses PLIC source VIRTIO_IRQ0 + i */
#define VIRTIO_SLOTS    8
#define PLIC_SOURCES    32      /* sources 1..31 */
#define MAX_HARTS       8
#define TIMEBASE_HZ     10000000ULL
#define PAGE_SHIFT      12
#define PAGE_SIZE       (1ULL << PAGE_SHIFT)

struct machine;
struct hart;
struct sbuf;

/* ---- MMIO: a device is a region with one ops table ---------------------- */
struct mmio_ops {
	/* off is relative to the region base; size is 1, 2, 4 or 8 */
	uint64_t (*read)(void *dev, uint64_t off, unsigned size);
	void (*write)(void *dev, uint64_t off, uint64_t val, unsigned size);
	/* Optional: free the device when the machine is destroyed (no thread
	 * runs then); NULL when the machine does not own it. */
	void (*destroy)(void *dev);
};

/* ---- Migratable device state: two explicit, versioned functions --------- */
struct device_state_ops {
	const char *name;       /* unique section name in the stream */
	uint32_t version;
	void (*save)(void *dev, struct sbuf *out);
	/* returns 0, or -1 with a reason in *why (static string) */
	int (*load)(void *dev, struct sbuf *in, uint32_t version, const char **why);
	/* Optional, for migration handoff: the source flushes and lets go of
	 * host resources (a disk lock) once the destination holds everything;
	 * the destination takes them before the guest resumes there. Both
	 * return 0, or -1 with a reason. */
	int (*release)(void *dev, const char **why);
	int (*acquire)(void *dev, const char **why);
	/* Optional: the guest just resumed on this host after a migration
	 * (virtio-net announces the MAC here). */
	void (*resumed_elsewhere)(void *dev);
};

/* Register an MMIO region. Returns 0, or -1 if it overlaps another one. */
int machine_add_mmio(struct machine *m, uint64_t base, uint64_t size,
		     const struct mmio_ops *ops, void *dev);

/* Register device state for save/restore and migration. */
void machine_add_state(struct machine *m, const struct device_state_ops *ops,
		       void *dev);

/* ---- Guest memory for DMA ------------------------------------------------ */
/* Host pointer to [gpa, gpa+len) if it lies wholly in RAM, else NULL. */
void *mem_ptr(struct machine *m, uint64_t gpa, uint64_t len);
/* A device wrote [gpa, gpa+len): feeds the dirty log. Cheap when idle. */
void mem_dirty(struct machine *m, uint64_t gpa, uint64_t len);

/* ---- Interrupts ----------------------------------------------------------- */
/* Level of a PLIC source (1..PLIC_SOURCES-1); safe from any thread. */
void machine_set_irq(struct machine *m, unsigned irq, int level);

/* ---- I/O thread ----------------------------------------------------------- */
/* Call ready(opaque) on the I/O thread whenever fd is readable. */
int io_watch(struct machine *m, int fd, void (*ready)(void *opaque), void *opaque);
/* Stop watching fd (for example before closing it). */
void io_unwatch(struct machine *m, int fd);
/* Wake the I/O thread so it re-polls (e.g. a device has room again). */
void io_kick(struct machine *m);

/* A PLIC or CLINT line into a hart: bit is an mip bit (MIP_SEIP, ...). */
void machine_hart_irq(struct machine *m, unsigned hart, uint64_t bit, int level);

/* ---- Run state -------------------------------------------------------------- */
/* True while the guest runs; devices hold back guest-visible work otherwise. */
bool machine_running(struct machine *m);

#endif
