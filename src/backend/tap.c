/*
 * tap.c - open a TAP interface for virtio-net.
 *
 * IFF_TAP | IFF_NO_PI: each read() returns one whole Ethernet frame and
 * each write() sends one, with no header in front, so the device offers
 * the guest no offloads and strips the virtio-net header itself. The
 * descriptor is non-blocking: the I/O thread reads until EAGAIN, and a
 * full host queue drops a transmitted frame, as a busy link would.
 */
#include "backend/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int tap_open(const char *ifname, char *err, size_t errlen)
{
	struct ifreq ifr;
	if (strlen(ifname) >= sizeof(ifr.ifr_name)) {
		snprintf(err, errlen, "tap %s: interface name longer than %zu characters",
			 ifname, sizeof(ifr.ifr_name) - 1);
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
		int e = errno;
		if (e == EPERM)
			snprintf(err, errlen, "tap %s: cannot attach: %s (create it for this "
				 "user first: ip tuntap add dev %s mode tap user $(id -un); or "
				 "run with CAP_NET_ADMIN)", ifname, strerror(e), ifname);
		else
			snprintf(err, errlen, "tap %s: cannot attach: %s%s", ifname,
				 strerror(e), e == EBUSY ? " (another process holds it)" : "");
		close(fd);
		return -1;
	}
	return fd;
}
