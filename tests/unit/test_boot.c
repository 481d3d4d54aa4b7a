/*
 * test_boot.c - loading a kernel Image whose header may lie, and taking a
 * machine apart again.
 *
 * Each test writes a crafted Image (the 64-byte RISC-V header, then
 * padding) and maybe an initrd into a scratch directory and boots a real
 * machine (machine.c, with its devices) from them: a header pointing
 * outside RAM, overlapping the device tree, cut off or inconsistent must
 * be refused with the right status, a good one must land where it says.
 * Every test ends with machine_destroy, so the ASan/UBSan run of this file
 * also proves that a machine with all its devices is freed whole.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "machine/boot.h"
#include "machine/clint.h"
#include "machine/devices.h"
#include "machine/vm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024ULL * 1024)
#define RAM_MIB 32
#define FDT_OFF (30 * MIB)       /* the last 2 MiB of 32 */

struct fixture {
	char dir[64];
	char kernel[128], initrd[128], disk[128];
	struct machine *m;
	char err[512];
};

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

/* An Image of file_size bytes (a pattern after the header) whose header
 * says text_offset, image_size and flags. */
static void write_image(struct fixture *f, uint64_t text_offset, uint64_t image_size,
			uint64_t flags, size_t file_size)
{
	uint8_t *img = calloc(1, file_size < 64 ? 64 : file_size);
	assert_non_null(img);
	for (size_t i = 64; i < file_size; i++)
		img[i] = (uint8_t)(i * 7);
	put_le64(img + 8, text_offset);
	put_le64(img + 16, image_size);
	put_le64(img + 24, flags);
	img[32] = 2;                                    /* header version 0.2 */
	memcpy(img + 48, "RISCV\0\0\0", 8);
	memcpy(img + 56, "RSC\x05", 4);
	write_file(f->kernel, img, file_size);
	free(img);
}

static void write_initrd(struct fixture *f, size_t size)
{
	uint8_t *data = malloc(size);
	assert_non_null(data);
	memset(data, 0xa5, size);
	write_file(f->initrd, data, size);
	free(data);
}

/* A machine with every kind of device, as main.c builds it. */
static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/ferry-test-boot-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->kernel, sizeof(f->kernel), "%s/Image", f->dir);
	snprintf(f->initrd, sizeof(f->initrd), "%s/initrd", f->dir);
	snprintf(f->disk, sizeof(f->disk), "%s/disk", f->dir);
	uint8_t sector[4096] = { 0 };
	write_file(f->disk, sector, sizeof(sector));
	f->m = machine_create(RAM_MIB, 2, f->err, sizeof(f->err));
	assert_non_null(f->m);
	assert_int_equal(clint_create(f->m), 0);
	assert_non_null(uart_create(f->m, -1, -1));
	assert_non_null(virtio_blk_create(f->m, 0, f->disk, false, false, NULL, false, f->err,
					  sizeof(f->err)));
	assert_non_null(virtio_console_create(f->m, 1, -1, -1));
	assert_non_null(virtio_rng_create(f->m, 2));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	machine_destroy(f->m);
	unlink(f->kernel);
	unlink(f->initrd);
	unlink(f->disk);
	rmdir(f->dir);
	free(f);
	return 0;
}

static int boot(struct fixture *f, bool initrd)
{
	struct boot_config cfg = { f->kernel, initrd ? f->initrd : NULL, "console=ttyS0" };
	f->err[0] = 0;
	return boot_load(f->m, &cfg, f->err, sizeof(f->err));
}

static void assert_refused(struct fixture *f, int want, const char *word)
{
	assert_int_equal(boot(f, false), want);
	if (!strstr(f->err, word))
		fail_msg("error '%s' does not say '%s'", f->err, word);
}

static void good_image_lands_where_its_header_says(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x400000, 96 * 1024, 0, 64 * 1024);
	assert_int_equal(boot(f, false), 0);
	assert_int_equal(f->m->harts[0]->pc, RAM_BASE + 0x400000);
	assert_int_equal(f->m->harts[0]->x[11], RAM_BASE + FDT_OFF);
	assert_int_equal(f->m->ram[0x400000 + 100], (uint8_t)(100 * 7));
	assert_int_equal(f->m->ram[0x400000 + 64 * 1024 - 1], (uint8_t)((64 * 1024 - 1) * 7));
}

