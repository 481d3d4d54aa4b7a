/*
 * ferry.c - the command-line client of ferry-center (and `ferry lab`).
 *
 *   ferry [--center URL] [--token-file FILE] [--lab LAB] [--json] COMMAND ...
 *
 * Every command is a row in the table below: its words, its usage line and
 * its handler. A handler parses its own options (getopt_long), calls the
 * REST API (docs/api.md) and prints either a human view or, with --json,
 * one JSON document. `--wait` and `task watch` draw a progress bar on a
 * terminal. `--lab LAB` takes the center's URL and token from the lab's
 * directory and runs inside the lab's client namespace (LAB-client).
 */
#include "cluster/common/http_client.h"
#include "cluster/common/util.h"

#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char center[512];
static char token[512];
static bool json_out;

struct command {
	const char *words;    /* "vm migrate" */
	const char *usage;
	int (*run)(int argc, char **argv);
};

/* ---- talking to ferry-center -------------------------------------------- */

static void print_error(json_t *reply, long status, const char *err)
{
	json_t *e = json_object_get(reply, "error");
	if (json_out) {
		json_t *doc = e ? json_pack("{s:O}", "error", e)
				: json_pack("{s:{s:I, s:s}}", "error", "status", (json_int_t)status,
					    "message", err);
		char *t = json_dumps(doc, JSON_INDENT(2));
		puts(t);
		free(t);
		json_decref(doc);
		return;
	}
	if (e) {
		fprintf(stderr, "ferry: %s\n", json_string_value(json_object_get(e, "message")) ?: "?");
		const char *hint = json_string_value(json_object_get(e, "hint"));
		if (hint)
			fprintf(stderr, "  what to do: %s\n", hint);
	} else {
		fprintf(stderr, "ferry: %s\n", err);
	}
}

/* A call to the API; NULL (error printed) unless the status is 2xx. */
static json_t *api(const char *method, const char *path, json_t *body)
{
	if (!center[0]) {
		fprintf(stderr, "ferry: no ferry-center given\n  what to do: pass --center URL, set "
				"FERRY_CENTER, or use --lab LAB after `ferry lab up`\n");
		return NULL;
	}
	char url[1200], err[1200];
	snprintf(url, sizeof(url), "%s/api/v1/%s", center, path);
	long status;
	json_t *r = http_json(method, url, token[0] ? token : NULL, body, 30000, &status, err,
			      sizeof(err));
	if (!r) {
		char msg[1500];
		snprintf(msg, sizeof(msg), "cannot reach ferry-center at %s: %s\n  what to do: is it "
			 "running? (ferry lab up, or --center URL)", center, err);
		print_error(NULL, status, msg);
		return NULL;
	}
	if (status >= 300) {
		if (status == 401 && !token[0] && !json_out)
			fprintf(stderr, "ferry: no token: pass --token-file FILE or set "
					"FERRY_TOKEN_FILE\n");
		print_error(r, status, "error");
		json_decref(r);
		return NULL;
	}
	return r;
}

/* api() with the path formatted from fmt (relative to /api/v1/); takes the
 * reference to body (NULL: none). The call every command makes. */
static json_t *apif(const char *method, json_t *body, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static json_t *apif(const char *method, json_t *body, const char *fmt, ...)
{
	char path[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(path, sizeof(path), fmt, ap);
	va_end(ap);
	json_t *r = NULL;
	if (n < 0 || (size_t)n >= sizeof(path))
		fprintf(stderr, "ferry: request path too long (%d bytes)\n", n);
	else
		r = api(method, path, body);
	json_decref(body);
	return r;
}

static void print_json(json_t *j)
{
	char *t = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	puts(t);
	free(t);
}

/* The reply printed as it came (a command without a human view); exit status. */
static int print_reply(json_t *r)
{
	if (!r)
		return 1;
	print_json(r);
	json_decref(r);
	return 0;
}

static const char *str(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : "-";
}

/* ---- option parsing ------------------------------------------------------- */

static const struct command *current;

static int usage_error(const char *msg)
{
	fprintf(stderr, "ferry: %s\nusage: ferry %s\n", msg, current->usage);
	return 2;
}

/* Runs getopt_long over a command's argv; 'h' means --help. */
static int next_opt(int argc, char **argv, const struct option *opts)
{
	return getopt_long(argc, argv, "h", opts, NULL);
}

static bool wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return true;
	return false;
}

/* ---- hosts, datastores, networks ------------------------------------------ */

static int cmd_host_list(int argc, char **argv)
{
	(void)argc; (void)argv;
	json_t *r = apif("GET", NULL, "hosts");
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		printf("%-8s %-7s %-5s %-8s %5s %9s %9s %5s %4s %s\n", "HOST", "ALIVE", "MAINT",
		       "STANDBY", "HARTS", "MEM MiB", "FREE MiB", "LOAD", "VMS", "MIGRATIONS");
		size_t i;
		json_t *h;
		json_array_foreach(json_object_get(r, "hosts"), i, h)
			printf("%-8s %-7s %-5s %-8s %5lld %9lld %9lld %5.2f %4lld %lld/%lld\n",
			       str(h, "name"), !json_is_true(json_object_get(h, "alive")) ? "NO"
			       : json_is_string(json_object_get(h, "unreachable")) ? "UNREACH" : "yes",
			       json_is_true(json_object_get(h, "maintenance")) ? "yes" : "no",
			       json_is_true(json_object_get(h, "entering_standby")) ? "entering"
			       : json_is_true(json_object_get(h, "standby")) ? "yes" : "no",
			       json_integer_value(json_object_get(h, "harts")),
			       json_integer_value(json_object_get(h, "mem_mib")),
			       json_integer_value(json_object_get(h, "free_mib")),
			       json_number_value(json_object_get(h, "load")),
			       json_integer_value(json_object_get(h, "vms")),
			       json_integer_value(json_object_get(h, "migrations_running")),
			       json_integer_value(json_object_get(h, "migration_limit")));
		json_array_foreach(json_object_get(r, "hosts"), i, h)
			if (json_is_string(json_object_get(h, "unreachable")))
				printf("  %s: %s (since %s)\n", str(h, "name"), str(h, "unreachable"),
				       str(h, "unreachable_since"));
	}
	json_decref(r);
	return 0;
}

