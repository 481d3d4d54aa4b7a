/*
 * disk.h - a raw disk image on the host, locked against a second writer.
 *
 * A writer holds an exclusive OFD lock on the whole image, a read-only
 * user a shared one, so two ferry-vm processes never write one image at
 * the same time, and a read-only user never sees it change. A migration
 * destination opens the image without the lock (defer_lock) and takes it
 * with disk_lock() only once the source has let go (disk_unlock()).
 *
 * A storage move (storage/diskmove.c) creates its destination with
 * disk_create(), locked before its first byte, watches the guest's writes
 * through on_write, and swaps the new image in with disk_swap().
 */
#ifndef FERRY_DISK_H
#define FERRY_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct disk {
	int fd;
	char *path;
	bool readonly;
	bool locked;
	uint64_t size;      /* bytes */
	/* Called after every write attempt (also a failed one: it may have
	 * changed part of the range), under the caller's device lock. */
	void (*on_write)(void *opaque, uint64_t off, uint64_t len);
	void *on_write_opaque;
};

/* Why path cannot be opened as an image: its last component is a
 * symlink and follow is false, or it names (follow: through the link)
 * something other than a regular file or block device. NULL when it may
 * be opened, or when it cannot be looked at (disk_open says why). */
const char *disk_path_refusal(const char *path, bool follow);
/* Open path, refused as disk_path_refusal() says; 0, or -1 with
 * "disk PATH: why" in err. beneath (or NULL): a directory path must lie
 * below; the open itself then refuses a symlink anywhere below it and a
 * way out (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so that a
 * directory swapped for a link after someone checked the path does not
 * lead elsewhere. The directory itself may be a link. */
int disk_open(struct disk *d, const char *path, bool readonly, bool follow,
	      const char *beneath, bool defer_lock, char *err, size_t errlen);
/* Take the lock; 0, or -1 with the reason in err. Taking it twice is fine. */
int disk_lock(struct disk *d, char *err, size_t errlen);
/* Flush to stable storage and let go of the lock. 0, or -1 (err). */
int disk_unlock(struct disk *d, char *err, size_t errlen);
/* Whole transfers at byte offset off: 0, or -1 with errno set. */
int disk_read(struct disk *d, void *buf, size_t len, uint64_t off);
int disk_write(struct disk *d, const void *buf, size_t len, uint64_t off);
int disk_flush(struct disk *d);
void disk_close(struct disk *d);

/* Create a new, sparse image of size bytes at path, locked for writing
 * from its first byte. Refused with the reason in err when path exists,
 * is a symlink, or is locked by another process; beneath (or NULL): as
 * disk_open's, no symlink below that directory. 0, or -1. */
int disk_create(struct disk *d, const char *path, uint64_t size, mode_t mode,
		const char *beneath, char *err, size_t errlen);
/* Who holds a lock on the image at path: F_UNLCK (nobody), F_RDLCK
 * (readers), F_WRLCK (a writer), or -1 with errno (cannot open it). */
int disk_lock_state(const char *path);
/* Exchange two open images (the caller keeps I/O away from both). */
void disk_swap(struct disk *a, struct disk *b);

#endif
