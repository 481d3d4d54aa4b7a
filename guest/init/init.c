/*
 * init.c - the ferry guest's /init: set the machine up, then either run the
 * commands the kernel command line names and power off, or idle forever.
 *
 * The kernel runs this as PID 1 from the initramfs. It mounts /proc, /sys
 * and /dev (devtmpfs), points stdin/stdout/stderr at /dev/console, brings up
 * the loopback interface and reads /proc/cmdline (dotted parameters such as
 * ferry.run are not handed to init as arguments, so the file is the only
 * place to find them):
 *
 *   ferry.ip=ADDR/PREFIX  give eth0 that IPv4 address and bring it up
 *   ferry.gw=ADDR         and add a default route through ADDR
 *   ferry.run=CMD         run CMD, where ',' stands for a space; an argument
 *                         that is exactly ';' separates commands, which run
 *                         in order until one fails
 *
 * After ferry.run the guest powers off when every command succeeded and
 * resets when one failed: the monitor sees the reset and reports failure.
 * Without ferry.run, init prints "ferry-init: ready" and reaps orphans
 * forever. Progress lines all start with "ferry-init:" so that tests can
 * wait for them on the console.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CMDLINE_MAX	4096
#define ARGV_MAX	256
#define NETDEV_WAIT_MS	2000

struct init_config {
	char *ip;	/* ferry.ip value, or NULL */
	char *gw;	/* ferry.gw value, or NULL */
	char *run;	/* ferry.run value, or NULL */
};

static char *const child_env[] = { "PATH=/bin", "HOME=/", "TERM=linux", NULL };

static void init_log(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDOUT_FILENO, "ferry-init: ", 12) == 12)
		(void)!write(STDOUT_FILENO, line, n);
}

static void init_mount(const char *src, const char *dir, const char *type)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, MS_NOSUID, NULL) < 0 && errno != EBUSY)
		init_log("cannot mount %s on %s: %s", type, dir, strerror(errno));
}

/* Point fds 0, 1 and 2 at the console, whatever the kernel gave us. */
static void init_console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);

	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

/* Read /proc/cmdline into buf as one NUL-terminated string. */
static bool init_read_cmdline(char *buf, size_t size)
{
	int fd = open("/proc/cmdline", O_RDONLY);
	ssize_t n;
	size_t len = 0;

	if (fd < 0) {
		init_log("cannot open /proc/cmdline: %s", strerror(errno));
		return false;
	}
	while (len < size - 1 && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += n;
	close(fd);
	buf[len] = '\0';
	return true;
}

/*
 * Split the command line in place into words, honouring the kernel's
 * double quotes (param="a b"), and keep the ferry.* values.
 */
static void init_parse_cmdline(char *p, struct init_config *cfg)
{
	while (*p) {
		char *word, *out;
		bool quoted = false;

		while (*p == ' ' || *p == '\n' || *p == '\t')
			p++;
		if (!*p)
			break;
		word = out = p;
		for (; *p && (quoted || (*p != ' ' && *p != '\n' && *p != '\t')); p++) {
			if (*p == '"')
				quoted = !quoted;
			else
				*out++ = *p;
		}
		if (*p)
			p++;
		*out = '\0';
		if (!strncmp(word, "ferry.ip=", 9))
			cfg->ip = word + 9;
		else if (!strncmp(word, "ferry.gw=", 9))
			cfg->gw = word + 9;
		else if (!strncmp(word, "ferry.run=", 10))
			cfg->run = word + 10;
	}
}

static void init_sockaddr(struct sockaddr *sa, struct in_addr addr)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr = addr };

	memcpy(sa, &sin, sizeof(sin));
}

/* Wait for a network interface to exist: virtio-net may probe late. */
static bool net_wait_for(int sock, const char *ifname)
{
	struct ifreq ifr = { 0 };
	struct timespec tick = { 0, 10 * 1000 * 1000 };

	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	for (int ms = 0; ms < NETDEV_WAIT_MS; ms += 10) {
		if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0)
			return true;
		nanosleep(&tick, NULL);
	}
	return false;
}

static bool net_ifup(int sock, const char *ifname, struct in_addr addr,
		     struct in_addr mask)
{
	struct ifreq ifr = { 0 };

	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	init_sockaddr(&ifr.ifr_addr, addr);
	if (ioctl(sock, SIOCSIFADDR, &ifr) < 0)
		goto fail;
	init_sockaddr(&ifr.ifr_netmask, mask);
	if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0)
		goto fail;
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
		goto fail;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)
		goto fail;
	return true;
fail:
	init_log("cannot configure %s: %s", ifname, strerror(errno));
	return false;
}

static bool net_default_route(int sock, struct in_addr gw)
{
	struct rtentry rt = { 0 };
	struct in_addr any = { INADDR_ANY };

	init_sockaddr(&rt.rt_dst, any);
	init_sockaddr(&rt.rt_genmask, any);
	init_sockaddr(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(sock, SIOCADDRT, &rt) < 0) {
		init_log("cannot add default route via %s: %s", inet_ntoa(gw),
			 strerror(errno));
		return false;
	}
	return true;
}

/* Parse "A.B.C.D/N" into an address and a netmask. */
static bool net_parse_cidr(const char *text, struct in_addr *addr,
			   struct in_addr *mask)
{
	char buf[32];
	char *slash, *end;
	long prefix = 24;

	snprintf(buf, sizeof(buf), "%s", text);
	slash = strchr(buf, '/');
	if (slash) {
		*slash = '\0';
		prefix = strtol(slash + 1, &end, 10);
		if (end == slash + 1 || *end || prefix < 0 || prefix > 32)
			return false;
	}
	if (inet_pton(AF_INET, buf, addr) != 1)
		return false;
	mask->s_addr = htonl(prefix ? 0xffffffffu << (32 - prefix) : 0);
	return true;
}

