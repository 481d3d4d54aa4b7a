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

Helpers for what tests look at: exec_prefix() runs a program on a host
(e.g. ferry-vm: VM(prefix=topo.exec_prefix(topo.hosts["a"]))),
switch_port() names a host's port on the switch, fdb_port() says which
port the switch would forward a MAC to, wait_listening() waits for a TCP
listener inside a namespace, and ping() pings from the client.
"""

import os
import subprocess
import sys
import time

SUBNET = "10.77.{n}.{host}"

# python3 -c ARP_ASK IFNAME MY_IP IP TIMEOUT: broadcast an ARP request for
# IP on IFNAME (a raw packet socket) and print the MAC of the first reply.
ARP_ASK = r'''
import socket, struct, sys, time
ifname, mine, want, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
req = (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) +
       mac + socket.inet_aton(mine) + b"\x00" * 6 + socket.inet_aton(want))
deadline = time.monotonic() + timeout
next_ask = 0
while time.monotonic() < deadline:
    if time.monotonic() >= next_ask:
        s.send(req.ljust(60, b"\x00"))
        next_ask = time.monotonic() + 0.5
    s.settimeout(max(0.01, min(next_ask, deadline) - time.monotonic()))
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if (len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02"
            and f[28:32] == socket.inet_aton(want)):
        print(":".join("%02x" % b for b in f[22:28]))
        sys.exit(0)
sys.exit(1)
'''


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
        return subprocess.Popen(self.exec_prefix(ns) + list(args), **kw)

    @staticmethod
    def exec_prefix(ns):
        """The words that run a command inside namespace ns."""
        return ["ip", "netns", "exec", ns]

    def switch_port(self, host):
        """The switch's port (a veth in the switch namespace) for a host."""
        return "%s-p%s" % (self.prefix, host)

    def fdb_port(self, mac):
        """The switch port the bridge has learned for mac, or None."""
        mac = mac.lower()
        for line in sh("bridge", "fdb", "show", "br", "sw", ns=self.switch).splitlines():
            words = line.split()
            if (len(words) >= 3 and words[0].lower() == mac and words[1] == "dev"
                    and "permanent" not in words):
                return words[2]
        return None

    @staticmethod
    def listening(ns, port):
        """True when something in namespace ns listens on TCP port."""
        out = sh("ss", "-H", "-l", "-t", "-n", ns=ns)
        return any(line.split()[3].endswith(":%d" % port)
                   for line in out.splitlines() if len(line.split()) > 3)

    def wait_listening(self, ns, port, timeout=30, alive=None):
        """Waits for a TCP listener on port in namespace ns; alive(), if
        given, is asked each time and a false answer stops the wait."""
        deadline = time.monotonic() + timeout
        while not self.listening(ns, port):
            if alive is not None and not alive():
                raise RuntimeError("%s: gave up waiting for a listener on port %d: "
                                   "the process that should listen has ended" % (ns, port))
            if time.monotonic() > deadline:
                raise TimeoutError("%s: nothing listens on TCP port %d after %d s"
                                   % (ns, port, timeout))
            time.sleep(0.05)

    def arp(self, ip, timeout=10):
        """Asks, from the client, who has ip (one ARP request, repeated each
        half second until answered) and returns the MAC that answered, or
        None. Unlike ping this leaves the answering host with nothing to
        send later (no neighbour entry in use, so no probes of its own)."""
        r = subprocess.run(self.exec_prefix(self.client) +
                           [sys.executable, "-c", ARP_ASK, "uplink", self.client_ip, ip,
                            str(timeout)], capture_output=True, text=True)
        if r.returncode not in (0, 1):
            raise RuntimeError("arp %s from %s: %s" % (ip, self.client, r.stderr.strip()))
        return r.stdout.strip() or None

    def ping(self, ip, count=3, interval=0.2, deadline=30):
        """Pings ip from the client; returns (exit status, output)."""
        r = subprocess.run(self.exec_prefix(self.client) +
                           ["ping", "-n", "-c", str(count), "-i", str(interval),
                            "-w", str(deadline), ip], capture_output=True, text=True)
        return r.returncode, r.stdout + r.stderr
