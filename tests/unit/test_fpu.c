/*
 * test_fpu.c - the F and D instructions give the bits and flags the RISC-V
 * spec gives.
 *
 * Each case is one encoded instruction with its operands and the expected
 * result bits and fflags. Operands sit in f1, f2, f3 (and the first also in
 * x5 for conversions from integers); a result goes to f4, or to x6 for
 * instructions that write an integer register. Singles are written with
 * SB() (NaN-boxed) unless a case is about boxing. The expected values come
 * from the spec's rules; doubtful ones were checked against QEMU's
 * softfloat (qemu-riscv64-static running the same instruction words).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cpu/fpu.h"

/* ---- cases ------------------------------------------------------------ */

enum { S = 0, D = 1 };
enum { RNE, RTZ, RDN, RUP, RMM, DYN = 7 };
enum { W, WU, L, LU };
enum { NX = 1, UF = 2, OF = 4, DZ = 8, NV = 16 };

#define RD_F 4
#define RD_X 6

#define RTYPE(f5, fmt, rs2, rs1, rm, rd)				\
	(((uint32_t)(f5) << 27) | ((uint32_t)(fmt) << 25) |		\
	 ((uint32_t)(rs2) << 20) | ((uint32_t)(rs1) << 15) |		\
	 ((uint32_t)(rm) << 12) | ((uint32_t)(rd) << 7) | 0x53)
#define R4(opc, fmt, rm)						\
	((3u << 27) | ((uint32_t)(fmt) << 25) | (2u << 20) | (1u << 15) | \
	 ((uint32_t)(rm) << 12) | (RD_F << 7) | (opc))

#define FADD(fmt, rm)	RTYPE(0x00, fmt, 2, 1, rm, RD_F)
#define FSUB(fmt, rm)	RTYPE(0x01, fmt, 2, 1, rm, RD_F)
#define FMUL(fmt, rm)	RTYPE(0x02, fmt, 2, 1, rm, RD_F)
#define FDIV(fmt, rm)	RTYPE(0x03, fmt, 2, 1, rm, RD_F)
#define FSQRT(fmt, rm)	RTYPE(0x0b, fmt, 0, 1, rm, RD_F)
#define FSGNJ(fmt)	RTYPE(0x04, fmt, 2, 1, 0, RD_F)
#define FSGNJN(fmt)	RTYPE(0x04, fmt, 2, 1, 1, RD_F)
#define FSGNJX(fmt)	RTYPE(0x04, fmt, 2, 1, 2, RD_F)
#define FMIN(fmt)	RTYPE(0x05, fmt, 2, 1, 0, RD_F)
#define FMAX(fmt)	RTYPE(0x05, fmt, 2, 1, 1, RD_F)
#define FLE(fmt)	RTYPE(0x14, fmt, 2, 1, 0, RD_X)
#define FLT(fmt)	RTYPE(0x14, fmt, 2, 1, 1, RD_X)
#define FEQ(fmt)	RTYPE(0x14, fmt, 2, 1, 2, RD_X)
#define FCLASS(fmt)	RTYPE(0x1c, fmt, 0, 1, 1, RD_X)
#define FCVT_TO_INT(fmt, k, rm)	RTYPE(0x18, fmt, k, 1, rm, RD_X)
#define FCVT_FROM_INT(fmt, k, rm) RTYPE(0x1a, fmt, k, 5, rm, RD_F)
#define FCVT_S_D(rm)	RTYPE(0x08, S, 1, 1, rm, RD_F)
#define FCVT_D_S(rm)	RTYPE(0x08, D, 0, 1, rm, RD_F)
#define FMV_X_W		RTYPE(0x1c, S, 0, 1, 0, RD_X)
#define FMV_X_D		RTYPE(0x1c, D, 0, 1, 0, RD_X)
#define FMV_W_X		RTYPE(0x1e, S, 0, 5, 0, RD_F)
#define FMV_D_X		RTYPE(0x1e, D, 0, 5, 0, RD_F)
#define FMADD(fmt, rm)	R4(0x43, fmt, rm)
#define FMSUB(fmt, rm)	R4(0x47, fmt, rm)
#define FNMSUB(fmt, rm)	R4(0x4b, fmt, rm)
#define FNMADD(fmt, rm)	R4(0x4f, fmt, rm)

/* a NaN-boxed single */
#define SB(x)	(0xffffffff00000000ULL | (uint32_t)(x))

/* singles */
#define S_P0	0x00000000u
#define S_N0	0x80000000u
#define S_1	0x3f800000u		/* 1.0 */
#define S_N1	0xbf800000u
#define S_2	0x40000000u
#define S_N2	0xc0000000u
#define S_3	0x40400000u
#define S_HALF	0x3f000000u
#define S_PINF	0x7f800000u
#define S_NINF	0xff800000u
#define S_QNAN	0x7fc00000u		/* canonical */
#define S_QNANX	0xffc12345u		/* negative, with payload */
#define S_SNAN	0x7f800001u
#define S_MINSUB 0x00000001u		/* 2^-149 */
#define S_MAXSUB 0x007fffffu
#define S_MINNORM 0x00800000u		/* 2^-126 */
#define S_MAX	0x7f7fffffu
#define S_NMAX	0xff7fffffu
#define S_1U	0x3f800001u		/* 1 + 2^-23 */
#define S_1P12	0x3f800800u		/* 1 + 2^-12 */
#define S_2M24	0x33800000u		/* 2^-24: half an ulp of 1.0 */
#define S_N2M24	0xb3800000u

/* doubles */
#define D_P0	0x0000000000000000ULL
#define D_N0	0x8000000000000000ULL
#define D_1	0x3ff0000000000000ULL
#define D_N1	0xbff0000000000000ULL
#define D_2	0x4000000000000000ULL
#define D_3	0x4008000000000000ULL
#define D_PINF	0x7ff0000000000000ULL
#define D_NINF	0xfff0000000000000ULL
#define D_QNAN	0x7ff8000000000000ULL	/* canonical */
#define D_QNANX	0xfff8000000012345ULL
#define D_SNAN	0x7ff0000000000001ULL
#define D_MINSUB 0x0000000000000001ULL
#define D_MINNORM 0x0010000000000000ULL
#define D_MAX	0x7fefffffffffffffULL
#define D_2M53	0x3ca0000000000000ULL	/* half an ulp of 1.0 */

struct fpu_case {
	const char *what;
	uint32_t insn;
	uint32_t frm;
	uint64_t a, b, c;	/* f1, f2, f3; a is also x5 */
	uint64_t want;		/* f4, or x6 when rd is RD_X */
	uint32_t flags;
};

