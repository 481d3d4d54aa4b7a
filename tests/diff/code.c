/*
 * code.c - differential tests for what a decoded-instruction cache can get
 * wrong: code that rewrites itself, traps in the middle of a run of
 * instructions, and instructions at and across page ends.
 *
 * - smc: a function in an rwx page stores a new instruction into its own
 *   page a few bytes ahead, runs fence.i and falls into it; and code that
 *   has run many times (so it is decoded and hot) is rewritten from
 *   outside, with fence.i, and run again, including the second half of a
 *   32-bit instruction that straddles two pages.
 * - traps: straight-line code that faults part-way (load and store page
 *   faults, an illegal 32-bit and 16-bit instruction, ebreak, a fetch from
 *   a page with no access, a loop that walks into a PROT_NONE page); the
 *   handler records the faulting pc as an offset into the code, the fault
 *   address as an offset into its page, and the registers the
 *   instructions before the fault set and the ones after it would have
 *   set: precise exceptions with the right sepc/stval.
 * - cross: a compressed instruction in a page's last halfword, a 32-bit
 *   one in its last word, a branch and a jump from a page's end to the next
 *   page, each run many times.
 * - other hart: one thread rewrites a function and flushes the
 *   instruction cache of every hart (__builtin___clear_cache, which is
 *   Linux's riscv_flush_icache: an SBI remote fence.i), another thread,
 *   on another hart when there are two, runs it after each rewrite and
 *   must see every new version (test_diff_code_smp2 runs this with two).
 */
#define _GNU_SOURCE
#include "diff.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <ucontext.h>

#define PAGE 4096

/* ---- encoders -------------------------------------------------------------- */

static uint32_t addi(unsigned rd, unsigned rs1, int imm)
{
	return ((uint32_t)(imm & 0xfff) << 20) | rs1 << 15 | rd << 7 | 0x13;
}
static uint16_t c_addi(unsigned rd, int imm)
{
	return (uint16_t)(((imm & 0x20) << 7) | rd << 7 | (imm & 0x1f) << 2 | 1);
}
static uint32_t jal(unsigned rd, int off)
{
	uint32_t u = (uint32_t)off;
	return 0x6f | rd << 7 | ((u >> 12) & 0xff) << 12 | ((u >> 11) & 1) << 20 |
	       ((u >> 1) & 0x3ff) << 21 | ((u >> 20) & 1) << 31;
}
static uint32_t beq(unsigned rs1, unsigned rs2, int off)
{
	uint32_t u = (uint32_t)off;
	return 0x63 | ((u >> 11) & 1) << 7 | ((u >> 1) & 0xf) << 8 | rs1 << 15 |
	       rs2 << 20 | ((u >> 5) & 0x3f) << 25 | ((u >> 12) & 1) << 31;
}
#define RET      0x00008067u
#define C_JR_RA  0x8082u
#define C_NOP    0x0001u
#define FENCE_I  0x0000100fu
#define SW_A1_A2 0x00b62023u     /* sw a1, 0(a2) */
#define A0 10
#define A1 11

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static void sync_code(void *from, void *to)
{
	__builtin___clear_cache(from, to);
	asm volatile("fence.i" ::: "memory");
}

typedef uint64_t (*fn1)(uint64_t);
typedef uint64_t (*fn3)(uint64_t, uint64_t, uint64_t);

