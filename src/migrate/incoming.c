/*
 * incoming.c - the destination side of a live migration, and restore.
 *
 * `ferry-vm --incoming tcp:HOST:PORT` builds the same board as the source
 * but boots nothing: it waits for one connection, states what it can run,
 * checks what the source sends, and writes pages straight into guest RAM
 * (the guest is not running here yet, so nothing races with it). CPU and
 * device state, the clock and a digest of all of RAM close the stream;
 * the guest starts only when the digest matches, the source has released
 * the disks and we hold them. Any error before that ends this process
 * with the reason and never runs a guest with wrong memory.
 * `--incoming file:PATH` reads a saved stream the same way, one-way.
 */
#include "migrate/channel.h"
#include "migrate/channels.h"
#include "migrate/diskstream.h"
#include "migrate/grammar.h"
#include "migrate/migrate.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

/* Fault injection for the tests: FERRY_TEST_FAULT=POINT makes this process
 * die at POINT exactly as if it were killed there. Points: handshake (the
 * source's configuration read, nothing answered), round1 (the first pages
 * received), later-rounds (past the first full copy of RAM, into the
 * rounds of dirty pages), switchover (all state received, not confirmed),
 * released (the source let go of the disks, not answered), acquired (the
 * disks taken here, the source not told). */
static void fault_point(const char *point)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	if (want && !strcmp(want, point))
		_exit(9);
	/* stall:POINT hangs there instead, as a destination gone silent */
	if (want && !strncmp(want, "stall:", 6) && !strcmp(want + 6, point))
		for (;;)
			pause();
}

static void fault_round(uint64_t pages_received, uint64_t ram_pages)
{
	const char *want = getenv("FERRY_TEST_FAULT");
	if (want && (!strcmp(want, "round1") ||
		     (!strcmp(want, "later-rounds") && pages_received > ram_pages)))
		_exit(9);
}

/* How long a peer that has not yet proven itself (TLS, the secret, a
 * well-formed configuration) may hold the listener. */
#define HANDSHAKE_TIMEOUT_MS 5000

/* Pages land in RAM through here, which also keeps each page's hash, so
 * that checking the source's digest at switchover costs no pass over RAM. */
struct page_store {
	struct machine *m;
	uint64_t *hash;         /* of each page as it stands in RAM here */
	uint64_t zero_hash;
};

static void page_store(void *opaque, uint64_t pfn, const void *page)
{
	struct page_store *ps = opaque;
	uint64_t h = mig_page_hash(page);
	/* a zero page onto a page that is zero already: most of a first
	 * round; skipping it leaves untouched guest RAM unmapped here too */
	if (h == ps->zero_hash && ps->hash[pfn] == ps->zero_hash && mig_page_is_zero(page))
		return;
	memcpy(ps->m->ram + pfn * PAGE_SIZE, page, PAGE_SIZE);
	ps->hash[pfn] = h;
}

/* Where page channels come from (a live migration): the listening
 * socket, how they prove themselves, and this migration's join nonce. */
struct channel_setup {
	int lfd;
	const struct mig_auth *auth;
	uint8_t nonce[MIG_JOIN_NONCE];
};

/* With page channels the main stream may rest while they carry a round:
 * wait for its next section in steps, failing when a channel failed or
 * nothing moved anywhere for too long. 0, or -1 with err. */
static int wait_main(struct mig_receivers *rx, struct mig_stream *s, char *err,
		     size_t errlen)
{
	uint64_t idle_since = mig_now_ms();
	while (rx) {
		int r = mig_stream_wait_readable(s, 200);
		if (r != 0)
			return 0;       /* a section, or an error the read will tell */
		if (!mig_receivers_alive(rx, idle_since, err, errlen))
			return -1;
	}
	return 0;
}

/* Start the page channels a multi-channel source asked for. */
static struct mig_receivers *start_channels(const struct channel_setup *cs,
					    const struct mig_config *remote, uint64_t ram_size,
					    struct page_store *ps, struct mig_stream *s,
					    char *err, size_t errlen)
{
	char why[300];
	struct mig_receivers *rx = mig_receivers_start(
		cs->lfd, cs->auth, cs->nonce, remote->channels, ram_size, page_store, ps,
		mig_channel_fd(mig_stream_channel(s)), why, sizeof(why));
	if (!rx)
		snprintf(err, errlen, "page channels: %s", why);
	return rx;
}

