#!/usr/bin/env python3
"""wantrace.py - a migration's timeline from the packets on one device.

    ip netns exec NS bench/wantrace.py capture DEV PORT OUT    (until SIGTERM)
    bench/wantrace.py show OUT [--rtt-ms 100] [--rate-mbit 200]

This machine has no tcpdump. `capture` reads every TCP packet to or from
PORT on DEV (AF_PACKET, as tcpdump would; the kernel's receive timestamp)
and writes one line each: time, direction (> from the connecting side, <
to it), flags, payload bytes, seq, ack, window. `show` turns that into the
timeline bench/README's "Long distance" section uses: the connect, the
first bytes each way, each round trip's bytes sent (slow start until a
round trip carries the link's bandwidth-delay product), when the bulk
ends, and the small messages after it (the handoff), each in ms from the
SYN and in round trips.
"""

import argparse
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35


def window_scale(opts):
    """The window scale option of a SYN (0 if none), from its options."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        if kind == 3:
            return opts[i + 2]
        i += opts[i + 1]
    return 0


def capture(dev, port, out):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    s.settimeout(0.2)
    lines = []
    print("capturing", flush=True)
    while not stop:
        try:
            data, anc, _, _ = s.recvmsg(160, socket.CMSG_LEN(16))
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        ts = time.time()
        for level, typ, val in anc:
            if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                sec, ns = struct.unpack("qq", val[:16])
                ts = sec + ns / 1e9
        if len(data) < 40 or data[0] >> 4 != 4 or data[9] != 6:
            continue
        ihl = (data[0] & 15) * 4
        total = struct.unpack("!H", data[2:4])[0]
        sport, dport, seq, ack, off, flags, win = struct.unpack(
            "!HHIIBBH", data[ihl:ihl + 16])
        if port not in (sport, dport):
            continue
        payload = total - ihl - (off >> 4) * 4
        d = ">" if dport == port else "<"
        f = "".join(c for c, bit in (("S", 2), ("F", 1), ("R", 4), ("P", 8)) if flags & bit)
        if flags & 2:
            win = -window_scale(data[ihl + 20:ihl + (off >> 4) * 4])
        lines.append("%.6f %s %s %d %d %d %d" % (ts, d, f or ".", payload, seq, ack, win))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def show(path, rtt_ms, rate_mbit):
    pkts, rows = [], []
    for ln in open(path):
        p = ln.split()
        if len(p) == 7:
            pkts.append((float(p[0]), p[1], p[2], int(p[3])))
            rows.append((float(p[0]), p[1], p[2], int(p[3]), int(p[4]), int(p[5]), int(p[6])))
    syn = next(t for t, d, f, n in pkts if d == ">" and "S" in f)
    rtt = rtt_ms / 1000
    bdp = rate_mbit * 1e6 / 8 * rtt

    def at(t):
        return "%7.1f ms (%4.2f RTT)" % ((t - syn) * 1000, (t - syn) / rtt)

    def first(pred):
        return next(((t, n) for t, d, f, n in pkts if pred(d, f, n)), (None, 0))

    out = [("SYN", syn)]
    t, _ = first(lambda d, f, n: d == "<" and "S" in f)
    out.append(("SYN-ACK back (connect done)", t))
    t, _ = first(lambda d, f, n: d == ">" and n > 0)
    out.append(("first byte source -> destination", t))
    t, _ = first(lambda d, f, n: d == "<" and n > 0)
    out.append(("first byte destination -> source", t))
    sent = [(t, n) for t, d, f, n in pkts if d == ">" and n > 0]
    big = [(t, n) for t, n in sent if n > 1000]
    if big:
        out.append(("first full-size segment", big[0][0]))
    # per round trip from the first data: bytes the source put on the wire
    t0 = sent[0][0] if sent else syn
    buckets = {}
    for t, n in sent:
        buckets[int((t - t0) / rtt)] = buckets.get(int((t - t0) / rtt), 0) + n
    full = next((k for k in sorted(buckets) if buckets[k] >= 0.9 * bdp), None)
    if full is not None:
        out.append(("first round trip carrying >= 0.9 BDP starts", t0 + full * rtt))
    # the bulk's end: the last segment of the last burst of big segments
    if big:
        out.append(("last full-size segment", big[-1][0]))
    tail = [(t, d, n) for t, d, f, n in pkts if n > 0 and (not big or t > big[-1][0])]
    for t, d, n in tail[:12]:
        out.append(("  then %s %d bytes" % ("source ->" if d == ">" else "<- destination", n), t))
    fin = first(lambda d, f, n: "F" in f)[0]
    out.append(("first FIN", fin))
    for label, t in out:
        print("%-46s %s" % (label, at(t) if t is not None else "-"))
    print("bytes per round trip from the first data (KB): " +
          " ".join("%d" % (buckets.get(k, 0) / 1000) for k in range(max(buckets) + 1 if buckets else 0)))
    # the destination's offered window and the bytes in flight, per round trip
    wscale = next((-w for t, d, f, n, sq, ak, w in rows if d == "<" and "S" in f), 0)
    rwnd, flight, nxt = {}, {}, None
    for t, d, f, n, sq, ak, w in rows:
        k = int((t - t0) / rtt)
        if d == ">" and n > 0:
            end = (sq + n) & 0xffffffff
            nxt = end if nxt is None or ((end - nxt) & 0xffffffff) < (1 << 31) else nxt
        elif d == "<" and "S" not in f and t >= t0:
            rwnd[k] = max(rwnd.get(k, 0), w << wscale)
            if nxt is not None:
                flight[k] = max(flight.get(k, 0), (nxt - ak) & 0xffffffff)
    nb = max(buckets) + 1 if buckets else 0
    print("destination's window per round trip (KB): " +
          " ".join("%d" % (rwnd.get(k, 0) / 1000) for k in range(nb)))
    print("most in flight per round trip (KB): " +
          " ".join("%d" % (flight.get(k, 0) / 1000) for k in range(nb)))
    total = sum(n for _, n in sent)
    print("source sent %.1f MiB; BDP %.2f MB; link time %.0f ms" %
          (total / (1 << 20), bdp / 1e6, total * 8 / (rate_mbit * 1e6) * 1000))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("dev")
    c.add_argument("port", type=int)
    c.add_argument("out")
    s = sub.add_parser("show")
    s.add_argument("path")
    s.add_argument("--rtt-ms", type=float, default=100)
    s.add_argument("--rate-mbit", type=float, default=200)
    a = p.parse_args(argv)
    if a.cmd == "capture":
        capture(a.dev, a.port, a.out)
    else:
        show(a.path, a.rtt_ms, a.rate_mbit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
