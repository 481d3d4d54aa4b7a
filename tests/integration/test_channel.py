"""The migration channel: who may use it, and what a destination accepts.

- TLS (--tls-creds DIR, QEMU's layout) with certificates made here by
  certtool: a migration with the right certificates completes; a source
  with a client certificate from another CA, one trusting another CA, and
  one without TLS all fail, the source's guest keeps running and the
  destination keeps waiting for the right one.
- A shared secret (--incoming tcp:H:P,secret-file=F, migrate secret_file):
  a source without it or with another is refused, a destination that does
  not know it (or a fake one) never gets the guest.
- A destination without either warns that it accepts anyone, and a port
  scan (a connection that sends nothing, garbage, or just closes) does not
  end it.
- quit ends a waiting destination; quit during a migration fails it before
  handoff and the source resumes.
- save refuses symbolic links, device nodes, FIFOs and directories, and a
  saved stream that breaks the section grammar (an added POSTCOPY section,
  a missing CPU section, pages after the digest) is refused on restore
  with a reason, not a crash.
"""

import os
import socket
import stat
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from ferrylib import VM, QMPError, free_tcp_port, need_tool, wait_until

TIMEOUT = 300
PASS_RE = r"memload: pass \d+ verified"
MEM = 128


# ---- helpers ----------------------------------------------------------------

def memload_vm(name, args=(), mib=4):
    cmd = "memload,--mib,%d,--rate,0,--threads,1" % mib
    return VM(append="console=ttyS0 quiet ferry.run=" + cmd, mem=MEM, name=name,
              args=args)


def listening(port):
    with open("/proc/net/tcp") as f:
        return any(":%04X" % port in line.split()[1] and line.split()[3] == "0A"
                   for line in f.readlines()[1:])


def destination(name, args=(), secret=None):
    port = free_tcp_port()
    spec = "tcp:127.0.0.1:%d" % port
    if secret:
        spec += ",secret-file=%s" % secret
    vm = VM(incoming=spec, mem=MEM, name=name, args=args)
    wait_until(lambda: listening(port) or not vm.running(), 30, "destination listening")
    assert vm.running(), vm.tail()
    return vm, "tcp:127.0.0.1:%d" % port


def wait_migration(q, timeout=120):
    deadline = time.time() + timeout
    while True:
        ev = q.wait_event("MIGRATION", timeout=max(1, deadline - time.time()))
        if ev["data"]["status"] in ("completed", "failed", "cancelled"):
            return ev["data"]


def migrate(src, uri, **args):
    q = src.qmp()
    q.events()
    q.cmd("migrate", uri=uri, **args)
    return wait_migration(q)


def assert_refused(src, uri, word, **args):
    """The migration fails with `word` in its error; the guest runs on."""
    r = migrate(src, uri, **args)
    assert r["status"] == "failed", r
    assert word in r["error"], r
    print("refused as expected: %s" % r["error"])
    q = src.qmp()
    assert q.cmd("query-status")["status"] == "running"
    src.wait_for(PASS_RE, timeout=60)
    assert "memload: ERROR" not in src.console(), src.tail()


def assert_completes(src, dst, uri, **args):
    r = migrate(src, uri, **args)
    assert r["status"] == "completed", r
    assert src.quit() == 0, src.tail()      # it waited in postmigrate
    dst.wait_for(PASS_RE, timeout=60)
    assert "memload: ERROR" not in dst.console(), dst.tail()


class Certs:
    """A CA and server/client certificates made with certtool, in QEMU's
    layout. make(dir, ...) writes one --tls-creds directory."""

    def __init__(self, root):
        self.root = Path(root)

    def _run(self, *args):
        subprocess.run(["certtool", *args], check=True, capture_output=True, timeout=60)

    def _key(self, path):
        self._run("--generate-privkey", "--key-type=ecdsa", "--outfile", str(path))

    def ca(self, name):
        d = self.root / ("ca-" + name)
        d.mkdir()
        tpl = d / "ca.info"
        tpl.write_text("cn = ferry test CA %s\nca\ncert_signing_key\nexpiration_days = 2\n"
                       % name)
        self._key(d / "ca-key.pem")
        self._run("--generate-self-signed", "--load-privkey", str(d / "ca-key.pem"),
                  "--template", str(tpl), "--outfile", str(d / "ca-cert.pem"))
        return d

    def issue(self, ca, out, role):
        tpl = out / (role + ".info")
        usage = ("dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n"
                 if role == "server" else "tls_www_client\n")
        tpl.write_text("cn = ferry %s\n%ssigning_key\nencryption_key\n"
                       "expiration_days = 2\n" % (role, usage))
        self._key(out / (role + "-key.pem"))
        self._run("--generate-certificate", "--load-privkey", str(out / (role + "-key.pem")),
                  "--load-ca-certificate", str(ca / "ca-cert.pem"),
                  "--load-ca-privkey", str(ca / "ca-key.pem"), "--template", str(tpl),
                  "--outfile", str(out / (role + "-cert.pem")))

    def make(self, name, trust, server_ca=None, client_ca=None):
        """A directory trusting CA `trust`, with a server pair signed by
        server_ca and a client pair signed by client_ca (when given)."""
        d = self.root / name
        d.mkdir()
        (d / "ca-cert.pem").write_bytes((trust / "ca-cert.pem").read_bytes())
        if server_ca:
            self.issue(server_ca, d, "server")
        if client_ca:
            self.issue(client_ca, d, "client")
        return d