static int cmd_host_show(int argc, char **argv)
{
	if (argc != 2)
		return usage_error("name one host");
	return print_reply(apif("GET", NULL, "hosts/%s", argv[1]));
}

static int cmd_host_maintenance(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[2], "enter") && strcmp(argv[2], "exit")))
		return usage_error("want HOST enter|exit");
	json_t *r = apif("POST", json_pack("{s:b}", "enabled", !strcmp(argv[2], "enter")),
			 "hosts/%s/maintenance", argv[1]);
	if (!r)
		return 1;
	if (json_out)
		print_json(r);
	else {
		printf("host %s: maintenance %s\n", argv[1],
		       json_is_true(json_object_get(r, "maintenance")) ? "on" : "off");
		json_t *ev = json_object_get(r, "evacuation");
		size_t i;
		json_t *v;
		if (json_array_size(json_object_get(ev, "tasks"))) {
			printf("  evacuating its VMs, tasks:");
			json_array_foreach(json_object_get(ev, "tasks"), i, v)
				printf(" %lld", json_integer_value(v));
			printf(" (ferry task list)\n");
		}
		json_array_foreach(json_object_get(ev, "refused"), i, v)
			printf("  VM %s stays: %s\n", str(v, "vm"), str(v, "reason"));
	}
	json_decref(r);
	return 0;
}

static int cmd_grouped(const char *path, const char *key)
{
	json_t *r = apif("GET", NULL, "%s", path);
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		size_t i, k;
		json_t *d, *h;
		json_array_foreach(json_object_get(r, key), i, d) {
			printf("%-12s", str(d, "name"));
			json_array_foreach(json_object_get(d, "hosts"), k, h)
				printf(" %s", json_string_value(h));
			if (json_object_get(d, "free_mib"))
				printf("  (%lld MiB free)", json_integer_value(json_object_get(d, "free_mib")));
			printf("\n");
		}
	}
	json_decref(r);
	return 0;
}

static int cmd_datastore_list(int argc, char **argv)
{
	(void)argc; (void)argv;
	return cmd_grouped("datastores", "datastores");
}

static int cmd_network_list(int argc, char **argv)
{
	(void)argc; (void)argv;
	return cmd_grouped("networks", "networks");
}

/* ---- tasks: show, watch with a progress bar ---------------------------------- */

/* ", disks to datastore DS" when the task moves disks, else "" */
static const char *datastore_note(json_t *t)
{
	static char note[120];
	json_t *ds = json_object_get(t, "datastore");
	snprintf(note, sizeof(note), "%s%s", json_is_string(ds) ? ", disks to datastore " : "",
		 json_is_string(ds) ? json_string_value(ds) : "");
	return note;
}

static void print_task(json_t *t)
{
	printf("task %lld: %s %s", json_integer_value(json_object_get(t, "id")), str(t, "kind"),
	       str(t, "vm"));
	if (!strcmp(str(t, "kind"), "migrate") || !strcmp(str(t, "kind"), "ft-failover"))
		printf(" %s -> %s", str(t, "source"), str(t, "destination"));
	else if (!strcmp(str(t, "kind"), "ft-enable"))
		printf(" primary %s, secondary %s", str(t, "source"), str(t, "destination"));
	printf("%s", datastore_note(t));
	printf(" (%s priority)\n  state: %s\n", str(t, "priority"), str(t, "state"));
	if (json_is_string(json_object_get(t, "waiting")))
		printf("  waiting: %s\n", str(t, "waiting"));
	if (json_is_string(json_object_get(t, "at")))
		printf("  at: %s\n", str(t, "at"));
	json_t *p = json_object_get(t, "progress");
	if (json_is_object(p) && !json_object_get(p, "percent"))   /* ft-enable: a phase */
		printf("  phase: %s\n", str(p, "phase"));
	else if (json_is_object(p))
		printf("  progress: %lld%%, %lld bytes sent, %lld left, %.0f Mbit/s, %s\n",
		       json_integer_value(json_object_get(p, "percent")),
		       json_integer_value(json_object_get(p, "transferred_bytes")),
		       json_integer_value(json_object_get(p, "remaining_bytes")),
		       json_number_value(json_object_get(p, "rate_mbps")), str(p, "phase"));
	if (json_is_integer(json_object_get(t, "total_ms")))
		printf("  total: %lld ms, downtime: %lld ms\n",
		       json_integer_value(json_object_get(t, "total_ms")),
		       json_integer_value(json_object_get(t, "downtime_ms")));
	json_t *e = json_object_get(t, "estimate");
	if (json_is_object(e))
		printf("  estimate: %lld ms total, %lld ms downtime\n",
		       json_integer_value(json_object_get(e, "total_ms")),
		       json_integer_value(json_object_get(e, "downtime_ms")));
	if (json_is_string(json_object_get(t, "error")))
		printf("  error: %s\n", str(t, "error"));
	printf("  created %s by %s\n", str(t, "created"), str(t, "user"));
}

static bool finished(json_t *t)
{
	const char *s = str(t, "state");
	return strcmp(s, "queued") && strcmp(s, "running");
}

