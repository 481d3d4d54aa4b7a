/*
 * csr.c - differential test of the CSRs a user program can reach.
 *
 * fcsr, frm and fflags: every value written through every access form
 * (csrrw, csrrs, csrrc and their immediate forms, the fsflags/fsrm/fscsr
 * aliases), read back through all three views, with the reserved upper bits
 * of fcsr ignored; flags that accumulate across operations; a dynamic
 * rounding mode of 5, 6 or 7 in frm, and a static rm of 5 or 6 in the
 * instruction, which must raise an illegal instruction.
 *
 * cycle, time and instret: they must be readable and never go backwards;
 * only "monotonic ok" is printed, never a value.
 *
 * Privileged CSRs (sstatus, satp, mstatus, ...), writes to read-only
 * counters, the RV32-only high halves, a missing CSR, and privileged or
 * reserved instructions (sret, mret, sfence.vma, all-zero and all-one
 * words, ebreak) must trap from user mode: a handler catches the signal
 * and the program prints which one it was.
 *
 * Output: hex values, "ok" lines and signal names.
 */
#include <time.h>

#include "diff.h"

static void print_fp_csrs(const char *what)
{
	uint64_t fcsr, frm, fflags;

	asm volatile("csrr %0, fcsr\n\tcsrr %1, frm\n\tcsrr %2, fflags"
		     : "=r"(fcsr), "=r"(frm), "=r"(fflags));
	printf("%-28s fcsr %02" PRIx64 " frm %" PRIx64 " fflags %02" PRIx64 "\n",
	       what, fcsr, frm, fflags);
}

static void test_fcsr_writes(void)
{
	static const uint64_t fcsr_vals[] = {
		0, 0x1f, 0xe0, 0xff, 0x100, 0xffffffffffffffffULL, 0xa5, 0x5a,
	};
	uint64_t i, old;

	for (i = 0; i < DIFF_ARRAY_SIZE(fcsr_vals); i++) {
		char what[40];

		asm volatile("fscsr %0, %1" : "=r"(old) : "r"(fcsr_vals[i]));
		snprintf(what, sizeof(what), "fscsr %" PRIx64 " (old %" PRIx64 ")",
			 fcsr_vals[i], old);
		print_fp_csrs(what);
	}
	for (i = 0; i < 8; i++) {
		asm volatile("fscsr zero\n\tfsrm %0, %1" : "=r"(old) : "r"(i));
		print_fp_csrs("fsrm");
		asm volatile("csrw frm, %0" : : "r"(i | 0xf8));
		print_fp_csrs("csrw frm (upper bits set)");
	}
	for (i = 0; i < 32; i += 3) {
		asm volatile("fscsr zero\n\tcsrwi frm, 3\n\tfsflags %0, %1"
			     : "=r"(old) : "r"(i));
		print_fp_csrs("fsflags");
		asm volatile("csrw fflags, %0" : : "r"(i | 0xe0));
		print_fp_csrs("csrw fflags (upper bits set)");
	}

	asm volatile("fscsr zero");
	asm volatile("csrsi fflags, 0x5");
	print_fp_csrs("csrsi fflags 5");
	asm volatile("csrsi frm, 0x2");
	print_fp_csrs("csrsi frm 2");
	asm volatile("csrci fcsr, 0x4");
	print_fp_csrs("csrci fcsr 4");
	asm volatile("csrrs %0, fcsr, zero" : "=r"(old));
	printf("csrrs fcsr, x0 read %" PRIx64 "\n", old);
	print_fp_csrs("after csrrs x0");
	asm volatile("csrrc %0, fcsr, %1" : "=r"(old) : "r"(0xffULL));
	printf("csrrc fcsr, 0xff read %" PRIx64 "\n", old);
	print_fp_csrs("after csrrc 0xff");
	asm volatile("csrrwi %0, fcsr, 0x1f" : "=r"(old));
	print_fp_csrs("csrrwi fcsr 0x1f");
	asm volatile("csrrwi %0, frm, 0x1f" : "=r"(old));
	printf("csrrwi frm 0x1f read %" PRIx64 "\n", old);
	print_fp_csrs("after csrrwi frm");
	asm volatile("fscsr zero");
}

/* Flags accumulate until cleared; a read does not clear them. */
static void test_flag_accumulation(void)
{
	uint64_t one = 0x3ff0000000000000ULL, three = 0x4008000000000000ULL;
	uint64_t zero = 0, big = 0x7fefffffffffffffULL, f1, f2, f3;

	asm volatile("fscsr zero\n\t"
		     "fmv.d.x ft0, %3\n\t"
		     "fmv.d.x ft1, %4\n\t"
		     "fdiv.d ft2, ft0, ft1\n\t"	/* 1/3: NX */
		     "frflags %0\n\t"
		     "fmv.d.x ft1, %5\n\t"
		     "fdiv.d ft2, ft0, ft1\n\t"	/* 1/0: DZ */
		     "frflags %1\n\t"
		     "fmv.d.x ft0, %6\n\t"
		     "fmul.d ft2, ft0, ft0\n\t"	/* max*max: OF NX */
		     "fmul.d ft2, ft1, ft2\n\t"	/* 0*inf: NV */
		     "frflags %2"
		     : "=&r"(f1), "=&r"(f2), "=&r"(f3)
		     : "r"(one), "r"(three), "r"(zero), "r"(big)
		     : "ft0", "ft1", "ft2");
	printf("accumulated flags: %02" PRIx64 " %02" PRIx64 " %02" PRIx64 "\n",
	       f1, f2, f3);
	print_fp_csrs("after accumulation");
	asm volatile("fscsr zero");
}

