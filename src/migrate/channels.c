/*
 * channels.c - RAM pages over several TCP connections (channels.h).
 *
 * Why: one connection is one flow and one thread. Encoding pages (zstd,
 * TLS) costs a core, and a network may cap each flow; N page channels
 * give the migration N threads and N flows. What it costs: N more
 * handshakes, and a barrier at the end of every round.
 *
 * Source: the outgoing thread keeps the main connection and drives the
 * rounds; each page channel has a sender thread with a stream of its own.
 * A round hands the senders the dirty bitmap; they take chunks of it
 * (CHUNK_WORDS x 64 pages) from a shared cursor, so a busy or slow
 * channel takes fewer, and each ends its share with SYNC(round). The
 * outgoing thread waits for all of them (ticking its own bookkeeping),
 * then writes SYNC(round) on the main stream.
 *
 * Destination: an acceptor thread takes connections on the listening
 * socket for as long as the migration runs; each is secured exactly as
 * the main connection (TLS, the secret) and must then present, in JOIN,
 * the nonce the destination put in its CONFIG for this migration and a
 * channel index not yet taken: anyone else is refused with a line on
 * stderr and closed. A joined channel's thread writes pages straight into
 * RAM. Order: within a round every page travels once, on one channel, so
 * pages of one round apply in any order; a later round's copy of a page
 * must land after an earlier one, so a channel that reaches SYNC(r) waits
 * until every channel has (a barrier per round, as QEMU's multifd does),
 * and the main stream's SYNC(r) waits the same way, so the digest and
 * everything after the last round see all of its pages.
 * A failed channel fails the migration on both sides before the handoff.
 *
 * Test hook, FERRY_TEST_FAULT=lagging-channel (in both processes; off
 * unless set), the worst order the network may deliver, every time: the
 * source sends page pfn of round r on channel (pfn + r) % N, so every
 * page changes channel from one round to the next; the destination's
 * channel 0 keeps its pages of round r aside and applies them only when
 * every other channel has read SYNC(r + 1) or END, or waits at the
 * barrier for channel 0. With the barrier, the others wait and the
 * order holds; without it, channel 0's old copies land on the others'
 * newer ones, and the digest refuses the destination.
 */
#include "migrate/channels.h"
#include "migrate/channel.h"
#include "migrate/grammar.h"
#include "migrate/migration.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_WORDS 8                   /* 512 pages, 2 MiB a take */
#define TICK_MS 5
#define HANDSHAKE_TIMEOUT_MS 5000       /* as incoming.c's, for a page channel */
#define JOIN_TIMEOUT_MS (MIG_IO_TIMEOUT_S * 1000)
#define IDLE_MS (MIG_IO_TIMEOUT_S * 1000)
#define MAX_CONNS 64                    /* connections one migration takes */

/* One page channel per two cores, at most 4: a channel is a sender thread
 * here and a receiver there, which pays only with a core to run on beside
 * the guest's. On this 2-core machine that is 1: bench/README.md
 * "Page channels" measured no gain from more on loopback, plain or TLS
 * (the CPU per GiB grows with them), and a gain only where the network
 * caps each flow (2.0x with 2, 3.5x with 4 at 200 Mbit/s a flow); give
 * `channels` for such a link. */
unsigned mig_default_channels(void)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	long n = cores / 2;
	return n < 1 ? 1 : n > 4 ? 4 : (unsigned)n;
}

static void deadline_in(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	ts->tv_sec += ms / 1000 + ts->tv_nsec / 1000000000;
	ts->tv_nsec %= 1000000000;
}

static bool lagging_channel(void)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	return want && !strcmp(want, "lagging-channel");
}

/* ==== source ====================================================================== */

enum sender_job { JOB_CONNECT, JOB_ROUND, JOB_END, JOB_QUIT };

struct sender {
	struct mig_senders *tx;
	unsigned index;
	pthread_t thread;
	bool started;
	struct mig_stream *s;
	atomic_int fd;                  /* -1 until connected */
	struct mig_window link;         /* its own flow's measurements */
	atomic_uint_fast64_t bytes;     /* written, for the outgoing thread */
	bool failed;
	char error[400];
};

