"""The cluster plane on a `ferry lab` of 3 hosts: ferryd, ferry-center, the CLI.

Each test brings up its own lab (namespaces LAB-fab, LAB-h1..h3 each with
an etcd member and a ferryd, LAB-center, LAB-client; about 2 s) under a
name of its own and takes it down in `finally`, so namespaces and
processes go even when the test fails. Guests boot from build/guest's
Image and initrd.img copied to the lab's shared datastore. The CLI runs
with `--lab LAB` (inside LAB-client); raw HTTP calls go through curl in
LAB-client. Migrations are slowed with --bandwidth-mbps where a test
needs to see them running (queues, limits, cancel).

What is proved, and how it would fail:
- create, wizard, migrate (test_cluster_migrate): a VM created from the
  shared datastore runs memload (which checks every page it wrote); the
  wizard refuses the VM's own host and a host in maintenance with their
  reasons; `vm migrate --wait` with no --to goes to the wizard's first
  choice, then --to a named host; each time the task succeeds with its
  figures, the VM is on the new host, and the guest's console there shows
  memload passes after the migration and no error; a guest on network
  `lan` answers the client's TCP connections (tcpserve) before and after
  its migration and its TAP leaves the source host; entering maintenance
  migrates every VM off the host (the networked one still answers); the
  audit trail
  verifies, and after a row is edited in SQLite, verification names it;
- cancel (test_cluster_cancel_and_errors): a slowed migration cancelled
  while running ends "cancelled", the VM still runs on its source and
  migrates fine afterwards, and the destination holds no leftover process;
  a guest whose ferry.run fails is reported "exited" with status 1 and its
  console's last lines (naming the missing program); a VM placed by the
  wizard is stopped (its process ends), refused for migration, started
  and deleted, each a task; a wrong token
  (401), a read-only token changing something (403), a malformed body
  (400), an unknown VM (404), an unknown destination (404), a bad
  priority (400) each give that status and a JSON error; a VM whose
  kernel is missing is refused with the path in the message;
- limits and priorities (test_cluster_limits_priority): with
  migrations_per_host=2, six slowed migrations queued at once never run
  more than 2 in or out of any host (sampled all along), some wait with
  "limit" in `waiting`; with a limit of 1, a high-priority task queued
  last starts before the standard ones queued before it; while a
  high-priority migration runs, a standard one through the same host is
  capped to standard_share_mbps and says so in `yielding`; with
  datastore.shared.migrations=1 a second migration waits for the first,
  saying so;
- a host lost mid-migration (test_cluster_host_failure): the destination
  host of a running migration dies (all its processes killed, its etcd
  member too, link cut): the task fails with a reason, the VM runs on at
  its source, the host is seen dead once its lease expires and the wizard
  refuses it ("not responding"); a VM created there with --ha high is
  started again on another host (an "ha-restart" task, audited; its
  guest runs memload there), one with HA off is marked lost; with one
  etcd member gone the cluster migrates the VM to the third host;
- a partition (test_cluster_partition_fence): a host cut off from the
  others with its processes alive loses its lease; its HA VM starts again
  elsewhere; when the link comes back, the cut-off copy is stopped
  (audited "ha.fence") and the restarted one runs on;
- schedule and restarts (test_cluster_schedule_restart): a migration
  --at +8s is queued with "scheduled for", survives a restart of
  ferry-center (killed, started again on the same database) and then
  runs and succeeds; a restart in the middle of a running migration loses
  nothing (the task ends succeeded, the VM on its destination); a ferryd killed and restarted finds its VM again
  (still running, same pid) and can migrate it; a source ferryd restarted
  in the middle of a migration: ferry-vm finishes alone, the task ends
  succeeded (from the destination's word) and the source's paused
  leftover is removed.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ferrylib import BUILD, GUEST_IMAGE, GUEST_INITRD, Skip, need_root, require_file, wait_until

TIMEOUT = 240
FERRY = BUILD / "ferry"
MEMLOAD = "console=ttyS0 quiet ferry.run=memload,--mib,4,--rate,2"
IDLE = "console=ttyS0 quiet"


class Lab:
    """One `ferry lab` for one test."""

    def __init__(self, hosts=3, isolation=None, vm_memory_mib=None, ferryd_env=None):
        need_root("network namespaces for the lab")
        if not shutil.which("etcd"):
            raise Skip("etcd is not installed (apt-get install etcd-server)")
        require_file(FERRY, "ninja -C build")
        require_file(GUEST_IMAGE, "make guest")
        self.name = "fc%d" % (os.getpid() % 100000)
        self.hosts = hosts
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-lab-"))
        self.env = dict(os.environ)
        if isolation:   # ferryd's --isolation-response
            self.env["FERRY_LAB_ISOLATION"] = isolation
        if vm_memory_mib:   # ferryd's --vm-memory-mib
            self.env["FERRY_LAB_VM_MEMORY_MIB"] = str(vm_memory_mib)
        self.env.update(ferryd_env or {})   # reaches every ferryd (test hooks, ferryd.h)

    def __enter__(self):
        try:
            r = subprocess.run([str(FERRY), "lab", "up", "--hosts", str(self.hosts), "--name",
                                self.name, "--dir", str(self.dir)], capture_output=True,
                               text=True, timeout=120, env=self.env)
            if r.returncode != 0:
                raise RuntimeError("ferry lab up failed: %s%s" % (r.stdout, r.stderr))
            shutil.copy(GUEST_IMAGE, self.dir / "shared" / "Image")
            shutil.copy(GUEST_INITRD, self.dir / "shared" / "initrd.img")
            self.token = (self.dir / "token").read_text().strip()
            self.token_ro = (self.dir / "token-ro").read_text().strip()
            self.url = (self.dir / "center.url").read_text().strip()
            return self
        except BaseException:
            self.down()
            raise

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            for log in sorted((self.dir / "logs").glob("*.log")):
                print("---- %s (last lines)" % log.name)
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        self.down()

    def down(self):
        subprocess.run([str(FERRY), "lab", "down", "--name", self.name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the CLI and the API
    def run(self, *args, check=True, timeout=120):
        """ferry --lab LAB --json ARGS: (exit status, parsed JSON or None, stderr)."""
        r = subprocess.run([str(FERRY), "--lab", self.name, "--json"] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout)
        try:
            doc = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            doc = None
        if check and r.returncode != 0:
            raise AssertionError("ferry %s: exit %d: %s %s" % (" ".join(map(str, args)),
                                                               r.returncode, r.stdout, r.stderr))
        return r.returncode, doc, r.stderr

    def cli(self, *args, **kw):
        return self.run(*args, **kw)[1]

    def http(self, method, path, body=None, token=None, raw=None):
        """curl from LAB-client: (status, parsed JSON body)."""
        cmd = ["ip", "netns", "exec", self.name + "-client", "curl", "-s", "-o", "-",
               "-w", "\n%{http_code}", "-X", method, self.url + path]
        if token is not False:
            cmd += ["-H", "Authorization: Bearer " + (token or self.token)]
        if body is not None or raw is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary",
                    raw if raw is not None else json.dumps(body)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        text, _, status = out.rpartition("\n")
        return int(status), (json.loads(text) if text.strip() else None)

    def agent(self, host, path, timeout=30):
        """GET ferryd's /agent/v1/PATH on host, from LAB-client with the agent token."""
        if not hasattr(self, "agent_token"):
            lines = (self.dir / "tokens").read_text().splitlines()
            self.agent_token = [l.split()[1] for l in lines if l.startswith("present ")][0]
            self.host_urls = {h["name"]: h["url"] for h in self.cli("host", "list")["hosts"]}
        out = subprocess.run(["ip", "netns", "exec", self.name + "-client", "curl", "-sf",
                              "-m", str(timeout), "-H", "Authorization: Bearer " +
                              self.agent_token, self.host_urls[host] + "/agent/v1" + path],
                             capture_output=True, text=True, timeout=timeout + 5)
        assert out.returncode == 0, (path, out.returncode, out.stderr)
        return json.loads(out.stdout)

    def guest_status(self, host, vm):
        """ferry-vm's own query-status of vm on host, through its ferryd ("running",
        "paused", ...): a VM left paused says so here, not in ferry-center's state."""
        return self.agent(host, "/vms/%s" % vm).get("vm_status")

    def echo(self, ip, port, data):
        """Sends data to a TCP echo service from LAB-client; returns the answer."""
        prog = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                "timeout=10); s.sendall(sys.argv[3].encode()); sys.stdout.write(s.recv(4096)"
                ".decode())")
        r = subprocess.run(["ip", "netns", "exec", self.name + "-client", "python3", "-c", prog,
                            ip, str(port), data.decode()], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.encode()

    def task(self, tid):
        return self.cli("task", "show", tid)

    def vm(self, name):
        return self.cli("vm", "show", name)

    def create(self, name, append=IDLE, host=None, mem=128):
        args = ["vm", "create", name, "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", append, "--mem", mem]
        if host:
            args += ["--host", host]
        return self.cli(*args)["vm"]

    def console(self, name):
        return self.cli("vm", "log", name)["console"]

    def ns_pids(self, ns):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_host(self, host):
        """Host failure: every process in LAB-host killed (its etcd member
        too), its link cut."""
        for pid in self.ns_pids("%s-%s" % (self.name, host)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "exec", "%s-%s" % (self.name, host), "ip", "link", "set",
                        "eth0", "down"], check=True)

    def procs(self, host, word):
        """pids in LAB-host whose command line contains word."""
        found = []
        for pid in self.ns_pids("%s-%s" % (self.name, host)):
            try:
                cmd = Path("/proc/%d/cmdline" % pid).read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if word in cmd:
                found.append((pid, cmd))
        return found

    def restart(self, ns_host, binary, args):
        """Kills `binary` in the namespace and starts it again with args."""
        for pid, _ in self.procs(ns_host, str(BUILD / binary)):
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not self.procs(ns_host, str(BUILD / binary)), 10,
                   "%s to stop" % binary)
        log = open(self.dir / "logs" / ("%s-%s.restart.log" % (binary, ns_host)), "ab")
        subprocess.Popen(["ip", "netns", "exec", "%s-%s" % (self.name, ns_host), "setsid",
                          str(BUILD / binary)] + args, stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log)
        port = args[args.index("--listen") + 1].rsplit(":", 1)[1]

        def listening():
            out = subprocess.run(["ip", "netns", "exec", "%s-%s" % (self.name, ns_host), "ss",
                                  "-Hltn"], capture_output=True, text=True).stdout
            return ":%s " % port in out
        wait_until(listening, 20, "the restarted %s to listen" % binary)

    def wait_task(self, tid, timeout=90):
        return wait_until(lambda: (lambda t: t if t["state"] not in ("queued", "running")
                                   else None)(self.task(tid)), timeout, "task %s to end" % tid,
                          interval=0.3)


