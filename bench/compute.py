#!/usr/bin/env python3
"""compute.py - guest CPU speed: ferry-vm against QEMU's JIT (TCG).

    bench/compute.py [--runs N] [--scale S]     (or: bench/run compute)

bench/compute.c (a hash loop, an integer matrix product, a qsort and a
CoreMark-like mix of list, matrix, state machine and CRC, with a checksum
over all four) is built static for riscv64 into
build/bench/compute and added to an initramfs (build/bench/compute.img,
by guest/mkinitrd.sh); both are rebuilt when their sources are newer. Then
the same program runs:
- in a guest under ferry-vm and under qemu-system-riscv64 (same kernel,
  initramfs, 256 MiB, 1 hart, ferry.run=compute);
- as a user-mode process under qemu-riscv64-static, for reference (no
  kernel, no MMU: the fastest an emulator can be).
Each run reports, inside the guest (clock_gettime), the seconds of each
kernel and of all four. The host also times, from the console pipe, the
stretch from "compute: start" to "compute: total" (which does not rely on
the guest's clock), and the whole process. Figures are medians of N runs;
the checksum must be the same everywhere, or the run fails.

The aim stated for ferry-vm: within 3x of QEMU's JIT.
"""

import argparse
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402

SOURCE = bl.BENCH / "compute.c"
PROGRAM = bl.OUT / "compute"
INITRD = bl.OUT / "compute.img"
MKINITRD = bl.REPO / "guest" / "mkinitrd.sh"
KERNELS = ("hash", "matmul", "sort", "mix")
LIMIT_S = 300
AIM = 3.0


def newer(target, *sources):
    """True when target is missing or older than any source."""
    if not target.exists():
        return True
    return any(s.exists() and s.stat().st_mtime > target.stat().st_mtime
               for s in sources)


def build():
    """The static riscv64 program and the initramfs that holds it."""
    bl.need_program(bl.CROSS_CC, "gcc-riscv64-linux-gnu libc6-dev-riscv64-cross")
    bl.OUT.mkdir(parents=True, exist_ok=True)
    if newer(PROGRAM, SOURCE):
        step([bl.CROSS_CC, "-static", "-O2", "-Wall", "-Wextra", "-Werror",
              "-o", str(PROGRAM), str(SOURCE)])
    tools = list((bl.BUILD / "guest" / "bin").glob("*"))
    if newer(INITRD, PROGRAM, MKINITRD, *tools):
        step([str(MKINITRD), str(INITRD), str(PROGRAM)])


def step(cmd):
    if subprocess.run(cmd).returncode != 0:
        raise bl.BenchError(f"building the compute guest failed: {' '.join(cmd)}")


def parse(lines, who):
    """{kernel: seconds, "total": s, "checksum": hex} from compute's output."""
    out = {}
    for line in lines:
        m = re.match(r"compute: (\w+) ([0-9.]+) s(?: checksum (0x[0-9a-f]+))?$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
            if m.group(3):
                out["checksum"] = m.group(3)
    if "checksum" not in out:
        raise bl.BenchError(f"{who}: compute printed no total and checksum; last "
                            "lines:\n" + "\n".join(lines[-15:]))
    return out


def run_guest(cmd, who):
    run = bl.run_console(cmd, LIMIT_S)
    r = parse(run.lines, who)
    t0, _ = run.first(r"^compute: start")
    t1, _ = run.first(r"^compute: total")
    if run.status != 0:
        raise bl.BenchError(f"{who}: exit status {run.status}"
                            f"{' (time limit)' if run.timed_out else ''}; last lines:\n"
                            f"{run.tail()}")
    r["host"] = t1 - t0
    r["wall"] = run.exit_s
    return r


def run_user(scale):
    t0 = time.monotonic()
    p = subprocess.run([bl.QEMU_USER, str(PROGRAM), "--scale", str(scale)],
                       capture_output=True, text=True, timeout=LIMIT_S)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise bl.BenchError(f"{bl.QEMU_USER}: exit status {p.returncode}: {p.stderr}")
    r = parse(p.stdout.splitlines(), bl.QEMU_USER)
    r["host"] = None   # no console to time it by: the process is the program
    r["wall"] = wall
    return r


def medians(runs):
    keys = list(KERNELS) + ["total", "host", "wall"]
    return {k: bl.median([r[k] for r in runs]) for k in keys}


def main(argv=None):
    ap = argparse.ArgumentParser(description="guest compute, ferry-vm against QEMU")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--scale", type=int, default=1, help="work multiplier (default 1)")
    args = ap.parse_args(argv)
    bl.need_guest()
    bl.need_program(bl.QEMU_USER, "qemu-user-static")
    build()

    append = "console=ttyS0 quiet ferry.run=compute" + (
        f",--scale,{args.scale}" if args.scale != 1 else "")
    print(f"== compute: {args.runs} runs each of bench/compute.c (scale {args.scale}); "
          "seconds, median")
    sys.stdout.flush()
    runs = {"ferry-vm": [], "qemu": [], "qemu-user": []}
    for _ in range(args.runs):
        runs["ferry-vm"].append(run_guest(bl.ferry_cmd(append, initrd=INITRD), "ferry-vm"))
        runs["qemu"].append(run_guest(bl.qemu_cmd(append, initrd=INITRD), "qemu"))
        runs["qemu-user"].append(run_user(args.scale))

    sums = {r["checksum"] for side in runs.values() for r in side}
    if len(sums) != 1:
        detail = {k: [r["checksum"] for r in v] for k, v in runs.items()}
        raise bl.BenchError(f"the checksums differ, so the machines did not compute "
                            f"the same thing: {detail}")
    med = {k: medians(v) for k, v in runs.items()}
    f, q, u = med["ferry-vm"], med["qemu"], med["qemu-user"]
    labels = {"total": "all four (guest clock)",
              "host": "all four (host clock)",
              "wall": "process wall (boot + run)"}
    rows = []
    for k in list(KERNELS) + ["total", "host", "wall"]:
        rows.append([labels.get(k, k), bl.fmt_s(f[k]), bl.fmt_s(q[k]),
                     bl.ratio(f[k], q[k]), bl.fmt_s(u[k]), bl.ratio(f[k], u[k])])
    bl.print_table(["compute", "ferry-vm", "qemu", "ferry/qemu", "qemu-user",
                    "ferry/user"], rows)
    print(f"checksum {sums.pop()} on all {3 * args.runs} runs")
    print(f"aim: ferry-vm within {AIM:g}x of QEMU's JIT (all four, guest clock): "
          f"{'met' if f['total'] <= AIM * q['total'] else 'NOT met'} "
          f"({f['total'] / q['total']:.2f}x)\n")
    return med


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"compute.py: {e}", file=sys.stderr)
        sys.exit(1)