def secret_file(root, name, text):
    p = Path(root) / name
    p.write_text(text + "\n")
    os.chmod(p, 0o600)
    return p


# ---- TLS --------------------------------------------------------------------

def test_tls_checks_certificates_both_ways():
    need_tool("certtool", "gnutls-bin")
    with tempfile.TemporaryDirectory(prefix="ferry-certs-") as tmp:
        c = Certs(tmp)
        good, other = c.ca("good"), c.ca("other")
        dst_dir = c.make("dst", good, server_ca=good)
        src_dir = c.make("src", good, client_ca=good)
        foreign_client = c.make("foreign-client", good, client_ca=other)
        wrong_trust = c.make("wrong-trust", other, client_ca=good)

        with memload_vm("src", args=["--tls-creds", src_dir]) as src, \
                memload_vm("src-foreign", args=["--tls-creds", foreign_client]) as foreign, \
                memload_vm("src-wrongca", args=["--tls-creds", wrong_trust]) as wrongca, \
                memload_vm("src-plain") as plain:
            for vm in (src, foreign, wrongca, plain):
                vm.wait_for(PASS_RE, timeout=120)
            # TLS and a secret together: the secret is proven inside TLS
            secret = secret_file(tmp, "secret", "a secret inside the TLS session")
            dst, uri = destination("dst", args=["--tls-creds", dst_dir], secret=secret)
            with dst:
                assert "accepts a migration from anyone" not in dst.output()
                # a client certificate from another CA: the destination refuses
                assert_refused(foreign, uri, "TLS")
                # a source that trusts another CA refuses the destination
                assert_refused(wrongca, uri, "certificate")
                # no TLS at all: nothing is accepted
                assert_refused(plain, uri, "TLS")
                assert dst.running(), dst.tail()
                wait_until(lambda: dst.output().count("refused a connection") >= 3, 30,
                           "the destination logs each refused connection")
                # the destination kept waiting for the right source
                assert_refused(src, uri, "secret")          # right TLS, no secret
                assert_completes(src, dst, uri, secret_file=str(secret))


def test_postcopy_over_tls():
    """Post-copy reads and writes one TLS session from two threads on each
    side (page requests against pushed pages)."""
    need_tool("certtool", "gnutls-bin")
    with tempfile.TemporaryDirectory(prefix="ferry-certs-") as tmp:
        c = Certs(tmp)
        ca = c.ca("good")
        both = c.make("both", ca, server_ca=ca, client_ca=ca)
        with memload_vm("src", args=["--tls-creds", both], mib=48) as src:
            src.wait_for(PASS_RE, timeout=120)
            dst, uri = destination("dst", args=["--tls-creds", both])
            with dst:
                q = src.qmp()
                q.events()
                # a capped link and a budget the hot set cannot meet: post-copy
                q.cmd("migrate", uri=uri, bandwidth_mbps=40, postcopy=True, max_total_s=20)
                statuses = []
                while True:
                    ev = q.wait_event("MIGRATION", timeout=120)
                    statuses.append(ev["data"]["status"])
                    if statuses[-1] in ("completed", "failed", "cancelled"):
                        break
                assert statuses[-1] == "completed", ev
                assert "postcopy" in statuses, statuses
                assert ev["data"]["postcopy_requests"] > 0, ev
                assert src.quit() == 0, src.tail()
                for _ in range(3):
                    dst.wait_for(PASS_RE, timeout=60)
                assert "memload: ERROR" not in dst.console(), dst.tail()


# ---- the secret ----------------------------------------------------------------

