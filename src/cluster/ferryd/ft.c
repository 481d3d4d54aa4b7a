/*
 * ft.c - fault tolerance on the cluster plane: a VM's primary on one host,
 * its secondary (ferry-vm --ft-secondary, kept current by checkpoints) on
 * another, and the decision of which one runs made through etcd.
 *
 * etcd holds, per FT VM, two keys without a lease (they outlive hosts):
 *   /ferry/ft/NAME/owner  {"host": H[, "secondary": S][, "gave_up": true]}:
 *       the one host that may run the guest, and the one host whose
 *       secondary may take over from it (none once the primary has run on
 *       unprotected: that secondary is stale). Changed only by a
 *       transaction on its revision.
 *   /ferry/ft/NAME/status what `ferry vm show` and the console show
 *       (state, hosts, figures from query-ft, the last transitions),
 *       written by the owner's ferryd.
 *
 * Primary (the owner's ferryd). `POST /agent/v1/vms/NAME/ft` (ferry-center,
 * `ferry vm ft enable`): create the owner key naming this host, ask the
 * secondary's ferryd for a secondary (`POST /agent/v1/ft/secondary`: it
 * starts ferry-vm --ft-secondary tcp:ITS_ADDR:PORT,secret-file=F
 * --ft-takeover manual, as for a migration's destination, with a fresh
 * secret; the owner key names that host as the secondary first), then
 * `ft-start` to it with on_loss "hold". Every FT_POLL_MS the agent asks
 * query-ft:
 * - protected or syncing: figures into the status key;
 * - secondary-lost (the link broke, or the secondary's host died): the
 *   guest is paused there with its output and disk writes held, since the
 *   secondary may still take over from the last acknowledged epoch. The
 *   agent re-reads the owner key and rewrites it, by a transaction on its
 *   revision, to name no secondary. Only once that succeeded does it say
 *   ft-continue (the held output goes out, the guest runs on unprotected,
 *   said in the status); the old secondary is told to go, and after
 *   FT_RETRY_MS a new secondary is started on the roomiest other live
 *   host. Not ours (the secondary won it, which it can only do once this
 *   host's lease has expired): the guest here is killed, its held output
 *   never sent. No answer from etcd: nothing is decided, the guest stays
 *   paused; the self-fence (fence.c) ends it before the lease can expire,
 *   and an FT VM is ended by that fence whatever --isolation-response says;
 * - unprotected (a secondary lost before its first complete checkpoint,
 *   which has nothing to run): the owner key is rewritten the same way;
 * - the guest ended by itself: FT ends (the secondary goes, keys deleted);
 *   ferry-vm died by a signal (or the fence) on a live host: the owner key
 *   is marked gave_up, so the secondary may take over at once.
 *
 * Secondary. Its ferry-vm never runs the guest on its own (manual
 * takeover). When query-ft says primary-lost, the agent reads the owner
 * key: it no longer names this host as the secondary -> the primary ran on
 * unprotected and released what this secondary would have to reproduce: it
 * ends. It still names this host -> it races the primary's ferryd for the
 * key at once: it rewrites the owner to this host by a transaction on the
 * revision it read, whether or not the primary's host holds its lease.
 * That is safe because the primary runs with on_loss "hold": once the link
 * broke it releases nothing (no acknowledgement comes, and once it calls
 * its secondary lost it pauses, held) until its ferryd has taken the
 * secondary's name out of the key, which this transaction forbids. So if
 * this side wins, the primary's ferryd (alive) kills its held guest, or
 * (cut off) its self-fence does; if the primary's side wins, this
 * secondary ends. Having won, it says ft-takeover only once the VM's
 * writable disks are unlocked (their OFD lock goes with the old primary's
 * process: ferry-vm refuses to run without it, and would end), checked
 * every pass for at most FT_DISK_WAIT_MS; after that ferry-vm's own lock
 * check decides. The lease-expiry case (the primary's host died) is the
 * same race, won by the secondary; a primary that gave up (its ferry-vm
 * died) leaves the key to the secondary too. So of a primary and a
 * secondary cut apart, exactly one runs afterwards, and a secondary never
 * runs after its primary released held output.
 * After taking over, this host is the primary: FT is restored by a new
 * secondary on a third host, if there is one.
 *
 * HA and FT: an FT VM is not HA's while FT protects it (HA would start a
 * second copy when the primary's host dies, while the secondary takes
 * over). The agent holds the spec's "ha" aside (as "ft_ha") and removes
 * the VM's HA record; `ft disable` gives it back. A secondary's spec
 * carries no "ha" (VM monitoring must not boot it afresh).
 *
 * The agent finds its FT VMs again after a ferryd restart: secondaries
 * from their spec ("ft": {"role": "secondary"}), primaries from the owner
 * keys naming this host.
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/etcd.h"
#include "cluster/common/http_client.h"
#include "cluster/common/http_server.h"
#include "cluster/common/qmp_client.h"
#include "cluster/common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define FT_PREFIX "/ferry/ft/"
#define FT_POLL_MS 200
#define FT_LINK_TIMEOUT_MS 500      /* link silence before either side calls the other lost */
#define FT_RETRY_MS 3000            /* after losing a secondary, before starting another */
#define FT_DISK_WAIT_MS 15000       /* won the key: how long the old primary may keep the disks */
#define FT_STATUS_EVERY_MS 1000
#define FT_HISTORY 8
#define FT_MAX 64
#define VM_OVERHEAD_MIB 32

struct ft_vm {
	char name[64];
	bool secondary_role;        /* this host holds the VM's secondary */
	char primary[64];
	char secondary[64];         /* host; "" while none */
	char secondary_url[160];
	char state[24];             /* starting, protected, unprotected, failing-over */
	char error[400];
	int epoch_ms;               /* asked for; 0: ferry-vm's default */
	bool busy;                  /* enable, disable or a restore is under way */
	int64_t retry_at;           /* mono ms: the next try at a new secondary */
	char avoid[64];             /* the host that just failed as secondary */
	int64_t lost_at;            /* secondary: when the primary was seen lost */
	bool disk_wait_said;        /* secondary: "waiting for the disks" logged */
	json_t *figures;            /* the last query-ft */
	int64_t rate_at;
	json_int_t rate_epoch;
	double rate;                /* checkpoints a second, measured */
	int failovers;
	json_t *failover;           /* the last one: from, to, epoch, at */
	json_t *history;            /* the last FT_HISTORY transitions */
	int64_t status_at;
	char *status_text;          /* the last written */
};

