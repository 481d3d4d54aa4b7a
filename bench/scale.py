#!/usr/bin/env python3
"""scale - ferry-center at vCenter's maximums, and etcd's lease capacity.

Part 1, ferry-center (`--hosts 2500 --vms 40000`):
- a real 3-member etcd cluster on loopback (Debian's etcd, the lab's
  timings: heartbeat 100 ms, election 1000 ms) and a real ferry-center
  (build/ferry-center, its own SQLite file);
- the hosts are report-only: each is registered the way a ferryd does it
  (a key /ferry/hosts/NAME in etcd with its URL), and every URL points at
  one small fake ferryd (this script, `--fake-ferryd`, in its own process)
  that answers the agent API for all of them: a host report (harts,
  memory, load, datastore `shared`, network `lan`, no VMs of its own), 201
  to a VM start, 202 to a migration, and a migration that is already done.
  ferry-center polls it exactly as it polls real ferryds (every host,
  every sweep);
- the VMs are created through the real API (POST /api/v1/vms, with a
  host), 16 per host; ferry-center records them, starts them on the fake
  ferryd and keeps them as running;
- then, one request at a time over a kept-alive connection, while the
  inventory sweeps go on: `vm list` (pages of 50 at random offsets, and a
  search), `vm show`, `vm recommend`, task creation (`vm migrate` without
  --to: the wizard picks), `host list` (paged), the tasks and audit pages
  the console polls; p50/p99 of each, and ferry-center's memory (VmRSS,
  VmHWM from /proc).

Part 2, leases (`--leases`): how many ferryds one 3-member etcd cluster
serves. Each simulated ferryd does what ferryd's heartbeat does: a lease
of 5 s renewed every second with POST /v3/lease/keepalive on the JSON
gateway. Steps of N leases (doubling from --lease-start to --lease-max),
each held for --lease-step-s seconds; per step: renewal round trip
p50/p99, how late renewals go out against their 1 s schedule (p99, worst),
the longest gap between two renewals of one lease (over 5 s, it expires),
leases that expired, etcd's CPU and memory. It stops at the first step
where renewals lag (p99 lateness over 500 ms, or any lease expired; with
--lease-no-stop only at an expired lease) or at the bound. The load generator is asyncio over plain keep-alive HTTP
connections; its own CPU is printed, since on 2 shared cores it competes
with etcd.

With --drs: right after the VMs are created, DRS's cost on that inventory
(measure_drs): the VMs of the first tenth of the hosts are given a CPU
demand of 3.5 cores, the others 0.2 (written into ferry-center's database:
the fake ferryd runs no guest, so ferry-center measures none), DRS is set
to manual at threshold 5 with a pass a second, and the CPU time of each
pass (pass_cpu_ms, the decider's thread) is printed with what it
recommended; --drs-only stops there.

Figures are printed, never asserted. Needs etcd (etcd-server) and
build/ferry-center; no root.
"""

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = Path(os.environ.get("FERRY_BUILD") or REPO / "build").resolve()
CENTER = BUILD / "ferry-center"
PAGE = 50
ISA = "rv64imafdc_zicsr_zifencei"


# ---- the fake ferryd (one process answering for every report-only host) ------

