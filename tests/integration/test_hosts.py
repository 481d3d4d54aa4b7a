"""Live migration between two hosts, seen from the network and the disk.

Each test builds the namespace topology of topology.py (a switch, hosts
a and b each with br0 and a persistent tap0, a client) and runs ferry-vm
on the hosts with `ip netns exec`, the guest on its host's tap0 with a
fixed MAC and IP. Migration traffic goes between the hosts' own br0
addresses (tcp:10.77.N.2:PORT), over the switch, never over loopback.
Disk images live in a "datastore" directory that both hosts see (the
namespaces share the file system, as hosts share a NAS).

What is proved, and how it would fail:
- a TCP stream from the client to the guest's echo server (tcpserve) runs
  through a migration from a to b and back: the client (STREAM_CLIENT,
  in the client namespace) keeps sending 64-bit words that count the
  stream's offset, reads the echo and compares every byte with what it
  must be, and keeps CRC-32s of both directions. A reset, a stall, a lost,
  duplicated or reordered byte fails the test with the offset where it
  happened; at the end the echo server's own byte count must match;
- after each migration the switch forwards the guest's MAC to the new
  host's port, and the client still reaches the guest's IP at that MAC;
  in the disk test the guest sends nothing at all of its own, so only
  ferry-vm's announce (RARP / gratuitous ARP) can have moved the entry;
- a guest writing its disk continuously (`ft disklog`, O_DIRECT|O_DSYNC)
  through a migration loses no acknowledged record: a fresh boot of the
  image runs `ft disklog-check`, which finds every record in order and
  intact, at least as many as the guest said were acknowledged, and more
  than were written before the migration (the log kept going on host b);
- the image lock follows the VM: while the source, and then the
  destination, runs the guest, another ferry-vm on the same image is
  refused with "in use by another process";
- a migration whose destination dies at switchover (FERRY_TEST_FAULT=
  switchover) leaves the VM running on the source: the TCP stream keeps
  flowing and verifies, ping answers, the switch still points at host
  a, and the image lock is still held.

Skipped only when network namespaces cannot be created (not root).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import topology
from ferrylib import VM, Skip

TIMEOUT = 150
BOOT = 90               # seconds for the guest to come up
MEM = 128               # MiB, the same on both sides of a migration
MAC = "52:54:00:fe:77:01"
ECHO_PORT = 7000
MIGRATION_PORT = 47000
STREAM_RATE = 1 << 20   # bytes a second the client sends
STREAM_WINDOW = 256 << 10   # bytes sent and not yet echoed, at most
FLOWING = 512 << 10     # bytes that must come back to call a stream "flowing"

# The client side of the TCP stream: runs in the client namespace as
#   python3 -c STREAM_CLIENT HOST PORT RATE WINDOW STALL_S
# Stream byte i is byte i % 8 of the little-endian 64-bit word i // 8, so
# every received byte can be checked against its offset. It prints
# "progress SENT RECEIVED" as the echo comes back, stops sending when a
# line "stop" arrives on stdin, half-closes, reads the echo to its end and
# prints "done sent N received N crc_sent X crc_received Y" (exit 0) or
# "error: ..." (exit 1).
STREAM_CLIENT = r'''
import socket, struct, sys, threading, time, zlib

host, port = sys.argv[1], int(sys.argv[2])
rate, window, stall = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
CHUNK = 16384
state = {"sent": 0, "received": 0, "crc_sent": 0, "crc_received": 0,
         "stop": False, "error": None}
cond = threading.Condition()

def pattern(off, n):
    first, last = off // 8, (off + n + 7) // 8
    data = struct.pack("<%dQ" % (last - first), *range(first, last))
    return data[off - first * 8:off - first * 8 + n]

def fail(why):
    with cond:
        if state["error"] is None:
            state["error"] = why
        cond.notify_all()

def mismatch(off, got):
    want = pattern(off, len(got))
    i = next(k for k in range(len(got)) if got[k] != want[k])
    text = "byte %d of the echo is 0x%02x, want 0x%02x" % (off + i, got[i], want[i])
    for k in range(i, min(len(got) - 16, i + 64)):
        a, b = struct.unpack_from("<QQ", got, k)
        if b == a + 1 and a < 1 << 40:
            shift = a * 8 - (off + k)
            text += ("; from byte %d on it carries stream byte %d: %s" %
                     (off + k, a * 8, "%d bytes lost" % shift if shift > 0 else
                      "%d bytes duplicated" % -shift if shift < 0 else
                      "corrupted in place"))
            break
    return text

def sender(sock):
    start = time.monotonic()
    try:
        while True:
            with cond:
                while (not state["stop"] and state["error"] is None
                       and state["sent"] - state["received"] >= window):
                    cond.wait(0.5)
                if state["stop"] or state["error"] is not None:
                    break
                off = state["sent"]
            # one reading of the clock: read twice, a loaded host's second
            # one can come after due (a negative sleep raises)
            wait = start + off / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            chunk = pattern(off, CHUNK)
            sock.sendall(chunk)
            with cond:
                state["sent"] += CHUNK
                state["crc_sent"] = zlib.crc32(chunk, state["crc_sent"])
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        fail("sending at byte %d: %s" % (state["sent"], e))

def control():
    for line in sys.stdin:
        if line.strip() == "stop":
            with cond:
                state["stop"] = True
                cond.notify_all()
            return

sock = socket.create_connection((host, port), timeout=30)
sock.settimeout(stall)
threading.Thread(target=sender, args=(sock,), daemon=True).start()
threading.Thread(target=control, daemon=True).start()
last_print = 0
while state["error"] is None:
    try:
        data = sock.recv(65536)
    except socket.timeout:
        fail("no echo for %g s at byte %d (sent %d)" % (stall, state["received"],
                                                        state["sent"]))
        break
    except OSError as e:
        fail("receiving at byte %d: %s" % (state["received"], e))
        break
    if not data:
        break
    if data != pattern(state["received"], len(data)):
        fail(mismatch(state["received"], data))
        break
    with cond:
        state["crc_received"] = zlib.crc32(data, state["crc_received"])
        state["received"] += len(data)
        cond.notify_all()
    now = time.monotonic()
    if now - last_print >= 0.05:
        print("progress %d %d" % (state["sent"], state["received"]), flush=True)
        last_print = now
if state["error"] is None and not state["stop"]:
    fail("the guest closed the connection at byte %d" % state["received"])
if state["error"] is None and state["received"] != state["sent"]:
    fail("sent %d bytes, the echo ended after %d" % (state["sent"], state["received"]))
if state["error"] is not None:
    print("error: " + state["error"], flush=True)
    sys.exit(1)
print("done sent %d received %d crc_sent %08x crc_received %08x"
      % (state["sent"], state["received"], state["crc_sent"], state["crc_received"]),
      flush=True)
'''


# ---- helpers ----------------------------------------------------------------

def need_namespaces():
    if not topology.available():
        raise Skip("cannot create network namespaces (needs root and iproute2)")


class Stream:
    """STREAM_CLIENT running in the client namespace against the guest."""

    def __init__(self, topo, ip, port=ECHO_PORT, stall_s=60):
        self.proc = subprocess.Popen(
            topo.exec_prefix(topo.client) +
            [sys.executable, "-u", "-c", STREAM_CLIENT, ip, str(port),
             str(STREAM_RATE), str(STREAM_WINDOW), str(stall_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.received = 0
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            m = re.match(r"progress (\d+) (\d+)$", line.strip())
            with self.cond:
                if m:
                    self.received = int(m.group(2))
                else:
                    self.lines.append(line.rstrip())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _said(self):
        return "\n".join(self.lines[-10:]) or "(nothing)"

    def wait_flowing(self, more=FLOWING, timeout=60, what="the stream"):
        """Waits until `more` bytes beyond what has come back so far come
        back; returns the new count. Fails if the client gave up."""
        deadline = time.monotonic() + timeout
        with self.cond:
            goal = self.received + more
            while self.received < goal:
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"{what}: the TCP client ended "
                                         f"(status {self.proc.returncode}) at byte "
                                         f"{self.received}: {self._said()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: the echo stalled at byte "
                                         f"{self.received} (waited {timeout} s for "
                                         f"{goal}); client said: {self._said()}")
                self.cond.wait(min(left, 0.5))
            return self.received

    def finish(self, timeout=60):
        """Stops sending, drains the echo and returns (sent, received)
        once the client has verified everything."""
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except OSError:
            pass        # it has ended already; its last words say why
        status = self.proc.wait(timeout)
        self.reader.join(10)
        done = [line for line in self.lines if line.startswith("done ")]
        assert status == 0 and done, (f"the TCP stream failed (status {status}): "
                                      f"{self._said()}")
        m = re.match(r"done sent (\d+) received (\d+) crc_sent (\w+) "
                     r"crc_received (\w+)$", done[-1])
        assert m and m.group(3) == m.group(4), done[-1]
        return int(m.group(1)), int(m.group(2))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        if exc_type is not None:
            print(f"---- TCP client, last lines ----\n{self._said()}", file=sys.stderr)


class Datastore:
    """A directory of raw disk images that every host sees."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-datastore-"))

    def image(self, name, mib):
        path = self.dir / name
        with open(path, "wb") as f:
            f.truncate(mib << 20)
        return path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def guest(topo, host, run, disk=None, name="guest"):
    """Boots the guest on host, eth0 on that host's tap0, running run
    (a list of words, ";" between commands)."""
    append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
              f"ferry.run={','.join(run)}")
    return VM(append=append, mem=MEM, disk=disk, net=f"tap=tap0,mac={MAC}",
              prefix=topo.exec_prefix(topo.hosts[host]), name=name)


