/*
 * migrate.h - live migration of the running machine, and save/restore.
 *
 * The outgoing side runs on a thread of its own (outgoing.c): handshake,
 * pre-copy rounds over the dirty log, throttling or post-copy when rounds
 * stop shrinking, switchover, and the handoff that lets the source go only
 * after the destination confirms it holds everything. The incoming side
 * (incoming.c) receives, verifies and starts the guest. vmstate.c turns
 * the machine (harts, devices, clock) into stream sections and back.
 */
#ifndef FERRY_MIGRATE_H
#define FERRY_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

struct vmm;
struct migration;

bool migration_is_active(struct migration *mg);
/* Stop a migration still under way (the process is ending) and free it. */
void migration_destroy(struct migration *mg);
/* The guest was handed off: it runs on the destination now. */
bool migration_is_done(struct migration *mg);

/* Is `--incoming SPEC` usable (tcp:HOST:PORT[,secret-file=FILE] with a
 * readable secret, or file:PATH)? 0, or -1 with the reason. */
int mig_incoming_check(const char *spec, bool tls, char *err, size_t errlen);

/* Load a saved stream (configuration, checked; pages, state, digest, in
 * the order grammar.h gives) into the machine, which must not run yet.
 * 0, or -1 with the reason. For restore and the loaders' fuzz target. */
struct mig_stream;
int mig_restore_state(struct vmm *v, struct mig_stream *s, char *err, size_t errlen);

/* Control socket commands (see DESIGN.md "Control socket"). */
json_t *migration_cmd_migrate(void *vmm, json_t *args, const char **cls, char *err,
			      size_t errlen);
json_t *migration_cmd_query(void *vmm, json_t *args, const char **cls, char *err,
			    size_t errlen);
json_t *migration_cmd_cancel(void *vmm, json_t *args, const char **cls, char *err,
			     size_t errlen);
json_t *migration_cmd_set_parameters(void *vmm, json_t *args, const char **cls, char *err,
				     size_t errlen);
json_t *migration_cmd_save(void *vmm, json_t *args, const char **cls, char *err,
			   size_t errlen);

#endif
