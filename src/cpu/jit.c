/*
 * jit.c - an x86-64 template JIT (stage 3 of issue 11): the executor
 * behind FERRY_CPU=jit; the decoded executor and the reference
 * interpreter (FERRY_CPU=interp) stay as the fallback and the reference.
 *
 * What it compiles: a run of integer ALU instructions, loads and stores
 * at a decoded slot, up to and including a branch or jump. Such a run
 * becomes one slot, OP_JIT, whose code is a host function
 * uint32_t run(uint64_t *x, struct tlb_set *tlb, uint64_t pc, struct jit_io *):
 * each guest register the run touches is loaded once into a host
 * register (at most JIT_REGS of them), every instruction is a template on
 * those, and the registers it wrote go back to x[] at every exit. A load
 * or store probes the TLB inline; on a miss (a page not in the TLB, a
 * write to a clean page while the dirty log runs or to a page with
 * decoded code, MMIO, a page-crossing access) the run writes back what it
 * did so far and returns how far it got, (bytes << 8 | instructions), and
 * the executor carries on from that instruction, slow path, trap and all
 * (when that is the run's first instruction, the result is 0 and the
 * reference interpreter does it). Nothing else in a run can trap, so
 * instret, sepc and the state saved at a pause stay exact.
 *
 * Code lives in one executable arena per hart, bump-allocated. It goes
 * with the decoded pages: a page whose code map word changes is decoded
 * (and compiled) afresh, and when the arena is full the hart drops all its
 * decoded code at the next safe point and starts over.
 *
 * The run gets its own virtual pc (kept on the stack), so that it writes
 * jal/jalr links and auipc itself. Its exits:
 * - a taken branch, jal or jalr: the target goes to the sink x[32] and
 *   the run returns with bit 30 set; the executor's JUMP counts the jump
 *   and goes there (the budget and the request word checked);
 * - falling through (a branch not taken, a run cut short): it returns
 *   how far it got, and the executor goes on from there.
 * Before returning, every exit but a probe miss tries to go straight
 * into the next run (chaining), if the budget left covers this run and
 * no request is posted (the checks the executor's JUMP makes): to a run
 * compiled before it on the same page by a direct jump (chain()), to any
 * other through the jump-target cache (chain_table(), h->jtc: guest
 * virtual pc to compiled code, per translation context, filled by the
 * executor when it enters a run, flushed with the TLB and with the
 * compiled code; an entry holds the code-map word its page was compiled
 * under, and is used only while that word is still the page's, so a
 * rewritten page's old code is never entered). A struct jit_io follows
 * the chain: the budget left, the pc of the run it is in, the
 * instructions the runs it left retired.
 *
 * Loops: a run whose taken branch goes back to its own start is compiled
 * a second time with every register it names loaded on entry and each
 * one it writes written back at every exit (writing back a value not
 * changed yet this time round is harmless), so that going round keeps
 * them all in host registers (self_loop()).
 *
 * F/D instructions are in runs too, as calls to the reference
 * interpreter's code (compile_fp()).
 *
 * Not yet: F/D in host SSE registers, div/rem, registers kept across runs
 * other than a loop's own, chain exits patched once their target is
 * compiled (they go through the jump-target cache meanwhile).
 */
#include "cpu/internal.h"

#include <stddef.h>
#include <sys/mman.h>

#define JIT_ARENA (32u << 20)
#define JIT_MAX_INSNS 48
#define JIT_REGS 10
/* per instruction at most a probe, a load and an exit stub */
#define JIT_MAX_BYTES (512 + JIT_MAX_INSNS * 256)

/* host registers that may hold guest registers; rax, rcx and rdx are
 * scratch, rdi holds x and rsi the TLB set. The callee-saved ones are
 * saved by the prologue. */
static const uint8_t host_reg[JIT_REGS] = { 8, 9, 10, 11, 3 /* rbx */, 5 /* rbp */,
					    12, 13, 14, 15 };
enum { RAX = 0, RCX = 1, RDX = 2, RSI = 6, RDI = 7 };
#define TLB_W_OFFSET ((uint32_t)offsetof(struct tlb_set, w))

struct emitter {
	uint8_t *p;
	unsigned count, bytes;       /* instructions and bytes compiled so far */
	int8_t slot_of[33];          /* guest reg -> index in host_reg, -1 */
	bool dirty[JIT_REGS];
	uint8_t guest_of[JIT_REGS];
	unsigned used;
	/* for chaining: the page, the run's first slot, its own body */
	struct hart *h;
	const struct dpage *dp;
	unsigned start;
	const uint8_t *body;
	/* instructions a chained exit retires beyond count: 1 for a taken
	 * branch or jump (not counted yet), 0 for falling through */
	unsigned pending;
	/* a loop: the run's last branch may go back to its own start. Then
	 * it is compiled again with every register it names loaded on entry
	 * (at body) and each one it writes written back at every exit, so
	 * that going round (to loop_entry, past the loads) keeps them all in
	 * host registers */
	bool loops, loop_mode;
	const uint8_t *loop_entry;
};

/* the prologue (JIT_PROLOGUE bytes): six pushes of callee-saved
 * registers, the run's pc, the jit_io pointer */
