/*
 * csr.c - control and status registers, traps, interrupts, xRET.
 *
 * The machine has no firmware: the monitor plays M mode. At reset it sets
 * up what OpenSBI would leave behind (exceptions and S-level interrupts
 * delegated to S mode, counters enabled), and the guest kernel starts in
 * S mode. M-mode CSRs still exist and behave per the privileged spec, so
 * M-mode code (bare-metal tests) runs too.
 *
 * sstatus, sie and sip are views of mstatus, mie and mip. mip is atomic
 * because the PLIC, IPIs and the timer set bits from other threads.
 */
#include "cpu/hart.h"
#include "cpu/bus.h"
#include "util/sbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SSTATUS_MASK (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_UBE | MSTATUS_SPP | \
		      MSTATUS_FS | MSTATUS_XS | MSTATUS_SUM | MSTATUS_MXR | \
		      MSTATUS_UXL | MSTATUS_SD)
#define SSTATUS_WRITABLE (MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_FS | \
			  MSTATUS_SUM | MSTATUS_MXR)
#define MSTATUS_WRITABLE (SSTATUS_WRITABLE | MSTATUS_MIE | MSTATUS_MPIE | \
			  MSTATUS_MPP | MSTATUS_MPRV | MSTATUS_TVM | MSTATUS_TW | \
			  MSTATUS_TSR)
#define S_INTERRUPTS (MIP_SSIP | MIP_STIP | MIP_SEIP)
#define ALL_INTERRUPTS (S_INTERRUPTS | MIP_MSIP | MIP_MTIP | MIP_MEIP)

/* misa: RV64 with A, C, D, F, I, M, S, U */
#define MISA_VALUE ((2ULL << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | \
		    (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20))

void hart_reset_csrs(struct hart *h)
{
	h->priv = PRV_M;
	h->misa = MISA_VALUE;
	h->mstatus = (2ULL << 32) | (2ULL << 34);   /* UXL = SXL = 64 */
	/* what firmware leaves: every exception but ecalls from S/M to S,
	 * S interrupts to S, counters readable from S and U */
	h->medeleg = 0xb1ff;
	h->mideleg = S_INTERRUPTS;
	h->mcounteren = 7;
	h->scounteren = 7;
	h->timecmp = ~0ULL;
	h->mtimecmp = ~0ULL;
	h->satp = 0;
	hart_update_tlb_context(h);
}

uint64_t hart_read_time(struct hart *h)
{
	return h->bus->ops->time(h->bus->ctx);
}

/* Pick the TLB set for the current effective mode. */
void hart_update_tlb_context(struct hart *h)
{
	int ctx;
	if (h->priv == PRV_M)
		ctx = TLBCTX_M;
	else if (h->priv == PRV_U)
		ctx = TLBCTX_U;
	else
		ctx = (h->mstatus & MSTATUS_SUM) ? TLBCTX_S_SUM : TLBCTX_S;
	h->tlb = &h->tlbs[ctx];
	h->vpc = h->vpcs[ctx];
	h->jtc = h->jtcs[ctx];
	h->fetch_vpn = TLB_NONE;
}

static uint64_t mstatus_read(struct hart *h)
{
	uint64_t v = h->mstatus;
	if ((v & MSTATUS_FS) == MSTATUS_FS)
		v |= MSTATUS_SD;
	return v;
}

static void mstatus_write(struct hart *h, uint64_t val, uint64_t mask)
{
	uint64_t old = h->mstatus;
	uint64_t v = (old & ~mask) | (val & mask);
	if (((v & MSTATUS_MPP) >> 11) == 2)   /* MPP is WARL: no H mode */
		v = (v & ~MSTATUS_MPP) | (old & MSTATUS_MPP);
	h->mstatus = v & ~MSTATUS_SD;
	if ((old ^ v) & (MSTATUS_MXR | MSTATUS_MPRV | MSTATUS_MPP))
		tlb_flush_all(h);
	if ((old ^ v) & MSTATUS_SUM)
		hart_update_tlb_context(h);
}

/* Counters are readable below M mode only if mcounteren (and, for U,
 * scounteren) allow it. */
static bool counter_allowed(struct hart *h, unsigned csr)
{
	uint64_t bit = 1ULL << (csr & 31);
	if (h->priv < PRV_M && !(h->mcounteren & bit))
		return false;
	if (h->priv < PRV_S && !(h->scounteren & bit))
		return false;
	return true;
}

static bool fp_allowed(struct hart *h)
{
	return (h->mstatus & MSTATUS_FS) != 0;
}

