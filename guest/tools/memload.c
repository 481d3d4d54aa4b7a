/*
 * memload.c - a memory workload that proves every page it owns is intact.
 *
 * This is what the live-migration tests run in the guest: it keeps memory
 * dirty at a chosen rate, and if a page arrives wrong on the other side
 * (stale, zero, swapped, torn) it says so and exits 1.
 *
 * How it works: the buffer is split into 4 KiB pages, each with a
 * generation number kept in a separate array. Every 8-byte word holds
 * memload_word(generation, word index), a mix of both, so a page's content
 * depends on where it is and how often it was written. Each thread owns a
 * contiguous slice of pages and walks it again and again (a "pass"): for
 * each page it first checks the words against the page's current
 * generation, then rewrites the page with the next generation. A page is
 * therefore always verified against what was written one pass earlier,
 * never right after writing it. With --rate R the threads together write
 * at most R MiB/s, sleeping when ahead; with 0 they run flat out.
 *
 * On a mismatch it prints "memload: ERROR ..." with the page, the word,
 * what it found and what it wanted (and whether the page looks like an
 * older or newer generation, i.e. stale), then exits 1. Otherwise the main
 * thread prints "memload: pass P verified V MiB errors 0" every second.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_BYTES	4096u
#define PAGE_WORDS	(PAGE_BYTES / 8)
#define CHUNK_PAGES	16u		/* pages between clock checks */
#define MAX_THREADS	64

struct memload_opts {
	unsigned long mib;
	double rate;		/* MiB/s for all threads, 0 = unlimited */
	double seconds;		/* 0 = forever */
	unsigned long passes;	/* 0 = forever */
	unsigned threads;
	uint64_t seed;
	double corrupt_after;	/* self-test: make a page stale after S seconds */
};

struct memload_slice {
	pthread_t tid;
	uint64_t *mem;		/* whole buffer; this slice is [first, end) */
	uint32_t *gen;		/* per-page generation, whole buffer */
	size_t first, end;
	double rate;		/* bytes/s for this slice, 0 = unlimited */
	const struct memload_opts *opts;
	_Atomic uint64_t passes;
	_Atomic uint64_t verified_pages;
};

static atomic_bool memload_stop;
static atomic_bool memload_corrupt_pending;

static uint64_t memload_word(uint64_t seed, uint32_t gen, uint64_t index)
{
	uint64_t x = seed ^ (index * 0x9e3779b97f4a7c15ull) ^
		     ((uint64_t)gen * 0xc2b2ae3d27d4eb4full);

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 29;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 32);
}

static double memload_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void memload_sleep(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (time_t)s) * 1e9) };

	nanosleep(&ts, NULL);
}

static void memload_fill(struct memload_slice *sl, size_t page, uint32_t gen)
{
	uint64_t *w = sl->mem + page * PAGE_WORDS;
	uint64_t base = page * PAGE_WORDS;

	for (unsigned i = 0; i < PAGE_WORDS; i++)
		w[i] = memload_word(sl->opts->seed, gen, base + i);
}

/* How the bad page compares with its neighbours in time, for the report. */
static const char *memload_diagnose(struct memload_slice *sl, size_t page,
				    uint32_t gen)
{
	uint64_t *w = sl->mem + page * PAGE_WORDS;
	uint64_t base = page * PAGE_WORDS;
	unsigned bad = 0, older = 0, newer = 0, zero = 0;

	for (unsigned i = 0; i < PAGE_WORDS; i++) {
		if (w[i] == memload_word(sl->opts->seed, gen, base + i))
			continue;
		bad++;
		older += gen > 0 && w[i] == memload_word(sl->opts->seed, gen - 1, base + i);
		newer += w[i] == memload_word(sl->opts->seed, gen + 1, base + i);
		zero += w[i] == 0;
	}
	if (older == bad)
		return "the whole difference is the previous generation: a stale page";
	if (newer == bad)
		return "the whole difference is the next generation: the generation table is stale";
	if (zero == bad)
		return "the bad words are zero: a page that never arrived";
	return "the bad words match no nearby generation: corrupted";
}

static void __attribute__((noreturn))
memload_fail(struct memload_slice *sl, size_t page, unsigned word, uint32_t gen)
{
	uint64_t got = sl->mem[page * PAGE_WORDS + word];
	uint64_t want = memload_word(sl->opts->seed, gen, page * PAGE_WORDS + word);

	printf("memload: ERROR page %zu (offset 0x%zx) word %u: got 0x%016" PRIx64
	       " want 0x%016" PRIx64 " (generation %" PRIu32 "); %s\n",
	       page, page * PAGE_BYTES, word, got, want, gen,
	       memload_diagnose(sl, page, gen));
	fflush(stdout);
	_exit(1);
}