#define JTC_OFFSET ((int32_t)(offsetof(struct hart, jtc) - offsetof(struct hart, x)))
#define REQUESTS_OFFSET ((int32_t)(offsetof(struct hart, requests) - offsetof(struct hart, x)))

static void emit_bytes(struct emitter *em, const uint8_t *bytes, size_t n)
{
	memcpy(em->p, bytes, n);
	em->p += n;
}

/* EMIT(em, bytes...): append the bytes */
#define EMIT(em, ...) emit_bytes((em), (const uint8_t[]){ __VA_ARGS__ }, \
				 sizeof((const uint8_t[]){ __VA_ARGS__ }))

static void byte(struct emitter *em, uint8_t b) { *em->p++ = b; }
static void u32le(struct emitter *em, uint32_t v)
{
	memcpy(em->p, &v, 4);
	em->p += 4;
}

/* mov r64, [rdi + 8*g] */
static void load_guest(struct emitter *em, unsigned hr, unsigned g)
{
	byte(em, (uint8_t)(0x48 | (hr >= 8 ? 4 : 0)));
	byte(em, 0x8b);
	byte(em, (uint8_t)(0x80 | (hr & 7) << 3 | RDI));
	u32le(em, g * 8);
}

/* mov [rdi + 8*g], r64 */
static void store_guest(struct emitter *em, unsigned hr, unsigned g)
{
	byte(em, (uint8_t)(0x48 | (hr >= 8 ? 4 : 0)));
	byte(em, 0x89);
	byte(em, (uint8_t)(0x80 | (hr & 7) << 3 | RDI));
	u32le(em, g * 8);
}

/* mov dst, src (64-bit registers) */
static void mov_rr(struct emitter *em, unsigned dst, unsigned src)
{
	byte(em, (uint8_t)(0x48 | (src >= 8 ? 4 : 0) | (dst >= 8 ? 1 : 0)));
	byte(em, 0x89);
	byte(em, (uint8_t)(0xc0 | (src & 7) << 3 | (dst & 7)));
}

/* op rax, src with op one of add 01, or 09, and 21, sub 29, xor 31 */
static void alu_rax(struct emitter *em, uint8_t opcode, unsigned src)
{
	byte(em, (uint8_t)(0x48 | (src >= 8 ? 4 : 0)));
	byte(em, opcode);
	byte(em, (uint8_t)(0xc0 | (src & 7) << 3 | RAX));
}

/* op rax, imm32 (sign-extended): add /0, or /1, and /4, xor /6 */
static void alu_rax_imm(struct emitter *em, unsigned digit, int32_t imm)
{
	byte(em, 0x48);
	byte(em, 0x81);
	byte(em, (uint8_t)(0xc0 | digit << 3 | RAX));
	u32le(em, (uint32_t)imm);
}

/* shift rax by imm8 (wide) : shl /4, shr /5, sar /7 */
static void shift_rax_imm(struct emitter *em, unsigned digit, unsigned sh)
{
	byte(em, 0x48);
	byte(em, 0xc1);
	byte(em, (uint8_t)(0xc0 | digit << 3 | RAX));
	byte(em, (uint8_t)sh);
}

/* shift rax (wide) or eax by cl */
static void shift_rax_cl(struct emitter *em, unsigned digit, bool wide)
{
	if (wide)
		byte(em, 0x48);
	byte(em, 0xd3);
	byte(em, (uint8_t)(0xc0 | digit << 3 | RAX));
}

/* rax = the last compare's less-than, signed or unsigned (setl/setb al,
 * movzx eax, al) */
static void set_flag(struct emitter *em, bool is_signed)
{
	EMIT(em, 0x0f, is_signed ? 0x9c : 0x92, 0xc0, 0x0f, 0xb6, 0xc0);
}

static void sext_eax(struct emitter *em) { EMIT(em, 0x48, 0x63, 0xc0); }  /* movsxd rax, eax */
static void zext_eax(struct emitter *em) { EMIT(em, 0x89, 0xc0); }        /* mov eax, eax */


/* The host register holding guest register g, loading it on first use
 * (load false: g is only written). -1 when none is free. */
static int reg(struct emitter *em, unsigned g, bool load)
{
	if (em->slot_of[g] >= 0)
		return host_reg[em->slot_of[g]];
	if (em->used == JIT_REGS)
		return -1;
	unsigned s = em->used++;
	em->slot_of[g] = (int8_t)s;
	em->guest_of[s] = (uint8_t)g;
	if (load)
		load_guest(em, host_reg[s], g);
	return host_reg[s];
}

static bool mem_op(uint8_t op)
{
	return op >= OP_LB && op <= OP_SD;
}

static bool branch_op(uint8_t op)
{
	return op >= OP_BEQ && op <= OP_BGEU;
}

static bool jump_op(uint8_t op)
{
	return op == OP_JAL || op == OP_JALR;
}

/* instructions that end a run */
static bool final_op(uint8_t op)
{
	return branch_op(op) || jump_op(op);
}

