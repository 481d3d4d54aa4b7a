/*
 * ferry-img - prepare and look at ferry's disk images (raw files) without
 * any QEMU tool:
 *
 *   ferry-img create PATH SIZE      a new sparse image (SIZE: 512-byte
 *                                   multiple, suffix K, M, G or T: binary)
 *   ferry-img info PATH             size, allocated bytes and blocks, data
 *                                   extents, lock and who holds it
 *   ferry-img check PATH            is it usable by ferry-vm: readable to
 *                                   the end, a whole number of sectors, raw
 *   --json                          one JSON document instead of text
 *
 * Locks: ferry-vm holds an OFD lock on every image it runs (backend/
 * disk.c). F_OFD_GETLK says a lock is there and whether it is a writer's,
 * but an OFD lock has no owner process (l_pid is -1), so the holder is
 * found the way lslocks does: each process's /proc/PID/fdinfo lists the
 * locks held through that descriptor, by device and inode. A holder in
 * another PID namespace or hidden by permissions is not found; then only
 * "locked" is said, with no pid, rather than a guess.
 *
 * Exit status: 0 done (check: no problem), 1 failed or problems found,
 * 2 bad usage.
 */
#include "backend/disk.h"
#include "storage/copy.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SECTOR 512
#define MAX_HOLDERS 16
#define CHECK_CHUNK (1u << 20)

static bool json_out;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-img [--json] create PATH SIZE   a new sparse raw image\n"
		"       ferry-img [--json] info PATH          size, allocation, lock holder\n"
		"       ferry-img [--json] check PATH         can ferry-vm use it\n"
		"SIZE is bytes, or a number with K, M, G or T (powers of 1024); a multiple\n"
		"of 512. Exit status: 0 ok, 1 failed (or problems found), 2 bad usage.\n");
}

static int bad_usage(const char *fmt, const char *what)
{
	fprintf(stderr, "ferry-img: ");
	fprintf(stderr, fmt, what);
	fprintf(stderr, " (see ferry-img --help)\n");
	return 2;
}

static int print_json(json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	printf("%s\n", s ? s : "{}");
	free(s);
	json_decref(doc);
	return 0;
}

/* A failure: one line on stderr, or {"error": ...} with --json. */
static int fail(const char *msg)
{
	if (json_out)
		print_json(json_pack("{s:s}", "error", msg));
	else
		fprintf(stderr, "ferry-img: %s\n", msg);
	return 1;
}

/* ---- create ------------------------------------------------------------------ */

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!isdigit((unsigned char)s[0]))
		return -1;
	unsigned long long v = strtoull(s, &end, 10);
	unsigned shift = 0;
	switch (toupper((unsigned char)*end)) {
	case 0: break;
	case 'K': shift = 10; break;
	case 'M': shift = 20; break;
	case 'G': shift = 30; break;
	case 'T': shift = 40; break;
	default: return -1;
	}
	if (*end && strcmp(end + 1, "") && strcasecmp(end + 1, "iB") && strcasecmp(end + 1, "B"))
		return -1;
	if (errno || v == 0 || v > (UINT64_MAX >> 1) >> shift)
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static int cmd_create(const char *path, const char *size_arg)
{
	uint64_t size;
	if (parse_size(size_arg, &size))
		return bad_usage("bad SIZE '%s': want a number of bytes, or one with K, M, G "
				 "or T", size_arg);
	if (size % SECTOR)
		return bad_usage("SIZE %s is not a multiple of 512 bytes (a sector)", size_arg);
	struct disk d;
	char err[512];
	mode_t mask = umask(0);
	umask(mask);
	if (disk_create(&d, path, size, 0666 & ~mask, NULL, err, sizeof(err)))
		return fail(err);
	int ret = disk_flush(&d);
	disk_close(&d);
	if (ret) {
		snprintf(err, sizeof(err), "disk %s: cannot flush: %s", path, strerror(errno));
		unlink(path);
		return fail(err);
	}
	if (json_out)
		return print_json(json_pack("{s:s, s:I, s:I}", "path", path,
					    "size", (json_int_t)size, "allocated_bytes", 0));
	printf("created %s: %" PRIu64 " bytes, sparse\n", path, size);
	return 0;
}

