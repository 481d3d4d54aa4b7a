/*
 * hart.h - one RISC-V hardware thread: RV64IMAFDC + Zicsr + Zifencei +
 * Zicntr, M/S/U modes, Sv39/Sv48 paging behind a software TLB.
 *
 * The hart (hart.c) runs guest code in short bursts (exec.c, decoded once
 * per code page by decode.c; interp.c is the reference interpreter);
 * between bursts it checks for requests from other threads (pause, TLB
 * shootdown, a raised interrupt), the timer and pending interrupts. A
 * burst ends early, at the end of a block, when a request is posted: one
 * atomic word (requests) is all a block end looks at. Memory accesses go through a per-mode
 * software TLB that maps a guest virtual page straight to a host pointer:
 * a hit costs a compare. mmu.c fills it from the page tables; csr.c holds
 * the control and status registers, traps and interrupts.
 *
 * The dirty log for live migration rides on the write TLB: while logging
 * is on, a write entry is installed only for a page already marked dirty,
 * so the first store to a clean page takes the slow path once and marks it.
 */
#ifndef FERRY_HART_H
#define FERRY_HART_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <pthread.h>

struct cpu_bus;
struct sbuf;
struct dpage;

enum { PRV_U = 0, PRV_S = 1, PRV_M = 3 };

/* mip/mie bits */
#define MIP_SSIP (1ULL << 1)
#define MIP_MSIP (1ULL << 3)
#define MIP_STIP (1ULL << 5)
#define MIP_MTIP (1ULL << 7)
#define MIP_SEIP (1ULL << 9)
#define MIP_MEIP (1ULL << 11)

/* exception causes */
enum {
	EXC_INSN_MISALIGNED = 0, EXC_INSN_ACCESS = 1, EXC_ILLEGAL = 2,
	EXC_BREAKPOINT = 3, EXC_LOAD_MISALIGNED = 4, EXC_LOAD_ACCESS = 5,
	EXC_STORE_MISALIGNED = 6, EXC_STORE_ACCESS = 7, EXC_ECALL_U = 8,
	EXC_ECALL_S = 9, EXC_ECALL_M = 11, EXC_INSN_PAGE = 12,
	EXC_LOAD_PAGE = 13, EXC_STORE_PAGE = 15,
};

/* mstatus fields */
#define MSTATUS_SIE   (1ULL << 1)
#define MSTATUS_MIE   (1ULL << 3)
#define MSTATUS_SPIE  (1ULL << 5)
#define MSTATUS_UBE   (1ULL << 6)
#define MSTATUS_MPIE  (1ULL << 7)
#define MSTATUS_SPP   (1ULL << 8)
#define MSTATUS_MPP   (3ULL << 11)
#define MSTATUS_FS    (3ULL << 13)
#define MSTATUS_XS    (3ULL << 15)
#define MSTATUS_MPRV  (1ULL << 17)
#define MSTATUS_SUM   (1ULL << 18)
#define MSTATUS_MXR   (1ULL << 19)
#define MSTATUS_TVM   (1ULL << 20)
#define MSTATUS_TW    (1ULL << 21)
#define MSTATUS_TSR   (1ULL << 22)
#define MSTATUS_UXL   (3ULL << 32)
#define MSTATUS_SXL   (3ULL << 34)
#define MSTATUS_SD    (1ULL << 63)

/* Software TLB: direct mapped, one set per translation context. */
#define TLB_BITS 8
#define TLB_SIZE (1u << TLB_BITS)
#define TLB_NONE (~0ULL)

struct tlb_entry {
	uint64_t vpn;       /* guest virtual page number, TLB_NONE if empty */
	uintptr_t addend;   /* host address = guest virtual address + addend */
};

struct tlb_set {
	struct tlb_entry r[TLB_SIZE], w[TLB_SIZE], x[TLB_SIZE];
};

/* Translation contexts: the TLB set in use depends on the effective mode
 * and on mstatus.SUM, so toggling SUM (Linux does it around every user
 * copy) switches sets instead of flushing. */