static void init_network(const struct init_config *cfg)
{
	struct in_addr addr, mask, gw;
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (sock < 0) {
		init_log("no IPv4 socket: %s", strerror(errno));
		return;
	}
	inet_pton(AF_INET, "127.0.0.1", &addr);
	inet_pton(AF_INET, "255.0.0.0", &mask);
	net_ifup(sock, "lo", addr, mask);
	if (!cfg->ip)
		goto out;
	if (!net_parse_cidr(cfg->ip, &addr, &mask)) {
		init_log("bad ferry.ip=%s: want ADDR/PREFIX such as 10.0.0.2/24",
			 cfg->ip);
		goto out;
	}
	if (!net_wait_for(sock, "eth0")) {
		init_log("ferry.ip given but there is no eth0: give the VM a --net device");
		goto out;
	}
	if (!net_ifup(sock, "eth0", addr, mask))
		goto out;
	init_log("eth0 %s", cfg->ip);
	if (!cfg->gw)
		goto out;
	if (inet_pton(AF_INET, cfg->gw, &gw) != 1)
		init_log("bad ferry.gw=%s: want an IPv4 address", cfg->gw);
	else
		net_default_route(sock, gw);
out:
	close(sock);
}

/* Reap every exited child; return the status of want if it was among them. */
static bool init_reap(pid_t want, int *status)
{
	bool found = false;
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == want) {
			*status = st;
			found = true;
		}
	}
	return found;
}

static void init_child_exec(char **argv, const sigset_t *orig)
{
	char path[512];

	sigprocmask(SIG_SETMASK, orig, NULL);
	signal(SIGCHLD, SIG_DFL);
	setsid();
	if (strchr(argv[0], '/'))
		snprintf(path, sizeof(path), "%s", argv[0]);
	else
		snprintf(path, sizeof(path), "/bin/%s", argv[0]);
	execve(path, argv, child_env);
	init_log("cannot run %s: %s (add programs with guest/mkinitrd.sh)", path,
		 strerror(errno));
	_exit(127);
}

/* Run one command to completion, reaping orphans meanwhile; return its status. */
static int init_run_one(char **argv, const sigset_t *orig)
{
	char shown[512] = "";
	size_t len = 0;
	int status = 0;
	pid_t pid;

	for (int i = 0; argv[i] && len < sizeof(shown); i++)
		len += snprintf(shown + len, sizeof(shown) - len, "%s%s",
				i ? " " : "", argv[i]);
	init_log("run: %s", shown);
	pid = fork();
	if (pid < 0) {
		init_log("cannot fork for %s: %s", argv[0], strerror(errno));
		return 127;
	}
	if (pid == 0)
		init_child_exec(argv, orig);
	while (!init_reap(pid, &status))
		sigsuspend(orig);
	if (WIFSIGNALED(status)) {
		init_log("exit %d (killed by signal %d)", 128 + WTERMSIG(status),
			 WTERMSIG(status));
		return 128 + WTERMSIG(status);
	}
	init_log("exit %d", WEXITSTATUS(status));
	return WEXITSTATUS(status);
}

/*
 * Turn ferry.run's value into argv words (',' is a space) and run each
 * ';'-separated command in turn. Returns true when all succeeded.
 */
static bool init_run(char *run, const sigset_t *orig)
{
	char *argv[ARGV_MAX + 1];
	char *save = NULL, *tok;
	int argc = 0;

	for (char *c = run; *c; c++)
		if (*c == ',')
			*c = ' ';
	for (tok = strtok_r(run, " ", &save);; tok = strtok_r(NULL, " ", &save)) {
		if (tok && strcmp(tok, ";") != 0) {
			if (argc == ARGV_MAX) {
				init_log("ferry.run: more than %d arguments in one command",
					 ARGV_MAX);
				return false;
			}
			argv[argc++] = tok;
			continue;
		}
		if (argc > 0) {
			argv[argc] = NULL;
			if (init_run_one(argv, orig) != 0)
				return false;
			argc = 0;
		}
		if (!tok)
			return true;
	}
}

static void __attribute__((noreturn)) init_finish(bool ok)
{
	sync();
	if (ok) {
		init_log("power off");
		reboot(RB_POWER_OFF);
	} else {
		init_log("reset (a command failed)");
		reboot(RB_AUTOBOOT);
	}
	init_log("reboot() failed: %s; idling", strerror(errno));
	for (;;)
		pause();
}

static void init_on_sigchld(int sig)
{
	(void)sig;
}

int main(void)
{
	static char cmdline[CMDLINE_MAX];
	struct init_config cfg = { 0 };
	struct sigaction sa = { .sa_handler = init_on_sigchld };
	sigset_t chld, orig;

	init_mount("devtmpfs", "/dev", "devtmpfs");
	init_console();
	init_mount("proc", "/proc", "proc");
	init_mount("sysfs", "/sys", "sysfs");
	umask(022);

	/* SIGCHLD stays blocked except inside sigsuspend(): no lost wakeups. */
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &orig);
	sigdelset(&orig, SIGCHLD);

	if (init_read_cmdline(cmdline, sizeof(cmdline)))
		init_parse_cmdline(cmdline, &cfg);
	init_network(&cfg);

	if (cfg.run)
		init_finish(init_run(cfg.run, &orig));

	init_log("ready");
	for (;;) {
		int unused;

		init_reap(0, &unused);
		sigsuspend(&orig);
	}
}
