/*
 * ft_grammar.h - the order of sections in a fault-tolerance stream
 * (docs/stream.md "Fault tolerance"). After CONFIG:
 *
 *   RAM*  ( EPOCH(n)  RAM* CPU(0)..CPU(N-1) DEVICE(d0)..DEVICE(dK-1) CLOCK
 *           DIGEST END )*
 *
 * with n = 1, 2, 3, ... and each epoch's body checked by grammar.h.
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

void ft_grammar_init(struct ft_grammar *g, const struct mig_config *cfg);
void ft_grammar_free(struct ft_grammar *g);
/* May sec come next? 0, or -1 with the reason in err. ERROR sections are
 * the caller's business. */
int ft_grammar_step(struct ft_grammar *g, const struct mig_section *sec, char *err,
		    size_t errlen);

#endif
