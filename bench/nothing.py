#!/usr/bin/env python3
"""nothing.py - shared-nothing migration: ferry-vm's `migrate` with
disks: copy against QEMU 7.2's `migrate` with the `block` capability
(block migration: the disk in the migration stream), same guest, same
image, loopback.

    bench/nothing.py [--mem 256] [--disk-mib 256] [--data-mib 192] [--runs 1] [--tls]

Method. One raw image of --disk-mib MiB is made once: --data-mib MiB of
incompressible data at its start, the rest a hole. For each run and side
the host copies it (cp --sparse=always) to a source image and creates an
empty destination image of the same size (truncate). The guest (the same
kernel and initramfs on both sides, --mem MiB, one hart) runs
`ft disklog /dev/vda --rate 100` (100 O_DIRECT|O_DSYNC 512-byte records a
second at the start of the disk). After its first record the host starts:
- ferry-vm: `migrate` {uri, disks: "copy", downtime_ms: 300} to a
  `--incoming` ferry-vm given the empty image; figures from the last
  MIGRATION event (total_ms, downtime_ms, transferred_bytes);
- QEMU (virt, TCG, -drive if=none + virtio-blk-device): `migrate-set-
  capabilities` block on, `migrate-set-parameters` downtime-limit 300 and
  max-bandwidth 10 GB/s (QEMU's default cap is 32 MiB/s), then `migrate`,
  to a `-incoming` QEMU given the empty image; figures from query-migrate
  (total-time, downtime, ram transferred + disk transferred).
With --tls: ferry-vm without and with --tls-creds on both sides (what TLS
costs on the disk path), no QEMU rows.
Each run also says whether the guest went on logging on the destination
(a new record within 30 s of the end). The page
cache is not dropped (the host is shared).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

MIB = 1 << 20
APPEND = "console=ttyS0 quiet ferry.run=ft,disklog,/dev/vda,--rate,100"
LOG_RE = r"ft: disklog: seq \d+"
BOOT_S = 120


def make_master(path, disk_mib, data_mib):
    with open(path, "wb") as f:
        for _ in range(data_mib):
            f.write(os.urandom(MIB))
        f.truncate(disk_mib * MIB)


def images(work, master, side, disk_mib):
    src, dst = work / f"{side}-src.raw", work / f"{side}-dst.raw"
    for p in (src, dst):
        if p.exists():
            p.unlink()
    subprocess.run(["cp", "--sparse=always", str(master), str(src)], check=True)
    with open(dst, "wb") as f:
        f.truncate(disk_mib * MIB)
    return src, dst


def ferry_run(work, master, args, certs=None):
    src_img, dst_img = images(work, master, "ferry", args.disk_mib)
    ss, ds = work / "ferry-src.sock", work / "ferry-dst.sock"
    tls = ["--tls-creds", str(certs)] if certs else []
    src = bl.Machine("ferry-src", bl.ferry_cmd(APPEND, mem=args.mem, control=ss) +
                     ["--disk", str(src_img)] + tls, work, ss)
    dst = None
    try:
        src.wait_for(LOG_RE, BOOT_S)
        port = bl.free_tcp_port()
        dst = bl.Machine("ferry-dst", bl.ferry_cmd(None, mem=args.mem, control=ds,
                                                   incoming=f"tcp:127.0.0.1:{port}") +
                         ["--disk", str(dst_img)] + tls, work, ds)
        bl.wait_until(lambda: bl.listening(port), 30, "ferry-vm destination")
        q = src.qmp()
        q.cmd("migrate", uri=f"tcp:127.0.0.1:{port}", disks="copy", downtime_ms=300)
        while True:
            ev = q.wait_event("MIGRATION", timeout=300)
            if ev["data"]["status"] in ("completed", "failed", "cancelled"):
                break
        d = ev["data"]
        ok = d["status"] == "completed"
        silent = ok and not logs_on(dst)
        return {"status": ("completed, but the guest went silent" if silent else
                           "completed") if ok else f"{d['status']}: {d.get('error')}",
                "total_ms": d.get("total_ms"), "downtime_ms": d.get("downtime_ms"),
                "bytes": d.get("transferred_bytes")}
    finally:
        src.kill()
        if dst:
            dst.kill()


def logs_on(dst):
    """Does the guest go on logging on the destination (within 30 s)?"""
    try:
        dst.wait_for(LOG_RE, 30)
        return True
    except bl.BenchError:
        return False


def qemu_disk(img):
    return ["-drive", f"file={img},format=raw,if=none,id=d0",
            "-device", "virtio-blk-device,drive=d0"]


def qemu_run(work, master, args):
    src_img, dst_img = images(work, master, "qemu", args.disk_mib)
    ss, ds = work / "qemu-src.sock", work / "qemu-dst.sock"
    src = bl.Machine("qemu-src", bl.qemu_cmd(APPEND, mem=args.mem, qmp=ss) +
                     qemu_disk(src_img), work, ss)
    dst = None
    try:
        src.wait_for(LOG_RE, BOOT_S)
        port = bl.free_tcp_port()
        dst = bl.Machine("qemu-dst", bl.qemu_cmd(APPEND, mem=args.mem, qmp=ds,
                                                 incoming=f"tcp:127.0.0.1:{port}") +
                         qemu_disk(dst_img), work, ds)
        bl.wait_until(lambda: bl.listening(port), 30, "QEMU destination")
        q = src.qmp()
        q.execute("migrate-set-capabilities",
                  {"capabilities": [{"capability": "block", "state": True}]})
        q.execute("migrate-set-parameters", {"downtime-limit": 300,
                                             "max-bandwidth": 10 << 30})
        q.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + 300
        while True:
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                q.cmd("migrate_cancel")
                info["status"] = "did not finish in 300 s"
                break
            time.sleep(0.05)
        ok = info.get("status") == "completed"
        silent = ok and not logs_on(dst)
        # QEMU 7.2's query-migrate has no disk figures after the end
        moved = ((info.get("ram", {}).get("transferred", 0) +
                  info["disk"].get("transferred", 0)) if "disk" in info else 0)
        return {"status": ("completed, but the guest went silent" if silent else
                           "completed") if ok else
                f"{info.get('status')}: {info.get('error-desc', '')}",
                "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                "bytes": moved or None}
    finally:
        src.kill()
        if dst:
            dst.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--disk-mib", type=int, default=256)
    ap.add_argument("--data-mib", type=int, default=192)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args(argv)
    bl.need_guest()
    bl.need_program(bl.QEMU_SYSTEM, "qemu-system-misc")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-nothing-") as w:
        work = Path(w)
        master = work / "master.raw"
        make_master(master, args.disk_mib, args.data_mib)
        rows = []
        sides = (("ferry-vm", ferry_run), ("QEMU 7.2", qemu_run))
        if args.tls:
            from channel import make_certs
            certs = make_certs(work)
            sides = (("ferry-vm plain", ferry_run),
                     ("ferry-vm TLS", lambda w, m, a: ferry_run(w, m, a, certs)))
        for run in range(args.runs):
            for side, fn in sides:
                r = fn(work, master, args)
                rows.append([side, str(run + 1), r["status"],
                             bl.fmt_s(r["total_ms"] / 1000) if r["total_ms"] else "-",
                             f"{r['downtime_ms']} ms" if r["downtime_ms"] is not None
                             else "-",
                             f"{r['bytes'] / MIB:.0f} MiB" if r["bytes"] else "-"])
                print(" | ".join(rows[-1]), flush=True)
    print(f"\nguest {args.mem} MiB, disk {args.disk_mib} MiB with {args.data_mib} MiB "
          f"of data, the guest logging 100 records/s; loopback")
    bl.print_table(["", "run", "status", "total", "downtime", "moved"], rows)
    print(bl.machine_description())


if __name__ == "__main__":
    main()
