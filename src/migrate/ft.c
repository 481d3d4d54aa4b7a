/*
 * ft.c - fault tolerance, Remus-style: a secondary ferry-vm kept current by
 * continuous checkpoints, which takes over when the primary is lost.
 *
 * Primary (`ft-start {uri, epoch_ms, secret_file, timeout_ms}`), on a
 * thread of its own:
 *   1. connect and secure the channel as a migration does (TLS, secret),
 *      exchange configurations (the secondary must be able to run us);
 *   2. the initial copy: start the dirty log, send all of RAM while the
 *      guest runs (pages it rewrites meanwhile are dirty again);
 *   3. then every epoch_ms an epoch (sooner when the guest has network
 *      output waiting: min_epoch_ms after the last one, see below): pause
 *      the guest, take the dirty log,
 *      copy the dirty pages into a buffer (copy-on-pause) and save the
 *      harts, devices and clock, resume the guest; then, while it runs,
 *      flush the disks and send EPOCH(n), the pages, the state, a DIGEST of
 *      all of RAM as of the pause (from per-page hashes kept here) and END,
 *      and wait for the secondary's EPOCH_ACK(n).
 * Output commit: from the start the guest's network output is held in
 * virtio-net, each frame tagged with the epoch it was sent in; the frames
 * of epoch n go to the TAP only when EPOCH_ACK(n) arrives, so nobody
 * outside ever sees output of a state the secondary could not resume
 * from. Disk writes get the same rule (docs/stream.md "Output commit for
 * disks"): virtio-blk holds the writes of epoch n in memory (the guest
 * reads its own writes from there), they travel in epoch n as FT_WRITE
 * sections, and only after EPOCH_ACK(n) are they written to the shared
 * image and flushed, before epoch n's frames go out: so the image never holds
 * a write of an epoch the secondary might not resume from, no client hears
 * of a write that is not stable on the image, and the secondary, which
 * keeps the writes of its last committed epoch, writes them again at
 * takeover in case the primary died before it did.
 * Output waits for the ACK of its epoch, so an epoch that ends on the clock
 * adds up to epoch_ms to every answer the guest sends. Instead, the first
 * frame held in an epoch wakes the epoch thread, which ends the epoch as
 * soon as it has run min_epoch_ms (default FT_MIN_EPOCH_MS_DEFAULT): a
 * guest that talks gets short epochs, a guest that only computes keeps
 * epoch_ms.
 * A lost secondary (a failed write, no ACK within timeout_ms) leaves the
 * guest running unprotected: held output goes out, FT_UNPROTECTED says so
 * (`on_loss: "release"`, the default). But the secondary may still be
 * alive behind a cut link and take over from the last acknowledged epoch,
 * and output released here is output it will never reproduce; so with
 * `on_loss: "hold"` (ferryd's FT agent) a primary that loses a secondary
 * holding a complete checkpoint pauses its guest and keeps its output and
 * held writes (FT_SECONDARY_LOST) until an arbiter that has settled who
 * runs says `ft-continue` (release them, run on unprotected) or ends it
 * (`quit`, a kill: everything held is dropped, the image never gets it).
 *
 * Secondary (`ferry-vm --ft-secondary tcp:H:P[,secret-file=F]`): the same
 * board as the primary, nothing runs. Pages of the initial copy go into
 * RAM; an epoch's pages and state are staged, its DIGEST checked against
 * RAM as it would be with the staged pages applied, and only at its END
 * are the pages written to RAM and the state kept as the committed one,
 * then EPOCH_ACK(n). A stream that breaks mid-epoch leaves RAM and the
 * committed state as of the last complete epoch: never half of one. When
 * the primary is lost (the channel breaks or is silent for timeout-ms;
 * until the first epoch is committed, for MIG_IO_TIMEOUT_S: the initial
 * copy is a bulk transfer that a loaded host may stall for longer than a
 * link timeout meant for a protected pair, and a secondary with nothing
 * committed has nothing to take over with anyway),
 * takeover waits for a decision: `--ft-takeover auto` takes over at once
 * (only where the primary's host is fenced by someone: otherwise a cut
 * link runs the guest twice), `manual` (the default) waits for
 * `ft-takeover` from an arbiter on the control socket. Takeover loads the
 * committed state, takes the disk locks (a second line against split
 * brain: a secondary that cannot lock does not run), writes the committed
 * epoch's guest writes to the images, starts the guest and announces its
 * MAC.
 */
#include "migrate/ft.h"
#include "migrate/ft_grammar.h"
#include "migrate/channel.h"
#include "migrate/grammar.h"
#include "migrate/migrate.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "backend/disk.h"
#include "machine/devices.h"
#include "machine/vm.h"
#include "util/sbuf.h"
#include "virtio/blk.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FT_HANDSHAKE_MS 5000
#define FT_LOCK_WAIT_MS 2000   /* for a dead primary's disk locks to go */

/* FERRY_TEST_FAULT=ft-mid-epoch:N: the primary dies in epoch N (or the
 * first later one with pages) after sending its pages and guest writes,
 * not its state: the secondary must discard that epoch and run epoch N-1.
 * ft-after-ack:N: it dies once epoch N (or the first later one with guest
 * writes) is acknowledged, before writing that epoch's writes to the
 * image: the secondary must write them at takeover. */
static void ft_fault(const char *point, struct mig_stream *s, uint64_t epoch)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	size_t n = strlen(point);
	if (want && !strncmp(want, point, n) && want[n] == ':' &&
	    epoch >= strtoull(want + n + 1, NULL, 10)) {
		mig_flush(s);
		_exit(9);
	}
}

/* The silence either side allows before its peer's first committed epoch
 * (the initial copy is a bulk transfer; see the design note): the longer
 * of the link timeout and MIG_IO_TIMEOUT_S. */
static int ft_copy_timeout_ms(int link_timeout_ms)
{
	return link_timeout_ms > MIG_IO_TIMEOUT_S * 1000 ? link_timeout_ms
							 : MIG_IO_TIMEOUT_S * 1000;
}

/* FERRY_TEST_FAULT=ft-copy-stall:MS: the side that has it (primary or
 * secondary) stops for MS halfway through the initial copy, as a host too
 * loaded to run its FT thread would. The primary first sends what it has
 * (s; NULL on the secondary). -1 when that fails. */
static int ft_copy_stall(struct mig_stream *s)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	if (!want || strncmp(want, "ft-copy-stall:", 14))
		return 0;
	if (s && (mig_flush_pages(s) || mig_flush(s)))
		return -1;
	usleep((useconds_t)strtoul(want + 14, NULL, 10) * 1000);
	return 0;
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* ======================================================================== */
/* ---- primary ---------------------------------------------------------------------- */

enum ft_status { FT_SYNCING, FT_PROTECTED, FT_SECONDARY_LOST, FT_UNPROTECTED, FT_STOPPED };

static const char *const ft_status_names[] = {
	[FT_SYNCING] = "syncing", [FT_PROTECTED] = "protected",
	[FT_SECONDARY_LOST] = "secondary-lost", [FT_UNPROTECTED] = "unprotected",
	[FT_STOPPED] = "stopped",
};

struct ft {
	struct vmm *vmm;
	pthread_t thread;
	pthread_mutex_t lock;           /* guards status, error and figures */
	enum ft_status status;
	char error[320];
	char uri[256];
	uint64_t epoch_ms, timeout_ms, min_epoch_ms;
	bool hold_on_loss;              /* on_loss "hold": wait for ft-continue */
	struct mig_secret secret;
	atomic_bool stop;
	atomic_bool go_on;              /* ft-continue: release and run unprotected */
	atomic_bool output_waiting;     /* a frame was held in the epoch under way */
	int wake[2];                    /* ft-stop, quit and held output wake the wait */

	/* figures */
	uint64_t start_ms, sync_ms;     /* initial copy took */
	uint64_t epoch, acked;
	uint64_t pause_us_last, pause_us_max, pause_us_total;
	uint64_t pages_last, pages_total, bytes_last, bytes_total;
	uint64_t commit_us_last, commit_us_total;  /* pause to ACK */
	uint64_t initial_bytes;
	uint64_t writes_last, write_bytes_last, write_bytes_total;  /* guest disk writes */
	uint64_t early_epochs;          /* ended before epoch_ms for held output */

	/* the epoch thread's own */
	uint64_t npages;
	uint64_t *bitmap;
	uint64_t *hash;                 /* each page as of the last capture */
	uint8_t *buf;                   /* copy-on-pause pages */
	uint64_t *pfns;
	struct sbuf harts[MAX_HARTS];
	struct sbuf devs[MAX_STATES];
	uint64_t ticks;
	struct blk_epoch_writes writes[MIG_MAX_DISKS];  /* each disk's, this epoch */
	uint8_t *wbuf;                  /* one FT_WRITE section */
};