struct mig_senders {
	struct migration *mg;
	unsigned n;
	uint8_t nonce[MIG_JOIN_NONCE];
	pthread_mutex_t lock;
	pthread_cond_t start, done;
	uint64_t job_seq;               /* bumped for each job */
	enum sender_job job;
	unsigned done_count;            /* senders done with the job */
	uint64_t round;
	/* the round under way */
	const uint8_t *ram;
	uint64_t words;
	const uint64_t *bitmap;
	const unsigned char *resident;
	atomic_uint_fast64_t cursor;
	atomic_bool compress;
	atomic_uint_fast64_t rate;      /* bytes/s per channel (0: none) */
	struct sender senders[];
};

static int sender_fail(struct sender *sd, const char *why)
{
	if (!sd->failed) {
		sd->failed = true;
		snprintf(sd->error, sizeof(sd->error), "page channel %u: %.360s", sd->index, why);
	}
	return -1;
}

/* Connect, secure as the main connection, JOIN, wait for the ACK. */
static int sender_connect(struct sender *sd)
{
	struct migration *mg = sd->tx->mg;
	char host[256], err[400], why[320];
	int fd = mig_tcp_connect(mg->uri, host, sizeof(host), err, sizeof(err));
	if (fd < 0)
		return sender_fail(sd, err);
	struct mig_auth auth = { mg->vmm->tls, &mg->secret };
	struct mig_channel *ch = mig_channel_client(fd, host, &auth, MIG_IO_TIMEOUT_S * 1000,
						    why, sizeof(why));
	if (!ch)
		return sender_fail(sd, why);
	atomic_store(&sd->fd, mig_channel_fd(ch));
	sd->s = mig_stream_new_channel(ch);
	if (!sd->s)
		return sender_fail(sd, "out of memory for its stream");
	mig_stream_set_timeout(sd->s, MIG_IO_TIMEOUT_S * 1000);
	if (mig_write_join(sd->s, sd->tx->nonce, sd->index, sd->tx->n) || mig_flush(sd->s))
		return sender_fail(sd, mig_stream_error(sd->s));
	if (mig_expect(sd->s, MIG_SEC_ACK, why, sizeof(why))) {
		char msg[360];
		snprintf(msg, sizeof(msg), "the destination refused it: %s", why);
		return sender_fail(sd, msg);
	}
	mig_window_open(&sd->link, mig_channel_fd(ch));
	return 0;
}

/* Pages of bitmap words [w0, w1); with `lagging`, only this channel's
 * pages of the round in the test hook's order. */
static int put_words(struct sender *sd, uint64_t w0, uint64_t w1, bool lagging)
{
	static const uint8_t zeros[MIG_PAGE_SIZE];
	const struct mig_senders *tx = sd->tx;
	for (uint64_t w = w0; w < w1; w++) {
		uint64_t bits = tx->bitmap[w];
		while (bits) {
			uint64_t pfn = w * 64 + (uint64_t)__builtin_ctzll(bits);
			bits &= bits - 1;
			if (lagging && (pfn + tx->round) % tx->n != sd->index)
				continue;
			const void *page = tx->resident && !(tx->resident[pfn] & 1)
					   ? zeros : tx->ram + pfn * MIG_PAGE_SIZE;
			if (mig_put_page(sd->s, pfn, page))
				return -1;
		}
	}
	return 0;
}

/* This channel's share of the round: chunks until the bitmap is taken. */
static int sender_round(struct sender *sd)
{
	struct mig_senders *tx = sd->tx;
	bool lagging = lagging_channel();    /* each walks all, sends its pages */
	uint64_t own = 0;
	mig_stream_set_rate(sd->s, atomic_load(&tx->rate));
	for (;; own += CHUNK_WORDS) {
		uint64_t w0 = lagging ? own : atomic_fetch_add(&tx->cursor, CHUNK_WORDS);
		if (w0 >= tx->words)
			break;
		mig_window_tune(&sd->link);
		mig_stream_set_compress(sd->s, atomic_load(&tx->compress) || sd->link.compress);
		uint64_t w1 = w0 + CHUNK_WORDS < tx->words ? w0 + CHUNK_WORDS : tx->words;
		if (put_words(sd, w0, w1, lagging))
			return sender_fail(sd, mig_stream_error(sd->s));
		atomic_store(&sd->bytes, mig_stream_bytes_out(sd->s));
	}
	if (mig_write_sync(sd->s, tx->round) || mig_flush(sd->s))
		return sender_fail(sd, mig_stream_error(sd->s));
	atomic_store(&sd->bytes, mig_stream_bytes_out(sd->s));
	return 0;
}

