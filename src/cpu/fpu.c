/*
 * fpu.c - the F and D extensions' computational instructions.
 *
 * Arithmetic runs on the host FPU. On x86-64 that is SSE: one LDMXCSR both
 * selects the rounding mode and clears the sticky flags, the operation runs,
 * and one STMXCSR reads the flags back; IEEE operations raise the same five
 * flags on SSE as on RISC-V, and SSE also detects tininess after rounding.
 * The host is put back to round-to-nearest after an operation in another
 * mode, so the rest of the process never runs in a guest's rounding mode.
 * Other hosts use <fenv.h> the same way (slower, and exact only where the
 * host, like x86, detects tininess after rounding).
 *
 * GCC does not model the rounding mode or the flags as state, so every
 * operand passes through an empty asm after the mode is set and every
 * result through one before the flags are read: the operation cannot move
 * out of that window (the file is also built with -frounding-math).
 *
 * The host only supplies numbers and IEEE flags; the RISC-V rules are ours:
 *   - any NaN result becomes the canonical NaN (x86 makes negative NaNs and
 *     keeps payloads);
 *   - singles live NaN-boxed in the 64-bit f registers, and a register that
 *     is not properly boxed reads as the canonical NaN;
 *   - fmin/fmax, compares, fclass and sign injection are pure bit logic,
 *     with the flags the spec gives (x86 compares would differ);
 *   - conversions to integers round with trunc/floor/ceil/roundeven/round
 *     and then saturate, all in software (x86 returns 0x80000000...);
 *   - fma(inf, 0, qNaN) raises NV, which x86 may not do.
 *
 * RMM (round to nearest, ties away from zero) has no host mode. It differs
 * from RNE only when the exact result lies exactly halfway between two
 * neighbours, and at such a tie both modes raise the same flags (both are
 * inexact; they overflow at the same point, and at a tie just below the
 * smallest normal both round, at full precision, up to it). So RMM runs the
 * operation in RNE for the flags and, when the result is finite and
 * inexact, recomputes it in integer arithmetic (struct exact: a 128-bit
 * significand, exact or with a sticky low bit) and rounds ties away.
 * Square roots never land on a tie, so FSQRT in RMM is FSQRT in RNE.
 */
#include "cpu/fpu.h"

#include <fenv.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

/* ---- encoding --------------------------------------------------------- */

enum {
	OPC_MADD = 0x43, OPC_MSUB = 0x47, OPC_NMSUB = 0x4b, OPC_NMADD = 0x4f,
	OPC_OP_FP = 0x53,
};

enum {	/* funct5 of OP-FP */
	F5_ADD = 0x00, F5_SUB = 0x01, F5_MUL = 0x02, F5_DIV = 0x03,
	F5_SGNJ = 0x04, F5_MINMAX = 0x05, F5_CVT_FF = 0x08, F5_SQRT = 0x0b,
	F5_CMP = 0x14, F5_CVT_IF = 0x18, F5_CVT_FI = 0x1a, F5_MV_XF = 0x1c,
	F5_MV_FX = 0x1e,
};

enum { RM_RNE, RM_RTZ, RM_RDN, RM_RUP, RM_RMM, RM_DYN = 7 };

enum { FL_NX = 1, FL_UF = 2, FL_OF = 4, FL_DZ = 8, FL_NV = 16 };

enum arith { AR_ADD, AR_SUB, AR_MUL, AR_DIV, AR_SQRT, AR_FMA };

enum ikind { IK_W, IK_WU, IK_L, IK_LU };	/* rs2 of the int conversions */

static inline unsigned insn_rd(uint32_t i) { return (i >> 7) & 31; }
static inline unsigned insn_rm(uint32_t i) { return (i >> 12) & 7; }
static inline unsigned insn_rs1(uint32_t i) { return (i >> 15) & 31; }
static inline unsigned insn_rs2(uint32_t i) { return (i >> 20) & 31; }
static inline unsigned insn_fmt(uint32_t i) { return (i >> 25) & 3; }
static inline unsigned insn_rs3(uint32_t i) { return i >> 27; }

/* The rounding mode an instruction uses, or -1 when it is reserved. */
static int fpu_rm(const struct fpu_regs *r, uint32_t insn)
{
	unsigned rm = insn_rm(insn);
	if (rm == RM_DYN)
		rm = r->frm;
	return rm <= RM_RMM ? (int)rm : -1;
}