static bool jit_op(uint8_t op)
{
	if (mem_op(op) || final_op(op))
		return true;
	switch (op) {
	case OP_ADDI: case OP_XORI: case OP_ORI: case OP_ANDI:
	case OP_SLLI: case OP_SRLI: case OP_SRAI:
	case OP_ADDIW: case OP_SLLIW: case OP_SRLIW: case OP_SRAIW:
	case OP_ADD: case OP_SUB: case OP_XOR: case OP_OR: case OP_AND:
	case OP_SLL: case OP_SRL: case OP_SRA:
	case OP_ADDW: case OP_SUBW: case OP_SLLW: case OP_SRLW: case OP_SRAW:
	case OP_MUL: case OP_MULW: case OP_MULH: case OP_MULHU:
	case OP_SLT: case OP_SLTU: case OP_SLTI: case OP_SLTIU: case OP_AUIPC:
		return true;
	}
	return false;
}

/* An F or D instruction (loads, stores, arithmetic, fused multiply-add),
 * which the run hands to the reference interpreter (compile_fp()). */
static bool fp_insn(const struct dinsn *d)
{
	if (d->op != OP_INTERP)
		return false;
	switch (d->insn & 0x7f) {
	case 0x07: case 0x27: case 0x53: case 0x43: case 0x47: case 0x4b: case 0x4f:
		return true;
	}
	return false;
}

/* what a run may hold */
static bool jit_insn(const struct dinsn *d)
{
	return jit_op(d->op) || fp_insn(d);
}

static bool has_rs2(uint8_t op)
{
	return op >= OP_ADD;     /* the register-register ones come after the immediates */
}

static void u32at(uint8_t *at, uint32_t v) { memcpy(at, &v, 4); }

/* Drop the run's pc from the stack, restore the callee-saved registers
 * and return (eax holds the result). */
static void epilogue(struct emitter *em)
{
	EMIT(em, 0x48, 0x83, 0xc4, 0x10);              /* add rsp, 16 */
	EMIT(em, 0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b);
	byte(em, 0xc3);
}

/* Write back the guest registers the run wrote so far. */
static void write_back(struct emitter *em)
{
	for (unsigned s = 0; s < em->used; s++)
		if (em->dirty[s])
			store_guest(em, host_reg[s], em->guest_of[s]);
}

/* Leave the run before the current instruction: write back what the run
 * wrote so far and return (bytes done << 8 | instructions done). */
static void exit_stub(struct emitter *em)
{
	for (unsigned s = 0; s < em->used; s++)
		if (em->dirty[s])
			store_guest(em, host_reg[s], em->guest_of[s]);
	byte(em, 0xb8);                                   /* mov eax, imm32 */
	u32le(em, em->bytes << 8 | em->count);
	epilogue(em);
}

/* A load or store: the TLB probe inline, the slow path by leaving the run
 * at this instruction (the executor does it, exactly as without JIT). */
static void compile_mem(struct emitter *em, const struct dinsn *d, int a, int b)
{
	static const unsigned size[] = { 1, 2, 4, 8, 1, 2, 4, 1, 2, 4, 8 };
	unsigned sz = size[d->op - OP_LB];
	bool st = d->op >= OP_SB;
	uint32_t set = st ? TLB_W_OFFSET : 0;
	mov_rr(em, RAX, (unsigned)a);
	alu_rax_imm(em, 0, d->imm);                       /* rax = va */
	mov_rr(em, RCX, RAX);
	EMIT(em, 0x48, 0xc1, 0xe9, PAGE_SHIFT);        /* shr rcx, 12 */
	EMIT(em, 0x89, 0xca);                          /* mov edx, ecx */
	EMIT(em, 0x81, 0xe2); u32le(em, TLB_SIZE - 1); /* and edx, TLB_SIZE-1 */
	EMIT(em, 0xc1, 0xe2, 4);                       /* shl edx, 4 */
	EMIT(em, 0x48, 0x3b, 0x8c, 0x16); u32le(em, set); /* cmp rcx, [rsi+rdx+set] */
	EMIT(em, 0x0f, 0x85); uint8_t *j1 = em->p; u32le(em, 0); /* jne stub */
	uint8_t *j2 = NULL;
	if (sz > 1) {
		EMIT(em, 0x89, 0xc1);                  /* mov ecx, eax */
		EMIT(em, 0x81, 0xe1); u32le(em, 0xfff); /* and ecx, 0xfff */
		EMIT(em, 0x81, 0xf9); u32le(em, (uint32_t)(PAGE_SIZE - sz)); /* cmp ecx, */
		EMIT(em, 0x0f, 0x87); j2 = em->p; u32le(em, 0); /* ja stub */
	}
	byte(em, 0xe9); uint8_t *j3 = em->p; u32le(em, 0);   /* jmp hit */
	uint8_t *stub = em->p;
	exit_stub(em);
	uint8_t *hit = em->p;
	u32at(j1, (uint32_t)(stub - (j1 + 4)));
	if (j2)
		u32at(j2, (uint32_t)(stub - (j2 + 4)));
	u32at(j3, (uint32_t)(hit - (j3 + 4)));
	EMIT(em, 0x48, 0x8b, 0x8c, 0x16); u32le(em, set + 8); /* mov rcx, [rsi+rdx+set+8] */
	if (st) {
		mov_rr(em, RDX, (unsigned)b);
		switch (sz) {                              /* mov [rax+rcx], dl/dx/edx/rdx */
		case 1: EMIT(em, 0x88, 0x14, 0x08); break;
		case 2: EMIT(em, 0x66, 0x89, 0x14, 0x08); break;
		case 4: EMIT(em, 0x89, 0x14, 0x08); break;
		case 8: EMIT(em, 0x48, 0x89, 0x14, 0x08); break;
		}
		return;
	}
	switch (d->op) {                                  /* rax = [rax+rcx], extended */
	case OP_LB: EMIT(em, 0x48, 0x0f, 0xbe, 0x04, 0x08); break;
	case OP_LH: EMIT(em, 0x48, 0x0f, 0xbf, 0x04, 0x08); break;
	case OP_LW: EMIT(em, 0x48, 0x63, 0x04, 0x08); break;
	case OP_LD: EMIT(em, 0x48, 0x8b, 0x04, 0x08); break;
	case OP_LBU: EMIT(em, 0x0f, 0xb6, 0x04, 0x08); break;
	case OP_LHU: EMIT(em, 0x0f, 0xb7, 0x04, 0x08); break;
	case OP_LWU: EMIT(em, 0x8b, 0x04, 0x08); break;
	}
}

