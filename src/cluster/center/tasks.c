/*
 * tasks.c - tasks: queued -> running -> succeeded | failed | cancelled.
 *
 * Power operations (create, start, stop, delete) run at once in the API
 * call and are recorded as tasks. Migrations are queued and the scheduler
 * (every 250 ms, or at once when woken) does three things:
 * - starts queued migrations, high priority first then oldest first, when
 *   their time has come and both hosts are under their limit of concurrent
 *   migrations; a task that waits says why in `waiting`;
 * - gives each running migration a follower thread: it long-polls the
 *   source's ferryd (GET .../migration?wait=MS&since=GEN, answered when
 *   the migration has news), turns query-migrate's figures into progress
 *   (the percent never goes back) and finishes the task when the
 *   migration ends, then wakes the scheduler (a slot is free);
 * - passes cancels on to the ferryds and shares bandwidth by priority.
 * A storage move (a migrate task with a datastore and its VM's own host
 * as destination) runs on that host's ferryd as a migration does
 * (migration.c there): the same queue, limits, follower, progress and
 * cancel; once it ends, the VM's spec is the one the ferryd reports (its
 * disks where they are now). The limit datastore.NAME.migrations counts a
 * task on the datastores its VM uses and on the one it moves disks into.
 * Everything lives in SQLite, so a restart of ferry-center picks up queued,
 * scheduled and running tasks where they were.
 */
#include "cluster/center/center.h"
#include "cluster/center/ft.h"

#include "cluster/common/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static json_t *parse_or_null(json_t *text)
{
	json_t *j = json_is_string(text) ? json_loads(json_string_value(text), 0, NULL) : NULL;
	return j ? j : json_null();
}

json_t *task_json(json_t *row)
{
	json_t *j = json_object();
	const char *copy[] = { "id", "kind", "vm", "source", "destination", "state", "user",
			       "waiting", "total_ms", "downtime_ms", "error", "bandwidth_mbps",
			       "yielding", "datastore" };
	for (size_t i = 0; i < sizeof(copy) / sizeof(copy[0]); i++) {
		json_t *v = json_object_get(row, copy[i]);
		json_object_set(j, copy[i], v ? v : json_null());
	}
	json_object_set_new(j, "priority", json_string(
		json_integer_value(json_object_get(row, "priority")) > 0 ? "high" : "standard"));
	iso_or_null(j, "at", json_object_get(row, "at"));
	iso_or_null(j, "created", json_object_get(row, "created"));
	iso_or_null(j, "started", json_object_get(row, "started"));
	iso_or_null(j, "finished", json_object_get(row, "finished"));
	json_object_set_new(j, "progress", parse_or_null(json_object_get(row, "progress")));
	json_object_set_new(j, "estimate", parse_or_null(json_object_get(row, "estimate")));
	return j;
}

json_t *task_get(long long id)
{
	json_t *row = db_row("SELECT * FROM tasks WHERE id = ?", json_pack("[I]", (json_int_t)id));
	json_t *j = row ? task_json(row) : NULL;
	json_decref(row);
	return j;
}

long long task_insert(const char *kind, const char *vm, const char *source, const char *dest,
		      const char *state, int priority, long long at, const char *user,
		      json_t *extra)
{
	json_t *est = json_object_get(extra, "estimate");
	char *est_text = est ? json_dumps(est, JSON_COMPACT) : NULL;
	json_t *dt = json_object_get(extra, "downtime_ms");
	json_t *bw = json_object_get(extra, "bandwidth_mbps");
	const char *ds = json_string_value(json_object_get(extra, "datastore"));
	time_t now = time(NULL);
	bool running = !strcmp(state, "running");
	db_exec("INSERT INTO tasks(kind, vm, source, destination, state, priority, at, created,"
		" started, user, estimate, downtime_target, bandwidth_mbps, datastore)"
		" VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		json_pack("[s, s, s?, s?, s, i, o, I, o, s, s?, o, o, s?]", kind, vm, source, dest,
			  state, priority, at > 0 ? json_integer(at) : json_null(), (json_int_t)now,
			  running ? json_integer(now) : json_null(), user, est_text,
			  json_is_integer(dt) ? json_integer(json_integer_value(dt)) : json_null(),
			  json_is_integer(bw) ? json_integer(json_integer_value(bw)) : json_null(),
			  ds));
	free(est_text);
	return sqlite3_last_insert_rowid(ctr.db);
}

