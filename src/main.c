/*
 * main.c - ferry-vm: one process, one virtual machine.
 *
 * Parses the command line (the contract in DESIGN.md), builds the board
 * (RAM, harts, CLINT, PLIC, UART, virtio devices), loads the kernel or
 * waits for an incoming migration, serves the control socket, and ends
 * with the guest: status 0 on power-off or `quit`, 1 on a guest reset or
 * a failure, 2 on a bad argument.
 */
#include "backend/disk.h"
#include "util/beneath.h"
#include "machine/vm.h"
#include "machine/boot.h"
#include "machine/clint.h"
#include "machine/devices.h"
#include "migrate/channel.h"
#include "migrate/migrate.h"
#include "migrate/ft.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DISKS 4

struct options {
	struct boot_config boot;
	unsigned long mem_mib;
	unsigned smp;
	const char *disks[MAX_DISKS];
	bool disk_ro[MAX_DISKS];
	bool disk_follow[MAX_DISKS];
	const char *disk_beneath[MAX_DISKS];
	unsigned ndisks;
	const char *tap;
	bool tap_create;
	uint8_t mac[6];
	const char *control;
	const char *incoming;
	const char *console;
	const char *tls_creds;
	const char *ft_secondary;
	enum ft_takeover ft_takeover;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ferry-vm --kernel IMAGE [options]\n"
		"  --kernel IMAGE          RISC-V Linux Image to boot\n"
		"  --initrd FILE           initramfs\n"
		"  --append CMDLINE        kernel command line\n"
		"  --mem MiB               guest RAM (default 256)\n"
		"  --smp N                 harts, 1 to %d (default 1)\n"
		"  --disk PATH[,ro][,follow=on|,beneath=DIR]\n"
		"                          raw disk image (regular file or block device) on\n"
		"                          virtio-blk (repeatable); a symlink only with\n"
		"                          follow=on (e.g. /dev/disk/by-id/...); beneath=DIR:\n"
		"                          PATH must lie below DIR with no symlink below it\n"
		"                          (checked by the open itself)\n"
		"  --net tap=IF[,mac=MAC][,create=on]\n"
		"                          virtio-net on an existing TAP interface\n"
		"                          (create=on: create it if missing)\n"
		"  --control SOCKET        JSON control socket (QMP-style)\n"
		"  --incoming tcp:HOST:PORT[,secret-file=FILE] | file:PATH\n"
		"                          wait for a migration instead of booting\n"
		"  --ft-secondary tcp:HOST:PORT[,secret-file=FILE][,timeout-ms=N]\n"
		"                          be a fault-tolerance secondary: keep a primary's\n"
		"                          checkpoints, run the guest when it is lost\n"
		"  --ft-takeover manual|auto\n"
		"                          after losing the primary: wait for ft-takeover\n"
		"                          (default), or take over at once (only with fencing)\n"
		"  --tls-creds DIR         migrate over TLS 1.3 with DIR's certificates\n"
		"  --console stdio|none|FILE\n"
		"                          where the serial console goes (default stdio)\n"
		"  --help, --version\n"
		"environment: FERRY_CPU=jit|decoded|interp  the CPU's executor: the x86-64\n"
		"  JIT (default), the decoded executor alone, or the reference interpreter\n",
		MAX_HARTS);
}

static void bad_arg(const char *fmt, const char *what)
{
	fprintf(stderr, "ferry-vm: ");
	fprintf(stderr, fmt, what);
	fprintf(stderr, " (see ferry-vm --help)\n");
	exit(2);
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned v[6];
	char tail;
	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
		   &tail) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		mac[i] = (uint8_t)v[i];
	}
	return (mac[0] & 1) ? -1 : 0;   /* multicast is not a station address */
}

static void parse_net(struct options *o, char *arg)
{
	char *save = NULL;
	for (char *tok = strtok_r(arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strncmp(tok, "tap=", 4) && tok[4])
			o->tap = tok + 4;
		else if (!strcmp(tok, "create=on") || !strcmp(tok, "create=off"))
			o->tap_create = !strcmp(tok, "create=on");
		else if (!strncmp(tok, "mac=", 4)) {
			if (parse_mac(tok + 4, o->mac))
				bad_arg("--net: bad MAC address '%s'", tok + 4);
		} else
			bad_arg("--net: unknown option '%s' (want tap=IFNAME[,mac=MAC]"
				"[,create=on])", tok);
	}
	if (!o->tap)
		bad_arg("--net: %s", "tap=IFNAME is required");
}

