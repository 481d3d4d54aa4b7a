/*
 * fdt.c - the flattened device tree that tells Linux what this machine is.
 *
 * Built with libfdt's sequential writer from the machine itself: memory,
 * one cpu node per hart (each with its interrupt controller), the CLINT,
 * the PLIC, and a node for every device found at the UART and virtio-mmio
 * addresses. Shapes follow QEMU's virt board, which Linux knows well.
 */
#include "machine/boot.h"
#include "machine/vm.h"

#include <libfdt.h>
#include <stdio.h>
#include <string.h>

#define ISA_STRING "rv64imafdc_zicsr_zifencei_zicntr"
#define PHANDLE_PLIC 1
#define PHANDLE_INTC(h) (2 + (h))

/* Sequential-write calls return negative on error; remember the first. */
struct fdt_writer {
	void *buf;
	int err;
};

#define W(call) do { int r_ = (call); if (r_ < 0 && !w->err) w->err = r_; } while (0)

static void prop_cells(struct fdt_writer *w, const char *name, const uint32_t *cells, int n)
{
	fdt32_t be[32];
	for (int i = 0; i < n && i < 32; i++)
		be[i] = cpu_to_fdt32(cells[i]);
	W(fdt_property(w->buf, name, be, (int)(n * sizeof(fdt32_t))));
}

static void prop_reg(struct fdt_writer *w, uint64_t base, uint64_t size)
{
	uint32_t c[4] = { (uint32_t)(base >> 32), (uint32_t)base,
			  (uint32_t)(size >> 32), (uint32_t)size };
	prop_cells(w, "reg", c, 4);
}

static void add_cpus(struct fdt_writer *w, struct machine *m)
{
	char name[32];
	W(fdt_begin_node(w->buf, "cpus"));
	W(fdt_property_u32(w->buf, "#address-cells", 1));
	W(fdt_property_u32(w->buf, "#size-cells", 0));
	W(fdt_property_u32(w->buf, "timebase-frequency", (uint32_t)TIMEBASE_HZ));
	for (unsigned i = 0; i < m->nharts; i++) {
		snprintf(name, sizeof(name), "cpu@%u", i);
		W(fdt_begin_node(w->buf, name));
		W(fdt_property_string(w->buf, "device_type", "cpu"));
		W(fdt_property_u32(w->buf, "reg", i));
		W(fdt_property_string(w->buf, "status", "okay"));
		W(fdt_property_string(w->buf, "compatible", "riscv"));
		W(fdt_property_string(w->buf, "riscv,isa", ISA_STRING));
		W(fdt_property_string(w->buf, "mmu-type", "riscv,sv48"));
		W(fdt_begin_node(w->buf, "interrupt-controller"));
		W(fdt_property_u32(w->buf, "#interrupt-cells", 1));
		W(fdt_property(w->buf, "interrupt-controller", NULL, 0));
		W(fdt_property_string(w->buf, "compatible", "riscv,cpu-intc"));
		W(fdt_property_u32(w->buf, "phandle", PHANDLE_INTC(i)));
		W(fdt_end_node(w->buf));
		W(fdt_end_node(w->buf));
	}
	W(fdt_end_node(w->buf));
}

static void add_clint(struct fdt_writer *w, struct machine *m)
{
	uint32_t ext[2 * 2 * MAX_HARTS];
	for (unsigned i = 0; i < m->nharts; i++) {
		ext[4 * i + 0] = PHANDLE_INTC(i);
		ext[4 * i + 1] = 3;     /* M software */
		ext[4 * i + 2] = PHANDLE_INTC(i);
		ext[4 * i + 3] = 7;     /* M timer */
	}
	W(fdt_begin_node(w->buf, "clint@2000000"));
	static const char compat[] = "sifive,clint0\0riscv,clint0";
	W(fdt_property(w->buf, "compatible", compat, sizeof(compat)));
	prop_reg(w, CLINT_BASE, CLINT_SIZE);
	prop_cells(w, "interrupts-extended", ext, (int)(4 * m->nharts));
	W(fdt_end_node(w->buf));
}