static const struct fpu_case add_cases[] = {
	{ "fadd.s exact", FADD(S, RNE), 0, SB(S_1), SB(S_2), 0, SB(S_3), 0 },
	{ "fadd.s tie rne", FADD(S, RNE), 0, SB(S_1), SB(S_2M24), 0, SB(S_1), NX },
	{ "fadd.s tie rtz", FADD(S, RTZ), 0, SB(S_1), SB(S_2M24), 0, SB(S_1), NX },
	{ "fadd.s tie rdn", FADD(S, RDN), 0, SB(S_1), SB(S_2M24), 0, SB(S_1), NX },
	{ "fadd.s tie rup", FADD(S, RUP), 0, SB(S_1), SB(S_2M24), 0, SB(S_1U), NX },
	{ "fadd.s tie rmm", FADD(S, RMM), 0, SB(S_1), SB(S_2M24), 0, SB(S_1U), NX },
	{ "fadd.s -tie rne", FADD(S, RNE), 0, SB(S_N1), SB(S_N2M24), 0, SB(S_N1), NX },
	{ "fadd.s -tie rtz", FADD(S, RTZ), 0, SB(S_N1), SB(S_N2M24), 0, SB(S_N1), NX },
	{ "fadd.s -tie rdn", FADD(S, RDN), 0, SB(S_N1), SB(S_N2M24), 0, SB(0xbf800001), NX },
	{ "fadd.s -tie rup", FADD(S, RUP), 0, SB(S_N1), SB(S_N2M24), 0, SB(S_N1), NX },
	{ "fadd.s -tie rmm", FADD(S, RMM), 0, SB(S_N1), SB(S_N2M24), 0, SB(0xbf800001), NX },
	{ "fadd.s odd tie rne", FADD(S, RNE), 0, SB(S_1U), SB(S_2M24), 0, SB(0x3f800002), NX },
	{ "fadd.s odd tie rmm", FADD(S, RMM), 0, SB(S_1U), SB(S_2M24), 0, SB(0x3f800002), NX },
	/* 1 + 0.375 ulp */
	{ "fadd.s below half rne", FADD(S, RNE), 0, SB(S_1), SB(0x33400000), 0, SB(S_1), NX },
	{ "fadd.s below half rmm", FADD(S, RMM), 0, SB(S_1), SB(0x33400000), 0, SB(S_1), NX },
	{ "fadd.s below half rup", FADD(S, RUP), 0, SB(S_1), SB(0x33400000), 0, SB(S_1U), NX },
	{ "fadd.s x+-x rne", FADD(S, RNE), 0, SB(S_1), SB(S_N1), 0, SB(S_P0), 0 },
	{ "fadd.s x+-x rdn", FADD(S, RDN), 0, SB(S_1), SB(S_N1), 0, SB(S_N0), 0 },
	{ "fadd.s x+-x rmm", FADD(S, RMM), 0, SB(S_1), SB(S_N1), 0, SB(S_P0), 0 },
	{ "fadd.s -0+-0", FADD(S, RNE), 0, SB(S_N0), SB(S_N0), 0, SB(S_N0), 0 },
	{ "fadd.s +0+-0 rne", FADD(S, RNE), 0, SB(S_P0), SB(S_N0), 0, SB(S_P0), 0 },
	{ "fadd.s +0+-0 rdn", FADD(S, RDN), 0, SB(S_P0), SB(S_N0), 0, SB(S_N0), 0 },
	{ "fadd.s overflow rne", FADD(S, RNE), 0, SB(S_MAX), SB(S_MAX), 0, SB(S_PINF), OF | NX },
	{ "fadd.s overflow rtz", FADD(S, RTZ), 0, SB(S_MAX), SB(S_MAX), 0, SB(S_MAX), OF | NX },
	{ "fadd.s overflow rdn", FADD(S, RDN), 0, SB(S_MAX), SB(S_MAX), 0, SB(S_MAX), OF | NX },
	{ "fadd.s overflow rup", FADD(S, RUP), 0, SB(S_MAX), SB(S_MAX), 0, SB(S_PINF), OF | NX },
	{ "fadd.s overflow rmm", FADD(S, RMM), 0, SB(S_MAX), SB(S_MAX), 0, SB(S_PINF), OF | NX },
	{ "fadd.s -overflow rdn", FADD(S, RDN), 0, SB(S_NMAX), SB(S_NMAX), 0, SB(S_NINF), OF | NX },
	{ "fadd.s -overflow rup", FADD(S, RUP), 0, SB(S_NMAX), SB(S_NMAX), 0, SB(S_NMAX), OF | NX },
	{ "fadd.s subnormals exact", FADD(S, RNE), 0, SB(S_MINSUB), SB(S_MINSUB), 0, SB(0x00000002), 0 },
	{ "fadd.s inf-inf", FADD(S, RNE), 0, SB(S_PINF), SB(S_NINF), 0, SB(S_QNAN), NV },
	{ "fadd.s inf+1", FADD(S, RNE), 0, SB(S_PINF), SB(S_1), 0, SB(S_PINF), 0 },
	{ "fadd.s qnan payload", FADD(S, RNE), 0, SB(S_QNANX), SB(S_1), 0, SB(S_QNAN), 0 },
	{ "fadd.s snan", FADD(S, RNE), 0, SB(S_1), SB(S_SNAN), 0, SB(S_QNAN), NV },
	{ "fadd.s dyn uses frm", FADD(S, DYN), RUP, SB(S_1), SB(S_2M24), 0, SB(S_1U), NX },
	{ "fadd.s dyn rmm", FADD(S, DYN), RMM, SB(S_1), SB(S_2M24), 0, SB(S_1U), NX },
	{ "fadd.s static beats frm", FADD(S, RNE), RUP, SB(S_1), SB(S_2M24), 0, SB(S_1), NX },
	{ "fsub.s tie rne", FSUB(S, RNE), 0, SB(S_1), SB(S_N2M24), 0, SB(S_1), NX },
	{ "fsub.s tie rmm", FSUB(S, RMM), 0, SB(S_1), SB(S_N2M24), 0, SB(S_1U), NX },
	/* 1 - 2^-25: halfway between 1 - 2^-24 and 1 */
	{ "fsub.s down tie rne", FSUB(S, RNE), 0, SB(S_1), SB(0x33000000), 0, SB(S_1), NX },
	{ "fsub.s down tie rtz", FSUB(S, RTZ), 0, SB(S_1), SB(0x33000000), 0, SB(0x3f7fffff), NX },
	{ "fsub.s down tie rmm", FSUB(S, RMM), 0, SB(S_1), SB(0x33000000), 0, SB(S_1), NX },
	{ "fsub.s x-x rdn", FSUB(S, RDN), 0, SB(S_3), SB(S_3), 0, SB(S_N0), 0 },
	{ "fsub.s inf-inf", FSUB(S, RNE), 0, SB(S_PINF), SB(S_PINF), 0, SB(S_QNAN), NV },
	{ "fadd.d tie rne", FADD(D, RNE), 0, D_1, D_2M53, 0, D_1, NX },
	{ "fadd.d tie rmm", FADD(D, RMM), 0, D_1, D_2M53, 0, 0x3ff0000000000001ULL, NX },
	{ "fadd.d tie rup", FADD(D, RUP), 0, D_1, D_2M53, 0, 0x3ff0000000000001ULL, NX },
	{ "fadd.d tie rtz", FADD(D, RTZ), 0, D_1, D_2M53, 0, D_1, NX },
	{ "fadd.d -tie rdn", FADD(D, RDN), 0, D_N1, 0xbca0000000000000ULL, 0, 0xbff0000000000001ULL, NX },
	{ "fadd.d -tie rmm", FADD(D, RMM), 0, D_N1, 0xbca0000000000000ULL, 0, 0xbff0000000000001ULL, NX },
	{ "fadd.d x+-x rdn", FADD(D, RDN), 0, D_3, 0xc008000000000000ULL, 0, D_N0, 0 },
	{ "fadd.d overflow rtz", FADD(D, RTZ), 0, D_MAX, D_MAX, 0, D_MAX, OF | NX },
	{ "fadd.d overflow rmm", FADD(D, RMM), 0, D_MAX, D_MAX, 0, D_PINF, OF | NX },
	{ "fadd.d inf-inf", FADD(D, RNE), 0, D_NINF, D_PINF, 0, D_QNAN, NV },
	{ "fadd.d qnan payload", FADD(D, RNE), 0, D_1, D_QNANX, 0, D_QNAN, 0 },
	{ "fadd.d snan", FADD(D, RNE), 0, D_SNAN, D_1, 0, D_QNAN, NV },
	{ "fsub.d x-x rne", FSUB(D, RNE), 0, D_3, D_3, 0, D_P0, 0 },
};