static struct etcd etcd_ft;
static pthread_mutex_t ft_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ft_vm *fts[FT_MAX];
static int nfts;

/* ---- the table (under ft_lock) ------------------------------------------- */

static struct ft_vm *ft_find(const char *name)
{
	for (int i = 0; i < nfts; i++)
		if (!strcmp(fts[i]->name, name))
			return fts[i];
	return NULL;
}

static struct ft_vm *ft_add(const char *name, bool secondary_role)
{
	if (nfts == FT_MAX)
		return NULL;
	struct ft_vm *f = calloc(1, sizeof(*f));
	snprintf(f->name, sizeof(f->name), "%s", name);
	f->secondary_role = secondary_role;
	f->history = json_array();
	snprintf(f->state, sizeof(f->state), "starting");
	fts[nfts++] = f;
	return f;
}

static void ft_drop(struct ft_vm *f)
{
	for (int i = 0; i < nfts; i++)
		if (fts[i] == f) {
			fts[i] = fts[--nfts];
			break;
		}
	json_decref(f->figures);
	json_decref(f->failover);
	json_decref(f->history);
	free(f->status_text);
	free(f);
}

/* Forgets VM name's FT entry, if it has one. Takes ft_lock. */
static void ft_forget(const char *name)
{
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f)
		ft_drop(f);
	pthread_mutex_unlock(&ft_lock);
}

/* A new state, with why, kept in the history (under ft_lock). */
static void ft_state(struct ft_vm *f, const char *state, const char *why)
{
	if (why)
		snprintf(f->error, sizeof(f->error), "%s", why);
	else if (strcmp(state, f->state))
		f->error[0] = 0;
	if (!strcmp(state, f->state))
		return;
	snprintf(f->state, sizeof(f->state), "%s", state);
	char at[32];
	iso_time(time(NULL), at, sizeof(at));
	json_array_append_new(f->history, json_pack("{s:s, s:s, s:s}", "state", state, "at", at,
						    "why", why ? why : ""));
	while (json_array_size(f->history) > FT_HISTORY)
		json_array_remove(f->history, 0);
	logf_("FT: VM %s %s%s%s", f->name, state, why ? ": " : "", why ? why : "");
}

/* ---- etcd ----------------------------------------------------------------- */

static void ft_key(char *out, size_t len, const char *name, const char *leaf)
{
	snprintf(out, len, FT_PREFIX "%s/%s", name, leaf);
}

/* The owner record (NULL when absent) and its revision; false when etcd
 * did not answer. */
static bool owner_get(const char *name, json_t **owner, int64_t *rev)
{
	char key[160], err[256];
	bool ok;
	ft_key(key, sizeof(key), name, "owner");
	char *text = etcd_get_rev(&etcd_ft, key, &ok, rev, err, sizeof(err));
	*owner = text ? json_loads(text, 0, NULL) : NULL;
	free(text);
	return ok;
}

static const char *owner_host(json_t *owner)
{
	return json_string_value(json_object_get(owner, "host")) ?: "";
}

/* Rewrites the owner only if it is still at rev; value stolen. */
static bool owner_swap(const char *name, json_t *value, int64_t rev)
{
	char key[160], err[256];
	ft_key(key, sizeof(key), name, "owner");
	char *text = json_dumps(value, JSON_COMPACT);
	json_decref(value);
	bool swapped = false;
	etcd_put_if_rev(&etcd_ft, key, text, rev, &swapped, err, sizeof(err));
	free(text);
	return swapped;
}

/* The owner key names host as the VM's secondary (before it gets any
 * checkpoint); false if the key is not ours or changed meanwhile. */
static bool owner_name_secondary(const char *name, const char *host)
{
	json_t *owner;
	int64_t rev;
	if (!owner_get(name, &owner, &rev))
		return false;
	bool mine = owner && !strcmp(owner_host(owner), fd_cfg.name) &&
		    !json_object_get(owner, "gave_up");
	json_decref(owner);
	return mine && owner_swap(name, json_pack("{s:s, s:s}", "host", fd_cfg.name,
						  "secondary", host), rev);
}

static void keys_delete(const char *name)
{
	char key[160], err[256];
	ft_key(key, sizeof(key), name, "owner");
	etcd_delete(&etcd_ft, key, err, sizeof(err));
	ft_key(key, sizeof(key), name, "status");
	etcd_delete(&etcd_ft, key, err, sizeof(err));
}

/* ---- the VM this host runs ------------------------------------------------ */

enum vm_seen { VM_ABSENT, VM_RUNNING, VM_INCOMING, VM_EXITED };

/* What this host's table says of the VM; *ctl (malloc'd) its control socket. */
static enum vm_seen vm_look(const char *name, char **ctl, char *how, size_t howlen)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	enum vm_seen seen = !vm || vm->leaving ? VM_ABSENT : vm->exited ? VM_EXITED :
			    vm->incoming ? VM_INCOMING : VM_RUNNING;
	if (ctl)
		*ctl = seen == VM_RUNNING || seen == VM_INCOMING ? vm_control_path(vm) : NULL;
	if (how)
		snprintf(how, howlen, "%s", vm && vm->fenced ? "fenced" : vm ? vm->exit_desc : "");
	pthread_mutex_unlock(&vms_lock);
	return seen;
}

static json_t *query_ft(const char *name)
{
	char *ctl = NULL, err[256];
	vm_look(name, &ctl, NULL, 0);
	json_t *r = ctl ? qmp_call(ctl, "query-ft", NULL, err, sizeof(err)) : NULL;
	free(ctl);
	return r;
}

/* Replaces the VM's spec by edit(copy) (a copy: others may hold the old). */
static void spec_edit(const char *name, void (*edit)(json_t *spec, struct vm *vm))
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (vm) {
		json_t *copy = json_deep_copy(vm->spec);
		edit(copy, vm);
		json_decref(vm->spec);
		vm->spec = copy;
	}
	pthread_mutex_unlock(&vms_lock);
}

static void hold_ha_edit(json_t *spec, struct vm *vm)
{
	(void)vm;
	json_t *ha = json_object_get(spec, "ha");
	if (ha && !json_object_get(spec, "ft_ha"))
		json_object_set(spec, "ft_ha", ha);
	json_object_del(spec, "ha");
}

static void give_ha_edit(json_t *spec, struct vm *vm)
{
	json_t *ha = json_object_get(spec, "ft_ha");
	if (ha)
		json_object_set(spec, "ha", ha);
	json_object_del(spec, "ft_ha");
	vm->published = false;   /* ha_agent.c puts its record again */
}

