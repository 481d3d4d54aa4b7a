#!/usr/bin/env python3
"""ft.py - what fault tolerance costs and what a failover looks like.

    sudo bench/ft.py [--runs N] [--epochs 20,50,100] [--min-epochs 0,3]
                     [--only gap|latency|compute|disk|talk|colo]

Three figures, each printed with the machine (timings are for reading,
never asserted: this host is shared):

- gap: the client-visible gap at failover. The namespace topology of
  tests/integration/topology.py: the primary on host a, the secondary
  (`--ft-secondary`, `--ft-takeover auto`) on host b, both on tap0 with
  the guest's MAC and one shared image; the client streams through the
  guest's echo server (test_hosts.py's STREAM_CLIENT, every byte checked).
  The primary is killed (SIGKILL); the figure is the longest time the
  client's echo count stood still. Two ways: "kill" (the primary's host
  kernel closes the FT connection, so the secondary learns at once) and
  "kill + link cut" (the link is cut first: the secondary learns only
  when its timeout-ms, 1000 here, runs out).
- latency: a request/response service, FT off against FT on at each
  epoch interval. The client sends 64 bytes to the echo server and waits
  for them, N times one after another; median and 95th percentile round
  trip. Output commit holds each answer until the epoch that produced it
  is acknowledged. With early epochs off (min_epoch_ms 0) an epoch ends
  on the clock: a request sent right after the last answer's release
  lands at the start of an epoch, so back-to-back requests wait about a
  whole epoch (plus the commit). With min_epoch_ms M (the default 3) the
  first held frame ends the epoch once it has run M ms: each setting of
  --min-epochs is run at each epoch interval.
- disk: bench/iolat.c (as bench/diskmove.py builds it) in a guest writing
  4 KiB O_DIRECT|O_DSYNC blocks as fast as it can (--rate 5000) to a raw
  image, FT off and on (the secondary on loopback, the same image): writes
  a second and the slowest write a second, medians over the seconds.
  Under FT a write completes from the primary's hold and the guest's
  FLUSH at once (docs/stream.md "Output commit for disks"); off, each
  O_DSYNC write costs the host an fdatasync.
- compute: bench/compute.c (as bench/compute.py builds it) in a guest,
  FT off against FT on at each epoch interval (the secondary on
  loopback); the time is the host's, from the console's "compute: start"
  to "compute: total" (the guest's own clock stands still during the
  pauses, so it would hide them).
- talk: the compute guest (128 MiB) answering pings every 2 ms from the client
  (the namespace topology, secondary on host b) while it computes: every
  reply is held output, so with early epochs the guest checkpoints every
  few ms instead of every epoch. FT off, FT with min_epoch_ms 0 and with
  each --min-epochs setting at the default 20 ms epoch; the paused share
  is epochs x pause avg over the run (from query-ft).

QEMU's counterpart is COLO. Debian 12's QEMU 7.2 has it built, and
`--only colo` sets a pair up on loopback with the same guest (tcpserve
echo, no disk, so no quorum/replication/NBD: the network side of
docs/COLO-FT.txt as is, user networking with a host port forwarded to
the primary): x-colo, migrate, both sides reach COLO mode and boot the
guest. But the primary's COLO thread deadlocks at the end of its first
checkpoint: the secondary has loaded the state ('vmstate-loaded'), and
the thread, which already holds QEMU's big lock, waits for it again
(gdb: the lock's owner is that thread, blocked in
qemu_mutex_lock_iothread under migrate_start_colo_process); from then on
the primary's QMP and guest are frozen and a client's request is never
answered. So there is no COLO column: the probe reports how far it got.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402  (puts tests/integration on sys.path)
import compute  # noqa: E402
import diskmove  # noqa: E402
import topology  # noqa: E402
from ferrylib import VM, free_tcp_port  # noqa: E402
from test_hosts import ECHO_PORT, MAC, Datastore, Stream  # noqa: E402

MEM = 128
FT_PORT = 47200
DEFAULT_EPOCH_MS = 20   # ft.h's FT_EPOCH_MS_DEFAULT
BOOT_S = 90

RR_CLIENT = r'''
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * 64
for _ in range(5):      # warm up
    s.sendall(msg); got = b""
    while len(got) < 64: got += s.recv(64 - len(got))
out = []
for _ in range(n):
    t0 = time.monotonic()
    s.sendall(msg); got = b""
    while len(got) < 64:
        d = s.recv(64 - len(got))
        if not d: sys.exit("closed")
        got += d
    out.append((time.monotonic() - t0) * 1000)
print(" ".join("%.3f" % x for x in out))
'''


def append_for(topo, run):
    return (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
            f"ferry.run={','.join(run)}")


def primary_vm(topo, image, name="primary"):
    return VM(append=append_for(topo, ["tcpserve", "--echo", "--port", str(ECHO_PORT)]),
              mem=MEM, disk=image, net=f"tap=tap0,mac={MAC}",
              prefix=topo.exec_prefix(topo.hosts["a"]), name=name)


def secondary_vm(topo, image, timeout_ms=1000):
    uri = f"tcp:{topo.host_ip('b')}:{FT_PORT}"
    vm = VM(mem=MEM, disk=image, net=f"tap=tap0,mac={MAC}", name="secondary",
            args=["--ft-secondary", f"{uri},timeout-ms={timeout_ms}",
                  "--ft-takeover", "auto"],
            prefix=topo.exec_prefix(topo.hosts["b"]))
    topo.wait_listening(topo.hosts["b"], FT_PORT, alive=vm.running)
    return vm, uri


def protect(vm, uri, epoch_ms, min_epoch_ms=3):
    q = vm.qmp()
    q.cmd("ft-start", uri=uri, epoch_ms=epoch_ms, min_epoch_ms=min_epoch_ms)
    q.wait_event("FT_PROTECTED", timeout=60)
    return q


def longest_stall(stream, until):
    """Samples the echo count until until() is true and 1 s more of flow
    passed; returns the longest time it stood still (s)."""
    last, since, longest = stream.received, time.monotonic(), 0.0
    flowing_since = None
    while True:
        time.sleep(0.002)
        now, got = time.monotonic(), stream.received
        if got != last:
            longest = max(longest, now - since)
            last, since = got, now
        if until():
            flowing_since = flowing_since or now
            if now - flowing_since > 1.0 and now - since < 0.1:
                return longest
        if now - since > 30:
            raise bl.BenchError("the stream stood still for 30 s after the failover")


def one_gap(cut_first, epoch_ms, min_epoch_ms):
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image = store.image("guest.raw", 8)
        prim = vms.enter_context(primary_vm(topo, image))
        sec, uri = secondary_vm(topo, image)
        vms.enter_context(sec)
        prim.wait_for(rf"^tcpserve: listening on port {ECHO_PORT}", BOOT_S)
        protect(prim, uri, epoch_ms, min_epoch_ms)
        qs = sec.qmp()
        with Stream(topo, topo.guest_ip) as stream:
            stream.wait_flowing()
            time.sleep(0.5)
            if cut_first:
                topology.sh("ip", "link", "set", "uplink", "down", ns=topo.hosts["a"])
            prim.kill()
            if not cut_first:
                topology.sh("ip", "link", "set", "uplink", "down", ns=topo.hosts["a"])
            done = []
            threading.Thread(target=lambda: done.append(
                qs.wait_event("FT_FAILOVER", timeout=60)), daemon=True).start()
            gap = longest_stall(stream, lambda: bool(done))
            stream.finish()
        return gap * 1000, done[0]["data"]["epoch"]


def bench_gap(args):
    print(f"== failover gap: the longest stand-still of a checked TCP echo stream "
          f"(1 MiB/s) when the primary is killed; epoch {args.gap_epoch} ms, "
          f"secondary timeout-ms 1000, --ft-takeover auto; {args.runs} runs")
    rows = []
    for cut_first, label in ((False, "kill -9 (FT connection closed by the kernel)"),
                             (True, "link cut, then kill -9 (secondary times out)")):
        gaps = {m: [] for m in args.min_epochs}
        for _ in range(args.runs):      # the settings alternate: load falls on all
            for m in args.min_epochs:
                gaps[m].append(one_gap(cut_first, args.gap_epoch, m)[0])
        for m in args.min_epochs:
            rows.append([label, str(m), f"{statistics.median(gaps[m]):.0f}",
                         " ".join(f"{g:.0f}" for g in gaps[m])])
    bl.print_table(["failover", "min_epoch_ms", "gap ms (median)", "runs"], rows)
    print("every byte of every stream verified; the stream continued on the same "
          "connection each time\n")


def rr_once(topo, n):
    r = subprocess.run(topo.exec_prefix(topo.client) +
                       [sys.executable, "-c", RR_CLIENT, topo.guest_ip, str(ECHO_PORT),
                        str(n)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise bl.BenchError(f"request/response client: {r.stdout}{r.stderr}")
    return [float(x) for x in r.stdout.split()]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))]


def bench_latency(args):
    n = 200
    print(f"== request/response latency: 64-byte echo round trips from the client, "
          f"{n} in a row, FT off and on (the secondary on host b)")
    rows = []
    with topology.Topology() as topo, Datastore() as store, ExitStack() as vms:
        image = store.image("guest.raw", 8)
        prim = vms.enter_context(primary_vm(topo, image))
        prim.wait_for(rf"^tcpserve: listening on port {ECHO_PORT}", BOOT_S)
        off = rr_once(topo, n)
        base = statistics.median(off)
        rows.append(["off", f"{base:.2f}", f"{pct(off, 0.95):.2f}", "", "", "", "", ""])
        q = prim.qmp()
        for epoch in args.epochs:
            for least in args.min_epochs:
                if least > epoch:
                    continue
                sec, uri = secondary_vm(topo, image)
                vms.enter_context(sec)
                q.cmd("ft-start", uri=uri, epoch_ms=epoch, min_epoch_ms=least)
                q.wait_event("FT_PROTECTED", timeout=60)
                e0 = q.cmd("query-ft")
                on = rr_once(topo, n)
                st = q.cmd("query-ft")
                q.cmd("ft-stop")
                q.wait_event("FT_STOPPED", timeout=30)
                sec.wait_exit(30)
                med = statistics.median(on)
                epochs = st["epoch"] - e0["epoch"]
                early = st["early_epochs"] - e0["early_epochs"]
                rows.append([f"epoch {epoch} ms, min {least} ms", f"{med:.2f}",
                             f"{pct(on, 0.95):.2f}", f"+{med - base:.1f}",
                             f"{st['commit_us_avg'] / 1000:.1f}",
                             f"{epoch + st['commit_us_avg'] / 1000:.1f}",
                             f"{epochs} ({early} early)",
                             f"{st['pause_us_avg']}"])
    bl.print_table(["FT", "median ms", "p95 ms", "added ms", "commit ms (pause to ack)",
                    "bound: epoch + commit", "epochs in the run", "pause avg us"], rows)
    print("aim: added latency at most one epoch plus the acknowledgement's round trip\n")


def iolat_window(vm, seconds):
    """iolat's per-second lines over the next `seconds`: (writes, max_ms)."""
    seen = len(diskmove.iolat_seconds(vm.console()))
    deadline = time.monotonic() + seconds + 30
    while len(diskmove.iolat_seconds(vm.console())) < seen + seconds + 1:
        if time.monotonic() > deadline or not vm.running():
            raise bl.BenchError(f"iolat stopped reporting:\n{vm.tail()}")
        time.sleep(0.2)
    lines = re.findall(r"^iolat: t=\d+ writes=(\d+) max_ms=([0-9.]+)", vm.console(), re.M)
    return [(int(w), float(ms)) for w, ms in lines[seen + 1:seen + 1 + seconds]]


