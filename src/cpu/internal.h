/*
 * internal.h - what the CPU's own files share: the memory fast paths,
 * the reference interpreter's entry points (interp.c), the decoded-code
 * cache (decode.c) and the decoded executor (exec.c).
 *
 * Decoded code: each hart keeps, per physical page of RAM it has run code
 * from, a struct dpage of decoded instructions, one slot per halfword
 * (an instruction may start at any even offset), decoded lazily the first
 * time control reaches a slot. Slot 2048 is a sentinel that ends the page.
 * A hart finds the dpage for its pc through a small virtual-PC cache per
 * translation context (h->vpc), flushed with the TLB.
 *
 * Keeping decoded code right when memory changes (the code map): one
 * 32-bit word a RAM page, shared by all harts. Bit 0 set means some hart
 * may hold decoded instructions of that page, and then no hart holds a
 * write TLB entry for it, so every store to it takes the slow path
 * (mmu_translate), which clears the bit and bumps the word; so does a
 * device's DMA (mem_dirty). A dpage remembers the word it was decoded
 * under and is thrown away when the word differs. This is the dirty log's
 * trick again: a page only becomes writable at full speed by leaving the
 * set the slow path watches.
 */
#ifndef FERRY_CPU_INTERNAL_H
#define FERRY_CPU_INTERNAL_H

#include "cpu/hart.h"
#include "cpu/bus.h"

#include <string.h>

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- memory ------------------------------------------------------------- */

bool cpu_load_slow(struct hart *h, uint64_t va, void *out, unsigned size);
bool cpu_store_slow(struct hart *h, uint64_t va, const void *in, unsigned size);

static inline bool load(struct hart *h, uint64_t va, void *out, unsigned size)
{
	struct tlb_entry *e = &h->tlb->r[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)];
	if (likely(e->vpn == va >> PAGE_SHIFT && (va & 0xfff) <= 0x1000 - size)) {
		memcpy(out, (void *)(uintptr_t)(va + e->addend), size);
		return true;
	}
	return cpu_load_slow(h, va, out, size);
}

static inline bool store(struct hart *h, uint64_t va, const void *in, unsigned size)
{
	struct tlb_entry *e = &h->tlb->w[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)];
	if (likely(e->vpn == va >> PAGE_SHIFT && (va & 0xfff) <= 0x1000 - size)) {
		memcpy((void *)(uintptr_t)(va + e->addend), in, size);
		return true;
	}
	return cpu_store_slow(h, va, in, size);
}

/* ---- the reference interpreter (interp.c) ------------------------------- */

enum {
	STEP_NEXT,      /* retired; pc advanced to the next instruction */
	STEP_END,       /* retired; pc, mode or translation may have changed */
	STEP_TRAP,      /* not retired: the hart is at its trap handler */
};
uint32_t cpu_expand_rvc(uint32_t c);          /* 0 when illegal */
int cpu_step(struct hart *h, uint32_t insn, unsigned len);
int cpu_fetch_step(struct hart *h);
void cpu_run_reference(struct hart *h, uint64_t budget);

/* ---- decoded code (decode.c) -------------------------------------------- */

/* The decoded operations: the common instructions the executor runs
 * itself; INTERP hands an instruction to cpu_step. */
#define DOPS(X) \
	X(DECODE) X(PAGE_END) X(CROSS) X(INTERP) X(ILLEGAL) X(FENCE) X(JIT) \
	X(ADDI) X(SLTI) X(SLTIU) X(XORI) X(ORI) X(ANDI) X(SLLI) X(SRLI) X(SRAI) \
	X(ADDIW) X(SLLIW) X(SRLIW) X(SRAIW) X(AUIPC) \
	X(JAL) X(JALR) X(BEQ) X(BNE) X(BLT) X(BGE) X(BLTU) X(BGEU) \
	X(LB) X(LH) X(LW) X(LD) X(LBU) X(LHU) X(LWU) X(SB) X(SH) X(SW) X(SD) \
	X(ADD) X(SUB) X(SLL) X(SLT) X(SLTU) X(XOR) X(SRL) X(SRA) X(OR) X(AND) \
	X(ADDW) X(SUBW) X(SLLW) X(SRLW) X(SRAW) \
	X(MUL) X(MULH) X(MULHSU) X(MULHU) X(DIV) X(DIVU) X(REM) X(REMU) \
	X(MULW) X(DIVW) X(DIVUW) X(REMW) X(REMUW)

