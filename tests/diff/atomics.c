/*
 * atomics.c - differential test of the A extension.
 *
 * Single-threaded part: every AMO, word and doubleword, over pairs of (memory
 * value, operand) edge values; each line shows the old value the AMO
 * returned (a word is sign-extended) and the memory afterwards, including the
 * untouched neighbouring word. The ordering bits (.aq, .rl, .aqrl), rd equal
 * to rs2, and rd = x0 are checked to change nothing. LR/SC is tested only
 * where the spec makes the outcome certain: an LR/SC retry loop eventually
 * succeeds; an SC with no reservation (after another SC) fails with 1 and
 * leaves memory alone; an SC to an address other than the LR's fails; a
 * misaligned AMO or LR traps.
 *
 * Multi-threaded part: four threads hammer shared counters with amoadd.d,
 * amoadd.w, an LR/SC increment loop, a spinlock built on amoswap.w.aq /
 * amoswap.w.rl guarding plain loads and stores, amoor/amoxor/amomax/amominu.
 * Only the final totals are printed, and they are fixed by the arithmetic
 * whatever the interleaving. Run it with one hart and with four.
 *
 * Output: hex values and totals, nothing that depends on timing.
 */
#include <pthread.h>

#include "diff.h"

static const uint64_t vals[] = {
	0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ULL,
	0x7fffffffffffffffULL, 0x8000000000000000ULL, 0xffffffffffffffffULL,
	0xfffffffffffffffeULL, 0x123456789abcdef0ULL, 0x00000000fedcba98ULL,
};

typedef uint64_t (*amo_fn)(uint64_t *p, uint64_t v);

#define AMO(insn, sfx)							\
static uint64_t amo_##insn##_##sfx(uint64_t *p, uint64_t v)		\
{									\
	uint64_t old;							\
	asm volatile("amo" #insn "." #sfx " %0, %2, (%1)"		\
		     : "=r"(old) : "r"(p), "r"(v) : "memory");		\
	return old;							\
}

#define AMO_BOTH(insn) AMO(insn, w) AMO(insn, d)
AMO_BOTH(swap) AMO_BOTH(add) AMO_BOTH(xor) AMO_BOTH(and) AMO_BOTH(or)
AMO_BOTH(min) AMO_BOTH(max) AMO_BOTH(minu) AMO_BOTH(maxu)

struct amo_op {
	const char *name;
	amo_fn w, d;
};

#define AMO_ENTRY(insn) { #insn, amo_##insn##_w, amo_##insn##_d }
static const struct amo_op amo_ops[] = {
	AMO_ENTRY(swap), AMO_ENTRY(add), AMO_ENTRY(xor), AMO_ENTRY(and),
	AMO_ENTRY(or), AMO_ENTRY(min), AMO_ENTRY(max), AMO_ENTRY(minu),
	AMO_ENTRY(maxu),
};

/* Two doublewords: the AMO works on cell[0]; cell[1] must not change. */
static uint64_t cell[2] __attribute__((aligned(16)));

static void test_amo_values(void)
{
	unsigned i, j, k;

	for (k = 0; k < DIFF_ARRAY_SIZE(amo_ops); k++) {
		for (i = 0; i < DIFF_ARRAY_SIZE(vals); i++) {
			printf("amo%s m=%016" PRIx64 ":", amo_ops[k].name, vals[i]);
			for (j = 0; j < DIFF_ARRAY_SIZE(vals); j++) {
				uint64_t old_w, old_d, mem_w, mem_d;

				cell[0] = vals[i];
				cell[1] = 0x5a5a5a5a5a5a5a5aULL;
				old_w = amo_ops[k].w(cell, vals[j]);
				mem_w = cell[0];
				cell[0] = vals[i];
				old_d = amo_ops[k].d(cell, vals[j]);
				mem_d = cell[0];
				if (j == 6)
					printf("\namo%s m=%016" PRIx64 ":",
					       amo_ops[k].name, vals[i]);
				printf(" [%" PRIx64 " w %" PRIx64 "/%" PRIx64
				       " d %" PRIx64 "/%" PRIx64 "]",
				       vals[j], old_w, mem_w, old_d, mem_d);
				if (cell[1] != 0x5a5a5a5a5a5a5a5aULL)
					printf(" NEIGHBOUR CHANGED");
			}
			printf("\n");
		}
	}
}

