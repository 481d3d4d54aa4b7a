/*
 * memcheck.c - a second, independent check that a migration kept memory
 * intact, written to share nothing with memload but the idea.
 *
 * memload keeps each page's generation in a separate table and paces and
 * reports with the guest's clock. memcheck instead makes every page describe
 * itself, and needs no clock and no second thread:
 *
 *   word 0        page index
 *   word 1        generation
 *   words 2..510  a xorshift64* stream seeded by (seed, page, generation):
 *                 incompressible, different in every page and generation
 *   word 511      a checksum of words 0..510 (a multiply-rotate hash)
 *
 * One thread walks the pages in order, again and again. For each page it
 * checks all 512 words and the checksum against the generation it wrote
 * there last (kept in a table too, so a page that is whole but old is also
 * caught), then rewrites it with the next generation. Progress is printed
 * every --every passes (default 16), counted, not timed: it keeps printing
 * even if the guest's timer stops. On a bad page it prints what the page
 * holds (which page and generation it says it is, whether its own checksum
 * holds, how many words are wrong) and the page's guest-physical address
 * from /proc/self/pagemap, so that the page can be found in a RAM dump of
 * the machine, then exits 1.
 *
 * --stale-at P is its self-test: at the start of pass P page 0 is put back
 * to its previous generation, as a migration that lost its last copy would
 * leave it, and that pass must report it.
 *
 *   memcheck [--mib N] [--passes P] [--every K] [--seed X] [--stale-at P]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define WORDS		512u		/* 8-byte words in a 4 KiB page */
#define PAGE_SIZE_B	(WORDS * 8u)
#define SUM_WORD	(WORDS - 1)

struct memcheck {
	uint64_t *mem;
	uint64_t *gen;		/* what this program last wrote in each page */
	size_t pages;
	uint64_t seed;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static uint64_t page_checksum(const uint64_t *w)
{
	uint64_t h = 0x243f6a8885a308d3ull;

	for (unsigned i = 0; i < SUM_WORD; i++) {
		h = (h ^ w[i]) * 0x100000001b3ull;
		h = (h << 29) | (h >> 35);
	}
	return h;
}

/* The content page p has at generation g, written into out[]. */
static void page_expected(const struct memcheck *mc, size_t p, uint64_t g, uint64_t *out)
{
	uint64_t s = mix64(mc->seed ^ mix64(p) ^ mix64(g + 0x9e3779b97f4a7c15ull)) | 1;

	out[0] = p;
	out[1] = g;
	for (unsigned i = 2; i < SUM_WORD; i++) {
		s ^= s >> 12;
		s ^= s << 25;
		s ^= s >> 27;
		out[i] = s * 0x2545f4914f6cdd1dull;
	}
	out[SUM_WORD] = page_checksum(out);
}

/* Guest-physical address of a virtual address, or 0 if pagemap says nothing. */
static uint64_t guest_physical(const void *va)
{
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return 0;
	if (pread(fd, &entry, 8, (off_t)((uintptr_t)va / PAGE_SIZE_B * 8)) != 8)
		entry = 0;
	close(fd);
	if (!(entry >> 63))
		return 0;
	return (entry & ((1ull << 55) - 1)) * PAGE_SIZE_B;
}

static void __attribute__((noreturn))
report_bad_page(const struct memcheck *mc, size_t p, const uint64_t *want)
{
	const uint64_t *w = mc->mem + p * WORDS;
	unsigned bad = 0, first = WORDS;
	uint64_t older[WORDS];
	const char *what = "matches no generation nearby";

	for (unsigned i = 0; i < WORDS; i++)
		if (w[i] != want[i]) {
			bad++;
			if (first == WORDS)
				first = i;
		}
	if (w[1] + 1 == mc->gen[p] && w[0] == p) {
		page_expected(mc, p, w[1], older);
		if (!memcmp(older, w, PAGE_SIZE_B))
			what = "is whole but one generation old: a stale page";
	} else if (w[1] == mc->gen[p] + 1 && w[0] == p) {
		what = "says it is one generation newer: the table is stale";
	}
	printf("memcheck: ERROR page %zu (va %p, guest-physical 0x%" PRIx64 "): "
	       "%u of %u words wrong, first word %u got 0x%016" PRIx64 " want 0x%016" PRIx64
	       "; it says page %" PRIu64 " generation %" PRIu64 " (want %" PRIu64
	       "), its checksum %s; it %s\n",
	       p, (void *)w, guest_physical(w), bad, WORDS, first, w[first], want[first],
	       w[0], w[1], mc->gen[p], page_checksum(w) == w[SUM_WORD] ? "holds" : "fails",
	       what);
	fflush(stdout);
	_exit(1);
}

static void check_and_rewrite(struct memcheck *mc, size_t p)
{
	uint64_t want[WORDS];
	uint64_t *w = mc->mem + p * WORDS;

	page_expected(mc, p, mc->gen[p], want);
	if (memcmp(w, want, PAGE_SIZE_B) || page_checksum(w) != w[SUM_WORD])
		report_bad_page(mc, p, want);
	mc->gen[p]++;
	page_expected(mc, p, mc->gen[p], w);
}

static bool parse_count(const char *name, const char *text, unsigned long min,
			unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(text, &end, 0);
	if (errno || end == text || *end || *out < min) {
		fprintf(stderr, "memcheck: bad --%s '%s': want a whole number >= %lu\n",
			name, text, min);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "passes", required_argument, NULL, 'p' },
		{ "every", required_argument, NULL, 'e' },
		{ "seed", required_argument, NULL, 's' },
		{ "stale-at", required_argument, NULL, 'S' },
		{ 0 }
	};
	unsigned long mib = 16, passes = 0, every = 16, seed = 0x6d656d63, stale_at = 0;
	struct memcheck mc;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		bool ok = false;