static const struct fpu_case mul_div_sqrt_cases[] = {
	/* (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: a tie */
	{ "fmul.s tie rne", FMUL(S, RNE), 0, SB(S_1P12), SB(S_1P12), 0, SB(0x3f801000), NX },
	{ "fmul.s tie rtz", FMUL(S, RTZ), 0, SB(S_1P12), SB(S_1P12), 0, SB(0x3f801000), NX },
	{ "fmul.s tie rdn", FMUL(S, RDN), 0, SB(S_1P12), SB(S_1P12), 0, SB(0x3f801000), NX },
	{ "fmul.s tie rup", FMUL(S, RUP), 0, SB(S_1P12), SB(S_1P12), 0, SB(0x3f801001), NX },
	{ "fmul.s tie rmm", FMUL(S, RMM), 0, SB(S_1P12), SB(S_1P12), 0, SB(0x3f801001), NX },
	{ "fmul.s -tie rmm", FMUL(S, RMM), 0, SB(0xbf800800), SB(S_1P12), 0, SB(0xbf801001), NX },
	{ "fmul.s -tie rdn", FMUL(S, RDN), 0, SB(0xbf800800), SB(S_1P12), 0, SB(0xbf801001), NX },
	{ "fmul.s signed zero", FMUL(S, RNE), 0, SB(S_N1), SB(S_P0), 0, SB(S_N0), 0 },
	{ "fmul.s inf*0", FMUL(S, RNE), 0, SB(S_PINF), SB(S_N0), 0, SB(S_QNAN), NV },
	{ "fmul.s exact subnormal", FMUL(S, RNE), 0, SB(S_MINNORM), SB(S_HALF), 0, SB(0x00400000), 0 },
	/* 2^-150: halfway between 0 and the smallest subnormal */
	{ "fmul.s underflow rne", FMUL(S, RNE), 0, SB(S_MINSUB), SB(S_HALF), 0, SB(S_P0), UF | NX },
	{ "fmul.s underflow rtz", FMUL(S, RTZ), 0, SB(S_MINSUB), SB(S_HALF), 0, SB(S_P0), UF | NX },
	{ "fmul.s underflow rdn", FMUL(S, RDN), 0, SB(S_MINSUB), SB(S_HALF), 0, SB(S_P0), UF | NX },
	{ "fmul.s underflow rup", FMUL(S, RUP), 0, SB(S_MINSUB), SB(S_HALF), 0, SB(S_MINSUB), UF | NX },
	{ "fmul.s underflow rmm", FMUL(S, RMM), 0, SB(S_MINSUB), SB(S_HALF), 0, SB(S_MINSUB), UF | NX },
	{ "fmul.s -underflow rdn", FMUL(S, RDN), 0, SB(S_MINSUB), SB(0xbf000000), 0, SB(0x80000001), UF | NX },
	{ "fmul.s -underflow rne", FMUL(S, RNE), 0, SB(S_MINSUB), SB(0xbf000000), 0, SB(S_N0), UF | NX },
	/* 2^-126 * (1 - 2^-24) = 2^-126 - 2^-150: rounds to 2^-126 but is tiny
	 * after rounding to 24 bits with an unbounded exponent */
	{ "fmul.s tiny after rounding rne", FMUL(S, RNE), 0, SB(S_MINNORM), SB(0x3f7fffff), 0, SB(S_MINNORM), UF | NX },
	{ "fmul.s tiny after rounding rmm", FMUL(S, RMM), 0, SB(S_MINNORM), SB(0x3f7fffff), 0, SB(S_MINNORM), UF | NX },
	{ "fmul.s tiny after rounding rtz", FMUL(S, RTZ), 0, SB(S_MINNORM), SB(0x3f7fffff), 0, SB(S_MAXSUB), UF | NX },
	{ "fmul.s overflow rdn", FMUL(S, RDN), 0, SB(S_MAX), SB(S_2), 0, SB(S_MAX), OF | NX },
	{ "fmul.s -overflow rtz", FMUL(S, RTZ), 0, SB(S_NMAX), SB(S_2), 0, SB(S_NMAX), OF | NX },
	{ "fmul.s -overflow rmm", FMUL(S, RMM), 0, SB(S_NMAX), SB(S_2), 0, SB(S_NINF), OF | NX },
	/* (1 + 2^-26)(1 + 2^-27) = 1 + 2^-26 + 2^-27 + 2^-53: a tie */
	{ "fmul.d tie rne", FMUL(D, RNE), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, 0, 0x3ff0000006000000ULL, NX },
	{ "fmul.d tie rmm", FMUL(D, RMM), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, 0, 0x3ff0000006000001ULL, NX },
	{ "fmul.d tie rdn", FMUL(D, RDN), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, 0, 0x3ff0000006000000ULL, NX },
	{ "fmul.d underflow rmm", FMUL(D, RMM), 0, D_MINSUB, 0x3fe0000000000000ULL, 0, D_MINSUB, UF | NX },
	{ "fmul.d underflow rne", FMUL(D, RNE), 0, D_MINSUB, 0x3fe0000000000000ULL, 0, D_P0, UF | NX },
	{ "fmul.d inf*0", FMUL(D, RNE), 0, D_P0, D_NINF, 0, D_QNAN, NV },
	{ "fdiv.s 1/3 rne", FDIV(S, RNE), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaab), NX },
	{ "fdiv.s 1/3 rtz", FDIV(S, RTZ), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaaa), NX },
	{ "fdiv.s 1/3 rdn", FDIV(S, RDN), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaaa), NX },
	{ "fdiv.s 1/3 rup", FDIV(S, RUP), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaab), NX },
	{ "fdiv.s 1/3 rmm", FDIV(S, RMM), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaab), NX },
	{ "fdiv.s -1/3 rdn", FDIV(S, RDN), 0, SB(S_N1), SB(S_3), 0, SB(0xbeaaaaab), NX },
	/* 5 * 2^-149 / 2: halfway between 2 and 3 * 2^-149 */
	{ "fdiv.s subnormal tie rne", FDIV(S, RNE), 0, SB(0x00000005), SB(S_2), 0, SB(0x00000002), UF | NX },
	{ "fdiv.s subnormal tie rmm", FDIV(S, RMM), 0, SB(0x00000005), SB(S_2), 0, SB(0x00000003), UF | NX },
	{ "fdiv.s subnormal tie rtz", FDIV(S, RTZ), 0, SB(0x00000005), SB(S_2), 0, SB(0x00000002), UF | NX },
	{ "fdiv.s 1/0", FDIV(S, RNE), 0, SB(S_1), SB(S_P0), 0, SB(S_PINF), DZ },
	{ "fdiv.s -1/0", FDIV(S, RNE), 0, SB(S_N1), SB(S_P0), 0, SB(S_NINF), DZ },
	{ "fdiv.s 1/-0", FDIV(S, RNE), 0, SB(S_1), SB(S_N0), 0, SB(S_NINF), DZ },
	{ "fdiv.s 0/0", FDIV(S, RNE), 0, SB(S_P0), SB(S_P0), 0, SB(S_QNAN), NV },
	{ "fdiv.s inf/inf", FDIV(S, RNE), 0, SB(S_PINF), SB(S_NINF), 0, SB(S_QNAN), NV },
	{ "fdiv.s 1/inf", FDIV(S, RNE), 0, SB(S_N1), SB(S_PINF), 0, SB(S_N0), 0 },
	{ "fdiv.s inf/0", FDIV(S, RNE), 0, SB(S_PINF), SB(S_P0), 0, SB(S_PINF), 0 },
	{ "fdiv.d 1/3 rne", FDIV(D, RNE), 0, D_1, D_3, 0, 0x3fd5555555555555ULL, NX },
	{ "fdiv.d 1/3 rup", FDIV(D, RUP), 0, D_1, D_3, 0, 0x3fd5555555555556ULL, NX },
	{ "fdiv.d 1/3 rmm", FDIV(D, RMM), 0, D_1, D_3, 0, 0x3fd5555555555555ULL, NX },
	{ "fdiv.d subnormal tie rne", FDIV(D, RNE), 0, 0x0000000000000005ULL, D_2, 0, 0x0000000000000002ULL, UF | NX },
	{ "fdiv.d subnormal tie rmm", FDIV(D, RMM), 0, 0x0000000000000005ULL, D_2, 0, 0x0000000000000003ULL, UF | NX },
	{ "fdiv.d 1/0", FDIV(D, RNE), 0, D_1, D_P0, 0, D_PINF, DZ },
	{ "fdiv.d 0/0", FDIV(D, RNE), 0, D_N0, D_P0, 0, D_QNAN, NV },
	{ "fsqrt.s 2 rne", FSQRT(S, RNE), 0, SB(S_2), 0, 0, SB(0x3fb504f3), NX },
	{ "fsqrt.s 2 rtz", FSQRT(S, RTZ), 0, SB(S_2), 0, 0, SB(0x3fb504f3), NX },
	{ "fsqrt.s 2 rdn", FSQRT(S, RDN), 0, SB(S_2), 0, 0, SB(0x3fb504f3), NX },
	{ "fsqrt.s 2 rup", FSQRT(S, RUP), 0, SB(S_2), 0, 0, SB(0x3fb504f4), NX },
	{ "fsqrt.s 2 rmm", FSQRT(S, RMM), 0, SB(S_2), 0, 0, SB(0x3fb504f3), NX },
	{ "fsqrt.s 4", FSQRT(S, RNE), 0, SB(0x40800000), 0, 0, SB(S_2), 0 },
	{ "fsqrt.s -0", FSQRT(S, RNE), 0, SB(S_N0), 0, 0, SB(S_N0), 0 },
	{ "fsqrt.s -1", FSQRT(S, RNE), 0, SB(S_N1), 0, 0, SB(S_QNAN), NV },
	{ "fsqrt.s -inf", FSQRT(S, RNE), 0, SB(S_NINF), 0, 0, SB(S_QNAN), NV },
	{ "fsqrt.s +inf", FSQRT(S, RNE), 0, SB(S_PINF), 0, 0, SB(S_PINF), 0 },
	{ "fsqrt.s snan", FSQRT(S, RNE), 0, SB(S_SNAN), 0, 0, SB(S_QNAN), NV },
	{ "fsqrt.s qnan", FSQRT(S, RNE), 0, SB(S_QNANX), 0, 0, SB(S_QNAN), 0 },
	{ "fsqrt.s subnormal", FSQRT(S, RNE), 0, SB(S_MINSUB), 0, 0, SB(0x1a3504f3), NX },
	{ "fsqrt.d 2 rne", FSQRT(D, RNE), 0, D_2, 0, 0, 0x3ff6a09e667f3bcdULL, NX },
	{ "fsqrt.d 2 rtz", FSQRT(D, RTZ), 0, D_2, 0, 0, 0x3ff6a09e667f3bccULL, NX },
	{ "fsqrt.d 2 rmm", FSQRT(D, RMM), 0, D_2, 0, 0, 0x3ff6a09e667f3bcdULL, NX },
	{ "fsqrt.d -1", FSQRT(D, RNE), 0, D_N1, 0, 0, D_QNAN, NV },
	{ "fsqrt.d -0", FSQRT(D, RNE), 0, D_N0, 0, 0, D_N0, 0 },
};

static const struct fpu_case fma_cases[] = {
	/* (1 + 2^-12)^2 - 1 = 2^-11 + 2^-24: exact only when fused */
	{ "fmadd.s fused", FMADD(S, RNE), 0, SB(S_1P12), SB(S_1P12), SB(S_N1), SB(0x3a000400), 0 },
	{ "fmadd.s tie rne", FMADD(S, RNE), 0, SB(S_1P12), SB(S_1P12), SB(S_P0), SB(0x3f801000), NX },
	{ "fmadd.s tie rmm", FMADD(S, RMM), 0, SB(S_1P12), SB(S_1P12), SB(S_P0), SB(0x3f801001), NX },
	{ "fmadd.s tie rup", FMADD(S, RUP), 0, SB(S_1P12), SB(S_1P12), SB(S_N0), SB(0x3f801001), NX },
	/* 1 * 1 + 2^-24 */
	{ "fmadd.s add tie rmm", FMADD(S, RMM), 0, SB(S_1), SB(S_1), SB(S_2M24), SB(S_1U), NX },
	{ "fmadd.s add tie rne", FMADD(S, RNE), 0, SB(S_1), SB(S_1), SB(S_2M24), SB(S_1), NX },
	{ "fmadd.s inf*0+qnan", FMADD(S, RNE), 0, SB(S_PINF), SB(S_P0), SB(S_QNAN), SB(S_QNAN), NV },
	{ "fmadd.s 0*inf+qnan", FMADD(S, RNE), 0, SB(S_N0), SB(S_NINF), SB(S_QNANX), SB(S_QNAN), NV },
	{ "fmadd.s inf*0+1", FMADD(S, RNE), 0, SB(S_PINF), SB(S_P0), SB(S_1), SB(S_QNAN), NV },
	{ "fmadd.s 1*1+qnan", FMADD(S, RNE), 0, SB(S_1), SB(S_1), SB(S_QNANX), SB(S_QNAN), 0 },
	{ "fmadd.s 1*1+snan", FMADD(S, RNE), 0, SB(S_1), SB(S_1), SB(S_SNAN), SB(S_QNAN), NV },
	{ "fmadd.s inf*1-inf", FMADD(S, RNE), 0, SB(S_PINF), SB(S_1), SB(S_NINF), SB(S_QNAN), NV },
	{ "fmadd.s -0*1+0 rne", FMADD(S, RNE), 0, SB(S_N0), SB(S_1), SB(S_P0), SB(S_P0), 0 },
	{ "fmadd.s -0*1+0 rdn", FMADD(S, RDN), 0, SB(S_N0), SB(S_1), SB(S_P0), SB(S_N0), 0 },
	{ "fmadd.s -0*1-0", FMADD(S, RNE), 0, SB(S_N0), SB(S_1), SB(S_N0), SB(S_N0), 0 },
	{ "fmadd.s overflow", FMADD(S, RNE), 0, SB(S_MAX), SB(S_2), SB(S_NMAX), SB(S_MAX), 0 },
	{ "fmadd.s underflow rmm", FMADD(S, RMM), 0, SB(S_MINSUB), SB(S_HALF), SB(S_P0), SB(S_MINSUB), UF | NX },
	{ "fmsub.s 1*1-1 rne", FMSUB(S, RNE), 0, SB(S_1), SB(S_1), SB(S_1), SB(S_P0), 0 },
	{ "fmsub.s 1*1-1 rdn", FMSUB(S, RDN), 0, SB(S_1), SB(S_1), SB(S_1), SB(S_N0), 0 },
	{ "fmsub.s 2*3-1", FMSUB(S, RNE), 0, SB(S_2), SB(S_3), SB(S_1), SB(0x40a00000), 0 },
	{ "fmsub.s tie rmm", FMSUB(S, RMM), 0, SB(S_1), SB(S_1), SB(S_N2M24), SB(S_1U), NX },
	{ "fnmsub.s -(2*1)+5", FNMSUB(S, RNE), 0, SB(S_2), SB(S_1), SB(0x40a00000), SB(S_3), 0 },
	{ "fnmsub.s +0", FNMSUB(S, RNE), 0, SB(S_P0), SB(S_1), SB(S_P0), SB(S_P0), 0 },
	{ "fnmsub.s tie rmm", FNMSUB(S, RMM), 0, SB(S_1), SB(S_N1), SB(S_2M24), SB(S_1U), NX },
	{ "fnmadd.s -(1*1)-1", FNMADD(S, RNE), 0, SB(S_1), SB(S_1), SB(S_1), SB(S_N2), 0 },
	{ "fnmadd.s -0", FNMADD(S, RNE), 0, SB(S_P0), SB(S_1), SB(S_P0), SB(S_N0), 0 },
	{ "fnmadd.s tie rmm", FNMADD(S, RMM), 0, SB(S_1), SB(S_1), SB(S_2M24), SB(0xbf800001), NX },
	{ "fnmadd.s tie rdn", FNMADD(S, RDN), 0, SB(S_1), SB(S_1), SB(S_2M24), SB(0xbf800001), NX },
	{ "fnmadd.s tie rup", FNMADD(S, RUP), 0, SB(S_1), SB(S_1), SB(S_2M24), SB(S_N1), NX },
	{ "fnmadd.s inf*0+qnan", FNMADD(S, RNE), 0, SB(S_P0), SB(S_PINF), SB(S_QNAN), SB(S_QNAN), NV },
	{ "fmadd.d tie rne", FMADD(D, RNE), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, D_P0, 0x3ff0000006000000ULL, NX },
	{ "fmadd.d tie rmm", FMADD(D, RMM), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, D_P0, 0x3ff0000006000001ULL, NX },
	/* (1 + 2^-26)(1 + 2^-27) - 1 = 2^-26 + 2^-27 + 2^-53, exactly */
	{ "fmadd.d fused", FMADD(D, RNE), 0, 0x3ff0000004000000ULL, 0x3ff0000002000000ULL, D_N1, 0x3e58000002000000ULL, 0 },
	{ "fmadd.d add tie rmm", FMADD(D, RMM), 0, D_1, D_1, D_2M53, 0x3ff0000000000001ULL, NX },
	{ "fmadd.d inf*0+qnan", FMADD(D, RNE), 0, D_PINF, D_P0, D_QNANX, D_QNAN, NV },
	{ "fmadd.d 0*inf+snan", FMADD(D, RNE), 0, D_P0, D_PINF, D_SNAN, D_QNAN, NV },
	{ "fmadd.d 1*1+qnan", FMADD(D, RNE), 0, D_1, D_1, D_QNANX, D_QNAN, 0 },
	{ "fmsub.d 1*1-1 rdn", FMSUB(D, RDN), 0, D_1, D_1, D_1, D_N0, 0 },
	{ "fnmsub.d -(2*3)+1", FNMSUB(D, RNE), 0, D_2, D_3, D_1, 0xc014000000000000ULL, 0 },
	{ "fnmadd.d -(2*3)-1", FNMADD(D, RNE), 0, D_2, D_3, D_1, 0xc01c000000000000ULL, 0 },
	{ "fnmadd.d overflow rtz", FNMADD(D, RTZ), 0, D_MAX, D_2, D_P0, 0xffefffffffffffffULL, OF | NX },
};

