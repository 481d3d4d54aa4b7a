#!/usr/bin/env python3
"""downtime.py - the downtime a guest's neighbours see during a live
migration, measured from outside: ferry-vm against QEMU, same guest, same
network, one run.

    sudo bench/downtime.py [--runs N] [--mem MiB] [--memload MIB] [--interval-ms MS]

Both machines run in the namespace topology of tests/integration/
topology.py: a switch, hosts a and b (each a bridge br0 with its uplink
and a persistent tap0), and a client. The guest (build/guest/Image and
initrd.img, `ferry.ip=` so it idles with eth0 up, or running memload with
--memload) boots on host a with virtio-net on tap0, and migrates to host b
over the hosts' br0 addresses (tcp:10.77.N.2:PORT), never over loopback.

  ferry-vm: `ferry-vm --net tap=tap0,mac=M`, the destination with
            `--incoming tcp:HOST_B:PORT`; the control socket's `migrate`
            {uri, downtime_ms}, no bandwidth cap; the figures come from the
            final MIGRATION event. ferry-vm announces the MAC (RARP and a
            gratuitous ARP) when the guest resumes on host b.
  QEMU:     qemu-system-riscv64 -M virt -bios default (OpenSBI), the same
            kernel, initramfs, command line, RAM and harts, -netdev tap on
            tap0 with -device virtio-net-device (virtio-mmio on virt);
            the destination with -incoming tcp:HOST_B:PORT. Over QMP:
            migrate-set-parameters {max-bandwidth: 100 GiB/s (uncapped:
            QEMU's 128 MiB/s default is a cap), downtime-limit: the same
            target}, migrate {uri}, query-migrate until it ends. QEMU
            announces the guest after the migration by default
            (announce-rounds 5).

While the migration runs, the client sends an ICMP echo request to the
guest every --interval-ms (1 ms) from a raw socket, each carrying its own
sequence number, and notes when every reply arrives (CLOCK_MONOTONIC,
which the benchmark shares with the prober). The figure is the longest
time between two consecutive replies, from the last reply before the
migrate command until 1.5 s after the guest answers again once the
migration has ended (a guest silent 10 s after that is reported as
such): what a peer of the guest sees as "the guest was gone". It includes everything a user would
count (stopping, the last pages, device state, loading, resuming, the
switch learning where the MAC went), unlike the downtime each VMM reports
about itself, which is printed beside it. Probes lost in that window and
the usual gap before the migration (how well the guest keeps up with the
probe rate) are printed too.

Needs root (network namespaces, TAP devices). Timings are printed, never
asserted: the host is shared and figures move with its load (printed with
the machine description).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402  (puts tests/integration on sys.path)
import topology  # noqa: E402

MAC = "52:54:00:fe:77:02"
PORT = 47000
QEMU_MAX_BANDWIDTH = 100 << 30      # bytes/s: uncapped
BOOT_S = 120
PRE_S = 0.5                         # probing before the migrate command
POST_S = 1.5                        # and after the guest answers again
RESUME_S = 10                       # longest wait for it to answer again

# python3 -c PROBER IP INTERVAL_MS, in the client namespace: an ICMP echo
# request to IP every INTERVAL_MS from a raw socket; each carries a 64-bit
# probe number in its payload, which the reply echoes. At most every 50 ms
# it prints "reply T", the time of a reply just received. On a line "stop" on stdin it prints one JSON object: {"sent": [t...],
# "replies": [[n, t]...]} (times from time.monotonic()), and exits.
PROBER = r'''
import json, os, socket, struct, sys, threading, time
ip, interval = sys.argv[1], float(sys.argv[2]) / 1000
ident = os.getpid() & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sock.settimeout(0.2)
sent, replies, stop = [], [], threading.Event()

def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff

def echo_request(n):
    body = struct.pack("!Q", n) + b"ferry-downtime-probe"
    head = struct.pack("!BBHHH", 8, 0, 0, ident, n & 0xffff)
    return struct.pack("!BBHHH", 8, 0, checksum(head + body), ident, n & 0xffff) + body

def receive():
    told = 0
    while not stop.is_set():
        try:
            data = sock.recv(2048)
        except socket.timeout:
            continue
        t = time.monotonic()
        icmp = data[(data[0] & 15) * 4:]
        if len(icmp) >= 16 and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            replies.append((struct.unpack("!Q", icmp[8:16])[0], t))
            if t - told >= 0.05:
                sys.stdout.write("reply %.6f\n" % t)
                sys.stdout.flush()
                told = t

def send():
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        try:
            sock.sendto(echo_request(len(sent)), (ip, 0))
        except OSError:
            pass        # e.g. no neighbour yet: counts as a probe without reply
        sent.append(time.monotonic())
        due = max(due + interval, time.monotonic() - interval)

sys.stdout.write("probing\n")
sys.stdout.flush()
threads = [threading.Thread(target=receive), threading.Thread(target=send)]
for t in threads:
    t.start()
for line in sys.stdin:
    if line.strip() == "stop":
        break
stop.set()
for t in threads:
    t.join()
print(json.dumps({"sent": sent, "replies": replies}), flush=True)
'''


class Prober:
    """PROBER in the client namespace."""

    def __init__(self, topo, ip, interval_ms):
        self.proc = subprocess.Popen(
            topo.exec_prefix(topo.client) +
            [sys.executable, "-c", PROBER, ip, str(interval_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        first = self.proc.stdout.readline()
        if first.strip() != "probing":
            self.proc.kill()
            raise bl.BenchError(f"the prober did not start: {first}"
                                f"{self.proc.stderr.read()}")
        self.last_reply = 0.0       # a recent reply's time, from "reply T"
        self.last_line = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("reply "):
                self.last_reply = float(line.split()[1])
            else:
                self.last_line = line

    def wait_reply(self, after, timeout):
        """Waits for a reply that arrives after `after` (a time.monotonic()
        value); False if none within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last_reply > after:
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        """Stops probing; returns (send times, [(probe number, reply time)])."""
        self.proc.stdin.write("stop\n")
        self.proc.stdin.close()
        status = self.proc.wait(30)
        self.reader.join(30)
        if status != 0:
            raise bl.BenchError(f"the prober failed (status {status}): "
                                f"{self.proc.stderr.read().strip()}")
        data = json.loads(self.last_line)
        return data["sent"], [tuple(r) for r in data["replies"]]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Result:
    """What one migration looked like from outside, and what the VMM said."""

    def __init__(self, side):
        self.side = side
        self.status = "did not start"
        self.gap_ms = self.lost = self.usual_ms = None
        self.gap_at_ms = None           # where the gap began, from the command
        self.vmm_downtime_ms = self.total_ms = None
        self.moved = None               # the switch forwards the MAC to host b
        self.note = ""

    @property
    def ok(self):
        return self.status == "completed" and self.gap_ms is not None

    def gap_cell(self):
        if self.ok:
            return fmt_ms(self.gap_ms)
        return "no reply" if self.status == "completed" else self.status


