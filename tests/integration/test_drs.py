"""
DRS, VM rules and DPM on a 3-host `ferry lab` (test_cluster.Lab).

Load comes from guests running memload at full speed (`--rate 0`: a
CPU-bound loop over 4 MiB), so the CPU seconds of their ferry-vm
processes, which ferryd reads from /proc/PID/stat, make one host busy.
DRS runs every second here (drs.interval_s=1) at threshold 5 (the most
aggressive: on this shared machine a busy guest gets a fraction of a
core). h3 is in maintenance where a test needs the destination to be
known (two hosts take VMs: h1 and h2).

What is proved, and how it would fail:
- full mode and cool-down (test_drs_full_cooldown): two busy VMs on h1,
  h2 empty: DRS queues a migration task (user "drs", audited
  "drs.migrate") and one busy VM runs on h2. Then h2 is made the busy
  host (a pinned busy VM there, the one left on h1 stopped): the only
  move that would help is the moved VM going back, and within
  drs.cooldown_s it stays (checked over several passes, DRS saying it
  skips it for the cool-down); with the cool-down set to 0 it goes back,
  so the scenario does call for the move.
- manual and partial (test_drs_manual_partial): the same imbalance (b2
  pinned to h1 by an affinity rule, so b1 is the VM to move) gives a
  recommendation (cluster show) and no migration over several passes;
  partial places a new VM on the idle host; `cluster drs apply ID` queues
  the recommended migration, which moves the VM.
- anti-affinity (test_drs_anti_affinity): with a rule between a1 and a2,
  a start next to the other, a migration to its host and the wizard are
  refused with the rule's name; DRS in full mode, facing a busy h1 whose
  only movable VM is a1, moves nothing over several passes; the rule is
  in etcd (/ferry/rules/NAME, for the HA decider); once the rule is
  deleted DRS moves a1 to h2; the rule added again is broken (both on h2)
  and DRS mends it by moving a2 back to h1.
- fault tolerance (test_drs_skips_ft_vms): an FT-protected busy VM on the
  busy host is listed as skipped ("fault tolerance on") and DRS moves the
  other busy VM instead.
- the web console (test_drs_console): tests/browser/drs.test.js in
  Chromium sees the recommendation in the hosts view, no Apply button for
  a read-only token, and the admin's Apply queues the migration (the task
  succeeds, the VM is on h2).
- DPM (test_dpm_standby_wake): with dpm=on, dpm.min_hosts=2, one host's VM
  is migrated away and the host goes to standby (host list, audit
  dpm.evacuate and dpm.standby); ferry-center and its ferryd refuse VMs
  there (409, 503); when a big VM fills another host's memory past 81%,
  DPM wakes it (audit dpm.wake) and it takes VMs again.
"""

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ferrylib import need_tool, wait_until
from test_cluster import IDLE, Lab

TIMEOUT = 300
BUSY = "console=ttyS0 quiet ferry.run=memload,--mib,4,--rate,0"


def drs(lab):
    return lab.cli("cluster", "show")["drs"]


def after_passes(lab, n):
    """Waits for n more DRS passes; returns the last status."""
    start = drs(lab)["passes"]
    return wait_until(lambda: (lambda d: d if d["passes"] >= start + n else None)(drs(lab)),
                      30 + 5 * n, "%d DRS passes" % n, interval=0.3)


def watch_passes(lab, n):
    """The status of each of the next n DRS passes (polled; a pass may be
    missed on a slow machine, the last one is always there). The busy
    guests' CPU share moves with the machine's load, so a test looks for
    what it expects in any of them."""
    seen = {}
    start = drs(lab)["passes"]

    def done():
        d = drs(lab)
        if d["passes"] > start:
            seen[d["passes"]] = d
        return d["passes"] >= start + n
    wait_until(done, 30 + 5 * n, "%d DRS passes" % n, interval=0.3)
    return [seen[k] for k in sorted(seen)]


def migrations(lab):
    return [t for t in lab.cli("task", "list")["tasks"] if t["kind"] == "migrate"]


def hosts_of(lab, *names):
    return [lab.vm(n)["host"] for n in names]


