#!/usr/bin/env python3
"""bench/ha.py - seconds from a host's death to its HA VM running elsewhere.

    bench/ha.py [--runs N] [--host h3]

Each run brings up a fresh 3-host `ferry lab` (network namespaces on this
machine; root and etcd-server needed), creates on --host a VM with
`--ha high` on the network `lan` whose guest runs `tcpserve` (echo) at
10.88.0.200:7000, and waits until the client namespace gets its echo.
Then the host dies: every process of its namespace (`ip netns pids`:
its etcd member, ferryd, the VM's monitor and ferry-vm) gets SIGKILL and
its link goes down. From that moment (CLOCK_MONOTONIC, one clock for
every namespace) it measures:

  (a) to the ferry-vm started on another host (its /proc start time,
      10 ms ticks): detection (the dead host's lease expires; etcd's
      lessor looks every 500 ms) + the HA decider's claim and its call to
      that host's ferryd + the spawn;
  (b) to the guest's TCP service answering the client again: (a) plus
      the guest's boot and tcpserve's start, probed by a connect+echo
      from LAB-client every 50 ms (each try times out after 200 ms).

Which ferryd was the HA decider and which etcd member the leader at the
kill are printed too: when the dead host's member led etcd, the others
elect a new leader first (about 1-1.5 s with --election-timeout 1000),
and a new etcd leader extends every lease by its full TTL.
Median and worst of N runs; timings move with the machine's load (shared
cores), which is printed before and after.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
from ferrylib import BUILD, GUEST_IMAGE, GUEST_INITRD  # noqa: E402

FERRY = BUILD / "ferry"
LAB = "fyha"
GUEST_IP = "10.88.0.200"
PORT = 7000
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOSTS = ("h1", "h2", "h3")

# Runs in LAB-client: connect + echo until it answers; prints the
# CLOCK_MONOTONIC time of the first answer.
PROBE = r"""
import socket, sys, time
ip, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + limit
while time.monotonic() < end:
    t = time.monotonic()
    try:
        s = socket.create_connection((ip, port), timeout=0.2)
        s.settimeout(1.0)
        s.sendall(b"ping\n")
        if s.recv(16) == b"ping\n":
            print(time.clock_gettime(time.CLOCK_MONOTONIC))
            sys.exit(0)
    except OSError:
        pass
    time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