/* A generation counter bumped whenever a task ends, for the callers of
 * GET /api/v1/tasks/ID?wait=MS (the CLI's --wait) to sleep on instead of
 * polling. */
static pthread_mutex_t ended_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ended_cond = PTHREAD_COND_INITIALIZER;
static unsigned long long ended_gen;

unsigned long long tasks_ended_gen(void)
{
	pthread_mutex_lock(&ended_lock);
	unsigned long long g = ended_gen;
	pthread_mutex_unlock(&ended_lock);
	return g;
}

void tasks_wait_ended(unsigned long long seen, long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&ended_lock);
	while (ended_gen == seen && pthread_cond_timedwait(&ended_cond, &ended_lock, &ts) == 0)
		;
	pthread_mutex_unlock(&ended_lock);
}

void task_finish(long long id, const char *state, const char *error)
{
	db_exec("UPDATE tasks SET state = ?, finished = ?, error = ?, waiting = NULL WHERE id = ?",
		json_pack("[s, I, s?, I]", state, (json_int_t)time(NULL), error, (json_int_t)id));
	pthread_mutex_lock(&ended_lock);
	ended_gen++;
	pthread_cond_broadcast(&ended_cond);
	pthread_mutex_unlock(&ended_lock);
}

static const char *host_url(const char *host)
{
	static __thread char url[200];
	json_t *r = db_row("SELECT url FROM hosts WHERE name = ?", json_pack("[s]", host));
	snprintf(url, sizeof(url), "%s", json_string_value(json_object_get(r, "url")) ?: "");
	json_decref(r);
	return url;
}

/* query-migrate's figures as the task's progress */
static json_t *progress_from(json_t *mig, json_t *old, double mem_bytes)
{
	double sent = (double)json_integer_value(json_object_get(mig, "transferred_bytes"));
	double left = (double)json_integer_value(json_object_get(mig, "remaining_bytes"));
	/* ferry-vm counts what is left only at the end of a round: during the
	 * first full copy, what is left is at most the rest of the guest's RAM */
	if (json_integer_value(json_object_get(mig, "rounds")) == 0 && left == 0 &&
	    mem_bytes > sent)
		left = mem_bytes - sent;
	double ms = (double)json_integer_value(json_object_get(mig, "total_ms"));
	const char *status = json_string_value(json_object_get(mig, "status")) ?: "";
	int pct = sent + left > 0 ? (int)(100.0 * sent / (sent + left)) : 0;
	if (pct > 99)
		pct = 99;
	if (!strcmp(status, "completed"))
		pct = 100;
	int before = (int)json_integer_value(json_object_get(old, "percent"));
	if (pct < before)
		pct = before;
	double rate = ms > 0 ? sent * 8 / 1e3 / ms : 0;   /* Mbit/s */
	json_t *phase = json_object_get(mig, "phase");
	char phase_text[256];
	if (json_is_string(phase))
		snprintf(phase_text, sizeof(phase_text), "%s", json_string_value(phase));
	else if (json_is_object(phase))
		snprintf(phase_text, sizeof(phase_text), "%s",
			 json_string_value(json_object_get(phase, "decision")) ?:
			 json_string_value(json_object_get(phase, "reason")) ?: status);
	else
		snprintf(phase_text, sizeof(phase_text), "%s", status);
	return json_pack("{s:i, s:I, s:I, s:f, s:I, s:s, s:s, s:I}", "percent", pct,
			 "transferred_bytes", (json_int_t)sent, "remaining_bytes", (json_int_t)left,
			 "rate_mbps", rate, "remaining_ms",
			 (json_int_t)(rate > 0 ? left * 8 / 1e3 / rate : 0), "phase", phase_text,
			 "status", status, "rounds", json_integer_value(json_object_get(mig, "rounds")));
}

/* A VM's state on a host as its ferryd says ("running", "incoming",
 * "paused", "exited"), or "" when the host has no such VM or does not answer. */
static void state_on(const char *url, const char *vm, char *out, size_t len)
{
	char path[300], err[256];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s", vm);
	json_t *r = ferryd_call(url, "GET", path, NULL, &status, err, sizeof(err));
	snprintf(out, len, "%s", r && status == 200 ?
		 json_string_value(json_object_get(r, "state")) ?: "" : "");
	json_decref(r);
}

/*
 * The source's ferryd no longer knows this migration (it restarted while
 * ferry-vm migrated on alone). The destination decides: the guest runs
 * there -> succeeded (and the source's leftover, paused in postmigrate, is
 * removed); still arriving -> ask again later; otherwise -> failed, and
 * the guest runs on at the source.
 */