/* Receive sections until END. Returns 0, or -1 with err filled. */
static int receive_state(struct vmm *v, struct mig_stream *s,
			 const struct mig_config *remote, struct disk_sink *dk,
			 const struct channel_setup *cs, bool *postcopy, char *err, size_t errlen)
{
	bool live = cs != NULL;
	struct mig_receivers *rx = NULL;
	struct machine *m = v->machine;
	uint64_t guest_ram = remote->ram_size;
	struct mig_grammar grammar;
	uint64_t pages = 0, npages = m->ram_size / PAGE_SIZE;
	static const uint8_t zeros[PAGE_SIZE];
	struct page_store ps = { m, malloc(npages * sizeof(uint64_t)), mig_page_hash(zeros) };
	int r = -1;
	*postcopy = false;
	mig_grammar_init(&grammar, remote, live);
	if (!ps.hash) {
		snprintf(err, errlen, "out of memory for the page hashes");
		return -1;
	}
	for (uint64_t i = 0; i < npages; i++)
		ps.hash[i] = ps.zero_hash;      /* RAM here starts zeroed */
	mig_stream_set_sink(s, page_store, &ps);
	if (live && remote->channels > 1 &&
	    !(rx = start_channels(cs, remote, m->ram_size, &ps, s, err, errlen)))
		goto out;
	for (;;) {
		struct mig_section sec;
		if (wait_main(rx, s, err, errlen))
			goto out;
		if (mig_read_section(s, &sec, m->ram, m->ram_size)) {
			/* a failed page channel cut the main stream short */
			if (!rx || mig_receivers_alive(rx, mig_now_ms(), err, errlen))
				snprintf(err, errlen, "%s", mig_stream_error(s));
			goto out;
		}
		if (sec.type == MIG_SEC_ERROR) {
			snprintf(err, errlen, "source gave up: %s", sec.text);
			goto out;
		}
		if (mig_grammar_step(&grammar, &sec, err, errlen))
			goto out;
		switch (sec.type) {
		case MIG_SEC_RAM:       /* pages are already in RAM */
			pages += sec.pages;
			fault_round(pages, m->ram_size / PAGE_SIZE);
			break;
		case MIG_SEC_SYNC:      /* every channel's pages of that round are in */
			if (mig_receivers_sync(rx, sec.round, err, errlen))
				goto out;
			break;
		case MIG_SEC_DIGEST: {
			/* every page channel is done writing RAM */
			if (rx && mig_receivers_finish(rx, err, errlen))
				goto out;
			/* the guest's RAM: this machine may have more */
			uint64_t mine = mig_digest_of_hashes(ps.hash, guest_ram / PAGE_SIZE,
							     guest_ram);
			if (mine != sec.digest) {
				snprintf(err, errlen, "memory digest mismatch after transfer "
					 "(source %016llx, here %016llx): refusing to run",
					 (unsigned long long)sec.digest,
					 (unsigned long long)mine);
				goto out;
			}
			break;
		}
		case MIG_SEC_DISK:
			fault_point("disk");
			if (disk_sink_extent(dk, &sec, err, errlen))
				goto out;
			break;
		case MIG_SEC_DISK_DIGEST:
			if (disk_sink_verify(dk, &sec, err, errlen))
				goto out;
			break;
		case MIG_SEC_POSTCOPY:
			if (rx && mig_receivers_finish(rx, err, errlen))
				goto out;
			*postcopy = true;
			if (postcopy_incoming_begin(v, s, &sec, err, errlen))
				goto out;
			break;
		case MIG_SEC_END:       /* the grammar saw the digest or post-copy */
			r = 0;
			goto out;
		default:
			if (vmstate_load(m, &sec, err, errlen))
				goto out;
		}
	}
out:
	mig_receivers_stop(rx);         /* before the hashes its threads write go */
	mig_stream_set_sink(s, NULL, NULL);
	free(ps.hash);
	return r;
}