static void sender_done(struct sender *sd)
{
	struct mig_senders *tx = sd->tx;
	pthread_mutex_lock(&tx->lock);
	tx->done_count++;
	pthread_cond_broadcast(&tx->done);
	pthread_mutex_unlock(&tx->lock);
}

static void *sender_thread(void *arg)
{
	struct sender *sd = arg;
	struct mig_senders *tx = sd->tx;
	uint64_t seen = 0;
	sender_connect(sd);
	sender_done(sd);
	for (;;) {
		pthread_mutex_lock(&tx->lock);
		while (tx->job_seq == seen)
			pthread_cond_wait(&tx->start, &tx->lock);
		seen = tx->job_seq;
		enum sender_job job = tx->job;
		pthread_mutex_unlock(&tx->lock);
		if (job == JOB_QUIT)
			return NULL;
		if (!sd->failed && job == JOB_ROUND)
			sender_round(sd);
		else if (!sd->failed && job == JOB_END &&
			 (mig_write_end(sd->s) || mig_flush(sd->s)))
			sender_fail(sd, mig_stream_error(sd->s));
		sender_done(sd);
	}
}

void mig_senders_abort(struct mig_senders *tx)
{
	for (unsigned i = 0; tx && i < tx->n; i++) {
		int fd = atomic_load(&tx->senders[i].fd);
		if (fd >= 0)
			shutdown(fd, SHUT_RDWR);
	}
}

/* The first failure's words, or 0 if none failed (with tx->lock held or
 * the senders idle). */
static int first_failure(struct mig_senders *tx, char *err, size_t errlen)
{
	for (unsigned i = 0; i < tx->n; i++)
		if (tx->senders[i].failed) {
			snprintf(err, errlen, "%s", tx->senders[i].error);
			return -1;
		}
	return 0;
}

/* Give every sender `job` and wait until all are done with it, ticking.
 * 0, or -1 with err. */
static int run_job(struct mig_senders *tx, enum sender_job job, bool (*tick)(void *),
		   void *opaque, char *err, size_t errlen)
{
	bool aborted = false;
	pthread_mutex_lock(&tx->lock);
	tx->job = job;
	tx->done_count = 0;
	tx->job_seq++;
	pthread_cond_broadcast(&tx->start);
	while (tx->done_count < tx->n) {
		struct timespec ts;
		deadline_in(&ts, TICK_MS);
		pthread_cond_timedwait(&tx->done, &tx->lock, &ts);
		bool failed = first_failure(tx, err, errlen) != 0;
		pthread_mutex_unlock(&tx->lock);
		bool stop = tick && tick(opaque);
		if ((failed || stop) && !aborted) {
			/* the others would only block on a migration that is over */
			aborted = true;
			mig_senders_abort(tx);
		}
		pthread_mutex_lock(&tx->lock);
	}
	pthread_mutex_unlock(&tx->lock);
	if (first_failure(tx, err, errlen))
		return -1;
	if (aborted) {
		snprintf(err, errlen, "page channels stopped");
		return -1;
	}
	return 0;
}

