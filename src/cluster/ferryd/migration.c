/*
 * migration.c - both ends of a migration between two ferryds.
 *
 * Source (POST /agent/v1/vms/NAME/migrate): ask the destination's ferryd
 * for an incoming ferry-vm (POST /agent/v1/incoming: it starts
 * `ferry-vm --incoming tcp:ITS_ADDR:PORT` with the same devices and says
 * the port), then tell our ferry-vm `migrate` to that address, and follow
 * it with `query-migrate` (and the MIGRATION events) in a thread until it
 * ends. Success: the source is told `quit` (it waits in postmigrate) and
 * forgotten here. Failure or cancel: the destination's process is removed
 * and the VM keeps running here (ferry-vm resumes it itself).
 *
 * A storage move (POST .../migrate with a datastore and no dest_url) is a
 * migration without a destination host: each writable disk not on that
 * datastore yet is moved there by ferry-vm's disk-move (the same path
 * inside the datastore, a file that must not exist yet), one after the
 * other, followed with query-disk-move; its figures, its cancel and its
 * long poll are a migration's. The old image is removed once its move
 * completed (the guest runs on the new one and ferry-vm let go of the old
 * one's lock); a failed or cancelled move leaves the guest on the old
 * image, and ferry-vm removes the partial new one. The VM's spec (here and
 * in the status: spec_after, which ferry-center keeps) names where each
 * disk is.
 *
 * A shared-nothing migration (a datastore with dest_url): the destination
 * ferryd is asked to make empty images of the same sizes (create_disks)
 * at the same paths inside that datastore, new files only, and its
 * ferry-vm takes them as its --disk; ours migrates with disks: copy. The
 * source's images are removed once the guest runs on the destination;
 * before that, a failure leaves the guest here on its images, and the
 * destination's images go with its process (vm_destroy there). A ferryd
 * restarted meanwhile finishes that from the migration's copy note
 * (adopted_status).
 *
 * When ferry-vm supports it (--incoming ...,secret-file=), every migration
 * gets a fresh random secret that only the two ferryds know.
 *
 * GET .../migration?wait=MS&since=GEN is a long poll: each migration has a
 * generation, bumped when its status, error or end changes, and when its
 * figures change (at most every PROGRESS_NEWS_MS: the figures move on
 * every query-migrate); the reply waits up to MS for a generation other
 * than GEN. ferry-center follows a migration with it, woken by news.
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/http_client.h"
#include "cluster/common/qmp_client.h"
#include "cluster/common/util.h"
#include "util/beneath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_MIGRATIONS 256
#define PROGRESS_NEWS_MS 100

struct migration {
	char name[64];
	char dest_url[160];
	char dest_addr[64];
	int downtime_ms;
	int bandwidth_mbps;    /* 0: uncapped */
	char secret[65];
	char datastore[64];    /* a storage move (no dest_url): its disks into this one */
	json_t *spec_after;    /* the VM's spec once its disks moved (what ferry-center keeps) */
	json_t *last;          /* the latest query-migrate figures */
	char status[32];       /* setup, active, ..., completed, failed, cancelled */
	char error[512];
	bool done;
	bool cancel;
	unsigned long long gen;   /* bumped on news (above); under mig_lock */
	int64_t figures_news_ms;  /* when new figures were last news */
};

static pthread_mutex_t mig_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mig_news = PTHREAD_COND_INITIALIZER;   /* some gen moved */
static struct migration *migs[MAX_MIGRATIONS];
static int nmigs;

static struct migration *mig_find(const char *name)
{
	for (int i = 0; i < nmigs; i++)
		if (!strcmp(migs[i]->name, name))
			return migs[i];
	return NULL;
}

/* Under mig_lock: wake the long polls. */
static void news(struct migration *m)
{
	m->gen++;
	pthread_cond_broadcast(&mig_news);
}

static void mig_set(struct migration *m, const char *status, json_t *figures, const char *error)
{
	pthread_mutex_lock(&mig_lock);
	bool changed = false;
	if (status && strcmp(m->status, status)) {
		snprintf(m->status, sizeof(m->status), "%s", status);
		changed = true;
	}
	if (figures) {
		json_decref(m->last);
		m->last = json_deep_copy(figures);
		if (mono_ms() - m->figures_news_ms >= PROGRESS_NEWS_MS) {
			m->figures_news_ms = mono_ms();
			changed = true;
		}
	}
	if (error && strcmp(m->error, error)) {
		snprintf(m->error, sizeof(m->error), "%s", error);
		changed = true;
	}
	if (changed)
		news(m);
	pthread_mutex_unlock(&mig_lock);
}

static void on_event(void *ctx, json_t *ev)
{
	struct migration *m = ctx;
	if (strcmp(json_string_value(json_object_get(ev, "event")) ?: "", "MIGRATION"))
		return;
	json_t *data = json_object_get(ev, "data");
	mig_set(m, json_string_value(json_object_get(data, "status")), data, NULL);
}