/* ---- formats and their bits ------------------------------------------- */

struct fmt {
	int mant;		/* stored fraction bits */
	int exp_bits;
	int bias;
	uint64_t canon;		/* the canonical NaN */
};

static const struct fmt FMT_S = { 23, 8, 127, 0x7fc00000 };
static const struct fmt FMT_D = { 52, 11, 1023, 0x7ff8000000000000ULL };

#define NAN_BOX 0xffffffff00000000ULL

static inline uint64_t f_sign_bit(const struct fmt *f)
{
	return 1ULL << (f->mant + f->exp_bits);
}

static inline uint64_t f_inf(const struct fmt *f)
{
	return ((1ULL << f->exp_bits) - 1) << f->mant;
}

static inline bool f_sign(const struct fmt *f, uint64_t v)
{
	return v & f_sign_bit(f);
}

static inline uint64_t f_mag(const struct fmt *f, uint64_t v)
{
	return v & (f_sign_bit(f) - 1);
}

static inline bool f_is_nan(const struct fmt *f, uint64_t v)
{
	return f_mag(f, v) > f_inf(f);
}

static inline bool f_is_snan(const struct fmt *f, uint64_t v)
{
	return f_is_nan(f, v) && !(v & (1ULL << (f->mant - 1)));
}

static inline bool f_is_inf(const struct fmt *f, uint64_t v)
{
	return f_mag(f, v) == f_inf(f);
}

static inline bool f_is_zero(const struct fmt *f, uint64_t v)
{
	return f_mag(f, v) == 0;
}

static inline bool f_is_finite(const struct fmt *f, uint64_t v)
{
	return f_mag(f, v) < f_inf(f);
}

static inline uint64_t f_canonicalize(const struct fmt *f, uint64_t v)
{
	return f_is_nan(f, v) ? f->canon : v;
}

static inline const struct fmt *fmt_of(unsigned fmt)
{
	return fmt ? &FMT_D : &FMT_S;
}

/* A register as an operand: singles must be NaN-boxed. */
static uint64_t freg_read(const struct fpu_regs *r, const struct fmt *f,
			  unsigned n)
{
	uint64_t v = r->f[n];
	if (f == &FMT_D)
		return v;
	return (v & NAN_BOX) == NAN_BOX ? (uint32_t)v : FMT_S.canon;
}

static void freg_write(struct fpu_regs *r, const struct fmt *f, unsigned n,
		       uint64_t v)
{
	r->f[n] = f == &FMT_D ? v : NAN_BOX | (uint32_t)v;
}

static inline float s_float(uint64_t v)
{
	uint32_t w = (uint32_t)v;
	float x;
	memcpy(&x, &w, sizeof(x));
	return x;
}

static inline double d_double(uint64_t v)
{
	double x;
	memcpy(&x, &v, sizeof(x));
	return x;
}

static inline uint64_t s_bits(float x)
{
	uint32_t w;
	memcpy(&w, &x, sizeof(w));
	return w;
}

static inline uint64_t d_bits(double x)
{
	uint64_t v;
	memcpy(&v, &x, sizeof(v));
	return v;
}

/* ---- the host FPU ----------------------------------------------------- */

#if defined(__x86_64__) && defined(__SSE2_MATH__) && !defined(FPU_PORTABLE_FENV)

/* All exceptions masked, no flush-to-zero, no denormals-are-zero. */
#define MXCSR_DEFAULT 0x1f80u

static const uint32_t mxcsr_rc[4] = {
	[RM_RNE] = 0 << 13, [RM_RTZ] = 3 << 13,
	[RM_RDN] = 1 << 13, [RM_RUP] = 2 << 13,
};

static inline void host_begin(int rm)
{
	uint32_t csr = MXCSR_DEFAULT | mxcsr_rc[rm];
	__asm__ volatile("ldmxcsr %0" : : "m"(csr));
}