static void ft_set_status(struct ft *ft, enum ft_status st, const char *why)
{
	pthread_mutex_lock(&ft->lock);
	ft->status = st;
	if (why)
		snprintf(ft->error, sizeof(ft->error), "%s", why);
	pthread_mutex_unlock(&ft->lock);
}

bool ft_is_active(struct ft *ft)
{
	if (!ft)
		return false;
	pthread_mutex_lock(&ft->lock);
	bool on = ft->status == FT_SYNCING || ft->status == FT_PROTECTED ||
		  ft->status == FT_SECONDARY_LOST;
	pthread_mutex_unlock(&ft->lock);
	return on;
}

bool ft_is_holding(struct ft *ft)
{
	if (!ft)
		return false;
	pthread_mutex_lock(&ft->lock);
	bool held = ft->status == FT_SECONDARY_LOST;
	pthread_mutex_unlock(&ft->lock);
	return held;
}

static struct mig_stream *ft_primary_connect(struct ft *ft, char *err, size_t errlen)
{
	char host[256], why[320];
	int fd = mig_tcp_connect(ft->uri, host, sizeof(host), err, errlen);
	if (fd < 0)
		return NULL;
	struct mig_auth auth = { ft->vmm->tls, &ft->secret };
	struct mig_channel *ch = mig_channel_client(fd, host, &auth, FT_HANDSHAKE_MS, why,
						    sizeof(why));
	if (!ch) {
		snprintf(err, errlen, "%.200s: %.190s", ft->uri, why);
		return NULL;
	}
	struct mig_stream *s = mig_stream_new_channel(ch);
	if (!s)
		snprintf(err, errlen, "out of memory for the stream");
	return s;
}

static int ft_primary_handshake(struct ft *ft, struct mig_stream *s, char *err,
				size_t errlen)
{
	struct mig_config local, remote;
	char why[256];
	vmstate_config(ft->vmm, &local);
	if (mig_read_config(s, &remote)) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return -1;
	}
	if (mig_config_check(&local, &remote, why, sizeof(why))) {
		snprintf(err, errlen, "the secondary cannot run this guest: %s", why);
		mig_send_error(s, why);
		return -1;
	}
	if (mig_write_config(s, &local) || mig_flush(s)) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return -1;
	}
	if (mig_expect(s, MIG_SEC_ACK, why, sizeof(why))) {
		snprintf(err, errlen, "the secondary refused: %s", why);
		return -1;
	}
	return 0;
}

/* The initial copy: every page, read while the guest runs (the dirty log
 * is on, so what it rewrites goes again in epoch 1). */
static int ft_initial_copy(struct ft *ft, struct mig_stream *s)
{
	struct machine *m = ft->vmm->machine;
	uint8_t page[PAGE_SIZE];
	dirty_log_start(m);
	dirty_log_harvest(m, ft->bitmap);
	for (uint64_t pfn = 0; pfn < ft->npages; pfn++) {
		memcpy(page, m->ram + pfn * PAGE_SIZE, PAGE_SIZE);
		ft->hash[pfn] = mig_page_hash(page);
		if (mig_put_page(s, pfn, page))
			return -1;
		if ((pfn & 4095) == 0 && atomic_load(&ft->stop))
			return -1;
		if (pfn == ft->npages / 2 && ft_copy_stall(s))
			return -1;
	}
	return mig_flush_pages(s) || mig_flush(s) ? -1 : 0;
}

/* Grow the copy-on-pause buffer to n pages (before the pause, where an
 * allocation may wait). */
static int ft_reserve(struct ft *ft, uint64_t n, uint64_t *cap)
{
	if (n <= *cap)
		return 0;
	uint8_t *buf = realloc(ft->buf, n * PAGE_SIZE);
	if (!buf)
		return -1;
	ft->buf = buf;
	uint64_t *pfns = realloc(ft->pfns, n * sizeof(uint64_t));
	if (!pfns)
		return -1;
	ft->pfns = pfns;
	*cap = n;
	return 0;
}

/* The pause: dirty pages and all state into buffers; returns the number
 * of pages copied. Everything here is memory copies: the guest waits. */
static uint64_t ft_capture(struct ft *ft, uint64_t epoch)
{
	struct machine *m = ft->vmm->machine;
	uint64_t n = 0;
	dirty_log_harvest(m, ft->bitmap);
	for (uint64_t w = 0; w < (ft->npages + 63) / 64; w++) {
		uint64_t bits = ft->bitmap[w];
		while (bits) {
			uint64_t pfn = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
			memcpy(ft->buf + n * PAGE_SIZE, m->ram + pfn * PAGE_SIZE, PAGE_SIZE);
			ft->pfns[n++] = pfn;
		}
	}
	for (unsigned i = 0; i < m->nharts; i++) {
		ft->harts[i].len = 0;
		hart_save(m->harts[i], &ft->harts[i]);
	}
	for (unsigned i = 0; i < m->nstates; i++) {
		ft->devs[i].len = 0;
		m->states[i].ops->save(m->states[i].dev, &ft->devs[i]);
	}
	ft->ticks = machine_time(m);
	atomic_store(&ft->output_waiting, false);
	if (ft->vmm->net)       /* what the guest sends from now on is the next epoch's */
		virtio_net_hold_epoch(ft->vmm->net, epoch + 1);
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)  /* and what it writes */
		if (ft->vmm->blk[i])
			ft->writes[i] = virtio_blk_hold_epoch(ft->vmm->blk[i], epoch + 1);
	return n;
}

/* FERRY_TEST_FAULT=ft-slow-flush:MS: each flush of the guest's disks
 * takes MS longer, as a busy disk's would. */
static void ft_slow_flush(void)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	if (want && !strncmp(want, "ft-slow-flush:", 14))
		usleep((useconds_t)strtoul(want + 14, NULL, 10) * 1000);
}

static int ft_flush_disks(struct ft *ft)
{
	int r = 0;
	ft_slow_flush();
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)
		if (ft->vmm->blk[i] && disk_flush(virtio_blk_disk(ft->vmm->blk[i])))
			r = -1;
	return r;
}

/* Hold the guest's disk writes from epoch 1 on (ft-start). */
static void ft_hold_disks(struct ft *ft)
{
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)
		if (ft->vmm->blk[i])
			virtio_blk_hold_start(ft->vmm->blk[i], 1);
}

/* The secondary has epoch `epoch`: its writes go to the images. */
static int ft_apply_writes(struct ft *ft, uint64_t epoch, char *err, size_t errlen)
{
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)
		if (ft->vmm->blk[i] && virtio_blk_hold_apply(ft->vmm->blk[i], epoch, err, errlen))
			return -1;
	return 0;
}

/* FT is over: write out everything held and write straight from now on. */
static void ft_release_disks(struct ft *ft)
{
	char err[320] = "";
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)
		if (ft->vmm->blk[i] && virtio_blk_hold_stop(ft->vmm->blk[i], err, sizeof(err)))
			fprintf(stderr, "ferry-vm: fault tolerance: the guest's held writes: %s\n",
				err);
}

/* The secondary runs the guest (or may): drop what is held, unsent and
 * unwritten. */
static void ft_drop_held(struct ft *ft)
{
	if (ft->vmm->net)
		virtio_net_hold_stop(ft->vmm->net, false);
	for (unsigned i = 0; i < ft->vmm->ndisks; i++)
		if (ft->vmm->blk[i])
			virtio_blk_hold_discard(ft->vmm->blk[i]);
}

/* The epoch's guest writes, as FT_WRITE sections of at most
 * MIG_FT_WRITE_MAX bytes; counts them in *writes and *bytes. */
static int ft_send_writes(struct ft *ft, struct mig_stream *s, uint64_t *writes,
			  uint64_t *bytes)
{
	*writes = *bytes = 0;
	for (unsigned i = 0; i < ft->vmm->ndisks; i++) {
		const struct blk_write *w = ft->writes[i].first;
		for (uint64_t k = 0; k < ft->writes[i].count; k++) {
			if (k)  /* not the last one's next: the guest may be appending */
				w = w->next;
			for (uint64_t done = 0; done < w->len;) {
				uint64_t n = w->len - done;
				if (n > MIG_FT_WRITE_MAX)
					n = MIG_FT_WRITE_MAX;
				put_le32(ft->wbuf, i);
				put_le32(ft->wbuf + 4, 0);
				put_le64(ft->wbuf + 8, w->off + done);
				memcpy(ft->wbuf + MIG_FT_WRITE_HDR, w->data + done, n);
				if (mig_write_section(s, MIG_SEC_FT_WRITE, ft->wbuf,
						      MIG_FT_WRITE_HDR + n))
					return -1;
				done += n;
			}
		}
		*writes += ft->writes[i].count;
		*bytes += ft->writes[i].bytes;
	}
	return 0;
}

