/*
 * interp.c - the reference interpreter: fetch, decode and execute one
 * instruction at a time, and the memory slow paths everyone shares.
 *
 * cpu_step() executes one instruction given its bits (compressed ones
 * expanded to their 32-bit equivalents by cpu_expand_rvc, so there is one
 * execute switch). The decoded executor (exec.c) runs the common
 * instructions itself and hands the rest here (system, AMOs, F/D, FENCE.I);
 * cpu_run_reference() runs everything through here (FERRY_CPU=interp), as
 * the reference the decoded executor must match.
 *
 * Fetch reads through a one-page fetch cache (fetch_vpn/fetch_addend).
 * Loads and stores hit the software TLB inline; everything else (page
 * walks, MMIO, page-crossing accesses, faults) goes to the slow paths.
 * A faulting access has already redirected the hart to its trap handler
 * when it returns false: the instruction simply stops.
 */
#include "cpu/hart.h"
#include "cpu/fpu.h"
#include "cpu/internal.h"

#include <string.h>
#include <time.h>

/* ---- slow paths ------------------------------------------------------- */

static bool access_split(struct hart *h, uint64_t va, void *buf, unsigned size,
			 enum access acc);

bool cpu_load_slow(struct hart *h, uint64_t va, void *out, unsigned size)
{
	uint64_t pa;
	if ((va & 0xfff) + size > 0x1000)
		return access_split(h, va, out, size, ACC_READ);
	if (!mmu_translate(h, va, ACC_READ, &pa))
		return false;
	const struct cpu_bus *b = h->bus;
	if (bus_is_ram(b, pa)) {
		memcpy(out, bus_host(b, pa), size);
		return true;
	}
	uint64_t v;
	if (!b->ops->mmio_read(b->ctx, pa, size, &v)) {
		hart_trap(h, EXC_LOAD_ACCESS, va, false);
		return false;
	}
	memcpy(out, &v, size);    /* host is little-endian like the guest */
	return true;
}

bool cpu_store_slow(struct hart *h, uint64_t va, const void *in, unsigned size)
{
	uint64_t pa;
	if ((va & 0xfff) + size > 0x1000)
		return access_split(h, va, (void *)in, size, ACC_WRITE);
	if (!mmu_translate(h, va, ACC_WRITE, &pa))
		return false;
	const struct cpu_bus *b = h->bus;
	if (bus_is_ram(b, pa)) {
		bus_mark_dirty(b, bus_pfn(b, pa));
		memcpy(bus_host(b, pa), in, size);
		return true;
	}
	uint64_t v = 0;
	memcpy(&v, in, size);
	if (!b->ops->mmio_write(b->ctx, pa, size, v)) {
		hart_trap(h, EXC_STORE_ACCESS, va, false);
		return false;
	}
	return true;
}

/* A misaligned access that crosses a page: translate both pages first, so
 * a fault leaves memory untouched, then move the bytes one at a time. */
static bool access_split(struct hart *h, uint64_t va, void *buf, unsigned size,
			 enum access acc)
{
	uint64_t pa;
	uint64_t second = (va | 0xfff) + 1;
	if (!mmu_translate(h, va, acc, &pa) || !mmu_translate(h, second, acc, &pa))
		return false;
	uint8_t *b = buf;
	for (unsigned i = 0; i < size; i++) {
		bool ok = acc == ACC_READ ? cpu_load_slow(h, va + i, b + i, 1)
					  : cpu_store_slow(h, va + i, b + i, 1);
		if (!ok)
			return false;
	}
	return true;
}

/* ---- fast paths ------------------------------------------------------- */

/* Host pointer for an atomic access, which must be naturally aligned and
 * in RAM. */
static void *amo_ptr(struct hart *h, uint64_t va, unsigned size, enum access acc)
{
	if (va & (size - 1)) {
		hart_trap(h, acc == ACC_READ ? EXC_LOAD_MISALIGNED : EXC_STORE_MISALIGNED,
			  va, false);
		return NULL;
	}
	struct tlb_entry *t = acc == ACC_READ ? h->tlb->r : h->tlb->w;
	struct tlb_entry *e = &t[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)];
	if (likely(e->vpn == va >> PAGE_SHIFT))
		return (void *)(uintptr_t)(va + e->addend);
	uint64_t pa;
	if (!mmu_translate(h, va, acc, &pa))
		return NULL;
	if (!bus_is_ram(h->bus, pa)) {
		hart_trap(h, acc == ACC_READ ? EXC_LOAD_ACCESS : EXC_STORE_ACCESS, va, false);
		return NULL;
	}
	if (acc == ACC_WRITE)
		bus_mark_dirty(h->bus, bus_pfn(h->bus, pa));
	return bus_host(h->bus, pa);
}

