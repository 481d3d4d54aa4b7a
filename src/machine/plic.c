/*
 * plic.c - the platform-level interrupt controller (SiFive / QEMU virt
 * layout): 31 level-triggered sources, 2 contexts a hart.
 *
 * Context 2h is hart h in M mode (drives mip.MEIP), 2h+1 hart h in S mode
 * (drives mip.SEIP). Register map, all 32-bit:
 *   0x000000 + 4*src       source priority (0 = never interrupts)
 *   0x001000               pending bits of sources 0..31
 *   0x002000 + 0x80*ctx    enable bits of sources 0..31 for a context
 *   0x200000 + 0x1000*ctx  priority threshold; +4 claim/complete
 *
 * How it works: `level` holds each source's input line as the devices
 * drive it. A source is pending while its line is high and it is not in
 * service (claimed and not yet completed), so a device that lowers its
 * line before the hart claims withdraws the interrupt, and a line still
 * high at completion pends again: level-triggered semantics. After every
 * change the output of each context is recomputed (some enabled, pending
 * source above the threshold) and only edges are passed to the hart.
 *
 * Threads: harts (MMIO) and the I/O thread (device lines) call in at the
 * same time; one mutex guards everything, and outputs are driven under it
 * so that two updates cannot reach a hart out of order.
 */
#include "machine/devices.h"
#include "machine/machine.h"
#include "util/sbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLIC_PRIORITY    0x000000
#define PLIC_PENDING     0x001000
#define PLIC_ENABLE      0x002000
#define PLIC_ENABLE_STRIDE 0x80
#define PLIC_CONTEXT     0x200000
#define PLIC_CONTEXT_STRIDE 0x1000
#define PLIC_PRIO_MASK   7u      /* 3 priority bits, like QEMU's virt */
#define PLIC_SRC_MASK    0xfffffffeu  /* source 0 does not exist */
#define PLIC_MAX_CTX     (2 * MAX_HARTS)
#define PLIC_STATE_VERSION 1

/* mip bits the contexts drive (the same as cpu/hart.h's MIP_MEIP/SEIP) */
#define PLIC_MIP_MEIP    (1ULL << 11)
#define PLIC_MIP_SEIP    (1ULL << 9)

struct plic {
	struct machine *m;
	unsigned nharts, nctx;
	pthread_mutex_t lock;
	uint32_t level;         /* input lines, bit per source */
	uint32_t in_service;    /* claimed, not completed */
	uint32_t priority[PLIC_SOURCES];
	uint32_t enable[PLIC_MAX_CTX];
	uint32_t threshold[PLIC_MAX_CTX];
	bool output[PLIC_MAX_CTX];  /* what the hart was last told */
};

static uint32_t plic_pending(const struct plic *p)
{
	return p->level & ~p->in_service & PLIC_SRC_MASK;
}

/* The best source context ctx may claim, or 0: highest priority above the
 * threshold, the lowest number among equals. */
static unsigned plic_best(const struct plic *p, unsigned ctx)
{
	uint32_t cand = plic_pending(p) & p->enable[ctx];
	unsigned best = 0;
	uint32_t best_prio = p->threshold[ctx];
	while (cand) {
		unsigned src = (unsigned)__builtin_ctz(cand);
		cand &= cand - 1;
		if (p->priority[src] > best_prio) {
			best = src;
			best_prio = p->priority[src];
		}
	}
	return best;
}

static void plic_drive(struct plic *p, unsigned ctx, bool level)
{
	uint64_t bit = (ctx & 1) ? PLIC_MIP_SEIP : PLIC_MIP_MEIP;
	p->output[ctx] = level;
	machine_hart_irq(p->m, ctx / 2, bit, level);
}

/* Recompute every context's output; tell the harts about changes only,
 * or all of them when `force` (after loading state). */
static void plic_update(struct plic *p, bool force)
{
	for (unsigned ctx = 0; ctx < p->nctx; ctx++) {
		bool level = plic_best(p, ctx) != 0;
		if (force || level != p->output[ctx])
			plic_drive(p, ctx, level);
	}
}

