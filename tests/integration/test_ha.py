"""
HA on the cluster plane: what keeps a VM from running on two hosts.

- self-fencing (test_ha_self_fence): a host cut off from the network, its
  processes alive, cannot renew its etcd lease; its ferryd kills its VMs
  (isolation response power-off, the default) before the lease can expire,
  and only then does ferry-center restart them elsewhere. Checked at every
  poll (never a ferry-vm in the cut-off host and another elsewhere at
  once) and from the records: the fence's monotonic time in ferryd's log
  comes before the restarted ferry-vm's start time (/proc/PID/stat, on the
  same clock) and the ha.restart audit record. After the link is back the
  host lives again and the VM stays where HA put it, one copy.
- HA without ferry-center (test_ha_center_down): the ferryd holding the
  etcd election restarts a dead host's HA VM while ferry-center is down;
  ferry-center, started again, adopts it (ha-restart task, audit record
  naming the decider).
- a blip (test_ha_fence_blip): cut long enough to fence, not (or barely)
  to expire the lease: the VM runs again, once.
- VM monitoring (test_ha_vm_monitoring): an HA VM's ferry-vm killed is
  started again on its host, 3 times an hour at most; HA off: not.
- admission control (test_ha_admission_control): starts and a migration
  refused with the reason when N host failures would leave too little
  memory for the HA VMs.
- a partition healing with ferry-center down (test_ha_partition_heals_one_copy):
  the cut-off host, its lease back, does not start its fenced copy again
  (VM monitoring took the fence's kill for a crash and did, before).
- a claim that lapses (test_ha_claim_expires_*): the decider that claimed a
  dead host's VM dies, or stalls, before starting it (test hook
  FERRYD_TEST_HA_AFTER_CLAIM); the claim's own lease lapses and the VM is
  claimed again and started, once.
- a hung guest (test_ha_hung_guest): ferry-vm alive, its kernel panicked
  with panic=0; ferry-vm's heartbeat (returns to user mode and WFIs, on
  the guest clock) stalls, ferryd restarts it, audited ha.monitor; not
  fired for an idle guest, paused, or migrated.
- the HA lock and the disk lock (test_ha_disk_lock): a host that only
  looks dead (ferryd stopped, its ferry-vm running on): HA holds its lock,
  every restart is refused by the disk image's lock, audited as failed
  and retried; once the copy is gone the VM starts elsewhere, once.
- VM rules (test_ha_restart_honours_rules): a dead host's VMs restart
  away from their anti-affinity partners and next to their affinity
  partners, though another host has more room (the rules as the DRS
  decider copies them to etcd).
- etcd without quorum (test_ha_etcd_quorum_lost): no host declared dead,
  no restart, `ferry cluster show` says why; back: one copy again.
"""

import calendar
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ferrylib import QMP, wait_until
from test_cluster import FERRY, IDLE, Lab

