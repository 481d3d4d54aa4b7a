/*
 * bus.h - all a hart knows of the board it sits in.
 *
 * cpu/ knows a bus, not the machine, and never migration: the board
 * (machine.c) fills one struct cpu_bus and hands it to every hart. It
 * holds guest RAM (a hart maps RAM pages straight into its TLB), the
 * shared per-page words the CPU keeps in step with memory (the dirty log
 * while logging, the code map for decoded code, the bitmap of pages not
 * here yet during post-copy), and an ops table for everything else: the
 * rest of the bus (MMIO), the SBI, parking for a pause, the clock,
 * shootdowns across harts, a page that is not here yet, and ending a
 * guest that can never run again.
 *
 * Unit tests (tests/unit/test_hart.c) run harts behind a bus of their own.
 */
#ifndef FERRY_CPU_BUS_H
#define FERRY_CPU_BUS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#ifndef PAGE_SHIFT
#define PAGE_SHIFT 12
#endif
#ifndef PAGE_SIZE
#define PAGE_SIZE (1ULL << PAGE_SHIFT)
#endif

struct hart;

struct cpu_bus_ops {
	/* A load or store that is not RAM; false when nothing answers there
	 * (the hart raises an access fault). size is 1, 2, 4 or 8. */
	bool (*mmio_read)(void *ctx, uint64_t pa, unsigned size, uint64_t *val);
	bool (*mmio_write)(void *ctx, uint64_t pa, unsigned size, uint64_t val);
	/* ECALL from S mode, the supervisor binary interface: set h->pc past
	 * the ecall (4 bytes) unless it redirected the hart. */
	void (*ecall)(void *ctx, struct hart *h);
	/* The hart saw REQ_PAUSE: park it until the world resumes. */
	void (*park)(void *ctx, struct hart *h);
	/* The guest clock, in ticks of bus.timebase_hz. */
	uint64_t (*time)(void *ctx);
	/* Post `req` to every hart in mask but self and wait until each has
	 * served it or cannot be running guest code (shootdowns). */
	void (*sync_harts)(void *ctx, unsigned req, struct hart *self, uint64_t mask);
	/* RAM page pfn is not here yet (its bit is set in *missing): bring it
	 * and return once it is. */
	void (*fetch_page)(void *ctx, uint64_t pfn);
	/* The guest can never run again: report why and end the machine. */
	void (*fail)(void *ctx, const char *why);
};

struct cpu_bus {
	const struct cpu_bus_ops *ops;
	void *ctx;                      /* the first argument of every op */

	uint8_t *ram;                   /* guest RAM in the host */
	uint64_t ram_base, ram_size;    /* guest physical */
	uint64_t timebase_hz;

	/* dirty log: one bit a RAM page, set on stores while *logging */
	_Atomic uint64_t *dirty;
	atomic_bool *logging;
	/* one word a RAM page for decoded code (cpu/internal.h), and the
	 * number of harts making a page a code page right now */
	_Atomic uint32_t *code;
	atomic_uint *code_marking;
	/* post-copy: *missing is a bitmap of pages not here yet, or NULL */
	_Atomic uint64_t **missing;
	/* migration throttle: harts sleep this share (0..99) of their time */
	atomic_int *throttle_pct;

	struct hart **harts;            /* every hart on the bus */
	unsigned nharts;
};

static inline bool bus_is_ram(const struct cpu_bus *b, uint64_t pa)
{
	return pa - b->ram_base < b->ram_size;
}

static inline uint8_t *bus_host(const struct cpu_bus *b, uint64_t pa)
{
	return b->ram + (pa - b->ram_base);
}

static inline uint64_t bus_pfn(const struct cpu_bus *b, uint64_t pa)
{
	return (pa - b->ram_base) >> PAGE_SHIFT;
}

/* A store is about to change RAM page pfn: log it while logging. */
static inline void bus_mark_dirty(const struct cpu_bus *b, uint64_t pfn)
{
	if (!atomic_load_explicit(b->logging, memory_order_relaxed))
		return;
	uint64_t bit = 1ULL << (pfn % 64);
	if (!(atomic_load_explicit(&b->dirty[pfn / 64], memory_order_relaxed) & bit))
		atomic_fetch_or_explicit(&b->dirty[pfn / 64], bit, memory_order_relaxed);
}

/* Make RAM page pfn present before the hart touches it (post-copy). */
static inline void bus_fault_in(const struct cpu_bus *b, uint64_t pfn)
{
	_Atomic uint64_t *miss = *b->missing;
	if (__builtin_expect(miss != NULL, 0) &&
	    ((atomic_load_explicit(&miss[pfn / 64], memory_order_acquire) >> (pfn % 64)) & 1))
		b->ops->fetch_page(b->ctx, pfn);
}

#endif
