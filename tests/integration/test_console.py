"""The web console, driven in headless Chromium on a real ferry lab.

A `ferry lab` of 3 hosts (etcd members, ferryds, ferry-center, in network
namespaces) runs one VM, created with the CLI from the guest's kernel and
initrd on the shared datastore. tests/browser/console.test.js then runs in
the lab's client namespace with Debian's Chromium (playwright-core, no
downloaded browser) and works the page as an administrator: a wrong token
refused at login, the hosts alive with the VM on its host, the VM found
by search, the wizard's candidates and refused hosts, a migration to the
host we pick followed on the tasks view until `succeeded`, the VM on its
new host, the migration in the audit trail (and the chain verifying), a
scheduled migration cancelled from the page, and a read-only token with
no action buttons; a fault-tolerant VM's details show it protected with
its hosts and FT figures; a storage move (`vm migrate --datastore local`,
scheduled an hour ahead so it stays queued) is named with its datastore
in both task tables, in the VM's details, in `vm show` (its "migration")
and in `ferry task list` (column DISKS TO). Afterwards the API must agree with what the page
showed (and the FT VM's hosts): the VM runs on the chosen host, the task succeeded, the
scheduled one was cancelled.

It fails when the page shows something wrong, or when the console's
actions do not reach ferry-center (the API check), or the migration does
not complete. Screenshots of each step go to a temporary directory that
is kept (and printed) when the test fails, or always with
FERRY_KEEP_TMP=1; FERRY_SHOTS=DIR puts them in DIR.

Skipped when not root (namespaces) or when chromium or node is missing.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ferrylib import BUILD, GUEST_IMAGE, GUEST_INITRD, REPO, need_root, need_tool, require_file

TIMEOUT = 200
LAB = "fconsole"
VM_NAME = "web1"
FT_VM = "ftweb"
STORAGE_VM = "disky"
SOURCE = "h1"
BROWSER_DIR = REPO / "tests" / "browser"
FERRY = BUILD / "ferry"


def npm_ci():
    """node_modules from package-lock.json: offline from npm's cache first."""
    if (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return
    need_tool("npm", "npm")
    for args in (["npm", "ci", "--offline", "--no-audit", "--no-fund"],
                 ["npm", "ci", "--no-audit", "--no-fund"]):
        r = subprocess.run(args, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return
    raise RuntimeError(f"npm ci in {BROWSER_DIR} failed:\n{r.stdout}\n{r.stderr}")


def ferry(*args):
    """The ferry CLI on the lab (it enters the lab's client namespace)."""
    r = subprocess.run([str(FERRY), "--lab", LAB, "--json", *args], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"ferry {' '.join(args)}: status {r.returncode}\n{r.stderr}")
    return json.loads(r.stdout)


def test_console_migration_in_chromium():
    need_root("ferry lab makes network namespaces")
    need_tool("chromium", "chromium")
    need_tool("node", "nodejs")
    require_file(GUEST_IMAGE, "guest/build.sh")
    require_file(FERRY, "ninja -C build")
    npm_ci()
    tmp = Path(tempfile.mkdtemp(prefix="ferry-console-"))
    shots = Path(os.environ.get("FERRY_SHOTS") or tmp / "shots")
    lab_dir = tmp / "lab"
    ok = False
    subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True, timeout=60)
    try:
        up = subprocess.run([str(FERRY), "lab", "up", "--name", LAB, "--hosts", "3",
                             "--dir", str(lab_dir)], capture_output=True, text=True, timeout=90)
        assert up.returncode == 0, f"ferry lab up failed:\n{up.stdout}\n{up.stderr}"
        shutil.copy(GUEST_IMAGE, lab_dir / "shared" / "Image")
        shutil.copy(GUEST_INITRD, lab_dir / "shared" / "initrd.img")
        created = ferry("vm", "create", VM_NAME, "--kernel", "shared:Image",
                        "--initrd", "shared:initrd.img", "--append", "console=ttyS0",
                        "--mem", "64", "--host", SOURCE)
        assert created["vm"]["state"] == "running", created
        # a fault-tolerant VM whose figures the VM details show (on h3,
        # secondary h2: away from the source the test puts in maintenance)
        ferry("vm", "create", FT_VM, "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
              "--append", "console=ttyS0", "--mem", "64", "--host", "h3")
        ft_task = ferry("vm", "ft", "enable", FT_VM, "--secondary", "h2", "--wait")
        assert ft_task["state"] == "succeeded", ft_task
        # a storage move scheduled for later: the tasks view and the VM's
        # details name the datastore its disks go to
        subprocess.run(["truncate", "-s", "16M", str(lab_dir / "shared" / "disky.img")],
                       check=True)
        ferry("vm", "create", STORAGE_VM, "--kernel", "shared:Image", "--initrd",
              "shared:initrd.img", "--append", "console=ttyS0", "--mem", "64", "--host", "h2",
              "--disk", "shared:disky.img")
        move = ferry("vm", "migrate", STORAGE_VM, "--datastore", "local", "--at", "+1h")
        assert move["state"] == "queued" and move["datastore"] == "local", move
        shown = ferry("vm", "show", STORAGE_VM)["migration"]
        assert shown["id"] == move["id"] and shown["datastore"] == "local", shown
        text = subprocess.run([str(FERRY), "--lab", LAB, "task", "list"], capture_output=True,
                              text=True, timeout=60).stdout
        assert "DISKS TO" in text.splitlines()[0], text
        row = [l for l in text.splitlines() if l.startswith("%-5d" % move["id"])]
        assert row and row[0].split()[5] == "local", text

        env = dict(os.environ,
                   CENTER_URL=(lab_dir / "center.url").read_text().strip(),
                   TOKEN=(lab_dir / "token").read_text().strip(),
                   TOKEN_RO=(lab_dir / "token-ro").read_text().strip(),
                   VM=VM_NAME, SOURCE=SOURCE, SHOTS=str(shots), FT_VM=FT_VM,
                   STORAGE_VM=STORAGE_VM, STORAGE_TASK=str(move["id"]), STORAGE_DS="local",
                   CHROMIUM=shutil.which("chromium"), HOME=str(tmp))
        run = subprocess.run(["ip", "netns", "exec", f"{LAB}-client", "node",
                              "console.test.js"], cwd=BROWSER_DIR, env=env,
                             capture_output=True, text=True, timeout=150)
        print(run.stderr)
        assert run.returncode == 0, f"the browser test failed (screenshots in {shots})"
        seen = json.loads(run.stdout.strip().splitlines()[-1])

        # the API agrees with the page
        vm = ferry("vm", "show", VM_NAME)
        assert vm["host"] == seen["destination"] != SOURCE, (vm, seen)
        assert vm["state"] == "running", vm
        task = ferry("task", "show", str(seen["task"]))
        assert task["state"] == "succeeded" and task["destination"] == seen["destination"], task
        later = ferry("task", "show", str(seen["cancelled_task"]))
        assert later["state"] == "cancelled", later
        ft = ferry("vm", "show", FT_VM)["ft"]
        assert seen["ft"] == {"primary": ft["primary"], "secondary": ft["secondary"]} == \
            {"primary": "h3", "secondary": "h2"}, (seen["ft"], ft)
        ok = True
    finally:
        subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True,
                       timeout=60)
        if ok and not os.environ.get("FERRY_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (screenshots in {shots}, lab logs in {lab_dir / 'logs'})")


