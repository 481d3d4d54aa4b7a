/*
 * test_hart.c - the hart, its MMU and its CSRs behind a bus of the test's
 * own (cpu/bus.h): no machine, no devices, no threads.
 *
 * A fake bus holds 1 MiB of RAM at 0x8000_0000, answers MMIO at one
 * address, counts ecalls, serves missing pages and keeps the dirty log
 * and the code map. Each test writes a few instructions into RAM, runs
 * the hart with hart_run_burst() on this thread (both the decoded
 * executor and the reference interpreter, which must agree), and looks
 * at registers, CSRs, RAM and what the bus saw.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cpu/bus.h"
#include "cpu/hart.h"

#define RAM_BASE   0x80000000ULL
#define RAM_SIZE   (1u << 20)
#define PAGES      (RAM_SIZE / 4096)
#define MMIO_ADDR  0x10000000ULL
#define TRAP_VEC   (RAM_BASE + 0x800)    /* mtvec/stvec: a wfi */

struct tbus {
	struct cpu_bus bus;
	uint8_t *ram;
	_Atomic uint64_t dirty[PAGES / 64];
	atomic_bool logging;
	_Atomic uint32_t code[PAGES];
	atomic_uint marking;
	_Atomic uint64_t missing_bits[PAGES / 64];
	_Atomic uint64_t *missing;
	atomic_int throttle;
	struct hart *harts[1];
	uint64_t mmio_val, mmio_pa;
	unsigned mmio_writes, ecalls, fetches, fails;
	uint64_t fetched_pfn;
};

/* ---- the fake bus ---------------------------------------------------------- */

static bool t_mmio_read(void *ctx, uint64_t pa, unsigned size, uint64_t *val)
{
	struct tbus *t = ctx;
	(void)size;
	if (pa != MMIO_ADDR)
		return false;
	*val = t->mmio_val;
	return true;
}

static bool t_mmio_write(void *ctx, uint64_t pa, unsigned size, uint64_t val)
{
	struct tbus *t = ctx;
	(void)size;
	if (pa != MMIO_ADDR)
		return false;
	t->mmio_pa = pa;
	t->mmio_val = val;
	t->mmio_writes++;
	return true;
}

static void t_ecall(void *ctx, struct hart *h)
{
	struct tbus *t = ctx;
	t->ecalls++;
	h->x[10] = 42;
	h->pc += 4;
}

static void t_park(void *ctx, struct hart *h) { (void)ctx; (void)h; }
static uint64_t t_time(void *ctx) { (void)ctx; return 1000; }
static void t_sync(void *ctx, unsigned req, struct hart *self, uint64_t mask)
{
	(void)ctx; (void)req; (void)self; (void)mask;
}

static void t_fetch(void *ctx, uint64_t pfn)
{
	struct tbus *t = ctx;
	t->fetches++;
	t->fetched_pfn = pfn;
	memset(t->ram + pfn * 4096, 0x5a, 4096);      /* the page "arrives" */
	atomic_fetch_and(&t->missing_bits[pfn / 64], ~(1ULL << (pfn % 64)));
}

static void t_fail(void *ctx, const char *why)
{
	struct tbus *t = ctx;
	(void)why;
	t->fails++;
}

static const struct cpu_bus_ops t_ops = {
	.mmio_read = t_mmio_read, .mmio_write = t_mmio_write, .ecall = t_ecall,
	.park = t_park, .time = t_time, .sync_harts = t_sync, .fetch_page = t_fetch,
	.fail = t_fail,
};

struct fixture {
	struct tbus *t;
	struct hart *h;
	uint32_t *code;          /* RAM as words */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct tbus *t = calloc(1, sizeof(*t));
	t->ram = calloc(1, RAM_SIZE);
	t->bus = (struct cpu_bus){
		.ops = &t_ops, .ctx = t, .ram = t->ram, .ram_base = RAM_BASE,
		.ram_size = RAM_SIZE, .timebase_hz = 10000000, .dirty = t->dirty,
		.logging = &t->logging, .code = t->code, .code_marking = &t->marking,
		.missing = &t->missing,
		.throttle_pct = &t->throttle, .harts = t->harts, .nharts = 1,
	};
	f->h = aligned_alloc(64, (sizeof(struct hart) + 63) & ~(size_t)63);
	hart_init(f->h, &t->bus, 0);
	t->harts[0] = f->h;
	f->t = t;
	f->code = (uint32_t *)t->ram;
	f->h->jit = false;                     /* the decoded executor, whatever */
	f->h->reference = false;               /* FERRY_CPU says (setup_jit) */
	f->h->pc = RAM_BASE;
	f->h->mtvec = TRAP_VEC;
	f->h->stvec = TRAP_VEC;
	f->code[0x800 / 4] = 0x10500073;       /* wfi */
	*state = f;
	return 0;
}

