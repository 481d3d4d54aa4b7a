#!/usr/bin/env python3
"""channels.py - page channels (`migrate` `channels: N`) against QEMU's multifd.

    bench/channels.py [--runs N] [--mem MiB] [--mib N] [--flow-mbps 200] [--no-qemu]
                      (or: bench/run channels)

The guest and the measure are bench/channel.py's: a 256 MiB guest running
memload --mib 192 --rate 1 (192 MiB of pages that are neither zero nor
compressible, rewritten slowly: one big first round and a short tail),
migrated over loopback on this 2-core machine; throughput is transferred
bytes over total time, CPU/GiB the CPU both processes used per GiB sent.
Each case runs with 1, 2 and 4 channels:
  plain        ferry: migrate {channels}; QEMU: multifd on, multifd-channels
               (1 = multifd off: QEMU's single stream)
  TLS          ferry: --tls-creds on both; QEMU: tls-creds-x509 objects and
               tls-creds (multifd over TLS)
  zstd         ferry: bandwidth_mbps 800 (below 1 Gbit/s it compresses);
               QEMU: max-bandwidth 100 MB/s and multifd-compression zstd
               (QEMU compresses only with multifd: no 1-channel row)
  flow cap     every TCP connection the source opens paced to --flow-mbps
               (ferry: FERRY_TEST_FLOW_MBPS, SO_MAX_PACING_RATE), as a network
               shaping each flow would; QEMU cannot be given that: no QEMU rows
The cases alternate within each run, so load drifts hit all alike.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
from channel import (LIMIT_S, PASS_RE, QEMU_MAX_BANDWIDTH, READY_S,  # noqa: E402
                     append_for, cpu_ms, make_certs)


def wait_ferry(q):
    deadline = time.monotonic() + LIMIT_S
    while True:
        ev = q.wait_event("MIGRATION", timeout=max(1, deadline - time.monotonic()))
        if ev["data"].get("status") in ("completed", "failed", "cancelled"):
            return ev["data"]


def ferry_run(case, n, args, work, certs):
    src_sock, dst_sock = work / "f-src.sock", work / "f-dst.sock"
    extra = ["--tls-creds", str(certs)] if case == "TLS" else []
    env = dict(os.environ)
    if case == "flow cap":
        env["FERRY_TEST_FLOW_MBPS"] = str(args.flow_mbps)
    old = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)          # the source inherits it
    try:
        src = bl.Machine("ferry-src", bl.ferry_cmd(append_for(args.mib), mem=args.mem,
                                                   control=src_sock) + extra,
                         work, src_sock)
    finally:
        os.environ.clear()
        os.environ.update(old)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        port = bl.free_tcp_port()
        dst = bl.Machine("ferry-dst", bl.ferry_cmd(None, mem=args.mem, control=dst_sock,
                                                   incoming=f"tcp:127.0.0.1:{port}") +
                         extra, work, dst_sock)
        bl.wait_until(lambda: bl.listening(port), 30, "ferry destination listening")
        q = src.qmp()
        margs = {"uri": f"tcp:127.0.0.1:{port}", "downtime_ms": 300, "channels": n}
        if case == "zstd":
            margs["bandwidth_mbps"] = 800
        cpu0 = cpu_ms(src) + cpu_ms(dst)
        q.cmd("migrate", **margs)
        d = wait_ferry(q)
        if d["status"] != "completed":
            raise bl.BenchError(f"ferry {case} x{n}: {d.get('error')}")
        cpu = cpu_ms(src) + cpu_ms(dst) - cpu0
        dst.wait_for(PASS_RE, 30)
        return d["transferred_bytes"], d["total_ms"], d["downtime_ms"], cpu
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_run(case, n, args, work, certs):
    src_sock, dst_sock = work / "q-src.sock", work / "q-dst.sock"
    append = append_for(args.mib)

    def tls_obj(endpoint):
        return ["-object", f"tls-creds-x509,id=tls0,dir={certs},endpoint={endpoint},"
                           "verify-peer=on"] if case == "TLS" else []
    caps = [{"capability": "multifd", "state": True}] if n > 1 else []
    params = {"max-bandwidth": QEMU_MAX_BANDWIDTH, "downtime-limit": 300}
    both = {}
    if n > 1:
        both["multifd-channels"] = n
    if case == "TLS":
        both["tls-creds"] = "tls0"
    if case == "zstd":
        both["multifd-compression"] = "zstd"
        params["max-bandwidth"] = 100 * 1000 * 1000
    src = bl.Machine("qemu-src", bl.qemu_cmd(append, mem=args.mem, qmp=src_sock) +
                     tls_obj("client"), work, src_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        port = bl.free_tcp_port()
        dst = bl.Machine("qemu-dst", bl.qemu_cmd(append, mem=args.mem, qmp=dst_sock,
                                                 incoming="defer") + tls_obj("server"),
                         work, dst_sock)
        dq = dst.qmp()
        if caps:
            dq.execute("migrate-set-capabilities", {"capabilities": caps})
        if both:
            dq.execute("migrate-set-parameters", both)
        dq.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        bl.wait_until(lambda: bl.listening(port), 30, "QEMU destination listening")
        q = src.qmp()
        if caps:
            q.execute("migrate-set-capabilities", {"capabilities": caps})
        q.execute("migrate-set-parameters", dict(params, **both))
        cpu0 = cpu_ms(src) + cpu_ms(dst)
        q.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + LIMIT_S
        while True:
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise bl.BenchError(f"QEMU {case} x{n}: did not finish in {LIMIT_S} s")
            time.sleep(0.05)
        if info["status"] != "completed":
            raise bl.BenchError(f"QEMU {case} x{n}: {info.get('error-desc')}")
        cpu = cpu_ms(src) + cpu_ms(dst) - cpu0
        if not dst.running():
            raise bl.BenchError(f"QEMU {case} x{n}: the destination exited")
        # QEMU's own figures; its guest's health is not checked (channel.py)
        return info["ram"]["transferred"], info["total-time"], info["downtime"], cpu
    finally:
        src.kill()
        if dst:
            dst.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--mib", type=int, default=192)
    ap.add_argument("--flow-mbps", type=int, default=200)
    ap.add_argument("--channels", default="1,2,4")
    ap.add_argument("--cases", default="plain,TLS,zstd,flow cap")
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args(argv)
    bl.need_guest()
    bl.need_program("certtool", "gnutls-bin")
    counts = [int(c) for c in args.channels.split(",")]
    cases = []
    for case in args.cases.split(","):
        for n in counts:
            cases.append(("ferry", case, n, ferry_run))
            if not args.no_qemu and case != "flow cap" and not (case == "zstd" and n == 1):
                cases.append(("QEMU", case, n, qemu_run))
    with tempfile.TemporaryDirectory(prefix="ferry-bench-channels-") as tmp:
        work = Path(tmp)
        certs = make_certs(work)
        results = {c[:3]: [] for c in cases}
        errors = {}
        for _ in range(args.runs):
            for who, case, n, fn in cases:
                try:
                    r = fn(case, n, args, work, certs)
                    results[(who, case, n)].append(r)
                    b, ms, d, cpu = r
                    print(f"  {who} {case} x{n}: {b / (1 << 20):.0f} MiB in {ms} ms, "
                          f"downtime {d} ms, CPU {cpu} ms, load "
                          f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
                except bl.BenchError as e:
                    errors[(who, case, n)] = str(e)
                    print(f"  {who} {case} x{n}: {e}", file=sys.stderr, flush=True)
        rows, base = [], {}
        for key, runs in results.items():
            who, case, n = key
            if not runs:
                rows.append([who, case, str(n), "failed", "-", "-", "-", "-",
                             errors.get(key, "")[:60]])
                continue
            mbps = bl.median([b * 8 / (ms / 1000) / 1e6 for b, ms, _, _ in runs if ms])
            total = bl.median([ms for _, ms, _, _ in runs])
            down = bl.median([d for _, _, d, _ in runs])
            cpu_gib = bl.median([cpu / (b / (1 << 30)) for b, _, _, cpu in runs])
            base.setdefault((who, case), mbps)
            rows.append([who, case, str(n), f"{total:.0f} ms", f"{down:.0f} ms",
                         f"{mbps:.0f} Mbit/s", f"{mbps / base[(who, case)]:.2f}",
                         f"{cpu_gib:.0f} ms", ""])
        print(f"{args.mem} MiB guest, memload --mib {args.mib} --rate 1, loopback, "
              f"median of {args.runs}; flow cap {args.flow_mbps} Mbit/s per connection; "
              f"load at the end {os.getloadavg()[0]:.1f}")
        bl.print_table(["", "case", "channels", "total", "downtime", "throughput",
                        "vs its first row", "CPU/GiB", "note"], rows)
        print("\n".join(bl.machine_description()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bl.BenchError as e:
        print(f"channels.py: {e}", file=sys.stderr)
        sys.exit(1)
