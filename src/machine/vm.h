/*
 * vm.h - the machine's insides, for the CPU, boot, SBI and migration.
 *
 * Devices see only machine.h. This header adds what the CPU and the
 * monitor need: RAM, the MMIO table, the harts, the dirty log, the
 * stop-the-world pause and the guest clock.
 *
 * Pause protocol: machine_pause() posts REQ_PAUSE to every hart and waits
 * until each one is parked (or stopped in HSM) and the I/O thread is idle;
 * machine_resume() lets them go. Pauses nest (a counter), so the control
 * socket's `stop` and a migration's switchover can overlap safely.
 *
 * Guest time: mtime ticks at TIMEBASE_HZ from the host's monotonic clock
 * while the machine runs and stands still while it is paused, so the guest
 * never sees time jump backwards, nor a huge jump after a migration.
 */
#ifndef FERRY_VM_H
#define FERRY_VM_H

#include "machine/machine.h"
#include "cpu/hart.h"
#include "cpu/bus.h"

#include <stdatomic.h>

struct mmio_region {
	uint64_t base, size;
	const struct mmio_ops *ops;
	void *dev;
};

struct state_entry {
	const struct device_state_ops *ops;
	void *dev;
};

struct io_watch_entry {
	int fd;
	void (*ready)(void *opaque);
	void *opaque;
};

#define MAX_MMIO    32
#define MAX_STATES  32
#define MAX_WATCHES 16

enum exit_reason { EXIT_NONE, EXIT_POWEROFF, EXIT_RESET, EXIT_QUIT, EXIT_MIGRATED,
		   EXIT_ERROR };

struct machine {
	/* RAM */
	uint8_t *ram;
	uint64_t ram_size;

	/* dirty log: one bit a page, set by stores and DMA while logging */
	_Atomic uint64_t *dirty;
	atomic_bool logging;

	/* decoded code: one word a page (cpu/internal.h) */
	_Atomic uint32_t *code;
	atomic_uint code_marking;

	/* post-copy: one bit a page not received yet; NULL when none miss.
	 * Whoever sets it (migrate/postcopy.c) installs fetch_missing, which
	 * brings page pfn and returns once it is here. */
	_Atomic uint64_t *missing;
	void (*fetch_missing)(struct machine *m, uint64_t pfn);
	struct postcopy *postcopy;

	/* what the harts see of this machine (cpu/bus.h) */
	struct cpu_bus bus;
	atomic_bool guest_failed;   /* a hart reported the guest dead */

	/* migration throttle: harts sleep this share of their time (0..99) */
	atomic_int throttle_pct;

	struct mmio_region mmio[MAX_MMIO];
	unsigned nmmio;
	struct state_entry states[MAX_STATES];
	unsigned nstates;

	struct hart *harts[MAX_HARTS];
	unsigned nharts;
	struct plic *plic;
	int console_fd;             /* SBI legacy console output, -1 for none */

	/* guest clock */
	pthread_mutex_t clock_lock;
	uint64_t clock_base_ns;     /* host monotonic ns when mtime was clock_ticks */
	uint64_t clock_ticks;       /* mtime at clock_base_ns */
	bool clock_frozen;

	/* pause */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int pause_depth;
	unsigned parked;            /* harts parked for a pause */
	bool io_parked;

	/* I/O thread */
	struct io_watch_entry watches[MAX_WATCHES];
	unsigned nwatches;
	int io_wake[2];             /* pipe to wake poll() */
	pthread_t io_thread;
	bool io_started;            /* threads to join in machine_stop() */
	unsigned harts_started;

	/* exit */
	_Atomic int exit_reason;
	int exit_pipe[2];           /* main thread waits on it */
};

struct machine *machine_create(uint64_t ram_mib, unsigned nharts, char *err, size_t errlen);
/* Stop the machine's threads, if any run, then free it with everything
 * registered on it: devices (through their mmio_ops.destroy), harts, pipes
 * and RAM. A device that a thread of its own serves stops it in destroy. */
void machine_destroy(struct machine *m);
/* Start the hart and I/O threads: 0, or -1 (said on stderr) with none
 * left running. */
int machine_start(struct machine *m);
/* End and join the machine's threads (for machine_destroy and error paths;
 * a hart blocked in a device forever would block this too). */
void machine_stop(struct machine *m);
/* Ask the machine to end; main() sees it through exit_pipe. */
void machine_exit(struct machine *m, enum exit_reason why);
/* Block until machine_exit is called; returns the reason. */
enum exit_reason machine_wait_exit(struct machine *m);

/* Stop the world: all harts parked at an instruction boundary and no
 * device work in flight. Nests. */
void machine_pause(struct machine *m);
void machine_resume(struct machine *m);
bool machine_paused(struct machine *m);
/* Called by a hart thread that saw REQ_PAUSE: park until resumed. */
void machine_park_hart(struct machine *m, struct hart *h);

/* Bus access for anything that is not RAM. Returns false on no device. */
bool mmio_read(struct machine *m, uint64_t pa, unsigned size, uint64_t *val);
bool mmio_write(struct machine *m, uint64_t pa, unsigned size, uint64_t val);
const struct mmio_region *mmio_find(struct machine *m, uint64_t pa);

static inline bool pa_is_ram(struct machine *m, uint64_t pa)
{
	return pa - RAM_BASE < m->ram_size;
}

/* Guest clock in timebase ticks. */
uint64_t machine_time(struct machine *m);
void machine_set_time(struct machine *m, uint64_t ticks);

/* Dirty log */
static inline bool dirty_test(struct machine *m, uint64_t pfn)
{
	return (atomic_load_explicit(&m->dirty[pfn / 64], memory_order_relaxed)
		>> (pfn % 64)) & 1;
}
static inline void dirty_set(struct machine *m, uint64_t pfn)
{
	uint64_t bit = 1ULL << (pfn % 64);
	if (!(atomic_load_explicit(&m->dirty[pfn / 64], memory_order_relaxed) & bit))
		atomic_fetch_or_explicit(&m->dirty[pfn / 64], bit, memory_order_relaxed);
}
/* Start logging with every page dirty (the first round sends all RAM). */
void dirty_log_start(struct machine *m);
void dirty_log_stop(struct machine *m);
/* Copy and clear the log into bitmap out (ram_size/4096 bits), then make
 * every hart drop its write TLB entries, so the next store to each page
 * is seen again. Returns the number of dirty pages. */
uint64_t dirty_log_harvest(struct machine *m, uint64_t *out);

/* Post-copy: is page pfn still on the source? Fetch it and wait. */
static inline bool page_missing(struct machine *m, uint64_t pfn)
{
	_Atomic uint64_t *miss = m->missing;
	return miss && ((atomic_load_explicit(&miss[pfn / 64], memory_order_acquire)
			 >> (pfn % 64)) & 1);
}
/* Make [gpa, gpa+len) present (device DMA during post-copy). */
void mem_fault_in(struct machine *m, uint64_t gpa, uint64_t len);

/* Pages dirty in the log right now (not harvested). */
uint64_t dirty_log_count(struct machine *m);

/* Ask the harts in the mask `harts` to run `req` and wait until all have
 * (shootdowns); self, if a hart, is skipped. */
void machine_sync_harts(struct machine *m, unsigned req, struct hart *self, uint64_t harts);

/* Save and load the state of every registered device (for migrate/). */
const struct state_entry *machine_state_find(struct machine *m, const char *name);

#endif