/* Check one page against its generation and rewrite it with the next one. */
static void memload_step(struct memload_slice *sl, size_t page)
{
	uint64_t *w = sl->mem + page * PAGE_WORDS;
	uint64_t base = page * PAGE_WORDS;
	uint32_t gen = sl->gen[page];
	uint64_t seed = sl->opts->seed;

	for (unsigned i = 0; i < PAGE_WORDS; i++) {
		if (w[i] != memload_word(seed, gen, base + i))
			memload_fail(sl, page, i, gen);
		w[i] = memload_word(seed, gen + 1, base + i);
	}
	sl->gen[page] = gen + 1;
}

/* Sleep while this slice is ahead of its byte budget. */
static void memload_pace(struct memload_slice *sl, double start, uint64_t written)
{
	double due;

	if (sl->rate <= 0)
		return;
	due = start + written / sl->rate;
	while (!atomic_load(&memload_stop)) {
		double ahead = due - memload_now();

		if (ahead <= 0)
			return;
		memload_sleep(ahead > 0.1 ? 0.1 : ahead);
	}
}

/*
 * Self-test (--corrupt-after): the first slice's owner puts its first page
 * back to the previous generation, as a migration that lost the last copy
 * of that page would. The check in this very pass must then fail.
 */
static void memload_make_stale(struct memload_slice *sl)
{
	size_t page = sl->first;
	uint32_t gen = sl->gen[page];

	if (gen > 0)
		memload_fill(sl, page, gen - 1);
	else
		memset(sl->mem + page * PAGE_WORDS, 0, PAGE_BYTES);
	printf("memload: self-test: page %zu made stale\n", page);
	fflush(stdout);
}

static void *memload_thread(void *arg)
{
	struct memload_slice *sl = arg;
	double start = memload_now();
	uint64_t written = 0;

	while (!atomic_load(&memload_stop)) {
		if (sl->first == 0 && atomic_exchange(&memload_corrupt_pending, false))
			memload_make_stale(sl);
		for (size_t p = sl->first; p < sl->end; p++) {
			memload_step(sl, p);
			written += PAGE_BYTES;
			atomic_fetch_add_explicit(&sl->verified_pages, 1,
						  memory_order_relaxed);
			if ((p - sl->first) % CHUNK_PAGES == CHUNK_PAGES - 1) {
				memload_pace(sl, start, written);
				if (atomic_load(&memload_stop))
					return NULL;
			}
		}
		atomic_fetch_add(&sl->passes, 1);
		if (sl->opts->passes && atomic_load(&sl->passes) >= sl->opts->passes)
			break;
	}
	return NULL;
}

static void memload_usage(FILE *f)
{
	fprintf(f,
		"usage: memload [--mib N] [--rate MIB_PER_S] [--seconds S] [--passes P]\n"
		"               [--threads T] [--seed X] [--corrupt-after S]\n"
		"Fill N MiB (default 16) with a verifiable pattern, then keep rewriting\n"
		"it at the given rate (0 = as fast as possible, the default) and checking\n"
		"every page before it is rewritten. Runs forever unless --seconds or\n"
		"--passes is given. Prints a status line every second; on a bad page it\n"
		"prints \"memload: ERROR ...\" and exits 1. --corrupt-after S makes a page\n"
		"stale after S seconds, to show that the check catches it.\n");
}

static bool memload_number(const char *name, const char *text, double min,
			   double *out)
{
	char *end;

	errno = 0;
	*out = strtod(text, &end);
	if (errno || end == text || *end || *out < min) {
		fprintf(stderr, "memload: bad --%s '%s': want a number >= %g\n",
			name, text, min);
		return false;
	}
	return true;
}

