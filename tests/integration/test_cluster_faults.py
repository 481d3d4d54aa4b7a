"""Faults of the cluster plane beyond test_cluster.py's.

Issue 8's "Bad input and faults", where each is tested: a malformed
request, an unknown VM, a wrong token (test_cluster_cancel_and_errors);
the destination host vanishing mid-migration (test_cluster_host_failure);
ferry-center restarted mid-task (test_cluster_schedule_restart); and here
the source host vanishing mid-migration, one etcd member lost on its own,
and a host that hangs. Each checks the guest itself (ferry-vm's
query-status through its ferryd) is not left paused.

- a hung host (test_cluster_hung_host): a "host" registered in etcd the
  way a ferryd registers itself, whose URL is a socket in the lab's client
  namespace that accepts connections and never answers. ferry-center's
  inventory asks the hosts concurrently, each with a timeout, so the
  three real hosts' reports keep coming (each host's last_seen moves on,
  again and again, while the hung one is asked); the hung host is listed
  alive (it has its etcd key) but unreachable, with the reason, and the
  wizard refuses it with that reason. With the old sweep (one host after
  the other, 20 s per call) the real hosts were refreshed once per 20 s
  and the hung host was never listed. ~25 s.
"""

import base64
import json
import os
import signal
import subprocess
import time

from ferrylib import wait_until
from test_cluster import FERRY, MEMLOAD, Lab, memload_passes

TIMEOUT = 180

SILENT = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
held = []
while True:
    held.append(s.accept()[0])   # accepted, never read, never answered
"""


def b64(text):
    return base64.b64encode(text.encode()).decode()


def etcd_put(lab, key, value):
    out = subprocess.run(["ip", "netns", "exec", lab.name + "-client", "curl", "-sf", "-m", "10",
                          "-X", "POST", "http://10.88.0.11:2379/v3/kv/put", "-d",
                          json.dumps({"key": b64(key), "value": b64(value)})],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out


def hosts(lab):
    return {h["name"]: h for h in lab.cli("host", "list")["hosts"]}


def test_cluster_hung_host():
    with Lab() as lab:
        silent = subprocess.Popen(["ip", "netns", "exec", lab.name + "-client", "python3", "-c",
                                   SILENT, "10.88.0.100", "7799"])
        try:
            wait_until(lambda: ":7799 " in subprocess.run(
                ["ip", "netns", "exec", lab.name + "-client", "ss", "-Hltn"],
                capture_output=True, text=True).stdout, 20, "the silent socket")
            etcd_put(lab, "/ferry/hosts/hung", json.dumps(
                {"name": "hung", "url": "http://10.88.0.100:7799", "address": "10.88.0.100"}))
            hung = wait_until(lambda: hosts(lab).get("hung"), 60, "the hung host to be listed",
                              interval=0.5)
            assert hung["alive"] is True and hung["reachable"] is False, hung
            assert "does not answer" in hung["unreachable"], hung
            assert hung["unreachable_since"], hung
            # the real hosts' reports keep coming while the hung one is asked
            seen = {"h1": set(), "h2": set(), "h3": set()}

            def refreshed():
                now = hosts(lab)
                assert now["hung"]["reachable"] is False, now["hung"]
                for name in seen:
                    assert now[name]["reachable"] is True, now[name]
                    seen[name].add(now[name]["last_seen"])
                return all(len(s) >= 4 for s in seen.values())
            wait_until(refreshed, 40, "every real host's report to be new 4 times", interval=0.3)
            # the wizard refuses it, saying why
            lab.create("w1", host="h1")
            rec = lab.cli("vm", "recommend", "w1")
            refused = {r["host"]: r["reason"] for r in rec["refused"]}
            assert refused.get("hung", "").startswith("not answering: its ferryd does not "
                                                      "answer"), rec
            assert {c["host"] for c in rec["candidates"]} == {"h2", "h3"}, rec
            # and the CLI's table says so
            r = subprocess.run([str(FERRY), "--lab", lab.name, "host", "list"],
                               capture_output=True, text=True, timeout=30)
            line = [l for l in r.stdout.splitlines() if l.startswith("hung")]
            assert line and "UNREACH" in line[0], r.stdout
            assert "does not answer" in r.stdout, r.stdout
        finally:
            silent.kill()
            silent.wait()



def test_cluster_source_host_dies():
    """The source host of a running migration vanishes: the task fails
    saying so, the VM (HA off) is marked lost, the destination keeps no
    half-arrived copy, and the other VMs and hosts go on. ~25 s."""
    with Lab() as lab:
        lab.create("src1", append=MEMLOAD, host="h1")
        lab.create("other1", host="h3")
        wait_until(lambda: memload_passes(lab.console("src1")), 90, "memload on h1",
                   interval=0.5)
        t = lab.cli("vm", "migrate", "src1", "--to", "h2", "--bandwidth-mbps", "4")
        wait_until(lambda: ((lab.task(t["id"])["progress"] or {}).get("transferred_bytes")
                            or 0) > 0, 30, "the migration to send its first bytes")
        lab.kill_host("h1")
        t = lab.wait_task(t["id"], timeout=60)
        assert t["state"] == "failed" and "h1" in t["error"], t
        assert lab.vm("src1")["state"] == "lost", lab.vm("src1")
        wait_until(lambda: not lab.procs("h2", "ferry-vm"), 30,
                   "the half-arrived copy on h2 to go")
        assert lab.guest_status("h3", "other1") == "running"
        t = lab.cli("vm", "migrate", "other1", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t
        assert lab.guest_status("h2", "other1") == "running"


def test_cluster_etcd_member_down():
    """One etcd member (h3's) is stopped, its host runs on: the two left
    keep quorum, h3's ferryd renews its lease through them, so no host is
    seen dead or fences itself, and migrations to and from h3 succeed. ~30 s."""
    with Lab() as lab:
        lab.create("e1", append=MEMLOAD, host="h1")
        lab.create("e3", host="h3")
        wait_until(lambda: memload_passes(lab.console("e1")), 90, "memload on h1",
                   interval=0.5)
        etcd = [pid for pid, cmd in lab.procs("h3", "etcd") if cmd.startswith("etcd ")]
        assert len(etcd) == 1, lab.procs("h3", "etcd")
        os.kill(etcd[0], signal.SIGKILL)
        # longer than a lease (4 s) twice over: every host stays alive
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:
            hs = hosts(lab)
            assert all(hs[h]["alive"] for h in ("h1", "h2", "h3")), hs
            time.sleep(0.5)
        assert lab.guest_status("h3", "e3") == "running", "h3 fenced its VM"
        t = lab.cli("vm", "migrate", "e1", "--to", "h3", "--wait")
        assert t["state"] == "succeeded", t
        assert lab.guest_status("h3", "e1") == "running"
        before = len(memload_passes(lab.console("e1")))
        wait_until(lambda: len(memload_passes(lab.console("e1"))) > before, 90,
                   "memload passes on h3", interval=0.5)
        t = lab.cli("vm", "migrate", "e3", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t
        assert lab.guest_status("h2", "e3") == "running"
        assert lab.cli("audit", "--verify")["ok"] is True
