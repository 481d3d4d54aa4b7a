/*
 * devices.h - constructors of the board's devices.
 *
 * Each device is one file with one MMIO ops table; a constructor registers
 * the device's region (machine_add_mmio), its migratable state
 * (machine_add_state) and, where it has host-side inputs, an io_watch.
 * The device tree is generated from the registered regions, so a
 * constructor has nothing else to declare. Errors are written to err as one
 * line that says what failed and on what; constructors return NULL then.
 */
#ifndef FERRY_DEVICES_H
#define FERRY_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct machine;

/* Platform-level interrupt controller, SiFive/QEMU-virt compatible:
 * context 2*h is hart h's M mode, 2*h+1 its S mode. */
struct plic;
struct plic *plic_create(struct machine *m, unsigned nharts);
void plic_set_level(struct plic *p, unsigned irq, int level);
void plic_destroy(struct plic *p);

/* ns16550a UART at UART_BASE, PLIC source UART_IRQ. out_fd < 0 drops
 * output; in_fd < 0 means no input. */
struct uart;
struct uart *uart_create(struct machine *m, int in_fd, int out_fd);
void uart_destroy(struct uart *u);

/* virtio-mmio devices in slot 0..VIRTIO_SLOTS-1. */
struct virtio_dev;
struct virtio_dev *virtio_blk_create(struct machine *m, unsigned slot,
				     const char *path, bool readonly, bool follow,
				     const char *beneath, bool defer_lock, char *err,
				     size_t errlen);
/* Attaches to an existing TAP interface; creates it only with create_tap. */
struct virtio_dev *virtio_net_create(struct machine *m, unsigned slot,
				     const char *tap_ifname, bool create_tap,
				     const uint8_t mac[6], char *err, size_t errlen);
/* Fault tolerance (migrate/ft.c): hold transmitted frames, tagged with
 * the epoch they were sent in; release those of epochs <= upto to the TAP
 * once acknowledged; stop holding (sending or dropping what is held). */
void virtio_net_hold_start(struct virtio_dev *d, uint64_t epoch);
void virtio_net_hold_epoch(struct virtio_dev *d, uint64_t epoch);
void virtio_net_hold_release(struct virtio_dev *d, uint64_t upto);
void virtio_net_hold_stop(struct virtio_dev *d, bool send);
void virtio_net_held(struct virtio_dev *d, uint64_t *frames, uint64_t *bytes);
/* Call fn(opaque) each time a frame is held (on the vCPU thread, under the
 * device's lock: fn may only wake someone); until hold_stop or fn NULL. */
void virtio_net_hold_notify(struct virtio_dev *d, void (*fn)(void *), void *opaque);
struct virtio_dev *virtio_console_create(struct machine *m, unsigned slot,
					 int in_fd, int out_fd);
struct virtio_dev *virtio_rng_create(struct machine *m, unsigned slot);

/* The *_destroy functions free a device once its machine no longer runs
 * (no hart or I/O thread can call it); a virtio-blk disk is flushed and
 * unlocked. They do not unregister the MMIO region. */
void virtio_destroy(struct virtio_dev *d);

#endif