def destination(topo, host, disk=None, env=None, name="dst"):
    """An incoming ferry-vm on host, listening on its br0 address; returns
    (vm, uri)."""
    uri = f"tcp:{topo.host_ip(host)}:{MIGRATION_PORT}"
    vm = VM(incoming=uri, mem=MEM, disk=disk, net=f"tap=tap0,mac={MAC}", env=env,
            prefix=topo.exec_prefix(topo.hosts[host]), name=name)
    try:
        topo.wait_listening(topo.hosts[host], MIGRATION_PORT, alive=vm.running)
    except BaseException:
        vm.close(failed=True)
        raise
    return vm, uri


def migrate(src, uri, timeout=120):
    """Migrates src to uri; returns the final MIGRATION event's data."""
    q = src.qmp()
    q.cmd("migrate", uri=uri)
    deadline = time.monotonic() + timeout
    while True:
        ev = q.wait_event("MIGRATION", timeout=max(1, deadline - time.monotonic()))
        if ev["data"]["status"] in ("completed", "failed", "cancelled"):
            return ev["data"]


def migrate_ok(src, dst, uri):
    r = migrate(src, uri)
    assert r["status"] == "completed", f"migration {src.name} -> {dst.name}: {r}"
    assert src.qmp().cmd("query-status")["status"] == "postmigrate", src.tail()
    assert src.quit() == 0, f"{src.name} after handing over:\n{src.tail()}"
    assert dst.running(), dst.tail()
    print(f"migrated {src.name} -> {dst.name}: total {r.get('total_ms')} ms, "
          f"downtime {r.get('downtime_ms')} ms, {r.get('transferred_bytes')} bytes")
    return r


