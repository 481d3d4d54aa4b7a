"""Faults of the cluster plane beyond test_cluster.py's: a host that hangs.

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
import subprocess
import time

from ferrylib import wait_until
from test_cluster import FERRY, Lab

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