static void draw_bar(json_t *t)
{
	json_t *p = json_object_get(t, "progress");
	int pct = (int)json_integer_value(json_object_get(p, "percent"));
	char bar[41];
	for (int i = 0; i < 40; i++)
		bar[i] = i < pct * 40 / 100 ? '#' : '.';
	bar[40] = 0;
	const char *state = str(t, "state");
	if (!strcmp(state, "queued"))
		fprintf(stderr, "\r\033[K[%s] queued: %s", bar,
			json_is_string(json_object_get(t, "waiting")) ? str(t, "waiting") : "next");
	else
		fprintf(stderr, "\r\033[K[%s] %3d%% %7.1f MiB %6.0f Mbit/s %s", bar, pct,
			json_integer_value(json_object_get(p, "transferred_bytes")) / 1048576.0,
			json_number_value(json_object_get(p, "rate_mbps")),
			json_is_string(json_object_get(p, "phase")) ? str(p, "phase") : state);
	fflush(stderr);
}

/* Follows a task to its end; exit status 0 when it succeeded. */
static int watch_task(long long id)
{
	bool tty = isatty(2) && !json_out;
	/* ferry-center holds each GET until the task ends (or, to redraw the
	 * bar, 200 ms): the end is heard at once, not at the next poll */
	json_t *t = NULL;
	for (;;) {
		json_decref(t);
		t = apif("GET", NULL, "tasks/%lld?wait=%d", id, tty ? 200 : 5000);
		if (!t)
			return 1;
		if (tty)
			draw_bar(t);
		if (finished(t))
			break;
		usleep(10000);   /* a ferry-center without ?wait answers at once */
	}
	if (tty)
		fprintf(stderr, "\n");
	if (json_out)
		print_json(t);
	else
		print_task(t);
	int rc = strcmp(str(t, "state"), "succeeded") ? 1 : 0;
	json_decref(t);
	return rc;
}

static int cmd_task_list(int argc, char **argv)
{
	static const struct option opts[] = { { "state", 1, 0, 's' }, { "vm", 1, 0, 'v' },
					      { "limit", 1, 0, 'l' }, { 0 } };
	char path[300] = "tasks?limit=50";
	int c;
	while ((c = next_opt(argc, argv, opts)) != -1) {
		size_t n = strlen(path);
		if (c == 's' || c == 'v' || c == 'l')
			snprintf(path + n, sizeof(path) - n, "&%s=%s",
				 c == 's' ? "state" : c == 'v' ? "vm" : "limit", optarg);
		else
			return usage_error("unknown option");
	}
	json_t *r = apif("GET", NULL, "%s", path);
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		printf("%-5s %-8s %-12s %-6s %-6s %-9s %-10s %-9s %5s %s\n", "ID", "KIND", "VM",
		       "FROM", "TO", "DISKS TO", "STATE", "PRIORITY", "PCT", "WAITING/ERROR");
		size_t i;
		json_t *t;
		json_array_foreach(json_object_get(r, "tasks"), i, t) {
			json_t *p = json_object_get(t, "progress");
			printf("%-5lld %-8s %-12s %-6s %-6s %-9s %-10s %-9s %4lld%% %s\n",
			       json_integer_value(json_object_get(t, "id")), str(t, "kind"),
			       str(t, "vm"), str(t, "source"), str(t, "destination"),
			       str(t, "datastore"), str(t, "state"),
			       str(t, "priority"), json_integer_value(json_object_get(p, "percent")),
			       json_is_string(json_object_get(t, "error")) ? str(t, "error")
			       : json_is_string(json_object_get(t, "waiting")) ? str(t, "waiting") : "");
		}
	}
	json_decref(r);
	return 0;
}

static long long task_id(int argc, char **argv)
{
	if (argc != 2)
		return -1;
	char *end;
	long long id = strtoll(argv[1], &end, 10);
	return *end || id <= 0 ? -1 : id;
}

static int cmd_task_show(int argc, char **argv)
{
	long long id = task_id(argc, argv);
	if (id < 0)
		return usage_error("want one task ID (a number: ferry task list)");
	json_t *t = apif("GET", NULL, "tasks/%lld", id);
	if (!t)
		return 1;
	if (json_out)
		print_json(t);
	else
		print_task(t);
	json_decref(t);
	return 0;
}

static int cmd_task_watch(int argc, char **argv)
{
	long long id = task_id(argc, argv);
	if (id < 0)
		return usage_error("want one task ID (a number: ferry task list)");
	return watch_task(id);
}

static int cmd_task_cancel(int argc, char **argv)
{
	long long id = task_id(argc, argv);
	if (id < 0)
		return usage_error("want one task ID (a number: ferry task list)");
	json_t *r = apif("POST", json_object(), "tasks/%lld/cancel", id);
	if (!r)
		return 1;
	if (json_out)
		print_json(r);
	else
		printf("task %lld: cancel requested (%s)\n", id,
		       str(json_object_get(r, "task"), "state"));
	json_decref(r);
	return 0;
}

/* ---- VMs ------------------------------------------------------------------- */