void plic_set_level(struct plic *p, unsigned irq, int level)
{
	if (!p || irq == 0 || irq >= PLIC_SOURCES)
		return;
	pthread_mutex_lock(&p->lock);
	uint32_t bit = 1u << irq;
	uint32_t old = p->level;
	p->level = level ? (old | bit) : (old & ~bit);
	if (p->level != old)
		plic_update(p, false);
	pthread_mutex_unlock(&p->lock);
}

static uint32_t plic_claim(struct plic *p, unsigned ctx)
{
	unsigned src = plic_best(p, ctx);
	if (src) {
		p->in_service |= 1u << src;
		plic_update(p, false);
	}
	return src;
}

/* A completion for a source the context has not enabled is ignored, as
 * the PLIC specification says. */
static void plic_complete(struct plic *p, unsigned ctx, uint32_t src)
{
	if (src == 0 || src >= PLIC_SOURCES || !(p->enable[ctx] & (1u << src)))
		return;
	p->in_service &= ~(1u << src);
	plic_update(p, false);
}

static uint32_t plic_read32(struct plic *p, uint64_t off)
{
	if (off < PLIC_PENDING)
		return off / 4 < PLIC_SOURCES ? p->priority[off / 4] : 0;
	if (off == PLIC_PENDING)
		return plic_pending(p);
	if (off >= PLIC_ENABLE && off < PLIC_CONTEXT) {
		uint64_t ctx = (off - PLIC_ENABLE) / PLIC_ENABLE_STRIDE;
		uint64_t word = (off - PLIC_ENABLE) % PLIC_ENABLE_STRIDE;
		return ctx < p->nctx && word == 0 ? p->enable[ctx] : 0;
	}
	if (off >= PLIC_CONTEXT) {
		uint64_t ctx = (off - PLIC_CONTEXT) / PLIC_CONTEXT_STRIDE;
		uint64_t reg = (off - PLIC_CONTEXT) % PLIC_CONTEXT_STRIDE;
		if (ctx >= p->nctx)
			return 0;
		if (reg == 0)
			return p->threshold[ctx];
		if (reg == 4)
			return plic_claim(p, (unsigned)ctx);
	}
	return 0;
}

static void plic_write32(struct plic *p, uint64_t off, uint32_t val)
{
	if (off < PLIC_PENDING) {
		unsigned src = (unsigned)(off / 4);
		if (src > 0 && src < PLIC_SOURCES) {
			p->priority[src] = val & PLIC_PRIO_MASK;
			plic_update(p, false);
		}
		return;
	}
	if (off >= PLIC_ENABLE && off < PLIC_CONTEXT) {
		uint64_t ctx = (off - PLIC_ENABLE) / PLIC_ENABLE_STRIDE;
		uint64_t word = (off - PLIC_ENABLE) % PLIC_ENABLE_STRIDE;
		if (ctx < p->nctx && word == 0) {
			p->enable[ctx] = val & PLIC_SRC_MASK;
			plic_update(p, false);
		}
		return;
	}
	if (off >= PLIC_CONTEXT) {
		uint64_t ctx = (off - PLIC_CONTEXT) / PLIC_CONTEXT_STRIDE;
		uint64_t reg = (off - PLIC_CONTEXT) % PLIC_CONTEXT_STRIDE;
		if (ctx >= p->nctx)
			return;
		if (reg == 0) {
			p->threshold[ctx] = val & PLIC_PRIO_MASK;
			plic_update(p, false);
		} else if (reg == 4) {
			plic_complete(p, (unsigned)ctx, val);
		}
	}
	/* the pending register is read-only */
}

/* Registers are 32 bits wide; an aligned 64-bit access is two of them. */
static uint64_t plic_read(void *dev, uint64_t off, unsigned size)
{
	struct plic *p = dev;
	uint64_t v = 0;
	if (off & 3)
		return 0;
	pthread_mutex_lock(&p->lock);
	if (size == 8 && !(off & 7))
		v = plic_read32(p, off) | (uint64_t)plic_read32(p, off + 4) << 32;
	else if (size == 4)
		v = plic_read32(p, off);
	pthread_mutex_unlock(&p->lock);
	return v;
}