		switch (c) {
		case 'm': ok = parse_count("mib", optarg, 1, &mib); break;
		case 'p': ok = parse_count("passes", optarg, 0, &passes); break;
		case 'e': ok = parse_count("every", optarg, 1, &every); break;
		case 's': ok = parse_count("seed", optarg, 0, &seed); break;
		case 'S': ok = parse_count("stale-at", optarg, 2, &stale_at); break;
		}
		if (!ok) {
			fprintf(stderr, "usage: memcheck [--mib N] [--passes P] [--every K] "
				"[--seed X] [--stale-at P]\n");
			return 2;
		}
	}
	mc.pages = (size_t)mib << 20 >> 12;
	mc.seed = seed;
	mc.mem = mmap(NULL, mc.pages * PAGE_SIZE_B, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	mc.gen = calloc(mc.pages, sizeof(*mc.gen));
	if (mc.mem == MAP_FAILED || !mc.gen) {
		fprintf(stderr, "memcheck: cannot allocate %lu MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	for (size_t p = 0; p < mc.pages; p++)
		page_expected(&mc, p, 0, mc.mem + p * WORDS);
	printf("memcheck: filled %lu MiB (guest-physical of page 0: 0x%" PRIx64 ")\n",
	       mib, guest_physical(mc.mem));
	fflush(stdout);
	for (unsigned long pass = 1; !passes || pass <= passes; pass++) {
		if (pass == stale_at) {
			page_expected(&mc, 0, mc.gen[0] - 1, mc.mem);
			printf("memcheck: self-test: page 0 made stale\n");
		}
		for (size_t p = 0; p < mc.pages; p++)
			check_and_rewrite(&mc, p);
		if (pass % every == 0) {
			printf("memcheck: pass %lu checked %lu MiB errors 0\n", pass, pass * mib);
			fflush(stdout);
		}
	}
	printf("memcheck: done\n");
	return 0;
}