static void settle_orphan(long long id, const char *vm, const char *src, const char *dst,
			  const char *src_url)
{
	pthread_mutex_lock(&db_lock);
	char dst_url[200];
	snprintf(dst_url, sizeof(dst_url), "%s", host_url(dst));
	pthread_mutex_unlock(&db_lock);
	char there[32], here[32], path[300], err[256];
	state_on(dst_url, vm, there, sizeof(there));
	if (!strcmp(there, "incoming"))
		return;
	long status;
	if (!strcmp(src, dst)) {   /* a storage move: ferry-vm carried it on alone */
		pthread_mutex_lock(&db_lock);
		task_finish(id, "failed", "the host's ferryd restarted during the storage move; "
			    "ferry vm show NAME says where the disks are once it reports again");
		db_exec("UPDATE vms SET state = ? WHERE name = ?",
			json_pack("[s, s]", there[0] ? "running" : "lost", vm));
		pthread_mutex_unlock(&db_lock);
		return;
	}
	pthread_mutex_lock(&db_lock);
	if (!strcmp(there, "running")) {
		pthread_mutex_unlock(&db_lock);
		snprintf(path, sizeof(path), "/agent/v1/vms/%s", vm);
		json_decref(ferryd_call(src_url, "DELETE", path, NULL, &status, err, sizeof(err)));
		pthread_mutex_lock(&db_lock);
		task_finish(id, "succeeded", NULL);
		db_exec("UPDATE vms SET host = ?, state = 'running' WHERE name = ?",
			json_pack("[s, s]", dst, vm));
		logf_("task %lld: the source's ferryd forgot it; VM %s runs on %s", id, vm, dst);
	} else {
		pthread_mutex_unlock(&db_lock);
		state_on(src_url, vm, here, sizeof(here));
		snprintf(path, sizeof(path), "/agent/v1/vms/%s", vm);
		if (there[0])   /* a destination process that will not run: remove it */
			json_decref(ferryd_call(dst_url, "DELETE", path, NULL, &status, err,
						sizeof(err)));
		pthread_mutex_lock(&db_lock);
		task_finish(id, "failed", "the source's ferryd restarted during the migration and "
			    "the guest did not arrive at the destination");
		db_exec("UPDATE vms SET state = ? WHERE name = ?",
			json_pack("[s, s]", !strcmp(here, "running") ? "running" : "lost", vm));
		logf_("task %lld: the ferryd of %s forgot it; VM %s is %s there", id, src, vm,
		      here[0] ? here : "gone");
	}
	pthread_mutex_unlock(&db_lock);
}

/* A completed migration's task succeeds once the destination's ferryd
 * says the guest runs (up to 2 s): a migration asked of it at once must
 * find the VM there, not still arriving. */
static void await_running(const char *vm, const char *dst)
{
	pthread_mutex_lock(&db_lock);
	char dst_url[200];
	snprintf(dst_url, sizeof(dst_url), "%s", host_url(dst));
	pthread_mutex_unlock(&db_lock);
	char there[32];
	for (int i = 0; i < 400; i++) {
		state_on(dst_url, vm, there, sizeof(there));
		if (strcmp(there, "incoming"))
			return;
		usleep(5000);
	}
}

/* A cancel asked of a running migration (cancel = 1) goes to its source's
 * ferryd (cancel = 2: sent). */
static void send_cancel(json_t *task)
{
	long long id = json_integer_value(json_object_get(task, "id"));
	const char *vm = json_string_value(json_object_get(task, "vm"));
	const char *src = json_string_value(json_object_get(task, "source"));
	pthread_mutex_lock(&db_lock);
	char url[200];
	snprintf(url, sizeof(url), "%s", host_url(src));
	pthread_mutex_unlock(&db_lock);
	char path[300], err[512];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/migrate-cancel", vm);
	json_decref(ferryd_call(url, "POST", path, json_object(), &status, err, sizeof(err)));
	pthread_mutex_lock(&db_lock);
	db_exec("UPDATE tasks SET cancel = 2 WHERE id = ?", json_pack("[I]", (json_int_t)id));
	pthread_mutex_unlock(&db_lock);
}

/* How long a follower's long poll may wait for news (a progress bar wants
 * figures about this often even when ferryd has none). */
#define FOLLOW_WAIT_MS 1000

enum follow_result {
	FOLLOW_NEWS,     /* asked again at once, with the generation seen */
	FOLLOW_RETRY,    /* no answer, or no long poll there: ask again shortly */
	FOLLOW_ENDED,    /* the task has ended */
};

