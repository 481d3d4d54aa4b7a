/*
 * ft.c - "ferry test": a small multi-call tool for what tests do in a guest
 * that has no shell.
 *
 *   ft mount DEV DIR FSTYPE [DATA]   ft umount DIR        ft sync
 *   ft writefile PATH MIB SEED       ft checkfile PATH MIB SEED
 *   ft sleep SECONDS   ft cat PATH   ft echo WORDS...     ft true   ft false
 *   ft disklog DEV [--count N] [--rate RECORDS_PER_S]    ft disklog-check DEV
 *
 * writefile/checkfile: word i (8 bytes, little endian) of the file is
 * ft_mix(SEED, i), so the content is pseudo-random, deterministic and
 * position-dependent. checkfile prints "ok" or the first bad offset and
 * exits 1.
 *
 * disklog writes 512-byte records to a raw block device, record k at sector
 * k, each with a magic, a run id (new every run), the sequence number k, a
 * payload derived from both, and a checksum; writes are O_DIRECT|O_DSYNC,
 * so a record counts as written only once the device has acknowledged it.
 * Every second it prints "ft: disklog: seq K" for the last acknowledged
 * record. It stops at --count, or when the device is full. disklog-check
 * reads the device back: the records of the run found at sector 0 must be
 * sectors 0..N-1 in order and intact, and no record of that run may appear
 * after the first sector that is not one (a gap). It prints
 * "ft: disklog-check: N records ok" or what is wrong and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define IO_BYTES	65536
#define REC_BYTES	512
#define REC_MAGIC	0x474f4c5952524546ull	/* "FERRYLOG" little endian */
#define SCAN_BYTES	(1u << 20)

struct ft_record {
	uint64_t magic;
	uint64_t run;
	uint64_t seq;
	uint64_t payload[60];
	uint64_t checksum;
};

_Static_assert(sizeof(struct ft_record) == REC_BYTES, "record is one sector");

static uint64_t ft_mix(uint64_t seed, uint64_t index)
{
	uint64_t x = seed ^ (index * 0x9e3779b97f4a7c15ull);

	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static double ft_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ft_sleep_for(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int ft_error(const char *what, const char *on)
{
	fprintf(stderr, "ft: %s %s: %s\n", what, on, strerror(errno));
	return 1;
}

static bool ft_u64(const char *name, const char *text, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(text, &end, 0);
	if (errno || end == text || *end || text[0] == '-') {
		fprintf(stderr, "ft: bad %s '%s': want a non-negative integer\n",
			name, text);
		return false;
	}
	return true;
}

static bool ft_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= n;
	}
	return true;
}

/* Fill buf with the file pattern for bytes [off, off + len), off 8-aligned. */
static void ft_pattern(uint64_t seed, uint64_t off, uint64_t *buf, size_t len)
{
	for (size_t i = 0; i < len / 8; i++)
		buf[i] = ft_mix(seed, off / 8 + i);
}

static int ft_writefile(const char *path, uint64_t mib, uint64_t seed)
{
	static uint64_t buf[IO_BYTES / 8];
	uint64_t total = mib << 20;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		return ft_error("cannot create", path);
	for (uint64_t off = 0; off < total; off += IO_BYTES) {
		ft_pattern(seed, off, buf, IO_BYTES);
		if (!ft_write_all(fd, buf, IO_BYTES)) {
			close(fd);
			return ft_error("cannot write", path);
		}
	}
	if (fsync(fd) < 0 || close(fd) < 0)
		return ft_error("cannot flush", path);
	printf("ok\n");
	return 0;
}

static ssize_t ft_read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		got += n;
	}
	return got;
}

static uint64_t ft_first_diff(const void *a, const void *b, size_t len)
{
	const unsigned char *x = a, *y = b;
	size_t i = 0;

	while (i < len && x[i] == y[i])
		i++;
	return i;
}

