/*
 * tap.c - open a TAP interface for virtio-net.
 *
 * IFF_TAP | IFF_NO_PI: each read() returns one whole Ethernet frame and
 * each write() sends one, with no header in front, so the device offers
 * the guest no offloads and strips the virtio-net header itself. The
 * descriptor is non-blocking: the I/O thread reads until EAGAIN, and a
 * full host queue drops a transmitted frame, as a busy link would.
 *
 * TUNSETIFF creates the interface when none has that name, which would
 * turn a mistyped name into a new TAP that nothing is connected to: a
 * guest on it would run without a network and nobody would be told. So
 * we attach only to an interface that exists, unless asked to create it
 * (--net tap=NAME,create=on).
 */
#include "backend/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>          /* before linux/if.h, which then defers to it */
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static void attach_error(const char *ifname, int e, char *err, size_t errlen)
{
	if (e == EPERM)
		snprintf(err, errlen, "tap %s: cannot attach: %s (create it for this user "
			 "first: ip tuntap add dev %s mode tap user $(id -un); or run with "
			 "CAP_NET_ADMIN)", ifname, strerror(e), ifname);
	else if (e == EINVAL)
		snprintf(err, errlen, "tap %s: cannot attach: the interface exists but is "
			 "not a TAP (ip -d link show %s tells what it is)", ifname, ifname);
	else
		snprintf(err, errlen, "tap %s: cannot attach: %s%s", ifname, strerror(e),
			 e == EBUSY ? " (another process holds it)" : "");
}

int tap_open(const char *ifname, bool create, char *err, size_t errlen)
{
	struct ifreq ifr;
	if (strlen(ifname) >= sizeof(ifr.ifr_name)) {
		snprintf(err, errlen, "tap %s: interface name longer than %zu characters",
			 ifname, sizeof(ifr.ifr_name) - 1);
		return -1;
	}
	if (!create && if_nametoindex(ifname) == 0) {
		snprintf(err, errlen, "tap %s: no such interface (create it first: ip tuntap "
			 "add dev %s mode tap; or let ferry-vm create it with --net "
			 "tap=%s,create=on)", ifname, ifname, ifname);
		return -1;
	}
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "tap %s: cannot open /dev/net/tun: %s", ifname,
			 strerror(errno));
		return -1;
	}
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, ifname);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		attach_error(ifname, errno, err, errlen);
		close(fd);
		return -1;
	}
	return fd;
}
