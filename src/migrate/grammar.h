/*
 * grammar.h - the order of the sections a destination accepts.
 *
 * Checksums say a section arrived as it was written, not that the stream
 * makes sense: a stream may leave a hart's state out, send pages after
 * the digest, or ask a file restore for post-copy. The destination runs
 * every section through this checker before acting on it. After the
 * CONFIG section (mig_read_config) a stream is:
 *
 *   RAM*  CPU(hart 0) .. CPU(hart N-1)  DEVICE(d0) .. DEVICE(dK-1)  CLOCK
 *         ( DIGEST | POSTCOPY )  END
 *
 * With disks: copy (the configuration's copy_disks), DISK extents mix with
 * the pages, and DISK_DIGEST(0) .. DISK_DIGEST(n-1) close them before the
 * first CPU: no pages or extents after the first disk digest.
 * With channels (the configuration's channels > 1), SYNC(1), SYNC(2), ...
 * mark the ends of the rounds among the pages, each round once and in
 * order, none after the first disk digest or CPU: the pages themselves
 * travel on the page channels, whose own order mig_pages_grammar_step()
 * checks:  JOIN ( RAM* SYNC(r) )* END  with r = 1, 2, 3, ...
 * with N the configuration's harts and d0..dK-1 its devices, each exactly
 * once and in the configuration's order. POSTCOPY only on a live stream
 * (a connection to a source that can still serve pages), never in a file.
 * Pure bookkeeping: no I/O, no machine, so the fuzzer runs it as is.
 */
#ifndef FERRY_GRAMMAR_H
#define FERRY_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mig_config;
struct mig_section;

enum mig_grammar_phase {
	MIG_G_RAM,              /* pages; the state has not begun */
	MIG_G_CPU,              /* hart records */
	MIG_G_DEVICE,           /* device records */
	MIG_G_CLOCK,            /* clock seen: DIGEST or POSTCOPY next */
	MIG_G_CLOSED,           /* DIGEST or POSTCOPY seen: END next */
	MIG_G_END,              /* END seen: nothing more */
};

struct mig_grammar {
	const struct mig_config *cfg;   /* the stream's own configuration */
	bool live;                      /* a connection, not a file */
	enum mig_grammar_phase phase;
	uint32_t next_hart;
	unsigned next_device;
	bool postcopy;                  /* closed by POSTCOPY, not DIGEST */
	unsigned next_disk_digest;      /* disks: copy: disks verified so far */
	uint64_t last_sync;             /* channels: the last round closed */
};

void mig_grammar_init(struct mig_grammar *g, const struct mig_config *cfg, bool live);
/* May sec come next? 0 and the step taken; -1 with the reason in err.
 * ERROR sections are the caller's business (the peer gave up). */
int mig_grammar_step(struct mig_grammar *g, const struct mig_section *sec, char *err,
		     size_t errlen);

/* A page channel's sections after its JOIN: pages, the rounds' SYNCs
 * numbered 1, 2, 3, ..., END. */
struct mig_pages_grammar {
	uint64_t last_sync;
	bool ended;
};
int mig_pages_grammar_step(struct mig_pages_grammar *g, const struct mig_section *sec,
			   char *err, size_t errlen);

#endif
