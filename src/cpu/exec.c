/*
 * exec.c - the decoded executor: runs a burst of guest code from the
 * decoded pages (decode.c).
 *
 * Within a page, control moves from slot to slot without looking anything
 * up: the pc is never stored while running, it is derived from the slot's
 * place in the page (PC()), and a branch or jump whose target lies on the
 * same page simply picks another slot (block chaining within a page).
 * Leaving the page (a jump elsewhere, falling off its end onto the
 * sentinel, a 32-bit instruction across its end) goes back to code_lookup
 * through the virtual-PC cache.
 *
 * Exactness:
 * - Instructions retired are counted in a local and added to instret at
 *   every exit and before anything that can read or write it (OP_INTERP:
 *   CSRs), so a trap inside a block counts exactly the instructions before
 *   it.
 * - Everything that can trap sets h->pc first, only on its slow path, so
 *   the trap sees the faulting instruction's pc (sepc) and its address
 *   (stval) from the same code the reference interpreter uses.
 * - A store that drops decoded code (h->code_written, set by mmu.c) ends
 *   the block after the store, so the next instruction is fetched afresh:
 *   self-modifying code runs the bytes it wrote.
 * - The burst ends after any system instruction (a CSR write may enable
 *   an interrupt, WFI sleeps, xRET changes mode), at the budget, and when
 *   another thread posts a request (pause, shootdown, a raised interrupt:
 *   the one word h->requests); both are checked at every block end (a
 *   taken branch or jump) and whenever control leaves a page. Interrupts are taken between bursts by
 *   the hart loop, always at an instruction boundary.
 */
#include "cpu/internal.h"

/* Dispatch: a switch on the decoded operation, or, built with
 * -DFERRY_THREADED_DISPATCH, threaded code (computed goto: every operation
 * ends in its own indirect jump). On the AMD EPYC this was measured on,
 * threaded dispatch used 3% more CPU than the switch (bench/README.md):
 * its indirect-branch predictor does as well on the one shared jump, so
 * the switch is the default. */
#if defined(__GNUC__) && defined(FERRY_THREADED_DISPATCH)
#define THREADED 1
#endif

static inline uint64_t mulh(int64_t a, int64_t b)
{
	return (uint64_t)(((__int128)a * b) >> 64);
}
static inline uint64_t mulhu(uint64_t a, uint64_t b)
{
	return (uint64_t)(((unsigned __int128)a * b) >> 64);
}
static inline uint64_t mulhsu(int64_t a, uint64_t b)
{
	return (uint64_t)(((__int128)a * (unsigned __int128)b) >> 64);
}
static inline uint64_t sext32(uint64_t v)
{
	return (uint64_t)(int64_t)(int32_t)v;
}

void cpu_run_decoded(struct hart *h, uint64_t budget)
{
	uint64_t *const x = h->x;
	uint64_t n = 0;          /* retired in this burst */
	uint64_t counted = 0;    /* of which already added to instret */
	uint64_t lookups = 0;

#ifdef THREADED
#define DOP_LABEL(name) &&L_##name,
	static const void *const labels[OP_COUNT] = { DOPS(DOP_LABEL) };
#define OP(name) L_##name:
#define DISPATCH() goto *labels[e->op]
#else
#define OP(name) case OP_##name:
#define DISPATCH() goto dispatch
#endif
#define PC() (vbase + ((uint64_t)(e - s) << 1))
#define NEXT() do { n++; e += e->len >> 1; DISPATCH(); } while (0)
#define COUNT() do { h->instret += n - counted; counted = n; } while (0)
	/* a taken branch or jump to t, the end of a block: stay on the page
	 * unless the budget is spent or another thread posted a request */
#define JUMP(target) do { \
		uint64_t t_ = (target); \
		n++; \
		if (likely(((t_ ^ vbase) >> PAGE_SHIFT) == 0 && n < budget && \
			   !atomic_load_explicit(&h->requests, memory_order_relaxed))) { \
			e = &s[(t_ & (PAGE_SIZE - 1)) >> 1]; \
			DISPATCH(); \
		} \
		h->pc = t_; \
		goto next_block; \
	} while (0)
