/*
 * sbi.c - SBI v1.0 in the monitor: base, TIME, IPI, RFENCE, HSM, SRST and
 * the legacy extensions (console, timer, IPI, fences, shutdown).
 *
 * There is no M-mode firmware: an ecall from S mode lands here directly,
 * on the calling hart's own thread. Remote fences post a request to the
 * target harts and wait until each has flushed (or is parked/asleep, in
 * which case it flushes before running again), so that when the call
 * returns no hart can use a stale translation - Linux frees page tables
 * right after.
 */
#include "machine/sbi.h"
#include "cpu/hart.h"
#include "machine/vm.h"

#include <string.h>
#include <unistd.h>

enum {
	SBI_SUCCESS = 0, SBI_ERR_FAILED = -1, SBI_ERR_NOT_SUPPORTED = -2,
	SBI_ERR_INVALID_PARAM = -3, SBI_ERR_DENIED = -4, SBI_ERR_INVALID_ADDRESS = -5,
	SBI_ERR_ALREADY_AVAILABLE = -6,
};

enum {
	EXT_LEGACY_SET_TIMER = 0x00, EXT_LEGACY_PUTCHAR = 0x01, EXT_LEGACY_GETCHAR = 0x02,
	EXT_LEGACY_CLEAR_IPI = 0x03, EXT_LEGACY_SEND_IPI = 0x04,
	EXT_LEGACY_FENCE_I = 0x05, EXT_LEGACY_SFENCE = 0x06, EXT_LEGACY_SFENCE_ASID = 0x07,
	EXT_LEGACY_SHUTDOWN = 0x08,
	EXT_BASE = 0x10, EXT_TIME = 0x54494D45, EXT_IPI = 0x735049,
	EXT_RFENCE = 0x52464E43, EXT_HSM = 0x48534D, EXT_SRST = 0x53525354,
};

#define SBI_IMPL_ID 0xfe77     /* ferry */

struct sbiret { int64_t error; uint64_t value; };

/* The machine a hart's ecall came from: its bus's context (machine.c). */
static struct machine *hart_machine(struct hart *h)
{
	return h->bus->ctx;
}

/* The harts selected by (mask, base); base = -1 means all. */
static uint64_t hart_selection(struct hart *h, uint64_t mask, uint64_t base, bool *ok)
{
	unsigned n = hart_machine(h)->nharts;
	uint64_t all = n >= 64 ? ~0ULL : (1ULL << n) - 1;
	*ok = true;
	if (base == ~0ULL)
		return all;
	if (base >= n) {
		*ok = false;
		return 0;
	}
	uint64_t sel = mask << base;
	if (sel & ~all)
		*ok = false;
	return sel & all;
}

static void send_ipis(struct hart *h, uint64_t sel)
{
	for (unsigned i = 0; i < hart_machine(h)->nharts; i++)
		if (sel & (1ULL << i))
			machine_hart_irq(hart_machine(h), i, MIP_SSIP, 1);
}

static void remote_fence(struct hart *h, uint64_t sel)
{
	if (sel & (1ULL << h->id))
		tlb_flush_all(h);
	machine_sync_harts(hart_machine(h), REQ_TLB_FLUSH, h, sel & ~(1ULL << h->id));
}

static void set_timer(struct hart *h, uint64_t when)
{
	h->timecmp = when;
	atomic_fetch_and(&h->mip, ~MIP_STIP);
}

static void console_putchar(struct hart *h, uint8_t c)
{
	if (hart_machine(h)->console_fd >= 0) {
		ssize_t r = write(hart_machine(h)->console_fd, &c, 1);
		(void)r;
	}
}

static struct sbiret sbi_base(struct hart *h, uint64_t fid, uint64_t a0)
{
	(void)h;
	switch (fid) {
	case 0: return (struct sbiret){ 0, 1ULL << 24 };    /* spec v1.0 */
	case 1: return (struct sbiret){ 0, SBI_IMPL_ID };
	case 2: return (struct sbiret){ 0, 1 };             /* impl version */
	case 3:
		switch (a0) {
		case EXT_BASE: case EXT_TIME: case EXT_IPI: case EXT_RFENCE:
		case EXT_HSM: case EXT_SRST:
		case EXT_LEGACY_SET_TIMER: case EXT_LEGACY_PUTCHAR: case EXT_LEGACY_GETCHAR:
		case EXT_LEGACY_CLEAR_IPI: case EXT_LEGACY_SEND_IPI: case EXT_LEGACY_FENCE_I:
		case EXT_LEGACY_SFENCE: case EXT_LEGACY_SFENCE_ASID: case EXT_LEGACY_SHUTDOWN:
			return (struct sbiret){ 0, 1 };
		}
		return (struct sbiret){ 0, 0 };
	case 4: case 5: case 6:    /* mvendorid, marchid, mimpid */
		return (struct sbiret){ 0, 0 };
	}
	return (struct sbiret){ SBI_ERR_NOT_SUPPORTED, 0 };
}