static int ft_checkfile(const char *path, uint64_t mib, uint64_t seed)
{
	static uint64_t want[IO_BYTES / 8], got[IO_BYTES / 8];
	uint64_t total = mib << 20;
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		return ft_error("cannot open", path);
	for (uint64_t off = 0; off < total; off += IO_BYTES) {
		ssize_t n = ft_read_full(fd, got, IO_BYTES);

		if (n < 0)
			return ft_error("cannot read", path);
		ft_pattern(seed, off, want, IO_BYTES);
		if (n < IO_BYTES || memcmp(got, want, IO_BYTES)) {
			uint64_t bad = off + ft_first_diff(got, want, n);

			printf("ft: checkfile %s: bad data at offset %" PRIu64 "%s\n",
			       path, bad, bad == off + (uint64_t)n ? " (file too short)" : "");
			return 1;
		}
	}
	close(fd);
	if ((uint64_t)st.st_size != total) {
		printf("ft: checkfile %s: bad data at offset %" PRIu64
		       " (file is %jd bytes, want %" PRIu64 ")\n",
		       path, total, (intmax_t)st.st_size, total);
		return 1;
	}
	printf("ok\n");
	return 0;
}

static int ft_cat(const char *path)
{
	static char buf[IO_BYTES];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return ft_error("cannot open", path);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (!ft_write_all(STDOUT_FILENO, buf, n))
			return ft_error("cannot write", "stdout");
	if (n < 0)
		return ft_error("cannot read", path);
	close(fd);
	return 0;
}

static int ft_mount(const char *dev, const char *dir, const char *type,
		    const char *data)
{
	mkdir(dir, 0755);
	if (mount(dev, dir, type, 0, data) < 0) {
		fprintf(stderr, "ft: cannot mount %s on %s as %s: %s\n", dev, dir,
			type, strerror(errno));
		return 1;
	}
	return 0;
}

/* --- disklog ---------------------------------------------------------- */

