/*
 * main.c - ferryd, the host agent: options, the etcd heartbeat, start-up.
 *
 *   ferryd --name HOST --listen ADDR:PORT --etcd URL[,URL...] --state-dir DIR
 *          [--datastore NAME=DIR]... [--network NAME=BRIDGE]... [--token-file FILE]
 *
 * The heartbeat: a lease of LEASE_TTL seconds granted by etcd, renewed
 * every RENEW_EVERY_MS, holding /ferry/hosts/NAME = {"name", "url",
 * "address"}. If etcd forgets the lease (we were cut off too long), a new
 * one is granted and the key put again. Each renewal's sent time goes to
 * the self-fence (fence.c), which kills this host's VMs when renewals stop
 * for LEASE_TTL - FENCE_MARGIN_MS (3 s: six renewals missed). The
 * heartbeat's etcd calls time out after HEARTBEAT_TIMEOUT_MS per member,
 * so that a hung member costs well under the margin before the next one
 * is tried. Why these figures: README.md, "HA".
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/etcd.h"
#include "cluster/common/http_client.h"
#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <getopt.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEASE_TTL 4
#define RENEW_EVERY_MS 500
#define HEARTBEAT_TIMEOUT_MS 400

struct ferryd fd_cfg;
char *cmdline_area;
size_t cmdline_len;
static struct etcd etcd;
static struct etcd etcd_beat;
static _Atomic int64_t current_lease;

int64_t heartbeat_lease(void)
{
	return current_lease;
}

long test_delay_ms(const char *var)
{
	const char *v = getenv(var);
	long ms = v ? strtol(v, NULL, 10) : 0;
	return ms > 0 ? ms : 0;
}
   /* the heartbeat's own client: shorter timeouts */

static void usage(FILE *f)
{
	fprintf(f, "usage: ferryd --name HOST --listen ADDR:PORT --etcd URL[,URL...] "
		   "--state-dir DIR\n"
		   "              [--datastore NAME=DIR]... [--network NAME=BRIDGE]... "
		   "[--token-file FILE]\n"
		   "              [--ferry-vm PATH] [--isolation-response power-off|leave-running]\n"
		   "              [--vm-memory-mib N]   (memory offered to VMs; default: the RAM)\n"
		   "The host agent: heartbeat in etcd, host report, VM processes, migrations.\n");
}

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "ferryd: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(2);
}

static void add_named(struct named_dir *list, int *n, const char *spec, const char *what)
{
	const char *eq = strchr(spec, '=');
	if (!eq || eq == spec || !eq[1] || *n == 16 || eq - spec >= 64)
		die(what, spec);
	snprintf(list[*n].name, sizeof(list[*n].name), "%.*s", (int)(eq - spec), spec);
	snprintf(list[*n].path, sizeof(list[*n].path), "%s", eq + 1);
	(*n)++;
}

static void *heartbeat(void *arg)
{
	(void)arg;
	char key[128], err[512];
	snprintf(key, sizeof(key), "/ferry/hosts/%s", fd_cfg.name);
	json_t *v = json_pack("{s:s, s:s, s:s}", "name", fd_cfg.name, "url", fd_cfg.url,
			      "address", fd_cfg.address);
	char *value = json_dumps(v, JSON_COMPACT);
	json_decref(v);
	int64_t lease = 0;
	bool complained = false;
	for (;;) {
		int64_t sent = mono_ms();
		if (lease && etcd_lease_keepalive(&etcd_beat, lease, err, sizeof(err)))
			fence_renewed(sent);
		else
			lease = 0;
		if (!lease) {
			sent = mono_ms();
			lease = etcd_lease_grant(&etcd_beat, LEASE_TTL, err, sizeof(err));
			if (lease && !etcd_put(&etcd_beat, key, value, lease, err, sizeof(err)))
				lease = 0;
			if (lease) {
				fence_renewed(sent);
				logf_("heartbeat: %s held by lease %lld", key, (long long)lease);
				complained = false;
			} else if (!complained) {
				logf_("heartbeat: %s (retrying)", err);
				complained = true;
			}
		}
		current_lease = lease;
		int64_t next = sent + RENEW_EVERY_MS - mono_ms();
		if (next > 0)
			usleep(next * 1000);
	}
	return NULL;
}

static void find_ferry_vm(void)
{
	if (fd_cfg.ferry_vm[0])
		return;
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = 0;
		char *slash = strrchr(self, '/');
		*slash = 0;
		snprintf(fd_cfg.ferry_vm, sizeof(fd_cfg.ferry_vm), "%s/ferry-vm", self);
	}
}