static void dest_remove(struct migration *m)
{
	char url[400], err[256];
	long status;
	snprintf(url, sizeof(url), "%s/agent/v1/vms/%s", m->dest_url, m->name);
	json_decref(http_json("DELETE", url, fd_cfg.auth.present, NULL, 10000, &status, err,
			      sizeof(err)));
}

/* What the destination's ferryd says of VM name: "running", "incoming",
 * "exited", ... or "" (no such VM, no answer). */
static void dest_state(const char *dest_url, const char *name, char *out, size_t len)
{
	char url[400], err[256];
	long status;
	snprintf(url, sizeof(url), "%s/agent/v1/vms/%s", dest_url, name);
	json_t *r = http_json("GET", url, fd_cfg.auth.present, NULL, 5000, &status, err,
			      sizeof(err));
	snprintf(out, len, "%s", r && status == 200 ? json_string_value(json_object_get(r,
		 "state")) ?: "" : "");
	json_decref(r);
}

/* Does the destination's ferry-vm run the guest now? */
static bool dest_running(struct migration *m)
{
	char state[32];
	dest_state(m->dest_url, m->name, state, sizeof(state));
	return !strcmp(state, "running");
}

/* After the handoff of a shared-nothing migration: does the destination
 * run the guest? It may still say "incoming" a while (its ferryd notes the
 * guest's arrival on its next look, FERRYD_TEST_DELAY_ARRIVAL_MS widens
 * that): asked again until it says something else, up to HANDOFF_WORD_MS. */
#define HANDOFF_WORD_MS 30000
static bool dest_runs_after_handoff(const char *dest_url, const char *name)
{
	char state[32];
	int64_t end = mono_ms() + HANDOFF_WORD_MS;
	for (;;) {
		dest_state(dest_url, name, state, sizeof(state));
		if (strcmp(state, "incoming") || mono_ms() >= end)
			return !strcmp(state, "running");
		usleep(100 * 1000);
	}
}

/*
 * A shared-nothing migration's note, STATE/vms/NAME/copy.json: the
 * destination's URL, the source's images and the spec with the disks
 * where they went. Written before ferry-vm is told to migrate, removed
 * when the migration's thread has dealt with its end; so a ferryd that
 * restarted meanwhile (the migration, which ferry-vm carries on alone, is
 * adopted: adopted_status) still removes the source's images once the
 * destination runs the guest, never before, and hands ferry-center the
 * new spec.
 */
static void copy_note_path(const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/vms/%s/copy.json", fd_cfg.state_dir, name);
}

static void copy_note_write(const char *name, json_t *note)
{
	char p[PATH_MAX + 80];
	copy_note_path(name, p, sizeof(p));
	char *text = json_dumps(note, JSON_COMPACT);
	if (!text || !write_file(p, text))
		logf_("VM %s: cannot write %s: a ferryd restarted during its migration would "
		      "keep the images here", name, p);
	free(text);
}

static json_t *copy_note_read(const char *name)
{
	char p[PATH_MAX + 80];
	copy_note_path(name, p, sizeof(p));
	return json_load_file(p, 0, NULL);
}

static void copy_note_remove(const char *name)
{
	char p[PATH_MAX + 80];
	copy_note_path(name, p, sizeof(p));
	unlink(p);
}