static uint64_t ft_checksum(const struct ft_record *r)
{
	const unsigned char *p = (const unsigned char *)r;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < offsetof(struct ft_record, checksum); i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void ft_record_make(struct ft_record *r, uint64_t run, uint64_t seq)
{
	r->magic = REC_MAGIC;
	r->run = run;
	r->seq = seq;
	for (unsigned i = 0; i < 60; i++)
		r->payload[i] = ft_mix(run ^ seq, i);
	r->checksum = ft_checksum(r);
}

/* Open a block device for direct I/O, falling back to buffered + sync. */
static int ft_open_dev(const char *dev, int flags, bool *direct)
{
	int fd = open(dev, flags | O_DIRECT);

	*direct = fd >= 0;
	if (fd < 0 && errno == EINVAL)
		fd = open(dev, flags);
	return fd;
}

static uint64_t ft_dev_bytes(int fd)
{
	uint64_t bytes = 0;
	struct stat st;

	if (ioctl(fd, BLKGETSIZE64, &bytes) == 0)
		return bytes;
	if (fstat(fd, &st) == 0)
		return st.st_size;
	return 0;
}

static bool ft_disklog_args(int argc, char **argv, uint64_t *count, double *rate)
{
	for (int i = 0; i < argc; i += 2) {
		uint64_t v;

		if (i + 1 >= argc || (strcmp(argv[i], "--count") && strcmp(argv[i], "--rate"))) {
			fprintf(stderr, "ft: disklog: unexpected '%s': want --count N or --rate N\n",
				argv[i]);
			return false;
		}
		if (!ft_u64(argv[i], argv[i + 1], &v))
			return false;
		if (!strcmp(argv[i], "--count"))
			*count = v;
		else
			*rate = v;
	}
	return true;
}

static int ft_disklog(const char *dev, int argc, char **argv)
{
	struct ft_record *rec;
	uint64_t count = 0, records, run, seq;
	double rate = 0, start, next_report;
	bool direct;
	int fd;

	if (!ft_disklog_args(argc, argv, &count, &rate))
		return 2;
	fd = ft_open_dev(dev, O_WRONLY | O_DSYNC, &direct);
	if (fd < 0)
		return ft_error("disklog: cannot open", dev);
	records = ft_dev_bytes(fd) / REC_BYTES;
	if (count == 0 || count > records)
		count = records;
	if (getrandom(&run, sizeof(run), 0) != sizeof(run))
		run = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (posix_memalign((void **)&rec, 4096, REC_BYTES))
		return ft_error("disklog: out of memory for", dev);
	printf("ft: disklog: %s: %" PRIu64 " records, run 0x%016" PRIx64 "%s\n", dev,
	       count, run, direct ? "" : " (no O_DIRECT)");
	fflush(stdout);
	start = ft_now();
	next_report = start + 1;
	for (seq = 0; seq < count; seq++) {
		ft_record_make(rec, run, seq);
		if (pwrite(fd, rec, REC_BYTES, seq * REC_BYTES) != REC_BYTES ||
		    (!direct && fdatasync(fd) < 0)) {
			fprintf(stderr, "ft: disklog: write of seq %" PRIu64 " to %s failed: %s\n",
				seq, dev, strerror(errno));
			return 1;
		}
		if (ft_now() >= next_report) {
			printf("ft: disklog: seq %" PRIu64 "\n", seq);
			fflush(stdout);
			next_report += 1;
		}
		if (rate > 0 && start + (seq + 1) / rate > ft_now())
			ft_sleep_for(start + (seq + 1) / rate - ft_now());
	}
	printf("ft: disklog: seq %" PRIu64 "\n", count ? count - 1 : 0);
	printf("ft: disklog: wrote %" PRIu64 " records%s\n", count,
	       count == records ? " (device full)" : "");
	close(fd);
	return 0;
}

enum ft_rec_state { REC_OURS, REC_FOREIGN, REC_BAD };

static enum ft_rec_state ft_record_judge(const struct ft_record *r, uint64_t run,
					 uint64_t seq)
{
	if (r->magic != REC_MAGIC || r->run != run)
		return REC_FOREIGN;
	if (r->seq != seq || r->checksum != ft_checksum(r))
		return REC_BAD;
	return REC_OURS;
}

static int ft_disklog_check(const char *dev)
{
	uint64_t bytes, sectors, count = 0, run = 0;
	bool direct, ended = false;
	char *buf;
	int fd = ft_open_dev(dev, O_RDONLY, &direct);

	if (fd < 0)
		return ft_error("disklog-check: cannot open", dev);
	bytes = ft_dev_bytes(fd);
	sectors = bytes / REC_BYTES;
	if (posix_memalign((void **)&buf, 4096, SCAN_BYTES))
		return ft_error("disklog-check: out of memory for", dev);
	for (uint64_t at = 0; at < sectors; at += SCAN_BYTES / REC_BYTES) {
		size_t want = bytes - at * REC_BYTES < SCAN_BYTES ?
			      (sectors - at) * REC_BYTES : SCAN_BYTES;

		if (pread(fd, buf, want, at * REC_BYTES) != (ssize_t)want)
			return ft_error("disklog-check: cannot read", dev);
		for (size_t i = 0; i < want / REC_BYTES; i++) {
			const struct ft_record *r = (void *)(buf + i * REC_BYTES);
			uint64_t s = at + i;

			if (s == 0) {
				if (r->magic != REC_MAGIC) {
					printf("ft: disklog-check: %s: no log at sector 0\n", dev);
					return 1;
				}
				run = r->run;
			}
			switch (ft_record_judge(r, run, ended ? r->seq : s)) {
			case REC_FOREIGN:
				ended = true;
				break;
			case REC_BAD:
				printf("ft: disklog-check: %s: sector %" PRIu64 " holds %s\n",
				       dev, s, r->seq != s ? "a record out of order" :
				       "a corrupt record (bad checksum)");
				return 1;
			case REC_OURS:
				if (ended) {
					printf("ft: disklog-check: %s: gap: the log ends at sector %"
					       PRIu64 " but sector %" PRIu64 " holds seq %" PRIu64 "\n",
					       dev, count, s, r->seq);
					return 1;
				}
				count++;
			}
		}
	}
	close(fd);
	printf("ft: disklog-check: %" PRIu64 " records ok\n", count);
	return 0;
}

/* --- dispatch --------------------------------------------------------- */

static int ft_usage(void)
{
	fprintf(stderr,
		"usage: ft mount DEV DIR FSTYPE [DATA] | umount DIR | sync\n"
		"          | writefile PATH MIB SEED | checkfile PATH MIB SEED\n"
		"          | sleep SECONDS | clock SECONDS | cat PATH | echo WORDS...\n"
		"          | true | false\n"
		"          | disklog DEV [--count N] [--rate N] | disklog-check DEV\n");
	return 2;
}

static int ft_file_cmd(bool check, char **argv)
{
	uint64_t mib, seed;

	if (!ft_u64("MIB", argv[1], &mib) || !ft_u64("SEED", argv[2], &seed))
		return 2;
	return check ? ft_checkfile(argv[0], mib, seed) : ft_writefile(argv[0], mib, seed);
}

static int ft_sleep(const char *text)
{
	char *end;
	double s = strtod(text, &end);

	if (end == text || *end || s < 0) {
		fprintf(stderr, "ft: bad SECONDS '%s'\n", text);
		return 2;
	}
	ft_sleep_for(s);
	return 0;
}

/* ft clock SECONDS: watch CLOCK_MONOTONIC and CLOCK_REALTIME every 10 ms;
 * a step backwards is an error. Prints the largest forward step, which is
 * the guest-visible pause (a live migration's downtime, say). */
static int ft_clock(const char *text)
{
	char *end;
	double secs = strtod(text, &end);
	if (end == text || *end || secs <= 0) {
		fprintf(stderr, "ft: bad SECONDS '%s'\n", text);
		return 2;
	}
	struct timespec m0, r0, m, r;
	clock_gettime(CLOCK_MONOTONIC, &m0);
	clock_gettime(CLOCK_REALTIME, &r0);
	int64_t start = m0.tv_sec * 1000000000LL + m0.tv_nsec, last = start;
	int64_t last_real = r0.tv_sec * 1000000000LL + r0.tv_nsec, max_step = 0;
	long next_report = 1;
	for (;;) {
		ft_sleep_for(0.01);
		clock_gettime(CLOCK_MONOTONIC, &m);
		clock_gettime(CLOCK_REALTIME, &r);
		int64_t now = m.tv_sec * 1000000000LL + m.tv_nsec;
		int64_t real = r.tv_sec * 1000000000LL + r.tv_nsec;
		if (now < last || real < last_real) {
			printf("ft: clock went backwards: monotonic %+" PRId64 " ns, "
			       "realtime %+" PRId64 " ns\n", now - last, real - last_real);
			return 1;
		}
		if (now - last > max_step)
			max_step = now - last;
		last = now;
		last_real = real;
		if ((now - start) / 1000000000LL >= next_report) {
			printf("ft: clock ok at %ld s, largest step %" PRId64 " ms\n",
			       next_report, max_step / 1000000);
			next_report++;
		}
		if (now - start >= (int64_t)(secs * 1e9))
			return 0;
	}
}

static int ft_echo(int argc, char **argv)
{
	for (int i = 0; i < argc; i++)
		printf("%s%s", i ? " " : "", argv[i]);
	printf("\n");
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";
	int n = argc - 2;
	char **args = argv + 2;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(cmd, "mount") && (n == 3 || n == 4))
		return ft_mount(args[0], args[1], args[2], n == 4 ? args[3] : NULL);
	if (!strcmp(cmd, "umount") && n == 1)
		return umount(args[0]) < 0 ? ft_error("cannot unmount", args[0]) : 0;
	if (!strcmp(cmd, "writefile") && n == 3)
		return ft_file_cmd(false, args);
	if (!strcmp(cmd, "checkfile") && n == 3)
		return ft_file_cmd(true, args);
	if (!strcmp(cmd, "sync") && n == 0)
		return sync(), 0;
	if (!strcmp(cmd, "clock") && n == 1)
		return ft_clock(args[0]);
	if (!strcmp(cmd, "sleep") && n == 1)
		return ft_sleep(args[0]);
	if (!strcmp(cmd, "cat") && n == 1)
		return ft_cat(args[0]);
	if (!strcmp(cmd, "echo"))
		return ft_echo(n, args);
	if (!strcmp(cmd, "disklog") && n >= 1)
		return ft_disklog(args[0], n - 1, args + 1);
	if (!strcmp(cmd, "disklog-check") && n == 1)
		return ft_disklog_check(args[0]);
	if (!strcmp(cmd, "true") && n == 0)
		return 0;
	if (!strcmp(cmd, "false") && n == 0)
		return 1;
	return ft_usage();
}
