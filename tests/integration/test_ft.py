"""Fault tolerance: a primary ferry-vm checkpoints its guest to a secondary
on another host every epoch; when the primary dies the secondary runs the
guest from the last complete checkpoint, and the guest's TCP connections
go on.

The topology of topology.py (a switch, hosts a and b each with br0 and
tap0, a client): the primary on host a, the secondary (`--ft-secondary`)
on host b, on the same tap and MAC, both on one shared disk image. The
client streams through the guest's echo server (tcpserve) with
test_hosts.py's STREAM_CLIENT, which checks every byte of the echo
against its offset and fails on a reset, a stall, or any lost,
duplicated or reordered byte.

What is proved, and how it would fail:
- kill -9 of the primary and its link cut mid-stream: the secondary
  reports the primary lost, the test (the arbiter, as etcd will be) says
  ft-takeover, and the same TCP connection goes on with every byte
  intact; the echo server's own count matches what the client sent.
  Then FT is restored: a new secondary on host a, the guest on b
  protected again (ft-start on the former secondary);
  Without output commit the guest's ACKs of the last epoch would have
  reached the client before the secondary had the state that sent them:
  those bytes are lost on failover and the stream stalls or fails;
- kill -9 of the secondary: the primary goes on, reports `unprotected`
  (query-ft and FT_UNPROTECTED), releases what it held, and the stream
  keeps flowing and verifies;
- the same with on_loss "hold" (ferryd's choice), a guest counter over
  UDP: the primary pauses, reports `secondary-lost`, refuses cont and
  ft-stop, and not one datagram reaches the receiver until ft-continue,
  after which the counter goes on; a second time `quit` instead: nothing
  held ever goes out;
- the primary dies halfway through sending an epoch (its pages sent, not
  its state: FERRY_TEST_FAULT=ft-mid-epoch:N): the secondary discards
  that epoch, takes over at the one before (`--ft-takeover auto`), and
  the stream goes on intact: a half-applied epoch would crash the guest
  or corrupt the stream.
- bad input: a malformed --ft-secondary or --ft-takeover exits 2 with
  one line; ft-start without a uri, with an epoch out of range or a bad
  secret_file is refused with the reason; a secondary nobody listens for leaves the
  guest running, unprotected, with the reason in query-ft;
- the FT link cut with both alive, and the secondary told to take over
  anyway (a wrong arbiter): it cannot take the disk lock the primary
  holds, so it ends without running; the primary goes on unprotected and
  the stream with it: exactly one runs.
- a guest counter sent as UDP datagrams (tests/guest/udpcount.c: one
  datagram a number), primary killed mid-stream: the receiver never sees
  a number repeat or go backwards. UDP hides nothing, so output released
  before the secondary held its epoch would show up as repeats when the
  secondary replays that epoch.
- disk writes (docs/stream.md "Output commit for disks"): a guest log
  (tests/guest/ftdisklog.c) that checks before each write that the
  sector is not its own already and reads its writes back, acknowledging
  records over UDP; the primary dies mid-epoch (FERRY_TEST_FAULT=
  ft-mid-epoch:N): the discarded epoch's writes are not on the image
  (with writes going straight to the image, the resumed guest finds its
  own records ahead of it); the primary dies just after an ACK, before
  writing that epoch's writes (ft-after-ack:N): the secondary writes them
  at takeover (without that, a record the guest wrote is missing). Then a
  fresh boot's `ft disklog-check` finds every acknowledged record; and
  ft-stop, then a killed secondary, each write out what the primary held
  (dropping it instead, the guest's read-back of an earlier record fails).
- early epochs: with epoch_ms 1500, each of 20 echo round trips one
  after another ends its epoch early (query-ft counts them), min_epoch_ms
  after the last, instead of waiting out the 1.5 s epoch.
The client-visible gap at failover is printed, not asserted.

Skipped only when network namespaces cannot be created (not root).
"""

import os
import re
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import topology
from ferrylib import BUILD, FERRY_VM, REPO, VM, QMPError, Skip, free_tcp_port
from test_hosts import (BOOT, ECHO_PORT, MAC, MEM, Datastore, Stream,
                        need_namespaces, wait_switch_port)

TIMEOUT = 150
# alone under tests/run -j: FT link timeouts and failover gaps
SERIAL = True
FT_PORT = 47100
EPOCH_MS = 50
FAULT_EPOCH = 80


