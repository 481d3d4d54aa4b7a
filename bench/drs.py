#!/usr/bin/env python3
"""bench/drs.py - how fast DRS reacts to an imbalance, and what it costs.

    bench/drs.py [--runs N] [--interval S] [--threshold T]

On a 3-host `ferry lab` (root and etcd-server needed), h3 in maintenance so
that the destination is h2, DRS in full mode (cool-down 600 s):

1. reaction: a busy guest (memload --rate 0) runs on h1, measured; at t0 a
   second one is created on h1. Timed from t0: the DRS pass that queues
   the migration (a migrate task of user drs appears; polled every 0.1 s)
   and the migration's end (task succeeded). Each run uses fresh VMs,
   deleted afterwards.
2. cost: pass_cpu_ms (CPU time of the decider's thread in one pass, from
   GET /api/v1/drs) over the runs, and ferry-center's CPU seconds (from
   /proc) over 30 s with DRS off and with DRS full at its default pass
   interval (10 s), with the busy guests running.

The reaction is, by construction, the CPU smoothing (~3 s to see a new
load), plus up to one pass interval, plus the queue's start; the default
interval is 10 s (drs.interval_s), --interval sets it. Timings move with
the machine's load (shared cores); nothing is asserted.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from test_cluster import Lab  # noqa: E402

BUSY = "console=ttyS0 quiet ferry.run=memload,--mib,4,--rate,0"


def drs_tasks(lab):
    return [t for t in lab.cli("task", "list")["tasks"] if t["kind"] == "migrate" and
            t["user"] == "drs"]


def one_run(lab, i):
    a, b = "ba%d" % i, "bb%d" % i
    lab.create(a, append=BUSY, host="h1", mem=64)
    # the first busy guest measured, DRS settled with it alone
    deadline = time.time() + 60
    while time.time() < deadline:
        d = lab.cli("cluster", "show")["drs"]
        h1 = [h for h in d.get("hosts", []) if h["name"] == "h1"]
        if h1 and h1[0]["cpu"] > 0.05 and not d["applied"]:
            break
        time.sleep(0.3)
    before = len(drs_tasks(lab))
    t0 = time.monotonic()
    lab.create(b, append=BUSY, host="h1", mem=64)
    t_task = t_done = None
    while time.monotonic() - t0 < 120:
        tasks = drs_tasks(lab)
        if len(tasks) > before:
            t_task = t_task or time.monotonic() - t0
            if tasks[0]["state"] not in ("queued", "running"):
                t_done = time.monotonic() - t0
                ok = tasks[0]["state"] == "succeeded"
                break
        time.sleep(0.1)
    cpu = lab.cli("cluster", "show")["drs"].get("pass_cpu_ms")
    for v in (a, b):
        lab.cli("vm", "delete", v)
    return t_task, t_done, ok if t_done else False, cpu


def center_cpu(lab, seconds):
    pid = lab.procs("center", "ferry-center")[0][0]

    def cpu():
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100.0
    c0 = cpu()
    time.sleep(seconds)
    return cpu() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=int, default=1, help="drs.interval_s for part 1")
    ap.add_argument("--threshold", type=int, default=5)
    args = ap.parse_args()
    with Lab() as lab:
        lab.cli("host", "maintenance", "h3", "enter")
        lab.cli("cluster", "set", "drs=full", "drs.cooldown_s=600",
                "drs.threshold=%d" % args.threshold, "drs.interval_s=%d" % args.interval)
        tasks, dones, cpus = [], [], []
        for i in range(args.runs):
            t_task, t_done, ok, cpu = one_run(lab, i)
            print("run %d: DRS queued the migration %s s after the second busy guest's "
                  "start, done at %s s (%s); pass CPU %.2f ms" % (
                      i + 1, "%.1f" % t_task if t_task else "-",
                      "%.1f" % t_done if t_done else "-", "succeeded" if ok else "FAILED",
                      cpu or 0), flush=True)
            if t_task and ok:
                tasks.append(t_task)
                dones.append(t_done)
            cpus.append(cpu or 0)
        if tasks:
            print("reaction (interval %d s, threshold %d): queued median %.1f s, worst %.1f s; "
                  "moved median %.1f s, worst %.1f s (%d of %d runs); pass CPU median %.2f ms"
                  % (args.interval, args.threshold, statistics.median(tasks), max(tasks),
                     statistics.median(dones), max(dones), len(tasks), args.runs,
                     statistics.median(cpus)), flush=True)
        # cost: ferry-center's CPU with busy guests running, DRS off vs full (interval 10 s)
        lab.create("c1", append=BUSY, host="h1", mem=64)
        lab.create("c2", append=BUSY, host="h2", mem=64)
        for mode in ("off", "full"):
            lab.cli("cluster", "set", "drs=" + mode, "drs.interval_s=10")
            time.sleep(2)
            print("ferry-center CPU over 30 s with DRS %s: %.2f s" % (mode, center_cpu(lab, 30)),
                  flush=True)


if __name__ == "__main__":
    main()