/* receive()'s answers besides 0 */
#define RECV_FAILED     (-1)    /* the migration failed: end with the reason */
#define RECV_REJECTED   (-2)    /* the peer never spoke the protocol: wait on */

static bool quitting(struct vmm *v)
{
	return atomic_load(&v->machine->exit_reason) != EXIT_NONE;
}

/* The common part of tcp and file: configuration, then state. On a
 * connection the peer has HANDSHAKE_TIMEOUT_MS for the whole exchange of
 * configurations; one that sends nothing, garbage or too little in that
 * time is RECV_REJECTED, not a failed migration. */
static int receive(struct vmm *v, struct mig_stream *s, struct channel_setup *cs,
		   bool *postcopy, struct disk_sink **dk, char *err, size_t errlen)
{
	struct mig_config local, remote;
	char why[256];
	bool two_way = cs != NULL;
	if (!s) {
		snprintf(err, errlen, "out of memory for the migration stream");
		return -1;
	}
	vmstate_config(v, &local);
	/* page channels must present this (docs/stream.md "Page channels") */
	if (two_way && getrandom(cs->nonce, sizeof(cs->nonce), 0) == sizeof(cs->nonce)) {
		local.has_join = true;
		memcpy(local.join, cs->nonce, sizeof(local.join));
	}
	if (two_way)
		mig_channel_set_deadline(mig_stream_channel(s), HANDSHAKE_TIMEOUT_MS);
	if ((two_way && (mig_write_config(s, &local) || mig_flush(s))) ||
	    mig_read_config(s, &remote)) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return two_way && !mig_stream_peer_gave_up(s) && !quitting(v) ? RECV_REJECTED
									       : RECV_FAILED;
	}
	fault_point("handshake");
	if (mig_config_check(&remote, &local, why, sizeof(why))) {
		snprintf(err, errlen, "cannot run this guest here: %s", why);
		if (two_way)
			mig_send_error(s, why);
		return RECV_FAILED;
	}
	/* disks: copy: our own images, locked from here on, new and empty */
	if (remote.copy_disks && !(*dk = disk_sink_open(v, &remote, why, sizeof(why)))) {
		snprintf(err, errlen, "cannot run this guest here: %s", why);
		if (two_way)
			mig_send_error(s, why);
		return RECV_FAILED;
	}
	if (two_way && (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s))) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return RECV_FAILED;
	}
	if (two_way) {
		mig_channel_set_deadline(mig_stream_channel(s), 0);
		mig_window_receiver(mig_channel_fd(mig_stream_channel(s)));
	}
	if (remote.channels > 1 && !local.has_join) {
		snprintf(err, errlen, "cannot take page channels: no random nonce for them");
		if (two_way)
			mig_send_error(s, err);
		return RECV_FAILED;
	}
	if (receive_state(v, s, &remote, *dk, cs, postcopy, err, errlen)) {
		if (two_way)
			mig_send_error(s, quitting(v) ? "the destination was told to quit" : err);
		return RECV_FAILED;
	}
	return 0;
}

/* Confirm, wait for the source to let go of the disks, take them, and
 * tell the source the guest runs here. A quit before that last word
 * fails the migration, so the source resumes: the guest is never told
 * gone from there and then dropped here. */
static int take_over(struct vmm *v, struct mig_stream *s, char *err, size_t errlen)
{
	char why[256];
	const char *reason = NULL;
	fault_point("switchover");
	if (quitting(v)) {
		snprintf(err, errlen, "told to quit before the guest started here");
		mig_send_error(s, "the destination was told to quit");
		return -1;
	}
	if (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s)) {
		snprintf(err, errlen, "confirming: %s", mig_stream_error(s));
		return -1;
	}
	if (mig_expect(s, MIG_SEC_RELEASED, why, sizeof(why))) {
		snprintf(err, errlen, "source did not hand over: %s", why);
		if (quitting(v))
			mig_send_error(s, "the destination was told to quit");
		return -1;
	}
	fault_point("released");
	if (vmstate_acquire(v->machine, &reason)) {
		snprintf(err, errlen, "cannot take over devices: %s", reason);
		mig_send_error(s, err);
		return -1;
	}
	fault_point("acquired");
	if (quitting(v)) {
		snprintf(err, errlen, "told to quit before the guest started here");
		vmstate_release(v->machine, &reason);
		mig_send_error(s, "the destination was told to quit");
		return -1;
	}
	if (mig_write_section(s, MIG_SEC_STARTED, NULL, 0) || mig_flush(s)) {
		/* the source may now reclaim the disks: do not run */
		snprintf(err, errlen, "telling the source we run: %s", mig_stream_error(s));
		vmstate_release(v->machine, &reason);
		return -1;
	}
	return 0;
}