class FakeFerryd(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    reports = 0   # host reports served: GET /_stats tells, to time the sweeps

    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self, method):
        # /HOST/agent/v1/...
        parts = self.path.split("/")
        host, rest = parts[1], "/".join(parts[4:])
        if method == "GET" and host == "_stats":
            return self.reply(200, {"reports": FakeFerryd.reports})
        if method == "GET" and rest == "host":
            FakeFerryd.reports += 1
            n = int(host[1:]) if host[1:].isdigit() else 0
            return self.reply(200, {
                "name": host, "harts": 64, "mem_mib": 524288,
                "free_mib": 262144 + (n * 7919) % 200000, "load": round((n % 97) / 10, 2),
                "isa": ISA, "vmm_version": "0.1.0 (report-only host, bench/scale.py)",
                "datastores": [{"name": "shared", "path": "/srv/shared",
                                "free_mib": 4000000, "present": True}],
                "networks": [{"name": "lan", "bridge": "br0", "present": True}],
                "vm_list": []})
        if method == "POST" and rest == "vms":
            self.body()
            return self.reply(201, {"state": "running"})
        if method == "POST" and rest.endswith("/migrate"):
            self.body()
            return self.reply(202, {"status": "setup"})
        if method == "GET" and rest.endswith("/migration"):
            return self.reply(200, {"done": True, "status": "completed", "total_ms": 900,
                                    "downtime_ms": 30, "transferred_bytes": 268435456,
                                    "remaining_bytes": 0, "rounds": 3})
        self.body()
        return self.reply(200, {})

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")


def run_fake_ferryd(port):
    srv = ThreadingHTTPServer(("127.0.0.1", port), FakeFerryd)
    srv.daemon_threads = True
    srv.serve_forever()


# ---- helpers ------------------------------------------------------------------

def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def proc_status(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024   # MiB
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = proc_status("self", "VmRSS")
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) // 1024 // 1024
    load = open("/proc/loadavg").read().split()[:3]
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    del mem
    return f"{os.cpu_count()} cores ({cpu}), {total} GiB, load {' '.join(load)}; {etcd}"


class Etcd:
    """A 3-member etcd cluster on loopback."""

    def __init__(self, tmp):
        self.procs = []
        self.clients = []
        peers, members = [], []
        for i in range(3):
            cp, pp = free_port(), free_port()
            self.clients.append(cp)
            members.append((f"m{i}", cp, pp))
            peers.append(f"m{i}=http://127.0.0.1:{pp}")
        for name, cp, pp in members:
            log = open(tmp / f"etcd-{name}.log", "w")
            self.procs.append(subprocess.Popen([
                "etcd", "--name", name, "--data-dir", str(tmp / f"etcd-{name}"),
                "--listen-client-urls", f"http://127.0.0.1:{cp}",
                "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-cluster", ",".join(peers), "--initial-cluster-token", "scale",
                "--initial-cluster-state", "new", "--heartbeat-interval", "100",
                "--election-timeout", "1000", "--quota-backend-bytes", str(4 << 30)],
                stdout=log, stderr=log))
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if b'"true"' in self.get(0, "/health"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etcd did not become healthy (logs in {tmp})")

    def urls(self):
        return ",".join(f"http://127.0.0.1:{p}" for p in self.clients)

    def get(self, i, path):
        c = http.client.HTTPConnection("127.0.0.1", self.clients[i], timeout=5)
        c.request("GET", path)
        return c.getresponse().read()

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Client:
    """One kept-alive connection to ferry-center."""

    def __init__(self, port, token):
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method, path, body=None):
        headers = {"Authorization": "Bearer " + self.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                t = time.perf_counter()
                self.conn.request(method, "/api/v1" + path, data, headers)
                r = self.conn.getresponse()
                payload = r.read()
                return r.status, json.loads(payload or b"null"), time.perf_counter() - t
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise


# ---- part 1: ferry-center at scale -------------------------------------------

def center_part(args, tmp):
    etcd = Etcd(tmp)
    fake_port, center_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, __file__, "--fake-ferryd", str(fake_port)])
    token = "scale-" + os.urandom(12).hex()
    import hashlib
    (tmp / "tokens").write_text("admin %s bench\nagent %s agent\npresent %s\n" % (
        hashlib.sha256(token.encode()).hexdigest(),
        hashlib.sha256(b"agent-secret").hexdigest(), "agent-secret"))
    log = open(tmp / "ferry-center.log", "w")
    center = subprocess.Popen([str(CENTER), "--listen", f"127.0.0.1:{center_port}",
                               "--db", str(tmp / "center.db"), "--etcd", etcd.urls(),
                               "--token-file", str(tmp / "tokens")], stdout=log, stderr=log)
    try:
        return measure_center(args, etcd, fake_port, center, center_port, token)
    finally:
        center.terminate()
        fake.terminate()
        center.wait(10)
        fake.wait(10)
        etcd.stop()


