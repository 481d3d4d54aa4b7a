/*
 * vmm.c - the monitor around one machine: what the control socket can ask
 * of it, and how signals end it.
 *
 * Commands are small functions in one table; each answers with a JSON
 * object or fills in an error class and a one-line description. Migration
 * commands live in migrate/ and are only dispatched from here.
 */
#include "vmm.h"
#include "control/control.h"
#include "machine/vm.h"
#include "migrate/migrate.h"
#include "storage/diskmove.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static json_t *cmd_query_status(void *ctx, json_t *args, const char **cls, char *err,
				size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	bool running = machine_running(v->machine);
	const char *status = running ? "running" : "paused";
	if (v->in)
		status = "inmigrate";
	else if (v->mig && migration_is_done(v->mig))
		status = "postmigrate";
	return json_pack("{s:s, s:b, s:i}", "status", status, "running", running && !v->in,
			 "harts", (int)v->machine->nharts);
}

static json_t *cmd_stop(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	(void)args;
	if (v->in) {
		*cls = "GenericError";
		snprintf(err, errlen, "the guest is not running yet (incoming migration)");
		return NULL;
	}
	if (machine_running(v->machine)) {
		machine_pause(v->machine);
		vmm_event(v, "STOP", json_object());
	}
	return json_object();
}

static json_t *cmd_cont(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	(void)args;
	if (v->in || (v->mig && migration_is_done(v->mig))) {
		*cls = "GenericError";
		snprintf(err, errlen, v->in ? "an incoming migration has not finished"
					    : "the guest has migrated away; it runs elsewhere now");
		return NULL;
	}
	if (v->mig && migration_is_active(v->mig)) {
		*cls = "GenericError";
		snprintf(err, errlen, "a migration is in progress; cancel it first");
		return NULL;
	}
	if (!machine_running(v->machine)) {
		machine_resume(v->machine);
		vmm_event(v, "RESUME", json_object());
	}
	return json_object();
}

static json_t *cmd_quit(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	machine_exit(v->machine, EXIT_QUIT);
	return json_object();
}

static const struct control_cmd vmm_commands[] = {
	{ "query-status", cmd_query_status },
	{ "stop", cmd_stop },
	{ "cont", cmd_cont },
	{ "quit", cmd_quit },
	{ "migrate", migration_cmd_migrate },
	{ "query-migrate", migration_cmd_query },
	{ "migrate-cancel", migration_cmd_cancel },
	{ "migrate-set-parameters", migration_cmd_set_parameters },
	{ "save", migration_cmd_save },
	{ "disk-move", disk_move_cmd_start },
	{ "query-disk-move", disk_move_cmd_query },
	{ "disk-move-cancel", disk_move_cmd_cancel },
	{ NULL, NULL },
};

int vmm_control_start(struct vmm *v, const char *path, char *err, size_t errlen)
{
	v->control = control_start(path, vmm_commands, v, err, errlen);
	return v->control ? 0 : -1;
}

void vmm_event(struct vmm *v, const char *name, json_t *data)
{
	if (v->control)
		control_event(v->control, name, data);
	else
		json_decref(data);
}

/* ---- signals ------------------------------------------------------------------- */

static void *signal_thread(void *arg)
{
	struct vmm *v = arg;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	int sig;
	while (sigwait(&set, &sig) == 0) {
		if (v->machine && !v->in) {
			machine_exit(v->machine, EXIT_QUIT);
			return NULL;
		}
		/* no guest runs here yet (booting or waiting for a migration):
		 * nothing to save, end at once */
		_exit(1);
	}
	return NULL;
}

void vmm_handle_signals(struct vmm *v)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_t t;
	pthread_create(&t, NULL, signal_thread, v);
	pthread_detach(t);
}

void vmm_shutdown(struct vmm *v)
{
	/* the migration first: its thread still sends events */
	disk_move_destroy(v);
	migration_destroy(v->mig);
	v->mig = NULL;
	if (v->control) {
		control_stop(v->control);
		v->control = NULL;
	}
}
