/*
 * fileio.h - whole reads and writes at an offset, for disk images.
 *
 * pread and pwrite may do less than asked (a signal, a big request);
 * these loop until all of it is done. A read past the end of the file
 * yields zeros, as a disk image reads beyond its data.
 */
#ifndef FERRY_FILEIO_H
#define FERRY_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* 0, or -1 with errno. */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
/* 0, or -1 with errno (ENOSPC where the file takes no more). */
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

#endif