def refused(lab, *args):
    """A CLI call that must fail: its error message."""
    code, doc, err = lab.run(*args, check=False)
    assert code != 0, (args, doc)
    return (doc or {}).get("error", {}).get("message", "") + err


def two_hosts(lab):
    """h3 in maintenance; DRS every second at threshold 5."""
    lab.cli("host", "maintenance", "h3", "enter")
    lab.cli("cluster", "set", "drs.threshold=5", "drs.interval_s=1")


def test_drs_full_cooldown():
    with Lab() as lab:
        two_hosts(lab)
        lab.cli("cluster", "set", "drs=full", "drs.cooldown_s=600")
        lab.create("b1", append=BUSY, host="h1", mem=64)
        lab.create("b2", append=BUSY, host="h1", mem=64)
        moved = wait_until(lambda: [n for n in ("b1", "b2") if lab.vm(n)["host"] == "h2" and
                                    lab.vm(n)["state"] == "running"], 90,
                           "DRS to move a busy VM from h1 to h2")
        assert len(moved) == 1, moved
        moved = moved[0]
        stayed = "b2" if moved == "b1" else "b1"
        tasks = migrations(lab)
        assert [(t["vm"], t["user"], t["source"], t["destination"], t["state"]) for t in tasks] \
            == [(moved, "drs", "h1", "h2", "succeeded")], tasks
        records = [r for r in lab.cli("audit", "--vm", moved)["records"]
                   if r["action"] == "drs.migrate"]
        assert records and records[0]["user"] == "drs" and records[0]["result"] == "ok", records
        assert records[0]["details"]["task"] == tasks[0]["id"], records
        # h2 becomes the busy host: a busy VM pinned there by an affinity rule,
        # the busy VM left on h1 stopped; only `moved` going back would help
        lab.create("i2", host="h2", mem=64)
        lab.create("b3", append=BUSY, host="h2", mem=64)
        lab.cli("cluster", "rule", "add", "pin", "--affinity", "b3,i2")
        lab.cli("vm", "stop", stayed)
        passes = watch_passes(lab, 8)
        assert hosts_of(lab, moved, "b3", "i2") == ["h2", "h2", "h2"]
        assert len(migrations(lab)) == 1, migrations(lab)
        assert any(p["imbalance"] > p["tolerance"] and
                   any(s["vm"] == moved and "cool-down" in s["reason"] for s in p["skipped"])
                   for p in passes), passes
        # without the cool-down it does go back: the scenario calls for it
        lab.cli("cluster", "set", "drs.cooldown_s=0")
        wait_until(lambda: lab.vm(moved)["host"] == "h1" and lab.vm(moved)["state"] == "running",
                   90, "DRS to move %s back once the cool-down is 0" % moved)
        assert hosts_of(lab, "b3", "i2") == ["h2", "h2"]
        assert lab.cli("audit", "--verify")["ok"] is True


def busy_pair_manual(lab):
    """Two busy VMs on h1, b2 pinned there (affinity with an idle i1), DRS
    manual: b1 to h2 is the one move DRS recommends."""
    two_hosts(lab)
    lab.cli("cluster", "set", "drs=manual")
    lab.create("b1", append=BUSY, host="h1", mem=64)
    lab.create("b2", append=BUSY, host="h1", mem=64)
    lab.create("i1", host="h1", mem=64)
    lab.cli("cluster", "rule", "add", "pin", "--affinity", "b2,i1")
    return wait_until(lambda: drs(lab)["recommendations"], 90, "a DRS recommendation")


