#!/usr/bin/env python3
"""migrate.py - live migration, ferry-vm against QEMU, same guest and load.

    bench/migrate.py [--limit S] [--runs N] [--case small|large] [--no-same-rate]
                     [--no-ram-check]
    (or: bench/run migrate)

Two cases, each migrated by ferry-vm and by QEMU, one after the other,
source and destination on loopback:
  small   256 MiB guest, memload --mib 16 --rate 0   (16 MiB rewritten flat out)
  large  1024 MiB guest, memload --mib 256 --rate 0  (256 MiB rewritten flat out)
memload (guest/tools/memload.c) checks every page before it rewrites it, so
after a migration the destination must go on printing "memload: pass ...
errors 0" once a second: two such lines within HEALTH_S seconds, and no
"memload: ERROR", make the guest "ok". That is checked for both machines.

ferry-vm: the source has a control socket; the destination is
`ferry-vm --incoming tcp:127.0.0.1:PORT`; the benchmark sends `migrate`
{uri, downtime_ms: 300} (no bandwidth cap) and reads the figures from the
final MIGRATION event: total_ms, downtime_ms, transferred_bytes, rounds.
ferry-vm's downtime runs from the pause of the source to the destination's
"started" message, so it includes the destination catching up and checking
its memory digest.

QEMU: two qemu-system-riscv64 processes, the destination with -incoming
tcp:127.0.0.1:PORT, both with -qmp unix:SOCK. On the source:
qmp_capabilities, migrate-set-parameters {max-bandwidth: 100 GiB/s (QEMU's
128 MiB/s default is a cap, not QEMU at its best), downtime-limit: 300},
migrate {uri}, then query-migrate every 50 ms until it ends: total-time,
downtime, ram.transferred, ram.dirty-sync-count (rounds). QEMU measures its
downtime on the source, up to the end of sending.

A slower CPU also dirties memory more slowly, so "--rate 0" is a lighter
load under ferry-vm than under QEMU. The write rate each guest reached just
before its migration is printed, and a third column migrates QEMU's guest
with memload limited to the rate ferry-vm's guest reached (--rate R): the
same load for both migrations (--no-same-rate leaves it out).

ferry-vm runs with the CPU FERRY_CPU names (jit, interp, or unset: the
decoded executor), printed at the top: run it as `FERRY_CPU=jit
bench/migrate.py` for a guest that dirties memory at a rate nearer QEMU's.

QEMU 7.2's own migration of this guest is broken (bench/README.md,
"Migration"). So QEMU's RAM is also checked outside the guest, as
bench/qemu_ramdiff.py does: the destination starts with -S, and once the
source says "completed" both sides are paused at the same instant of the
guest; pmemsave dumps all RAM on both, every page is compared, then the
destination is told "cont" and memload's health is checked as above. A
QEMU migration whose RAM differs is shown as such ("RAM differs k/N" in
the status). The source's figures do not depend on when the destination
starts. --no-ram-check leaves this out (ferry-vm's destination checks a
digest of all RAM before every handoff anyway).

Each migration has a time limit (--limit, default 300 s); past it the
migration is cancelled and reported as "did not finish". With --runs N each
column is migrated N times: the figures are medians over the completed runs.

The aims stated for ferry-vm: on the small case, downtime at most QEMU's
and total time at most half of QEMU's; on the large case, it must finish.
"""

import argparse
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402
import qemu_ramdiff as rd  # noqa: E402

DOWNTIME_MS = 300
QEMU_MAX_BANDWIDTH = 100 << 30      # bytes/s: uncapped for any loopback
PASS_RE = r"^memload: pass (\d+) verified (\d+) MiB errors 0$"
CASES = {
    "small": {"mem": 256, "mib": 16},
    "large": {"mem": 1024, "mib": 256},
}
READY_S = 300      # boot and memload's first fill, slowest machine
HEALTH_S = 15      # for two memload lines on the destination


class Result:
    """The figures of one migration (None: not known)."""

    def __init__(self):
        self.status = "did not start"
        self.total_ms = self.downtime_ms = self.bytes = self.rounds = None
        self.write_mib_s = None
        self.verified = False
        self.ram_pages = None       # QEMU: pages whose RAM differs (None: not checked)
        self.note = ""

    @property
    def finished(self):
        return self.status == "completed"


