/*
 * boot.c - load a RISC-V Linux Image, an initrd and the device tree.
 *
 * The Image header (Documentation/riscv/boot-image-header.rst) carries a
 * magic ("RISCV\0\0\0" at 48, "RSC\x05" at 56), the offset from the start
 * of RAM at which the kernel wants to run (text_offset) and its size in
 * memory. We place the kernel there, the device tree in the last 2 MiB of
 * RAM, and the initrd just below it; then hart 0 starts at the kernel in
 * S mode with a0 = hart id and a1 = the device tree's address, as the
 * boot protocol says. The other harts wait in HSM "stopped" until the
 * kernel starts them.
 */
#include "machine/boot.h"
#include "machine/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define IMAGE_MAGIC  "RISCV\0\0\0"
#define IMAGE_MAGIC2 "RSC\x05"
#define FDT_MAX      (64 * 1024)

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Read a whole file into RAM at offset off; returns its size or -1. */
static long load_file(struct machine *m, const char *path, uint64_t off, const char *what,
		      char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s %s: not a regular file", what, path);
		close(fd);
		return -1;
	}
	if ((uint64_t)st.st_size > m->ram_size - off) {
		snprintf(err, errlen, "%s %s: %lld bytes do not fit in guest RAM (use --mem)",
			 what, path, (long long)st.st_size);
		close(fd);
		return -1;
	}
	size_t done = 0;
	while (done < (size_t)st.st_size) {
		ssize_t r = read(fd, m->ram + off + done, (size_t)st.st_size - done);
		if (r <= 0) {
			snprintf(err, errlen, "%s %s: read failed: %s", what, path,
				 r < 0 ? strerror(errno) : "short file");
			close(fd);
			return -1;
		}
		done += (size_t)r;
	}
	close(fd);
	return (long)st.st_size;
}

static int check_image_header(const char *path, uint64_t *text_offset, uint64_t *image_size,
			      char *err, size_t errlen)
{
	uint8_t hdr[64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "kernel %s: %s", path, strerror(errno));
		return -1;
	}
	ssize_t n = read(fd, hdr, sizeof(hdr));
	close(fd);
	if (n != (ssize_t)sizeof(hdr) || memcmp(hdr + 48, IMAGE_MAGIC, 8) != 0 ||
	    memcmp(hdr + 56, IMAGE_MAGIC2, 4) != 0) {
		snprintf(err, errlen, "kernel %s: not a RISC-V Linux Image (no \"RISCV\" "
			 "header magic; use arch/riscv/boot/Image, not vmlinux or a "
			 "compressed image)", path);
		return -1;
	}
	*text_offset = le64(hdr + 8);
	*image_size = le64(hdr + 16);
	return 0;
}

int boot_load(struct machine *m, const struct boot_config *cfg, char *err, size_t errlen)
{
	uint64_t text_offset, image_size;
	if (check_image_header(cfg->kernel, &text_offset, &image_size, err, errlen))
		return -1;
	if (text_offset == 0)
		text_offset = 0x200000;     /* the RV64 default */
	if (m->ram_size < 16ULL << 20) {
		snprintf(err, errlen, "--mem must be at least 16 MiB to boot Linux");
		return -1;
	}
	long ksize = load_file(m, cfg->kernel, text_offset, "kernel", err, errlen);
	if (ksize < 0)
		return -1;
	if (image_size < (uint64_t)ksize)
		image_size = (uint64_t)ksize;

	uint64_t fdt_off = (m->ram_size - (2ULL << 20)) & ~((2ULL << 20) - 1);
	uint64_t initrd_start = 0, initrd_end = 0;
	if (cfg->initrd) {
		struct stat st;
		if (stat(cfg->initrd, &st) < 0) {
			snprintf(err, errlen, "initrd %s: %s", cfg->initrd, strerror(errno));
			return -1;
		}
		uint64_t off = (fdt_off - (uint64_t)st.st_size) & ~(PAGE_SIZE - 1);
		if ((uint64_t)st.st_size >= fdt_off || off < text_offset + image_size) {
			snprintf(err, errlen, "initrd %s: does not fit in guest RAM beside the "
				 "kernel (use a larger --mem)", cfg->initrd);
			return -1;
		}
		long isize = load_file(m, cfg->initrd, off, "initrd", err, errlen);
		if (isize < 0)
			return -1;
		initrd_start = RAM_BASE + off;
		initrd_end = initrd_start + (uint64_t)isize;
	}

	if (fdt_build(m, m->ram + fdt_off, FDT_MAX, cfg->append ? cfg->append : "",
		      initrd_start, initrd_end) < 0) {
		snprintf(err, errlen, "cannot build the device tree (too many devices?)");
		return -1;
	}

	struct hart *h = m->harts[0];
	h->priv = PRV_S;
	h->pc = RAM_BASE + text_offset;
	h->x[10] = 0;
	h->x[11] = RAM_BASE + fdt_off;
	hart_update_tlb_context(h);
	for (unsigned i = 1; i < m->nharts; i++) {
		m->harts[i]->priv = PRV_S;
		hart_update_tlb_context(m->harts[i]);
	}
	return 0;
}