/* The same, with the JIT on (jit.c): the tests registered with it must
 * come out the same. */
static int setup_jit(void **state)
{
	setup(state);
	struct fixture *f = *state;
	f->h->jit = true;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	hart_free_code(f->h);
	free(f->h);
	free(f->t->ram);
	free(f->t);
	free(f);
	return 0;
}

/* ---- encoders ---------------------------------------------------------------- */

static uint32_t enc_i(uint32_t op, unsigned rd, unsigned f3, unsigned rs1, int imm)
{
	return op | rd << 7 | f3 << 12 | rs1 << 15 | ((uint32_t)imm & 0xfff) << 20;
}
static uint32_t enc_s(unsigned f3, unsigned rs1, unsigned rs2, int imm)
{
	uint32_t u = (uint32_t)imm;
	return 0x23 | (u & 0x1f) << 7 | f3 << 12 | rs1 << 15 | rs2 << 20 | (u >> 5 & 0x7f) << 25;
}
static uint32_t enc_b(unsigned f3, unsigned rs1, unsigned rs2, int off)
{
	uint32_t u = (uint32_t)off;
	return 0x63 | (u >> 11 & 1) << 7 | (u >> 1 & 0xf) << 8 | f3 << 12 | rs1 << 15 |
	       rs2 << 20 | (u >> 5 & 0x3f) << 25 | (u >> 12 & 1) << 31;
}
static uint32_t enc_j(unsigned rd, int off)
{
	uint32_t u = (uint32_t)off;
	return 0x6f | rd << 7 | (u >> 12 & 0xff) << 12 | (u >> 11 & 1) << 20 |
	       (u >> 1 & 0x3ff) << 21 | (u >> 20 & 1) << 31;
}
#define ADDI(rd, rs, imm)  enc_i(0x13, rd, 0, rs, imm)
#define SLLI(rd, rs, sh)   enc_i(0x13, rd, 1, rs, sh)
#define LD(rd, rs, imm)    enc_i(0x03, rd, 3, rs, imm)
#define SD(rs2, rs1, imm)  enc_s(3, rs1, rs2, imm)
#define SW(rs2, rs1, imm)  enc_s(2, rs1, rs2, imm)
#define BNE(a, b, off)     enc_b(1, a, b, off)
#define JAL(rd, off)       enc_j(rd, off)
#define JALR(rd, rs, imm)  enc_i(0x67, rd, 0, rs, imm)
#define AUIPC(rd, hi)      (0x17u | (rd) << 7 | ((uint32_t)(hi) << 12))
#define WFI                0x10500073u
#define ECALL              0x00000073u
#define FENCE_I            0x0000100fu
enum { A0 = 10, A1 = 11, A2 = 12, A3 = 13, A4 = 14, A5 = 15, T0 = 5, T1 = 6, RA = 1 };

/* rd = RAM_BASE + off, from code placed at RAM_BASE + at (auipc + addi). */
static void la(uint32_t *w, unsigned rd, uint64_t at, uint64_t off)
{
	int64_t d = (int64_t)off - (int64_t)at;
	int64_t hi = (d + 0x800) >> 12, lo = d - hi * 4096;
	w[0] = AUIPC(rd, hi & 0xfffff);
	w[1] = ADDI(rd, rd, (int)lo);
}

/* Runs until the hart sits in wfi (at most budget instructions). */
static void run(struct fixture *f, uint64_t budget)
{
	for (uint64_t n = 0; n < budget && !f->h->wfi; n += 64)
		hart_run_burst(f->h, 64);
}

/* ---- tests --------------------------------------------------------------------- */