static int cmd_vm_create(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "kernel", 1, 0, 'k' }, { "initrd", 1, 0, 'i' }, { "append", 1, 0, 'a' },
		{ "mem", 1, 0, 'm' }, { "smp", 1, 0, 's' }, { "disk", 1, 0, 'd' },
		{ "net", 1, 0, 'n' }, { "host", 1, 0, 'H' }, { "ha", 1, 0, 'A' },
		{ "no-start", 0, 0, 'N' }, { 0 } };
	json_t *body = json_pack("{s:[]}", "disks");
	int c;
	while ((c = next_opt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'k': json_object_set_new(body, "kernel", json_string(optarg)); break;
		case 'i': json_object_set_new(body, "initrd", json_string(optarg)); break;
		case 'a': json_object_set_new(body, "append", json_string(optarg)); break;
		case 'n': json_object_set_new(body, "net", json_string(optarg)); break;
		case 'H': json_object_set_new(body, "host", json_string(optarg)); break;
		case 'A': json_object_set_new(body, "ha", json_string(optarg)); break;
		case 'N': json_object_set_new(body, "start", json_false()); break;
		case 'd': json_array_append_new(json_object_get(body, "disks"), json_string(optarg)); break;
		case 'm':
		case 's': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v <= 0) {
				json_decref(body);
				return usage_error(c == 'm' ? "--mem wants MiB, e.g. --mem 256"
							    : "--smp wants a number of harts");
			}
			json_object_set_new(body, c == 'm' ? "mem_mib" : "smp", json_integer(v));
			break;
		}
		default:
			json_decref(body);
			return usage_error("unknown option");
		}
	}
	if (optind != argc - 1 || !json_object_get(body, "kernel") ||
	    !json_object_get(body, "mem_mib")) {
		json_decref(body);
		return usage_error("want NAME, --kernel DS:PATH and --mem MiB");
	}
	json_object_set_new(body, "name", json_string(argv[optind]));
	json_t *r = apif("POST", body, "vms");
	if (!r)
		return 1;
	if (json_out)
		print_json(r);
	else
		printf("VM %s created on %s (%s)\n", argv[optind],
		       str(json_object_get(r, "vm"), "host"), str(json_object_get(r, "vm"), "state"));
	json_decref(r);
	return 0;
}

/* vm show's fault tolerance lines (the status ferryd keeps in etcd) */
static void print_ft(json_t *ft)
{
	if (!json_is_object(ft)) {
		printf("  fault tolerance: off\n");
		return;
	}
	printf("  fault tolerance: %s, primary %s, secondary %s\n", str(ft, "state"),
	       str(ft, "primary"), str(ft, "secondary"));
	if (json_object_get(ft, "checkpoints_per_s"))
		printf("    %.1f checkpoints/s (epoch %lld ms), %lld bytes an epoch, output "
		       "delayed %.1f ms, guest paused %.1f %% (%.2f ms a checkpoint)\n",
		       json_number_value(json_object_get(ft, "checkpoints_per_s")),
		       json_integer_value(json_object_get(ft, "epoch_ms")),
		       json_integer_value(json_object_get(ft, "bytes_per_epoch")),
		       json_number_value(json_object_get(ft, "added_latency_ms")),
		       json_number_value(json_object_get(ft, "slowdown_pct")),
		       json_number_value(json_object_get(ft, "pause_ms")));
	if (json_is_string(json_object_get(ft, "error")))
		printf("    %s\n", str(ft, "error"));
	json_t *fo = json_object_get(ft, "last_failover");
	if (json_is_object(fo))
		printf("    last failover: %s -> %s at epoch %lld, %s\n", str(fo, "from"),
		       str(fo, "to"), json_integer_value(json_object_get(fo, "epoch")), str(fo, "at"));
}

static int vm_simple(int argc, char **argv, const char *method, const char *action)
{
	if (argc != 2)
		return usage_error("name one VM");
	json_t *r = apif(method, strcmp(method, "GET") ? json_object() : NULL, "vms/%s%s%s",
			 argv[1], action ? "/" : "", action ? action : "");
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else if (!action && !strcmp(method, "GET")) {
		printf("VM %s on %s: %s, %lld MiB, %lld harts\n", str(r, "name"), str(r, "host"),
		       str(r, "state"), json_integer_value(json_object_get(r, "mem_mib")),
		       json_integer_value(json_object_get(r, "smp")));
		printf("  kernel %s initrd %s\n  append %s\n", str(r, "kernel"), str(r, "initrd"),
		       str(r, "append"));
		if (json_is_integer(json_object_get(r, "exit_status")))
			printf("  ended with status %lld; console's last lines:\n%s\n",
			       json_integer_value(json_object_get(r, "exit_status")),
			       str(r, "last_console"));
		json_t *mig = json_object_get(r, "migration");
		if (json_is_object(mig))
			printf("  migration: task %lld %s, %s -> %s%s\n",
			       json_integer_value(json_object_get(mig, "id")), str(mig, "state"),
			       str(mig, "source"), str(mig, "destination"), datastore_note(mig));
		if (json_is_string(json_object_get(r, "ha_waiting")))
			printf("  HA has not restarted it: %s\n", str(r, "ha_waiting"));
		print_ft(json_object_get(r, "ft"));
	} else if (action && !strcmp(action, "console")) {
		fputs(str(r, "console"), stdout);
	} else {
		json_t *t = json_object_get(r, "task");
		printf("VM %s: %s %s\n", argv[1], action ? action : "delete",
		       t ? str(t, "state") : "done");
		if (t && json_is_string(json_object_get(t, "error")))
			printf("  error: %s\n", str(t, "error"));
	}
	json_decref(r);
	return 0;
}

static int cmd_vm_start(int argc, char **argv) { return vm_simple(argc, argv, "POST", "start"); }
static int cmd_vm_stop(int argc, char **argv) { return vm_simple(argc, argv, "POST", "stop"); }
static int cmd_vm_delete(int argc, char **argv) { return vm_simple(argc, argv, "DELETE", NULL); }
static int cmd_vm_show(int argc, char **argv) { return vm_simple(argc, argv, "GET", NULL); }
static int cmd_vm_log(int argc, char **argv) { return vm_simple(argc, argv, "GET", "console"); }

static int cmd_vm_list(int argc, char **argv)
{
	(void)argc; (void)argv;
	json_t *r = apif("GET", NULL, "vms?limit=1000");
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		printf("%-16s %-8s %-10s %7s %4s\n", "VM", "HOST", "STATE", "MEM MiB", "SMP");
		size_t i;
		json_t *v;
		json_array_foreach(json_object_get(r, "vms"), i, v)
			printf("%-16s %-8s %-10s %7lld %4lld\n", str(v, "name"), str(v, "host"),
			       str(v, "state"), json_integer_value(json_object_get(v, "mem_mib")),
			       json_integer_value(json_object_get(v, "smp")));
	}
	json_decref(r);
	return 0;
}