/* The upper word of an aligned doubleword, through amo*.w at offset 4. */
static void test_amo_upper_word(void)
{
	uint32_t *w = (uint32_t *)cell + 1;
	uint64_t old;

	cell[0] = 0x8000000112345678ULL;
	asm volatile("amoadd.w %0, %2, (%1)" : "=r"(old) : "r"(w), "r"(1ULL) : "memory");
	printf("amoadd.w upper: old %" PRIx64 " mem %016" PRIx64 "\n", old, cell[0]);
	asm volatile("amomax.w %0, %2, (%1)" : "=r"(old) : "r"(w), "r"(0x7fffffffULL) : "memory");
	printf("amomax.w upper: old %" PRIx64 " mem %016" PRIx64 "\n", old, cell[0]);
	asm volatile("amominu.w %0, %2, (%1)" : "=r"(old) : "r"(w), "r"(0xfffffffe00000003ULL) : "memory");
	printf("amominu.w upper: old %" PRIx64 " mem %016" PRIx64 "\n", old, cell[0]);
}

static void test_amo_forms(void)
{
	uint64_t v, old;

	cell[0] = 10;
	asm volatile("amoadd.d.aq %0, %2, (%1)" : "=r"(old) : "r"(cell), "r"(1ULL) : "memory");
	printf("amoadd.d.aq: old %" PRIx64 " mem %" PRIx64 "\n", old, cell[0]);
	asm volatile("amoadd.d.rl %0, %2, (%1)" : "=r"(old) : "r"(cell), "r"(2ULL) : "memory");
	printf("amoadd.d.rl: old %" PRIx64 " mem %" PRIx64 "\n", old, cell[0]);
	asm volatile("amoadd.w.aqrl %0, %2, (%1)" : "=r"(old) : "r"(cell), "r"(3ULL) : "memory");
	printf("amoadd.w.aqrl: old %" PRIx64 " mem %" PRIx64 "\n", old, cell[0]);

	/* rd == rs2: the operand is read before rd is written. */
	v = 5;
	asm volatile("amoadd.d %0, %0, (%1)" : "+r"(v) : "r"(cell) : "memory");
	printf("amoadd.d rd==rs2: rd %" PRIx64 " mem %" PRIx64 "\n", v, cell[0]);
	v = 0x100;
	asm volatile("amoswap.d %0, %0, (%1)" : "+r"(v) : "r"(cell) : "memory");
	printf("amoswap.d rd==rs2: rd %" PRIx64 " mem %" PRIx64 "\n", v, cell[0]);

	/* rd == x0 still performs the operation. */
	asm volatile("amoor.d zero, %1, (%0)" : : "r"(cell), "r"(0x1001ULL) : "memory");
	printf("amoor.d rd=x0: mem %" PRIx64 "\n", cell[0]);
}

static uint64_t lr_d(uint64_t *p)
{
	uint64_t v;

	asm volatile("lr.d %0, (%1)" : "=r"(v) : "r"(p) : "memory");
	return v;
}

static uint64_t sc_d(uint64_t *p, uint64_t v)
{
	uint64_t rc;

	asm volatile("sc.d %0, %2, (%1)" : "=r"(rc) : "r"(p), "r"(v) : "memory");
	return rc;
}

/* Clears any reservation: an SC always does, whether or not it succeeds. */
static void drop_reservation(void)
{
	uint64_t scratch = 0;

	sc_d(&scratch, 0);
}

static uint64_t far_cell[512] __attribute__((aligned(4096)));