/* MXCSR flags: IE=1 DE=2 ZE=4 OE=8 UE=16 PE=32; DE has no RISC-V twin. */
static inline uint32_t host_end(int rm)
{
	uint32_t csr, def = MXCSR_DEFAULT;
	__asm__ volatile("stmxcsr %0" : "=m"(csr));
	if (rm != RM_RNE)
		__asm__ volatile("ldmxcsr %0" : : "m"(def));
	return (csr & 1 ? FL_NV : 0) | (csr & 4 ? FL_DZ : 0) |
	       (csr & 8 ? FL_OF : 0) | (csr & 16 ? FL_UF : 0) |
	       (csr & 32 ? FL_NX : 0);
}

#define host_pin(v) __asm__ volatile("" : "+x"(v))
#define host_pin_int(v) __asm__ volatile("" : "+r"(v))

/* sqrt() would set errno on negative inputs; the instruction does not. */
static inline float host_sqrtf(float x)
{
	__asm__("sqrtss %1, %0" : "=x"(x) : "x"(x));
	return x;
}

static inline double host_sqrt(double x)
{
	__asm__("sqrtsd %1, %0" : "=x"(x) : "x"(x));
	return x;
}

#else

static const int fenv_rc[4] = {
	[RM_RNE] = FE_TONEAREST, [RM_RTZ] = FE_TOWARDZERO,
	[RM_RDN] = FE_DOWNWARD, [RM_RUP] = FE_UPWARD,
};

static inline void host_begin(int rm)
{
	feclearexcept(FE_ALL_EXCEPT);
	if (rm != RM_RNE)
		fesetround(fenv_rc[rm]);
}

static inline uint32_t host_end(int rm)
{
	int e = fetestexcept(FE_ALL_EXCEPT);
	if (rm != RM_RNE)
		fesetround(FE_TONEAREST);
	return (e & FE_INVALID ? FL_NV : 0) | (e & FE_DIVBYZERO ? FL_DZ : 0) |
	       (e & FE_OVERFLOW ? FL_OF : 0) | (e & FE_UNDERFLOW ? FL_UF : 0) |
	       (e & FE_INEXACT ? FL_NX : 0);
}

#define host_pin(v) __asm__ volatile("" : "+m"(v) : : "memory")
#define host_pin_int(v) __asm__ volatile("" : "+m"(v) : : "memory")

static inline float host_sqrtf(float x) { return sqrtf(x); }
static inline double host_sqrt(double x) { return sqrt(x); }

#endif

/* One single-precision operation in host mode rm (not RMM). */
static uint64_t host_s_arith(enum arith op, uint64_t a, uint64_t b,
			     uint64_t c, int rm, uint32_t *fl)
{
	float x = s_float(a), y = s_float(b), z = s_float(c), res;
	host_begin(rm);
	host_pin(x);
	host_pin(y);
	host_pin(z);
	switch (op) {
	case AR_ADD: res = x + y; break;
	case AR_SUB: res = x - y; break;
	case AR_MUL: res = x * y; break;
	case AR_DIV: res = x / y; break;
	case AR_SQRT: res = host_sqrtf(x); break;
	default: res = fmaf(x, y, z); break;
	}
	host_pin(res);
	*fl |= host_end(rm);
	return f_canonicalize(&FMT_S, s_bits(res));
}

static uint64_t host_d_arith(enum arith op, uint64_t a, uint64_t b,
			     uint64_t c, int rm, uint32_t *fl)
{
	double x = d_double(a), y = d_double(b), z = d_double(c), res;
	host_begin(rm);
	host_pin(x);
	host_pin(y);
	host_pin(z);
	switch (op) {
	case AR_ADD: res = x + y; break;
	case AR_SUB: res = x - y; break;
	case AR_MUL: res = x * y; break;
	case AR_DIV: res = x / y; break;
	case AR_SQRT: res = host_sqrt(x); break;
	default: res = fma(x, y, z); break;
	}
	host_pin(res);
	*fl |= host_end(rm);
	return f_canonicalize(&FMT_D, d_bits(res));
}

static uint64_t host_arith(const struct fmt *f, enum arith op, uint64_t a,
			   uint64_t b, uint64_t c, int rm, uint32_t *fl)
{
	if (f == &FMT_D)
		return host_d_arith(op, a, b, c, rm, fl);
	return host_s_arith(op, a, b, c, rm, fl);
}

/* FCVT.S.D in host mode rm. */
static uint64_t host_s_from_d(uint64_t a, int rm, uint32_t *fl)
{
	double x = d_double(a);
	float res;
	host_begin(rm);
	host_pin(x);
	res = (float)x;
	host_pin(res);
	*fl |= host_end(rm);
	return f_canonicalize(&FMT_S, s_bits(res));
}

