/*
 * tap.h - a host TAP interface: whole Ethernet frames in and out.
 */
#ifndef FERRY_TAP_H
#define FERRY_TAP_H

#include <stddef.h>

#include <stdbool.h>

/* Attach to the TAP interface ifname: a non-blocking descriptor that reads
 * and writes one frame per call, without packet information or virtio-net
 * headers. A missing interface is an error (a mistyped name must not make
 * a new, unconnected TAP) unless create is set. -1 with the reason and a
 * hint in err. */
int tap_open(const char *ifname, bool create, char *err, size_t errlen);

#endif