static bool terminal(const char *s)
{
	return !strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

/* Follows the migration until it ends; returns the final status. */
static void follow(struct migration *m, struct qmp *q)
{
	bool cancel_sent = false;
	char err[512];
	for (;;) {
		if (m->cancel && !cancel_sent) {
			json_decref(qmp_cmd(q, "migrate-cancel", NULL, 5000, err, sizeof(err)));
			cancel_sent = true;
		}
		json_t *r = qmp_cmd(q, "query-migrate", NULL, 5000, err, sizeof(err));
		if (!r) {
			/* the source ended: an older ferry-vm exits as soon as the
			 * guest has left; the destination tells */
			logf_("migration of VM %s: %s (last status %s)", m->name, err, m->status);
			if (!terminal(m->status)) {
				if (dest_running(m))
					mig_set(m, "completed", NULL, NULL);
				else
					mig_set(m, "failed", NULL, err);
			}
			return;
		}
		char st[32];   /* a copy: r is freed before st is looked at */
		snprintf(st, sizeof(st), "%s", json_string_value(json_object_get(r, "status")) ?: "active");
		const char *e = json_string_value(json_object_get(r, "error"));
		mig_set(m, st, r, e);
		bool ended = terminal(st) || !strcmp(st, "postmigrate");
		json_decref(r);
		if (ended)
			return;
		usleep(10000);   /* a local QMP round trip: cheap; the end is news */
	}
}

/* ---- a storage move ----------------------------------------------------------- */

/* "DS:REL" -> "NEWDS:REL" in out; false for a disk that stays: read-only
 * (ferry-vm moves no such disk) or on newds already. */
static bool moved_ref(const char *ref, const char *ds, char *out, size_t len)
{
	const char *colon = ref ? strchr(ref, ':') : NULL;
	if (!colon || strstr(ref, ",ro"))
		return false;
	if (strlen(ds) == (size_t)(colon - ref) && !strncmp(ref, ds, (size_t)(colon - ref)))
		return false;
	snprintf(out, len, "%s:%s", ds, colon + 1);
	return true;
}

/* Where a storage move is: what the disks moved before copied, since when,
 * which disk, the longest guest-visible I/O pause so far. */
struct move_state {
	long long sent;
	int64_t start_ms;
	int disk, ndisks;
	double pause_ms;
};

/* query-disk-move's figures as a migration's (progress_from in ferry-center
 * reads these). */
static json_t *move_figures(struct migration *m, json_t *dm, const struct move_state *ms)
{
	char phase[160];
	snprintf(phase, sizeof(phase), "disk %d of %d to %s, round %lld", ms->disk + 1,
		 ms->ndisks, m->datastore, json_integer_value(json_object_get(dm, "rounds")));
	return json_pack("{s:I, s:I, s:I, s:I, s:s}", "transferred_bytes",
			 (json_int_t)(ms->sent + json_integer_value(json_object_get(dm,
									    "copied_bytes"))),
			 "remaining_bytes",
			 json_integer_value(json_object_get(dm, "remaining_bytes")),
			 "rounds", json_integer_value(json_object_get(dm, "rounds")),
			 "total_ms", (json_int_t)(mono_ms() - ms->start_ms), "phase", phase);
}

/* Moves disk ms->disk to path and follows the move to its end (passing a
 * cancel on). false with err: the guest stays on the old image. */
static bool move_disk(struct migration *m, struct qmp *q, const char *path,
		      const char *beneath, struct move_state *ms, char *err, size_t errlen)
{
	json_t *args = json_pack("{s:i, s:s}", "disk", ms->disk, "path", path);
	if (beneath)
		json_object_set_new(args, "beneath", json_string(beneath));
	if (m->bandwidth_mbps > 0)
		json_object_set_new(args, "bandwidth_mbps", json_integer(m->bandwidth_mbps));
	json_t *r = qmp_cmd(q, "disk-move", args, 10000, err, errlen);
	json_decref(args);
	if (!r)
		return false;
	json_decref(r);
	bool cancel_sent = false;
	for (;;) {
		if (m->cancel && !cancel_sent) {
			json_decref(qmp_cmd(q, "disk-move-cancel", NULL, 5000, err, errlen));
			cancel_sent = true;
		}
		r = qmp_cmd(q, "query-disk-move", NULL, 5000, err, errlen);
		if (!r)
			return false;
		json_t *fig = move_figures(m, r, ms);
		mig_set(m, NULL, fig, NULL);
		json_decref(fig);
		char st[32];
		snprintf(st, sizeof(st), "%s",
			 json_string_value(json_object_get(r, "status")) ?: "");
		if (strcmp(st, "active")) {
			bool ok = !strcmp(st, "completed");
			if (ok) {
				ms->sent += json_integer_value(json_object_get(r, "copied_bytes"));
				double p = json_number_value(json_object_get(r, "pause_ms"));
				ms->pause_ms = p > ms->pause_ms ? p : ms->pause_ms;
			} else {
				snprintf(err, errlen, "disk %d: %s", ms->disk, json_string_value(
					 json_object_get(r, "error")) ?: st);
			}
			json_decref(r);
			return ok;
		}
		json_decref(r);
		usleep(50000);
	}
}

/* The storage move's thread: each disk that moves, one by one; the spec
 * follows each disk that moved. */
static void storage_move(struct migration *m, json_t *spec, const char *ctl)
{
	char err[512] = "";
	struct qmp q;
	if (!qmp_open(&q, ctl, err, sizeof(err))) {
		mig_set(m, "failed", NULL, err);
		return;
	}
	json_t *after = json_deep_copy(spec);
	json_t *disks = json_object_get(after, "disks");
	struct move_state ms = { .start_ms = mono_ms(), .ndisks = (int)json_array_size(disks) };
	mig_set(m, "active", NULL, NULL);
	bool ok = true, moved = false;
	for (ms.disk = 0; ok && ms.disk < ms.ndisks; ms.disk++) {
		const char *ref = json_string_value(json_array_get(disks, (size_t)ms.disk));
		char to[PATH_MAX];
		if (!moved_ref(ref, m->datastore, to, sizeof(to)))
			continue;
		char *old = vm_datastore_path(ref, err, sizeof(err));
		char *path = old ? vm_datastore_new_path(to, err, sizeof(err)) : NULL;
		ok = path && !m->cancel && move_disk(m, &q, path, datastore_root(to), &ms, err,
						      sizeof(err));
		if (ok) {
			unlink(old);   /* the guest runs on the new image: the old one goes */
			json_array_set_new(disks, (size_t)ms.disk, json_string(to));
			vm_set_spec(m->name, after);
			moved = true;
			logf_("VM %s: disk %s moved to %s", m->name, ref, to);
		} else if (m->cancel && !err[0]) {
			snprintf(err, sizeof(err), "cancelled before the move started");
		}
		free(old);
		free(path);
	}
	qmp_close(&q);
	pthread_mutex_lock(&mig_lock);
	m->spec_after = after;
	pthread_mutex_unlock(&mig_lock);
	json_t *fig = json_pack("{s:I, s:I, s:I, s:i}", "transferred_bytes", (json_int_t)ms.sent,
				"total_ms", (json_int_t)(mono_ms() - ms.start_ms), "downtime_ms",
				(json_int_t)(ms.pause_ms + 0.5), "remaining_bytes", 0);
	if (!ok)
		logf_("VM %s: storage move to %s: %s%s", m->name, m->datastore, err,
		      moved ? " (the disks before it moved)" : "");
	mig_set(m, ok ? "completed" : m->cancel ? "cancelled" : "failed", fig, ok ? NULL : err);
	json_decref(fig);
}

/* The spec with every disk in datastore ds (the same path inside it). */
static json_t *spec_in(json_t *spec, const char *ds)
{
	json_t *after = json_deep_copy(spec);
	json_t *disks = json_object_get(after, "disks");
	size_t i;
	json_t *d;
	json_array_foreach(disks, i, d) {
		const char *colon = strchr(json_string_value(d) ?: "", ':');
		char ref[PATH_MAX];
		snprintf(ref, sizeof(ref), "%s:%s", ds, colon ? colon + 1 : "");
		json_array_set_new(disks, i, json_string(ref));
	}
	return after;
}

/* Each disk's image here (paths) and size; false with err. */
static bool images_here(json_t *spec, json_t *paths, json_t *sizes, char *err, size_t errlen)
{
	size_t i;
	json_t *d;
	json_array_foreach(json_object_get(spec, "disks"), i, d) {
		char *p = vm_datastore_path(json_string_value(d), err, errlen);
		struct stat st;
		if (!p || stat(p, &st) != 0) {
			if (p)
				snprintf(err, errlen, "%s: %s", p, strerror(errno));
			free(p);
			return false;
		}
		json_array_append_new(paths, json_string(p));
		json_array_append_new(sizes, json_integer((json_int_t)st.st_size));
		free(p);
	}
	return true;
}

static void *migration_thread(void *arg)
{
	struct migration *m = arg;
	char err[512], url[400];
	long status;
	json_t *spec = NULL;
	char *ctl = NULL;
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(m->name);
	if (vm) {
		spec = json_incref(vm->spec);
		ctl = vm_control_path(vm);
	}
	pthread_mutex_unlock(&vms_lock);
	if (!vm) {
		mig_set(m, "failed", NULL, "the VM vanished before its migration started");
		goto out;
	}
	if (!m->dest_url[0]) {
		storage_move(m, spec, ctl);
		goto out;
	}
	/* 1. the destination's incoming ferry-vm (with disks: copy, on images
	 * made for it in m->datastore) */
	json_t *copy_spec = NULL, *src_images = json_array(), *sizes = json_array();
	copy_note_remove(m->name);   /* an earlier migration's */
	if (m->datastore[0]) {
		if (!images_here(spec, src_images, sizes, err, sizeof(err))) {
			mig_set(m, "failed", NULL, err);
			json_decref(src_images);
			json_decref(sizes);
			goto out;
		}
		copy_spec = spec_in(spec, m->datastore);
	}
	json_t *req = json_pack("{s:s, s:O}", "name", m->name, "spec", copy_spec ? copy_spec : spec);
	if (copy_spec)
		json_object_set(req, "create_disks", sizes);
	json_decref(sizes);
	if (m->secret[0])
		json_object_set_new(req, "secret", json_string(m->secret));
	snprintf(url, sizeof(url), "%s/agent/v1/incoming", m->dest_url);
	json_t *r = http_json("POST", url, fd_cfg.auth.present, req, 20000, &status, err,
			      sizeof(err));
	json_decref(req);
	if (!r || status != 201) {
		const char *msg = json_string_value(
			json_object_get(json_object_get(r, "error"), "message"));
		char e[700];
		snprintf(e, sizeof(e), "the destination could not prepare: %s", msg ? msg : err);
		mig_set(m, "failed", NULL, e);
		json_decref(r);
		goto copy_out;
	}
	int port = (int)json_integer_value(json_object_get(r, "port"));
	json_decref(r);
	if (copy_spec) {
		json_t *note = json_pack("{s:s, s:O, s:O}", "dest_url", m->dest_url, "images",
					 src_images, "spec", copy_spec);
		copy_note_write(m->name, note);
		json_decref(note);
	}
	if (m->cancel) {
		dest_remove(m);
		mig_set(m, "cancelled", NULL, "cancelled before it started");
		goto copy_out;
	}
	/* 2. migrate */
	struct qmp q;
	if (!qmp_open(&q, ctl, err, sizeof(err))) {
		dest_remove(m);
		mig_set(m, "failed", NULL, err);
		goto copy_out;
	}
	q.on_event = on_event;
	q.ctx = m;
	char uri[128];
	snprintf(uri, sizeof(uri), "tcp:%s:%d", m->dest_addr, port);
	json_t *args = json_pack("{s:s, s:i}", "uri", uri, "downtime_ms", m->downtime_ms);
	if (m->bandwidth_mbps > 0)
		json_object_set_new(args, "bandwidth_mbps", json_integer(m->bandwidth_mbps));
	if (copy_spec)
		json_object_set_new(args, "disks", json_string("copy"));
	if (m->secret[0]) {
		char sp[PATH_MAX + 32];
		snprintf(sp, sizeof(sp), "%s/vms/%s/migration.secret", fd_cfg.state_dir, m->name);
		int fd = open(sp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			ssize_t w = write(fd, m->secret, strlen(m->secret));
			(void)w;
			close(fd);
		}
		json_object_set_new(args, "secret_file", json_string(sp));
	}
	logf_("migrating VM %s to %s (%s)", m->name, m->dest_url, uri);
	mig_set(m, "setup", NULL, NULL);
	r = qmp_cmd(&q, "migrate", args, 10000, err, sizeof(err));
	json_decref(args);
	if (!r) {
		qmp_close(&q);
		dest_remove(m);
		mig_set(m, "failed", NULL, err);
		goto copy_out;
	}
	json_decref(r);
	/* 3. follow it */
	follow(m, &q);
	if (!strcmp(m->status, "postmigrate"))
		mig_set(m, "completed", NULL, NULL);
	if (!strcmp(m->status, "completed")) {
		/* the guest runs on the destination: let go of the source
		 * (paused in postmigrate), then say done (below): said before,
		 * a migration back here could start while this VM's directory
		 * was being removed, and lose its own */
		pthread_mutex_lock(&vms_lock);
		vm = vm_find(m->name);
		if (vm)
			vm->leaving = true;
		pthread_mutex_unlock(&vms_lock);
		json_decref(qmp_cmd(&q, "quit", NULL, 2000, err, sizeof(err)));
		qmp_close(&q);
		vm_destroy(m->name, err, sizeof(err));
		logf_("VM %s migrated to %s", m->name, m->dest_url);
		if (copy_spec && dest_runs_after_handoff(m->dest_url, m->name)) {
			/* its images there are the disks now */
			images_remove(src_images);
		} else if (copy_spec) {
			logf_("VM %s: the destination does not say it runs: its images here are "
			      "kept", m->name);
		}
		if (copy_spec) {
			pthread_mutex_lock(&mig_lock);
			m->spec_after = json_incref(copy_spec);
			pthread_mutex_unlock(&mig_lock);
		}
	} else {
		qmp_close(&q);
		dest_remove(m);
		logf_("migration of VM %s %s: %s", m->name, m->status, m->error);
	}
copy_out:
	copy_note_remove(m->name);
	json_decref(copy_spec);
	json_decref(src_images);
out:
	json_decref(spec);
	free(ctl);
	pthread_mutex_lock(&mig_lock);
	m->done = true;
	news(m);
	pthread_mutex_unlock(&mig_lock);
	return NULL;
}

int migration_start(const char *name, json_t *req, char *err, size_t errlen)
{
	const char *dest_url = json_string_value(json_object_get(req, "dest_url"));
	const char *dest_addr = json_string_value(json_object_get(req, "dest_addr"));
	const char *ds = json_string_value(json_object_get(req, "datastore"));
	if (ds && !dest_url && !dest_addr) {   /* a storage move, here */
		char ref[80], *p;
		snprintf(ref, sizeof(ref), "%s:", ds);
		if (!(p = vm_datastore_path(ref, err, errlen)))
			return 400;
		free(p);
		dest_url = dest_addr = "";
	} else if (!dest_url || !dest_addr) {
		snprintf(err, errlen, "migrate wants dest_url and dest_addr (or a datastore)");
		return 400;
	} else if (!strcmp(dest_addr, fd_cfg.address) || !strncmp(dest_addr, "127.", 4)) {
		snprintf(err, errlen, "the destination %s is this host or loopback", dest_addr);
		return 400;
	}
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (vm && vm->incoming)   /* an incoming VM that has arrived runs now: ask it */
		json_decref(vm_json(vm, true));
	bool ok = vm && !vm->exited && !vm->incoming;
	pthread_mutex_unlock(&vms_lock);
	if (!ok) {
		snprintf(err, errlen, "host %s runs no VM named %s", fd_cfg.name, name);
		return 404;
	}
	pthread_mutex_lock(&mig_lock);
	struct migration *m = mig_find(name);
	if (m && !m->done) {
		pthread_mutex_unlock(&mig_lock);
		snprintf(err, errlen, "VM %s is migrating already", name);
		return 409;
	}
	if (!m) {
		if (nmigs == MAX_MIGRATIONS) {   /* forget the oldest finished one */
			for (int i = 0; i < nmigs; i++)
				if (migs[i]->done) {
					json_decref(migs[i]->last);
					json_decref(migs[i]->spec_after);
					free(migs[i]);
					migs[i] = migs[--nmigs];
					break;
				}
		}
		if (nmigs == MAX_MIGRATIONS) {
			pthread_mutex_unlock(&mig_lock);
			snprintf(err, errlen, "too many migrations");
			return 409;
		}
		m = calloc(1, sizeof(*m));
		migs[nmigs++] = m;
	} else {
		json_decref(m->last);
		json_decref(m->spec_after);
		memset(m, 0, sizeof(*m));
	}
	snprintf(m->name, sizeof(m->name), "%s", name);
	snprintf(m->dest_url, sizeof(m->dest_url), "%s", dest_url);
	snprintf(m->dest_addr, sizeof(m->dest_addr), "%s", dest_addr);
	snprintf(m->datastore, sizeof(m->datastore), "%s", ds ? ds : "");
	json_t *dt = json_object_get(req, "downtime_ms");
	m->downtime_ms = json_is_integer(dt) ? (int)json_integer_value(dt) : 300;
	json_t *bw = json_object_get(req, "bandwidth_mbps");
	m->bandwidth_mbps = json_is_integer(bw) ? (int)json_integer_value(bw) : 0;
	snprintf(m->status, sizeof(m->status), "setup");
	if (fd_cfg.secure_incoming) {
		unsigned char raw[32];
		if (getrandom(raw, sizeof(raw), 0) == sizeof(raw))
			for (int i = 0; i < 32; i++)
				sprintf(m->secret + 2 * i, "%02x", raw[i]);
	}
	pthread_mutex_unlock(&mig_lock);
	pthread_t t;
	pthread_create(&t, NULL, migration_thread, m);
	pthread_detach(t);
	return 202;
}

/*
 * A migration this ferryd did not start (it restarted meanwhile): ask the
 * VM's ferry-vm. Not started -> done, failed; running -> its figures;
 * completed -> done, and the source (paused in postmigrate) is let go. A
 * shared-nothing one (its copy note) is done only once the destination
 * has said whether it runs the guest (until then: completed, not done,
 * everything here kept); then the source's images are removed if it does
 * (kept, and said, if not) and the new spec goes to ferry-center.
 */
static json_t *adopted_status(const char *name)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	char *ctl = vm && !vm->exited ? vm_control_path(vm) : NULL;
	pthread_mutex_unlock(&vms_lock);
	if (!ctl)
		return NULL;
	char err[256];
	json_t *r = qmp_call(ctl, "query-migrate", NULL, err, sizeof(err));
	free(ctl);
	if (!r)
		return NULL;
	const char *st = json_string_value(json_object_get(r, "status")) ?: "none";
	if (!strcmp(st, "none")) {
		json_object_set_new(r, "status", json_string("failed"));
		json_object_set_new(r, "error", json_string("ferryd restarted before the migration "
							    "began; the VM stays here"));
		json_object_set_new(r, "done", json_true());
	} else if (!strcmp(st, "completed") || !strcmp(st, "postmigrate")) {
		json_object_set_new(r, "status", json_string("completed"));
		json_t *note = copy_note_read(name);
		const char *dest = json_string_value(json_object_get(note, "dest_url"));
		char there[32] = "";
		if (dest)
			dest_state(dest, name, there, sizeof(there));
		if (dest && !strcmp(there, "incoming")) {   /* its word is still to come */
			json_object_set_new(r, "done", json_false());
			json_decref(note);
			json_object_set_new(r, "adopted", json_true());
			return r;
		}
		json_object_set_new(r, "done", json_true());
		vm_destroy(name, err, sizeof(err));
		logf_("VM %s migrated away (a migration from before this ferryd started)", name);
		if (note && !strcmp(there, "running")) {
			images_remove(json_object_get(note, "images"));
			logf_("VM %s: it runs on %s: its images here are removed", name, dest);
		} else if (note) {
			logf_("VM %s: the destination does not say it runs (%s): its images here "
			      "are kept", name, there[0] ? there : "no answer");
		}
		if (note)
			json_object_set(r, "spec", json_object_get(note, "spec"));
		json_decref(note);
	} else {
		bool done = terminal(st);
		json_object_set_new(r, "done", json_boolean(done));
		if (done)
			copy_note_remove(name);
	}
	json_object_set_new(r, "adopted", json_true());
	return r;
}