/* FT decides where this VM runs, not HA: its "ha" aside, its HA record gone. */
static void hold_ha(const char *name)
{
	spec_edit(name, hold_ha_edit);
	char key[160], err[256];
	bool ok;
	snprintf(key, sizeof(key), "/ferry/ha/%s", name);
	char *text = etcd_get(&etcd_ft, key, &ok, err, sizeof(err));
	json_t *rec = text ? json_loads(text, 0, NULL) : NULL;
	if (rec && !strcmp(json_string_value(json_object_get(rec, "host")) ?: "", fd_cfg.name))
		etcd_delete(&etcd_ft, key, err, sizeof(err));
	json_decref(rec);
	free(text);
}

/* ---- the status key --------------------------------------------------------- */

static json_int_t fig(json_t *figures, const char *key)
{
	return json_integer_value(json_object_get(figures, key));
}

/* The figures a user needs, from query-ft (under ft_lock). */
static json_t *status_json(struct ft_vm *f)
{
	json_t *s = json_pack("{s:s, s:s, s:s?, s:s?, s:i, s:i}", "state", f->state, "primary",
			      f->primary, "secondary", f->secondary[0] ? f->secondary : NULL,
			      "error", f->error[0] ? f->error : NULL, "failovers", f->failovers,
			      "epoch_ms", f->epoch_ms);
	json_t *q = f->figures;
	if (q && fig(q, "epoch_ms")) {
		double epoch_ms = (double)fig(q, "epoch_ms");
		double commit_ms = (double)fig(q, "commit_us_avg") / 1000.0;
		double pause_ms = (double)fig(q, "pause_us_avg") / 1000.0;
		/* a frame waits for its epoch's end and then for that
		 * checkpoint's acknowledgement; the end comes min_epoch_ms after
		 * the epoch began when output waits (early epochs), else half an
		 * epoch away on average */
		double min_epoch = (double)fig(q, "min_epoch_ms");
		double latency = (min_epoch > 0 ? min_epoch : epoch_ms / 2) + commit_ms;
		/* the guest stands still pause_ms per checkpoint */
		double rate = f->rate > 0 ? f->rate : 1000.0 / epoch_ms;
		json_object_set_new(s, "epoch_ms", json_integer((json_int_t)epoch_ms));
		json_object_set_new(s, "epoch", json_integer(fig(q, "acked_epoch")));
		json_object_set_new(s, "checkpoints_per_s", json_real((double)(int)(f->rate * 10) / 10));
		json_object_set_new(s, "bytes_per_epoch", json_integer(fig(q, "bytes_per_epoch")));
		json_object_set_new(s, "commit_ms", json_real((double)(int)(commit_ms * 10) / 10));
		json_object_set_new(s, "pause_ms", json_real((double)(int)(pause_ms * 100) / 100));
		json_object_set_new(s, "added_latency_ms", json_real((double)(int)(latency * 10) / 10));
		json_object_set_new(s, "slowdown_pct",
				    json_real((double)(int)(pause_ms * rate / 10.0 * 10) / 10));
		json_object_set_new(s, "held_frames", json_integer(fig(q, "held_frames")));
	}
	if (f->failover)
		json_object_set(s, "last_failover", f->failover);
	json_object_set(s, "history", f->history);
	json_object_set_new(s, "updated_ms", json_integer(now_ms()));
	return s;
}

/* Writes the status key when it changed, and every FT_STATUS_EVERY_MS. */
static void status_publish(const char *name, bool force)
{
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	char *text = NULL;
	if (f && !f->secondary_role) {
		json_t *s = status_json(f);
		json_t *cmp = json_deep_copy(s);
		json_object_del(cmp, "updated_ms");
		char *key_text = json_dumps(cmp, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(cmp);
		bool changed = !f->status_text || strcmp(f->status_text, key_text);
		if (force || changed || mono_ms() - f->status_at >= FT_STATUS_EVERY_MS) {
			text = json_dumps(s, JSON_COMPACT);
			free(f->status_text);
			f->status_text = key_text;
			f->status_at = mono_ms();
		} else {
			free(key_text);
		}
		json_decref(s);
	}
	pthread_mutex_unlock(&ft_lock);
	if (text) {
		char key[160], err[256];
		ft_key(key, sizeof(key), name, "status");
		etcd_put(&etcd_ft, key, text, 0, err, sizeof(err));
		free(text);
	}
}

/* ---- starting a secondary (primary side) ------------------------------------ */

static void random_hex(char *out, size_t bytes)
{
	unsigned char raw[32];
	if (bytes > sizeof(raw))
		bytes = sizeof(raw);
	if (getrandom(raw, bytes, 0) != (ssize_t)bytes)
		for (size_t i = 0; i < bytes; i++)
			raw[i] = (unsigned char)rand();
	for (size_t i = 0; i < bytes; i++)
		sprintf(out + 2 * i, "%02x", raw[i]);
}

static const char *reply_message(json_t *r, const char *fallback)
{
	return json_string_value(json_object_get(json_object_get(r, "error"), "message")) ?:
	       fallback;
}

static void secondary_remove(const char *name, const char *url)
{
	if (!url || !*url)
		return;
	char full[400], err[256];
	long status;
	snprintf(full, sizeof(full), "%s/agent/v1/vms/%s", url, name);
	json_decref(http_json("DELETE", full, fd_cfg.auth.present, NULL, 5000, &status, err,
			      sizeof(err)));
}

/* The secondary's spec: the VM's, without HA, marked as a secondary. */
static json_t *secondary_spec(const char *name)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	json_t *spec = vm ? json_deep_copy(vm->spec) : NULL;
	pthread_mutex_unlock(&vms_lock);
	if (!spec)
		return NULL;
	json_t *ha = json_object_get(spec, "ft_ha") ?: json_object_get(spec, "ha");
	json_t *ft = json_pack("{s:s, s:s, s:i}", "role", "secondary", "primary", fd_cfg.name,
			       "timeout_ms", FT_LINK_TIMEOUT_MS);
	if (ha)
		json_object_set(ft, "ha", ha);
	json_object_del(spec, "ha");
	json_object_del(spec, "ft_ha");
	json_object_set_new(spec, "ft", ft);
	return spec;
}