def analyse(res, sent, replies, t_cmd, t_stop):
    """Fills res with the longest reply gap from the last reply before the
    migrate command (at t_cmd) to the end of probing (t_stop)."""
    before = sorted(t for _, t in replies if t < t_cmd)
    if len(before) > 2:
        gaps = sorted(b - a for a, b in zip(before, before[1:]))
        res.usual_ms = gaps[len(gaps) // 2] * 1000
    lo = before[-1] if before else t_cmd - PRE_S
    times = [lo] + sorted(t for _, t in replies if t >= t_cmd)
    if t_stop - times[-1] > POST_S / 2:
        res.note = (f"no reply from the guest for the last "
                    f"{(t_stop - times[-1]) * 1000:,.0f} ms of probing "
                    f"({RESUME_S} s after the migration ended)")
        return
    gap, at = max((b - a, a) for a, b in zip(times, times[1:]))
    res.gap_ms = gap * 1000
    res.gap_at_ms = (at - t_cmd) * 1000
    answered = {n for n, _ in replies}
    res.lost = sum(1 for n, t in enumerate(sent)
                   if lo <= t <= t_stop - 0.2 and n not in answered)


def guest_append(topo, memload):
    append = f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24"
    if memload:
        append += f" ferry.run=memload,--mib,{memload},--rate,0"
    return append


READY_RE = r"ferry-init: (ready|run: memload)"


def start_probing(topo, src, interval_ms):
    """Waits for the guest on host a to answer, then starts the prober."""
    src.wait_for(READY_RE, BOOT_S)
    status, out = topo.ping(topo.guest_ip, count=3, deadline=60)
    if status != 0:
        raise bl.BenchError(f"the guest on host a does not answer ping:\n{out}")
    prober = Prober(topo, topo.guest_ip, interval_ms)
    time.sleep(PRE_S + 0.5)
    return prober


def one_side(res, topo, work, src_cmd, dst_cmd, migrate, interval_ms):
    """Boots src_cmd on host a, migrates it to dst_cmd on host b with
    migrate(src, uri), probing all along; fills res."""
    host_a, host_b = topo.hosts["a"], topo.hosts["b"]
    uri = f"tcp:{topo.host_ip('b')}:{PORT}"
    tag = res.side.split()[0]
    src = bl.Machine(f"{tag}-src", topo.exec_prefix(host_a) + src_cmd(work / "src.sock"),
                     work, work / "src.sock")
    dst = prober = None
    try:
        prober = start_probing(topo, src, interval_ms)
        dst = bl.Machine(f"{tag}-dst",
                         topo.exec_prefix(host_b) + dst_cmd(work / "dst.sock", uri),
                         work, work / "dst.sock")
        topo.wait_listening(host_b, PORT, alive=dst.running)
        q = src.qmp()
        t_cmd = time.monotonic()
        migrate(res, q, uri)
        t_end = time.monotonic()
        # until the guest answers again (the gap may outlast the migration)
        prober.wait_reply(t_end, RESUME_S)
        time.sleep(POST_S)
        sent, replies = prober.stop()
        prober = None
        if res.status != "completed":
            return
        res.moved = topo.fdb_port(MAC) == topo.switch_port("b")
        analyse(res, sent, replies, t_cmd, sent[-1] if sent else t_end)
        if not res.ok:
            last = (dst.console().strip().splitlines() or ["(nothing)"])[-1]
            res.note += (f"; the destination is {'running' if dst.running() else 'gone'}, "
                         f"its console ends with: {last}")
    finally:
        if prober:
            prober.kill()
        src.kill()
        if dst:
            dst.kill()


# ---- the two machines -------------------------------------------------------

def ferry_migrate(res, q, uri, downtime_ms):
    q.cmd("migrate", uri=uri, downtime_ms=downtime_ms)
    while True:
        ev = q.wait_event("MIGRATION", timeout=300)
        data = ev["data"]
        if data.get("status") in ("completed", "failed", "cancelled"):
            break
    res.status = data["status"]
    res.vmm_downtime_ms = data.get("downtime_ms")
    res.total_ms = data.get("total_ms")
    if res.status != "completed":
        res.note = data.get("error", "")


def qemu_migrate(res, q, uri, downtime_ms):
    q.execute("migrate-set-parameters", {"max-bandwidth": QEMU_MAX_BANDWIDTH,
                                         "downtime-limit": downtime_ms})
    q.execute("migrate", {"uri": uri})
    deadline = time.monotonic() + 300
    while True:
        info = q.cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            q.cmd("migrate_cancel")
            info["status"] = "did not finish"
            break
        time.sleep(0.01)
    res.status = info["status"]
    res.vmm_downtime_ms = info.get("downtime")
    res.total_ms = info.get("total-time")
    if res.status != "completed":
        res.note = info.get("error-desc", "")


def run_ferry(topo, work, args):
    res = Result("ferry-vm")
    append = guest_append(topo, args.memload)
    net = ["--net", f"tap=tap0,mac={MAC}"]

    def src(sock):
        return bl.ferry_cmd(append, mem=args.mem, control=sock) + net

    def dst(sock, uri):
        return bl.ferry_cmd(None, mem=args.mem, control=sock, incoming=uri) + net

    def migrate(res, q, uri):
        ferry_migrate(res, q, uri, args.downtime_ms)
    one_side(res, topo, work, src, dst, migrate, args.interval_ms)
    return res


def run_qemu(topo, work, args):
    res = Result("qemu")
    append = guest_append(topo, args.memload)
    net = ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
           "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]

    def src(sock):
        return bl.qemu_cmd(append, mem=args.mem, qmp=sock) + net

    def dst(sock, uri):
        return bl.qemu_cmd(append, mem=args.mem, qmp=sock, incoming=uri) + net

    def migrate(res, q, uri):
        qemu_migrate(res, q, uri, args.downtime_ms)
    one_side(res, topo, work, src, dst, migrate, args.interval_ms)
    return res


# ---- the table --------------------------------------------------------------

def fmt_ms(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f} ms"


def median_of(results, attr):
    return bl.median([getattr(r, attr) for r in results if r.ok])


def report(runs, args):
    f = [r for r, _ in runs]
    q = [r for _, r in runs]
    rows = []
    for i, (a, b) in enumerate(runs, 1):
        rows.append([f"longest reply gap, run {i}", a.gap_cell(), b.gap_cell(),
                     bl.ratio(a.gap_ms, b.gap_ms) if a.ok and b.ok else "-"])
    gf, gq = median_of(f, "gap_ms"), median_of(q, "gap_ms")
    if len(runs) > 1:
        rows.append(["longest reply gap, median", fmt_ms(gf), fmt_ms(gq),
                     bl.ratio(gf, gq)])
    lf, lq = median_of(f, "lost"), median_of(q, "lost")
    rows += [
        ["probes lost (median)", "-" if lf is None else f"{lf:.0f}",
         "-" if lq is None else f"{lq:.0f}", ""],
        ["downtime the VMM reports", fmt_ms(median_of(f, "vmm_downtime_ms")),
         fmt_ms(median_of(q, "vmm_downtime_ms")),
         bl.ratio(median_of(f, "vmm_downtime_ms"), median_of(q, "vmm_downtime_ms"))],
        ["total migration time", fmt_ms(median_of(f, "total_ms")),
         fmt_ms(median_of(q, "total_ms")),
         bl.ratio(median_of(f, "total_ms"), median_of(q, "total_ms"))],
        ["usual gap before (probe rate)", fmt_ms(median_of(f, "usual_ms"), 2),
         fmt_ms(median_of(q, "usual_ms"), 2), ""],
        ["switch moved the MAC to host b",
         "/".join("yes" if r.moved else "no" for r in f if r.ok) or "-",
         "/".join("yes" if r.moved else "no" for r in q if r.ok) or "-", ""],
    ]
    bl.print_table(["downtime seen by the client", "ferry-vm", "qemu", "ferry/qemu"], rows)
    for side in (f, q):
        for i, r in enumerate(side, 1):
            if r.note:
                print(f"{r.side}, run {i}: {r.note}")
            elif r.ok:
                print(f"{r.side}, run {i}: the gap began {r.gap_at_ms:,.0f} ms after "
                      f"the migrate command")
    sys.stdout.flush()


def main(argv=None, describe=False):
    ap = argparse.ArgumentParser(description="guest-visible migration downtime, "
                                             "ferry-vm against QEMU")
    ap.add_argument("--runs", type=int, default=3,
                    help="migrations for each side, alternating (default 3)")
    ap.add_argument("--mem", type=int, default=256, help="guest MiB (default 256)")
    ap.add_argument("--memload", type=int, default=0, metavar="MIB",
                    help="run memload over MIB MiB flat out in the guest (default: "
                         "an idle guest)")
    ap.add_argument("--downtime-ms", type=int, default=300,
                    help="downtime target given to both (default 300)")
    ap.add_argument("--interval-ms", type=float, default=1.0,
                    help="time between two probes (default 1)")
    args = ap.parse_args(argv)
    bl.need_guest()
    if not topology.available():
        raise bl.BenchError("cannot create network namespaces: run as root "
                            "(with iproute2 installed)")
    if describe:
        for line in bl.machine_description():
            print(line)
    load = f"memload --mib {args.memload} --rate 0" if args.memload else "idle"
    print(f"== downtime: {args.mem} MiB guest, 1 hart, {load}; host a -> host b over "
          f"br0; downtime target {args.downtime_ms} ms; ICMP probe every "
          f"{args.interval_ms:g} ms from the client namespace")
    sys.stdout.flush()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-downtime-"))
    runs = []
    try:
        with topology.Topology() as topo:
            for i in range(args.runs):
                pair = []
                for side, fn in (("ferry-vm", run_ferry), ("qemu", run_qemu)):
                    try:
                        pair.append(fn(topo, work, args))
                    except (bl.BenchError, bl.QMPError, TimeoutError, ConnectionError,
                            RuntimeError) as e:
                        r = Result(side)
                        r.status = "error"
                        r.note = str(e).splitlines()[0]
                        print(f"{side}: {e}", file=sys.stderr)
                        pair.append(r)
                runs.append(tuple(pair))
                a, b = pair
                print(f"run {i + 1}: ferry-vm {a.gap_cell()}, qemu {b.gap_cell()}")
                sys.stdout.flush()
        report(runs, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


if __name__ == "__main__":
    try:
        main(describe=True)
    except bl.BenchError as e:
        print(f"downtime.py: {e}", file=sys.stderr)
        sys.exit(1)