static uint8_t *map_code(size_t pages)
{
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* ---- self-modifying code ----------------------------------------------------- */

static void test_smc(void)
{
	static const int imms[] = { 1, -7, 300, 2047, -2048, 0, 2, -1, 15, 16, 31, -32, 1000, -999 };
	uint8_t *code = map_code(2);
	unsigned i, k;

	if (!code) {
		printf("smc: mmap rwx failed\n");
		return;
	}
	/* f(a0, a1 = new insn, a2 = &slot): sw a1,0(a2); fence.i; <slot>; ret */
	put32(code + 0, SW_A1_A2);
	put32(code + 4, FENCE_I);
	put32(code + 8, addi(0, 0, 0));
	put32(code + 12, RET);
	sync_code(code, code + 16);
	for (i = 0; i < DIFF_ARRAY_SIZE(imms); i++) {
		uint64_t r = 0;
		for (k = 0; k < 50; k++)   /* the same slot rewritten while hot */
			r += ((fn3)(void *)code)(k, addi(A0, A0, imms[i]),
						 (uint64_t)(uintptr_t)(code + 8));
		printf("smc own page, addi %d: %" PRIx64 "\n", imms[i], r);
	}

	/* hot code rewritten from outside: run 1000 times, patch, run again */
	for (i = 0; i < DIFF_ARRAY_SIZE(imms); i++) {
		uint64_t r = 0;
		put32(code + 64, addi(A0, A0, imms[i]));
		put16(code + 68, c_addi(A0, (imms[i] & 31) | 1));
		put16(code + 70, C_JR_RA);
		sync_code(code + 64, code + 72);
		for (k = 0; k < 1000; k++)
			r += ((fn1)(void *)(code + 64))(k);
		printf("smc hot, addi %d: %" PRIx64 "\n", imms[i], r);
	}

	/* a 32-bit instruction across the page end whose upper half (on the
	 * second page, which is also run) is rewritten */
	put16(code + PAGE - 2, (uint16_t)addi(A0, A0, 0));
	put16(code + PAGE + 2, c_addi(A0, 3));
	put16(code + PAGE + 4, C_JR_RA);
	for (i = 0; i < DIFF_ARRAY_SIZE(imms); i++) {
		uint64_t r = 0;
		put16(code + PAGE, (uint16_t)(addi(A0, A0, imms[i]) >> 16));
		sync_code(code + PAGE - 2, code + PAGE + 6);
		for (k = 0; k < 300; k++)
			r += ((fn1)(void *)(code + PAGE - 2))(k);
		r += ((fn1)(void *)(code + PAGE + 2))(1);   /* second page alone */
		printf("smc upper half on next page, addi %d: %" PRIx64 "\n", imms[i], r);
	}
	munmap(code, 2 * PAGE);
}

/* ---- precise traps ------------------------------------------------------------- */

static sigjmp_buf trap_jmp;
static volatile int trap_sig;
static volatile uint64_t trap_pc, trap_addr, trap_regs[32];

static void on_trap(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	trap_sig = sig;
	trap_pc = uc->uc_mcontext.__gregs[REG_PC];
	trap_addr = (uint64_t)(uintptr_t)si->si_addr;
	for (int i = 1; i < 32; i++)
		trap_regs[i] = uc->uc_mcontext.__gregs[i];
	siglongjmp(trap_jmp, 1);
}

/* Runs code(a0 = arg); returns the signal, 0 if none. */
static int run_trapping(uint8_t *code, uint64_t arg)
{
	struct sigaction sa, old[5];
	static const int sigs[] = { SIGILL, SIGBUS, SIGSEGV, SIGTRAP, SIGFPE };
	int sig = 0;
	unsigned i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < 5; i++)
		sigaction(sigs[i], &sa, &old[i]);
	trap_sig = 0;
	if (!sigsetjmp(trap_jmp, 1))
		((fn1)(void *)code)(arg);
	else
		sig = trap_sig;
	for (i = 0; i < 5; i++)
		sigaction(sigs[i], &old[i], NULL);
	return sig;
}

/* An address as an offset into the code or the data page. */
static void print_where(const char *what, uint64_t a, uint8_t *code, uint64_t page)
{
	uint64_t c = (uint64_t)(uintptr_t)code;
	if (a - c < 2 * PAGE)
		printf(" %s code+%#" PRIx64, what, a - c);
	else if (page && a - page < PAGE)
		printf(" %s page+%#" PRIx64, what, a - page);
	else
		printf(" %s elsewhere", what);
}

static void report(const char *what, int sig, uint8_t *code, uint64_t page)
{
	printf("trap %s: sig %d", what, sig);
	if (sig)
		print_where("pc", trap_pc, code, page);
	if (sig == SIGSEGV || sig == SIGBUS)
		print_where("addr", trap_addr, code, page);
	/* a1..a5 (x11..x15): set one by one before and after the fault */
	printf(" a1..a5 %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 "\n",
	       sig ? trap_regs[11] : 0, sig ? trap_regs[12] : 0, sig ? trap_regs[13] : 0,
	       sig ? trap_regs[14] : 0, sig ? trap_regs[15] : 0);
}