/* A secondary on host (url), then ft-start to it; false with a message. */
static bool protect_on(const char *name, const char *host, const char *url, int epoch_ms,
		       char *err, size_t errlen)
{
	json_t *spec = secondary_spec(name);
	if (!spec) {
		snprintf(err, errlen, "VM %s does not run on %s", name, fd_cfg.name);
		return false;
	}
	char secret[65] = "";
	random_hex(secret, 32);
	json_t *body = json_pack("{s:s, s:o, s:s}", "name", name, "spec", spec, "secret", secret);
	char full[400], e[512];
	long status;
	snprintf(full, sizeof(full), "%s/agent/v1/ft/secondary", url);
	json_t *r = http_json("POST", full, fd_cfg.auth.present, body, 30000, &status, e,
			      sizeof(e));
	json_decref(body);
	if (!r || status != 201) {
		snprintf(err, errlen, "host %s cannot hold the secondary: %s", host,
			 r ? reply_message(r, "refused") : e);
		json_decref(r);
		return false;
	}
	/* a lost secondary: the guest waits, its output held, for link_lost */
	json_t *args = json_pack("{s:s, s:i, s:s}", "uri",
				 json_string_value(json_object_get(r, "uri")) ?: "", "timeout_ms",
				 FT_LINK_TIMEOUT_MS, "on_loss", "hold");
	json_decref(r);
	if (epoch_ms > 0)
		json_object_set_new(args, "epoch_ms", json_integer(epoch_ms));
	char *ctl = NULL;
	vm_look(name, &ctl, NULL, 0);
	if (fd_cfg.secure_incoming && ctl) {
		char path[PATH_MAX + 32];
		snprintf(path, sizeof(path), "%s/vms/%s/ft.secret", fd_cfg.state_dir, name);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd >= 0) {
			ssize_t w = write(fd, secret, strlen(secret));
			(void)w;
			close(fd);
		}
		json_object_set_new(args, "secret_file", json_string(path));
	}
	r = ctl ? qmp_call(ctl, "ft-start", args, e, sizeof(e)) : NULL;
	free(ctl);
	json_decref(args);
	if (!r) {
		snprintf(err, errlen, "ft-start to %s: %s", host, e);
		secondary_remove(name, url);
		return false;
	}
	json_decref(r);
	return true;
}

/* Live hosts that may hold a secondary of a VM of mem_mib: every one but
 * this and avoid, roomiest first ([{name, url}]). */
static json_t *candidates(const char *avoid, json_int_t mem_mib)
{
	char err[256];
	json_t *out = json_array();
	json_t *live = etcd_get_prefix(&etcd_ft, "/ferry/hosts/", err, sizeof(err));
	const char *key;
	json_t *value;
	json_object_foreach(live, key, value) {
		json_t *info = json_loads(json_string_value(value), 0, NULL);
		const char *name = json_string_value(json_object_get(info, "name"));
		const char *url = json_string_value(json_object_get(info, "url"));
		if (name && url && strcmp(name, fd_cfg.name) && strcmp(name, avoid)) {
			char full[300];
			long status;
			snprintf(full, sizeof(full), "%s/agent/v1/host", url);
			json_t *rep = http_json("GET", full, fd_cfg.auth.present, NULL, 3000, &status,
						err, sizeof(err));
			json_int_t free_mib = json_integer_value(json_object_get(rep, "free_mib"));
			if (rep && status == 200 && free_mib >= mem_mib + VM_OVERHEAD_MIB) {
				json_t *c = json_pack("{s:s, s:s, s:I}", "name", name, "url", url,
						      "free_mib", free_mib);
				size_t at = 0;   /* keep the list roomiest first */
				while (at < json_array_size(out) &&
				       json_integer_value(json_object_get(json_array_get(out, at),
									  "free_mib")) >= free_mib)
					at++;
				json_array_insert_new(out, at, c);
			}
			json_decref(rep);
		}
		json_decref(info);
	}
	json_decref(live);
	return out;
}

/* FT restored: a new secondary on the roomiest host that takes it. */
static void restore(const char *name)
{
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (!f || f->busy) {
		pthread_mutex_unlock(&ft_lock);
		return;
	}
	f->busy = true;
	char avoid[64];
	snprintf(avoid, sizeof(avoid), "%s", f->avoid);
	int epoch_ms = f->epoch_ms;
	pthread_mutex_unlock(&ft_lock);
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	json_int_t mem = vm ? json_integer_value(json_object_get(vm->spec, "mem_mib")) : 0;
	pthread_mutex_unlock(&vms_lock);
	json_t *hosts = candidates(avoid, mem);
	char why[600] = "", err[512];
	const char *host = NULL, *url = NULL;
	size_t i;
	json_t *c;
	json_array_foreach(hosts, i, c) {
		host = json_string_value(json_object_get(c, "name"));
		url = json_string_value(json_object_get(c, "url"));
		if (!owner_name_secondary(name, host)) {
			snprintf(why + strlen(why), sizeof(why) - strlen(why), "%setcd: the owner "
				 "key is not this host's or changed", why[0] ? "; " : "");
			host = NULL;
			break;
		}
		if (protect_on(name, host, url, epoch_ms, err, sizeof(err)))
			break;
		snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", why[0] ? "; " : "",
			 err);
		host = NULL;
	}
	pthread_mutex_lock(&ft_lock);
	f = ft_find(name);
	if (f) {
		f->busy = false;
		if (host) {
			snprintf(f->secondary, sizeof(f->secondary), "%s", host);
			snprintf(f->secondary_url, sizeof(f->secondary_url), "%s", url);
			f->avoid[0] = 0;
			char msg[160];
			snprintf(msg, sizeof(msg), "a new secondary on %s", host);
			ft_state(f, "starting", msg);
		} else {
			char msg[700];
			snprintf(msg, sizeof(msg), "unprotected: no host can hold a secondary%s%s",
				 why[0] ? ": " : " (no other live host)", why);
			snprintf(f->error, sizeof(f->error), "%s", msg);
			f->avoid[0] = 0;   /* next time, that host may do again */
			f->retry_at = mono_ms() + FT_RETRY_MS;
		}
	}
	pthread_mutex_unlock(&ft_lock);
	json_decref(hosts);
	status_publish(name, true);
}

/* ---- the primary's pass -------------------------------------------------- */

/* FT is over for this VM: secondary gone, keys gone, HA back (if it runs). */
static void teardown(const char *name, const char *why)
{
	char url[160] = "";
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f)
		snprintf(url, sizeof(url), "%s", f->secondary_url);
	pthread_mutex_unlock(&ft_lock);
	secondary_remove(name, url);
	keys_delete(name);
	spec_edit(name, give_ha_edit);
	ft_forget(name);
	logf_("FT: VM %s: fault tolerance ended (%s)", name, why);
}