static void test_lr_sc(void)
{
	uint64_t v, rc, tries;
	uint32_t w32 = 0x80000001;

	/* A retry loop always gets there. */
	cell[0] = 41;
	asm volatile("1:\tlr.d %0, (%2)\n\t"
		     "addi %0, %0, 1\n\t"
		     "sc.d %1, %0, (%2)\n\t"
		     "bnez %1, 1b"
		     : "=&r"(v), "=&r"(rc) : "r"(cell) : "memory");
	printf("lr/sc loop: value %" PRIx64 " rc %" PRIx64 " mem %" PRIx64 "\n",
	       v, rc, cell[0]);

	/* lr.w sign-extends; sc.w writes only the word. */
	cell[1] = 0x1111111111111111ULL;
	asm volatile("1:\tlr.w %0, (%2)\n\t"
		     "sc.w %1, %0, (%2)\n\t"
		     "bnez %1, 1b"
		     : "=&r"(v), "=&r"(rc) : "r"(&w32) : "memory");
	printf("lr.w: value %016" PRIx64 " mem %08" PRIx32 "\n", v, w32);

	/* SC with no reservation fails with 1 and writes nothing. */
	cell[0] = 7;
	drop_reservation();
	rc = sc_d(cell, 99);
	printf("sc without lr: rc %" PRIx64 " mem %" PRIx64 "\n", rc, cell[0]);

	/* Two SCs after one LR: the second always fails. */
	for (tries = 0; tries < 1000; tries++) {
		lr_d(cell);
		if (sc_d(cell, 8) == 0)
			break;
	}
	rc = sc_d(cell, 9);
	printf("second sc: rc %" PRIx64 " mem %" PRIx64 "\n", rc, cell[0]);

	/* SC to an address outside the LR's reservation set fails. */
	far_cell[256] = 0x77;
	lr_d(cell);
	rc = sc_d(&far_cell[256], 0x78);
	printf("sc to other address: rc %" PRIx64 " other %" PRIx64 "\n",
	       rc, far_cell[256]);
	drop_reservation();
}

static void misaligned_amo(void *arg)
{
	uint64_t old;

	asm volatile("amoadd.d %0, %2, (%1)"
		     : "=r"(old) : "r"((char *)arg + 4), "r"(1ULL) : "memory");
}

static void misaligned_amo_w(void *arg)
{
	uint64_t old;

	asm volatile("amoswap.w %0, %2, (%1)"
		     : "=r"(old) : "r"((char *)arg + 2), "r"(1ULL) : "memory");
}

static void misaligned_lr(void *arg)
{
	uint64_t v;

	asm volatile("lr.d %0, (%1)" : "=r"(v) : "r"((char *)arg + 1) : "memory");
}

/*
 * The spec allows either an address-misaligned or an access-fault
 * exception here, so only "trapped" is printed, not which signal.
 */
static void test_misaligned(void)
{
	int sig;

	cell[0] = 0x0123456789abcdefULL;
	cell[1] = 0;
	sig = diff_catch(misaligned_amo, cell);
	printf("misaligned amoadd.d: %s\n", sig ? "trapped" : "no trap");
	sig = diff_catch(misaligned_amo_w, cell);
	printf("misaligned amoswap.w: %s\n", sig ? "trapped" : "no trap");
	sig = diff_catch(misaligned_lr, cell);
	printf("misaligned lr.d: %s\n", sig ? "trapped" : "no trap");
	drop_reservation();
}

/* ---- the multi-threaded part ---- */

#define NTHREADS	4
#define ITERS		20000

static struct {
	uint64_t amo_sum;
	uint32_t amo_sum32;
	uint64_t lrsc_sum;
	uint32_t lock;
	uint64_t locked_sum;
	uint64_t locked_a, locked_b;	/* kept equal under the lock */
	uint64_t torn;			/* times a != b was seen */
	uint64_t or_bits;
	uint64_t xor_acc;
	uint64_t max_val;
	uint64_t minu_val;
	uint32_t start;
} shared __attribute__((aligned(64)));

static void amoadd_d(uint64_t *p, uint64_t v)
{
	asm volatile("amoadd.d zero, %1, (%0)" : : "r"(p), "r"(v) : "memory");
}

static void lrsc_inc(uint64_t *p)
{
	uint64_t v, rc;

	asm volatile("1:\tlr.d.aq %0, (%2)\n\t"
		     "addi %0, %0, 1\n\t"
		     "sc.d.rl %1, %0, (%2)\n\t"
		     "bnez %1, 1b"
		     : "=&r"(v), "=&r"(rc) : "r"(p) : "memory");
}