static void loop_counts_and_retires_exactly(void **state)
{
	struct fixture *f = *state;
	for (int ref = 0; ref < 3; ref++) {     /* decoded, reference, JIT */
		uint32_t prog[] = {
			ADDI(A0, 0, 0), ADDI(A1, 0, 10),
			ADDI(A0, A0, 3), ADDI(A1, A1, -1), BNE(A1, 0, -8),
			WFI,
		};
		memcpy(f->code, prog, sizeof(prog));
		hart_drop_code(f->h);
		f->h->reference = ref == 1;
		f->h->jit = ref == 2;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		run(f, 1000);
		assert_int_equal(f->h->x[A0], 30);
		assert_int_equal(f->h->x[A1], 0);
		assert_int_equal(f->h->instret, 2 + 3 * 10 + 1);
		assert_int_equal(f->h->pc, RAM_BASE + 6 * 4);
		assert_int_equal(f->h->x[0], 0);
	}
}

/* Calls, returns and jumps between runs on one page: jal and jalr ending
 * runs, a branch from one compiled run into another (chaining), in all
 * three executors, with the same registers, links and instret. */
static void calls_and_chained_runs_count_exactly(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = {
		ADDI(A1, 0, 10), ADDI(A0, 0, 0), JAL(0, 8),     /* to body */
		WFI,
		ADDI(A0, A0, 3), JAL(RA, 32),                   /* body: call fn */
		ADDI(A2, A0, 0), JAL(0, 8),                     /* to tail */
		WFI,
		ADDI(A1, A1, -1), ADDI(A3, A1, 0), BNE(A1, 0, -28),  /* tail: to body */
		WFI,
		ADDI(A2, A2, 1), JALR(0, RA, 0),                /* fn */
	};
	for (int mode = 0; mode < 3; mode++) {  /* decoded, reference, JIT */
		memcpy(f->code, prog, sizeof(prog));
		hart_drop_code(f->h);
		f->h->reference = mode == 1;
		f->h->jit = mode == 2;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		memset(f->h->x, 0, sizeof(f->h->x));
		run(f, 1000);
		assert_int_equal(f->h->x[A0], 30);
		assert_int_equal(f->h->x[A1], 0);
		assert_int_equal(f->h->x[A2], 30);
		assert_int_equal(f->h->x[A3], 0);
		assert_int_equal(f->h->x[RA], RAM_BASE + 6 * 4);
		assert_int_equal(f->h->instret, 3 + 10 * 9 + 1);
		assert_int_equal(f->h->pc, RAM_BASE + 13 * 4);
		assert_int_equal(f->h->x[0], 0);
	}
}

/* Calls from one page to a function on another and back (the JIT goes
 * from run to run through its jump-target cache), in all three
 * executors, with instret exact; then the callee is rewritten behind the
 * CPU's back (device DMA): the next call runs the new bytes, though the
 * caller's page and the cache entry for the callee were left as they
 * were. */
static void calls_across_pages_run_rewritten_callees(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = {
		ADDI(A1, 0, 20), ADDI(A0, 0, 0),
		JAL(RA, 0x2040 - 8),                        /* loop: call fn */
		ADDI(A1, A1, -1), BNE(A1, 0, -8),
		WFI,
	};
	for (int mode = 0; mode < 3; mode++) {  /* decoded, reference, JIT */
		memcpy(f->code, prog, sizeof(prog));
		f->code[0x2040 / 4] = ADDI(A0, A0, 3);
		f->code[0x2044 / 4] = JALR(0, RA, 0);
		hart_drop_code(f->h);
		f->h->reference = mode == 1;
		f->h->jit = mode == 2;
		for (int round = 0; round < 2; round++) {
			f->h->pc = RAM_BASE;
			f->h->wfi = false;
			f->h->instret = 0;
			run(f, 1000);
			assert_int_equal(f->h->x[A0], round ? 100 : 60);
			assert_int_equal(f->h->x[A1], 0);
			assert_int_equal(f->h->x[RA], RAM_BASE + 12);
			assert_int_equal(f->h->instret, 2 + 20 * 5 + 1);
			assert_int_equal(f->h->pc, RAM_BASE + 6 * 4);
			f->code[0x2040 / 4] = ADDI(A0, A0, 5);
			cpu_code_written(&f->t->bus, RAM_BASE + 0x2040, 4);
		}
	}
}

/* A loop compiled as one run that keeps its registers in host registers
 * while it goes round: a load in it misses the TLB on every new page
 * (the run leaves at the load), so what the previous round wrote after
 * the load must be in the registers the executor then sees; the budget
 * runs out many times on the way. All three executors agree. */