def test_drs_manual_partial():
    with Lab() as lab:
        # bad settings: 400 with what is wanted, nothing changed
        for bad, want in (("drs=sometimes", "off manual partial full"),
                          ("drs.threshold=9", "1 to 5"), ("dpm=yes", "off on"),
                          ("drs.cooldown_s=-1", "0 to")):
            err = refused(lab, "cluster", "set", "drs=full", bad)
            assert want in err, (bad, err)
        assert lab.cli("cluster", "show")["settings"]["drs"] == "off"
        rec = busy_pair_manual(lab)
        assert len(rec) == 1 and rec[0]["vm"] == "b1" and \
            (rec[0]["from"], rec[0]["to"]) == ("h1", "h2"), rec
        assert rec[0]["imbalance_after"] < rec[0]["imbalance_before"], rec
        after_passes(lab, 5)
        assert not migrations(lab) and hosts_of(lab, "b1", "b2") == ["h1", "h1"]
        # partial: still no migration, but a new VM is placed by DRS (h2, the idle host)
        lab.cli("cluster", "set", "drs=partial")
        lab.create("p1", mem=64)
        assert lab.vm("p1")["host"] == "h2"
        status = wait_until(lambda: (lambda d: d if d["mode"] == "partial" and
                                     d["recommendations"] else None)(drs(lab)), 60,
                            "a recommendation in partial mode", interval=0.3)
        assert not migrations(lab), migrations(lab)
        # applying the recommendation by hand moves the VM
        rid = status["recommendations"][0]["id"]
        applied = lab.cli("cluster", "drs", "apply", rid)
        assert len(applied["tasks"]) == 1, applied
        t = lab.wait_task(applied["tasks"][0])
        assert t["state"] == "succeeded" and t["user"] == "admin" and t["vm"] == "b1", t
        assert lab.vm("b1")["host"] == "h2"


def test_drs_console():
    """The web console's DRS panel (tests/browser/drs.test.js in Chromium):
    the recommendation shown, no Apply for a read-only token, Apply by the
    admin queues the migration, which moves the VM."""
    from test_console import BROWSER_DIR, npm_ci
    need_tool("chromium", "chromium")
    need_tool("node", "nodejs")
    npm_ci()
    with Lab() as lab:
        rec = busy_pair_manual(lab)
        assert rec[0]["vm"] == "b1", rec
        shots = Path(os.environ.get("FERRY_SHOTS") or lab.dir / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, CENTER_URL=lab.url, TOKEN=lab.token, TOKEN_RO=lab.token_ro,
                   VM="b1", TO="h2", SHOTS=str(shots), CHROMIUM=shutil.which("chromium"),
                   HOME=str(lab.dir))
        run = subprocess.run(["ip", "netns", "exec", lab.name + "-client", "node",
                              "drs.test.js"], cwd=BROWSER_DIR, env=env, capture_output=True,
                             text=True, timeout=150)
        print(run.stderr)
        assert run.returncode == 0, "the browser test failed"
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        t = lab.wait_task(seen["task"])
        assert (t["vm"], t["user"], t["destination"], t["state"]) == \
            ("b1", "admin", "h2", "succeeded"), t
        assert lab.vm("b1")["host"] == "h2"