/* Send the captured epoch; the guest runs meanwhile. */
static int ft_send_epoch(struct ft *ft, struct mig_stream *s, uint64_t epoch, uint64_t n,
			 uint64_t *writes, uint64_t *write_bytes)
{
	struct machine *m = ft->vmm->machine;
	uint8_t num[8];
	put_le64(num, epoch);
	if (mig_write_section(s, MIG_SEC_EPOCH, num, 8))
		return -1;
	for (uint64_t i = 0; i < n; i++) {
		const uint8_t *page = ft->buf + i * PAGE_SIZE;
		ft->hash[ft->pfns[i]] = mig_page_hash(page);
		if (mig_put_page(s, ft->pfns[i], page))
			return -1;
	}
	if (mig_flush_pages(s) || ft_send_writes(ft, s, writes, write_bytes))
		return -1;
	if (n)
		ft_fault("ft-mid-epoch", s, epoch);
	int r = 0;
	for (unsigned i = 0; i < m->nharts && !r; i++)
		r = mig_write_cpu(s, i, HART_STATE_VERSION, ft->harts[i].data, ft->harts[i].len);
	for (unsigned i = 0; i < m->nstates && !r; i++)
		r = mig_write_device(s, m->states[i].ops->name, m->states[i].ops->version,
				     ft->devs[i].data, ft->devs[i].len);
	if (r || mig_write_clock(s, ft->ticks) ||
	    mig_write_digest(s, mig_digest_of_hashes(ft->hash, ft->npages, m->ram_size)) ||
	    mig_write_end(s) || mig_flush(s))
		return -1;
	return 0;
}

static int ft_wait_ack(struct ft *ft, struct mig_stream *s, uint64_t epoch, char *err,
		       size_t errlen)
{
	struct mig_section sec;
	int ready = mig_stream_wait_readable(s, (int)ft->timeout_ms);
	if (ready <= 0) {
		snprintf(err, errlen, "no acknowledgement of epoch %llu within %llu ms",
			 (unsigned long long)epoch, (unsigned long long)ft->timeout_ms);
		return -1;
	}
	if (mig_read_section(s, &sec, NULL, 0)) {
		snprintf(err, errlen, "%s", mig_stream_error(s));
		return -1;
	}
	if (sec.type == MIG_SEC_ERROR) {
		snprintf(err, errlen, "the secondary gave up: %s", sec.text);
		return -1;
	}
	if (sec.type != MIG_SEC_EPOCH_ACK || get_le64(sec.data) != epoch) {
		snprintf(err, errlen, "the secondary answered epoch %llu with '%s' %llu",
			 (unsigned long long)epoch, mig_section_name(sec.type),
			 sec.len == 8 ? (unsigned long long)get_le64(sec.data) : 0ULL);
		return -1;
	}
	return 0;
}

/* ---- flushing the disks while the link stays alive ---------------------- */

/* Writing an acknowledged epoch's held writes to the image and flushing
 * the disks may take longer than the link's timeout on a busy disk; the
 * secondary, hearing nothing, would take the primary for dead. So a
 * thread of its own does it while the epoch thread sends FT_ALIVE every
 * timeout_ms / 4 until it is done (between epochs: docs/stream.md). */
struct write_commit {
	struct ft *ft;
	uint64_t epoch;             /* apply this epoch's held writes; 0: none */
	bool flush;
	pthread_mutex_t lock;
	pthread_cond_t done_cond;
	bool done;
	int result;
	char err[256];
};