def append_for(case, rate):
    return (f"console=ttyS0 quiet ferry.run=memload,--mib,{case['mib']},"
            f"--rate,{rate}")


def guest_rate(vm):
    """MiB/s memload rewrites on vm: the growth of "verified N MiB" between
    two of its lines, which it prints once a second of the guest's clock."""
    a = vm.wait_for(PASS_RE, 60)
    b = vm.wait_for(PASS_RE, 60)
    return int(b.group(2)) - int(a.group(2))


def destination_healthy(vm, res):
    """memload keeps passing on the destination, with no error: two more
    of its once-a-second lines within HEALTH_S."""
    deadline = time.monotonic() + HEALTH_S
    try:
        for _ in range(2):
            vm.wait_for(PASS_RE, max(1, deadline - time.monotonic()))
        res.verified = True
    except bl.BenchError:
        res.verified = False
    bad = [line for line in vm.console().splitlines()
           if "memload: ERROR" in line or "BUG:" in line]
    if bad:
        res.verified = False
        res.note = "destination: " + bad[0]
    elif not res.verified:
        res.note = (f"destination: no memload line for {HEALTH_S} s after the "
                    f"migration ({'running' if vm.running() else 'exited'}): "
                    "the guest stalled")


def wait_listening(port, who):
    bl.wait_until(lambda: bl.listening(port), 30, f"{who} listening on port {port}")


# ---- ferry-vm ---------------------------------------------------------------

def ferry_migrate(case, rate, limit, work):
    res = Result()
    src_sock, dst_sock = work / "ferry-src.sock", work / "ferry-dst.sock"
    src = bl.Machine("ferry-src", bl.ferry_cmd(append_for(case, rate), mem=case["mem"],
                                               control=src_sock), work, src_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        res.write_mib_s = guest_rate(src)
        port = bl.free_tcp_port()
        dst = bl.Machine("ferry-dst", bl.ferry_cmd(None, mem=case["mem"],
                                                   incoming=f"tcp:127.0.0.1:{port}",
                                                   control=dst_sock), work, dst_sock)
        wait_listening(port, "ferry-vm destination")
        q = src.qmp()
        q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}", downtime_ms=DOWNTIME_MS)
        data = ferry_wait(q, limit)
        res.status = data.get("status", "?")
        res.total_ms = data.get("total_ms")
        res.downtime_ms = data.get("downtime_ms")
        res.bytes = data.get("transferred_bytes")
        res.rounds = data.get("rounds")
        if data.get("throttle_pct"):
            res.note = f"throttled the guest to {100 - data['throttle_pct']}%"
        if not res.finished:
            res.note = data.get("error", "") or res.note
            return res
        destination_healthy(dst, res)
        return res
    finally:
        src.kill()
        if dst:
            dst.kill()


def ferry_wait(q, limit):
    """The figures of the MIGRATION event that ends it; at the limit, the
    last query-migrate figures after a cancel, status "did not finish"."""
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        try:
            ev = q.wait_event("MIGRATION", timeout=max(1, left))
        except TimeoutError:
            data = q.cmd("query-migrate")
            try:
                q.cmd("migrate-cancel")
            except bl.QMPError:
                pass
            data["status"] = "did not finish"
            data["total_ms"] = None
            return data
        if ev["data"].get("status") in ("completed", "failed", "cancelled"):
            return ev["data"]


# ---- QEMU -------------------------------------------------------------------