static int start_guest(struct vmm *v, char *err, size_t errlen)
{
	if (machine_start(v->machine)) {
		snprintf(err, errlen, "cannot start threads");
		return -1;
	}
	vmstate_resumed_elsewhere(v->machine);
	vmm_event(v, "RESUME", json_object());
	return 0;
}

/* ---- --incoming tcp:HOST:PORT[,secret-file=FILE] ----------------------------------- */

struct incoming_spec {
	char uri[300];                  /* tcp:HOST:PORT or file:PATH */
	struct mig_secret secret;       /* len 0: none */
};

static int parse_spec(const char *spec, struct incoming_spec *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (!strncmp(spec, "file:", 5)) {
		snprintf(out->uri, sizeof(out->uri), "%s", spec);
		return 0;
	}
	const char *comma = strchr(spec, ',');
	size_t n = comma ? (size_t)(comma - spec) : strlen(spec);
	char host[256], port[32];
	if (n >= sizeof(out->uri)) {
		snprintf(err, errlen, "--incoming: address too long");
		return -1;
	}
	memcpy(out->uri, spec, n);
	out->uri[n] = 0;
	if (mig_parse_tcp(out->uri, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "--incoming '%s': want tcp:HOST:PORT[,secret-file=FILE] or "
			 "file:PATH", spec);
		return -1;
	}
	if (!comma)
		return 0;
	if (strncmp(comma + 1, "secret-file=", 12) || !comma[13]) {
		snprintf(err, errlen, "--incoming: unknown option '%s' (want "
			 "secret-file=FILE)", comma + 1);
		return -1;
	}
	return mig_secret_load(comma + 13, &out->secret, err, errlen);
}

int mig_incoming_check(const char *spec, bool tls, char *err, size_t errlen)
{
	struct incoming_spec *is = malloc(sizeof(*is));
	if (!is) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	int r = parse_spec(spec, is, err, errlen);
	if (r == 0 && !strncmp(spec, "file:", 5) && tls) {
		snprintf(err, errlen, "--tls-creds is for migrations over TCP, not file:");
		r = -1;
	}
	explicit_bzero(is, sizeof(*is));
	free(is);
	return r;
}

/* Wait for a connection, or for `quit`: the socket, or -1 (err says why;
 * *quit set if that was it). */
static int accept_or_quit(struct vmm *v, int lfd, bool *quit, char *err, size_t errlen)
{
	struct pollfd p[2] = {
		{ .fd = lfd, .events = POLLIN },
		{ .fd = v->machine->exit_pipe[0], .events = POLLIN },
	};
	*quit = false;
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			snprintf(err, errlen, "poll: %s", strerror(errno));
			return -1;
		}
		if (p[1].revents || quitting(v)) {
			*quit = true;
			snprintf(err, errlen, "told to quit while waiting");
			return -1;
		}
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
			snprintf(err, errlen, "accept: %s", strerror(errno));
			return -1;
		}
	}
}

void mig_peer_name(int fd, char *buf, size_t len)
{
	struct sockaddr_storage sa;
	socklen_t sl = sizeof(sa);
	char host[NI_MAXHOST], port[NI_MAXSERV];
	if (getpeername(fd, (struct sockaddr *)&sa, &sl) ||
	    getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV))
		snprintf(buf, len, "an unknown peer");
	else
		snprintf(buf, len, "%.64s port %.16s", host, port);
}

/* Serve connections until one migration succeeds or fails for real.
 * Returns 0 with *s the stream of a migration that is ready to start,
 * 1 if told to quit, -1 on failure. */
