/*
 * boot.c - load a RISC-V Linux Image, an initrd and the device tree.
 *
 * The Image header (Documentation/riscv/boot-image-header.rst) carries a
 * magic ("RISCV\0\0\0" at 48, "RSC\x05" at 56), the offset from the start
 * of RAM at which the kernel wants to run (text_offset), its size in
 * memory (image_size: the file plus the BSS the kernel clears itself) and
 * flags (bit 0: big-endian). We place the kernel there, the device tree in
 * the last 2 MiB of RAM, and the initrd just below it; then hart 0 starts
 * at the kernel in S mode with a0 = hart id and a1 = the device tree's
 * address, as the boot protocol says. The other harts wait in HSM
 * "stopped" until the kernel starts them.
 *
 * The header comes from a file anyone may hand us, so every field is
 * checked before it is used, and every placement against the end of RAM
 * (sums that could wrap are written as differences):
 *   - text_offset must be 2 MiB-aligned (RV64 Linux stops early on any
 *     other load address, before it can print a word);
 *   - image_size must cover the file (it is the file plus BSS), and the
 *     file must hold at least half of it: the header does not give the
 *     file's own size, but a Linux BSS is a small part of the kernel (about
 *     8% of ours), so a file far shorter than its image size was cut off
 *     (a kernel cut after 4 KiB would otherwise run garbage, silently);
 *   - the kernel's whole image, the initrd and the device tree must not
 *     overlap each other nor leave RAM.
 * An Image that fails a check is refused as a bad argument (BOOT_BAD_IMAGE,
 * exit status 2); one that is fine but does not fit in --mem, or a file
 * that cannot be read, is an ordinary failure (-1).
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
#define IMAGE_HEADER_SIZE 64
#define IMAGE_FLAG_BE 1ULL
#define KERNEL_ALIGN (2ULL << 20)
#define DEFAULT_TEXT_OFFSET 0x200000ULL   /* RV64 Linux's, when the header says 0 */
#define FDT_REGION   (2ULL << 20)         /* the device tree's: the last 2 MiB */
#define FDT_MAX      (64 * 1024)

struct image_header {
	uint64_t text_offset;
	uint64_t image_size;
	uint64_t flags;
};

static uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Open a regular file for reading; its size in *size. -1 with err.
 * O_NONBLOCK: a FIFO is refused below, not waited on for a writer. */
static int open_regular(const char *path, const char *what, uint64_t *size, char *err,
			size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
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
	*size = (uint64_t)st.st_size;
	return fd;
}

/* Read exactly len bytes of fd into RAM at offset off, which the caller
 * has checked lies in RAM. 0, or -1 with err (a file that shrank). */
static int read_into_ram(struct machine *m, int fd, uint64_t off, uint64_t len,
			 const char *what, const char *path, char *err, size_t errlen)
{
	uint64_t done = 0;
	while (done < len) {
		ssize_t r = pread(fd, m->ram + off + done, len - done, (off_t)done);
		if (r <= 0) {
			snprintf(err, errlen, "%s %s: read failed: %s", what, path,
				 r < 0 ? strerror(errno) : "the file got shorter");
			return -1;
		}
		done += (uint64_t)r;
	}
	return 0;
}

static int read_image_header(int fd, const char *path, struct image_header *h,
			     char *err, size_t errlen)
{
	uint8_t hdr[IMAGE_HEADER_SIZE];
	ssize_t n = pread(fd, hdr, sizeof(hdr), 0);
	if (n != (ssize_t)sizeof(hdr) || memcmp(hdr + 48, IMAGE_MAGIC, 8) != 0 ||
	    memcmp(hdr + 56, IMAGE_MAGIC2, 4) != 0) {
		snprintf(err, errlen, "kernel %s: not a RISC-V Linux Image (no \"RISCV\" "
			 "header magic; use arch/riscv/boot/Image, not vmlinux or a "
			 "compressed image)", path);
		return -1;
	}
	h->text_offset = le64(hdr + 8);
	h->image_size = le64(hdr + 16);
	h->flags = le64(hdr + 24);
	return 0;
}

/* The header's own consistency, and with the file: BOOT_BAD_IMAGE or 0. */
static int check_image_header(struct image_header *h, uint64_t file_size, const char *path,
			      char *err, size_t errlen)
{
	if (h->flags & IMAGE_FLAG_BE) {
		snprintf(err, errlen, "kernel %s: a big-endian kernel (header flags %#llx); "
			 "this machine is little-endian", path, (unsigned long long)h->flags);
		return BOOT_BAD_IMAGE;
	}
	if (h->text_offset == 0)
		h->text_offset = DEFAULT_TEXT_OFFSET;
	if (h->text_offset % KERNEL_ALIGN) {
		snprintf(err, errlen, "kernel %s: header text_offset %#llx is not a multiple "
			 "of 2 MiB, where an RV64 kernel must start; the header is damaged",
			 path, (unsigned long long)h->text_offset);
		return BOOT_BAD_IMAGE;
	}
	if (h->image_size < file_size) {
		snprintf(err, errlen, "kernel %s: the header says the kernel takes %llu bytes "
			 "in memory, less than the file's %llu; the header is damaged or "
			 "the file is not a Linux Image", path,
			 (unsigned long long)h->image_size, (unsigned long long)file_size);
		return BOOT_BAD_IMAGE;
	}
	if (file_size < h->image_size / 2) {
		snprintf(err, errlen, "kernel %s: the file has %llu bytes but its header "
			 "says the kernel takes %llu in memory: it looks truncated (copy "
			 "arch/riscv/boot/Image again)", path, (unsigned long long)file_size,
			 (unsigned long long)h->image_size);
		return BOOT_BAD_IMAGE;
	}
	return 0;
}