enum { TLBCTX_U, TLBCTX_S, TLBCTX_S_SUM, TLBCTX_M, TLBCTX_COUNT };

/* Virtual-PC cache: a guest virtual code page to its decoded page
 * (decode.c), per translation context, flushed with the TLB. */
#define VPC_SIZE 64
struct vpc_entry {
	uint64_t vpn;               /* TLB_NONE if empty */
	struct dpage *dp;
};

/* Jump-target cache of the JIT (jit.c): a guest virtual pc, per
 * translation context, to the compiled run that starts there, so that a
 * jump to another page (calls, returns, jalr) goes from run to run
 * without the executor. An entry holds the code-map word its page was
 * compiled under and where that word lives; a run jumps there only while
 * the two agree. Flushed with the TLB and when compiled code is dropped.
 * Its layout is read by the generated code. */
#define JTC_SIZE 512
struct jtc_entry {
	uint64_t pc;                     /* TLB_NONE if empty */
	const _Atomic uint32_t *word;    /* the page's code-map word */
	uint32_t expect;                 /* its value when compiled */
	uint32_t pad;
	const uint8_t *code;             /* the run's body (past its prologue) */
};

/* Requests other threads post in hart->requests. */
#define REQ_PAUSE      (1u << 0)
#define REQ_TLB_FLUSH  (1u << 1)   /* sfence.vma from another hart */
#define REQ_WTLB_FLUSH (1u << 2)   /* dirty log harvested: drop write entries */
#define REQ_EXIT       (1u << 3)
#define REQ_INTERRUPT  (1u << 4)   /* an mip bit was raised: end the burst */

/* HSM states (SBI) */
enum { HSM_STARTED = 0, HSM_STOPPED = 1, HSM_START_PENDING = 2,
       HSM_STOP_PENDING = 3 };

struct hart {
	/* hot state first */
	uint64_t pc;
	uint64_t x[33];             /* x[32]: where decoded writes to x0 go */
	struct tlb_set *tlb;        /* the set for the current context */
	struct vpc_entry *vpc;      /* the virtual-PC cache for that context */
	struct jtc_entry *jtc;      /* the JIT's jump-target cache for it */
	uint8_t jtc_filled;         /* contexts whose cache has entries (bits) */
	bool code_written;          /* a store just dropped decoded code */
	uint64_t insn_budget;       /* instructions left in this burst */
	uintptr_t fetch_addend;     /* host = pc + fetch_addend within fetch page */
	uint64_t fetch_vpn;         /* TLB_NONE when no fetch page is cached */

	uint64_t f[32];
	uint32_t fflags, frm;
	int priv;

	/* CSRs (sstatus, sie, sip are views of the m* registers) */
	uint64_t mstatus, misa, medeleg, mideleg, mie;
	_Atomic uint64_t mip;
	uint64_t mtvec, mepc, mcause, mtval, mscratch, mcounteren, menvcfg;
	uint64_t stvec, sepc, scause, stval, sscratch, satp, scounteren, senvcfg;
	uint64_t mcountinhibit;
	uint64_t instret;           /* retired instructions (also the cycle count) */
	uint64_t timecmp;           /* SBI set_timer deadline -> STIP */
	uint64_t mtimecmp;          /* CLINT mtimecmp -> MTIP */

	/* LR/SC reservation */
	uint64_t lr_addr;
	uint64_t lr_value;
	bool lr_valid;

	bool wfi;                   /* sleeping in WFI */
	uint64_t beats;             /* returns to U mode and WFIs (hart_beat) */
	uint64_t sleep_debt_ns;     /* migration throttle */
	unsigned id;
	const struct cpu_bus *bus; /* all the hart knows of its board (bus.h) */

	/* cross-thread */
	_Atomic unsigned requests;
	_Atomic int hsm;            /* HSM_* */
	atomic_bool in_guest;       /* false while parked or asleep */
	pthread_mutex_t sleep_lock; /* WFI and HSM sleep */
	pthread_cond_t sleep_cond;
	uint64_t start_addr, start_opaque;
	pthread_t thread;

