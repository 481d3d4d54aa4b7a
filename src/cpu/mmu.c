/*
 * mmu.c - Sv39/Sv48 page walks and the software TLB.
 *
 * mmu_translate() walks the page tables on a TLB miss, checks permissions
 * for the effective mode, sets A and D with an atomic compare-and-swap on
 * the PTE (as hardware does), and, when the page is RAM, installs a TLB
 * entry that maps the guest page straight to its host address.
 *
 * Decoded code (internal.h): a write entry is never installed for a page
 * that holds decoded code; the store that finds one drops the code first
 * (code_page_written) and tells the executor (h->code_written).
 *
 * Dirty log: a write entry is installed only after the page is marked
 * dirty (dirty_set) while logging is on; dirty_log_harvest() clears the
 * marks and has every hart drop its write entries, so each page's first
 * store after a harvest comes through here again.
 *
 * No ASIDs are implemented (satp.ASID reads as zero), so sfence.vma and
 * satp writes flush the whole TLB.
 */
#include "cpu/hart.h"
#include "cpu/internal.h"

#include <string.h>

#define PTE_V (1ULL << 0)
#define PTE_R (1ULL << 1)
#define PTE_W (1ULL << 2)
#define PTE_X (1ULL << 3)
#define PTE_U (1ULL << 4)
#define PTE_A (1ULL << 6)
#define PTE_D (1ULL << 7)
#define PTE_PPN(pte) (((pte) >> 10) & ((1ULL << 44) - 1))
#define PTE_RESERVED (0x3ffULL << 54)   /* N, PBMT and reserved bits */

static void tlb_clear(struct tlb_entry *t)
{
	for (unsigned i = 0; i < TLB_SIZE; i++)
		t[i].vpn = TLB_NONE;
}

void tlb_flush_all(struct hart *h)
{
	for (int c = 0; c < TLBCTX_COUNT; c++) {
		tlb_clear(h->tlbs[c].r);
		tlb_clear(h->tlbs[c].w);
		tlb_clear(h->tlbs[c].x);
		for (unsigned i = 0; i < VPC_SIZE; i++)
			h->vpcs[c][i].vpn = TLB_NONE;
	}
	jtc_clear(h);
	h->fetch_vpn = TLB_NONE;
}

void tlb_drop_writes_to(struct hart *h, const void *host_page)
{
	for (int c = 0; c < TLBCTX_COUNT; c++) {
		struct tlb_entry *t = h->tlbs[c].w;
		for (unsigned i = 0; i < TLB_SIZE; i++)
			if (t[i].vpn != TLB_NONE &&
			    (t[i].vpn << PAGE_SHIFT) + t[i].addend == (uintptr_t)host_page)
				t[i].vpn = TLB_NONE;
	}
}

void tlb_flush_writes(struct hart *h)
{
	for (int c = 0; c < TLBCTX_COUNT; c++)
		tlb_clear(h->tlbs[c].w);
}

static void raise_fault(struct hart *h, uint64_t va, enum access acc, bool page)
{
	static const uint64_t page_cause[] = { EXC_LOAD_PAGE, EXC_STORE_PAGE, EXC_INSN_PAGE };
	static const uint64_t access_cause[] = { EXC_LOAD_ACCESS, EXC_STORE_ACCESS,
						 EXC_INSN_ACCESS };
	hart_trap(h, page ? page_cause[acc] : access_cause[acc], va, false);
}

/* Walk the page table. Returns 0 with *pa, or 1 for a page fault, 2 for
 * an access fault. */
