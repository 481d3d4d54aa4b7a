/*
 * muldiv.c - differential test of the M extension.
 *
 * Every multiply and divide instruction, 64-bit and W forms, runs over all
 * pairs of a table of edge operands: zero, one, minus one, the 32- and 64-bit
 * extremes, values with garbage in the upper half (which the W forms must
 * ignore), alternating bit patterns and a fixed pseudo-random stream. Divide
 * by zero and the one overflowing division (INT_MIN / -1) are in the table,
 * so their specified results (all ones, the dividend, zero remainder) are
 * checked too. Each instruction is its own inline asm statement, and a second
 * pass runs the MULH/MUL and DIV/REM pairs back to back with the destination
 * overlapping a source, the sequence the spec suggests implementations fuse.
 *
 * Output: two lines per operand pair, hex values only.
 */
#include "diff.h"

#define NRAND 6

static uint64_t vals[] = {
	0, 1, 2, 3, 7, 0xffffffffffffffffULL, 0xfffffffffffffffeULL,
	0xfffffffffffffffdULL, 0x7fffffffffffffffULL, 0x8000000000000000ULL,
	0x8000000000000001ULL, 0x7fffffffULL, 0x80000000ULL,
	0xffffffff80000000ULL, 0xffffffffULL, 0x100000000ULL,
	0x12345678ffffffffULL, 0xdeadbeef80000000ULL, 0x5555555555555555ULL,
	0xaaaaaaaaaaaaaaaaULL,
	/* NRAND slots filled from diff_rand() */
	0, 0, 0, 0, 0, 0,
};

#define OP(insn)							\
static uint64_t op_##insn(uint64_t a, uint64_t b)			\
{									\
	uint64_t r;							\
	asm volatile(#insn " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));	\
	return r;							\
}

OP(mul) OP(mulh) OP(mulhsu) OP(mulhu) OP(div) OP(divu) OP(rem) OP(remu)
OP(mulw) OP(divw) OP(divuw) OP(remw) OP(remuw)

struct op {
	const char *name;
	uint64_t (*fn)(uint64_t, uint64_t);
};

#define ENTRY(insn) { #insn, op_##insn }
static const struct op ops[] = {
	ENTRY(mul), ENTRY(mulh), ENTRY(mulhsu), ENTRY(mulhu),
	ENTRY(div), ENTRY(divu), ENTRY(rem), ENTRY(remu),
	ENTRY(mulw), ENTRY(divw), ENTRY(divuw), ENTRY(remw), ENTRY(remuw),
};

static void print_pair(uint64_t a, uint64_t b)
{
	unsigned k;

	printf("md %016" PRIx64 " %016" PRIx64 ":", a, b);
	for (k = 0; k < DIFF_ARRAY_SIZE(ops); k++) {
		if (k == 6)
			printf("\nmd %016" PRIx64 " %016" PRIx64 ":", a, b);
		printf(" %s=%" PRIx64, ops[k].name, ops[k].fn(a, b));
	}
	printf("\n");
}

/*
 * The fused shapes: "mulh hi, a, b; mul lo, a, b" and
 * "div q, a, b; rem r, a, b" where the second result overwrites an input.
 */
static void print_fused(uint64_t a, uint64_t b)
{
	uint64_t hi, lo, q, r, hsu, lou;

	asm volatile("mv %1, %2\n\t"
		     "mulh %0, %2, %3\n\t"
		     "mul %1, %1, %3"
		     : "=&r"(hi), "=&r"(lo) : "r"(a), "r"(b));
	asm volatile("mv %1, %2\n\t"
		     "mulhsu %0, %2, %3\n\t"
		     "mul %1, %1, %3"
		     : "=&r"(hsu), "=&r"(lou) : "r"(a), "r"(b));
	asm volatile("mv %1, %2\n\t"
		     "div %0, %2, %3\n\t"
		     "rem %1, %1, %3"
		     : "=&r"(q), "=&r"(r) : "r"(a), "r"(b));
	if (hi != op_mulh(a, b) || lo != op_mul(a, b) ||
	    hsu != op_mulhsu(a, b) || lou != lo ||
	    q != op_div(a, b) || r != op_rem(a, b))
		printf("fused %016" PRIx64 " %016" PRIx64 " differs: %" PRIx64
		       " %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 "\n",
		       a, b, hi, lo, hsu, q, r);
}

/* The spec's table of division corner cases, checked by value. */
static void check_corners(void)
{
	const uint64_t min64 = 0x8000000000000000ULL, m1 = ~0ULL;
	const uint64_t min32 = 0xffffffff80000000ULL;
	unsigned bad = 0;

	bad += op_div(5, 0) != m1;
	bad += op_divu(5, 0) != m1;
	bad += op_rem(5, 0) != 5;
	bad += op_remu(5, 0) != 5;
	bad += op_div(min64, m1) != min64;
	bad += op_rem(min64, m1) != 0;
	bad += op_divw(5, 0) != m1;
	bad += op_divuw(5, 0) != m1;
	bad += op_remw(0x1234567800000005ULL, 0) != 5;
	bad += op_remuw(0x12345678fffffff5ULL, 0) != 0xfffffffffffffff5ULL;
	bad += op_divw(min32, m1) != min32;
	bad += op_remw(min32, m1) != 0;
	printf("division corner cases: %u wrong\n", bad);
}

int main(void)
{
	unsigned i, j, n = DIFF_ARRAY_SIZE(vals);

	diff_begin("muldiv");
	for (i = n - NRAND; i < n; i++)
		vals[i] = diff_rand();
	for (i = 0; i < n; i++)
		for (j = 0; j < n; j++)
			print_pair(vals[i], vals[j]);
	for (i = 0; i < n; i++)
		for (j = 0; j < n; j++)
			print_fused(vals[i], vals[j]);
	printf("fused sequences checked\n");
	check_corners();
	return diff_end("muldiv");
}