static void loop_leaving_at_a_load_keeps_its_registers(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = {
		0, 0,                                       /* la a0, buf */
		ADDI(A1, 0, 100), ADDI(A2, 0, 0), ADDI(A3, 0, 0),
		ADDI(A2, A2, 1),                            /* loop */
		LD(T0, A0, 0),
		ADDI(A0, A0, 1024),
		(0x33 | A3 << 7 | A3 << 15 | T0 << 20),     /* add a3, a3, t0 */
		ADDI(A1, A1, -1), BNE(A1, 0, -20),
		WFI,
	};
	la(prog, A0, 0, 0x10000);
	for (unsigned i = 0; i < 100; i++)
		memcpy(f->t->ram + 0x10000 + i * 1024, &(uint64_t){ i + 1 }, 8);
	for (int mode = 0; mode < 3; mode++) {
		memcpy(f->code, prog, sizeof(prog));
		hart_drop_code(f->h);
		tlb_flush_all(f->h);
		f->h->reference = mode == 1;
		f->h->jit = mode == 2;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		run(f, 10000);
		assert_int_equal(f->h->x[A0], RAM_BASE + 0x10000 + 100 * 1024);
		assert_int_equal(f->h->x[A1], 0);
		assert_int_equal(f->h->x[A2], 100);
		assert_int_equal(f->h->x[A3], 100 * 101 / 2);
		assert_int_equal(f->h->x[T0], 100);
		assert_int_equal(f->h->instret, 5 + 100 * 6 + 1);
		assert_int_equal(f->h->pc, RAM_BASE + 12 * 4);
	}
}

/* FERRY_CPU picks the executor: the JIT by default (on x86-64), the
 * decoded executor or the reference interpreter by name; anything else
 * is an error ferry-vm reports (and hart_init takes the default). */
static void ferry_cpu_picks_the_executor(void **state)
{
	struct fixture *f = *state;
	static const struct { const char *env; bool jit, reference, bad; } cases[] = {
		{ NULL, true, false, false }, { "jit", true, false, false },
		{ "decoded", false, false, false }, { "interp", false, true, false },
		{ "qemu", true, false, true },
	};
	char *saved = getenv("FERRY_CPU") ? strdup(getenv("FERRY_CPU")) : NULL;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].env)
			setenv("FERRY_CPU", cases[i].env, 1);
		else
			unsetenv("FERRY_CPU");
		hart_free_code(f->h);
		hart_init(f->h, &f->t->bus, 0);
#if defined(__x86_64__)
		assert_int_equal(f->h->jit, cases[i].jit);
#endif
		assert_int_equal(f->h->reference, cases[i].reference);
		assert_int_equal(cpu_executor_error() != NULL, cases[i].bad);
	}
	if (saved)
		setenv("FERRY_CPU", saved, 1);
	else
		unsetenv("FERRY_CPU");
	free(saved);
}

/* F/D instructions inside a run of integer ones (the JIT hands them to
 * the reference interpreter from the run): a register the run holds and
 * an F/D instruction writes (fmv.x.d) is seen afresh after it; with the
 * FPU off (mstatus.FS = 0) the first one traps precisely: mepc, mcause,
 * the instructions before it retired, none after it run; an F/D store
 * into the instructions after it makes them run as written. */