/*
 * One look at a running migration: the source ferryd's answer, held until
 * it has news after generation *gen (updated), made into the task's
 * progress, and the task finished when the migration is done.
 */
static enum follow_result follow_one(json_t *task, unsigned long long *gen, bool *have_gen)
{
	long long id = json_integer_value(json_object_get(task, "id"));
	const char *vm = json_string_value(json_object_get(task, "vm"));
	const char *src = json_string_value(json_object_get(task, "source"));
	const char *dst = json_string_value(json_object_get(task, "destination"));
	long long cancel = json_integer_value(json_object_get(task, "cancel"));
	pthread_mutex_lock(&db_lock);
	char url[200];
	snprintf(url, sizeof(url), "%s", host_url(src));
	pthread_mutex_unlock(&db_lock);
	char path[300], err[512];
	long status;
	if (*have_gen)
		snprintf(path, sizeof(path), "/agent/v1/vms/%s/migration?wait=%d&since=%llu", vm,
			 FOLLOW_WAIT_MS, *gen);
	else
		snprintf(path, sizeof(path), "/agent/v1/vms/%s/migration", vm);
	json_t *mig = ferryd_call(url, "GET", path, NULL, &status, err, sizeof(err));
	json_t *g = json_object_get(mig, "generation");
	*have_gen = status == 200 && json_is_integer(g);   /* an adopted migration has none */
	*gen = (unsigned long long)json_integer_value(g);
	bool ended = false;
	if (mig && status == 200 && json_is_true(json_object_get(mig, "done")) &&
	    !strcmp(json_string_value(json_object_get(mig, "status")) ?: "", "completed"))
		await_running(vm, dst);
	pthread_mutex_lock(&db_lock);
	if (!mig || status != 200) {
		json_t *h = db_row("SELECT alive FROM hosts WHERE name = ?", json_pack("[s]", src));
		bool alive = json_integer_value(json_object_get(h, "alive"));
		json_decref(h);
		char e[300];
		if (mig && status == 404) {
			/* the source's ferryd restarted and forgot the migration, which
			 * ferry-vm carried on alone: where does the guest run now? */
			pthread_mutex_unlock(&db_lock);
			json_decref(mig);
			settle_orphan(id, vm, src, dst, url);
			return FOLLOW_RETRY;
		} else if (!alive) {
			/* its lease is gone: the host is lost, and the VM with it */
			snprintf(e, sizeof(e), "the source host %s stopped answering (no heartbeat "
				 "in etcd) during the migration", src);
			task_finish(id, "failed", e);
			db_exec("UPDATE vms SET state = 'lost' WHERE name = ? AND state = 'migrating'",
				json_pack("[s]", vm));
			logf_("task %lld: %s", id, e);
		}
		/* else: the source does not answer now; try again */
		pthread_mutex_unlock(&db_lock);
		json_decref(mig);
		return FOLLOW_RETRY;
	}
	json_t *old = parse_or_null(json_object_get(task, "progress"));
	json_t *mem = db_row("SELECT json_extract(spec, '$.mem_mib') AS m FROM vms WHERE name = ?",
			     json_pack("[s]", vm));
	double mem_bytes = strcmp(src, dst) ?   /* a storage move copies no memory */
			   (double)json_integer_value(json_object_get(mem, "m")) * 1048576.0 : 0;
	json_decref(mem);
	json_t *prog = progress_from(mig, old, mem_bytes);
	json_decref(old);
	char *text = json_dumps(prog, JSON_COMPACT);
	db_exec("UPDATE tasks SET progress = ? WHERE id = ?", json_pack("[s, I]", text, (json_int_t)id));
	free(text);
	if (json_is_true(json_object_get(mig, "done"))) {
		const char *st = json_string_value(json_object_get(mig, "status")) ?: "failed";
		const char *error = json_string_value(json_object_get(mig, "error"));
		json_t *tm = json_object_get(mig, "total_ms"), *dm = json_object_get(mig, "downtime_ms");
		db_exec("UPDATE tasks SET total_ms = ?, downtime_ms = ? WHERE id = ?",
			json_pack("[O, O, I]", tm ? tm : json_null(), dm ? dm : json_null(),
				  (json_int_t)id));
		json_t *details = json_pack("{s:I, s:s, s:s, s:O, s:O}", "task", (json_int_t)id,
					    "source", src, "destination", dst, "total_ms",
					    tm ? tm : json_null(), "downtime_ms", dm ? dm : json_null());
		json_t *spec = json_object_get(mig, "spec");   /* disks moved (a storage move) */
		if (json_is_object(spec)) {
			char *spec_text = json_dumps(spec, JSON_COMPACT);
			db_exec("UPDATE vms SET spec = ? WHERE name = ?", json_pack("[s, s]",
										  spec_text, vm));
			free(spec_text);
		}
		if (!strcmp(st, "completed")) {
			task_finish(id, "succeeded", NULL);
			db_exec("UPDATE vms SET host = ?, state = 'running' WHERE name = ?",
				json_pack("[s, s]", dst, vm));
			audit_append("ferry-center", "-", "migration.finished", vm, "ok", details);
		} else {
			/* a destination process left waiting or ended (its source's
			 * ferryd restarted before it could clean up) goes, and with it
			 * the images a shared-nothing migration made there */
			char dst_url[200], there[32], path[300], e2[256];
			long s2;
			snprintf(dst_url, sizeof(dst_url), "%s", host_url(dst));
			pthread_mutex_unlock(&db_lock);
			state_on(dst_url, vm, there, sizeof(there));
			if (strcmp(src, dst) && (!strcmp(there, "incoming") ||
						 !strcmp(there, "exited"))) {
				snprintf(path, sizeof(path), "/agent/v1/vms/%s", vm);
				json_decref(ferryd_call(dst_url, "DELETE", path, NULL, &s2, e2, sizeof(e2)));
			}
			pthread_mutex_lock(&db_lock);
			bool cancelled = !strcmp(st, "cancelled") || cancel;
			task_finish(id, cancelled ? "cancelled" : "failed",
				    error ? error : cancelled ? "cancelled; the VM stays on its source"
							      : "the migration failed");
			db_exec("UPDATE vms SET state = 'running' WHERE name = ? AND state = 'migrating'",
				json_pack("[s]", vm));
			audit_append("ferry-center", "-", "migration.finished", vm,
				     cancelled ? "cancelled" : "error", details);
		}
		logf_("task %lld (migrate %s %s -> %s): %s", id, vm, src, dst, st);
		json_decref(details);
		ended = true;
	}
	pthread_mutex_unlock(&db_lock);
	json_decref(prog);
	json_decref(mig);
	return ended ? FOLLOW_ENDED : *have_gen ? FOLLOW_NEWS : FOLLOW_RETRY;
}

