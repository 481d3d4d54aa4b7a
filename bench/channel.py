#!/usr/bin/env python3
"""channel.py - what securing the migration channel costs: plain, TLS, secret.

    bench/channel.py [--runs N] [--mem MiB] [--mib N]   (or: bench/run channel)

A 256 MiB guest running memload --mib 192 --rate 1 (192 MiB of pages that
are neither zero nor compressible, rewritten slowly, so the migration is
one big first round and a short tail) is migrated over loopback:
  ferry plain    --incoming tcp:127.0.0.1:PORT
  ferry TLS      --tls-creds DIR on both (TLS 1.3, ECDSA P-256 certificates)
  ferry secret   --incoming ...,secret-file=F and migrate secret_file
  QEMU plain     -incoming tcp:...
  QEMU TLS       tls-creds-x509 objects (same DIR), migrate-set-parameters
                 tls-creds on both sides (-incoming defer on the destination)
Throughput is transferred bytes over total time, from each machine's own
figures (ferry: the final MIGRATION event; QEMU: query-migrate). CPU/GiB is
the CPU time (user + system, /proc) both processes used from the migrate
command to its end, per GiB sent: the guest is nearly idle then (memload
writes 1 MiB/s), so it is mostly the migration's, and it is what a loaded
host pays, where wall times move with the load. Certificates
are made with certtool at the start. ferry's guest must be healthy on the
destination afterwards (memload keeps verifying); QEMU's is not checked
(see qemu_run).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
import benchlib as bl  # noqa: E402

READY_S = 180
LIMIT_S = 120
PASS_RE = r"^memload: pass (\d+) verified (\d+) MiB errors 0$"
QEMU_MAX_BANDWIDTH = 100 << 30


def make_certs(root):
    """ca-cert.pem, server and client pairs in one directory (both sides use it)."""
    def certtool(*args):
        subprocess.run(["certtool", *args], check=True, capture_output=True, timeout=60)
    d = Path(root) / "tls"
    d.mkdir()
    (d / "ca.info").write_text("cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n")
    certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", str(d / "ca-key.pem"))
    certtool("--generate-self-signed", "--load-privkey", str(d / "ca-key.pem"),
             "--template", str(d / "ca.info"), "--outfile", str(d / "ca-cert.pem"))
    for role, extra in (("server", "dns_name = localhost\nip_address = 127.0.0.1\n"
                                    "tls_www_server\n"),
                        ("client", "tls_www_client\n")):
        (d / f"{role}.info").write_text(f"cn = bench {role}\n{extra}signing_key\n"
                                        "encryption_key\nexpiration_days = 2\n")
        certtool("--generate-privkey", "--key-type=ecdsa", "--outfile",
                 str(d / f"{role}-key.pem"))
        certtool("--generate-certificate", "--load-privkey", str(d / f"{role}-key.pem"),
                 "--load-ca-certificate", str(d / "ca-cert.pem"),
                 "--load-ca-privkey", str(d / "ca-key.pem"),
                 "--template", str(d / f"{role}.info"), "--outfile",
                 str(d / f"{role}-cert.pem"))
    return d


def cpu_ms(machine):
    """CPU time (user + system) the process has used so far, in ms."""
    with open(f"/proc/{machine.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def append_for(mib):
    return f"console=ttyS0 quiet ferry.run=memload,--mib,{mib},--rate,1,--threads,1"


def ferry_run(mode, args, work, certs, secret):
    src_sock, dst_sock = work / "f-src.sock", work / "f-dst.sock"
    extra = ["--tls-creds", str(certs)] if mode == "tls" else []
    src = bl.Machine("ferry-src", bl.ferry_cmd(append_for(args.mib), mem=args.mem,
                                               control=src_sock) + extra, work, src_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        port = bl.free_tcp_port()
        spec = f"tcp:127.0.0.1:{port}" + (f",secret-file={secret}" if mode == "secret"
                                          else "")
        dst = bl.Machine("ferry-dst", bl.ferry_cmd(None, mem=args.mem, incoming=spec,
                                                   control=dst_sock) + extra, work, dst_sock)
        bl.wait_until(lambda: bl.listening(port), 30, "ferry destination listening")
        q = src.qmp()
        margs = {"uri": f"tcp:127.0.0.1:{port}", "downtime_ms": 300}
        if mode == "secret":
            margs["secret_file"] = str(secret)
        cpu0 = cpu_ms(src) + cpu_ms(dst)
        q.cmd("migrate", **margs)
        deadline = time.monotonic() + LIMIT_S
        while True:
            ev = q.wait_event("MIGRATION", timeout=max(1, deadline - time.monotonic()))
            if ev["data"].get("status") in ("completed", "failed", "cancelled"):
                break
        data = ev["data"]
        if data["status"] != "completed":
            raise bl.BenchError(f"ferry {mode}: {data.get('error')}")
        cpu = cpu_ms(src) + cpu_ms(dst) - cpu0
        dst.wait_for(PASS_RE, 30)
        return data["transferred_bytes"], data["total_ms"], data["downtime_ms"], cpu
    finally:
        src.kill()
        if dst:
            dst.kill()


def qemu_run(mode, args, work, certs):
    src_sock, dst_sock = work / "q-src.sock", work / "q-dst.sock"
    append = append_for(args.mib)

    def tls_obj(endpoint):
        return ["-object", f"tls-creds-x509,id=tls0,dir={certs},endpoint={endpoint},"
                           "verify-peer=on"] if mode == "tls" else []
    src = bl.Machine("qemu-src", bl.qemu_cmd(append, mem=args.mem, qmp=src_sock) +
                     tls_obj("client"), work, src_sock)
    dst = None
    try:
        src.wait_for(PASS_RE, READY_S)
        port = bl.free_tcp_port()
        dst = bl.Machine("qemu-dst", bl.qemu_cmd(append, mem=args.mem, qmp=dst_sock,
                                                 incoming="defer") + tls_obj("server"),
                         work, dst_sock)
        dq = dst.qmp()
        if mode == "tls":
            dq.execute("migrate-set-parameters", {"tls-creds": "tls0"})
        dq.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        bl.wait_until(lambda: bl.listening(port), 30, "QEMU destination listening")
        q = src.qmp()
        params = {"max-bandwidth": QEMU_MAX_BANDWIDTH, "downtime-limit": 300}
        if mode == "tls":
            params["tls-creds"] = "tls0"
        q.execute("migrate-set-parameters", params)
        cpu0 = cpu_ms(src) + cpu_ms(dst)
        q.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        deadline = time.monotonic() + LIMIT_S
        while True:
            info = q.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise bl.BenchError(f"QEMU {mode}: did not finish in {LIMIT_S} s")
            time.sleep(0.05)
        if info["status"] != "completed":
            raise bl.BenchError(f"QEMU {mode}: {info.get('error-desc')}")
        # -incoming defer: the destination waits for "cont" once it has all
        bl.wait_until(lambda: dq.cmd("query-status")["status"] != "inmigrate", 30,
                      "QEMU destination out of inmigrate")
        if not dq.cmd("query-status")["running"]:
            dq.execute("cont")
        cpu = cpu_ms(src) + cpu_ms(dst) - cpu0
        # QEMU 7.2's riscv guest here stops printing after an incoming
        # migration while memload sleeps between writes (its timer?), in
        # every mode: the figures are QEMU's own, the guest's health is
        # not checked, only that the process runs on
        if not dst.running():
            raise bl.BenchError(f"QEMU {mode}: the destination exited")
        return info["ram"]["transferred"], info["total-time"], info["downtime"], cpu
    finally:
        src.kill()
        if dst:
            dst.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mem", type=int, default=256)
    ap.add_argument("--mib", type=int, default=192)
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args(argv)
    bl.need_guest()
    bl.need_program("certtool", "gnutls-bin")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-channel-") as tmp:
        work = Path(tmp)
        certs = make_certs(work)
        secret = work / "secret"
        secret.write_text("a bench secret of enough length\n")
        cases = [("ferry plain", lambda: ferry_run("plain", args, work, certs, secret)),
                 ("ferry TLS", lambda: ferry_run("tls", args, work, certs, secret)),
                 ("ferry secret", lambda: ferry_run("secret", args, work, certs, secret))]
        if not args.no_qemu:
            cases += [("QEMU plain", lambda: qemu_run("plain", args, work, certs)),
                      ("QEMU TLS", lambda: qemu_run("tls", args, work, certs))]
        results = {name: [] for name, _ in cases}
        errors = {}
        for _ in range(args.runs):          # interleaved, so load drifts hit all alike
            for name, fn in cases:
                try:
                    results[name].append(fn())
                    b, ms, d, cpu = results[name][-1]
                    print(f"  {name}: {b / (1 << 20):.0f} MiB in {ms} ms, downtime {d} ms, "
                          f"CPU {cpu} ms", file=sys.stderr)
                except bl.BenchError as e:
                    errors[name] = str(e)
                    print(f"  {name}: {e}", file=sys.stderr)
        rows, base = [], {}
        for name, runs in results.items():
            if not runs:
                rows.append([name, "-", "-", "-", "failed", "-", "-",
                             errors.get(name, "")[:50]])
                continue
            mbps = bl.median([b * 8 / (ms / 1000) / 1e6 for b, ms, _, _ in runs if ms])
            total = bl.median([ms for _, ms, _, _ in runs])
            down = bl.median([d for _, _, d, _ in runs])
            mib = bl.median([b / (1 << 20) for b, _, _, _ in runs])
            cpu_gib = bl.median([cpu / (b / (1 << 30)) for b, _, _, cpu in runs])
            kind = name.split()[0]
            base.setdefault(kind, (mbps, cpu_gib))
            rows.append([name, f"{mib:.0f} MiB", f"{total:.0f} ms", f"{down:.0f} ms",
                         f"{mbps:.0f} Mbit/s", f"{mbps / base[kind][0]:.2f}",
                         f"{cpu_gib:.0f} ms", f"{cpu_gib / base[kind][1]:.2f}"])
        print(f"{args.mem} MiB guest, memload --mib {args.mib} --rate 1, loopback, "
              f"median of {args.runs}")
        bl.print_table(["", "sent", "total", "downtime", "throughput", "vs plain",
                        "CPU/GiB", "vs plain"], rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bl.BenchError as e:
        print(f"channel.py: {e}", file=sys.stderr)
        sys.exit(1)
