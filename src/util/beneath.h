/*
 * beneath.h - opening a file below a directory, with no symlink below it.
 *
 * Someone (ferryd) may check a path and someone else (ferry-vm) open it
 * later; a directory on the way swapped for a symlink in between would
 * lead the open elsewhere. open_beneath() makes the open itself refuse
 * that: openat2 from the directory with RESOLVE_BENEATH (no way out, no
 * absolute symlink, no "..") and RESOLVE_NO_SYMLINKS (no link at all
 * below it). The directory itself may be a link: it is where the caller
 * said the files are.
 */
#ifndef FERRY_BENEATH_H
#define FERRY_BENEATH_H

/* The part of path below dir ("a/b.img" for "/ds/a/b.img" below "/ds"),
 * or NULL when path is not below dir. */
const char *path_below(const char *path, const char *dir);
/* open(path, flags, mode) through dir as above; -1 with errno (ELOOP: a
 * symlink below dir, EXDEV: path is not below dir). */
int open_beneath(const char *dir, const char *path, int flags, unsigned mode);

#endif