static void fp_inside_a_run_is_exact(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = {
		ADDI(A0, 0, 5), ADDI(A1, 0, 2), ADDI(A3, 0, 100),
		0xf20500d3,                                   /* fmv.d.x f1, a0 */
		0xe20086d3,                                   /* fmv.x.d a3, f1 */
		(0x33 | A3 << 7 | A3 << 15 | A1 << 20),       /* add a3, a3, a1 */
		ADDI(A2, 0, 3), WFI,
	};
	for (int mode = 0; mode < 6; mode++) {  /* decoded, reference, JIT; FPU on, off */
		bool fpu = mode < 3;
		memcpy(f->code, prog, sizeof(prog));
		hart_drop_code(f->h);
		f->h->reference = mode % 3 == 1;
		f->h->jit = mode % 3 == 2;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		f->h->mcause = 0;
		f->h->x[A2] = 0;
		f->h->mstatus = (f->h->mstatus & ~(3ULL << 13)) | (fpu ? 1ULL << 13 : 0);
		run(f, 1000);
		if (fpu) {
			assert_int_equal(f->h->x[A3], 7);
			assert_int_equal(f->h->f[1], 5);
			assert_int_equal(f->h->x[A2], 3);
			assert_int_equal(f->h->instret, 8);
			assert_int_equal(f->h->pc, RAM_BASE + 8 * 4);
		} else {
			assert_int_equal(f->h->mcause, 2);            /* illegal instruction */
			assert_int_equal(f->h->mepc, RAM_BASE + 12);
			assert_int_equal(f->h->x[A3], 100);
			assert_int_equal(f->h->x[A2], 0);
			assert_int_equal(f->h->instret, 3 + 1);       /* + the wfi at mtvec */
			assert_int_equal(f->h->pc, TRAP_VEC + 4);
		}
	}

	/* an F/D store into code after it, code that ran (and was compiled)
	 * the round before: the new bytes run */
	uint32_t smc[] = {
		0, 0, 0, 0,                                   /* la a4, word 8; la a5, data */
		ADDI(A1, 0, 2),
		0x0007b087,                                   /* loop: fld f1, 0(a5) */
		0x00173027,                                   /* fsd f1, 0(a4) */
		ADDI(A5, A5, 8),
		ADDI(A2, 0, 3), ADDI(A2, A2, 50),             /* round 2: a2 = 9, a2 += 1 */
		ADDI(A1, A1, -1), BNE(A1, 0, -24),
		WFI,
	};
	la(&smc[0], A4, 0, 32);
	la(&smc[2], A5, 8, 0x3000);
	uint64_t words[2] = { smc[8] | (uint64_t)smc[9] << 32,
			      ADDI(A2, 0, 9) | (uint64_t)ADDI(A2, A2, 1) << 32 };
	for (int mode = 0; mode < 3; mode++) {
		memcpy(f->code, smc, sizeof(smc));
		memcpy(f->t->ram + 0x3000, words, sizeof(words));
		hart_drop_code(f->h);
		f->h->reference = mode == 1;
		f->h->jit = mode == 2;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		f->h->mstatus |= 1ULL << 13;
		run(f, 1000);
		assert_int_equal(f->h->x[A2], 10);
		assert_int_equal(f->h->x[A1], 0);
		assert_int_equal(f->h->instret, 5 + 2 * 7 + 1);
	}
}

/* The JIT's templates against the decoded executor: one run of ALU
 * instructions over awkward values (32-bit wrap, shifts by 0 and 63/31). */
static void jit_run_matches_the_executor(void **state)
{
	struct fixture *f = *state;
	uint64_t want[32];
	/* every result in its own register, so none hides another */
#define R(op, rd, f3, f7) ((op) | (rd) << 7 | (f3) << 12 | A0 << 15 | A1 << 20 | (f7) << 25)
	uint32_t prog[] = {
		ADDI(A0, 0, -1), SLLI(A1, A0, 63), enc_i(0x13, A2, 5, A1, 0x400 | 63), /* srai */
		enc_i(0x1b, A3, 0, A0, 0x7ff),                  /* addiw */
		enc_i(0x1b, 14, 1, A1, 31), enc_i(0x1b, 15, 5, A0, 0),  /* slliw, srliw 0 */
		enc_i(0x1b, 16, 5, A0, 0x400 | 31),             /* sraiw */
		ADDI(A1, 0, 37),                                /* a shift count past 31 */
		R(0x33, 17, 0, 1), R(0x3b, 18, 0, 1),           /* mul, mulw */
		R(0x33, 19, 1, 0), R(0x33, 20, 5, 0), R(0x33, 21, 5, 0x20),  /* sll srl sra */
		R(0x3b, 22, 1, 0), R(0x3b, 23, 5, 0), R(0x3b, 24, 5, 0x20),  /* sllw srlw sraw */
		R(0x33, 25, 0, 0x20), R(0x3b, 26, 0, 0x20), R(0x3b, 27, 0, 0),   /* sub subw addw */
		R(0x33, 28, 4, 0), R(0x33, 29, 6, 0), R(0x33, 30, 7, 0), R(0x33, 31, 0, 0),
		enc_i(0x13, 5, 4, A0, -5), enc_i(0x13, 6, 6, A1, 0x7f), enc_i(0x13, 7, 7, A0, -16),
		WFI,
	};
#undef R
	for (int jit = 0; jit < 2; jit++) {
		memcpy(f->code, prog, sizeof(prog));
		hart_drop_code(f->h);
		f->h->jit = jit;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		memset(f->h->x, 0, sizeof(f->h->x));
		run(f, 1000);
		if (!jit)
			memcpy(want, f->h->x, sizeof(want));
		else
			assert_memory_equal(want, f->h->x, sizeof(want));
	}
}