bool csr_read(struct hart *h, unsigned csr, uint64_t *val)
{
	if (h->priv < (int)((csr >> 8) & 3))
		return false;
	switch (csr) {
	case 0x001: if (!fp_allowed(h)) return false; *val = h->fflags; return true;
	case 0x002: if (!fp_allowed(h)) return false; *val = h->frm; return true;
	case 0x003: if (!fp_allowed(h)) return false;
		*val = h->frm << 5 | h->fflags; return true;
	case 0xc00: case 0xc02:
		if (!counter_allowed(h, csr)) return false;
		*val = h->instret; return true;
	case 0xc01:
		if (!counter_allowed(h, csr)) return false;
		*val = hart_read_time(h); return true;

	case 0x100: *val = mstatus_read(h) & SSTATUS_MASK; return true;
	case 0x104: *val = h->mie & h->mideleg; return true;
	case 0x105: *val = h->stvec; return true;
	case 0x106: *val = h->scounteren; return true;
	case 0x10a: *val = h->senvcfg; return true;
	case 0x140: *val = h->sscratch; return true;
	case 0x141: *val = h->sepc; return true;
	case 0x142: *val = h->scause; return true;
	case 0x143: *val = h->stval; return true;
	case 0x144: *val = atomic_load(&h->mip) & h->mideleg; return true;
	case 0x180:
		if (h->priv == PRV_S && (h->mstatus & MSTATUS_TVM)) return false;
		*val = h->satp; return true;

	case 0x300: *val = mstatus_read(h); return true;
	case 0x301: *val = h->misa; return true;
	case 0x302: *val = h->medeleg; return true;
	case 0x303: *val = h->mideleg; return true;
	case 0x304: *val = h->mie; return true;
	case 0x305: *val = h->mtvec; return true;
	case 0x306: *val = h->mcounteren; return true;
	case 0x30a: *val = h->menvcfg; return true;
	case 0x320: *val = h->mcountinhibit; return true;
	case 0x340: *val = h->mscratch; return true;
	case 0x341: *val = h->mepc; return true;
	case 0x342: *val = h->mcause; return true;
	case 0x343: *val = h->mtval; return true;
	case 0x344: *val = atomic_load(&h->mip); return true;
	case 0xb00: case 0xb02: *val = h->instret; return true;
	case 0xf11: case 0xf12: case 0xf13: case 0xf15: *val = 0; return true;
	case 0xf14: *val = h->id; return true;
	}
	/* hpmcounter3..31: implemented as constant zero */
	if (csr >= 0xc03 && csr <= 0xc1f) {
		if (!counter_allowed(h, csr)) return false;
		*val = 0;
		return true;
	}
	if ((csr >= 0xb03 && csr <= 0xb1f) || (csr >= 0x323 && csr <= 0x33f) ||
	    (csr >= 0x3a0 && csr <= 0x3ef)) {   /* mhpm*, pmpcfg/pmpaddr: zero */
		*val = 0;
		return true;
	}
	return false;
}

bool csr_write(struct hart *h, unsigned csr, uint64_t val)
{
	if (h->priv < (int)((csr >> 8) & 3))
		return false;
	switch (csr) {
	case 0x001: if (!fp_allowed(h)) return false;
		h->fflags = val & 0x1f; h->mstatus |= MSTATUS_FS; return true;
	case 0x002: if (!fp_allowed(h)) return false;
		h->frm = val & 7; h->mstatus |= MSTATUS_FS; return true;
	case 0x003: if (!fp_allowed(h)) return false;
		h->fflags = val & 0x1f; h->frm = (val >> 5) & 7;
		h->mstatus |= MSTATUS_FS; return true;

	case 0x100: mstatus_write(h, val, SSTATUS_WRITABLE); return true;
	case 0x104: h->mie = (h->mie & ~h->mideleg) | (val & h->mideleg); return true;
	case 0x105: h->stvec = val & ~2ULL; return true;
	case 0x106: h->scounteren = val & 0xffffffff; return true;
	case 0x10a: h->senvcfg = 0; return true;
	case 0x140: h->sscratch = val; return true;
	case 0x141: h->sepc = val & ~1ULL; return true;
	case 0x142: h->scause = val; return true;
	case 0x143: h->stval = val; return true;
	case 0x144: {
		uint64_t mask = MIP_SSIP & h->mideleg;
		if (val & mask)
			atomic_fetch_or(&h->mip, mask);
		else
			atomic_fetch_and(&h->mip, ~mask);
		return true;
	}
	case 0x180: {
		if (h->priv == PRV_S && (h->mstatus & MSTATUS_TVM)) return false;
		uint64_t mode = val >> 60;
		if (mode != 0 && mode != 8 && mode != 9)
			return true;    /* WARL: unsupported modes leave satp alone */
		/* no ASID bits: Linux sees ASIDLEN = 0 */
		h->satp = (mode << 60) | (val & ((1ULL << 44) - 1));
		tlb_flush_all(h);
		return true;
	}

	case 0x300: mstatus_write(h, val, MSTATUS_WRITABLE); return true;
	case 0x301: return true;        /* misa is read-only here */
	case 0x302: h->medeleg = val & 0xb3ff; return true;
	case 0x303: h->mideleg = val & S_INTERRUPTS; return true;
	case 0x304: h->mie = val & ALL_INTERRUPTS; return true;
	case 0x305: h->mtvec = val & ~2ULL; return true;
	case 0x306: h->mcounteren = val & 0xffffffff; return true;
	case 0x30a: h->menvcfg = 0; return true;
	case 0x320: h->mcountinhibit = val & 0xfffffffd; return true;
	case 0x340: h->mscratch = val; return true;
	case 0x341: h->mepc = val & ~1ULL; return true;
	case 0x342: h->mcause = val; return true;
	case 0x343: h->mtval = val; return true;
	case 0x344: {
		uint64_t mask = MIP_SSIP | MIP_STIP;
		uint64_t old = atomic_load(&h->mip);
		while (!atomic_compare_exchange_weak(&h->mip, &old, (old & ~mask) | (val & mask)))
			;
		return true;
	}
	case 0xb00: case 0xb02: h->instret = val; return true;
	}
	if ((csr >= 0xb03 && csr <= 0xb1f) || (csr >= 0x323 && csr <= 0x33f) ||
	    (csr >= 0x3a0 && csr <= 0x3ef))
		return true;
	return false;
}

