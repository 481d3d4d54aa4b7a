/*
 * vms.c - the VM processes of this host.
 *
 * Each VM has a directory STATE/vms/NAME holding spec.json (what ferry-center
 * asked for), control.sock, console.log (the guest's console), output.log
 * (ferry-vm's own messages), pid and, once the process has ended, exit.
 *
 * ferry-vm is not ferryd's child: ferryd forks a small monitor (setsid,
 * double fork) that starts ferry-vm, writes its pid, waits for it and writes
 * how it ended into `exit`. So ferryd may restart, or die, without taking
 * its VMs along, and finds them again from the directories (vms_init).
 * A watcher thread notices `exit` files and logs VMs that died.
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/qmp_client.h"
#include "cluster/common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_VMS 256
#define MAX_ARGS 64

pthread_mutex_t vms_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vm *vms[MAX_VMS];
static int nvms;

struct vm *vm_find(const char *name)
{
	for (int i = 0; i < nvms; i++)
		if (!strcmp(vms[i]->name, name))
			return vms[i];
	return NULL;
}

int vms_snapshot(struct vm ***list)
{
	*list = vms;
	return nvms;
}

int vms_count(void)
{
	pthread_mutex_lock(&vms_lock);
	int n = nvms;
	pthread_mutex_unlock(&vms_lock);
	return n;
}

static void vm_path(const struct vm *vm, const char *file, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", vm->dir, file);
}

char *vm_control_path(const struct vm *vm)
{
	char p[PATH_MAX + 32];
	vm_path(vm, "control.sock", p, sizeof(p));
	return strdup(p);
}

static bool valid_name(const char *name)
{
	if (!name || !*name || strlen(name) > 48)
		return false;
	for (const char *c = name; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_' || *c == '.'))
			return false;
	return name[0] != '.';
}

/* The first symlink from the datastore's directory (which may be one)
 * down to root/rel, written into at; NULL when there is none. ferry-vm
 * refuses a disk that is a symlink; this also refuses a directory link
 * on the way, which would lead a request out of the datastore. */
static const char *link_on_the_way(const char *root, const char *rel, char *at, size_t len)
{
	for (const char *end = rel; *end; end++) {
		if (end[1] && end[1] != '/')
			continue;
		struct stat st;
		snprintf(at, len, "%s/%.*s", root, (int)(end + 1 - rel), rel);
		if (lstat(at, &st) == 0 && S_ISLNK(st.st_mode))
			return at;
	}
	return NULL;
}

const char *datastore_root(const char *ref)
{
	const char *colon = strchr(ref, ':');
	for (int i = 0; colon && i < fd_cfg.ndatastores; i++)
		if (strlen(fd_cfg.datastores[i].name) == (size_t)(colon - ref) &&
		    !strncmp(fd_cfg.datastores[i].name, ref, colon - ref))
			return fd_cfg.datastores[i].path;
	return NULL;
}

/* "DS:PATH" -> the file on this host; NULL with a message. fresh: a file
 * to be made (a disk move's or a copy's destination): it must not exist
 * yet; else it must be readable. Either way no symlink on the way. */
static char *locate(const char *ref, bool fresh, char *err, size_t errlen)
{
	const char *colon = ref ? strchr(ref, ':') : NULL;
	if (!colon) {
		snprintf(err, errlen, "%s: want DATASTORE:PATH", ref ? ref : "(null)");
		return NULL;
	}
	const char *rel = colon + 1;
	if (rel[0] == '/' || strstr(rel, "..")) {
		snprintf(err, errlen, "%s: the path must be relative to the datastore, without ..",
			 ref);
		return NULL;
	}
	const char *root = datastore_root(ref);
	if (!root) {
		snprintf(err, errlen, "%s: host %s has no datastore %.*s", ref, fd_cfg.name,
			 (int)(colon - ref), ref);
		return NULL;
	}
	char *p = malloc(PATH_MAX);
	snprintf(p, PATH_MAX, "%s/%s", root, rel);
	struct stat st;
	if (fresh ? lstat(p, &st) == 0 : access(p, R_OK) != 0) {
		snprintf(err, errlen, "%s: %s on host %s: %s", ref, p, fd_cfg.name,
			 fresh ? "exists already" : strerror(errno));
		free(p);
		return NULL;
	}
	char at[PATH_MAX];
	if (link_on_the_way(root, rel, at, sizeof(at))) {
		snprintf(err, errlen, "%s: %s on host %s is a symlink: name the "
			 "file itself, inside the datastore", ref, at, fd_cfg.name);
		free(p);
		return NULL;
	}
	return p;
}