static const struct fpu_case bits_cases[] = {
	{ "fmin.s -0,+0", FMIN(S), 0, SB(S_N0), SB(S_P0), 0, SB(S_N0), 0 },
	{ "fmin.s +0,-0", FMIN(S), 0, SB(S_P0), SB(S_N0), 0, SB(S_N0), 0 },
	{ "fmax.s -0,+0", FMAX(S), 0, SB(S_N0), SB(S_P0), 0, SB(S_P0), 0 },
	{ "fmax.s +0,-0", FMAX(S), 0, SB(S_P0), SB(S_N0), 0, SB(S_P0), 0 },
	{ "fmin.s 1,2", FMIN(S), 0, SB(S_1), SB(S_2), 0, SB(S_1), 0 },
	{ "fmax.s 1,2", FMAX(S), 0, SB(S_1), SB(S_2), 0, SB(S_2), 0 },
	{ "fmin.s -1,-2", FMIN(S), 0, SB(S_N1), SB(S_N2), 0, SB(S_N2), 0 },
	{ "fmax.s -1,-2", FMAX(S), 0, SB(S_N1), SB(S_N2), 0, SB(S_N1), 0 },
	{ "fmin.s -inf,1", FMIN(S), 0, SB(S_NINF), SB(S_1), 0, SB(S_NINF), 0 },
	{ "fmin.s qnan,1", FMIN(S), 0, SB(S_QNANX), SB(S_1), 0, SB(S_1), 0 },
	{ "fmin.s 1,qnan", FMIN(S), 0, SB(S_1), SB(S_QNAN), 0, SB(S_1), 0 },
	{ "fmax.s snan,1", FMAX(S), 0, SB(S_SNAN), SB(S_1), 0, SB(S_1), NV },
	{ "fmax.s 1,snan", FMAX(S), 0, SB(S_1), SB(S_SNAN), 0, SB(S_1), NV },
	{ "fmax.s qnan,qnan", FMAX(S), 0, SB(S_QNANX), SB(S_QNANX), 0, SB(S_QNAN), 0 },
	{ "fmin.s snan,qnan", FMIN(S), 0, SB(S_SNAN), SB(S_QNANX), 0, SB(S_QNAN), NV },
	{ "fmin.s unboxed,1", FMIN(S), 0, 0x000000003f800000ULL, SB(S_2), 0, SB(S_2), 0 },
	{ "fmin.d -0,+0", FMIN(D), 0, D_P0, D_N0, 0, D_N0, 0 },
	{ "fmax.d -0,+0", FMAX(D), 0, D_N0, D_P0, 0, D_P0, 0 },
	{ "fmax.d qnan,-1", FMAX(D), 0, D_QNANX, D_N1, 0, D_N1, 0 },
	{ "fmin.d snan,snan", FMIN(D), 0, D_SNAN, D_SNAN, 0, D_QNAN, NV },
	{ "fmax.d subnormal", FMAX(D), 0, D_MINSUB, D_P0, 0, D_MINSUB, 0 },
	{ "fsgnj.s", FSGNJ(S), 0, SB(S_1), SB(S_N2), 0, SB(S_N1), 0 },
	{ "fsgnjn.s", FSGNJN(S), 0, SB(S_1), SB(S_N2), 0, SB(S_1), 0 },
	{ "fsgnjx.s", FSGNJX(S), 0, SB(S_N1), SB(S_N2), 0, SB(S_1), 0 },
	{ "fsgnjx.s +", FSGNJX(S), 0, SB(S_N1), SB(S_2), 0, SB(S_N1), 0 },
	{ "fsgnjn.s keeps nan payload", FSGNJN(S), 0, SB(0x7fc12345), SB(S_1), 0, SB(0xffc12345), 0 },
	{ "fsgnj.s snan is quiet", FSGNJ(S), 0, SB(S_SNAN), SB(S_N1), 0, SB(0xff800001), 0 },
	{ "fsgnj.s unboxed rs1", FSGNJ(S), 0, 0x123456783f800000ULL, SB(S_N1), 0, SB(0xffc00000), 0 },
	{ "fsgnj.s unboxed rs2", FSGNJN(S), 0, SB(S_2), 0x00000000bf800000ULL, 0, SB(0xc0000000), 0 },
	{ "fsgnj.d", FSGNJ(D), 0, D_1, D_N0, 0, D_N1, 0 },
	{ "fsgnjn.d", FSGNJN(D), 0, D_N1, D_N1, 0, D_1, 0 },
	{ "fsgnjx.d", FSGNJX(D), 0, D_N1, D_NINF, 0, D_1, 0 },
	{ "fsgnj.d of single", FSGNJ(D), 0, SB(S_1), D_P0, 0, 0x7fffffff3f800000ULL, 0 },
	{ "feq.s 1,1", FEQ(S), 0, SB(S_1), SB(S_1), 0, 1, 0 },
	{ "feq.s 1,2", FEQ(S), 0, SB(S_1), SB(S_2), 0, 0, 0 },
	{ "feq.s +0,-0", FEQ(S), 0, SB(S_P0), SB(S_N0), 0, 1, 0 },
	{ "feq.s qnan", FEQ(S), 0, SB(S_QNAN), SB(S_QNAN), 0, 0, 0 },
	{ "feq.s snan", FEQ(S), 0, SB(S_1), SB(S_SNAN), 0, 0, NV },
	{ "flt.s 1,2", FLT(S), 0, SB(S_1), SB(S_2), 0, 1, 0 },
	{ "flt.s 2,1", FLT(S), 0, SB(S_2), SB(S_1), 0, 0, 0 },
	{ "flt.s 1,1", FLT(S), 0, SB(S_1), SB(S_1), 0, 0, 0 },
	{ "flt.s -0,+0", FLT(S), 0, SB(S_N0), SB(S_P0), 0, 0, 0 },
	{ "flt.s -inf,inf", FLT(S), 0, SB(S_NINF), SB(S_PINF), 0, 1, 0 },
	{ "flt.s -2,-1", FLT(S), 0, SB(S_N2), SB(S_N1), 0, 1, 0 },
	{ "flt.s qnan", FLT(S), 0, SB(S_QNAN), SB(S_1), 0, 0, NV },
	{ "fle.s 1,1", FLE(S), 0, SB(S_1), SB(S_1), 0, 1, 0 },
	{ "fle.s -0,+0", FLE(S), 0, SB(S_N0), SB(S_P0), 0, 1, 0 },
	{ "fle.s +0,-0", FLE(S), 0, SB(S_P0), SB(S_N0), 0, 1, 0 },
	{ "fle.s 2,1", FLE(S), 0, SB(S_2), SB(S_1), 0, 0, 0 },
	{ "fle.s 1,qnan", FLE(S), 0, SB(S_1), SB(S_QNAN), 0, 0, NV },
	{ "fle.s unboxed", FLE(S), 0, 0x000000003f800000ULL, SB(S_1), 0, 0, NV },
	{ "feq.d -0,+0", FEQ(D), 0, D_N0, D_P0, 0, 1, 0 },
	{ "feq.d qnan", FEQ(D), 0, D_QNANX, D_1, 0, 0, 0 },
	{ "feq.d snan", FEQ(D), 0, D_SNAN, D_1, 0, 0, NV },
	{ "flt.d 1,2", FLT(D), 0, D_1, D_2, 0, 1, 0 },
	{ "flt.d snan", FLT(D), 0, D_1, D_SNAN, 0, 0, NV },
	{ "fle.d subnormal", FLE(D), 0, D_MINSUB, D_P0, 0, 0, 0 },
	{ "fle.d qnan", FLE(D), 0, D_QNAN, D_QNAN, 0, 0, NV },
	{ "fclass.s -inf", FCLASS(S), 0, SB(S_NINF), 0, 0, 1 << 0, 0 },
	{ "fclass.s -normal", FCLASS(S), 0, SB(S_N1), 0, 0, 1 << 1, 0 },
	{ "fclass.s -subnormal", FCLASS(S), 0, SB(0x80000001), 0, 0, 1 << 2, 0 },
	{ "fclass.s -0", FCLASS(S), 0, SB(S_N0), 0, 0, 1 << 3, 0 },
	{ "fclass.s +0", FCLASS(S), 0, SB(S_P0), 0, 0, 1 << 4, 0 },
	{ "fclass.s +subnormal", FCLASS(S), 0, SB(S_MAXSUB), 0, 0, 1 << 5, 0 },
	{ "fclass.s +normal", FCLASS(S), 0, SB(S_MINNORM), 0, 0, 1 << 6, 0 },
	{ "fclass.s +inf", FCLASS(S), 0, SB(S_PINF), 0, 0, 1 << 7, 0 },
	{ "fclass.s snan", FCLASS(S), 0, SB(0xffbfffff), 0, 0, 1 << 8, 0 },
	{ "fclass.s qnan", FCLASS(S), 0, SB(S_QNANX), 0, 0, 1 << 9, 0 },
	{ "fclass.s unboxed", FCLASS(S), 0, 0x00000000ff800000ULL, 0, 0, 1 << 9, 0 },
	{ "fclass.d -inf", FCLASS(D), 0, D_NINF, 0, 0, 1 << 0, 0 },
	{ "fclass.d -normal", FCLASS(D), 0, 0x8010000000000000ULL, 0, 0, 1 << 1, 0 },
	{ "fclass.d -subnormal", FCLASS(D), 0, 0x800fffffffffffffULL, 0, 0, 1 << 2, 0 },
	{ "fclass.d -0", FCLASS(D), 0, D_N0, 0, 0, 1 << 3, 0 },
	{ "fclass.d +0", FCLASS(D), 0, D_P0, 0, 0, 1 << 4, 0 },
	{ "fclass.d +subnormal", FCLASS(D), 0, D_MINSUB, 0, 0, 1 << 5, 0 },
	{ "fclass.d +normal", FCLASS(D), 0, D_MAX, 0, 0, 1 << 6, 0 },
	{ "fclass.d +inf", FCLASS(D), 0, D_PINF, 0, 0, 1 << 7, 0 },
	{ "fclass.d snan", FCLASS(D), 0, D_SNAN, 0, 0, 1 << 8, 0 },
	{ "fclass.d qnan", FCLASS(D), 0, D_QNANX, 0, 0, 1 << 9, 0 },
	{ "fmv.x.w sign-extends", FMV_X_W, 0, SB(0x80000000), 0, 0, 0xffffffff80000000ULL, 0 },
	{ "fmv.x.w positive", FMV_X_W, 0, SB(S_1), 0, 0, S_1, 0 },
	{ "fmv.x.w unboxed is raw", FMV_X_W, 0, 0x1234567887654321ULL, 0, 0, 0xffffffff87654321ULL, 0 },
	{ "fmv.x.w keeps nan payload", FMV_X_W, 0, SB(0x7f800001), 0, 0, 0x7f800001, 0 },
	{ "fmv.w.x boxes", FMV_W_X, 0, 0x123456789abcdef0ULL, 0, 0, SB(0x9abcdef0), 0 },
	{ "fmv.w.x snan", FMV_W_X, 0, S_SNAN, 0, 0, SB(S_SNAN), 0 },
	{ "fmv.x.d", FMV_X_D, 0, D_SNAN, 0, 0, D_SNAN, 0 },
	{ "fmv.x.d of single", FMV_X_D, 0, SB(S_1), 0, 0, SB(S_1), 0 },
	{ "fmv.d.x", FMV_D_X, 0, 0xfff0000000000123ULL, 0, 0, 0xfff0000000000123ULL, 0 },
};