json_t *migration_status(const char *name)
{
	return migration_status_wait(name, 0, 0);
}

/* Until name's migration has a generation other than since, or wait_ms
 * have passed; its migration then (re-found: a wait lets go of mig_lock). */
static struct migration *await_news(const char *name, unsigned long long since, long wait_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += (wait_ms % 1000) * 1000000L;
	until.tv_sec += wait_ms / 1000 + until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	struct migration *m = mig_find(name);
	while (m && !m->done && m->gen == since &&
	       pthread_cond_timedwait(&mig_news, &mig_lock, &until) == 0)
		m = mig_find(name);
	return m;
}

json_t *migration_status_wait(const char *name, unsigned long long since, long wait_ms)
{
	pthread_mutex_lock(&mig_lock);
	struct migration *m = wait_ms > 0 ? await_news(name, since, wait_ms) : mig_find(name);
	if (!m) {
		pthread_mutex_unlock(&mig_lock);
		return adopted_status(name);
	}
	json_t *j = m->last ? json_deep_copy(m->last) : json_object();
	json_object_set_new(j, "status", json_string(m->status));
	json_object_set_new(j, "done", json_boolean(m->done));
	json_object_set_new(j, "destination", json_string(m->dest_url));
	json_object_set_new(j, "generation", json_integer((json_int_t)m->gen));
	if (m->datastore[0])
		json_object_set_new(j, "datastore", json_string(m->datastore));
	if (m->spec_after)
		json_object_set(j, "spec", m->spec_after);
	if (m->error[0])
		json_object_set_new(j, "error", json_string(m->error));
	else
		json_object_del(j, "error");
	pthread_mutex_unlock(&mig_lock);
	return j;
}