/* Kill this host's ferry-vm of the VM at once: nothing it holds goes out. */
static void kill_guest(const char *name)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	if (vm && vm->pid > 0 && !vm->exited)
		kill(vm->pid, SIGKILL);
	pthread_mutex_unlock(&vms_lock);
}

/* The link to the secondary is gone (query-ft said secondary-lost or
 * unprotected). Still the owner? Then rewrite the owner key to name no
 * secondary, and only then release the held output (ft-continue): the
 * guest runs on, unprotected. Else the secondary runs: kill the guest
 * here, unreleased. */
static void link_lost(const char *name, json_t *figures)
{
	json_t *owner;
	int64_t rev;
	if (!owner_get(name, &owner, &rev))
		return;   /* etcd silent: decide nothing (the self-fence covers us) */
	const char *reason = json_string_value(json_object_get(figures, "error")) ?:
			     "the secondary is lost";
	const char *st = json_string_value(json_object_get(figures, "status")) ?: "";
	if (!owner || strcmp(owner_host(owner), fd_cfg.name) ||
	    json_object_get(owner, "gave_up")) {
		logf_("FT: VM %s: the owner is now %s: ending the guest here unreleased "
		      "(exactly one runs)", name, owner ? owner_host(owner) : "nobody");
		kill_guest(name);
		char err[256];
		vm_destroy(name, err, sizeof(err));
		ft_forget(name);
		json_decref(owner);
		return;
	}
	bool named = json_object_get(owner, "secondary") != NULL;
	json_decref(owner);
	/* from here the secondary can never win the key: what this primary
	 * held may go out */
	if (named && !owner_swap(name, json_pack("{s:s, s:I}", "host", fd_cfg.name,
						 "unprotected_ms", (json_int_t)now_ms()), rev))
		return;   /* changed meanwhile: look again next pass */
	if (!strcmp(st, "secondary-lost")) {
		logf_("FT: VM %s: the owner key is this host's and names no secondary: "
		      "ft-continue (the held output goes out, the guest runs on)", name);
		char *ctl = NULL, err[256];
		vm_look(name, &ctl, NULL, 0);
		json_t *r = ctl ? qmp_call(ctl, "ft-continue", NULL, err, sizeof(err)) : NULL;
		free(ctl);
		if (!r) {
			logf_("FT: VM %s: ft-continue: %s", name, err);
			return;   /* again next pass: the key is ours already */
		}
		json_decref(r);
	}
	char url[160] = "";
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f && f->secondary[0]) {
		char why[500];
		snprintf(why, sizeof(why), "secondary on %s lost (%s); the primary runs on",
			 f->secondary, reason);
		ft_state(f, "unprotected", why);
		snprintf(url, sizeof(url), "%s", f->secondary_url);
		snprintf(f->avoid, sizeof(f->avoid), "%s", f->secondary);
		f->secondary[0] = f->secondary_url[0] = 0;
		f->retry_at = mono_ms() + FT_RETRY_MS;
	}
	pthread_mutex_unlock(&ft_lock);
	status_publish(name, true);
	secondary_remove(name, url);
}

/* This host's ferry-vm of the VM died (signal, fence): hand over. */
static void give_up(const char *name, const char *how)
{
	json_t *owner;
	int64_t rev;
	if (!owner_get(name, &owner, &rev))
		return;
	bool mine = owner && !strcmp(owner_host(owner), fd_cfg.name);
	/* the record's secondary, if any, may take over; none if this primary
	 * ran on unprotected (its old secondary is stale) */
	json_t *next = json_pack("{s:s, s:b, s:s}", "host", fd_cfg.name, "gave_up", 1, "why", how);
	json_t *sec = json_object_get(owner, "secondary");
	if (sec)
		json_object_set(next, "secondary", sec);
	json_decref(owner);
	if (!mine)
		json_decref(next);
	else if (!owner_swap(name, next, rev))
		return;
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f) {
		char why[200];
		snprintf(why, sizeof(why), "the primary's ferry-vm ended (%s): the secondary "
			 "takes over", how);
		ft_state(f, "failing-over", why);
	}
	pthread_mutex_unlock(&ft_lock);
	status_publish(name, true);
	ft_forget(name);
}

/* The owner key names another host: the secondary won it (its ferryd
 * races for it as soon as the link breaks), so FT is that host's now and
 * nothing here may tear it down (remove its keys, stop "our" secondary). */
static bool owned_elsewhere(const char *name)
{
	json_t *owner;
	int64_t rev;
	bool elsewhere = owner_get(name, &owner, &rev) && owner &&
			 strcmp(owner_host(owner), fd_cfg.name);
	json_decref(owner);
	return elsewhere;
}

static void primary_pass(const char *name)
{
	char how[64];
	enum vm_seen seen = vm_look(name, NULL, how, sizeof(how));
	if ((seen == VM_ABSENT || seen == VM_EXITED) && owned_elsewhere(name)) {
		logf_("FT: VM %s: its copy here ended and the owner key names another host: "
		      "FT is that host's now", name);
		ft_forget(name);
		return;
	}
	if (seen == VM_ABSENT) {
		teardown(name, "the VM was stopped or left this host");
		return;
	}
	if (seen == VM_EXITED) {
		if (!strncmp(how, "exited", 6))
			teardown(name, "the guest ended");
		else
			give_up(name, how);
		return;
	}
	if (seen == VM_INCOMING)
		return;
	if (fence_isolated()) {   /* leave-running or not, an FT primary goes */
		kill_guest(name);
		return;
	}
	json_t *q = query_ft(name);
	if (!q)
		return;
	const char *st = json_string_value(json_object_get(q, "status")) ?: "off";
	bool lost = false, want_restore = false;
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f && !f->busy) {
		int64_t now = mono_ms();
		json_int_t epoch = fig(q, "acked_epoch");
		if (f->rate_at && now - f->rate_at >= 1000) {
			f->rate = (double)(epoch - f->rate_epoch) * 1000.0 / (double)(now - f->rate_at);
			f->rate_at = now;
			f->rate_epoch = epoch;
		} else if (!f->rate_at || epoch < f->rate_epoch) {
			f->rate_at = now;
			f->rate_epoch = epoch;
		}
		json_decref(f->figures);
		f->figures = json_incref(q);
		bool active = !strcmp(f->state, "starting") || !strcmp(f->state, "protected");
		if (!strcmp(st, "protected"))
			ft_state(f, "protected", NULL);
		else if (!strcmp(st, "syncing"))
			ft_state(f, "starting", NULL);
		else if (active || !strcmp(st, "secondary-lost"))
			lost = true;   /* the guest waits, paused, for link_lost */
		else
			want_restore = now >= f->retry_at;
	}
	pthread_mutex_unlock(&ft_lock);
	if (lost)
		link_lost(name, q);
	else if (want_restore)
		restore(name);
	json_decref(q);
	status_publish(name, false);
}