static void vmm_version(void)
{
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "'%s' --version 2>&1", fd_cfg.ferry_vm);
	FILE *p = popen(cmd, "r");
	snprintf(fd_cfg.vmm_version, sizeof(fd_cfg.vmm_version), "unknown");
	if (p) {
		if (fgets(fd_cfg.vmm_version, sizeof(fd_cfg.vmm_version), p))
			fd_cfg.vmm_version[strcspn(fd_cfg.vmm_version, "\n")] = 0;
		pclose(p);
	}
	/* does this ferry-vm take --incoming tcp:H:P,secret-file=F? */
	snprintf(cmd, sizeof(cmd), "'%s' --help 2>&1", fd_cfg.ferry_vm);
	p = popen(cmd, "r");
	char line[512];
	while (p && fgets(line, sizeof(line), p))
		if (strstr(line, "secret-file"))
			fd_cfg.secure_incoming = true;
	if (p)
		pclose(p);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "listen", required_argument, NULL, 'l' },
		{ "etcd", required_argument, NULL, 'e' },
		{ "state-dir", required_argument, NULL, 's' },
		{ "datastore", required_argument, NULL, 'd' },
		{ "network", required_argument, NULL, 'w' },
		{ "token-file", required_argument, NULL, 't' },
		{ "ferry-vm", required_argument, NULL, 'v' },
		{ "isolation-response", required_argument, NULL, 'i' },
		{ "vm-memory-mib", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *etcd_urls = NULL, *token_file = NULL;
	log_name = "ferryd";
	cmdline_area = argv[0];
	cmdline_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) - argv[0]);
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n': snprintf(fd_cfg.name, sizeof(fd_cfg.name), "%s", optarg); break;
		case 'l': snprintf(fd_cfg.listen, sizeof(fd_cfg.listen), "%s", optarg); break;
		case 'e': etcd_urls = optarg; break;
		case 's': snprintf(fd_cfg.state_dir, sizeof(fd_cfg.state_dir), "%s", optarg); break;
		case 'd': add_named(fd_cfg.datastores, &fd_cfg.ndatastores, optarg,
				    "--datastore %s: want NAME=DIR"); break;
		case 'w': add_named(fd_cfg.networks, &fd_cfg.nnetworks, optarg,
				    "--network %s: want NAME=BRIDGE"); break;
		case 't': token_file = optarg; break;
		case 'v': snprintf(fd_cfg.ferry_vm, sizeof(fd_cfg.ferry_vm), "%s", optarg); break;
		case 'i':
			if (strcmp(optarg, "power-off") && strcmp(optarg, "leave-running"))
				die("--isolation-response %s: want power-off or leave-running", optarg);
			snprintf(fd_cfg.isolation_response, sizeof(fd_cfg.isolation_response), "%s",
				 optarg);
			break;
		case 'm':
			fd_cfg.vm_memory_mib = atol(optarg);
			if (fd_cfg.vm_memory_mib < 1)
				die("--vm-memory-mib %s: want a number of MiB", optarg);
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!fd_cfg.name[0] || !fd_cfg.listen[0] || !etcd_urls || !fd_cfg.state_dir[0]) {
		fprintf(stderr, "ferryd: --name, --listen, --etcd and --state-dir are required\n");
		usage(stderr);
		return 2;
	}
	char err[1024];
	if (token_file && !auth_load(&fd_cfg.auth, token_file, err, sizeof(err)))
		die("%s", err);
	if (!token_file)
		die("%s", "--token-file is required: every call to ferryd needs a token");
	const char *colon = strrchr(fd_cfg.listen, ':');
	snprintf(fd_cfg.address, sizeof(fd_cfg.address), "%.*s",
		 colon ? (int)(colon - fd_cfg.listen) : 0, fd_cfg.listen);
	snprintf(fd_cfg.url, sizeof(fd_cfg.url), "http://%s", fd_cfg.listen);
	if (!etcd_init(&etcd, etcd_urls) || !etcd_init(&etcd_beat, etcd_urls))
		die("--etcd %s: want URL[,URL...]", etcd_urls);
	etcd_beat.timeout_ms = HEARTBEAT_TIMEOUT_MS;
	if (!fd_cfg.isolation_response[0])
		snprintf(fd_cfg.isolation_response, sizeof(fd_cfg.isolation_response), "power-off");
	fence_init(LEASE_TTL);
	find_ferry_vm();
	vmm_version();
	signal(SIGPIPE, SIG_IGN);
	http_client_init();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (!vms_init(err, sizeof(err)))
		die("%s", err);
	struct http_server *srv = http_server_start(fd_cfg.listen, api_handle, NULL, err,
						    sizeof(err));
	if (!srv)
		die("%s", err);
	logf_("host %s listening on %s (ferry-vm %s%s)", fd_cfg.name, fd_cfg.url,
	      fd_cfg.vmm_version, fd_cfg.secure_incoming ? ", migration secrets" : "");
	pthread_t t;
	pthread_create(&t, NULL, vms_watch, NULL);
	pthread_create(&t, NULL, heartbeat, NULL);
	pthread_create(&t, NULL, fence_watch, NULL);
	ha_agent_start(etcd_urls);
	ft_agent_start(etcd_urls);
	int sig;
	sigwait(&set, &sig);
	logf_("signal %d: stopping (VMs keep running)", sig);
	http_server_stop(srv);
	return 0;
}