TIMEOUT = 150
# alone under tests/run -j, the tests that race a lease, a fence or a claim
# against the clock (a fence due before the lease runs out, a blip shorter
# than the lease, a claim lease outlived by a stall, a heartbeat stalled
# 10 s, a quorum lost for a while); the others (a host killed, a process
# killed, placement, admission, a lock) wait for outcomes with no budget
SERIAL = ("test_ha_self_fence", "test_ha_fence_blip", "test_ha_partition_heals_one_copy",
          "test_ha_claim_expires_decider_dies", "test_ha_claim_expires_decider_stalls",
          "test_ha_hung_guest", "test_ha_etcd_quorum_lost")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_start_s(pid):
    """A process's start time in seconds since boot (CLOCK_MONOTONIC here: no suspend)."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / CLK_TCK


def fence_records(lab, host):
    text = (lab.dir / "logs" / ("ferryd-%s.log" % host)).read_text(errors="replace")
    return [(m.group(1), float(m.group(2)), float(m.group(3))) for m in re.finditer(
        r"self-fence: VM (\S+) \(pid \d+\) killed at wall ([\d.]+) monotonic ([\d.]+)", text)]


def test_ha_self_fence():
    with Lab() as lab:
        lab.cli("vm", "create", "hp", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--ha", "high")
        wait_until(lambda: lab.procs("h3", "ferry-vm"), 10, "hp's process on h3")
        others = ["h1", "h2"]
        cut = ["ip", "netns", "exec", lab.name + "-h3", "ip", "link", "set", "eth0"]
        subprocess.run(cut + ["down"], check=True)
        cut_at = time.monotonic()
        cut_mono = time.clock_gettime(time.CLOCK_MONOTONIC)
        # every poll: at most one copy; until the VM runs again elsewhere
        new_host = new_pid = None
        while time.monotonic() - cut_at < 60:
            mine = lab.procs("h3", "ferry-vm")
            theirs = [(h, pid) for h in others for pid, _ in lab.procs(h, "ferry-vm")]
            assert not (mine and theirs), "two copies at once: h3 %s, %s" % (mine, theirs)
            if theirs:
                new_host, new_pid = theirs[0]
                break
            time.sleep(0.05)
        assert new_host, "hp did not restart elsewhere within 60 s"
        started = proc_start_s(new_pid)
        fences = fence_records(lab, "h3")
        assert [f[0] for f in fences] == ["hp"], fences
        _, fence_wall, fence_mono = fences[0]
        assert fence_mono < started, ("the copy elsewhere started (%.2f) before h3 fenced "
                                      "(%.3f)" % (started, fence_mono))
        vm = wait_until(lambda: (lambda v: v if v["host"] == new_host and v["state"] ==
                                 "running" else None)(lab.vm("hp")), 30, "hp to run on " +
                        new_host)
        rec = [r for r in lab.cli("audit", "--vm", "hp")["records"]
               if r["action"] == "ha.restart" and r["result"] == "ok"]
        assert rec, lab.cli("audit", "--vm", "hp")
        # the audit keeps whole seconds
        restart_wall = calendar.timegm(time.strptime(rec[0]["time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert int(fence_wall) <= restart_wall, (fence_wall, rec[0])
        print("cut -> fence %.2f s, cut -> ferry-vm started elsewhere %.2f s (not asserted)" % (
            fence_mono - cut_mono, started - cut_mono))
        # the link is back: h3 lives again, runs no copy; hp stays where it is
        subprocess.run(cut + ["up"], check=True)
        wait_until(lambda: [h["alive"] for h in lab.cli("host", "list")["hosts"]] ==
                   [True, True, True], 30, "h3 to be alive again")
        assert not lab.procs("h3", "ferry-vm")
        assert lab.vm("hp")["host"] == vm["host"] and lab.vm("hp")["state"] == "running"
        assert len([p for h in others for p in lab.procs(h, "ferry-vm")]) == 1
        assert lab.cli("audit", "--verify")["ok"] is True


def test_ha_center_down():
    """HA decided by the ferryd holding the etcd election: ferry-center is
    down when a host dies; its HA VM runs again elsewhere all the same, and
    ferry-center, once back, adopts it (task and audit record)."""
    with Lab() as lab:
        lab.cli("vm", "create", "hb", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h2",
                "--ha", "high")
        log_h2 = lab.dir / "logs" / "ferryd-h2.log"
        wait_until(lambda: "VM hb runs here: its HA record" in log_h2.read_text(), 20,
                   "hb's HA record in etcd")
        for pid, _ in lab.procs("center", "ferry-center"):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not lab.procs("center", "ferry-center"), 10, "ferry-center to die")
        lab.kill_host("h2")   # h2 dies
        found = wait_until(lambda: [h for h in ("h1", "h3") if lab.procs(h, "ferry-vm")], 60,
                           "hb to run again on h1 or h3 (ferry-center down)")
        assert len(found) == 1, found
        new_host = found[0]
        decider = wait_until(lambda: [h for h in ("h1", "h3") if "HA: VM hb restarted on %s"
                                      % new_host in (lab.dir / "logs" / ("ferryd-%s.log" % h))
                                      .read_text()], 20, "the decider to log the restart")
        assert len(decider) == 1, decider
        assert not lab.procs("center", "ferry-center")
        # ferry-center comes back and adopts the VM where it runs
        urls = ",".join("http://10.88.0.%d:2379" % (10 + i) for i in (1, 2, 3))
        lab.restart("center", "ferry-center", [
            "--listen", "10.88.0.2:7800", "--db", str(lab.dir / "center.db"), "--etcd", urls,
            "--token-file", str(lab.dir / "tokens")])
        vm = wait_until(lambda: (lambda v: v if v["host"] == new_host and v["state"] ==
                                 "running" else None)(lab.run("vm", "show", "hb",
                                                              check=False)[1]), 30,
                        "ferry-center to adopt hb on " + new_host)
        assert vm["state"] == "running"
        recs = [r for r in lab.cli("audit", "--vm", "hb")["records"]
                if r["action"] == "ha.restart"]
        assert len(recs) == 1 and recs[0]["result"] == "ok", recs
        assert recs[0]["user"] == "ferryd-" + decider[0], recs
        ha = lab.cli("task", "list", "--vm", "hb")["tasks"][0]
        assert ha["kind"] == "ha-restart" and ha["state"] == "succeeded", ha
        assert ha["source"] == "h2" and ha["destination"] == new_host, ha
        assert lab.cli("audit", "--verify")["ok"] is True


def test_ha_admission_control():
    """cluster set ha.host_failures_tolerated=N: a start or a migration that
    would leave too little memory to restart every HA VM after N host
    failures is refused (409) with the reason. Hosts offer 512 MiB each."""
    with Lab(vm_memory_mib=512) as lab:
        assert lab.http("POST", "/api/v1/cluster", {"ha.host_failures_tolerated": -1})[0] == 400
        s = lab.cli("cluster", "set", "ha.host_failures_tolerated=2")
        assert s["settings"]["ha.host_failures_tolerated"] == 2, s

        def create(name, host, mem, ha):
            body = {"name": name, "kernel": "shared:Image", "initrd": "shared:initrd.img",
                    "append": IDLE, "mem_mib": mem, "host": host, "ha": ha}
            return lab.http("POST", "/api/v1/vms", body)
        assert create("a", "h1", 200, "high")[0] == 201
        assert create("b", "h2", 200, "medium")[0] == 201
        # two hosts down: 400 MiB of HA VMs on the last one, which has 512
        status, doc = create("c", "h3", 200, "high")
        assert status == 409, (status, doc)
        msg = doc["error"]["message"]
        assert "ha.host_failures_tolerated=2" in msg and "MiB" in msg, msg
        assert lab.run("vm", "show", "c", check=False)[0] != 0, "a refused VM is not created"
        # small VMs without HA fit: 400 <= 512 - 64 on every host
        assert create("d", "h3", 64, "off")[0] == 201
        assert create("e", "h1", 64, "off")[0] == 201
        # e joining d on h3 would leave h3 only 384 MiB for the 400 of HA VMs
        status, doc = lab.http("POST", "/api/v1/vms/e/migrate", {"to": "h3"})
        assert status == 409 and "admission control" in doc["error"]["message"], (status, doc)
        assert lab.vm("e")["host"] == "h1" and lab.vm("e")["state"] == "running"
        # off again: the same start is admitted
        lab.cli("cluster", "set", "ha.host_failures_tolerated=0")
        assert create("c", "h3", 200, "high")[0] == 201


def test_ha_fence_blip():
    """A cut just long enough to fence (2 s) but not, or barely, to expire
    the lease (3 s): the fenced HA VM runs again, once: on its own host if
    its lease lived on (it claims the HA record and restarts it), else
    where the decider put it; never two copies at once."""
    with Lab() as lab:
        lab.cli("vm", "create", "bl", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--ha", "high")
        wait_until(lambda: lab.procs("h3", "ferry-vm"), 10, "bl's process on h3")
        cut = ["ip", "netns", "exec", lab.name + "-h3", "ip", "link", "set", "eth0"]
        subprocess.run(cut + ["down"], check=True)
        wait_until(lambda: fence_records(lab, "h3"), 15, "h3 to fence bl")
        subprocess.run(cut + ["up"], check=True)
        hosts = ("h1", "h2", "h3")
        runs = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            runs = [h for h in hosts if lab.procs(h, "ferry-vm")]
            assert len(runs) <= 1, "two copies at once: %s" % runs
            if runs:
                break
            time.sleep(0.05)
        assert runs, "bl runs nowhere after the blip"
        vm = wait_until(lambda: (lambda v: v if v["host"] == runs[0] and v["state"] ==
                                 "running" else None)(lab.vm("bl")), 30,
                        "ferry-center to show bl running on " + runs[0])
        for _ in range(20):   # and it stays one copy
            assert [h for h in hosts if lab.procs(h, "ferry-vm")] == [vm["host"]]
            time.sleep(0.1)
        print("bl runs again on", vm["host"])


def test_ha_vm_monitoring():
    """An HA VM whose ferry-vm dies on a live host starts again there, at
    most 3 times an hour; a VM with HA off stays ended."""
    with Lab() as lab:
        for name, ha in (("hm", "high"), ("plain", "off")):
            lab.cli("vm", "create", name, "--kernel", "shared:Image", "--initrd",
                    "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                    "--ha", ha)

        def pid_of(name):
            found = lab.procs("h1", "/vms/%s/control.sock" % name)
            return found[0][0] if found else None
        log = lab.dir / "logs" / "ferryd-h1.log"
        for n in range(3):
            old = wait_until(lambda: pid_of("hm"), 10, "hm's ferry-vm")
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: (lambda p: p if p and p != old else None)(pid_of("hm")), 20,
                       "hm to start again (%d)" % (n + 1))
        wait_until(lambda: lab.vm("hm")["state"] == "running", 20, "hm shown running")
        os.kill(pid_of("hm"), signal.SIGKILL)
        wait_until(lambda: "VM hm died (signal 9): not restarted" in log.read_text(), 20,
                   "the fourth death to be left alone")
        assert pid_of("hm") is None
        wait_until(lambda: lab.vm("hm")["state"] == "exited", 20, "hm shown exited")
        os.kill(pid_of("plain"), signal.SIGKILL)
        wait_until(lambda: lab.vm("plain")["state"] == "exited", 20, "plain shown exited")
        assert pid_of("plain") is None
        assert log.read_text().count("VM monitoring: VM hm died (signal 9): started again") == 3


def kill_center(lab):
    for pid, _ in lab.procs("center", "ferry-center"):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not lab.procs("center", "ferry-center"), 10, "ferry-center to die")


def test_ha_partition_heals_one_copy():
    """A partition with ferry-center down (so its clean-up of stale copies
    cannot hide anything): h3 is cut off, fences its VM, HA starts it
    elsewhere; once the link is back h3 renews its lease and must not start
    its fenced copy again (neither as "fenced during a blip": the record
    moved, nor as a crash by VM monitoring: the fence killed it). One copy
    at every poll, before and for 4 s after the heal."""
    with Lab() as lab:
        lab.cli("vm", "create", "pc", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--ha", "high")
        log_h3 = lab.dir / "logs" / "ferryd-h3.log"
        wait_until(lambda: "VM pc runs here: its HA record" in log_h3.read_text(), 20,
                   "pc's HA record in etcd")
        kill_center(lab)
        cut = ["ip", "netns", "exec", lab.name + "-h3", "ip", "link", "set", "eth0"]
        subprocess.run(cut + ["down"], check=True)
        hosts = ("h1", "h2", "h3")

        def copies():
            found = [h for h in hosts for _ in lab.procs(h, "ferry-vm")]
            assert len(found) <= 1, "two copies at once: %s" % found
            return found
        wait_until(lambda: (lambda found: found and found != ["h3"])(copies()), 60,
                   "pc to run off h3")
        leases = log_h3.read_text().count("heartbeat: /ferry/hosts/h3 held by lease")
        subprocess.run(cut + ["up"], check=True)
        wait_until(lambda: log_h3.read_text().count("heartbeat: /ferry/hosts/h3 held by "
                                                    "lease") > leases, 30,
                   "h3 to hold a lease again")
        end = time.monotonic() + 4
        while time.monotonic() < end:
            found = copies()
            assert found and found != ["h3"], "pc runs on %s after the heal" % found
            time.sleep(0.05)


def ferryd_log(lab, host):
    return (lab.dir / "logs" / ("ferryd-%s.log" % host)).read_text(errors="replace")


def claim_then(mode):
    """h3 dies with the HA VM `cl`; the decider that claims its record first
    then dies (mode "exit") or stalls 14 s (mode "stall:14") before the
    start (FERRYD_TEST_HA_AFTER_CLAIM, once in the lab). The claim's lease
    (10 s) lapses and a decider claims it again and starts it: once.
    Returns (the lab's logs by host, the host that ran the hook, where cl
    runs)."""
    lab = Lab()
    lab.env["FERRYD_TEST_HA_AFTER_CLAIM"] = "%s:%s" % (mode, lab.dir / "hook-fired")
    with lab:
        lab.cli("vm", "create", "cl", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--ha", "high")
        wait_until(lambda: "VM cl runs here: its HA record" in ferryd_log(lab, "h3"), 20,
                   "cl's HA record in etcd")
        lab.kill_host("h3")
        hooked = wait_until(lambda: [h for h in ("h1", "h2") if "test hook: " in
                                     ferryd_log(lab, h)], 30, "a decider to claim cl")
        assert len(hooked) == 1, hooked

        def copies():
            found = [h for h in ("h1", "h2") for _ in lab.procs(h, "ferry-vm")]
            assert len(found) <= 1, "two copies at once: %s" % found
            return found
        where = wait_until(copies, 60, "cl to run again after the claim lapsed")
        wait_until(lambda: any("HA: VM cl restarted on %s" % where[0] in ferryd_log(lab, h)
                               for h in ("h1", "h2")), 20, "the decider to log the restart")
        return {h: ferryd_log(lab, h) for h in ("h1", "h2")}, hooked[0], where[0]


def test_ha_claim_expires_decider_dies():
    """The decider dies between claiming and starting: another ferryd,
    elected once its lease expired, takes the lapsed claim and starts it."""
    logs, dead, where = claim_then("exit")
    assert "dying right after claiming VM cl" in logs[dead]
    other = ({"h1", "h2"} - {dead}).pop()
    assert where == other, (where, dead)
    assert "the claim of %s has expired" % dead in logs[other], logs[other][-2000:]
    assert "HA: VM cl restarted on %s" % other in logs[other]


def test_ha_claim_expires_decider_stalls():
    """The decider stalls 14 s between claiming and starting (it stays the
    decider: its heartbeat goes on): once back it sees its claim lapsed and
    does not start on it; the next pass claims again and starts cl, once."""
    logs, stalled, where = claim_then("stall:14")
    assert "stalling 14 s right after claiming VM cl" in logs[stalled]
    assert "claim expired before the start (a stall): not started now" in logs[stalled]
    assert "the claim of %s has expired" % stalled in logs[stalled]
    assert any("HA: VM cl restarted on %s" % where in text for text in logs.values())


def test_ha_hung_guest():
    """VM monitoring of a hung guest: ferry-vm alive, its kernel stuck.
    hg's guest runs `ft sleep 3` as its init and then panics ("Attempted to
    kill init!") with panic=0: it spins in the kernel forever, its harts
    never again going back to user mode nor to WFI, so ferry-vm's
    heartbeat (query-status) stalls; ferryd kills it and starts it again,
    and ferry-center audits it (ha.monitor). Not fired meanwhile: an idle
    HA guest, the same paused 13 s (stop/cont: its guest clock stands
    still) and then live-migrated to h2."""
    with Lab() as lab:
        lab.cli("vm", "create", "hg", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", "console=ttyS0 quiet panic=0 rdinit=/bin/ft "
                "-- sleep 3", "--mem", "64", "--host", "h1", "--ha", "high")
        lab.cli("vm", "create", "idle1", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--ha", "high")

        def pid_of(host, name):
            found = lab.procs(host, "/vms/%s/control.sock" % name)
            return found[0][0] if found else None
        first = wait_until(lambda: pid_of("h1", "hg"), 20, "hg's ferry-vm")
        idle_pid = wait_until(lambda: pid_of("h1", "idle1"), 20, "idle1's ferry-vm")
        wait_until(lambda: "Attempted to kill init" in lab.console("hg"), 60, "hg to panic")
        ctl = lab.dir / "h1-state" / "vms" / "idle1" / "control.sock"
        with QMP(str(ctl)) as q:
            q.execute("stop")
            time.sleep(13)
            q.execute("cont")
        log = lab.dir / "logs" / "ferryd-h1.log"
        wait_until(lambda: "VM monitoring: VM hg hung: no guest heartbeat for" in
                   log.read_text(), 40, "ferryd to find hg hung")
        second = wait_until(lambda: (lambda p: p if p and p != first else None)(
            pid_of("h1", "hg")), 20, "hg to start again")
        assert second != first
        assert "VM hg hung: no guest heartbeat for 1" in log.read_text()   # 10 s or more
        rec = wait_until(lambda: [r for r in lab.cli("audit", "--vm", "hg")["records"]
                                  if r["action"] == "ha.monitor"], 20, "the ha.monitor record")
        assert rec[0]["user"] == "ferryd-h1" and rec[0]["result"] == "ok", rec
        assert "hung" in json.dumps(rec[0]), rec
        # the idle guest: never taken for hung, paused or migrated
        t = lab.cli("vm", "migrate", "idle1", "--to", "h2", "--wait")
        assert t["state"] == "succeeded", t
        time.sleep(3)
        assert "VM idle1" not in "".join(
            line for line in log.read_text().splitlines() if "VM monitoring" in line)
        assert "VM monitoring" not in (lab.dir / "logs" / "ferryd-h2.log").read_text()
        assert idle_pid and pid_of("h2", "idle1")
        assert lab.cli("audit", "--verify")["ok"] is True


def test_ha_disk_lock():
    """A host that only looks dead: h3's ferryd is stopped (SIGSTOP), so its
    lease expires and it cannot fence, while its ferry-vm runs on holding
    the disk image's lock. HA takes h3's HA lock and tries the restart;
    ferry-vm refuses the locked image on every host, which HA reports as a
    failed restart (audited ha.restart failed, naming the lock) and
    retries later, within its limit; once h3's copy is gone (powered off
    by hand) the next try starts dl elsewhere. h3's ferryd, let go again,
    starts no copy of its own."""
    with Lab() as lab:
        subprocess.run(["truncate", "-s", "16M", str(lab.dir / "shared" / "dl.img")],
                       check=True)
        lab.cli("vm", "create", "dl", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                "--disk", "shared:dl.img", "--ha", "high")
        wait_until(lambda: "VM dl runs here: its HA record" in ferryd_log(lab, "h3"), 20,
                   "dl's HA record in etcd")
        old = lab.procs("h3", "/vms/dl/control.sock")[0][0]
        ferryd = [p for p, cmd in lab.procs("h3", "/ferryd ") if "ferryd-monitor" not in cmd]
        assert len(ferryd) == 1, ferryd
        os.kill(ferryd[0], signal.SIGSTOP)
        try:
            failed = wait_until(lambda: [r for r in lab.cli("audit", "--vm", "dl")["records"]
                                         if r["action"] == "ha.restart" and
                                         r["result"] == "failed"], 60,
                                "a restart refused by the disk lock")
            assert "locked" in json.dumps(failed[0]["details"]), failed[0]
            assert failed[0]["user"] in ("ferryd-h1", "ferryd-h2"), failed[0]
            decider = failed[0]["user"][len("ferryd-"):]
            log = ferryd_log(lab, decider)
            assert "holds the HA lock of host h3" in log
            assert log.index("holds the HA lock of host h3") < log.index(
                "HA: VM dl (host h3 gone) could not restart, attempt 1")
            assert lab.procs("h3", "/vms/dl/control.sock")[0][0] == old   # runs on
            os.kill(old, signal.SIGKILL)   # h3's copy powered off by hand
            where = wait_until(lambda: [h for h in ("h1", "h2")
                                        if lab.procs(h, "/vms/dl/control.sock")], 60,
                               "dl to start elsewhere once the image is free")
            wait_until(lambda: "HA: VM dl restarted on %s" % where[0] in
                       ferryd_log(lab, decider), 20, "the decider to log the restart")
            wait_until(lambda: "released the HA lock of host h3" in ferryd_log(lab, decider),
                       20, "the decider to release h3's HA lock")
        finally:
            os.kill(ferryd[0], signal.SIGCONT)
        end = time.monotonic() + 5
        while time.monotonic() < end:   # h3's ferryd back: no copy of its own
            assert not lab.procs("h3", "/vms/dl/control.sock"), "h3 started dl again"
            time.sleep(0.1)
        assert len([h for h in ("h1", "h2") if lab.procs(h, "/vms/dl/control.sock")]) == 1


def test_ha_restart_honours_rules():
    """h3 dies with HA VMs c and e. Room alone would put both on h1 (h2
    holds a 256 MiB VM); the rules send c away from a (on h1) and e next
    to b (on h2)."""
    with Lab(vm_memory_mib=640) as lab:
        lab.create("a", host="h1", mem=64)
        lab.create("b", host="h2", mem=256)
        for name in ("c", "e"):
            lab.cli("vm", "create", name, "--kernel", "shared:Image", "--initrd",
                    "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h3",
                    "--ha", "high")
        lab.cli("cluster", "rule", "add", "apart", "--anti-affinity", "a,c")
        lab.cli("cluster", "rule", "add", "with", "--affinity", "b,e")
        from test_drs import etcd_value
        wait_until(lambda: etcd_value(lab, "/ferry/rules/apart") and
                   etcd_value(lab, "/ferry/rules/with"), 30, "the rules in etcd")
        log_h3 = lab.dir / "logs" / "ferryd-h3.log"
        wait_until(lambda: all("VM %s runs here: its HA record" % n in log_h3.read_text()
                               for n in ("c", "e")), 30, "c's and e's HA records in etcd")
        lab.kill_host("h3")
        for name in ("c", "e"):
            wait_until(lambda: (lambda v: v["host"] != "h3" and v["state"] == "running")(
                lab.vm(name)), 90, name + " to run again off h3")
        assert lab.vm("c")["host"] == "h2", "c restarted next to a, its anti-affinity partner"
        assert lab.vm("e")["host"] == "h2", "e restarted away from b, its affinity partner"
        logs = ferryd_log(lab, "h1") + ferryd_log(lab, "h2")
        assert "against anti-affinity" not in logs


def test_ha_etcd_quorum_lost():
    """etcd loses quorum (the members of h2 and h3 stopped, SIGSTOP): no HA
    action (no host is declared dead, the VM fenced on h1 is restarted
    nowhere while it lasts) and `ferry cluster show` says why; once the
    members are back the VM runs again, one copy, and etcd shows ok."""
    with Lab() as lab:
        lab.cli("vm", "create", "q", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--ha", "high")
        wait_until(lambda: "VM q runs here: its HA record" in ferryd_log(lab, "h1"), 20,
                   "q's HA record in etcd")
        assert lab.cli("cluster", "show")["etcd"] == {"ok": True}
        members = [pid for h in ("h2", "h3") for pid, cmd in lab.procs(h, "etcd --name")]
        assert len(members) == 2, members
        for pid in members:
            os.kill(pid, signal.SIGSTOP)
        try:
            etcd = wait_until(lambda: (lambda e: e if not e["ok"] else None)(
                lab.cli("cluster", "show")["etcd"]), 60, "ferry-center to find etcd silent")
            assert "no HA action" in etcd["ha"] and etcd["since"], etcd
            text = subprocess.run([str(FERRY), "--lab", lab.name, "cluster", "show"],
                                  capture_output=True, text=True).stdout
            assert "etcd: NOT ANSWERING since" in text and "no HA action" in text, text
            wait_until(lambda: fence_records(lab, "h1"), 30, "h1 to fence q")
            end = time.monotonic() + 8
            while time.monotonic() < end:   # no restart anywhere, no host dead
                assert not [h for h in ("h1", "h2", "h3") if lab.procs(h, "ferry-vm")]
                time.sleep(0.2)
            assert all(h["alive"] for h in lab.cli("host", "list")["hosts"])
            for h in ("h1", "h2", "h3"):
                assert "HA: VM q restarted" not in ferryd_log(lab, h)
        finally:
            for pid in members:
                os.kill(pid, signal.SIGCONT)
        wait_until(lambda: lab.cli("cluster", "show")["etcd"]["ok"], 60, "etcd to answer again")
        found = wait_until(lambda: [h for h in ("h1", "h2", "h3") if lab.procs(h, "ferry-vm")],
                           60, "q to run again")
        assert len(found) == 1, found