struct mig_senders *mig_senders_open(struct migration *mg,
				     const uint8_t nonce[MIG_JOIN_NONCE], unsigned n,
				     char *err, size_t errlen)
{
	struct mig_senders *tx = calloc(1, sizeof(*tx) + n * sizeof(struct sender));
	if (!tx) {
		snprintf(err, errlen, "out of memory for %u page channels", n);
		return NULL;
	}
	tx->mg = mg;
	tx->n = n;
	memcpy(tx->nonce, nonce, MIG_JOIN_NONCE);
	pthread_mutex_init(&tx->lock, NULL);
	pthread_cond_init(&tx->start, NULL);
	pthread_cond_init(&tx->done, NULL);
	unsigned started = 0;
	for (unsigned i = 0; i < n; i++) {
		struct sender *sd = &tx->senders[i];
		sd->tx = tx;
		sd->index = i;
		atomic_init(&sd->fd, -1);
		int e = pthread_create(&sd->thread, NULL, sender_thread, sd);
		if (e) {
			snprintf(err, errlen, "cannot start a page channel thread: %s",
				 strerror(e));
			break;
		}
		sd->started = true;
		started++;
	}
	/* the connections (JOB_CONNECT, job_seq 0) */
	pthread_mutex_lock(&tx->lock);
	while (tx->done_count < started)
		pthread_cond_wait(&tx->done, &tx->lock);
	pthread_mutex_unlock(&tx->lock);
	if (started < n || first_failure(tx, err, errlen)) {
		mig_senders_close(tx);
		return NULL;
	}
	return tx;
}

unsigned mig_senders_count(const struct mig_senders *tx)
{
	return tx ? tx->n : 0;
}

void mig_senders_set_compress(struct mig_senders *tx, bool on)
{
	atomic_store(&tx->compress, on);
}

void mig_senders_set_rate(struct mig_senders *tx, uint64_t bytes_per_sec)
{
	atomic_store(&tx->rate, bytes_per_sec / tx->n);
}

int64_t mig_senders_round(struct mig_senders *tx, const uint8_t *ram, uint64_t npages,
			  const uint64_t *bitmap, const unsigned char *resident,
			  bool (*tick)(void *opaque), void *opaque, char *err, size_t errlen)
{
	tx->ram = ram;
	tx->words = (npages + 63) / 64;
	tx->bitmap = bitmap;
	tx->resident = resident;
	atomic_store(&tx->cursor, 0);
	tx->round++;
	if (run_job(tx, JOB_ROUND, tick, opaque, err, errlen))
		return -1;
	return (int64_t)tx->round;
}

int mig_senders_finish(struct mig_senders *tx, char *err, size_t errlen)
{
	return run_job(tx, JOB_END, NULL, NULL, err, errlen);
}

uint64_t mig_senders_bytes(const struct mig_senders *tx)
{
	uint64_t sum = 0;
	for (unsigned i = 0; tx && i < tx->n; i++)
		sum += atomic_load(&tx->senders[i].bytes);
	return sum;
}

uint64_t mig_senders_queued(const struct mig_senders *tx)
{
	uint64_t sum = 0;
	for (unsigned i = 0; tx && i < tx->n; i++)
		sum += mig_window_queued(&tx->senders[i].link);
	return sum;
}

void mig_senders_close(struct mig_senders *tx)
{
	if (!tx)
		return;
	pthread_mutex_lock(&tx->lock);
	tx->job = JOB_QUIT;
	tx->job_seq++;
	pthread_cond_broadcast(&tx->start);
	pthread_mutex_unlock(&tx->lock);
	for (unsigned i = 0; i < tx->n; i++) {
		struct sender *sd = &tx->senders[i];
		if (sd->started)
			pthread_join(sd->thread, NULL);
		if (sd->s)
			mig_stream_free(sd->s);
	}
	pthread_cond_destroy(&tx->start);
	pthread_cond_destroy(&tx->done);
	pthread_mutex_destroy(&tx->lock);
	free(tx);
}

/* ==== destination ================================================================= */

struct receiver {                       /* a joined channel */
	bool joined, ended;
	bool in_barrier;                /* waiting for the others */
	uint64_t synced;                /* the last round it applied */
};

struct conn {                           /* an accepted connection */
	struct mig_receivers *rx;
	pthread_t thread;
	int fd;                         /* -1 once closed (under rx->lock) */
	struct mig_stream *s;
	char who[96];
};