/* --disk PATH[,ro][,follow=on|,beneath=DIR]: the path ends at the first
 * comma. */
static void parse_disk(struct options *o, char *arg)
{
	if (o->ndisks == MAX_DISKS)
		bad_arg("at most %s disks", "4");
	char *save = NULL, *opts = strchr(arg, ',');
	if (opts)
		*opts++ = 0;
	if (!*arg)
		bad_arg("--disk: %s", "empty path");
	for (char *tok = opts ? strtok_r(opts, ",", &save) : NULL; tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "ro"))
			o->disk_ro[o->ndisks] = true;
		else if (!strcmp(tok, "follow=on") || !strcmp(tok, "follow=off"))
			o->disk_follow[o->ndisks] = !strcmp(tok, "follow=on");
		else if (!strncmp(tok, "beneath=", 8) && tok[8])
			o->disk_beneath[o->ndisks] = tok + 8;
		else
			bad_arg("--disk: unknown option '%s' (want PATH[,ro][,follow=on|,beneath=DIR])",
				tok);
	}
	if (o->disk_beneath[o->ndisks] && o->disk_follow[o->ndisks])
		bad_arg("--disk %s: beneath= and follow=on exclude each other", arg);
	if (o->disk_beneath[o->ndisks] && !path_below(arg, o->disk_beneath[o->ndisks]))
		bad_arg("--disk %s: is not below its beneath= directory", arg);
	o->disks[o->ndisks++] = arg;
}

/* A disk path that names the wrong kind of thing is a bad argument; one
 * followed through a symlink is said, with where it leads. */
static void check_disk_path(const char *path, bool follow)
{
	char line[4200];
	const char *why = disk_path_refusal(path, follow);
	if (why) {
		snprintf(line, sizeof(line), "--disk %s: %s", path, why);
		bad_arg("%s", line);
	}
	struct stat st;
	char *real = follow && lstat(path, &st) == 0 && S_ISLNK(st.st_mode) ?
		     realpath(path, NULL) : NULL;
	if (real)
		fprintf(stderr, "ferry-vm: disk %s: follows the symlink to %s\n", path, real);
	free(real);
}

/* --console FILE is created or truncated, never through a symlink (a
 * root ferry-vm would truncate whatever it points to); a device or FIFO
 * is written as it is. */
static void check_console_path(const char *spec)
{
	struct stat st;
	if (strcmp(spec, "stdio") && strcmp(spec, "none") && lstat(spec, &st) == 0 &&
	    S_ISLNK(st.st_mode))
		bad_arg("--console %s: is a symlink: give the real path", spec);
}

static unsigned long parse_number(const char *s, const char *opt)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		bad_arg("%s needs a positive number", opt);
	return v;
}

/*
 * Long options only. Their values lie above any character, so that after
 * an error getopt's optopt tells them apart from a short option (-x): a
 * short one is named by optopt itself, because inside a cluster (-xy)
 * optind has not moved past it yet; a long one is argv[optind - 1].
 */
enum {
	OPT_KERNEL = 256, OPT_INITRD, OPT_APPEND, OPT_MEM, OPT_SMP, OPT_DISK, OPT_NET,
	OPT_CONTROL, OPT_INCOMING, OPT_CONSOLE, OPT_HELP, OPT_VERSION, OPT_TLS_CREDS,
	OPT_FT_SECONDARY, OPT_FT_TAKEOVER,
};