class Gap:
    """Samples a Stream's echo count and keeps the longest time it stood
    still (what a client sees of a failover)."""

    def __init__(self, stream):
        self.stream = stream
        self.longest = 0.0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        last, since = self.stream.received, time.monotonic()
        while not self.stop:
            time.sleep(0.005)
            now, got = time.monotonic(), self.stream.received
            if got != last:
                self.longest = max(self.longest, now - since)
                last, since = got, now

    def end(self):
        self.stop = True
        self.thread.join()
        return self.longest


def secondary(topo, disk, args=(), env=None, name="secondary", host="b", timeout_ms=2000):
    """An FT secondary on host listening on its br0 address; returns
    (vm, uri)."""
    uri = f"tcp:{topo.host_ip(host)}:{FT_PORT}"
    vm = VM(mem=MEM, disk=disk, net=f"tap=tap0,mac={MAC}", env=env,
            args=["--ft-secondary", f"{uri},timeout-ms={timeout_ms}", *args],
            prefix=topo.exec_prefix(topo.hosts[host]), name=name)
    try:
        topo.wait_listening(topo.hosts[host], FT_PORT, alive=vm.running)
    except BaseException:
        vm.close(failed=True)
        raise
    return vm, uri


def protect(primary, uri):
    """ft-start on the primary and wait until the secondary holds a
    complete checkpoint."""
    q = primary.qmp()
    q.cmd("ft-start", uri=uri, epoch_ms=EPOCH_MS)
    ev = q.wait_event("FT_PROTECTED", timeout=60)
    print(f"protected after {ev['data']['sync_ms']} ms of initial copy")
    return q


def ft_setup(topo, store, vms, primary_env=None, secondary_args=(), timeout_ms=2000,
             secondary_env=None):
    image = store.image("guest.raw", 8)
    append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
              f"ferry.run=tcpserve,--echo,--port,{ECHO_PORT}")
    env = dict(os.environ, **primary_env) if primary_env else None
    prim = vms.enter_context(VM(append=append, mem=MEM, disk=image,
                                net=f"tap=tap0,mac={MAC}", env=env,
                                prefix=topo.exec_prefix(topo.hosts["a"]),
                                name="primary"))
    sec, uri = secondary(topo, image, secondary_args, timeout_ms=timeout_ms,
                         env=dict(os.environ, **secondary_env) if secondary_env else None)
    vms.enter_context(sec)
    prim.wait_for(rf"^tcpserve: listening on port {ECHO_PORT}", BOOT)
    return prim, sec, uri


def cut_host(topo, host):
    topology.sh("ip", "link", "set", "uplink", "down", ns=topo.hosts[host])


def finish_on(vm, stream):
    sent, _ = stream.finish()
    m = vm.wait_for(r"^tcpserve: \S+ closed after (\d+) bytes", 30)
    assert int(m.group(1)) == sent, (f"the guest echoed {m.group(1)} bytes, the "
                                     f"client sent {sent}")
    return sent


def test_ft_failover_keeps_the_tcp_stream():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        prim, sec, uri = ft_setup(topo, store, vms)
        qp = protect(prim, uri)
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing(what="protected")
            wait_switch_port(topo, "a")
            st = qp.cmd("query-ft")
            assert st["status"] == "protected", st
            print(f"primary: epoch {st['epoch']}, pause avg {st['pause_us_avg']} us, "
                  f"{st['bytes_per_epoch']} bytes an epoch, commit avg "
                  f"{st['commit_us_avg']} us")
            qs = sec.qmp()
            gap = Gap(stream)
            prim.kill()
            cut_host(topo, "a")
            ev = qs.wait_event("FT_PRIMARY_LOST", timeout=30)
            assert ev["data"]["takeover"] == "manual", ev
            # the arbiter: host a is dead and cut off
            qs.cmd("ft-takeover")
            qs.wait_event("FT_FAILOVER", timeout=30)
            stream.wait_flowing(what="after failover")
            print(f"failover: the client saw the echo stand still for "
                  f"{gap.end() * 1000:.0f} ms (detection timeout 2000 ms, "
                  f"epoch {ev['data']['epoch']})")
            wait_switch_port(topo, "b")
            assert sec.qmp().cmd("query-status")["status"] == "running"
            # FT restored: host a is back, a new secondary there, the
            # guest on b protected again
            topology.sh("ip", "link", "set", "uplink", "up", ns=topo.hosts["a"])
            new_sec, new_uri = secondary(topo, store.dir / "guest.raw", host="a")
            vms.enter_context(new_sec)
            protect(sec, new_uri)
            assert qs.cmd("query-ft")["status"] == "protected"
            stream.wait_flowing(what="protected again")
            sent = finish_on(sec, stream)
        print(f"stream: {sent} bytes sent and echoed intact across the failover")


