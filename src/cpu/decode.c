/*
 * decode.c - decode once: a hart's decoded pages, the virtual-PC cache in
 * front of them, and the code map that drops decoded code when its page is
 * written (see internal.h for the scheme).
 *
 * A slot is decoded the first time control reaches it (OP_DECODE), so a
 * page costs nothing for the bytes it holds that are never run, and data
 * between functions is never mistaken for code. Operands are extracted
 * once: register numbers (a write to x0 goes to the sink x[32]), the
 * immediate sign-extended, the length. Instructions the executor does not
 * run itself keep their expanded bits for cpu_step (OP_INTERP).
 *
 * Per hart, so that decoding and dropping need no locks: each hart keeps
 * at most MAX_DPAGES pages (32 KiB each) and starts over when it has that
 * many.
 */
#include "cpu/internal.h"

#include "util/alloc.h"

#include <sched.h>
#include <stdlib.h>

#define MAX_DPAGES 1024

static inline uint32_t bits(uint32_t v, int hi, int lo)
{
	return (v >> lo) & ((1u << (hi - lo + 1)) - 1);
}

static int32_t imm_i(uint32_t i) { return (int32_t)i >> 20; }
static int32_t imm_s(uint32_t i)
{
	return (int32_t)(((int32_t)i >> 25) * 32) | (int32_t)((i >> 7) & 0x1f);
}
static int32_t imm_b(uint32_t i)
{
	return (int32_t)(((int32_t)i >> 31) * 4096) | (int32_t)(((i >> 7) & 1) << 11 |
	       ((i >> 25) & 0x3f) << 5 | ((i >> 8) & 0xf) << 1);
}
static int32_t imm_j(uint32_t i)
{
	return (int32_t)(((int32_t)i >> 31) * (1 << 20)) | (int32_t)(((i >> 12) & 0xff) << 12 |
	       ((i >> 20) & 1) << 11 | ((i >> 21) & 0x3ff) << 1);
}

/* The operation for a 32-bit (or expanded) instruction; OP_INTERP for
 * everything the executor leaves to cpu_step, including every illegal
 * encoding, so that cpu_step raises it exactly as the reference does. */
static uint8_t decode_op(uint32_t insn, int32_t *imm)
{
	uint32_t f3 = bits(insn, 14, 12), f7 = insn >> 25;
	switch (insn & 0x7f) {
	case 0x37: /* lui: addi from x0 */
		*imm = (int32_t)(insn & 0xfffff000);
		return OP_ADDI;
	case 0x17:
		*imm = (int32_t)(insn & 0xfffff000);
		return OP_AUIPC;
	case 0x6f:
		*imm = imm_j(insn);
		return OP_JAL;
	case 0x67:
		*imm = imm_i(insn);
		return f3 == 0 ? OP_JALR : OP_INTERP;
	case 0x63: {
		static const uint8_t ops[8] = { OP_BEQ, OP_BNE, OP_INTERP, OP_INTERP,
						OP_BLT, OP_BGE, OP_BLTU, OP_BGEU };
		*imm = imm_b(insn);
		return ops[f3];
	}
	case 0x03: {
		static const uint8_t ops[8] = { OP_LB, OP_LH, OP_LW, OP_LD,
						OP_LBU, OP_LHU, OP_LWU, OP_INTERP };
		*imm = imm_i(insn);
		return ops[f3];
	}
	case 0x23: {
		static const uint8_t ops[8] = { OP_SB, OP_SH, OP_SW, OP_SD,
						OP_INTERP, OP_INTERP, OP_INTERP, OP_INTERP };
		*imm = imm_s(insn);
		return ops[f3];
	}
	case 0x13:
		*imm = imm_i(insn);
		switch (f3) {
		case 0: return OP_ADDI;
		case 2: return OP_SLTI;
		case 3: return OP_SLTIU;
		case 4: return OP_XORI;
		case 6: return OP_ORI;
		case 7: return OP_ANDI;
		case 1:
			*imm &= 63;
			return (insn >> 26) == 0 ? OP_SLLI : OP_INTERP;
		case 5:
			*imm &= 63;
			if ((insn >> 26) == 0)
				return OP_SRLI;
			return (insn >> 26) == 0x10 ? OP_SRAI : OP_INTERP;
		}
		return OP_INTERP;
	case 0x1b:
		*imm = imm_i(insn);
		if (f3 == 0)
			return OP_ADDIW;
		*imm &= 31;
		if (f3 == 1 && f7 == 0)
			return OP_SLLIW;
		if (f3 == 5 && f7 == 0)
			return OP_SRLIW;
		if (f3 == 5 && f7 == 0x20)
			return OP_SRAIW;
		return OP_INTERP;
	case 0x33: {
		static const uint8_t base[8] = { OP_ADD, OP_SLL, OP_SLT, OP_SLTU,
						 OP_XOR, OP_SRL, OP_OR, OP_AND };
		static const uint8_t muldiv[8] = { OP_MUL, OP_MULH, OP_MULHSU, OP_MULHU,
						   OP_DIV, OP_DIVU, OP_REM, OP_REMU };
		if (f7 == 0)
			return base[f3];
		if (f7 == 1)
			return muldiv[f3];
		if (f7 == 0x20 && f3 == 0)
			return OP_SUB;
		if (f7 == 0x20 && f3 == 5)
			return OP_SRA;
		return OP_INTERP;
	}
	case 0x3b:
		if (f7 == 0) {
			if (f3 == 0) return OP_ADDW;
			if (f3 == 1) return OP_SLLW;
			if (f3 == 5) return OP_SRLW;
		} else if (f7 == 0x20) {
			if (f3 == 0) return OP_SUBW;
			if (f3 == 5) return OP_SRAW;
		} else if (f7 == 1) {
			switch (f3) {
			case 0: return OP_MULW;
			case 4: return OP_DIVW;
			case 5: return OP_DIVUW;
			case 6: return OP_REMW;
			case 7: return OP_REMUW;
			}
		}
		return OP_INTERP;
	case 0x0f:
		return f3 == 0 ? OP_FENCE : OP_INTERP;   /* fence.i ends the block */
	}
	return OP_INTERP;
}