int migration_cancel(const char *name, char *err, size_t errlen)
{
	pthread_mutex_lock(&mig_lock);
	struct migration *m = mig_find(name);
	int rc = 200;
	if (!m) {   /* started before this ferryd: tell ferry-vm itself */
		pthread_mutex_unlock(&mig_lock);
		pthread_mutex_lock(&vms_lock);
		struct vm *vm = vm_find(name);
		char *ctl = vm && !vm->exited ? vm_control_path(vm) : NULL;
		pthread_mutex_unlock(&vms_lock);
		json_t *r = ctl ? qmp_call(ctl, "migrate-cancel", NULL, err, errlen) : NULL;
		free(ctl);
		if (!r && !ctl)
			snprintf(err, errlen, "host %s runs no VM named %s", fd_cfg.name, name);
		json_decref(r);
		return r ? 200 : 404;
	}
	if (m->done) {
		snprintf(err, errlen, "VM %s has no migration running on host %s", name,
			 fd_cfg.name);
		rc = m ? 409 : 404;
	} else {
		m->cancel = true;
	}
	pthread_mutex_unlock(&mig_lock);
	return rc;
}

int migration_set_bandwidth(const char *name, json_t *req, char *err, size_t errlen)
{
	json_t *bw = json_object_get(req, "bandwidth_mbps");
	if (!json_is_integer(bw) || json_integer_value(bw) < 0) {
		snprintf(err, errlen, "want {\"bandwidth_mbps\": N} (0: no cap)");
		return 400;
	}
	pthread_mutex_lock(&mig_lock);
	struct migration *m = mig_find(name);
	bool running = m && !m->done;
	pthread_mutex_unlock(&mig_lock);
	if (!running) {
		snprintf(err, errlen, "VM %s has no migration running on host %s", name, fd_cfg.name);
		return 404;
	}
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	char *ctl = vm ? vm_control_path(vm) : NULL;
	pthread_mutex_unlock(&vms_lock);
	if (!ctl) {
		snprintf(err, errlen, "VM %s is gone", name);
		return 404;
	}
	json_t *args = json_pack("{s:O}", "bandwidth_mbps", bw);
	json_t *r = qmp_call(ctl, "migrate-set-parameters", args, err, errlen);
	json_decref(args);
	free(ctl);
	if (!r)
		return 409;
	json_decref(r);
	pthread_mutex_lock(&mig_lock);
	m->bandwidth_mbps = (int)json_integer_value(bw);
	pthread_mutex_unlock(&mig_lock);
	return 200;
}