static bool memload_parse(int argc, char **argv, struct memload_opts *o)
{
	static const struct option longopts[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "rate", required_argument, NULL, 'r' },
		{ "seconds", required_argument, NULL, 's' },
		{ "passes", required_argument, NULL, 'p' },
		{ "threads", required_argument, NULL, 't' },
		{ "seed", required_argument, NULL, 'S' },
		{ "corrupt-after", required_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	double v;
	int c;

	*o = (struct memload_opts){ .mib = 16, .threads = 1, .seed = 0x6665727279ull };
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (!memload_number("mib", optarg, 1, &v))
				return false;
			o->mib = (unsigned long)v;
			break;
		case 'r':
			if (!memload_number("rate", optarg, 0, &o->rate))
				return false;
			break;
		case 's':
			if (!memload_number("seconds", optarg, 0, &o->seconds))
				return false;
			break;
		case 'p':
			if (!memload_number("passes", optarg, 0, &v))
				return false;
			o->passes = (unsigned long)v;
			break;
		case 't':
			if (!memload_number("threads", optarg, 1, &v) || v > MAX_THREADS) {
				fprintf(stderr, "memload: --threads wants 1 to %d\n",
					MAX_THREADS);
				return false;
			}
			o->threads = (unsigned)v;
			break;
		case 'S':
			o->seed = strtoull(optarg, NULL, 0);
			break;
		case 'C':
			if (!memload_number("corrupt-after", optarg, 0, &o->corrupt_after))
				return false;
			break;
		case 'h':
			memload_usage(stdout);
			exit(0);
		default:
			memload_usage(stderr);
			return false;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "memload: unexpected argument '%s'\n", argv[optind]);
		return false;
	}
	return true;
}

static void memload_status(struct memload_slice *sl, unsigned n, const char *tag)
{
	uint64_t pass = UINT64_MAX, pages = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t p = atomic_load(&sl[i].passes);

		pass = p < pass ? p : pass;
		pages += atomic_load(&sl[i].verified_pages);
	}
	printf("memload: %spass %" PRIu64 " verified %" PRIu64 " MiB errors 0\n",
	       tag, pass, pages * PAGE_BYTES >> 20);
	fflush(stdout);
}

static bool memload_all_done(struct memload_slice *sl, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (atomic_load(&sl[i].passes) < sl[i].opts->passes)
			return false;
	return true;
}

int main(int argc, char **argv)
{
	static struct memload_slice slices[MAX_THREADS];
	struct memload_opts o;
	size_t npages, per;
	uint64_t *mem;
	uint32_t *gen;
	double start;

	if (!memload_parse(argc, argv, &o))
		return 2;
	npages = (size_t)o.mib << 20 >> 12;
	if (o.threads > npages)
		o.threads = npages;
	mem = mmap(NULL, npages * PAGE_BYTES, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	gen = calloc(npages, sizeof(*gen));
	if (mem == MAP_FAILED || !gen) {
		fprintf(stderr, "memload: cannot allocate %lu MiB: %s; give the guest more memory or ask for less\n",
			o.mib, strerror(errno));
		return 1;
	}
	per = npages / o.threads;
	for (unsigned i = 0; i < o.threads; i++) {
		struct memload_slice *sl = &slices[i];

		sl->mem = mem;
		sl->gen = gen;
		sl->opts = &o;
		sl->first = i * per;
		sl->end = i + 1 == o.threads ? npages : (i + 1) * per;
		sl->rate = o.rate * (1 << 20) / o.threads;
		for (size_t p = sl->first; p < sl->end; p++)
			memload_fill(sl, p, 0);
	}
	printf("memload: filled %lu MiB, %u thread%s, rate %g MiB/s\n", o.mib,
	       o.threads, o.threads > 1 ? "s" : "", o.rate);
	fflush(stdout);

	for (unsigned i = 0; i < o.threads; i++) {
		int err = pthread_create(&slices[i].tid, NULL, memload_thread, &slices[i]);

		if (err) {
			fprintf(stderr, "memload: cannot start thread %u: %s\n", i,
				strerror(err));
			return 1;
		}
	}
	start = memload_now();
	for (double next = start + 1;; next += 1) {
		memload_sleep(next - memload_now() > 0 ? next - memload_now() : 0);
		if (o.passes && memload_all_done(slices, o.threads))
			break;
		if (o.seconds && memload_now() - start >= o.seconds)
			break;
		if (o.corrupt_after && memload_now() - start >= o.corrupt_after) {
			atomic_store(&memload_corrupt_pending, true);
			o.corrupt_after = 0;
		}
		memload_status(slices, o.threads, "");
	}
	atomic_store(&memload_stop, true);
	for (unsigned i = 0; i < o.threads; i++)
		pthread_join(slices[i].tid, NULL);
	memload_status(slices, o.threads, "done ");
	return 0;
}
