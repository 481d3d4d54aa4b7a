/*
 * ft.h - fault tolerance: a secondary ferry-vm kept current by continuous
 * checkpoints from the primary, Remus-style (see ft.c and docs/ft.md).
 */
#ifndef FERRY_FT_H
#define FERRY_FT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

struct vmm;
struct ft;
struct ft_secondary;
struct mig_config;
struct mig_section;

/* bench/README.md "Fault tolerance": at 20 and at 50 ms a compute-bound
 * guest lost the same ~5 % of its time to the pauses; with epochs ending
 * on the clock alone 20 ms added 20 ms to a request/response round trip
 * where 50 ms added 52 (early epochs, below, take that to ~3 ms). */
#define FT_EPOCH_MS_DEFAULT     20
#define FT_TIMEOUT_MS_DEFAULT   1000    /* a silent peer this long is lost */
/* An epoch with network output waiting ends this soon after the last one
 * (bench/README.md "Fault tolerance": early epochs). */
#define FT_MIN_EPOCH_MS_DEFAULT 3

enum ft_takeover { FT_TAKEOVER_MANUAL, FT_TAKEOVER_AUTO };

/* Is `--ft-secondary tcp:H:P[,secret-file=F][,timeout-ms=N]` usable? */
int ft_secondary_check(const char *spec, char *err, size_t errlen);
/* The secondary: wait for a primary, keep its checkpoints, and when it is
 * lost and takeover is decided (policy or `ft-takeover`) run the guest
 * from the last complete one. 0: the guest runs here; 1: nothing runs and
 * the process should end (quit, or the primary ended FT); -1: err. */
int vmm_ft_secondary(struct vmm *v, const char *spec, enum ft_takeover policy,
		     char *err, size_t errlen);

/* Syncing, protected, or holding for a lost secondary. */
bool ft_is_active(struct ft *ft);
/* The secondary is lost and the guest paused with its output held
 * (on_loss "hold") until ft-continue or quit. */
bool ft_is_holding(struct ft *ft);
void ft_destroy(struct ft *ft);
void ft_secondary_free(struct ft_secondary *sec);

json_t *ft_cmd_start(void *vmm, json_t *args, const char **cls, char *err, size_t errlen);
json_t *ft_cmd_stop(void *vmm, json_t *args, const char **cls, char *err, size_t errlen);
json_t *ft_cmd_query(void *vmm, json_t *args, const char **cls, char *err, size_t errlen);
json_t *ft_cmd_continue(void *vmm, json_t *args, const char **cls, char *err,
			size_t errlen);
json_t *ft_cmd_takeover(void *vmm, json_t *args, const char **cls, char *err,
			size_t errlen);

#endif