static void plic_write(void *dev, uint64_t off, uint64_t val, unsigned size)
{
	struct plic *p = dev;
	if (off & 3)
		return;
	pthread_mutex_lock(&p->lock);
	if (size == 8 && !(off & 7)) {
		plic_write32(p, off, (uint32_t)val);
		plic_write32(p, off + 4, (uint32_t)(val >> 32));
	} else if (size == 4) {
		plic_write32(p, off, (uint32_t)val);
	}
	pthread_mutex_unlock(&p->lock);
}

/* ---- migration ----------------------------------------------------------- */

static void plic_save(void *dev, struct sbuf *out)
{
	struct plic *p = dev;
	pthread_mutex_lock(&p->lock);
	sbuf_put_u32(out, p->nctx);
	sbuf_put_u32(out, p->level);
	sbuf_put_u32(out, p->in_service);
	for (unsigned i = 0; i < PLIC_SOURCES; i++)
		sbuf_put_u32(out, p->priority[i]);
	for (unsigned c = 0; c < p->nctx; c++) {
		sbuf_put_u32(out, p->enable[c]);
		sbuf_put_u32(out, p->threshold[c]);
	}
	pthread_mutex_unlock(&p->lock);
}

static int plic_load(void *dev, struct sbuf *in, uint32_t version, const char **why)
{
	struct plic *p = dev;
	uint32_t prio[PLIC_SOURCES], enable[PLIC_MAX_CTX], threshold[PLIC_MAX_CTX];
	if (version != PLIC_STATE_VERSION) {
		*why = "PLIC state has an unknown version";
		return -1;
	}
	if (sbuf_get_u32(in) != p->nctx) {
		*why = "PLIC state is for another number of harts";
		return -1;
	}
	uint32_t level = sbuf_get_u32(in);
	uint32_t in_service = sbuf_get_u32(in);
	for (unsigned i = 0; i < PLIC_SOURCES; i++)
		prio[i] = sbuf_get_u32(in) & PLIC_PRIO_MASK;
	for (unsigned c = 0; c < p->nctx; c++) {
		enable[c] = sbuf_get_u32(in) & PLIC_SRC_MASK;
		threshold[c] = sbuf_get_u32(in) & PLIC_PRIO_MASK;
	}
	if (!sbuf_ok(in)) {
		*why = "PLIC state is truncated";
		return -1;
	}
	pthread_mutex_lock(&p->lock);
	p->level = level & PLIC_SRC_MASK;
	p->in_service = in_service & PLIC_SRC_MASK;
	memcpy(p->priority, prio, sizeof(prio));
	p->priority[0] = 0;
	memcpy(p->enable, enable, p->nctx * sizeof(enable[0]));
	memcpy(p->threshold, threshold, p->nctx * sizeof(threshold[0]));
	plic_update(p, true);
	pthread_mutex_unlock(&p->lock);
	return 0;
}

static void plic_free(void *dev)
{
	plic_destroy(dev);
}

static const struct mmio_ops plic_mmio_ops = { plic_read, plic_write, plic_free };

static const struct device_state_ops plic_state_ops = {
	.name = "plic",
	.version = PLIC_STATE_VERSION,
	.save = plic_save,
	.load = plic_load,
};

struct plic *plic_create(struct machine *m, unsigned nharts)
{
	if (nharts == 0 || nharts > MAX_HARTS)
		return NULL;
	struct plic *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->m = m;
	p->nharts = nharts;
	p->nctx = 2 * nharts;
	pthread_mutex_init(&p->lock, NULL);
	if (machine_add_mmio(m, PLIC_BASE, PLIC_SIZE, &plic_mmio_ops, p)) {
		fprintf(stderr, "ferry-vm: PLIC: its MMIO region overlaps another device\n");
		plic_destroy(p);
		return NULL;
	}
	machine_add_state(m, &plic_state_ops, p);
	return p;
}

void plic_destroy(struct plic *p)
{
	if (!p)
		return;
	pthread_mutex_destroy(&p->lock);
	free(p);
}
