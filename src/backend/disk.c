/*
 * disk.c - raw disk images: open, lock, read, write, flush (see disk.h).
 *
 * Locks are open file description (OFD) locks on the whole file, so they
 * belong to this open image, not to the process: they are dropped when
 * the descriptor closes (also when ferry-vm dies) and two opens of the
 * same image conflict even inside one process. F_OFD_SETLK never waits:
 * an image in use is an error the user sees at once.
 */
#include "backend/disk.h"
#include "util/beneath.h"
#include "util/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static int disk_size(struct disk *d, char *err, size_t errlen)
{
	struct stat st;
	if (fstat(d->fd, &st)) {
		snprintf(err, errlen, "disk %s: %s", d->path, strerror(errno));
		return -1;
	}
	if (S_ISREG(st.st_mode)) {
		d->size = (uint64_t)st.st_size;
		return 0;
	}
	if (S_ISBLK(st.st_mode) && ioctl(d->fd, BLKGETSIZE64, &d->size) == 0)
		return 0;
	snprintf(err, errlen, "disk %s: not a regular file or block device", d->path);
	return -1;
}

static int disk_setlk(struct disk *d, short type)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = 0,
		.l_len = 0,         /* to the end, however large it grows */
	};
	return fcntl(d->fd, F_OFD_SETLK, &fl);
}

int disk_lock(struct disk *d, char *err, size_t errlen)
{
	if (d->locked)
		return 0;
	if (disk_setlk(d, d->readonly ? F_RDLCK : F_WRLCK)) {
		if (errno == EAGAIN || errno == EACCES)
			snprintf(err, errlen, "disk %s: in use by another process (locked)",
				 d->path);
		else
			snprintf(err, errlen, "disk %s: cannot lock: %s", d->path,
				 strerror(errno));
		return -1;
	}
	d->locked = true;
	return 0;
}

int disk_unlock(struct disk *d, char *err, size_t errlen)
{
	int ret = 0;
	if (!d->readonly && disk_flush(d)) {
		snprintf(err, errlen, "disk %s: cannot flush: %s", d->path, strerror(errno));
		ret = -1;
	}
	if (d->locked && disk_setlk(d, F_UNLCK) == 0)
		d->locked = false;
	return ret;
}

static const char *disk_kind_refusal(mode_t mode)
{
	if (S_ISREG(mode) || S_ISBLK(mode))
		return NULL;
	return S_ISDIR(mode) ? "is a directory, not a regular file or block device" :
	       S_ISFIFO(mode) ? "is a FIFO, not a regular file or block device" :
	       S_ISCHR(mode) ? "is a character device, not a regular file or block device" :
	       S_ISSOCK(mode) ? "is a socket, not a regular file or block device" :
	       "is not a regular file or block device";
}

static const char beneath_link_refusal[] =
	"has a symlink on the way below its beneath= directory";
static const char beneath_out_refusal[] = "is not below its beneath= directory";

static const char disk_link_refusal[] =
	"is a symlink: give the real path, or add ,follow=on to use what it points to";

const char *disk_path_refusal(const char *path, bool follow)
{
	struct stat st;
	if (lstat(path, &st))
		return NULL;                    /* the open says why */
	if (S_ISLNK(st.st_mode) && !follow)
		return disk_link_refusal;
	if (S_ISLNK(st.st_mode) && stat(path, &st))
		return NULL;                    /* dangling: the open says so */
	return disk_kind_refusal(st.st_mode);
}

/* Open what disk_path_refusal() accepted; O_NONBLOCK only until the
 * descriptor is known to be a regular file or block device. */
