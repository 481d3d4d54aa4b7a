"""What ferry-vm and ferry-img open on the host, and what they refuse.

A root ferry-vm opens `--disk` read-write and creates or truncates
`--console FILE`; a symlink planted at either path would hand it any file
(the /etc/passwd of the issue). What is proved, and how it would fail:
- `--disk` whose last component is a symlink is refused with one line on
  stderr and status 2, read-only too, and the file it points to is left
  as it was (bytes, mtime, no lock); so are a directory, FIFO, socket and
  character device, also reached through a link with `follow=on`. A FIFO
  must be refused, not waited on (ferry_vm's time limit);
- `,follow=on` takes a link to an image: the guest sees it, and stderr
  names the real path; as root, a /dev/disk/by-id-style link to a block
  device (a loop device) with `follow=on` is the guest's disk: what the
  guest writes is in the file behind the loop device, and the device's
  own path works too;
- `--console` that is a symlink is refused (status 2) and its target not
  truncated; a console file that exists is still truncated and written;
- a FIFO given as --kernel or --initrd is refused at once, not waited on
  for a writer (status 1, as a directory there);
- ferry-img check refuses a FIFO at once and notes that a symlink needs
  `follow=on`.
- ferryd refuses at its API a `DS:PATH` with a symlink below the
  datastore's directory (a directory link out of it, a disk or kernel
  that is a link), and the file out there is left as it was; a plain
  image in the datastore still starts, its ferry-vm given
  `beneath=<the datastore's directory>`;
- `--disk PATH,beneath=DIR`: a directory on the way below DIR that is a
  symlink (one swapped in after someone checked the path: the last
  component alone is no link) is refused by the open itself, and the
  file it leads to is left as it was; a path not below DIR, and
  beneath= with follow=on, are refused; DIR itself may be a link.

The refusals take no guest; each boot is a few seconds, the lab about ten.
"""

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from ferrylib import BUILD, need_root, need_tool
from test_vm import Scratch, boot_args, expect_refusal, ferry_vm, run_guest

TIMEOUT = 180
VICTIM = b"root:x:0:0:root:/root:/bin/bash\n"


def victim_state(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns


def special_files(tmp):
    """name -> (path, the refusal's words), and the victim file."""
    victim = tmp / "passwd"
    victim.write_bytes(VICTIM)
    (tmp / "link").symlink_to(victim)
    (tmp / "dangling").symlink_to(tmp / "nothing-here")
    os.mkfifo(tmp / "fifo")
    (tmp / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "sock"))
    (tmp / "link-to-fifo").symlink_to(tmp / "fifo")
    (tmp / "link-to-dir").symlink_to(tmp / "dir")
    cases = {
        "link": ("link", "is a symlink"),
        "link,ro": ("link", "is a symlink"),
        "dangling": ("dangling", "is a symlink"),
        "fifo": ("fifo", "is a FIFO"),
        "fifo,ro": ("fifo", "is a FIFO"),
        "dir": ("dir", "is a directory"),
        "sock": ("sock", "is a socket"),
        "link-to-fifo,follow=on": ("link-to-fifo", "is a FIFO"),
        "link-to-dir,follow=on,ro": ("link-to-dir", "is a directory"),
    }
    return victim, cases, sock


def test_disk_symlinks_and_special_files_are_refused():
    with Scratch() as tmp:
        victim, cases, sock = special_files(tmp)
        before = victim_state(victim)
        try:
            for spec, (name, words) in cases.items():
                res = ferry_vm(*boot_args("--disk", f"{tmp / spec}"))
                expect_refusal(res, 2, f"--disk {tmp / name}:", words)
            res = ferry_vm(*boot_args("--disk", "/dev/null"))
            expect_refusal(res, 2, "/dev/null", "is a character device")
            res = ferry_vm(*boot_args("--disk", f"{tmp / 'link'},follow=maybe"))
            expect_refusal(res, 2, "unknown option 'follow=maybe'")
        finally:
            sock.close()
        assert victim_state(victim) == before, "the symlink's target changed"