static const struct fpu_case to_int_cases[] = {
	{ "fcvt.w.s 1.5 rne", FCVT_TO_INT(S, W, RNE), 0, SB(0x3fc00000), 0, 0, 2, NX },
	{ "fcvt.w.s 2.5 rne", FCVT_TO_INT(S, W, RNE), 0, SB(0x40200000), 0, 0, 2, NX },
	{ "fcvt.w.s 2.5 rmm", FCVT_TO_INT(S, W, RMM), 0, SB(0x40200000), 0, 0, 3, NX },
	{ "fcvt.w.s 2.5 rtz", FCVT_TO_INT(S, W, RTZ), 0, SB(0x40200000), 0, 0, 2, NX },
	{ "fcvt.w.s 2.5 rup", FCVT_TO_INT(S, W, RUP), 0, SB(0x40200000), 0, 0, 3, NX },
	{ "fcvt.w.s -2.5 rne", FCVT_TO_INT(S, W, RNE), 0, SB(0xc0200000), 0, 0, 0xfffffffffffffffeULL, NX },
	{ "fcvt.w.s -2.5 rmm", FCVT_TO_INT(S, W, RMM), 0, SB(0xc0200000), 0, 0, 0xfffffffffffffffdULL, NX },
	{ "fcvt.w.s -2.5 rtz", FCVT_TO_INT(S, W, RTZ), 0, SB(0xc0200000), 0, 0, 0xfffffffffffffffeULL, NX },
	{ "fcvt.w.s -2.5 rdn", FCVT_TO_INT(S, W, RDN), 0, SB(0xc0200000), 0, 0, 0xfffffffffffffffdULL, NX },
	{ "fcvt.w.s -2.5 rup", FCVT_TO_INT(S, W, RUP), 0, SB(0xc0200000), 0, 0, 0xfffffffffffffffeULL, NX },
	{ "fcvt.w.s -2.5 dyn", FCVT_TO_INT(S, W, DYN), RDN, SB(0xc0200000), 0, 0, 0xfffffffffffffffdULL, NX },
	{ "fcvt.w.s exact", FCVT_TO_INT(S, W, RNE), 0, SB(S_N2), 0, 0, 0xfffffffffffffffeULL, 0 },
	{ "fcvt.w.s -0", FCVT_TO_INT(S, W, RNE), 0, SB(S_N0), 0, 0, 0, 0 },
	{ "fcvt.w.s subnormal rup", FCVT_TO_INT(S, W, RUP), 0, SB(S_MINSUB), 0, 0, 1, NX },
	{ "fcvt.w.s qnan", FCVT_TO_INT(S, W, RNE), 0, SB(S_QNAN), 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.s -nan", FCVT_TO_INT(S, W, RNE), 0, SB(S_QNANX), 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.s unboxed", FCVT_TO_INT(S, W, RNE), 0, 0x000000003f800000ULL, 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.s +inf", FCVT_TO_INT(S, W, RNE), 0, SB(S_PINF), 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.s -inf", FCVT_TO_INT(S, W, RNE), 0, SB(S_NINF), 0, 0, 0xffffffff80000000ULL, NV },
	{ "fcvt.w.s 2^31", FCVT_TO_INT(S, W, RNE), 0, SB(0x4f000000), 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.s -2^31", FCVT_TO_INT(S, W, RNE), 0, SB(0xcf000000), 0, 0, 0xffffffff80000000ULL, 0 },
	{ "fcvt.w.s -2^32", FCVT_TO_INT(S, W, RNE), 0, SB(0xcf800000), 0, 0, 0xffffffff80000000ULL, NV },
	/* 2^31 - 0.5 and -2^31 - 0.5, exact in double */
	{ "fcvt.w.d max-0.5 rne", FCVT_TO_INT(D, W, RNE), 0, 0x41dfffffffe00000ULL, 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.d max-0.5 rtz", FCVT_TO_INT(D, W, RTZ), 0, 0x41dfffffffe00000ULL, 0, 0, 0x7fffffff, NX },
	{ "fcvt.w.d max-0.5 rdn", FCVT_TO_INT(D, W, RDN), 0, 0x41dfffffffe00000ULL, 0, 0, 0x7fffffff, NX },
	{ "fcvt.w.d max-0.5 rmm", FCVT_TO_INT(D, W, RMM), 0, 0x41dfffffffe00000ULL, 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.d min-0.5 rne", FCVT_TO_INT(D, W, RNE), 0, 0xc1e0000000100000ULL, 0, 0, 0xffffffff80000000ULL, NX },
	{ "fcvt.w.d min-0.5 rtz", FCVT_TO_INT(D, W, RTZ), 0, 0xc1e0000000100000ULL, 0, 0, 0xffffffff80000000ULL, NX },
	{ "fcvt.w.d min-0.5 rdn", FCVT_TO_INT(D, W, RDN), 0, 0xc1e0000000100000ULL, 0, 0, 0xffffffff80000000ULL, NV },
	{ "fcvt.w.d min-0.5 rmm", FCVT_TO_INT(D, W, RMM), 0, 0xc1e0000000100000ULL, 0, 0, 0xffffffff80000000ULL, NV },
	{ "fcvt.w.d snan", FCVT_TO_INT(D, W, RNE), 0, D_SNAN, 0, 0, 0x7fffffff, NV },
	{ "fcvt.w.d -inf", FCVT_TO_INT(D, W, RTZ), 0, D_NINF, 0, 0, 0xffffffff80000000ULL, NV },
	{ "fcvt.wu.s -0.5 rtz", FCVT_TO_INT(S, WU, RTZ), 0, SB(0xbf000000), 0, 0, 0, NX },
	{ "fcvt.wu.s -0.5 rne", FCVT_TO_INT(S, WU, RNE), 0, SB(0xbf000000), 0, 0, 0, NX },
	{ "fcvt.wu.s -0.5 rdn", FCVT_TO_INT(S, WU, RDN), 0, SB(0xbf000000), 0, 0, 0, NV },
	{ "fcvt.wu.s -0.5 rmm", FCVT_TO_INT(S, WU, RMM), 0, SB(0xbf000000), 0, 0, 0, NV },
	{ "fcvt.wu.s -1", FCVT_TO_INT(S, WU, RTZ), 0, SB(S_N1), 0, 0, 0, NV },
	{ "fcvt.wu.s -inf", FCVT_TO_INT(S, WU, RTZ), 0, SB(S_NINF), 0, 0, 0, NV },
	{ "fcvt.wu.s 3e9 sign-extends", FCVT_TO_INT(S, WU, RNE), 0, SB(0x4f32d05e), 0, 0, 0xffffffffb2d05e00ULL, 0 },
	{ "fcvt.wu.s 2^32", FCVT_TO_INT(S, WU, RNE), 0, SB(0x4f800000), 0, 0, ~0ULL, NV },
	{ "fcvt.wu.s nan", FCVT_TO_INT(S, WU, RNE), 0, SB(S_QNANX), 0, 0, ~0ULL, NV },
	{ "fcvt.wu.s +inf", FCVT_TO_INT(S, WU, RNE), 0, SB(S_PINF), 0, 0, ~0ULL, NV },
	{ "fcvt.wu.d 2^32-1", FCVT_TO_INT(D, WU, RNE), 0, 0x41efffffffe00000ULL, 0, 0, ~0ULL, 0 },
	{ "fcvt.wu.d just below 2^32 rne", FCVT_TO_INT(D, WU, RNE), 0, 0x41efffffffffffffULL, 0, 0, ~0ULL, NV },
	{ "fcvt.wu.d just below 2^32 rtz", FCVT_TO_INT(D, WU, RTZ), 0, 0x41efffffffffffffULL, 0, 0, ~0ULL, NX },
	{ "fcvt.wu.d 1.5 rne", FCVT_TO_INT(D, WU, RNE), 0, 0x3ff8000000000000ULL, 0, 0, 2, NX },
	{ "fcvt.l.s 2^63", FCVT_TO_INT(S, L, RNE), 0, SB(0x5f000000), 0, 0, 0x7fffffffffffffffULL, NV },
	{ "fcvt.l.s -2^63", FCVT_TO_INT(S, L, RNE), 0, SB(0xdf000000), 0, 0, 0x8000000000000000ULL, 0 },
	{ "fcvt.l.s -inf", FCVT_TO_INT(S, L, RNE), 0, SB(S_NINF), 0, 0, 0x8000000000000000ULL, NV },
	{ "fcvt.l.s nan", FCVT_TO_INT(S, L, RNE), 0, SB(S_SNAN), 0, 0, 0x7fffffffffffffffULL, NV },
	{ "fcvt.l.s -1.5 rmm", FCVT_TO_INT(S, L, RMM), 0, SB(0xbfc00000), 0, 0, 0xfffffffffffffffeULL, NX },
	{ "fcvt.l.d below 2^63", FCVT_TO_INT(D, L, RNE), 0, 0x43dfffffffffffffULL, 0, 0, 0x7ffffffffffffc00ULL, 0 },
	{ "fcvt.l.d 2^63", FCVT_TO_INT(D, L, RTZ), 0, 0x43e0000000000000ULL, 0, 0, 0x7fffffffffffffffULL, NV },
	{ "fcvt.l.d -2^63", FCVT_TO_INT(D, L, RTZ), 0, 0xc3e0000000000000ULL, 0, 0, 0x8000000000000000ULL, 0 },
	{ "fcvt.l.d beyond -2^63", FCVT_TO_INT(D, L, RTZ), 0, 0xc3e0000000000001ULL, 0, 0, 0x8000000000000000ULL, NV },
	{ "fcvt.l.d 0.5 rmm", FCVT_TO_INT(D, L, RMM), 0, 0x3fe0000000000000ULL, 0, 0, 1, NX },
	{ "fcvt.l.d 0.5 rne", FCVT_TO_INT(D, L, RNE), 0, 0x3fe0000000000000ULL, 0, 0, 0, NX },
	{ "fcvt.l.d -0.5 rup", FCVT_TO_INT(D, L, RUP), 0, 0xbfe0000000000000ULL, 0, 0, 0, NX },
	{ "fcvt.l.d nan", FCVT_TO_INT(D, L, RNE), 0, D_QNANX, 0, 0, 0x7fffffffffffffffULL, NV },
	{ "fcvt.lu.s 2^64", FCVT_TO_INT(S, LU, RNE), 0, SB(0x5f800000), 0, 0, ~0ULL, NV },
	{ "fcvt.lu.s -1", FCVT_TO_INT(S, LU, RNE), 0, SB(S_N1), 0, 0, 0, NV },
	{ "fcvt.lu.s -0.9 rtz", FCVT_TO_INT(S, LU, RTZ), 0, SB(0xbf666666), 0, 0, 0, NX },
	{ "fcvt.lu.s nan", FCVT_TO_INT(S, LU, RNE), 0, SB(S_QNAN), 0, 0, ~0ULL, NV },
	{ "fcvt.lu.d below 2^64", FCVT_TO_INT(D, LU, RNE), 0, 0x43efffffffffffffULL, 0, 0, 0xfffffffffffff800ULL, 0 },
	{ "fcvt.lu.d 2^63", FCVT_TO_INT(D, LU, RNE), 0, 0x43e0000000000000ULL, 0, 0, 0x8000000000000000ULL, 0 },
	{ "fcvt.lu.d 2^64", FCVT_TO_INT(D, LU, RNE), 0, 0x43f0000000000000ULL, 0, 0, ~0ULL, NV },
	{ "fcvt.lu.d -inf", FCVT_TO_INT(D, LU, RNE), 0, D_NINF, 0, 0, 0, NV },
	{ "fcvt.lu.d 2.5 rmm", FCVT_TO_INT(D, LU, RMM), 0, 0x4004000000000000ULL, 0, 0, 3, NX },
};

static const struct fpu_case to_float_cases[] = {
	/* 2^24 + 1: halfway between 2^24 and 2^24 + 2 */
	{ "fcvt.s.w 2^24+1 rne", FCVT_FROM_INT(S, W, RNE), 0, 0x01000001, 0, 0, SB(0x4b800000), NX },
	{ "fcvt.s.w 2^24+1 rtz", FCVT_FROM_INT(S, W, RTZ), 0, 0x01000001, 0, 0, SB(0x4b800000), NX },
	{ "fcvt.s.w 2^24+1 rdn", FCVT_FROM_INT(S, W, RDN), 0, 0x01000001, 0, 0, SB(0x4b800000), NX },
	{ "fcvt.s.w 2^24+1 rup", FCVT_FROM_INT(S, W, RUP), 0, 0x01000001, 0, 0, SB(0x4b800001), NX },
	{ "fcvt.s.w 2^24+1 rmm", FCVT_FROM_INT(S, W, RMM), 0, 0x01000001, 0, 0, SB(0x4b800001), NX },
	{ "fcvt.s.w -(2^24+1) rmm", FCVT_FROM_INT(S, W, RMM), 0, 0xfffffffffeffffffULL, 0, 0, SB(0xcb800001), NX },
	{ "fcvt.s.w -(2^24+1) rdn", FCVT_FROM_INT(S, W, RDN), 0, 0xfffffffffeffffffULL, 0, 0, SB(0xcb800001), NX },
	{ "fcvt.s.w -(2^24+1) rne", FCVT_FROM_INT(S, W, RNE), 0, 0xfffffffffeffffffULL, 0, 0, SB(0xcb800000), NX },
	{ "fcvt.s.w low 32 bits only", FCVT_FROM_INT(S, W, RNE), 0, 0x1234567800000001ULL, 0, 0, SB(S_1), 0 },
	{ "fcvt.s.w 0", FCVT_FROM_INT(S, W, RDN), 0, 0, 0, 0, SB(S_P0), 0 },
	{ "fcvt.s.w int min", FCVT_FROM_INT(S, W, RNE), 0, 0x80000000, 0, 0, SB(0xcf000000), 0 },
	{ "fcvt.s.wu 2^32-1 rne", FCVT_FROM_INT(S, WU, RNE), 0, 0xffffffff, 0, 0, SB(0x4f800000), NX },
	{ "fcvt.s.wu 2^32-1 rtz", FCVT_FROM_INT(S, WU, RTZ), 0, 0xffffffff, 0, 0, SB(0x4f7fffff), NX },
	{ "fcvt.s.wu 2^32-1 rmm", FCVT_FROM_INT(S, WU, RMM), 0, 0xffffffff, 0, 0, SB(0x4f800000), NX },
	{ "fcvt.s.wu low 32 bits only", FCVT_FROM_INT(S, WU, RNE), 0, 0xffffffff00000002ULL, 0, 0, SB(S_2), 0 },
	{ "fcvt.s.l int64 min", FCVT_FROM_INT(S, L, RNE), 0, 0x8000000000000000ULL, 0, 0, SB(0xdf000000), 0 },
	{ "fcvt.s.l int64 max rne", FCVT_FROM_INT(S, L, RNE), 0, 0x7fffffffffffffffULL, 0, 0, SB(0x5f000000), NX },
	{ "fcvt.s.l int64 max rtz", FCVT_FROM_INT(S, L, RTZ), 0, 0x7fffffffffffffffULL, 0, 0, SB(0x5effffff), NX },
	{ "fcvt.s.l -1", FCVT_FROM_INT(S, L, RNE), 0, ~0ULL, 0, 0, SB(S_N1), 0 },
	/* 2^40 + 2^16: halfway between 2^40 and 2^40 + 2^17 */
	{ "fcvt.s.l tie rmm", FCVT_FROM_INT(S, L, RMM), 0, 0x0000010000010000ULL, 0, 0, SB(0x53800001), NX },
	{ "fcvt.s.l tie rne", FCVT_FROM_INT(S, L, RNE), 0, 0x0000010000010000ULL, 0, 0, SB(0x53800000), NX },
	{ "fcvt.s.lu 2^64-1 rne", FCVT_FROM_INT(S, LU, RNE), 0, ~0ULL, 0, 0, SB(0x5f800000), NX },
	{ "fcvt.s.lu 2^64-1 rtz", FCVT_FROM_INT(S, LU, RTZ), 0, ~0ULL, 0, 0, SB(0x5f7fffff), NX },
	{ "fcvt.s.lu 2^63+1 rup", FCVT_FROM_INT(S, LU, RUP), 0, 0x8000000000000001ULL, 0, 0, SB(0x5f000001), NX },
	{ "fcvt.d.w -1", FCVT_FROM_INT(D, W, RNE), 0, 0xffffffff, 0, 0, D_N1, 0 },
	{ "fcvt.d.w int min", FCVT_FROM_INT(D, W, RTZ), 0, 0x80000000, 0, 0, 0xc1e0000000000000ULL, 0 },
	{ "fcvt.d.wu 2^32-1", FCVT_FROM_INT(D, WU, RMM), 0, 0xffffffffffffffffULL, 0, 0, 0x41efffffffe00000ULL, 0 },
	/* 2^53 + 1: halfway between 2^53 and 2^53 + 2 */
	{ "fcvt.d.l 2^53+1 rne", FCVT_FROM_INT(D, L, RNE), 0, 0x0020000000000001ULL, 0, 0, 0x4340000000000000ULL, NX },
	{ "fcvt.d.l 2^53+1 rmm", FCVT_FROM_INT(D, L, RMM), 0, 0x0020000000000001ULL, 0, 0, 0x4340000000000001ULL, NX },
	{ "fcvt.d.l -(2^53+1) rmm", FCVT_FROM_INT(D, L, RMM), 0, 0xffdfffffffffffffULL, 0, 0, 0xc340000000000001ULL, NX },
	{ "fcvt.d.l -(2^53+1) rup", FCVT_FROM_INT(D, L, RUP), 0, 0xffdfffffffffffffULL, 0, 0, 0xc340000000000000ULL, NX },
	{ "fcvt.d.l int64 min", FCVT_FROM_INT(D, L, RNE), 0, 0x8000000000000000ULL, 0, 0, 0xc3e0000000000000ULL, 0 },
	{ "fcvt.d.lu 2^64-1 rne", FCVT_FROM_INT(D, LU, RNE), 0, ~0ULL, 0, 0, 0x43f0000000000000ULL, NX },
	{ "fcvt.d.lu 2^64-1 rtz", FCVT_FROM_INT(D, LU, RTZ), 0, ~0ULL, 0, 0, 0x43efffffffffffffULL, NX },
	{ "fcvt.d.lu 2^64-1 rmm", FCVT_FROM_INT(D, LU, RMM), 0, ~0ULL, 0, 0, 0x43f0000000000000ULL, NX },
	{ "fcvt.s.d 0.1 rne", FCVT_S_D(RNE), 0, 0x3fb999999999999aULL, 0, 0, SB(0x3dcccccd), NX },
	{ "fcvt.s.d 0.1 rtz", FCVT_S_D(RTZ), 0, 0x3fb999999999999aULL, 0, 0, SB(0x3dcccccc), NX },
	{ "fcvt.s.d 0.1 rmm", FCVT_S_D(RMM), 0, 0x3fb999999999999aULL, 0, 0, SB(0x3dcccccd), NX },
	{ "fcvt.s.d tie rne", FCVT_S_D(RNE), 0, 0x3ff0000010000000ULL, 0, 0, SB(S_1), NX },
	{ "fcvt.s.d tie rmm", FCVT_S_D(RMM), 0, 0x3ff0000010000000ULL, 0, 0, SB(S_1U), NX },
	{ "fcvt.s.d -tie rmm", FCVT_S_D(RMM), 0, 0xbff0000010000000ULL, 0, 0, SB(0xbf800001), NX },
	{ "fcvt.s.d exact", FCVT_S_D(RNE), 0, D_N1, 0, 0, SB(S_N1), 0 },
	{ "fcvt.s.d overflow rne", FCVT_S_D(RNE), 0, D_MAX, 0, 0, SB(S_PINF), OF | NX },
	{ "fcvt.s.d overflow rtz", FCVT_S_D(RTZ), 0, D_MAX, 0, 0, SB(S_MAX), OF | NX },
	{ "fcvt.s.d overflow rmm", FCVT_S_D(RMM), 0, D_MAX, 0, 0, SB(S_PINF), OF | NX },
	{ "fcvt.s.d -overflow rup", FCVT_S_D(RUP), 0, 0xffefffffffffffffULL, 0, 0, SB(S_NMAX), OF | NX },
	{ "fcvt.s.d underflow to 0", FCVT_S_D(RNE), 0, D_MINSUB, 0, 0, SB(S_P0), UF | NX },
	{ "fcvt.s.d underflow rup", FCVT_S_D(RUP), 0, D_MINSUB, 0, 0, SB(S_MINSUB), UF | NX },
	/* 2^-126 - 2^-151: at 24 bits it rounds (to nearest) up to 2^-126,
	 * so it is not tiny; toward zero it is */
	{ "fcvt.s.d not tiny rne", FCVT_S_D(RNE), 0, 0x380ffffff0000000ULL, 0, 0, SB(S_MINNORM), NX },
	{ "fcvt.s.d not tiny rmm", FCVT_S_D(RMM), 0, 0x380ffffff0000000ULL, 0, 0, SB(S_MINNORM), NX },
	{ "fcvt.s.d not tiny rup", FCVT_S_D(RUP), 0, 0x380ffffff0000000ULL, 0, 0, SB(S_MINNORM), NX },
	{ "fcvt.s.d tiny rtz", FCVT_S_D(RTZ), 0, 0x380ffffff0000000ULL, 0, 0, SB(S_MAXSUB), UF | NX },
	/* 2^-126 - 2^-150: exact at 24 bits, so tiny, yet rounds to 2^-126 */
	{ "fcvt.s.d tiny rne", FCVT_S_D(RNE), 0, 0x380fffffe0000000ULL, 0, 0, SB(S_MINNORM), UF | NX },
	{ "fcvt.s.d tiny rmm", FCVT_S_D(RMM), 0, 0x380fffffe0000000ULL, 0, 0, SB(S_MINNORM), UF | NX },
	{ "fcvt.s.d tiny rdn", FCVT_S_D(RDN), 0, 0x380fffffe0000000ULL, 0, 0, SB(S_MAXSUB), UF | NX },
	{ "fcvt.s.d subnormal exact", FCVT_S_D(RNE), 0, 0x36a0000000000000ULL, 0, 0, SB(S_MINSUB), 0 },
	{ "fcvt.s.d inf", FCVT_S_D(RTZ), 0, D_NINF, 0, 0, SB(S_NINF), 0 },
	{ "fcvt.s.d qnan", FCVT_S_D(RNE), 0, D_QNANX, 0, 0, SB(S_QNAN), 0 },
	{ "fcvt.s.d snan", FCVT_S_D(RNE), 0, D_SNAN, 0, 0, SB(S_QNAN), NV },
	{ "fcvt.d.s 1", FCVT_D_S(RNE), 0, SB(S_1), 0, 0, D_1, 0 },
	{ "fcvt.d.s subnormal", FCVT_D_S(RNE), 0, SB(S_MINSUB), 0, 0, 0x36a0000000000000ULL, 0 },
	{ "fcvt.d.s -inf", FCVT_D_S(RNE), 0, SB(S_NINF), 0, 0, D_NINF, 0 },
	{ "fcvt.d.s -0", FCVT_D_S(RNE), 0, SB(S_N0), 0, 0, D_N0, 0 },
	{ "fcvt.d.s qnan", FCVT_D_S(RNE), 0, SB(S_QNANX), 0, 0, D_QNAN, 0 },
	{ "fcvt.d.s snan", FCVT_D_S(RNE), 0, SB(S_SNAN), 0, 0, D_QNAN, NV },
	{ "fcvt.d.s unboxed", FCVT_D_S(RNE), 0, 0x000000003f800000ULL, 0, 0, D_QNAN, 0 },
	{ "fcvt.d.s dyn rmm", FCVT_D_S(DYN), RMM, SB(S_3), 0, 0, D_3, 0 },
};

/* Single operations read an improperly boxed register as the canonical
 * NaN (quiet: no NV), and always write boxed results. */
static const struct fpu_case boxing_cases[] = {
	{ "fadd.s unboxed rs1", FADD(S, RNE), 0, 0x000000003f800000ULL, SB(S_1), 0, SB(S_QNAN), 0 },
	{ "fadd.s unboxed rs2", FADD(S, RNE), 0, SB(S_1), 0xfffffffe3f800000ULL, 0, SB(S_QNAN), 0 },
	{ "fadd.s double operand", FADD(S, RNE), 0, D_1, SB(S_1), 0, SB(S_QNAN), 0 },
	{ "fmul.s unboxed", FMUL(S, RNE), 0, SB(S_2), 0x7fffffff40000000ULL, 0, SB(S_QNAN), 0 },
	{ "fsqrt.s unboxed", FSQRT(S, RNE), 0, 0x0000000040800000ULL, 0, 0, SB(S_QNAN), 0 },
	{ "fmadd.s unboxed rs3", FMADD(S, RNE), 0, SB(S_1), SB(S_1), 0x000000003f800000ULL, SB(S_QNAN), 0 },
	{ "fmadd.s unboxed inf*0", FMADD(S, RNE), 0, SB(S_PINF), SB(S_P0), 0x3f800000ULL, SB(S_QNAN), NV },
	{ "feq.s unboxed", FEQ(S), 0, 0x000000003f800000ULL, SB(S_1), 0, 0, 0 },
	{ "fmax.s both unboxed", FMAX(S), 0, 0x1ULL, 0x2ULL, 0, SB(S_QNAN), 0 },
	{ "fcvt.l.s unboxed", FCVT_TO_INT(S, L, RNE), 0, 0x0000000040000000ULL, 0, 0, 0x7fffffffffffffffULL, NV },
	{ "fcvt.s.w boxes", FCVT_FROM_INT(S, W, RNE), 0, 3, 0, 0, SB(S_3), 0 },
	{ "fsgnjx.s boxes", FSGNJX(S), 0, SB(S_1), SB(S_N1), 0, SB(S_N1), 0 },
};

/* ---- runner ----------------------------------------------------------- */

#define POISON 0x5a5a5a5a5a5a5a5aULL

struct machine {
	uint64_t f[32], x[32];
	uint32_t fflags;
	struct fpu_regs regs;
};

static void machine_init(struct machine *m, uint32_t frm)
{
	for (int i = 0; i < 32; i++)
		m->f[i] = m->x[i] = POISON + (uint64_t)i;
	m->fflags = 0;
	m->regs = (struct fpu_regs){ m->f, m->x, &m->fflags, frm };
}

/* Runs one case; says what differs and returns false when it fails. */
static bool run_case(const struct fpu_case *c)
{
	struct machine m;
	machine_init(&m, c->frm);
	m.f[1] = c->a;
	m.f[2] = c->b;
	m.f[3] = c->c;
	m.x[5] = c->a;
	int rc = fpu_execute(&m.regs, c->insn);
	bool to_x = ((c->insn >> 7) & 31) == RD_X;
	uint64_t got = to_x ? m.x[RD_X] : m.f[RD_F];
	bool other_ok = to_x ? m.f[RD_F] == POISON + RD_F
			     : m.x[RD_X] == POISON + RD_X;
	if (rc == 0 && got == c->want && m.fflags == c->flags && other_ok)
		return true;
	print_error("%s (insn %08x frm %u): got rc %d, %016llx flags %02x;"
		    " want %016llx flags %02x%s\n", c->what, c->insn, c->frm,
		    rc, (unsigned long long)got, m.fflags,
		    (unsigned long long)c->want, c->flags,
		    other_ok ? "" : " (and a stray register write)");
	return false;
}

/* Runs every case, so that one run lists all the failures. */
static void run_table(const struct fpu_case *cases, size_t n)
{
	size_t failed = 0;
	for (size_t i = 0; i < n; i++)
		failed += !run_case(&cases[i]);
	assert_int_equal(failed, 0);
}

#define RUN_TABLE(t) run_table(t, sizeof(t) / sizeof(t[0]))

static void add_sub(void **state)
{
	(void)state;
	RUN_TABLE(add_cases);
}

static void mul_div_sqrt(void **state)
{
	(void)state;
	RUN_TABLE(mul_div_sqrt_cases);
}

static void fused(void **state)
{
	(void)state;
	RUN_TABLE(fma_cases);
}

static void min_max_sgnj_compare_class_mv(void **state)
{
	(void)state;
	RUN_TABLE(bits_cases);
}

static void to_integer(void **state)
{
	(void)state;
	RUN_TABLE(to_int_cases);
}

static void to_float(void **state)
{
	(void)state;
	RUN_TABLE(to_float_cases);
}

static void nan_boxing(void **state)
{
	(void)state;
	RUN_TABLE(boxing_cases);
}

/* Flags accumulate: an operation adds its flags and clears none. */
static void flags_accrue(void **state)
{
	(void)state;
	struct machine m;
	machine_init(&m, RNE);
	m.fflags = NV;
	m.f[1] = SB(S_1);
	m.f[2] = SB(S_3);
	assert_int_equal(fpu_execute(&m.regs, FDIV(S, DYN)), 0);
	assert_int_equal(m.fflags, NV | NX);
	assert_int_equal(fpu_execute(&m.regs, FADD(S, DYN)), 0);
	assert_int_equal(m.fflags, NV | NX);
	m.f[2] = SB(S_P0);
	assert_int_equal(fpu_execute(&m.regs, FDIV(S, DYN)), 0);
	assert_int_equal(m.fflags, NV | NX | DZ);
}

/* The host FPU is left in round-to-nearest with no stale flags: an
 * operation in RUP must not leak into the next one in RNE. */
static void rounding_does_not_leak(void **state)
{
	(void)state;
	static const struct fpu_case seq[] = {
		{ "rup first", FDIV(D, RUP), 0, D_1, D_3, 0, 0x3fd5555555555556ULL, NX },
		{ "then dyn rne", FDIV(D, DYN), RNE, D_1, D_3, 0, 0x3fd5555555555555ULL, NX },
		{ "then rtz", FDIV(S, RTZ), 0, SB(S_1), SB(S_3), 0, SB(0x3eaaaaaa), NX },
		{ "then exact", FADD(S, RNE), 0, SB(S_1), SB(S_1), 0, SB(S_2), 0 },
		{ "then rmm", FADD(D, RMM), 0, D_1, D_2M53, 0, 0x3ff0000000000001ULL, NX },
		{ "then rne", FADD(D, RNE), 0, D_1, D_2M53, 0, D_1, NX },
	};
	RUN_TABLE(seq);
}

static uint64_t host_div_bits(double a, double b)
{
	volatile double x = a, y = b;
	double q = x / y;
	uint64_t v;
	memcpy(&v, &q, sizeof(v));
	return v;
}

/* The rest of the process keeps computing in round-to-nearest after the
 * guest used a directed mode. */
static void host_left_in_rne(void **state)
{
	(void)state;
	struct machine m;
	machine_init(&m, RNE);
	m.f[1] = D_1;
	m.f[2] = D_3;
	assert_int_equal(fpu_execute(&m.regs, FDIV(D, RUP)), 0);
	assert_true(host_div_bits(1.0, 3.0) == 0x3fd5555555555555ULL);
	m.regs.frm = RDN;
	assert_int_equal(fpu_execute(&m.regs, FADD(D, DYN)), 0);
	assert_true(host_div_bits(-1.0, 3.0) == 0xbfd5555555555555ULL);
}

/* Reserved encodings and rounding modes are illegal and change nothing. */
static void illegal_encodings(void **state)
{
	(void)state;
	static const struct {
		const char *what;
		uint32_t insn, frm;
	} bad[] = {
		{ "rm 5", FADD(S, 5), RNE },
		{ "rm 6", FMUL(D, 6), RNE },
		{ "dyn, frm 5", FADD(D, DYN), 5 },
		{ "dyn, frm 6", FSQRT(S, DYN), 6 },
		{ "dyn, frm 7", FMADD(D, DYN), 7 },
		{ "fma rm 5", FNMADD(S, 5), RNE },
		{ "exact fcvt.d.s rm 5", FCVT_D_S(5), RNE },
		{ "exact fcvt.d.w dyn frm 6", FCVT_FROM_INT(D, W, DYN), 6 },
		{ "fcvt.w.s rm 6", FCVT_TO_INT(S, W, 6), RNE },
		{ "half precision", FADD(2, RNE), RNE },
		{ "quad precision", FADD(3, RNE), RNE },
		{ "fma half", FMADD(2, RNE), RNE },
		{ "fsqrt rs2 1", RTYPE(0x0b, S, 1, 1, RNE, RD_F), RNE },
		{ "fsgnj rm 3", RTYPE(0x04, S, 2, 1, 3, RD_F), RNE },
		{ "fmin rm 2", RTYPE(0x05, D, 2, 1, 2, RD_F), RNE },
		{ "fcmp rm 3", RTYPE(0x14, S, 2, 1, 3, RD_X), RNE },
		{ "fcvt.s.s", RTYPE(0x08, S, 0, 1, RNE, RD_F), RNE },
		{ "fcvt.d.d", RTYPE(0x08, D, 1, 1, RNE, RD_F), RNE },
		{ "fcvt.s.q", RTYPE(0x08, S, 3, 1, RNE, RD_F), RNE },
		{ "fcvt to int rs2 4", RTYPE(0x18, D, 4, 1, RNE, RD_X), RNE },
		{ "fcvt from int rs2 5", RTYPE(0x1a, S, 5, 5, RNE, RD_F), RNE },
		{ "fmv.x.w rm 2", RTYPE(0x1c, S, 0, 1, 2, RD_X), RNE },
		{ "fclass rs2 1", RTYPE(0x1c, D, 1, 1, 1, RD_X), RNE },
		{ "fmv.w.x rm 1", RTYPE(0x1e, S, 0, 5, 1, RD_F), RNE },
		{ "fmv.d.x rs2 1", RTYPE(0x1e, D, 1, 5, 0, RD_F), RNE },
		{ "funct5 0x06", RTYPE(0x06, S, 2, 1, RNE, RD_F), RNE },
		{ "funct5 0x1f", RTYPE(0x1f, D, 2, 1, RNE, RD_F), RNE },
		{ "not an fp opcode", 0x00000013, RNE },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct machine m, before;
		machine_init(&m, bad[i].frm);
		m.f[1] = SB(S_SNAN);
		m.f[2] = D_SNAN;
		m.f[3] = SB(S_1);
		m.x[5] = 7;
		before = m;
		int rc = fpu_execute(&m.regs, bad[i].insn);
		if (rc != -1 || memcmp(m.f, before.f, sizeof(m.f)) ||
		    memcmp(m.x, before.x, sizeof(m.x)) || m.fflags != 0) {
			print_error("%s (insn %08x frm %u): rc %d, or state"
				    " changed\n", bad[i].what, bad[i].insn,
				    bad[i].frm, rc);
			fail();
		}
	}
}

/* Every register number reaches the right register. */
static void register_fields(void **state)
{
	(void)state;
	struct machine m;
	machine_init(&m, RNE);
	m.f[31] = D_2;
	m.f[17] = D_3;
	m.f[9] = D_1;
	/* fmadd.d f0, f31, f17, f9: 2 * 3 + 1 */
	uint32_t insn = (9u << 27) | (D << 25) | (17u << 20) | (31u << 15) |
			(RNE << 12) | (0u << 7) | 0x43;
	assert_int_equal(fpu_execute(&m.regs, insn), 0);
	assert_true(m.f[0] == 0x401c000000000000ULL);
	/* fcvt.l.d x31, f17 and fcvt.d.l f30, x31 */
	insn = RTYPE(0x18, D, L, 17, RNE, 31);
	assert_int_equal(fpu_execute(&m.regs, insn), 0);
	assert_true(m.x[31] == 3);
	insn = RTYPE(0x1a, D, L, 31, RNE, 30);
	assert_int_equal(fpu_execute(&m.regs, insn), 0);
	assert_true(m.f[30] == D_3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(add_sub),
		cmocka_unit_test(mul_div_sqrt),
		cmocka_unit_test(fused),
		cmocka_unit_test(min_max_sgnj_compare_class_mv),
		cmocka_unit_test(to_integer),
		cmocka_unit_test(to_float),
		cmocka_unit_test(nan_boxing),
		cmocka_unit_test(flags_accrue),
		cmocka_unit_test(rounding_does_not_leak),
		cmocka_unit_test(host_left_in_rne),
		cmocka_unit_test(illegal_encodings),
		cmocka_unit_test(register_fields),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
