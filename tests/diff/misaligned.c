/*
 * misaligned.c - differential test of misaligned memory access.
 *
 * Linux user programs may use misaligned loads and stores; whether the CPU
 * does them in hardware or the kernel emulates them, the result must be the
 * bytes a byte-wise access would give. Every load (lh, lhu, lw, lwu, ld, flw,
 * fld, c.lw, c.ld) and store (sh, sw, sd, fsw, fsd, c.sw, c.sd) runs at every
 * offset 0..7 of a patterned buffer, then at each offset that straddles the
 * boundary between two mapped pages. An access that straddles into a
 * PROT_NONE page must trap (only "trapped" is printed: whether part of a
 * store landed is implementation-defined). Last, a 4-byte instruction that
 * straddles a page boundary is executed, rewritten and executed again, which
 * catches a decoded-instruction cache that misses the second page.
 *
 * Output: loaded values and buffer dumps in hex.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "diff.h"

#define PAGE 4096

#define LOAD_FN(name, text)						\
static uint64_t name(const uint8_t *p)					\
{									\
	uint64_t r;							\
	asm volatile(text : "=r"(r) : "r"(p) : "ft0", "memory");	\
	return r;							\
}

#define STORE_FN(name, text)						\
static void name(uint8_t *p, uint64_t v)				\
{									\
	asm volatile(text : : "r"(p), "r"(v) : "ft0", "memory");	\
}

LOAD_FN(ld_lh, "lh %0, 0(%1)")
LOAD_FN(ld_lhu, "lhu %0, 0(%1)")
LOAD_FN(ld_lw, "lw %0, 0(%1)")
LOAD_FN(ld_lwu, "lwu %0, 0(%1)")
LOAD_FN(ld_ld, "ld %0, 0(%1)")
LOAD_FN(ld_flw, "flw ft0, 0(%1)\n\tfmv.x.d %0, ft0")
LOAD_FN(ld_fld, "fld ft0, 0(%1)\n\tfmv.x.d %0, ft0")
STORE_FN(st_sh, "sh %1, 0(%0)")
STORE_FN(st_sw, "sw %1, 0(%0)")
STORE_FN(st_sd, "sd %1, 0(%0)")
STORE_FN(st_fsw, "fmv.d.x ft0, %1\n\tfsw ft0, 0(%0)")
STORE_FN(st_fsd, "fmv.d.x ft0, %1\n\tfsd ft0, 0(%0)")

/* Compressed forms need x8-x15 registers. */
static uint64_t ld_clw(const uint8_t *p)
{
	register const uint8_t *a0 asm("a0") = p;
	register uint64_t a1 asm("a1");

	asm volatile("c.lw %0, 0(%1)" : "=r"(a1) : "r"(a0) : "memory");
	return a1;
}

static uint64_t ld_cld(const uint8_t *p)
{
	register const uint8_t *a0 asm("a0") = p;
	register uint64_t a1 asm("a1");

	asm volatile("c.ld %0, 0(%1)" : "=r"(a1) : "r"(a0) : "memory");
	return a1;
}

static void st_csw(uint8_t *p, uint64_t v)
{
	register uint8_t *a0 asm("a0") = p;
	register uint64_t a1 asm("a1") = v;

	asm volatile("c.sw %1, 0(%0)" : : "r"(a0), "r"(a1) : "memory");
}

static void st_csd(uint8_t *p, uint64_t v)
{
	register uint8_t *a0 asm("a0") = p;
	register uint64_t a1 asm("a1") = v;

	asm volatile("c.sd %1, 0(%0)" : : "r"(a0), "r"(a1) : "memory");
}

struct load_op {
	const char *name;
	uint64_t (*fn)(const uint8_t *p);
	unsigned size;
};

struct store_op {
	const char *name;
	void (*fn)(uint8_t *p, uint64_t v);
	unsigned size;
};

static const struct load_op loads[] = {
	{ "lh", ld_lh, 2 }, { "lhu", ld_lhu, 2 }, { "lw", ld_lw, 4 },
	{ "lwu", ld_lwu, 4 }, { "ld", ld_ld, 8 }, { "flw", ld_flw, 4 },
	{ "fld", ld_fld, 8 }, { "c.lw", ld_clw, 4 }, { "c.ld", ld_cld, 8 },
};

static const struct store_op stores[] = {
	{ "sh", st_sh, 2 }, { "sw", st_sw, 4 }, { "sd", st_sd, 8 },
	{ "fsw", st_fsw, 4 }, { "fsd", st_fsd, 8 }, { "c.sw", st_csw, 4 },
	{ "c.sd", st_csd, 8 },
};

static const uint64_t store_value = 0xf1e2d3c4b5a69788ULL;

static void fill(uint8_t *p, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(0x81 + i * 0x2b);
}