	/* decoded code (decode.c): one page per physical page of RAM */
	struct dpage **dpages;      /* [ram pages], NULL where none */
	unsigned ndpages;
	bool reference;             /* run the plain interpreter (FERRY_CPU=interp) */
	bool jit;                   /* compile ALU runs (FERRY_CPU=jit, jit.c) */
	bool jit_full;              /* its arena is full: start over */
	uint8_t *jit_arena;
	uint32_t jit_used;

	struct vpc_entry vpcs[TLBCTX_COUNT][VPC_SIZE];
	struct tlb_set tlbs[TLBCTX_COUNT];
	struct jtc_entry jtcs[TLBCTX_COUNT][JTC_SIZE];
};

void hart_init(struct hart *h, const struct cpu_bus *bus, unsigned id);
/* NULL, or why FERRY_CPU names no executor (hart_init then uses the
 * default). */
const char *cpu_executor_error(void);
/* Run up to budget instructions now, on the calling thread (the hart
 * loop's burst; unit tests drive harts with it). */
void hart_run_burst(struct hart *h, uint64_t budget);
/* Thread body: runs the hart until the machine exits. */
void *hart_thread(void *arg);

/* From other threads: post a request and wake the hart if it sleeps. */
void hart_request(struct hart *h, unsigned req);
void hart_kick(struct hart *h);
/* Raise interrupt-pending bit `bit` (MIP_*) from any thread: the hart
 * ends its burst at the next block end and takes it if enabled. */
void hart_raise(struct hart *h, uint64_t bit);
/* Run pending TLB shootdowns now (from the hart's own thread). */
void hart_serve_flushes(struct hart *h);

/* csr.c */
void hart_reset_csrs(struct hart *h);
bool csr_read(struct hart *h, unsigned csr, uint64_t *val);
bool csr_write(struct hart *h, unsigned csr, uint64_t val);
void hart_trap(struct hart *h, uint64_t cause, uint64_t tval, bool interrupt);
/* Take a pending, enabled interrupt if any; returns true if one was taken. */
bool hart_check_interrupts(struct hart *h);
void hart_sret(struct hart *h);
/* The guest kernel showed it is alive: it went back to user mode or to
 * sleep in WFI (machine/heartbeat.c reads the count from another thread;
 * only this hart writes it). */
static inline void hart_beat(struct hart *h)
{
	__atomic_store_n(&h->beats, h->beats + 1, __ATOMIC_RELAXED);
}
void hart_mret(struct hart *h);
void hart_update_tlb_context(struct hart *h);
uint64_t hart_read_time(struct hart *h);

/* mmu.c */
enum access { ACC_READ, ACC_WRITE, ACC_EXEC };
/* Translate va for an access in the current context. On success returns
 * true with the physical address; on failure raises the page or access
 * fault and returns false. If the page is RAM, also fills the TLB. */
bool mmu_translate(struct hart *h, uint64_t va, enum access acc, uint64_t *pa);
void tlb_flush_all(struct hart *h);
void tlb_flush_writes(struct hart *h);
/* Drop this hart's write entries that map to the host page. */
void tlb_drop_writes_to(struct hart *h, const void *host_page);

/* decode.c: something other than a hart's store (device DMA) wrote
 * [gpa, gpa+len): drop decoded code there. */
void cpu_code_written(const struct cpu_bus *bus, uint64_t gpa, uint64_t len);
/* Forget the hart's decoded code (after its state was loaded). */
void hart_drop_code(struct hart *h);
/* Free it all, with the page table it hangs from (machine_destroy). */
void hart_free_code(struct hart *h);

/* The state a migration carries, in two explicit versioned functions. */
#define HART_STATE_VERSION 1
void hart_save(struct hart *h, struct sbuf *out);
int hart_load(struct hart *h, struct sbuf *in, uint32_t version, const char **why);

#endif