def etcd_value(lab, key):
    """A key's value in etcd (the lab's h1 member, from LAB-client), or None."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()})
    out = subprocess.run(["ip", "netns", "exec", lab.name + "-client", "curl", "-s", "-X",
                          "POST", "http://10.88.0.11:2379/v3/kv/range", "-d", body],
                         capture_output=True, text=True, timeout=30).stdout
    kvs = json.loads(out).get("kvs") or []
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def test_drs_anti_affinity():
    with Lab() as lab:
        two_hosts(lab)
        lab.create("a1", append=BUSY, host="h1", mem=64)
        lab.create("b", append=BUSY, host="h1", mem=64)
        lab.create("i1", host="h1", mem=64)
        lab.cli("cluster", "rule", "add", "pin", "--affinity", "b,i1")
        lab.cli("vm", "create", "a2", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--no-start")
        lab.cli("cluster", "rule", "add", "apart", "--anti-affinity", "a1,a2")
        rules = {r["name"]: r for r in lab.cli("cluster", "rule", "list")["rules"]}
        assert rules["apart"]["kind"] == "anti-affinity" and rules["apart"]["vms"] == ["a1", "a2"]
        # a start next to a1 is refused, with the rule
        err = refused(lab, "vm", "start", "a2")
        assert "anti-affinity rule apart" in err, err
        lab.cli("vm", "delete", "a2")
        # the wizard places it away from a1 (h2: h1 holds a1, h3 is in maintenance)
        lab.create("a2", mem=64)
        assert lab.vm("a2")["host"] == "h2"
        reasons = {r["host"]: r["reason"] for r in lab.cli("vm", "recommend", "a2")["refused"]}
        assert "anti-affinity rule apart" in reasons["h1"], reasons
        err = refused(lab, "vm", "migrate", "a2", "--to", "h1")
        assert "anti-affinity rule apart" in err, err
        code, _, err = lab.run("vm", "create", "a3", "--kernel", "shared:Image", "--mem", "64",
                               "--host", "h2", "--no-start", check=False)
        assert code == 0, err   # a VM outside the rule may go there
        # the HA decider can read the rules from etcd
        wait_until(lambda: etcd_value(lab, "/ferry/rules/apart"), 20, "the rule in etcd")
        assert etcd_value(lab, "/ferry/rules/apart")["vms"] == ["a1", "a2"]
        # DRS: h1 is busy, but a1 may not join a2 and b, i1 are pinned together
        lab.cli("cluster", "set", "drs=full")
        passes = watch_passes(lab, 8)
        assert not migrations(lab), migrations(lab)
        assert hosts_of(lab, "a1", "a2") == ["h1", "h2"]
        assert any(p["imbalance"] > p["tolerance"] for p in passes), passes
        # the rule is what held a1: deleted, DRS moves it
        lab.cli("cluster", "rule", "delete", "apart")
        wait_until(lambda: lab.vm("a1")["host"] == "h2", 90, "DRS to move a1 once the rule went")
        wait_until(lambda: etcd_value(lab, "/ferry/rules/apart") is None, 20,
                   "the rule to leave etcd")
        # the rule added again is broken by the placement (both on h2): DRS mends
        # it, moving a2 (a1 is in its cool-down) to h1
        wait_until(lambda: lab.vm("a1")["state"] == "running", 30, "a1 to run on h2")
        rule = lab.cli("cluster", "rule", "add", "apart", "--anti-affinity", "a1,a2")
        assert rule["violated"] is True, rule
        wait_until(lambda: hosts_of(lab, "a1", "a2") == ["h2", "h1"], 90,
                   "DRS to mend the anti-affinity rule")
        rules = {r["name"]: r for r in lab.cli("cluster", "rule", "list")["rules"]}
        assert rules["apart"]["violated"] is False, rules
        mend = [r for r in lab.cli("audit", "--vm", "a2")["records"]
                if r["action"] == "drs.migrate"]
        assert mend and "anti-affinity rule apart" in mend[0]["details"]["reason"], mend


def test_dpm_standby_wake():
    with Lab(vm_memory_mib=512) as lab:
        for i in (1, 2, 3):
            lab.create("v%d" % i, host="h%d" % i, mem=64)
        lab.cli("cluster", "set", "dpm=on", "dpm.delay_s=0", "dpm.min_hosts=2",
                "drs.interval_s=1")

        def standby():
            return [h["name"] for h in lab.cli("host", "list")["hosts"] if h["standby"]]
        asleep = wait_until(standby, 90, "DPM to put a host in standby")
        assert len(asleep) == 1, asleep
        asleep = asleep[0]
        awake = [h for h in ("h1", "h2", "h3") if h != asleep]
        vms = {n: lab.vm(n) for n in ("v1", "v2", "v3")}
        assert all(v["state"] == "running" and v["host"] in awake for v in vms.values()), vms
        actions = [(r["action"], r["target"], r["result"]) for r in
                   lab.cli("audit")["records"] if r["action"].startswith("dpm.")]
        assert ("dpm.evacuate", asleep, "ok") in actions and \
            ("dpm.standby", asleep, "ok") in actions, actions
        after_passes(lab, 4)
        assert standby() == [asleep]   # dpm.min_hosts=2 keeps the others
        # nothing is placed there: ferry-center and the host's ferryd refuse
        err = refused(lab, "vm", "create", "x", "--kernel", "shared:Image", "--mem", "64",
                      "--host", asleep)
        assert "standby" in err, err
        for call in ("vms", "incoming", "ft/secondary"):   # start, migration, FT secondary
            out = subprocess.run(
                ["ip", "netns", "exec", lab.name + "-client", "curl", "-s", "-w",
                 "\n%{http_code}", "-X", "POST", "-H", "Authorization: Bearer " + lab.token,
                 "http://10.88.0.%d:7700/agent/v1/%s" % (10 + int(asleep[1:]), call), "-d",
                 json.dumps({"name": "x", "spec": {"kernel": "shared:Image", "mem_mib": 64}})],
                capture_output=True, text=True, timeout=30).stdout
            assert out.rsplit("\n", 1)[1] == "503" and "standby" in out, (call, out)
        # a big VM fills an awake host's memory past 81%: DPM wakes the sleeper
        lab.create("big", host=awake[0], mem=400)
        wait_until(lambda: not standby(), 60, "DPM to wake " + asleep)
        wake = [r for r in lab.cli("audit")["records"] if r["action"] == "dpm.wake"]
        assert wake and wake[0]["target"] == asleep and "used" in wake[0]["details"]["reason"], \
            wake
        lab.create("y", host=asleep, mem=64)
        assert lab.vm("y")["state"] == "running"
        assert lab.cli("audit", "--verify")["ok"] is True


def test_dpm_ha_admission():
    """DPM and HA admission control (ha.host_failures_tolerated): a host in
    standby is woken when the layout no longer passes admission, and DPM
    does not put a host in standby when admission would then fail."""
    with Lab(vm_memory_mib=512) as lab:
        lab.create("v1", host="h1", mem=64)
        lab.cli("cluster", "set", "dpm=on", "dpm.delay_s=0", "dpm.min_hosts=2",
                "drs.interval_s=1")

        def standby():
            return [h["name"] for h in lab.cli("host", "list")["hosts"] if h["standby"]]
        asleep = wait_until(lambda: standby() if len(standby()) == 1 else None, 90,
                            "DPM to put one host in standby")[0]
        awake = [h for h in ("h1", "h2", "h3") if h != asleep]
        assert "h1" in awake   # v1 is there; the sleeper is an empty host
        # an HA VM of 240 MiB on each awake host (h1: 304 of 512 MiB used, the
        # other 240, both under DPM's 63%); if the other fails, its HA VM does
        # not fit in h1's 208 MiB left: admission needs the sleeper
        for i, h in enumerate(awake):
            lab.cli("vm", "create", "ha%d" % i, "--kernel", "shared:Image", "--initrd",
                    "shared:initrd.img", "--append", IDLE, "--mem", "240", "--host", h,
                    "--ha", "high")
        after_passes(lab, 3)
        assert standby() == [asleep]   # admission is off: nothing to wake for
        lab.cli("cluster", "set", "ha.host_failures_tolerated=1")
        wait_until(lambda: not standby(), 60, "DPM to wake %s for HA admission" % asleep)
        wake = [r for r in lab.cli("audit")["records"] if r["action"] == "dpm.wake"]
        assert wake and wake[0]["target"] == asleep and \
            "admission" in wake[0]["details"]["reason"], wake
        # and no host goes back to standby: admission would fail without it
        passes = watch_passes(lab, 5)
        assert not standby(), lab.cli("host", "list")
        assert any("admission" in p["dpm"].get("refused", {}).get("reason", "")
                   for p in passes), [p["dpm"] for p in passes]


def test_drs_skips_ft_vms():
    """A fault-tolerant VM is never DRS's to move (ferry-vm refuses to
    migrate a guest while FT protects it): two busy VMs on h1, one of them
    FT-protected with its secondary on h2, DRS full: each pass lists the FT
    VM as skipped, "fault tolerance on" (without that it was a candidate
    like any other), and the VM DRS moves to h2 is the other one."""
    with Lab() as lab:
        two_hosts(lab)
        lab.create("f1", append=BUSY, host="h1", mem=64)
        t = lab.cli("vm", "ft", "enable", "f1", "--secondary", "h2", "--wait")
        assert t["state"] == "succeeded", t
        lab.create("b1", append=BUSY, host="h1", mem=64)
        lab.cli("cluster", "set", "drs=full", "drs.cooldown_s=600")
        passes = watch_passes(lab, 6)
        assert any(any(s["vm"] == "f1" and "fault tolerance on" in s["reason"]
                       for s in p["skipped"]) for p in passes), passes
        wait_until(lambda: lab.vm("b1")["host"] == "h2" and lab.vm("b1")["state"] == "running",
                   90, "DRS to move b1 (not the FT VM) to h2")
        assert lab.vm("f1")["host"] == "h1" and (lab.vm("f1")["ft"] or {}).get("primary") == "h1"
        assert [t["vm"] for t in migrations(lab)] == ["b1"], migrations(lab)