/* FCVT.{S,D}.{W,WU,L,LU} in host mode rm; v is rs1's full 64 bits. */
static uint64_t host_from_int(const struct fmt *f, enum ikind k, uint64_t v,
			      int rm, uint32_t *fl)
{
	uint64_t res;
	host_begin(rm);
	host_pin_int(v);
	if (f == &FMT_S) {
		float x;
		switch (k) {
		case IK_W: x = (float)(int32_t)v; break;
		case IK_WU: x = (float)(uint32_t)v; break;
		case IK_L: x = (float)(int64_t)v; break;
		default: x = (float)v; break;
		}
		host_pin(x);
		res = s_bits(x);
	} else {
		double x;
		switch (k) {
		case IK_W: x = (double)(int32_t)v; break;
		case IK_WU: x = (double)(uint32_t)v; break;
		case IK_L: x = (double)(int64_t)v; break;
		default: x = (double)v; break;
		}
		host_pin(x);
		res = d_bits(x);
	}
	*fl |= host_end(rm);
	return res;
}

/* ---- exact arithmetic for RMM ----------------------------------------- */

typedef unsigned __int128 u128;

/* (-1)^sign * sig * 2^exp; when the value is inexact, the lowest bit of sig
 * is a sticky bit and sig has at least two bits more than the format. */
struct exact {
	bool sign;
	int exp;
	u128 sig;
};

static int msb128(u128 v)
{
	uint64_t hi = (uint64_t)(v >> 64);
	if (hi)
		return 127 - __builtin_clzll(hi);
	return 63 - __builtin_clzll((uint64_t)v);
}

/* v >> n, with any bit shifted out ORed into bit 0. */
static u128 shift_right_jam(u128 v, int n)
{
	if (n <= 0)
		return v;
	if (n >= 128)
		return v != 0;
	return (v >> n) | ((v & (((u128)1 << n) - 1)) != 0);
}

/* A finite value's exact form. */
static struct exact exact_unpack(const struct fmt *f, uint64_t v)
{
	int be = (int)((v >> f->mant) & ((1ULL << f->exp_bits) - 1));
	uint64_t frac = v & ((1ULL << f->mant) - 1);
	struct exact e = { .sign = f_sign(f, v) };
	if (be == 0) {
		e.sig = frac;
		e.exp = 1 - f->bias - f->mant;
	} else {
		e.sig = frac | (1ULL << f->mant);
		e.exp = be - f->bias - f->mant;
	}
	return e;
}

/* Scale a nonzero significand so that its top bit is bit 'top'. */
static struct exact exact_normalize(struct exact e, int top)
{
	int shift = top - msb128(e.sig);
	e.sig <<= shift;
	e.exp -= shift;
	return e;
}

/* x + y, for significands of up to 106 bits. The larger operand is put at
 * bit 125; the smaller loses bits to the sticky bit only when it is more
 * than 20 binades below, and then the sum still has 124 bits or more. */
static struct exact exact_add(struct exact x, struct exact y)
{
	if (y.sig == 0)
		return x;
	if (x.sig == 0)
		return y;
	x = exact_normalize(x, 125);
	y = exact_normalize(y, 125);
	if (x.exp < y.exp || (x.exp == y.exp && x.sig < y.sig)) {
		struct exact t = x;
		x = y;
		y = t;
	}
	y.sig = shift_right_jam(y.sig, x.exp - y.exp);
	x.sig = x.sign == y.sign ? x.sig + y.sig : x.sig - y.sig;
	return x;
}

static struct exact exact_mul(struct exact x, struct exact y)
{
	struct exact p = {
		.sign = x.sign != y.sign,
		.exp = x.exp + y.exp,
		.sig = x.sig * y.sig,	/* at most 106 bits: exact */
	};
	return p;
}

/* x / y for nonzero y: at least 73 quotient bits plus a sticky bit. */
static struct exact exact_div(struct exact x, struct exact y)
{
	struct exact q = { .sign = x.sign != y.sign };
	if (x.sig == 0)
		return q;
	x = exact_normalize(x, 126);
	q.sig = x.sig / y.sig;
	q.sig |= (x.sig % y.sig) != 0;
	q.exp = x.exp - y.exp;
	return q;
}

