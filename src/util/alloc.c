/*
 * alloc.c - allocations that end the process with a clear message, and
 * thread starts that say what failed (see alloc.h for when to use which).
 */
#include "util/alloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out_of_memory(size_t size, const char *what)
{
	fprintf(stderr, "ferry-vm: out of memory: cannot allocate %zu bytes for %s\n",
		size, what);
	exit(1);
}

void *xmalloc(size_t size, const char *what)
{
	void *p = malloc(size ? size : 1);
	if (!p)
		out_of_memory(size, what);
	return p;
}

void *xcalloc(size_t n, size_t size, const char *what)
{
	if (size && n > SIZE_MAX / size)
		out_of_memory(SIZE_MAX, what);
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		out_of_memory(n * size, what);
	return p;
}

void *xaligned_alloc(size_t align, size_t size, const char *what)
{
	size_t rounded = (size + align - 1) / align * align;
	if (rounded < size)
		out_of_memory(SIZE_MAX, what);
	void *p = aligned_alloc(align, rounded ? rounded : align);
	if (!p)
		out_of_memory(rounded, what);
	return p;
}

char *xstrdup(const char *s, const char *what)
{
	size_t n = strlen(s) + 1;
	char *p = xmalloc(n, what);
	memcpy(p, s, n);
	return p;
}

int thread_start(pthread_t *t, void *(*fn)(void *), void *arg, const char *what,
		 char *err, size_t errlen)
{
	int e = pthread_create(t, NULL, fn, arg);
	if (e) {
		snprintf(err, errlen, "cannot start the %s thread: %s", what, strerror(e));
		return -1;
	}
	return 0;
}
