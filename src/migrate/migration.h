/*
 * migration.h - what the outgoing, incoming and post-copy sides share.
 */
#ifndef FERRY_MIGRATION_H
#define FERRY_MIGRATION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/channel.h"
#include "migrate/window.h"

struct vmm;
struct machine;
struct mig_stream;
struct mig_config;

enum mig_status {
	MIG_NONE, MIG_SETUP, MIG_ACTIVE, MIG_POSTCOPY, MIG_COMPLETED, MIG_FAILED,
	MIG_CANCELLED,
};

struct migration {
	struct vmm *vmm;
	pthread_t thread;
	pthread_mutex_t lock;           /* guards everything below */
	enum mig_status status;
	char error[256];
	char phase[160];                /* what the planner last decided, and why */
	int fd;

	/* parameters; migrate-set-parameters changes the numbers while it
	 * runs, so they are read under the lock */
	char uri[256];
	uint64_t downtime_ms, bandwidth_mbps, max_total_s;
	bool postcopy;
	bool copy_disks;                /* disks: copy (diskstream.c) */
	struct disk_source *disks;      /* its state, outgoing thread only */
	unsigned channels;              /* page channels asked for (1: pages on the main) */
	bool remote_config_read;        /* the destination's CONFIG read and checked */
	bool config_acked;              /* the destination said yes to our CONFIG */
	struct mig_senders *senders;    /* channels.c, when >1 joined (outgoing thread) */
	struct mig_secret secret;       /* proves us to the destination (len 0: none) */
	atomic_bool cancel;

	/* figures for query-migrate */
	uint64_t start_ms, setup_ms, total_ms, downtime_ms_measured;
	uint64_t transferred, remaining, rounds, bandwidth_bps, expected_downtime_ms;
	uint64_t postcopy_requests;
	int throttle_pct;
	bool stalled;
	bool done;                      /* handed off: the guest runs elsewhere */
	uint64_t predicted_total_ms;    /* the planner's forecast; UINT64_MAX: none */
	uint64_t predicted_downtime_ms;
	uint64_t throttled_ms;          /* guest time the throttle took, past rounds */
	uint64_t round_start_ms;        /* the round under way (0: none) */
	uint64_t pause_start_ms;        /* the switchover under way (0: none) */

	/* pre-copy's dirty-rate sample, taken early in each round before the
	 * hot set saturates (only the outgoing thread touches these) */
	bool sample_dirty;
	uint64_t sample_ms, sample_pages;
	struct mig_watchdog *watchdog;  /* deadline.h */
	struct mig_window link;         /* window.h (outgoing thread only) */
	struct mig_window link_shown;   /* its copy for query-migrate, under lock */
};

uint64_t mig_now_ms(void);

/* tcp.c: "tcp:HOST:PORT" endpoints */
#define MIG_IO_TIMEOUT_S 10     /* a silent peer for this long is dead */
int mig_parse_tcp(const char *uri, char *host, size_t hostlen, char *port, size_t portlen);
void mig_socket_tune(int fd);
/* Connect to the first address of uri that answers (host receives its
 * HOST part, for TLS name checks); listen on uri. -1 with err. */
int mig_tcp_connect(const char *uri, char *host, size_t hostlen, char *err, size_t errlen);
int mig_tcp_listen(const char *uri, char *err, size_t errlen);
/* "ADDRESS port N" of a connected socket's peer, for messages. */
void mig_peer_name(int fd, char *buf, size_t len);

/* vmstate.c: the machine as stream sections */
void vmstate_config(struct vmm *v, struct mig_config *cfg);
int vmstate_send(struct machine *m, struct mig_stream *s);
struct mig_section;
int vmstate_load(struct machine *m, const struct mig_section *sec, char *err, size_t errlen);
int vmstate_release(struct machine *m, const char **why);
int vmstate_acquire(struct machine *m, const char **why);
bool vmstate_has_disks(struct machine *m);
void vmstate_resumed_elsewhere(struct machine *m);

/* postcopy.c; postcopy_run returns 0 (handed over), -1 (failed, the guest
 * runs here again) or -2 (the outcome is unknown: it stays paused) */
int postcopy_run(struct migration *mg, struct mig_stream *s, uint64_t *bitmap);
int postcopy_incoming_begin(struct vmm *v, struct mig_stream *s,
			    const struct mig_section *sec, char *err, size_t errlen);
int postcopy_incoming_run(struct vmm *v, struct mig_stream *s, int fd, char *err,
			  size_t errlen);

#endif
