"""Storage migration on the cluster: `ferry vm migrate NAME --datastore DS`
(storage vMotion on the VM's own host) and `--to HOST` where HOST does not
see the VM's datastore (shared-nothing), on a `ferry lab` of 3 hosts
(datastore `shared` = DIR/shared on every host, `local` = DIR/hI-local, each
host its own folder).

The guest writes a log to its raw disk (`ft disklog`, O_DIRECT|O_DSYNC,
each record acknowledged by the device) at RATE records a second, then
reads it all back itself (`ft disklog-check`, from the image it runs on
by then) and powers off; the host then checks the log and the data it put
in the image before the boot (test_storage's checks) in the image the VM
ended on.

What is proved, and how it would fail:
- a storage move shared -> local on h1 (test_cluster_storage_move): the
  task succeeds at 100%, names the datastore and its figures; `vm show`
  names local:IMAGE; the image is in h1's local folder and gone from
  shared; the guest, moved while it wrote, finds every record, and so does
  the host in the new image: a disk not moved, a spec not updated, the old
  image kept or a lost write fails it;
- a cancelled storage move (test_cluster_storage_move_cancel): a move
  slowed with --bandwidth-mbps is cancelled while it runs; the task ends
  "cancelled", the VM runs on on shared:IMAGE, the partial image in local
  is gone, the old one holds every record (the guest's check and the
  host's); a datastore limit counts the move on the datastore it moves
  into (a second move into it waits, saying so);
- shared-nothing (test_cluster_shared_nothing): a VM on h1's local is
  recommended for h2 (whose local is another folder: another datastore
  id) with "disks copied: N MiB" instead of being refused; a datastore h2
  does not have is refused, naming it; a slowed migration cancelled before
  the handoff leaves the guest running on h1's image and h2's half-written
  image removed; then the migration succeeds, `vm show` names h2 and
  local:IMAGE, the image is in h2's folder and gone from h1's; the guest
  finds every record, written before, during and after the move, and so
  does the host in h2's image;
- shared-nothing with the source's ferryd restarted in the middle
  (test_cluster_shared_nothing_source_restart): the migration, slowed,
  is sending when h1's ferryd is stopped and started again; ferry-vm
  carries it on alone and the new ferryd adopts it. Cancelled then: the
  task ends "cancelled", the guest runs on on h1's image, h2's half-written
  image and process go. Again, to the end: h2's ferryd says the
  guest is "incoming" 6 s after it runs (FERRYD_TEST_DELAY_ARRIVAL_MS):
  while it does, h1 reports the migration completed but not done and its
  image is still there (the handoff is not confirmed); then the task
  succeeds, `vm show` names h2 and local:IMAGE, h1's image is removed
  (before the fix an adopted migration left it behind: a stale copy at
  the same path), h2's holds every record; one copy runs, on h2.

Each test boots a guest with a 64 MiB disk and takes about 60-90 s at load 11.
"""

import re

from ferrylib import wait_until
from test_cluster import Lab
from test_storage import MIB, RATE, host_check_data, host_check_log, make_image

RECORDS = 12 * RATE          # the log runs about 12 s
BOOT = 120


def logging_vm(lab, name, disk, host="h1", records=RECORDS):
    """A VM on host writing the disk log to disk ("DS:FILE"), then checking it."""
    run = ["ft", "disklog", "/dev/vda", "--count", str(records), "--rate", str(RATE),
           ";", "ft", "disklog-check", "/dev/vda"]
    lab.cli("vm", "create", name, "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
            "--append", "console=ttyS0 quiet ferry.run=" + ",".join(run), "--mem", 128,
            "--disk", disk, "--host", host)
    wait_until(lambda: re.search(r"^ft: disklog: seq \d+", lab.console(name), re.M), BOOT,
               "the guest to log", interval=0.3)