struct mig_receivers {
	int lfd, main_fd;
	struct mig_auth auth;
	uint8_t nonce[MIG_JOIN_NONCE];
	unsigned n;
	uint64_t ram_size;
	mig_page_sink sink;
	void *opaque;
	int stop_pipe[2];
	pthread_t acceptor;
	bool acceptor_started;
	uint64_t start_ms;
	atomic_uint_fast64_t progress_ms;       /* a channel's last section */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping, failed;
	char error[400];
	struct receiver slots[MIG_CHANNELS_MAX];
	struct conn conns[MAX_CONNS];
	unsigned nconns;
};

static void rx_fail(struct mig_receivers *rx, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void rx_fail(struct mig_receivers *rx, const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&rx->lock);
	bool first = !rx->failed && !rx->stopping;
	if (first) {
		rx->failed = true;
		va_start(ap, fmt);
		vsnprintf(rx->error, sizeof(rx->error), fmt, ap);
		va_end(ap);
	}
	pthread_cond_broadcast(&rx->cond);
	pthread_mutex_unlock(&rx->lock);
	if (first)      /* wake the main stream's reader: the migration failed */
		shutdown(rx->main_fd, SHUT_RD);
}

/* Constant time: the nonce is the only thing a stranger can guess at. */
static bool nonce_equal(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;
	for (unsigned i = 0; i < MIG_JOIN_NONCE; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

static uint64_t min_synced(const struct mig_receivers *rx)
{
	uint64_t m = UINT64_MAX;
	for (unsigned i = 0; i < rx->n; i++)
		if (rx->slots[i].synced < m)
			m = rx->slots[i].synced;
	return m;
}

static void conn_close(struct conn *c)
{
	pthread_mutex_lock(&c->rx->lock);
	struct mig_stream *s = c->s;
	c->s = NULL;
	c->fd = -1;
	pthread_mutex_unlock(&c->rx->lock);
	if (s)
		mig_stream_free(s);
}

static void conn_refuse(struct conn *c, const char *why)
{
	if (!c->rx->stopping)
		fprintf(stderr, "ferry-vm: refused a page channel from %s: %s\n", c->who, why);
	conn_close(c);
}

/* Secure, read JOIN, check it, take the slot, ACK: the slot's index, or
 * -1 (refused and closed). */
static int conn_join(struct conn *c)
{
	struct mig_receivers *rx = c->rx;
	char why[400];
	uint8_t nonce[MIG_JOIN_NONCE];
	uint32_t index, count;
	struct mig_channel *ch = mig_channel_server(c->fd, &rx->auth, HANDSHAKE_TIMEOUT_MS,
						    rx->stop_pipe[0], why, sizeof(why));
	if (!ch) {
		pthread_mutex_lock(&rx->lock);
		c->fd = -1;             /* the failed channel closed it */
		pthread_mutex_unlock(&rx->lock);
		conn_refuse(c, why);
		return -1;
	}
	struct mig_stream *s = mig_stream_new_channel(ch);
	pthread_mutex_lock(&rx->lock);
	c->s = s;
	pthread_mutex_unlock(&rx->lock);
	if (!s) {
		mig_channel_close(ch);
		conn_refuse(c, "out of memory");
		return -1;
	}
	mig_channel_set_deadline(ch, HANDSHAKE_TIMEOUT_MS);
	if (mig_read_join(s, nonce, &index, &count)) {
		conn_refuse(c, mig_stream_error(s));
		return -1;
	}
	if (!nonce_equal(nonce, rx->nonce)) {
		conn_refuse(c, "wrong join nonce: not a channel of the migration under way");
		return -1;
	}
	if (count != rx->n || index >= rx->n) {
		snprintf(why, sizeof(why), "channel %u of %u, where this migration has %u",
			 index, count, rx->n);
		conn_refuse(c, why);
		return -1;
	}
	pthread_mutex_lock(&rx->lock);
	bool taken = rx->slots[index].joined;
	rx->slots[index].joined = true;
	pthread_mutex_unlock(&rx->lock);
	if (taken) {
		snprintf(why, sizeof(why), "channel %u has joined already", index);
		conn_refuse(c, why);
		return -1;
	}
	if (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s)) {
		rx_fail(rx, "page channel %u: %s", index, mig_stream_error(s));
		return -1;
	}
	mig_channel_set_deadline(ch, 0);
	mig_stream_set_timeout(s, MIG_IO_TIMEOUT_S * 1000);
	mig_window_receiver(c->fd);
	atomic_store(&rx->progress_ms, mig_now_ms());
	return (int)index;
}

/* A SYNC: this channel applied its pages of `round`; wait for the others.
 * false when the migration is over meanwhile. */
static bool channel_barrier(struct mig_receivers *rx, unsigned index, uint64_t round)
{
	pthread_mutex_lock(&rx->lock);
	rx->slots[index].synced = round;
	rx->slots[index].in_barrier = true;
	pthread_cond_broadcast(&rx->cond);
	while (!rx->failed && !rx->stopping && min_synced(rx) < round)
		pthread_cond_wait(&rx->cond, &rx->lock);
	rx->slots[index].in_barrier = false;
	bool go_on = !rx->failed && !rx->stopping;
	pthread_mutex_unlock(&rx->lock);
	return go_on;
}

/* The test hook's channel 0 (lagging-channel, at the top): its pages of
 * the round, kept aside until the others are past it. */
struct lag_queue {
	struct mig_receivers *rx;
	uint8_t *entries;               /* u64 pfn, then the page */
	size_t n, cap;
};

#define LAG_ENTRY (8 + MIG_PAGE_SIZE)

static void lag_keep(void *opaque, uint64_t pfn, const void *page)
{
	struct lag_queue *q = opaque;
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 1024;
		uint8_t *e = realloc(q->entries, cap * LAG_ENTRY);
		if (!e) {                       /* the hook gives up, not the guest */
			q->rx->sink(q->rx->opaque, pfn, page);
			return;
		}
		q->entries = e;
		q->cap = cap;
	}
	memcpy(q->entries + q->n * LAG_ENTRY, &pfn, 8);
	memcpy(q->entries + q->n * LAG_ENTRY + 8, page, MIG_PAGE_SIZE);
	q->n++;
}