/* code: a1 = 0x11, a2 = 0x22, a3 = 0x33 (compressed), <the faulting
 * instruction>, a4 = 0x44, a5 = 0x55, ret. Warmed up first with a
 * harmless instruction in the slot so the run is decoded, then patched. */
static void trap_case(const char *what, uint8_t *code, const uint8_t *bad, unsigned len,
		      uint64_t arg, uint64_t page)
{
	uint8_t *p = code;
	put32(p, addi(14, 0, 0)); p += 4;
	put32(p, addi(15, 0, 0)); p += 4;
	put32(p, addi(11, 0, 0x11)); p += 4;
	put32(p, addi(12, 0, 0x22)); p += 4;
	put32(p, addi(13, 0, 0)); p += 4;     /* a3 = 0, then c.addi a3, 0x13 */
	put16(p, c_addi(13, 0x13)); p += 2;
	uint8_t *slot = p;
	put16(p, C_NOP); put16(p + 2, C_NOP); p += 4;
	put32(p, addi(14, 0, 0x44)); p += 4;
	put32(p, addi(15, 0, 0x55)); p += 4;
	put32(p, RET);
	sync_code(code, p + 4);
	for (int k = 0; k < 200; k++)
		((fn1)(void *)code)(arg);
	memcpy(slot, bad, len);
	if (len == 2)
		put16(slot + 2, C_NOP);
	sync_code(code, p + 4);
	report(what, run_trapping(code, arg), code, page);
}

static void test_traps(void)
{
	uint8_t *code = map_code(1);
	uint8_t *data = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t insn[4];
	uint64_t none, ro;

	if (!code || data == MAP_FAILED) {
		printf("traps: mmap failed\n");
		return;
	}
	none = (uint64_t)(uintptr_t)(data + PAGE);
	ro = (uint64_t)(uintptr_t)(data + 2 * PAGE);
	mprotect(data + PAGE, PAGE, PROT_NONE);
	mprotect(data + 2 * PAGE, PAGE, PROT_READ);

	put32(insn, 0x01053703);      /* ld a4, 16(a0) */
	trap_case("load page fault", code, insn, 4, none + 0x100, none);
	put32(insn, 0x00e53423);      /* sd a4, 8(a0) */
	trap_case("store to read-only", code, insn, 4, ro + 0x200, ro);
	put16(insn, 0x6518);          /* c.ld a4, 8(a0) */
	trap_case("compressed load fault", code, insn, 2, none + 0x300, none);
	put32(insn, 0xffffffff);      /* illegal 32-bit */
	trap_case("illegal 32-bit", code, insn, 4, 0, 0);
	put16(insn, 0x0000);          /* c.unimp */
	trap_case("illegal 16-bit", code, insn, 2, 0, 0);
	put32(insn, 0x00100073);      /* ebreak */
	trap_case("ebreak", code, insn, 4, 0, 0);
	put32(insn, 0x000500e7);      /* jalr ra, 0(a0): fetch from a PROT_NONE page */
	trap_case("fetch fault", code, insn, 4, none + 0x40, none);

	/* a loop that walks page by page into the PROT_NONE page: a1 counts
	 * the loads done; the fault must leave it exact */
	uint8_t *p = code;
	for (unsigned r = 11; r <= 15; r++) {              /* a1..a5 = 0 */
		put32(p, addi(r, 0, 0));
		p += 4;
	}
	put32(p, 0x00053683); p += 4;                      /* loop: ld a3, 0(a0) */
	put32(p, addi(11, 11, 1)); p += 4;                 /* a1++ */
	put32(p, addi(10, 10, 1024)); p += 4;              /* a0 += 1024 */
	put32(p, jal(0, -12)); p += 4;                     /* j loop */
	put32(p, RET); p += 4;
	sync_code(code, p);
	report("loop into none", run_trapping(code, (uint64_t)(uintptr_t)data + 8),
	       code, none);
	munmap(code, PAGE);
	munmap(data, 3 * PAGE);
}

/* ---- instructions at page ends ------------------------------------------------ */