/* The kernel's place in RAM, below the device tree's region. */
static int check_kernel_fits(const struct machine *m, const struct image_header *h,
			     uint64_t fdt_off, const char *path, char *err, size_t errlen)
{
	if (h->text_offset >= fdt_off || h->image_size > fdt_off - h->text_offset) {
		snprintf(err, errlen, "kernel %s: %llu bytes at offset %#llx do not fit in "
			 "%llu MiB of guest RAM below the device tree (use a larger --mem)",
			 path, (unsigned long long)h->image_size,
			 (unsigned long long)h->text_offset,
			 (unsigned long long)(m->ram_size >> 20));
		return -1;
	}
	return 0;
}

static int load_kernel(struct machine *m, const char *path, uint64_t fdt_off,
		       uint64_t *entry_off, uint64_t *kernel_end, char *err, size_t errlen)
{
	uint64_t size;
	int fd = open_regular(path, "kernel", &size, err, errlen);
	if (fd < 0)
		return -1;
	struct image_header h;
	int r = read_image_header(fd, path, &h, err, errlen) ? BOOT_BAD_IMAGE : 0;
	if (!r)
		r = check_image_header(&h, size, path, err, errlen);
	if (!r)
		r = check_kernel_fits(m, &h, fdt_off, path, err, errlen);
	if (!r)
		r = read_into_ram(m, fd, h.text_offset, size, "kernel", path, err, errlen);
	close(fd);
	*entry_off = h.text_offset;
	*kernel_end = h.text_offset + h.image_size;
	return r;
}

/* The initrd goes just below the device tree, page-aligned, above the
 * kernel's whole image. Its guest-physical range in *start, *end. */
static int load_initrd(struct machine *m, const char *path, uint64_t kernel_end,
		       uint64_t fdt_off, uint64_t *start, uint64_t *end, char *err,
		       size_t errlen)
{
	uint64_t size;
	int fd = open_regular(path, "initrd", &size, err, errlen);
	if (fd < 0)
		return -1;
	uint64_t room = fdt_off - kernel_end;      /* kernel_end <= fdt_off */
	if (size > room || ((fdt_off - size) & ~(PAGE_SIZE - 1)) < kernel_end) {
		snprintf(err, errlen, "initrd %s: %llu bytes do not fit in guest RAM beside "
			 "the kernel (use a larger --mem)", path, (unsigned long long)size);
		close(fd);
		return -1;
	}
	uint64_t off = (fdt_off - size) & ~(PAGE_SIZE - 1);
	int r = read_into_ram(m, fd, off, size, "initrd", path, err, errlen);
	close(fd);
	*start = RAM_BASE + off;
	*end = *start + size;
	return r;
}

int boot_load(struct machine *m, const struct boot_config *cfg, char *err, size_t errlen)
{
	if (m->ram_size < 16ULL << 20) {
		snprintf(err, errlen, "--mem must be at least 16 MiB to boot Linux");
		return -1;
	}
	uint64_t fdt_off = (m->ram_size - FDT_REGION) & ~(FDT_REGION - 1);
	uint64_t entry_off, kernel_end;
	int r = load_kernel(m, cfg->kernel, fdt_off, &entry_off, &kernel_end, err, errlen);
	if (r)
		return r;

	uint64_t initrd_start = 0, initrd_end = 0;
	if (cfg->initrd && load_initrd(m, cfg->initrd, kernel_end, fdt_off, &initrd_start,
				       &initrd_end, err, errlen))
		return -1;

	if (fdt_build(m, m->ram + fdt_off, FDT_MAX, cfg->append ? cfg->append : "",
		      initrd_start, initrd_end) < 0) {
		snprintf(err, errlen, "cannot build the device tree (too many devices?)");
		return -1;
	}

	struct hart *h = m->harts[0];
	h->priv = PRV_S;
	h->pc = RAM_BASE + entry_off;
	h->x[10] = 0;
	h->x[11] = RAM_BASE + fdt_off;
	hart_update_tlb_context(h);
	for (unsigned i = 1; i < m->nharts; i++) {
		m->harts[i]->priv = PRV_S;
		hart_update_tlb_context(m->harts[i]);
	}
	return 0;
}