/*
 * An invalid dynamic or static rounding mode is an illegal instruction.
 * Every case sets its own operands and fcsr, so nothing depends on what the
 * kernel leaves in the FP state when a signal handler is left by longjmp.
 */
static uint64_t frm_under_test;
static const uint64_t two = 0x4000000000000000ULL;

static void fadd_dyn(void *arg)
{
	(void)arg;
	asm volatile("fscsr zero\n\t"
		     "fmv.d.x ft0, %1\n\t"
		     "fsrm %0\n\t"
		     "fdiv.d ft0, ft0, ft0, dyn\n\t"
		     "fsrm zero"
		     : : "r"(frm_under_test), "r"(two) : "ft0");
}

static void fadd_static_rm5(void *arg)
{
	(void)arg;
	asm volatile("fscsr zero\n\t"
		     ".word 0x02005053" ::: "ft0");	/* fadd.d f0, f0, f0, rm=5 */
}

static void fadd_static_rm6(void *arg)
{
	(void)arg;
	asm volatile("fscsr zero\n\t"
		     ".word 0x00006053" ::: "ft0");	/* fadd.s f0, f0, f0, rm=6 */
}

static void fsqrt_static_rm7(void *arg)
{
	(void)arg;
	asm volatile("fscsr zero\n\t"
		     "fmv.d.x f0, %0\n\t"
		     ".word 0x5a007053"			/* fsqrt.d f0, f0, rm=7 */
		     : : "r"(two) : "ft0");
}

static void report_rm_case(const char *what, int sig)
{
	uint64_t fcsr;

	asm volatile("frcsr %0\n\tfscsr zero" : "=r"(fcsr));
	printf("%s: %s", what, diff_signame(sig));
	if (!sig)
		printf(" fcsr %02" PRIx64, fcsr);
	printf("\n");
}

static void test_invalid_rm(void)
{
	char what[40];

	for (frm_under_test = 0; frm_under_test < 8; frm_under_test++) {
		snprintf(what, sizeof(what), "fdiv.d dyn with frm=%" PRIu64,
			 frm_under_test);
		report_rm_case(what, diff_catch(fadd_dyn, NULL));
	}
	report_rm_case("fadd.d static rm=5", diff_catch(fadd_static_rm5, NULL));
	report_rm_case("fadd.s static rm=6", diff_catch(fadd_static_rm6, NULL));
	report_rm_case("fsqrt.d 2.0 rm=7 (dyn), frm=0",
		       diff_catch(fsqrt_static_rm7, NULL));
}

/* ---- counters ---- */