static void *write_commit_main(void *arg)
{
	struct write_commit *c = arg;
	int r = c->epoch ? ft_apply_writes(c->ft, c->epoch, c->err, sizeof(c->err)) : 0;
	if (!r && c->flush && ft_flush_disks(c->ft)) {
		snprintf(c->err, sizeof(c->err), "flushing the guest's disks: %s", strerror(errno));
		r = -1;
	}
	pthread_mutex_lock(&c->lock);
	c->result = r;
	c->done = true;
	pthread_cond_signal(&c->done_cond);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* Wait for c, saying FT_ALIVE meanwhile; false when the link failed. */
static bool write_commit_wait(struct write_commit *c, struct mig_stream *s)
{
	bool link_ok = true;
	pthread_mutex_lock(&c->lock);
	while (!c->done) {
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		uint64_t ns = (uint64_t)until.tv_nsec + c->ft->timeout_ms * 1000000ULL / 4;
		until.tv_sec += (time_t)(ns / 1000000000ULL);
		until.tv_nsec = (long)(ns % 1000000000ULL);
		if (pthread_cond_timedwait(&c->done_cond, &c->lock, &until) != ETIMEDOUT ||
		    c->done || !link_ok)
			continue;
		pthread_mutex_unlock(&c->lock);
		link_ok = !mig_write_section(s, MIG_SEC_FT_ALIVE, NULL, 0) && !mig_flush(s);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return link_ok;
}

/* Write epoch's held writes to the image (epoch 0: none), and flush the
 * disks if flush. 0, or -1 with err. */
static int ft_commit_writes(struct ft *ft, struct mig_stream *s, uint64_t epoch, bool flush,
			    char *err, size_t errlen)
{
	if (!flush)             /* nothing held: nothing slow */
		return epoch ? ft_apply_writes(ft, epoch, err, errlen) : 0;
	struct write_commit c = { .ft = ft, .epoch = epoch, .flush = flush };
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&c.done_cond, &attr);
	pthread_condattr_destroy(&attr);
	pthread_mutex_init(&c.lock, NULL);
	pthread_t t;
	bool link_ok = true;
	if (pthread_create(&t, NULL, write_commit_main, &c) == 0) {
		link_ok = write_commit_wait(&c, s);
		pthread_join(t, NULL);
	} else {
		write_commit_main(&c);          /* no thread: do it here */
	}
	pthread_cond_destroy(&c.done_cond);
	pthread_mutex_destroy(&c.lock);
	if (c.result) {
		snprintf(err, errlen, "%s", c.err);
		return -1;
	}
	if (!link_ok) {
		snprintf(err, errlen, "while flushing the guest's disks: %s", mig_stream_error(s));
		return -1;
	}
	return 0;
}

/* virtio-net held a frame (vCPU thread, device lock held): wake the
 * epoch thread, once an epoch. */
static void ft_output_held(void *opaque)
{
	struct ft *ft = opaque;
	if (!atomic_exchange(&ft->output_waiting, true)) {
		ssize_t w = write(ft->wake[1], "o", 1);
		(void)w;
	}
}

/* Sleep until the epoch that began at begin_us is due: epoch_ms after
 * it, or min_epoch_ms after it once output waits. True if told to stop. */
static bool ft_wait_epoch_end(struct ft *ft, uint64_t begin_us)
{
	uint64_t deadline = begin_us + ft->epoch_ms * 1000;
	uint64_t early = begin_us + ft->min_epoch_ms * 1000;
	char drain[64];
	for (;;) {
		if (atomic_load(&ft->stop))
			return true;
		uint64_t t = now_us();
		uint64_t due = ft->min_epoch_ms && atomic_load(&ft->output_waiting) ? early
										    : deadline;
		if (t >= due)
			return false;
		struct pollfd p = { .fd = ft->wake[0], .events = POLLIN };
		struct timespec ts = { .tv_sec = (time_t)((due - t) / 1000000),
				       .tv_nsec = (long)((due - t) % 1000000) * 1000 };
		if (ppoll(&p, 1, &ts, NULL) > 0)
			while (read(ft->wake[0], drain, sizeof(drain)) > 0)
				;
	}
}

static void ft_note_epoch(struct ft *ft, uint64_t epoch, uint64_t pages, uint64_t bytes,
			  uint64_t pause_us, uint64_t commit_us, uint64_t writes,
			  uint64_t write_bytes, bool early)
{
	bool first;
	pthread_mutex_lock(&ft->lock);
	first = ft->status == FT_SYNCING;
	ft->status = FT_PROTECTED;
	ft->epoch = ft->acked = epoch;
	ft->pause_us_last = pause_us;
	ft->pause_us_total += pause_us;
	if (pause_us > ft->pause_us_max)
		ft->pause_us_max = pause_us;
	ft->pages_last = pages;
	ft->pages_total += pages;
	ft->bytes_last = bytes;
	ft->bytes_total += bytes;
	ft->commit_us_last = commit_us;
	ft->commit_us_total += commit_us;
	ft->writes_last = writes;
	ft->write_bytes_last = write_bytes;
	ft->write_bytes_total += write_bytes;
	ft->early_epochs += early;
	if (first)
		ft->sync_ms = mig_now_ms() - ft->start_ms;
	pthread_mutex_unlock(&ft->lock);
	if (first)
		vmm_event(ft->vmm, "FT_PROTECTED", json_pack("{s:s, s:I}", "uri", ft->uri,
							     "sync_ms", (json_int_t)ft->sync_ms));
}

/* The run after the handshake; 0 when told to stop, -1 with err. */
static int ft_run(struct ft *ft, struct mig_stream *s, char *err, size_t errlen)
{
	struct machine *m = ft->vmm->machine;
	uint64_t cap = 0;
	if (ft_initial_copy(ft, s)) {
		snprintf(err, errlen, "initial copy: %s", atomic_load(&ft->stop)
			 ? "stopped" : mig_stream_error(s));
		return atomic_load(&ft->stop) ? 0 : -1;
	}
	mig_stream_set_timeout(s, (int)ft->timeout_ms);     /* the link's, from epoch 1 */
	pthread_mutex_lock(&ft->lock);
	ft->initial_bytes = mig_stream_bytes_out(s);
	pthread_mutex_unlock(&ft->lock);
	uint64_t begin = now_us();
	for (uint64_t epoch = 1;; epoch++) {
		if (ft_wait_epoch_end(ft, begin) || atomic_load(&m->exit_reason) != EXIT_NONE)
			return 0;       /* told to stop, or the guest ended */
		bool early = now_us() < begin + ft->epoch_ms * 1000;
		/* room for every page dirty so far, and some that dirty meanwhile */
		uint64_t want = dirty_log_count(m);
		want = want + want / 4 + 64;
		if (ft_reserve(ft, want < ft->npages ? want : ft->npages, &cap)) {
			snprintf(err, errlen, "out of memory for the checkpoint buffer");
			return -1;
		}
		uint64_t t0 = now_us();
		machine_pause(m);
		if (dirty_log_count(m) > cap && ft_reserve(ft, ft->npages, &cap)) {
			machine_resume(m);
			snprintf(err, errlen, "out of memory for the checkpoint buffer");
			return -1;
		}
		uint64_t n = ft_capture(ft, epoch);
		machine_resume(m);
		uint64_t pause_us = now_us() - t0;
		begin = t0;
		uint64_t before = mig_stream_bytes_out(s), writes, write_bytes;
		/* what the guest wrote before its writes were held (before
		 * ft-start) is stable before epoch 1 is acked; each later epoch's
		 * writes are flushed when they are applied, after its ACK */
		if (epoch == 1 && ft_commit_writes(ft, s, 0, true, err, errlen))
			return -1;
		if (ft_send_epoch(ft, s, epoch, n, &writes, &write_bytes)) {
			snprintf(err, errlen, "sending epoch %llu: %s", (unsigned long long)epoch,
				 mig_stream_error(s));
			return -1;
		}
		if (ft_wait_ack(ft, s, epoch, err, errlen))
			return -1;
		if (writes)
			ft_fault("ft-after-ack", s, epoch);
		/* the epoch's writes are on the image, and stable if it had any,
		 * before its output tells anyone they were made */
		if (ft_commit_writes(ft, s, epoch, writes != 0, err, errlen))
			return -1;
		if (ft->vmm->net)
			virtio_net_hold_release(ft->vmm->net, epoch);
		ft_note_epoch(ft, epoch, n, mig_stream_bytes_out(s) - before, pause_us,
			      now_us() - t0, writes, write_bytes, early);
	}
}

/* on_loss "hold": the secondary is lost but holds a complete checkpoint
 * and may yet take over from it. Pause the guest, keep everything held and
 * wait for ft-continue (true) or the end of the process (false). */
static bool ft_hold_after_loss(struct ft *ft, const char *why)
{
	struct machine *m = ft->vmm->machine;
	char drain[64];
	/* the status first: from here `cont` is refused, so the pause is ours */
	ft_set_status(ft, FT_SECONDARY_LOST, why);
	machine_pause(m);
	fprintf(stderr, "ferry-vm: fault tolerance: the secondary is lost (%s); the guest "
		"is paused, its output held, until ft-continue (or quit)\n", why);
	vmm_event(ft->vmm, "FT_SECONDARY_LOST",
		  json_pack("{s:s, s:I}", "reason", why, "epoch", (json_int_t)ft->acked));
	while (!atomic_load(&ft->go_on) && !atomic_load(&ft->stop)) {
		struct pollfd p = { .fd = ft->wake[0], .events = POLLIN };
		if (poll(&p, 1, 1000) > 0)
			while (read(ft->wake[0], drain, sizeof(drain)) > 0)
				;
	}
	/* ending: the guest stays paused (the machine's threads leave their
	 * loops on exit paused or not) */
	return atomic_load(&ft->go_on);
}

static void *ft_thread(void *arg)
{
	struct ft *ft = arg;
	struct machine *m = ft->vmm->machine;
	char err[400] = "";
	struct mig_stream *s = ft_primary_connect(ft, err, sizeof(err));
	int r = -1;
	if (s) {
		mig_stream_set_timeout(s, ft_copy_timeout_ms((int)ft->timeout_ms));
		r = ft_primary_handshake(ft, s, err, sizeof(err));
		if (r == 0)
			r = ft_run(ft, s, err, sizeof(err));
	}
	dirty_log_stop(m);
	/* a secondary with no complete checkpoint has nothing to run: holding
	 * for it would protect nothing */
	bool held = r != 0 && ft->hold_on_loss && ft->acked > 0 && !atomic_load(&ft->stop);
	if (held && !ft_hold_after_loss(ft, err)) {
		ft_drop_held(ft);
		ft_set_status(ft, FT_STOPPED, "ended while the secondary was lost: the held "
			      "output and disk writes were dropped");
		fprintf(stderr, "ferry-vm: fault tolerance: ended while holding; held output "
			"and disk writes dropped\n");
		if (s)
			mig_stream_free(s);
		return NULL;
	}
	/* unprotected or stopped, the guest runs alone: its output is its own */
	if (ft->vmm->net)
		virtio_net_hold_stop(ft->vmm->net, true);
	ft_release_disks(ft);
	if (r == 0) {
		mig_send_error(s, "the primary ended fault tolerance");
		ft_set_status(ft, FT_STOPPED, NULL);
		vmm_event(ft->vmm, "FT_STOPPED", json_object());
	} else {
		ft_set_status(ft, FT_UNPROTECTED, err);
		if (s && !mig_stream_failed(s))
			mig_send_error(s, err);
		fprintf(stderr, "ferry-vm: fault tolerance lost, the guest runs unprotected: "
			"%s\n", err);
		vmm_event(ft->vmm, "FT_UNPROTECTED", json_pack("{s:s}", "reason", err));
	}
	if (held)
		machine_resume(m);
	if (s)
		mig_stream_free(s);
	return NULL;
}

static void ft_free(struct ft *ft)
{
	if (!ft)
		return;
	for (unsigned i = 0; i < MAX_HARTS; i++)
		sbuf_free(&ft->harts[i]);
	for (unsigned i = 0; i < MAX_STATES; i++)
		sbuf_free(&ft->devs[i]);
	free(ft->bitmap);
	free(ft->hash);
	free(ft->buf);
	free(ft->pfns);
	free(ft->wbuf);
	if (ft->wake[0] >= 0) {
		close(ft->wake[0]);
		close(ft->wake[1]);
	}
	pthread_mutex_destroy(&ft->lock);
	explicit_bzero(&ft->secret, sizeof(ft->secret));
	free(ft);
}

/* Stop the thread (it tells the secondary) and wait for it. */
static void ft_join(struct ft *ft)
{
	atomic_store(&ft->stop, true);
	ssize_t w = write(ft->wake[1], "x", 1);
	(void)w;
	pthread_join(ft->thread, NULL);
}

void ft_destroy(struct ft *ft)
{
	if (!ft)
		return;
	ft_join(ft);
	ft_free(ft);
}

static bool ft_get_uint(json_t *args, const char *key, uint64_t *out, uint64_t min,
			uint64_t max, char *err, size_t errlen)
{
	json_t *j = json_object_get(args, key);
	if (!j)
		return true;
	if (!json_is_integer(j) || json_integer_value(j) < (json_int_t)min ||
	    json_integer_value(j) > (json_int_t)max) {
		snprintf(err, errlen, "'%s' must be an integer from %llu to %llu", key,
			 (unsigned long long)min, (unsigned long long)max);
		return false;
	}
	*out = (uint64_t)json_integer_value(j);
	return true;
}

static struct ft *ft_new(struct vmm *v)
{
	struct machine *m = v->machine;
	struct ft *ft = calloc(1, sizeof(*ft));
	if (!ft)
		return NULL;
	ft->wake[0] = ft->wake[1] = -1;
	pthread_mutex_init(&ft->lock, NULL);
	ft->vmm = v;
	ft->npages = m->ram_size / PAGE_SIZE;
	ft->bitmap = calloc((ft->npages + 63) / 64, sizeof(uint64_t));
	ft->hash = calloc(ft->npages, sizeof(uint64_t));
	ft->wbuf = malloc(MIG_FT_WRITE_HDR + MIG_FT_WRITE_MAX);
	for (unsigned i = 0; i < MAX_HARTS; i++)
		sbuf_init(&ft->harts[i]);
	for (unsigned i = 0; i < MAX_STATES; i++)
		sbuf_init(&ft->devs[i]);
	if (!ft->bitmap || !ft->hash || !ft->wbuf || pipe2(ft->wake, O_CLOEXEC | O_NONBLOCK)) {
		ft_free(ft);
		return NULL;
	}
	return ft;
}

static bool ft_secondary_took_over(struct ft_secondary *sec);

json_t *ft_cmd_start(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	*cls = "GenericError";
	if (v->in || (v->ft_sec && !ft_secondary_took_over(v->ft_sec))) {
		snprintf(err, errlen, "this guest is not running here");
		return NULL;
	}
	if (ft_is_active(v->ft)) {
		snprintf(err, errlen, "fault tolerance is on already (query-ft)");
		return NULL;
	}
	if (migration_is_active(v->mig) || migration_is_done(v->mig)) {
		snprintf(err, errlen, "a migration is in progress or done");
		return NULL;
	}
	json_t *uri = json_object_get(args, "uri");
	char host[256], port[32];
	if (!json_is_string(uri) || mig_parse_tcp(json_string_value(uri), host, sizeof(host),
						  port, sizeof(port))) {
		snprintf(err, errlen, "'uri' (tcp:HOST:PORT of the secondary) is required");
		return NULL;
	}
	uint64_t epoch_ms = FT_EPOCH_MS_DEFAULT, timeout_ms = 3000, min_epoch_ms;
	if (!ft_get_uint(args, "epoch_ms", &epoch_ms, 5, 10000, err, errlen) ||
	    !ft_get_uint(args, "timeout_ms", &timeout_ms, 100, 600000, err, errlen))
		return NULL;
	min_epoch_ms = epoch_ms < FT_MIN_EPOCH_MS_DEFAULT ? epoch_ms : FT_MIN_EPOCH_MS_DEFAULT;
	if (!ft_get_uint(args, "min_epoch_ms", &min_epoch_ms, 0, epoch_ms, err, errlen))
		return NULL;
	json_t *on_loss = json_object_get(args, "on_loss");
	const char *loss = on_loss ? json_string_value(on_loss) : "release";
	if (!loss || (strcmp(loss, "release") && strcmp(loss, "hold"))) {
		snprintf(err, errlen, "'on_loss' must be \"release\" (run on unprotected at "
			 "once) or \"hold\" (pause and hold output until ft-continue)");
		return NULL;
	}
	struct ft *ft = ft_new(v);
	if (!ft) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	json_t *sf = json_object_get(args, "secret_file");
	if (sf && (!json_is_string(sf) ||
		   mig_secret_load(json_string_value(sf), &ft->secret, err, errlen))) {
		if (!json_is_string(sf))
			snprintf(err, errlen, "'secret_file' must be a path");
		ft_free(ft);
		return NULL;
	}
	snprintf(ft->uri, sizeof(ft->uri), "%s", json_string_value(uri));
	ft->epoch_ms = epoch_ms;
	ft->min_epoch_ms = min_epoch_ms;
	ft->timeout_ms = timeout_ms;
	ft->hold_on_loss = !strcmp(loss, "hold");
	ft->start_ms = mig_now_ms();
	ft->status = FT_SYNCING;
	/* output and disk writes from here on wait for the secondary's
	 * acknowledgement */
	if (v->net) {
		virtio_net_hold_start(v->net, 1);
		if (min_epoch_ms)
			virtio_net_hold_notify(v->net, ft_output_held, ft);
	}
	ft_hold_disks(ft);
	int e = pthread_create(&ft->thread, NULL, ft_thread, ft);
	if (e) {
		if (v->net)
			virtio_net_hold_stop(v->net, true);
		ft_release_disks(ft);
		snprintf(err, errlen, "cannot start the FT thread: %s", strerror(e));
		ft_free(ft);
		return NULL;
	}
	if (v->ft) {            /* the last one has ended (not active) */
		pthread_join(v->ft->thread, NULL);
		ft_free(v->ft);
	}
	v->ft = ft;
	return json_object();
}

json_t *ft_cmd_stop(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	(void)args;
	*cls = "GenericError";
	if (!ft_is_active(v->ft)) {
		snprintf(err, errlen, "fault tolerance is not on");
		return NULL;
	}
	if (ft_is_holding(v->ft)) {
		snprintf(err, errlen, "the secondary is lost and may take over: ft-continue "
			 "releases the held output and runs on unprotected, quit ends the guest "
			 "here without it");
		return NULL;
	}
	atomic_store(&v->ft->stop, true);
	ssize_t w = write(v->ft->wake[1], "x", 1);
	(void)w;
	return json_object();
}

json_t *ft_cmd_continue(void *ctx, json_t *args, const char **cls, char *err,
			size_t errlen)
{
	struct vmm *v = ctx;
	(void)args;
	*cls = "GenericError";
	if (v->ft && atomic_load(&v->ft->go_on))
		return json_object();   /* said already */
	if (!ft_is_holding(v->ft)) {
		snprintf(err, errlen, "no primary here holds its guest for a lost secondary "
			 "(query-ft)");
		return NULL;
	}
	atomic_store(&v->ft->go_on, true);
	ssize_t w = write(v->ft->wake[1], "c", 1);
	(void)w;
	return json_object();
}

static json_t *ft_primary_figures(struct ft *ft)
{
	uint64_t frames = 0, bytes = 0, writes = 0, write_bytes = 0;
	if (ft->vmm->net)
		virtio_net_held(ft->vmm->net, &frames, &bytes);
	for (unsigned i = 0; i < ft->vmm->ndisks; i++) {
		uint64_t w = 0, b = 0;
		if (ft->vmm->blk[i])
			virtio_blk_held(ft->vmm->blk[i], &w, &b);
		writes += w;
		write_bytes += b;
	}
	pthread_mutex_lock(&ft->lock);
	uint64_t n = ft->acked ? ft->acked : 1;
	json_t *r = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}",
			      "role", "primary", "status", ft_status_names[ft->status],
			      "uri", ft->uri, "epoch_ms", (json_int_t)ft->epoch_ms,
			      "epoch", (json_int_t)ft->epoch,
			      "acked_epoch", (json_int_t)ft->acked,
			      "sync_ms", (json_int_t)ft->sync_ms,
			      "initial_bytes", (json_int_t)ft->initial_bytes);
	json_object_set_new(r, "pause_us_last", json_integer((json_int_t)ft->pause_us_last));
	json_object_set_new(r, "pause_us_avg", json_integer((json_int_t)(ft->pause_us_total / n)));
	json_object_set_new(r, "pause_us_max", json_integer((json_int_t)ft->pause_us_max));
	json_object_set_new(r, "pages_last", json_integer((json_int_t)ft->pages_last));
	json_object_set_new(r, "bytes_per_epoch",
			    json_integer((json_int_t)(ft->bytes_total / n)));
	json_object_set_new(r, "commit_us_avg",
			    json_integer((json_int_t)(ft->commit_us_total / n)));
	json_object_set_new(r, "held_frames", json_integer((json_int_t)frames));
	json_object_set_new(r, "held_bytes", json_integer((json_int_t)bytes));
	json_object_set_new(r, "min_epoch_ms", json_integer((json_int_t)ft->min_epoch_ms));
	json_object_set_new(r, "on_loss", json_string(ft->hold_on_loss ? "hold" : "release"));
	json_object_set_new(r, "early_epochs", json_integer((json_int_t)ft->early_epochs));
	json_object_set_new(r, "held_writes", json_integer((json_int_t)writes));
	json_object_set_new(r, "held_write_bytes", json_integer((json_int_t)write_bytes));
	json_object_set_new(r, "write_bytes_last", json_integer((json_int_t)ft->write_bytes_last));
	json_object_set_new(r, "write_bytes_per_epoch",
			    json_integer((json_int_t)(ft->write_bytes_total / n)));
	if (ft->error[0])
		json_object_set_new(r, "error", json_string(ft->error));
	pthread_mutex_unlock(&ft->lock);
	return r;
}

