/*
 * compute.c - the guest compute benchmark: a few seconds of integer work
 * that ends with a checksum, so that two machines can be shown to have
 * computed the same thing.
 *
 *   compute [--scale N]
 *
 * Three kernels, each a different kind of work for an emulator:
 *   hash    a 64-bit mixing loop (multiplies, shifts, xors: straight-line
 *           ALU code in one hot block);
 *   matmul  an integer matrix product, repeated (loads, multiply-adds,
 *           nested loops with short blocks);
 *   sort    qsort() of pseudo-random words, repeated (calls through a
 *           function pointer, unpredictable branches, stores);
 *   mix     a CoreMark-like mix: a linked list (find, reverse, pointer
 *           chasing), a small int16 matrix (add, multiply, bit fields),
 *           a state machine scanning text for numbers (byte loads, a
 *           switch), and a CRC-16 over all their results (bit loops).
 * Each kernel is timed with clock_gettime(CLOCK_MONOTONIC) and folded into
 * one checksum. The output, for bench/compute.py to parse:
 *
 *   compute: start scale N
 *   compute: hash 0.812 s
 *   compute: matmul 0.655 s
 *   compute: sort 0.701 s
 *   compute: mix 0.420 s
 *   compute: total 2.168 s checksum 0x0123456789abcdef
 *
 * --scale multiplies the work of every kernel (default 1). The checksum
 * depends on the scale only, never on the machine or the timing.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HASH_ROUNDS	40000000ull	/* per unit of scale */
#define MAT_N		96
#define MAT_REPEAT	60
#define SORT_WORDS	(1u << 16)
#define SORT_REPEAT	4
#define MIX_ROUNDS	6000
#define LIST_NODES	256
#define MIX_N		16
#define TEXT_BYTES	2048

static uint64_t compute_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static double compute_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t compute_hash(unsigned scale)
{
	uint64_t h = 0x6665727279ull, n = HASH_ROUNDS * scale;

	for (uint64_t i = 0; i < n; i++)
		h = compute_mix(h + i);
	return h;
}

static void compute_fill(uint32_t *m, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		m[i] = (uint32_t)compute_mix(seed + i) & 0xffff;
}

static uint64_t compute_matmul(unsigned scale)
{
	static uint32_t a[MAT_N * MAT_N], b[MAT_N * MAT_N], c[MAT_N * MAT_N];
	uint64_t sum = 0;

	for (unsigned r = 0; r < MAT_REPEAT * scale; r++) {
		compute_fill(a, MAT_N * MAT_N, 2 * r);
		compute_fill(b, MAT_N * MAT_N, 2 * r + 1);
		for (unsigned i = 0; i < MAT_N; i++)
			for (unsigned j = 0; j < MAT_N; j++) {
				uint32_t acc = 0;

				for (unsigned k = 0; k < MAT_N; k++)
					acc += a[i * MAT_N + k] * b[k * MAT_N + j];
				c[i * MAT_N + j] = acc;
			}
		for (unsigned i = 0; i < MAT_N * MAT_N; i++)
			sum = compute_mix(sum ^ c[i]);
	}
	return sum;
}

static int compute_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	return (a > b) - (a < b);
}

static uint64_t compute_sort(unsigned scale)
{
	uint32_t *v = malloc(SORT_WORDS * sizeof(*v));
	uint64_t sum = 0;

	if (!v) {
		fprintf(stderr, "compute: cannot allocate %zu bytes for sort; give the guest more memory\n",
			SORT_WORDS * sizeof(*v));
		exit(1);
	}
	for (unsigned r = 0; r < SORT_REPEAT * scale; r++) {
		for (unsigned i = 0; i < SORT_WORDS; i++)
			v[i] = (uint32_t)compute_mix(((uint64_t)r << 32) + i);
		qsort(v, SORT_WORDS, sizeof(*v), compute_cmp);
		for (unsigned i = 0; i < SORT_WORDS; i += 64)
			sum = compute_mix(sum ^ v[i]);
	}
	free(v);
	return sum;
}

/* ---- mix: CoreMark's four kinds of work ------------------------------- */

struct mix_node {
	struct mix_node *next;
	uint16_t key, data;
};

static uint16_t mix_crc(uint16_t crc, uint16_t v)
{
	for (int i = 0; i < 16; i++) {
		unsigned bit = (crc ^ v) & 1;

		crc >>= 1;
		v >>= 1;
		if (bit)
			crc ^= 0xa001;
	}
	return crc;
}

static struct mix_node *mix_reverse(struct mix_node *l)
{
	struct mix_node *prev = NULL;

	while (l) {
		struct mix_node *next = l->next;

		l->next = prev;
		prev = l;
		l = next;
	}
	return prev;
}

/* find a few keys, reverse the list, fold the data seen */
static uint16_t mix_list(struct mix_node **head, unsigned round, uint16_t crc)
{
	for (unsigned f = 0; f < 8; f++) {
		uint16_t want = (uint16_t)((round * 7 + f * 31) % LIST_NODES);
		unsigned steps = 0;
		struct mix_node *n = *head;

		while (n && n->key != want) {
			n = n->next;
			steps++;
		}
		crc = mix_crc(crc, (uint16_t)(n ? n->data + steps : steps));
	}
	*head = mix_reverse(*head);
	return mix_crc(crc, (*head)->key);
}