static int cmd_vm_recommend(int argc, char **argv)
{
	if (argc != 2)
		return usage_error("name one VM");
	json_t *r = apif("GET", NULL, "vms/%s/recommend", argv[1]);
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		printf("VM %s runs on %s.\n", argv[1], str(r, "source"));
		size_t i;
		json_t *c;
		json_array_foreach(json_object_get(r, "candidates"), i, c) {
			json_t *e = json_object_get(c, "estimate");
			printf("  %lld. %-8s %lld MiB free, load %.2f, estimate %lld ms (downtime %lld ms)\n",
			       json_integer_value(json_object_get(c, "rank")), str(c, "host"),
			       json_integer_value(json_object_get(c, "free_mib")),
			       json_number_value(json_object_get(c, "load")),
			       json_integer_value(json_object_get(e, "total_ms")),
			       json_integer_value(json_object_get(e, "downtime_ms")));
			if (json_is_string(json_object_get(c, "note")))
				printf("     %s, into datastore %s\n", str(c, "note"),
				       str(c, "datastore"));
		}
		json_array_foreach(json_object_get(r, "refused"), i, c)
			printf("  refused %-8s %s\n", str(c, "host"), str(c, "reason"));
	}
	json_decref(r);
	return 0;
}

static int cmd_vm_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "to", 1, 0, 't' }, { "datastore", 1, 0, 'd' }, { "priority", 1, 0, 'p' },
		{ "at", 1, 0, 'a' }, { "downtime-ms", 1, 0, 'D' }, { "wait", 0, 0, 'w' },
		{ "bandwidth-mbps", 1, 0, 'B' }, { 0 } };
	json_t *body = json_object();
	bool wait = false;
	int c;
	while ((c = next_opt(argc, argv, opts)) != -1) {
		switch (c) {
		case 't': json_object_set_new(body, "to", json_string(optarg)); break;
		case 'p': json_object_set_new(body, "priority", json_string(optarg)); break;
		case 'a': json_object_set_new(body, "at", json_string(optarg)); break;
		case 'w': wait = true; break;
		case 'd': json_object_set_new(body, "datastore", json_string(optarg)); break;
		case 'D':
		case 'B': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v <= 0) {
				json_decref(body);
				return usage_error(c == 'D' ? "--downtime-ms wants a number of milliseconds"
							    : "--bandwidth-mbps wants a number of Mbit/s");
			}
			json_object_set_new(body, c == 'D' ? "downtime_ms" : "bandwidth_mbps",
					    json_integer(v));
			break;
		}
		default:
			json_decref(body);
			return usage_error("unknown option");
		}
	}
	if (optind != argc - 1) {
		json_decref(body);
		return usage_error("name one VM");
	}
	json_t *r = apif("POST", body, "vms/%s/migrate", argv[optind]);
	if (!r)
		return 1;
	json_t *t = json_object_get(r, "task");
	long long id = json_integer_value(json_object_get(t, "id"));
	if (!wait) {
		if (json_out)
			print_json(t);
		else
			printf("task %lld: migrate %s %s -> %s%s, %s\n", id, argv[optind],
			       str(t, "source"), str(t, "destination"), datastore_note(t),
			       str(t, "state"));
		json_decref(r);
		return 0;
	}
	if (!json_out)
		printf("migrating %s from %s to %s%s (task %lld)\n", argv[optind],
		       str(t, "source"), str(t, "destination"), datastore_note(t), id);
	json_decref(r);
	return watch_task(id);
}

/* vm ft enable NAME [--secondary HOST] [--epoch-ms N] [--wait] | vm ft disable NAME */
static int cmd_vm_ft(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "secondary", 1, 0, 's' }, { "epoch-ms", 1, 0, 'e' }, { "wait", 0, 0, 'w' },
		{ 0 } };
	if (argc < 2 || (strcmp(argv[1], "enable") && strcmp(argv[1], "disable")))
		return usage_error("say enable or disable");
	bool enable = !strcmp(argv[1], "enable"), wait = false;
	json_t *body = json_pack("{s:b}", "enabled", enable);
	int c;
	argc--;
	argv++;   /* [enable|disable, options..., NAME] */
	while ((c = next_opt(argc, argv, opts)) != -1) {
		char *end;
		long v;
		switch (c) {
		case 's': json_object_set_new(body, "secondary", json_string(optarg)); break;
		case 'w': wait = true; break;
		case 'e':
			v = strtol(optarg, &end, 10);
			if (*end || v < 5 || v > 10000) {
				json_decref(body);
				return usage_error("--epoch-ms wants 5 to 10000 milliseconds");
			}
			json_object_set_new(body, "epoch_ms", json_integer(v));
			break;
		default:
			json_decref(body);
			return usage_error("unknown option");
		}
	}
	if (optind != argc - 1 || (!enable && json_object_size(body) > 1)) {
		json_decref(body);
		return usage_error(optind != argc - 1 ? "name one VM"
						      : "ft disable takes only the VM's name");
	}
	json_t *r = apif("POST", body, "vms/%s/ft", argv[optind]);
	if (!r)
		return 1;
	json_t *t = json_object_get(r, "task");
	long long id = json_integer_value(json_object_get(t, "id"));
	if (wait && enable && !finished(t)) {
		if (!json_out)
			printf("protecting %s: primary %s, secondary %s (task %lld)\n", argv[optind],
			       str(t, "source"), str(t, "destination"), id);
		json_decref(r);
		return watch_task(id);
	}
	if (json_out)
		print_json(t);
	else if (enable)
		printf("task %lld: fault tolerance for %s: primary %s, secondary %s, %s\n", id,
		       argv[optind], str(t, "source"), str(t, "destination"), str(t, "state"));
	else
		printf("task %lld: fault tolerance of %s disabled: %s\n", id, argv[optind],
		       str(t, "state"));
	json_decref(r);
	return 0;
}

