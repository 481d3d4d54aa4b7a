"""HA and storage visibility (vSphere HA's rule: a VM restarts only where
its storage is), on a `ferry lab` of 3 hosts: datastore `shared` seen by
all, `local` each host's own folder (another datastore id on each).

test_ha_host_local_datastore: h1 runs two HA VMs, `loc` with its disk on
h1's local and `sh` with no disk but its kernel on shared. h2's and h3's
local hold a stale image at the same path (`local:loc.img`, as a
shared-nothing migration could have left), so a restart checked by path
would boot loc from the wrong disk. h1 dies (every process killed, link
cut).
- sh restarts on h2 or h3 as before (shared is visible there);
- loc runs nowhere: at every poll no ferry-vm of loc on h2 or h3; the
  decider reports why, audited `ha.restart` failed with "datastore local
  ... not visible from any live host", shown in `vm show` (`ha_waiting`)
  with the VM `restarting`; neither h2's nor h3's ferryd logs a start of
  loc, even one that failed;
- h1 comes back (link up, ferryd started again on its state directory):
  loc starts again on h1, from its own image, one copy; ferry-center shows
  it running there (`ha_waiting` null) with an `ha-restart` task h1 -> h1
  and an `ha.restart` ok record; sh, found killed on h1 by the new ferryd,
  is not started there again (its HA record names its new host): one copy.
test_ha_datastore_shared_by_some: datastore `pair` is one folder seen by
h1 and h3; h2 has a datastore of that name too, but its own folder (another
id) holding a stale image at the VM's path, and more free memory than h3
(which runs a 256 MiB VM). h1 dies with HA VM `p` on pair: p restarts on
h3, the host that sees its storage, never on h2, though room alone (the
decider's order before the fix) puts h2 first.

test_ha_datastore_visible_again: `solo` (a folder) is seen by h1 alone; h1
dies with HA VM `w` on it: w waits ("not visible from any live host"),
then h3's ferryd is started again with `solo` too (its storage back, as
after a mount): the decider restarts w on h3 (an ha-restart task h1 ->
h3), once.

How it fails without the fix (checked by reverting it): the decider
restarts loc on h2 from h2's stale image (the path check passes); with
only the ferryd's start-up fix reverted, h1's new ferryd starts sh there
a second time (VM monitoring took it for a crash), its record then
rewritten to h1 and deleted when ferry-center stopped that copy.
"""

import json
import re
import subprocess

from ferrylib import BUILD, wait_until
from test_cluster import IDLE, Lab
from test_ha import ferryd_log

TIMEOUT = 200
SERIAL = True   # leases and failover, like test_ha


def copies(lab, name, hosts=("h1", "h2", "h3")):
    return [h for h in hosts for _ in lab.procs(h, "/vms/%s/control.sock" % name)]


def restart_ferryd(lab, host, index, etcd=None, extra=()):
    """Starts host's ferryd again on its state directory (extra: more
    options), its link up: also a killed host back (then etcd names the
    other members: its own stays down, the other two keep quorum)."""
    subprocess.run(["ip", "netns", "exec", "%s-%s" % (lab.name, host), "ip", "link", "set",
                    "eth0", "up"], check=True)
    others = ",".join("http://10.88.0.%d:2379" % (10 + i) for i in (1, 2, 3) if i != index)
    lab.restart(host, "ferryd", [
        "--name", host, "--listen", "10.88.0.%d:7700" % (10 + index), "--etcd", etcd or others,
        "--state-dir", str(lab.dir / ("%s-state" % host)), "--datastore",
        "shared=%s" % (lab.dir / "shared"), "--datastore",
        "local=%s" % (lab.dir / ("%s-local" % host)), "--network", "lan=br0",
        "--token-file", str(lab.dir / "tokens")] + list(extra))


