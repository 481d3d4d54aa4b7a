"""benchlib - what the ferry benchmarks share (Python 3 standard library).

The benchmarks in bench/ run the same guest (build/guest/Image and an
initramfs) under ferry-vm and under QEMU (qemu-system-riscv64 -M virt
-bios default, TCG) one after the other in the same run, and print the
figures side by side with their ratio. This module holds:

- paths and the commands for both machines (ferry_cmd, qemu_cmd), built
  so that the two see the same kernel, initramfs, command line, RAM and
  harts;
- run_console(): start a machine with its console on a pipe, time every
  console line against the moment the process was started, stop at a time
  limit, and return the lines, their times and the exit status;
- a QMP client (ferrylib's, from tests/integration: ferry-vm's control
  socket and QEMU's QMP speak the same protocol);
- the machine description printed at the top of a run, median(), and a
  plain-text table printer.

Timings are only printed, never asserted: the host is shared, so figures
move with its load (printed with the machine description).
"""

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

import ferrylib  # noqa: E402  (after the path is set)
from ferrylib import QMP, QMPError, free_tcp_port, wait_until  # noqa: E402,F401

BUILD = ferrylib.BUILD
FERRY_VM = ferrylib.FERRY_VM
IMAGE = ferrylib.GUEST_IMAGE
INITRD = ferrylib.GUEST_INITRD
OUT = BUILD / "bench"
QEMU_SYSTEM = "qemu-system-riscv64"
QEMU_USER = "qemu-riscv64-static"
CROSS_CC = "riscv64-linux-gnu-gcc"
# extra qemu-system arguments for every QEMU run, e.g. "-accel tcg,thread=single"
QEMU_EXTRA = os.environ.get("BENCH_QEMU_ARGS", "").split()


class BenchError(Exception):
    """Something the benchmark needs is missing or broken; the message
    says what and how to fix it."""


# ---- preconditions ----------------------------------------------------------

def need_file(path, how):
    if not Path(path).exists():
        raise BenchError(f"{path} is missing: {how}")


def need_program(name, package):
    if not shutil.which(name):
        raise BenchError(f"{name} is not installed: apt-get install -y {package}")


def need_guest():
    """ferry-vm, the guest image and QEMU must all be there."""
    need_file(FERRY_VM, "build it with `ninja -C build`")
    need_file(IMAGE, "build the guest with `make guest`")
    need_file(INITRD, "build the guest with `make guest`")
    need_program(QEMU_SYSTEM, "qemu-system-misc")


# ---- the two machines -------------------------------------------------------

def ferry_cmd(append, mem=256, smp=1, initrd=None, control=None, incoming=None):
    """ferry-vm booting the guest (or, with incoming, waiting for one),
    console on stdout."""
    cmd = [str(FERRY_VM), "--mem", str(mem), "--smp", str(smp)]
    if incoming:
        cmd += ["--incoming", incoming]
    else:
        cmd += ["--kernel", str(IMAGE), "--initrd", str(initrd or INITRD),
                "--append", append]
    if control:
        cmd += ["--control", str(control)]
    return cmd + ["--console", "stdio"]


def qemu_cmd(append, mem=256, smp=1, initrd=None, qmp=None, incoming=None):
    """QEMU's virt machine with OpenSBI (-bios default) booting the same
    kernel and initramfs, serial console on stdout, no monitor; a guest
    reset ends the process (-no-reboot), as in ferry-vm."""
    cmd = [QEMU_SYSTEM, "-M", "virt", "-bios", "default", "-m", str(mem),
           "-smp", str(smp), "-display", "none", "-monitor", "none",
           "-serial", "stdio", "-no-reboot",
           "-kernel", str(IMAGE), "-initrd", str(initrd or INITRD),
           "-append", append]
    if qmp:
        cmd += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        cmd += ["-incoming", incoming]
    return cmd + QEMU_EXTRA


# ---- a timed run with the console on a pipe ---------------------------------

class ConsoleRun:
    """What run_console() saw: lines (text), times[i] (seconds from the
    start of the process to the moment line i was read), exit_s (to the
    end of the process, None if it was killed at the limit) and status."""

    def __init__(self):
        self.lines = []
        self.times = []
        self.exit_s = None
        self.status = None
        self.timed_out = False

    def first(self, regex):
        """(time, match) of the first line matching regex, or (None, None)."""
        pat = re.compile(regex)
        for t, line in zip(self.times, self.lines):
            m = pat.search(line)
            if m:
                return t, m
        return None, None

    def tail(self, n=15):
        return "\n".join(self.lines[-n:])


def run_console(cmd, limit, stop_at=None):
    """Runs cmd with stdout (and stderr) on a pipe and times each line.
    Kills it after limit seconds, or right after a line matching stop_at.
    The clock starts just before the process is created."""
    run = ConsoleRun()
    stop = re.compile(stop_at) if stop_at else None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    try:
        for raw in proc.stdout:
            t = time.monotonic() - t0
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            run.lines.append(line)
            run.times.append(t)
            if stop and stop.search(line):
                proc.kill()
        run.status = proc.wait()
        end = time.monotonic() - t0
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.timed_out = end >= limit and run.status < 0
    if run.status >= 0:
        run.exit_s = end
    return run


# ---- a machine kept running (migration) -------------------------------------

class Machine:
    """One ferry-vm or QEMU process with its console in a log file and a
    control socket, for the migration benchmark. Always kill() it."""

    def __init__(self, name, cmd, workdir, sock):
        self.name = name
        self.sock = sock
        self.log_path = Path(workdir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._cursor = 0

    def console(self):
        try:
            return self.log_path.read_bytes().decode(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def running(self):
        return self.proc.poll() is None

    def wait_for(self, regex, timeout):
        """Waits for a console line matching regex, after the previous
        match; returns the match or raises BenchError (exit or timeout)."""
        pat = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()
            m = pat.search(self.console(), self._cursor)
            if m:
                self._cursor = m.end()
                return m
            if exited or time.monotonic() > deadline:
                why = (f"exited with status {self.proc.returncode}" if exited
                       else f"not within {timeout} s")
                raise BenchError(f"{self.name}: no /{regex}/ on the console: {why}; "
                                 f"last lines:\n{tail(self.console())}")
            time.sleep(0.05)

    def qmp(self, timeout=30):
        def connect():
            if not self.running():
                raise BenchError(f"{self.name} exited with status {self.proc.returncode} "
                                 f"before serving {self.sock}; last lines:\n"
                                 f"{tail(self.console())}")
            try:
                return QMP(self.sock, timeout=timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                return None
        return wait_until(connect, timeout, f"{self.name}: control socket {self.sock}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def tail(text, n=15):
    return "\n".join(text.splitlines()[-n:])


def listening(port):
    """True when something listens on 127.0.0.1:port (TCP)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":%04X" % port) and fields[3] == "0A":
                return True
    return False


# ---- figures and tables -----------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    """a / b as "1.23x", or "-" when either is missing."""
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def fmt_s(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f} s"


def print_table(headers, rows):
    """A plain-text table, first column left-aligned, the others right."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(r))
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    sys.stdout.flush()


def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


def machine_description():
    """Lines describing the host and the tools, for the top of a run."""
    model = "?"
    mem_gib = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    os_name = platform.system()
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), "
        f"{model}, {mem_gib:.1f} GiB, {os_name}, Linux {platform.release()}",
        f"load average: {load} (a shared machine: figures move with its load)",
        f"ferry-vm: {_first_line([str(FERRY_VM), '--version'])} ({FERRY_VM})",
        f"qemu: {_first_line([QEMU_SYSTEM, '--version'])}",
    ]
