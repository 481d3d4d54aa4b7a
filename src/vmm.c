/*
 * vmm.c - the monitor around one machine: what the control socket can ask
 * of it, and how signals end it.
 *
 * Commands are small functions in one table; each answers with a JSON
 * object or fills in an error class and a one-line description. Migration
 * commands live in migrate/ and are only dispatched from here.
 *
 * A paused guest is always paused for a reason that query-status names
 * (vmm.h, enum vmm_hold): the user's `stop`, a `save`, a migration's
 * switchover, the end of a migration (postmigrate), or a handoff whose
 * outcome is unknown. The last two are the ones that keep a guest from
 * being lost or run twice: a source that handed its guest over stays until
 * told `quit`, and one that cannot tell whether the destination took the
 * guest resumes only when `cont` is forced, which every client hears.
 */
#include "vmm.h"
#include "control/control.h"
#include "machine/heartbeat.h"
#include "machine/vm.h"
#include "migrate/channel.h"
#include "migrate/migrate.h"
#include "storage/diskmove.h"
#include "migrate/migration.h"
#include "migrate/ft.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* ---- holds ------------------------------------------------------------------ */

static enum vmm_hold hold_get(struct vmm *v, char *desc, size_t desclen)
{
	pthread_mutex_lock(&v->lock);
	enum vmm_hold h = v->hold;
	if (desc)
		snprintf(desc, desclen, "%s", v->hold_desc);
	pthread_mutex_unlock(&v->lock);
	return h;
}

static void hold_set(struct vmm *v, enum vmm_hold h, const char *desc)
{
	pthread_mutex_lock(&v->lock);
	v->hold = h;
	snprintf(v->hold_desc, sizeof(v->hold_desc), "%s", desc ? desc : "");
	pthread_mutex_unlock(&v->lock);
}

/* Why the guest is not running: a short word and a sentence for people.
 * NULL when it runs. */
static const char *pause_reason(struct vmm *v, char *desc, size_t desclen)
{
	if (v->in) {
		snprintf(desc, desclen, "waiting for an incoming migration; the guest "
			 "starts here when it has arrived whole");
		return "inmigrate";
	}
	char held[sizeof(v->hold_desc)];
	enum vmm_hold h = hold_get(v, held, sizeof(held));
	switch (h) {
	case VMM_HOLD_POSTMIGRATE:
		snprintf(desc, desclen, "%s", held);
		return "postmigrate";
	case VMM_HOLD_HANDOFF_UNKNOWN:
		snprintf(desc, desclen, "%s", held);
		return "handoff-unknown";
	default:
		break;
	}
	if (machine_running(v->machine))
		return NULL;
	switch (h) {
	case VMM_HOLD_USER:
		snprintf(desc, desclen, "stopped by the stop command; cont resumes it");
		return "user";
	case VMM_HOLD_SAVE:
		snprintf(desc, desclen, "saved to a file and kept stopped, so that its "
			 "disks do not move on past the saved state; cont resumes it, quit "
			 "ends it");
		return "save";
	default:
		break;
	}
	if (migration_is_active(v->mig)) {
		snprintf(desc, desclen, "stopped by the migration for its switchover; it "
			 "resumes here if the migration fails before the handoff");
		return "migration";
	}
	if (ft_is_holding(v->ft)) {
		snprintf(desc, desclen, "fault tolerance lost its secondary, which may take "
			 "over; the guest's output is held: ft-continue releases it and runs "
			 "on unprotected, quit ends the guest here");
		return "ft-secondary-lost";
	}
	snprintf(desc, desclen, "paused by ferry-vm itself");
	return "internal";
}

void vmm_migrated(struct vmm *v, const char *uri)
{
	if (!v->control) {
		machine_exit(v->machine, EXIT_MIGRATED);
		return;
	}
	char desc[sizeof(v->hold_desc)];
	snprintf(desc, sizeof(desc), "the guest was handed over to %s and runs there; "
		 "this process only answers queries now: quit ends it", uri);
	hold_set(v, VMM_HOLD_POSTMIGRATE, desc);
}

