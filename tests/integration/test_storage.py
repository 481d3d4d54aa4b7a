"""Storage vMotion: disk-move of a running guest's disk image.

The guest writes a log to its raw disk (`ft disklog`, O_DIRECT|O_DSYNC,
each record acknowledged by the device) while the host moves the image
with `disk-move`, then reads the log back itself (`ft disklog-check`,
O_DIRECT again, so from the image it now runs on) and powers off.

What is proved, and how it would fail:
- after a completed move the guest's own check finds every record it
  wrote, in order and intact: a record written during the copy into a
  block already copied (the dirty-block bitmap) or in the last moment
  (the switch) and lost fails it; the host reads the new image and finds
  the same records and the data it put there before the boot, byte for
  byte, and so does a fresh boot of the new image; the new image is locked while the guest runs and the old one is
  not; the new image stays sparse (allocated bytes far below its size,
  holes in the middle and at the end), has the source's size (the move
  creates it empty and sets its size before the switch), and ferry-img
  check finds it sound;
- a destination on a file system too small for the data fails the move:
  the guest runs on on the old image and finds every record, the old
  image stays locked, the partial destination is gone;
- a cancelled move does the same, and a migration is refused while a
  move runs; a `quit` during a move removes the partial image too;
- a destination that is a symlink, that exists, or that another process
  holds locked is refused at once, and nothing is created or changed; so
  is a move of a read-only disk;
- after two moves, a migration names the last image: a destination given the
  old one is refused with the reason (not attached, disk-move, disks:
  copy), the guest runs on at the source; a destination given the new one
  takes the guest over, and its log goes on there intact;
- ferry-img creates a sparse image a guest boots with, shows its size,
  allocation and, while a VM runs it, the write lock and that VM's pid;
  check finds it usable, and finds a qcow2 or ragged image unusable.

Each test boots one small guest (64 MiB disk) and takes about 15-25 s.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ferrylib import BUILD, VM, QMPError, free_tcp_port, need_root, require_file, wait_until

MIB = 1 << 20
DISK_MIB = 64
DATA_AT = 32 * MIB          # where the host puts data before the boot
DATA_MIB = 8
RECORDS = 3000
RATE = 300                  # records a second: the log runs about 10 s
BOOT = 90
REC = 512
MAGIC = 0x474f4c5952524546
M64 = (1 << 64) - 1
F_OFD_GETLK, F_OFD_SETLK = 36, 37


def host_data():
    """DATA_MIB of deterministic, incompressible bytes."""
    out, block = bytearray(), b"ferry"
    while len(out) < DATA_MIB * MIB:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:DATA_MIB * MIB])


def make_image(path):
    with open(path, "wb") as f:
        f.truncate(DISK_MIB * MIB)
        f.seek(DATA_AT)
        f.write(host_data())


def lock_state(path):
    """'unlocked', 'read' or 'write': the OFD lock another process holds."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fl = fcntl.fcntl(fd, F_OFD_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
    finally:
        os.close(fd)
    kind = struct.unpack("hhqqi", fl)[0]
    return {fcntl.F_UNLCK: "unlocked", fcntl.F_RDLCK: "read", fcntl.F_WRLCK: "write"}[kind]


def allocated(path):
    return os.stat(path).st_blocks * 512


def mix(seed, i):
    x = (seed ^ (i * 0x9e3779b97f4a7c15)) & M64
    x ^= x >> 30
    x = (x * 0xbf58476d1ce4e5b9) & M64
    x ^= x >> 27
    x = (x * 0x94d049bb133111eb) & M64
    return x ^ (x >> 31)


def checksum(rec):
    h = 0xcbf29ce484222325
    for b in rec[:504]:
        h = ((h ^ b) * 0x100000001b3) & M64
    return h


def host_check_log(path, count):
    """The guest's log in the image at path: count records, each intact."""
    with open(path, "rb") as f:
        data = f.read(count * REC)
    run = struct.unpack_from("<Q", data, 8)[0]
    for seq in range(count):
        rec = data[seq * REC:(seq + 1) * REC]
        words = struct.unpack("<64Q", rec)
        assert words[0] == MAGIC and words[1] == run and words[2] == seq, (
            f"{path}: sector {seq} does not hold record {seq} of run {run:#x}")
        assert words[63] == checksum(rec), f"{path}: record {seq}: bad checksum"
        assert all(words[3 + i] == mix(run ^ seq, i) for i in range(60)), (
            f"{path}: record {seq}: bad payload")


