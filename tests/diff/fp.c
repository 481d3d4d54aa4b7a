/*
 * fp.c - differential test of the F and D extensions.
 *
 * Every operation is one inline asm statement that moves raw bits into
 * ft0..ft2 (fmv.w.x / fmv.d.x, so no compiler arithmetic touches them),
 * clears fflags, runs the instruction, reads fflags back and moves the result
 * out. The operands are tables of IEEE edge values: signed zeros, subnormals,
 * the smallest normal, the largest finite, infinities, quiet and signalling
 * NaNs (with payload and sign), and operands whose exact results fall halfway
 * between two representable values, so that each rounding mode is visible.
 *
 * An operation that rounds runs five times with the dynamic rounding mode
 * (frm set by fsrm to RNE, RTZ, RDN, RUP, RMM) and the five results and
 * flags are printed. It then runs five more times with the rounding mode
 * encoded statically in the instruction while frm holds another mode; any
 * static result that differs from its dynamic twin is printed, and a summary
 * line counts them. Non-rounding operations (min/max, sign injection,
 * compares, fclass, exact conversions) run once.
 *
 * The last part checks NaN-boxing: single results are boxed (upper 32 bits
 * all ones), fmv.x.w and fsw move bits without checking, and every other
 * single operation reads an improperly boxed register as the canonical NaN.
 *
 * Output: "op inputs: results/flags" lines, hex only.
 */
#include "diff.h"

enum fp_kind { K_S, K_D, K_X };	/* single, double, integer register */

typedef uint64_t (*fp_fn)(const uint64_t *in, unsigned *flags);

struct fp_op {
	const char *name;
	enum fp_kind in, out;
	unsigned nin;
	fp_fn fn[6];		/* [0] dynamic rm; [1..5] static RNE..RMM, or NULL */
};

static const char *const rm_names[5] = { "rne", "rtz", "rdn", "rup", "rmm" };

#define IN_S	"fmv.w.x ft0, %2\n\tfmv.w.x ft1, %3\n\tfmv.w.x ft2, %4\n\t"
#define IN_D	"fmv.d.x ft0, %2\n\tfmv.d.x ft1, %3\n\tfmv.d.x ft2, %4\n\t"
#define IN_X	""
#define OUT_S	"\n\tfmv.x.w %0, ft3"
#define OUT_D	"\n\tfmv.x.d %0, ft3"
#define OUT_X	""

#define FP_FN(id, sfx, setup, insn, out)				\
static uint64_t id##_##sfx(const uint64_t *in, unsigned *flags)	\
{									\
	uint64_t r, f;							\
	asm volatile(setup "fsflags zero\n\t" insn "\n\tfrflags %1" out	\
		     : "=&r"(r), "=&r"(f)				\
		     : "r"(in[0]), "r"(in[1]), "r"(in[2])		\
		     : "ft0", "ft1", "ft2", "ft3");			\
	*flags = (unsigned)f;						\
	return r;							\
}

/* A rounding operation: the dynamic form and the five static forms. */
#define FP_RM(id, setup, insn, out)					\
	FP_FN(id, dyn, setup, insn ", dyn", out)			\
	FP_FN(id, rne, setup, insn ", rne", out)			\
	FP_FN(id, rtz, setup, insn ", rtz", out)			\
	FP_FN(id, rdn, setup, insn ", rdn", out)			\
	FP_FN(id, rup, setup, insn ", rup", out)			\
	FP_FN(id, rmm, setup, insn ", rmm", out)
#define FP_EXACT(id, setup, insn, out) FP_FN(id, dyn, setup, insn, out)

#define RM_FNS(id) { id##_dyn, id##_rne, id##_rtz, id##_rdn, id##_rup, id##_rmm }
#define EXACT_FNS(id) { id##_dyn }