/* ---- the secondary's pass ------------------------------------------------ */

static void took_over_edit(json_t *spec, struct vm *vm)
{
	json_t *ha = json_object_get(json_object_get(spec, "ft"), "ha");
	if (ha)
		json_object_set(spec, "ft_ha", ha);
	json_object_del(spec, "ft");
	vm->incoming = false;
}

/* The secondary runs the guest now: this host is the primary. */
static void become_primary(const char *name, json_t *q)
{
	spec_edit(name, took_over_edit);
	char path[PATH_MAX + 32];
	snprintf(path, sizeof(path), "%s/vms/%s/migration.secret", fd_cfg.state_dir, name);
	unlink(path);   /* spent */
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f) {
		json_t *took = json_object_get(q, "took_over") ?: q;
		char at[32], why[200];
		iso_time(time(NULL), at, sizeof(at));
		json_decref(f->failover);
		f->failover = json_pack("{s:s, s:s, s:I, s:s}", "from", f->primary, "to",
					fd_cfg.name, "epoch", fig(took, "epoch"), "at", at);
		f->failovers++;
		f->secondary_role = false;
		snprintf(f->avoid, sizeof(f->avoid), "%s", f->primary);
		snprintf(f->primary, sizeof(f->primary), "%s", fd_cfg.name);
		f->secondary[0] = f->secondary_url[0] = 0;
		f->retry_at = mono_ms();   /* FT restored on a third host at once */
		snprintf(why, sizeof(why), "took over from %s at epoch %lld; a new secondary "
			 "follows", json_string_value(json_object_get(f->failover, "from")),
			 (long long)fig(took, "epoch"));
		snprintf(f->state, sizeof(f->state), "failing-over");
		ft_state(f, "unprotected", why);
	}
	pthread_mutex_unlock(&ft_lock);
	status_publish(name, true);
}

/* Does another process hold a writable disk of the VM (the old primary's
 * ferry-vm, still alive)? Its path in *which. OFD locks, as in
 * backend/disk.c: F_OFD_GETLK on a descriptor of our own says who else
 * holds one, and closing ours takes nobody's. */
static bool disks_locked(const char *name, char *which, size_t len)
{
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	json_t *disks = vm ? json_deep_copy(json_object_get(vm->spec, "disks")) : NULL;
	pthread_mutex_unlock(&vms_lock);
	bool locked = false;
	size_t i;
	json_t *d;
	json_array_foreach(disks, i, d) {
		const char *ref = json_string_value(d);
		char err[256];
		if (!ref || strstr(ref, ",ro"))
			continue;   /* read-only disks share their lock */
		char *path = vm_datastore_path(ref, err, sizeof(err));
		int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) : -1;
		struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
		if (fd >= 0 && !fcntl(fd, F_OFD_GETLK, &fl) && fl.l_type != F_UNLCK) {
			snprintf(which, len, "%s", path);
			locked = true;
		}
		if (fd >= 0)
			close(fd);
		free(path);
		if (locked)
			break;
	}
	json_decref(disks);
	return locked;
}

/* The key won: ft-takeover, once the old primary has let go of the disks
 * (or FT_DISK_WAIT_MS after the primary was lost: ferry-vm checks again). */
static void take_over(const char *name, int64_t lost_at)
{
	char which[PATH_MAX], err[256];
	if (disks_locked(name, which, sizeof(which)) && mono_ms() - lost_at < FT_DISK_WAIT_MS) {
		pthread_mutex_lock(&ft_lock);
		struct ft_vm *f = ft_find(name);
		bool say = f && !f->disk_wait_said;
		if (f)
			f->disk_wait_said = true;
		pthread_mutex_unlock(&ft_lock);
		if (say)
			logf_("FT: VM %s: %s is still locked (the old primary's process lives): "
			      "ft-takeover once it lets go", name, which);
		return;
	}
	char *ctl = NULL;
	vm_look(name, &ctl, NULL, 0);
	json_t *r = ctl ? qmp_call(ctl, "ft-takeover", NULL, err, sizeof(err)) : NULL;
	free(ctl);
	if (!r)
		logf_("FT: VM %s: ft-takeover: %s", name, err);
	json_decref(r);
}

/* The primary is lost: race for the owner key; take over only after
 * winning it. */
static void decide(const char *name, int64_t lost_at)
{
	json_t *owner;
	int64_t rev;
	if (!owner_get(name, &owner, &rev))
		return;   /* etcd silent: decide nothing, try again next pass */
	char err[256];
	bool takeover = owner && !strcmp(owner_host(owner), fd_cfg.name);
	const char *named = json_string_value(json_object_get(owner, "secondary"));
	if (!owner) {
		logf_("FT: VM %s: fault tolerance was disabled: the secondary ends", name);
		vm_destroy(name, err, sizeof(err));
	} else if (!takeover && (!named || strcmp(named, fd_cfg.name))) {
		/* the primary ran on unprotected (or has another secondary): what
		 * it released, this one's last checkpoint does not hold */
		logf_("FT: VM %s: the owner key names no secondary here (the primary on %s ran on "
		      "without it): the secondary ends", name, owner_host(owner));
		vm_destroy(name, err, sizeof(err));
	} else if (!takeover) {
		const char *holder = owner_host(owner);
		const char *why = json_is_true(json_object_get(owner, "gave_up")) ?
				  "the primary gave up" : "the FT link broke; the primary holds "
				  "its output";
		json_t *next = json_pack("{s:s, s:s, s:s, s:I}", "host", fd_cfg.name, "from",
					 holder, "why", why, "at_ms", (json_int_t)now_ms());
		takeover = owner_swap(name, next, rev);
		if (takeover)
			logf_("FT: VM %s: won the owner key from %s (%s)", name, holder, why);
	}
	json_decref(owner);
	if (takeover)
		take_over(name, lost_at);
}