sys.exit(1)
"""


def ferry(*args, check=True):
    r = subprocess.run([str(FERRY), "--lab", LAB, "--json"] + [str(a) for a in args],
                       capture_output=True, text=True)
    if check and r.returncode:
        raise bl.BenchError("ferry %s: %s %s" % (" ".join(map(str, args)), r.stdout, r.stderr))
    return json.loads(r.stdout) if r.stdout.strip() else None


def ns_pids(host):
    out = subprocess.run(["ip", "netns", "pids", "%s-%s" % (LAB, host)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def ferry_vms(host):
    found = []
    for pid in ns_pids(host):
        try:
            cmd = Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"/ferry-vm"):
            found.append(pid)
    return found


def proc_start_s(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / CLK_TCK


def probe(limit):
    return subprocess.Popen(["ip", "netns", "exec", LAB + "-client", "python3", "-c", PROBE,
                             GUEST_IP, str(PORT), str(limit)], stdout=subprocess.PIPE,
                            text=True)


def decider():
    r = subprocess.run(["ip", "netns", "exec", LAB + "-h1", "etcdctl", "--endpoints",
                        "http://10.88.0.11:2379", "get", "--print-value-only",
                        "/ferry/ha-leader"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def etcd_leader():
    r = subprocess.run(["ip", "netns", "exec", LAB + "-h1", "etcdctl", "--endpoints",
                        ",".join("http://10.88.0.%d:2379" % (10 + i) for i in (1, 2, 3)),
                        "endpoint", "status", "-w", "json"], capture_output=True, text=True)
    try:
        for m in json.loads(r.stdout):
            if m["Status"]["leader"] == m["Status"]["header"]["member_id"]:
                return "h%d" % (int(m["Endpoint"].rsplit(":", 1)[0].rsplit(".", 1)[1]) - 10)
    except (ValueError, KeyError):
        pass
    return "?"


def one_run(victim, tmp):
    lab_dir = tmp + "/lab"
    subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True)
    subprocess.run([str(FERRY), "lab", "up", "--name", LAB, "--dir", lab_dir], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        for f in (GUEST_IMAGE, GUEST_INITRD):
            shutil.copy(f, lab_dir + "/shared/")
        ferry("vm", "create", "svc", "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
              "--append", "console=ttyS0 quiet ferry.ip=%s/24 ferry.run=tcpserve,--port,%d"
              % (GUEST_IP, PORT), "--mem", "128", "--net", "lan,mac=52:54:00:88:00:09",
              "--host", victim, "--ha", "high")
        p = probe(120)
        if p.wait() != 0:
            raise bl.BenchError("the guest's tcpserve never answered on %s" % victim)
        # the HA record must be in etcd before the host dies
        log = Path(lab_dir) / "logs" / ("ferryd-%s.log" % victim)
        bl.wait_until(lambda: "VM svc runs here: its HA record" in log.read_text(), 30,
                      "svc's HA record")
        leader = decider()
        etcd_lead = etcd_leader()
        survivors = [h for h in HOSTS if h != victim]
        p = probe(120)
        time.sleep(0.3)   # the prober is running (it answers now, from the old copy)
        p.wait()
        p = None
        # death: every process of the host, then its link
        dead_at = time.clock_gettime(time.CLOCK_MONOTONIC)
        for pid in ns_pids(victim):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "exec", "%s-%s" % (LAB, victim), "ip", "link", "set",
                        "eth0", "down"], check=True)
        p = probe(120)
        new_host = new_pid = None
        end = time.monotonic() + 120
        while time.monotonic() < end and not new_pid:
            for h in survivors:
                pids = ferry_vms(h)
                if pids:
                    new_host, new_pid = h, pids[0]
            time.sleep(0.02)
        if not new_pid:
            raise bl.BenchError("svc did not start again within 120 s")
        running = proc_start_s(new_pid) - dead_at
        if p.wait() != 0:
            raise bl.BenchError("svc's tcpserve did not answer again within 120 s")
        answering = float(p.stdout.read()) - dead_at
        return {"running": running, "answering": answering, "to": new_host, "decider": leader,
                "etcd_leader": etcd_lead, "boot": answering - running}
    finally:
        subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--host", default="h3", choices=HOSTS, help="the host that dies")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/ha.py: needs root (network namespaces)")
    print("\n".join(bl.machine_description()))
    tmp = tempfile.mkdtemp(prefix="ferry-bench-ha-")
    runs = []
    try:
        for i in range(args.runs):
            r = one_run(args.host, tmp)
            runs.append(r)
            print("run %d: %s died (HA decider %s, etcd leader %s) -> ferry-vm on %s %.2f s, "
                  "TCP answers %.2f s (its boot: %.2f s)" % (
                      i + 1, args.host, r["decider"], r["etcd_leader"], r["to"], r["running"],
                      r["answering"], r["boot"]), flush=True)
    finally:
        subprocess.run(["rm", "-rf", tmp])
    print("\nhost death -> (%d runs)" % len(runs))
    rows = []
    for key, what in (("running", "ferry-vm running elsewhere"),
                      ("answering", "guest's TCP service answers"),
                      ("boot", "(b) - (a): the guest's boot to TCP")):
        xs = [r[key] for r in runs]
        rows.append([what, "%.2f s" % statistics.median(xs), "%.2f s" % max(xs)])
    bl.print_table(["", "median", "worst"], rows)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bl.BenchError as e:
        print("bench/ha.py:", e, file=sys.stderr)
        sys.exit(1)