def test_ha_host_local_datastore():
    with Lab() as lab:
        for h in ("h1", "h2", "h3"):
            img = lab.dir / ("%s-local" % h) / "loc.img"
            subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
            img.write_bytes(b"stale copy on " + h.encode())   # h1's: the real one
            subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
        lab.cli("vm", "create", "loc", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--disk", "local:loc.img", "--ha", "high")
        lab.cli("vm", "create", "sh", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--ha", "high")
        wait_until(lambda: all("VM %s runs here: its HA record" % n in ferryd_log(lab, "h1")
                               for n in ("loc", "sh")), 20, "the HA records in etcd")
        lab.kill_host("h1")

        def waiting():
            assert not copies(lab, "loc", ("h2", "h3")), "loc started off its datastore"
            vm = lab.vm("loc")
            sh_on = copies(lab, "sh", ("h2", "h3"))
            return vm if vm.get("ha_waiting") and sh_on else None
        vm = wait_until(waiting, 90, "loc to wait for its datastore, sh to run elsewhere",
                        interval=0.2)
        assert vm["state"] == "restarting" and vm["host"] == "h1", vm
        assert re.search(r"datastore local \(id [0-9a-f]{8}, as host h1 had it\) not "
                         r"visible from any live host", vm["ha_waiting"]), vm
        recs = wait_until(lambda: [r for r in lab.cli("audit", "--vm", "loc")["records"]
                                   if r["action"] == "ha.restart"], 20, "the audit record")
        assert recs[0]["result"] == "failed", recs
        assert "not visible from any live host" in json.dumps(recs[0]["details"]), recs
        text = subprocess.run([str(BUILD / "ferry"), "--lab", lab.name, "vm", "show", "loc"],
                              capture_output=True, text=True).stdout
        assert "HA has not restarted it: datastore local" in text, text
        sh_host = wait_until(lambda: (lambda v: v["host"] if v["state"] == "running" and
                                      v["host"] != "h1" else None)(lab.vm("sh")), 30,
                             "ferry-center to show sh running off h1")
        for h in ("h2", "h3"):   # no start of loc there at all, not even one that failed
            assert "VM loc started" not in ferryd_log(lab, h), ferryd_log(lab, h)[-2000:]

        restart_ferryd(lab, "h1", 1)
        def loc_runs():
            if not copies(lab, "loc"):
                return None
            vm = lab.vm("loc")
            return vm if vm["state"] == "running" else None
        vm = wait_until(loc_runs, 60, "loc to run again on h1", interval=0.2)
        assert copies(lab, "loc") == ["h1"], copies(lab, "loc")
        assert vm["host"] == "h1" and vm["ha_waiting"] is None, vm
        log = (lab.dir / "logs" / "ferryd-h1.restart.log").read_text(errors="replace")
        assert re.search(r"HA: VM loc ended here .* still leaves it to this host: started "
                         r"again here", log), log[-3000:]
        wait_until(lambda: "HA: VM sh ended here" in (
            lab.dir / "logs" / "ferryd-h1.restart.log").read_text(errors="replace"), 30,
            "h1's ferryd to look at sh")
        assert copies(lab, "sh") == [sh_host], copies(lab, "sh")
        tasks = wait_until(lambda: [t for t in lab.cli("task", "list", "--vm", "loc")["tasks"]
                                    if t["kind"] == "ha-restart"], 20, "loc's ha-restart task")
        assert tasks[0]["source"] == tasks[0]["destination"] == "h1", tasks
        assert tasks[0]["state"] == "succeeded", tasks
        ok = [r for r in lab.cli("audit", "--vm", "loc")["records"]
              if r["action"] == "ha.restart" and r["result"] == "ok"]
        assert ok, lab.cli("audit", "--vm", "loc")
        assert lab.cli("audit", "--verify")["ok"] is True


def test_ha_datastore_shared_by_some():
    # each host offers 1024 MiB (below the machine's free memory, which all
    # three share): room then tells h2 (1024 free) from h3 (736)
    with Lab(vm_memory_mib=1024) as lab:
        pair, own = lab.dir / "pair", lab.dir / "h2-pair"
        for d in (pair, own):
            d.mkdir()
            subprocess.run(["truncate", "-s", "16M", str(d / "p.img")], check=True)
        for host, index, folder in (("h1", 1, pair), ("h2", 2, own), ("h3", 3, pair)):
            restart_ferryd(lab, host, index, etcd="http://10.88.0.%d:2379" % (10 + index),
                           extra=["--datastore", "pair=%s" % folder, "--vm-memory-mib", "1024"])

        def pair_ids():
            ids = {h["name"]: [d.get("id") for d in h["datastores"] if d["name"] == "pair"]
                   for h in lab.cli("host", "list")["hosts"]}
            return ids if all(v and v[0] for v in ids.values()) else None
        ids = wait_until(pair_ids, 30, "every host to report datastore pair")
        assert ids["h1"] == ids["h3"] != ids["h2"], ids
        lab.create("big", host="h3", mem=256)
        lab.cli("vm", "create", "p", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--disk", "pair:p.img", "--ha", "high")
        log_h1 = lab.dir / "logs" / "ferryd-h1.restart.log"
        wait_until(lambda: "VM p runs here: its HA record" in log_h1.read_text(), 20,
                   "p's HA record in etcd")
        lab.kill_host("h1")

        def p_runs():
            assert not copies(lab, "p", ("h2",)), "p started on h2, which does not see pair"
            return copies(lab, "p", ("h3",))
        wait_until(p_runs, 60, "p to run again on h3", interval=0.1)
        wait_until(lambda: (lambda v: v["state"] == "running" and v["host"] == "h3")(
            lab.vm("p")), 30, "ferry-center to show p running on h3")
        decider = [h for h in ("h2", "h3") if "HA: VM p restarted on h3" in (
            lab.dir / "logs" / ("ferryd-%s.restart.log" % h)).read_text()]
        assert len(decider) == 1, decider
        assert "VM p started" not in (lab.dir / "logs" / "ferryd-h2.restart.log").read_text()


def test_ha_datastore_visible_again():
    with Lab() as lab:
        solo = lab.dir / "solo"
        solo.mkdir()
        subprocess.run(["truncate", "-s", "16M", str(solo / "w.img")], check=True)
        restart_ferryd(lab, "h1", 1, etcd="http://10.88.0.11:2379",
                       extra=["--datastore", "solo=%s" % solo])
        wait_until(lambda: [d for h in lab.cli("host", "list")["hosts"] if h["name"] == "h1"
                            for d in h["datastores"] if d["name"] == "solo"], 30,
                   "h1 to report datastore solo")
        lab.cli("vm", "create", "w", "--kernel", "shared:Image", "--initrd",
                "shared:initrd.img", "--append", IDLE, "--mem", "64", "--host", "h1",
                "--disk", "solo:w.img", "--ha", "high")
        wait_until(lambda: "VM w runs here: its HA record" in (
            lab.dir / "logs" / "ferryd-h1.restart.log").read_text(), 20, "w's HA record")
        lab.kill_host("h1")
        vm = wait_until(lambda: (lambda v: v if v.get("ha_waiting") else None)(lab.vm("w")),
                        60, "w to wait for its datastore", interval=0.2)
        assert "datastore solo" in vm["ha_waiting"] and "not visible" in vm["ha_waiting"], vm
        assert not copies(lab, "w", ("h2", "h3"))
        restart_ferryd(lab, "h3", 3, etcd="http://10.88.0.13:2379",
                       extra=["--datastore", "solo=%s" % solo])
        wait_until(lambda: copies(lab, "w", ("h2", "h3")) == ["h3"], 60, "w to run on h3",
                   interval=0.2)
        wait_until(lambda: (lambda v: v["state"] == "running" and v["host"] == "h3")(
            lab.vm("w")), 30, "ferry-center to show w running on h3")
        assert lab.vm("w")["ha_waiting"] is None
        tasks = [t for t in lab.cli("task", "list", "--vm", "w")["tasks"]
                 if t["kind"] == "ha-restart"]
        assert len(tasks) == 1 and tasks[0]["source"] == "h1" and \
            tasks[0]["destination"] == "h3", tasks
        assert copies(lab, "w", ("h2", "h3")) == ["h3"]