/* A TCP port free on our address a moment ago. */
static int free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	inet_pton(AF_INET, fd_cfg.address, &sa.sin_addr);
	socklen_t len = sizeof(sa);
	int port = -1;
	if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(s, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(s);
	return port;
}

/* Is something listening on TCP port (in this network namespace)? */
static bool listening(int port)
{
	FILE *f = fopen("/proc/net/tcp", "r");
	if (!f)
		return false;
	char line[512];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned addr, p, st;
		if (sscanf(line, " %*d: %8x:%4x %*8x:%*4x %2x", &addr, &p, &st) == 3 &&
		    (int)p == port && st == 0x0A)
			found = true;
	}
	fclose(f);
	return found;
}

/* incoming_start's ferry-vm --incoming, listening; created: its new images. */
static int incoming_vm(const char *name, json_t *spec, const char *secret, json_t *created,
		       json_t **reply, char *err, size_t errlen)
{
	int port = free_port();
	if (port < 0) {
		snprintf(err, errlen, "no free TCP port on %s", fd_cfg.address);
		return 503;
	}
	char uri[128];
	snprintf(uri, sizeof(uri), "tcp:%s:%d", fd_cfg.address, port);
	int rc = vm_start(name, json_incref(spec), uri,
			  fd_cfg.secure_incoming ? secret : NULL, err, errlen);
	if (rc != 201)
		return rc;
	pthread_mutex_lock(&vms_lock);
	struct vm *made = vm_find(name);
	if (made && created)
		made->created = json_incref(created);
	pthread_mutex_unlock(&vms_lock);
	for (int i = 0; i < 2000 && !listening(port); i++) {   /* 10 s */
		pthread_mutex_lock(&vms_lock);
		struct vm *vm = vm_find(name);
		bool gone = !vm || vm->exited;
		pthread_mutex_unlock(&vms_lock);
		if (gone)
			break;
		usleep(5000);
	}
	if (!listening(port)) {
		char *out = NULL;
		pthread_mutex_lock(&vms_lock);
		struct vm *vm = vm_find(name);
		if (vm) {
			char p[PATH_MAX + 32];
			snprintf(p, sizeof(p), "%s/output.log", vm->dir);
			out = file_tail(p, 3, 2048);
		}
		pthread_mutex_unlock(&vms_lock);
		snprintf(err, errlen, "ferry-vm --incoming %s did not listen: %s", uri,
			 out ? out : "");
		free(out);
		char e2[128];
		vm_destroy(name, e2, sizeof(e2));
		return 503;
	}
	*reply = json_pack("{s:s, s:i, s:s}", "name", name, "port", port, "uri", uri);
	return 201;
}