/* Every channel but `index` has read SYNC(round + 1) or END, or waits at
 * the barrier (with rx->lock held). */
static bool others_past(const struct mig_receivers *rx, unsigned index, uint64_t round)
{
	for (unsigned i = 0; i < rx->n; i++) {
		const struct receiver *r = &rx->slots[i];
		if (i != index && !r->ended && !r->in_barrier && r->synced <= round)
			return false;
	}
	return true;
}

/* At channel `index`'s SYNC(round): wait until the others are past it,
 * then apply the pages kept aside. */
static void lag_release(struct lag_queue *q, unsigned index, uint64_t round)
{
	struct mig_receivers *rx = q->rx;
	pthread_mutex_lock(&rx->lock);
	while (!rx->failed && !rx->stopping && !others_past(rx, index, round))
		pthread_cond_wait(&rx->cond, &rx->lock);
	bool go_on = !rx->failed && !rx->stopping;
	pthread_mutex_unlock(&rx->lock);
	for (size_t i = 0; go_on && i < q->n; i++) {
		uint64_t pfn;
		memcpy(&pfn, q->entries + i * LAG_ENTRY, 8);
		rx->sink(rx->opaque, pfn, q->entries + i * LAG_ENTRY + 8);
	}
	q->n = 0;
}

/* Pages, SYNCs and END of channel `index`, until END or the end; lag:
 * the test hook's queue, or NULL. */