/* Round to format f, ties away from zero, and encode. No flags: the RNE
 * run of the same operation has raised them. */
static uint64_t exact_round_away(const struct fmt *f, struct exact e)
{
	int p = f->mant + 1, emin = 1 - f->bias;
	uint64_t sign = e.sign ? f_sign_bit(f) : 0;
	if (e.sig == 0)
		return sign;
	int top = e.exp + msb128(e.sig);
	/* the exponent of the result's last bit: subnormals have fewer bits */
	int q = (top < emin ? emin : top) - (p - 1);
	int drop = q - e.exp;
	u128 kept;
	if (drop <= 0)
		kept = e.sig << -drop;
	else if (drop > 128)
		kept = 0;
	else if (drop == 128)
		kept = e.sig >> 127;
	else
		kept = (e.sig >> drop) + ((e.sig >> (drop - 1)) & 1);
	if (kept >> p) {		/* carried into the next binade */
		kept >>= 1;
		q++;
	}
	if (!(kept >> (p - 1)))		/* subnormal */
		return sign | (uint64_t)kept;
	int64_t biased = (int64_t)q + (p - 1) + f->bias;
	if (biased >= (1 << f->exp_bits) - 1)
		return sign | f_inf(f);
	return sign | ((uint64_t)biased << f->mant) |
	       ((uint64_t)kept & ((1ULL << f->mant) - 1));
}

static struct exact exact_from_int(enum ikind k, uint64_t v)
{
	struct exact e = { .exp = 0 };
	int64_t s = k == IK_W ? (int32_t)v : (int64_t)v;
	if (k == IK_WU)
		v = (uint32_t)v;
	if ((k == IK_W || k == IK_L) && s < 0) {
		e.sign = true;
		v = 0 - (uint64_t)s;
	} else if (k == IK_W) {
		v = (uint64_t)s;
	}
	e.sig = v;
	return e;
}

/* ---- arithmetic instructions ------------------------------------------ */

/* The RMM result of an operation whose RNE result was 'rne' with flags
 * 'fl': only finite inexact results can differ. Kept out of line so that
 * the common path stays small. */
static __attribute__((noinline, cold))
uint64_t rmm_fix_arith(const struct fmt *f, enum arith op, uint64_t a,
		       uint64_t b, uint64_t c, uint64_t rne, uint32_t fl)
{
	if (!(fl & FL_NX) || !f_is_finite(f, rne) || op == AR_SQRT)
		return rne;
	struct exact x = exact_unpack(f, a), y = exact_unpack(f, b), e;
	switch (op) {
	case AR_ADD: e = exact_add(x, y); break;
	case AR_SUB: y.sign = !y.sign; e = exact_add(x, y); break;
	case AR_MUL: e = exact_mul(x, y); break;
	case AR_DIV: e = exact_div(x, y); break;
	default: e = exact_add(exact_mul(x, y), exact_unpack(f, c)); break;
	}
	return exact_round_away(f, e);
}

static uint64_t fpu_arith(const struct fmt *f, enum arith op, uint64_t a,
			  uint64_t b, uint64_t c, int rm, uint32_t *fl)
{
	uint32_t got = 0;
	uint64_t res = host_arith(f, op, a, b, c, rm == RM_RMM ? RM_RNE : rm,
				  &got);
	if (rm == RM_RMM)
		res = rmm_fix_arith(f, op, a, b, c, res, got);
	*fl |= got;
	return res;
}

/* FMADD and friends: the sign flips are exact, so they go on the operands.
 * inf * 0 is invalid even when the addend is a quiet NaN. */
static int fpu_fma(struct fpu_regs *r, uint32_t insn)
{
	unsigned opc = insn & 0x7f;
	int rm = fpu_rm(r, insn);
	if (insn_fmt(insn) > 1 || rm < 0)
		return -1;
	const struct fmt *f = fmt_of(insn_fmt(insn));
	uint64_t a = freg_read(r, f, insn_rs1(insn));
	uint64_t b = freg_read(r, f, insn_rs2(insn));
	uint64_t c = freg_read(r, f, insn_rs3(insn));
	uint64_t res;
	if (opc == OPC_NMSUB || opc == OPC_NMADD)
		a ^= f_sign_bit(f);
	if (opc == OPC_MSUB || opc == OPC_NMADD)
		c ^= f_sign_bit(f);
	if ((f_is_inf(f, a) && f_is_zero(f, b)) ||
	    (f_is_zero(f, a) && f_is_inf(f, b))) {
		*r->fflags |= FL_NV;
		res = f->canon;
	} else {
		res = fpu_arith(f, AR_FMA, a, b, c, rm, r->fflags);
	}
	freg_write(r, f, insn_rd(insn), res);
	return 0;
}