static int disk_open_fd(struct disk *d, bool follow, const char *beneath, char *err,
			size_t errlen)
{
	const char *why = disk_path_refusal(d->path, follow);
	if (!why) {
		int flags = (d->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY |
			    O_NONBLOCK | (follow ? 0 : O_NOFOLLOW);
		d->fd = beneath ? open_beneath(beneath, d->path, flags, 0) : open(d->path, flags);
		if (d->fd < 0 && errno == ELOOP && beneath)
			why = beneath_link_refusal;
		else if (d->fd < 0 && errno == EXDEV && beneath)
			why = beneath_out_refusal;
		else if (d->fd < 0 && errno == ELOOP && !follow)
			why = disk_link_refusal;        /* it became one meanwhile */
	}
	struct stat st;
	if (!why && d->fd >= 0 && fstat(d->fd, &st) == 0)
		why = disk_kind_refusal(st.st_mode);
	if (why) {
		snprintf(err, errlen, "disk %s: %s", d->path, why);
		return -1;
	}
	int fl = d->fd < 0 ? -1 : fcntl(d->fd, F_GETFL);
	if (fl < 0 || fcntl(d->fd, F_SETFL, fl & ~O_NONBLOCK)) {
		snprintf(err, errlen, "disk %s: %s", d->path, strerror(errno));
		return -1;
	}
	return 0;
}

int disk_open(struct disk *d, const char *path, bool readonly, bool follow,
	      const char *beneath, bool defer_lock, char *err, size_t errlen)
{
	memset(d, 0, sizeof(*d));
	d->fd = -1;
	d->readonly = readonly;
	d->path = strdup(path);
	if (!d->path) {
		snprintf(err, errlen, "disk %s: %s", path, strerror(ENOMEM));
		return -1;
	}
	if (disk_open_fd(d, follow, beneath, err, errlen) || disk_size(d, err, errlen) ||
	    (!defer_lock && disk_lock(d, err, errlen))) {
		disk_close(d);
		return -1;
	}
	return 0;
}

int disk_read(struct disk *d, void *buf, size_t len, uint64_t off)
{
	return pread_full(d->fd, buf, len, off);
}

static int disk_write_all(struct disk *d, const void *buf, size_t len, uint64_t off)
{
	if (d->readonly) {
		errno = EROFS;
		return -1;
	}
	return pwrite_full(d->fd, buf, len, off);
}

int disk_write(struct disk *d, const void *buf, size_t len, uint64_t off)
{
	int ret = disk_write_all(d, buf, len, off);
	if (d->on_write) {
		int saved = errno;
		d->on_write(d->on_write_opaque, off, len);
		errno = saved;
	}
	return ret;
}

int disk_flush(struct disk *d)
{
	return d->readonly ? 0 : fdatasync(d->fd);
}

void disk_close(struct disk *d)
{
	if (d->fd >= 0)
		close(d->fd);   /* drops the OFD lock too */
	free(d->path);
	d->fd = -1;
	d->path = NULL;
	d->locked = false;
}

/* ---- creating images, and who holds them ------------------------------------ */

int disk_lock_state(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -1;
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int ret = fcntl(fd, F_OFD_GETLK, &fl);
	int saved = errno;
	close(fd);
	errno = saved;
	return ret ? -1 : fl.l_type;
}

/* Why path cannot be a new image, or NULL when nothing is there. */
static const char *disk_create_refusal(const char *path)
{
	struct stat st;
	if (lstat(path, &st))
		return NULL;
	if (S_ISLNK(st.st_mode))
		return "is a symlink (give the real path)";
	int lk = disk_lock_state(path);
	if (lk == F_WRLCK || lk == F_RDLCK)
		return "exists and is in use by another process (locked)";
	return "already exists (remove it or choose another path)";
}

int disk_create(struct disk *d, const char *path, uint64_t size, mode_t mode,
		const char *beneath, char *err, size_t errlen)
{
	memset(d, 0, sizeof(*d));
	d->fd = -1;
	const char *why = disk_create_refusal(path);
	if (why) {
		snprintf(err, errlen, "disk %s: %s", path, why);
		return -1;
	}
	d->path = strdup(path);
	/* O_EXCL also refuses a symlink or a file that appeared since */
	int flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
	d->fd = beneath ? open_beneath(beneath, path, flags, mode) : open(path, flags, mode);
	if (!d->path || d->fd < 0) {
		int e = d->path ? errno : ENOMEM;
		snprintf(err, errlen, "disk %s: cannot create: %s", path,
			 e == EEXIST ? "it appeared meanwhile" :
			 beneath && e == ELOOP ? beneath_link_refusal :
			 beneath && e == EXDEV ? beneath_out_refusal : strerror(e));
		disk_close(d);
		return -1;
	}
	if (disk_lock(d, err, errlen) || ftruncate(d->fd, (off_t)size)) {
		if (d->locked)
			snprintf(err, errlen, "disk %s: cannot make it %llu bytes: %s", path,
				 (unsigned long long)size, strerror(errno));
		unlink(path);
		disk_close(d);
		return -1;
	}
	d->size = size;
	return 0;
}

void disk_swap(struct disk *a, struct disk *b)
{
	struct disk t = *a;
	*a = *b;
	*b = t;
}
