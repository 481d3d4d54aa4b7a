/*
 * grammar.c - the order of the sections a destination accepts (grammar.h).
 *
 * One function per kind of section, each checking that the phase allows
 * it and moving the phase on. The error names what came and what was
 * due, with the section's offset, so a bad stream is a sentence, not a
 * crash somewhere later.
 */
#include "migrate/grammar.h"
#include "migrate/stream.h"

#include <stdio.h>
#include <string.h>

void mig_grammar_init(struct mig_grammar *g, const struct mig_config *cfg, bool live)
{
	memset(g, 0, sizeof(*g));
	g->cfg = cfg;
	g->live = live;
	g->phase = MIG_G_RAM;
}

static unsigned device_count(const struct mig_grammar *g)
{
	return g->cfg->ndevices < MIG_MAX_DEVICES ? g->cfg->ndevices : MIG_MAX_DEVICES;
}

static unsigned disk_count(const struct mig_grammar *g)
{
	return g->cfg->ndisks < MIG_MAX_DISKS ? g->cfg->ndisks : MIG_MAX_DISKS;
}

/* What is due next, for error messages. */
static void describe_due(const struct mig_grammar *g, char *buf, size_t len)
{
	switch (g->phase) {
	case MIG_G_RAM:
		if (g->cfg->copy_disks && g->next_disk_digest < disk_count(g)) {
			snprintf(buf, len, "the digest of disk %u", g->next_disk_digest);
			return;
		}
		/* fall through */
	case MIG_G_CPU:
		if (g->next_hart < g->cfg->harts) {
			snprintf(buf, len, "the state of hart %u", g->next_hart);
			return;
		}
		/* fall through */
	case MIG_G_DEVICE:
		if (g->next_device < device_count(g)) {
			snprintf(buf, len, "the state of device '%.63s'",
				 g->cfg->devices[g->next_device].name);
			return;
		}
		snprintf(buf, len, "the clock");
		return;
	case MIG_G_CLOCK:
		snprintf(buf, len, g->live ? "the memory digest (or post-copy)"
					   : "the memory digest");
		return;
	case MIG_G_CLOSED:
		snprintf(buf, len, "the end marker");
		return;
	case MIG_G_END:
		snprintf(buf, len, "nothing (the stream had ended)");
		return;
	}
	snprintf(buf, len, "?");
}

static int refuse(const struct mig_grammar *g, const struct mig_section *sec, char *err,
		  size_t errlen, const char *what)
{
	char due[128];
	const char *name = mig_section_name(sec->type);
	describe_due(g, due, sizeof(due));
	snprintf(err, errlen, "migration stream out of order: %s '%s' section at offset "
		 "%llu, where %s was due", what ? what : "a", name ? name : "unknown",
		 (unsigned long long)sec->offset, due);
	return -1;
}

static int step_ram(struct mig_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen)
{
	if (g->phase != MIG_G_RAM)
		return refuse(g, sec, err, errlen, "pages after the machine state began: a");
	if (g->next_disk_digest)
		return refuse(g, sec, err, errlen, "pages after the disk digests: a");
	return 0;
}

/* An extent: only with disks: copy, before the disk digests, inside its
 * image, whole blocks or up to the image's end. */
static int step_disk(struct mig_grammar *g, const struct mig_section *sec, char *err,
		     size_t errlen)
{
	if (!g->cfg->copy_disks)
		return refuse(g, sec, err, errlen, "disk data without disks: copy: a");
	if (g->phase != MIG_G_RAM || g->next_disk_digest)
		return refuse(g, sec, err, errlen, "disk data after the disk digests: a");
	uint64_t size = sec->disk < disk_count(g) ? g->cfg->disks[sec->disk].size : 0;
	uint64_t end = sec->disk_off + sec->disk_len;
	if (sec->disk >= disk_count(g) || end < sec->disk_off || end > size ||
	    (sec->disk_len % MIG_DISK_BLOCK && end != size)) {
		snprintf(err, errlen, "migration stream: 'disk' section at offset %llu: extent "
			 "%llu+%llu of disk %u is outside the image or not whole blocks",
			 (unsigned long long)sec->offset, (unsigned long long)sec->disk_off,
			 (unsigned long long)sec->disk_len, sec->disk);
		return -1;
	}
	return 0;
}

static int step_disk_digest(struct mig_grammar *g, const struct mig_section *sec, char *err,
			    size_t errlen)
{
	if (!g->cfg->copy_disks || g->phase != MIG_G_RAM ||
	    g->next_disk_digest >= disk_count(g) || sec->disk != g->next_disk_digest)
		return refuse(g, sec, err, errlen, NULL);
	g->next_disk_digest++;
	return 0;
}

/* The end of a round on the main stream of a multi-channel migration. */
static int step_sync(struct mig_grammar *g, const struct mig_section *sec, char *err,
		     size_t errlen)
{
	if (g->cfg->channels < 2)
		return refuse(g, sec, err, errlen, "a round marker without page channels: a");
	if (g->phase != MIG_G_RAM || g->next_disk_digest)
		return refuse(g, sec, err, errlen, "a round marker after the pages: a");
	if (sec->round != g->last_sync + 1) {
		snprintf(err, errlen, "migration stream: 'sync' section at offset %llu closes "
			 "round %llu after round %llu", (unsigned long long)sec->offset,
			 (unsigned long long)sec->round, (unsigned long long)g->last_sync);
		return -1;
	}
	g->last_sync = sec->round;
	return 0;
}