/* A load from an address nothing answers: an access fault at the load,
 * with mepc, mcause, mtval right and the instructions before it retired. */
static void fault_inside_a_block_is_precise(void **state)
{
	struct fixture *f = *state;
	for (int ref = 0; ref < 2; ref++) {
		uint32_t prog[] = {
			ADDI(A1, 0, 1), ADDI(A0, 0, 0x123), SLLI(A0, A0, 12),
			LD(A2, A0, 8), ADDI(A3, 0, 7), WFI,
		};
		memcpy(f->code, prog, sizeof(prog));
		f->h->reference = ref;
		f->h->pc = RAM_BASE;
		f->h->wfi = false;
		f->h->instret = 0;
		f->h->x[A3] = 0;
		run(f, 1000);
		assert_int_equal(f->h->mcause, 5);                 /* load access fault */
		assert_int_equal(f->h->mepc, RAM_BASE + 12);
		assert_int_equal(f->h->mtval, 0x123008);
		assert_int_equal(f->h->x[A1], 1);
		assert_int_equal(f->h->x[A3], 0);                  /* after it: not run */
		assert_int_equal(f->h->instret, 3 + 1);            /* + the wfi at mtvec */
		assert_int_equal(f->h->pc, TRAP_VEC + 4);
	}
}

static void mmio_goes_to_the_bus(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = {
		ADDI(A0, 0, 1), SLLI(A0, A0, 28), ADDI(A1, 0, 0x55),
		SW(A1, A0, 0), LD(A2, A0, 0), WFI,
	};
	memcpy(f->code, prog, sizeof(prog));
	f->t->mmio_val = 0;
	run(f, 100);
	assert_int_equal(f->t->mmio_writes, 1);
	assert_int_equal(f->t->mmio_pa, MMIO_ADDR);
	assert_int_equal(f->h->x[A2], 0x55);
}

/* A store to a page that holds decoded code: the next run of that code
 * runs the new bytes (here after fence.i); so does a write from outside
 * the CPU reported through cpu_code_written (device DMA). */
static void written_code_runs_new_bytes(void **state)
{
	struct fixture *f = *state;
	uint32_t insn = ADDI(A0, A0, 100);
	uint32_t prog[11] = {
		ADDI(A0, 0, 0),
		JAL(RA, 0x40 - 4),                  /* fn: a0 += 1, while decoded */
		0, 0,                               /* la a1, fn */
		0, 0,                               /* la a3, the new instruction */
		enc_i(0x03, A2, 2, A3, 0),          /* lw a2, 0(a3) */
		SW(A2, A1, 0),                      /* fn's first instruction */
		FENCE_I,
		JAL(RA, 0x40 - 36),                 /* fn again: a0 += 100 */
		WFI,
	};
	la(&prog[2], A1, 8, 0x40);
	la(&prog[4], A3, 16, 0x100);
	memcpy(f->code, prog, sizeof(prog));
	f->code[0x40 / 4] = ADDI(A0, A0, 1);
	f->code[0x44 / 4] = JALR(0, RA, 0);
	f->code[0x100 / 4] = insn;
	run(f, 1000);
	assert_int_equal(f->code[0x40 / 4], insn);
	assert_int_equal(f->h->x[A0], 101);

	/* device DMA: rewrite fn's first instruction behind the CPU's back */
	f->code[0x40 / 4] = ADDI(A0, A0, 7);
	cpu_code_written(&f->t->bus, RAM_BASE + 0x40, 4);
	uint32_t again[] = { ADDI(A0, 0, 0), JAL(RA, 0x40 - 4), WFI };
	memcpy(f->code, again, sizeof(again));
	cpu_code_written(&f->t->bus, RAM_BASE, sizeof(again));
	f->h->pc = RAM_BASE;
	f->h->wfi = false;
	run(f, 1000);
	assert_int_equal(f->h->x[A0], 7);
}

/* While logging, the first store to a clean page marks it dirty; after a
 * harvest (marks cleared, write entries dropped) the next store marks it
 * again. */