/* ======================================================================== */
/* ---- secondary -------------------------------------------------------------------- */

enum sec_status { SEC_WAITING, SEC_RECEIVING, SEC_PRIMARY_LOST, SEC_TAKING_OVER, SEC_RUNNING };

static const char *const sec_status_names[] = {
	[SEC_WAITING] = "waiting", [SEC_RECEIVING] = "receiving",
	[SEC_PRIMARY_LOST] = "primary-lost", [SEC_TAKING_OVER] = "taking-over",
	[SEC_RUNNING] = "running",
};

/* A CPU, DEVICE or CLOCK record, kept until takeover. */
struct ft_record {
	uint32_t type, hart, version;
	char name[MIG_NAME_MAX];
	uint64_t ticks;
	uint8_t *data;
	size_t len;
};

struct ft_state {
	struct ft_record *rec;
	unsigned n, cap;
};

/* An epoch's guest writes (FT_WRITE), in the order they were made. */
struct ft_writes {
	struct ft_write *w;             /* each w[i].data is our own copy */
	size_t n, cap;
	uint64_t bytes;
};

struct ft_secondary {
	struct vmm *vmm;
	pthread_mutex_t lock;
	enum sec_status status;
	enum ft_takeover policy;
	char error[400];
	int decide[2];                  /* ft-takeover writes here */
	atomic_bool takeover;
	uint64_t committed, received_bytes, last_epoch_ms;
	uint64_t committed_digest;      /* RAM as of the committed epoch */
	uint64_t discarded;             /* an epoch cut short, never applied */