/* ---- audit, cluster --------------------------------------------------------- */

static int cmd_audit(int argc, char **argv)
{
	static const struct option opts[] = { { "vm", 1, 0, 'v' }, { "since", 1, 0, 's' },
					      { "verify", 0, 0, 'V' }, { "limit", 1, 0, 'l' }, { 0 } };
	char path[400] = "audit?limit=100";
	bool verify = false;
	int c;
	while ((c = next_opt(argc, argv, opts)) != -1) {
		size_t n = strlen(path);
		if (c == 'V')
			verify = true;
		else if (c == 'v' || c == 's' || c == 'l')
			snprintf(path + n, sizeof(path) - n, "&%s=%s",
				 c == 'v' ? "vm" : c == 's' ? "since" : "limit", optarg);
		else
			return usage_error("unknown option");
	}
	if (verify) {
		json_t *r = apif("GET", NULL, "audit/verify");
		if (!r)
			return 1;
		bool ok = json_is_true(json_object_get(r, "ok"));
		if (json_out)
			print_json(r);
		else if (ok)
			printf("audit trail intact: %lld records, each chained to the one before\n",
			       json_integer_value(json_object_get(r, "records")));
		else
			printf("audit trail BROKEN at record %lld: %s\n",
			       json_integer_value(json_object_get(r, "first_bad")), str(r, "reason"));
		json_decref(r);
		return ok ? 0 : 1;
	}
	json_t *r = apif("GET", NULL, "%s", path);
	if (!r)
		return 1;
	if (json_out) {
		print_json(r);
	} else {
		size_t i;
		json_t *a;
		json_array_foreach(json_object_get(r, "records"), i, a)
			printf("%5lld %s %-12s %-14s %-18s %-12s %s\n",
			       json_integer_value(json_object_get(a, "id")), str(a, "time"),
			       str(a, "user"), str(a, "from"), str(a, "action"), str(a, "target"),
			       str(a, "result"));
	}
	json_decref(r);
	return 0;
}

/* DRS's state and its recommendations, for a person */
static void print_drs(json_t *d)
{
	printf("DRS: mode %s, threshold %lld, imbalance %.3f (tolerance %.2f), decided by %s, "
	       "pass %lld%s%s\n", str(d, "mode"), json_integer_value(json_object_get(d, "threshold")),
	       json_number_value(json_object_get(d, "imbalance")),
	       json_number_value(json_object_get(d, "tolerance")), str(d, "leader"),
	       json_integer_value(json_object_get(d, "passes")),
	       json_is_string(json_object_get(d, "waiting")) ? ", waiting: " : "",
	       json_is_string(json_object_get(d, "waiting")) ? str(d, "waiting") : "");
	const char *lists[] = { "recommendations", "applied" };
	for (int k = 0; k < 2; k++) {
		size_t i;
		json_t *r;
		json_array_foreach(json_object_get(d, lists[k]), i, r)
			printf("  %s %3lld  %-12s %s -> %s  %s\n", k ? "applied" : "recommend",
			       json_integer_value(json_object_get(r, "id")), str(r, "vm"),
			       str(r, "from"), str(r, "to"), str(r, "reason"));
	}
}

/* etcd's state: without it HA does nothing, and says why */
static void print_etcd(json_t *etcd)
{
	if (!etcd)
		return;
	if (json_is_true(json_object_get(etcd, "ok"))) {
		printf("etcd: ok\n");
		return;
	}
	printf("etcd: NOT ANSWERING since %s (%s)\n  %s\n",
	       json_string_value(json_object_get(etcd, "since")) ?: "?",
	       json_string_value(json_object_get(etcd, "error")) ?: "?",
	       json_string_value(json_object_get(etcd, "ha")) ?: "");
}

static int cmd_cluster_show(int argc, char **argv)
{
	(void)argc; (void)argv;
	json_t *r = apif("GET", NULL, "cluster");
	if (!r || json_out)
		return print_reply(r);
	print_json(json_object_get(r, "settings"));
	print_drs(json_object_get(r, "drs"));
	print_etcd(json_object_get(r, "etcd"));
	json_decref(r);
	return 0;
}

static int cmd_cluster_drs_apply(int argc, char **argv)
{
	if (argc > 2)
		return usage_error("want at most one recommendation ID (ferry cluster show)");
	json_t *body = argc == 2 ? json_pack("{s:I}", "id", (json_int_t)atoll(argv[1]))
				 : json_object();
	json_t *r = apif("POST", body, "drs/apply");
	if (!r || json_out)
		return print_reply(r);
	size_t i;
	json_t *t;
	json_array_foreach(json_object_get(r, "tasks"), i, t)
		printf("task %lld queued\n", json_integer_value(t));
	json_decref(r);
	return 0;
}