def qemu_migrate(case, rate, limit, work, ram_check=True):
    res = Result()
    src_sock, dst_sock = work / "qemu-src.sock", work / "qemu-dst.sock"
    append = append_for(case, rate)
    src = bl.Machine("qemu-src", bl.qemu_cmd(append, mem=case["mem"], qmp=src_sock),
                     work, src_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        res.write_mib_s = guest_rate(src)
        port = bl.free_tcp_port()
        dst_cmd = bl.qemu_cmd(append, mem=case["mem"], qmp=dst_sock,
                              incoming=f"tcp:127.0.0.1:{port}")
        dst = bl.Machine("qemu-dst", dst_cmd + (["-S"] if ram_check else []),
                         work, dst_sock)
        wait_listening(port, "QEMU destination")
        q = src.qmp()
        q.execute("migrate-set-parameters", {"max-bandwidth": QEMU_MAX_BANDWIDTH,
                                             "downtime-limit": DOWNTIME_MS})
        q.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        info = qemu_wait(q, limit)
        ram = info.get("ram", {})
        res.status = info.get("status", "?")
        res.total_ms = info.get("total-time")
        res.downtime_ms = info.get("downtime")
        res.bytes = ram.get("transferred")
        res.rounds = ram.get("dirty-sync-count")
        if not res.finished:
            res.note = info.get("error-desc", "")
            return res
        if ram_check:
            qemu_compare_ram(q, dst.qmp(), case["mem"], work, res)
        destination_healthy(dst, res)
        if res.ram_pages:
            res.note = (f"RAM differs in {res.ram_pages} page(s) after 'completed'"
                        + (f"; {res.note}" if res.note else ""))
        return res
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_compare_ram(q_src, q_dst, mem_mib, work, res):
    """Both sides paused after "completed" (the destination was started
    with -S): dump and compare all RAM, then let the destination run."""
    wait_until_status(q_dst, lambda s: s != "inmigrate", "QEMU destination loaded")
    src_ram, dst_ram = work / "qemu-src.ram", work / "qemu-dst.ram"
    try:
        rd.dump(q_src, mem_mib, src_ram)
        rd.dump(q_dst, mem_mib, dst_ram)
        res.ram_pages = len(rd.diff_pages(src_ram, dst_ram))
    finally:
        for f in (src_ram, dst_ram):
            f.unlink(missing_ok=True)
    q_dst.cmd("cont")


def wait_until_status(q, ok, what):
    bl.wait_until(lambda: ok(q.cmd("query-status")["status"]), 30, what)


def qemu_wait(q, limit):
    """query-migrate until the migration ends or the limit passes (then
    migrate_cancel, and the last figures with status "did not finish")."""
    deadline = time.monotonic() + limit
    while True:
        info = q.cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() > deadline:
            q.cmd("migrate_cancel")
            info["status"] = "did not finish"
            info.pop("total-time", None)
            return info
        time.sleep(0.05)


# ---- one column: N migrations of one machine --------------------------------

class Column:
    """N migrations of one machine at one load, summed up."""

    def __init__(self, label, runs):
        self.label = label
        self.runs = runs

    def done(self):
        return [r for r in self.runs if r.finished]

    def med(self, attr):
        """Median over the completed runs (the guest's write rate: over all)."""
        runs = self.runs if attr == "write_mib_s" else self.done()
        return bl.median([getattr(r, attr) for r in runs])

    def ok(self):
        """Every run completed and left a healthy guest."""
        return bool(self.runs) and all(r.finished and r.verified for r in self.runs)

    def status(self):
        n = len(self.runs)
        good = sum(r.finished and r.verified for r in self.runs)
        done = len(self.done())
        checked = [r for r in self.runs if r.ram_pages is not None]
        ram = (f", RAM differs {sum(r.ram_pages > 0 for r in checked)}/{len(checked)}"
               if checked else "")
        if n == 1:
            r = self.runs[0]
            if not r.finished:
                return r.status
            return ("completed, guest ok" if r.verified else "completed, GUEST BAD") + ram
        return f"{done}/{n} completed, {good}/{n} guest ok{ram}"


def migrate_column(label, fn, case, rate, limit, work, runs):
    results = []
    for _ in range(runs):
        try:
            results.append(fn(case, rate, limit, work))
        except (bl.BenchError, bl.QMPError, TimeoutError, ConnectionError) as e:
            r = Result()
            r.status = "error"
            r.note = str(e).splitlines()[0]
            print(f"{label}: {e}", file=sys.stderr)
            results.append(r)
    return Column(label, results)


# ---- the table --------------------------------------------------------------

def fmt_ms(v):
    return "-" if v is None else f"{v:,.0f} ms"


def fmt_mib(v):
    return "-" if v is None else f"{v / (1 << 20):,.0f} MiB"


def fmt_rate(v):
    return "-" if v is None else f"{v:,.0f} MiB/s"


def fmt_n(v):
    return "-" if v is None else f"{v:g}"


def print_case(name, cols):
    f = cols[0]
    headers = [f"migrate {name}"]
    for i, c in enumerate(cols):
        headers.append(c.label)
        if i:
            headers.append("ferry/qemu" if i == 1 else "ferry/same-rate")
    rows = []
    for label, attr, fmt in (("total time", "total_ms", fmt_ms),
                             ("downtime", "downtime_ms", fmt_ms),
                             ("bytes sent", "bytes", fmt_mib),
                             ("rounds", "rounds", fmt_n),
                             ("guest writes (before)", "write_mib_s", fmt_rate)):
        row = [label]
        for i, c in enumerate(cols):
            row.append(fmt(c.med(attr)))
            if i:
                row.append("" if attr == "rounds" else bl.ratio(f.med(attr), c.med(attr)))
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


def print_aims(name, f, q):
    if name != "small":
        print(f"aim: ferry-vm finishes with a healthy guest: "
              f"{'met' if f.ok() else 'NOT met'}")
        return
    if not f.ok() or not q.done():
        print("aim: cannot be judged: a side did not complete"
              + ("" if f.ok() else " (or ferry-vm's guest was not healthy)"))
        return
    dt = f.med("downtime_ms") <= q.med("downtime_ms")
    tt = 2 * f.med("total_ms") <= q.med("total_ms")
    caveat = "" if q.ok() else " (QEMU's own migration damaged or stalled its guest)"
    print(f"aim: downtime at most QEMU's: {'met' if dt else 'NOT met'}; total time at "
          f"most half of QEMU's: {'met' if tt else 'NOT met'}{caveat}")


def run_case(name, args, work):
    case = CASES[name]
    print(f"-- {name}: {case['mem']} MiB guest, memload --mib {case['mib']} --rate 0, "
          f"downtime target {DOWNTIME_MS} ms, limit {args.limit} s, "
          f"{args.runs} run{'s' if args.runs > 1 else ''} a column")
    sys.stdout.flush()
    f = migrate_column("ferry-vm", ferry_migrate, case, 0, args.limit, work, args.runs)
    qemu = functools.partial(qemu_migrate, ram_check=args.ram_check)
    q = migrate_column("qemu", qemu, case, 0, args.limit, work, args.runs)
    cols = [f, q]
    rate = f.med("write_mib_s")
    if args.same_rate and rate:
        rate = max(1, int(round(rate)))
        cols.append(migrate_column(f"qemu --rate {rate}", qemu, case, rate,
                                   args.limit, work, args.runs))
    print_case(name, cols)
    print_aims(name, f, q)
    print()
    return cols


def main(argv=None):
    ap = argparse.ArgumentParser(description="live migration, ferry-vm against QEMU")
    ap.add_argument("--limit", type=int, default=300,
                    help="seconds each migration may take (default 300)")
    ap.add_argument("--runs", type=int, default=1,
                    help="migrations in each column (default 1)")
    ap.add_argument("--case", choices=sorted(CASES), action="append",
                    help="run only this case (repeatable; default both)")
    ap.add_argument("--no-same-rate", dest="same_rate", action="store_false",
                    help="leave out QEMU at ferry-vm's guest write rate")
    ap.add_argument("--no-ram-check", dest="ram_check", action="store_false",
                    help="do not compare QEMU's RAM on both sides after each migration")
    args = ap.parse_args(argv)
    bl.need_guest()
    print("== migrate: ferry-vm and QEMU on loopback, same kernel and memload, "
          "1 hart each")
    print(f"ferry-vm CPU: FERRY_CPU={os.environ.get('FERRY_CPU') or '(unset: decoded executor)'}; "
          f"{bl.machine_description()[1]}")
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    try:
        return {name: run_case(name, args, work)
                for name in (args.case or ["small", "large"])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"migrate.py: {e}", file=sys.stderr)
        sys.exit(1)