static int serve(struct vmm *v, int lfd, const struct mig_auth *auth, const char *uri,
		 struct mig_stream **out, bool *postcopy, char *err, size_t errlen)
{
	for (;;) {
		bool quit;
		char who[300], why[600];
		int fd = accept_or_quit(v, lfd, &quit, err, errlen);
		if (fd < 0)
			return quit ? 1 : -1;
		mig_socket_tune(fd);
		mig_peer_name(fd, who, sizeof(who));
		struct mig_channel *ch = mig_channel_server(fd, auth, HANDSHAKE_TIMEOUT_MS,
							    v->machine->exit_pipe[0], why,
							    sizeof(why));
		if (!ch) {
			if (quitting(v))
				return 1;
			fprintf(stderr, "ferry-vm: %s: refused a connection from %s: %s; still "
				"waiting\n", uri, who, why);
			continue;
		}
		struct mig_stream *s = mig_stream_new_channel(ch);
		struct disk_sink *dk = NULL;
		struct channel_setup cs = { .lfd = lfd, .auth = auth };
		int r = receive(v, s, &cs, postcopy, &dk, err, errlen);
		if (r == 0 && take_over(v, s, err, errlen))
			r = RECV_FAILED;
		if (r == 0) {
			disk_sink_free(dk);     /* the copies are the guest's disks now */
			*out = s;
			return 0;
		}
		disk_sink_abandon(dk);          /* a partial copy is no disk */
		mig_stream_free(s);
		if (quitting(v))
			return 1;
		if (r == RECV_FAILED)
			return -1;
		fprintf(stderr, "ferry-vm: %s: dropped a connection from %s: %s; still "
			"waiting\n", uri, who, err);
	}
}

int mig_restore_state(struct vmm *v, struct mig_stream *s, char *err, size_t errlen)
{
	bool postcopy = false;
	struct disk_sink *dk = NULL;
	int r = receive(v, s, NULL, &postcopy, &dk, err, errlen) ? -1 : 0;
	if (r)
		disk_sink_abandon(dk);
	else
		disk_sink_free(dk);
	return r;
}

static int restore_file(struct vmm *v, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	struct mig_stream *s = mig_stream_new(fd);
	int r = mig_restore_state(v, s, err, errlen);
	const char *reason = NULL;
	if (r == 0 && vmstate_acquire(v->machine, &reason)) {
		snprintf(err, errlen, "cannot take over devices: %s", reason);
		r = -1;
	}
	mig_stream_free(s);
	close(fd);
	if (r)
		return -1;
	v->in = NULL;
	return start_guest(v, err, errlen);
}

int vmm_incoming(struct vmm *v, const char *spec, char *err, size_t errlen)
{
	bool postcopy = false;
	struct mig_stream *s = NULL;
	struct incoming_spec *is = calloc(1, sizeof(*is));
	v->in = (struct migration *)v;      /* marks "incoming" for query-status */
	if (!is) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (parse_spec(spec, is, err, errlen)) {
		free(is);
		return -1;
	}
	if (!strncmp(is->uri, "file:", 5)) {
		int r = restore_file(v, is->uri + 5, err, errlen);
		free(is);
		return r;
	}
	struct mig_auth auth = { v->tls, is->secret.len ? &is->secret : NULL };
	if (!auth.tls && !auth.secret)
		fprintf(stderr, "ferry-vm: warning: %s accepts a migration from anyone who can "
			"reach it; give --tls-creds DIR or secret-file=FILE to require proof\n",
			is->uri);
	int lfd = mig_tcp_listen(is->uri, err, errlen);
	int r = lfd < 0 ? -1 : serve(v, lfd, &auth, is->uri, &s, &postcopy, err, errlen);
	if (lfd >= 0)
		close(lfd);
	explicit_bzero(is, sizeof(*is));
	free(is);
	if (r == 1) {
		/* quit: no guest ran here and no source was told one did; the
		 * main loop sees the quit and ends the process */
		fprintf(stderr, "ferry-vm: quit while waiting for a migration: no guest ran "
			"here\n");
		return 0;
	}
	if (r)
		return -1;
	v->in = NULL;
	if (postcopy)
		return postcopy_incoming_run(v, s, -1, err, errlen);
	mig_stream_free(s);
	return start_guest(v, err, errlen);
}