/* The running tasks that have a follower thread. */
static pthread_mutex_t followers_lock = PTHREAD_MUTEX_INITIALIZER;
static long long *followed;
static size_t nfollowed, followed_cap;

static bool followed_has(long long id)
{
	for (size_t i = 0; i < nfollowed; i++)
		if (followed[i] == id)
			return true;
	return false;
}

static json_t *running_task(long long id)
{
	pthread_mutex_lock(&db_lock);
	json_t *t = db_row("SELECT * FROM tasks WHERE id = ? AND state = 'running'",
			   json_pack("[I]", (json_int_t)id));
	pthread_mutex_unlock(&db_lock);
	return t;
}

/* A follower: one running migration followed to its end (or until its
 * task ends some other way). */
static void *follower(void *arg)
{
	long long id = (long long)(intptr_t)arg;
	unsigned long long gen = 0;
	bool have_gen = false;
	json_t *t;
	while ((t = running_task(id))) {
		enum follow_result r = follow_one(t, &gen, &have_gen);
		json_decref(t);
		if (r == FOLLOW_ENDED)
			break;
		if (r == FOLLOW_RETRY)
			usleep(20000);   /* (a ferryd without the long poll: as before) */
	}
	pthread_mutex_lock(&followers_lock);
	for (size_t i = 0; i < nfollowed; i++)
		if (followed[i] == id)
			followed[i] = followed[--nfollowed];
	pthread_mutex_unlock(&followers_lock);
	tasks_wake();   /* a slot is free: the queue may move */
	return NULL;
}

/* Gives a running migration a follower unless it has one. */
static void follow(json_t *task)
{
	long long id = json_integer_value(json_object_get(task, "id"));
	pthread_mutex_lock(&followers_lock);
	bool start = !followed_has(id);
	if (start) {
		if (nfollowed == followed_cap) {
			followed_cap = followed_cap ? followed_cap * 2 : 16;
			followed = realloc(followed, followed_cap * sizeof(*followed));
			if (!followed)
				abort();
		}
		pthread_t th;
		if (pthread_create(&th, NULL, follower, (void *)(intptr_t)id) == 0) {
			pthread_detach(th);
			followed[nfollowed++] = id;
		}
	}
	pthread_mutex_unlock(&followers_lock);
}