static void bad_option(char **argv, int c)
{
	char shortopt[3] = { '-', (char)optopt, 0 };
	const char *name = optopt > 0 && optopt < OPT_KERNEL ? shortopt : argv[optind - 1];

	if (c == ':')
		bad_arg("option '%s' needs an argument", name);
	if (optopt >= OPT_KERNEL)
		bad_arg("option '%s' takes no argument", name);
	bad_arg("unknown option '%s'", name);
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, OPT_KERNEL },
		{ "initrd", required_argument, NULL, OPT_INITRD },
		{ "append", required_argument, NULL, OPT_APPEND },
		{ "mem", required_argument, NULL, OPT_MEM },
		{ "smp", required_argument, NULL, OPT_SMP },
		{ "disk", required_argument, NULL, OPT_DISK },
		{ "net", required_argument, NULL, OPT_NET },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "incoming", required_argument, NULL, OPT_INCOMING },
		{ "console", required_argument, NULL, OPT_CONSOLE },
		{ "tls-creds", required_argument, NULL, OPT_TLS_CREDS },
		{ "ft-secondary", required_argument, NULL, OPT_FT_SECONDARY },
		{ "ft-takeover", required_argument, NULL, OPT_FT_TAKEOVER },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ 0, 0, 0, 0 },
	};
	memset(o, 0, sizeof(*o));
	o->mem_mib = 256;
	o->smp = 1;
	o->console = "stdio";
	/* a locally administered MAC by default */
	static const uint8_t default_mac[6] = { 0x52, 0x54, 0x00, 0xfe, 0x77, 0x01 };
	memcpy(o->mac, default_mac, 6);

	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_KERNEL: o->boot.kernel = optarg; break;
		case OPT_INITRD: o->boot.initrd = optarg; break;
		case OPT_APPEND: o->boot.append = optarg; break;
		case OPT_MEM:
			o->mem_mib = parse_number(optarg, "--mem");
			if (o->mem_mib < 16 || o->mem_mib > 65536)
				bad_arg("--mem %s: want 16 to 65536 MiB", optarg);
			break;
		case OPT_SMP:
			o->smp = (unsigned)parse_number(optarg, "--smp");
			if (o->smp < 1 || o->smp > MAX_HARTS)
				bad_arg("--smp %s: want 1 to 8 harts", optarg);
			break;
		case OPT_DISK:
			parse_disk(o, optarg);
			break;
		case OPT_NET: parse_net(o, optarg); break;
		case OPT_CONTROL: o->control = optarg; break;
		case OPT_INCOMING:
			if (strncmp(optarg, "tcp:", 4) && strncmp(optarg, "file:", 5))
				bad_arg("--incoming '%s': want tcp:HOST:PORT or file:PATH", optarg);
			o->incoming = optarg;
			break;
		case OPT_CONSOLE: o->console = optarg; break;
		case OPT_TLS_CREDS: o->tls_creds = optarg; break;
		case OPT_FT_SECONDARY: o->ft_secondary = optarg; break;
		case OPT_FT_TAKEOVER:
			if (strcmp(optarg, "manual") && strcmp(optarg, "auto"))
				bad_arg("--ft-takeover '%s': want manual or auto", optarg);
			o->ft_takeover = strcmp(optarg, "auto") ? FT_TAKEOVER_MANUAL
								: FT_TAKEOVER_AUTO;
			break;
		case OPT_HELP: usage(stdout); exit(0);
		case OPT_VERSION: printf("ferry-vm %s\n", FERRY_VERSION); exit(0);
		default:
			bad_option(argv, c);
		}
	}
	if (optind < argc)
		bad_arg("unexpected argument '%s'", argv[optind]);
	for (unsigned i = 0; i < o->ndisks; i++)
		check_disk_path(o->disks[i], o->disk_follow[i]);
	check_console_path(o->console);
	if (o->ft_secondary && o->incoming)
		bad_arg("%s", "--ft-secondary and --incoming exclude each other");
	if (!o->boot.kernel && !o->incoming && !o->ft_secondary)
		bad_arg("%s", "--kernel IMAGE is required");
	char err[512];
	if (o->ft_secondary && ft_secondary_check(o->ft_secondary, err, sizeof(err)))
		bad_arg("%s", err);
	if (o->incoming && mig_incoming_check(o->incoming, o->tls_creds, err, sizeof(err)))
		bad_arg("%s", err);
}

/* --tls-creds DIR: the certificates every migration channel uses. */
static struct mig_tls *load_tls(const struct options *o)
{
	char err[512];
	if (!o->tls_creds)
		return NULL;
	struct mig_tls *tls = mig_tls_load(o->tls_creds, err, sizeof(err));
	if (!tls)
		bad_arg("--tls-creds: %s", err);
	if (((o->incoming && !strncmp(o->incoming, "tcp:", 4)) || o->ft_secondary) &&
	    !mig_tls_can_serve(tls))
		bad_arg("--tls-creds %s: a destination needs server-cert.pem and "
			"server-key.pem", o->tls_creds);
	return tls;
}

static int open_console(const char *spec, int *in_fd, int *out_fd)
{
	*in_fd = -1;
	if (!strcmp(spec, "stdio")) {
		*in_fd = isatty(0) ? 0 : -1;
		*out_fd = 1;
	} else if (!strcmp(spec, "none")) {
		*out_fd = -1;
	} else {
		struct stat st;
		*out_fd = open(spec, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0644);
		if (*out_fd < 0 || fstat(*out_fd, &st) ||
		    (S_ISREG(st.st_mode) && ftruncate(*out_fd, 0))) {
			fprintf(stderr, "ferry-vm: console %s: %s\n", spec,
				errno == ELOOP ? "is a symlink: give the real path" : strerror(errno));
			if (*out_fd >= 0)
				close(*out_fd);
			return -1;
		}
	}
	return 0;
}