def measure_center(args, etcd, fake_port, center, center_port, token):
    cl = Client(center_port, token)
    deadline = time.time() + 20
    while True:
        try:
            if cl.call("GET", "/whoami")[0] == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("ferry-center does not answer")
        time.sleep(0.2)

    # hosts: /ferry/hosts/NAME in etcd, as a ferryd registers itself
    t0 = time.time()
    ec = http.client.HTTPConnection("127.0.0.1", etcd.clients[0], timeout=10)
    for i in range(1, args.hosts + 1):
        name = f"h{i}"
        value = json.dumps({"name": name, "url": f"http://127.0.0.1:{fake_port}/{name}",
                            "address": "127.0.0.1"})
        ec.request("POST", "/v3/kv/put", json.dumps({"key": b64("/ferry/hosts/" + name),
                                                     "value": b64(value)}))
        ec.getresponse().read()
    while True:
        st, c, _ = cl.call("GET", "/cluster")
        if c["hosts"] >= args.hosts:
            break
        if time.time() - t0 > 600:
            raise RuntimeError(f"ferry-center knows {c['hosts']} of {args.hosts} hosts")
        time.sleep(1)
    t_hosts = time.time() - t0
    print(f"{args.hosts} hosts registered in etcd and reported through ferry-center in "
          f"{t_hosts:.1f} s (the first inventory sweep)", flush=True)

    # VMs through the API, a few clients at once
    per_host = max(1, args.vms // args.hosts)
    names = [f"vm-{i:05d}" for i in range(args.vms)]
    create_lat = []
    t0 = time.time()

    def create(chunk):
        c = Client(center_port, token)
        for idx in chunk:
            st, body, dt = c.call("POST", "/vms", {
                "name": names[idx], "kernel": "shared:Image", "initrd": "shared:initrd.img",
                "mem_mib": 256, "smp": 1, "net": "lan", "host": f"h{idx // per_host % args.hosts + 1}"})
            if st != 201:
                raise RuntimeError(f"POST /vms {names[idx]}: {st} {body}")
            create_lat.append(dt)

    workers = 4
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(create, [range(w, args.vms, workers) for w in range(workers)]))
    t_vms = time.time() - t0
    print(f"{args.vms} VMs created through POST /api/v1/vms in {t_vms:.1f} s "
          f"({args.vms / t_vms:.0f}/s with {workers} clients; p50 {pct(create_lat, 50)*1e3:.1f} ms, "
          f"p99 {pct(create_lat, 99)*1e3:.1f} ms)", flush=True)

    if args.drs:
        measure_drs(cl, Path(center.args[4]), args)
        if args.drs_only:
            return [], 0, 0

    # measurements, one request at a time
    rnd = random.Random(1)
    results = []

    def run(label, n, make):
        lat = []
        for _ in range(n):
            method, path, body, want = make()
            st, reply, dt = cl.call(method, path, body)
            if st != want:
                raise RuntimeError(f"{label}: {method} {path}: {st} {reply}")
            lat.append(dt)
        results.append((label, n, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, max(lat) * 1e3))
        print(f"  {label:<44} p50 {pct(lat, 50)*1e3:7.1f} ms  p99 {pct(lat, 99)*1e3:7.1f} ms",
              flush=True)

    n = args.samples
    total_vms = cl.call("GET", "/cluster")[1]["vms"]
    run("vm list (page of 50, random offset)", n, lambda: (
        "GET", f"/vms?offset={rnd.randrange(0, total_vms - PAGE)}&limit={PAGE}", None, 200))
    run("vm list, search (q=3 digits, first page)", n, lambda: (
        "GET", f"/vms?q={rnd.randrange(1000):03d}&limit={PAGE}", None, 200))
    run("vm list on one host (host=H)", n, lambda: (
        "GET", f"/vms?host=h{rnd.randrange(1, args.hosts + 1)}&limit={PAGE}", None, 200))
    run("vm show", n, lambda: ("GET", f"/vms/{rnd.choice(names)}", None, 200))
    run("vm recommend (every host checked)", n, lambda: (
        "GET", f"/vms/{rnd.choice(names)}/recommend", None, 200))
    run("vm recommend ?limit=25 (the console's)", n, lambda: (
        "GET", f"/vms/{rnd.choice(names)}/recommend?limit=25", None, 200))
    migrated = set()

    def migrate():
        while True:
            v = rnd.choice(names)
            if v not in migrated:
                migrated.add(v)
                return ("POST", f"/vms/{v}/migrate", {}, 202)
    run("task creation (vm migrate, wizard's choice)", min(n, len(names)), migrate)

    def migrate_to():
        method, path, body, want = migrate()
        idx = int(path.split("/")[2][3:])
        src = idx // per_host % args.hosts + 1
        return method, path, {"to": f"h{src % args.hosts + 1}"}, want
    run("task creation (vm migrate --to H, the console's)", min(n, len(names)), migrate_to)
    run("host list (page of 50)", n, lambda: (
        "GET", f"/hosts?offset={rnd.randrange(0, args.hosts - PAGE)}&limit={PAGE}", None, 200))
    run("task list (page of 50)", n, lambda: ("GET", f"/tasks?limit={PAGE}", None, 200))
    run("audit (page of 50)", n, lambda: ("GET", f"/audit?limit={PAGE}", None, 200))
    # steady inventory sweeps: host reports asked for over 10 s
    def reports():
        c = http.client.HTTPConnection("127.0.0.1", fake_port, timeout=10)
        c.request("GET", "/_stats")
        return json.loads(c.getresponse().read())["reports"]
    r0, t0 = reports(), time.time()
    time.sleep(10)
    rate = (reports() - r0) / (time.time() - t0)
    print(f"inventory: {rate:.0f} host reports a second: each of the {args.hosts} hosts is "
          f"refreshed every {args.hosts / rate:.1f} s (sweep and pause)", flush=True)
    rss, hwm = proc_status(center.pid, "VmRSS"), proc_status(center.pid, "VmHWM")
    db = sum(f.stat().st_size for f in Path(center.args[4]).parent.glob("center.db*"))
    print(f"ferry-center memory: VmRSS {rss} MiB, peak (VmHWM) {hwm} MiB; database {db >> 20} MiB",
          flush=True)
    if args.hold:
        (Path(center.args[4]).parent / "token").write_text(token)
        print(f"holding ferry-center at http://127.0.0.1:{center_port}/ for {args.hold} s "
              f"(token in {Path(center.args[4]).parent / 'token'})", flush=True)
        time.sleep(args.hold)
    return results, rss, hwm


