/*
 * clint.c - the CLINT-style timer block: msip, mtimecmp and mtime.
 *
 * Linux in S mode reaches the timer through SBI (sbi.c) and never touches
 * the CLINT; M-mode software does. mtime is the machine's guest clock, so
 * it stands still while the machine is paused. Its state lives in the
 * harts (mtimecmp) and the machine clock, which migration carries.
 */
#include "machine/clint.h"
#include "machine/vm.h"

#define CLINT_MSIP     0x0000
#define CLINT_MTIMECMP 0x4000
#define CLINT_MTIME    0xbff8

static uint64_t clint_read(void *dev, uint64_t off, unsigned size)
{
	struct machine *m = dev;
	uint64_t v = 0;
	unsigned shift = (off & 7) * 8;
	if (off < CLINT_MSIP + 4 * m->nharts) {
		v = !!(atomic_load(&m->harts[off / 4]->mip) & MIP_MSIP);
		return v;
	}
	if (off >= CLINT_MTIMECMP && off < CLINT_MTIMECMP + 8 * m->nharts)
		v = m->harts[(off - CLINT_MTIMECMP) / 8]->mtimecmp;
	else if (off >= CLINT_MTIME && off < CLINT_MTIME + 8)
		v = machine_time(m);
	v >>= shift;
	return size == 8 ? v : v & ((1ULL << (size * 8)) - 1);
}

static void clint_write(void *dev, uint64_t off, uint64_t val, unsigned size)
{
	struct machine *m = dev;
	if (off < CLINT_MSIP + 4 * m->nharts) {
		machine_hart_irq(m, (unsigned)(off / 4), MIP_MSIP, (int)(val & 1));
		return;
	}
	if (off >= CLINT_MTIMECMP && off < CLINT_MTIMECMP + 8 * m->nharts) {
		struct hart *h = m->harts[(off - CLINT_MTIMECMP) / 8];
		unsigned shift = (off & 7) * 8;
		uint64_t mask = (size == 8 ? ~0ULL : (1ULL << (size * 8)) - 1) << shift;
		h->mtimecmp = (h->mtimecmp & ~mask) | ((val << shift) & mask);
		atomic_fetch_and(&h->mip, ~MIP_MTIP);
		hart_kick(h);
	}
	/* mtime is read-only here: the guest clock belongs to the machine */
}

/* the CLINT is the machine's own registers: nothing to free */
static const struct mmio_ops clint_ops = { clint_read, clint_write, NULL };

int clint_create(struct machine *m)
{
	return machine_add_mmio(m, CLINT_BASE, CLINT_SIZE, &clint_ops, m);
}