def bench_disk(args):
    diskmove.build()
    secs = 6
    print(f"== disk writes: iolat (4 KiB, O_DIRECT|O_DSYNC, --rate 5000) in a {MEM} MiB "
          f"guest, {secs} s each, FT off and on (secondary on loopback, epoch "
          f"{DEFAULT_EPOCH_MS} ms); medians over the seconds")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferry-ftdisk-") as tmp, ExitStack() as vms:
        image = Path(tmp) / "disk.raw"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        append = ("console=ttyS0 quiet ferry.run=iolat,/dev/vda,--rate,5000,--bytes,4096,"
                  "--span,16")
        vm = vms.enter_context(VM(append=append, mem=MEM, disk=image,
                                  initrd=diskmove.INITRD, name="iolat"))
        vm.wait_for(r"^iolat: start", BOOT_S)
        q = vm.qmp()
        for ft in (False, True):
            if ft:
                port = free_tcp_port()
                uri = f"tcp:127.0.0.1:{port}"
                sec = vms.enter_context(VM(mem=MEM, disk=image, name="secondary",
                                           args=["--ft-secondary",
                                                 f"{uri},timeout-ms=5000"]))
                wait_port(port, sec)
                q.cmd("ft-start", uri=uri, epoch_ms=DEFAULT_EPOCH_MS)
                q.wait_event("FT_PROTECTED", timeout=60)
                e0 = q.cmd("query-ft")
            got = iolat_window(vm, secs)
            extra = ""
            if ft:
                st = q.cmd("query-ft")
                n = max(1, st["epoch"] - e0["epoch"])
                extra = (f"{n / secs:.0f} epochs/s, {st['write_bytes_per_epoch'] // 1024} "
                         f"KiB of writes an epoch, commit avg {st['commit_us_avg']} us")
            rows.append(["on" if ft else "off",
                         f"{statistics.median(w for w, _ in got):.0f}",
                         f"{statistics.median(ms for _, ms in got):.1f}", extra])
        q.cmd("ft-stop")
    bl.print_table(["FT", "writes/s", "slowest write ms (median of seconds)",
                    "checkpoints"], rows)
    print()