/* ---- bit-level instructions ------------------------------------------- */

static uint64_t fpu_sgnj(const struct fmt *f, unsigned kind, uint64_t a,
			 uint64_t b)
{
	uint64_t sb = f_sign_bit(f);
	switch (kind) {
	case 0: return (a & ~sb) | (b & sb);		/* FSGNJ */
	case 1: return (a & ~sb) | (~b & sb);		/* FSGNJN */
	default: return a ^ (b & sb);			/* FSGNJX */
	}
}

/* a < b for non-NaN values, with -0 < +0. */
static bool f_lt_total(const struct fmt *f, uint64_t a, uint64_t b)
{
	bool sa = f_sign(f, a), sb = f_sign(f, b);
	if (sa != sb)
		return sa;
	return sa ? f_mag(f, a) > f_mag(f, b) : f_mag(f, a) < f_mag(f, b);
}

/* FMIN/FMAX (IEEE 754-2019 minimumNumber/maximumNumber). */
static uint64_t fpu_minmax(const struct fmt *f, bool max, uint64_t a,
			   uint64_t b, uint32_t *fl)
{
	bool na = f_is_nan(f, a), nb = f_is_nan(f, b);
	if (f_is_snan(f, a) || f_is_snan(f, b))
		*fl |= FL_NV;
	if (na && nb)
		return f->canon;
	if (na)
		return b;
	if (nb)
		return a;
	return f_lt_total(f, a, b) != max ? a : b;
}

/* FLE (0), FLT (1), FEQ (2); kind 3 is reserved and filtered out. FEQ is
 * quiet (NV for signalling NaNs only), FLT and FLE signal on any NaN. */
static uint64_t fpu_compare(const struct fmt *f, unsigned kind, uint64_t a,
			    uint64_t b, uint32_t *fl)
{
	if (f_is_nan(f, a) || f_is_nan(f, b)) {
		if (kind != 2 || f_is_snan(f, a) || f_is_snan(f, b))
			*fl |= FL_NV;
		return 0;
	}
	bool eq = a == b || (f_is_zero(f, a) && f_is_zero(f, b));
	switch (kind) {
	case 0: return eq || f_lt_total(f, a, b);
	case 1: return !eq && f_lt_total(f, a, b);
	default: return eq;
	}
}

static uint64_t fpu_class(const struct fmt *f, uint64_t v)
{
	bool neg = f_sign(f, v);
	uint64_t mag = f_mag(f, v);
	if (f_is_nan(f, v))
		return f_is_snan(f, v) ? 1 << 8 : 1 << 9;
	if (mag == f_inf(f))
		return neg ? 1 << 0 : 1 << 7;
	if (mag == 0)
		return neg ? 1 << 3 : 1 << 4;
	if (mag < (1ULL << f->mant))
		return neg ? 1 << 2 : 1 << 5;
	return neg ? 1 << 1 : 1 << 6;
}

/* ---- conversions ------------------------------------------------------ */

static double round_integral(double x, int rm)
{
	switch (rm) {
	case RM_RNE: return roundeven(x);
	case RM_RTZ: return trunc(x);
	case RM_RDN: return floor(x);
	case RM_RUP: return ceil(x);
	default: return round(x);
	}
}

/* The range of each integer kind: [lo, hi_excl), and what saturates. */
static const struct {
	double lo, hi_excl;
	uint64_t min, max;
} int_range[4] = {
	[IK_W] = { -0x1p31, 0x1p31, 0xffffffff80000000ULL, 0x7fffffffULL },
	[IK_WU] = { 0.0, 0x1p32, 0, ~0ULL },
	[IK_L] = { -0x1p63, 0x1p63, 1ULL << 63, (1ULL << 63) - 1 },
	[IK_LU] = { 0.0, 0x1p64, 0, ~0ULL },
};