/* ---- looking at an image ----------------------------------------------------- */

struct holder {
	long pid;
	char comm[64];
	bool write;
};

struct image {
	const char *path;
	struct stat st;
	bool is_link;
	uint64_t size, allocated, data_bytes, extents;
	int lock;               /* F_UNLCK, F_RDLCK, F_WRLCK, or -1 unknown */
	struct holder holders[MAX_HOLDERS];
	unsigned nholders;
	const char *format;     /* "raw" or a foreign format's name */
};

static void read_comm(long pid, char *out, size_t len)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%ld/comm", pid);
	FILE *f = fopen(p, "r");
	out[0] = 0;
	if (f) {
		if (fgets(out, (int)len, f))
			out[strcspn(out, "\n")] = 0;
		fclose(f);
	}
}

/* Does /proc/PID/fdinfo/FD list a lock on our device and inode? 1 write
 * lock, 2 read lock, 0 none. Lines look like
 * "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10953591 0 EOF". */
static int fdinfo_lock(const char *file, const struct stat *st)
{
	FILE *f = fopen(file, "r");
	if (!f)
		return 0;
	char line[256], want[64];
	snprintf(want, sizeof(want), " %02x:%02x:%ju ", major(st->st_dev), minor(st->st_dev),
		 (uintmax_t)st->st_ino);
	int found = 0;
	while (!found && fgets(line, sizeof(line), f))
		if (!strncmp(line, "lock:", 5) && strstr(line, want))
			found = strstr(line, " WRITE ") ? 1 : 2;
	fclose(f);
	return found;
}

static void find_holders(struct image *im)
{
	DIR *proc = opendir("/proc");
	if (!proc)
		return;
	struct dirent *p;
	while ((p = readdir(proc)) && im->nholders < MAX_HOLDERS) {
		char *end;
		long pid = strtol(p->d_name, &end, 10);
		if (*end || pid <= 0)
			continue;
		char dir[64];
		snprintf(dir, sizeof(dir), "/proc/%ld/fdinfo", pid);
		DIR *fds = opendir(dir);
		if (!fds)
			continue;
		struct dirent *fd;
		while ((fd = readdir(fds))) {
			if (fd->d_name[0] == '.')
				continue;
			char file[350];
			snprintf(file, sizeof(file), "%s/%s", dir, fd->d_name);
			int kind = fdinfo_lock(file, &im->st);
			if (kind) {
				struct holder *h = &im->holders[im->nholders++];
				h->pid = pid;
				h->write = kind == 1;
				read_comm(pid, h->comm, sizeof(h->comm));
				break;
			}
		}
		closedir(fds);
	}
	closedir(proc);
}

static const char *foreign_format(int fd)
{
	unsigned char m[8] = { 0 };
	if (pread(fd, m, sizeof(m), 0) != (ssize_t)sizeof(m))
		return "raw";
	if (!memcmp(m, "QFI\xfb", 4))
		return "qcow2";
	if (!memcmp(m, "KDMV", 4))
		return "vmdk";
	if (!memcmp(m, "vhdxfile", 8))
		return "vhdx";
	if (!memcmp(m, "conectix", 8))
		return "vhd";
	return "raw";
}