/* Starts one migration on its source (a storage move: ds on src itself);
 * false with err set. */
static bool start_on_source(const char *vm, const char *src, const char *dst, const char *ds,
			    json_t *dt, json_t *bw, char *err, size_t errlen)
{
	pthread_mutex_lock(&db_lock);
	char src_url[200], dst_url[200], dst_addr[64];
	snprintf(src_url, sizeof(src_url), "%s", host_url(src));
	snprintf(dst_url, sizeof(dst_url), "%s", host_url(dst));
	json_t *r = db_row("SELECT address FROM hosts WHERE name = ?", json_pack("[s]", dst));
	snprintf(dst_addr, sizeof(dst_addr), "%s",
		 json_string_value(json_object_get(r, "address")) ?: "");
	json_decref(r);
	pthread_mutex_unlock(&db_lock);
	json_t *body = strcmp(src, dst) ? json_pack("{s:s, s:s}", "dest_url", dst_url, "dest_addr",
						    dst_addr) : json_object();
	if (ds)
		json_object_set_new(body, "datastore", json_string(ds));
	if (json_is_integer(dt))
		json_object_set(body, "downtime_ms", dt);
	if (json_is_integer(bw))
		json_object_set(body, "bandwidth_mbps", bw);
	char path[300];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/migrate", vm);
	json_t *reply = ferryd_call(src_url, "POST", path, body, &status, err, errlen);
	json_decref(body);
	bool ok = reply && status == 202;
	if (reply && !ok)
		snprintf(err, errlen, "host %s: %s", src,
			 json_string_value(json_object_get(json_object_get(reply, "error"),
							   "message")) ?: "refused the migration");
	json_decref(reply);
	return ok;
}

/* Does a VM spec (text) use datastore ds, or network net? */
static bool spec_uses(const char *spec_text, const char *ds, const char *net)
{
	json_t *spec = json_loads(spec_text ? spec_text : "{}", 0, NULL);
	bool uses = false;
	if (ds) {
		char names[16][64];
		int n;
		spec_datastores(spec, names, &n);
		for (int i = 0; i < n; i++)
			uses = uses || !strcmp(names[i], ds);
	} else {
		char mine[64];
		spec_network(spec, mine, sizeof(mine));
		uses = mine[0] && !strcmp(mine, net);
	}
	json_decref(spec);
	return uses;
}

/*
 * Limits on what migrations share besides hosts: datastore.NAME.migrations
 * and network.NAME.migrations (cluster settings; none by default) bound
 * the running migrations of VMs that use that datastore or network.
 * Says in waiting which one is reached. Under db_lock.
 */
static void shared_limits(const char *spec_text, const char *ds, char *waiting, size_t len)
{
	json_t *spec = json_loads(spec_text ? spec_text : "{}", 0, NULL);
	char names[18][64];
	int n;
	spec_datastores(spec, names, &n);
	bool uses_ds = false;
	for (int i = 0; ds && i < n; i++)
		uses_ds = uses_ds || !strcmp(names[i], ds);
	if (ds && !uses_ds)   /* the datastore it moves disks into */
		snprintf(names[n++], 64, "%s", ds);
	spec_network(spec, names[n], sizeof(names[n]));
	json_decref(spec);
	json_t *rows = db_query("SELECT v.spec, t.datastore FROM tasks t JOIN vms v ON v.name = "
				"t.vm WHERE t.kind = 'migrate' AND t.state = 'running'", NULL);
	for (int i = 0; i <= n && !waiting[0]; i++) {
		bool is_net = i == n;
		if (!names[i][0])
			continue;
		char key[128];
		snprintf(key, sizeof(key), "%s.%s.migrations", is_net ? "network" : "datastore",
			 names[i]);
		long long limit = db_setting_int(key, 0);
		if (limit <= 0)
			continue;
		int running = 0;
		size_t k;
		json_t *r;
		json_array_foreach(rows, k, r)
			running += spec_uses(json_string_value(json_object_get(r, "spec")),
					     is_net ? NULL : names[i], is_net ? names[i] : NULL) ||
				   (!is_net && !strcmp(json_string_value(json_object_get(
					   r, "datastore")) ?: "", names[i]));
		if (running >= limit)
			snprintf(waiting, len, "limit: %s %s runs %d of %lld migrations",
				 is_net ? "network" : "datastore", names[i], running, limit);
	}
	json_decref(rows);
}

