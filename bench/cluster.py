#!/usr/bin/env python3
"""bench/cluster.py - what the cluster plane adds to a migration, and evacuations.

    bench/cluster.py [--runs N] [--evacuate-vms N]

On a 3-host `ferry lab` (network namespaces on this machine; root and
etcd-server needed):

1. overhead: an idle 256 MiB guest migrated h1 <-> h2 with
   `ferry vm migrate --to H --wait`, timed from the CLI's start to its
   exit (task succeeded), against the same migration done by hand on the
   hosts: start `ferry-vm --incoming` on the destination, wait for its
   listener, `migrate` on the source's control socket, poll query-migrate
   every 10 ms until completed. The plane's overhead is the difference of
   the medians (ferry-center's queue and scheduler, two ferryds, HTTP and
   the polling at each hop).
2. ferry-center's CPU while it follows a long migration: a 256 MiB guest
   running memload migrated h1 -> h2 capped at --cpu-mbps (default 40
   Mbit/s, some seconds), ferry-center's user+system CPU time (from /proc)
   over the migration, against the same span idle (its inventory sweeps).
3. evacuation: N idle 128 MiB guests on h1 migrated to h2/h3 (the wizard
   picks) with migrations_per_host = 1, 2 and 4: wall time until every
   task has succeeded, and the worst downtime any of them reported.

No QEMU column: QEMU has no cluster plane; the direct ferry-vm migration
is the baseline. Timings move with the machine's load (shared cores).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import benchlib as bl  # noqa: E402
from ferrylib import BUILD, GUEST_IMAGE, GUEST_INITRD, QMP  # noqa: E402

FERRY = BUILD / "ferry"
LAB = "fybench"


def ferry(*args, check=True):
    r = subprocess.run([str(FERRY), "--lab", LAB, "--json"] + [str(a) for a in args],
                       capture_output=True, text=True)
    if check and r.returncode:
        raise bl.BenchError("ferry %s: %s %s" % (" ".join(map(str, args)), r.stdout, r.stderr))
    return json.loads(r.stdout) if r.stdout.strip() else None


def create(name, host, mem):
    ferry("vm", "create", name, "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
          "--append", "console=ttyS0 quiet", "--mem", mem, "--host", host)


def plane_runs(runs):
    create("bench1", "h1", 256)
    time.sleep(4)
    walls, totals, estimates = [], [], []
    host = "h1"
    for _ in range(runs):
        host = "h2" if host == "h1" else "h1"
        t0 = time.monotonic()
        t = ferry("vm", "migrate", "bench1", "--to", host, "--wait")
        walls.append((time.monotonic() - t0) * 1000)
        totals.append(t["total_ms"])
        estimates.append((t["estimate"]["total_ms"], t["total_ms"], t["estimate"]["downtime_ms"],
                          t["downtime_ms"]))
    ferry("vm", "delete", "bench1")
    return walls, totals, estimates


def direct_runs(runs, tmp):
    """The same migration by hand: ferry-vm in LAB-h1 and LAB-h2."""
    addrs = {"h1": "10.88.0.11", "h2": "10.88.0.12"}
    procs = []

    def start(host, incoming=None):
        ctl = Path(tmp) / ("%s-%d.sock" % (host, len(procs)))
        cmd = ["ip", "netns", "exec", "%s-%s" % (LAB, host), str(BUILD / "ferry-vm"),
               "--mem", "256", "--smp", "1", "--control", str(ctl), "--console", "none"]
        if incoming:
            cmd += ["--incoming", incoming]
        else:
            cmd += ["--kernel", str(GUEST_IMAGE), "--initrd", str(GUEST_INITRD),
                    "--append", "console=ttyS0 quiet"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 20
        while not ctl.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return p, ctl

    def listening(host, port):
        out = subprocess.run(["ip", "netns", "exec", "%s-%s" % (LAB, host), "ss", "-Hltn"],
                             capture_output=True, text=True).stdout
        return ":%d " % port in out

    walls, totals = [], []
    try:
        src, ctl = start("h1")
        time.sleep(4)
        here = "h1"
        for i in range(runs):
            there = "h2" if here == "h1" else "h1"
            port = 47000 + i
            t0 = time.monotonic()
            dst, dctl = start(there, "tcp:%s:%d" % (addrs[there], port))
            while not listening(there, port):
                time.sleep(0.005)
            q = QMP(ctl)
            q.cmd("migrate", uri="tcp:%s:%d" % (addrs[there], port), downtime_ms=300)
            while True:
                r = q.cmd("query-migrate")
                if r["status"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.01)
            walls.append((time.monotonic() - t0) * 1000)
            totals.append(r["total_ms"])
            if r["status"] != "completed":
                raise bl.BenchError("direct migration: %s" % r)
            try:
                q.cmd("quit")
            except Exception:
                pass
            q.close()
            src.wait(10)
            src, ctl, here = dst, dctl, there
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return walls, totals


def center_cpu_s():
    """ferry-center's user+system CPU seconds (it runs in LAB-center)."""
    pids = subprocess.run(["ip", "netns", "pids", LAB + "-center"], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        try:
            if b"ferry-center" not in Path("/proc/%s/cmdline" % pid).read_bytes():
                continue
            f = Path("/proc/%s/stat" % pid).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    raise bl.BenchError("no ferry-center in %s-center" % LAB)


def center_cpu(mbps):
    """ferry-center's CPU over a capped migration, and over as long idle."""
    ferry("vm", "create", "cpu1", "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
          "--append", "console=ttyS0 quiet ferry.run=memload,--mib,16,--rate,2", "--mem", 256,
          "--host", "h1")
    time.sleep(4)
    c0, t0 = center_cpu_s(), time.monotonic()
    t = ferry("vm", "migrate", "cpu1", "--to", "h2", "--bandwidth-mbps", mbps, "--wait")
    wall, busy = time.monotonic() - t0, center_cpu_s() - c0
    c0 = center_cpu_s()
    time.sleep(wall)
    idle = center_cpu_s() - c0
    ferry("vm", "delete", "cpu1")
    return wall, busy, idle, t["state"]


def evacuate(n, limit):
    names = ["e%d" % i for i in range(n)]
    for name in names:
        create(name, "h1", 128)
    time.sleep(3 + n * 0.5)
    ferry("cluster", "set", "migrations_per_host=%d" % limit)
    t0 = time.monotonic()
    ids = [ferry("vm", "migrate", name)["id"] for name in names]
    tasks = []
    while True:
        tasks = [ferry("task", "show", i) for i in ids]
        if all(t["state"] not in ("queued", "running") for t in tasks):
            break
        time.sleep(0.1)
    wall = time.monotonic() - t0
    bad = [t for t in tasks if t["state"] != "succeeded"]
    if bad:
        raise bl.BenchError("evacuation: %s" % bad[0])
    for name in names:
        ferry("vm", "delete", name)
    return wall, max(t["downtime_ms"] for t in tasks), max(t["total_ms"] for t in tasks)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--evacuate-vms", type=int, default=8, help="0 skips the evacuations")
    ap.add_argument("--cpu-mbps", type=int, default=40,
                    help="the capped migration of part 2 (0 skips it)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/cluster.py: needs root (network namespaces)")
    print("\n".join(bl.machine_description()))
    tmp = tempfile.mkdtemp(prefix="ferry-bench-cluster-")
    subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True)
    subprocess.run([str(FERRY), "lab", "up", "--name", LAB, "--dir", tmp + "/lab"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        for f in (GUEST_IMAGE, GUEST_INITRD):
            subprocess.run(["cp", str(f), tmp + "/lab/shared/"], check=True)
        pw, pt, est = plane_runs(args.runs)
        dw, dt = direct_runs(args.runs, tmp)
        print("\n1. one migration, idle 256 MiB guest, h1 <-> h2, %d runs (medians, ms)" % args.runs)
        bl.print_table(["path", "wall (start to succeeded)", "ferry-vm total_ms"], [
            ["ferry vm migrate --wait", "%.0f" % statistics.median(pw), "%.0f" % statistics.median(pt)],
            ["by hand on the control socket", "%.0f" % statistics.median(dw), "%.0f" % statistics.median(dt)],
            ["plane overhead", "%.0f" % (statistics.median(pw) - statistics.median(dw)), ""]])
        print("   all walls, plane: %s; by hand: %s" % ([round(x) for x in pw], [round(x) for x in dw]))
        print("\n   the wizard's estimate against the actual, each run (total ms, downtime ms):")
        for i, (et, at, ed, ad) in enumerate(est):
            print("     run %d: estimate %d / actual %d; downtime estimate %d / actual %d%s" % (
                i + 1, et, at, ed, ad, "  (no migration measured yet: default)" if i == 0 else ""))
        if args.cpu_mbps:
            wall, busy, idle, state = center_cpu(args.cpu_mbps)
            print("\n2. ferry-center's CPU following one migration capped at %d Mbit/s (%s, %.1f s):"
                  " %.0f ms (%.1f %% of a core); the same span idle: %.0f ms (%.1f %%)" % (
                      args.cpu_mbps, state, wall, busy * 1e3, 100 * busy / wall, idle * 1e3,
                      100 * idle / wall))
        if not args.evacuate_vms:   # 0: the plane's overhead only
            return 0
        print("\n3. evacuate %d idle 128 MiB guests from h1 (wizard picks h2/h3)" % args.evacuate_vms)
        rows = []
        for limit in (1, 2, 4):
            wall, worst_dt, worst_total = evacuate(args.evacuate_vms, limit)
            rows.append([str(limit), "%.1f" % wall, str(worst_dt), str(worst_total)])
        bl.print_table(["migrations_per_host", "total s", "worst downtime ms",
                        "longest migration ms"], rows)
    finally:
        subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True)
        subprocess.run(["rm", "-rf", tmp])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bl.BenchError as e:
        print("bench/cluster.py:", e, file=sys.stderr)
        sys.exit(1)