/* ---- fetch ------------------------------------------------------------ */

static bool fetch_slow(struct hart *h, uint32_t *insn)
{
	uint64_t pc = h->pc, pa;
	if (!mmu_translate(h, pc, ACC_EXEC, &pa))
		return false;
	if (!bus_is_ram(h->bus, pa)) {
		hart_trap(h, EXC_INSN_ACCESS, pc, false);
		return false;
	}
	uint8_t *host = bus_host(h->bus, pa);
	h->fetch_vpn = pc >> PAGE_SHIFT;
	h->fetch_addend = (uintptr_t)host - pc;
	uint16_t lo;
	memcpy(&lo, host, 2);
	if ((lo & 3) != 3) {
		*insn = lo;
		return true;
	}
	if ((pc & 0xfff) <= 0xffc) {
		memcpy(insn, host, 4);
		return true;
	}
	/* a 32-bit instruction straddling two pages */
	uint64_t pa2;
	if (!mmu_translate(h, pc + 2, ACC_EXEC, &pa2))
		return false;
	if (!bus_is_ram(h->bus, pa2)) {
		hart_trap(h, EXC_INSN_ACCESS, pc + 2, false);
		return false;
	}
	uint16_t hi;
	memcpy(&hi, bus_host(h->bus, pa2), 2);
	*insn = lo | (uint32_t)hi << 16;
	h->fetch_vpn = TLB_NONE;
	return true;
}

static inline bool fetch(struct hart *h, uint32_t *insn)
{
	uint64_t pc = h->pc;
	if (likely(pc >> PAGE_SHIFT == h->fetch_vpn && (pc & 0xfff) <= 0xffc)) {
		memcpy(insn, (void *)(uintptr_t)(pc + h->fetch_addend), 4);
		if ((*insn & 3) != 3)
			*insn &= 0xffff;
		return true;
	}
	return fetch_slow(h, insn);
}

/* ---- compressed instructions ------------------------------------------ */

static inline uint32_t bits(uint32_t v, int hi, int lo)
{
	return (v >> lo) & ((1u << (hi - lo + 1)) - 1);
}

/* 32-bit encoders for the expansion */
static uint32_t enc_r(uint32_t op, uint32_t rd, uint32_t f3, uint32_t rs1, uint32_t rs2, uint32_t f7)
{
	return op | rd << 7 | f3 << 12 | rs1 << 15 | rs2 << 20 | f7 << 25;
}
static uint32_t enc_i(uint32_t op, uint32_t rd, uint32_t f3, uint32_t rs1, int32_t imm)
{
	return op | rd << 7 | f3 << 12 | rs1 << 15 | ((uint32_t)imm & 0xfff) << 20;
}
static uint32_t enc_s(uint32_t op, uint32_t f3, uint32_t rs1, uint32_t rs2, int32_t imm)
{
	uint32_t u = (uint32_t)imm;
	return op | (u & 0x1f) << 7 | f3 << 12 | rs1 << 15 | rs2 << 20 | ((u >> 5) & 0x7f) << 25;
}
static uint32_t enc_b(uint32_t f3, uint32_t rs1, uint32_t rs2, int32_t imm)
{
	uint32_t u = (uint32_t)imm;
	return 0x63 | ((u >> 11) & 1) << 7 | ((u >> 1) & 0xf) << 8 | f3 << 12 | rs1 << 15 |
	       rs2 << 20 | ((u >> 5) & 0x3f) << 25 | ((u >> 12) & 1) << 31;
}
static uint32_t enc_j(uint32_t rd, int32_t imm)
{
	uint32_t u = (uint32_t)imm;
	return 0x6f | rd << 7 | ((u >> 12) & 0xff) << 12 | ((u >> 11) & 1) << 20 |
	       ((u >> 1) & 0x3ff) << 21 | ((u >> 20) & 1) << 31;
}
static int32_t sext(uint32_t v, int bitsn)
{
	return (int32_t)(v << (32 - bitsn)) >> (32 - bitsn);
}