/* FCVT.{W,WU,L,LU}.{S,D}: round to an integer, then saturate. Singles are
 * widened to double first, which is exact. 32-bit results are
 * sign-extended, the unsigned one too. */
static uint64_t fpu_to_int(const struct fmt *f, enum ikind k, uint64_t v,
			   int rm, uint32_t *fl)
{
	if (f_is_nan(f, v)) {
		*fl |= FL_NV;
		return int_range[k].max;
	}
	double x = f == &FMT_D ? d_double(v) : (double)s_float(v);
	double i = round_integral(x, rm);
	if (i < int_range[k].lo || i >= int_range[k].hi_excl) {
		*fl |= FL_NV;
		return i < 0 ? int_range[k].min : int_range[k].max;
	}
	if (i != x)
		*fl |= FL_NX;
	switch (k) {
	case IK_W: return (uint64_t)(int64_t)(int32_t)i;
	case IK_WU: return (uint64_t)(int64_t)(int32_t)(uint32_t)i;
	case IK_L: return (uint64_t)(int64_t)i;
	default: return (uint64_t)i;
	}
}

/* FCVT.{S,D}.{W,WU,L,LU}. */
static uint64_t fpu_from_int(const struct fmt *f, enum ikind k, uint64_t v,
			     int rm, uint32_t *fl)
{
	uint32_t got = 0;
	uint64_t res = host_from_int(f, k, v, rm == RM_RMM ? RM_RNE : rm, &got);
	if (rm == RM_RMM && (got & FL_NX))
		res = exact_round_away(f, exact_from_int(k, v));
	*fl |= got;
	return res;
}

/* FCVT.S.D rounds; FCVT.D.S is exact and only signals on sNaN. */
static uint64_t fpu_s_from_d(uint64_t v, int rm, uint32_t *fl)
{
	uint32_t got = 0;
	uint64_t res = host_s_from_d(v, rm == RM_RMM ? RM_RNE : rm, &got);
	if (rm == RM_RMM && (got & FL_NX) && f_is_finite(&FMT_S, res))
		res = exact_round_away(&FMT_S, exact_unpack(&FMT_D, v));
	*fl |= got;
	return res;
}

static uint64_t fpu_d_from_s(uint64_t v, uint32_t *fl)
{
	if (f_is_nan(&FMT_S, v)) {
		if (f_is_snan(&FMT_S, v))
			*fl |= FL_NV;
		return FMT_D.canon;
	}
	return d_bits((double)s_float(v));
}

/* ---- OP-FP ------------------------------------------------------------ */

/* ADD, SUB, MUL, DIV, SQRT. */
static int op_arith(struct fpu_regs *r, uint32_t insn, const struct fmt *f,
		    enum arith op)
{
	int rm = fpu_rm(r, insn);
	if (rm < 0 || (op == AR_SQRT && insn_rs2(insn) != 0))
		return -1;
	uint64_t a = freg_read(r, f, insn_rs1(insn));
	uint64_t b = freg_read(r, f, insn_rs2(insn));
	freg_write(r, f, insn_rd(insn),
		   fpu_arith(f, op, a, b, 0, rm, r->fflags));
	return 0;
}

/* SGNJ, MIN/MAX, FEQ/FLT/FLE: the rm field selects the operation. */
static int op_binary_bits(struct fpu_regs *r, uint32_t insn,
			  const struct fmt *f, unsigned f5)
{
	unsigned kind = insn_rm(insn);
	uint64_t a = freg_read(r, f, insn_rs1(insn));
	uint64_t b = freg_read(r, f, insn_rs2(insn));
	switch (f5) {
	case F5_SGNJ:
		if (kind > 2)
			return -1;
		freg_write(r, f, insn_rd(insn), fpu_sgnj(f, kind, a, b));
		return 0;
	case F5_MINMAX:
		if (kind > 1)
			return -1;
		freg_write(r, f, insn_rd(insn),
			   fpu_minmax(f, kind, a, b, r->fflags));
		return 0;
	default:
		if (kind > 2)
			return -1;
		r->x[insn_rd(insn)] = fpu_compare(f, kind, a, b, r->fflags);
		return 0;
	}
}