void images_remove(json_t *paths)
{
	size_t i;
	json_t *p;
	json_array_foreach(paths, i, p) {
		if (unlink(json_string_value(p)) == 0)
			logf_("image %s removed", json_string_value(p));
	}
}

json_t *images_create(json_t *spec, json_t *sizes, char *err, size_t errlen)
{
	json_t *disks = json_object_get(spec, "disks");
	if (json_array_size(disks) != json_array_size(sizes)) {
		snprintf(err, errlen, "create_disks wants one size per disk");
		return NULL;
	}
	json_t *made = json_array();
	size_t i;
	json_t *d;
	json_array_foreach(disks, i, d) {
		char *p = vm_datastore_new_path(json_string_value(d), err, errlen);
		const char *root = datastore_root(json_string_value(d));
		int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
		int fd = !p ? -1 : root ? open_beneath(root, p, flags, 0600) : open(p, flags, 0600);
		if (p && fd < 0)
			snprintf(err, errlen, "%s on host %s: %s", p, fd_cfg.name, strerror(errno));
		if (fd >= 0) {
			json_array_append_new(made, json_string(p));
			off_t size = (off_t)json_integer_value(json_array_get(sizes, i));
			if (ftruncate(fd, size) != 0) {
				snprintf(err, errlen, "%s on host %s: %s", p, fd_cfg.name,
					 strerror(errno));
				close(fd);
				fd = -1;
			} else {
				close(fd);
			}
		}
		free(p);
		if (fd < 0) {
			images_remove(made);
			json_decref(made);
			return NULL;
		}
	}
	return made;
}

int incoming_start(json_t *req, json_t **reply, char *err, size_t errlen)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	json_t *spec = json_object_get(req, "spec");
	const char *secret = json_string_value(json_object_get(req, "secret"));
	if (!name || !json_is_object(spec)) {
		snprintf(err, errlen, "incoming wants name and spec");
		return 400;
	}
	json_t *sizes = json_object_get(req, "create_disks");
	json_t *created = json_is_array(sizes) ? images_create(spec, sizes, err, errlen) : NULL;
	if (json_is_array(sizes) && !created)
		return 409;
	int rc = incoming_vm(name, spec, secret, created, reply, err, errlen);
	if (rc != 201 && created)
		images_remove(created);
	json_decref(created);
	return rc;
}