#define ALU(name, expr) OP(name) { x[e->rd] = (expr); NEXT(); }
#define BRANCH(name, cond) OP(name) { if (cond) JUMP(PC() + (int64_t)e->imm); NEXT(); }
#define LOAD(name, T, conv) OP(name) { \
		uint64_t va = x[e->rs1] + (uint64_t)(int64_t)e->imm; \
		struct tlb_entry *te = &tlb->r[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)]; \
		T v; \
		if (likely(te->vpn == va >> PAGE_SHIFT && (va & 0xfff) <= PAGE_SIZE - sizeof(T))) { \
			memcpy(&v, (void *)(uintptr_t)(va + te->addend), sizeof(T)); \
		} else { \
			h->pc = PC(); \
			if (!cpu_load_slow(h, va, &v, sizeof(T))) \
				goto next_block; \
		} \
		x[e->rd] = conv v; \
		NEXT(); \
	}
#define STORE(name, T) OP(name) { \
		uint64_t va = x[e->rs1] + (uint64_t)(int64_t)e->imm; \
		struct tlb_entry *te = &tlb->w[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)]; \
		T v = (T)x[e->rs2]; \
		if (likely(te->vpn == va >> PAGE_SHIFT && (va & 0xfff) <= PAGE_SIZE - sizeof(T))) { \
			memcpy((void *)(uintptr_t)(va + te->addend), &v, sizeof(T)); \
		} else { \
			h->pc = PC(); \
			if (!cpu_store_slow(h, va, &v, sizeof(T))) \
				goto next_block; \
			if (unlikely(h->code_written)) { \
				h->code_written = false; \
				n++; \
				h->pc += e->len; \
				goto next_block; \
			} \
		} \
		NEXT(); \
	}

	while (n < budget && lookups++ < budget) {
		if (unlikely(atomic_load_explicit(&h->requests, memory_order_relaxed)))
			break;
		struct dpage *dp = code_lookup(h);
		if (unlikely(!dp))
			continue;          /* the fetch trapped: go on at the handler */
		struct tlb_set *const tlb = h->tlb;
		const uint64_t vbase = h->pc & ~(PAGE_SIZE - 1);
		struct dinsn *const s = dp->slot;
		struct dinsn *e = &s[(h->pc & (PAGE_SIZE - 1)) >> 1];
#ifdef THREADED
		DISPATCH();
#else
dispatch:
		switch ((enum dop)e->op) {
#endif

		OP(DECODE) {
			code_decode(dp, (unsigned)(e - s));
			if (h->jit)
				jit_compile(h, dp, (unsigned)(e - s));
			DISPATCH();
		}
		OP(JIT) {
			/* a run compiled by jit.c, possibly going on into
			 * others (chaining, on any page): it returns how far it
			 * got in the run it ended in (bytes << 8 |
			 * instructions), short of the end at a load or store
			 * whose TLB probe missed, which its own slot then does
			 * here; with bit 30 set, its final jump was taken, to
			 * the target in the sink x[32] */
			uint64_t pc = PC();
			const uint8_t *code = h->jit_arena + e->insn;
			jtc_fill(h, pc, dp, code + JIT_PROLOGUE);
			struct jit_io io = { .left = n < budget ? (int64_t)(budget - n) : 0,
					     .pc = pc };
			uint32_t r = ((uint32_t (*)(uint64_t *, struct tlb_set *, uint64_t,
						    struct jit_io *))(const void *)code)(x, tlb, pc, &io);
			n += io.chained + (r & 0xff);
			if (r >> 29 & 1)           /* an F/D instruction trapped */
				goto next_block;   /* or wrote code: h->pc is set */
			if (r >> 30 & 1)
				JUMP(x[32]);
			if (unlikely(r == 0)) {
				/* stopped at the first instruction of the run it
				 * was in, a load or store whose probe missed: the
				 * reference does that one, slow path and all */
				h->pc = io.pc;
				if (((io.pc ^ vbase) >> PAGE_SHIFT) == 0) {
					struct dinsn d;
					code_decode_at(dp->host, (unsigned)((io.pc & (PAGE_SIZE - 1)) >> 1), &d);
					COUNT();
					if (cpu_step(h, d.insn, d.len) != STEP_TRAP)
						n++;
					h->code_written = false;
				}
				goto next_block;
			}
			uint64_t next = io.pc + (r >> 8 & 0xff);
			if (likely(((next ^ vbase) >> PAGE_SHIFT) == 0)) {
				e = &s[(next & (PAGE_SIZE - 1)) >> 1];
				DISPATCH();
			}
			h->pc = next;          /* it ended on another page */
			goto next_block;
		}
		OP(PAGE_END) {
			h->pc = vbase + PAGE_SIZE;
			goto next_block;
		}
		OP(CROSS) {
			/* a 32-bit instruction across the page end: the
			 * reference fetch reads both halves */
			h->pc = PC();
			COUNT();
			int r = cpu_fetch_step(h);
			if (r != STEP_TRAP)
				n++;
			h->code_written = false;
			if (r == STEP_END)
				goto out;
			goto next_block;
		}
		OP(ILLEGAL) {
			h->pc = PC();
			hart_trap(h, EXC_ILLEGAL, e->insn, false);
			goto next_block;
		}
		OP(INTERP) {
			h->pc = PC();
			COUNT();
			int r = cpu_step(h, e->insn, e->len);
			if (r == STEP_NEXT && !h->code_written)
				NEXT();
			if (r != STEP_TRAP)
				n++;
			h->code_written = false;
			if (r == STEP_END)
				goto out;
			goto next_block;
		}
		OP(FENCE) {
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			NEXT();
		}

		ALU(ADDI, x[e->rs1] + (uint64_t)(int64_t)e->imm)
		ALU(SLTI, (int64_t)x[e->rs1] < (int64_t)e->imm)
		ALU(SLTIU, x[e->rs1] < (uint64_t)(int64_t)e->imm)
		ALU(XORI, x[e->rs1] ^ (uint64_t)(int64_t)e->imm)
		ALU(ORI, x[e->rs1] | (uint64_t)(int64_t)e->imm)
		ALU(ANDI, x[e->rs1] & (uint64_t)(int64_t)e->imm)
		ALU(SLLI, x[e->rs1] << e->imm)
		ALU(SRLI, x[e->rs1] >> e->imm)
		ALU(SRAI, (uint64_t)((int64_t)x[e->rs1] >> e->imm))
		ALU(ADDIW, sext32(x[e->rs1] + (uint64_t)(int64_t)e->imm))
		ALU(SLLIW, sext32((uint32_t)x[e->rs1] << e->imm))
		ALU(SRLIW, sext32((uint32_t)x[e->rs1] >> e->imm))
		ALU(SRAIW, (uint64_t)(int64_t)((int32_t)x[e->rs1] >> e->imm))
		ALU(AUIPC, PC() + (uint64_t)(int64_t)e->imm)

		OP(JAL) {
			uint64_t pc = PC();
			x[e->rd] = pc + e->len;
			JUMP(pc + (uint64_t)(int64_t)e->imm);
		}
		OP(JALR) {
			uint64_t t = (x[e->rs1] + (uint64_t)(int64_t)e->imm) & ~1ULL;
			x[e->rd] = PC() + e->len;
			JUMP(t);
		}
		BRANCH(BEQ, x[e->rs1] == x[e->rs2])
		BRANCH(BNE, x[e->rs1] != x[e->rs2])
		BRANCH(BLT, (int64_t)x[e->rs1] < (int64_t)x[e->rs2])
		BRANCH(BGE, (int64_t)x[e->rs1] >= (int64_t)x[e->rs2])
		BRANCH(BLTU, x[e->rs1] < x[e->rs2])
		BRANCH(BGEU, x[e->rs1] >= x[e->rs2])

		LOAD(LB, int8_t, (uint64_t)(int64_t))
		LOAD(LH, int16_t, (uint64_t)(int64_t))
		LOAD(LW, int32_t, (uint64_t)(int64_t))
		LOAD(LD, uint64_t, )
		LOAD(LBU, uint8_t, (uint64_t))
		LOAD(LHU, uint16_t, (uint64_t))
		LOAD(LWU, uint32_t, (uint64_t))
		STORE(SB, uint8_t)
		STORE(SH, uint16_t)
		STORE(SW, uint32_t)
		STORE(SD, uint64_t)

		ALU(ADD, x[e->rs1] + x[e->rs2])
		ALU(SUB, x[e->rs1] - x[e->rs2])
		ALU(SLL, x[e->rs1] << (x[e->rs2] & 63))
		ALU(SLT, (int64_t)x[e->rs1] < (int64_t)x[e->rs2])
		ALU(SLTU, x[e->rs1] < x[e->rs2])
		ALU(XOR, x[e->rs1] ^ x[e->rs2])
		ALU(SRL, x[e->rs1] >> (x[e->rs2] & 63))
		ALU(SRA, (uint64_t)((int64_t)x[e->rs1] >> (x[e->rs2] & 63)))
		ALU(OR, x[e->rs1] | x[e->rs2])
		ALU(AND, x[e->rs1] & x[e->rs2])
		ALU(ADDW, sext32(x[e->rs1] + x[e->rs2]))
		ALU(SUBW, sext32(x[e->rs1] - x[e->rs2]))
		ALU(SLLW, sext32((uint32_t)x[e->rs1] << (x[e->rs2] & 31)))
		ALU(SRLW, sext32((uint32_t)x[e->rs1] >> (x[e->rs2] & 31)))
		ALU(SRAW, (uint64_t)(int64_t)((int32_t)x[e->rs1] >> (x[e->rs2] & 31)))

		ALU(MUL, x[e->rs1] * x[e->rs2])
		ALU(MULH, mulh((int64_t)x[e->rs1], (int64_t)x[e->rs2]))
		ALU(MULHSU, mulhsu((int64_t)x[e->rs1], x[e->rs2]))
		ALU(MULHU, mulhu(x[e->rs1], x[e->rs2]))
		OP(DIV) {
			int64_t a = (int64_t)x[e->rs1], b = (int64_t)x[e->rs2];
			x[e->rd] = b == 0 ? ~0ULL : (a == INT64_MIN && b == -1) ? (uint64_t)a
			     : (uint64_t)(a / b);
			NEXT();
		}
		OP(DIVU) {
			uint64_t a = x[e->rs1], b = x[e->rs2];
			x[e->rd] = b ? a / b : ~0ULL;
			NEXT();
		}
		OP(REM) {
			int64_t a = (int64_t)x[e->rs1], b = (int64_t)x[e->rs2];
			x[e->rd] = b == 0 ? (uint64_t)a : (a == INT64_MIN && b == -1) ? 0
			     : (uint64_t)(a % b);
			NEXT();
		}
		OP(REMU) {
			uint64_t a = x[e->rs1], b = x[e->rs2];
			x[e->rd] = b ? a % b : a;
			NEXT();
		}
		ALU(MULW, sext32((uint32_t)x[e->rs1] * (uint32_t)x[e->rs2]))
		OP(DIVW) {
			int32_t a = (int32_t)x[e->rs1], b = (int32_t)x[e->rs2];
			x[e->rd] = b == 0 ? ~0ULL : (a == INT32_MIN && b == -1) ? sext32((uint32_t)a)
			     : (uint64_t)(int64_t)(a / b);
			NEXT();
		}
		OP(DIVUW) {
			uint32_t a = (uint32_t)x[e->rs1], b = (uint32_t)x[e->rs2];
			x[e->rd] = b ? sext32(a / b) : ~0ULL;
			NEXT();
		}
		OP(REMW) {
			int32_t a = (int32_t)x[e->rs1], b = (int32_t)x[e->rs2];
			x[e->rd] = b == 0 ? sext32((uint32_t)a) : (a == INT32_MIN && b == -1) ? 0
			     : (uint64_t)(int64_t)(a % b);
			NEXT();
		}
		OP(REMUW) {
			uint32_t a = (uint32_t)x[e->rs1], b = (uint32_t)x[e->rs2];
			x[e->rd] = sext32(b ? a % b : a);
			NEXT();
		}
#ifndef THREADED
		case OP_COUNT:
			break;
		}
#endif
next_block:;
	}
out:
	COUNT();
}
