/*
 * tap.h - a host TAP interface: whole Ethernet frames in and out.
 */
#ifndef FERRY_TAP_H
#define FERRY_TAP_H

#include <stddef.h>

/* Attach to TAP interface ifname (created if missing and allowed):
 * a non-blocking descriptor that reads and writes one frame per call,
 * without packet information or virtio-net headers. -1 with the reason
 * and a hint in err. */
int tap_open(const char *ifname, char *err, size_t errlen);

#endif