/* Fill im from path; 0, or -1 with err. fd is left open for check. */
static int inspect(struct image *im, const char *path, int *fd, char *err, size_t errlen)
{
	memset(im, 0, sizeof(*im));
	im->path = path;
	struct stat lst;
	if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode))
		im->is_link = true;
	/* O_NONBLOCK: a FIFO is refused below, not waited on */
	*fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (*fd < 0 || fstat(*fd, &im->st)) {
		snprintf(err, errlen, "disk %s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISREG(im->st.st_mode)) {
		im->size = (uint64_t)im->st.st_size;
		im->allocated = (uint64_t)im->st.st_blocks * 512;
		im->data_bytes = copy_data_bytes(*fd, im->size);
		uint64_t off = 0;
		off_t d;
		while (off < im->size && (d = lseek(*fd, (off_t)off, SEEK_DATA)) >= 0) {
			off_t h = lseek(*fd, d, SEEK_HOLE);
			im->extents++;
			off = h > d ? (uint64_t)h : im->size;
		}
	} else {
		snprintf(err, errlen, "disk %s: not a regular file (ferry-img looks at image "
			 "files)", path);
		return -1;
	}
	im->lock = disk_lock_state(path);
	if (im->lock == F_RDLCK || im->lock == F_WRLCK)
		find_holders(im);
	im->format = foreign_format(*fd);
	return 0;
}

static const char *lock_name(int lock)
{
	return lock == F_WRLCK ? "write" : lock == F_RDLCK ? "read" :
	       lock == F_UNLCK ? "none" : "unknown";
}

static json_t *image_json(const struct image *im)
{
	json_t *holders = json_array();
	for (unsigned i = 0; i < im->nholders; i++)
		json_array_append_new(holders, json_pack("{s:I, s:s, s:s}",
			"pid", (json_int_t)im->holders[i].pid, "command", im->holders[i].comm,
			"lock", im->holders[i].write ? "write" : "read"));
	return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:o}",
		"path", im->path, "format", im->format, "size", (json_int_t)im->size,
		"allocated_bytes", (json_int_t)im->allocated,
		"allocated_blocks", (json_int_t)(im->allocated / 512),
		"data_bytes", (json_int_t)im->data_bytes,
		"data_extents", (json_int_t)im->extents, "lock", lock_name(im->lock),
		"holders", holders);
}

static void print_lock(const struct image *im)
{
	if (im->lock == F_UNLCK) {
		printf("lock:            none (no ferry-vm uses it)\n");
		return;
	}
	printf("lock:            %s (%s)\n", lock_name(im->lock),
	       im->lock == F_WRLCK ? "a running VM writes it" : "read-only users");
	for (unsigned i = 0; i < im->nholders; i++)
		printf("held by:         pid %ld (%s)\n", im->holders[i].pid,
		       im->holders[i].comm);
	if (im->lock >= 0 && im->nholders == 0)
		printf("held by:         a process not visible here (another PID namespace, "
		       "or no permission to read its /proc)\n");
}

static int cmd_info(const char *path)
{
	struct image im;
	char err[512];
	int fd;
	if (inspect(&im, path, &fd, err, sizeof(err))) {
		if (fd >= 0)
			close(fd);
		return fail(err);
	}
	close(fd);
	if (json_out)
		return print_json(image_json(&im));
	printf("image:           %s%s\n", path, im.is_link ? " (through a symlink)" : "");
	printf("format:          %s\n", im.format);
	printf("size:            %" PRIu64 " bytes (%.1f MiB)\n", im.size, im.size / 1048576.0);
	printf("allocated:       %" PRIu64 " bytes in %" PRIu64 " 512-byte blocks (%.1f%%)\n",
	       im.allocated, im.allocated / 512,
	       im.size ? 100.0 * (double)im.allocated / (double)im.size : 0.0);
	printf("data:            %" PRIu64 " bytes in %" PRIu64 " extents\n", im.data_bytes,
	       im.extents);
	print_lock(&im);
	return 0;
}

/* ---- check ------------------------------------------------------------------- */

