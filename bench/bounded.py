#!/usr/bin/env python3
"""bounded.py - a migration that must end within a budget with a short pause,
ferry-vm's planner against QEMU's auto-converge.

    bench/bounded.py [--limit S] [--runs N] [--budget S] [--no-same-rate]
    (or: bench/run bounded)

The case of issue 7: a 256 MiB guest running memload --mib 64 --rate 0
(64 MiB of incompressible pages rewritten as fast as the guest can), the
link capped at 80 Mbit/s (10 MB/s), a 100 ms downtime target, no post-copy.
64 MiB take 6.7 s to cross that link, and the guest rewrites them faster
than that, so pre-copy alone never ends: the vCPUs must be throttled.

ferry-vm: `migrate` {uri, bandwidth_mbps: 80, downtime_ms: 100,
max_total_s: BUDGET (default 20)}; figures from the final MIGRATION event,
including throttled_ms, the guest time its throttle took.

QEMU: migrate-set-capabilities auto-converge on, migrate-set-parameters
{max-bandwidth: 10,000,000 bytes/s, downtime-limit: 100}; QEMU has no
completion budget. query-migrate every 50 ms: total-time, downtime,
cpu-throttle-percentage; the guest time QEMU's throttle took is the sum of
throttle x 50 ms over the polls.

The guest under QEMU rewrites memory much faster (its CPU is faster), so a
third column runs QEMU's guest with memload limited to the rate ferry-vm's
guest reached: the same load for both (--no-same-rate leaves it out).
After each migration the destination's memload must go on verifying its
pages ("guest ok"). Each migration has a time limit (--limit, default
120 s); past it the migration is cancelled: "did not finish".
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402
import migrate as mig  # noqa: E402

CASE = {"mem": 256, "mib": 64}
BANDWIDTH_MBPS = 80
DOWNTIME_MS = 100
POLL_S = 0.05


class Result(mig.Result):
    def __init__(self):
        super().__init__()
        self.throttle_pct = self.throttled_ms = self.remaining = None


class Column(mig.Column):
    """Times over completed runs; what a migration did (throttle, bytes,
    rounds, what was left) over every run, finished or not."""

    def med(self, attr):
        if attr in ("throttle_pct", "throttled_ms", "bytes", "rounds", "remaining"):
            return bl.median([getattr(r, attr) for r in self.runs])
        return super().med(attr)


def ferry_bounded(rate, budget, limit, work):
    res = Result()
    src_sock, dst_sock = work / "ferry-src.sock", work / "ferry-dst.sock"
    src = bl.Machine("ferry-src", bl.ferry_cmd(mig.append_for(CASE, rate), mem=CASE["mem"],
                                               control=src_sock), work, src_sock)
    dst = None
    try:
        src.wait_for(mig.PASS_RE, mig.READY_S)
        res.write_mib_s = mig.guest_rate(src)
        port = bl.free_tcp_port()
        dst = bl.Machine("ferry-dst", bl.ferry_cmd(None, mem=CASE["mem"],
                                                   incoming=f"tcp:127.0.0.1:{port}",
                                                   control=dst_sock), work, dst_sock)
        mig.wait_listening(port, "ferry-vm destination")
        q = src.qmp()
        q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}", bandwidth_mbps=BANDWIDTH_MBPS,
              downtime_ms=DOWNTIME_MS, max_total_s=budget)
        data = mig.ferry_wait(q, limit)
        res.status = data.get("status", "?")
        res.total_ms = data.get("total_ms")
        res.downtime_ms = data.get("downtime_ms")
        res.bytes = data.get("transferred_bytes")
        res.rounds = data.get("rounds")
        res.throttle_pct = data.get("throttle_pct")
        res.throttled_ms = data.get("throttled_ms")
        res.remaining = data.get("remaining_bytes")
        if not res.finished:
            res.note = data.get("error", "")
            return res
        mig.destination_healthy(dst, res)
        return res
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_bounded(rate, limit, work):
    res = Result()
    src_sock, dst_sock = work / "qemu-src.sock", work / "qemu-dst.sock"
    append = mig.append_for(CASE, rate)
    src = bl.Machine("qemu-src", bl.qemu_cmd(append, mem=CASE["mem"], qmp=src_sock),
                     work, src_sock)
    dst = None
    try:
        src.wait_for(mig.PASS_RE, mig.READY_S)
        res.write_mib_s = mig.guest_rate(src)
        port = bl.free_tcp_port()
        dst = bl.Machine("qemu-dst", bl.qemu_cmd(append, mem=CASE["mem"], qmp=dst_sock,
                                                 incoming=f"tcp:127.0.0.1:{port}"),
                         work, dst_sock)
        mig.wait_listening(port, "QEMU destination")
        q = src.qmp()
        q.execute("migrate-set-capabilities",
                  {"capabilities": [{"capability": "auto-converge", "state": True}]})
        q.execute("migrate-set-parameters",
                  {"max-bandwidth": BANDWIDTH_MBPS * 1000000 // 8,
                   "downtime-limit": DOWNTIME_MS})
        q.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        info, peak, throttled = qemu_wait_throttle(q, limit)
        ram = info.get("ram", {})
        res.status = info.get("status", "?")
        res.total_ms = info.get("total-time")
        res.downtime_ms = info.get("downtime")
        res.bytes = ram.get("transferred")
        res.rounds = ram.get("dirty-sync-count")
        res.throttle_pct = peak
        res.throttled_ms = throttled
        res.remaining = ram.get("remaining")
        if not res.finished:
            res.note = info.get("error-desc", "")
            return res
        mig.destination_healthy(dst, res)
        return res
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_wait_throttle(q, limit):
    """query-migrate every POLL_S until the end (or the limit: cancel);
    returns the last figures, the biggest throttle seen and the guest time
    the throttle took (ms)."""
    deadline = time.monotonic() + limit
    peak, throttled = 0, 0.0
    last = time.monotonic()
    while True:
        info = q.cmd("query-migrate")
        now = time.monotonic()
        pct = info.get("cpu-throttle-percentage", 0)
        peak = max(peak, pct)
        throttled += (now - last) * 1000 * pct / 100
        last = now
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info, peak, round(throttled)
        if now > deadline:
            q.cmd("migrate_cancel")
            info["status"] = "did not finish"
            info.pop("total-time", None)
            return info, peak, round(throttled)
        time.sleep(POLL_S)


def column(label, fn, runs, *args):
    results = []
    for _ in range(runs):
        try:
            results.append(fn(*args))
        except (bl.BenchError, bl.QMPError, TimeoutError, ConnectionError) as e:
            r = Result()
            r.status = "error"
            r.note = str(e).splitlines()[0]
            print(f"{label}: {e}", file=sys.stderr)
            results.append(r)
    return Column(label, results)


def fmt_pct(v):
    return "-" if v is None else f"{v:g}%"


def print_table(cols, budget):
    f = cols[0]
    headers = ["bounded migration"]
    for i, c in enumerate(cols):
        headers.append(c.label)
        if i:
            headers.append("ferry/" + c.label.split()[0] + ("" if i == 1 else "-same"))
    rows = []
    for label, attr, fmt in (("total time", "total_ms", mig.fmt_ms),
                             ("downtime", "downtime_ms", mig.fmt_ms),
                             ("throttle (peak)", "throttle_pct", fmt_pct),
                             ("guest time throttled", "throttled_ms", mig.fmt_ms),
                             ("bytes sent", "bytes", mig.fmt_mib),
                             ("left at the end", "remaining", mig.fmt_mib),
                             ("rounds", "rounds", mig.fmt_n),
                             ("guest writes (before)", "write_mib_s", mig.fmt_rate)):
        row = [label]
        for i, c in enumerate(cols):
            row.append(fmt(c.med(attr)))
            if i:
                row.append("" if attr in ("rounds", "throttle_pct", "remaining")
                           else bl.ratio(f.med(attr), c.med(attr)))
        rows.append(row)
    status = ["status"]
    for i, c in enumerate(cols):
        status.append(c.status())
        if i:
            status.append("")
    bl.print_table(headers, [status] + rows)
    for c in cols:
        for r in c.runs:
            if r.note:
                print(f"{c.label}: {r.note}")
    ends = f.ok() and all(r.total_ms <= budget * 1000 and r.downtime_ms <= max(3 * DOWNTIME_MS, 1000)
                          for r in f.runs if r.total_ms is not None)
    print(f"aim: ferry-vm ends within {budget} s with its pause within the bound, "
          f"guest intact: {'met' if ends else 'NOT met'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="bounded migration, ferry-vm against "
                                             "QEMU auto-converge")
    ap.add_argument("--limit", type=int, default=120,
                    help="seconds each migration may take (default 120)")
    ap.add_argument("--runs", type=int, default=1, help="migrations in each column")
    ap.add_argument("--budget", type=int, default=20,
                    help="ferry-vm's max_total_s (default 20)")
    ap.add_argument("--no-same-rate", dest="same_rate", action="store_false",
                    help="leave out QEMU at ferry-vm's guest write rate")
    args = ap.parse_args(argv)
    bl.need_guest()
    print(f"== bounded: {CASE['mem']} MiB guest, memload --mib {CASE['mib']} --rate 0, "
          f"link {BANDWIDTH_MBPS} Mbit/s, downtime target {DOWNTIME_MS} ms; ferry-vm "
          f"max_total_s {args.budget}, QEMU auto-converge; limit {args.limit} s, "
          f"{args.runs} run{'s' if args.runs > 1 else ''} a column")
    sys.stdout.flush()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    try:
        f = column("ferry-vm", ferry_bounded, args.runs, 0, args.budget, args.limit, work)
        q = column("qemu", qemu_bounded, args.runs, 0, args.limit, work)
        cols = [f, q]
        rate = f.med("write_mib_s")
        if args.same_rate and rate:
            rate = max(1, int(round(rate)))
            cols.append(column(f"qemu --rate {rate}", qemu_bounded, args.runs, rate,
                               args.limit, work))
        print_table(cols, args.budget)
        return cols
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"bounded.py: {e}", file=sys.stderr)
        sys.exit(1)