#define COUNTER_READER(name)						\
static uint64_t rd_##name(void)						\
{									\
	uint64_t v;							\
	asm volatile("rd" #name " %0" : "=r"(v));			\
	return v;							\
}

COUNTER_READER(cycle)
COUNTER_READER(time)
COUNTER_READER(instret)

struct counter {
	const char *name;
	uint64_t (*read)(void);
};

static const struct counter counters[] = {
	{ "cycle", rd_cycle }, { "time", rd_time }, { "instret", rd_instret },
};

static int counter_index;
static int counter_bad;

static void counter_check(void *arg)
{
	uint64_t prev, now;
	int i;

	(void)arg;
	prev = counters[counter_index].read();
	for (i = 0; i < 20000; i++) {
		now = counters[counter_index].read();
		if (now < prev)
			counter_bad = 1;
		prev = now;
	}
}

/* instret and cycle move over a busy loop; time moves over a sleep. */
static int counter_advances(int idx)
{
	struct timespec ts = { 0, 2000000 };
	volatile uint64_t sink = 0;
	uint64_t before, after;
	int i;

	before = counters[idx].read();
	if (idx == 1)
		nanosleep(&ts, NULL);
	else
		for (i = 0; i < 100000; i++)
			sink += i;
	after = counters[idx].read();
	return after > before;
}

static void test_counters(void)
{
	unsigned i;
	int sig;

	for (i = 0; i < DIFF_ARRAY_SIZE(counters); i++) {
		counter_index = (int)i;
		counter_bad = 0;
		sig = diff_catch(counter_check, NULL);
		if (sig) {
			printf("rd%s: trapped %s\n", counters[i].name, diff_signame(sig));
			continue;
		}
		printf("rd%s: %s\n", counters[i].name,
		       counter_bad ? "WENT BACKWARDS" : "monotonic ok");
		printf("rd%s: %s\n", counters[i].name,
		       counter_advances((int)i) ? "advances ok" : "DID NOT ADVANCE");
	}
}

/* ---- what user mode may not do ---- */

#define TRAP_FN(name, text)						\
static void trap_##name(void *arg)					\
{									\
	uint64_t v = 0;							\
	(void)arg;							\
	asm volatile(text : "+r"(v) : : "memory");			\
}

TRAP_FN(sstatus, "csrr %0, sstatus")
TRAP_FN(sie, "csrr %0, sie")
TRAP_FN(stvec, "csrr %0, stvec")
TRAP_FN(scounteren, "csrr %0, scounteren")
TRAP_FN(sscratch, "csrr %0, sscratch")
TRAP_FN(sepc, "csrr %0, sepc")
TRAP_FN(scause, "csrr %0, scause")
TRAP_FN(stval, "csrr %0, stval")
TRAP_FN(sip, "csrr %0, sip")
TRAP_FN(satp, "csrr %0, satp")
TRAP_FN(write_sstatus, "csrw sstatus, %0")
TRAP_FN(set_sie, "csrs sie, %0")
TRAP_FN(mstatus, "csrr %0, mstatus")
TRAP_FN(misa, "csrr %0, misa")
TRAP_FN(mie, "csrr %0, mie")
TRAP_FN(mtvec, "csrr %0, mtvec")
TRAP_FN(mscratch, "csrr %0, mscratch")
TRAP_FN(mepc, "csrr %0, mepc")
TRAP_FN(mhartid, "csrr %0, mhartid")
TRAP_FN(mvendorid, "csrr %0, mvendorid")
TRAP_FN(cycleh, "csrr %0, 0xc80")
TRAP_FN(timeh, "csrr %0, 0xc81")
TRAP_FN(instreth, "csrr %0, 0xc82")
TRAP_FN(write_cycle, "csrw cycle, %0")
TRAP_FN(write_time, "csrw time, %0")
TRAP_FN(write_instret, "csrw instret, %0")
/*
 * csrrs/csrrc with x0, or the immediate forms with 0, do not write: these
 * read without trapping. (csrrs with a register that holds 0 is left out:
 * QEMU does not trap on it, while the spec calls it an attempted write.)
 */
TRAP_FN(set_cycle_x0, "csrrs %0, cycle, zero")
TRAP_FN(clear_time_x0, "csrrc %0, time, zero")
TRAP_FN(set_instret_imm0, "csrrsi %0, instret, 0")
TRAP_FN(missing_csr, "csrr %0, 0x0ff")
TRAP_FN(sret, "sret")
TRAP_FN(mret, "mret")
TRAP_FN(sfence_vma, "sfence.vma")
TRAP_FN(zero_word, ".word 0x00000000")
TRAP_FN(ones_word, ".word 0xffffffff")
TRAP_FN(c_unimp, ".2byte 0x0000\n\t.2byte 0x0001")
TRAP_FN(ebreak, "ebreak")
TRAP_FN(c_ebreak, "c.ebreak")

struct trap_case {
	const char *name;
	void (*fn)(void *);
};

#define TRAP_ENTRY(name) { #name, trap_##name }
static const struct trap_case traps[] = {
	TRAP_ENTRY(sstatus), TRAP_ENTRY(sie), TRAP_ENTRY(stvec),
	TRAP_ENTRY(scounteren), TRAP_ENTRY(sscratch), TRAP_ENTRY(sepc),
	TRAP_ENTRY(scause), TRAP_ENTRY(stval), TRAP_ENTRY(sip),
	TRAP_ENTRY(satp), TRAP_ENTRY(write_sstatus), TRAP_ENTRY(set_sie),
	TRAP_ENTRY(mstatus), TRAP_ENTRY(misa), TRAP_ENTRY(mie),
	TRAP_ENTRY(mtvec), TRAP_ENTRY(mscratch), TRAP_ENTRY(mepc),
	TRAP_ENTRY(mhartid), TRAP_ENTRY(mvendorid), TRAP_ENTRY(cycleh),
	TRAP_ENTRY(timeh), TRAP_ENTRY(instreth), TRAP_ENTRY(write_cycle),
	TRAP_ENTRY(write_time), TRAP_ENTRY(write_instret),
	TRAP_ENTRY(set_cycle_x0),
	TRAP_ENTRY(clear_time_x0), TRAP_ENTRY(set_instret_imm0),
	TRAP_ENTRY(missing_csr), TRAP_ENTRY(sret), TRAP_ENTRY(mret),
	TRAP_ENTRY(sfence_vma), TRAP_ENTRY(zero_word), TRAP_ENTRY(ones_word),
	TRAP_ENTRY(c_unimp), TRAP_ENTRY(ebreak), TRAP_ENTRY(c_ebreak),
};

static void test_traps(void)
{
	unsigned i;

	for (i = 0; i < DIFF_ARRAY_SIZE(traps); i++)
		printf("%-16s %s\n", traps[i].name,
		       diff_signame(diff_catch(traps[i].fn, NULL)));
	print_fp_csrs("after traps");
}

int main(void)
{
	diff_begin("csr");
	test_fcsr_writes();
	test_flag_accumulation();
	test_invalid_rm();
	test_counters();
	test_traps();
	return diff_end("csr");
}
