#!/usr/bin/env python3
"""diskmove.py - storage vMotion: ferry-vm's disk-move against QEMU's
drive-mirror + block-job-complete, same image, same guest load.

    bench/diskmove.py [--size-mib 1024] [--rate 160] [--runs 1]
                                                (or: bench/run diskmove)

Method. One image of --size-mib MiB of incompressible data (every block
allocated) is made once; each run copies it for each side. The guest (the
same kernel, and an initramfs with bench/iolat.c added, built static for
riscv64 into build/bench/) runs `iolat /dev/vda`: 64 KiB writes at random
places, O_DIRECT|O_DSYNC, --rate a second (160: 10 MiB/s, the issue's
aim), and prints once a second the longest write of that second. After 3
seconds of that the host starts the move:
- ferry-vm: `disk-move` {disk 0, path}, until the DISK_MOVE event says
  completed (it reports total_ms and pause_ms, its own I/O pause);
- QEMU 7.2 (virt, TCG, virtio-blk-device): by default `-blockdev` file +
  raw nodes and `blockdev-mirror` {sync full} to a `blockdev-add`ed raw
  node on a new sparse file; with --qemu-api drive, `-drive if=none` and
  `drive-mirror` {sync full, format raw, mode absolute-paths}; then at
  BLOCK_JOB_READY `block-job-complete`, until BLOCK_JOB_COMPLETED.
Both run with the host page cache (QEMU's default cache=writeback, ferry's
pread/pwrite), from the same files. Total time: from the command to the
end event, timed by the host. Guest-visible I/O pause: the longest guest
write in the seconds the move ran, and in the second in which it ended
(the switch), against the longest in the seconds before (the baseline:
what a write costs anyway on this machine). A write's time includes the
host's fdatasync (the guest's O_DSYNC becomes a FLUSH), so a bulk copy
filling the page cache lengthens writes on both sides; ferry-vm also
reports its own count of the switch's pause (pause_ms: from asking for
the device's lock to giving it back). The
reference for total time is `cp` of the same image plus fdatasync (this
machine's disk speed, through the same page cache): the copy that makes
each run's source image, just before its move, so under the same load. The page cache is
not dropped between runs (the host is shared). Just before that cp, a
second, diagnostic reference: `dd oflag=direct bs=1M` of the same image,
the write path ferry-vm's copier uses (O_DIRECT, one 1 MiB write in
flight) without a guest, so that move/dd is what the move adds to its own
write path and dd/cp what that path costs against the page cache. Each
run prints the load average, and ferry-vm's phases from its DISK_MOVE
event (bulk_ms, rounds_ms, flush_ms: where the time went).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

SOURCE = bl.BENCH / "iolat.c"
PROGRAM = bl.OUT / "iolat"
INITRD = bl.OUT / "iolat.img"
MKINITRD = bl.REPO / "guest" / "mkinitrd.sh"
MIB = 1 << 20
BASELINE_S = 3
AFTER_S = 2


def newer(target, *sources):
    if not target.exists():
        return True
    return any(s.exists() and s.stat().st_mtime > target.stat().st_mtime for s in sources)


def step(cmd):
    if subprocess.run(cmd).returncode != 0:
        raise bl.BenchError(f"building the iolat guest failed: {' '.join(cmd)}")


def build():
    bl.need_program(bl.CROSS_CC, "gcc-riscv64-linux-gnu libc6-dev-riscv64-cross")
    bl.OUT.mkdir(parents=True, exist_ok=True)
    if newer(PROGRAM, SOURCE):
        step([bl.CROSS_CC, "-static", "-O2", "-Wall", "-Wextra", "-Werror",
              "-o", str(PROGRAM), str(SOURCE)])
    tools = list((bl.BUILD / "guest" / "bin").glob("*"))
    if newer(INITRD, PROGRAM, MKINITRD, *tools):
        step([str(MKINITRD), str(INITRD), str(PROGRAM)])


def make_master(path, mib):
    with open(path, "wb") as f:
        chunk = os.urandom(MIB)
        for i in range(mib):
            f.write(chunk[i % 997:] + chunk[:i % 997])   # every MiB different
        f.flush()
        os.fdatasync(f.fileno())


def direct_copy(src, dst):
    """dd with O_DIRECT 1 MiB writes (the copier's write path); seconds."""
    t0 = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "oflag=direct", "conv=fdatasync",
                    "status=none"], check=True)
    t = time.monotonic() - t0
    os.unlink(dst)
    return t