def test_beneath_refuses_a_directory_link_below_it():
    with Scratch() as tmp:
        ds, outside = tmp / "ds", tmp / "outside"
        (ds / "vm").mkdir(parents=True)
        outside.mkdir()
        victim = outside / "disk.raw"
        victim.write_bytes(VICTIM)
        before = victim_state(victim)
        (ds / "vm" / "disk.raw").write_bytes(bytes(1 << 16))
        (tmp / "ds-link").symlink_to(ds)
        res = ferry_vm(*boot_args("--disk", f"{ds / 'vm' / 'disk.raw'},beneath={ds}"))
        assert res.returncode == 0, res.stderr         # a plain path below DIR boots
        res = ferry_vm(*boot_args("--disk", f"{tmp / 'ds-link' / 'vm' / 'disk.raw'},"
                                  f"beneath={tmp / 'ds-link'}"))
        assert res.returncode == 0, res.stderr         # DIR itself may be a link
        (ds / "vm").rename(ds / "vm.old")
        (ds / "vm").symlink_to(outside)                # vm/ swapped for a link out
        res = ferry_vm(*boot_args("--disk", f"{ds / 'vm' / 'disk.raw'},beneath={ds}"))
        expect_refusal(res, 1, "has a symlink on the way below its beneath= directory")
        assert victim_state(victim) == before, "the file behind the link changed"
        res = ferry_vm(*boot_args("--disk", f"{victim},beneath={ds}"))
        expect_refusal(res, 2, "is not below its beneath= directory")
        res = ferry_vm(*boot_args("--disk", f"{ds / 'vm.old' / 'disk.raw'},beneath={ds},"
                                  "follow=on"))
        expect_refusal(res, 2, "beneath= and follow=on exclude each other")


def test_kernel_or_initrd_that_is_a_fifo_is_refused_not_waited_on():
    with Scratch() as tmp:
        os.mkfifo(tmp / "fifo")
        for args in (boot_args(kernel=tmp / "fifo"), boot_args(initrd=tmp / "fifo")):
            res = ferry_vm(*args)
            expect_refusal(res, 1, str(tmp / "fifo"), "not a regular file")


def test_follow_on_takes_a_link_to_an_image():
    with Scratch() as tmp:
        image = tmp / "real.raw"
        with open(image, "wb") as f:
            f.truncate(3 << 20)                 # 6144 sectors
        (tmp / "by-id").mkdir()
        link = tmp / "by-id" / "ferry-disk"
        link.symlink_to(image)
        status, console = run_guest(["ft", "cat", "/sys/block/vda/size"],
                                    disk=f"{link},follow=on", name="follow")
        assert status == 0, console[-2000:]
        assert "6144" in console.splitlines(), console[-2000:]
        assert f"disk {link}: follows the symlink to {image}" in console, console[-2000:]


@contextmanager
def loop_device(backing):
    """A loop device on backing (one we set up, and detach)."""
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)


def test_follow_on_reaches_a_block_device_behind_a_by_id_link():
    need_root("a loop device")
    need_tool("losetup", "mount")
    with Scratch() as tmp:
        backing = tmp / "backing.raw"
        with open(backing, "wb") as f:
            f.truncate(2 << 20)
        with loop_device(backing) as dev:
            link = tmp / "by-id" / "virtio-ferry-test"
            link.parent.mkdir()
            link.symlink_to(dev)
            res = ferry_vm(*boot_args("--disk", link))
            expect_refusal(res, 2, str(link), "is a symlink", "follow=on")
            status, console = run_guest(["ft", "disklog", "/dev/vda", "--count", "8", ";",
                                         "ft", "disklog-check", "/dev/vda"],
                                        disk=f"{link},follow=on", name="by-id")
            assert status == 0, console[-2000:]
            assert "ft: disklog-check: 8 records ok" in console, console[-2000:]
            assert f"follows the symlink to {dev}" in console, console[-2000:]
            # the device's own path, as before
            status, console = run_guest(["ft", "disklog-check", "/dev/vda"],
                                        disk=f"{dev},ro", name="blockdev")
            assert status == 0 and "8 records ok" in console, console[-2000:]
        assert backing.read_bytes()[:8] == b"FERRYLOG", "the guest's log is not in the file"