/* A taken branch or jal to target (bytes from the run's start), after the
 * write-back: when the target is this run or another compiled run on the
 * same page, go straight into its code, provided the budget left (in the
 * jit_io) covers this run and no request is posted (as the executor's
 * JUMP checks); the jit_io then counts this run's instructions and holds
 * the new run's pc. Otherwise, or when a check fails, nothing happens
 * here and the run returns. */
static void chain(struct emitter *em, int32_t target)
{
	int64_t at = (int64_t)em->start * 2 + target;
	if (at < 0 || at >= (int64_t)PAGE_SIZE)
		return;
	const uint8_t *to = NULL;
	if (at == (int64_t)em->start * 2 && em->loop_mode)
		return;                  /* self_loop() tried it already */
	if (at == (int64_t)em->start * 2)
		to = em->body;
	else if (em->dp->slot[at / 2].op == OP_JIT)
		to = em->h->jit_arena + em->dp->slot[at / 2].insn + JIT_PROLOGUE;
	if (!to)
		return;
	uint32_t k = em->count + em->pending;
	EMIT(em, 0x48, 0x8b, 0x0c, 0x24);              /* mov rcx, [rsp] */
	EMIT(em, 0x48, 0x81, 0x39); u32le(em, k);      /* cmp qword [rcx], k */
	EMIT(em, 0x0f, 0x8e); uint8_t *j1 = em->p; u32le(em, 0);  /* jle out */
	EMIT(em, 0x81, 0xbf); u32le(em, (uint32_t)REQUESTS_OFFSET); u32le(em, 0); /* cmp dword [rdi+req], 0 */
	EMIT(em, 0x0f, 0x85); uint8_t *j2 = em->p; u32le(em, 0);  /* jne out */
	EMIT(em, 0x48, 0x81, 0x29); u32le(em, k);      /* sub qword [rcx], k */
	EMIT(em, 0x48, 0x81, 0x41, 0x10); u32le(em, k); /* add qword [rcx+16], k */
	EMIT(em, 0x48, 0x81, 0x44, 0x24, 0x08); u32le(em, (uint32_t)target); /* add [rsp+8], t */
	EMIT(em, 0x48, 0x8b, 0x44, 0x24, 0x08);        /* mov rax, [rsp+8] */
	EMIT(em, 0x48, 0x89, 0x41, 0x08);              /* mov [rcx+8], rax */
	byte(em, 0xe9); u32le(em, (uint32_t)(to - (em->p + 4)));  /* jmp to */
	u32at(j1, (uint32_t)(em->p - (j1 + 4)));
	u32at(j2, (uint32_t)(em->p - (j2 + 4)));
}

_Static_assert(sizeof(struct jtc_entry) == 32 && offsetof(struct jtc_entry, word) == 8 &&
	       offsetof(struct jtc_entry, expect) == 16 && offsetof(struct jtc_entry, code) == 24,
	       "chain_table reads the jump-target cache by hand");

/* A jump to the pc in rax (registers written back), looked up at run
 * time in the jump-target cache (h->jtc): when a compiled run starts
 * there and its page's code-map word is still the one it was compiled
 * under, go into it, with the checks chain() makes; otherwise fall
 * through (rax kept) to the return. */