static void dirty_log_sees_first_store_after_harvest(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = { 0, 0, ADDI(A0, 0, 9), SD(A0, A1, 0), SD(A0, A1, 8), WFI };
	la(prog, A1, 0, 0x5000);
	memcpy(f->code, prog, sizeof(prog));
	atomic_store(&f->t->logging, true);
	run(f, 100);
	assert_true(atomic_load(&f->t->dirty[0]) & (1ULL << 5));
	atomic_store(&f->t->dirty[0], 0);
	tlb_flush_writes(f->h);
	f->h->pc = RAM_BASE;
	f->h->wfi = false;
	run(f, 100);
	assert_int_equal(atomic_load(&f->t->dirty[0]), 1ULL << 5);
	atomic_store(&f->t->logging, false);
}

/* A page not here yet is fetched through the bus before the load reads it. */
static void missing_page_is_fetched_first(void **state)
{
	struct fixture *f = *state;
	uint32_t prog[] = { 0, 0, LD(A0, A1, 16), WFI };
	la(prog, A1, 0, 0x7000);
	memcpy(f->code, prog, sizeof(prog));
	f->t->missing_bits[0] = 1ULL << 7;
	f->t->missing = f->t->missing_bits;
	run(f, 100);
	assert_int_equal(f->t->fetches, 1);
	assert_int_equal(f->t->fetched_pfn, 7);
	assert_int_equal(f->h->x[A0], 0x5a5a5a5a5a5a5a5aULL);
	f->t->missing = NULL;
}

/* An ecall from S mode goes to the bus (the SBI); from U mode it traps. */
static void ecall_from_s_goes_to_the_bus(void **state)
{
	struct fixture *f = *state;
	f->code[0] = ECALL;
	f->code[1] = WFI;
	f->h->priv = PRV_S;
	hart_update_tlb_context(f->h);
	run(f, 100);
	assert_int_equal(f->t->ecalls, 1);
	assert_int_equal(f->h->x[A0], 42);

	f->h->priv = PRV_U;
	hart_update_tlb_context(f->h);
	f->h->pc = RAM_BASE;
	f->h->wfi = false;
	hart_run_burst(f->h, 1);
	assert_int_equal(f->t->ecalls, 1);
	assert_int_equal(f->h->scause, 8);                  /* delegated to S */
	assert_int_equal(f->h->sepc, RAM_BASE);
	assert_int_equal(f->h->pc, TRAP_VEC);
}

/* A 32-bit instruction whose halves lie on two pages. */
static void instruction_across_a_page_end(void **state)
{
	struct fixture *f = *state;
	uint32_t insn = ADDI(A0, A0, 77);
	uint16_t *half = (uint16_t *)(f->t->ram + 0x1ffe);
	f->code[0] = ADDI(A0, 0, 1);
	f->code[1] = JAL(0, 0x1ffe - 4);
	half[0] = (uint16_t)insn;
	half[1] = (uint16_t)(insn >> 16);
	memcpy(f->t->ram + 0x2002, &(uint32_t){ WFI }, 4);
	run(f, 100);
	assert_int_equal(f->h->x[A0], 78);
	assert_int_equal(f->h->pc, RAM_BASE + 0x2006);
}

/* Sv39: a walk maps the page, sets A (and D on a write), and a missing
 * mapping raises a page fault with the address in stval. */
static void sv39_walk_sets_accessed_and_dirty(void **state)
{
	struct fixture *f = *state;
	uint64_t *root = (uint64_t *)(f->t->ram + 0x10000);
	uint64_t *l1 = (uint64_t *)(f->t->ram + 0x11000);
	uint64_t *l0 = (uint64_t *)(f->t->ram + 0x12000);
	uint64_t va = 0x40201000ULL, pa;
	root[1] = ((RAM_BASE + 0x11000) >> 12) << 10 | 1;             /* V */
	l1[1] = ((RAM_BASE + 0x12000) >> 12) << 10 | 1;
	l0[1] = ((RAM_BASE + 0x20000) >> 12) << 10 | 0x7;             /* V R W */
	f->h->priv = PRV_S;
	assert_true(csr_write(f->h, 0x180, 8ULL << 60 | (RAM_BASE + 0x10000) >> 12));
	hart_update_tlb_context(f->h);
	assert_true(mmu_translate(f->h, va + 0x34, ACC_READ, &pa));
	assert_int_equal(pa, RAM_BASE + 0x20034);
	assert_int_equal(l0[1] & 0xc0, 0x40);                          /* A, not D */
	assert_true(mmu_translate(f->h, va, ACC_WRITE, &pa));
	assert_int_equal(l0[1] & 0xc0, 0xc0);                          /* A and D */
	assert_false(mmu_translate(f->h, va + 0x1000, ACC_READ, &pa));
	assert_int_equal(f->h->scause, 13);                            /* load page fault */
	assert_int_equal(f->h->stval, va + 0x1000);
}