def test_secret_is_proven_both_ways():
    with tempfile.TemporaryDirectory(prefix="ferry-secret-") as tmp:
        right = secret_file(tmp, "right", "correct horse battery staple 42")
        wrong = secret_file(tmp, "wrong", "incorrect horse battery staple 7")
        short = secret_file(tmp, "short", "tiny")
        with memload_vm("src") as src:
            src.wait_for(PASS_RE, timeout=120)
            q = src.qmp()
            try:
                q.cmd("migrate", uri="tcp:127.0.0.1:1", secret_file=str(short))
                raise AssertionError("a 4-byte secret was accepted")
            except QMPError as e:
                assert "bytes" in e.desc, e.desc
            # a source that proves nothing to a destination that asks
            dst, uri = destination("dst", secret=right)
            with dst:
                assert_refused(src, uri, "secret")
                assert_refused(src, uri, "secret", secret_file=str(wrong))
                assert dst.running(), dst.tail()
                assert "does not know the secret" in dst.output(), dst.tail()
                # the destination that does not ask cannot prove it knows
                open_dst, open_uri = destination("open")
                with open_dst:
                    assert "accepts a migration from anyone" in open_dst.output()
                    assert_refused(src, open_uri, "does not ask for the secret",
                                   secret_file=str(right))
                # a fake destination that asks but cannot answer
                fake_port = free_tcp_port()
                fake = socket.socket()
                fake.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                fake.bind(("127.0.0.1", fake_port))
                fake.listen(1)
                q.events()
                q.cmd("migrate", uri="tcp:127.0.0.1:%d" % fake_port,
                      secret_file=str(right))
                conn, _ = fake.accept()
                conn.sendall(b"FERRYKEY" + struct.pack("<II", 1, 0) + os.urandom(32))
                got = b""
                conn.settimeout(10)
                while len(got) < 64:
                    part = conn.recv(64 - len(got))
                    if not part:
                        break
                    got += part
                conn.sendall(os.urandom(32))        # a MAC it cannot compute
                conn.settimeout(10)
                rest = b""
                try:
                    while True:
                        part = conn.recv(65536)
                        if not part:
                            break
                        rest += part
                except socket.timeout:
                    pass
                conn.close()
                fake.close()
                r = wait_migration(q)
                assert r["status"] == "failed" and "does not know" in r["error"], r
                assert rest == b"", "the source sent %d bytes to a fake" % len(rest)
                assert q.cmd("query-status")["status"] == "running"
                # and the right secret completes, to the destination still waiting
                assert_completes(src, dst, uri, secret_file=str(right))


# ---- a destination that anyone may reach ----------------------------------------------