	/* receiving (main thread only) */
	uint64_t guest_pages;
	uint64_t *hash, *scratch;       /* per page: RAM as committed; a trial */
	uint64_t zero_hash;
	bool staging;                   /* in an epoch: pages go to the stage */
	uint8_t *stage;
	uint64_t *stage_pfn;
	uint64_t nstage, stage_cap;
	bool digest_ok;
	struct ft_state pending, committed_state;
	struct ft_writes pending_writes, committed_writes;
	int link_timeout_ms;    /* silence that loses the primary, once committed */
};

static void ft_writes_clear(struct ft_writes *ws)
{
	for (size_t i = 0; i < ws->n; i++)
		free((void *)ws->w[i].data);
	ws->n = 0;
	ws->bytes = 0;
}

static int ft_writes_add(struct ft_writes *ws, const struct ft_write *w)
{
	if (ws->n == ws->cap) {
		size_t cap = ws->cap ? ws->cap * 2 : 64;
		struct ft_write *a = realloc(ws->w, cap * sizeof(*a));
		if (!a)
			return -1;
		ws->w = a;
		ws->cap = cap;
	}
	uint8_t *data = malloc(w->len);
	if (!data)
		return -1;
	memcpy(data, w->data, w->len);
	ws->w[ws->n] = *w;
	ws->w[ws->n++].data = data;
	ws->bytes += w->len;
	return 0;
}

static void ft_state_clear(struct ft_state *st)
{
	for (unsigned i = 0; i < st->n; i++)
		free(st->rec[i].data);
	st->n = 0;
}

static int ft_state_add(struct ft_state *st, const struct mig_section *sec)
{
	if (st->n == st->cap) {
		unsigned cap = st->cap ? st->cap * 2 : 16;
		struct ft_record *r = realloc(st->rec, cap * sizeof(*r));
		if (!r)
			return -1;
		st->rec = r;
		st->cap = cap;
	}
	struct ft_record *r = &st->rec[st->n];
	memset(r, 0, sizeof(*r));
	r->type = sec->type;
	r->hart = sec->hart;
	r->version = sec->version;
	r->ticks = sec->ticks;
	snprintf(r->name, sizeof(r->name), "%s", sec->name);
	if (sec->type != MIG_SEC_CLOCK) {
		r->len = sec->state_len;
		r->data = malloc(r->len ? r->len : 1);
		if (!r->data)
			return -1;
		memcpy(r->data, sec->state, r->len);
	}
	st->n++;
	return 0;
}

/* Pages arrive here: into RAM during the initial copy, into the stage
 * during an epoch. */
static void ft_sink(void *opaque, uint64_t pfn, const void *page)
{
	struct ft_secondary *sec = opaque;
	struct machine *m = sec->vmm->machine;
	if (!sec->staging) {
		if (pfn == sec->guest_pages / 2)
			ft_copy_stall(NULL);
		uint64_t h = mig_page_hash(page);
		if (h == sec->zero_hash && sec->hash[pfn] == sec->zero_hash &&
		    mig_page_is_zero(page))
			return;         /* leave untouched RAM unmapped */
		memcpy(m->ram + pfn * PAGE_SIZE, page, PAGE_SIZE);
		sec->hash[pfn] = h;
		return;
	}
	if (sec->nstage == sec->guest_pages)
		return;         /* more pages than RAM: the digest will not match */
	if (sec->nstage == sec->stage_cap) {
		uint64_t cap = sec->stage_cap ? sec->stage_cap * 2 : 256;
		uint8_t *st = realloc(sec->stage, cap * PAGE_SIZE);
		uint64_t *pf = st ? realloc(sec->stage_pfn, cap * sizeof(uint64_t)) : NULL;
		if (st)
			sec->stage = st;
		if (!pf)
			return;         /* caught: the digest will not match */
		sec->stage_pfn = pf;
		sec->stage_cap = cap;
	}
	memcpy(sec->stage + sec->nstage * PAGE_SIZE, page, PAGE_SIZE);
	sec->stage_pfn[sec->nstage++] = pfn;
}

/* A guest write of the epoch under way (its bounds are the grammar's). */
static int ft_stage_write(struct ft_secondary *sec, const struct mig_section *in, char *err,
			  size_t errlen)
{
	struct ft_write w;
	if (ft_write_decode(in, &w, err, errlen))
		return -1;
	if (w.disk >= sec->vmm->ndisks || !sec->vmm->blk[w.disk]) {
		snprintf(err, errlen, "a guest write to disk %u, which is not here", w.disk);
		return -1;
	}
	if (ft_writes_add(&sec->pending_writes, &w)) {
		snprintf(err, errlen, "out of memory for the epoch's disk writes");
		return -1;
	}
	return 0;
}

/* RAM as it would be with the stage applied: does it match the digest? */
static bool ft_stage_matches(struct ft_secondary *sec, uint64_t digest, uint64_t ram_size)
{
	memcpy(sec->scratch, sec->hash, sec->guest_pages * sizeof(uint64_t));
	for (uint64_t i = 0; i < sec->nstage; i++)
		sec->scratch[sec->stage_pfn[i]] = mig_page_hash(sec->stage + i * PAGE_SIZE);
	return mig_digest_of_hashes(sec->scratch, sec->guest_pages, ram_size) == digest;
}

/* The epoch is whole and verified: apply it. */
static void ft_commit(struct ft_secondary *sec, uint64_t epoch, uint64_t digest)
{
	struct machine *m = sec->vmm->machine;
	for (uint64_t i = 0; i < sec->nstage; i++)
		memcpy(m->ram + sec->stage_pfn[i] * PAGE_SIZE, sec->stage + i * PAGE_SIZE,
		       PAGE_SIZE);
	uint64_t *h = sec->hash;
	sec->hash = sec->scratch;
	sec->scratch = h;
	struct ft_state t = sec->committed_state;
	sec->committed_state = sec->pending;
	sec->pending = t;
	ft_state_clear(&sec->pending);
	/* the primary flushed the writes of the epochs before this one to the
	 * images before sending its END: only this epoch's may be missing */
	struct ft_writes tw = sec->committed_writes;
	sec->committed_writes = sec->pending_writes;
	sec->pending_writes = tw;
	ft_writes_clear(&sec->pending_writes);
	sec->nstage = 0;
	sec->staging = false;
	pthread_mutex_lock(&sec->lock);
	sec->committed = epoch;
	sec->committed_digest = digest;
	sec->last_epoch_ms = mig_now_ms();
	pthread_mutex_unlock(&sec->lock);
}

static void sec_set_status(struct ft_secondary *sec, enum sec_status st, const char *why)
{
	pthread_mutex_lock(&sec->lock);
	sec->status = st;
	if (why)
		snprintf(sec->error, sizeof(sec->error), "%s", why);
	pthread_mutex_unlock(&sec->lock);
}

/* Receive until the stream ends. 1: the primary ended FT on purpose (its
 * ERROR said so); -1: the primary is lost (err says how). */
