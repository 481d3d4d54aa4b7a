"""ferry-vm as a user meets it: boot, disks, network, consoles, bad input.

Each test starts real ferry-vm processes with the guest image
(build/guest/Image and initrd.img) and judges them only by what a user
sees: the console, the exit status, the files on the host, packets from
another network namespace, and the one line on stderr when something is
wrong. The guest's /init runs `ferry.run=` (`,` is a space, a lone `;`
separates commands) and then powers off (exit 0) or, when a command
failed, resets (exit 1). Markers that a test looks for on the console are
chosen so that the kernel's echo of its own command line cannot match
them (the command line has commas where the output has spaces).

What is proved here, and how it would fail:
- boot with 1 and 4 harts: the command's output and status 0, and the
  guest counts the harts it was given; a failing command gives status 1
  and stops the sequence;
- disks: an ext2 image made on the host is written by one boot and read
  back by the next (and is clean for e2fsck); a `,ro` disk is read-only to
  the guest and its image file stays byte for byte the same; a second
  ferry-vm cannot open an image another one is writing;
- network: a guest on a TAP in one namespace answers ping and a TCP echo
  from another namespace, under the MAC given on the command line;
- virtio-rng is the guest's hardware RNG; the guest prints through the SBI
  console (hvc0) and through the virtio-console (hvc1);
- bad input (missing or wrong kernel, missing disk, an initrd too large for
  --mem, bad arguments) ends at once with one clear line on stderr and
  status 1 (cannot run) or 2 (bad argument), never a crash or a boot.

Malformed control requests are tested in test_control.py.
"""

import hashlib
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from ferrylib import (FERRY_VM, GUEST_IMAGE, GUEST_INITRD, Skip, VM, need_root,
                      need_tool, require_file)

TIMEOUT = 240
BOOT = 120          # seconds for a boot to reach its end (power-off or reset)
DISK_MIB = 32


# ---- helpers ----------------------------------------------------------------

def run_guest(run, smp=None, mem=None, disk=None, console="ttyS0", quiet=True, name="vm"):
    """Boots the guest with ferry.run=run (a list of words; ";" separates
    commands) and waits for it to end. Returns (exit status, console)."""
    append = f"console={console}" + (" quiet" if quiet else "")
    append += " ferry.run=" + ",".join(run)
    with VM(append=append, smp=smp, mem=mem, disk=disk, control=False, name=name) as vm:
        status = vm.wait_exit(BOOT)
        return status, vm.console()


def expect_lines(console, *lines):
    """Each of lines is a whole line of the console."""
    for line in lines:
        assert re.search("^" + re.escape(line) + "$", console, re.MULTILINE), (
            f"the console has no line {line!r}; last lines:\n{tail(console)}")


def tail(text, n=30):
    return "\n".join(text.splitlines()[-n:])


def ferry_vm(*args, timeout=30):
    """Runs ferry-vm with args (no console) and returns the CompletedProcess.
    One that is still running at timeout took input it should have refused."""
    require_file(FERRY_VM, "ninja -C build")
    cmd = [str(FERRY_VM), *[str(a) for a in args]]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(cmd)}: still running after {timeout} s "
                             f"instead of refusing its input; stderr: {e.stderr!r}") from None


def expect_refusal(res, status, *words):
    """ferry-vm ended with status, printed nothing on stdout and exactly one
    line on stderr, "ferry-vm: ...", that contains every one of words."""
    what = f"{' '.join(res.args[1:])}"
    assert res.returncode == status, (
        f"{what}: exit status {res.returncode}, want {status}; stderr:\n{res.stderr}")
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and res.stderr.endswith("\n"), (
        f"{what}: want one line on stderr, got {len(lines)}:\n{res.stderr}")
    assert lines[0].startswith("ferry-vm: "), f"{what}: {lines[0]!r}"
    for word in words:
        assert word in lines[0], f"{what}: {lines[0]!r} does not mention {word!r}"
    assert res.stdout == "", f"{what}: unexpected stdout {res.stdout!r}"
    return lines[0]


def boot_args(*more, kernel=GUEST_IMAGE, initrd=GUEST_INITRD):
    """A complete command line for a guest that would run (and, by
    ferry.run, power off at once), plus more."""
    args = ["--kernel", kernel]
    if initrd:
        args += ["--initrd", initrd]
    return args + ["--append", "console=ttyS0 quiet ferry.run=ft,true",
                   "--console", "none", *more]