/* Expand a 16-bit instruction; 0 means illegal. */
uint32_t cpu_expand_rvc(uint32_t c)
{
	uint32_t op = c & 3, f3 = bits(c, 15, 13);
	uint32_t rd = bits(c, 11, 7), rs2 = bits(c, 6, 2);
	uint32_t rdp = 8 + bits(c, 4, 2), rs1p = 8 + bits(c, 9, 7);
	int32_t imm;

	switch (op << 3 | f3) {
	case 0x00: /* c.addi4spn */
		imm = bits(c, 10, 7) << 6 | bits(c, 12, 11) << 4 | bits(c, 5, 5) << 3 |
		      bits(c, 6, 6) << 2;
		return imm ? enc_i(0x13, rdp, 0, 2, imm) : 0;
	case 0x01: /* c.fld */
		return enc_i(0x07, rdp, 3, rs1p, bits(c, 12, 10) << 3 | bits(c, 6, 5) << 6);
	case 0x02: /* c.lw */
		return enc_i(0x03, rdp, 2, rs1p,
			     bits(c, 12, 10) << 3 | bits(c, 6, 6) << 2 | bits(c, 5, 5) << 6);
	case 0x03: /* c.ld */
		return enc_i(0x03, rdp, 3, rs1p, bits(c, 12, 10) << 3 | bits(c, 6, 5) << 6);
	case 0x05: /* c.fsd */
		return enc_s(0x27, 3, rs1p, rdp, bits(c, 12, 10) << 3 | bits(c, 6, 5) << 6);
	case 0x06: /* c.sw */
		return enc_s(0x23, 2, rs1p, rdp,
			     bits(c, 12, 10) << 3 | bits(c, 6, 6) << 2 | bits(c, 5, 5) << 6);
	case 0x07: /* c.sd */
		return enc_s(0x23, 3, rs1p, rdp, bits(c, 12, 10) << 3 | bits(c, 6, 5) << 6);

	case 0x08: /* c.addi / c.nop */
		return enc_i(0x13, rd, 0, rd, sext(bits(c, 12, 12) << 5 | rs2, 6));
	case 0x09: /* c.addiw */
		return rd ? enc_i(0x1b, rd, 0, rd, sext(bits(c, 12, 12) << 5 | rs2, 6)) : 0;
	case 0x0a: /* c.li */
		return enc_i(0x13, rd, 0, 0, sext(bits(c, 12, 12) << 5 | rs2, 6));
	case 0x0b:
		if (rd == 2) { /* c.addi16sp */
			imm = sext(bits(c, 12, 12) << 9 | bits(c, 4, 3) << 7 | bits(c, 5, 5) << 6 |
				   bits(c, 2, 2) << 5 | bits(c, 6, 6) << 4, 10);
			return imm ? enc_i(0x13, 2, 0, 2, imm) : 0;
		}
		imm = sext(bits(c, 12, 12) << 17 | rs2 << 12, 18); /* c.lui */
		return imm ? (0x37 | rd << 7 | ((uint32_t)imm & 0xfffff000)) : 0;
	case 0x0c: {
		uint32_t f2 = bits(c, 11, 10);
		uint32_t sh = bits(c, 12, 12) << 5 | rs2;
		if (f2 == 0) /* c.srli */
			return enc_i(0x13, rs1p, 5, rs1p, (int32_t)sh);
		if (f2 == 1) /* c.srai */
			return enc_i(0x13, rs1p, 5, rs1p, (int32_t)(sh | 0x400));
		if (f2 == 2) /* c.andi */
			return enc_i(0x13, rs1p, 7, rs1p, sext(sh, 6));
		uint32_t r2 = 8 + bits(c, 4, 2);
		switch (bits(c, 12, 12) << 2 | bits(c, 6, 5)) {
		case 0: return enc_r(0x33, rs1p, 0, rs1p, r2, 0x20); /* c.sub */
		case 1: return enc_r(0x33, rs1p, 4, rs1p, r2, 0);    /* c.xor */
		case 2: return enc_r(0x33, rs1p, 6, rs1p, r2, 0);    /* c.or */
		case 3: return enc_r(0x33, rs1p, 7, rs1p, r2, 0);    /* c.and */
		case 4: return enc_r(0x3b, rs1p, 0, rs1p, r2, 0x20); /* c.subw */
		case 5: return enc_r(0x3b, rs1p, 0, rs1p, r2, 0);    /* c.addw */
		}
		return 0;
	}
	case 0x0d: /* c.j */
		imm = sext(bits(c, 12, 12) << 11 | bits(c, 8, 8) << 10 | bits(c, 10, 9) << 8 |
			   bits(c, 6, 6) << 7 | bits(c, 7, 7) << 6 | bits(c, 2, 2) << 5 |
			   bits(c, 11, 11) << 4 | bits(c, 5, 3) << 1, 12);
		return enc_j(0, imm);
	case 0x0e: /* c.beqz */
	case 0x0f: /* c.bnez */
		imm = sext(bits(c, 12, 12) << 8 | bits(c, 6, 5) << 6 | bits(c, 2, 2) << 5 |
			   bits(c, 11, 10) << 3 | bits(c, 4, 3) << 1, 9);
		return enc_b(f3 == 6 ? 0 : 1, rs1p, 0, imm);

	case 0x10: /* c.slli */
		return enc_i(0x13, rd, 1, rd, (int32_t)(bits(c, 12, 12) << 5 | rs2));
	case 0x11: /* c.fldsp */
		return enc_i(0x07, rd, 3, 2, bits(c, 12, 12) << 5 | bits(c, 6, 5) << 3 |
				     bits(c, 4, 2) << 6);
	case 0x12: /* c.lwsp */
		return rd ? enc_i(0x03, rd, 2, 2, bits(c, 12, 12) << 5 | bits(c, 6, 4) << 2 |
					  bits(c, 3, 2) << 6) : 0;
	case 0x13: /* c.ldsp */
		return rd ? enc_i(0x03, rd, 3, 2, bits(c, 12, 12) << 5 | bits(c, 6, 5) << 3 |
					  bits(c, 4, 2) << 6) : 0;
	case 0x14:
		if (!bits(c, 12, 12)) {
			if (!rs2) /* c.jr */
				return rd ? enc_i(0x67, 0, 0, rd, 0) : 0;
			return enc_r(0x33, rd, 0, 0, rs2, 0); /* c.mv */
		}
		if (!rs2) {
			if (!rd) /* c.ebreak */
				return 0x00100073;
			return enc_i(0x67, 1, 0, rd, 0); /* c.jalr */
		}
		return enc_r(0x33, rd, 0, rd, rs2, 0); /* c.add */
	case 0x15: /* c.fsdsp */
		return enc_s(0x27, 3, 2, rs2, bits(c, 12, 10) << 3 | bits(c, 9, 7) << 6);
	case 0x16: /* c.swsp */
		return enc_s(0x23, 2, 2, rs2, bits(c, 12, 9) << 2 | bits(c, 8, 7) << 6);
	case 0x17: /* c.sdsp */
		return enc_s(0x23, 3, 2, rs2, bits(c, 12, 10) << 3 | bits(c, 9, 7) << 6);
	}
	return 0;
}

