#!/usr/bin/env python3
"""boot.py - how long the guest takes to boot, ferry-vm against QEMU.

    bench/boot.py [--runs N]        (or: bench/run boot)

Both machines boot the same kernel and initramfs with the command line
"console=ttyS0 quiet ferry.run=ft,echo,BOOTED": the guest's /init prints
BOOTED and powers off. Each run is timed from just before the process is
created to the console line that is exactly "BOOTED" (read from a pipe),
and to the end of the process. The runs alternate ferry-vm and QEMU, so
both see the same load on this shared machine; the table gives the median
(and the spread) of N runs each, and the ratio ferry / QEMU. QEMU runs
OpenSBI first (-bios default), which ferry-vm has no need of (its SBI is in
the monitor): that is part of what each machine costs to boot.

The aim stated for ferry-vm: boot within 2x of QEMU.
"""

import argparse
import sys

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402

APPEND = "console=ttyS0 quiet ferry.run=ft,echo,BOOTED"
MARKER = r"^BOOTED$"
LIMIT_S = 120
AIM = 2.0


def boot_once(cmd):
    """(seconds to the marker, seconds to the exit) of one boot."""
    run = bl.run_console(cmd, LIMIT_S)
    marker, _ = run.first(MARKER)
    if marker is None or run.status != 0:
        why = "time limit" if run.timed_out else f"exit status {run.status}"
        raise bl.BenchError(f"{cmd[0]}: no BOOTED line or not a clean power-off "
                            f"({why}); last lines:\n{run.tail()}")
    return marker, run.exit_s


def spread(values):
    return f"{min(values):.2f}-{max(values):.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description="boot time, ferry-vm against QEMU")
    ap.add_argument("--runs", type=int, default=5, help="boots of each (default 5)")
    ap.add_argument("--smp", type=int, default=1, help="harts of each (default 1)")
    args = ap.parse_args(argv)
    bl.need_guest()

    sides = {"ferry-vm": bl.ferry_cmd(APPEND, smp=args.smp),
             "qemu": bl.qemu_cmd(APPEND, smp=args.smp)}
    times = {name: {"marker": [], "exit": []} for name in sides}
    print(f"== boot: {args.runs} runs each, to the BOOTED line and to exit "
          f"(append \"{APPEND}\", 256 MiB, {args.smp} hart{'s' if args.smp > 1 else ''})")
    sys.stdout.flush()
    for _ in range(args.runs):
        for name, cmd in sides.items():
            marker, end = boot_once(cmd)
            times[name]["marker"].append(marker)
            times[name]["exit"].append(end)

    rows = []
    results = {}
    for what in ("marker", "exit"):
        f = bl.median(times["ferry-vm"][what])
        q = bl.median(times["qemu"][what])
        results[what] = (f, q)
        rows.append([f"to {'BOOTED' if what == 'marker' else 'exit'} (median)",
                     bl.fmt_s(f), bl.fmt_s(q), bl.ratio(f, q)])
        rows.append(["  min-max", spread(times["ferry-vm"][what]),
                     spread(times["qemu"][what]), ""])
    bl.print_table(["boot", "ferry-vm", "qemu", "ferry/qemu"], rows)
    f, q = results["marker"]
    print(f"aim: ferry-vm within {AIM:g}x of QEMU to BOOTED: "
          f"{'met' if f <= AIM * q else 'NOT met'} ({f / q:.2f}x)\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except bl.BenchError as e:
        print(f"boot.py: {e}", file=sys.stderr)
        sys.exit(1)