static void secondary_pass(const char *name)
{
	enum vm_seen seen = vm_look(name, NULL, NULL, 0);
	if (seen == VM_ABSENT || seen == VM_EXITED) {
		ft_forget(name);
		return;
	}
	json_t *q = query_ft(name);
	if (!q)
		return;
	const char *st = json_string_value(json_object_get(q, "status")) ?: "";
	const char *role = json_string_value(json_object_get(q, "role")) ?: "";
	int64_t lost_at = 0;
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f) {
		if (!strcmp(st, "primary-lost") || !strcmp(st, "taking-over")) {
			if (!f->lost_at) {
				f->lost_at = mono_ms();
				logf_("FT: VM %s: the secondary lost its primary on %s (%s)", name,
				      f->primary, json_string_value(json_object_get(q, "error")) ?: "");
			}
		} else {
			f->lost_at = 0;
		}
		lost_at = f->lost_at;
	}
	pthread_mutex_unlock(&ft_lock);
	if (!strcmp(st, "running") || !strcmp(role, "primary"))
		become_primary(name, q);
	else if (!strcmp(st, "primary-lost") && lost_at)
		decide(name, lost_at);
	json_decref(q);
}

/* ---- finding FT VMs (a ferryd restarted) ------------------------------------ */

static void adopt_secondaries(void)
{
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	pthread_mutex_lock(&ft_lock);
	for (int i = 0; i < n; i++) {
		json_t *ft = json_object_get(list[i]->spec, "ft");
		if (list[i]->exited || list[i]->leaving || ft_find(list[i]->name) ||
		    strcmp(json_string_value(json_object_get(ft, "role")) ?: "", "secondary"))
			continue;
		struct ft_vm *f = ft_add(list[i]->name, true);
		if (f)
			snprintf(f->primary, sizeof(f->primary), "%s",
				 json_string_value(json_object_get(ft, "primary")) ?: "?");
	}
	pthread_mutex_unlock(&ft_lock);
	pthread_mutex_unlock(&vms_lock);
}

static void adopt_primaries(void)
{
	char err[256];
	json_t *keys = etcd_get_prefix(&etcd_ft, FT_PREFIX, err, sizeof(err));
	const char *key;
	json_t *value;
	json_object_foreach(keys, key, value) {
		size_t len = strlen(key);
		if (len < 6 || strcmp(key + len - 6, "/owner"))
			continue;
		char name[64];
		snprintf(name, sizeof(name), "%.*s", (int)(len - 6 - strlen(FT_PREFIX)),
			 key + strlen(FT_PREFIX));
		json_t *owner = json_loads(json_string_value(value), 0, NULL);
		bool mine = owner && !strcmp(owner_host(owner), fd_cfg.name) &&
			    !json_object_get(owner, "gave_up");
		json_decref(owner);
		if (!mine || vm_look(name, NULL, NULL, 0) != VM_RUNNING)
			continue;
		pthread_mutex_lock(&ft_lock);
		if (!ft_find(name)) {
			struct ft_vm *f = ft_add(name, false);
			char sk[200];
			snprintf(sk, sizeof(sk), FT_PREFIX "%s/status", name);
			json_t *st = json_loads(json_string_value(json_object_get(keys, sk)) ?: "{}",
						0, NULL);
			if (f) {
				snprintf(f->primary, sizeof(f->primary), "%s", fd_cfg.name);
				snprintf(f->secondary, sizeof(f->secondary), "%s",
					 json_string_value(json_object_get(st, "secondary")) ?: "");
				f->epoch_ms = (int)json_integer_value(json_object_get(st, "epoch_ms"));
				f->failovers = (int)json_integer_value(json_object_get(st, "failovers"));
				logf_("FT: VM %s found again (its primary runs here)", name);
			}
			json_decref(st);
		}
		pthread_mutex_unlock(&ft_lock);
		hold_ha(name);
	}
	json_decref(keys);
}

static void *ft_agent_loop(void *arg)
{
	(void)arg;
	int64_t adopted_at = 0;
	for (;;) {
		usleep(FT_POLL_MS * 1000);
		if (mono_ms() - adopted_at >= 2000) {
			adopt_secondaries();
			if (!fence_isolated())
				adopt_primaries();
			adopted_at = mono_ms();
		}
		char names[FT_MAX][64];
		bool secondary[FT_MAX];
		pthread_mutex_lock(&ft_lock);
		int n = 0;
		for (int i = 0; i < nfts; i++)
			if (!fts[i]->busy) {
				snprintf(names[n], sizeof(names[n]), "%s", fts[i]->name);
				secondary[n++] = fts[i]->secondary_role;
			}
		pthread_mutex_unlock(&ft_lock);
		for (int i = 0; i < n; i++) {
			if (secondary[i])
				secondary_pass(names[i]);
			else
				primary_pass(names[i]);
		}
	}
	return NULL;
}

void ft_agent_start(const char *etcd_urls)
{
	etcd_init(&etcd_ft, etcd_urls);
	etcd_ft.timeout_ms = 1000;
	pthread_t t;
	pthread_create(&t, NULL, ft_agent_loop, NULL);
	pthread_detach(t);
}

/* ---- the HTTP calls -------------------------------------------------------- */