def check_passes(lab, name, records=RECORDS):
    """The guest's own check of its log: every record there."""
    text = wait_until(lambda: (lambda t: t if "disklog-check:" in t else None)(
        lab.console(name)), BOOT + records // RATE, "the guest's check", interval=0.5)
    m = re.search(r"^ft: disklog-check: (\d+) records ok$", text, re.M)
    assert m and int(m.group(1)) >= records, text[-2000:]


def test_cluster_storage_move():
    with Lab() as lab:
        make_image(lab.dir / "shared" / "log.img")
        logging_vm(lab, "mover", "shared:log.img")
        rc, task, err = lab.run("vm", "migrate", "mover", "--datastore", "local", "--wait",
                                check=False, timeout=180)
        assert rc == 0 and task["state"] == "succeeded", (rc, task, err)
        assert task["datastore"] == "local" and task["source"] == task["destination"] == "h1"
        assert task["progress"]["percent"] == 100, task
        assert task["progress"]["transferred_bytes"] >= 8 * MIB, task
        vm = lab.vm("mover")
        assert vm["host"] == "h1" and vm["disks"] == ["local:log.img"], vm
        new, old = lab.dir / "h1-local" / "log.img", lab.dir / "shared" / "log.img"
        assert new.exists() and not old.exists(), "the image did not move, or the old stayed"
        check_passes(lab, "mover")
        host_check_log(new, RECORDS)
        host_check_data(new)


def test_cluster_storage_move_cancel():
    with Lab() as lab:
        make_image(lab.dir / "shared" / "log.img")
        logging_vm(lab, "stay", "shared:log.img")
        task = lab.cli("vm", "migrate", "stay", "--datastore", "local", "--bandwidth-mbps", "4")
        wait_until(lambda: (lab.task(task["id"])["progress"] or {}).get("transferred_bytes"),
                   30, "the move to copy", interval=0.2)
        lab.cli("task", "cancel", task["id"])
        done = lab.wait_task(task["id"])
        assert done["state"] == "cancelled", done
        vm = lab.vm("stay")
        assert vm["host"] == "h1" and vm["disks"] == ["shared:log.img"], vm
        assert lab.guest_status("h1", "stay") == "running"
        assert not (lab.dir / "h1-local" / "log.img").exists(), "the partial image stayed"
        # a datastore limit counts a move on the datastore it moves into
        lab.cli("cluster", "set", "datastore.local.migrations=1")
        first = lab.cli("vm", "migrate", "stay", "--datastore", "local", "--bandwidth-mbps", "4")
        make_image(lab.dir / "shared" / "other.img")
        logging_vm(lab, "other", "shared:other.img", records=RATE * 4)
        second = lab.cli("vm", "migrate", "other", "--datastore", "local")
        waiting = wait_until(lambda: lab.task(second["id"])["waiting"], 20, "a limit to hold")
        assert "datastore local" in waiting, waiting
        lab.cli("task", "cancel", first["id"])
        lab.wait_task(first["id"])
        check_passes(lab, "stay")
        host_check_log(lab.dir / "shared" / "log.img", RECORDS)
        host_check_data(lab.dir / "shared" / "log.img")


def test_cluster_shared_nothing():
    with Lab() as lab:
        src, dst = lab.dir / "h1-local" / "log.img", lab.dir / "h2-local" / "log.img"
        make_image(src)
        records = RATE * 30
        logging_vm(lab, "far", "local:log.img", records=records)

        def h2_offer():
            rec = lab.cli("vm", "recommend", "far")
            return [c for c in rec["candidates"] if c["host"] == "h2" and c.get("note")]
        offer = wait_until(h2_offer, 30, "h2 offered with its disk copy")[0]
        assert offer["datastore"] == "local" and offer["disks_copied_mib"] >= 8, offer
        assert offer["note"] == "disks copied: %d MiB" % offer["disks_copied_mib"], offer
        rc, doc, err = lab.run("vm", "migrate", "far", "--to", "h2", "--datastore", "nosuch",
                               check=False)
        assert rc != 0 and "h2 has no datastore nosuch" in str(doc) + err, (rc, doc, err)
        # cancelled before the handoff: the guest stays on its image, h2's copy goes
        task = lab.cli("vm", "migrate", "far", "--to", "h2", "--bandwidth-mbps", "4")
        assert task["datastore"] == "local", task
        wait_until(lambda: dst.exists(), 20, "the destination image", interval=0.1)
        wait_until(lambda: (lab.task(task["id"])["progress"] or {}).get("transferred_bytes"),
                   30, "the copy to start", interval=0.2)
        lab.cli("task", "cancel", task["id"])
        assert lab.wait_task(task["id"])["state"] == "cancelled"
        vm = lab.vm("far")
        assert vm["host"] == "h1" and vm["disks"] == ["local:log.img"], vm
        assert lab.guest_status("h1", "far") == "running"
        wait_until(lambda: not dst.exists(), 10, "the half-written copy to go")
        assert src.exists()
        # and now all the way
        rc, task, err = lab.run("vm", "migrate", "far", "--to", "h2", "--wait", check=False,
                                timeout=180)
        assert rc == 0 and task["state"] == "succeeded", (rc, task, err)
        assert task["datastore"] == "local" and task["destination"] == "h2", task
        vm = lab.vm("far")
        assert vm["host"] == "h2" and vm["disks"] == ["local:log.img"], vm
        assert dst.exists() and not src.exists(), "the image is not in h2's folder alone"
        check_passes(lab, "far", records)
        host_check_log(dst, records)
        host_check_data(dst)


def test_cluster_shared_nothing_source_restart():
    lab = Lab(ferryd_env={"FERRYD_TEST_DELAY_ARRIVAL_MS": "6000"})
    with lab:
        src, dst = lab.dir / "h1-local" / "log.img", lab.dir / "h2-local" / "log.img"
        make_image(src)
        records = RATE * 60
        logging_vm(lab, "far", "local:log.img", records=records)
        wait_until(lambda: [c for c in lab.cli("vm", "recommend", "far")["candidates"]
                            if c["host"] == "h2" and c.get("note")], 30, "h2 offered")

        def migrate_and_restart_h1(mbps):
            task = lab.cli("vm", "migrate", "far", "--to", "h2", "--bandwidth-mbps", mbps)
            assert task["datastore"] == "local", task
            wait_until(lambda: (lab.task(task["id"])["progress"] or {}).get(
                "transferred_bytes"), 60, "the copy to start", interval=0.2)
            lab.restart("h1", "ferryd", [
                "--name", "h1", "--listen", "10.88.0.11:7700", "--etcd",
                "http://10.88.0.11:2379", "--state-dir", str(lab.dir / "h1-state"),
                "--datastore", "shared=%s" % (lab.dir / "shared"), "--datastore",
                "local=%s" % (lab.dir / "h1-local"), "--network", "lan=br0", "--token-file",
                str(lab.dir / "tokens")])
            assert lab.task(task["id"])["state"] == "running", lab.task(task["id"])
            return task
        # cancelled after the restart: the guest stays on h1's image, h2's copy goes
        task = migrate_and_restart_h1("4")
        lab.cli("task", "cancel", task["id"])
        done = lab.wait_task(task["id"], timeout=60)
        assert done["state"] == "cancelled", done
        vm = lab.vm("far")
        assert vm["host"] == "h1" and vm["disks"] == ["local:log.img"], vm
        assert lab.guest_status("h1", "far") == "running"
        wait_until(lambda: not dst.exists() and not lab.procs("h2", "ferry-vm"), 20,
                   "h2's half-written copy and its process to go")
        assert src.exists() and len(lab.procs("h1", "ferry-vm")) == 1
        # all the way, h1's ferryd restarted in the middle again
        task = migrate_and_restart_h1("16")
        # the handoff done but not confirmed by h2: everything on h1 kept
        def h1_migration():
            try:
                return lab.agent("h1", "/vms/far/migration")
            except AssertionError:   # 404: the VM is gone from h1
                return {"gone": True}
        mig = wait_until(lambda: (lambda m: m if m.get("status") == "completed" or
                                  m.get("gone") else None)(h1_migration()), 120,
                         "the adopted migration to complete", interval=0.1)
        assert mig.get("adopted") and mig["done"] is False, \
            "h1 let go before h2 said it runs the guest: %s" % mig
        assert src.exists(), "the source's image went before the handoff was confirmed"
        done = lab.wait_task(task["id"], timeout=60)
        assert done["state"] == "succeeded", done
        vm = lab.vm("far")
        assert vm["host"] == "h2" and vm["disks"] == ["local:log.img"], vm
        wait_until(lambda: not lab.procs("h1", "ferry-vm"), 20, "h1's paused copy to go")
        assert len(lab.procs("h2", "ferry-vm")) == 1
        assert dst.exists() and not src.exists(), "the image is not in h2's folder alone"
        check_passes(lab, "far", records)
        host_check_log(dst, records)
        host_check_data(dst)
