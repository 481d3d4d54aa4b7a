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
#include "migrate/migrate.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static int listen_tcp(const char *uri, char *err, size_t errlen)
{
	char host[256], port[32];
	if (mig_parse_tcp(uri, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "bad uri '%s': want tcp:HOST:PORT", uri);
		return -1;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	int r = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (r) {
		snprintf(err, errlen, "%s: %s", uri, gai_strerror(r));
		return -1;
	}
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	int one = 1;
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1)) {
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

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

/* Receive sections until END. Returns 0, or -1 with err filled. */
static int receive_state(struct vmm *v, struct mig_stream *s, uint64_t guest_ram,
			 bool *postcopy, char *err, size_t errlen)
{
	struct machine *m = v->machine;
	bool have_digest = false;
	uint64_t pages = 0, npages = m->ram_size / PAGE_SIZE;
	static const uint8_t zeros[PAGE_SIZE];
	struct page_store ps = { m, malloc(npages * sizeof(uint64_t)), mig_page_hash(zeros) };
	if (!ps.hash) {
		snprintf(err, errlen, "out of memory for the page hashes");
		return -1;
	}
	for (uint64_t i = 0; i < npages; i++)
		ps.hash[i] = ps.zero_hash;      /* RAM here starts zeroed */
	mig_stream_set_sink(s, page_store, &ps);
	int r = -1;
	*postcopy = false;
	for (;;) {
		struct mig_section sec;
		if (mig_read_section(s, &sec, m->ram, m->ram_size)) {
			snprintf(err, errlen, "%s", mig_stream_error(s));
			goto out;
		}
		switch (sec.type) {
		case MIG_SEC_RAM:       /* pages are already in RAM */
			pages += sec.pages;
			fault_round(pages, m->ram_size / PAGE_SIZE);
			break;
		case MIG_SEC_DIGEST: {
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
			have_digest = true;
			break;
		}
		case MIG_SEC_POSTCOPY:
			*postcopy = true;
			if (postcopy_incoming_begin(v, s, &sec, err, errlen))
				goto out;
			break;
		case MIG_SEC_END:
			if (!have_digest && !*postcopy) {
				snprintf(err, errlen, "stream ended without a memory digest");
				goto out;
			}
			r = 0;
			goto out;
		case MIG_SEC_ERROR:
			snprintf(err, errlen, "source gave up: %.*s", (int)sec.len,
				 (const char *)sec.data);
			goto out;
		default:
			if (vmstate_load(m, &sec, err, errlen))
				goto out;
		}
	}
out:
	mig_stream_set_sink(s, NULL, NULL);
	free(ps.hash);
	return r;
}


/* The common part of tcp and file: configuration, then state. */
static int receive(struct vmm *v, struct mig_stream *s, bool two_way, bool *postcopy,
		   char *err, size_t errlen)
{
	struct mig_config local, remote;
	char why[256];
	if (!s) {
		snprintf(err, errlen, "out of memory for the migration stream");
		return -1;
	}
	vmstate_config(v, &local);
	if (two_way && (mig_write_config(s, &local) || mig_flush(s))) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return -1;
	}
	if (mig_read_config(s, &remote)) {
		snprintf(err, errlen, "%s", mig_stream_error(s));
		return -1;
	}
	fault_point("handshake");
	if (mig_config_check(&remote, &local, why, sizeof(why))) {
		snprintf(err, errlen, "cannot run this guest here: %s", why);
		if (two_way)
			mig_send_error(s, why);
		return -1;
	}
	if (two_way && (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s))) {
		snprintf(err, errlen, "handshake: %s", mig_stream_error(s));
		return -1;
	}
	if (receive_state(v, s, remote.ram_size, postcopy, err, errlen)) {
		if (two_way)
			mig_send_error(s, err);
		return -1;
	}
	return 0;
}

/* Confirm, wait for the source to let go of the disks, take them. */
static int take_over(struct vmm *v, struct mig_stream *s, char *err, size_t errlen)
{
	char why[256];
	const char *reason = NULL;
	fault_point("switchover");
	if (mig_write_section(s, MIG_SEC_ACK, NULL, 0) || mig_flush(s)) {
		snprintf(err, errlen, "confirming: %s", mig_stream_error(s));
		return -1;
	}
	if (mig_expect(s, MIG_SEC_RELEASED, why, sizeof(why))) {
		snprintf(err, errlen, "source did not hand over: %s", why);
		return -1;
	}
	fault_point("released");
	if (vmstate_acquire(v->machine, &reason)) {
		snprintf(err, errlen, "cannot take over devices: %s", reason);
		mig_send_error(s, err);
		return -1;
	}
	fault_point("acquired");
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

int vmm_incoming(struct vmm *v, const char *uri, char *err, size_t errlen)
{
	bool postcopy = false;
	struct mig_stream *s;
	v->in = (struct migration *)v;      /* marks "incoming" for query-status */

	if (!strncmp(uri, "file:", 5)) {
		int fd = open(uri + 5, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			snprintf(err, errlen, "%s: %s", uri + 5, strerror(errno));
			return -1;
		}
		s = mig_stream_new(fd);
		int r = receive(v, s, false, &postcopy, err, errlen);
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

	int lfd = listen_tcp(uri, err, errlen);
	if (lfd < 0)
		return -1;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	close(lfd);
	if (fd < 0) {
		snprintf(err, errlen, "accept on %s: %s", uri, strerror(errno));
		return -1;
	}
	mig_socket_tune(fd);
	s = mig_stream_new(fd);
	if (receive(v, s, true, &postcopy, err, errlen) || take_over(v, s, err, errlen)) {
		mig_stream_free(s);
		close(fd);
		return -1;
	}
	v->in = NULL;
	if (postcopy)
		return postcopy_incoming_run(v, s, fd, err, errlen);
	mig_stream_free(s);
	close(fd);
	return start_guest(v, err, errlen);
}