static void decode_insn(struct dinsn *d, uint32_t insn, unsigned len)
{
	int32_t imm = 0;
	uint8_t op = decode_op(insn, &imm);
	uint32_t rd = bits(insn, 11, 7);
	*d = (struct dinsn){
		.op = op,
		/* decoded operations all write integer registers; x0 writes
		 * go to the sink. OP_INTERP keeps the instruction's bits. */
		.rd = (uint8_t)(rd == 0 && op != OP_INTERP ? 32 : rd),
		.rs1 = (uint8_t)bits(insn, 19, 15),
		.rs2 = (uint8_t)bits(insn, 24, 20),
		.len = (uint8_t)len,
		.imm = imm,
		.insn = insn,
	};
	if ((insn & 0x7f) == 0x37)      /* lui is addi from x0 */
		d->rs1 = 0;
}

void code_decode(struct dpage *dp, unsigned i)
{
	code_decode_at(dp->host, i, &dp->slot[i]);
}

void code_decode_at(const uint8_t *page, unsigned i, struct dinsn *d)
{
	unsigned off = i * 2;
	uint16_t lo;
	memcpy(&lo, page + off, 2);
	if ((lo & 3) != 3) {
		uint32_t insn = cpu_expand_rvc(lo);
		if (!insn)
			*d = (struct dinsn){ .op = OP_ILLEGAL, .len = 2, .insn = lo };
		else
			decode_insn(d, insn, 2);
		return;
	}
	if (off == PAGE_SIZE - 2) {     /* its upper half is on the next page */
		*d = (struct dinsn){ .op = OP_CROSS, .len = 4 };
		return;
	}
	uint32_t insn;
	memcpy(&insn, page + off, 4);
	decode_insn(d, insn, 4);
}

/* ---- the hart's decoded pages ------------------------------------------------ */

static void vpc_clear(struct hart *h)
{
	for (int c = 0; c < TLBCTX_COUNT; c++)
		for (unsigned i = 0; i < VPC_SIZE; i++)
			h->vpcs[c][i].vpn = TLB_NONE;
}

void code_cache_free(struct hart *h)
{
	vpc_clear(h);
	jit_reset(h);          /* its code hung from the slots just dropped */
	if (!h->dpages)
		return;
	uint64_t pages = h->bus->ram_size >> PAGE_SHIFT;
	for (uint64_t i = 0; i < pages && h->ndpages; i++) {
		if (h->dpages[i]) {
			free(h->dpages[i]);
			h->dpages[i] = NULL;
			h->ndpages--;
		}
	}
}

void hart_drop_code(struct hart *h)
{
	code_cache_free(h);
}

void hart_free_code(struct hart *h)
{
	code_cache_free(h);
	jit_free(h);
	free(h->dpages);
	h->dpages = NULL;
}

