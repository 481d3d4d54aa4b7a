"""A delay line between two network namespaces, for kernels without netem.

    python3 delayline.py NS_A NS_B DELAY_MS

creates a TUN device `wan0` in each namespace and carries every packet one
writes to the other, DELAY_MS later (a FIFO: constant delay, no loss, no
reordering), both ways. It prints "ready" once both devices exist; the
caller then gives them addresses, an MTU and any qdisc (tbf for a rate:
the kernel shapes before the delay, as tbf over netem would). The devices
go when this process ends (SIGTERM or SIGINT).

Why: this machine's kernel has no sch_netem (CONFIG_NET_SCH_NETEM is not
set), and a TCP proxy would split the connection and hide the RTT from
both ends. With a large MTU (64000) a 200 Mbit/s link is ~400 packets a
second, which Python carries with little CPU.
"""

import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def open_tun_in(ns, name="wan0"):
    """A TUN device `name` in namespace ns; the fd stays ours after we
    return to our own namespace."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open("/var/run/netns/" + ns, os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns " + ns)
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        if libc.setns(home, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)
        os.close(there)
    os.set_blocking(fd, False)
    return fd


def relay(a, b, delay_s):
    """Forever: what a gives goes to b after delay_s, and the other way."""
    queues = {a: collections.deque(), b: collections.deque()}   # keyed by destination
    other = {a: b, b: a}
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([a, b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                queues[other[fd]].append((now + delay_s, pkt))
        for fd, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(fd, q.popleft()[1])
                except OSError:
                    pass        # the device went down: the packet is lost


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: delayline.py NS_A NS_B DELAY_MS")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    a = open_tun_in(sys.argv[1])
    b = open_tun_in(sys.argv[2])
    print("ready", flush=True)
    try:
        relay(a, b, float(sys.argv[3]) / 1000)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