static char *resolve(const char *ref, char *err, size_t errlen)
{
	return locate(ref, false, err, errlen);
}

static void tap_name(const char *vm, char *out, size_t len)
{
	unsigned h = 2166136261u;
	for (const char *c = vm; *c; c++)
		h = (h ^ (unsigned char)*c) * 16777619u;
	snprintf(out, len, "fyt%08x", h);
}

static int run_quiet(char *const argv[])
{
	pid_t p = fork();
	if (p == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(null, 2);
		execvp(argv[0], argv);
		_exit(127);
	}
	int st = 0;
	if (p < 0 || waitpid(p, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The TAP for a VM on NETWORK's bridge; false with a message. */
static bool tap_setup(const char *vm, const char *net, char *tap, size_t taplen, char *err,
		      size_t errlen)
{
	char network[64];
	snprintf(network, sizeof(network), "%s", net);
	char *comma = strchr(network, ',');
	if (comma)
		*comma = 0;
	const char *bridge = NULL;
	for (int i = 0; i < fd_cfg.nnetworks; i++)
		if (!strcmp(fd_cfg.networks[i].name, network))
			bridge = fd_cfg.networks[i].path;
	if (!bridge) {
		snprintf(err, errlen, "host %s has no network %s", fd_cfg.name, network);
		return false;
	}
	tap_name(vm, tap, taplen);
	char *add[] = { "ip", "tuntap", "add", "dev", tap, "mode", "tap", NULL };
	run_quiet(add);   /* may exist already */
	char *master[] = { "ip", "link", "set", tap, "master", (char *)bridge, "up", NULL };
	if (run_quiet(master) != 0) {
		snprintf(err, errlen, "cannot attach TAP %s to bridge %s on host %s", tap, bridge,
			 fd_cfg.name);
		return false;
	}
	return true;
}

static void tap_remove(const char *vm)
{
	char tap[32];
	tap_name(vm, tap, sizeof(tap));
	char *del[] = { "ip", "link", "del", tap, NULL };
	run_quiet(del);
}

/* Fills argv for ferry-vm; strings are malloc'd into keep[]. */
struct argv_builder {
	char *argv[MAX_ARGS];
	int n;
};

static void arg(struct argv_builder *b, const char *s)
{
	if (b->n < MAX_ARGS - 1)
		b->argv[b->n++] = strdup(s);
	b->argv[b->n] = NULL;
}

static void args_free(struct argv_builder *b)
{
	for (int i = 0; i < b->n; i++)
		free(b->argv[i]);
	b->n = 0;
}

static bool build_argv(struct vm *vm, const char *incoming, const char *secret_path,
		       struct argv_builder *b, char *err, size_t errlen)
{
	json_t *s = vm->spec;
	char num[32], path[2 * PATH_MAX + 32];
	arg(b, fd_cfg.ferry_vm);
	if (!incoming) {
		const char *kernel = json_string_value(json_object_get(s, "kernel"));
		char *k = resolve(kernel, err, errlen);
		if (!k)
			return false;
		arg(b, "--kernel");
		arg(b, k);
		free(k);
		const char *initrd = json_string_value(json_object_get(s, "initrd"));
		if (initrd && *initrd) {
			char *i = resolve(initrd, err, errlen);
			if (!i)
				return false;
			arg(b, "--initrd");
			arg(b, i);
			free(i);
		}
		const char *append = json_string_value(json_object_get(s, "append"));
		if (append && *append) {
			arg(b, "--append");
			arg(b, append);
		}
	}
	snprintf(num, sizeof(num), "%lld", json_integer_value(json_object_get(s, "mem_mib")));
	arg(b, "--mem");
	arg(b, num);
	snprintf(num, sizeof(num), "%lld", json_integer_value(json_object_get(s, "smp")));
	arg(b, "--smp");
	arg(b, num);
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(s, "disks"), i, d) {
		const char *ref = json_string_value(d);
		char copy[PATH_MAX];
		snprintf(copy, sizeof(copy), "%s", ref ? ref : "");
		char *ro = strstr(copy, ",ro");
		if (ro)
			*ro = 0;
		char *p = resolve(copy, err, errlen);
		if (!p)
			return false;
		/* resolve() found no symlink below the datastore; beneath= makes
		 * ferry-vm's open refuse one that appears after that check */
		const char *root = datastore_root(copy);
		if (root && strchr(root, ',')) {
			snprintf(err, errlen, "datastore directory %s: a comma cannot be passed "
				 "to ferry-vm's --disk", root);
			free(p);
			return false;
		}
		snprintf(path, sizeof(path), "%s%s%s%s", p, ro ? ",ro" : "",
			 root ? ",beneath=" : "", root ? root : "");
		free(p);
		arg(b, "--disk");
		arg(b, path);
	}
	const char *net = json_string_value(json_object_get(s, "net"));
	if (net && *net) {
		char tap[32];
		if (!tap_setup(vm->name, net, tap, sizeof(tap), err, errlen))
			return false;
		const char *mac = strstr(net, ",mac=");
		snprintf(path, sizeof(path), "tap=%s%s", tap, mac ? mac : "");
		arg(b, "--net");
		arg(b, path);
	}
	vm_path(vm, "control.sock", path, sizeof(path));
	arg(b, "--control");
	arg(b, path);
	vm_path(vm, "console.log", path, sizeof(path));
	arg(b, "--console");
	arg(b, path);
	if (incoming) {
		/* an FT secondary (ft.c) listens as a migration's destination does */
		json_t *ft = json_object_get(s, "ft");
		bool secondary = !strcmp(json_string_value(json_object_get(ft, "role")) ?: "",
					 "secondary");
		arg(b, secondary ? "--ft-secondary" : "--incoming");
		int n = snprintf(path, sizeof(path), "%s", incoming);
		if (secret_path)
			n += snprintf(path + n, sizeof(path) - n, ",secret-file=%s", secret_path);
		if (secondary && json_is_integer(json_object_get(ft, "timeout_ms")))
			snprintf(path + n, sizeof(path) - n, ",timeout-ms=%lld",
				 json_integer_value(json_object_get(ft, "timeout_ms")));
		arg(b, path);
		if (secondary) {   /* it runs only when ft.c, the arbiter's hand, says so */
			arg(b, "--ft-takeover");
			arg(b, "manual");
		}
	}
	return true;
}

static void save_spec(struct vm *vm);

static void write_small(const char *path, const char *text)
{
	char tmp[PATH_MAX + 8];
	snprintf(tmp, sizeof(tmp), "%s.t", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return;
	ssize_t w = write(fd, text, strlen(text));
	(void)w;
	close(fd);
	rename(tmp, path);
}

/* The monitor: a grandchild of ferryd in a session of its own. Runs only
 * async-signal-safe calls (it is a fork of a threaded process). */
static void monitor_run(struct vm *vm, char *const argv[], const char *out_path,
			const char *pid_path, const char *exit_path)
{
	/* nothing of ferryd's: above all not its listening socket, which a
	 * restarted ferryd must own alone */
	close_range(3, ~0U, 0);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* not to be taken for ferryd itself (by ps, pkill or a restart script) */
	if (cmdline_area && cmdline_len > 1) {
		memset(cmdline_area, 0, cmdline_len);
		snprintf(cmdline_area, cmdline_len, "ferryd-monitor %s", vm->name);
	}
	pid_t child = fork();
	if (child == 0) {
		int in = open("/dev/null", O_RDONLY);
		int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
		dup2(in, 0);
		dup2(out, 1);
		dup2(out, 2);
		close_range(3, ~0U, 0);
		chdir(vm->dir);
		execv(argv[0], argv);
		_exit(127);
	}
	char text[64];
	snprintf(text, sizeof(text), "%d\n", (int)child);
	write_small(pid_path, text);
	int st;
	while (waitpid(child, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st))
		snprintf(text, sizeof(text), "exited %d\n", WEXITSTATUS(st));
	else
		snprintf(text, sizeof(text), "signal %d\n", WTERMSIG(st));
	write_small(exit_path, text);
	_exit(0);
}

static bool spawn(struct vm *vm, char *const argv[], char *err, size_t errlen)
{
	char out_path[PATH_MAX + 32], pid_path[PATH_MAX + 32], exit_path[PATH_MAX + 32];
	vm_path(vm, "output.log", out_path, sizeof(out_path));
	vm_path(vm, "pid", pid_path, sizeof(pid_path));
	vm_path(vm, "exit", exit_path, sizeof(exit_path));
	unlink(pid_path);
	unlink(exit_path);
	FILE *f = fopen(out_path, "a");
	if (f) {
		fputs("$", f);
		for (int i = 0; argv[i]; i++)
			fprintf(f, " %s", argv[i]);
		fputs("\n", f);
		fclose(f);
	}
	pid_t a = fork();
	if (a < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		return false;
	}
	if (a == 0) {
		setsid();
		if (fork() == 0)
			monitor_run(vm, argv, out_path, pid_path, exit_path);
		_exit(0);
	}
	waitpid(a, NULL, 0);
	for (int i = 0; i < 1000; i++) {   /* the pid file, within 2 s */
		char *pid = read_file(pid_path, NULL);
		if (pid) {
			vm->pid = atoi(pid);
			free(pid);
			return true;
		}
		usleep(2000);
	}
	snprintf(err, errlen, "ferry-vm did not start (no pid file in %s)", vm->dir);
	return false;
}

static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char p[PATH_MAX + 300];
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			unlink(p);
		}
	closedir(d);
	rmdir(dir);
}

static void vm_free(struct vm *vm)
{
	json_decref(vm->created);
	json_decref(vm->spec);
	free(vm);
}

static void table_remove(struct vm *vm)
{
	for (int i = 0; i < nvms; i++)
		if (vms[i] == vm) {
			vms[i] = vms[--nvms];
			break;
		}
}

int vm_start(const char *name, json_t *spec, const char *incoming_uri, const char *secret,
	     char *err, size_t errlen)
{
	if (!valid_name(name)) {
		json_decref(spec);
		snprintf(err, errlen, "bad VM name (letters, digits, - _ . up to 48)");
		return 400;
	}
	if (fence_isolated() && strcmp(fd_cfg.isolation_response, "leave-running")) {
		json_decref(spec);
		snprintf(err, errlen, "host %s cannot renew its etcd lease (self-fenced): it "
			 "starts no VM", fd_cfg.name);
		return 503;
	}
	pthread_mutex_lock(&vms_lock);
	struct vm *old = vm_find(name);
	if (old && !old->exited) {
		pthread_mutex_unlock(&vms_lock);
		json_decref(spec);
		snprintf(err, errlen, "VM %s already runs on host %s (pid %d)", name, fd_cfg.name,
			 (int)old->pid);
		return 409;
	}
	if (old) {   /* a VM that ended: start afresh */
		table_remove(old);
		remove_dir(old->dir);
		vm_free(old);
	}
	if (nvms == MAX_VMS) {
		pthread_mutex_unlock(&vms_lock);
		json_decref(spec);
		snprintf(err, errlen, "host %s runs %d VMs already", fd_cfg.name, MAX_VMS);
		return 409;
	}
	struct vm *vm = calloc(1, sizeof(*vm));
	snprintf(vm->name, sizeof(vm->name), "%s", name);
	snprintf(vm->dir, sizeof(vm->dir), "%s/vms/%s", fd_cfg.state_dir, name);
	vm->spec = spec;
	vm->incoming = incoming_uri != NULL;
	remove_dir(vm->dir);
	mkdir(vm->dir, 0700);
	char path[PATH_MAX + 32];
	char *secret_path = NULL;
	if (secret) {
		vm_path(vm, "migration.secret", path, sizeof(path));
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			ssize_t w = write(fd, secret, strlen(secret));
			(void)w;
			close(fd);
			secret_path = strdup(path);
		}
	}
	struct argv_builder b = { .n = 0 };
	save_spec(vm);
	bool ok = build_argv(vm, incoming_uri, secret_path, &b, err, errlen) &&
		  spawn(vm, b.argv, err, errlen);
	args_free(&b);
	free(secret_path);
	if (!ok) {
		remove_dir(vm->dir);
		vm_free(vm);
		pthread_mutex_unlock(&vms_lock);
		return 400;
	}
	vms[nvms++] = vm;
	pthread_mutex_unlock(&vms_lock);
	logf_("VM %s started%s (pid %d)", name, incoming_uri ? " for an incoming migration" : "",
	      (int)vm->pid);
	return 201;
}

