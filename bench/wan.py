#!/usr/bin/env python3
"""wan.py - live migration over a long fat link, ferry-vm against QEMU.

    bench/wan.py [--rtt-ms 100] [--rate-mbit 200] [--downtime-ms 300]
                 [--mem 256] [--mib 16] [--guest-rate 4] [--runs 1] [--limit 120]
                 [--mtu 9000] [--only ferry|qemu] [--trace]

The link is tests/integration/test_wan.py's: two network namespaces joined
by a delay line (delayline.py, TUN devices, half the RTT each way: this
kernel has no netem) with tbf shaping src's side to the rate (queue 50 ms).
Source in src, destination in dst, the migration over that link.

The guest: --mem MiB running memload on a --mib MiB hot set rewritten at
--guest-rate MiB/s (memload checks every page: after the migration two
more "pass ... errors 0" lines and no error make the guest "ok").
ferry-vm: `migrate` {uri, downtime_ms}, figures from its final MIGRATION
event, plus what window.c measured (rtt, window, link rate, compression).
QEMU: migrate-set-parameters {max-bandwidth uncapped, downtime-limit the
same}, figures from query-migrate. "link time" is what the bytes each one
sent take on the link at --rate-mbit (bytes x 8 / rate), without the RTT;
the aim: ferry-vm's total within 1.2x of its link time, with its pause
within the downtime target.
--trace: each ferry-vm run's packets on src's device (bench/wantrace.py,
this machine has no tcpdump) and the timeline they make.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests" / "integration"))
import benchlib as bl  # noqa: E402
from test_wan import Link  # noqa: E402

PORT = 47200
PASS_RE = r"^memload: pass (\d+) verified (\d+) MiB errors 0$"
QEMU_MAX_BANDWIDTH = 100 << 30


def netns(link, ns, cmd):
    return link.prefix(ns) + cmd


def healthy(vm, r):
    """memload goes on passing on the destination: two more lines, no error."""
    try:
        for _ in range(2):
            vm.wait_for(PASS_RE, 20)
    except bl.BenchError:
        lines = [ln for ln in vm.console().splitlines() if ln.strip()]
        r["extra"] = (r["extra"] + "; destination silent 20 s, its console ends: " +
                      (lines[-1][:80] if lines else "(nothing)")).lstrip("; ")
        return False
    return "memload: ERROR" not in vm.console()


def start_trace(link, work):
    cap = subprocess.Popen(netns(link, link.src, [sys.executable, str(HERE / "wantrace.py"),
                                                  "capture", "wan0", str(PORT),
                                                  str(work / "trace.txt")]),
                           stdout=subprocess.PIPE, text=True)
    cap.stdout.readline()       # "capturing"
    return cap


def show_trace(cap, work, a):
    time.sleep(0.5)             # the FINs
    cap.terminate()
    cap.wait()
    bl.OUT.mkdir(parents=True, exist_ok=True)
    keep = bl.OUT / time.strftime("wan-trace-%H%M%S.txt")
    keep.write_bytes((work / "trace.txt").read_bytes())
    print("trace: %s" % keep)
    subprocess.run([sys.executable, str(HERE / "wantrace.py"), "show", str(keep),
                    "--rtt-ms", str(a.rtt_ms), "--rate-mbit", str(a.rate_mbit)])


def ferry_run(link, a, work):
    append = f"console=ttyS0 quiet ferry.run=memload,--mib,{a.mib},--rate,{a.guest_rate}"
    s_sock, d_sock = work / "f-src.sock", work / "f-dst.sock"
    uri = f"tcp:{link.dst_ip}:{PORT}"
    src = bl.Machine("ferry-src", netns(link, link.src, bl.ferry_cmd(
        append, mem=a.mem, control=s_sock)), work, s_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, 120)
        dst = bl.Machine("ferry-dst", netns(link, link.dst, bl.ferry_cmd(
            None, mem=a.mem, incoming=uri, control=d_sock)), work, d_sock)
        time.sleep(1)
        cap = start_trace(link, work) if a.trace else None
        q = src.qmp()
        q.cmd("migrate", uri=uri, downtime_ms=a.downtime_ms)
        deadline = time.monotonic() + a.limit
        while True:
            ev = q.wait_event("MIGRATION", timeout=max(1, deadline - time.monotonic()))
            if ev["data"].get("status") in ("completed", "failed", "cancelled"):
                d = ev["data"]
                break
        r = {"status": d["status"], "total_ms": d.get("total_ms"),
             "downtime_ms": d.get("downtime_ms"), "bytes": d.get("transferred_bytes"),
             "rounds": d.get("rounds"),
             "extra": "setup %d ms, rtt %.1f ms, window %.1f MiB, link %.0f Mbit/s, zstd %s" % (
                 d.get("setup_ms", 0), d.get("rtt_ms", 0), d.get("window_bytes", 0) / (1 << 20),
                 d.get("link_rate_bps", 0) * 8 / 1e6, "on" if d.get("compress") else "off")}
        if cap:
            show_trace(cap, work, a)
        r["ok"] = d["status"] == "completed" and healthy(dst, r)
        return r
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_run(link, a, work):
    append = f"console=ttyS0 quiet ferry.run=memload,--mib,{a.mib},--rate,{a.guest_rate}"
    s_sock, d_sock = work / "q-src.sock", work / "q-dst.sock"
    src = bl.Machine("qemu-src", netns(link, link.src, bl.qemu_cmd(
        append, mem=a.mem, qmp=s_sock)), work, s_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, 300)
        dst = bl.Machine("qemu-dst", netns(link, link.dst, bl.qemu_cmd(
            append, mem=a.mem, qmp=d_sock, incoming=f"tcp:{link.dst_ip}:{PORT}")),
            work, d_sock)
        time.sleep(2)
        q = src.qmp()
        q.execute("migrate-set-parameters", {"max-bandwidth": QEMU_MAX_BANDWIDTH,
                                             "downtime-limit": a.downtime_ms})
        q.execute("migrate", {"uri": f"tcp:{link.dst_ip}:{PORT}"})
        deadline = time.monotonic() + a.limit
        while True:
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                q.cmd("migrate_cancel")
                info["status"] = "did not finish"
                break
            time.sleep(0.05)
        ram = info.get("ram", {})
        r = {"status": info["status"], "total_ms": info.get("total-time"),
             "downtime_ms": info.get("downtime"), "bytes": ram.get("transferred"),
             "rounds": ram.get("dirty-sync-count"), "extra": ""}
        r["ok"] = info["status"] == "completed" and healthy(dst, r)
        if not r["ok"]:
            r["extra"] += "; destination status: %s" % dst.qmp().cmd("query-status")
        return r
    finally:
        src.kill()
        if dst:
            dst.kill()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rtt-ms", type=float, default=100)
    p.add_argument("--rate-mbit", type=int, default=200)
    p.add_argument("--downtime-ms", type=int, default=300)
    p.add_argument("--mem", type=int, default=256)
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--guest-rate", type=int, default=4)
    p.add_argument("--mtu", type=int, default=9000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--limit", type=int, default=120)
    p.add_argument("--only", choices=("ferry", "qemu"))
    p.add_argument("--trace", action="store_true")
    a = p.parse_args(argv)
    bl.need_guest()
    print("\n".join(bl.machine_description()))
    print(f"link: RTT {a.rtt_ms:g} ms, {a.rate_mbit} Mbit/s (tbf, queue 50 ms), MTU {a.mtu}; guest "
          f"{a.mem} MiB, memload {a.mib} MiB at {a.guest_rate} MiB/s; downtime target "
          f"{a.downtime_ms} ms")
    runners = [r for r in (("ferry-vm", ferry_run), ("QEMU", qemu_run))
               if not a.only or r[0].lower().startswith(a.only)]
    rows = []
    for label, fn in runners:
        for _ in range(a.runs):
            with tempfile.TemporaryDirectory(prefix="ferry-wan-") as work, \
                    Link(rtt_ms=a.rtt_ms, rate_mbit=a.rate_mbit, mtu=a.mtu) as link:
                try:
                    r = fn(link, a, Path(work))
                except (bl.BenchError, bl.QMPError, TimeoutError, ConnectionError) as e:
                    r = {"status": "error", "ok": False, "extra": str(e).splitlines()[0]}
            link_ms = (r["bytes"] * 8 / (a.rate_mbit * 1e6) * 1000) if r.get("bytes") else None
            ratio = (r["total_ms"] / link_ms) if link_ms and r.get("total_ms") else None
            rows.append([label, r["status"] + (", guest ok" if r["ok"] else ", GUEST BAD"),
                         "-" if r.get("total_ms") is None else f"{r['total_ms']:,} ms",
                         "-" if r.get("bytes") is None else f"{r['bytes'] / (1 << 20):.1f} MiB",
                         "-" if link_ms is None else f"{link_ms:,.0f} ms",
                         "-" if ratio is None else f"{ratio:.2f}x",
                         "-" if r.get("downtime_ms") is None else f"{r['downtime_ms']} ms",
                         str(r.get("rounds", "-")), r.get("extra", "")])
            print("  " + " | ".join(rows[-1]), flush=True)
    print()
    bl.print_table(["", "status", "total", "sent", "link time", "total/link",
                    "pause", "rounds", "ferry's link figures"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
