/*
 * boot.h - putting a Linux kernel, an initrd and a device tree in RAM and
 * pointing hart 0 at the kernel, as the RISC-V Linux boot protocol asks.
 */
#ifndef FERRY_BOOT_H
#define FERRY_BOOT_H

#include <stddef.h>

struct machine;

struct boot_config {
	const char *kernel;     /* a RISC-V Linux Image */
	const char *initrd;     /* optional */
	const char *append;     /* kernel command line */
};

/* A kernel file that is not a usable RISC-V Linux Image (bad magic, a
 * damaged or hostile header, a truncated file): a bad argument. */
#define BOOT_BAD_IMAGE (-2)

/* Returns 0, or -1 (cannot load: unreadable, does not fit in RAM) or
 * BOOT_BAD_IMAGE, with one line in err. */
int boot_load(struct machine *m, const struct boot_config *cfg, char *err, size_t errlen);

/* Build the flattened device tree for the machine into buf (fdt.c). */
int fdt_build(struct machine *m, void *buf, size_t size, const char *bootargs,
	      unsigned long long initrd_start, unsigned long long initrd_end);

#endif