# ---- the API the console pages with, on an inventory without a lab ----------

def _center_with_report_only_hosts(tmp, procs, hosts, vms_per_host):
    """etcd (one member), the benchmark's fake ferryd answering for every
    host, ferry-center (their processes appended to procs); hosts
    registered in etcd as ferryds do, VMs created through the API. Returns
    call(method, path, body) -> (status, reply)."""
    need_tool("etcd", "etcd-server")
    require_file(BUILD / "ferry-center", "ninja -C build")

    def port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        return p
    etcd_port, peer_port, fake_port, center_port = port(), port(), port(), port()
    log = open(tmp / "daemons.log", "w")
    procs.append(subprocess.Popen([
        "etcd", "--name", "m0", "--data-dir", str(tmp / "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"m0=http://127.0.0.1:{peer_port}"], stdout=log, stderr=log))
    procs.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "scale.py"),
                                   "--fake-ferryd", str(fake_port)], stdout=log, stderr=log))
    token = "t-" + os.urandom(8).hex()
    (tmp / "tokens").write_text("admin %s tester\nagent %s agent\npresent agent-x\n" % (
        hashlib.sha256(token.encode()).hexdigest(), hashlib.sha256(b"agent-x").hexdigest()))
    procs.append(subprocess.Popen([str(BUILD / "ferry-center"), "--listen",
                                   f"127.0.0.1:{center_port}", "--db", str(tmp / "c.db"),
                                   "--etcd", f"http://127.0.0.1:{etcd_port}",
                                   "--token-file", str(tmp / "tokens")], stdout=log, stderr=log))

    def call(method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", center_port, timeout=30)
        headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        c.request(method, "/api/v1" + path, json.dumps(body) if body is not None else None,
                  headers)
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def etcd_put(key, value):
        c = http.client.HTTPConnection("127.0.0.1", etcd_port, timeout=10)
        c.request("POST", "/v3/kv/put", json.dumps({
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode()}))
        assert c.getresponse().status == 200

    def fake_ferryd_listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", fake_port)) == 0

    deadline = time.time() + 30
    while True:
        try:
            etcd_put("/ferry/probe", "1")
            if call("GET", "/whoami")[0] == 200 and fake_ferryd_listening():
                break
        except OSError:
            pass
        assert time.time() < deadline, f"etcd, ferry-center or the fake ferryd did not start (see {tmp})"
        time.sleep(0.2)
    for i in range(1, hosts + 1):
        etcd_put(f"/ferry/hosts/h{i}", json.dumps({
            "name": f"h{i}", "url": f"http://127.0.0.1:{fake_port}/h{i}", "address": "127.0.0.1"}))
    while call("GET", "/cluster")[1]["hosts"] < hosts:
        assert time.time() < deadline + 30, "ferry-center did not see every host"
        time.sleep(0.2)
    for i in range(1, hosts + 1):
        for k in range(vms_per_host):
            st, r = call("POST", "/vms", {"name": f"vm-h{i}-{k}", "kernel": "shared:Image",
                                          "mem_mib": 256, "net": "lan", "host": f"h{i}"})
            assert st == 201, r
    return call


def test_center_lists_page_search_and_recommend_limit():
    """What the console relies on at scale: every list pages (offset,
    limit) with the total of all matches, searches (q) and filters
    (host=, vm=, state=); recommend?limit= returns the best N with the full
    counts beside; migrate --to checks the named host (and refuses the
    source, 404s an unknown host). 30 report-only hosts, 120 VMs."""
    tmp = Path(tempfile.mkdtemp(prefix="ferry-console-api-"))
    procs = []
    try:
        call = _center_with_report_only_hosts(tmp, procs, 30, 4)
        st, r = call("GET", "/hosts?offset=10&limit=10")
        assert st == 200 and r["total"] == 30 and len(r["hosts"]) == 10, r
        names = sorted(f"h{i}" for i in range(1, 31))
        assert [h["name"] for h in r["hosts"]] == names[10:20]
        st, r = call("GET", "/hosts?q=h2&limit=100")
        assert r["total"] == 11 and all("h2" in h["name"] for h in r["hosts"]), r

        st, r = call("GET", "/vms?offset=100&limit=50")
        assert r["total"] == 120 and len(r["vms"]) == 20, (r["total"], len(r["vms"]))
        st, r = call("GET", "/vms?q=h1&limit=100")       # vm-h1-*, vm-h1N-*
        assert r["total"] == 44 and all("h1" in v["name"] for v in r["vms"]), r["total"]
        st, r = call("GET", "/vms?host=h3&limit=100")
        assert r["total"] == 4 and {v["host"] for v in r["vms"]} == {"h3"}, r
        st, r = call("GET", "/vms?host=h3&q=-2&limit=100")
        assert [v["name"] for v in r["vms"]] == ["vm-h3-2"], r

        st, r = call("GET", "/vms/vm-h3-0/recommend?limit=5")
        assert st == 200 and len(r["candidates"]) == 5 and r["candidates_total"] == 29, r
        assert r["refused_total"] == 1 and r["refused"][0]["host"] == "h3", r
        assert [c["rank"] for c in r["candidates"]] == [1, 2, 3, 4, 5], r
        full = call("GET", "/vms/vm-h3-0/recommend")[1]
        assert len(full["candidates"]) == 29, len(full["candidates"])
        assert [c["host"] for c in full["candidates"][:5]] == [c["host"] for c in r["candidates"]]

        st, r = call("POST", "/vms/vm-h3-0/migrate", {"to": "h7"})
        assert st == 202 and r["task"]["destination"] == "h7", r
        st, r = call("POST", "/vms/vm-h4-0/migrate", {"to": "h4"})
        assert st == 409 and "runs there" in r["error"]["message"], r
        st, r = call("POST", "/vms/vm-h4-0/migrate", {"to": "h99"})
        assert st == 404, r
        st, r = call("GET", "/tasks?vm=vm-h3-0")     # newest first: migrate, create
        assert r["total"] == 2 and r["tasks"][0]["destination"] == "h7", r
        assert [t["kind"] for t in r["tasks"]] == ["migrate", "create"], r
        st, r = call("GET", "/tasks?state=succeeded&limit=1")
        assert r["total"] >= 120 and len(r["tasks"]) == 1, r   # the creations
        st, r = call("GET", "/audit?limit=10")
        assert len(r["records"]) == 10 and r["total"] >= 123, r["total"]
        st, r = call("GET", "/audit?vm=vm-h4-0")
        assert r["total"] == 3 and len(r["records"]) == 3, r   # create, 2 refused migrates

        # ?wait= holds a task's GET until it ends: a migration scheduled an
        # hour ahead stays queued, so the held GET can only answer with the
        # end if the cancel below wakes it (without ?wait it says "queued")
        st, r = call("POST", "/vms/vm-h5-0/migrate", {"to": "h8", "at": "+1h"})
        assert st == 202 and r["task"]["state"] == "queued", r
        tid = r["task"]["id"]
        held = {}
        waiter = threading.Thread(target=lambda: held.update(
            r=call("GET", f"/tasks/{tid}?wait=20000")))
        waiter.start()
        time.sleep(0.5)
        assert call("POST", f"/tasks/{tid}/cancel")[0] == 200
        waiter.join(25)
        assert held["r"][0] == 200 and held["r"][1]["state"] == "cancelled", held
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