def talk_once(topo, image, min_epoch_ms, scale):
    """One compute run while the client pings the guest every 2 ms; (host
    s, paused share or None, epochs a second or None)."""
    append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 ferry.run=compute" +
              (f",--scale,{scale}" if scale != 1 else ""))
    with ExitStack() as vms:
        vm = vms.enter_context(VM(append=append, mem=MEM, initrd=compute.INITRD,
                                  disk=image, net=f"tap=tap0,mac={MAC}", name="compute",
                                  prefix=topo.exec_prefix(topo.hosts["a"])))
        q = vm.qmp()
        if min_epoch_ms is not None:
            sec, uri = secondary_vm(topo, image)
            sec = vms.enter_context(sec)
            q.cmd("ft-start", uri=uri, epoch_ms=DEFAULT_EPOCH_MS, min_epoch_ms=min_epoch_ms)
        vm.wait_for(r"^compute: start", 120)
        ping = subprocess.Popen(topo.exec_prefix(topo.client) +
                                ["ping", "-q", "-i", "0.002", topo.guest_ip],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        vms.callback(ping.kill)
        t0 = time.monotonic()
        e0 = q.cmd("query-ft") if min_epoch_ms is not None else None
        st = e0
        while True:
            try:
                vm.wait_for(r"^compute: total ([0-9.]+) s", 1)
                break
            except TimeoutError:
                if e0:
                    st = q.cmd("query-ft")
        host = time.monotonic() - t0
        if not e0 or st is e0:
            return host, None, None
        if st["status"] != "protected":
            raise bl.BenchError(f"FT did not stay on: {st}")
        n = st["epoch"] - e0["epoch"]
        return host, n * st["pause_us_avg"] / 1e6 / host, n / host


def bench_talk(args):
    compute.build()
    settings = [None, 0] + [m for m in args.min_epochs if m]
    print(f"== compute while answering pings every 2 ms: bench/compute.c in a {MEM} MiB "
          f"guest on host a, FT off and on at {DEFAULT_EPOCH_MS} ms (secondary on host "
          f"b) with each min_epoch_ms; {args.runs} rounds, settings alternated; the "
          f"slowdown is the median of each run against the FT-off run of its round")
    results = {m: [] for m in settings}
    with topology.Topology() as topo, Datastore() as store:
        image = store.image("guest.raw", 8)
        for _ in range(args.runs):
            for m in settings:
                results[m].append(talk_once(topo, image, m, args.scale))
    rows = []
    for m in settings:
        host = [r[0] for r in results[m]]
        ratios = [r[0] / off[0] for r, off in zip(results[m], results[None])]
        shares = [r[1] for r in results[m] if r[1] is not None]
        rates = [r[2] for r in results[m] if r[2] is not None]
        rows.append(["off" if m is None else f"min_epoch_ms {m}",
                     " ".join(f"{h:.1f}" for h in host),
                     f"{(statistics.median(ratios) - 1) * 100:+.0f} %",
                     f"{statistics.median(rates):.0f}" if rates else "",
                     f"{statistics.median(shares) * 100:.1f} %" if shares else ""])
    bl.print_table(["FT", "host s (each round)", "slowdown", "epochs/s", "paused share"],
                   rows)
    print("aim: a compute-bound guest slowed by no more than 30 % at the default epoch\n")


def cpu_s(pid):
    """utime + stime of a process so far, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compute_once(epoch_ms, scale):
    """One run; (host seconds, guest-clock seconds, last query-ft or None,
    CPU seconds of the primary, of the secondary)."""
    append = "console=ttyS0 quiet ferry.run=compute" + (
        f",--scale,{scale}" if scale != 1 else "")
    with ExitStack() as vms:
        if epoch_ms:
            port = free_tcp_port()
            uri = f"tcp:127.0.0.1:{port}"
            sec = vms.enter_context(VM(mem=256, args=["--ft-secondary",
                                                      f"{uri},timeout-ms=5000"],
                                       name="secondary"))
            wait_port(port, sec)
        vm = vms.enter_context(VM(append=append, mem=256, initrd=compute.INITRD,
                                  name="compute"))
        q = vm.qmp()
        if epoch_ms:
            q.cmd("ft-start", uri=uri, epoch_ms=epoch_ms)
        vm.wait_for(r"^compute: start", 120)
        t_start = time.monotonic()
        c0 = cpu_s(vm.pid), cpu_s(sec.pid) if epoch_ms else 0
        st = None
        while True:         # the guest powers off right after its total
            try:
                c1 = cpu_s(vm.pid), cpu_s(sec.pid) if epoch_ms else 0
                m = vm.wait_for(r"^compute: total ([0-9.]+) s", 1)
                break
            except TimeoutError:
                if epoch_ms:
                    st = q.cmd("query-ft")
        return (time.monotonic() - t_start, float(m.group(1)), st, c1[0] - c0[0],
                c1[1] - c0[1])


def wait_port(port, vm, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not vm.running():
            raise bl.BenchError(f"the secondary ended:\n{vm.tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise bl.BenchError("the secondary does not listen")


def bench_compute(args):
    compute.build()
    print(f"== compute slowdown: bench/compute.c in a 256 MiB guest, host seconds from "
          f"'compute: start' to 'compute: total', FT off and on (secondary on "
          f"loopback); {args.runs} rounds, each running every setting once in turn, "
          f"so that the host's changing load falls on all alike; the slowdown is the "
          f"median over rounds of each run against the FT-off run of its round")
    settings = [0] + list(args.epochs)
    results = {e: [] for e in settings}
    for _ in range(args.runs):
        for e in settings:
            results[e].append(compute_once(e, args.scale))
    rows = []
    for e in settings:
        host = [r[0] for r in results[e]]
        ratios = [r[0] / off[0] for r, off in zip(results[e], results[0])]
        st = results[e][-1][2]
        extra = ""
        if st:
            extra = (f"pause avg {st['pause_us_avg']} us ({st['pause_us_avg'] / 10 / e:.1f} "
                     f"% of the epoch), max {st['pause_us_max']} us, "
                     f"{st['bytes_per_epoch'] // 1024} KiB/epoch")
        rows.append(["off" if not e else f"epoch {e} ms",
                     " ".join(f"{h:.1f}" for h in host),
                     f"{statistics.median(r[1] for r in results[e]):.2f}",
                     f"{(statistics.median(ratios) - 1) * 100:+.0f} %",
                     f"{statistics.median(r[3] for r in results[e]):.1f}",
                     f"{statistics.median(r[4] for r in results[e]):.1f}", extra])
    bl.print_table(["FT", "host s (each round)", "guest clock s", "slowdown",
                    "primary CPU s", "secondary CPU s", "checkpoints (last run)"], rows)
    print("CPU s: what the processes used between 'compute: start' and the last "
          "second before 'compute: total' (sampled each second). On a loaded host the "
          "wall times move with the CPU share the VM gets; the guest itself loses the "
          "paused share of each epoch, and the primary's CPU time shows the work FT adds")
    print("aim: a compute-bound guest slowed by no more than 30 % at the default epoch\n")


def qemu_colo_note():
    """Is COLO built into this QEMU? (Setting x-colo fails without it.)"""
    try:
        r = subprocess.run([bl.QEMU_SYSTEM, "-M", "virt", "-nographic", "-nodefaults",
                            "-qmp", "stdio", "-S"], input=(
            '{"execute":"qmp_capabilities"}\n'
            '{"execute":"migrate-set-capabilities","arguments":{"capabilities":'
            '[{"capability":"x-colo","state":true}]}}\n{"execute":"quit"}\n'),
            capture_output=True, text=True, timeout=30)
        replies = [line for line in r.stdout.splitlines() if '"return"' in line
                   or '"error"' in line]
        has = len(replies) >= 2 and '"error"' not in replies[1]
    except (OSError, subprocess.SubprocessError):
        return "qemu: COLO not checked (qemu-system-riscv64 did not run)"
    return ("qemu: COLO is built in (x-colo can be set) but not compared here: "
            "see the notes at the top of bench/ft.py" if has else
            "qemu: COLO is not built in (x-colo refused): nothing to compare")


COLO_QMP_TIMEOUT = 10


class Qmp:
    """A QMP client on a unix socket: cmd() raises TimeoutError when the
    monitor does not answer (a QEMU whose main loop is stuck)."""

    def __init__(self, path, timeout=COLO_QMP_TIMEOUT):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise TimeoutError(f"QMP closed during {name}")
            r = json.loads(line)
            if "error" in r:
                raise bl.BenchError(f"QMP {name}: {r['error']['desc']}")
            if "return" in r:
                return r["return"]


def colo_vm(tmp, role, port, extra):
    """One side of a COLO pair (docs/COLO-FT.txt's network objects)."""
    append = ("console=ttyS0 quiet ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.2 "
              f"ferry.run=tcpserve,--echo,--port,{ECHO_PORT}")
    fwd = f",hostfwd=tcp:127.0.0.1:{port}-:{ECHO_PORT}" if role == "primary" else ""
    cmd = [bl.QEMU_SYSTEM, "-M", "virt", "-smp", "1", "-m", str(MEM), "-nographic",
           "-bios", "default", "-kernel", str(bl.IMAGE), "-initrd", str(bl.INITRD),
           "-append", append, "-name", role, "-monitor", "none",
           "-serial", f"file:{tmp}/{role}.console",
           "-qmp", f"unix:{tmp}/{role}.qmp,server=on,wait=off",
           "-trace", "colo*",
           "-netdev", f"user,id=hn0,restrict=on{fwd}",
           "-device", f"virtio-net-device,netdev=hn0,mac={MAC}", *extra]
    return subprocess.Popen(cmd, stdout=open(f"{tmp}/{role}.log", "w"),
                            stderr=subprocess.STDOUT)


def colo_pair(tmp, ports):
    mirror, compare1, compare0, compare_out, incoming, fwd = ports
    sec = colo_vm(tmp, "secondary", fwd, [
        "-chardev", f"socket,id=red0,host=127.0.0.1,port={mirror},reconnect=1",
        "-chardev", f"socket,id=red1,host=127.0.0.1,port={compare1},reconnect=1",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
        "-incoming", f"tcp:127.0.0.1:{incoming}"])
    pri = colo_vm(tmp, "primary", fwd, [
        "-chardev", f"socket,id=mirror0,host=127.0.0.1,port={mirror},server=on,wait=off",
        "-chardev", f"socket,id=compare1,host=127.0.0.1,port={compare1},server=on,wait=on",
        "-chardev", f"socket,id=compare0,host=127.0.0.1,port={compare0},server=on,wait=off",
        "-chardev", f"socket,id=compare0-0,host=127.0.0.1,port={compare0}",
        "-chardev", f"socket,id=compare_out,host=127.0.0.1,port={compare_out},"
                    "server=on,wait=off",
        "-chardev", f"socket,id=compare_out0,host=127.0.0.1,port={compare_out}",
        "-object", "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0",
        "-object", "filter-redirector,netdev=hn0,id=redire0,queue=rx,indev=compare_out",
        "-object", "filter-redirector,netdev=hn0,id=redire1,queue=rx,outdev=compare0",
        "-object", "iothread,id=iothread1",
        "-object", "colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,"
                   "outdev=compare_out0,iothread=iothread1", "-S"])
    return pri, sec


def bench_colo(args):
    """How far a QEMU COLO pair gets with this guest (see the notes at the
    top): the steps reached, then one echo round trip."""
    print("== QEMU COLO, the same guest (tcpserve echo), primary and secondary on "
          "loopback, user networking; x-checkpoint-delay default (20 s) plus "
          "colo-compare's checkpoints on divergence")
    ports = [free_tcp_port() for _ in range(6)]
    with tempfile.TemporaryDirectory(prefix="ferry-colo-") as tmp:
        pri, sec = colo_pair(tmp, ports)
        steps = []
        try:
            qp = Qmp(f"{tmp}/primary.qmp")
            qs = Qmp(f"{tmp}/secondary.qmp")
            qp.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": "x-colo", "state": True}])
            qp.cmd("migrate", uri=f"tcp:127.0.0.1:{ports[4]}")
            deadline = time.monotonic() + 60
            while qp.cmd("query-migrate").get("status") != "colo":
                if time.monotonic() > deadline:
                    raise bl.BenchError("the primary did not reach COLO in 60 s")
                time.sleep(0.2)
            steps.append(f"the primary in COLO mode: {qp.cmd('query-colo-status')['mode']}")
            deadline = time.monotonic() + BOOT_S
            while "tcpserve: listening" not in Path(f"{tmp}/primary.console").read_text(
                    errors="replace"):
                if time.monotonic() > deadline:
                    raise bl.BenchError("the guest did not boot under COLO")
                time.sleep(0.5)
            steps.append(f"the guest booted; the secondary in COLO mode: "
                         f"{qs.cmd('query-colo-status')['mode']}")
            try:
                with socket.create_connection(("127.0.0.1", ports[5]), timeout=30) as c:
                    t0 = time.monotonic()
                    c.sendall(b"x" * 64)
                    got = c.recv(64)
                steps.append(f"an echo round trip: {len(got)} bytes in "
                             f"{(time.monotonic() - t0) * 1000:.0f} ms")
            except OSError as e:
                steps.append(f"an echo round trip: none in 30 s ({e})")
            try:
                qp.cmd("query-status")
                steps.append("the primary's QMP still answers")
            except (TimeoutError, OSError):
                steps.append(f"the primary's QMP does not answer in {COLO_QMP_TIMEOUT} s "
                             "(its COLO thread holds the big QEMU lock and waits for it)")
        finally:
            for vm in (pri, sec):
                vm.kill()
                vm.wait()
            trace = [line.strip() for line in Path(f"{tmp}/primary.log").read_text(
                errors="replace").splitlines()
                     if line.startswith(("colo_send", "colo_receive", "colo_vm_state"))]
        for s in steps:
            print("  " + s)
        print("  the primary's last COLO trace lines: " + " | ".join(trace[-4:]) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description="fault tolerance: gap, latency, compute")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", default="20,50,100",
                    help="epoch intervals in ms (default 20,50,100)")
    ap.add_argument("--min-epochs", default="0,3",
                    help="min_epoch_ms settings for the latency runs (0: epochs end "
                         "on the clock only)")
    ap.add_argument("--gap-epoch", type=int, default=50)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--only", choices=("gap", "latency", "compute", "colo", "disk", "talk"))
    args = ap.parse_args(argv)
    args.epochs = [int(x) for x in args.epochs.split(",")]
    args.min_epochs = [int(x) for x in args.min_epochs.split(",")]
    bl.need_guest()
    for line in bl.machine_description():
        print(line)
    print(qemu_colo_note())
    if args.only == "colo":
        return bench_colo(args)
    if not topology.available() and args.only != "compute":
        raise bl.BenchError("needs root and network namespaces")
    if args.only in (None, "gap"):
        bench_gap(args)
    if args.only in (None, "latency"):
        bench_latency(args)
    if args.only in (None, "disk"):
        bench_disk(args)
    if args.only in (None, "compute"):
        bench_compute(args)
    if args.only in (None, "talk"):
        bench_talk(args)


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"ft.py: {e}", file=sys.stderr)
        sys.exit(1)