static void chain_table(struct emitter *em)
{
	uint32_t k = em->count + em->pending;
	uint8_t *out[4];
	EMIT(em, 0x48, 0x8b, 0x97); u32le(em, (uint32_t)JTC_OFFSET); /* mov rdx, h->jtc */
	EMIT(em, 0x89, 0xc1);                          /* mov ecx, eax */
	EMIT(em, 0xd1, 0xe9);                          /* shr ecx, 1 */
	EMIT(em, 0x81, 0xe1); u32le(em, JTC_SIZE - 1); /* and ecx, JTC_SIZE-1 */
	EMIT(em, 0xc1, 0xe1, 5);                       /* shl ecx, 5 */
	EMIT(em, 0x48, 0x01, 0xca);                    /* add rdx, rcx */
	EMIT(em, 0x48, 0x3b, 0x02);                    /* cmp rax, [rdx]: pc */
	EMIT(em, 0x0f, 0x85); out[0] = em->p; u32le(em, 0);   /* jne out */
	EMIT(em, 0x48, 0x8b, 0x4a, 0x08);              /* mov rcx, [rdx+8]: word */
	EMIT(em, 0x8b, 0x09);                          /* mov ecx, [rcx] */
	EMIT(em, 0x3b, 0x4a, 0x10);                    /* cmp ecx, [rdx+16]: expect */
	EMIT(em, 0x0f, 0x85); out[1] = em->p; u32le(em, 0);   /* jne out */
	EMIT(em, 0x48, 0x8b, 0x0c, 0x24);              /* mov rcx, [rsp] */
	EMIT(em, 0x48, 0x81, 0x39); u32le(em, k);      /* cmp qword [rcx], k */
	EMIT(em, 0x0f, 0x8e); out[2] = em->p; u32le(em, 0);   /* jle out */
	EMIT(em, 0x81, 0xbf); u32le(em, (uint32_t)REQUESTS_OFFSET); u32le(em, 0);
	EMIT(em, 0x0f, 0x85); out[3] = em->p; u32le(em, 0);   /* jne out */
	EMIT(em, 0x48, 0x81, 0x29); u32le(em, k);      /* sub qword [rcx], k */
	EMIT(em, 0x48, 0x81, 0x41, 0x10); u32le(em, k); /* add qword [rcx+16], k */
	EMIT(em, 0x48, 0x89, 0x44, 0x24, 0x08);        /* mov [rsp+8], rax */
	EMIT(em, 0x48, 0x89, 0x41, 0x08);              /* mov [rcx+8], rax */
	EMIT(em, 0xff, 0x62, 0x18);                    /* jmp [rdx+24]: code */
	for (unsigned i = 0; i < 4; i++)
		u32at(out[i], (uint32_t)(em->p - (out[i] + 4)));
}

/* The end of a taken branch, jal or jalr whose target is in rax, the
 * registers written back: into the next run when one is known (on this
 * page, compiled before this one: chain(); anywhere: the jump-target
 * cache), else return with bit 30 set and the target in the sink x[32];
 * the jump itself is not counted there, the executor's JUMP counts it. */
static void leave_to(struct emitter *em, int32_t target, bool direct)
{
	if (direct)
		chain(em, target);
	chain_table(em);
	store_guest(em, RAX, 32);
	byte(em, 0xb8);
	u32le(em, 1u << 30 | em->bytes << 8 | em->count);
	epilogue(em);
}

/* rax = the run's pc + off */
static void pc_plus(struct emitter *em, int32_t off)
{
	EMIT(em, 0x48, 0x8b, 0x44, 0x24, 0x08);        /* mov rax, [rsp+8] */
	alu_rax_imm(em, 0, off);
}

/* The end of a run that falls through to the next instruction (all of
 * it done): into the run there when one is known, as leave_to does, else
 * return (bytes << 8 | instructions) as the exit stubs do. */
static void leave_through(struct emitter *em)
{
	write_back(em);
	int32_t next = (int32_t)em->bytes;
	em->pending = 0;
	pc_plus(em, next);
	chain(em, next);
	chain_table(em);
	em->pending = 1;
	byte(em, 0xb8);                                   /* mov eax, imm32 */
	u32le(em, em->bytes << 8 | em->count);
	epilogue(em);
}

/* Going round a loop (loop_mode): back to loop_entry with the registers
 * where they are, if the budget left covers the run and no request is
 * posted, the checks chain() makes; else fall through to the exit. */
static void self_loop(struct emitter *em)
{
	uint32_t k = em->count + 1;
	EMIT(em, 0x48, 0x8b, 0x0c, 0x24);              /* mov rcx, [rsp] */
	EMIT(em, 0x48, 0x81, 0x39); u32le(em, k);      /* cmp qword [rcx], k */
	EMIT(em, 0x0f, 0x8e); uint8_t *j1 = em->p; u32le(em, 0);  /* jle out */
	EMIT(em, 0x81, 0xbf); u32le(em, (uint32_t)REQUESTS_OFFSET); u32le(em, 0);
	EMIT(em, 0x0f, 0x85); uint8_t *j2 = em->p; u32le(em, 0);  /* jne out */
	EMIT(em, 0x48, 0x81, 0x29); u32le(em, k);      /* sub qword [rcx], k */
	EMIT(em, 0x48, 0x81, 0x41, 0x10); u32le(em, k); /* add qword [rcx+16], k */
	byte(em, 0xe9); u32le(em, (uint32_t)(em->loop_entry - (em->p + 4)));  /* jmp */
	u32at(j1, (uint32_t)(em->p - (j1 + 4)));
	u32at(j2, (uint32_t)(em->p - (j2 + 4)));
}

/* A conditional branch, the last instruction of a run: taken, the run
 * returns with bit 31 set and the branch not counted (the executor's
 * jump counts it and goes to the target); not taken, the run ends after
 * it as usual. */