/* POST /agent/v1/vms/NAME/ft {"secondary", "secondary_url", "epoch_ms"} */
static int ft_enable(const char *name, json_t *req, char *err, size_t errlen)
{
	const char *host = json_string_value(json_object_get(req, "secondary"));
	const char *url = json_string_value(json_object_get(req, "secondary_url"));
	json_t *ep = json_object_get(req, "epoch_ms");
	if (!host || !url || (ep && (!json_is_integer(ep) || json_integer_value(ep) < 5 ||
				     json_integer_value(ep) > 10000))) {
		snprintf(err, errlen, "ft wants secondary and secondary_url (and epoch_ms, 5 to "
			 "10000)");
		return 400;
	}
	if (!strcmp(host, fd_cfg.name)) {
		snprintf(err, errlen, "the secondary must be on another host than the primary (%s)",
			 fd_cfg.name);
		return 400;
	}
	if (vm_look(name, NULL, NULL, 0) != VM_RUNNING) {
		snprintf(err, errlen, "host %s runs no VM named %s", fd_cfg.name, name);
		return 404;
	}
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	if (f) {
		snprintf(err, errlen, "VM %s is fault tolerant already (%s)", name, f->state);
		pthread_mutex_unlock(&ft_lock);
		return 409;
	}
	f = ft_add(name, false);
	if (f) {
		f->busy = true;
		snprintf(f->primary, sizeof(f->primary), "%s", fd_cfg.name);
		f->epoch_ms = ep ? (int)json_integer_value(ep) : 0;
	}
	pthread_mutex_unlock(&ft_lock);
	if (!f) {
		snprintf(err, errlen, "host %s has %d FT VMs already", fd_cfg.name, FT_MAX);
		return 409;
	}
	char key[160], value[256], e[256];
	bool created = false;
	ft_key(key, sizeof(key), name, "owner");
	snprintf(value, sizeof(value), "{\"host\":\"%s\",\"secondary\":\"%s\"}", fd_cfg.name,
		 host);
	int rc = 0;
	if (!etcd_create(&etcd_ft, key, value, 0, &created, e, sizeof(e))) {
		snprintf(err, errlen, "etcd: %s", e);
		rc = 503;
	} else if (!created) {
		json_t *owner;
		int64_t rev;
		owner_get(name, &owner, &rev);
		if (strcmp(owner_host(owner), fd_cfg.name) ||
		    !owner_swap(name, json_pack("{s:s, s:s}", "host", fd_cfg.name, "secondary",
						host), rev)) {
			snprintf(err, errlen, "etcd says host %s owns VM %s", owner_host(owner), name);
			rc = 409;
		}
		json_decref(owner);
	}
	if (!rc) {
		hold_ha(name);
		if (!protect_on(name, host, url, f->epoch_ms, err, errlen))
			rc = 502;
	}
	pthread_mutex_lock(&ft_lock);
	f = ft_find(name);
	if (rc) {
		if (rc != 409)
			keys_delete(name);
		spec_edit(name, give_ha_edit);
		if (f)
			ft_drop(f);
	} else if (f) {
		f->busy = false;
		snprintf(f->secondary, sizeof(f->secondary), "%s", host);
		snprintf(f->secondary_url, sizeof(f->secondary_url), "%s", url);
		f->state[0] = 0;
		ft_state(f, "starting", NULL);
	}
	pthread_mutex_unlock(&ft_lock);
	if (!rc) {
		status_publish(name, true);
		rc = 202;
	}
	return rc;
}

/* DELETE /agent/v1/vms/NAME/ft */
static int ft_disable(const char *name, char *err, size_t errlen)
{
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	bool ok = f && !f->secondary_role && !f->busy;
	if (ok)
		f->busy = true;
	pthread_mutex_unlock(&ft_lock);
	if (!ok) {
		snprintf(err, errlen, f ? "VM %s: its fault tolerance is changing or this host "
			 "holds its secondary" : "VM %s is not fault tolerant on host %s", name,
			 fd_cfg.name);
		return f ? 409 : 404;
	}
	char *ctl = NULL, e[256];
	vm_look(name, &ctl, NULL, 0);
	json_decref(ctl ? qmp_call(ctl, "ft-stop", NULL, e, sizeof(e)) : NULL);
	free(ctl);
	teardown(name, "disabled");
	return 200;
}

static json_t *ft_show(const char *name)
{
	pthread_mutex_lock(&ft_lock);
	struct ft_vm *f = ft_find(name);
	json_t *j = NULL;
	if (f) {
		j = status_json(f);
		json_object_set_new(j, "role", json_string(f->secondary_role ? "secondary"
										: "primary"));
		if (f->figures)
			json_object_set(j, "query_ft", f->figures);
	}
	pthread_mutex_unlock(&ft_lock);
	return j;
}

/* POST /agent/v1/ft/secondary {"name", "spec", "secret"}: start one here. */
static int ft_secondary_start(json_t *req, json_t **reply, char *err, size_t errlen)
{
	const char *name = json_string_value(json_object_get(req, "name"));
	json_t *ft = json_object_get(json_object_get(req, "spec"), "ft");
	if (!name || strcmp(json_string_value(json_object_get(ft, "role")) ?: "", "secondary")) {
		snprintf(err, errlen, "ft/secondary wants name and a spec with "
			 "\"ft\": {\"role\": \"secondary\"}");
		return 400;
	}
	/* a secondary left from an earlier try goes; anything else stays */
	pthread_mutex_lock(&vms_lock);
	struct vm *vm = vm_find(name);
	bool stale = vm && (vm->exited || !strcmp(json_string_value(json_object_get(
				json_object_get(vm->spec, "ft"), "role")) ?: "", "secondary"));
	pthread_mutex_unlock(&vms_lock);
	char e[256];
	if (stale)
		vm_destroy(name, e, sizeof(e));
	int rc = incoming_start(req, reply, err, errlen);
	if (rc == 201) {
		pthread_mutex_lock(&ft_lock);
		struct ft_vm *f = ft_find(name);
		if (f)
			ft_drop(f);
		f = ft_add(name, true);
		if (f)
			snprintf(f->primary, sizeof(f->primary), "%s",
				 json_string_value(json_object_get(ft, "primary")) ?: "?");
		pthread_mutex_unlock(&ft_lock);
		logf_("FT: VM %s: a secondary here for the primary on %s (%s)", name,
		      json_string_value(json_object_get(ft, "primary")) ?: "?",
		      json_string_value(json_object_get(*reply, "uri")));
	}
	return rc;
}

bool ft_route(const struct http_request *req, struct http_response *resp, const char *rest)
{
	char err[1024];
	json_t *body = NULL;
	if (!strcmp(rest, "ft/secondary") && !strcmp(req->method, "POST")) {
		if (!(body = parse_body(req, resp)))
			return true;
		json_t *reply = NULL;
		int rc = ft_secondary_start(body, &reply, err, sizeof(err));
		if (rc == 201)
			reply_json(resp, 201, reply);
		else
			reply_error(resp, rc, err, NULL);
		json_decref(body);
		return true;
	}
	size_t len = strlen(rest);
	if (strncmp(rest, "vms/", 4) || len < 8 || strcmp(rest + len - 3, "/ft"))
		return false;
	char name[128];
	snprintf(name, sizeof(name), "%.*s", (int)(len - 7), rest + 4);
	int rc;
	if (!strcmp(req->method, "GET")) {
		json_t *j = ft_show(name);
		if (j)
			reply_json(resp, 200, j);
		else
			reply_error(resp, 404, "this host has no FT role for the VM", NULL);
		return true;
	} else if (!strcmp(req->method, "POST")) {
		if (!(body = parse_body(req, resp)))
			return true;
		rc = ft_enable(name, body, err, sizeof(err));
		json_decref(body);
	} else if (!strcmp(req->method, "DELETE")) {
		rc = ft_disable(name, err, sizeof(err));
	} else {
		reply_error(resp, 405, "use GET, POST or DELETE", NULL);
		return true;
	}
	if (rc < 300)
		reply_json(resp, rc, ft_show(name) ?: json_pack("{s:s}", "state", "off"));
	else
		reply_error(resp, rc, err, NULL);
	return true;
}