def make_ext2(path, mib=DISK_MIB):
    need_tool("mkfs.ext2", "e2fsprogs")
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(path)], check=True,
                   capture_output=True)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Scratch:
    """A temporary directory for disk images and bad kernels."""

    def __enter__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="ferry-test-vm-")
        return Path(self._tmp.name)

    def __exit__(self, *exc):
        self._tmp.cleanup()


# ---- boot and ferry.run ------------------------------------------------------

def test_boot_runs_a_command_with_one_hart():
    status, console = run_guest(["ft", "echo", "hello", "from", "ferry", ";",
                                 "ft", "cat", "/sys/devices/system/cpu/online"])
    expect_lines(console, "hello from ferry", "0", "ferry-init: power off")
    assert status == 0, f"exit status {status} after a power-off:\n{tail(console)}"


def test_boot_with_four_harts_sees_four_cpus():
    status, console = run_guest(["ft", "cat", "/sys/devices/system/cpu/online", ";",
                                 "ft", "cat", "/proc/cpuinfo"], smp=4)
    assert status == 0, f"exit status {status}:\n{tail(console)}"
    expect_lines(console, "0-3")
    harts = sorted(set(re.findall(r"^hart\s*:\s*(\d+)$", console, re.MULTILINE)))
    assert harts == ["0", "1", "2", "3"], f"/proc/cpuinfo lists harts {harts}:\n{console}"


def test_failing_command_resets_and_exits_1():
    status, console = run_guest(["ft", "echo", "before", "the", "failure", ";",
                                 "ft", "false", ";",
                                 "ft", "echo", "never", "printed"])
    expect_lines(console, "before the failure", "ferry-init: exit 1",
                 "ferry-init: reset (a command failed)")
    assert "never printed" not in console, "the sequence went on after a failure"
    assert status == 1, f"exit status {status} after a guest reset, want 1:\n{tail(console)}"


# ---- disks ------------------------------------------------------------------

def test_ext2_disk_keeps_a_file_across_boots():
    with Scratch() as tmp:
        image = tmp / "disk.ext2"
        make_ext2(image)
        mount = ["ft", "mount", "/dev/vda", "/mnt", "ext2", ";"]
        status, console = run_guest(mount + ["ft", "writefile", "/mnt/data", "4", "1234",
                                             ";", "ft", "sync", ";", "ft", "umount", "/mnt"],
                                    disk=str(image), name="writer")
        assert status == 0, f"writing boot: exit status {status}:\n{tail(console)}"
        expect_lines(console, "ok")

        # the host sees a clean file system holding the file
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, f"e2fsck after the guest unmounted:\n{fsck.stdout}"
        stat = subprocess.run(["debugfs", "-R", "stat /data", str(image)],
                              capture_output=True, text=True)
        assert re.search(r"Size: 4194304\b", stat.stdout), (
            f"debugfs does not see a 4 MiB /data:\n{stat.stdout}{stat.stderr}")

        # a second boot reads it back; the wrong seed proves checkfile checks
        status, console = run_guest(mount + ["ft", "checkfile", "/mnt/data", "4", "1234",
                                             ";", "ft", "checkfile", "/mnt/data", "4", "99"],
                                    disk=str(image), name="reader")
        expect_lines(console, "ok", "ft: checkfile /mnt/data: bad data at offset 0")
        assert status == 1, f"reading boot: exit status {status}:\n{tail(console)}"


def test_readonly_disk_refuses_writes():
    with Scratch() as tmp:
        image = tmp / "disk.ext2"
        make_ext2(image)
        before = sha256(image)
        status, console = run_guest(["ft", "cat", "/sys/block/vda/ro", ";",
                                     "ft", "disklog", "/dev/vda", "--count", "8"],
                                    disk=f"{image},ro")
        expect_lines(console, "1")      # the guest knows the disk is read-only
        assert re.search(r"^ft: disklog: (cannot open /dev/vda|write of seq 0)",
                         console, re.MULTILINE), (
            f"the guest wrote to a read-only disk:\n{tail(console)}")
        assert status == 1, f"exit status {status}, want 1:\n{tail(console)}"
        assert sha256(image) == before, "a read-only disk image changed"