/* Starts the queued migrations whose time has come; true if any started. */
static bool start_queued(void)
{
	bool started = false;
	pthread_mutex_lock(&db_lock);
	json_t *queued = db_query("SELECT * FROM tasks WHERE state = 'queued' AND kind = 'migrate'"
				  " ORDER BY priority DESC, id", NULL);
	time_t now = time(NULL);
	size_t i;
	json_t *t;
	json_array_foreach(queued, i, t) {
		long long id = json_integer_value(json_object_get(t, "id"));
		json_t *at = json_object_get(t, "at");
		char waiting[300] = "";
		if (json_is_integer(at) && json_integer_value(at) > now) {
			char when[40];
			iso_time((time_t)json_integer_value(at), when, sizeof(when));
			snprintf(waiting, sizeof(waiting), "scheduled for %s", when);
			db_exec("UPDATE tasks SET waiting = ? WHERE id = ?",
				json_pack("[s, I]", waiting, (json_int_t)id));
			continue;
		}
		const char *vm = json_string_value(json_object_get(t, "vm"));
		const char *dst = json_string_value(json_object_get(t, "destination"));
		json_t *vrow = db_row("SELECT host, state, spec FROM vms WHERE name = ?",
				      json_pack("[s]", vm));
		const char *src = json_string_value(json_object_get(vrow, "host"));
		const char *vstate = json_string_value(json_object_get(vrow, "state")) ?: "";
		const char *ds = json_string_value(json_object_get(t, "datastore"));
		if (!vrow || strcmp(vstate, "running") || !src || !dst ||
		    (!strcmp(src, dst) && !ds)) {
			char e[300];
			snprintf(e, sizeof(e), !vrow ? "the VM was deleted"
					       : strcmp(vstate, "running") ? "the VM is not running (%s)"
					       : "the VM is already on the destination",
				 vstate);
			task_finish(id, "failed", e);
			json_decref(vrow);
			continue;
		}
		const char *hosts[2] = { src, dst };
		for (int h = 0; h < (strcmp(src, dst) ? 2 : 1) && !waiting[0]; h++) {
			int running = host_migrations_running(hosts[h]);
			int limit = host_migration_limit(hosts[h]);
			if (running >= limit)
				snprintf(waiting, sizeof(waiting),
					 "limit: host %s runs %d of %d migrations", hosts[h], running,
					 limit);
		}
		if (!waiting[0])
			shared_limits(json_string_value(json_object_get(vrow, "spec")), ds, waiting,
				      sizeof(waiting));
		if (waiting[0]) {
			db_exec("UPDATE tasks SET waiting = ? WHERE id = ?",
				json_pack("[s, I]", waiting, (json_int_t)id));
			json_decref(vrow);
			continue;
		}
		db_exec("UPDATE tasks SET state = 'running', started = ?, source = ?, waiting = NULL "
			"WHERE id = ?", json_pack("[I, s, I]", (json_int_t)now, src, (json_int_t)id));
		db_exec("UPDATE vms SET state = 'migrating' WHERE name = ?", json_pack("[s]", vm));
		char srcname[64], dstname[64], vmname[64];
		snprintf(srcname, sizeof(srcname), "%s", src);
		snprintf(dstname, sizeof(dstname), "%s", dst);
		snprintf(vmname, sizeof(vmname), "%s", vm);
		char dsname[64];
		snprintf(dsname, sizeof(dsname), "%s", ds ? ds : "");
		json_t *dt = json_incref(json_object_get(t, "downtime_target"));
		json_t *bw = json_incref(json_object_get(t, "bandwidth_mbps"));
		json_decref(vrow);
		pthread_mutex_unlock(&db_lock);
		char err[600];
		bool ok = start_on_source(vmname, srcname, dstname, dsname[0] ? dsname : NULL, dt,
					  bw, err, sizeof(err));
		json_decref(dt);
		json_decref(bw);
		pthread_mutex_lock(&db_lock);
		logf_("task %lld: migrate %s %s -> %s%s%s", id, vmname, srcname, dstname,
		      ok ? "" : ": ", ok ? "" : err);
		if (!ok) {
			task_finish(id, "failed", err);
			db_exec("UPDATE vms SET state = 'running' WHERE name = ?",
				json_pack("[s]", vmname));
		}
		started = started || ok;
	}
	pthread_mutex_unlock(&db_lock);
	json_decref(queued);
	return started;
}