static int cmd_cluster_rule_add(int argc, char **argv)
{
	static const struct option opts[] = { { "affinity", 0, 0, 'a' },
					      { "anti-affinity", 0, 0, 'n' }, { 0 } };
	const char *kind = NULL;
	int c;
	while ((c = next_opt(argc, argv, opts)) != -1) {
		if (c != 'a' && c != 'n')
			return usage_error("unknown option");
		if (kind)
			return usage_error("one of --affinity or --anti-affinity");
		kind = c == 'a' ? "affinity" : "anti-affinity";
	}
	if (!kind || argc - optind != 2)
		return usage_error("want NAME --affinity|--anti-affinity VM1,VM2[,...]");
	json_t *vms = json_array();
	char *list = argv[optind + 1], *save = NULL;
	for (char *v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save))
		json_array_append_new(vms, json_string(v));
	json_t *r = apif("POST", json_pack("{s:s, s:s, s:o}", "name", argv[optind], "kind", kind,
					   "vms", vms), "rules");
	if (!r || json_out)
		return print_reply(r);
	printf("rule %s added (%s)%s\n", str(r, "name"), str(r, "kind"),
	       json_is_true(json_object_get(r, "violated")) ? ": broken by the placement now, DRS "
	       "moves the VMs when it runs" : "");
	json_decref(r);
	return 0;
}

static int cmd_cluster_rule_list(int argc, char **argv)
{
	(void)argc; (void)argv;
	json_t *r = apif("GET", NULL, "rules");
	if (!r || json_out)
		return print_reply(r);
	printf("%-16s %-14s %-8s %s\n", "RULE", "KIND", "BROKEN", "VMS");
	size_t i, j;
	json_t *x, *v;
	json_array_foreach(json_object_get(r, "rules"), i, x) {
		printf("%-16s %-14s %-8s ", str(x, "name"), str(x, "kind"),
		       json_is_true(json_object_get(x, "violated")) ? "yes" : "no");
		json_array_foreach(json_object_get(x, "vms"), j, v)
			printf("%s%s", j ? "," : "", json_string_value(v));
		printf("\n");
	}
	json_decref(r);
	return 0;
}

static int cmd_cluster_rule_delete(int argc, char **argv)
{
	if (argc != 2)
		return usage_error("name one rule");
	json_t *r = apif("DELETE", NULL, "rules/%s", argv[1]);
	if (!r || json_out)
		return print_reply(r);
	printf("rule %s deleted\n", argv[1]);
	json_decref(r);
	return 0;
}

static int cmd_cluster_set(int argc, char **argv)
{
	if (argc < 2)
		return usage_error("want KEY=VALUE");
	json_t *body = json_object();
	for (int i = 1; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq) {
			json_decref(body);
			return usage_error("want KEY=VALUE, e.g. migrations_per_host=2");
		}
		*eq = 0;
		json_object_set_new(body, argv[i], json_string(eq + 1));
	}
	json_t *r = apif("POST", body, "cluster");
	if (!r)
		return 1;
	print_json(json_out ? r : json_object_get(r, "settings"));
	json_decref(r);
	return 0;
}

/* ---- the lab ---------------------------------------------------------------- */

static char self_dir[PATH_MAX];

static int cmd_lab(int argc, char **argv)
{
	/* the namespaces are plumbing: scripts/ferry-lab does them */
	const char *tries[] = { "/../scripts/ferry-lab", "/ferry-lab", "/../share/ferry/ferry-lab" };
	char script[PATH_MAX + 64];
	for (int i = 0; i < 3; i++) {
		snprintf(script, sizeof(script), "%s%s", self_dir, tries[i]);
		if (access(script, X_OK) == 0)
			break;
		script[0] = 0;
	}
	if (!script[0]) {
		fprintf(stderr, "ferry: cannot find the ferry-lab script near %s\n", self_dir);
		return 1;
	}
	char **args = calloc(argc + 2, sizeof(char *));
	args[0] = script;
	for (int i = 0; i < argc; i++)
		args[i + 1] = argv[i];
	setenv("FERRY_BIN", self_dir, 1);
	execv(script, args);
	perror("ferry: ferry-lab");
	return 1;
}

static int cmd_lab_up(int argc, char **argv)
{
	argv[0] = "up";
	return cmd_lab(argc, argv);
}

static int cmd_lab_down(int argc, char **argv)
{
	argv[0] = "down";
	return cmd_lab(argc, argv);
}

/* --lab LAB: the lab's center, token and client namespace */
static bool use_lab(const char *lab)
{
	char p[PATH_MAX], dir[PATH_MAX];
	snprintf(p, sizeof(p), "/run/ferry-lab/%s", lab);
	char *d = read_file(p, NULL);
	if (!d) {
		fprintf(stderr, "ferry: no lab named %s is up\n  what to do: ferry lab up --name %s\n",
			lab, lab);
		return false;
	}
	d[strcspn(d, "\n")] = 0;
	snprintf(dir, sizeof(dir), "%s", d);
	free(d);
	snprintf(p, sizeof(p), "%s/center.url", dir);
	char *u = read_file(p, NULL);
	if (u) {
		u[strcspn(u, "\n")] = 0;
		if (!center[0])
			snprintf(center, sizeof(center), "%s", u);
		free(u);
	}
	snprintf(p, sizeof(p), "%s/token", dir);
	if (!token[0]) {
		char *t = read_file(p, NULL);
		if (t) {
			t[strcspn(t, "\n")] = 0;
			snprintf(token, sizeof(token), "%s", t);
			free(t);
		}
	}
	snprintf(p, sizeof(p), "/run/netns/%s-client", lab);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
		fprintf(stderr, "ferry: cannot enter the lab's client namespace %s (root needed)\n", p);
		return false;
	}
	close(fd);
	return true;
}

/* ---- the table and main ----------------------------------------------------- */

