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

Each test boots one guest with a 64 MiB disk and takes about 20-40 s.
"""

import re
import shutil

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