/* Both precisions of the arithmetic, from one description. */
#define FP_ARITH(p, IN, OUT)						\
	FP_RM(fadd_##p, IN, "fadd." #p " ft3, ft0, ft1", OUT)		\
	FP_RM(fsub_##p, IN, "fsub." #p " ft3, ft0, ft1", OUT)		\
	FP_RM(fmul_##p, IN, "fmul." #p " ft3, ft0, ft1", OUT)		\
	FP_RM(fdiv_##p, IN, "fdiv." #p " ft3, ft0, ft1", OUT)		\
	FP_RM(fsqrt_##p, IN, "fsqrt." #p " ft3, ft0", OUT)		\
	FP_RM(fmadd_##p, IN, "fmadd." #p " ft3, ft0, ft1, ft2", OUT)	\
	FP_RM(fmsub_##p, IN, "fmsub." #p " ft3, ft0, ft1, ft2", OUT)	\
	FP_RM(fnmsub_##p, IN, "fnmsub." #p " ft3, ft0, ft1, ft2", OUT)	\
	FP_RM(fnmadd_##p, IN, "fnmadd." #p " ft3, ft0, ft1, ft2", OUT)	\
	FP_EXACT(fmin_##p, IN, "fmin." #p " ft3, ft0, ft1", OUT)	\
	FP_EXACT(fmax_##p, IN, "fmax." #p " ft3, ft0, ft1", OUT)	\
	FP_EXACT(fsgnj_##p, IN, "fsgnj." #p " ft3, ft0, ft1", OUT)	\
	FP_EXACT(fsgnjn_##p, IN, "fsgnjn." #p " ft3, ft0, ft1", OUT)	\
	FP_EXACT(fsgnjx_##p, IN, "fsgnjx." #p " ft3, ft0, ft1", OUT)	\
	FP_EXACT(feq_##p, IN, "feq." #p " %0, ft0, ft1", OUT_X)	\
	FP_EXACT(flt_##p, IN, "flt." #p " %0, ft0, ft1", OUT_X)	\
	FP_EXACT(fle_##p, IN, "fle." #p " %0, ft0, ft1", OUT_X)	\
	FP_EXACT(fclass_##p, IN, "fclass." #p " %0, ft0", OUT_X)	\
	FP_RM(fcvt_w_##p, IN, "fcvt.w." #p " %0, ft0", OUT_X)		\
	FP_RM(fcvt_wu_##p, IN, "fcvt.wu." #p " %0, ft0", OUT_X)	\
	FP_RM(fcvt_l_##p, IN, "fcvt.l." #p " %0, ft0", OUT_X)		\
	FP_RM(fcvt_lu_##p, IN, "fcvt.lu." #p " %0, ft0", OUT_X)

FP_ARITH(s, IN_S, OUT_S)
FP_ARITH(d, IN_D, OUT_D)

/* Integer to float: the source is %2; 32-bit sources ignore the upper half. */
FP_RM(fcvt_s_w, IN_X, "fcvt.s.w ft3, %2", OUT_S)
FP_RM(fcvt_s_wu, IN_X, "fcvt.s.wu ft3, %2", OUT_S)
FP_RM(fcvt_s_l, IN_X, "fcvt.s.l ft3, %2", OUT_S)
FP_RM(fcvt_s_lu, IN_X, "fcvt.s.lu ft3, %2", OUT_S)
FP_EXACT(fcvt_d_w, IN_X, "fcvt.d.w ft3, %2", OUT_D)
FP_EXACT(fcvt_d_wu, IN_X, "fcvt.d.wu ft3, %2", OUT_D)
FP_RM(fcvt_d_l, IN_X, "fcvt.d.l ft3, %2", OUT_D)
FP_RM(fcvt_d_lu, IN_X, "fcvt.d.lu ft3, %2", OUT_D)
/* Between the two formats. */
FP_RM(fcvt_s_d, IN_D, "fcvt.s.d ft3, ft0", OUT_S)
FP_EXACT(fcvt_d_s, IN_S, "fcvt.d.s ft3, ft0", OUT_D)

#define OP_RM(name, id, in, out, n)	{ name, in, out, n, RM_FNS(id) }
#define OP_EX(name, id, in, out, n)	{ name, in, out, n, EXACT_FNS(id) }

#define BINARY_OPS(p, K)						\
	OP_RM("fadd." #p, fadd_##p, K, K, 2),				\
	OP_RM("fsub." #p, fsub_##p, K, K, 2),				\
	OP_RM("fmul." #p, fmul_##p, K, K, 2),				\
	OP_RM("fdiv." #p, fdiv_##p, K, K, 2),				\
	OP_EX("fmin." #p, fmin_##p, K, K, 2),				\
	OP_EX("fmax." #p, fmax_##p, K, K, 2),				\
	OP_EX("fsgnj." #p, fsgnj_##p, K, K, 2),				\
	OP_EX("fsgnjn." #p, fsgnjn_##p, K, K, 2),			\
	OP_EX("fsgnjx." #p, fsgnjx_##p, K, K, 2),			\
	OP_EX("feq." #p, feq_##p, K, K_X, 2),				\
	OP_EX("flt." #p, flt_##p, K, K_X, 2),				\
	OP_EX("fle." #p, fle_##p, K, K_X, 2)

#define TERNARY_OPS(p, K)						\
	OP_RM("fmadd." #p, fmadd_##p, K, K, 3),				\
	OP_RM("fmsub." #p, fmsub_##p, K, K, 3),				\
	OP_RM("fnmsub." #p, fnmsub_##p, K, K, 3),			\
	OP_RM("fnmadd." #p, fnmadd_##p, K, K, 3)

static const struct fp_op binary_s[] = { BINARY_OPS(s, K_S) };
static const struct fp_op binary_d[] = { BINARY_OPS(d, K_D) };
static const struct fp_op ternary_s[] = { TERNARY_OPS(s, K_S) };
static const struct fp_op ternary_d[] = { TERNARY_OPS(d, K_D) };

static const struct fp_op unary_s[] = {
	OP_RM("fsqrt.s", fsqrt_s, K_S, K_S, 1),
	OP_EX("fclass.s", fclass_s, K_S, K_X, 1),
	OP_RM("fcvt.w.s", fcvt_w_s, K_S, K_X, 1),
	OP_RM("fcvt.wu.s", fcvt_wu_s, K_S, K_X, 1),
	OP_RM("fcvt.l.s", fcvt_l_s, K_S, K_X, 1),
	OP_RM("fcvt.lu.s", fcvt_lu_s, K_S, K_X, 1),
	OP_EX("fcvt.d.s", fcvt_d_s, K_S, K_D, 1),
};

static const struct fp_op unary_d[] = {
	OP_RM("fsqrt.d", fsqrt_d, K_D, K_D, 1),
	OP_EX("fclass.d", fclass_d, K_D, K_X, 1),
	OP_RM("fcvt.w.d", fcvt_w_d, K_D, K_X, 1),
	OP_RM("fcvt.wu.d", fcvt_wu_d, K_D, K_X, 1),
	OP_RM("fcvt.l.d", fcvt_l_d, K_D, K_X, 1),
	OP_RM("fcvt.lu.d", fcvt_lu_d, K_D, K_X, 1),
	OP_RM("fcvt.s.d", fcvt_s_d, K_D, K_S, 1),
};

static const struct fp_op from_int[] = {
	OP_RM("fcvt.s.w", fcvt_s_w, K_X, K_S, 1),
	OP_RM("fcvt.s.wu", fcvt_s_wu, K_X, K_S, 1),
	OP_RM("fcvt.s.l", fcvt_s_l, K_X, K_S, 1),
	OP_RM("fcvt.s.lu", fcvt_s_lu, K_X, K_S, 1),
	OP_EX("fcvt.d.w", fcvt_d_w, K_X, K_D, 1),
	OP_EX("fcvt.d.wu", fcvt_d_wu, K_X, K_D, 1),
	OP_RM("fcvt.d.l", fcvt_d_l, K_X, K_D, 1),
	OP_RM("fcvt.d.lu", fcvt_d_lu, K_X, K_D, 1),
};

/* Operands for the binary operations: every pair is run. */
static const uint64_t vals_s[] = {
	0x00000000, 0x80000000,		/* +0, -0 */
	0x3f800000, 0xbfc00000,		/* 1.0, -1.5 */
	0x3f800001, 0x3f7fffff,		/* 1 + ulp, 1 - ulp/2 */
	0x33800000,			/* 2^-24: 1 + this is a tie */
	0x40400000, 0x40490fdb,		/* 3.0, pi */
	0x00000001, 0x807fffff,		/* smallest subnormal, -largest subnormal */
	0x00800000, 0x7f7fffff,		/* smallest normal, largest finite */
	0x7f800000, 0xff800000,		/* +inf, -inf */
	0x7fc00000, 0xffc12345,		/* qNaN, negative qNaN with payload */
	0x7f800001,			/* sNaN */
};

static const uint64_t vals_d[] = {
	0x0000000000000000ULL, 0x8000000000000000ULL,
	0x3ff0000000000000ULL, 0xbff8000000000000ULL,
	0x3ff0000000000001ULL, 0x3fefffffffffffffULL,
	0x3ca0000000000000ULL,
	0x4008000000000000ULL, 0x400921fb54442d18ULL,
	0x0000000000000001ULL, 0x800fffffffffffffULL,
	0x0010000000000000ULL, 0x7fefffffffffffffULL,
	0x7ff0000000000000ULL, 0xfff0000000000000ULL,
	0x7ff8000000000000ULL, 0xfff8000000012345ULL,
	0x7ff0000000000001ULL,
};

/* Extra operands for the unary operations and conversions. */
static const uint64_t extra_s[] = {
	0x3f000000, 0xbf000000, 0x3fc00000, 0x40200000, 0xc0200000,
	0xbf800000, 0xbf7fffff, 0x40800000, 0x3e800000,
	0x4effffff, 0x4f000000, 0xcf000000, 0xcf000001,
	0x4f7fffff, 0x4f800000, 0x5effffff, 0x5f000000, 0xdf000000,
	0xdf000001, 0x5f7fffff, 0x5f800000, 0x7f800002, 0xff800001,
};

static const uint64_t extra_d[] = {
	0x3fe0000000000000ULL, 0xbfe0000000000000ULL, 0x3ff8000000000000ULL,
	0x4004000000000000ULL, 0xc004000000000000ULL, 0xbff0000000000000ULL,
	0xbfefffffffffffffULL, 0x4010000000000000ULL, 0x3fd0000000000000ULL,
	0x41dfffffffc00000ULL, 0x41dfffffffe00000ULL, 0x41e0000000000000ULL,
	0xc1e0000000000000ULL, 0xc1e0000000100000ULL, 0xc1e0000000200000ULL,
	0x41efffffffe00000ULL, 0x41effffffff00000ULL, 0x41f0000000000000ULL,
	0x43dfffffffffffffULL, 0x43e0000000000000ULL, 0xc3e0000000000000ULL,
	0xc3e0000000000001ULL, 0x43efffffffffffffULL, 0x43f0000000000000ULL,
	/* narrowing to single: ties, overflow, underflow */
	0x3ff0000010000000ULL, 0x3ff0000030000000ULL, 0x3ff0000010000001ULL,
	0x47efffffe0000000ULL, 0x47efffffd0000000ULL, 0x47f0000000000000ULL,
	0x36a0000000000000ULL, 0x3690000000000000ULL, 0x3698000000000000ULL,
	0x380fffffe0000000ULL, 0x380ffffff0000000ULL, 0xb80ffffff0000000ULL,
	0x7ff0000000000002ULL, 0x7ff8000012345678ULL,
};

static const uint64_t vals_int[] = {
	0, 1, 2, 0xffffffffffffffffULL, 0x7fffffff, 0xffffffff80000000ULL,
	0x80000000, 0xffffffff, 0x1000001, 0x1000003, 0x7fffffc0, 0x7fffff40,
	0xffffffff00000001ULL, 0x123456789abcdef0ULL,
	0x20000000000001ULL, 0x20000000000003ULL, 0x7ffffffffffffc00ULL,
	0x7fffffffffffffffULL, 0x8000000000000000ULL, 0x8000000000000400ULL,
	0xfffffffffffffffeULL, 0xfffffffffffffc00ULL, 0xfffffffffffff800ULL,
};

/* The fused multiply-add runs every triple of a small set ... */
static const uint64_t cube_s[] = {
	0x00000000, 0x80000000, 0x3f800001, 0xbf7fffff, 0x7f800000,
};
static const uint64_t cube_d[] = {
	0x0000000000000000ULL, 0x8000000000000000ULL, 0x3ff0000000000001ULL,
	0xbfefffffffffffffULL, 0x7ff0000000000000ULL,
};

/* ... and these picked triples: cancellation, overflow avoided, ties, tininess. */
static const uint64_t triples_s[][3] = {
	{ 0x3f800001, 0x3f7fffff, 0xbf800000 },	/* (1+u)(1-u/2) - 1 */
	{ 0x3f800001, 0x3f800001, 0xbf800000 },
	{ 0x7f7fffff, 0x40000000, 0xff7fffff },	/* 2max - max */
	{ 0x7f7fffff, 0x40000000, 0x00000000 },	/* overflow */
	{ 0x00000001, 0x3f000000, 0x00000000 },	/* minsub / 2: tie to 0 */
	{ 0x00000001, 0x3f400000, 0x80000000 },	/* 0.75 minsub */
	{ 0x00800000, 0xb2800000, 0x00800000 },	/* tiny before rounding only */
	{ 0x00800000, 0x3f7fffff, 0x00000000 },
	{ 0x7f800000, 0x00000000, 0x7fc00000 },	/* inf*0 + qNaN: invalid */
	{ 0x7f800000, 0x3f800000, 0xff800000 },	/* inf - inf */
	{ 0x7f800001, 0x3f800000, 0x3f800000 },	/* sNaN */
	{ 0x3f800000, 0x3f800000, 0x33800000 },	/* 1 + tie */
	{ 0x3f800000, 0x3f800001, 0x33800000 },
	{ 0x40400000, 0x3eaaaaab, 0xbf800000 },	/* 3 * (1/3) - 1 */
	{ 0xbf800000, 0x3f800000, 0x3f800000 },	/* exact zero: sign by rm */
};

static const uint64_t triples_d[][3] = {
	{ 0x3ff0000000000001ULL, 0x3fefffffffffffffULL, 0xbff0000000000000ULL },
	{ 0x3ff0000000000001ULL, 0x3ff0000000000001ULL, 0xbff0000000000000ULL },
	{ 0x7fefffffffffffffULL, 0x4000000000000000ULL, 0xffefffffffffffffULL },
	{ 0x7fefffffffffffffULL, 0x4000000000000000ULL, 0x0000000000000000ULL },
	{ 0x0000000000000001ULL, 0x3fe0000000000000ULL, 0x0000000000000000ULL },
	{ 0x0000000000000001ULL, 0x3fe8000000000000ULL, 0x8000000000000000ULL },
	{ 0x0010000000000000ULL, 0xbc80000000000000ULL, 0x0010000000000000ULL },
	{ 0x0010000000000000ULL, 0x3fefffffffffffffULL, 0x0000000000000000ULL },
	{ 0x7ff0000000000000ULL, 0x0000000000000000ULL, 0x7ff8000000000000ULL },
	{ 0x7ff0000000000000ULL, 0x3ff0000000000000ULL, 0xfff0000000000000ULL },
	{ 0x7ff0000000000001ULL, 0x3ff0000000000000ULL, 0x3ff0000000000000ULL },
	{ 0x3ff0000000000000ULL, 0x3ff0000000000000ULL, 0x3ca0000000000000ULL },
	{ 0x3ff0000000000000ULL, 0x3ff0000000000001ULL, 0x3ca0000000000000ULL },
	{ 0x4008000000000000ULL, 0x3fd5555555555555ULL, 0xbff0000000000000ULL },
	{ 0xbff0000000000000ULL, 0x3ff0000000000000ULL, 0x3ff0000000000000ULL },
};

static unsigned static_checked, static_wrong;

static void set_frm(unsigned rm)
{
	asm volatile("fsrm %0" : : "r"((uint64_t)rm));
}

static void print_value(enum fp_kind k, uint64_t v)
{
	if (k == K_S)
		printf("%08" PRIx32, (uint32_t)v);
	else
		printf("%016" PRIx64, v);
}

/* Dynamic results for every mode, then the static forms against them. */
static void run_rounded(const struct fp_op *op, const uint64_t *in)
{
	uint64_t r[5], rs;
	unsigned f[5], fs, m, same = 1;

	for (m = 0; m < 5; m++) {
		set_frm(m);
		r[m] = op->fn[0](in, &f[m]);
		if (m && (r[m] != r[0] || f[m] != f[0]))
			same = 0;
	}
	if (same) {
		printf(" all ");
		print_value(op->out, r[0]);
		printf("/%02x\n", f[0]);
	} else {
		for (m = 0; m < 5; m++) {
			printf(" %s ", rm_names[m]);
			print_value(op->out, r[m]);
			printf("/%02x", f[m]);
		}
		printf("\n");
	}
	for (m = 0; m < 5; m++) {
		set_frm((m + 3) % 5);
		rs = op->fn[m + 1](in, &fs);
		static_checked++;
		if (rs != r[m] || fs != f[m]) {
			static_wrong++;
			printf("static %s %s differs: ", op->name, rm_names[m]);
			print_value(op->out, rs);
			printf("/%02x\n", fs);
		}
	}
	set_frm(0);
}

static void run_op(const struct fp_op *op, const uint64_t *in)
{
	unsigned i, f;
	uint64_t r;

	printf("%s", op->name);
	for (i = 0; i < op->nin; i++) {
		printf(" ");
		print_value(op->in, in[i]);
	}
	printf(":");
	if (op->fn[1]) {
		run_rounded(op, in);
		return;
	}
	set_frm(0);
	r = op->fn[0](in, &f);
	printf(" ");
	print_value(op->out, r);
	printf("/%02x\n", f);
}

/*
 * Rounding operations get a line per operand pair; the exact ones (min/max,
 * sign injection, compares) share one line per pair.
 */
static void run_exact_line(const struct fp_op *ops, unsigned nops,
			   const uint64_t *in)
{
	unsigned k, f;
	uint64_t r;

	printf("exact.%s ", ops[0].in == K_S ? "s" : "d");
	print_value(ops[0].in, in[0]);
	printf(" ");
	print_value(ops[0].in, in[1]);
	printf(":");
	set_frm(0);
	for (k = 0; k < nops; k++) {
		if (ops[k].fn[1])
			continue;
		r = ops[k].fn[0](in, &f);
		printf(" %s=", ops[k].name);
		print_value(ops[k].out, r);
		printf("/%02x", f);
	}
	printf("\n");
}

static void run_binary(const struct fp_op *ops, unsigned nops,
		       const uint64_t *vals, unsigned n)
{
	unsigned i, j, k;

	for (k = 0; k < nops; k++) {
		if (!ops[k].fn[1])
			continue;
		for (i = 0; i < n; i++)
			for (j = 0; j < n; j++) {
				uint64_t in[3] = { vals[i], vals[j], 0 };

				run_op(&ops[k], in);
			}
	}
	for (i = 0; i < n; i++)
		for (j = 0; j < n; j++) {
			uint64_t in[3] = { vals[i], vals[j], 0 };

			run_exact_line(ops, nops, in);
		}
}

static void run_unary(const struct fp_op *ops, unsigned nops,
		      const uint64_t *vals, unsigned n,
		      const uint64_t *extra, unsigned nextra)
{
	unsigned i, k;

	for (k = 0; k < nops; k++) {
		for (i = 0; i < n; i++) {
			uint64_t in[3] = { vals[i], 0, 0 };

			run_op(&ops[k], in);
		}
		for (i = 0; i < nextra; i++) {
			uint64_t in[3] = { extra[i], 0, 0 };

			run_op(&ops[k], in);
		}
	}
}

static void run_ternary(const struct fp_op *ops, unsigned nops,
			const uint64_t *cube, unsigned n,
			const uint64_t (*triples)[3], unsigned ntriples)
{
	unsigned i, j, l, k;

	for (k = 0; k < nops; k++) {
		for (i = 0; i < n; i++)
			for (j = 0; j < n; j++)
				for (l = 0; l < n; l++) {
					uint64_t in[3] = { cube[i], cube[j], cube[l] };

					run_op(&ops[k], in);
				}
		for (i = 0; i < ntriples; i++)
			run_op(&ops[k], triples[i]);
	}
}

static void run_from_int(void)
{
	unsigned i, k;

	for (k = 0; k < DIFF_ARRAY_SIZE(from_int); k++)
		for (i = 0; i < DIFF_ARRAY_SIZE(vals_int); i++) {
			uint64_t in[3] = { vals_int[i], 0, 0 };

			run_op(&from_int[k], in);
		}
}

/*
 * NaN-boxing. Each case is written out; "box" moves a 64-bit pattern into
 * an f register unchanged (fmv.d.x) so that single operations see it as is.
 */
#define NB_CASE(text, body, a, b)					\
	do {								\
		uint64_t r, f;						\
		asm volatile("fmv.d.x ft0, %2\n\tfmv.d.x ft1, %3\n\t"	\
			     "fsflags zero\n\t" body "\n\tfrflags %1"	\
			     : "=&r"(r), "=&r"(f) : "r"(a), "r"(b)	\
			     : "ft0", "ft1", "ft2", "memory");		\
		printf("nanbox %-34s %016" PRIx64 " %016" PRIx64	\
		       " -> %016" PRIx64 "/%02" PRIx64 "\n",		\
		       text, (uint64_t)(a), (uint64_t)(b), r, f);	\
	} while (0)

/* The same with %3 the address of a memory word that starts as "init". */
#define NB_MEM(text, body, a, init)					\
	do {								\
		uint64_t r, f;						\
		mem = (init);						\
		asm volatile("fmv.d.x ft0, %2\n\t"			\
			     "fsflags zero\n\t" body "\n\tfrflags %1"	\
			     : "=&r"(r), "=&r"(f)			\
			     : "r"(a), "r"(&mem)			\
			     : "ft0", "ft1", "ft2", "memory");		\
		printf("nanbox %-34s %016" PRIx64 " mem %016" PRIx64	\
		       " -> %016" PRIx64 "/%02" PRIx64 "\n",		\
		       text, (uint64_t)(a), (uint64_t)(init), r, f);	\
	} while (0)

static void test_nanbox(void)
{
	static const uint64_t boxed_one = 0xffffffff3f800000ULL;
	static const uint64_t boxed_negtwo = 0xffffffffc0000000ULL;
	static const uint64_t pats[] = {
		0x000000003f800000ULL,	/* not boxed */
		0xfffffffe3f800000ULL,	/* nearly boxed */
		0x7fffffff3f800000ULL,
		0xffffffff3f800000ULL,	/* boxed 1.0 */
		0xffffffff7f800001ULL,	/* boxed sNaN */
		0x3ff0000000000000ULL,	/* a double 1.0 */
	};
	uint64_t mem;
	unsigned i;

	for (i = 0; i < DIFF_ARRAY_SIZE(pats); i++) {
		uint64_t p = pats[i];

		NB_CASE("fadd.s x, 1.0; fmv.x.d", "fadd.s ft2, ft0, ft1\n\tfmv.x.d %0, ft2", p, boxed_one);
		NB_CASE("fsgnj.s x, -2.0; fmv.x.d", "fsgnj.s ft2, ft0, ft1\n\tfmv.x.d %0, ft2", p, boxed_negtwo);
		NB_CASE("fsgnjn.s -2.0, x; fmv.x.d", "fsgnjn.s ft2, ft1, ft0\n\tfmv.x.d %0, ft2", p, boxed_negtwo);
		NB_CASE("fmv.s x; fmv.x.d", "fmv.s ft2, ft0\n\tfmv.x.d %0, ft2", p, 0);
		NB_CASE("fmin.s x, -2.0; fmv.x.d", "fmin.s ft2, ft0, ft1\n\tfmv.x.d %0, ft2", p, boxed_negtwo);
		NB_CASE("fmax.s x, x; fmv.x.d", "fmax.s ft2, ft0, ft0\n\tfmv.x.d %0, ft2", p, 0);
		NB_CASE("fmadd.s 1.0, 1.0, x; fmv.x.d", "fmadd.s ft2, ft1, ft1, ft0\n\tfmv.x.d %0, ft2", p, boxed_one);
		NB_CASE("fclass.s x", "fclass.s %0, ft0", p, 0);
		NB_CASE("feq.s x, x", "feq.s %0, ft0, ft0", p, 0);
		NB_CASE("flt.s x, 1.0", "flt.s %0, ft0, ft1", p, boxed_one);
		NB_CASE("fcvt.d.s x", "fcvt.d.s ft2, ft0\n\tfmv.x.d %0, ft2", p, 0);
		NB_CASE("fcvt.w.s x", "fcvt.w.s %0, ft0, rtz", p, 0);
		NB_CASE("fsqrt.s x; fmv.x.d", "fsqrt.s ft2, ft0\n\tfmv.x.d %0, ft2", p, 0);
		NB_CASE("fmv.x.w x", "fmv.x.w %0, ft0", p, 0);
		NB_MEM("fsw x; ld", "fsw ft0, 0(%3)\n\tld %0, 0(%3)", p,
		       0x5555555555555555ULL);
		NB_CASE("fsgnj.d x, -2.0; fmv.x.d", "fsgnj.d ft2, ft0, ft1\n\tfmv.x.d %0, ft2", p, boxed_negtwo);
	}

	/* Producers of single values box their results. */
	NB_MEM("flw; fmv.x.d", "flw ft2, 0(%3)\n\tfmv.x.d %0, ft2", 0,
	       0x12345678bf800000ULL);
	NB_MEM("flw sNaN; fmv.x.d", "flw ft2, 0(%3)\n\tfmv.x.d %0, ft2", 0,
	       0x123456787f800001ULL);
	NB_CASE("fmv.w.x; fmv.x.d", "fmv.w.x ft2, %3\n\tfmv.x.d %0, ft2", 0, 0x12345678c0490fdbULL);
	NB_CASE("fmv.x.w sign-extends", "fmv.w.x ft2, %3\n\tfmv.x.w %0, ft2", 0, 0x80000000ULL);
	NB_CASE("fadd.s boxed; fmv.x.d", "fadd.s ft2, ft1, ft1\n\tfmv.x.d %0, ft2", 0, boxed_one);
	NB_CASE("fcvt.s.d; fmv.x.d", "fcvt.s.d ft2, ft1\n\tfmv.x.d %0, ft2", 0, 0x3ff0000000000000ULL);
	NB_CASE("fcvt.s.l; fmv.x.d", "fcvt.s.l ft2, %3\n\tfmv.x.d %0, ft2", 0, 7);
	NB_MEM("fld sNaN; fsd; ld", "fld ft2, 0(%3)\n\tfsd ft2, 0(%3)\n\tld %0, 0(%3)",
	       0, 0x7ff0000000000001ULL);
	NB_CASE("fmv.d.x sNaN; fmv.x.d", "fmv.d.x ft2, %3\n\tfmv.x.d %0, ft2", 0, 0x7ff0000000000001ULL);
}

static void run_precision(const char *p,
			  const struct fp_op *bin, unsigned nbin,
			  const struct fp_op *un, unsigned nun,
			  const struct fp_op *ter, unsigned nter,
			  const uint64_t *vals, unsigned nvals,
			  const uint64_t *extra, unsigned nextra,
			  const uint64_t *cube, unsigned ncube,
			  const uint64_t (*triples)[3], unsigned ntriples)
{
	printf("== binary %s\n", p);
	run_binary(bin, nbin, vals, nvals);
	printf("== unary %s\n", p);
	run_unary(un, nun, vals, nvals, extra, nextra);
	printf("== fused %s\n", p);
	run_ternary(ter, nter, cube, ncube, triples, ntriples);
}

int main(void)
{
	diff_begin("fp");
	run_precision("s", binary_s, DIFF_ARRAY_SIZE(binary_s),
		      unary_s, DIFF_ARRAY_SIZE(unary_s),
		      ternary_s, DIFF_ARRAY_SIZE(ternary_s),
		      vals_s, DIFF_ARRAY_SIZE(vals_s),
		      extra_s, DIFF_ARRAY_SIZE(extra_s),
		      cube_s, DIFF_ARRAY_SIZE(cube_s),
		      triples_s, DIFF_ARRAY_SIZE(triples_s));
	run_precision("d", binary_d, DIFF_ARRAY_SIZE(binary_d),
		      unary_d, DIFF_ARRAY_SIZE(unary_d),
		      ternary_d, DIFF_ARRAY_SIZE(ternary_d),
		      vals_d, DIFF_ARRAY_SIZE(vals_d),
		      extra_d, DIFF_ARRAY_SIZE(extra_d),
		      cube_d, DIFF_ARRAY_SIZE(cube_d),
		      triples_d, DIFF_ARRAY_SIZE(triples_d));
	printf("== from integer\n");
	run_from_int();
	printf("== nan boxing\n");
	test_nanbox();
	printf("static rounding modes: %u checked, %u differ from dynamic\n",
	       static_checked, static_wrong);
	return diff_end("fp");
}