static uint16_t mix_matrix(int16_t a[MIX_N][MIX_N], int16_t b[MIX_N][MIX_N],
			   int32_t c[MIX_N][MIX_N], int16_t v, uint16_t crc)
{
	for (int i = 0; i < MIX_N; i++)
		for (int j = 0; j < MIX_N; j++)
			a[i][j] = (int16_t)(a[i][j] + v);
	for (int i = 0; i < MIX_N; i++)
		for (int j = 0; j < MIX_N; j++) {
			int32_t acc = 0;

			for (int k = 0; k < MIX_N; k++)
				acc += a[i][k] * b[k][j];
			c[i][j] = acc;
		}
	int32_t sum = 0;

	for (int i = 0; i < MIX_N; i++)
		for (int j = 0; j < MIX_N; j++)
			sum += (c[i][j] >> 2) & 0x7f;
	return mix_crc(crc, (uint16_t)sum);
}

enum mix_state { MS_START, MS_INT, MS_FRAC, MS_EXP, MS_BAD };

/* count the numbers of each kind in the text, as CoreMark's core_state */
static uint16_t mix_state(const char *text, uint16_t crc)
{
	unsigned counts[5] = { 0 };
	enum mix_state st = MS_START;

	for (const char *p = text; *p; p++) {
		char ch = *p;

		if (ch == ',') {
			counts[st]++;
			st = MS_START;
			continue;
		}
		switch (st) {
		case MS_START:
			st = (ch >= '0' && ch <= '9') || ch == '-' ? MS_INT : MS_BAD;
			break;
		case MS_INT:
			if (ch == '.')
				st = MS_FRAC;
			else if (ch == 'e')
				st = MS_EXP;
			else if (ch < '0' || ch > '9')
				st = MS_BAD;
			break;
		case MS_FRAC:
			if (ch == 'e')
				st = MS_EXP;
			else if (ch < '0' || ch > '9')
				st = MS_BAD;
			break;
		case MS_EXP:
			if ((ch < '0' || ch > '9') && ch != '-')
				st = MS_BAD;
			break;
		case MS_BAD:
			break;
		}
	}
	for (int i = 0; i < 5; i++)
		crc = mix_crc(crc, (uint16_t)counts[i]);
	return crc;
}

static uint64_t compute_mix_kernel(unsigned scale)
{
	static struct mix_node nodes[LIST_NODES];
	static int16_t a[MIX_N][MIX_N], b[MIX_N][MIX_N];
	static int32_t c[MIX_N][MIX_N];
	static char text[TEXT_BYTES + 1];
	static const char *const words[] = { "5012", "1234", "-874", "3.14", "1e-5",
					      "0.5e3", "x19", "-1.2e", "77", "8.88" };
	struct mix_node *head = NULL;
	uint16_t crc = 0;
	size_t len = 0;

	for (unsigned i = 0; i < LIST_NODES; i++) {
		nodes[i] = (struct mix_node){ head, (uint16_t)((i * 97) % LIST_NODES),
					      (uint16_t)compute_mix(i) };
		head = &nodes[i];
	}
	for (int i = 0; i < MIX_N; i++)
		for (int j = 0; j < MIX_N; j++) {
			a[i][j] = (int16_t)(compute_mix((uint64_t)i * MIX_N + j) & 0xff);
			b[i][j] = (int16_t)(compute_mix((uint64_t)j * MIX_N + i + 999) & 0xff);
		}
	for (unsigned i = 0; len + 8 < TEXT_BYTES; i++) {
		const char *w = words[compute_mix(i) % 10];
		size_t n = strlen(w);

		memcpy(text + len, w, n);
		text[len + n] = ',';
		len += n + 1;
	}
	text[len] = 0;
	for (unsigned r = 0; r < MIX_ROUNDS * scale; r++) {
		crc = mix_list(&head, r, crc);
		crc = mix_matrix(a, b, c, (int16_t)(r & 7), crc);
		crc = mix_state(text + (r % 16), crc);
	}
	return crc;
}

static unsigned compute_parse(int argc, char **argv)
{
	char *end;
	unsigned long v;

	if (argc == 1)
		return 1;
	if (argc == 3 && !strcmp(argv[1], "--scale")) {
		errno = 0;
		v = strtoul(argv[2], &end, 10);
		if (!errno && end != argv[2] && !*end && v >= 1 && v <= 1000)
			return (unsigned)v;
	}
	fprintf(stderr, "usage: compute [--scale N]  (N from 1 to 1000: how much work)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		uint64_t (*run)(unsigned scale);
	} kernels[] = {
		{ "hash", compute_hash },
		{ "matmul", compute_matmul },
		{ "sort", compute_sort },
		{ "mix", compute_mix_kernel },
	};
	unsigned scale = compute_parse(argc, argv);
	uint64_t checksum = 0;
	double start = compute_now();

	printf("compute: start scale %u\n", scale);
	fflush(stdout);
	for (size_t i = 0; i < sizeof(kernels) / sizeof(kernels[0]); i++) {
		double t0 = compute_now();

		checksum = compute_mix(checksum ^ kernels[i].run(scale));
		printf("compute: %s %.3f s\n", kernels[i].name, compute_now() - t0);
		fflush(stdout);
	}
	printf("compute: total %.3f s checksum 0x%016" PRIx64 "\n",
	       compute_now() - start, checksum);
	return 0;
}