def host_check_data(path):
    with open(path, "rb") as f:
        f.seek(DATA_AT)
        assert f.read(DATA_MIB * MIB) == host_data(), (
            f"{path}: the data written before the boot changed")


def logging_guest(image, name, records=RECORDS):
    run = ["ft", "disklog", "/dev/vda", "--count", str(records), "--rate", str(RATE),
           ";", "ft", "disklog-check", "/dev/vda"]
    return VM(append=f"console=ttyS0 quiet ferry.run={','.join(run)}", mem=128,
              disk=image, name=name)


def wait_logging(vm):
    vm.wait_for(r"^ft: disklog: seq \d+", BOOT)


def wait_move(q, timeout=60):
    """The final DISK_MOVE event's data."""
    while True:
        ev = q.wait_event("DISK_MOVE", timeout=timeout)
        if ev["data"]["status"] != "active":
            return ev["data"]


def assert_guest_log_ok(vm, records=RECORDS):
    """The guest wrote every record and read them all back."""
    m = vm.wait_for(r"^ft: disklog-check: (.*)$", 120)
    assert m.group(1) == f"{records} records ok", (
        f"the guest's own check of its log: {m.group(1)}\n{vm.tail()}")
    assert vm.wait_exit(30) == 0, vm.tail()


def fresh_boot_checks_log(image, records):
    """A new guest booted on image finds the whole log."""
    with VM(append="console=ttyS0 quiet ferry.run=ft,disklog-check,/dev/vda", mem=64,
            disk=image, name="fresh") as vm:
        m = vm.wait_for(r"^ft: disklog-check: (.*)$", BOOT)
        assert m.group(1) == f"{records} records ok", (
            f"a fresh boot on {image}: {m.group(1)}\n{vm.tail()}")
        assert vm.wait_exit(30) == 0, vm.tail()


@contextmanager
def scratch():
    d = Path(tempfile.mkdtemp(prefix="ferry-storage-"))
    try:
        yield d
    finally:
        subprocess.run(["umount", "-q", str(d / "small")], stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


# ---- tests ------------------------------------------------------------------

def test_disk_move_while_the_guest_writes():
    with scratch() as tmp:
        old, new = tmp / "old.raw", tmp / "store2" / "new.raw"
        new.parent.mkdir()
        make_image(old)
        with logging_guest(old, "mover") as vm:
            wait_logging(vm)
            q = vm.qmp()
            assert q.cmd("query-disk-move") == {"status": "none"}
            assert lock_state(old) == "write"
            # paced, so the guest writes a good part of its log during the copy
            q.cmd("disk-move", disk=0, path=str(new), bandwidth_mbps=24)
            assert lock_state(new) == "write", "the destination is not locked at once"
            r = wait_move(q)
            assert r["status"] == "completed", r
            print(f"moved: {r}")
            # where the time went: the paced bulk pass takes at least its
            # data at 24 Mbit/s (8 MiB: 2.8 s), and the phases fit in the total
            assert r["bulk_ms"] >= DATA_MIB * MIB * 8 // 24000, r
            assert r["bulk_ms"] + r["rounds_ms"] + r["flush_ms"] <= r["total_ms"] + 2, r
            assert q.cmd("query-disk-move")["status"] == "completed"
            assert lock_state(new) == "write", "the new image is not locked"
            assert lock_state(old) == "unlocked", "the old image is still locked"
            seq = re.findall(r"^ft: disklog: seq (\d+)$", vm.console(), re.M)
            assert seq and int(seq[-1]) < RECORDS - 1, (
                "the log ended before the move did: nothing was written during it")
            assert_guest_log_ok(vm)
        host_check_log(new, RECORDS)
        host_check_data(new)
        fresh_boot_checks_log(new, RECORDS)
        assert allocated(new) < 2 * DATA_MIB * MIB, (
            f"the new image is not sparse: {allocated(new)} bytes allocated of "
            f"{DISK_MIB * MIB}")
        assert os.path.getsize(new) == DISK_MIB * MIB
        # the destination starts empty and grows as it is written; the holes
        # between the guest's log and the host's data and after that data to
        # the end stay holes, and the size is the source's
        fd = os.open(new, os.O_RDONLY)
        try:
            assert os.lseek(fd, 4 * MIB, os.SEEK_DATA) == DATA_AT
            try:
                end = os.lseek(fd, DATA_AT + DATA_MIB * MIB, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO, e
                end = None
            assert end is None, f"data past the host's data, at {end}"
        finally:
            os.close(fd)
        info = ferry_img_json("info", new)
        assert (info["size"], info["lock"]) == (DISK_MIB * MIB, "none"), info
        check = ferry_img_json("check", new)
        assert check["ok"] and not check["problems"], check


def test_disk_move_to_a_full_file_system_keeps_the_old_image():
    need_root("mounts a small tmpfs as a full datastore")
    with scratch() as tmp:
        old, small = tmp / "old.raw", tmp / "small"
        small.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "ferry-test", str(small)],
                       check=True)
        make_image(old)
        with logging_guest(old, "full") as vm:
            wait_logging(vm)
            q = vm.qmp()
            q.cmd("disk-move", disk=0, path=str(small / "new.raw"))
            r = wait_move(q)
            assert r["status"] == "failed", r
            assert "No space left on device" in r.get("error", ""), r
            assert list(small.iterdir()) == [], "the partial destination was left behind"
            assert lock_state(old) == "write", "the guest let go of its image"
            assert q.cmd("query-status")["status"] == "running"
            assert_guest_log_ok(vm)
        host_check_log(old, RECORDS)
        host_check_data(old)


