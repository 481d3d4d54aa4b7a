/*
 * test_disk.c - disk images: clear errors, the writer's exclusive lock
 * against a second writer (in this process and in another one), shared
 * locks for readers, deferred locking for a migration destination,
 * virtio-blk's release/acquire handoff, and what disk_open() opens: a
 * symlink only when told to follow it, never a FIFO or character device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/disk.h"
#include "util/beneath.h"
#include "fake_machine.h"
#include "machine/devices.h"

struct fixture {
	char path[64];
	char locked_msg[128];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	strcpy(f->path, "/tmp/ferry-disk-XXXXXX");
	int fd = mkstemp(f->path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 1 << 16), 0);
	close(fd);
	snprintf(f->locked_msg, sizeof(f->locked_msg),
		 "disk %s: in use by another process (locked)", f->path);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	unlink(f->path);
	free(f);
	return 0;
}

static void missing_file_is_a_clear_error(void **state)
{
	(void)state;
	struct disk d;
	char err[256];
	assert_int_equal(disk_open(&d, "/tmp/ferry-no-such-disk.img", false, false, NULL, false, err,
				   sizeof(err)), -1);
	assert_string_equal(err, "disk /tmp/ferry-no-such-disk.img: No such file or directory");
	struct machine *m = fake_machine_create();
	assert_null(virtio_blk_create(m, 0, "/tmp/ferry-no-such-disk.img", true, false, NULL, false, err,
				      sizeof(err)));
	assert_string_equal(err, "disk /tmp/ferry-no-such-disk.img: No such file or directory");
	assert_int_equal(m->nmmio, 0);
	fake_machine_destroy(m);
}

static void symlinks_are_followed_only_when_asked(void **state)
{
	struct fixture *f = *state;
	char link[80], fifo[80], err[256];
	snprintf(link, sizeof(link), "%s.link", f->path);
	snprintf(fifo, sizeof(fifo), "%s.fifo", f->path);
	assert_int_equal(symlink(f->path, link), 0);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	struct disk d;
	for (int ro = 0; ro < 2; ro++) {
		assert_int_equal(disk_open(&d, link, ro, false, NULL, false, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "is a symlink"));
	}
	assert_int_equal(disk_open(&d, link, false, true, NULL, false, err, sizeof(err)), 0);
	assert_int_equal(d.size, 1 << 16);
	disk_close(&d);
	/* neither waited on (a FIFO opened for reading would block) nor taken */
	assert_int_equal(disk_open(&d, fifo, true, false, NULL, false, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "is a FIFO"));
	assert_int_equal(disk_open(&d, "/dev/null", false, true, NULL, false, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "is a character device"));
	assert_int_equal(disk_open(&d, "/tmp", true, true, NULL, false, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "is a directory"));
	unlink(link);
	unlink(fifo);
}

/* beneath=DIR: the open itself refuses a symlink anywhere below DIR (a
 * directory on the way swapped for a link after a check of the path) and
 * a path that is not below DIR; DIR itself may be a link. */