static void compile_branch(struct emitter *em, const struct dinsn *d, int a, int b)
{
	static const uint8_t jcc[] = { 0x84, 0x85, 0x8c, 0x8d, 0x82, 0x83 }; /* eq ne l ge b ae */
	mov_rr(em, RAX, (unsigned)a);
	EMIT(em, 0x48 | (b >= 8 ? 4 : 0), 0x39, 0xc0 | (b & 7) << 3);  /* cmp rax, b */
	EMIT(em, 0x0f, jcc[d->op - OP_BEQ]);
	uint8_t *j = em->p;
	u32le(em, 0);
	em->count++;                        /* not taken: done, with the branch */
	em->bytes += d->len;
	leave_through(em);
	em->count--;
	em->bytes -= d->len;
	u32at(j, (uint32_t)(em->p - (j + 4)));
	int32_t target = (int32_t)em->bytes + d->imm;  /* taken */
	if (target == 0)
		em->loops = true;
	if (target == 0 && em->loop_mode)
		self_loop(em);
	write_back(em);
	pc_plus(em, target);
	leave_to(em, target, true);
}

/* jal or jalr, the last instruction of a run. The link is the run's pc
 * (on the stack since the prologue) plus the bytes before it and its
 * length. It returns with bit 31 set (jal: the executor jumps to the
 * run's imm from its start) or bit 30 (jalr: to the target the run left
 * in the sink x[32]); the jump itself is not counted, the executor's
 * JUMP counts it, as for a taken branch. */
static void compile_jump(struct emitter *em, const struct dinsn *d, int a)
{
	bool indirect = d->op == OP_JALR;
	if (indirect) {                                   /* rax = (rs1 + imm) & ~1 */
		mov_rr(em, RAX, (unsigned)a);
		alu_rax_imm(em, 0, d->imm);
		EMIT(em, 0x48, 0x83, 0xe0, 0xfe);      /* and rax, -2 */
	}
	if (d->rd != 32) {
		int r = reg(em, d->rd, false);
		EMIT(em, 0x48, 0x8b, 0x4c, 0x24, 0x08); /* mov rcx, [rsp+8] */
		EMIT(em, 0x48, 0x81, 0xc1);            /* add rcx, imm32 */
		u32le(em, em->bytes + d->len);
		mov_rr(em, (unsigned)r, RCX);
		em->dirty[em->slot_of[d->rd]] = true;
	}
	write_back(em);
	int32_t target = (int32_t)em->bytes + d->imm;
	if (!indirect)
		pc_plus(em, target);
	leave_to(em, target, !indirect);
}

/* Emit one instruction; false if it needs more host registers than are
 * free (nothing emitted then). */
/* The reference interpreter's F/D code, for a run (called with x, the
 * instruction's pc, its bits and length): 0 when it went on, 1 when it
 * trapped (the hart is at its handler), 2 when it wrote a page holding
 * decoded code (h->pc is past it, where the run must stop). */
static uint32_t jit_fp(uint64_t *x, uint64_t pc, uint32_t insn, uint32_t len)
{
	struct hart *h = (struct hart *)(void *)((uint8_t *)x - offsetof(struct hart, x));
	h->pc = pc;
	h->code_written = false;
	if (cpu_step(h, insn, len) == STEP_TRAP)
		return 1;
	if (h->code_written) {
		h->code_written = false;
		return 2;
	}
	return 0;
}

/* An F/D instruction: the registers written back, a call to jit_fp()
 * (rdi and rsi kept, the stack aligned), every register the run holds
 * loaded again (the instruction may write one: fmv.x.d, feq, fcvt...);
 * when it trapped or wrote code, the run returns with bit 29 set, the
 * hart's pc already where to go on, and its count without or with it. */
static void compile_fp(struct emitter *em, const struct dinsn *d)
{
	uint64_t helper = (uint64_t)(uintptr_t)jit_fp;
	write_back(em);
	EMIT(em, 0x57, 0x56, 0x48, 0x83, 0xec, 0x08);     /* push rdi; push rsi; sub rsp, 8 */
	EMIT(em, 0x48, 0x8b, 0x74, 0x24, 0x20);           /* mov rsi, [rsp+32]: the run's pc */
	EMIT(em, 0x48, 0x81, 0xc6); u32le(em, em->bytes); /* add rsi, bytes */
	byte(em, 0xba); u32le(em, d->insn);               /* mov edx, insn */
	byte(em, 0xb9); u32le(em, d->len);                /* mov ecx, len */
	EMIT(em, 0x48, 0xb8); u32le(em, (uint32_t)helper); u32le(em, (uint32_t)(helper >> 32));
	EMIT(em, 0xff, 0xd0);                             /* call rax */
	EMIT(em, 0x48, 0x83, 0xc4, 0x08, 0x5e, 0x5f);     /* add rsp, 8; pop rsi; pop rdi */
	for (unsigned s = 0; s < em->used; s++)
		load_guest(em, host_reg[s], em->guest_of[s]);
	EMIT(em, 0x85, 0xc0);                             /* test eax, eax */
	EMIT(em, 0x0f, 0x84); uint8_t *on = em->p; u32le(em, 0);   /* jz on */
	EMIT(em, 0x83, 0xf8, 0x01);                       /* cmp eax, 1 */
	EMIT(em, 0x0f, 0x85); uint8_t *written = em->p; u32le(em, 0);  /* jne written */
	byte(em, 0xb8); u32le(em, 1u << 29 | em->bytes << 8 | em->count);  /* trapped */
	epilogue(em);
	u32at(written, (uint32_t)(em->p - (written + 4)));
	byte(em, 0xb8); u32le(em, 1u << 29 | (em->bytes + d->len) << 8 | (em->count + 1));
	epilogue(em);
	u32at(on, (uint32_t)(em->p - (on + 4)));
}