/* ---- execute ------------------------------------------------------------ */

static inline int64_t imm_i(uint32_t i) { return (int32_t)i >> 20; }
static inline int64_t imm_s(uint32_t i)
{
	return (int64_t)(((int32_t)i >> 25) * 32) | ((i >> 7) & 0x1f);
}
static inline int64_t imm_b(uint32_t i)
{
	return (int64_t)(((int32_t)i >> 31) * 4096) | ((i >> 7) & 1) << 11 |
	       ((i >> 25) & 0x3f) << 5 | ((i >> 8) & 0xf) << 1;
}
static inline int64_t imm_j(uint32_t i)
{
	return (int64_t)(((int32_t)i >> 31) * (1 << 20)) | ((i >> 12) & 0xff) << 12 |
	       ((i >> 20) & 1) << 11 | ((i >> 21) & 0x3ff) << 1;
}

static void illegal(struct hart *h, uint32_t insn)
{
	hart_trap(h, EXC_ILLEGAL, insn, false);
}

static uint64_t mulh(int64_t a, int64_t b)
{
	return (uint64_t)(((__int128)a * b) >> 64);
}
static uint64_t mulhu(uint64_t a, uint64_t b)
{
	return (uint64_t)(((unsigned __int128)a * b) >> 64);
}
static uint64_t mulhsu(int64_t a, uint64_t b)
{
	return (uint64_t)(((__int128)a * (unsigned __int128)b) >> 64);
}

static uint64_t exec_op(uint32_t f3, uint32_t f7, uint64_t a, uint64_t b, bool *ok)
{
	if (f7 == 1) {
		switch (f3) {
		case 0: return a * b;
		case 1: return mulh((int64_t)a, (int64_t)b);
		case 2: return mulhsu((int64_t)a, b);
		case 3: return mulhu(a, b);
		case 4:
			if (b == 0) return ~0ULL;
			if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return a;
			return (uint64_t)((int64_t)a / (int64_t)b);
		case 5: return b ? a / b : ~0ULL;
		case 6:
			if (b == 0) return a;
			if ((int64_t)a == INT64_MIN && (int64_t)b == -1) return 0;
			return (uint64_t)((int64_t)a % (int64_t)b);
		case 7: return b ? a % b : a;
		}
	}
	if (f7 == 0) {
		switch (f3) {
		case 0: return a + b;
		case 1: return a << (b & 63);
		case 2: return (int64_t)a < (int64_t)b;
		case 3: return a < b;
		case 4: return a ^ b;
		case 5: return a >> (b & 63);
		case 6: return a | b;
		case 7: return a & b;
		}
	}
	if (f7 == 0x20) {
		if (f3 == 0) return a - b;
		if (f3 == 5) return (uint64_t)((int64_t)a >> (b & 63));
	}
	*ok = false;
	return 0;
}