def test_disk_move_cancel_keeps_the_old_image_and_blocks_migration():
    with scratch() as tmp:
        old, new = tmp / "old.raw", tmp / "new.raw"
        make_image(old)
        with logging_guest(old, "cancel") as vm:
            wait_logging(vm)
            q = vm.qmp()
            q.cmd("disk-move", disk=0, path=str(new), bandwidth_mbps=8)    # ~8 s
            try:
                q.cmd("migrate", uri="tcp:127.0.0.1:9")
                raise AssertionError("a migration started during a disk move")
            except QMPError as e:
                assert "disk move is in progress" in str(e), e
            try:
                q.cmd("disk-move", disk=0, path=str(tmp / "other.raw"))
                raise AssertionError("a second disk move started")
            except QMPError as e:
                assert "already in progress" in str(e), e
            vm.wait_for(r"^ft: disklog: seq \d+", 10)
            q.cmd("disk-move-cancel")
            r = wait_move(q)
            assert r["status"] == "cancelled", r
            assert not new.exists(), "the partial destination was left behind"
            assert not (tmp / "other.raw").exists()
            assert lock_state(old) == "write"
            assert_guest_log_ok(vm)
        host_check_log(old, RECORDS)
        host_check_data(old)


def test_quit_during_a_disk_move_removes_the_partial_image():
    with scratch() as tmp:
        old, new = tmp / "old.raw", tmp / "new.raw"
        make_image(old)
        with VM(append="console=ttyS0 quiet", mem=64, disk=old, name="quit") as vm:
            vm.wait_ready(BOOT)
            q = vm.qmp()
            q.cmd("disk-move", disk=0, path=str(new), bandwidth_mbps=8)     # ~8 s
            wait_until(lambda: q.cmd("query-disk-move")["copied_bytes"] > 0, 30,
                       "the copy under way")
            assert new.exists() and lock_state(new) == "write"
            q.cmd("quit")
            assert vm.wait_exit(30) == 0, vm.tail()
        assert not new.exists(), "quit left the partial destination behind"
        assert lock_state(old) == "unlocked"
        host_check_data(old)


