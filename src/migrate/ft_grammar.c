/*
 * ft_grammar.c - the order of sections in a fault-tolerance stream.
 *
 * After CONFIG the primary sends the initial copy (RAM sections only),
 * then epochs, each EPOCH(n) with n = 1, 2, 3, ... followed by a body in
 * grammar.h's order (RAM*, every hart, every device, CLOCK, DIGEST, END;
 * never POSTCOPY: an epoch is whole or it is nothing). The epoch's guest
 * writes (FT_WRITE) come with its pages, before its state, each whole
 * sectors inside a disk of the configuration. Pure bookkeeping,
 * like grammar.c, so the fuzzer runs it as is (fuzz/fuzz_stream.c).
 */
#include "migrate/ft_grammar.h"
#include "migrate/grammar.h"
#include "migrate/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

int ft_write_decode(const struct mig_section *sec, struct ft_write *w, char *err,
		    size_t errlen)
{
	const char *bad = NULL;
	if (sec->len < MIG_FT_WRITE_HDR + MIG_FT_SECTOR)
		bad = "shorter than one sector";
	else if (get_le32(sec->data + 4))
		bad = "reserved word not 0";
	else {
		w->disk = get_le32(sec->data);
		w->off = get_le64(sec->data + 8);
		w->len = sec->len - MIG_FT_WRITE_HDR;
		w->data = sec->data + MIG_FT_WRITE_HDR;
		if (w->off % MIG_FT_SECTOR || w->len % MIG_FT_SECTOR)
			bad = "not whole sectors";
	}
	if (bad) {
		snprintf(err, errlen, "FT stream: 'ft-write' at offset %llu: %s",
			 (unsigned long long)sec->offset, bad);
		return -1;
	}
	return 0;
}

/* A guest write: in an epoch, among its pages, inside its disk. */
static int ft_grammar_write(struct ft_grammar *g, const struct mig_section *sec, char *err,
			    size_t errlen)
{
	struct ft_write w;
	if (!g->in_epoch || ((struct mig_grammar *)g->body)->phase != MIG_G_RAM) {
		snprintf(err, errlen, "FT stream out of order: a guest write at offset %llu "
			 "%s", (unsigned long long)sec->offset, g->in_epoch ?
			 "after the epoch's state began" : "outside an epoch");
		return -1;
	}
	if (ft_write_decode(sec, &w, err, errlen))
		return -1;
	unsigned ndisks = g->cfg->ndisks < MIG_MAX_DISKS ? g->cfg->ndisks : MIG_MAX_DISKS;
	if (w.disk >= ndisks || w.off > g->cfg->disks[w.disk].size ||
	    w.len > g->cfg->disks[w.disk].size - w.off) {
		snprintf(err, errlen, "FT stream: 'ft-write' at offset %llu: %llu bytes at %llu "
			 "of disk %u, which %s", (unsigned long long)sec->offset,
			 (unsigned long long)w.len, (unsigned long long)w.off, w.disk,
			 w.disk >= ndisks ? "the configuration does not have" : "it overruns");
		return -1;
	}
	return 0;
}

void ft_grammar_init(struct ft_grammar *g, const struct mig_config *cfg)
{
	memset(g, 0, sizeof(*g));
	g->cfg = cfg;
}

void ft_grammar_free(struct ft_grammar *g)
{
	free(g->body);
	g->body = NULL;
}

int ft_grammar_step(struct ft_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen)
{
	if (sec->type == MIG_SEC_DISK || sec->type == MIG_SEC_DISK_DIGEST) {
		snprintf(err, errlen, "FT stream: disk data at offset %llu: fault tolerance "
			 "runs on a shared datastore only", (unsigned long long)sec->offset);
		return -1;
	}
	if (sec->type == MIG_SEC_FT_WRITE)
		return ft_grammar_write(g, sec, err, errlen);
	if (sec->type == MIG_SEC_EPOCH) {
		uint64_t n = get_le64(sec->data);
		if (g->in_epoch || n != g->epoch + 1) {
			snprintf(err, errlen, "FT stream out of order: epoch %llu at offset "
				 "%llu, where %s was due", (unsigned long long)n,
				 (unsigned long long)sec->offset,
				 g->in_epoch ? "the rest of the epoch under way" : "the next epoch");
			return -1;
		}
		if (!g->body && !(g->body = malloc(sizeof(struct mig_grammar)))) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		mig_grammar_init(g->body, g->cfg, true);
		g->epoch = n;
		g->in_epoch = true;
		return 0;
	}
	if (sec->type == MIG_SEC_FT_ALIVE && !g->in_epoch)
		return 0;       /* the primary is flushing the guest's disks */
	if (!g->in_epoch) {
		if (g->epoch == 0 && sec->type == MIG_SEC_RAM)
			return 0;       /* the initial copy */
		snprintf(err, errlen, "FT stream out of order: a '%s' section at offset %llu "
			 "outside an epoch", mig_section_name(sec->type) ?
			 mig_section_name(sec->type) : "unknown",
			 (unsigned long long)sec->offset);
		return -1;
	}
	if (sec->type == MIG_SEC_POSTCOPY) {
		snprintf(err, errlen, "FT stream: post-copy at offset %llu: an epoch must "
			 "be whole", (unsigned long long)sec->offset);
		return -1;
	}
	if (mig_grammar_step(g->body, sec, err, errlen))
		return -1;
	if (sec->type == MIG_SEC_END)
		g->in_epoch = false;
	return 0;
}