static int ft_receive(struct ft_secondary *sec, struct mig_stream *s,
		      const struct mig_config *remote, char *err, size_t errlen)
{
	struct machine *m = sec->vmm->machine;
	struct ft_grammar g;
	uint64_t digest = 0;
	int r = -1;
	ft_grammar_init(&g, remote);
	mig_stream_set_sink(s, ft_sink, sec);
	for (;;) {
		struct mig_section in;
		if (mig_read_section(s, &in, m->ram, remote->ram_size)) {
			snprintf(err, errlen, "%s", mig_stream_error(s));
			break;
		}
		if (in.type == MIG_SEC_ERROR) {
			snprintf(err, errlen, "the primary: %s", in.text);
			r = 1;
			break;
		}
		if (ft_grammar_step(&g, &in, err, errlen)) {
			mig_send_error(s, err);
			break;
		}
		pthread_mutex_lock(&sec->lock);
		sec->received_bytes = mig_stream_bytes_in(s);
		pthread_mutex_unlock(&sec->lock);
		switch (in.type) {
		case MIG_SEC_RAM:
		case MIG_SEC_FT_ALIVE:  /* the read itself was the news */
			break;
		case MIG_SEC_EPOCH:
			sec->staging = true;
			sec->nstage = 0;
			sec->digest_ok = false;
			ft_state_clear(&sec->pending);
			ft_writes_clear(&sec->pending_writes);
			break;
		case MIG_SEC_FT_WRITE:
			if (ft_stage_write(sec, &in, err, errlen)) {
				mig_send_error(s, err);
				goto out;
			}
			break;
		case MIG_SEC_DIGEST:
			digest = in.digest;
			sec->digest_ok = ft_stage_matches(sec, in.digest, remote->ram_size);
			if (!sec->digest_ok) {
				snprintf(err, errlen, "epoch %llu fails its memory digest: not "
					 "applied", (unsigned long long)g.epoch);
				mig_send_error(s, err);
				goto out;
			}
			break;
		case MIG_SEC_END: {
			ft_commit(sec, g.epoch, digest);
			/* something to take over with: the link timeout from now */
			mig_stream_set_timeout(s, sec->link_timeout_ms);
			uint8_t num[8];
			put_le64(num, g.epoch);
			if (mig_write_section(s, MIG_SEC_EPOCH_ACK, num, 8) || mig_flush(s)) {
				snprintf(err, errlen, "acknowledging epoch %llu: %s",
					 (unsigned long long)g.epoch, mig_stream_error(s));
				goto out;
			}
			break;
		}
		default:        /* CPU, DEVICE, CLOCK */
			if (ft_state_add(&sec->pending, &in)) {
				snprintf(err, errlen, "out of memory for the epoch's state");
				mig_send_error(s, err);
				goto out;
			}
		}
	}
out:
	if (sec->staging) {     /* cut short: drop it */
		pthread_mutex_lock(&sec->lock);
		sec->discarded = g.epoch;
		pthread_mutex_unlock(&sec->lock);
		sec->staging = false;
		sec->nstage = 0;
		ft_state_clear(&sec->pending);
		ft_writes_clear(&sec->pending_writes);
	}
	mig_stream_set_sink(s, NULL, NULL);
	ft_grammar_free(&g);
	return r;
}

static bool sec_quitting(struct vmm *v)
{
	return atomic_load(&v->machine->exit_reason) != EXIT_NONE;
}

/* Accept and secure one primary, and exchange configurations; NULL when
 * quitting (*quit) or on error. A peer that fails the handshake is
 * dropped and the next one awaited. */
static struct mig_stream *ft_accept(struct ft_secondary *sec, int lfd,
				    const struct mig_auth *auth, int timeout_ms,
				    struct mig_config *remote, bool *quit, char *err,
				    size_t errlen)
{
	struct vmm *v = sec->vmm;
	struct pollfd p[2] = { { .fd = lfd, .events = POLLIN },
			       { .fd = v->machine->exit_pipe[0], .events = POLLIN } };
	*quit = false;
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR) {
			snprintf(err, errlen, "poll: %s", strerror(errno));
			return NULL;
		}
		if (p[1].revents || sec_quitting(v)) {
			*quit = true;
			return NULL;
		}
		if (!p[0].revents)
			continue;
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		mig_socket_tune(fd);
		char why[400];
		struct mig_channel *ch = mig_channel_server(fd, auth, FT_HANDSHAKE_MS,
							    v->machine->exit_pipe[0], why,
							    sizeof(why));
		if (!ch) {
			fprintf(stderr, "ferry-vm: FT secondary: refused a connection: %s\n", why);
			continue;
		}
		struct mig_stream *s = mig_stream_new_channel(ch);
		struct mig_config local;
		vmstate_config(v, &local);
		mig_channel_set_deadline(mig_stream_channel(s), FT_HANDSHAKE_MS);
		if (mig_write_config(s, &local) || mig_flush(s) || mig_read_config(s, remote)) {
			fprintf(stderr, "ferry-vm: FT secondary: dropped a connection: %s\n",
				mig_stream_error(s));
			mig_stream_free(s);
			continue;
		}
		if (remote->copy_disks)
			snprintf(why, sizeof(why), "fault tolerance runs on a shared datastore "
				 "only (disks: copy is not built for it)");
		if (remote->copy_disks || mig_config_check(remote, &local, why, sizeof(why))) {
			snprintf(err, errlen, "cannot run the primary's guest here: %s", why);
			mig_send_error(s, why);
			mig_stream_free(s);
			return NULL;
		}
		if (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s)) {
			snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
			mig_stream_free(s);
			return NULL;
		}
		mig_channel_set_deadline(mig_stream_channel(s), 0);
		mig_stream_set_timeout(s, ft_copy_timeout_ms(timeout_ms));
		return s;
	}
}

/* Wait for the arbiter's `ft-takeover` (or quit). True to take over. */
static bool ft_await_decision(struct ft_secondary *sec)
{
	struct vmm *v = sec->vmm;
	if (sec->policy == FT_TAKEOVER_AUTO)
		return true;
	struct pollfd p[2] = { { .fd = sec->decide[0], .events = POLLIN },
			       { .fd = v->machine->exit_pipe[0], .events = POLLIN } };
	fprintf(stderr, "ferry-vm: FT secondary: the primary is lost; waiting for "
		"ft-takeover (--ft-takeover manual)\n");
	while (!atomic_load(&sec->takeover)) {
		if (sec_quitting(v))
			return false;
		poll(p, 2, -1);
	}
	return !sec_quitting(v);
}

/* With the disks locked: the committed epoch's guest writes, which the
 * primary may have died before writing, go to the images, in order, and
 * are flushed (writing again what it did write changes nothing). */
static int ft_replay_writes(struct ft_secondary *sec, char *err, size_t errlen)
{
	struct vmm *v = sec->vmm;
	const struct ft_writes *ws = &sec->committed_writes;
	for (size_t i = 0; i < ws->n; i++) {
		struct disk *d = virtio_blk_disk(v->blk[ws->w[i].disk]);
		if (disk_write(d, ws->w[i].data, ws->w[i].len, ws->w[i].off)) {
			snprintf(err, errlen, "writing epoch %llu's guest writes to %s: %s: "
				 "refusing to run", (unsigned long long)sec->committed, d->path,
				 strerror(errno));
			return -1;
		}
	}
	for (unsigned i = 0; i < v->ndisks; i++)
		if (v->blk[i] && disk_flush(virtio_blk_disk(v->blk[i]))) {
			snprintf(err, errlen, "flushing %s: %s: refusing to run",
				 virtio_blk_disk(v->blk[i])->path, strerror(errno));
			return -1;
		}
	return 0;
}

/* Run the guest from the committed epoch. */
static int ft_take_over(struct ft_secondary *sec, char *err, size_t errlen)
{
	struct vmm *v = sec->vmm;
	struct machine *m = v->machine;
	sec_set_status(sec, SEC_TAKING_OVER, NULL);
	/* the last word before running: all of RAM is the committed epoch's */
	uint64_t here = mig_ram_digest(m->ram, sec->guest_pages * PAGE_SIZE);
	if (here != sec->committed_digest) {
		snprintf(err, errlen, "RAM does not match epoch %llu's digest (%016llx, here "
			 "%016llx): refusing to run", (unsigned long long)sec->committed,
			 (unsigned long long)sec->committed_digest, (unsigned long long)here);
		return -1;
	}
	for (unsigned i = 0; i < sec->committed_state.n; i++) {
		const struct ft_record *r = &sec->committed_state.rec[i];
		struct mig_section s = { .type = r->type, .hart = r->hart,
					 .version = r->version, .ticks = r->ticks,
					 .state = r->data, .state_len = r->len };
		snprintf(s.name, sizeof(s.name), "%s", r->name);
		if (vmstate_load(m, &s, err, errlen))
			return -1;
	}
	/* a primary that just died may still be closing its files: its lock
	 * goes with its last descriptor, so give it a moment */
	const char *why = NULL;
	uint64_t until = mig_now_ms() + FT_LOCK_WAIT_MS;
	int locked;
	while ((locked = vmstate_acquire(m, &why)) != 0 && mig_now_ms() < until)
		usleep(20000);
	if (locked) {
		snprintf(err, errlen, "cannot take the guest's disks (%s): the primary may "
			 "still run it, so it does not run here", why ? why : "no reason");
		return -1;
	}
	if (ft_replay_writes(sec, err, errlen))
		return -1;
	v->in = NULL;
	if (machine_start(m)) {
		snprintf(err, errlen, "cannot start threads");
		return -1;
	}
	vmstate_resumed_elsewhere(m);   /* announce the MAC from this host */
	sec_set_status(sec, SEC_RUNNING, NULL);
	fprintf(stderr, "ferry-vm: FT secondary: took over at epoch %llu\n",
		(unsigned long long)sec->committed);
	vmm_event(v, "FT_FAILOVER", json_pack("{s:I, s:I, s:I, s:I}", "epoch",
					      (json_int_t)sec->committed, "discarded_epoch",
					      (json_int_t)sec->discarded, "replayed_writes",
					      (json_int_t)sec->committed_writes.n,
					      "replayed_write_bytes",
					      (json_int_t)sec->committed_writes.bytes));
	vmm_event(v, "RESUME", json_object());
	return 0;
}

struct ft_spec {
	char uri[300];
	struct mig_secret secret;
	int timeout_ms;
};