void vmm_handoff_unknown(struct vmm *v, const char *uri, const char *why)
{
	char desc[sizeof(v->hold_desc)];
	snprintf(desc, sizeof(desc), "the handoff to %s did not complete after this host "
		 "let go of the disks (%s): the guest may be running there. Resuming it "
		 "here as well could run it twice and corrupt its disks. Find out whether "
		 "the destination runs it; if it does not, cont with {\"force\": true}",
		 uri, why && why[0] ? why : "no reason given");
	hold_set(v, VMM_HOLD_HANDOFF_UNKNOWN, desc);
	fprintf(stderr, "ferry-vm: %s\n", desc);
}

/* ---- commands ---------------------------------------------------------------- */

static json_t *cmd_query_status(void *ctx, json_t *args, const char **cls, char *err,
				size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	char desc[sizeof(v->hold_desc) + 64];
	const char *reason = pause_reason(v, desc, sizeof(desc));
	const char *status = "running";
	if (reason)
		status = !strcmp(reason, "inmigrate") || !strcmp(reason, "postmigrate")
			 ? reason : "paused";
	json_t *r = json_pack("{s:s, s:b, s:i}", "status", status, "running", !reason,
			      "harts", (int)v->machine->nharts);
	if (reason) {
		json_object_set_new(r, "reason", json_string(reason));
		json_object_set_new(r, "description", json_string(desc));
	}
	json_t *beat = guest_heartbeat(v->machine);   /* machine/heartbeat.c */
	if (beat)
		json_object_set_new(r, "heartbeat", beat);
	return r;
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
	enum vmm_hold h = hold_get(v, NULL, 0);
	if (h != VMM_HOLD_NONE)
		return json_object();   /* held already, for a reason of its own */
	/* also while a migration's switchover holds it: if the migration
	 * fails, the guest stays stopped, as asked */
	bool was_running = machine_running(v->machine);
	machine_pause(v->machine);
	hold_set(v, VMM_HOLD_USER, NULL);
	if (was_running)
		vmm_event(v, "STOP", json_object());
	return json_object();
}

/* `cont` where the handoff's outcome is unknown: only when forced, with the
 * disks taken back, and for every client to hear. */
static json_t *cont_forced(struct vmm *v, json_t *args, char *err, size_t errlen)
{
	json_t *force = json_object_get(args, "force");
	if (!json_is_true(force)) {
		snprintf(err, errlen, "the handoff of this guest to its destination has an "
			 "unknown outcome: it may be running there, and resuming it here too "
			 "could run it twice and corrupt its disks (query-status says more). "
			 "If you know the destination does not run it, cont with "
			 "{\"force\": true}");
		return NULL;
	}
	const char *why = NULL;
	if (vmstate_acquire(v->machine, &why)) {
		snprintf(err, errlen, "cannot take the guest's devices back: %s; the "
			 "destination probably holds them and runs the guest, so it stays "
			 "paused here even when forced", why ? why : "no reason given");
		return NULL;
	}
	char desc[sizeof(v->hold_desc)];
	hold_get(v, desc, sizeof(desc));
	hold_set(v, VMM_HOLD_NONE, NULL);
	machine_resume(v->machine);
	vmm_event(v, "FORCED_RESUME", json_pack("{s:s, s:s}", "reason", "handoff-unknown",
						"description", desc));
	vmm_event(v, "RESUME", json_object());
	return json_object();
}

