/*
 * ft_grammar.h - the order of sections in a fault-tolerance stream
 * (docs/stream.md "Fault tolerance"). After CONFIG:
 *
 *   RAM* FT_ALIVE*  ( EPOCH(n)  (RAM | FT_WRITE)*  CPU(0)..CPU(N-1)
 *           DEVICE(d0)..DEVICE(dK-1) CLOCK DIGEST END  FT_ALIVE* )*
 *
 * with n = 1, 2, 3, ... and each epoch's body checked by grammar.h; an
 * FT_WRITE (a guest write of the epoch) lies inside its disk.
 */
#ifndef FERRY_FT_GRAMMAR_H
#define FERRY_FT_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mig_config;
struct mig_section;

struct ft_grammar {
	const struct mig_config *cfg;
	uint64_t epoch;         /* the last EPOCH seen (0: the initial copy) */
	bool in_epoch;
	void *body;             /* struct mig_grammar of the epoch under way */
};

/* An FT_WRITE section's payload. */
struct ft_write {
	uint32_t disk;
	uint64_t off, len;              /* bytes, whole sectors */
	const uint8_t *data;
};
/* Decode sec (an FT_WRITE) into w: 0, or -1 with the reason in err. The
 * disk's bounds are the grammar's: ft_grammar_step checks them. */
int ft_write_decode(const struct mig_section *sec, struct ft_write *w, char *err,
		    size_t errlen);

void ft_grammar_init(struct ft_grammar *g, const struct mig_config *cfg);
void ft_grammar_free(struct ft_grammar *g);
/* May sec come next? 0, or -1 with the reason in err. ERROR sections are
 * the caller's business. */
int ft_grammar_step(struct ft_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen);

#endif