static void problem(json_t *list, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(json_t *list, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_array_append_new(list, json_string(msg));
}

/* Read every data extent; the first I/O error is a problem. */
static uint64_t read_all(int fd, uint64_t size, json_t *problems)
{
	char *buf = malloc(CHECK_CHUNK);
	uint64_t off = 0, read_bytes = 0;
	off_t d;
	while (buf && off < size) {
		d = lseek(fd, (off_t)off, SEEK_DATA);
		if (d < 0)
			break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		uint64_t end = h > d && (uint64_t)h < size ? (uint64_t)h : size;
		for (uint64_t at = (uint64_t)d; at < end; ) {
			size_t want = end - at < CHECK_CHUNK ? (size_t)(end - at) : CHECK_CHUNK;
			ssize_t n = pread(fd, buf, want, (off_t)at);
			if (n <= 0) {
				problem(problems, "cannot read at byte %" PRIu64 ": %s", at,
					n < 0 ? strerror(errno) : "unexpected end of file");
				free(buf);
				return read_bytes;
			}
			at += (uint64_t)n;
			read_bytes += (uint64_t)n;
		}
		off = end;
	}
	free(buf);
	return read_bytes;
}

static int cmd_check(const char *path)
{
	struct image im;
	char err[512];
	int fd;
	if (inspect(&im, path, &fd, err, sizeof(err))) {
		if (fd >= 0)
			close(fd);
		return fail(err);
	}
	json_t *problems = json_array(), *notes = json_array();
	if (strcmp(im.format, "raw"))
		problem(problems, "this is a %s image; ferry-vm runs raw images only (convert "
			"it to raw first)", im.format);
	if (im.size < SECTOR)
		problem(problems, "smaller than one sector: the guest sees an empty disk");
	else if (im.size % SECTOR)
		problem(problems, "%" PRIu64 " bytes is not a whole number of 512-byte sectors: "
			"the guest does not see the last %" PRIu64 " bytes", im.size,
			im.size % SECTOR);
	if (access(path, W_OK))
		problem(notes, "not writable by this user: usable only as --disk %s,ro", path);
	if (im.is_link)
		problem(notes, "a symlink: ferry-vm takes it only as --disk %s,follow=on (or "
			"give the real path); disk-move and migration checks name the real path",
			path);
	if (im.lock == F_WRLCK)
		problem(notes, "in use by a running VM (write lock): a copy of it now would not "
			"be consistent");
	uint64_t read_bytes = read_all(fd, im.size, problems);
	close(fd);
	bool ok = json_array_size(problems) == 0;
	if (json_out) {
		json_t *doc = image_json(&im);
		json_object_set_new(doc, "ok", json_boolean(ok));
		json_object_set_new(doc, "read_bytes", json_integer((json_int_t)read_bytes));
		json_object_set_new(doc, "problems", problems);
		json_object_set_new(doc, "notes", notes);
		print_json(doc);
		return ok ? 0 : 1;
	}
	size_t i;
	json_t *v;
	json_array_foreach(problems, i, v)
		printf("problem: %s\n", json_string_value(v));
	json_array_foreach(notes, i, v)
		printf("note: %s\n", json_string_value(v));
	printf("%s: %s (%" PRIu64 " bytes of data read)\n", path,
	       ok ? "ok" : "not usable", read_bytes);
	json_decref(problems);
	json_decref(notes);
	return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--json"))
			json_out = true;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--version")) {
			printf("ferry-img %s\n", FERRY_VERSION);
			return 0;
		} else
			return bad_usage("unknown option '%s'", argv[i]);
	}
	/* --json may also come last */
	if (argc > i && !strcmp(argv[argc - 1], "--json")) {
		json_out = true;
		argc--;
	}
	if (i >= argc)
		return bad_usage("%s", "a command is required: create, info or check");
	const char *cmd = argv[i++];
	int nargs = argc - i;
	if (!strcmp(cmd, "create")) {
		if (nargs != 2)
			return bad_usage("%s", "create takes PATH SIZE");
		return cmd_create(argv[i], argv[i + 1]);
	}
	if (!strcmp(cmd, "info") || !strcmp(cmd, "check")) {
		if (nargs != 1)
			return bad_usage("%s takes one PATH", cmd);
		return cmd[0] == 'i' ? cmd_info(argv[i]) : cmd_check(argv[i]);
	}
	return bad_usage("unknown command '%s': want create, info or check", cmd);
}