static void dump(const uint8_t *p, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		printf("%s%02x", i ? " " : "", p[i]);
	printf("\n");
}

static void test_buffer(void)
{
	static uint8_t buf[32] __attribute__((aligned(16)));
	unsigned k, off;

	for (k = 0; k < DIFF_ARRAY_SIZE(loads); k++) {
		fill(buf, sizeof(buf));
		for (off = 0; off < 8; off++)
			printf("%s +%u = %016" PRIx64 "\n", loads[k].name, off,
			       loads[k].fn(buf + 8 + off));
	}
	for (k = 0; k < DIFF_ARRAY_SIZE(stores); k++)
		for (off = 0; off < 8; off++) {
			fill(buf, sizeof(buf));
			stores[k].fn(buf + 8 + off, store_value);
			printf("%s +%u: ", stores[k].name, off);
			dump(buf, 24);
		}
}

/* Accesses that straddle the boundary between two readable pages. */
static void test_page_cross(uint8_t *pages)
{
	uint8_t *edge = pages + PAGE;
	unsigned k, back;

	fill(edge - 16, 32);
	for (k = 0; k < DIFF_ARRAY_SIZE(loads); k++)
		for (back = 1; back < loads[k].size; back++)
			printf("cross %s -%u = %016" PRIx64 "\n", loads[k].name,
			       back, loads[k].fn(edge - back));
	for (k = 0; k < DIFF_ARRAY_SIZE(stores); k++)
		for (back = 1; back < stores[k].size; back++) {
			fill(edge - 16, 32);
			stores[k].fn(edge - back, store_value);
			printf("cross %s -%u: ", stores[k].name, back);
			dump(edge - 12, 24);
		}
}

struct fault_case {
	uint8_t *p;
	unsigned k;
};

static void fault_load(void *arg)
{
	struct fault_case *c = arg;

	loads[c->k].fn(c->p);
}

static void fault_store(void *arg)
{
	struct fault_case *c = arg;

	stores[c->k].fn(c->p, store_value);
}

/* The second page is PROT_NONE: a straddling access must trap. */
static void test_page_fault(uint8_t *pages)
{
	struct fault_case c;
	unsigned back;
	int sig;

	if (mprotect(pages + PAGE, PAGE, PROT_NONE)) {
		printf("mprotect failed\n");
		return;
	}
	for (c.k = 0; c.k < DIFF_ARRAY_SIZE(loads); c.k++) {
		back = loads[c.k].size / 2;
		c.p = pages + PAGE - back;
		sig = diff_catch(fault_load, &c);
		printf("fault %s -%u: %s\n", loads[c.k].name, back,
		       sig ? "trapped" : "no trap");
	}
	for (c.k = 0; c.k < DIFF_ARRAY_SIZE(stores); c.k++) {
		back = stores[c.k].size - 1;
		c.p = pages + PAGE - back;
		sig = diff_catch(fault_store, &c);
		printf("fault %s -%u: %s\n", stores[c.k].name, back,
		       sig ? "trapped" : "no trap");
	}
	mprotect(pages + PAGE, PAGE, PROT_READ | PROT_WRITE);
}

/*
 * Code across a page boundary. Page 1 ends with c.nop then the low half of
 * "addi a0, a0, IMM"; page 2 starts with its high half (where the immediate
 * lives) then c.jr ra. The function is entered at the c.nop.
 */
static void test_code_cross(void)
{
	static const int imms[] = { 5, -1, 1234, -2048 };
	uint8_t *code;
	uint16_t *half;
	unsigned i;

	code = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (code == MAP_FAILED) {
		printf("code cross: mmap rwx failed\n");
		return;
	}
	half = (uint16_t *)(code + PAGE - 4);
	half[0] = 0x0001;			/* c.nop */
	half[3] = 0x8082;			/* c.jr ra */
	for (i = 0; i < DIFF_ARRAY_SIZE(imms); i++) {
		uint32_t insn = ((uint32_t)(imms[i] & 0xfff) << 20) |
				(10 << 15) | (10 << 7) | 0x13;
		uint64_t (*fn)(uint64_t) = (uint64_t (*)(uint64_t))(void *)half;

		half[1] = (uint16_t)insn;
		half[2] = (uint16_t)(insn >> 16);
		__builtin___clear_cache((char *)half, (char *)(half + 4));
		asm volatile("fence.i" ::: "memory");
		printf("code cross page, addi %d: %" PRIx64 "\n", imms[i], fn(100));
	}
	munmap(code, 2 * PAGE);
}

int main(void)
{
	uint8_t *pages;

	diff_begin("misaligned");
	test_buffer();
	pages = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pages == MAP_FAILED) {
		printf("mmap failed\n");
		return 1;
	}
	test_page_cross(pages);
	test_page_fault(pages);
	munmap(pages, 2 * PAGE);
	test_code_cross();
	return diff_end("misaligned");
}
