"""Differential CPU tests: the same riscv64 programs, guest against QEMU.

The programs in tests/diff/ print lines that depend only on the RISC-V ISA
(results, flags, traps). Each one runs twice:

- on the host under qemu-riscv64-static, which is the oracle, and
- inside a ferry guest: guest/mkinitrd.sh adds the program to an initramfs
  as /bin/PROG, ferry-vm boots the guest kernel with ferry.run=/bin/PROG,
  and the program's output is cut out of the console log between its
  "@@ferry-diff begin/end PROG" markers.

The two must match line for line; a mismatch fails with the first
differing lines and some context. Nothing is stored as "expected": QEMU is
asked afresh each run. The atomics program runs with one hart and with four.

Plain test_* functions for tests/run (ferrylib's conventions): a missing
host tool is a Skip, a missing ferry build product is a failure.

FERRY_DIFF_VMM=qemu-system runs the guest under qemu-system-riscv64 instead
of ferry-vm: a check of the harness and of the guest image themselves.
FERRY_DIFF_TIMEOUT (seconds, default 540) bounds one guest run;
FERRY_DIFF_KERNEL and FERRY_DIFF_MKINITRD point at another guest kernel or
initramfs script, to try the programs on a kernel of one's own.
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ferrylib import (BUILD, FERRY_VM, GUEST_IMAGE, REPO, VM,  # noqa: E402
                      need_tool, require_file, tail)

KERNEL = Path(os.environ.get("FERRY_DIFF_KERNEL") or GUEST_IMAGE)
MKINITRD = Path(os.environ.get("FERRY_DIFF_MKINITRD") or REPO / "guest" / "mkinitrd.sh")
DIFF_SRC = REPO / "tests" / "diff"
DIFF_BIN = BUILD / "diff"
VMM = os.environ.get("FERRY_DIFF_VMM", "ferry-vm")
GUEST_TIMEOUT = int(os.environ.get("FERRY_DIFF_TIMEOUT", "540"))
TIMEOUT = GUEST_TIMEOUT + 120   # tests/run's limit for one test of this file

PROGRAMS = ["int", "muldiv", "fp", "atomics", "misaligned", "csr", "code"]
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\]")
CONTEXT = 3


# ---- slicing and comparing -------------------------------------------------

def program_lines(log, prog):
    """The lines between PROG's markers, markers included.

    Carriage returns from the serial console are dropped, and so are kernel
    messages ("[  1.234] ...") that landed between two of the program's
    lines. Returns None when either marker is missing.
    """
    begin, end = f"@@ferry-diff begin {prog}", f"@@ferry-diff end {prog}"
    lines = [line.rstrip("\r") for line in log.replace("\r\n", "\n").split("\n")]
    try:
        first = lines.index(begin)
        last = lines.index(end, first)
    except ValueError:
        return None
    return [line for line in lines[first:last + 1]
            if not KERNEL_LINE.match(line)]


def first_difference(expected, actual):
    """A readable report of where two line lists part, or None if equal."""
    if expected == actual:
        return None
    n = min(len(expected), len(actual))
    at = next((i for i in range(n) if expected[i] != actual[i]), n)
    out = [f"first difference at line {at + 1} "
           f"(qemu has {len(expected)} lines, guest has {len(actual)}):"]
    for i in range(max(0, at - CONTEXT),
                   min(at + CONTEXT + 1, max(len(expected), len(actual)))):
        e = expected[i] if i < len(expected) else "<end of output>"
        a = actual[i] if i < len(actual) else "<end of output>"
        mark = "  " if e == a else "!!"
        out.append(f"{mark} {i + 1:5d} qemu : {e}")
        if e != a:
            out.append(f"{mark} {i + 1:5d} guest: {a}")
    later = sum(1 for i in range(at, n) if expected[i] != actual[i])
    out.append(f"{later} differing lines in the common part")
    return "\n".join(out)


# ---- building and running --------------------------------------------------

_built = False


def build_programs():
    """Builds tests/diff into build/diff once per run (make is incremental)."""
    global _built
    need_tool("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu")
    need_tool("make", "make")
    if not _built:
        res = subprocess.run(["make", "-s", "-C", str(DIFF_SRC), f"OUT={DIFF_BIN}"],
                             capture_output=True, text=True)
        assert res.returncode == 0, (
            f"building tests/diff failed (make -C tests/diff):\n{res.stdout}{res.stderr}")
        _built = True
    return DIFF_BIN


def run_qemu_user(binary):
    """The program's whole output under qemu-riscv64-static."""
    need_tool("qemu-riscv64-static", "qemu-user-static")
    res = subprocess.run(["qemu-riscv64-static", str(binary)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, (
        f"{binary.name} exited {res.returncode} under qemu-riscv64-static:\n{res.stderr}")
    return res.stdout


def make_initrd(binary, prog, workdir):
    require_file(MKINITRD, "it comes with the guest image (guest/)")
    out = Path(workdir) / f"{prog}.img"
    res = subprocess.run([str(MKINITRD), str(out), f"{binary}:/bin/{prog}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (
        f"guest/mkinitrd.sh failed for {prog}:\n{res.stdout}{res.stderr}")
    return out


def append_for(prog):
    return f"console=ttyS0 quiet ferry.run=/bin/{prog}"


def run_ferry(initrd, prog, smp, cpu=None):
    """Boots ferry-vm (with FERRY_CPU=cpu when given); returns (exit
    status, console log, command)."""
    require_file(FERRY_VM, "ninja -C build")
    require_file(KERNEL, "make guest")
    env = dict(os.environ, FERRY_CPU=cpu) if cpu else None
    with VM(kernel=KERNEL, initrd=initrd, append=append_for(prog), smp=smp,
            control=False, name=f"diff-{prog}", env=env) as vm:
        status = vm.wait_exit(GUEST_TIMEOUT)
        return status, vm.console(), " ".join(vm.cmd)


def run_qemu_system(initrd, prog, smp):
    """Boots the same guest under qemu-system-riscv64 (FERRY_DIFF_VMM)."""
    need_tool("qemu-system-riscv64", "qemu-system-misc")
    require_file(KERNEL, "make guest")
    cmd = ["qemu-system-riscv64", "-M", "virt", "-nographic", "-bios", "default",
           "-m", "512", "-smp", str(smp), "-no-reboot", "-kernel", str(KERNEL),
           "-initrd", str(initrd), "-append", append_for(prog)]
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=GUEST_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"qemu-system-riscv64 still running after {GUEST_TIMEOUT} s; "
                           f"last lines:\n{tail((e.stdout or b'').decode(errors='replace'))}")
    log = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    return res.returncode, log, " ".join(cmd)


def compare_in_guest(prog, smp=1, cpu=None):
    """Runs prog under QEMU and in the guest (ferry-vm's CPU as FERRY_CPU
    says, or the default); fails on any difference."""
    binary = build_programs() / prog
    expected = program_lines(run_qemu_user(binary), prog)
    assert expected is not None, f"{prog}: markers missing in QEMU's output"
    with tempfile.TemporaryDirectory(prefix=f"ferry-diff-{prog}-") as work:
        initrd = make_initrd(binary, prog, work)
        if VMM == "qemu-system":
            status, log, cmd = run_qemu_system(initrd, prog, smp)
        else:
            status, log, cmd = run_ferry(initrd, prog, smp, cpu)
    actual = program_lines(log, prog)
    assert actual is not None, (
        f"{prog}: markers not found on the guest console (exit status {status})\n"
        f"command: {cmd}\nlast lines:\n{tail(log)}")
    diff = first_difference(expected, actual)
    assert diff is None, (f"{prog} (--smp {smp}{', FERRY_CPU=' + cpu if cpu else ''}) "
                          f"differs from QEMU\n{diff}")
    assert status == 0, (
        f"{prog}: output matched but the VM exited with status {status}\n"
        f"command: {cmd}\nlast lines:\n{tail(log)}")


# ---- tests -----------------------------------------------------------------

def test_diff_int():
    compare_in_guest("int")


def test_diff_muldiv():
    compare_in_guest("muldiv")


def test_diff_fp():
    compare_in_guest("fp")


def test_diff_atomics():
    compare_in_guest("atomics", smp=1)


def test_diff_atomics_smp4():
    compare_in_guest("atomics", smp=4)


def test_diff_misaligned():
    compare_in_guest("misaligned")


def test_diff_csr():
    compare_in_guest("csr")


def test_diff_code():
    """Self-modifying code, traps inside runs of decoded code, page ends."""
    compare_in_guest("code")


def test_diff_code_smp2():
    """The same, with code rewritten on one hart and run on the other."""
    compare_in_guest("code", smp=2)


# ---- the same with the decoded executor alone (FERRY_CPU=decoded) ------------
# The tests above run the default executor, the JIT (src/cpu/jit.c), or the
# one FERRY_CPU names (make test runs them again under FERRY_CPU=interp).

def test_diff_int_decoded():
    compare_in_guest("int", cpu="decoded")


def test_diff_muldiv_decoded():
    compare_in_guest("muldiv", cpu="decoded")


def test_diff_fp_decoded():
    compare_in_guest("fp", cpu="decoded")


def test_diff_atomics_smp4_decoded():
    compare_in_guest("atomics", smp=4, cpu="decoded")


def test_diff_misaligned_decoded():
    compare_in_guest("misaligned", cpu="decoded")


def test_diff_csr_decoded():
    compare_in_guest("csr", cpu="decoded")


def test_diff_code_decoded():
    compare_in_guest("code", cpu="decoded")


def test_diff_code_smp2_decoded():
    compare_in_guest("code", smp=2, cpu="decoded")


def test_diff_qemu_is_deterministic():
    """Two runs under QEMU agree and carry both markers: the oracle is sound."""
    bins = build_programs()
    for prog in PROGRAMS:
        first = run_qemu_user(bins / prog)
        second = run_qemu_user(bins / prog)
        lines = program_lines(first, prog)
        assert lines is not None, f"{prog}: markers missing in QEMU's output"
        assert len(lines) > 50, f"{prog}: only {len(lines)} lines of output"
        assert first == second, (f"{prog}: two QEMU runs differ\n"
                                 + first_difference(first.splitlines(),
                                                    second.splitlines()))


def test_diff_comparison_catches_a_difference():
    """The slicer and comparator report a one-line change, a short output
    and a missing marker; otherwise the guest tests could pass vacuously."""
    log = ("[    0.1] boot\r\nferry-init: run: /bin/x\r\n@@ferry-diff begin x\r\n"
           "a 1\r\n[    0.2] kernel chatter\r\nb 2\r\nc 3\r\n"
           "@@ferry-diff end x\r\nferry-init: exit 0\r\n")
    good = program_lines(log, "x")
    assert good == ["@@ferry-diff begin x", "a 1", "b 2", "c 3", "@@ferry-diff end x"]
    assert first_difference(good, list(good)) is None
    changed = good[:2] + ["b 3"] + good[3:]
    report = first_difference(good, changed)
    assert report and "line 3" in report and "b 3" in report
    assert first_difference(good, good[:3]) is not None
    assert program_lines(log.replace("@@ferry-diff end x", ""), "x") is None