static void csrs_keep_their_rules(void **state)
{
	struct fixture *f = *state;
	struct hart *h = f->h;
	uint64_t v;
	/* mstatus.MPP is WARL: 2 (no H mode) leaves it alone */
	assert_true(csr_write(h, 0x300, 3ULL << 11));
	assert_true(csr_write(h, 0x300, 2ULL << 11));
	assert_true(csr_read(h, 0x300, &v));
	assert_int_equal((v >> 11) & 3, 3);
	/* sstatus is a masked view: MPP does not show */
	assert_true(csr_read(h, 0x100, &v));
	assert_int_equal((v >> 11) & 3, 0);
	/* misa is read-only here */
	uint64_t misa;
	assert_true(csr_read(h, 0x301, &misa));
	assert_true(csr_write(h, 0x301, 0));
	assert_true(csr_read(h, 0x301, &v));
	assert_int_equal(v, misa);
	/* satp ignores an unsupported mode */
	h->priv = PRV_S;
	assert_true(csr_write(h, 0x180, 5ULL << 60 | 1));
	assert_true(csr_read(h, 0x180, &v));
	assert_int_equal(v, 0);
	/* M-mode CSRs are out of reach from S; cycle from U needs mcounteren */
	assert_false(csr_read(h, 0x300, &v));
	h->priv = PRV_U;
	h->mcounteren = 0;
	assert_false(csr_read(h, 0xc00, &v));
	h->mcounteren = 7;
	assert_true(csr_read(h, 0xc01, &v));
	assert_int_equal(v, 1000);                          /* the bus's clock */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(loop_counts_and_retires_exactly, setup, teardown),
		cmocka_unit_test_setup_teardown(jit_run_matches_the_executor, setup, teardown),
		cmocka_unit_test_setup_teardown(calls_and_chained_runs_count_exactly, setup, teardown),
		cmocka_unit_test_setup_teardown(ferry_cpu_picks_the_executor, setup, teardown),
		cmocka_unit_test_setup_teardown(fp_inside_a_run_is_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(calls_across_pages_run_rewritten_callees, setup,
						teardown),
		cmocka_unit_test_setup_teardown(loop_leaving_at_a_load_keeps_its_registers, setup,
						teardown),
		cmocka_unit_test_setup_teardown(fault_inside_a_block_is_precise, setup, teardown),
		cmocka_unit_test_setup_teardown(mmio_goes_to_the_bus, setup, teardown),
		cmocka_unit_test_setup_teardown(written_code_runs_new_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(dirty_log_sees_first_store_after_harvest, setup,
						teardown),
		cmocka_unit_test_setup_teardown(missing_page_is_fetched_first, setup, teardown),
		cmocka_unit_test_setup_teardown(ecall_from_s_goes_to_the_bus, setup, teardown),
		cmocka_unit_test_setup_teardown(instruction_across_a_page_end, setup, teardown),
		cmocka_unit_test_setup_teardown(sv39_walk_sets_accessed_and_dirty, setup, teardown),
		cmocka_unit_test_setup_teardown(csrs_keep_their_rules, setup, teardown),
		/* again under the JIT: runs with loads and stores, exits on TLB misses */
		cmocka_unit_test_setup_teardown(fault_inside_a_block_is_precise, setup_jit, teardown),
		cmocka_unit_test_setup_teardown(mmio_goes_to_the_bus, setup_jit, teardown),
		cmocka_unit_test_setup_teardown(written_code_runs_new_bytes, setup_jit, teardown),
		cmocka_unit_test_setup_teardown(dirty_log_sees_first_store_after_harvest, setup_jit,
						teardown),
		cmocka_unit_test_setup_teardown(missing_page_is_fetched_first, setup_jit, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