static uint64_t exec_op32(uint32_t f3, uint32_t f7, uint64_t a64, uint64_t b64, bool *ok)
{
	uint32_t a = (uint32_t)a64, b = (uint32_t)b64;
	int32_t r;
	if (f7 == 1) {
		switch (f3) {
		case 0: r = (int32_t)(a * b); break;
		case 4:
			if (b == 0) r = -1;
			else if ((int32_t)a == INT32_MIN && (int32_t)b == -1) r = INT32_MIN;
			else r = (int32_t)a / (int32_t)b;
			break;
		case 5: r = (int32_t)(b ? a / b : ~0u); break;
		case 6:
			if (b == 0) r = (int32_t)a;
			else if ((int32_t)a == INT32_MIN && (int32_t)b == -1) r = 0;
			else r = (int32_t)a % (int32_t)b;
			break;
		case 7: r = (int32_t)(b ? a % b : a); break;
		default: *ok = false; return 0;
		}
		return (uint64_t)(int64_t)r;
	}
	if (f7 == 0 && f3 == 0) r = (int32_t)(a + b);
	else if (f7 == 0x20 && f3 == 0) r = (int32_t)(a - b);
	else if (f7 == 0 && f3 == 1) r = (int32_t)(a << (b & 31));
	else if (f7 == 0 && f3 == 5) r = (int32_t)(a >> (b & 31));
	else if (f7 == 0x20 && f3 == 5) r = (int32_t)a >> (b & 31);
	else { *ok = false; return 0; }
	return (uint64_t)(int64_t)r;
}

static bool exec_load(struct hart *h, uint32_t insn, uint32_t rd, uint64_t va)
{
	uint32_t f3 = bits(insn, 14, 12);
	union { uint8_t b; uint16_t hw; uint32_t w; uint64_t d; } v;
	static const unsigned size[8] = {1, 2, 4, 8, 1, 2, 4, 0};
	if (!size[f3]) {
		illegal(h, insn);
		return false;
	}
	if (!load(h, va, &v, size[f3]))
		return false;
	switch (f3) {
	case 0: h->x[rd] = (uint64_t)(int8_t)v.b; break;
	case 1: h->x[rd] = (uint64_t)(int16_t)v.hw; break;
	case 2: h->x[rd] = (uint64_t)(int32_t)v.w; break;
	case 3: h->x[rd] = v.d; break;
	case 4: h->x[rd] = v.b; break;
	case 5: h->x[rd] = v.hw; break;
	case 6: h->x[rd] = v.w; break;
	}
	return true;
}

static bool exec_store(struct hart *h, uint32_t insn, uint64_t va, uint64_t val)
{
	uint32_t f3 = bits(insn, 14, 12);
	if (f3 > 3) {
		illegal(h, insn);
		return false;
	}
	return store(h, va, &val, 1u << f3);
}

static inline bool fs_off(struct hart *h)
{
	return (h->mstatus & MSTATUS_FS) == 0;
}
static inline void fs_dirty(struct hart *h)
{
	h->mstatus |= MSTATUS_FS;
}

static bool exec_fp_load(struct hart *h, uint32_t insn, uint32_t rd, uint64_t va)
{
	uint32_t f3 = bits(insn, 14, 12);
	if (fs_off(h) || (f3 != 2 && f3 != 3)) {
		illegal(h, insn);
		return false;
	}
	if (f3 == 2) {
		uint32_t w;
		if (!load(h, va, &w, 4))
			return false;
		h->f[rd] = 0xffffffff00000000ULL | w;
	} else if (!load(h, va, &h->f[rd], 8)) {
		return false;
	}
	fs_dirty(h);
	return true;
}

static bool exec_fp_store(struct hart *h, uint32_t insn, uint32_t rs2, uint64_t va)
{
	uint32_t f3 = bits(insn, 14, 12);
	if (fs_off(h) || (f3 != 2 && f3 != 3)) {
		illegal(h, insn);
		return false;
	}
	return store(h, va, &h->f[rs2], f3 == 2 ? 4 : 8);
}

static bool exec_fp(struct hart *h, uint32_t insn)
{
	if (fs_off(h)) {
		illegal(h, insn);
		return false;
	}
	struct fpu_regs r = { h->f, h->x, &h->fflags, h->frm };
	if (fpu_execute(&r, insn) < 0) {
		illegal(h, insn);
		return false;
	}
	fs_dirty(h);
	return true;
}