def test_second_vm_cannot_open_an_image_in_use():
    with Scratch() as tmp:
        image = tmp / "shared.ext2"
        make_ext2(image, mib=8)
        with VM(disk=str(image), name="owner") as owner:
            owner.qmp()         # served once the machine (and its disk) is built
            for spec in (str(image), f"{image},ro"):
                res = ferry_vm(*boot_args("--disk", spec))
                line = expect_refusal(res, 1, str(image))
                assert "in use" in line or "locked" in line, line
            assert owner.running(), f"the owner ended:\n{owner.tail()}"
        # the lock went with the owner: the image can be used again
        status, console = run_guest(["ft", "true"], disk=str(image), name="next")
        assert status == 0, f"exit status {status} after the owner ended:\n{tail(console)}"


# ---- network ----------------------------------------------------------------

ECHO_CLIENT = r"""
import os, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
data = os.urandom(300000)
for attempt in range(100):
    try:
        s = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("cannot connect to %s:%d" % (host, port))
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray()
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
t.join()
if bytes(got) != data:
    sys.exit("echo differs: sent %d bytes, got %d back" % (len(data), len(got)))
print("echoed %d bytes" % len(got))
"""


def test_guest_on_a_tap_answers_ping_and_tcp():
    need_root("network namespaces and TAP devices")
    need_tool("ping", "iputils-ping")
    import topology
    if not topology.available():
        raise Skip("cannot create network namespaces here")
    mac = "52:54:00:ab:cd:42"
    with topology.Topology(hosts=("a",)) as topo:
        append = (f"console=ttyS0 quiet ferry.ip={topo.guest_ip}/24 "
                  "ferry.run=tcpserve,--echo,--port,7000")
        with VM(append=append, net=f"tap=tap0,mac={mac}", control=False,
                prefix=["ip", "netns", "exec", topo.hosts["a"]]) as vm:
            vm.wait_for(r"^tcpserve: listening on port 7000", BOOT)
            ping = subprocess.run(["ip", "netns", "exec", topo.client, "ping", "-n",
                                   "-c", "3", "-w", "60", topo.guest_ip],
                                  capture_output=True, text=True)
            assert ping.returncode == 0, f"ping {topo.guest_ip}:\n{ping.stdout}{ping.stderr}"
            neigh = topology.sh("ip", "neigh", "show", topo.guest_ip, ns=topo.client)
            assert mac in neigh.lower(), f"the guest answered as {neigh!r}, not {mac}"

            echo = subprocess.run(["ip", "netns", "exec", topo.client, sys.executable,
                                   "-c", ECHO_CLIENT, topo.guest_ip, "7000"],
                                  capture_output=True, text=True, timeout=120)
            assert echo.returncode == 0, f"TCP echo: {echo.stdout}{echo.stderr}"
            vm.wait_for(r"^tcpserve: .* closed after 300000 bytes", 60)
            assert vm.running(), vm.tail()


# ---- virtio-rng and consoles ------------------------------------------------

def test_virtio_rng_is_the_hardware_rng():
    status, console = run_guest(["ft", "cat", "/sys/class/misc/hw_random/rng_current"])
    assert status == 0, f"exit status {status}:\n{tail(console)}"
    assert re.search(r"^virtio_rng\.\d+$", console, re.MULTILINE), (
        f"rng_current does not name virtio_rng:\n{tail(console)}")


def test_sbi_console_hvc0_prints():
    """hvc0 is the SBI console (the kernel's hvc_riscv_sbi claims index 0)."""
    status, console = run_guest(["ft", "echo", "on", "hvc0", ";",
                                 "ft", "cat", "/proc/consoles"], console="hvc0", quiet=False)
    assert status == 0, f"exit status {status}:\n{tail(console)}"
    expect_lines(console, "on hvc0")
    assert re.search(r"^hvc0 .*229:0$", console, re.MULTILINE), console
    assert "Linux version" in console, "kernel messages missing on hvc0"


def test_virtio_console_hvc1_prints():
    """The virtio-console is the guest's hvc1, on the same output as the UART."""
    status, console = run_guest(["ft", "echo", "on", "virtio", "console", ";",
                                 "ft", "cat", "/proc/consoles", ";",
                                 "ft", "cat", "/sys/bus/virtio/drivers/virtio_console/"
                                 "virtio0/device"], console="hvc1", quiet=False)
    assert status == 0, f"exit status {status}:\n{tail(console)}"
    expect_lines(console, "on virtio console", "0x0003")
    assert re.search(r"^hvc1 .*229:1$", console, re.MULTILINE), (
        f"/proc/consoles does not list hvc1:\n{tail(console)}")


