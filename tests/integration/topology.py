"""topology.py - hosts as network namespaces, joined by a switch.

The test topology for ferry's network-level tests and benchmarks:

    client ns ──veth──┐
    host-a ns ──veth──┤ switch ns: bridge "sw" (the physical switch)
    host-b ns ──veth──┘

Each host namespace has a bridge "br0" holding its uplink veth and a
persistent TAP "tap0" for the VM's virtio-net, so a guest on host-a is on
the same L2 segment as the client and host-b. Hosts carry their own
addresses on br0 (migration traffic goes between them, not over
loopback); the guest and the client have theirs on the same /24.

Names carry a per-run prefix so parallel runs and leftovers never clash.
Everything here only talks to namespaces it created.
"""

import os
import subprocess

SUBNET = "10.77.{n}.{host}"


def sh(*args, ns=None, check=True):
    """Run a command (in namespace ns if given) and return its stdout."""
    cmd = list(args)
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.strip()))
    return r.stdout


def available():
    """True when this process may create namespaces (root, iproute2)."""
    if os.geteuid() != 0:
        return False
    try:
        name = "ferry-probe-%d" % os.getpid()
        sh("ip", "netns", "add", name)
        sh("ip", "netns", "del", name)
        return True
    except (RuntimeError, FileNotFoundError):
        return False


class Topology:
    """A switch, N hosts and a client; use as a context manager."""

    def __init__(self, hosts=("a", "b"), net=None):
        self.prefix = "fy%d" % (os.getpid() % 100000)
        self.n = net if net is not None else os.getpid() % 200 + 20
        self.hosts = {h: "%s-host-%s" % (self.prefix, h) for h in hosts}
        self.client = "%s-client" % self.prefix
        self.switch = "%s-switch" % self.prefix
        self.guest_ip = self.addr(10)
        self.client_ip = self.addr(100)

    def addr(self, host):
        return SUBNET.format(n=self.n, host=host)

    def host_ip(self, name):
        return self.addr(1 + sorted(self.hosts).index(name))

    def _port(self, ns, port):
        """A veth from namespace ns into the switch, named port."""
        sw_end = "%s-%s" % (self.prefix, port)
        sh("ip", "link", "add", "uplink", "netns", ns, "type", "veth",
           "peer", "name", sw_end, "netns", self.switch)
        sh("ip", "link", "set", sw_end, "master", "sw", "up", ns=self.switch)
        sh("ip", "link", "set", "uplink", "up", ns=ns)

    def up(self):
        sh("ip", "netns", "add", self.switch)
        sh("ip", "link", "add", "sw", "type", "bridge", ns=self.switch)
        sh("ip", "link", "set", "sw", "up", ns=self.switch)
        for name, ns in sorted(self.hosts.items()):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            self._port(ns, "p" + name)
            sh("ip", "link", "add", "br0", "type", "bridge", ns=ns)
            sh("ip", "link", "set", "uplink", "master", "br0", ns=ns)
            sh("ip", "tuntap", "add", "dev", "tap0", "mode", "tap", ns=ns)
            sh("ip", "link", "set", "tap0", "master", "br0", "up", ns=ns)
            sh("ip", "addr", "add", self.host_ip(name) + "/24", "dev", "br0", ns=ns)
            sh("ip", "link", "set", "br0", "up", ns=ns)
        sh("ip", "netns", "add", self.client)
        sh("ip", "link", "set", "lo", "up", ns=self.client)
        self._port(self.client, "pc")
        sh("ip", "addr", "add", self.client_ip + "/24", "dev", "uplink", ns=self.client)
        return self

    def down(self):
        for ns in list(self.hosts.values()) + [self.client, self.switch]:
            sh("ip", "netns", "del", ns, check=False)

    def __enter__(self):
        try:
            return self.up()
        except Exception:
            self.down()
            raise

    def __exit__(self, *exc):
        self.down()

    def run(self, ns, *args, **kw):
        """subprocess.Popen of a command inside namespace ns."""
        return subprocess.Popen(["ip", "netns", "exec", ns] + list(args), **kw)