static uint64_t amo_compute(uint32_t f5, uint64_t old, uint64_t src, bool word)
{
	if (word) {
		int32_t a = (int32_t)old, b = (int32_t)src;
		uint32_t ua = (uint32_t)old, ub = (uint32_t)src;
		switch (f5) {
		case 0x00: return (uint32_t)(ua + ub);
		case 0x01: return ub;
		case 0x04: return ua ^ ub;
		case 0x08: return ua | ub;
		case 0x0c: return ua & ub;
		case 0x10: return (uint32_t)(a < b ? a : b);
		case 0x14: return (uint32_t)(a > b ? a : b);
		case 0x18: return ua < ub ? ua : ub;
		case 0x1c: return ua > ub ? ua : ub;
		}
		return 0;
	}
	switch (f5) {
	case 0x00: return old + src;
	case 0x01: return src;
	case 0x04: return old ^ src;
	case 0x08: return old | src;
	case 0x0c: return old & src;
	case 0x10: return (int64_t)old < (int64_t)src ? old : src;
	case 0x14: return (int64_t)old > (int64_t)src ? old : src;
	case 0x18: return old < src ? old : src;
	case 0x1c: return old > src ? old : src;
	}
	return 0;
}

static bool exec_amo(struct hart *h, uint32_t insn, uint32_t rd, uint64_t a, uint64_t b)
{
	uint32_t f3 = bits(insn, 14, 12), f5 = insn >> 27;
	bool word = f3 == 2;
	unsigned size = word ? 4 : 8;
	if (f3 != 2 && f3 != 3) {
		illegal(h, insn);
		return false;
	}
	switch (f5) {
	case 0x02: { /* LR */
		if (bits(insn, 24, 20)) {
			illegal(h, insn);
			return false;
		}
		void *p = amo_ptr(h, a, size, ACC_READ);
		if (!p)
			return false;
		uint64_t v = word ? (uint64_t)(int64_t)__atomic_load_n((int32_t *)p, __ATOMIC_ACQUIRE)
				  : __atomic_load_n((uint64_t *)p, __ATOMIC_ACQUIRE);
		h->lr_addr = a;
		h->lr_value = v;
		h->lr_valid = true;
		h->x[rd] = v;
		return true;
	}
	case 0x03: { /* SC */
		void *p = amo_ptr(h, a, size, ACC_WRITE);
		if (!p)
			return false;
		bool ok = false;
		if (h->lr_valid && h->lr_addr == a) {
			if (word) {
				uint32_t expect = (uint32_t)h->lr_value;
				ok = __atomic_compare_exchange_n((uint32_t *)p, &expect, (uint32_t)b,
								 false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
			} else {
				uint64_t expect = h->lr_value;
				ok = __atomic_compare_exchange_n((uint64_t *)p, &expect, b, false,
								 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
			}
		}
		h->lr_valid = false;
		h->x[rd] = !ok;
		return true;
	}
	case 0x00: case 0x01: case 0x04: case 0x08: case 0x0c:
	case 0x10: case 0x14: case 0x18: case 0x1c: {
		void *p = amo_ptr(h, a, size, ACC_WRITE);
		if (!p)
			return false;
		uint64_t old;
		if (word) {
			uint32_t o = __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED);
			while (!__atomic_compare_exchange_n((uint32_t *)p, &o,
					(uint32_t)amo_compute(f5, o, b, true), true,
					__ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
				;
			old = (uint64_t)(int64_t)(int32_t)o;
		} else if (f5 == 0x00) {
			old = __atomic_fetch_add((uint64_t *)p, b, __ATOMIC_ACQ_REL);
		} else if (f5 == 0x01) {
			old = __atomic_exchange_n((uint64_t *)p, b, __ATOMIC_ACQ_REL);
		} else {
			uint64_t o = __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED);
			while (!__atomic_compare_exchange_n((uint64_t *)p, &o,
					amo_compute(f5, o, b, false), true,
					__ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
				;
			old = o;
		}
		h->x[rd] = old;
		return true;
	}
	}
	illegal(h, insn);
	return false;
}

/* CSR instructions. Returns false if the instruction trapped. */
static bool exec_csr(struct hart *h, uint32_t insn, uint32_t rd, uint32_t rs1)
{
	uint32_t f3 = bits(insn, 14, 12), csr = insn >> 20;
	uint64_t src = (f3 & 4) ? rs1 : h->x[rs1];
	uint64_t old = 0;
	bool write = (f3 & 3) == 1 || rs1 != 0;
	bool read = (f3 & 3) != 1 || rd != 0;
	if (write && (csr >> 10) == 3) {
		illegal(h, insn);
		return false;
	}
	if (read && !csr_read(h, csr, &old)) {
		illegal(h, insn);
		return false;
	}
	if (!read && !csr_read(h, csr, &old)) { /* existence and privilege */
		illegal(h, insn);
		return false;
	}
	if (write) {
		uint64_t val = (f3 & 3) == 1 ? src : (f3 & 3) == 2 ? old | src : old & ~src;
		if (!csr_write(h, csr, val)) {
			illegal(h, insn);
			return false;
		}
	}
	h->x[rd] = old;
	return true;
}

/* SYSTEM opcode other than CSRs. Returns true to end the burst. */
static bool exec_system(struct hart *h, uint32_t insn, uint64_t *next_pc)
{
	uint32_t rs1 = bits(insn, 19, 15), rd = bits(insn, 11, 7);
	if (bits(insn, 14, 12) != 0) {
		exec_csr(h, insn, rd, rs1);
		return false;
	}
	if ((insn >> 25) == 0x09 && rd == 0) { /* sfence.vma */
		if (h->priv == PRV_U || (h->priv == PRV_S && (h->mstatus & MSTATUS_TVM))) {
			illegal(h, insn);
			return true;
		}
		tlb_flush_all(h);
		return false;
	}
	switch (insn) {
	case 0x00000073: /* ecall */
		if (h->priv == PRV_S) {
			h->bus->ops->ecall(h->bus->ctx, h);
			return true;
		}
		hart_trap(h, h->priv == PRV_U ? EXC_ECALL_U : EXC_ECALL_M, 0, false);
		return true;
	case 0x00100073: /* ebreak */
		hart_trap(h, EXC_BREAKPOINT, h->pc, false);
		return true;
	case 0x10200073: /* sret */
		if (h->priv == PRV_U || (h->priv == PRV_S && (h->mstatus & MSTATUS_TSR))) {
			illegal(h, insn);
			return true;
		}
		hart_sret(h);
		return true;
	case 0x30200073: /* mret */
		if (h->priv != PRV_M) {
			illegal(h, insn);
			return true;
		}
		hart_mret(h);
		return true;
	case 0x10500073: /* wfi */
		if (h->priv == PRV_U || (h->priv == PRV_S && (h->mstatus & MSTATUS_TW))) {
			illegal(h, insn);
			return true;
		}
		h->pc = *next_pc;
		h->wfi = true;
		hart_beat(h);
		return true;
	}
	illegal(h, insn);
	return true;
}
/* Execute one instruction at h->pc: insn holds its bits, compressed ones
 * already expanded, len its length in bytes (2 or 4). */
int cpu_step(struct hart *h, uint32_t insn, unsigned len)
{
	uint64_t pc = h->pc;
	uint64_t next = pc + len;
	uint32_t rd = bits(insn, 11, 7), rs1 = bits(insn, 19, 15), rs2 = bits(insn, 24, 20);
	uint64_t *x = h->x;
	bool ok = true;

	switch (insn & 0x7f) {
	case 0x37: /* lui */
		x[rd] = (uint64_t)(int64_t)(int32_t)(insn & 0xfffff000);
		break;
	case 0x17: /* auipc */
		x[rd] = pc + (uint64_t)(int64_t)(int32_t)(insn & 0xfffff000);
		break;
	case 0x6f: /* jal */
		x[rd] = next;
		next = pc + (uint64_t)imm_j(insn);
		break;
	case 0x67: { /* jalr */
		uint64_t t = (x[rs1] + (uint64_t)imm_i(insn)) & ~1ULL;
		if (bits(insn, 14, 12)) {
			illegal(h, insn);
			goto trapped;
		}
		x[rd] = next;
		next = t;
		break;
	}
	case 0x63: { /* branches */
		uint64_t a = x[rs1], b = x[rs2];
		bool take;
		switch (bits(insn, 14, 12)) {
		case 0: take = a == b; break;
		case 1: take = a != b; break;
		case 4: take = (int64_t)a < (int64_t)b; break;
		case 5: take = (int64_t)a >= (int64_t)b; break;
		case 6: take = a < b; break;
		case 7: take = a >= b; break;
		default: illegal(h, insn); goto trapped;
		}
		if (take)
			next = pc + (uint64_t)imm_b(insn);
		break;
	}
	case 0x03:
		if (!exec_load(h, insn, rd, x[rs1] + (uint64_t)imm_i(insn)))
			goto trapped;
		break;
	case 0x23:
		if (!exec_store(h, insn, x[rs1] + (uint64_t)imm_s(insn), x[rs2]))
			goto trapped;
		break;
	case 0x13: { /* op-imm */
		uint32_t f3 = bits(insn, 14, 12);
		uint64_t a = x[rs1], imm = (uint64_t)imm_i(insn);
		switch (f3) {
		case 0: x[rd] = a + imm; break;
		case 2: x[rd] = (int64_t)a < (int64_t)imm; break;
		case 3: x[rd] = a < imm; break;
		case 4: x[rd] = a ^ imm; break;
		case 6: x[rd] = a | imm; break;
		case 7: x[rd] = a & imm; break;
		case 1:
			if (insn >> 26) { illegal(h, insn); goto trapped; }
			x[rd] = a << (imm & 63);
			break;
		case 5:
			if ((insn >> 26) == 0)
				x[rd] = a >> (imm & 63);
			else if ((insn >> 26) == 0x10)
				x[rd] = (uint64_t)((int64_t)a >> (imm & 63));
			else { illegal(h, insn); goto trapped; }
			break;
		}
		break;
	}
	case 0x1b: { /* op-imm-32 */
		uint32_t f3 = bits(insn, 14, 12), a = (uint32_t)x[rs1];
		uint32_t sh = rs2, f7 = insn >> 25;
		if (f3 == 0)
			x[rd] = (uint64_t)(int64_t)(int32_t)(a + (uint32_t)imm_i(insn));
		else if (f3 == 1 && f7 == 0)
			x[rd] = (uint64_t)(int64_t)(int32_t)(a << sh);
		else if (f3 == 5 && f7 == 0)
			x[rd] = (uint64_t)(int64_t)(int32_t)(a >> sh);
		else if (f3 == 5 && f7 == 0x20)
			x[rd] = (uint64_t)(int64_t)((int32_t)a >> sh);
		else { illegal(h, insn); goto trapped; }
		break;
	}
	case 0x33: {
		uint64_t r = exec_op(bits(insn, 14, 12), insn >> 25, x[rs1], x[rs2], &ok);
		if (!ok) { illegal(h, insn); goto trapped; }
		x[rd] = r;
		break;
	}
	case 0x3b: {
		uint64_t r = exec_op32(bits(insn, 14, 12), insn >> 25, x[rs1], x[rs2], &ok);
		if (!ok) { illegal(h, insn); goto trapped; }
		x[rd] = r;
		break;
	}
	case 0x0f: /* fence, fence.i */
		if (bits(insn, 14, 12) > 1) { illegal(h, insn); goto trapped; }
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (bits(insn, 14, 12) == 1) {
			/* a store into decoded code has dropped it already
			 * (decode.c): end the block so the next fetch looks again */
			h->pc = next;
			return STEP_END;
		}
		break;
	case 0x2f:
		if (!exec_amo(h, insn, rd, x[rs1], x[rs2]))
			goto trapped;
		break;
	case 0x07:
		if (!exec_fp_load(h, insn, rd, x[rs1] + (uint64_t)imm_i(insn)))
			goto trapped;
		break;
	case 0x27:
		if (!exec_fp_store(h, insn, rs2, x[rs1] + (uint64_t)imm_s(insn)))
			goto trapped;
		break;
	case 0x53: case 0x43: case 0x47: case 0x4b: case 0x4f:
		if (!exec_fp(h, insn))
			goto trapped;
		break;
	case 0x73: {
		uint64_t before = h->pc;
		exec_system(h, insn, &next);
		x[0] = 0;
		/* trapped, returned or sleeping: pc already set (a system
		 * instruction that traps counts as retired, as it always has) */
		if (h->pc == before && !h->wfi)
			h->pc = next;
		return STEP_END;
	}
	default:
		illegal(h, insn);
		goto trapped;
	}
	x[0] = 0;
	h->pc = next;
	return STEP_NEXT;
trapped:
	x[0] = 0;
	return STEP_TRAP;
}

/* Fetch and execute one instruction. */
int cpu_fetch_step(struct hart *h)
{
	uint32_t insn;
	if (unlikely(!fetch(h, &insn)))
		return STEP_TRAP;
	if ((insn & 3) != 3) {
		uint32_t c = insn;
		insn = cpu_expand_rvc(c);
		if (unlikely(!insn)) {
			illegal(h, c);
			return STEP_TRAP;
		}
		return cpu_step(h, insn, 2);
	}
	return cpu_step(h, insn, 4);
}

/* The reference interpreter: up to budget instructions, one at a time;
 * the burst ends early after an instruction that changes what the hart
 * loop must look at (a system instruction, FENCE.I). */
void cpu_run_reference(struct hart *h, uint64_t budget)
{
	for (uint64_t tries = 0; tries < budget; tries++) {
		int r = cpu_fetch_step(h);
		if (r != STEP_TRAP)
			h->instret++;
		if (r == STEP_END)
			break;
	}
}