static void dpage_reset(struct dpage *dp, uint32_t word)
{
	for (unsigned i = 0; i < DPAGE_SLOTS; i++)
		dp->slot[i].op = OP_DECODE;
	dp->slot[DPAGE_SLOTS] = (struct dinsn){ .op = OP_PAGE_END };
	dp->word = word;
}

static struct dpage *dpage_get(struct hart *h, uint64_t pfn)
{
	struct dpage *dp = h->dpages[pfn];
	if (dp)
		return dp;
	if (h->ndpages >= MAX_DPAGES)
		code_cache_free(h);
	dp = xmalloc(sizeof(*dp), "decoded code");
	dp->pfn = pfn;
	dp->host = h->bus->ram + (pfn << PAGE_SHIFT);
	dpage_reset(dp, 0);       /* 0 is never a live word: those are odd */
	h->dpages[pfn] = dp;
	h->ndpages++;
	return dp;
}

/* Make page pfn a code page: from now on no hart holds a write TLB entry
 * for it, so every store to it comes through the slow path. Returns the
 * page's code-map word.
 *
 * The hart that flips the bit shoots the others' write entries down. A
 * hart that finds the bit set by another must not decode before that
 * shootdown is over, or a third hart's store through a write entry not
 * yet dropped could miss its decoded copy: *code_marking counts the
 * shootdowns under way (raised before the bit is flipped), and such a
 * hart waits until none is, serving its own flushes meanwhile so that two
 * harts never wait for each other. */
static uint32_t code_mark(struct hart *h, uint64_t pfn)
{
	const struct cpu_bus *b = h->bus;
	atomic_fetch_add(b->code_marking, 1);
	uint32_t w = code_word(b, pfn);
	while (!(w & 1)) {
		if (atomic_compare_exchange_weak(&b->code[pfn], &w, w + 1)) {
			w++;
			tlb_drop_writes_to(h, b->ram + (pfn << PAGE_SHIFT));
			if (b->nharts > 1)
				b->ops->sync_harts(b->ctx, REQ_WTLB_FLUSH, h, ~0ULL);
			break;
		}
	}
	atomic_fetch_sub(b->code_marking, 1);
	return w;
}

/* Wait until no hart is in the middle of marking a page (see code_mark). */
static void code_wait_marking(struct hart *h)
{
	while (atomic_load(h->bus->code_marking)) {
		hart_serve_flushes(h);
		sched_yield();
	}
}

static struct dpage *lookup_slow(struct hart *h, struct vpc_entry *v)
{
	const struct cpu_bus *b = h->bus;
	uint64_t pc = h->pc, vpn = pc >> PAGE_SHIFT;
	const uint8_t *host;
	struct tlb_entry *e = &h->tlb->x[vpn & (TLB_SIZE - 1)];
	if (e->vpn == vpn) {
		host = (const uint8_t *)(uintptr_t)((pc & ~0xfffULL) + e->addend);
	} else {
		uint64_t pa;
		if (!mmu_translate(h, pc, ACC_EXEC, &pa))
			return NULL;
		if (!bus_is_ram(b, pa)) {
			hart_trap(h, EXC_INSN_ACCESS, pc, false);
			return NULL;
		}
		host = bus_host(b, pa & ~0xfffULL);
	}
	uint64_t pfn = (uint64_t)(host - b->ram) >> PAGE_SHIFT;
	struct dpage *dp = dpage_get(h, pfn);
	uint32_t w = code_word(b, pfn);
	if (!(w & 1))
		w = code_mark(h, pfn);
	if (dp->word != w) {
		if (b->nharts > 1)
			code_wait_marking(h);
		dpage_reset(dp, w);
	}
	v->vpn = vpn;
	v->dp = dp;
	return dp;
}

struct dpage *code_lookup(struct hart *h)
{
	if (unlikely(h->jit_full))
		code_cache_free(h);
	uint64_t vpn = h->pc >> PAGE_SHIFT;
	struct vpc_entry *v = &h->vpc[vpn & (VPC_SIZE - 1)];
	if (likely(v->vpn == vpn)) {
		struct dpage *dp = v->dp;
		if (likely(dp->word == code_word(h->bus, dp->pfn)))
			return dp;
	}
	return lookup_slow(h, v);
}

/* ---- writes from outside the CPU --------------------------------------------- */

void cpu_code_written(const struct cpu_bus *b, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - b->ram_base;
	if (len == 0 || off >= b->ram_size)
		return;
	uint64_t last = off + len - 1;
	if (last >= b->ram_size)
		last = b->ram_size - 1;
	for (uint64_t pfn = off >> PAGE_SHIFT; pfn <= last >> PAGE_SHIFT; pfn++)
		code_page_written(b, pfn);
}
