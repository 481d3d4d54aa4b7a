/*
 * ftdisklog.c - a guest program for the fault-tolerance disk tests: a disk
 * log that checks, as it writes, that the disk agrees with its memory, and
 * acknowledges each record over UDP.
 *
 *   ftdisklog DEV HOST PORT [PER_SECOND]
 *
 * Record k goes to sector k of DEV (O_DIRECT|O_DSYNC), in the format of
 * `ft disklog` (guest/tools/ft.c), so a fresh boot's `ft disklog-check`
 * verifies the image. Around each write it checks what only a guest can:
 *   - before writing record k, sector k must not hold a record of this run
 *     already: the log lives in guest memory, so a record there that this
 *     state has not written yet is a write from an epoch the guest never
 *     had (the disk is ahead of memory);
 *   - after writing it, reading it back gives it (read-your-writes);
 *   - every 16 records, an earlier record (k/2 and k-17) reads back intact:
 *     a write the guest saw complete and then lost (the disk is behind).
 * A failed check prints "ftdisklog: ERROR ..." and exits 1. After each
 * write it sends "ftdisklog N\n" to HOST:PORT, N the records written so
 * far: the guest's network output is held until its epoch is acknowledged,
 * so N records the receiver heard of are records of a state the secondary
 * can resume from, and must be on the image after a failover. Every second it prints "ftdisklog: seq K". The
 * console is not held: those lines may come from an epoch later lost.
 * Built static for riscv64 by tests/integration/test_ft.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The record of guest/tools/ft.c's disklog, exactly: disklog-check reads it. */
#define REC_BYTES	512
#define REC_MAGIC	0x474f4c5952524546ull	/* "FERRYLOG" little endian */

struct record {
	uint64_t magic;
	uint64_t run;
	uint64_t seq;
	uint64_t payload[60];
	uint64_t checksum;
};

_Static_assert(sizeof(struct record) == REC_BYTES, "a record is one sector");

static uint64_t mix(uint64_t seed, uint64_t index)
{
	uint64_t x = seed ^ (index * 0x9e3779b97f4a7c15ull);
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t checksum(const struct record *r)
{
	const unsigned char *p = (const unsigned char *)r;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < offsetof(struct record, checksum); i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void record_make(struct record *r, uint64_t run, uint64_t seq)
{
	r->magic = REC_MAGIC;
	r->run = run;
	r->seq = seq;
	for (unsigned i = 0; i < 60; i++)
		r->payload[i] = mix(run ^ seq, i);
	r->checksum = checksum(r);
}

static int fd;
static uint64_t run;
static struct record *rec, *back;

static void fail(const char *what, uint64_t seq)
{
	printf("ftdisklog: ERROR %s (sector %" PRIu64 ")\n", what, seq);
	fflush(stdout);
	exit(1);
}

static void read_sector(uint64_t seq)
{
	if (pread(fd, back, REC_BYTES, (off_t)(seq * REC_BYTES)) != REC_BYTES)
		fail(strerror(errno), seq);
}

/* Sector seq holds record seq of this run, intact. */
static void verify(uint64_t seq, const char *when)
{
	char what[128];
	read_sector(seq);
	if (back->magic == REC_MAGIC && back->run == run && back->seq == seq &&
	    back->checksum == checksum(back))
		return;
	snprintf(what, sizeof(what), "record %" PRIu64 " does not read back %s", seq, when);
	fail(what, seq);
}

static void sleep_until(struct timespec *next, long rate)
{
	next->tv_nsec += 1000000000L / rate;
	while (next->tv_nsec >= 1000000000L) {
		next->tv_sec++;
		next->tv_nsec -= 1000000000L;
	}
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: ftdisklog DEV HOST PORT [PER_SECOND]\n");
		return 2;
	}
	struct sockaddr_in to = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)atoi(argv[3])) };
	if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) {
		fprintf(stderr, "ftdisklog: bad address %s\n", argv[2]);
		return 2;
	}
	long rate = argc > 4 ? atol(argv[4]) : 300;
	if (rate < 1)
		rate = 1;
	uint64_t bytes = 0;
	int sock = socket(AF_INET, SOCK_DGRAM, 0);
	fd = open(argv[1], O_RDWR | O_DIRECT | O_DSYNC);
	if (sock < 0 || fd < 0 || ioctl(fd, BLKGETSIZE64, &bytes) ||
	    posix_memalign((void **)&rec, 4096, REC_BYTES) ||
	    posix_memalign((void **)&back, 4096, REC_BYTES)) {
		perror("ftdisklog: setup");
		return 1;
	}
	if (getrandom(&run, sizeof(run), 0) != sizeof(run))
		run = (uint64_t)time(NULL);
	uint64_t records = bytes / REC_BYTES;
	printf("ftdisklog: %s: %" PRIu64 " records, run 0x%016" PRIx64 "\n", argv[1],
	       records, run);
	fflush(stdout);
	struct timespec next, report;
	clock_gettime(CLOCK_MONOTONIC, &next);
	report = next;
	for (uint64_t seq = 0; seq < records; seq++) {
		read_sector(seq);
		if (back->magic == REC_MAGIC && back->run == run)
			fail("the disk is ahead of memory: a record of this run is there "
			     "before it was written", seq);
		record_make(rec, run, seq);
		if (pwrite(fd, rec, REC_BYTES, (off_t)(seq * REC_BYTES)) != REC_BYTES)
			fail(strerror(errno), seq);
		verify(seq, "right after its write");
		if (seq % 16 == 15) {
			verify(seq / 2, "later");
			verify(seq - 15, "later");
		}
		char msg[64];
		int n = snprintf(msg, sizeof(msg), "ftdisklog %" PRIu64 "\n", seq + 1);
		sendto(sock, msg, (size_t)n, 0, (struct sockaddr *)&to, sizeof(to));
		if (next.tv_sec > report.tv_sec) {
			printf("ftdisklog: seq %" PRIu64 "\n", seq);
			fflush(stdout);
			report = next;
		}
		sleep_until(&next, rate);
	}
	printf("ftdisklog: wrote %" PRIu64 " records (device full)\n", records);
	return 0;
}