/*
 * Priorities share the link: while a high-priority migration runs, the
 * standard ones through either of its hosts are capped to
 * standard_share_mbps (cluster setting, default 100 Mbit/s; ferry-vm
 * applies a new cap from its next round) and get their own cap back when
 * no high-priority migration shares a host with them.
 */
static void set_cap(json_t *t, long long mbps, const char *why)
{
	long long id = json_integer_value(json_object_get(t, "id"));
	const char *vm = json_string_value(json_object_get(t, "vm"));
	pthread_mutex_lock(&db_lock);
	char url[200];
	snprintf(url, sizeof(url), "%s", host_url(json_string_value(json_object_get(t, "source"))));
	pthread_mutex_unlock(&db_lock);
	char path[300], err[512];
	long status;
	snprintf(path, sizeof(path), "/agent/v1/vms/%s/migrate-parameters", vm);
	json_t *body = json_pack("{s:I}", "bandwidth_mbps", (json_int_t)mbps);
	json_t *r = ferryd_call(url, "POST", path, body, &status, err, sizeof(err));
	json_decref(body);
	bool ok = r && status == 200;
	json_decref(r);
	if (!ok)
		return;   /* finished meanwhile, or unreachable: next time */
	pthread_mutex_lock(&db_lock);
	db_exec("UPDATE tasks SET yielding = ? WHERE id = ?", json_pack("[s?, I]", why,
							       (json_int_t)id));
	pthread_mutex_unlock(&db_lock);
	logf_("task %lld: bandwidth cap %lld Mbit/s%s%s", id, mbps, why ? ": " : " (restored)",
	      why ? why : "");
}

static bool shares_host(json_t *a, json_t *b)
{
	const char *keys[] = { "source", "destination" };
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 2; j++)
			if (!strcmp(json_string_value(json_object_get(a, keys[i])) ?: "",
				    json_string_value(json_object_get(b, keys[j])) ?: "-"))
				return true;
	return false;
}

static void share_bandwidth(json_t *running)
{
	pthread_mutex_lock(&db_lock);
	long long share = db_setting_int("standard_share_mbps", 100);
	pthread_mutex_unlock(&db_lock);
	size_t i, j;
	json_t *s, *h;
	json_array_foreach(running, i, s) {
		if (json_integer_value(json_object_get(s, "priority")) > 0)
			continue;
		json_t *high = NULL;
		json_array_foreach(running, j, h)
			if (json_integer_value(json_object_get(h, "priority")) > 0 && shares_host(s, h))
				high = h;
		bool yielding = json_is_string(json_object_get(s, "yielding"));
		long long own = json_integer_value(json_object_get(s, "bandwidth_mbps"));
		if (high && !yielding) {
			long long cap = own && own < share ? own : share;
			char why[200];
			snprintf(why, sizeof(why), "bandwidth capped to %lld Mbit/s while high-priority "
				 "task %lld runs", cap, json_integer_value(json_object_get(high, "id")));
			set_cap(s, cap, why);
		} else if (!high && yielding) {
			set_cap(s, own, NULL);
		}
	}
}

static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;
static bool woken;

void tasks_wake(void)
{
	pthread_mutex_lock(&wake_lock);
	woken = true;
	pthread_cond_signal(&wake_cond);
	pthread_mutex_unlock(&wake_lock);
}

/* Sleeps ms, or less when tasks_wake() is called. */
static void tasks_sleep(long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ms * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&wake_lock);
	while (!woken && pthread_cond_timedwait(&wake_cond, &wake_lock, &ts) == 0)
		;
	woken = false;
	pthread_mutex_unlock(&wake_lock);
}

void *tasks_loop(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&db_lock);
		json_t *running = db_query("SELECT * FROM tasks WHERE state = 'running' AND "
					   "kind = 'migrate'", NULL);
		pthread_mutex_unlock(&db_lock);
		size_t i;
		json_t *t;
		json_array_foreach(running, i, t) {
			if (json_integer_value(json_object_get(t, "cancel")) == 1)
				send_cancel(t);
			follow(t);
		}
		share_bandwidth(running);
		json_decref(running);
		/* one just started gets its follower at once (the next pass);
		 * else wait for news: a new task, a cancel, a task's end */
		bool started = start_queued();
		ft_tick();   /* ft-enable tasks, VMs that failed over (ft.c) */
		if (!started)
			tasks_sleep(250);
	}
	return NULL;
}