static bool compile_one(struct emitter *em, const struct dinsn *d)
{
	if (fp_insn(d)) {
		compile_fp(em, d);
		return true;
	}
	/* make sure every register it names has a home first */
	unsigned need = 0;
	bool st = d->op >= OP_SB && d->op <= OP_SD;
	bool br = branch_op(d->op);
	bool two = has_rs2(d->op) || st || br;
	bool jump = jump_op(d->op);
	/* jal and auipc read no register */
	unsigned first = d->op == OP_JAL || d->op == OP_AUIPC ? d->rd : d->rs1;
	unsigned names[3] = { first, two ? d->rs2 : first,
			      st || br ? first : d->rd };
	for (unsigned i = 0; i < 3; i++) {
		bool seen = em->slot_of[names[i]] >= 0;
		for (unsigned j = 0; j < i; j++)
			seen |= names[j] == names[i];
		need += !seen;
	}
	if (em->used + need > JIT_REGS)
		return false;
	if (jump) {
		compile_jump(em, d, d->op == OP_JALR ? reg(em, d->rs1, true) : -1);
		return true;
	}
	if (d->op == OP_AUIPC) {
		pc_plus(em, (int32_t)em->bytes + d->imm);
		goto result;
	}
	int a = reg(em, d->rs1, true);
	int b = two ? reg(em, d->rs2, true) : -1;
	if (br) {
		compile_branch(em, d, a, b);
		return true;
	}
	if (mem_op(d->op)) {
		compile_mem(em, d, a, b);
		if (st)
			return true;
		goto result;
	}
	mov_rr(em, RAX, (unsigned)a);
	switch (d->op) {
	case OP_ADDI: alu_rax_imm(em, 0, d->imm); break;
	case OP_ORI: alu_rax_imm(em, 1, d->imm); break;
	case OP_ANDI: alu_rax_imm(em, 4, d->imm); break;
	case OP_XORI: alu_rax_imm(em, 6, d->imm); break;
	case OP_SLLI: shift_rax_imm(em, 4, (unsigned)d->imm); break;
	case OP_SRLI: shift_rax_imm(em, 5, (unsigned)d->imm); break;
	case OP_SRAI: shift_rax_imm(em, 7, (unsigned)d->imm); break;
	case OP_ADDIW: alu_rax_imm(em, 0, d->imm); sext_eax(em); break;
	case OP_SLLIW: shift_rax_imm(em, 4, (unsigned)d->imm); sext_eax(em); break;
	case OP_SRLIW: zext_eax(em); shift_rax_imm(em, 5, (unsigned)d->imm); sext_eax(em); break;
	case OP_SRAIW: sext_eax(em); shift_rax_imm(em, 7, (unsigned)d->imm); break;
	case OP_ADD: alu_rax(em, 0x01, (unsigned)b); break;
	case OP_SUB: alu_rax(em, 0x29, (unsigned)b); break;
	case OP_XOR: alu_rax(em, 0x31, (unsigned)b); break;
	case OP_OR: alu_rax(em, 0x09, (unsigned)b); break;
	case OP_AND: alu_rax(em, 0x21, (unsigned)b); break;
	case OP_ADDW: alu_rax(em, 0x01, (unsigned)b); sext_eax(em); break;
	case OP_SUBW: alu_rax(em, 0x29, (unsigned)b); sext_eax(em); break;
	case OP_MUL: case OP_MULW:     /* imul rax, b */
		EMIT(em, 0x48 | (b >= 8 ? 1 : 0), 0x0f, 0xaf, 0xc0 | (b & 7));
		if (d->op == OP_MULW)
			sext_eax(em);
		break;
	case OP_MULH: case OP_MULHU:   /* imul/mul b: rdx:rax */
		EMIT(em, 0x48 | (b >= 8 ? 1 : 0), 0xf7,
		     (d->op == OP_MULH ? 0xe8 : 0xe0) | (b & 7));
		EMIT(em, 0x48, 0x89, 0xd0);             /* mov rax, rdx */
		break;
	case OP_SLT: case OP_SLTU:     /* cmp rax, b; setl/setb al */
		EMIT(em, 0x48 | (b >= 8 ? 4 : 0), 0x39, 0xc0 | (b & 7) << 3);
		set_flag(em, d->op == OP_SLT);
		break;
	case OP_SLTI: case OP_SLTIU:   /* cmp rax, imm32 */
		EMIT(em, 0x48, 0x81, 0xf8); u32le(em, (uint32_t)d->imm);
		set_flag(em, d->op == OP_SLTI);
		break;
	case OP_SLL: case OP_SRL: case OP_SRA:
	case OP_SLLW: case OP_SRLW: case OP_SRAW: {
		static const uint8_t digit[] = { 4, 5, 7 };
		bool wide = d->op <= OP_SRA;
		unsigned k = wide ? (unsigned)(d->op == OP_SLL ? 0 : d->op == OP_SRL ? 1 : 2)
				  : (unsigned)(d->op == OP_SLLW ? 0 : d->op == OP_SRLW ? 1 : 2);
		mov_rr(em, RCX, (unsigned)b);
		shift_rax_cl(em, digit[k], wide);   /* 32-bit shifts mask by 31 */
		if (!wide)
			sext_eax(em);
		break;
	}
	}
result:;
	int r = reg(em, d->rd, false);
	mov_rr(em, (unsigned)r, RAX);
	em->dirty[em->slot_of[d->rd]] = true;
	return true;
}