/* FCVT.S.D (fmt S, rs2 1) and FCVT.D.S (fmt D, rs2 0). */
static int op_cvt_ff(struct fpu_regs *r, uint32_t insn, const struct fmt *f)
{
	int rm = fpu_rm(r, insn);
	unsigned from = insn_rs2(insn);
	if (rm < 0 || from > 1 || fmt_of(from) == f)
		return -1;
	uint64_t v = freg_read(r, fmt_of(from), insn_rs1(insn));
	if (f == &FMT_S)
		v = fpu_s_from_d(v, rm, r->fflags);
	else
		v = fpu_d_from_s(v, r->fflags);
	freg_write(r, f, insn_rd(insn), v);
	return 0;
}

static int op_cvt_to_int(struct fpu_regs *r, uint32_t insn,
			 const struct fmt *f)
{
	int rm = fpu_rm(r, insn);
	enum ikind k = (enum ikind)insn_rs2(insn);
	if (rm < 0 || insn_rs2(insn) > IK_LU)
		return -1;
	uint64_t v = freg_read(r, f, insn_rs1(insn));
	r->x[insn_rd(insn)] = fpu_to_int(f, k, v, rm, r->fflags);
	return 0;
}

static int op_cvt_from_int(struct fpu_regs *r, uint32_t insn,
			   const struct fmt *f)
{
	int rm = fpu_rm(r, insn);
	enum ikind k = (enum ikind)insn_rs2(insn);
	if (rm < 0 || insn_rs2(insn) > IK_LU)
		return -1;
	uint64_t v = r->x[insn_rs1(insn)];
	freg_write(r, f, insn_rd(insn), fpu_from_int(f, k, v, rm, r->fflags));
	return 0;
}

/* FMV.X.W / FMV.X.D (rm 0) move raw bits, FCLASS (rm 1) reads a value. */
static int op_mv_to_x(struct fpu_regs *r, uint32_t insn, const struct fmt *f)
{
	unsigned kind = insn_rm(insn), rs1 = insn_rs1(insn);
	uint64_t raw = r->f[rs1];
	if (insn_rs2(insn) != 0 || kind > 1)
		return -1;
	if (kind == 1)
		r->x[insn_rd(insn)] = fpu_class(f, freg_read(r, f, rs1));
	else if (f == &FMT_S)
		r->x[insn_rd(insn)] = (uint64_t)(int64_t)(int32_t)(uint32_t)raw;
	else
		r->x[insn_rd(insn)] = raw;
	return 0;
}

/* FMV.W.X / FMV.D.X. */
static int op_mv_from_x(struct fpu_regs *r, uint32_t insn, const struct fmt *f)
{
	if (insn_rs2(insn) != 0 || insn_rm(insn) != 0)
		return -1;
	freg_write(r, f, insn_rd(insn), r->x[insn_rs1(insn)]);
	return 0;
}

static int fpu_op(struct fpu_regs *r, uint32_t insn)
{
	unsigned f5 = insn >> 27;
	if (insn_fmt(insn) > 1)
		return -1;
	const struct fmt *f = fmt_of(insn_fmt(insn));
	switch (f5) {
	case F5_ADD: return op_arith(r, insn, f, AR_ADD);
	case F5_SUB: return op_arith(r, insn, f, AR_SUB);
	case F5_MUL: return op_arith(r, insn, f, AR_MUL);
	case F5_DIV: return op_arith(r, insn, f, AR_DIV);
	case F5_SQRT: return op_arith(r, insn, f, AR_SQRT);
	case F5_SGNJ:
	case F5_MINMAX:
	case F5_CMP: return op_binary_bits(r, insn, f, f5);
	case F5_CVT_FF: return op_cvt_ff(r, insn, f);
	case F5_CVT_IF: return op_cvt_to_int(r, insn, f);
	case F5_CVT_FI: return op_cvt_from_int(r, insn, f);
	case F5_MV_XF: return op_mv_to_x(r, insn, f);
	case F5_MV_FX: return op_mv_from_x(r, insn, f);
	}
	return -1;
}

int fpu_execute(struct fpu_regs *r, uint32_t insn)
{
	switch (insn & 0x7f) {
	case OPC_MADD:
	case OPC_MSUB:
	case OPC_NMSUB:
	case OPC_NMADD:
		return fpu_fma(r, insn);
	case OPC_OP_FP:
		return fpu_op(r, insn);
	}
	return -1;
}