static int page_walk(struct hart *h, uint64_t va, enum access acc, int priv, uint64_t *pa)
{
	const struct cpu_bus *b = h->bus;
	unsigned levels = (h->satp >> 60) == 9 ? 4 : 3;
	unsigned vabits = 12 + 9 * levels;
	/* the virtual address must be sign-extended from its top bit */
	if ((uint64_t)((int64_t)(va << (64 - vabits)) >> (64 - vabits)) != va)
		return 1;

	uint64_t table = (h->satp & ((1ULL << 44) - 1)) << 12;
	for (int level = (int)levels - 1; level >= 0; level--) {
		uint64_t pte_pa = table + ((va >> (12 + 9 * level)) & 0x1ff) * 8;
		if (!bus_is_ram(b, pte_pa))
			return 2;
		uint64_t *ptep = (uint64_t *)bus_host(b, pte_pa);
		bus_fault_in(b, bus_pfn(b, pte_pa));
retry:;
		uint64_t pte = __atomic_load_n(ptep, __ATOMIC_ACQUIRE);
		if (!(pte & PTE_V) || (!(pte & PTE_R) && (pte & PTE_W)) || (pte & PTE_RESERVED))
			return 1;
		if (!(pte & (PTE_R | PTE_X))) {      /* pointer to the next level */
			if (level == 0)
				return 1;
			table = PTE_PPN(pte) << 12;
			continue;
		}
		/* a leaf: check permissions */
		if (priv == PRV_U && !(pte & PTE_U))
			return 1;
		if (priv == PRV_S && (pte & PTE_U) &&
		    (acc == ACC_EXEC || !(h->mstatus & MSTATUS_SUM)))
			return 1;
		if (acc == ACC_READ && !(pte & PTE_R) &&
		    !((h->mstatus & MSTATUS_MXR) && (pte & PTE_X)))
			return 1;
		if (acc == ACC_WRITE && !(pte & PTE_W))
			return 1;
		if (acc == ACC_EXEC && !(pte & PTE_X))
			return 1;
		uint64_t ppn = PTE_PPN(pte);
		uint64_t low = (1ULL << (9 * level)) - 1;
		if (ppn & low)        /* misaligned superpage */
			return 1;
		uint64_t want = pte | PTE_A | (acc == ACC_WRITE ? PTE_D : 0);
		if (want != pte) {
			if (!__atomic_compare_exchange_n(ptep, &pte, want, false,
							 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
				goto retry;
			code_page_written(b, bus_pfn(b, pte_pa));
			bus_mark_dirty(b, bus_pfn(b, pte_pa));
		}
		*pa = ((ppn & ~low) << 12) | (va & ((1ULL << (12 + 9 * level)) - 1));
		return 0;
	}
	return 1;
}

bool mmu_translate(struct hart *h, uint64_t va, enum access acc, uint64_t *pa_out)
{
	int priv = h->priv;
	bool cacheable = true;
	if (acc != ACC_EXEC && priv == PRV_M && (h->mstatus & MSTATUS_MPRV)) {
		priv = (int)((h->mstatus & MSTATUS_MPP) >> 11);
		cacheable = false;      /* the M context's TLB set must stay bare */
	}
	uint64_t pa;
	if (priv == PRV_M || (h->satp >> 60) == 0) {
		pa = va;
	} else {
		int r = page_walk(h, va, acc, priv, &pa);
		if (r) {
			raise_fault(h, va, acc, r == 1);
			return false;
		}
	}
	*pa_out = pa;
	const struct cpu_bus *b = h->bus;
	if (!cacheable || !bus_is_ram(b, pa & ~0xfffULL))
		return true;

	uint64_t pfn = bus_pfn(b, pa);
	bus_fault_in(b, pfn);
	struct tlb_entry *t = acc == ACC_READ ? h->tlb->r : acc == ACC_WRITE ? h->tlb->w
									    : h->tlb->x;
	if (acc == ACC_WRITE) {
		if (unlikely(code_page_written(b, pfn)))
			h->code_written = true;
		bus_mark_dirty(b, pfn);
	}
	struct tlb_entry *e = &t[(va >> PAGE_SHIFT) & (TLB_SIZE - 1)];
	e->vpn = va >> PAGE_SHIFT;
	e->addend = (uintptr_t)(b->ram + (pfn << PAGE_SHIFT)) - (va & ~0xfffULL);
	return true;
}