struct run {
	unsigned count, bytes;
	bool ended;            /* with a branch or jump */
};

/* Emit the run starting at slot i of dp at the arena's free space, as a
 * loop (loop_mode) when given the emitter of a first pass that found one. */
static struct run compile_run(struct hart *h, struct dpage *dp, unsigned i,
			      struct emitter *out, const struct emitter *first_pass)
{
	struct emitter em = { .p = h->jit_arena + h->jit_used, .h = h, .dp = dp, .start = i,
			      .pending = 1,
			      .body = h->jit_arena + h->jit_used + JIT_PROLOGUE };
	memset(em.slot_of, -1, sizeof(em.slot_of));
	EMIT(&em, 0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57);  /* push */
	byte(&em, 0x52);                  /* push rdx: the run's pc, [rsp+8] */
	byte(&em, 0x51);                  /* push rcx: the jit_io, [rsp] */
	if (first_pass) {
		em.loop_mode = true;
		memcpy(em.slot_of, first_pass->slot_of, sizeof(em.slot_of));
		memcpy(em.guest_of, first_pass->guest_of, sizeof(em.guest_of));
		memcpy(em.dirty, first_pass->dirty, sizeof(em.dirty));
		em.used = first_pass->used;
		for (unsigned s = 0; s < em.used; s++)
			load_guest(&em, host_reg[s], em.guest_of[s]);
		em.loop_entry = em.p;
	}
	unsigned count = 0, bytes = 0, at = i;
	bool ended = false;
	struct dinsn d = dp->slot[i];
	while (count < JIT_MAX_INSNS && bytes + d.len <= 240 && jit_insn(&d)) {
		if (!compile_one(&em, &d))
			break;
		if (final_op(d.op)) {
			count++;
			bytes += d.len;
			ended = true;              /* it emitted both exits */
			break;
		}
		count++;
		bytes += d.len;
		em.count = count;
		em.bytes = bytes;
		at += d.len / 2;
		if (at >= DPAGE_SLOTS)
			break;
		/* decode the next one without touching its slot */
		code_decode_at(dp->host, at, &d);
	}
	bool stopped_at_op = at < DPAGE_SLOTS && !jit_insn(&d);
	if (!ended && stopped_at_op)
		exit_stub(&em);               /* the end: all of it done, and the
					       * executor's work next */
	else if (!ended)
		leave_through(&em);           /* cut short: another run may follow */
	*out = em;
	return (struct run){ count, bytes, ended };
}

/* Compile the run of ALU instructions starting at slot i of dp, decoding
 * the ones after it from the page's bytes; on success turns slot i into
 * OP_JIT. Runs of one instruction are left to the executor. */
void jit_compile(struct hart *h, struct dpage *dp, unsigned i)
{
	struct dinsn *first = &dp->slot[i];
	if (!jit_insn(first))
		return;
	if (!h->jit_arena) {
		void *a = mmap(NULL, JIT_ARENA, PROT_READ | PROT_WRITE | PROT_EXEC,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (a == MAP_FAILED) {
			h->jit = false;       /* the interpreter will do */
			return;
		}
		h->jit_arena = a;
	}
	if (h->jit_used + JIT_MAX_BYTES > JIT_ARENA) {
		h->jit_full = true;           /* dropped at the next lookup */
		return;
	}
	struct emitter em;
	struct run r = compile_run(h, dp, i, &em, NULL);
	if (r.count < 2 && !r.ended)
		return;      /* not worth a call (emitted code is dropped); a lone
			      * branch or jump is, for runs to chain through it */
	if (em.loops) {
		struct emitter first_pass = em;
		r = compile_run(h, dp, i, &em, &first_pass);
	}
	uint32_t off = h->jit_used;
	h->jit_used = (uint32_t)(em.p - h->jit_arena + 15) & ~15u;
	*first = (struct dinsn){ .op = OP_JIT, .rd = (uint8_t)r.count, .len = (uint8_t)r.bytes,
				 .insn = off };
}

void jtc_clear(struct hart *h)
{
	for (unsigned c = 0; h->jtc_filled; c++) {
		if (!(h->jtc_filled & 1u << c))
			continue;
		for (unsigned i = 0; i < JTC_SIZE; i++)
			h->jtcs[c][i].pc = TLB_NONE;
		h->jtc_filled &= (uint8_t)~(1u << c);
	}
}

void jit_reset(struct hart *h)
{
	jtc_clear(h);
	h->jit_used = 0;
	h->jit_full = false;
}

void jit_free(struct hart *h)
{
	if (h->jit_arena)
		munmap(h->jit_arena, JIT_ARENA);
	h->jit_arena = NULL;
	jit_reset(h);
}