def copy_image(src, dst):
    """cp + fdatasync; returns seconds."""
    t0 = time.monotonic()
    subprocess.run(["cp", "--sparse=auto", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fdatasync(fd)
    os.close(fd)
    return time.monotonic() - t0


class Result:
    def __init__(self, side):
        self.side = side
        self.total_s = None
        self.cp_s = None
        self.dd_s = None
        self.load = None
        self.phases = None          # ferry-vm: bulk, rounds, flush ms
        self.pause_ms = None        # ferry's own measure
        self.rounds = None
        self.copied_mib = None
        self.max_during_ms = None
        self.max_before_ms = None
        self.max_switch_ms = None
        self.allocated_mib = None
        self.error = None


def iolat_seconds(console):
    return [(int(t), float(ms)) for t, ms in
            re.findall(r"^iolat: t=(\d+) writes=\d+ max_ms=([0-9.]+)", console, re.M)]


def one_side(side, work, master, args):
    res = Result(side)
    src, dst = work / f"{side}-src.raw", work / f"{side}-dst.raw"
    for p in (src, dst):
        if p.exists():
            p.unlink()
    res.load = os.getloadavg()[0]
    res.dd_s = direct_copy(master, src)    # diagnostic: the copier's write path
    res.cp_s = copy_image(master, src)     # this run's reference, under its load
    sock = work / f"{side}.sock"
    append = (f"console=ttyS0 quiet ferry.run=iolat,/dev/vda,--rate,{args.rate}")
    if side == "ferry-vm":
        cmd = bl.ferry_cmd(append, mem=args.mem, initrd=INITRD, control=sock)
        cmd += ["--disk", str(src)]
    else:
        cmd = bl.qemu_cmd(append, mem=args.mem, initrd=INITRD, qmp=sock)
        if args.qemu_api == "drive":
            cmd += ["-drive", f"file={src},format=raw,if=none,id=d0"]
        else:
            cmd += ["-blockdev", f"driver=file,filename={src},node-name=f0",
                    "-blockdev", "driver=raw,file=f0,node-name=d0"]
        cmd += ["-device", "virtio-blk-device,drive=d0"]
    m = bl.Machine(side, cmd, work, str(sock))
    try:
        return measure(res, m, src, dst, side, args)
    except (bl.QMPError, TimeoutError, ConnectionError) as e:
        raise bl.BenchError(f"{side}: {e}; last lines:\n{bl.tail(m.console())}") from None
    finally:
        m.kill()
        for p in (src, dst):
            if p.exists():
                p.unlink()


def measure(res, m, src, dst, side, args):
    """Baseline, the move, and the figures; the machine is running iolat."""
    m.wait_for(r"^iolat: start", 120)
    t_start = time.monotonic()
    q = m.qmp()
    time.sleep(BASELINE_S + 0.5)
    t0 = time.monotonic()
    if side == "ferry-vm":
        q.cmd("disk-move", disk=0, path=str(dst))
        while True:
            ev = q.wait_event("DISK_MOVE", timeout=600)["data"]
            if ev["status"] != "active":
                break
        if ev["status"] != "completed":
            raise bl.BenchError(f"ferry-vm: disk-move {ev['status']}: {ev.get('error')}")
        res.pause_ms = ev["pause_ms"]
        res.rounds = ev["rounds"]
        res.copied_mib = ev["copied_bytes"] / MIB
        res.phases = (ev["bulk_ms"], ev["rounds_ms"], ev["flush_ms"])
    else:
        if args.qemu_api == "drive":
            q.execute("drive-mirror", {"device": "d0", "job-id": "m0", "target": str(dst),
                                       "sync": "full", "format": "raw",
                                       "mode": "absolute-paths"})
        else:
            with open(dst, "wb") as f:      # what blockdev-create would make: sparse
                f.truncate(os.path.getsize(src))
            q.execute("blockdev-add", {"driver": "raw", "node-name": "t0",
                                       "file": {"driver": "file", "filename": str(dst)}})
            q.execute("blockdev-mirror", {"job-id": "m0", "device": "d0", "target": "t0",
                                          "sync": "full"})
        q.wait_event("BLOCK_JOB_READY", timeout=600)
        q.execute("block-job-complete", {"device": "m0"})
        ev = q.wait_event("BLOCK_JOB_COMPLETED", timeout=600)["data"]
        if ev.get("error"):
            raise bl.BenchError(f"qemu: mirror failed: {ev['error']}")
    t1 = time.monotonic()
    res.total_s = t1 - t0
    time.sleep(AFTER_S)
    secs = iolat_seconds(m.console())
    lo, hi = t0 - t_start, t1 - t_start + 1      # a line covers the second before it
    during = [ms for t, ms in secs if lo < t <= hi + 0.999]
    before = [ms for t, ms in secs if t <= lo]
    res.max_during_ms = max(during) if during else None
    res.max_before_ms = max(before) if before else None
    # the line for second t covers writes that ended in (t-1, t]
    at_switch = [ms for t, ms in secs if t1 - t_start <= t <= t1 - t_start + 1]
    res.max_switch_ms = max(at_switch) if at_switch else None
    res.allocated_mib = os.stat(dst).st_blocks * 512 / MIB
    if args.trace:
        print(f"  {side}: the guest's longest write each second (the move ran "
              f"{lo:.1f}-{t1 - t_start:.1f} s): " +
              " ".join(f"{t}:{ms:.0f}" for t, ms in secs))
    return res


def fmt(v, unit, digits=1):
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def report(runs, copy_s, args):
    def med(side, attr):
        return bl.median([getattr(r, attr) for pair in runs for r in pair
                          if r.side == side and r.error is None])
    f_total, q_total = med("ferry-vm", "total_s"), med("qemu", "total_s")
    f_dur, q_dur = med("ferry-vm", "max_during_ms"), med("qemu", "max_during_ms")
    f_bef, q_bef = med("ferry-vm", "max_before_ms"), med("qemu", "max_before_ms")
    rows = [
        ["total time of the move", fmt(f_total, " s", 2), fmt(q_total, " s", 2),
         bl.ratio(f_total, q_total)],
        ["guest's longest write during the move", fmt(f_dur, " ms"), fmt(q_dur, " ms"),
         bl.ratio(f_dur, q_dur)],
        ["... in the second of the switch", fmt(med("ferry-vm", "max_switch_ms"), " ms"),
         fmt(med("qemu", "max_switch_ms"), " ms"),
         bl.ratio(med("ferry-vm", "max_switch_ms"), med("qemu", "max_switch_ms"))],
        ["guest's longest write before it (baseline)", fmt(f_bef, " ms"),
         fmt(q_bef, " ms"), bl.ratio(f_bef, q_bef)],
        ["I/O pause at the switch, ferry-vm's own count", fmt(med("ferry-vm", "pause_ms"),
                                                               " ms"), "-", "-"],
        ["ferry-vm: rounds after the bulk copy, MiB read in all",
         f"{fmt(med('ferry-vm', 'rounds'), '', 0)}, {fmt(med('ferry-vm', 'copied_mib'), '', 0)}",
         "-", "-"],
        ["destination allocated", fmt(med("ferry-vm", "allocated_mib"), " MiB", 0),
         fmt(med("qemu", "allocated_mib"), " MiB", 0), "-"],
    ]
    print()
    bl.print_table([f"disk move, {args.size_mib} MiB image, guest writing "
                    f"{args.rate * 64 / 1024:.0f} MiB/s (median of {args.runs})",
                    "ferry-vm", "qemu", "ferry/qemu"], rows)
    def per_run(side):
        return bl.median([r.total_s / r.cp_s for pair in runs for r in pair
                          if r.side == side and r.error is None and r.cp_s])
    f_cp, q_cp = per_run("ferry-vm"), per_run("qemu")
    print(f"reference: cp + fdatasync of the image: {copy_s:.2f} s before the runs; "
          f"each move against the cp that made its source just before it (same load), "
          f"median: ferry-vm {fmt(f_cp, 'x', 2)} (aim: 1.3x), QEMU {fmt(q_cp, 'x', 2)}")
    f_dd = bl.median([r.total_s / r.dd_s for pair in runs for r in pair
                      if r.side == "ferry-vm" and r.error is None and r.dd_s])
    dd_cp = bl.median([r.dd_s / r.cp_s for pair in runs for r in pair
                       if r.error is None and r.dd_s and r.cp_s])
    print(f"diagnostic: dd oflag=direct of the image just before each cp, median: "
          f"ferry-vm move/dd {fmt(f_dd, 'x', 2)}, dd/cp {fmt(dd_cp, 'x', 2)}")
    for pair in runs:
        for r in pair:
            if r.error:
                print(f"{r.side}: {r.error}")
    sys.stdout.flush()


def main(argv=None, describe=False):
    ap = argparse.ArgumentParser(description="disk-move against QEMU's drive-mirror")
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    ap.add_argument("--rate", type=int, default=160,
                    help="guest 64 KiB writes a second (default 160: 10 MiB/s)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each side (default 1)")
    ap.add_argument("--trace", action="store_true",
                    help="print the guest's longest write of each second of each run")
    ap.add_argument("--mem", type=int, default=128, help="guest MiB (default 128)")
    ap.add_argument("--qemu-api", choices=("blockdev", "drive"), default="blockdev",
                    help="QEMU: -blockdev + blockdev-mirror (default), or -drive + "
                         "drive-mirror")
    ap.add_argument("--dir", default=None, help="where the images go (default: a "
                    "temporary directory in /var/tmp)")
    args = ap.parse_args(argv)
    bl.need_guest()
    build()
    if describe:
        for line in bl.machine_description():
            print(line)
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-diskmove-", dir=args.dir or "/var/tmp"))
    print(f"== diskmove: {args.size_mib} MiB raw image (all allocated) in {work}, "
          f"guest {args.mem} MiB writing {args.rate} x 64 KiB/s O_DIRECT|O_DSYNC")
    sys.stdout.flush()
    runs = []
    try:
        master = work / "master.raw"
        make_master(master, args.size_mib)
        copy_s = bl.median([copy_image(master, work / "ref.raw") for _ in range(2)])
        (work / "ref.raw").unlink()
        for i in range(args.runs):
            pair = []
            for side in ("ferry-vm", "qemu"):
                try:
                    pair.append(one_side(side, work, master, args))
                except (bl.BenchError, bl.QMPError, TimeoutError, ConnectionError) as e:
                    r = Result(side)
                    r.error = str(e).splitlines()[0]
                    print(f"{side}: {e}", file=sys.stderr)
                    pair.append(r)
            runs.append(pair)
            a, b = pair
            print(f"run {i + 1}: ferry-vm {fmt(a.total_s, ' s', 2)} (longest write "
                  f"{fmt(a.max_during_ms, ' ms')}), qemu {fmt(b.total_s, ' s', 2)} "
                  f"(longest write {fmt(b.max_during_ms, ' ms')})")
            for r in pair:
                if r.error is None:
                    ph = ("" if r.phases is None else
                          ", bulk/rounds/flush %d/%d/%d ms" % r.phases)
                    print(f"  {r.side}: load {r.load:.1f}, dd {r.dd_s:.2f} s, cp {r.cp_s:.2f} s, "
                          f"move/cp {r.total_s / r.cp_s:.2f}x{ph}")
            sys.stdout.flush()
        report(runs, copy_s, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


if __name__ == "__main__":
    try:
        main(describe=True)
    except bl.BenchError as e:
        print(f"diskmove: {e}", file=sys.stderr)
        sys.exit(1)