# ---- bad input --------------------------------------------------------------

def test_missing_kernel_file():
    with Scratch() as tmp:
        missing = tmp / "no-such-Image"
        expect_refusal(ferry_vm(*boot_args(kernel=missing)), 1, str(missing),
                       "No such file")


def elf_vmlinux_like():
    """The first bytes of a riscv64 ELF executable, as vmlinux starts."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = struct.pack("<HHIQQQIHHHHHH", 2, 243, 1, 0xffffffff80000000, 64, 0,
                         0x5, 64, 56, 0, 64, 0, 0)
    return ident + header + bytes(4096)


def test_kernel_that_is_not_an_image():
    with Scratch() as tmp:
        real = GUEST_IMAGE.read_bytes()
        bad = {
            "text": b"this is not a kernel\n",
            "vmlinux": elf_vmlinux_like(),
            "empty": b"",
            "header-cut": real[:60],        # ends inside the 64-byte header
            "no-magic": real[:48] + bytes(16) + real[64:4096],
        }
        for name, data in bad.items():
            path = tmp / name
            path.write_bytes(data)
            line = expect_refusal(ferry_vm(*boot_args(kernel=path)), 2, str(path))
            assert "Image" in line, f"{name}: {line!r} does not say what it wants"
        expect_refusal(ferry_vm(*boot_args(kernel=tmp)), 1, str(tmp))


def test_missing_disk():
    with Scratch() as tmp:
        missing = tmp / "no-such-disk.img"
        expect_refusal(ferry_vm(*boot_args("--disk", missing)), 1, str(missing),
                       "No such file")
        expect_refusal(ferry_vm(*boot_args("--disk", f"{missing},ro")), 1, str(missing))


def test_initrd_too_large_for_memory():
    with Scratch() as tmp:
        big = tmp / "big.initrd"
        with open(big, "wb") as f:
            f.truncate(48 << 20)            # sparse: costs no disk
        expect_refusal(ferry_vm(*boot_args("--mem", "32", initrd=big)), 1, str(big),
                       "--mem")
        missing = tmp / "no-such.initrd"
        expect_refusal(ferry_vm(*boot_args(initrd=missing)), 1, str(missing))


BAD_ARGUMENTS = [
    (["--smp", "0"], "--smp"),
    (["--smp", "9"], "--smp"),
    (["--smp", "2x"], "--smp"),
    (["--mem", "abc"], "--mem"),
    (["--mem", "8"], "--mem"),
    (["--mem", "-256"], "--mem"),
    (["--net", "mac=52:54:00:12:34:56"], "tap="),
    (["--net", "tap=tap0,mac=zz"], "MAC"),
    (["--no-such-option"], "--no-such-option"),
    (["--disk", "x,rw"], "rw"),
    (["--disk", ",ro"], "--disk"),
    (["--incoming", "ftp:host"], "--incoming"),
    (["-x"], "-x"),
    (["-xy"], "-x"),
    (["--help=3"], "--help"),
    (["stray-argument"], "stray-argument"),
    (["--append"], ("--append", "argument")),   # its argument is missing
]


def test_bad_arguments_exit_2():
    for args, words in BAD_ARGUMENTS:
        words = (words,) if isinstance(words, str) else words
        expect_refusal(ferry_vm(*boot_args(), *args), 2, *words)
    expect_refusal(ferry_vm("--console", "none"), 2, "--kernel")


def test_help_and_version():
    res = ferry_vm("--help")
    assert res.returncode == 0 and res.stderr == "", res
    assert res.stdout.startswith("usage: ferry-vm"), res.stdout
    for option in ("--kernel", "--initrd", "--append", "--mem", "--smp", "--disk",
                   "--net", "--control", "--incoming", "--console", "--version"):
        assert option in res.stdout, f"--help does not mention {option}:\n{res.stdout}"
    res = ferry_vm("--version")
    assert res.returncode == 0 and res.stderr == "", res
    assert re.fullmatch(r"ferry-vm \d+\.\d+\.\d+\n", res.stdout), repr(res.stdout)