/* FERRY_TRACE_TRAPS=1 in the environment prints every trap (bring-up aid). */
static int trace_traps = -1;

void hart_trap(struct hart *h, uint64_t cause, uint64_t tval, bool interrupt)
{
	if (trace_traps < 0)
		trace_traps = getenv("FERRY_TRACE_TRAPS") != NULL;
	if (trace_traps)
		fprintf(stderr, "trap hart %u: %s %llu at pc %#llx tval %#llx priv %d satp %#llx\n",
			h->id, interrupt ? "interrupt" : "exception",
			(unsigned long long)cause, (unsigned long long)h->pc,
			(unsigned long long)tval, h->priv, (unsigned long long)h->satp);
	uint64_t deleg = interrupt ? h->mideleg : h->medeleg;
	uint64_t code = cause | (interrupt ? 1ULL << 63 : 0);
	h->lr_valid = false;
	if (h->priv <= PRV_S && ((deleg >> cause) & 1)) {
		h->sepc = h->pc;
		h->scause = code;
		h->stval = tval;
		uint64_t s = h->mstatus & ~(MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SIE);
		if (h->mstatus & MSTATUS_SIE)
			s |= MSTATUS_SPIE;
		if (h->priv == PRV_S)
			s |= MSTATUS_SPP;
		h->mstatus = s;
		h->priv = PRV_S;
		h->pc = (h->stvec & ~3ULL) + ((interrupt && (h->stvec & 1)) ? 4 * cause : 0);
	} else {
		h->mepc = h->pc;
		h->mcause = code;
		h->mtval = tval;
		uint64_t s = h->mstatus & ~(MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_MIE);
		if (h->mstatus & MSTATUS_MIE)
			s |= MSTATUS_MPIE;
		s |= (uint64_t)h->priv << 11;
		h->mstatus = s;
		h->priv = PRV_M;
		h->pc = (h->mtvec & ~3ULL) + ((interrupt && (h->mtvec & 1)) ? 4 * cause : 0);
	}
	hart_update_tlb_context(h);
}

/* Interrupt priority per the privileged spec: MEI, MSI, MTI, SEI, SSI, STI. */
static const unsigned irq_order[] = { 11, 3, 7, 9, 1, 5 };

bool hart_check_interrupts(struct hart *h)
{
	uint64_t pending = atomic_load_explicit(&h->mip, memory_order_relaxed) & h->mie;
	if (!pending)
		return false;
	uint64_t m_enabled = 0, s_enabled = 0;
	if (h->priv < PRV_M || (h->mstatus & MSTATUS_MIE))
		m_enabled = pending & ~h->mideleg;
	if (h->priv < PRV_S || (h->priv == PRV_S && (h->mstatus & MSTATUS_SIE)))
		s_enabled = pending & h->mideleg;
	uint64_t take = m_enabled ? m_enabled : s_enabled;
	if (!take)
		return false;
	for (unsigned i = 0; i < sizeof(irq_order) / sizeof(irq_order[0]); i++) {
		if (take & (1ULL << irq_order[i])) {
			h->wfi = false;
			hart_trap(h, irq_order[i], 0, true);
			return true;
		}
	}
	return false;
}

