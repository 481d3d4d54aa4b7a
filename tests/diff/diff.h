/*
 * diff.h - shared helpers for the differential CPU test programs.
 *
 * Every program in tests/diff/ is a static riscv64 Linux binary that prints
 * lines which depend only on what the ISA specifies: hex values and flags,
 * never addresses, timings or absolute counter values. The same binary runs
 * under qemu-riscv64-static on the host and inside a ferry guest, and the two
 * outputs must be identical.
 *
 * The program's output is framed by two marker lines,
 *	@@ferry-diff begin NAME
 *	@@ferry-diff end NAME
 * so that a harness can cut it out of a console log that also holds the
 * kernel's and /init's messages.
 *
 * diff_catch() runs a function that is expected to trap (illegal CSR, ebreak,
 * access to a PROT_NONE page, misaligned AMO) and returns the signal it raised,
 * or 0 when it ran to the end; the signal handler leaves through siglongjmp.
 * Only code that does not touch stdio may trap.
 */
#ifndef FERRY_DIFF_H
#define FERRY_DIFF_H

#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static sigjmp_buf diff_jmp;
static volatile sig_atomic_t diff_armed;

static void diff_on_signal(int sig)
{
	if (!diff_armed)
		_exit(128 + sig);
	diff_armed = 0;
	siglongjmp(diff_jmp, sig);
}

static inline void diff_begin(const char *name)
{
	static const int sigs[] = { SIGILL, SIGBUS, SIGSEGV, SIGTRAP, SIGFPE };
	struct sigaction sa;
	unsigned i;

	/* Line buffered: if a test dies, what it printed so far still shows. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = diff_on_signal;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	printf("@@ferry-diff begin %s\n", name);
}

static inline int diff_end(const char *name)
{
	printf("@@ferry-diff end %s\n", name);
	fflush(stdout);
	return 0;
}

/* Run fn(arg); return the signal it raised, or 0 if it returned. */
static inline int diff_catch(void (*fn)(void *), void *arg)
{
	int sig = sigsetjmp(diff_jmp, 1);

	if (sig)
		return sig;
	diff_armed = 1;
	fn(arg);
	diff_armed = 0;
	return 0;
}

static inline const char *diff_signame(int sig)
{
	switch (sig) {
	case 0:		return "none";
	case SIGILL:	return "SIGILL";
	case SIGBUS:	return "SIGBUS";
	case SIGSEGV:	return "SIGSEGV";
	case SIGTRAP:	return "SIGTRAP";
	case SIGFPE:	return "SIGFPE";
	default:	return "other";
	}
}

/* A fixed xorshift64 stream: "random" operands that are the same every run. */
static inline uint64_t diff_rand(void)
{
	static uint64_t s = 0x9e3779b97f4a7c15ULL;

	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return s;
}

#define DIFF_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