static struct machine *build_machine(const struct options *o, struct vmm *vmm)
{
	char err[512] = "";
	struct machine *m = machine_create(o->mem_mib, o->smp, err, sizeof(err));
	if (!m)
		goto fail;
	int in_fd, out_fd;
	if (open_console(o->console, &in_fd, &out_fd)) {
		machine_destroy(m);
		return NULL;
	}
	m->console_fd = out_fd;
	if (clint_create(m) || !uart_create(m, in_fd, out_fd)) {
		snprintf(err, sizeof(err), "cannot create the CLINT or UART");
		goto fail;
	}
	unsigned slot = 0;
	for (unsigned i = 0; i < o->ndisks; i++)
		if (!(vmm->blk[i] = virtio_blk_create(m, slot++, o->disks[i], o->disk_ro[i],
				       o->disk_follow[i], o->disk_beneath[i],
				       o->incoming || o->ft_secondary, err, sizeof(err))))
			goto fail;
	if (o->tap && !(vmm->net = virtio_net_create(m, slot++, o->tap, o->tap_create,
						     o->mac, err, sizeof(err))))
		goto fail;
	if (!virtio_console_create(m, slot++, -1, out_fd) || !virtio_rng_create(m, slot++)) {
		snprintf(err, sizeof(err), "cannot create the virtio console or rng");
		goto fail;
	}
	for (unsigned i = 0; i < o->ndisks; i++)
		vmm->disks[vmm->ndisks++] = o->disks[i];
	vmm->machine = m;
	return m;
fail:
	fprintf(stderr, "ferry-vm: %s\n", err);
	if (m && m->console_fd > STDERR_FILENO)
		close(m->console_fd);
	machine_destroy(m);
	return NULL;
}

/* An error before the guest ran: free everything, so that a sanitizer
 * run of any error exit is clean. */
static int end_early(struct vmm *vmm, int status)
{
	vmm_shutdown(vmm);
	struct machine *m = vmm->machine;
	int console = m->console_fd;
	machine_destroy(m);
	vmm->machine = NULL;
	if (console > STDERR_FILENO)
		close(console);
	return status;
}

int main(int argc, char **argv)
{
	struct options o;
	parse_options(argc, argv, &o);
	if (cpu_executor_error())
		bad_arg("%s", cpu_executor_error());
	signal(SIGPIPE, SIG_IGN);

	struct vmm vmm = VMM_INIT;
	char err[512] = "";
	vmm.tls = load_tls(&o);
	if (vmm_handle_signals(&vmm, err, sizeof(err))) {
		fprintf(stderr, "ferry-vm: %s\n", err);
		return 1;
	}
	struct machine *m = build_machine(&o, &vmm);
	if (!m)
		return 1;

	int r = o.incoming || o.ft_secondary ? 0 : boot_load(m, &o.boot, err, sizeof(err));
	if (r) {
		fprintf(stderr, "ferry-vm: %s\n", err);
		return end_early(&vmm, r == BOOT_BAD_IMAGE ? 2 : 1);
	}
	if (o.control && vmm_control_start(&vmm, o.control, err, sizeof(err))) {
		fprintf(stderr, "ferry-vm: %s\n", err);
		return end_early(&vmm, 1);
	}
	if (o.incoming) {
		if (vmm_incoming(&vmm, o.incoming, err, sizeof(err))) {
			fprintf(stderr, "ferry-vm: incoming migration failed: %s\n", err);
			return end_early(&vmm, 1);
		}
	} else if (o.ft_secondary) {
		int r = vmm_ft_secondary(&vmm, o.ft_secondary, o.ft_takeover, err, sizeof(err));
		if (r < 0)
			fprintf(stderr, "ferry-vm: FT secondary: %s\n", err);
		if (r)          /* no guest ran here: free what was built */
			return end_early(&vmm, r < 0 ? 1 : 0);
	} else if (machine_start(m)) {
		return end_early(&vmm, 1);
	}

	enum exit_reason why = machine_wait_exit(m);
	vmm_shutdown(&vmm);
	return why == EXIT_POWEROFF || why == EXIT_QUIT || why == EXIT_MIGRATED ? 0 : 1;
}