def test_console_symlink_is_refused_and_its_target_kept():
    with Scratch() as tmp:
        victim = tmp / "passwd"
        victim.write_bytes(VICTIM)
        link = tmp / "console.log"
        link.symlink_to(victim)
        before = victim_state(victim)
        res = ferry_vm(*boot_args("--console", link))
        expect_refusal(res, 2, f"--console {link}:", "is a symlink")
        assert victim_state(victim) == before, "the console's symlink target changed"
        link.unlink()
        link.write_bytes(b"an old console log that is longer than the new one\n" * 4000)
        res = ferry_vm(*boot_args("--console", link, "--append",
                                  "console=ttyS0 quiet ferry.run=ft,echo,fresh"))
        assert res.returncode == 0, res.stderr
        text = link.read_text()
        assert "fresh" in text and "old console log" not in text, text[-2000:]


def test_ferry_img_check_refuses_a_fifo_and_notes_a_link():
    with Scratch() as tmp:
        victim, cases, sock = special_files(tmp)
        sock.close()
        img = str(BUILD / "ferry-img")
        res = subprocess.run([img, "check", str(tmp / "fifo")], capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 1 and "not a regular file" in res.stderr, res
        res = subprocess.run([img, "check", str(tmp / "link")], capture_output=True,
                             text=True, timeout=30)
        assert f"--disk {tmp / 'link'},follow=on" in res.stdout + res.stderr, res


def ferry_vm_disk_args(disk):
    """The --disk arguments of the running ferry-vm whose disk is disk."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = (Path("/proc") / pid / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("ferry-vm"):
            disks = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--disk"]
            if any(d.split(",")[0] == disk for d in disks):
                return disks
    return []


def test_ferryd_refuses_a_symlink_on_the_way_in_a_datastore():
    """ferryd passes no follow=on: a disk, kernel or directory in a
    datastore that is a symlink is refused at the API (400, naming it),
    before any ferry-vm runs, so a directory link cannot lead a request
    out of the datastore (the last component alone is ferry-vm's check)."""
    from test_cluster import Lab
    with Scratch() as outside, Lab(hosts=1) as lab:
        victim = outside / "victim.raw"
        victim.write_bytes(VICTIM)
        before = victim_state(victim)
        shared = lab.dir / "shared"
        (shared / "escape").symlink_to(outside)
        (shared / "disk.raw").write_bytes(bytes(1 << 20))
        (shared / "disk-link.raw").symlink_to(shared / "disk.raw")
        (shared / "Image-link").symlink_to(shared / "Image")
        base = {"kernel": "shared:Image", "initrd": "shared:initrd.img", "mem_mib": 64,
                "host": "h1"}
        for name, change, link in (
                ("esc", {"disks": ["shared:escape/victim.raw"]}, shared / "escape"),
                ("lnk", {"disks": ["shared:disk-link.raw,ro"]}, shared / "disk-link.raw"),
                ("krn", {"kernel": "shared:Image-link"}, shared / "Image-link")):
            s, d = lab.http("POST", "/api/v1/vms", dict(base, name=name, **change))
            assert s == 400, (name, s, d)
            assert "is a symlink" in d["error"]["message"], d
            assert str(link) in d["error"]["message"], d
        assert victim_state(victim) == before
        s, d = lab.http("POST", "/api/v1/vms", dict(base, name="ok", disks=["shared:disk.raw"]))
        assert s in (200, 201, 202), (s, d)
        disk = str(shared / "disk.raw")
        deadline = time.monotonic() + 60
        while not (args := ferry_vm_disk_args(disk)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert args == [f"{disk},beneath={shared}"], args