static struct sbiret sbi_hsm(struct hart *h, uint64_t fid, uint64_t a0, uint64_t a1,
			     uint64_t a2)
{
	struct machine *m = hart_machine(h);
	switch (fid) {
	case 0: { /* hart_start(hartid, start_addr, opaque) */
		if (a0 >= m->nharts)
			return (struct sbiret){ SBI_ERR_INVALID_PARAM, 0 };
		struct hart *t = m->harts[a0];
		int expect = HSM_STOPPED;
		if (!pa_is_ram(m, a1))
			return (struct sbiret){ SBI_ERR_INVALID_ADDRESS, 0 };
		t->start_addr = a1;
		t->start_opaque = a2;
		if (!atomic_compare_exchange_strong(&t->hsm, &expect, HSM_START_PENDING))
			return (struct sbiret){ SBI_ERR_ALREADY_AVAILABLE, 0 };
		hart_kick(t);
		return (struct sbiret){ 0, 0 };
	}
	case 1: /* hart_stop */
		atomic_store(&h->hsm, HSM_STOPPED);
		return (struct sbiret){ 0, 0 };
	case 2: /* hart_get_status */
		if (a0 >= m->nharts)
			return (struct sbiret){ SBI_ERR_INVALID_PARAM, 0 };
		return (struct sbiret){ 0, (uint64_t)atomic_load(&m->harts[a0]->hsm) };
	case 3: /* hart_suspend: only the retentive default, as a WFI */
		if (a0 != 0)
			return (struct sbiret){ SBI_ERR_NOT_SUPPORTED, 0 };
		h->wfi = true;
		hart_beat(h);
		return (struct sbiret){ 0, 0 };
	}
	return (struct sbiret){ SBI_ERR_NOT_SUPPORTED, 0 };
}

static struct sbiret sbi_srst(struct hart *h, uint64_t type, uint64_t reason)
{
	if (type > 2 || reason > 1)
		return (struct sbiret){ SBI_ERR_INVALID_PARAM, 0 };
	/* ferry-vm has no reboot: a shutdown ends it cleanly, any reset
	 * (and a "system failure" reason) ends it with a failure status */
	machine_exit(hart_machine(h), type == 0 && reason == 0 ? EXIT_POWEROFF : EXIT_RESET);
	atomic_store(&h->hsm, HSM_STOPPED);
	return (struct sbiret){ 0, 0 };
}

/* Legacy calls pass a pointer to the hart mask in S-mode virtual memory. */
static uint64_t legacy_mask(struct hart *h, uint64_t va)
{
	uint64_t pa, mask = 0;
	if (!va)
		return ~0ULL;
	int saved = h->priv;
	if (!mmu_translate(h, va, ACC_READ, &pa))
		return 0;    /* the fault was raised against the guest */
	h->priv = saved;
	void *p = mem_ptr(hart_machine(h), pa, 8);
	if (p)
		memcpy(&mask, p, 8);
	return mask;
}

void sbi_call(struct hart *h)
{
	uint64_t *a = &h->x[10];
	uint64_t eid = h->x[17], fid = h->x[16];
	uint64_t pc = h->pc;
	struct sbiret ret = { SBI_ERR_NOT_SUPPORTED, 0 };
	bool ok;

	switch (eid) {
	case EXT_BASE:
		ret = sbi_base(h, fid, a[0]);
		break;
	case EXT_TIME:
		if (fid == 0) {
			set_timer(h, a[0]);
			ret = (struct sbiret){ 0, 0 };
		}
		break;
	case EXT_IPI:
		if (fid == 0) {
			uint64_t sel = hart_selection(h, a[0], a[1], &ok);
			send_ipis(h, sel);
			ret = (struct sbiret){ ok ? 0 : SBI_ERR_INVALID_PARAM, 0 };
		}
		break;
	case EXT_RFENCE:
		if (fid <= 6) {
			uint64_t sel = hart_selection(h, a[0], a[1], &ok);
			if (fid > 0)    /* fence.i needs nothing: no decode cache */
				remote_fence(h, sel);
			ret = (struct sbiret){ ok ? 0 : SBI_ERR_INVALID_PARAM, 0 };
		}
		break;
	case EXT_HSM:
		ret = sbi_hsm(h, fid, a[0], a[1], a[2]);
		break;
	case EXT_SRST:
		if (fid == 0)
			ret = sbi_srst(h, a[0], a[1]);
		break;

	case EXT_LEGACY_SET_TIMER:
		set_timer(h, a[0]);
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_PUTCHAR:
		console_putchar(h, (uint8_t)a[0]);
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_GETCHAR:
		a[0] = (uint64_t)-1;
		goto legacy_done;
	case EXT_LEGACY_CLEAR_IPI:
		atomic_fetch_and(&h->mip, ~MIP_SSIP);
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_SEND_IPI:
		send_ipis(h, legacy_mask(h, a[0]));
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_FENCE_I:
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_SFENCE:
	case EXT_LEGACY_SFENCE_ASID:
		remote_fence(h, legacy_mask(h, a[0]));
		a[0] = 0;
		goto legacy_done;
	case EXT_LEGACY_SHUTDOWN:
		sbi_srst(h, 0, 0);
		a[0] = 0;
		goto legacy_done;
	}
	a[0] = (uint64_t)ret.error;
	a[1] = ret.value;
legacy_done:
	if (h->pc == pc)        /* not redirected by a fault while reading */
		h->pc = pc + 4;
}