static void spin_lock(uint32_t *l)
{
	uint64_t old;

	for (;;) {
		asm volatile("amoswap.w.aq %0, %2, (%1)"
			     : "=r"(old) : "r"(l), "r"(1ULL) : "memory");
		if (!old)
			return;
		while (__atomic_load_n(l, __ATOMIC_RELAXED))
			;
	}
}

static void spin_unlock(uint32_t *l)
{
	asm volatile("amoswap.w.rl zero, zero, (%0)" : : "r"(l) : "memory");
}

static void locked_step(void)
{
	volatile uint64_t *sum = &shared.locked_sum;
	volatile uint64_t *a = &shared.locked_a, *b = &shared.locked_b;

	spin_lock(&shared.lock);
	if (*a != *b)
		shared.torn++;
	*sum = *sum + 1;
	*a = *a + 3;
	*b = *b + 3;
	spin_unlock(&shared.lock);
}

static void *worker(void *arg)
{
	uint64_t id = (uintptr_t)arg, i, old;

	while (!__atomic_load_n(&shared.start, __ATOMIC_ACQUIRE))
		;
	for (i = 0; i < ITERS; i++) {
		amoadd_d(&shared.amo_sum, id + 1);
		asm volatile("amoadd.w zero, %1, (%0)"
			     : : "r"(&shared.amo_sum32), "r"(0x10000001ULL) : "memory");
		lrsc_inc(&shared.lrsc_sum);
		locked_step();
		asm volatile("amoor.d zero, %1, (%0)"
			     : : "r"(&shared.or_bits), "r"(1ULL << (id * 8 + i % 8)) : "memory");
		asm volatile("amoxor.d zero, %1, (%0)"
			     : : "r"(&shared.xor_acc), "r"(0x0101010101010101ULL << id) : "memory");
		asm volatile("amomax.d %0, %2, (%1)"
			     : "=r"(old) : "r"(&shared.max_val), "r"(id * ITERS + i) : "memory");
		asm volatile("amominu.d %0, %2, (%1)"
			     : "=r"(old) : "r"(&shared.minu_val),
			       "r"(0x8000000000000000ULL - id * ITERS - i) : "memory");
	}
	/* An odd number of XORs per thread, so the total is not zero. */
	asm volatile("amoxor.d zero, %1, (%0)"
		     : : "r"(&shared.xor_acc), "r"(0x0101010101010101ULL << id) : "memory");
	return NULL;
}

static void test_threads(void)
{
	pthread_t t[NTHREADS];
	uintptr_t i;
	int err;

	memset(&shared, 0, sizeof(shared));
	shared.minu_val = ~0ULL;
	for (i = 0; i < NTHREADS; i++) {
		err = pthread_create(&t[i], NULL, worker, (void *)i);
		if (err) {
			printf("pthread_create failed: %s\n", strerror(err));
			exit(1);
		}
	}
	__atomic_store_n(&shared.start, 1, __ATOMIC_RELEASE);
	for (i = 0; i < NTHREADS; i++)
		pthread_join(t[i], NULL);

	printf("threads %d x %d iterations\n", NTHREADS, ITERS);
	printf("amoadd.d total %" PRIu64 "\n", shared.amo_sum);
	printf("amoadd.w total %08" PRIx32 "\n", shared.amo_sum32);
	printf("lr/sc total %" PRIu64 "\n", shared.lrsc_sum);
	printf("spinlock total %" PRIu64 " pair %" PRIu64 " %" PRIu64 " torn %" PRIu64
	       " lock %" PRIu32 "\n", shared.locked_sum, shared.locked_a,
	       shared.locked_b, shared.torn, shared.lock);
	printf("amoor bits %016" PRIx64 "\n", shared.or_bits);
	printf("amoxor acc %016" PRIx64 "\n", shared.xor_acc);
	printf("amomax %" PRIu64 "\n", shared.max_val);
	printf("amominu %016" PRIx64 "\n", shared.minu_val);
}

int main(void)
{
	diff_begin("atomics");
	test_amo_values();
	test_amo_upper_word();
	test_amo_forms();
	test_lr_sc();
	test_misaligned();
	test_threads();
	return diff_end("atomics");
}