/* Reads the exit file; true when the process has ended. Under vms_lock. */
static bool check_exit(struct vm *vm)
{
	if (vm->exited)
		return true;
	char p[PATH_MAX + 32];
	vm_path(vm, "exit", p, sizeof(p));
	char *text = read_file(p, NULL);
	if (!text) {
		/* no monitor (it was killed) and no process: call it lost */
		if (vm->pid > 0 && kill(vm->pid, 0) < 0 && errno == ESRCH) {
			vm->exited = true;
			vm->exit_status = -1;
			snprintf(vm->exit_desc, sizeof(vm->exit_desc), "vanished");
			return true;
		}
		return false;
	}
	vm->exited = true;
	text[strcspn(text, "\n")] = 0;
	snprintf(vm->exit_desc, sizeof(vm->exit_desc), "%s", text);
	vm->exit_status = !strncmp(text, "exited ", 7) ? atoi(text + 7) : -1;
	free(text);
	return true;
}

int vm_destroy(const char *name, char *err, size_t errlen)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (!vm) {
		pthread_mutex_unlock(&vms_lock);
		snprintf(err, errlen, "host %s has no VM named %s", fd_cfg.name, name);
		return 404;
	}
	table_remove(vm);
	pthread_mutex_unlock(&vms_lock);
	if (!check_exit(vm) && vm->pid > 0) {
		char *ctl = vm_control_path(vm);
		char e[256];
		json_decref(qmp_call(ctl, "quit", NULL, e, sizeof(e)));
		free(ctl);
		for (int i = 0; i < 400 && !check_exit(vm); i++)
			usleep(5000);
		if (!check_exit(vm)) {
			kill(vm->pid, SIGKILL);
			for (int i = 0; i < 100 && !check_exit(vm); i++)
				usleep(20000);
		}
	}
	if (json_string_value(json_object_get(vm->spec, "net")))
		tap_remove(vm->name);
	long hold = test_delay_ms("FERRYD_TEST_DELAY_REMOVE_MS");
	if (hold)
		usleep((useconds_t)hold * 1000);
	remove_dir(vm->dir);
	if (vm->incoming && vm->created)   /* a copy that never ran here: half-written */
		images_remove(vm->created);
	logf_("VM %s removed", name);
	vm_free(vm);
	return 200;
}