def wait_switch_port(topo, host, timeout=10):
    """Waits until the switch forwards the guest's MAC to host's port."""
    want = topo.switch_port(host)
    deadline = time.monotonic() + timeout
    while True:
        port = topo.fdb_port(MAC)
        if port == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the switch forwards {MAC} to {port}, not to host "
                                 f"{host}'s port {want}, {timeout} s on")
        time.sleep(0.05)


def assert_reaches_guest(topo, what):
    """The client pings the guest's IP, and knows it under the guest's MAC."""
    status, out = topo.ping(topo.guest_ip)
    assert status == 0, f"{what}: ping {topo.guest_ip} from the client:\n{out}"
    neigh = topology.sh("ip", "neigh", "show", topo.guest_ip, ns=topo.client)
    assert MAC in neigh.lower(), (f"{what}: the client knows {topo.guest_ip} as "
                                  f"{neigh.strip()!r}, not at {MAC}")


def assert_arp_answers(topo, what):
    """The guest's IP answers an ARP request from the client with its MAC.
    Unlike a ping this gives the guest nothing to send afterwards."""
    mac = topo.arp(topo.guest_ip)
    assert mac == MAC, (f"{what}: who-has {topo.guest_ip} from the client: "
                        f"{'answered by ' + mac if mac else 'no answer'}, want {MAC}")


def assert_image_refused(topo, host, image, what):
    """Another ferry-vm on host cannot open image for writing."""
    intruder = VM(append="console=ttyS0 quiet ferry.run=ft,true", mem=MEM, disk=image,
                  control=False, prefix=topo.exec_prefix(topo.hosts[host]),
                  name="intruder")
    with intruder:
        try:
            status = intruder.wait_exit(30)
        except TimeoutError:
            raise AssertionError(f"{what}: a second ferry-vm opened {image} and "
                                 f"runs:\n{intruder.tail()}") from None
        out = intruder.output()
        assert status != 0 and "in use by another process" in out and str(image) in out, (
            f"{what}: a second ferry-vm on {image} was not refused with a clear "
            f"error (status {status}):\n{intruder.tail()}")


# ---- tests ------------------------------------------------------------------