def test_ft_secondary_dies_primary_goes_on_unprotected():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        prim, sec, uri = ft_setup(topo, store, vms)
        qp = protect(prim, uri)
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing(what="protected")
            sec.kill()
            cut_host(topo, "b")
            ev = qp.wait_event("FT_UNPROTECTED", timeout=30)
            print(f"unprotected: {ev['data']['reason']}")
            st = qp.cmd("query-ft")
            assert st["status"] == "unprotected" and st["held_frames"] == 0, st
            stream.wait_flowing(what="after losing the secondary")
            sent = finish_on(prim, stream)
        assert prim.qmp().cmd("query-status")["status"] == "running"
        print(f"stream: {sent} bytes intact, the primary ran on unprotected")


def initial_copy_outlasts_a_stall(stalled):
    """The link timeout (here 300 ms, ferryd's is 500) is for a protected
    pair; the initial copy is a bulk transfer a loaded host may stall for
    longer (FERRY_TEST_FAULT=ft-copy-stall: the stalled side stops 1.5 s
    halfway). Both sides allow MIG_IO_TIMEOUT_S there, so FT still becomes
    protected; then the link timeout holds again (a killed secondary is
    noticed)."""
    need_namespaces()
    stall = {"FERRY_TEST_FAULT": "ft-copy-stall:1500"}
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        prim, sec, uri = ft_setup(topo, store, vms, timeout_ms=300,
                                  primary_env=stall if stalled == "primary" else None,
                                  secondary_env=stall if stalled == "secondary" else None)
        q = prim.qmp()
        q.cmd("ft-start", uri=uri, epoch_ms=EPOCH_MS, timeout_ms=300)
        ev = q.wait_event("FT_PROTECTED", timeout=60)
        assert ev["data"]["sync_ms"] >= 1500, ev
        print(f"protected after {ev['data']['sync_ms']} ms of initial copy (1.5 s stalled)")
        sec.kill()
        cut_host(topo, "b")
        t0 = time.monotonic()
        ev = q.wait_event("FT_UNPROTECTED", timeout=30)
        print(f"the killed secondary noticed after {time.monotonic() - t0:.2f} s: "
              f"{ev['data']['reason']}")
        assert "initial copy" not in ev["data"]["reason"], ev
        assert prim.qmp().cmd("query-status")["status"] == "running"


def test_ft_initial_copy_outlasts_a_stalled_primary():
    initial_copy_outlasts_a_stall("primary")


def test_ft_initial_copy_outlasts_a_stalled_secondary():
    initial_copy_outlasts_a_stall("secondary")


def test_ft_primary_dies_mid_epoch_secondary_runs_last_whole_one():
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        # the primary dies in epoch FAULT_EPOCH (or the next with pages),
        # after its pages went out and before its state: a few seconds
        # into the stream
        prim, sec, uri = ft_setup(topo, store, vms,
                                  primary_env={"FERRY_TEST_FAULT":
                                               f"ft-mid-epoch:{FAULT_EPOCH}"},
                                  secondary_args=("--ft-takeover", "auto"))
        qs = sec.qmp()
        protect(prim, uri)
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing(what="protected")
            assert prim.wait_exit(60) == 9, prim.tail()
            ev = qs.wait_event("FT_FAILOVER", timeout=30)
            st = qs.cmd("query-ft")
            print(f"secondary: took over at epoch {ev['data']['epoch']}, discarded "
                  f"the partial epoch {st['discarded_epoch']}")
            assert st["discarded_epoch"] == ev["data"]["epoch"] + 1, (ev, st)
            assert ev["data"]["epoch"] >= FAULT_EPOCH - 1, ev
            stream.wait_flowing(what="after failover from a partial epoch")
            sent = finish_on(sec, stream)
        print(f"stream: {sent} bytes intact; the partial epoch was never applied")