def test_port_scan_does_not_end_a_waiting_destination():
    with memload_vm("src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination("dst")
        with dst:
            assert "accepts a migration from anyone" in dst.output(), dst.tail()
            port = int(uri.rsplit(":", 1)[1])
            # connect and close; connect and send garbage; connect and stay silent
            socket.create_connection(("127.0.0.1", port)).close()
            g = socket.create_connection(("127.0.0.1", port))
            g.sendall(os.urandom(4096))
            time.sleep(0.5)
            g.close()
            silent = socket.create_connection(("127.0.0.1", port))
            wait_until(lambda: dst.output().count("dropped a connection") >= 2, 30,
                       "the destination drops the scans")
            # the silent one holds the listener only for a bounded time (the
            # source's own 10 s timeout would fail the migration otherwise)
            assert_completes(src, dst, uri)
            silent.close()
            assert dst.running(), dst.tail()


# ---- quit ---------------------------------------------------------------------------

def test_quit_ends_a_waiting_destination():
    with memload_vm("src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination("dst")
        with dst:
            dst.qmp().cmd("quit")
            assert dst.wait_exit(10) == 0, dst.tail()
            assert_refused(src, uri, "connect")


def test_quit_during_a_migration_leaves_the_guest_on_the_source():
    with memload_vm("src", mib=16) as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination("dst")
        with dst:
            q = src.qmp()
            q.events()
            # a capped link keeps the migration in pre-copy for a while
            q.cmd("migrate", uri=uri, bandwidth_mbps=20)
            wait_until(lambda: q.cmd("query-migrate")["status"] == "active", 30,
                       "migration active")
            dst.qmp().cmd("quit")
            assert dst.wait_exit(20) == 0, dst.tail()
            r = wait_migration(q)
            assert r["status"] == "failed", r
            assert q.cmd("query-status")["status"] == "running"
            src.wait_for(PASS_RE, timeout=60)
            assert "memload: ERROR" not in src.console(), src.tail()


# ---- save and the section grammar ---------------------------------------------------

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                      0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, v):
    return (_rotl((acc + v * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    """XXH64, for the section checksums of a crafted stream."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _round(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for k in range(4):
            h = (((h ^ _round(0, v[k])) * P1) + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P1) & M64
        h = (_rotl(h, 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & M64
        h = (_rotl(h, 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    return h ^ (h >> 32)


SEC = {"ram": 2, "cpu": 3, "device": 4, "clock": 5, "digest": 6, "end": 7, "postcopy": 0x106}


def sections(blob):
    """[(type, payload)] of a saved stream, checksums verified."""
    out, off = [], 16
    while off < len(blob):
        typ, flags, n = struct.unpack_from("<IIQ", blob, off)
        body = blob[off + 16:off + 16 + n]
        (want,) = struct.unpack_from("<Q", blob, off + 16 + n)
        assert xxh64(blob[off:off + 16 + n]) == want, "checksum at %d" % off
        out.append((typ, body))
        off += 24 + n
    return out


def assemble(header, secs):
    out = bytearray(header)
    for typ, body in secs:
        hdr = struct.pack("<IIQ", typ, 0, len(body))
        out += hdr + body + struct.pack("<Q", xxh64(hdr + body))
    return bytes(out)


def test_save_refuses_links_and_devices():
    with memload_vm("src") as src, tempfile.TemporaryDirectory(prefix="ferry-save-") as d:
        d = Path(d)
        src.wait_for(PASS_RE, timeout=120)
        q = src.qmp()
        victim = d / "victim"
        victim.write_text("keep me\n")
        (d / "link").symlink_to(victim)
        os.mknod(d / "fullnode", 0o600 | stat.S_IFCHR, os.makedev(1, 7))
        os.mkfifo(d / "fifo")
        (d / "dir").mkdir()
        for name, word in (("link", "symbolic link"), ("fullnode", "not a regular"),
                           ("fifo", "not a regular"), ("dir", "not a regular")):
            try:
                q.cmd("save", path=str(d / name))
                raise AssertionError("save to %s was accepted" % name)
            except QMPError as e:
                assert word in e.desc, (name, e.desc)
            q.cmd("cont")
        assert victim.read_text() == "keep me\n"
        assert (d / "link").is_symlink()
        assert stat.S_ISCHR(os.lstat(d / "fullnode").st_mode)
        assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
        # a regular file is replaced, atomically, and nothing is left behind
        saved = d / "saved"
        saved.write_text("old")
        q.cmd("save", path=str(saved))
        assert saved.read_bytes()[:8] == b"FERRYMIG"
        assert sorted(p.name for p in d.iterdir()) == \
            ["dir", "fifo", "fullnode", "link", "saved", "victim"]


def test_restore_enforces_the_section_grammar():
    with memload_vm("src") as src, tempfile.TemporaryDirectory(prefix="ferry-grammar-") as d:
        d = Path(d)
        src.wait_for(PASS_RE, timeout=120)
        saved = d / "saved"
        q = src.qmp()
        q.cmd("save", path=str(saved))
        q.cmd("quit")
        src.wait_exit(30)

        blob = saved.read_bytes()
        header, secs = blob[:16], sections(blob)
        types = [t for t, _ in secs]
        words = (MEM << 20) // 4096 // 64
        end = types.index(SEC["end"])
        first_cpu = types.index(SEC["cpu"])
        digest = types.index(SEC["digest"])
        ram = next(s for s in secs if s[0] == SEC["ram"])
        bad = {
            # the reproducer: it skipped the digest and crashed in postcopy_fetch
            "postcopy": (secs[:end] + [(SEC["postcopy"], b"\xff" * 8 * words)] +
                         secs[end:], "post-copy"),
            "postcopy-for-digest": (secs[:digest] + [(SEC["postcopy"], b"\xff" * 8 * words)]
                                    + secs[digest + 1:], "post-copy"),
            "no-cpu": (secs[:first_cpu] + secs[first_cpu + 1:], "hart 0"),
            "ram-after-digest": (secs[:digest + 1] + [ram] + secs[digest + 1:], "ram"),
            "twice-postcopy": (secs[:digest] + [(SEC["postcopy"], b"\x00" * 8 * words)] * 2
                               + secs[digest + 1:], "post-copy"),
        }
        for name, (parts, word) in bad.items():
            f = d / ("bad-" + name)
            f.write_bytes(assemble(header, parts))
            with VM(incoming="file:%s" % f, mem=MEM, name="bad-" + name) as dst:
                assert dst.wait_exit(60) == 1, (name, dst.tail())
                out = dst.output()
                assert "incoming migration failed" in out and word in out, (name, out)
                assert "memload" not in out, (name, dst.tail())
        # the untouched stream, re-assembled, still restores
        f = d / "good"
        f.write_bytes(assemble(header, secs))
        with VM(incoming="file:%s" % f, mem=MEM, name="restored") as dst:
            dst.wait_for(PASS_RE, timeout=60)
