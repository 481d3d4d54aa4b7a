/*
 * sbi.h - the Supervisor Binary Interface, served by the monitor itself.
 */
#ifndef FERRY_SBI_H
#define FERRY_SBI_H

struct hart;

/* Handle an ecall from S mode: a7 = extension, a6 = function, a0..a5 =
 * arguments; returns a0 = error, a1 = value, and advances pc. */
void sbi_call(struct hart *h);

#endif