static int step_cpu(struct mig_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen)
{
	if (g->cfg->copy_disks && g->next_disk_digest < disk_count(g))
		return refuse(g, sec, err, errlen, "the machine state before the disks were "
			      "verified: a");
	if ((g->phase != MIG_G_RAM && g->phase != MIG_G_CPU) ||
	    g->next_hart >= g->cfg->harts || sec->hart != g->next_hart) {
		char what[96];
		snprintf(what, sizeof(what), "the state of hart %u in a", sec->hart);
		return refuse(g, sec, err, errlen, what);
	}
	g->phase = MIG_G_CPU;
	g->next_hart++;
	return 0;
}

static int step_device(struct mig_grammar *g, const struct mig_section *sec, char *err,
		       size_t errlen)
{
	bool harts_done = g->next_hart == g->cfg->harts;
	if ((g->phase != MIG_G_CPU && g->phase != MIG_G_DEVICE && g->phase != MIG_G_RAM) ||
	    !harts_done || g->next_device >= device_count(g) ||
	    strncmp(sec->name, g->cfg->devices[g->next_device].name, MIG_NAME_MAX)) {
		char what[112];
		snprintf(what, sizeof(what), "the state of device '%.63s' in a", sec->name);
		return refuse(g, sec, err, errlen, what);
	}
	g->phase = MIG_G_DEVICE;
	g->next_device++;
	return 0;
}

static int step_clock(struct mig_grammar *g, const struct mig_section *sec, char *err,
		      size_t errlen)
{
	if (g->phase > MIG_G_DEVICE || g->next_hart != g->cfg->harts ||
	    g->next_device != device_count(g))
		return refuse(g, sec, err, errlen, NULL);
	g->phase = MIG_G_CLOCK;
	return 0;
}

static int step_close(struct mig_grammar *g, const struct mig_section *sec, char *err,
		      size_t errlen)
{
	if (sec->type == MIG_SEC_POSTCOPY && !g->live) {
		snprintf(err, errlen, "migration stream: a 'postcopy' section at offset %llu in "
			 "a saved stream: post-copy needs a live source to fetch pages from",
			 (unsigned long long)sec->offset);
		return -1;
	}
	if (g->phase != MIG_G_CLOCK)
		return refuse(g, sec, err, errlen, NULL);
	g->phase = MIG_G_CLOSED;
	g->postcopy = sec->type == MIG_SEC_POSTCOPY;
	return 0;
}

static int step_end(struct mig_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen)
{
	if (g->phase != MIG_G_CLOSED) {
		char due[128];
		describe_due(g, due, sizeof(due));
		snprintf(err, errlen, "migration stream: it ended at offset %llu without %s",
			 (unsigned long long)sec->offset, due);
		return -1;
	}
	g->phase = MIG_G_END;
	return 0;
}

int mig_grammar_step(struct mig_grammar *g, const struct mig_section *sec, char *err,
		     size_t errlen)
{
	if (g->phase == MIG_G_END)
		return refuse(g, sec, err, errlen, NULL);
	switch (sec->type) {
	case MIG_SEC_RAM:       return step_ram(g, sec, err, errlen);
	case MIG_SEC_CPU:       return step_cpu(g, sec, err, errlen);
	case MIG_SEC_DEVICE:    return step_device(g, sec, err, errlen);
	case MIG_SEC_CLOCK:     return step_clock(g, sec, err, errlen);
	case MIG_SEC_DIGEST:
	case MIG_SEC_POSTCOPY:  return step_close(g, sec, err, errlen);
	case MIG_SEC_END:       return step_end(g, sec, err, errlen);
	case MIG_SEC_DISK:      return step_disk(g, sec, err, errlen);
	case MIG_SEC_DISK_DIGEST: return step_disk_digest(g, sec, err, errlen);
	case MIG_SEC_SYNC:      return step_sync(g, sec, err, errlen);
	}
	return refuse(g, sec, err, errlen, "a control message in the machine state: a");
}

int mig_pages_grammar_step(struct mig_pages_grammar *g, const struct mig_section *sec,
			   char *err, size_t errlen)
{
	const char *name = mig_section_name(sec->type);
	if (g->ended) {
		snprintf(err, errlen, "page channel: a '%s' section at offset %llu after its end",
			 name ? name : "unknown", (unsigned long long)sec->offset);
		return -1;
	}
	switch (sec->type) {
	case MIG_SEC_RAM:
		return 0;
	case MIG_SEC_SYNC:
		if (sec->round != g->last_sync + 1) {
			snprintf(err, errlen, "page channel: 'sync' section at offset %llu closes "
				 "round %llu after round %llu", (unsigned long long)sec->offset,
				 (unsigned long long)sec->round,
				 (unsigned long long)g->last_sync);
			return -1;
		}
		g->last_sync = sec->round;
		return 0;
	case MIG_SEC_END:
		g->ended = true;
		return 0;
	}
	snprintf(err, errlen, "page channel: a '%s' section at offset %llu, where only pages, "
		 "round markers and the end may come", name ? name : "unknown",
		 (unsigned long long)sec->offset);
	return -1;
}