def test_tcp_stream_through_migration_there_and_back():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image = store.image("guest.raw", 8)
        vm = vms.enter_context(guest(topo, "a", ["tcpserve", "--echo", "--port",
                                                  str(ECHO_PORT)],
                                     disk=image, name="on-a"))
        vm.wait_for(rf"^tcpserve: listening on port {ECHO_PORT}", BOOT)
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing(what="before migrating")
            wait_switch_port(topo, "a")
            for there, name in (("b", "on-b"), ("a", "back-on-a")):
                dst, uri = destination(topo, there, disk=image, name=name)
                vms.enter_context(dst)
                before = stream.received
                migrate_ok(vm, dst, uri)
                vm = dst
                print(f"echoed {stream.received - before} bytes while migrating")
                stream.wait_flowing(what=f"after migrating to host {there}")
                wait_switch_port(topo, there)
                assert_reaches_guest(topo, f"on host {there}")
            sent, received = stream.finish()
        m = vm.wait_for(r"^tcpserve: \S+ closed after (\d+) bytes", 30)
        assert int(m.group(1)) == sent, (f"the guest echoed {m.group(1)} bytes, "
                                         f"the client sent {sent}")
        assert "failed after" not in vm.console(), vm.tail()
        print(f"stream: {sent} bytes sent and echoed intact")


def test_disk_log_through_migration_and_lock_follows():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store:
        image = store.image("log.raw", 16)      # 32768 records: never full here
        run = ["ft", "disklog", "/dev/vda", "--rate", "400"]
        with guest(topo, "a", run, disk=image, name="on-a") as src:
            src.wait_for(r"^ft: disklog: seq \d+", BOOT)
            assert_arp_answers(topo, "on host a")   # the switch learns port a
            wait_switch_port(topo, "a")
            assert_image_refused(topo, "b", image, "while host a runs the guest")
            dst, uri = destination(topo, "b", disk=image, name="on-b")
            with dst:
                seq = re.findall(r"^ft: disklog: seq (\d+)$", src.console(), re.M)
                before = int(seq[-1]) + 1
                migrate_ok(src, dst, uri)
                # the guest sends nothing of its own (disklog, no neighbour in
                # use): only ferry-vm's announce can move the switch's entry
                wait_switch_port(topo, "b")
                assert_arp_answers(topo, "on host b")
                assert_image_refused(topo, "a", image, "after the migration to b")
                m = dst.wait_for(r"^ft: disklog: seq (\d+)$", 30)
                m = dst.wait_for(r"^ft: disklog: seq (\d+)$", 30)
                assert_reaches_guest(topo, "on host b")
                q = dst.qmp()
                q.cmd("stop")
                acked = int(re.findall(r"^ft: disklog: seq (\d+)$", dst.console(),
                                       re.M)[-1]) + 1
                assert "write of seq" not in dst.console(), dst.tail()
                q.cmd("quit")
                assert dst.wait_exit(30) == 0, dst.tail()
        assert acked > before, (acked, before)
        check = VM(append="console=ttyS0 quiet ferry.run=ft,disklog-check,/dev/vda",
                   mem=MEM, disk=image, control=False, name="check")
        with check:
            status = check.wait_exit(BOOT)
            said = re.findall(r"^ft: disklog-check: .*$", check.console(), re.M)
            m = re.search(r"^ft: disklog-check: (\d+) records ok$", check.console(), re.M)
            assert status == 0 and m, (f"disklog-check (status {status}): "
                                        f"{said[-1] if said else 'said nothing'}\n"
                                        f"{check.tail()}")
        found = int(m.group(1))
        assert found >= acked, (f"{acked} records were acknowledged, the image "
                                f"holds {found}")
        print(f"disk: {before} records before the migration, {acked} acknowledged "
              f"in all, {found} on the image, all in order and intact")


def test_failed_switchover_leaves_the_vm_on_the_source():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store:
        image = store.image("guest.raw", 8)
        with guest(topo, "a", ["tcpserve", "--echo", "--port", str(ECHO_PORT)],
                   disk=image, name="on-a") as src:
            src.wait_for(rf"^tcpserve: listening on port {ECHO_PORT}", BOOT)
            with Stream(topo, topo.guest_ip) as stream:
                stream.wait_flowing(what="before migrating")
                wait_switch_port(topo, "a")
                env = dict(os.environ, FERRY_TEST_FAULT="switchover")
                dst, uri = destination(topo, "b", disk=image, env=env, name="dies")
                with dst:
                    r = migrate(src, uri)
                    assert r["status"] == "failed" and r.get("error"), r
                    assert dst.wait_exit(30) != 0, dst.tail()
                print(f"migration failed as planned: {r['error']}")
                assert src.running(), src.tail()
                assert src.qmp().cmd("query-status")["status"] == "running"
                stream.wait_flowing(what="after the failed migration")
                assert_reaches_guest(topo, "after the failed migration")
                assert topo.fdb_port(MAC) == topo.switch_port("a"), (
                    f"the switch moved {MAC} to {topo.fdb_port(MAC)}")
                assert_image_refused(topo, "b", image, "after the failed migration")
                stream.wait_flowing(what="at the end")
                sent, received = stream.finish()
            m = src.wait_for(r"^tcpserve: \S+ closed after (\d+) bytes", 30)
            assert int(m.group(1)) == sent, (m.group(0), sent)
            assert src.running(), src.tail()