static void text_offset_zero_means_2_mib(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0, 8192, 0, 8192);
	assert_int_equal(boot(f, false), 0);
	assert_int_equal(f->m->harts[0]->pc, RAM_BASE + 0x200000);
}

static void truncated_image_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200000, 4 * MIB, 0, 4096);     /* cut after 4 KiB */
	assert_refused(f, BOOT_BAD_IMAGE, "truncated");
}

static void text_offset_outside_ram_is_refused(void **state)
{
	struct fixture *f = *state;
	/* 2 MiB-aligned, so only the placement check stands between these
	 * and a write far past guest RAM */
	const uint64_t offsets[] = { 1ULL << 40, 0xffffffffffe00000ULL, FDT_OFF,
				     RAM_MIB * MIB };
	for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
		write_image(f, offsets[i], 8192, 0, 8192);
		assert_refused(f, -1, "do not fit");
	}
}

static void image_overlapping_the_device_tree_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 28 * MIB, 4 * MIB, 0, 3 * MIB);  /* ends at 32 MiB */
	assert_refused(f, -1, "do not fit");
	/* a size that wraps around when added to the offset */
	write_image(f, 0x200000, UINT64_MAX - 0x100000, 0, 8192);
	assert_int_equal(boot(f, false), BOOT_BAD_IMAGE);
}

static void misaligned_text_offset_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200010, 8192, 0, 8192);
	assert_refused(f, BOOT_BAD_IMAGE, "2 MiB");
}

static void image_size_below_the_file_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200000, 4096, 0, 8192);
	assert_refused(f, BOOT_BAD_IMAGE, "less than the file");
	write_image(f, 0x200000, 0, 0, 8192);
	assert_refused(f, BOOT_BAD_IMAGE, "less than the file");
}

static void big_endian_image_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200000, 8192, 1, 8192);
	assert_refused(f, BOOT_BAD_IMAGE, "big-endian");
}

static void missing_magic_is_refused(void **state)
{
	struct fixture *f = *state;
	uint8_t junk[100] = "not a kernel";
	write_file(f->kernel, junk, sizeof(junk));
	assert_refused(f, BOOT_BAD_IMAGE, "Image");
}

static void initrd_goes_below_the_device_tree(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200000, 8192, 0, 8192);
	write_initrd(f, 10000);
	assert_int_equal(boot(f, true), 0);
	uint64_t off = (FDT_OFF - 10000) & ~4095ULL;
	assert_int_equal(f->m->ram[off], 0xa5);
	assert_int_equal(f->m->ram[off + 9999], 0xa5);
}

static void initrd_that_would_overlap_the_kernel_is_refused(void **state)
{
	struct fixture *f = *state;
	write_image(f, 0x200000, 20 * MIB, 0, 12 * MIB);    /* to 22 MiB */
	write_initrd(f, 8 * MIB + 1);                      /* 8 MiB are left */
	assert_int_equal(boot(f, true), -1);
	assert_non_null(strstr(f->err, "initrd"));
	write_initrd(f, 7 * MIB);
	assert_int_equal(boot(f, true), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(good_image_lands_where_its_header_says,
						setup, teardown),
		cmocka_unit_test_setup_teardown(text_offset_zero_means_2_mib, setup, teardown),
		cmocka_unit_test_setup_teardown(truncated_image_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(text_offset_outside_ram_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(image_overlapping_the_device_tree_is_refused,
						setup, teardown),
		cmocka_unit_test_setup_teardown(misaligned_text_offset_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(image_size_below_the_file_is_refused, setup,
						teardown),
		cmocka_unit_test_setup_teardown(big_endian_image_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(missing_magic_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(initrd_goes_below_the_device_tree, setup,
						teardown),
		cmocka_unit_test_setup_teardown(initrd_that_would_overlap_the_kernel_is_refused,
						setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