void hart_sret(struct hart *h)
{
	uint64_t s = h->mstatus;
	int prev = (s & MSTATUS_SPP) ? PRV_S : PRV_U;
	s &= ~(MSTATUS_SIE | MSTATUS_SPP);
	if (s & MSTATUS_SPIE)
		s |= MSTATUS_SIE;
	s |= MSTATUS_SPIE;
	if (prev != PRV_M)
		s &= ~MSTATUS_MPRV;
	h->mstatus = s;
	h->priv = prev;
	h->pc = h->sepc;
	if (prev == PRV_U)
		hart_beat(h);
	hart_update_tlb_context(h);
}

void hart_mret(struct hart *h)
{
	uint64_t s = h->mstatus;
	int prev = (int)((s & MSTATUS_MPP) >> 11);
	s &= ~(MSTATUS_MIE | MSTATUS_MPP);
	if (s & MSTATUS_MPIE)
		s |= MSTATUS_MIE;
	s |= MSTATUS_MPIE;
	if (prev != PRV_M)
		s &= ~MSTATUS_MPRV;
	h->mstatus = s;
	h->priv = prev;
	h->pc = h->mepc;
	if (prev == PRV_U)
		hart_beat(h);
	tlb_flush_all(h);     /* MPRV may have changed */
	hart_update_tlb_context(h);
}

/* ---- migration state ------------------------------------------------------ */

void hart_save(struct hart *h, struct sbuf *out)
{
	sbuf_put_u64(out, h->pc);
	for (int i = 0; i < 32; i++)
		sbuf_put_u64(out, h->x[i]);
	for (int i = 0; i < 32; i++)
		sbuf_put_u64(out, h->f[i]);
	sbuf_put_u32(out, h->fflags);
	sbuf_put_u32(out, h->frm);
	sbuf_put_u8(out, (uint8_t)h->priv);
	uint64_t csrs[] = {
		h->mstatus, h->medeleg, h->mideleg, h->mie, atomic_load(&h->mip),
		h->mtvec, h->mepc, h->mcause, h->mtval, h->mscratch, h->mcounteren,
		h->stvec, h->sepc, h->scause, h->stval, h->sscratch, h->satp,
		h->scounteren, h->mcountinhibit, h->instret, h->timecmp, h->mtimecmp,
	};
	for (size_t i = 0; i < sizeof(csrs) / sizeof(csrs[0]); i++)
		sbuf_put_u64(out, csrs[i]);
	sbuf_put_u8(out, h->wfi);
	sbuf_put_u32(out, (uint32_t)atomic_load(&h->hsm));
	sbuf_put_u64(out, h->start_addr);
	sbuf_put_u64(out, h->start_opaque);
}

int hart_load(struct hart *h, struct sbuf *in, uint32_t version, const char **why)
{
	if (version != HART_STATE_VERSION) {
		*why = "unsupported CPU state version";
		return -1;
	}
	h->pc = sbuf_get_u64(in);
	for (int i = 0; i < 32; i++)
		h->x[i] = sbuf_get_u64(in);
	h->x[0] = 0;
	for (int i = 0; i < 32; i++)
		h->f[i] = sbuf_get_u64(in);
	h->fflags = sbuf_get_u32(in) & 0x1f;
	h->frm = sbuf_get_u32(in) & 7;
	int priv = sbuf_get_u8(in);
	uint64_t *dst[] = {
		&h->mstatus, &h->medeleg, &h->mideleg, &h->mie, NULL,
		&h->mtvec, &h->mepc, &h->mcause, &h->mtval, &h->mscratch, &h->mcounteren,
		&h->stvec, &h->sepc, &h->scause, &h->stval, &h->sscratch, &h->satp,
		&h->scounteren, &h->mcountinhibit, &h->instret, &h->timecmp, &h->mtimecmp,
	};
	uint64_t mip = 0;
	for (size_t i = 0; i < sizeof(dst) / sizeof(dst[0]); i++) {
		uint64_t v = sbuf_get_u64(in);
		if (dst[i])
			*dst[i] = v;
		else
			mip = v;
	}
	h->wfi = sbuf_get_u8(in) != 0;
	uint32_t hsm = sbuf_get_u32(in);
	h->start_addr = sbuf_get_u64(in);
	h->start_opaque = sbuf_get_u64(in);
	if (!sbuf_done(in)) {
		*why = "CPU state has the wrong length";
		return -1;
	}
	if ((priv != PRV_U && priv != PRV_S && priv != PRV_M) || hsm > HSM_STOP_PENDING) {
		*why = "CPU state holds an invalid privilege mode or HSM state";
		return -1;
	}
	h->priv = priv;
	atomic_store(&h->mip, mip & ALL_INTERRUPTS);
	atomic_store(&h->hsm, (int)hsm);
	h->lr_valid = false;
	tlb_flush_all(h);
	hart_drop_code(h);    /* run the bytes this RAM holds now */
	hart_update_tlb_context(h);
	return 0;
}