static void channel_sections(struct conn *c, unsigned index, struct lag_queue *lag)
{
	struct mig_receivers *rx = c->rx;
	struct mig_pages_grammar g = { 0 };
	char err[400];
	for (;;) {
		/* idle while the main stream carries disks: wait in short
		 * steps so a stop is seen; liveness is the main stream's */
		int r = mig_stream_wait_readable(c->s, 200);
		if (rx->stopping)
			return;
		if (r == 0)
			continue;
		struct mig_section sec;
		if (mig_read_section(c->s, &sec, NULL, rx->ram_size)) {
			rx_fail(rx, "page channel %u: %s", index, mig_stream_error(c->s));
			return;
		}
		atomic_store(&rx->progress_ms, mig_now_ms());
		if (sec.type == MIG_SEC_ERROR) {
			rx_fail(rx, "page channel %u: the source gave up: %s", index, sec.text);
			return;
		}
		if (mig_pages_grammar_step(&g, &sec, err, sizeof(err))) {
			rx_fail(rx, "%s", err);
			return;
		}
		if (sec.type == MIG_SEC_SYNC && lag)
			lag_release(lag, index, sec.round);
		if (sec.type == MIG_SEC_SYNC && !channel_barrier(rx, index, sec.round))
			return;
		if (sec.type == MIG_SEC_END) {
			pthread_mutex_lock(&rx->lock);
			rx->slots[index].ended = true;
			pthread_cond_broadcast(&rx->cond);
			pthread_mutex_unlock(&rx->lock);
			return;
		}
	}
}

static void channel_read(struct conn *c, unsigned index)
{
	struct mig_receivers *rx = c->rx;
	struct lag_queue lag = { .rx = rx };
	bool lagging = index == 0 && rx->n > 1 && lagging_channel();
	mig_stream_set_sink(c->s, lagging ? lag_keep : rx->sink, lagging ? &lag : rx->opaque);
	channel_sections(c, index, lagging ? &lag : NULL);
	free(lag.entries);
}

static void *conn_thread(void *arg)
{
	struct conn *c = arg;
	int index = conn_join(c);
	if (index >= 0)
		channel_read(c, (unsigned)index);
	return NULL;
}

static void *acceptor_thread(void *arg)
{
	struct mig_receivers *rx = arg;
	struct pollfd p[2] = {
		{ .fd = rx->lfd, .events = POLLIN },
		{ .fd = rx->stop_pipe[0], .events = POLLIN },
	};
	for (;;) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return NULL;
		if (p[1].revents)
			return NULL;
		if (!(p[0].revents & POLLIN))
			continue;
		int fd = accept4(rx->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&rx->lock);
		struct conn *c = rx->nconns < MAX_CONNS && !rx->stopping
				 ? &rx->conns[rx->nconns] : NULL;
		if (c) {
			memset(c, 0, sizeof(*c));
			c->rx = rx;
			c->fd = fd;
			mig_peer_name(fd, c->who, sizeof(c->who));
			mig_socket_tune(fd);
			if (pthread_create(&c->thread, NULL, conn_thread, c) == 0)
				rx->nconns++;
			else
				c = NULL;
		}
		pthread_mutex_unlock(&rx->lock);
		if (!c) {
			fprintf(stderr, "ferry-vm: refused a page channel: too many connections "
				"for one migration\n");
			close(fd);
		}
	}
}

struct mig_receivers *mig_receivers_start(int lfd, const struct mig_auth *auth,
					  const uint8_t nonce[MIG_JOIN_NONCE], unsigned n,
					  uint64_t ram_size, mig_page_sink sink, void *opaque,
					  int main_fd, char *err, size_t errlen)
{
	struct mig_receivers *rx = calloc(1, sizeof(*rx));
	if (!rx) {
		snprintf(err, errlen, "out of memory for the page channels");
		return NULL;
	}
	rx->lfd = lfd;
	rx->main_fd = main_fd;
	rx->auth = *auth;
	memcpy(rx->nonce, nonce, MIG_JOIN_NONCE);
	rx->n = n;
	rx->ram_size = ram_size;
	rx->sink = sink;
	rx->opaque = opaque;
	rx->start_ms = mig_now_ms();
	atomic_init(&rx->progress_ms, rx->start_ms);
	pthread_mutex_init(&rx->lock, NULL);
	pthread_cond_init(&rx->cond, NULL);
	if (pipe2(rx->stop_pipe, O_CLOEXEC)) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		rx->stop_pipe[0] = rx->stop_pipe[1] = -1;
		mig_receivers_stop(rx);
		return NULL;
	}
	int e = pthread_create(&rx->acceptor, NULL, acceptor_thread, rx);
	if (e) {
		snprintf(err, errlen, "cannot start the page channels' thread: %s",
			 strerror(e));
		mig_receivers_stop(rx);
		return NULL;
	}
	rx->acceptor_started = true;
	return rx;
}

