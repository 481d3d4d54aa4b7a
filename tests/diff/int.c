/*
 * int.c - differential test of the RV64I base and the C extension.
 *
 * Each instruction under test sits in its own inline asm statement so that
 * the compiler can neither fold it nor pick another instruction. The program
 * runs every register-register and register-immediate ALU instruction over a
 * table of edge values, shifts by edge amounts (the amount is taken modulo 64,
 * or 32 for the W forms), branches, loads and stores of every width with their
 * sign or zero extension, LUI, and AUIPC/JAL/JALR through differences of pcs
 * (never absolute addresses). Explicit c.* instructions check the compressed
 * decoder, including c.jalr's link of pc+2 and c.addiw with a zero immediate
 * (sext.w). A last part writes code into an executable page, runs it,
 * rewrites it and runs it again after fence.i, which catches a stale decoded
 * instruction cache.
 *
 * Output: one line per case, hex values only.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "diff.h"

typedef uint64_t (*rr_fn)(uint64_t a, uint64_t b);
typedef uint64_t (*ri_fn)(uint64_t a);

struct rr_op {
	const char *name;
	rr_fn fn;
};

struct ri_op {
	const char *name;
	ri_fn fn;
};

static const uint64_t vals[] = {
	0, 1, 2, 0x1f, 0x20, 0x3f, 0x40, 0x41,
	0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ULL,
	0x7fffffffffffffffULL, 0x8000000000000000ULL, 0xffffffffffffffffULL,
	0xfffffffffffffffeULL, 0xffffffff80000000ULL, 0x00000000ffff8000ULL,
	0x0123456789abcdefULL, 0xfedcba9876543210ULL,
};

#define RR(insn)							\
static uint64_t rr_##insn(uint64_t a, uint64_t b)			\
{									\
	uint64_t r;							\
	asm volatile(#insn " %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));	\
	return r;							\
}

RR(add) RR(sub) RR(sll) RR(slt) RR(sltu) RR(xor) RR(srl) RR(sra) RR(or)
RR(and) RR(addw) RR(subw) RR(sllw) RR(srlw) RR(sraw)

#define RR_ENTRY(insn) { #insn, rr_##insn }
static const struct rr_op rr_ops[] = {
	RR_ENTRY(add), RR_ENTRY(sub), RR_ENTRY(sll), RR_ENTRY(slt),
	RR_ENTRY(sltu), RR_ENTRY(xor), RR_ENTRY(srl), RR_ENTRY(sra),
	RR_ENTRY(or), RR_ENTRY(and), RR_ENTRY(addw), RR_ENTRY(subw),
	RR_ENTRY(sllw), RR_ENTRY(srlw), RR_ENTRY(sraw),
};

/* Register-immediate forms; the immediate is part of the function name. */
#define RI(insn, tag, imm)						\
static uint64_t ri_##insn##_##tag(uint64_t a)				\
{									\
	uint64_t r;							\
	asm volatile(#insn " %0, %1, " #imm : "=r"(r) : "r"(a));	\
	return r;							\
}

#define RI_IMM12(insn)							\
	RI(insn, m2048, -2048) RI(insn, m1, -1) RI(insn, 0, 0)		\
	RI(insn, 1, 1) RI(insn, 2047, 2047) RI(insn, 0x555, 0x555)

RI_IMM12(addi) RI_IMM12(slti) RI_IMM12(sltiu) RI_IMM12(xori)
RI_IMM12(ori) RI_IMM12(andi) RI_IMM12(addiw)

#define RI_SH64(insn)							\
	RI(insn, 0, 0) RI(insn, 1, 1) RI(insn, 31, 31) RI(insn, 32, 32)	\
	RI(insn, 33, 33) RI(insn, 63, 63)
#define RI_SH32(insn)							\
	RI(insn, 0, 0) RI(insn, 1, 1) RI(insn, 16, 16) RI(insn, 31, 31)

RI_SH64(slli) RI_SH64(srli) RI_SH64(srai)
RI_SH32(slliw) RI_SH32(srliw) RI_SH32(sraiw)

#define RI_ENTRY(insn, tag, imm) { #insn " " #imm, ri_##insn##_##tag }
#define RI_IMM12_ENTRIES(insn)						\
	RI_ENTRY(insn, m2048, -2048), RI_ENTRY(insn, m1, -1),		\
	RI_ENTRY(insn, 0, 0), RI_ENTRY(insn, 1, 1),			\
	RI_ENTRY(insn, 2047, 2047), RI_ENTRY(insn, 0x555, 0x555)
#define RI_SH64_ENTRIES(insn)						\
	RI_ENTRY(insn, 0, 0), RI_ENTRY(insn, 1, 1), RI_ENTRY(insn, 31, 31), \
	RI_ENTRY(insn, 32, 32), RI_ENTRY(insn, 33, 33), RI_ENTRY(insn, 63, 63)
#define RI_SH32_ENTRIES(insn)						\
	RI_ENTRY(insn, 0, 0), RI_ENTRY(insn, 1, 1), RI_ENTRY(insn, 16, 16), \
	RI_ENTRY(insn, 31, 31)

static const struct ri_op ri_ops[] = {
	RI_IMM12_ENTRIES(addi), RI_IMM12_ENTRIES(slti),
	RI_IMM12_ENTRIES(sltiu), RI_IMM12_ENTRIES(xori),
	RI_IMM12_ENTRIES(ori), RI_IMM12_ENTRIES(andi),
	RI_IMM12_ENTRIES(addiw),
	RI_SH64_ENTRIES(slli), RI_SH64_ENTRIES(srli), RI_SH64_ENTRIES(srai),
	RI_SH32_ENTRIES(slliw), RI_SH32_ENTRIES(srliw), RI_SH32_ENTRIES(sraiw),
};

/* Branches: bit i of the result is set when branch i is taken. */
#define BR(insn, bit)							\
	asm volatile(#insn " %1, %2, 1f\n\t"				\
		     "j 2f\n"						\
		     "1:\tori %0, %0, " #bit "\n"			\
		     "2:"						\
		     : "+r"(r) : "r"(a), "r"(b))

static unsigned branches(uint64_t a, uint64_t b)
{
	uint64_t r = 0;

	BR(beq, 1);
	BR(bne, 2);
	BR(blt, 4);
	BR(bge, 8);
	BR(bltu, 16);
	BR(bgeu, 32);
	return (unsigned)r;
}

static void test_rr(void)
{
	unsigned i, j, k;

	for (i = 0; i < DIFF_ARRAY_SIZE(vals); i++) {
		for (j = 0; j < DIFF_ARRAY_SIZE(vals); j++) {
			uint64_t a = vals[i], b = vals[j];

			printf("rr %016" PRIx64 " %016" PRIx64 ":", a, b);
			for (k = 0; k < DIFF_ARRAY_SIZE(rr_ops); k++) {
				if (k == 8)
					printf("\nrr %016" PRIx64 " %016" PRIx64 ":", a, b);
				printf(" %s=%" PRIx64, rr_ops[k].name,
				       rr_ops[k].fn(a, b));
			}
			printf(" br=%02x\n", branches(a, b));
		}
	}
}

static void test_ri(void)
{
	unsigned i, k;

	for (k = 0; k < DIFF_ARRAY_SIZE(ri_ops); k++) {
		printf("ri %s:", ri_ops[k].name);
		for (i = 0; i < DIFF_ARRAY_SIZE(vals); i++) {
			if (i == 10)
				printf("\nri %s:", ri_ops[k].name);
			printf(" %" PRIx64, ri_ops[k].fn(vals[i]));
		}
		printf("\n");
	}
}

/* Register shifts: only the low 6 (or 5 for *W) bits of the amount count. */
static void test_shift_amounts(void)
{
	static const uint64_t amounts[] = {
		0, 1, 31, 32, 33, 63, 64, 65, 95, 96, 127, 0xffffffffffffffffULL,
		0x8000000000000020ULL,
	};
	static const uint64_t x[] = {
		0x8000000000000001ULL, 0x00000000c0000003ULL,
		0x0123456789abcdefULL, 0xffffffff7fffffffULL,
	};
	unsigned i, j;

	for (i = 0; i < DIFF_ARRAY_SIZE(x); i++)
		for (j = 0; j < DIFF_ARRAY_SIZE(amounts); j++)
			printf("shift %016" PRIx64 " by %" PRIx64
			       ": sll=%" PRIx64 " srl=%" PRIx64 " sra=%" PRIx64
			       " sllw=%" PRIx64 " srlw=%" PRIx64 " sraw=%" PRIx64 "\n",
			       x[i], amounts[j],
			       rr_sll(x[i], amounts[j]), rr_srl(x[i], amounts[j]),
			       rr_sra(x[i], amounts[j]), rr_sllw(x[i], amounts[j]),
			       rr_srlw(x[i], amounts[j]), rr_sraw(x[i], amounts[j]));
}

#define LUI(imm)							\
	do {								\
		uint64_t r;						\
		asm volatile("lui %0, " #imm : "=r"(r));		\
		printf("lui " #imm " = %016" PRIx64 "\n", r);		\
	} while (0)

static void test_lui(void)
{
	LUI(0);
	LUI(1);
	LUI(0x12345);
	LUI(0x7ffff);
	LUI(0x80000);
	LUI(0xfffff);
}

/*
 * AUIPC, JAL and JALR through differences only. Compression is off inside
 * so that every instruction is 4 bytes and the distances are known.
 */
static void test_pc_relative(void)
{
	uint64_t d1, d2, d3, link_jal, link_jalr, skipped;

	asm volatile(".option push\n\t.option norvc\n\t"
		     "auipc t0, 0\n\t"
		     "auipc t1, 0\n\t"
		     "auipc t2, 1\n\t"
		     "auipc t3, 0x80000\n\t"
		     "sub %0, t1, t0\n\t"
		     "sub %1, t2, t1\n\t"
		     "sub %2, t3, t2\n\t"
		     ".option pop"
		     : "=r"(d1), "=r"(d2), "=r"(d3) : : "t0", "t1", "t2", "t3");
	printf("auipc deltas: %" PRIx64 " %" PRIx64 " %" PRIx64 "\n", d1, d2, d3);

	asm volatile(".option push\n\t.option norvc\n\t"
		     "auipc t0, 0\n\t"		/* X */
		     "jal t1, 1f\n\t"		/* X+4, links X+8 */
		     "nop\n"
		     "1:\tsub %0, t1, t0\n\t"
		     ".option pop"
		     : "=r"(link_jal) : : "t0", "t1");
	printf("jal link - auipc = %" PRIx64 "\n", link_jal);

	/* Target X+17+(-1) = X+16: even, then X+17 with bit 0 cleared. */
	asm volatile(".option push\n\t.option norvc\n\t"
		     "li %1, 0\n\t"
		     "auipc t0, 0\n\t"		/* X */
		     "addi t0, t0, 17\n\t"	/* X+4 */
		     "jalr t1, t0, 0\n\t"	/* X+8, links X+12 */
		     "addi %1, %1, 1\n\t"	/* X+12: skipped */
		     "addi %1, %1, 2\n\t"	/* X+16: landed */
		     "sub %0, t1, t0\n\t"
		     ".option pop"
		     : "=&r"(link_jalr), "=&r"(skipped) : : "t0", "t1");
	printf("jalr odd target: link - rs1 = %" PRIx64 " path = %" PRIx64 "\n",
	       link_jalr, skipped);

	/* jalr with rd == rs1: the target uses the old value. */
	asm volatile(".option push\n\t.option norvc\n\t"
		     "auipc t0, 0\n\t"		/* X */
		     "addi t1, t0, 16\n\t"	/* X+4 */
		     "jalr t1, t1, 0\n\t"	/* X+8, links X+12, goes X+16 */
		     "nop\n\t"
		     "sub %0, t1, t0\n\t"
		     ".option pop"
		     : "=r"(link_jalr) : : "t0", "t1");
	printf("jalr rd==rs1: link - auipc = %" PRIx64 "\n", link_jalr);
}

static uint8_t membuf[64] __attribute__((aligned(16)));

static void fill_membuf(void)
{
	unsigned i;

	for (i = 0; i < sizeof(membuf); i++)
		membuf[i] = (uint8_t)(0x80 + i * 0x1d);
}

#define LOAD(insn, off)							\
	do {								\
		uint64_t r;						\
		asm volatile(#insn " %0, " #off "(%1)"			\
			     : "=r"(r) : "r"(membuf + 32) : "memory");	\
		printf("load " #insn " " #off " = %016" PRIx64 "\n", r); \
	} while (0)

#define STORE(insn, off, v)						\
	do {								\
		fill_membuf();						\
		asm volatile(#insn " %0, " #off "(%1)"			\
			     : : "r"(v), "r"(membuf + 32) : "memory");	\
		printf("store " #insn " " #off ":");			\
		dump_membuf();						\
	} while (0)

static void dump_membuf(void)
{
	unsigned i;

	for (i = 16; i < 48; i++)
		printf(" %02x", membuf[i]);
	printf("\n");
}

static void test_loads(void)
{
	fill_membuf();
	LOAD(lb, 0); LOAD(lb, 1); LOAD(lb, -1); LOAD(lb, -32); LOAD(lb, 31);
	LOAD(lbu, 0); LOAD(lbu, 1); LOAD(lbu, -1); LOAD(lbu, 31);
	LOAD(lh, 0); LOAD(lh, 2); LOAD(lh, -2); LOAD(lh, 30);
	LOAD(lhu, 0); LOAD(lhu, 2); LOAD(lhu, -2); LOAD(lhu, 30);
	LOAD(lw, 0); LOAD(lw, 4); LOAD(lw, -4); LOAD(lw, 28);
	LOAD(lwu, 0); LOAD(lwu, 4); LOAD(lwu, -4); LOAD(lwu, 28);
	LOAD(ld, 0); LOAD(ld, 8); LOAD(ld, -8); LOAD(ld, -32); LOAD(ld, 24);
}

static void test_stores(void)
{
	uint64_t v = 0xfedcba9876543210ULL;

	STORE(sb, 0, v); STORE(sb, -1, v); STORE(sb, 15, v);
	STORE(sh, 0, v); STORE(sh, -2, v); STORE(sh, 14, v);
	STORE(sw, 0, v); STORE(sw, -4, v); STORE(sw, 12, v);
	STORE(sd, 0, v); STORE(sd, -8, v); STORE(sd, 8, v);
	/* Storing x0 writes zeroes. */
	fill_membuf();
	asm volatile("sd zero, 0(%0)\n\tsw zero, 8(%0)\n\tsh zero, -2(%0)\n\t"
		     "sb zero, -3(%0)" : : "r"(membuf + 32) : "memory");
	printf("store zero:");
	dump_membuf();
}

/* Writes to x0 are dropped: a few HINT-space encodings and plain ones. */
static void test_x0(void)
{
	uint64_t r;

	asm volatile("li %0, 5\n\t"
		     "addi zero, %0, 1\n\t"
		     "add zero, %0, %0\n\t"
		     "lui zero, 0x12345\n\t"
		     "slli zero, %0, 3\n\t"
		     "fence rw, rw\n\t"
		     "fence.tso\n\t"
		     "fence.i\n\t"
		     ".word 0x0100000f\n\t"	/* pause */
		     "mv %0, zero\n\t"
		     "addi %0, %0, 7"
		     : "=&r"(r));
	printf("x0 and hints: %" PRIx64 "\n", r);
}

/*
 * Explicit compressed instructions. The registers are pinned to a0-a5 since
 * most c.* forms only reach x8-x15.
 */
#define C_UNARY(text, in)						\
	do {								\
		register uint64_t a0 asm("a0") = (in);			\
		asm volatile(text : "+r"(a0));				\
		printf("%-18s %016" PRIx64 " -> %016" PRIx64 "\n",	\
		       text, (uint64_t)(in), a0);			\
	} while (0)

#define C_BINARY(text, x, y)						\
	do {								\
		register uint64_t a0 asm("a0") = (x);			\
		register uint64_t a1 asm("a1") = (y);			\
		asm volatile(text : "+r"(a0) : "r"(a1));		\
		printf("%-18s %016" PRIx64 " %016" PRIx64 " -> %016"	\
		       PRIx64 "\n", text, (uint64_t)(x), (uint64_t)(y), a0); \
	} while (0)

static void test_compressed_alu(void)
{
	static const uint64_t x[] = {
		0, 0x7fffffff, 0x80000000ULL, 0xfffffffffffffff0ULL,
		0x8000000000000001ULL, 0x00000000fedcba98ULL,
	};
	unsigned i, j;

	for (i = 0; i < DIFF_ARRAY_SIZE(x); i++) {
		C_UNARY("c.li a0, -32", x[i]);
		C_UNARY("c.li a0, 31", x[i]);
		C_UNARY("c.lui a0, 1", x[i]);
		C_UNARY("c.lui a0, 0x1f", x[i]);
		C_UNARY("c.lui a0, 0xfffe0", x[i]);
		C_UNARY("c.addi a0, -32", x[i]);
		C_UNARY("c.addi a0, 31", x[i]);
		C_UNARY("c.addiw a0, 0", x[i]);
		C_UNARY("c.addiw a0, -1", x[i]);
		C_UNARY("c.addiw a0, 31", x[i]);
		C_UNARY("c.slli a0, 1", x[i]);
		C_UNARY("c.slli a0, 63", x[i]);
		C_UNARY("c.srli a0, 1", x[i]);
		C_UNARY("c.srli a0, 32", x[i]);
		C_UNARY("c.srai a0, 1", x[i]);
		C_UNARY("c.srai a0, 63", x[i]);
		C_UNARY("c.andi a0, -32", x[i]);
		C_UNARY("c.andi a0, 15", x[i]);
		for (j = 0; j < DIFF_ARRAY_SIZE(x); j++) {
			C_BINARY("c.sub a0, a1", x[i], x[j]);
			C_BINARY("c.xor a0, a1", x[i], x[j]);
			C_BINARY("c.or a0, a1", x[i], x[j]);
			C_BINARY("c.and a0, a1", x[i], x[j]);
			C_BINARY("c.subw a0, a1", x[i], x[j]);
			C_BINARY("c.addw a0, a1", x[i], x[j]);
			C_BINARY("c.add a0, a1", x[i], x[j]);
			C_BINARY("c.mv a0, a1", x[i], x[j]);
		}
	}
}

/*
 * Register variables are declared right before the asm that uses them: their
 * value is only guaranteed on entry to that asm statement.
 */
static void test_compressed_mem(void)
{
	uint64_t lw, ld, lwsp, ldsp, sp_delta, spn_delta;

	fill_membuf();
	{
		register uint64_t a0 asm("a0");
		register uint64_t a1 asm("a1");
		register uint8_t *a2 asm("a2") = membuf + 32;

		asm volatile("c.lw %0, 4(%2)\n\tc.ld %1, 8(%2)"
			     : "=r"(a0), "=r"(a1) : "r"(a2) : "memory");
		lw = a0;
		ld = a1;
	}
	printf("c.lw 4 = %016" PRIx64 " c.ld 8 = %016" PRIx64 "\n", lw, ld);

	{
		register uint64_t a0 asm("a0") = 0xfedcba9876543210ULL;
		register uint8_t *a2 asm("a2") = membuf + 32;

		asm volatile("c.sw %0, 0(%1)\n\tc.sd %0, 24(%1)"
			     : : "r"(a0), "r"(a2) : "memory");
	}
	printf("c.sw 0, c.sd 24:");
	dump_membuf();

	/* sp-relative forms on a scratch area below the stack pointer. */
	{
		register uint64_t a0 asm("a0") = 0x80000000fffffffeULL;
		register uint64_t a1 asm("a1");
		register uint64_t a3 asm("a3");

		asm volatile("c.addi16sp sp, -32\n\t"
			     "c.sdsp %2, 8(sp)\n\t"
			     "c.lwsp %0, 8(sp)\n\t"
			     "c.ldsp %1, 8(sp)\n\t"
			     "c.addi16sp sp, 32"
			     : "=&r"(a1), "=&r"(a3) : "r"(a0) : "memory");
		lwsp = a1;
		ldsp = a3;
	}
	printf("c.sdsp/c.lwsp/c.ldsp: %016" PRIx64 " %016" PRIx64 "\n", lwsp, ldsp);

	{
		register uint64_t a0 asm("a0");
		register uint64_t a1 asm("a1");

		asm volatile("mv t0, sp\n\t"
			     "c.addi16sp sp, -496\n\t"
			     "sub %0, t0, sp\n\t"
			     "c.addi16sp sp, 496\n\t"
			     "c.addi4spn %1, sp, 1020\n\t"
			     "sub %1, %1, sp"
			     : "=&r"(a0), "=&r"(a1) : : "t0", "memory");
		sp_delta = a0;
		spn_delta = a1;
	}
	printf("c.addi16sp delta = %" PRIx64 " c.addi4spn delta = %" PRIx64 "\n",
	       sp_delta, spn_delta);
}

static void test_compressed_control(void)
{
	uint64_t link, path, taken;

	/* c.jalr links pc+2, c.jr does not link, c.j jumps forward. */
	asm volatile(".option push\n\t.option norvc\n\t"
		     "auipc t0, 0\n\t"		/* X */
		     "addi t1, t0, 16\n\t"	/* X+4 */
		     ".option rvc\n\t"
		     "c.jalr t1\n\t"		/* X+8, links X+10 */
		     "c.nop\n\t"		/* X+10 */
		     ".option norvc\n\t"
		     "nop\n\t"			/* X+12 */
		     "sub %0, ra, t0\n\t"	/* X+16 */
		     ".option pop"
		     : "=r"(link) : : "t0", "t1", "ra");
	printf("c.jalr link - auipc = %" PRIx64 "\n", link);

	asm volatile("li %0, 0\n\t"
		     "c.j 1f\n\t"
		     "addi %0, %0, 1\n"
		     "1:\tla t0, 2f\n\t"
		     "c.jr t0\n\t"
		     "addi %0, %0, 2\n"
		     "2:\taddi %0, %0, 4"
		     : "=&r"(path) : : "t0");
	printf("c.j/c.jr path = %" PRIx64 "\n", path);

	for (uint64_t v = 0; v < 3; v++) {
		register uint64_t a0 asm("a0") = v - 1;
		asm volatile("li %0, 0\n\t"
			     "c.beqz %1, 1f\n\t"
			     "ori %0, %0, 1\n"
			     "1:\tc.bnez %1, 2f\n\t"
			     "ori %0, %0, 2\n"
			     "2:"
			     : "=&r"(taken) : "r"(a0));
		printf("c.beqz/c.bnez %016" PRIx64 " -> %" PRIx64 "\n", v - 1, taken);
	}
}

/*
 * Self-modifying code: "addi a0, a0, IMM; ret" in an executable page. The
 * second run must see the rewritten immediate.
 */
static uint32_t encode_addi_a0(int imm)
{
	return ((uint32_t)(imm & 0xfff) << 20) | (10 << 15) | (10 << 7) | 0x13;
}

static void test_smc(void)
{
	static const int imms[] = { 1, -7, 2047, -2048, 100 };
	uint32_t *code;
	unsigned i;

	code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (code == MAP_FAILED) {
		printf("smc: mmap rwx failed\n");
		return;
	}
	code[1] = 0x00008067;	/* jalr zero, 0(ra) */
	for (i = 0; i < DIFF_ARRAY_SIZE(imms); i++) {
		uint64_t (*fn)(uint64_t) = (uint64_t (*)(uint64_t))(void *)code;

		code[0] = encode_addi_a0(imms[i]);
		__builtin___clear_cache((char *)code, (char *)(code + 2));
		asm volatile("fence.i" ::: "memory");
		printf("smc addi %d: %" PRIx64 "\n", imms[i], fn(1000));
	}
	munmap(code, 4096);
}

int main(void)
{
	diff_begin("int");
	test_rr();
	test_ri();
	test_shift_amounts();
	test_lui();
	test_pc_relative();
	test_loads();
	test_stores();
	test_x0();
	test_compressed_alu();
	test_compressed_mem();
	test_compressed_control();
	test_smc();
	return diff_end("int");
}
