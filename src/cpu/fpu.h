/*
 * fpu.h - the F and D extensions' arithmetic, apart from the rest of the CPU.
 *
 * The interpreter decodes loads and stores (FLW/FLD/FSW/FSD) itself, checks
 * mstatus.FS, and hands every other F/D instruction (opcodes OP-FP, MADD,
 * MSUB, NMSUB, NMADD) to fpu_execute(). Results follow the RISC-V rules:
 * NaN-boxing of singles in 64-bit registers, canonical NaNs, RISC-V
 * saturation for float-to-int conversion, IEEE-754 flags accumulated in
 * *fflags (NX=1 UF=2 OF=4 DZ=8 NV=16), rounding mode from the instruction
 * or from frm when the instruction says DYN (7).
 */
#ifndef FERRY_FPU_H
#define FERRY_FPU_H

#include <stdint.h>

struct fpu_regs {
	uint64_t *f;        /* f[32], singles NaN-boxed */
	uint64_t *x;        /* x[32]; the caller restores x[0] = 0 afterwards */
	uint32_t *fflags;   /* accrued exception flags, 5 bits */
	uint32_t frm;       /* dynamic rounding mode, 3 bits */
};

/* Execute one F/D computational instruction. Returns 0, or -1 when the
 * instruction is illegal (reserved encoding or invalid rounding mode). */
int fpu_execute(struct fpu_regs *r, uint32_t insn);

#endif
