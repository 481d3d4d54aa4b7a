/*
 * iolat.c - a guest program for bench/diskmove.py: writes to a raw block
 * device at a steady rate and reports how long each write took, so that a
 * pause of the guest's disk I/O (a storage move's switch) shows as the
 * longest write.
 *
 *   iolat DEV [--rate WRITES_PER_S] [--bytes N] [--span MIB]
 *
 * Each write is N bytes (default 65536) at a pseudo-random N-aligned offset
 * in the first --span MiB of DEV (default: all of it), O_DIRECT|O_DSYNC, so
 * it counts only once the device acknowledged it. Once a second it prints
 *   iolat: t=SECONDS writes=K max_ms=X
 * for the writes that ended in that second (t by CLOCK_MONOTONIC from the
 * start). It runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	double d = t - now();
	if (d <= 0)
		return;
	struct timespec ts = { (time_t)d, (long)((d - (time_t)d) * 1e9) };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	double rate = 160;
	size_t bytes = 65536;
	uint64_t span = 0;
	if (argc < 2) {
		fprintf(stderr, "usage: iolat DEV [--rate N] [--bytes N] [--span MIB]\n");
		return 2;
	}
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--rate"))
			rate = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--bytes"))
			bytes = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--span"))
			span = strtoull(argv[i + 1], NULL, 10) << 20;
	}
	int fd = open(argv[1], O_WRONLY | O_DIRECT | O_DSYNC);
	uint64_t size = 0;
	if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) || size < bytes || bytes % 512 ||
	    rate <= 0) {
		fprintf(stderr, "iolat: cannot use %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (span == 0 || span > size)
		span = size;
	uint64_t slots = span / bytes, x = 0x9e3779b97f4a7c15ull;
	void *buf;
	if (posix_memalign(&buf, 4096, bytes))
		return 1;
	memset(buf, 0x5a, bytes);
	printf("iolat: start %s rate %.0f bytes %zu span %llu\n", argv[1], rate, bytes,
	       (unsigned long long)span);
	fflush(stdout);
	double start = now(), next_report = start + 1, worst = 0;
	unsigned long n = 0, in_second = 0;
	for (;;) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		double t0 = now();
		if (pwrite(fd, buf, bytes, (off_t)((x % slots) * bytes)) != (ssize_t)bytes) {
			printf("iolat: write failed: %s\n", strerror(errno));
			return 1;
		}
		double t1 = now(), ms = (t1 - t0) * 1000;
		if (ms > worst)
			worst = ms;
		in_second++;
		n++;
		if (t1 >= next_report) {
			printf("iolat: t=%.0f writes=%lu max_ms=%.1f\n", next_report - start,
			       in_second, worst);
			fflush(stdout);
			worst = 0;
			in_second = 0;
			next_report += 1;
		}
		sleep_until(start + n / rate);
	}
}
