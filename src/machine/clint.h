/* clint.h - the CLINT-style timer block (see clint.c). */
#ifndef FERRY_CLINT_H
#define FERRY_CLINT_H
struct machine;
int clint_create(struct machine *m);
#endif