#define DOP_ENUM(name) OP_##name,
enum dop { DOPS(DOP_ENUM) OP_COUNT };

struct dinsn {
	uint8_t op;                 /* enum dop; OP_DECODE (0): not decoded yet */
	uint8_t rd;                 /* 32 for x0, so decoded code never writes x0 */
	uint8_t rs1, rs2;
	uint8_t len;                /* 2 or 4 */
	uint8_t pad[3];
	int32_t imm;
	uint32_t insn;              /* the bits, compressed ones expanded */
};

#define DPAGE_SLOTS (PAGE_SIZE / 2)

struct dpage {
	uint32_t word;              /* the code-map word it was decoded under */
	uint64_t pfn;
	const uint8_t *host;        /* the page's bytes */
	struct dinsn slot[DPAGE_SLOTS + 1];
};

/* The dpage holding h->pc, ready to run, or NULL when fetching it trapped
 * (the hart is then at its handler) or the instruction there must go
 * through cpu_fetch_step (a 32-bit instruction across a page end). */
struct dpage *code_lookup(struct hart *h);
/* Decode slot i of dp in place; or the instruction at halfword i of a
 * page's bytes into *d. */
void code_decode(struct dpage *dp, unsigned i);
void code_decode_at(const uint8_t *page, unsigned i, struct dinsn *d);
void code_cache_free(struct hart *h);

/* ---- the code map --------------------------------------------------------- */

static inline uint32_t code_word(const struct cpu_bus *b, uint64_t pfn)
{
	return atomic_load_explicit(&b->code[pfn], memory_order_acquire);
}

/* A store or DMA is about to change page pfn: drop its decoded code.
 * Returns true when there was some. */
static inline bool code_page_written(const struct cpu_bus *b, uint64_t pfn)
{
	uint32_t w = atomic_load_explicit(&b->code[pfn], memory_order_relaxed);
	while (w & 1) {
		if (atomic_compare_exchange_weak(&b->code[pfn], &w, w + 1))
			return true;
	}
	return false;
}

/* ---- the JIT (jit.c), FERRY_CPU=jit ---------------------------------------- */

/* Compile the run of ALU instructions at slot i into one OP_JIT slot,
 * if there is a run. */
void jit_compile(struct hart *h, struct dpage *dp, unsigned i);
/* Where a compiled run's body starts: past its prologue, where other runs
 * jump in. */
#define JIT_PROLOGUE 12
/* A run's view of the burst, when it chains into other runs on its page:
 * instructions the burst may still run, the pc of the run it is in, and
 * the instructions retired by the runs it left. */
struct jit_io {
	int64_t left;
	uint64_t pc;
	uint64_t chained;
};
void jit_reset(struct hart *h);       /* forget all compiled code */
/* Empty the jump-target cache (with the TLB, and when code is dropped). */
void jtc_clear(struct hart *h);
/* The executor is about to run the compiled run of page dp at pc, whose
 * body is code: remember it in the jump-target cache. */
static inline void jtc_fill(struct hart *h, uint64_t pc, const struct dpage *dp,
			    const uint8_t *code)
{
	struct jtc_entry *t = &h->jtc[(pc >> 1) & (JTC_SIZE - 1)];
	if (likely(t->pc == pc && t->code == code))
		return;
	t->pc = pc;
	t->word = &h->bus->code[dp->pfn];
	t->expect = dp->word;
	t->code = code;
	h->jtc_filled |= (uint8_t)(1u << ((h->jtc - h->jtcs[0]) / JTC_SIZE));
}
void jit_free(struct hart *h);

/* ---- the decoded executor (exec.c) ---------------------------------------- */

void cpu_run_decoded(struct hart *h, uint64_t budget);

#endif