static void add_plic(struct fdt_writer *w, struct machine *m)
{
	uint32_t ext[2 * 2 * MAX_HARTS];
	for (unsigned i = 0; i < m->nharts; i++) {
		ext[4 * i + 0] = PHANDLE_INTC(i);
		ext[4 * i + 1] = 11;    /* M external */
		ext[4 * i + 2] = PHANDLE_INTC(i);
		ext[4 * i + 3] = 9;     /* S external */
	}
	W(fdt_begin_node(w->buf, "plic@c000000"));
	static const char compat[] = "sifive,plic-1.0.0\0riscv,plic0";
	W(fdt_property(w->buf, "compatible", compat, sizeof(compat)));
	prop_reg(w, PLIC_BASE, PLIC_SIZE);
	W(fdt_property_u32(w->buf, "#address-cells", 0));
	W(fdt_property_u32(w->buf, "#interrupt-cells", 1));
	W(fdt_property(w->buf, "interrupt-controller", NULL, 0));
	W(fdt_property_u32(w->buf, "riscv,ndev", PLIC_SOURCES - 1));
	W(fdt_property_u32(w->buf, "phandle", PHANDLE_PLIC));
	prop_cells(w, "interrupts-extended", ext, (int)(4 * m->nharts));
	W(fdt_end_node(w->buf));
}

static void add_device(struct fdt_writer *w, const char *name, const char *compat,
		       uint64_t base, uint64_t size, unsigned irq)
{
	W(fdt_begin_node(w->buf, name));
	W(fdt_property_string(w->buf, "compatible", compat));
	prop_reg(w, base, size);
	W(fdt_property_u32(w->buf, "interrupt-parent", PHANDLE_PLIC));
	W(fdt_property_u32(w->buf, "interrupts", irq));
	if (!strcmp(compat, "ns16550a"))
		W(fdt_property_u32(w->buf, "clock-frequency", 3686400));
	W(fdt_end_node(w->buf));
}

int fdt_build(struct machine *m, void *buf, size_t size, const char *bootargs,
	      unsigned long long initrd_start, unsigned long long initrd_end)
{
	struct fdt_writer wr = { buf, 0 }, *w = &wr;
	char name[64];

	W(fdt_create(buf, (int)size));
	W(fdt_finish_reservemap(buf));
	W(fdt_begin_node(buf, ""));
	W(fdt_property_u32(buf, "#address-cells", 2));
	W(fdt_property_u32(buf, "#size-cells", 2));
	W(fdt_property_string(buf, "compatible", "ferry,virt"));
	W(fdt_property_string(buf, "model", "ferry-vm"));

	W(fdt_begin_node(buf, "chosen"));
	W(fdt_property_string(buf, "bootargs", bootargs));
	if (mmio_find(m, UART_BASE))
		W(fdt_property_string(buf, "stdout-path", "/soc/serial@10000000"));
	if (initrd_end > initrd_start) {
		W(fdt_property_u64(buf, "linux,initrd-start", initrd_start));
		W(fdt_property_u64(buf, "linux,initrd-end", initrd_end));
	}
	W(fdt_end_node(buf));

	snprintf(name, sizeof(name), "memory@%llx", (unsigned long long)RAM_BASE);
	W(fdt_begin_node(buf, name));
	W(fdt_property_string(buf, "device_type", "memory"));
	prop_reg(w, RAM_BASE, m->ram_size);
	W(fdt_end_node(buf));

	add_cpus(w, m);

	W(fdt_begin_node(buf, "soc"));
	W(fdt_property_u32(buf, "#address-cells", 2));
	W(fdt_property_u32(buf, "#size-cells", 2));
	W(fdt_property_string(buf, "compatible", "simple-bus"));
	W(fdt_property(buf, "ranges", NULL, 0));
	if (mmio_find(m, CLINT_BASE))
		add_clint(w, m);
	add_plic(w, m);
	if (mmio_find(m, UART_BASE))
		add_device(w, "serial@10000000", "ns16550a", UART_BASE, UART_SIZE, UART_IRQ);
	for (unsigned i = 0; i < VIRTIO_SLOTS; i++) {
		uint64_t base = VIRTIO_BASE + i * VIRTIO_STRIDE;
		if (!mmio_find(m, base))
			continue;
		snprintf(name, sizeof(name), "virtio_mmio@%llx", (unsigned long long)base);
		add_device(w, name, "virtio,mmio", base, VIRTIO_STRIDE, VIRTIO_IRQ0 + i);
	}
	W(fdt_end_node(buf));

	W(fdt_end_node(buf));
	W(fdt_finish(buf));
	return w->err ? -1 : 0;
}