static json_t *cmd_cont(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	*cls = "GenericError";
	json_t *force = json_object_get(args, "force");
	if (force && !json_is_boolean(force)) {
		snprintf(err, errlen, "'force' must be true or false");
		return NULL;
	}
	enum vmm_hold h = hold_get(v, NULL, 0);
	if (v->in) {
		snprintf(err, errlen, "an incoming migration has not finished");
		return NULL;
	}
	if (h == VMM_HOLD_POSTMIGRATE || migration_is_done(v->mig)) {
		snprintf(err, errlen, "the guest has migrated away and runs on the "
			 "destination now; quit ends this process");
		return NULL;
	}
	if (migration_is_active(v->mig)) {
		snprintf(err, errlen, "a migration is in progress; cancel it first");
		return NULL;
	}
	if (h == VMM_HOLD_HANDOFF_UNKNOWN)
		return cont_forced(v, args, err, errlen);
	if (ft_is_holding(v->ft)) {
		snprintf(err, errlen, "fault tolerance lost its secondary, which may take over: "
			 "ft-continue runs the guest on here, unprotected, once that is settled");
		return NULL;
	}
	if (h == VMM_HOLD_USER || h == VMM_HOLD_SAVE || !machine_running(v->machine)) {
		hold_set(v, VMM_HOLD_NONE, NULL);
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

/* `save` itself is migration's; what it means for the guest is ours. */
static json_t *cmd_save(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	enum vmm_hold h = hold_get(v, NULL, 0);
	if (h == VMM_HOLD_POSTMIGRATE || h == VMM_HOLD_HANDOFF_UNKNOWN) {
		*cls = "GenericError";
		snprintf(err, errlen, "the guest %s; a save here would not be its state",
			 h == VMM_HOLD_POSTMIGRATE ? "runs on the destination now"
						   : "may run on the destination");
		return NULL;
	}
	bool was_running = machine_running(v->machine);
	json_t *r = migration_cmd_save(ctx, args, cls, err, errlen);
	if (r && was_running && !machine_running(v->machine))
		hold_set(v, VMM_HOLD_SAVE, NULL);
	return r;
}

static json_t *cmd_migrate(void *ctx, json_t *args, const char **cls, char *err,
			   size_t errlen)
{
	struct vmm *v = ctx;
	if (hold_get(v, NULL, 0) == VMM_HOLD_HANDOFF_UNKNOWN) {
		*cls = "GenericError";
		snprintf(err, errlen, "the last migration's handoff has an unknown outcome: "
			 "the guest may run on its destination (query-status says more)");
		return NULL;
	}
	if (ft_is_active(v->ft)) {
		*cls = "GenericError";
		snprintf(err, errlen, "fault tolerance is on: ft-stop it first");
		return NULL;
	}
	return migration_cmd_migrate(ctx, args, cls, err, errlen);
}

/* Moving a disk whose lock this host gave up could run over the
 * destination's writes. */
static json_t *cmd_disk_move(void *ctx, json_t *args, const char **cls, char *err,
			     size_t errlen)
{
	struct vmm *v = ctx;
	if (hold_get(v, NULL, 0) == VMM_HOLD_HANDOFF_UNKNOWN) {
		*cls = "GenericError";
		snprintf(err, errlen, "the guest may run on the destination, which may hold "
			 "its disks; resolve the handoff first (query-status)");
		return NULL;
	}
	return disk_move_cmd_start(ctx, args, cls, err, errlen);
}

static const struct control_cmd vmm_commands[] = {
	{ "query-status", cmd_query_status },
	{ "stop", cmd_stop },
	{ "cont", cmd_cont },
	{ "quit", cmd_quit },
	{ "migrate", cmd_migrate },
	{ "query-migrate", migration_cmd_query },
	{ "migrate-cancel", migration_cmd_cancel },
	{ "migrate-set-parameters", migration_cmd_set_parameters },
	{ "save", cmd_save },
	{ "disk-move", cmd_disk_move },
	{ "query-disk-move", disk_move_cmd_query },
	{ "disk-move-cancel", disk_move_cmd_cancel },
	{ "ft-start", ft_cmd_start },
	{ "ft-stop", ft_cmd_stop },
	{ "query-ft", ft_cmd_query },
	{ "ft-takeover", ft_cmd_takeover },
	{ "ft-continue", ft_cmd_continue },
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

int vmm_handle_signals(struct vmm *v, char *err, size_t errlen)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_t t;
	int e = pthread_create(&t, NULL, signal_thread, v);
	if (e) {
		snprintf(err, errlen, "cannot start the signal thread: %s", strerror(e));
		return -1;
	}
	pthread_detach(t);
	return 0;
}

void vmm_shutdown(struct vmm *v)
{
	/* the migration first: its thread still sends events */
	disk_move_destroy(v);
	ft_destroy(v->ft);
	v->ft = NULL;
	migration_destroy(v->mig);
	v->mig = NULL;
	mig_tls_free(v->tls);
	v->tls = NULL;
	if (v->control) {
		control_stop(v->control);
		v->control = NULL;
	}
	ft_secondary_free(v->ft_sec);
	v->ft_sec = NULL;
}