/* Why waiting longer makes no sense (with rx->lock held), or NULL. */
static const char *stuck(struct mig_receivers *rx, uint64_t idle_since, char *buf,
			 size_t len)
{
	uint64_t now = mig_now_ms();
	uint64_t last = atomic_load(&rx->progress_ms);
	if (rx->failed)
		return rx->error;
	for (unsigned i = 0; i < rx->n; i++)
		if (!rx->slots[i].joined && now - rx->start_ms > JOIN_TIMEOUT_MS) {
			snprintf(buf, len, "page channel %u did not join within %u s", i,
				 JOIN_TIMEOUT_MS / 1000);
			return buf;
		}
	if (idle_since > last)
		last = idle_since;
	if (now - last > IDLE_MS) {
		snprintf(buf, len, "the source sent nothing on any channel for %u s: is it "
			 "still alive?", IDLE_MS / 1000);
		return buf;
	}
	return NULL;
}

/* Wait, with rx->lock held, until done(rx, arg) or stuck. */
static int wait_until(struct mig_receivers *rx, bool (*done)(struct mig_receivers *, uint64_t),
		      uint64_t arg, char *err, size_t errlen)
{
	char buf[200];
	uint64_t since = mig_now_ms();
	pthread_mutex_lock(&rx->lock);
	for (;;) {
		if (done(rx, arg))
			break;
		const char *why = stuck(rx, since, buf, sizeof(buf));
		if (why) {
			snprintf(err, errlen, "%s", why);
			pthread_mutex_unlock(&rx->lock);
			return -1;
		}
		struct timespec ts;
		deadline_in(&ts, 100);
		pthread_cond_timedwait(&rx->cond, &rx->lock, &ts);
	}
	pthread_mutex_unlock(&rx->lock);
	return 0;
}

static bool all_synced(struct mig_receivers *rx, uint64_t round)
{
	return min_synced(rx) >= round;
}

static bool all_ended(struct mig_receivers *rx, uint64_t unused)
{
	(void)unused;
	for (unsigned i = 0; i < rx->n; i++)
		if (!rx->slots[i].ended)
			return false;
	return true;
}

int mig_receivers_sync(struct mig_receivers *rx, uint64_t round, char *err, size_t errlen)
{
	return wait_until(rx, all_synced, round, err, errlen);
}

int mig_receivers_finish(struct mig_receivers *rx, char *err, size_t errlen)
{
	return wait_until(rx, all_ended, 0, err, errlen);
}

bool mig_receivers_alive(struct mig_receivers *rx, uint64_t main_idle_ms, char *err,
			 size_t errlen)
{
	char buf[200];
	pthread_mutex_lock(&rx->lock);
	const char *why = stuck(rx, main_idle_ms, buf, sizeof(buf));
	if (why)
		snprintf(err, errlen, "%s", why);
	pthread_mutex_unlock(&rx->lock);
	return why == NULL;
}

void mig_receivers_stop(struct mig_receivers *rx)
{
	if (!rx)
		return;
	pthread_mutex_lock(&rx->lock);
	rx->stopping = true;
	pthread_cond_broadcast(&rx->cond);
	for (unsigned i = 0; i < rx->nconns; i++)
		if (rx->conns[i].fd >= 0)
			shutdown(rx->conns[i].fd, SHUT_RDWR);
	pthread_mutex_unlock(&rx->lock);
	if (rx->stop_pipe[1] >= 0 && write(rx->stop_pipe[1], "x", 1) < 0)
		perror("ferry-vm: page channels: stop");
	if (rx->acceptor_started)
		pthread_join(rx->acceptor, NULL);
	for (unsigned i = 0; i < rx->nconns; i++) {
		pthread_join(rx->conns[i].thread, NULL);
		conn_close(&rx->conns[i]);
	}
	if (rx->stop_pipe[0] >= 0) {
		close(rx->stop_pipe[0]);
		close(rx->stop_pipe[1]);
	}
	pthread_cond_destroy(&rx->cond);
	pthread_mutex_destroy(&rx->lock);
	free(rx);
}