static const struct command commands[] = {
	{ "host list", "host list", cmd_host_list },
	{ "host show", "host show HOST", cmd_host_show },
	{ "host maintenance", "host maintenance HOST enter|exit", cmd_host_maintenance },
	{ "datastore list", "datastore list", cmd_datastore_list },
	{ "network list", "network list", cmd_network_list },
	{ "vm create", "vm create NAME --kernel DS:PATH [--initrd DS:PATH] [--append CMDLINE] "
		       "--mem MiB [--smp N] [--disk DS:PATH]... [--net NETWORK[,mac=MAC]] "
		       "[--host H] [--ha high|medium|low|off] [--no-start]", cmd_vm_create },
	{ "vm start", "vm start NAME", cmd_vm_start },
	{ "vm stop", "vm stop NAME", cmd_vm_stop },
	{ "vm delete", "vm delete NAME", cmd_vm_delete },
	{ "vm show", "vm show NAME", cmd_vm_show },
	{ "vm list", "vm list", cmd_vm_list },
	{ "vm log", "vm log NAME   (the guest console so far)", cmd_vm_log },
	{ "vm recommend", "vm recommend NAME   (destinations ranked, refusals with reasons)",
	  cmd_vm_recommend },
	{ "vm migrate", "vm migrate NAME [--to HOST] [--datastore DS] [--priority high|standard] "
			"[--at TIME|+10m] [--downtime-ms N] [--bandwidth-mbps N] [--wait]", cmd_vm_migrate },
	{ "vm ft", "vm ft enable NAME [--secondary HOST] [--epoch-ms N] [--wait] | vm ft disable NAME",
	  cmd_vm_ft },
	{ "task list", "task list [--state S] [--vm NAME] [--limit N]", cmd_task_list },
	{ "task show", "task show ID", cmd_task_show },
	{ "task watch", "task watch ID", cmd_task_watch },
	{ "task cancel", "task cancel ID", cmd_task_cancel },
	{ "audit", "audit [--vm NAME] [--since TIME] [--verify]", cmd_audit },
	{ "cluster show", "cluster show", cmd_cluster_show },
	{ "cluster set", "cluster set KEY=VALUE...   (migrations_per_host=N, host.H.migrations=N, "
	  "ha.host_failures_tolerated=N, drs=off|manual|partial|full, drs.threshold=1..5, "
	  "drs.cooldown_s=S, drs.interval_s=S, dpm=on|off, dpm.min_hosts=N, dpm.delay_s=S)",
	  cmd_cluster_set },
	{ "cluster drs apply", "cluster drs apply [ID]   (DRS's recommendations, or the one ID)",
	  cmd_cluster_drs_apply },
	{ "cluster rule add", "cluster rule add NAME --affinity|--anti-affinity VM1,VM2[,...]",
	  cmd_cluster_rule_add },
	{ "cluster rule list", "cluster rule list", cmd_cluster_rule_list },
	{ "cluster rule delete", "cluster rule delete NAME", cmd_cluster_rule_delete },
	{ "lab up", "lab up [--hosts N] [--name LAB] [--dir DIR]", cmd_lab_up },
	{ "lab down", "lab down [--name LAB]", cmd_lab_down },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	fprintf(f, "usage: ferry [--center URL] [--token-file FILE] [--lab LAB] [--json] COMMAND\n"
		   "(also FERRY_CENTER and FERRY_TOKEN_FILE). Commands (each takes --help):\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  ferry %s\n", commands[i].usage);
}

/* How many of argv's words a command's words match (0: no match). */
static int match(const struct command *c, int argc, char **argv)
{
	char words[64];
	snprintf(words, sizeof(words), "%s", c->words);
	int n = 0;
	for (char *save, *w = strtok_r(words, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
		if (n >= argc || strcmp(argv[n], w))
			return 0;
		n++;
	}
	return n;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "center", 1, 0, 'c' }, { "token-file", 1, 0, 't' }, { "json", 0, 0, 'j' },
		{ "lab", 1, 0, 'l' }, { "help", 0, 0, 'h' }, { 0 } };
	const char *token_file = getenv("FERRY_TOKEN_FILE"), *lab = NULL;
	if (getenv("FERRY_CENTER"))
		snprintf(center, sizeof(center), "%s", getenv("FERRY_CENTER"));
	ssize_t n = readlink("/proc/self/exe", self_dir, sizeof(self_dir) - 1);
	if (n > 0) {
		self_dir[n] = 0;
		*strrchr(self_dir, '/') = 0;
	}
	int c;
	while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': snprintf(center, sizeof(center), "%s", optarg); break;
		case 't': token_file = optarg; break;
		case 'j': json_out = true; break;
		case 'l': lab = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc == 0) {
		usage(stderr);
		return 2;
	}
	const struct command *best = NULL;
	int words = 0;
	for (size_t i = 0; i < NCOMMANDS; i++) {
		int m = match(&commands[i], argc, argv);
		if (m > words) {
			best = &commands[i];
			words = m;
		}
	}
	if (!best) {
		fprintf(stderr, "ferry: unknown command \"%s%s%s\"\n", argv[0], argc > 1 ? " " : "",
			argc > 1 ? argv[1] : "");
		usage(stderr);
		return 2;
	}
	current = best;
	/* the handler sees its own argv: [last word, args...] */
	int cargc = argc - words + 1;
	char **cargv = argv + words - 1;
	if (strncmp(best->words, "lab", 3) && wants_help(cargc, cargv)) {
		printf("usage: ferry %s\n", best->usage);
		return 0;
	}
	if (!strncmp(best->words, "lab", 3))
		return best->run(cargc, cargv);
	if (token_file) {
		char *t = read_file(token_file, NULL);
		if (!t) {
			fprintf(stderr, "ferry: cannot read token file %s\n", token_file);
			return 1;
		}
		t[strcspn(t, "\n")] = 0;
		snprintf(token, sizeof(token), "%s", t);
		free(t);
	}
	if (lab && !use_lab(lab))
		return 1;
	while (strlen(center) && center[strlen(center) - 1] == '/')
		center[strlen(center) - 1] = 0;
	http_client_init();
	optind = 0;   /* getopt again, for the handler */
	return best->run(cargc, cargv);
}
