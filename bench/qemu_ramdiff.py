#!/usr/bin/env python3
"""qemu_ramdiff.py - does QEMU's own migration deliver the guest's RAM intact?

    bench/qemu_ramdiff.py [--runs N] [--mem MiB] [--run CMD] [--qemu-args "..."]
                          [--initrd FILE] [--keep DIR] [--qemu-defaults]
                          [--no-compare]

A check that needs no guest workload to be right. One QEMU migration on
loopback, as bench/migrate.py does it, but the destination is started with
-S, so that once the migration has completed both sides are paused at the
same instant of the guest: the source in postmigrate, the destination not
yet started. Then `pmemsave` dumps all guest RAM on both, and every 4 KiB
page is compared. A correct migration leaves no page different (the guest's
devices are idle: the console UART does no DMA). Each differing page is
listed with its guest-physical address and how many of its 8-byte words
differ. Then the destination is told `cont`, and what the guest workload
says afterwards (memload's lines, or an ERROR) is shown next to it.

--run is the guest's ferry.run (default memload,--mib,16,--rate,0);
--qemu-args adds arguments to both QEMU processes (e.g.
"-accel tcg,thread=single -cpu rv64,sstc=off"); --qemu-defaults keeps
QEMU's own bandwidth cap instead of migrate.py's 100 GiB/s; --keep DIR
keeps both RAM images of a migration whose RAM differs; --no-compare lets
the destination run at once, as migrate.py did before, with no dumps.
Exit status 0 when every migration left the two RAM images identical, 1
otherwise. Findings: bench/README.md, "Migration".
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402

RAM_BASE = 0x80000000          # QEMU virt and ferry-vm
PAGE = 4096
LINE_RE = r"^(memload|memcheck): .*$"


def append_for(run):
    return f"console=ttyS0 quiet ferry.run={run}"


def qemu(args, append, mem, qmp, incoming=None, extra=()):
    cmd = bl.qemu_cmd(append, mem=mem, initrd=args.initrd, qmp=qmp, incoming=incoming)
    if incoming and args.compare:
        cmd.append("-S")
    return cmd + list(extra)


def dump(q, mem, path):
    q.execute("pmemsave", {"val": RAM_BASE, "size": mem << 20, "filename": str(path)},
              timeout=120)


def diff_pages(a_path, b_path):
    """[(guest-physical address, differing 8-byte words)] of the pages that differ."""
    out = []
    with open(a_path, "rb") as a, open(b_path, "rb") as b:
        off = 0
        while True:
            pa, pb = a.read(PAGE), b.read(PAGE)
            if not pa and not pb:
                return out
            if pa != pb:
                words = sum(pa[i:i + 8] != pb[i:i + 8] for i in range(0, PAGE, 8))
                out.append((RAM_BASE + off, words))
            off += PAGE


def one(args, n, work):
    src_sock, dst_sock = work / "src.sock", work / "dst.sock"
    append = append_for(args.run)
    extra = args.qemu_args.split()
    src = bl.Machine(f"src{n}", qemu(args, append, args.mem, src_sock, extra=extra),
                     work, src_sock)
    dst = None
    try:
        src.wait_for(LINE_RE, 300)
        src.wait_for(LINE_RE, 60)
        port = bl.free_tcp_port()
        dst = bl.Machine(f"dst{n}", qemu(args, append, args.mem, dst_sock,
                                         incoming=f"tcp:127.0.0.1:{port}", extra=extra),
                         work, dst_sock)
        bl.wait_until(lambda: bl.listening(port), 30, "QEMU destination listening")
        qs, qd = src.qmp(), dst.qmp()
        if not args.qemu_defaults:
            qs.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30,
                                                  "downtime-limit": 300})
        qs.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        while True:
            info = qs.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if info["status"] != "completed":
            print(f"run {n}: migration {info['status']}: {info.get('error-desc', '')}")
            return False
        bl.wait_until(lambda: qd.cmd("query-status")["status"] != "inmigrate", 30,
                      "destination out of inmigrate")
        ds = qd.cmd("query-status")["status"]
        pages = []
        if args.compare:
            dump(qs, args.mem, work / "src.ram")
            dump(qd, args.mem, work / "dst.ram")
            pages = diff_pages(work / "src.ram", work / "dst.ram")
        ram = info.get("ram", {})
        print(f"run {n}: completed, {info.get('total-time')} ms, downtime "
              f"{info.get('downtime')} ms, {ram.get('dirty-sync-count')} rounds; "
              f"destination {ds}; "
              + (f"{len(pages)} page(s) differ" if args.compare else "RAM not compared")
              + "".join(f"\n    page 0x{a:x}: {w} of 512 words differ"
                        for a, w in pages[:20]))
        if args.keep and pages:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for s in ("src", "dst"):
                shutil.copy(work / f"{s}.ram", keep / f"run{n}-{s}.ram")
        mark = len(dst.console())
        if args.compare:
            qd.cmd("cont")
        deadline = time.monotonic() + 15
        seen = 0
        while time.monotonic() < deadline and dst.running() and seen < 2:
            text = dst.console()[mark:]
            seen = len(re.findall(r"^memload: pass|^memcheck: pass", text, re.M))
            if "ERROR" in text:
                break
            time.sleep(0.2)
        after = [ln for ln in dst.console()[mark:].splitlines() if ln.strip()]
        print("    destination after cont: "
              + (" | ".join(after[:3]) if after else "nothing for 15 s (stalled)"))
        sys.stdout.flush()
        return not pages
    finally:
        src.kill()
        if dst:
            dst.kill()
        for s in ("src", "dst"):
            try:
                os.unlink(work / f"{s}.ram")
            except FileNotFoundError:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--run", default="memload,--mib,16,--rate,0")
    ap.add_argument("--initrd", default=None)
    ap.add_argument("--qemu-args", default="")
    ap.add_argument("--keep", default=None, help="keep differing RAM images here")
    ap.add_argument("--qemu-defaults", action="store_true",
                    help="QEMU's own bandwidth cap and downtime limit (128 MiB/s, "
                         "300 ms), not migrate.py's 100 GiB/s and 300 ms")
    ap.add_argument("--no-compare", dest="compare", action="store_false",
                    help="no -S and no RAM dumps: the destination runs at once")
    args = ap.parse_args()
    bl.need_guest()
    print(f"qemu_ramdiff: {bl.machine_description()[1]}")
    print(f"qemu_ramdiff: {args.mem} MiB, ferry.run={args.run}, extra QEMU args: "
          f"{args.qemu_args or 'none'}")
    work = Path(tempfile.mkdtemp(prefix="ferry-ramdiff-"))
    try:
        ok = [one(args, n + 1, work) for n in range(args.runs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"qemu_ramdiff: {sum(ok)} of {len(ok)} migrations left RAM identical")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