def measure_drs(cl, db_path, args):
    """DRS passes over this inventory, with a tenth of the hosts busy."""
    import sqlite3
    hot = max(1, args.hosts // 10)
    con = sqlite3.connect(str(db_path), timeout=60)
    con.execute("UPDATE vms SET cpu_rate = CASE WHEN CAST(substr(host, 2) AS INTEGER) <= ? "
                "THEN 3.5 ELSE 0.2 END", (hot,))
    con.commit()
    con.close()
    st, body, _ = cl.call("POST", "/cluster", {"drs": "manual", "drs.threshold": 5,
                                               "drs.interval_s": 1})
    if st != 200:
        raise RuntimeError(f"cluster set drs: {st} {body}")
    seen, t0 = {}, time.time()
    while len(seen) < 8 and time.time() - t0 < 300:
        st, d, _ = cl.call("GET", "/drs")
        if d.get("mode") == "manual" and "pass_cpu_ms" in d and d.get("imbalance") is not None:
            seen[d["passes"]] = d
        time.sleep(0.2)
    if not seen:
        raise RuntimeError("no DRS pass seen in 300 s")
    cpu = sorted(d["pass_cpu_ms"] for d in seen.values())
    last = seen[max(seen)]
    print(f"DRS (manual, threshold 5) over {args.hosts} hosts and {args.vms} VMs, {hot} hosts "
          f"busy: CPU per pass p50 {statistics.median(cpu):.0f} ms, max {cpu[-1]:.0f} ms "
          f"({len(cpu)} passes); imbalance {last['imbalance']:.3f} -> "
          f"{last['imbalance_after']:.3f} after its {len(last['recommendations'])} "
          f"recommended moves, e.g. {last['recommendations'][:1]}", flush=True)


# ---- part 2: leases --------------------------------------------------------------

async def http_post(reader, writer, host, path, body):
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.decode().split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    out = b""
    while True:   # chunked (the gateway streams keepalive replies)
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return out
        out += await reader.readexactly(size)
        await reader.readline()


async def lease_step(ports, n, seconds, conns):
    ids = []
    queue = asyncio.Queue()
    stats = {"rtt": [], "late": [], "expired": set(), "errors": 0, "renewals": 0,
             "max_gap": 0.0}
    last = {}   # lease -> when its last renewal was answered

    async def connection(i):
        return await asyncio.open_connection("127.0.0.1", ports[i % len(ports)])

    async def granter(i, count):
        r, w = await connection(i)
        for _ in range(count):
            reply = json.loads(await http_post(r, w, "etcd", "/v3/lease/grant", {"TTL": 5}))
            ids.append(reply["ID"])
        w.close()

    per = (n + conns - 1) // conns
    await asyncio.gather(*(granter(i, min(per, n - i * per)) for i in range(conns) if n - i * per > 0))
    start = time.perf_counter() + 0.5
    end = start + seconds

    async def scheduler():
        k = 0
        while True:
            for j, lid in enumerate(ids):
                due = start + k + j / len(ids)
                if due >= end:
                    return
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                queue.put_nowait((lid, due))
            k += 1

    async def worker(i):
        r, w = await connection(i)
        while True:
            lid, due = await queue.get()
            if lid is None:
                break
            t = time.perf_counter()
            stats["late"].append(t - due)
            try:
                raw = await http_post(r, w, "etcd", "/v3/lease/keepalive", {"ID": lid})
                reply = json.loads(raw.split(b"\n")[0])
                ttl = int((reply.get("result") or reply).get("TTL") or 0)
                if ttl <= 0:
                    stats["expired"].add(lid)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                stats["errors"] += 1
                w.close()
                r, w = await connection(i)
            done = time.perf_counter()
            stats["rtt"].append(done - t)
            stats["renewals"] += 1
            if lid in last:
                stats["max_gap"] = max(stats["max_gap"], done - last[lid])
            last[lid] = done
        w.close()

    workers = [asyncio.create_task(worker(i)) for i in range(conns)]
    await scheduler()
    for _ in workers:
        queue.put_nowait((None, 0))
    await asyncio.gather(*workers)
    # revoke, so the next step starts clean
    r, w = await connection(0)
    for lid in ids:
        await http_post(r, w, "etcd", "/v3/lease/revoke", {"ID": lid})
    w.close()
    return stats


def lease_part(args, tmp):
    etcd = Etcd(tmp)
    rows = []
    try:
        n = args.lease_start
        t_begin = time.time()
        while n <= args.lease_max and time.time() - t_begin < args.lease_budget_s:
            cpu0 = sum(cpu_seconds(p) for p in etcd.pids())
            me0 = cpu_seconds(os.getpid())
            t0 = time.time()
            st = asyncio.run(lease_step(etcd.clients, n, args.lease_step_s, args.lease_conns))
            wall = time.time() - t0
            etcd_cpu = (sum(cpu_seconds(p) for p in etcd.pids()) - cpu0) / wall
            gen_cpu = (cpu_seconds(os.getpid()) - me0) / wall
            rss = sum(proc_status(p, "VmRSS") or 0 for p in etcd.pids())
            late99, late_max = pct(st["late"], 99), max(st["late"] or [0])
            lag = late99 > 0.5 or bool(st["expired"])
            if args.lease_no_stop:
                lag = bool(st["expired"])
            row = (n, st["renewals"], pct(st["rtt"], 50) * 1e3, pct(st["rtt"], 99) * 1e3,
                   late99 * 1e3, late_max * 1e3, len(st["expired"]), st["errors"],
                   etcd_cpu * 100, rss, gen_cpu * 100, lag, st["max_gap"])
            rows.append(row)
            print(f"  {n:6d} leases: {st['renewals']} renewals, rtt p50 {row[2]:.1f} ms p99 "
                  f"{row[3]:.1f} ms, late p99 {row[4]:.0f} ms max {row[5]:.0f} ms, expired "
                  f"{row[6]}, longest gap between a lease's renewals {row[12]:.1f} s, errors {row[7]}; "
                  f"etcd {row[8]:.0f}% CPU {rss} MiB; generator "
                  f"{row[10]:.0f}% CPU{'  <- renewals lag' if lag else ''}", flush=True)
            if lag:
                break
            n *= 2
    finally:
        etcd.stop()
    return rows


# ---- main -------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=2500)
    ap.add_argument("--vms", type=int, default=40000)
    ap.add_argument("--samples", type=int, default=300, help="requests per measured call")
    ap.add_argument("--no-center", action="store_true", help="skip part 1")
    ap.add_argument("--drs", action="store_true", help="also DRS's CPU per pass")
    ap.add_argument("--drs-only", action="store_true", help="--drs, then end part 1")
    ap.add_argument("--hold", type=int, default=0,
                    help="keep ferry-center up for S seconds after part 1 (to look at the console)")
    ap.add_argument("--no-leases", action="store_true", help="skip part 2")
    ap.add_argument("--lease-start", type=int, default=500)
    ap.add_argument("--lease-max", type=int, default=32000)
    ap.add_argument("--lease-step-s", type=float, default=10)
    ap.add_argument("--lease-conns", type=int, default=32)
    ap.add_argument("--lease-budget-s", type=float, default=300)
    ap.add_argument("--lease-no-stop", action="store_true",
                    help="go on past lagging renewals, up to the first expired lease")
    ap.add_argument("--fake-ferryd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fake_ferryd:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        run_fake_ferryd(args.fake_ferryd)
        return
    # SIGTERM (and SIGINT, ignored in background jobs) unwinds, so that
    # etcd, ferry-center and the fake ferryd are stopped by the finally blocks
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    if not shutil.which("etcd"):
        sys.exit("scale: etcd is missing (apt-get install etcd-server)")
    if not args.no_center and not CENTER.exists():
        sys.exit(f"scale: {CENTER} is missing; build it (ninja -C build)")
    args.drs = args.drs or args.drs_only
    print("machine:", machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="ferry-scale-") as d:
        tmp = Path(d)
        if not args.no_center:
            print(f"== ferry-center: {args.hosts} hosts, {args.vms} VMs", flush=True)
            (tmp / "c").mkdir()
            center_part(args, tmp / "c")
        if not args.no_leases:
            print("== etcd (3 members): ferryd leases (TTL 4 s, renewed every 500 ms)", flush=True)
            (tmp / "l").mkdir()
            lease_part(args, tmp / "l")


if __name__ == "__main__":
    main()