static int ft_parse_spec(const char *spec, struct ft_spec *out, char *err, size_t errlen)
{
	char host[256], port[32], buf[1024];
	memset(out, 0, sizeof(*out));
	out->timeout_ms = FT_TIMEOUT_MS_DEFAULT;
	if (strlen(spec) >= sizeof(buf)) {
		snprintf(err, errlen, "--ft-secondary: too long");
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", spec);
	char *save = NULL, *tok = strtok_r(buf, ",", &save);
	if (!tok || mig_parse_tcp(tok, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "--ft-secondary '%s': want tcp:HOST:PORT[,secret-file="
			 "FILE][,timeout-ms=N]", spec);
		return -1;
	}
	snprintf(out->uri, sizeof(out->uri), "%s", tok);
	while ((tok = strtok_r(NULL, ",", &save))) {
		if (!strncmp(tok, "secret-file=", 12) && tok[12]) {
			if (mig_secret_load(tok + 12, &out->secret, err, errlen))
				return -1;
		} else if (!strncmp(tok, "timeout-ms=", 11)) {
			char *end;
			long n = strtol(tok + 11, &end, 10);
			if (*end || n < 100 || n > 600000) {
				snprintf(err, errlen, "--ft-secondary: timeout-ms wants 100 to "
					 "600000");
				return -1;
			}
			out->timeout_ms = (int)n;
		} else {
			snprintf(err, errlen, "--ft-secondary: unknown option '%s' (want "
				 "secret-file=FILE or timeout-ms=N)", tok);
			return -1;
		}
	}
	return 0;
}

int ft_secondary_check(const char *spec, char *err, size_t errlen)
{
	struct ft_spec *fs = malloc(sizeof(*fs));
	if (!fs) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	int r = ft_parse_spec(spec, fs, err, errlen);
	explicit_bzero(fs, sizeof(*fs));
	free(fs);
	return r;
}

void ft_secondary_free(struct ft_secondary *sec)
{
	if (!sec)
		return;
	ft_state_clear(&sec->pending);
	ft_state_clear(&sec->committed_state);
	free(sec->pending.rec);
	free(sec->committed_state.rec);
	ft_writes_clear(&sec->pending_writes);
	ft_writes_clear(&sec->committed_writes);
	free(sec->pending_writes.w);
	free(sec->committed_writes.w);
	free(sec->hash);
	free(sec->scratch);
	free(sec->stage);
	free(sec->stage_pfn);
	if (sec->decide[0] >= 0) {
		close(sec->decide[0]);
		close(sec->decide[1]);
	}
	pthread_mutex_destroy(&sec->lock);
	free(sec);
}

static struct ft_secondary *ft_secondary_new(struct vmm *v, enum ft_takeover policy)
{
	struct ft_secondary *sec = calloc(1, sizeof(*sec));
	if (!sec)
		return NULL;
	static const uint8_t zeros[PAGE_SIZE];
	uint64_t npages = v->machine->ram_size / PAGE_SIZE;
	pthread_mutex_init(&sec->lock, NULL);
	sec->decide[0] = sec->decide[1] = -1;
	sec->vmm = v;
	sec->policy = policy;
	sec->zero_hash = mig_page_hash(zeros);
	sec->hash = malloc(npages * sizeof(uint64_t));
	sec->scratch = malloc(npages * sizeof(uint64_t));
	if (!sec->hash || !sec->scratch || pipe2(sec->decide, O_CLOEXEC)) {
		ft_secondary_free(sec);
		return NULL;
	}
	for (uint64_t i = 0; i < npages; i++)
		sec->hash[i] = sec->zero_hash;
	return sec;
}

int vmm_ft_secondary(struct vmm *v, const char *spec, enum ft_takeover policy, char *err,
		     size_t errlen)
{
	struct ft_spec *fs = calloc(1, sizeof(*fs));
	struct ft_secondary *sec = ft_secondary_new(v, policy);
	struct mig_config remote;
	int r = -1;
	v->in = (struct migration *)v;  /* "inmigrate" for query-status */
	if (!fs || !sec) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	if (ft_parse_spec(spec, fs, err, errlen))
		goto out;
	v->ft_sec = sec;
	struct mig_auth auth = { v->tls, fs->secret.len ? &fs->secret : NULL };
	if (!auth.tls && !auth.secret)
		fprintf(stderr, "ferry-vm: warning: %s accepts an FT primary from anyone who "
			"can reach it; give --tls-creds DIR or secret-file=FILE\n", fs->uri);
	int lfd = mig_tcp_listen(fs->uri, err, errlen);
	if (lfd < 0)
		goto out;
	bool quit;
	struct mig_stream *s = ft_accept(sec, lfd, &auth, fs->timeout_ms, &remote, &quit,
					 err, errlen);
	sec->link_timeout_ms = fs->timeout_ms;
	close(lfd);
	if (!s) {
		r = quit ? 1 : -1;
		goto out;
	}
	sec->guest_pages = remote.ram_size / PAGE_SIZE;
	sec_set_status(sec, SEC_RECEIVING, NULL);
	char why[400];
	int got = ft_receive(sec, s, &remote, why, sizeof(why));
	mig_stream_free(s);
	if (got == 1 || sec_quitting(v)) {
		fprintf(stderr, "ferry-vm: FT secondary: %s; ending without running the "
			"guest\n", sec_quitting(v) ? "told to quit" : why);
		machine_exit(v->machine, EXIT_QUIT);
		r = 1;
		goto out;
	}
	if (sec->committed == 0) {
		snprintf(err, errlen, "lost the primary before its first complete checkpoint "
			 "(%s): nothing to run", why);
		goto out;
	}
	sec_set_status(sec, SEC_PRIMARY_LOST, why);
	fprintf(stderr, "ferry-vm: FT secondary: lost the primary (%s); last complete "
		"epoch %llu\n", why, (unsigned long long)sec->committed);
	vmm_event(v, "FT_PRIMARY_LOST", json_pack("{s:s, s:I, s:s}", "reason", why, "epoch",
						  (json_int_t)sec->committed, "takeover",
						  policy == FT_TAKEOVER_AUTO ? "auto" : "manual"));
	if (!ft_await_decision(sec)) {
		fprintf(stderr, "ferry-vm: FT secondary: told to quit before taking over\n");
		r = 1;
		goto out;
	}
	r = ft_take_over(sec, err, errlen);
out:
	if (fs)
		explicit_bzero(fs, sizeof(*fs));
	free(fs);
	return r;
}

static bool ft_secondary_took_over(struct ft_secondary *sec)
{
	pthread_mutex_lock(&sec->lock);
	bool running = sec->status == SEC_RUNNING;
	pthread_mutex_unlock(&sec->lock);
	return running;
}

json_t *ft_cmd_takeover(void *ctx, json_t *args, const char **cls, char *err,
			size_t errlen)
{
	struct vmm *v = ctx;
	struct ft_secondary *sec = v->ft_sec;
	(void)args;
	*cls = "GenericError";
	if (!sec) {
		snprintf(err, errlen, "this is not an FT secondary");
		return NULL;
	}
	pthread_mutex_lock(&sec->lock);
	enum sec_status st = sec->status;
	pthread_mutex_unlock(&sec->lock);
	if (st == SEC_TAKING_OVER || st == SEC_RUNNING)
		return json_object();
	if (st != SEC_PRIMARY_LOST) {
		snprintf(err, errlen, "the primary is %s: take over only once it is lost and "
			 "fenced (query-ft)", st == SEC_WAITING ? "not connected yet"
							      : "connected and checkpointing");
		return NULL;
	}
	atomic_store(&sec->takeover, true);
	ssize_t w = write(sec->decide[1], "x", 1);
	(void)w;
	return json_object();
}

static json_t *ft_secondary_figures(struct ft_secondary *sec)
{
	pthread_mutex_lock(&sec->lock);
	json_t *r = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "role", "secondary",
			      "status", sec_status_names[sec->status], "takeover",
			      sec->policy == FT_TAKEOVER_AUTO ? "auto" : "manual",
			      "epoch", (json_int_t)sec->committed,
			      "received_bytes", (json_int_t)sec->received_bytes,
			      "discarded_epoch", (json_int_t)sec->discarded);
	if (sec->last_epoch_ms)
		json_object_set_new(r, "last_epoch_ms_ago",
				    json_integer((json_int_t)(mig_now_ms() - sec->last_epoch_ms)));
	if (sec->error[0])
		json_object_set_new(r, "error", json_string(sec->error));
	pthread_mutex_unlock(&sec->lock);
	return r;
}

json_t *ft_cmd_query(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct vmm *v = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	if (v->ft) {            /* also a secondary that took over and protects anew */
		json_t *r = ft_primary_figures(v->ft);
		if (v->ft_sec)
			json_object_set_new(r, "took_over", ft_secondary_figures(v->ft_sec));
		return r;
	}
	if (v->ft_sec)
		return ft_secondary_figures(v->ft_sec);
	return json_pack("{s:s}", "status", "off");
}