def test_disk_move_refuses_bad_destinations():
    with scratch() as tmp:
        old = tmp / "old.raw"
        make_image(old)
        target, link = tmp / "target.raw", tmp / "link.raw"
        os.symlink(target, link)                 # dangling: O_CREAT would follow it
        existing = tmp / "existing.raw"
        existing.write_bytes(b"keep me")
        held = tmp / "held.raw"
        held.write_bytes(b"another VM's")
        ro = tmp / "ro.raw"
        ro.write_bytes(bytes(MIB))
        with VM(append="console=ttyS0 quiet", mem=64, disk=[old, f"{ro},ro"],
                name="refuse") as vm:
            vm.wait_ready(BOOT)
            q = vm.qmp()
            hfd = os.open(held, os.O_RDWR)      # another VM's image, locked
            try:
                fcntl.fcntl(hfd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
                for path, why in ((link, "is a symlink"), (existing, "already exists"),
                                  (held, "in use by another process"),
                                  (old, "in use by another process"),
                                  (tmp / "no-dir" / "x.raw", "No such file or directory")):
                    try:
                        q.cmd("disk-move", disk=0, path=str(path))
                        raise AssertionError(f"disk-move to {path} was accepted")
                    except QMPError as e:
                        assert why in str(e) and str(path) in str(e), (path, e)
                # beneath: a directory link below it is refused by the open
                # itself (the last component is no link), and so is a path
                # not below it; nothing is made behind the link
                ds, outside = tmp / "ds", tmp / "outside"
                ds.mkdir()
                outside.mkdir()
                (ds / "vm").symlink_to(outside)
                for path, under, why in (
                        (ds / "vm" / "new.raw", ds, "has a symlink on the way below"),
                        (tmp / "new.raw", ds, "is not below its beneath= directory")):
                    try:
                        q.execute("disk-move", {"disk": 0, "path": str(path),
                                                "beneath": str(under)})
                        raise AssertionError(f"disk-move to {path} was accepted")
                    except QMPError as e:
                        assert why in str(e) and str(path) in str(e), (path, e)
                assert not any(outside.iterdir()), "an image was made behind the link"
                assert not (tmp / "new.raw").exists()
                for args, why in (({"disk": 2, "path": str(target)}, "'disk'"),
                                  ({"disk": 1, "path": str(target)}, "read-only"),
                                  ({"disk": 0}, "'path'"),
                                  ({"disk": 0, "path": str(target),
                                    "bandwidth_mbps": -1}, "'bandwidth_mbps'"),
                                  ({"disk": 0, "path": str(target), "beneath": 7},
                                   "'beneath'")):
                    try:
                        q.execute("disk-move", args)
                        raise AssertionError(f"disk-move {args} was accepted")
                    except QMPError as e:
                        assert why in str(e), (args, e)
            finally:
                os.close(hfd)
            assert not target.exists(), "a symlink's target was created"
            assert existing.read_bytes() == b"keep me"
            assert held.read_bytes() == b"another VM's"
            assert q.cmd("query-disk-move") == {"status": "none"}
            try:
                q.cmd("disk-move-cancel")
                raise AssertionError("disk-move-cancel without a move succeeded")
            except QMPError as e:
                assert "no disk move" in str(e), e
            assert lock_state(old) == "write"
            q.cmd("quit")
            assert vm.wait_exit(30) == 0


def destination(disk, name):
    port = free_tcp_port()
    vm = VM(incoming=f"tcp:127.0.0.1:{port}", mem=128, disk=disk, name=name)
    wait_until(lambda: any(f":{port:04X}" in line.split()[1] and line.split()[3] == "0A"
                           for line in open("/proc/net/tcp").readlines()[1:]),
               30, "destination listening")
    return vm, f"tcp:127.0.0.1:{port}"


def migrate(q, uri):
    q.cmd("migrate", uri=uri)
    while True:
        ev = q.wait_event("MIGRATION", timeout=120)
        if ev["data"]["status"] in ("completed", "failed", "cancelled"):
            return ev["data"]


def test_migration_after_a_disk_move_names_the_new_image():
    with scratch() as tmp:
        old, mid, new = tmp / "old.raw", tmp / "mid.raw", tmp / "new.raw"
        make_image(old)
        records = 2 * RECORDS       # still logging when it migrates
        with logging_guest(old, "src", records) as src:
            wait_logging(src)
            q = src.qmp()
            for there in (mid, new):            # two moves: the second one frees
                q.cmd("disk-move", disk=0, path=str(there))     # the first's image
                assert wait_move(q)["status"] == "completed"
            assert lock_state(mid) == "unlocked"
            try:
                q.cmd("migrate", uri="tcp:127.0.0.1:9", disks="mirror")
                raise AssertionError("migrate with disks: mirror was accepted")
            except QMPError as e:
                assert "disks" in str(e) and "copy" in str(e), e
            stale, uri = destination(old, "dst-old")
            with stale:
                r = migrate(q, uri)
                assert r["status"] == "failed", r
                assert f"disk {new} is not attached on the destination" in r["error"], r
                assert "disk-move" in r["error"] and "disks: copy" in r["error"], r
                assert stale.wait_exit(30) != 0
            assert q.cmd("query-status")["status"] == "running"
            assert lock_state(new) == "write" and lock_state(old) == "unlocked"
            dst, uri = destination(new, "dst-new")
            with dst:
                r = migrate(q, uri)
                assert r["status"] == "completed", r
                q.cmd("quit")
                assert src.wait_exit(30) == 0
                dst.wait_for(r"^ft: disklog: seq \d+$", 30)    # the log goes on here
                assert_guest_log_ok(dst, records)
        host_check_log(new, records)
        host_check_data(new)


def ferry_img(*args, status=0):
    exe = BUILD / "ferry-img"
    require_file(exe, "ninja -C build")
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == status, (f"ferry-img {' '.join(map(str, args))}: status "
                                    f"{r.returncode}, want {status}\n{r.stdout}{r.stderr}")
    return r


def ferry_img_json(*args, status=0):
    return json.loads(ferry_img("--json", *args, status=status).stdout)


def test_ferry_img_create_info_check():
    with scratch() as tmp:
        image = tmp / "new.raw"
        ferry_img("create", image, "48M")
        assert os.path.getsize(image) == 48 * MIB and allocated(image) == 0
        r = ferry_img("create", image, "1G", status=1)
        assert "already exists" in r.stderr, r.stderr
        assert os.path.getsize(image) == 48 * MIB
        for bad in ("12X", "1000", "-5M", "0"):
            ferry_img("create", tmp / "bad.raw", bad, status=2)
        assert not (tmp / "bad.raw").exists()
        info = ferry_img_json("info", image)
        assert (info["size"], info["allocated_bytes"], info["lock"], info["holders"]) == (
            48 * MIB, 0, "none", []), info
        run = ["ft", "disklog", "/dev/vda", "--count", "1000", ";", "ft", "disklog-check",
               "/dev/vda", ";", "ft", "sleep", "600"]
        with VM(append=f"console=ttyS0 quiet ferry.run={','.join(run)}", mem=64,
                disk=image, name="img") as vm:
            vm.wait_for(r"^ft: disklog-check: 1000 records ok", BOOT)
            info = ferry_img_json("info", image)
            assert info["lock"] == "write", info
            assert [(h["pid"], h["command"], h["lock"]) for h in info["holders"]] == [
                (vm.pid, "ferry-vm", "write")], info
            assert 1000 * REC <= info["allocated_bytes"] < 4 * MIB, info
            text = ferry_img("info", image).stdout
            assert f"pid {vm.pid} (ferry-vm)" in text, text
            check = ferry_img_json("check", image)
            assert check["ok"] and any("in use" in n for n in check["notes"]), check
            vm.qmp().cmd("quit")
            assert vm.wait_exit(30) == 0
        assert ferry_img_json("info", image)["lock"] == "none"
        host_check_log(image, 1000)
        qcow = tmp / "q.img"
        qcow.write_bytes(b"QFI\xfb" + bytes(508))
        check = ferry_img_json("check", qcow, status=1)
        assert not check["ok"] and "qcow2" in check["problems"][0], check
        ragged = tmp / "r.img"
        ragged.write_bytes(bytes(1000))
        assert "sectors" in ferry_img("check", ragged, status=1).stdout
        r = ferry_img("info", tmp / "missing.raw", status=1)
        assert "No such file" in r.stderr, r.stderr