def memload_passes(text):
    return [int(n) for n in re.findall(r"memload: pass (\d+) verified", text)]


def test_cluster_migrate():
    with Lab() as lab:
        hosts = lab.cli("host", "list")["hosts"]
        assert [h["name"] for h in hosts] == ["h1", "h2", "h3"]
        assert all(h["alive"] and h["isa"].startswith("rv64") for h in hosts), hosts
        assert all({d["name"] for d in h["datastores"]} == {"shared", "local"} for h in hosts)
        vm = lab.create("web1", append=MEMLOAD, host="h1")
        assert vm["host"] == "h1" and vm["state"] == "running", vm
        wait_until(lambda: len(memload_passes(lab.console("web1"))) >= 2, 90,
                   "memload passes on h1", interval=0.5)

        lab.cli("host", "maintenance", "h3", "enter")
        rec = lab.cli("vm", "recommend", "web1")
        refused = {r["host"]: r["reason"] for r in rec["refused"]}
        assert refused["h1"] == "the VM runs there", rec
        assert refused["h3"] == "in maintenance", rec
        assert [c["host"] for c in rec["candidates"]] == ["h2"], rec
        lab.cli("host", "maintenance", "h3", "exit")

        # the wizard's choice
        first = lab.cli("vm", "recommend", "web1")["candidates"][0]["host"]
        t = lab.cli("vm", "migrate", "web1", "--wait")
        assert t["state"] == "succeeded", t
        assert t["source"] == "h1" and t["destination"] == first, t
        assert t["total_ms"] > 0 and t["downtime_ms"] is not None, t
        assert t["progress"]["percent"] == 100 and t["progress"]["transferred_bytes"] > 0, t
        assert lab.vm("web1")["host"] == first
        wait_until(lambda: not lab.procs("h1", "ferry-vm"), 15, "the source's ferry-vm to go")
        # the guest runs on: new memload passes on the destination, no error
        before = len(memload_passes(lab.console("web1")))
        wait_until(lambda: len(memload_passes(lab.console("web1"))) > before, 90,
                   "memload passes on " + first, interval=0.5)

        # to a named host
        other = "h3" if first == "h2" else "h2"
        t = lab.cli("vm", "migrate", "web1", "--to", other, "--wait", "--downtime-ms", "200")
        assert t["state"] == "succeeded" and t["destination"] == other, t
        assert lab.vm("web1")["host"] == other
        before = len(memload_passes(lab.console("web1")))
        wait_until(lambda: len(memload_passes(lab.console("web1"))) > before, 90,
                   "memload passes on " + other, interval=0.5)
        assert "ERROR" not in lab.console("web1")
        assert lab.vm("web1")["state"] == "running"

        # back and forth at once: the host just arrived at lets the guest go
        # (it runs there, not still "incoming"), the host just left takes it
        # back (its old copy's directory is gone before the task succeeds)
        for to in (first, other):
            t = lab.cli("vm", "migrate", "web1", "--to", to, "--wait")
            assert t["state"] == "succeeded" and t["destination"] == to, t
        assert lab.vm("web1")["state"] == "running"

        # a guest on the network `lan`: its TCP service answers the client
        # before and after a migration; its TAP moves with it
        lab.cli("vm", "create", "net1", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", "console=ttyS0 quiet ferry.ip=10.88.0.200/24 "
                "ferry.run=tcpserve,--port,7000", "--mem", "128", "--net",
                "lan,mac=52:54:00:88:00:01", "--host", "h1")
        wait_until(lambda: "tcpserve: listening" in lab.console("net1"), 60, "tcpserve")
        assert lab.echo("10.88.0.200", 7000, b"before\n") == b"before\n"
        t = lab.cli("vm", "migrate", "net1", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t
        assert lab.echo("10.88.0.200", 7000, b"after\n") == b"after\n"
        assert "fyt" not in subprocess.run(["ip", "netns", "exec", lab.name + "-h1", "ip", "-o",
                                            "link"], capture_output=True, text=True).stdout

        tasks = lab.cli("task", "list", "--vm", "web1")["tasks"]
        assert [t["kind"] for t in tasks] == ["migrate"] * 4 + ["create"], tasks

        # the audit trail, then an edited row
        records = lab.cli("audit", "--vm", "web1")["records"]
        actions = [r["action"] for r in records]
        assert "vm.create" in actions and actions.count("vm.migrate") == 4, actions
        assert all(r["user"] in ("admin", "ferry-center") for r in records)
        assert lab.cli("audit", "--verify")["ok"] is True
        # maintenance empties a host: its running VMs migrate elsewhere
        on_h2 = [v["name"] for v in lab.cli("vm", "list")["vms"] if v["host"] == "h2"]
        assert on_h2, "no VM on h2 to evacuate"
        h = lab.cli("host", "maintenance", "h2", "enter")
        assert h["maintenance"] is True and len(h["evacuation"]["tasks"]) == len(on_h2), h
        for tid in h["evacuation"]["tasks"]:
            assert lab.wait_task(tid)["state"] == "succeeded"
        assert not [v for v in lab.cli("vm", "list")["vms"] if v["host"] == "h2"]
        assert lab.echo("10.88.0.200", 7000, b"evacuated\n") == b"evacuated\n"
        lab.cli("host", "maintenance", "h2", "exit")

        db = str(lab.dir / "center.db")
        subprocess.run(["sqlite3", db, "DROP TRIGGER audit_append_only; "
                        "UPDATE audit SET user = 'mallory' WHERE id = 2;"], check=True)
        rc, v, _ = lab.run("audit", "--verify", check=False)
        assert rc == 1 and v["ok"] is False and v["first_bad"] == 2, v
        assert "edited" in v["reason"], v


def test_cluster_cancel_and_errors():
    with Lab() as lab:
        lab.create("db1", host="h1")
        wait_until(lambda: "ferry-init" in lab.console("db1") or
                   "Run /init" in lab.console("db1") or lab.console("db1"), 60,
                   "the guest's console")
        t = lab.cli("vm", "migrate", "db1", "--to", "h2", "--bandwidth-mbps", "4")
        wait_until(lambda: lab.task(t["id"])["state"] == "running", 30, "the task to run")
        incoming = wait_until(lambda: lab.procs("h2", "ferry-vm"), 30,
                              "the incoming ferry-vm on h2")
        help_text = subprocess.run([str(BUILD / "ferry-vm"), "--help"], capture_output=True,
                                   text=True).stdout
        if "secret-file" in help_text:   # every migration gets a secret of its own
            assert "secret-file=" in incoming[0][1], incoming
        # ferryd's long poll (what ferry-center follows a migration with):
        # held until the migration has news past the generation given
        m = lab.agent("h1", "/vms/db1/migration")
        assert m["status"] not in ("completed", "failed", "cancelled") and not m["done"], m
        news = lab.agent("h1", "/vms/db1/migration?wait=8000&since=%d" % m["generation"])
        assert news["generation"] > m["generation"] and not news["done"], (m, news)
        lab.cli("task", "cancel", t["id"])
        t = lab.wait_task(t["id"])
        assert t["state"] == "cancelled", t
        m = lab.agent("h1", "/vms/db1/migration")
        assert m["done"] and m["status"] == "cancelled", m
        # a migration that has ended answers at once, whatever it is asked to wait
        assert lab.agent("h1", "/vms/db1/migration?wait=8000&since=%d" % m["generation"],
                         timeout=5)["done"]
        vm = lab.vm("db1")
        assert vm["host"] == "h1" and vm["state"] == "running", vm
        assert lab.procs("h1", "ferry-vm"), "the VM's process is gone from h1"
        assert lab.guest_status("h1", "db1") == "running"   # not left paused
        wait_until(lambda: not lab.procs("h2", "ferry-vm"), 15, "h2's incoming process to go")
        # and it can still migrate afterwards
        t = lab.cli("vm", "migrate", "db1", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t

        # a VM that dies is reported with its exit status and last console lines
        lab.create("dies", append="console=ttyS0 ferry.run=nosuchprogram", host="h3")
        vm = wait_until(lambda: (lambda v: v if v["state"] == "exited" else None)(
            lab.vm("dies")), 60, "the failing guest to be reported", interval=0.5)
        assert vm["exit_status"] == 1 and vm["last_console"], vm
        assert "nosuchprogram" in vm["last_console"], vm["last_console"]

        # power operations: stop, start, delete (each a task), placement by the wizard
        vm = lab.create("p1")
        assert vm["host"] in ("h1", "h2", "h3") and vm["state"] == "running", vm
        host = vm["host"]
        wait_until(lambda: lab.procs(host, "ferry-vm"), 10, "p1's process")
        n = len(lab.procs(host, "ferry-vm"))
        assert lab.cli("vm", "stop", "p1")["task"]["state"] == "succeeded"
        assert lab.vm("p1")["state"] == "stopped"
        assert len(lab.procs(host, "ferry-vm")) == n - 1
        rc, _, _ = lab.run("vm", "migrate", "p1", check=False)
        assert rc == 1, "a stopped VM was queued for migration"
        assert lab.cli("vm", "start", "p1")["task"]["state"] == "succeeded"
        assert lab.vm("p1")["state"] == "running"
        assert len(lab.procs(host, "ferry-vm")) == n
        assert lab.cli("vm", "delete", "p1")["task"]["state"] == "succeeded"
        assert lab.run("vm", "show", "p1", check=False)[0] == 1
        kinds = [t["kind"] for t in lab.cli("task", "list", "--vm", "p1")["tasks"]]
        assert kinds == ["delete", "start", "stop", "create"], kinds

        # errors: status and a JSON body with code and message
        def err(status, doc, code):
            assert doc and doc["error"]["status"] == status and doc["error"]["code"] == code, doc
            assert doc["error"]["message"], doc
        s, d = lab.http("GET", "/api/v1/vms", token="not-a-token")
        assert s == 401, (s, d)
        err(401, d, "unauthorized")
        s, d = lab.http("GET", "/api/v1/vms", token=False)
        assert s == 401, (s, d)
        s, d = lab.http("GET", "/api/v1/vms", token=lab.token_ro)
        assert s == 200 and d["total"] == 2, (s, d)
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", {"to": "h3"}, token=lab.token_ro)
        assert s == 403, (s, d)
        err(403, d, "forbidden")
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", raw="{not json")
        assert s == 400, (s, d)
        err(400, d, "bad_request")
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", raw="[1, 2]")   # not an object
        assert s == 400, (s, d)
        err(400, d, "bad_request")
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", {"to": 5})      # a wrong type
        assert s == 400, (s, d)
        err(400, d, "bad_request")
        s, d = lab.http("POST", "/api/v1/vms", {"name": "x1", "kernel": "shared:Image",
                                                "mem_mib": "lots"})
        assert s == 400, (s, d)
        err(400, d, "bad_request")
        s, d = lab.http("GET", "/api/v1/tasks/abc")
        assert s == 404, (s, d)
        err(404, d, "not_found")
        s, d = lab.http("POST", "/api/v1/tasks/99999/cancel", {})
        assert s == 404, (s, d)
        err(404, d, "not_found")
        s, d = lab.http("GET", "/api/v1/nosuchcall")
        assert s == 404, (s, d)
        err(404, d, "not_found")
        assert lab.vm("db1")["host"] == "h2" and lab.guest_status("h2", "db1") == "running"
        s, d = lab.http("GET", "/api/v1/vms/nosuchvm")
        assert s == 404, (s, d)
        err(404, d, "not_found")
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", {"to": "h9"})
        assert s == 404, (s, d)
        s, d = lab.http("POST", "/api/v1/vms/db1/migrate", {"priority": "urgent"})
        assert s == 400, (s, d)
        s, d = lab.http("POST", "/api/v1/vms", {"name": "bad", "kernel": "shared:nope",
                                                "mem_mib": 64})
        assert s == 400 and "nope" in d["error"]["message"], (s, d)
        s, d = lab.http("GET", "/api/v1/vms/bad")
        assert s == 404, "a refused VM was kept: %s" % d
        rc, _, stderr = lab.run("vm", "show", "nosuchvm", check=False)
        assert rc == 1
        # the CLI without --json says what went wrong and what to do
        r = subprocess.run([str(FERRY), "--lab", lab.name, "vm", "show", "nosuchvm"],
                           capture_output=True, text=True)
        assert r.returncode == 1 and "no VM named nosuchvm" in r.stderr, r.stderr
        assert "what to do" in r.stderr, r.stderr
        # the failed calls that change something are in the audit trail too
        results = [r["result"] for r in lab.cli("audit")["records"]]
        assert any(x.startswith("error 404") for x in results), results


def running_per_host(lab):
    count = {}
    for t in lab.cli("task", "list", "--state", "running")["tasks"]:
        for h in (t["source"], t["destination"]):
            count[h] = count.get(h, 0) + 1
    return count


def test_cluster_limits_priority():
    with Lab() as lab:
        names = ["q%d" % i for i in range(6)]
        for i, n in enumerate(names):
            lab.create(n, host="h1" if i < 3 else "h2", mem=64)
        lab.cli("cluster", "set", "migrations_per_host=2")
        assert lab.cli("cluster", "show")["settings"]["migrations_per_host"] == 2
        time.sleep(3)   # let the guests boot
        ids = []
        for i, n in enumerate(names):   # h1 -> h2/h3, h2 -> h3/h1
            to = ["h2", "h3", "h3", "h3", "h1", "h1"][i]
            ids.append(lab.cli("vm", "migrate", n, "--to", to, "--bandwidth-mbps", "8")["id"])
        peak, saw_limit = 0, False
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            count = running_per_host(lab)
            assert all(n <= 2 for n in count.values()), count
            peak = max([peak] + list(count.values()))
            for t in lab.cli("task", "list", "--state", "queued")["tasks"]:
                saw_limit = saw_limit or "limit" in (t["waiting"] or "")
            states = [lab.task(i)["state"] for i in ids]
            if all(s not in ("queued", "running") for s in states):
                break
            time.sleep(0.3)
        assert states == ["succeeded"] * 6, [lab.task(i) for i in ids]
        assert peak == 2, "no host ever ran 2 migrations at once (peak %d)" % peak
        assert saw_limit, "no queued task said it waits for a limit"

        # priorities: limit 1, three tasks through h1 and h3; the high one
        # queued last leaves the queue before the standard one when the
        # first (held at 1 Mbit/s, then cancelled) frees the slot
        lab.cli("cluster", "set", "migrations_per_host=1")
        a = lab.cli("vm", "migrate", "q2", "--to", "h1", "--bandwidth-mbps", "1")["id"]
        wait_until(lambda: lab.task(a)["state"] == "running", 30, "the first task to run")
        b = lab.cli("vm", "migrate", "q3", "--to", "h1")["id"]
        c = lab.cli("vm", "migrate", "q4", "--to", "h3", "--priority", "high")["id"]
        for tid in (b, c):
            wait_until(lambda: "limit" in (lab.task(tid)["waiting"] or ""), 10,
                       "task %d to wait for the limit" % tid)
        assert lab.task(a)["state"] == "running", lab.task(a)
        lab.cli("task", "cancel", a)
        # the order they left the queue in, from ferry-center's log (an idle
        # guest migrates in less than a poll: both may be seen gone at once)
        log = lab.dir / "logs" / "ferry-center.log"

        def start_order():
            started = [int(m.group(1)) for m in re.finditer(r"task (\d+): migrate ",
                                                            log.read_text(errors="replace"))]
            return [t for t in started if t in (b, c)]
        order = wait_until(lambda: (lambda o: o if len(o) == 2 else None)(start_order()), 90,
                           "both queued tasks to start")
        assert order == [c, b], "start order %s, expected high (%d) before standard (%d)" % (
            order, c, b)
        assert lab.wait_task(a)["state"] == "cancelled"
        for tid in (b, c):
            assert lab.wait_task(tid)["state"] == "succeeded"

        # a high-priority migration caps the standard ones sharing a host
        lab.cli("cluster", "set", "migrations_per_host=4", "standard_share_mbps=5")
        std = lab.cli("vm", "migrate", "q0", "--to", "h1", "--bandwidth-mbps", "16")["id"]
        wait_until(lambda: lab.task(std)["state"] == "running", 30, "the standard task to run")
        high = lab.cli("vm", "migrate", "q1", "--to", "h1", "--priority", "high",
                       "--bandwidth-mbps", "16")["id"]
        t = wait_until(lambda: (lambda t: t if t["yielding"] or t["state"] != "running"
                                else None)(lab.task(std)), 30, "the standard task to yield")
        assert t["yielding"] and "task %d" % high in t["yielding"], t
        assert lab.task(high)["yielding"] is None
        for tid in (std, high):
            assert lab.wait_task(tid)["state"] == "succeeded"

        # a limit on a datastore: one migration at a time of VMs on `shared`
        lab.cli("cluster", "set", "datastore.shared.migrations=1")
        first = lab.cli("vm", "migrate", "q4", "--to", "h2", "--bandwidth-mbps", "8")["id"]
        wait_until(lambda: lab.task(first)["state"] == "running", 30, "the first to run")
        second = lab.cli("vm", "migrate", "q5", "--to", "h3")["id"]
        wait_until(lambda: "datastore shared" in (lab.task(second)["waiting"] or ""), 10,
                   "the second to wait for the datastore's limit")
        assert lab.task(first)["state"] == "running"
        for tid in (first, second):
            assert lab.wait_task(tid)["state"] == "succeeded"


def test_cluster_schedule_restart():
    with Lab() as lab:
        lab.create("s1", host="h1")
        t = lab.cli("vm", "migrate", "s1", "--to", "h2", "--at", "+8s")
        assert t["state"] == "queued" and t["at"], t
        wait_until(lambda: "scheduled for" in (lab.task(t["id"])["waiting"] or ""), 10,
                   "the task to say it is scheduled")
        urls = ",".join("http://10.88.0.%d:2379" % (10 + i) for i in (1, 2, 3))
        lab.restart("center", "ferry-center", [
            "--listen", "10.88.0.2:7800", "--db", str(lab.dir / "center.db"), "--etcd", urls,
            "--token-file", str(lab.dir / "tokens")])
        wait_until(lambda: lab.run("task", "show", t["id"], check=False)[0] == 0, 20,
                   "ferry-center to answer again")
        assert lab.task(t["id"])["state"] == "queued"
        t = lab.wait_task(t["id"], timeout=60)
        assert t["state"] == "succeeded", t
        assert lab.vm("s1")["host"] == "h2"

        # restarted in the middle of a running migration: it follows it on
        t = lab.cli("vm", "migrate", "s1", "--to", "h1", "--bandwidth-mbps", "6")
        wait_until(lambda: lab.task(t["id"])["state"] == "running", 30, "the task to run")
        lab.restart("center", "ferry-center", [
            "--listen", "10.88.0.2:7800", "--db", str(lab.dir / "center.db"), "--etcd", urls,
            "--token-file", str(lab.dir / "tokens")])
        wait_until(lambda: lab.run("task", "show", t["id"], check=False)[0] == 0, 20,
                   "ferry-center to answer again")
        t = lab.wait_task(t["id"], timeout=60)
        assert t["state"] == "succeeded", t
        assert lab.vm("s1")["host"] == "h1"
        assert lab.guest_status("h1", "s1") == "running"
        t = lab.cli("vm", "migrate", "s1", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t

        # ferryd restarts; its VM keeps running and is found again
        before = lab.procs("h2", "ferry-vm")
        assert len(before) == 1, before
        lab.restart("h2", "ferryd", [
            "--name", "h2", "--listen", "10.88.0.12:7700", "--etcd", "http://10.88.0.12:2379",
            "--state-dir", str(lab.dir / "h2-state"), "--datastore",
            "shared=%s" % (lab.dir / "shared"), "--datastore", "local=%s" % (lab.dir / "h2-local"),
            "--network", "lan=br0", "--token-file", str(lab.dir / "tokens")])
        assert lab.procs("h2", "ferry-vm") == before, "the VM died with its ferryd"
        wait_until(lambda: any(h["name"] == "h2" and h["alive"] and h["vms"] == 1
                               for h in lab.cli("host", "list")["hosts"]), 20,
                   "h2 to report again")
        t = lab.cli("vm", "migrate", "s1", "--to", "h3", "--wait")
        assert t["state"] == "succeeded", t
        assert lab.vm("s1")["host"] == "h3" and lab.vm("s1")["state"] == "running"
        assert not lab.procs("h2", "ferry-vm")

        # the source's ferryd restarts in the middle of a migration: ferry-vm
        # finishes it alone, and ferry-center learns the outcome from the
        # destination (and removes the source's paused leftover)
        t = lab.cli("vm", "migrate", "s1", "--to", "h1", "--bandwidth-mbps", "6")
        wait_until(lambda: lab.task(t["id"])["state"] == "running", 30, "the task to run")
        wait_until(lambda: ((lab.task(t["id"])["progress"] or {}).get("transferred_bytes")
                            or 0) > 0, 30, "the migration to send its first bytes")
        lab.restart("h3", "ferryd", [
            "--name", "h3", "--listen", "10.88.0.13:7700", "--etcd", "http://10.88.0.13:2379",
            "--state-dir", str(lab.dir / "h3-state"), "--datastore",
            "shared=%s" % (lab.dir / "shared"), "--datastore", "local=%s" % (lab.dir / "h3-local"),
            "--network", "lan=br0", "--token-file", str(lab.dir / "tokens")])
        t = lab.wait_task(t["id"], timeout=90)
        assert t["state"] == "succeeded", t
        assert lab.vm("s1")["host"] == "h1" and lab.vm("s1")["state"] == "running"
        wait_until(lambda: not lab.procs("h3", "ferry-vm"), 20, "the source's leftover to go")


def test_cluster_host_failure():
    with Lab() as lab:
        lab.create("f1", host="h1")
        lab.cli("vm", "create", "ha1", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", MEMLOAD, "--mem", "128", "--host", "h2",
                "--ha", "high")
        lab.create("noha", host="h2")
        wait_until(lambda: memload_passes(lab.console("ha1")), 90, "memload on h2",
                   interval=0.5)
        t = lab.cli("vm", "migrate", "f1", "--to", "h2", "--bandwidth-mbps", "4")
        wait_until(lambda: lab.task(t["id"])["state"] == "running", 30, "the task to run")
        wait_until(lambda: lab.procs("h2", "ferry-vm"), 30, "the incoming ferry-vm on h2")
        lab.kill_host("h2")   # host h2 fails
        t = lab.wait_task(t["id"], timeout=60)
        assert t["state"] == "failed" and t["error"], t
        vm = lab.vm("f1")
        assert vm["host"] == "h1" and vm["state"] == "running", vm
        assert lab.procs("h1", "ferry-vm"), "the VM's process is gone from h1"
        wait_until(lambda: lab.guest_status("h1", "f1") == "running", 30,
                   "f1's guest to run on h1 (not left paused)")
        wait_until(lambda: [h["alive"] for h in lab.cli("host", "list")["hosts"]] ==
                   [True, False, True], 30, "h2 to be seen dead (its lease expired)")
        rec = lab.cli("vm", "recommend", "f1")
        assert {r["host"]: r["reason"] for r in rec["refused"]}["h2"].startswith(
            "not responding"), rec
        # HA: the VM that asked for it starts again elsewhere (and boots:
        # memload runs there); the one with HA off is marked lost
        vm = wait_until(lambda: (lambda v: v if v["host"] != "h2" and v["state"] == "running"
                                 else None)(lab.vm("ha1")), 60, "ha1 to restart elsewhere")
        wait_until(lambda: memload_passes(lab.console("ha1")), 90,
                   "memload on " + vm["host"], interval=0.5)
        assert lab.vm("noha")["state"] == "lost"
        ha = lab.cli("task", "list", "--vm", "ha1")["tasks"][0]
        assert ha["kind"] == "ha-restart" and ha["state"] == "succeeded", ha
        assert ha["source"] == "h2" and ha["destination"] == vm["host"], ha
        assert any(r["action"] == "ha.restart" and r["result"] == "ok"
                   for r in lab.cli("audit", "--vm", "ha1")["records"])
        # etcd lost a member, the cluster works on
        t = lab.cli("vm", "migrate", "f1", "--wait")
        assert t["state"] == "succeeded" and t["destination"] == "h3", t


def test_cluster_partition_fence():
    # leave-running: the cut-off copy runs on until ferry-center stops it
    # (the default, power-off, is tested in test_ha.py)
    with Lab(isolation="leave-running") as lab:
        lab.cli("vm", "create", "hp", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--ha", "high")
        wait_until(lambda: lab.procs("h3", "ferry-vm"), 10, "hp's process on h3")
        # h3 is cut off, its processes alive: its lease expires in the majority
        cut = ["ip", "netns", "exec", lab.name + "-h3", "ip", "link", "set", "eth0"]
        subprocess.run(cut + ["down"], check=True)
        vm = wait_until(lambda: (lambda v: v if v["host"] != "h3" and v["state"] == "running"
                                 else None)(lab.vm("hp")), 60, "hp to restart elsewhere")
        assert lab.procs("h3", "ferry-vm"), "the cut-off copy should still run until h3 is back"
        # h3 comes back: its copy is stopped, the restarted one runs on
        subprocess.run(cut + ["up"], check=True)
        wait_until(lambda: not lab.procs("h3", "ferry-vm"), 60, "h3's stray copy to be stopped")
        assert lab.vm("hp")["host"] == vm["host"] and lab.vm("hp")["state"] == "running"
        assert lab.procs(vm["host"], "ferry-vm")
        assert any(r["action"] == "ha.fence" for r in lab.cli("audit", "--vm", "hp")["records"])
        assert lab.cli("audit", "--verify")["ok"] is True