# python3 -c RR_CLIENT HOST PORT N: N echo round trips of 64 bytes one after
# another; prints the milliseconds of each.
RR_CLIENT = r'''
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out = []
for _ in range(int(sys.argv[3])):
    t0 = time.monotonic()
    s.sendall(b"x" * 64)
    got = b""
    while len(got) < 64:
        d = s.recv(64 - len(got))
        if not d:
            sys.exit("closed")
        got += d
    out.append("%.1f" % ((time.monotonic() - t0) * 1000))
print(" ".join(out))
'''


def test_ft_output_ends_the_epoch_early():
    need_namespaces()
    rounds = 20
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        prim, sec, uri = ft_setup(topo, store, vms)
        q = prim.qmp()
        # an epoch under the secondary's timeout-ms (2000), long against a
        # round trip
        q.cmd("ft-start", uri=uri, epoch_ms=1500, min_epoch_ms=3)
        q.wait_event("FT_PROTECTED", timeout=60)
        before = q.cmd("query-ft")
        # on the clock alone each answer would wait for its 1.5 s epoch
        r = subprocess.run(topo.exec_prefix(topo.client) +
                           [sys.executable, "-c", RR_CLIENT, topo.guest_ip,
                            str(ECHO_PORT), str(rounds)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r
        after = q.cmd("query-ft")
        assert after["status"] == "protected", after
        early = after["early_epochs"] - before["early_epochs"]
        assert early >= rounds, (before, after)
        print(f"{rounds} round trips (ms): {r.stdout.strip()}; {early} epochs ended "
              f"early for output, min_epoch_ms {after['min_epoch_ms']}")


def test_ft_link_cut_both_alive_only_one_runs():
    """The FT link is cut, nobody dies, and a wrong arbiter tells the
    secondary to take over anyway: the disk lock, which the living primary
    holds, keeps the secondary from running; the primary goes on
    unprotected and the stream with it."""
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        prim, sec, uri = ft_setup(topo, store, vms)
        qs = sec.qmp()
        qp = protect(prim, uri)
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing(what="protected")
            cut_host(topo, "b")
            qs.wait_event("FT_PRIMARY_LOST", timeout=30)
            qp.wait_event("FT_UNPROTECTED", timeout=30)
            qs.cmd("ft-takeover")
            assert sec.wait_exit(30) == 1, sec.tail()
            assert "cannot take the guest's disks" in sec.output(), sec.tail()
            stream.wait_flowing(what="after the link was cut")
            sent = finish_on(prim, stream)
        assert qp.cmd("query-ft")["status"] == "unprotected"
        print(f"stream: {sent} bytes intact on the primary; the secondary refused to run")


def test_ft_bad_input_is_refused_and_the_guest_runs_on():
    for args, words in (
            (["--ft-secondary", "udp:1.2.3.4:5"], "want tcp:HOST:PORT"),
            (["--ft-secondary", "tcp:127.0.0.1:1,timeout-ms=5"], "timeout-ms"),
            (["--ft-secondary", "tcp:127.0.0.1:1,bogus=1"], "unknown option"),
            (["--ft-secondary", "tcp:127.0.0.1:1", "--incoming", "tcp:127.0.0.1:2"],
             "exclude each other"),
            (["--ft-takeover", "maybe", "--kernel", "x"], "want manual or auto")):
        r = subprocess.run([str(FERRY_VM), *args], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2 and words in r.stderr, (args, r)
        assert r.stderr.count("\n") == 1, r.stderr
    with VM(mem=64, name="primary") as vm:
        q = vm.qmp()
        for args, words in (({}, "'uri'"), ({"uri": "file:/tmp/x"}, "'uri'"),
                            ({"uri": "tcp:127.0.0.1:1", "epoch_ms": 1}, "epoch_ms"),
                            ({"uri": "tcp:127.0.0.1:1", "epoch_ms": 20,
                              "min_epoch_ms": 21}, "min_epoch_ms"),
                            ({"uri": "tcp:127.0.0.1:1", "secret_file": 3},
                             "secret_file"),
                            ({"uri": "tcp:127.0.0.1:1", "on_loss": "maybe"}, "on_loss")):
            try:
                q.cmd("ft-start", **args)
                raise AssertionError(f"ft-start {args} was accepted")
            except QMPError as e:
                assert words in e.desc, (args, e.desc)
        port = free_tcp_port()
        q.cmd("ft-start", uri=f"tcp:127.0.0.1:{port}")
        ev = q.wait_event("FT_UNPROTECTED", timeout=30)
        assert "cannot connect" in ev["data"]["reason"], ev
        st = q.cmd("query-ft")
        assert st["status"] == "unprotected" and "cannot connect" in st["error"], st
        assert q.cmd("query-status")["status"] == "running"
        try:
            q.cmd("ft-continue")
            raise AssertionError("ft-continue was accepted with nothing held")
        except QMPError as e:
            assert "holds its guest" in e.desc, e.desc
        try:
            q.cmd("ft-takeover")
            raise AssertionError("ft-takeover was accepted on a primary")
        except QMPError as e:
            assert "not an FT secondary" in e.desc, e.desc


# ---- a guest counter over UDP ------------------------------------------------

UDP_PORT = 7100

# python3 -c UDP_RECEIVER PORT: receives "udpcount K" datagrams, prints
# "progress LAST" now and then, and on a line on stdin "done last L count
# N repeats R gaps G first_repeat X" (repeats: numbers not above the last
# one seen).
UDP_RECEIVER = r'''
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
last = count = repeats = gaps = 0
first_repeat = None
t = 0
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 0.05)
    if sys.stdin in r:
        break
    if s in r:
        k = int(s.recv(100).split()[1])
        count += 1
        if k <= last:
            repeats += 1
            first_repeat = first_repeat or "%d-after-%d" % (k, last)
        else:
            gaps += k > last + 1
            last = k
    if time.monotonic() - t > 0.05:
        print("progress %d" % last, flush=True)
        t = time.monotonic()
print("done last %d count %d repeats %d gaps %d first_repeat %s"
      % (last, count, repeats, gaps, first_repeat), flush=True)
'''


def guest_initrd(name):
    """The guest image's initramfs plus tests/guest/NAME.c (built when
    stale)."""
    src = REPO / "tests" / "guest" / f"{name}.c"
    out = BUILD / "tests"
    out.mkdir(parents=True, exist_ok=True)
    prog, img = out / name, out / f"{name}.img"
    if not prog.exists() or prog.stat().st_mtime < src.stat().st_mtime:
        cc = "riscv64-linux-gnu-gcc"
        r = subprocess.run([cc, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                            str(prog), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"cannot build {name} with {cc}: {r.stderr.strip()[-300:]}")
    if not img.exists() or img.stat().st_mtime < prog.stat().st_mtime:
        subprocess.run([str(REPO / "guest" / "mkinitrd.sh"), str(img), str(prog)],
                       check=True, capture_output=True)
    return img


class Counter:
    """UDP_RECEIVER in the client namespace."""

    def __init__(self, topo):
        self.proc = subprocess.Popen(
            topo.exec_prefix(topo.client) + [sys.executable, "-u", "-c", UDP_RECEIVER,
                                             str(UDP_PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.last = 0
        self.done = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            m = re.match(r"progress (\d+)", line)
            if m:
                self.last = int(m.group(1))
            elif line.startswith("done"):
                self.done = line.strip()

    def wait_past(self, n, timeout=60, what=""):
        deadline = time.monotonic() + timeout
        while self.last < n:
            assert time.monotonic() < deadline, f"{what}: the counter stands at {self.last}"
            time.sleep(0.02)

    def finish(self):
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(30)
        self.reader.join(5)
        return self.done

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_ft_guest_counter_never_repeats_across_failover():
    need_namespaces()
    initrd = guest_initrd("udpcount")
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image = store.image("guest.raw", 8)
        counter = Counter(topo)
        vms.callback(counter.close)
        append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
                  f"ferry.run=udpcount,{topo.client_ip},{UDP_PORT},1000")
        prim = vms.enter_context(VM(append=append, mem=MEM, disk=image, initrd=initrd,
                                    net=f"tap=tap0,mac={MAC}", name="primary",
                                    prefix=topo.exec_prefix(topo.hosts["a"])))
        sec, uri = secondary(topo, image)
        vms.enter_context(sec)
        qs = sec.qmp()
        prim.wait_for(r"^udpcount: sending", BOOT)
        protect(prim, uri)
        counter.wait_past(counter.last + 500, what="protected")
        before = counter.last
        prim.kill()
        cut_host(topo, "a")
        qs.wait_event("FT_PRIMARY_LOST", timeout=30)
        qs.cmd("ft-takeover")
        ev = qs.wait_event("FT_FAILOVER", timeout=30)
        counter.wait_past(before + 1000, what="after failover")
        done = counter.finish()
        m = re.match(r"done last (\d+) count (\d+) repeats (\d+) gaps (\d+)", done or "")
        assert m, done
        print(f"counter: {done}; the secondary resumed at epoch {ev['data']['epoch']}, "
              f"the receiver had {before} before the kill")
        assert int(m.group(3)) == 0, f"the receiver saw numbers repeat: {done}"


def counter_still(counter, what):
    """The counter settles (datagrams already on the wire arrive), then must
    not move for a second: nothing is released. Returns where it stands."""
    time.sleep(0.5)
    at = counter.last
    time.sleep(1.0)
    assert counter.last == at, f"{what}: the guest's output reached the client " \
                               f"({at} -> {counter.last})"
    return at


def test_ft_hold_on_loss_keeps_output_until_ft_continue():
    """on_loss "hold" (ferryd's FT agent uses it): a primary that loses its
    secondary cannot tell a dead one from a cut link, and a live secondary
    may take over from the last acknowledged epoch, so the primary pauses
    its guest and sends none of the output it holds (FT_SECONDARY_LOST;
    query-status paused, `cont` and `ft-stop` refused) until ft-continue,
    which releases it and runs on unprotected. A second time, `quit`
    instead: the process ends and what it held never goes out. A guest
    counter sends a UDP datagram a millisecond, so any release shows at
    the receiver (with on_loss "release", the old default, the counter
    moves on at once and FT_SECONDARY_LOST never comes)."""
    need_namespaces()
    initrd = guest_initrd("udpcount")
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image = store.image("guest.raw", 8)
        counter = Counter(topo)
        vms.callback(counter.close)
        append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
                  f"ferry.run=udpcount,{topo.client_ip},{UDP_PORT},1000")
        prim = vms.enter_context(VM(append=append, mem=MEM, disk=image, initrd=initrd,
                                    net=f"tap=tap0,mac={MAC}", name="primary",
                                    prefix=topo.exec_prefix(topo.hosts["a"])))
        prim.wait_for(r"^udpcount: sending", BOOT)
        qp = prim.qmp()
        for end in ("ft-continue", "quit"):
            sec, uri = secondary(topo, image, name=f"secondary-{end}")
            vms.enter_context(sec)
            qp.cmd("ft-start", uri=uri, epoch_ms=EPOCH_MS, on_loss="hold")
            qp.wait_event("FT_PROTECTED", timeout=60)
            assert qp.cmd("query-ft")["on_loss"] == "hold"
            counter.wait_past(counter.last + 300, what=f"protected ({end})")
            sec.kill()
            ev = qp.wait_event("FT_SECONDARY_LOST", timeout=30)
            st = qp.cmd("query-ft")
            assert st["status"] == "secondary-lost" and st["held_frames"] > 0, st
            status = qp.cmd("query-status")
            assert status["status"] == "paused", status
            assert status["reason"] == "ft-secondary-lost", status
            for cmd in ("cont", "ft-stop"):
                try:
                    qp.cmd(cmd)
                    raise AssertionError(f"{cmd} was accepted while holding")
                except QMPError as e:
                    assert "ft-continue" in e.desc, (cmd, e.desc)
            held_at = counter_still(counter, f"held ({end})")
            print(f"{end}: secondary lost at epoch {ev['data']['epoch']}: "
                  f"{st['held_frames']} frames held, the counter stands at {held_at}")
            if end == "ft-continue":
                qp.cmd("ft-continue")
                qp.wait_event("FT_UNPROTECTED", timeout=30)
                counter.wait_past(held_at + 300, what="after ft-continue")
                st = qp.cmd("query-ft")
                assert st["status"] == "unprotected" and st["held_frames"] == 0, st
                assert qp.cmd("query-status")["status"] == "running"
            else:
                qp.cmd("quit")
                assert prim.wait_exit(30) == 0, prim.tail()
                counter_still(counter, "after quit while holding")
                assert "held output and disk writes dropped" in prim.output(), prim.tail()
        done = counter.finish()
        m = re.match(r"done last (\d+) count (\d+) repeats (\d+)", done or "")
        assert m and int(m.group(3)) == 0, f"the receiver saw numbers repeat: {done}"
        print(f"counter: {done}")


# ---- disk writes under FT: the output-commit rule for disks --------------------

DISK_FAULT_EPOCH = 60
DISK_LOG_RATE = 300     # records a second


def wait_log_past(vm, counter, n, what):
    """Until the receiver has heard of n records, failing at once on the
    guest's own "ftdisklog: ERROR" (its disk disagreed with its memory)."""
    deadline = time.monotonic() + 60
    while counter.last < n:
        m = re.search(r"^ftdisklog: ERROR .*$", vm.console(), re.M)
        assert not m, f"{what}: the guest found: {m.group(0)}\n{vm.tail()}"
        assert vm.running(), f"{what}: the guest ended\n{vm.tail()}"
        assert time.monotonic() < deadline, (f"{what}: the log stands at "
                                             f"{counter.last}\n{vm.tail()}")
        time.sleep(0.05)


def check_log_on_a_fresh_boot(image, acked):
    check = VM(append="console=ttyS0 quiet ferry.run=ft,disklog-check,/dev/vda",
               mem=MEM, disk=image, control=False, name="check")
    with check:
        status = check.wait_exit(BOOT)
        m = re.search(r"^ft: disklog-check: (\d+) records ok$", check.console(), re.M)
        said = re.findall(r"^ft: disklog-check: .*$", check.console(), re.M)
        assert status == 0 and m, (f"disklog-check (status {status}): "
                                   f"{said[-1] if said else 'said nothing'}\n{check.tail()}")
    found = int(m.group(1))
    assert found >= acked, f"{acked} records were acknowledged, the image holds {found}"
    return found


def disklog_primary(topo, store, vms, env=None):
    """A primary on host a whose guest logs records to a fresh shared image
    (tests/guest/ftdisklog.c), acknowledging each over UDP to a Counter;
    returns (image, counter, primary), the guest not yet logging."""
    initrd = guest_initrd("ftdisklog")
    image = store.image("log.raw", 16)     # 32768 records: not full here
    counter = Counter(topo)
    vms.callback(counter.close)
    append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 ferry.run=ftdisklog,"
              f"/dev/vda,{topo.client_ip},{UDP_PORT},{DISK_LOG_RATE}")
    prim = vms.enter_context(VM(append=append, mem=MEM, disk=image, initrd=initrd,
                                net=f"tap=tap0,mac={MAC}", env=env, name="primary",
                                prefix=topo.exec_prefix(topo.hosts["a"])))
    return image, counter, prim


def disk_failover(fault):
    """A guest logging records to the shared image (tests/guest/ftdisklog.c:
    it checks before each write that the sector is not already its own, and
    reads its writes back), FT on, the primary killed at FERRY_TEST_FAULT
    =FAULT:N, the secondary taking over at once: the log goes on with the
    disk agreeing with the guest's memory, and a fresh boot finds every
    record the guest acknowledged over UDP (held output). Returns the
    secondary's FT_FAILOVER and query-ft."""
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        env = dict(os.environ, FERRY_TEST_FAULT=f"{fault}:{DISK_FAULT_EPOCH}")
        image, counter, prim = disklog_primary(topo, store, vms, env)
        sec, uri = secondary(topo, image, ("--ft-takeover", "auto"))
        vms.enter_context(sec)
        qs = sec.qmp()
        prim.wait_for(r"^ftdisklog: /dev/vda", BOOT)
        protect(prim, uri)
        assert prim.wait_exit(60) == 9, prim.tail()
        ev = qs.wait_event("FT_FAILOVER", timeout=30)
        st = qs.cmd("query-ft")
        before = counter.last
        wait_log_past(sec, counter, before + DISK_LOG_RATE, "after failover")
        qs.cmd("stop")
        time.sleep(0.2)         # the last datagrams reach the receiver
        acked = counter.last
        done = counter.finish()
        qs.cmd("quit")
        assert sec.wait_exit(30) == 0, sec.tail()
        m = re.match(r"done last (\d+) count (\d+) repeats (\d+)", done or "")
        assert m and int(m.group(3)) == 0, f"acknowledgements repeated: {done}"
        found = check_log_on_a_fresh_boot(image, acked)
    print(f"disk: took over at epoch {ev['data']['epoch']} (discarded "
          f"{st['discarded_epoch']}), wrote {ev['data']['replayed_writes']} held writes "
          f"({ev['data']['replayed_write_bytes']} bytes) again; {before} records "
          f"acknowledged before the failover, {acked} in all, {found} on the image")
    return ev["data"], st


def test_ft_disk_primary_dies_mid_epoch_disk_is_not_ahead():
    """The primary dies after sending an epoch's pages and writes, not its
    state: that epoch's writes never reach the image (before this, they
    were on it, and the guest resumed one epoch earlier found its own
    records where it had not written yet: "the disk is ahead")."""
    ev, st = disk_failover("ft-mid-epoch")
    assert st["discarded_epoch"] == ev["epoch"] + 1, (ev, st)


def test_ft_disk_primary_dies_after_ack_secondary_writes_the_epoch():
    """The primary dies once an epoch is acknowledged, before writing its
    held writes to the image: the secondary writes them at takeover (without
    that, the guest's records of that epoch are missing: disklog-check finds
    a gap, or the guest's read-back of an earlier record fails)."""
    ev, _ = disk_failover("ft-after-ack")
    assert ev["replayed_writes"] > 0, ev


def test_ft_stop_and_a_lost_secondary_write_out_what_was_held():
    """ft-stop, and later a secondary killed, each end the hold: what the
    primary held goes to the image before the guest's writes go straight
    there again (the guest reads earlier records back as it goes, and a
    fresh boot finds every acknowledged record in order)."""
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image, counter, prim = disklog_primary(topo, store, vms)
        prim.wait_for(r"^ftdisklog: /dev/vda", BOOT)
        qp = prim.qmp()
        for end in ("ft-stop", "secondary killed"):
            sec, uri = secondary(topo, image, name=f"secondary-{end.split()[0]}")
            vms.enter_context(sec)
            protect(prim, uri)
            wait_log_past(prim, counter, counter.last + DISK_LOG_RATE, "protected")
            if end == "ft-stop":
                qp.cmd("ft-stop")
                qp.wait_event("FT_STOPPED", timeout=30)
                sec.wait_exit(30)
            else:
                sec.kill()
                qp.wait_event("FT_UNPROTECTED", timeout=30)
            st = qp.cmd("query-ft")
            assert st["held_writes"] == 0 and st["held_frames"] == 0, st
            wait_log_past(prim, counter, counter.last + DISK_LOG_RATE, f"after {end}")
        qp.cmd("stop")
        time.sleep(0.2)
        acked = counter.last
        counter.finish()
        qp.cmd("quit")
        assert prim.wait_exit(30) == 0, prim.tail()
        found = check_log_on_a_fresh_boot(image, acked)
    print(f"disk: {acked} records acknowledged through ft-stop and a lost secondary, "
          f"{found} on the image")


def test_ft_slow_disk_flush_keeps_the_link_alive():
    """An acknowledged epoch's writes go to the image and are flushed before
    the next epoch; on a busy disk that flush can outlast the link's timeout
    (here each takes 900 ms more, FERRY_TEST_FAULT=ft-slow-flush, against a
    300 ms link timeout on both sides). The primary says FT_ALIVE every
    timeout / 4 while it flushes, so the secondary (--ft-takeover auto) does
    not take it for dead: FT stays protected through several slow epochs,
    the guest's log goes on, the secondary is still receiving. Without
    FT_ALIVE the secondary takes over at the first slow flush (two copies
    of the guest would run)."""
    need_namespaces()
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        env = dict(os.environ, FERRY_TEST_FAULT="ft-slow-flush:900")
        image, counter, prim = disklog_primary(topo, store, vms, env)
        sec, uri = secondary(topo, image, ("--ft-takeover", "auto"), timeout_ms=300)
        vms.enter_context(sec)
        prim.wait_for(r"^ftdisklog: /dev/vda", BOOT)
        q = prim.qmp()
        q.cmd("ft-start", uri=uri, epoch_ms=EPOCH_MS, timeout_ms=300)
        q.wait_event("FT_PROTECTED", timeout=60)
        first = q.cmd("query-ft")["epoch"]
        for i in range(3):
            wait_log_past(prim, counter, counter.last + DISK_LOG_RATE // 2,
                          f"slow flushes, {i + 1}")
        st, ss = q.cmd("query-ft"), sec.qmp().cmd("query-ft")
        print(f"primary: epochs {first}..{st['epoch']} with 900 ms flushes, status "
              f"{st['status']}; secondary {ss['status']}; {counter.last} records")
        assert st["status"] == "protected", st
        assert st["epoch"] >= first + 2, (first, st)
        assert ss["status"] == "receiving", ss
        assert sec.running() and prim.running()
