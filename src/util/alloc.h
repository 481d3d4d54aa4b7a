/*
 * alloc.h - allocations and threads that cannot fail quietly.
 *
 * Two kinds of code, two rules:
 *   - building the machine (board, devices, harts): without the memory there
 *     is no VM to keep, so xmalloc and friends print what could not be had
 *     and end the process with status 1;
 *   - anything that runs beside a live guest (a migration, a save, a
 *     control client): a failed allocation fails that operation, never the
 *     guest. Such code calls malloc itself and reports the error its own
 *     way; it must not use these.
 * thread_start is pthread_create with a message that says which thread
 * could not start and why, for the caller to report or to fail with.
 */
#ifndef FERRY_ALLOC_H
#define FERRY_ALLOC_H

#include <pthread.h>
#include <stddef.h>

void *xmalloc(size_t size, const char *what);
void *xcalloc(size_t n, size_t size, const char *what);
/* size is rounded up to a multiple of align, as aligned_alloc wants. */
void *xaligned_alloc(size_t align, size_t size, const char *what);
char *xstrdup(const char *s, const char *what);

/* 0, or -1 with "cannot start the WHAT thread: REASON" in err. */
int thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *what,
		 char *err, size_t errlen);

#endif
