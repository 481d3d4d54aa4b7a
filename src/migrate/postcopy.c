/*
 * postcopy.c - post-copy: resume on the destination, fetch the rest.
 */
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "machine/vm.h"
#include "vmm.h"

#include <stdio.h>

int postcopy_run(struct migration *mg, struct mig_stream *s, uint64_t *bitmap)
{
	(void)s; (void)bitmap;
	snprintf(mg->error, sizeof(mg->error), "post-copy is not available yet");
	return -1;
}

int postcopy_incoming_begin(struct vmm *v, struct mig_stream *s,
			    const struct mig_section *sec, char *err, size_t errlen)
{
	(void)v; (void)s; (void)sec;
	snprintf(err, errlen, "post-copy is not available yet");
	return -1;
}

int postcopy_incoming_run(struct vmm *v, struct mig_stream *s, int fd, char *err,
			  size_t errlen)
{
	(void)v; (void)s; (void)fd;
	snprintf(err, errlen, "post-copy is not available yet");
	return -1;
}

void postcopy_fetch(struct machine *m, uint64_t pfn)
{
	(void)m; (void)pfn;
}
