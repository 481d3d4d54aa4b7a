"""The CPU as the host sees it: idle harts sleep, a dead guest ends.

- An idle guest with two harts (the guest image with no ferry.run, so
  /init prints "ferry-init: ready" and waits) must cost the host almost
  nothing: once it is ready and has settled, the ferry-vm process may use
  at most IDLE_SHARE of one core over IDLE_S seconds, counted in CPU
  seconds (utime + stime of all its threads, /proc/PID/stat), which is a
  resource bound, not a timing. A hart in WFI that spins (the bug fixed on
  main: its condition variable waited on another clock than its deadline)
  uses a whole core and fails it.
- A guest that can never run again (every hart stopped in HSM or waiting
  in WFI with all interrupts disabled in sie) must end with status 1 and
  one line on stderr saying so, rather than sleep forever: what a kernel
  Image cut short does (it parks its harts in "wfi" with interrupts off).
  The guests are a few instructions of S-mode code behind a RISC-V Image
  header, made here.
- The opposite must hold too: a hart waiting in WFI with an interrupt
  enabled is alive (a device or an IPI may wake it) and runs on, and
  sleeps even when its timer is due but masked in sie (Linux leaves it
  so when it goes idle; it spun before, which made the idle test flaky).
"""

import os
import struct
import tempfile
import time
from pathlib import Path

from ferrylib import VM

IDLE_S = 5.0
IDLE_SHARE = 0.05       # "a few percent of a core"
SETTLE_S = 2.0

# ---- bare-metal guests --------------------------------------------------------

CSRW_SIE_ZERO = 0x10401073          # csrw sie, zero
WFI = 0x10500073
J_BACK_4 = 0xffdff06f               # j .-4 (back to the wfi)
J_SELF = 0x0000006f                 # j .
LI_T0_STIE = 0x02000293             # li t0, 0x20 (sie.STIE)
CSRW_SIE_T0 = 0x10429073            # csrw sie, t0
LI_A7_HSM = (0x004858b7, 0x34d88893)  # li a7, 0x48534d (SBI HSM)
LI_A6_1 = 0x00100813                # li a6, 1 (hart_stop)
ECALL = 0x00000073
LI_T0_SEIE = 0x20000293             # li t0, 0x200 (sie.SEIE)
LI_A7_TIME = (0x544958b7, 0xd4588893)  # li a7, 0x54494d45 (SBI TIME)
LI_A6_0 = 0x00000813                # li a6, 0 (set_timer)
LI_A0_0 = 0x00000513                # li a0, 0: a deadline long past


def bare_image(words):
    """A RISC-V Linux Image whose code is words (32-bit instructions),
    entered in S mode; the header says text_offset 2 MiB, 4 KiB image."""
    jump_to_64 = 0x0400006f          # j +64, over the header
    header = struct.pack("<II QQQ II Q 8s 4s I", jump_to_64, 0, 0x200000, 4096, 0,
                         2, 0, 0, b"RISCV\0\0\0", b"RSC\x05", 0)
    assert len(header) == 64
    body = b"".join(struct.pack("<I", w) for w in words)
    return (header + body).ljust(4096, b"\0")


def run_bare(words, smp=2, wait=20, measure=False):
    """Boots the bare-metal guest; returns (status or None if still running
    after wait seconds, stderr lines), and with measure the share of a
    core the process used meanwhile."""
    with tempfile.TemporaryDirectory(prefix="ferry-test-cpu-") as tmp:
        image = Path(tmp) / "Image"
        image.write_bytes(bare_image(words))
        with VM(kernel=image, initrd=None, append="", smp=smp, mem=64, control=False,
                name="bare") as vm:
            t0 = time.monotonic()
            try:
                status = vm.wait_exit(wait)
            except TimeoutError:
                status = None
            share = cpu_seconds(vm.pid) / (time.monotonic() - t0) if status is None else None
            lines = [line for line in vm.output().splitlines()
                     if line.startswith("ferry-vm:")]
            return (status, lines, share) if measure else (status, lines)


# ---- tests ------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of every thread of pid, in seconds."""

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])     # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def test_idle_two_hart_guest_uses_almost_no_cpu():
    with VM(smp=2, append="console=ttyS0 quiet", control=False, name="idle") as vm:
        vm.wait_ready(timeout=120)
        time.sleep(SETTLE_S)
        before, t0 = cpu_seconds(vm.pid), time.monotonic()
        time.sleep(IDLE_S)
        used, elapsed = cpu_seconds(vm.pid) - before, time.monotonic() - t0
        assert vm.running(), f"the idle guest ended; last lines:\n{vm.tail()}"
        share = used / elapsed
        assert share <= IDLE_SHARE, (
            f"an idle 2-hart guest used {used:.2f} CPU seconds in {elapsed:.1f} s "
            f"({share:.0%} of a core, limit {IDLE_SHARE:.0%}): idle harts do not sleep")


def test_guest_whose_harts_all_wait_with_interrupts_off_ends_with_an_error():
    # hart 0 parks in wfi with sie = 0; hart 1 never started (HSM stopped)
    status, lines = run_bare([CSRW_SIE_ZERO, WFI, J_BACK_4])
    assert status == 1, f"status {status} (None: still running), stderr {lines}"
    assert len(lines) == 1 and "can never run again" in lines[0], lines


def test_guest_whose_only_running_hart_stops_ends_with_an_error():
    # hart 0 stops itself through SBI HSM; nobody is left to start anyone
    status, lines = run_bare([*LI_A7_HSM, LI_A6_1, ECALL, J_SELF])
    assert status == 1, f"status {status} (None: still running), stderr {lines}"
    assert len(lines) == 1 and "can never run again" in lines[0], lines


def test_hart_waiting_with_its_timer_due_but_masked_sleeps():
    # sie.SEIE only, the SBI timer set in the past: STIP is pending but
    # cannot wake the hart, so the deadline must not keep it awake either
    status, lines, share = run_bare([LI_T0_SEIE, CSRW_SIE_T0, *LI_A7_TIME, LI_A6_0,
                                     LI_A0_0, ECALL, WFI, J_BACK_4],
                                    smp=1, wait=3, measure=True)
    assert status is None, f"ended with status {status}: {lines}"
    assert share <= IDLE_SHARE, (f"a hart waiting with a masked timer used {share:.0%} "
                                 f"of a core (limit {IDLE_SHARE:.0%})")


def test_hart_waiting_with_an_interrupt_enabled_runs_on():
    # sie.STIE set: a timer could still wake it, so it is not dead
    status, lines = run_bare([LI_T0_STIE, CSRW_SIE_T0, WFI, J_BACK_4], smp=1, wait=3)
    assert status is None, f"ended with status {status}: {lines}"