/* FERRYD_TEST_DELAY_ARRIVAL_MS (ferryd.h): an incoming VM whose ferry-vm
 * runs the guest is held "incoming" that long after it was first seen so. */
static bool arrival_held(struct vm *vm)
{
	long hold = test_delay_ms("FERRYD_TEST_DELAY_ARRIVAL_MS");
	if (!hold)
		return false;
	if (!vm->arrived_ms)
		vm->arrived_ms = mono_ms();
	return mono_ms() - vm->arrived_ms < hold;
}

json_t *vm_json(struct vm *vm, bool with_status)
{
	check_exit(vm);
	const char *state = vm->exited ? "exited" : vm->incoming ? "incoming" : "running";
	json_t *j = json_pack("{s:s, s:s, s:i, s:O}", "name", vm->name, "state", state, "pid",
			      (int)vm->pid, "spec", vm->spec);
	if (vm->exited) {
		char p[PATH_MAX + 32];
		vm_path(vm, "console.log", p, sizeof(p));
		char *t = file_tail(p, 10, 8192);
		json_object_set_new(j, "exit", json_string(vm->exit_desc));
		json_object_set_new(j, "exit_status", json_integer(vm->exit_status));
		json_object_set_new(j, "last_console", json_string(t));
		free(t);
		vm_path(vm, "output.log", p, sizeof(p));   /* ferry-vm's own words: why it ended */
		t = file_tail(p, 3, 2048);
		json_object_set_new(j, "last_output", json_string(t));
		free(t);
	} else if (with_status) {
		char *ctl = vm_control_path(vm);
		char e[256];
		json_t *st = qmp_call(ctl, "query-status", NULL, e, sizeof(e));
		free(ctl);
		const char *s = json_string_value(json_object_get(st, "status"));
		if (s) {
			json_object_set_new(j, "vm_status", json_string(s));
			if (!strcmp(s, "running") && vm->incoming && arrival_held(vm)) {
				/* (a test hook: still said to be arriving) */
			} else if (!strcmp(s, "running")) {
				if (vm->incoming) {   /* arrived: its migration secret is spent */
					char p[PATH_MAX + 32];
					vm_path(vm, "migration.secret", p, sizeof(p));
					unlink(p);
				}
				vm->incoming = false;
				json_object_set_new(j, "state", json_string("running"));
			}
			else if (!strcmp(s, "paused") || !strcmp(s, "postmigrate"))
				json_object_set_new(j, "state", json_string("paused"));
		}
		json_decref(st);
	}
	return j;
}