static void beneath_refuses_a_link_on_the_way(void **state)
{
	(void)state;
	char top[] = "/tmp/ferry-beneath-XXXXXX", ds[64], sub[96], img[128], other[64],
	     alias[64], err[512];
	assert_non_null(mkdtemp(top));
	snprintf(ds, sizeof(ds), "%s/ds", top);
	snprintf(sub, sizeof(sub), "%s/vm", ds);
	snprintf(img, sizeof(img), "%s/disk.img", sub);
	snprintf(other, sizeof(other), "%s/elsewhere", top);
	snprintf(alias, sizeof(alias), "%s/ds-link", top);
	assert_int_equal(mkdir(ds, 0700), 0);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_int_equal(mkdir(other, 0700), 0);
	int fd = open(img, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0 && ftruncate(fd, 4096) == 0);
	close(fd);
	struct disk d;
	assert_int_equal(disk_open(&d, img, false, false, ds, false, err, sizeof(err)), 0);
	disk_close(&d);
	assert_int_equal(symlink(ds, alias), 0);         /* the datastore may be a link */
	assert_int_equal(disk_open(&d, img, true, false, alias, false, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not below"));      /* ... but the path names it */
	char via_alias[200];
	snprintf(via_alias, sizeof(via_alias), "%s/vm/disk.img", alias);
	assert_int_equal(disk_open(&d, via_alias, true, false, alias, false, err, sizeof(err)), 0);
	disk_close(&d);
	/* vm/ becomes a link to a directory outside with a disk.img in it */
	char moved[128], bait[160];
	snprintf(moved, sizeof(moved), "%s/vm.old", ds);
	snprintf(bait, sizeof(bait), "%s/disk.img", other);
	fd = open(bait, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0 && ftruncate(fd, 4096) == 0);
	close(fd);
	assert_int_equal(rename(sub, moved), 0);
	assert_int_equal(symlink(other, sub), 0);
	assert_null(disk_path_refusal(img, false));     /* the last component is no link */
	assert_int_equal(disk_open(&d, img, false, false, NULL, false, err, sizeof(err)), 0);
	disk_close(&d);                                 /* without beneath= it is opened */
	assert_int_equal(disk_open(&d, img, false, false, ds, false, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "has a symlink on the way"));
	assert_string_equal(path_below(img, ds), "vm/disk.img");
	assert_string_equal(path_below(img, "/tmp/"), img + 5);
	assert_null(path_below(img, img));
	assert_null(path_below("/tmp/ferry-beneathX/a", "/tmp/ferry-beneath"));
	unlink(sub);
	unlink(bait);
	unlink(alias);
	snprintf(bait, sizeof(bait), "%s/disk.img", moved);
	unlink(bait);
	rmdir(moved);
	rmdir(other);
	rmdir(ds);
	rmdir(top);
}

static void second_writer_is_refused(void **state)
{
	struct fixture *f = *state;
	struct disk a, b;
	char err[256] = "";
	assert_int_equal(disk_open(&a, f->path, false, false, NULL, false, err, sizeof(err)), 0);
	assert_true(a.locked);
	assert_int_equal(a.size, 1 << 16);
	assert_int_equal(disk_open(&b, f->path, false, false, NULL, false, err, sizeof(err)), -1);
	assert_string_equal(err, f->locked_msg);
	/* a reader may not watch it change either */
	assert_int_equal(disk_open(&b, f->path, true, false, NULL, false, err, sizeof(err)), -1);
	assert_string_equal(err, f->locked_msg);
	disk_close(&a);
	assert_int_equal(disk_open(&b, f->path, false, false, NULL, false, err, sizeof(err)), 0);
	disk_close(&b);
}

static void another_process_is_refused(void **state)
{
	struct fixture *f = *state;
	struct disk a;
	char err[256];
	assert_int_equal(disk_open(&a, f->path, false, false, NULL, false, err, sizeof(err)), 0);
	pid_t pid = fork();
	if (pid == 0) {
		struct disk b;
		char e[256];
		int r = disk_open(&b, f->path, false, false, NULL, false, e, sizeof(e));
		_exit(r == -1 && !strcmp(e, f->locked_msg) ? 0 : 1);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	disk_close(&a);
}

static void readers_share(void **state)
{
	struct fixture *f = *state;
	struct disk a, b, c;
	char err[256];
	assert_int_equal(disk_open(&a, f->path, true, false, NULL, false, err, sizeof(err)), 0);
	assert_int_equal(disk_open(&b, f->path, true, false, NULL, false, err, sizeof(err)), 0);
	assert_int_equal(disk_open(&c, f->path, false, false, NULL, false, err, sizeof(err)), -1);
	assert_string_equal(err, f->locked_msg);
	char buf[4] = "abc";
	assert_int_equal(disk_write(&a, buf, sizeof(buf), 0), -1);     /* read-only */
	disk_close(&a);
	disk_close(&b);
}

static void deferred_lock_waits_for_the_holder(void **state)
{
	struct fixture *f = *state;
	struct disk src, dst;
	char err[256];
	assert_int_equal(disk_open(&src, f->path, false, false, NULL, false, err, sizeof(err)), 0);
	assert_int_equal(disk_open(&dst, f->path, false, false, NULL, true, err, sizeof(err)), 0);
	assert_false(dst.locked);
	assert_int_equal(disk_lock(&dst, err, sizeof(err)), -1);
	assert_string_equal(err, f->locked_msg);
	assert_int_equal(disk_unlock(&src, err, sizeof(err)), 0);
	assert_false(src.locked);
	assert_int_equal(disk_lock(&dst, err, sizeof(err)), 0);
	assert_int_equal(disk_lock(&dst, err, sizeof(err)), 0);    /* twice is fine */
	assert_int_equal(disk_lock(&src, err, sizeof(err)), -1);    /* handed over */
	disk_close(&src);
	disk_close(&dst);
}

static void blk_devices_hand_the_image_over(void **state)
{
	struct fixture *f = *state;
	char err[256];
	const char *why = NULL;
	struct machine *m1 = fake_machine_create(), *m2 = fake_machine_create();
	struct machine *m3 = fake_machine_create();
	struct virtio_dev *a = virtio_blk_create(m1, 0, f->path, false, false, NULL, false, err, sizeof(err));
	assert_non_null(a);
	assert_null(virtio_blk_create(m2, 0, f->path, false, false, NULL, false, err, sizeof(err)));
	assert_string_equal(err, f->locked_msg);
	assert_int_equal(m2->nmmio, 0);

	struct virtio_dev *b = virtio_blk_create(m3, 0, f->path, false, false, NULL, true, err, sizeof(err));
	assert_non_null(b);
	const struct fake_state *sa = fake_state(m1, "virtio-blk.0");
	const struct fake_state *sb = fake_state(m3, "virtio-blk.0");
	assert_int_equal(sb->ops->acquire(sb->dev, &why), -1);
	assert_string_equal(why, f->locked_msg);
	assert_int_equal(sa->ops->release(sa->dev, &why), 0);
	assert_int_equal(sb->ops->acquire(sb->dev, &why), 0);
	/* the source cannot take it back while the destination holds it */
	assert_int_equal(sa->ops->acquire(sa->dev, &why), -1);
	virtio_destroy(a);
	virtio_destroy(b);
	fake_machine_destroy(m1);
	fake_machine_destroy(m2);
	fake_machine_destroy(m3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(missing_file_is_a_clear_error),
		cmocka_unit_test_setup_teardown(symlinks_are_followed_only_when_asked, setup,
						teardown),
		cmocka_unit_test(beneath_refuses_a_link_on_the_way),
		cmocka_unit_test_setup_teardown(second_writer_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(another_process_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(readers_share, setup, teardown),
		cmocka_unit_test_setup_teardown(deferred_lock_waits_for_the_holder, setup,
						teardown),
		cmocka_unit_test_setup_teardown(blk_devices_hand_the_image_over, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