static void test_page_ends(void)
{
	uint8_t *code = map_code(2);
	uint64_t r;
	unsigned k;

	if (!code) {
		printf("cross: mmap rwx failed\n");
		return;
	}
	/* c.addi in the last halfword, then the next page */
	put16(code + PAGE - 2, c_addi(A0, 1));
	put32(code + PAGE, addi(A0, A0, 2));
	put32(code + PAGE + 4, RET);
	sync_code(code, code + 2 * PAGE);
	for (r = 0, k = 0; k < 500; k++)
		r += ((fn1)(void *)(code + PAGE - 2))(k);
	printf("cross c.addi last halfword: %" PRIx64 "\n", r);

	/* addi in the last word, c.addi + c.jr on the next page */
	put32(code + PAGE - 4, addi(A0, A0, 3));
	put16(code + PAGE, c_addi(A0, 4));
	put16(code + PAGE + 2, C_JR_RA);
	sync_code(code, code + 2 * PAGE);
	for (r = 0, k = 0; k < 500; k++)
		r += ((fn1)(void *)(code + PAGE - 4))(k);
	printf("cross addi last word: %" PRIx64 "\n", r);

	/* a taken branch in the last word to the next page, and a jump back */
	put32(code + PAGE - 8, addi(A0, A0, 5));
	put32(code + PAGE - 4, beq(0, 0, 8));              /* to PAGE + 4 */
	put32(code + PAGE, addi(A0, A0, 100));             /* skipped */
	put32(code + PAGE + 4, addi(A0, A0, 7));
	put32(code + PAGE + 8, RET);
	sync_code(code, code + 2 * PAGE);
	for (r = 0, k = 0; k < 500; k++)
		r += ((fn1)(void *)(code + PAGE - 8))(k);
	printf("cross branch to next page: %" PRIx64 "\n", r);

	/* jal from the second page back into the last halfword of the first */
	put16(code + PAGE - 2, c_addi(A0, 9));             /* falls onto PAGE */
	put32(code + PAGE, RET);
	put32(code + PAGE + 64, addi(A0, A0, 1));
	put32(code + PAGE + 68, jal(0, -70));              /* to PAGE - 2 */
	sync_code(code, code + 2 * PAGE);
	for (r = 0, k = 0; k < 500; k++)
		r += ((fn1)(void *)(code + PAGE + 64))(k);
	printf("cross jal back to last halfword: %" PRIx64 "\n", r);
	munmap(code, 2 * PAGE);
}

/* ---- code rewritten by another hart ------------------------------------------- */

#define ROUNDS 300
static uint8_t *shared_fn;
static atomic_int published = -1, acked = -1;
static uint64_t seen[ROUNDS];

static void *runner(void *arg)
{
	(void)arg;
	for (int r = 0; r < ROUNDS; r++) {
		while (atomic_load_explicit(&published, memory_order_acquire) < r)
			;
		asm volatile("fence.i" ::: "memory");
		seen[r] = ((fn1)(void *)shared_fn)(1000);
		atomic_store_explicit(&acked, r, memory_order_release);
	}
	return NULL;
}

static void test_other_hart(void)
{
	pthread_t t;
	uint64_t sum = 0;
	int bad = -1;

	shared_fn = map_code(1);
	if (!shared_fn) {
		printf("other hart: mmap rwx failed\n");
		return;
	}
	put32(shared_fn + 4, RET);
	pthread_create(&t, NULL, runner, NULL);
	for (int r = 0; r < ROUNDS; r++) {
		put32(shared_fn, addi(A0, A0, r * 7 - 1000));
		__builtin___clear_cache((char *)shared_fn, (char *)shared_fn + 8);
		atomic_store_explicit(&published, r, memory_order_release);
		while (atomic_load_explicit(&acked, memory_order_acquire) < r)
			;
	}
	pthread_join(t, NULL);
	for (int r = 0; r < ROUNDS; r++) {
		sum += seen[r];
		if (bad < 0 && seen[r] != (uint64_t)(1000 + r * 7 - 1000))
			bad = r;
	}
	printf("other hart: %d rounds, sum %" PRIx64 ", first stale round %d\n",
	       ROUNDS, sum, bad);
	munmap(shared_fn, PAGE);
}

int main(void)
{
	diff_begin("code");
	test_smc();
	test_traps();
	test_page_ends();
	test_other_hart();
	return diff_end("code");
}