json_t *vms_list(void)
{
	json_t *a = json_array();
	pthread_mutex_lock(&vms_lock);
	for (int i = 0; i < nvms; i++)
		if (!vms[i]->leaving)   /* migrated away: going */
			json_array_append_new(a, vm_json(vms[i], false));
	pthread_mutex_unlock(&vms_lock);
	return a;
}

char *vm_console(const char *name, bool *found)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	char p[PATH_MAX + 32];
	if (vm)
		vm_path(vm, "console.log", p, sizeof(p));
	pthread_mutex_unlock(&vms_lock);
	*found = vm != NULL;
	return vm ? file_tail(p, 0, 64 * 1024) : NULL;
}

/* Finds the VMs of an earlier ferryd from STATE/vms/ (started or ended). */
bool vms_init(char *err, size_t errlen)
{
	char p[PATH_MAX + 32];
	snprintf(p, sizeof(p), "%s/vms", fd_cfg.state_dir);
	mkdir(fd_cfg.state_dir, 0700);
	if (mkdir(p, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create %s: %s", p, strerror(errno));
		return false;
	}
	DIR *d = opendir(p);
	if (!d) {
		snprintf(err, errlen, "cannot read %s: %s", p, strerror(errno));
		return false;
	}
	struct dirent *e;
	while ((e = readdir(d)) && nvms < MAX_VMS) {
		if (e->d_name[0] == '.')
			continue;
		struct vm *vm = calloc(1, sizeof(*vm));
		snprintf(vm->name, sizeof(vm->name), "%s", e->d_name);
		snprintf(vm->dir, sizeof(vm->dir), "%s/%s", p, e->d_name);
		char f[PATH_MAX + 32];
		vm_path(vm, "spec.json", f, sizeof(f));
		json_t *saved = json_load_file(f, 0, NULL);
		vm_path(vm, "pid", f, sizeof(f));
		char *pid = read_file(f, NULL);
		if (!saved || !pid) {   /* a half-made directory */
			json_decref(saved);
			free(pid);
			remove_dir(vm->dir);
			free(vm);
			continue;
		}
		vm->spec = json_incref(json_object_get(saved, "spec"));
		vm->incoming = json_is_true(json_object_get(saved, "incoming"));
		vm->pid = atoi(pid);
		free(pid);
		json_decref(saved);
		check_exit(vm);
		/* an HA VM found killed or vanished: its host may have died with
		 * it, and HA may have restarted it elsewhere since; its HA record
		 * decides whether it starts here again, as for a fenced one
		 * (ha_agent.c, restart_fenced), not VM monitoring */
		vm->fenced = vm->exited && vm->exit_status == -1 && ha_wanted(vm->spec);
		vms[nvms++] = vm;
		logf_("found VM %s (pid %d, %s)", vm->name, (int)vm->pid,
		      vm->exited ? vm->exit_desc : "running");
	}
	closedir(d);
	return true;
}

/* Logs each VM that ends (its status and the console's last lines). */
void *vms_watch(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&vms_lock);
		for (int i = 0; i < nvms; i++) {
			struct vm *vm = vms[i];
			if (vm->exited || vm->leaving)
				continue;
			if (check_exit(vm)) {
				char p[PATH_MAX + 32];
				vm_path(vm, "console.log", p, sizeof(p));
				char *t = file_tail(p, 5, 4096);
				logf_("VM %s ended (%s); console's last lines:\n%s", vm->name,
				      vm->exit_desc, t);
				free(t);
			}
		}
		pthread_mutex_unlock(&vms_lock);
		usleep(500000);
	}
	return NULL;
}

char *vm_datastore_path(const char *ref, char *err, size_t errlen)
{
	return resolve(ref, err, errlen);
}

char *vm_datastore_new_path(const char *ref, char *err, size_t errlen)
{
	return locate(ref, true, err, errlen);
}

/* spec.json as vm_start writes it. Under vms_lock. */
static void save_spec(struct vm *vm)
{
	char path[PATH_MAX + 32];
	json_t *saved = json_pack("{s:s, s:O, s:b}", "name", vm->name, "spec", vm->spec,
				  "incoming", vm->incoming);
	char *text = json_dumps(saved, JSON_INDENT(2));
	json_decref(saved);
	vm_path(vm, "spec.json", path, sizeof(path));
	write_file(path, text);
	free(text);
}

void vm_set_spec(const char *name, json_t *spec)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (vm) {
		json_decref(vm->spec);
		vm->spec = json_incref(spec);
		vm->published = false;   /* its HA record names the new disks (ha_publish) */
		save_spec(vm);
	}
	pthread_mutex_unlock(&vms_lock);
}
