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
"""

import calendar
import os
import re
import subprocess
import time
from pathlib import Path

from ferrylib import wait_until
from test_cluster import IDLE, Lab

TIMEOUT = 150
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
        # the link is back: h3 lives again, runs no copy; hp stays where it is
        subprocess.run(cut + ["up"], check=True)
        wait_until(lambda: [h["alive"] for h in lab.cli("host", "list")["hosts"]] ==
                   [True, True, True], 30, "h3 to be alive again")
        assert not lab.procs("h3", "ferry-vm")
        assert lab.vm("hp")["host"] == vm["host"] and lab.vm("hp")["state"] == "running"
        assert len([p for h in others for p in lab.procs(h, "ferry-vm")]) == 1
        assert lab.cli("audit", "--verify")["ok"] is True
