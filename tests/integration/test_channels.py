"""Multi-channel migration: `migrate` `channels: N` (docs/stream.md "Page channels").

The guest runs memload, which checks every page it rewrites: a page lost,
stale or applied out of order across channels makes it print "memload:
ERROR", and the switchover's digest of all of RAM refuses a destination
that holds a wrong page. A bandwidth cap makes several rounds, so the
rounds' order across channels is exercised.

- channels 2 with the secret, channels 4 over TLS: the guest arrives whole;
- a page channel cut mid-way (a proxy resets it): the migration fails before
  the handoff and the guest runs on at the source;
- a stranger who passes the secret but presents the wrong join nonce is
  refused and closed, and the migration goes on.
"""

import os
import socket
import struct
import tempfile
import threading
import time

from ferrylib import free_tcp_port, need_tool, wait_until
from test_channel import Certs, destination, memload_vm, secret_file, xxh64
from test_migrate import PASS_RE, wait_migration

import hashlib
import hmac

TIMEOUT = 420
SEC_JOIN = 0x10B


def assert_whole(r, src, dst, channels):
    assert r["status"] == "completed", r
    assert r["channels"] == channels, r
    assert src.quit() == 0, src.tail()
    for _ in range(2):
        dst.wait_for(PASS_RE, timeout=90)
    assert "memload: ERROR" not in dst.console(), dst.tail()


def start(src, uri, **args):
    q = src.qmp()
    q.events()
    q.cmd("migrate", uri=uri, **args)
    return q


def test_two_channels_with_the_secret():
    with tempfile.TemporaryDirectory(prefix="ferry-channels-") as tmp:
        secret = secret_file(tmp, "secret", "two channels, one secret, 42")
        with memload_vm("src", mib=24) as src:
            src.wait_for(PASS_RE, timeout=120)
            dst, uri = destination("dst", secret=secret)
            with dst:
                q = start(src, uri, channels=2, secret_file=str(secret),
                          bandwidth_mbps=200)
                r = wait_migration(q, timeout=240)
                print("channels 2, secret: %s" % {k: r.get(k) for k in
                                                  ("total_ms", "rounds", "downtime_ms")})
                assert r["rounds"] >= 2, r
                assert_whole(r, src, dst, 2)


def test_four_channels_over_tls():
    need_tool("certtool", "gnutls-bin")
    with tempfile.TemporaryDirectory(prefix="ferry-channels-tls-") as tmp:
        certs = Certs(tmp)
        ca = certs.ca("one")
        both = certs.make("both", ca, server_ca=ca, client_ca=ca)
        with memload_vm("src", args=["--tls-creds", str(both)], mib=24) as src:
            src.wait_for(PASS_RE, timeout=120)
            dst, uri = destination("dst", args=["--tls-creds", str(both)])
            with dst:
                q = start(src, uri, channels=4, bandwidth_mbps=200)
                r = wait_migration(q, timeout=240)
                print("channels 4, TLS: %s" % {k: r.get(k) for k in
                                               ("total_ms", "rounds", "downtime_ms")})
                assert r["rounds"] >= 2, r
                assert_whole(r, src, dst, 4)


# ---- a channel cut mid-way ------------------------------------------------------

class CuttingProxy:
    """Forwards each connection to `target`; the connection numbered `victim`
    (0: the main one, 1..: page channels in the order they connect) is reset
    both ways once it has carried `after` bytes from the source."""

    def __init__(self, target_port, victim, after):
        self.target = ("127.0.0.1", target_port)
        self.victim, self.after = victim, after
        self.cut = threading.Event()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(32)
        self.port = self.lsock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            n = self.count
            self.count += 1
            limit = self.after if n == self.victim else None
            threading.Thread(target=self._pump, args=(a, b, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, None), daemon=True).start()

    def _reset(self, *socks):
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def _pump(self, src, dst, limit):
        carried = 0
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            carried += len(data)
            if limit is not None and carried >= limit:
                self.cut.set()
                self._reset(src, dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.lsock.close()


def test_a_cut_channel_fails_the_migration_and_the_source_runs_on():
    with memload_vm("src", mib=24) as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination("dst")
        with dst:
            proxy = CuttingProxy(int(uri.rsplit(":", 1)[1]), victim=2, after=1 << 20)
            try:
                q = start(src, "tcp:127.0.0.1:%d" % proxy.port, channels=2,
                          bandwidth_mbps=200)
                r = wait_migration(q, timeout=120)
            finally:
                proxy.close()
            assert proxy.cut.is_set(), "the proxy never cut the channel"
            assert r["status"] == "failed", r
            assert "page channel" in r["error"] or "closed" in r["error"], r
            print("failed as expected: %s" % r["error"])
            st = src.qmp().cmd("query-status")
            assert st["status"] == "running", st
            for _ in range(2):
                src.wait_for(PASS_RE, timeout=90)
            assert "memload: ERROR" not in src.console(), src.tail()
            assert dst.wait_exit(60) != 0, dst.tail()


# ---- a stranger at the door -----------------------------------------------------

def prove_secret(sock, key):
    """The source's half of the secret exchange (docs/stream.md)."""
    hello = b""
    while len(hello) < 48:
        chunk = sock.recv(48 - len(hello))
        assert chunk, "the destination closed before its challenge"
        hello += chunk
    assert hello[:8] == b"FERRYKEY", hello[:8]
    nonce_d, nonce_s = hello[16:48], os.urandom(32)
    mac = hmac.new(key, b"ferry source" + nonce_d + nonce_s, hashlib.sha256).digest()
    sock.sendall(nonce_s + mac)
    want = hmac.new(key, b"ferry destination" + nonce_d + nonce_s, hashlib.sha256).digest()
    got = b""
    while len(got) < 32:
        chunk = sock.recv(32 - len(got))
        assert chunk, "the destination refused our proof"
        got += chunk
    assert got == want


def join_section(nonce, index, count):
    body = nonce + struct.pack("<II", index, count)
    hdr = struct.pack("<IIQ", SEC_JOIN, 0, len(body))
    return b"FERRYMIG" + struct.pack("<II", 1, 0) + hdr + body + \
        struct.pack("<Q", xxh64(hdr + body))


def closed_without_answer(sock, timeout=15):
    sock.settimeout(timeout)
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def test_a_stranger_with_a_wrong_nonce_is_refused():
    with tempfile.TemporaryDirectory(prefix="ferry-channels-") as tmp:
        text = "the stranger knows the secret but not the nonce"
        secret = secret_file(tmp, "secret", text)
        with memload_vm("src", mib=24) as src:
            src.wait_for(PASS_RE, timeout=120)
            dst, uri = destination("dst", secret=secret)
            with dst:
                q = start(src, uri, channels=2, secret_file=str(secret),
                          bandwidth_mbps=40)
                wait_until(lambda: src.qmp().cmd("query-migrate")["status"] == "active",
                           60, "migration active")
                port = int(uri.rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                    prove_secret(s, text.encode())
                    s.sendall(join_section(os.urandom(32), 0, 2))
                    assert closed_without_answer(s)
                still = src.qmp().cmd("query-migrate")["status"]
                assert still == "active", "the migration ended before the stranger " \
                    "was turned away (%s): the test proves nothing" % still
                wait_until(lambda: "wrong join nonce" in dst.output(), 30,
                           "the refusal on the destination's stderr")
                r = wait_migration(q, timeout=240)
                assert_whole(r, src, dst, 2)


def test_rounds_stay_in_order_when_one_channel_lags():
    """FERRY_TEST_FAULT=lagging-channel on both sides (src/migrate/
    channels.c): every page changes channel from one round to the next,
    and the destination's channel 0 applies its pages of round r only once
    channel 1 has read SYNC(r+1) or waits at the barrier for channel 0.
    With the barrier channel 1 waits, and the guest arrives whole; without
    it, every page written in the last two rounds that channel 0 carried
    in the one before last lands over its newer copy, and the switchover's
    digest refuses the destination (every run, not 1 in 3 as when channel
    0 only read late)."""
    from ferrylib import VM
    from test_channel import MEM, listening
    lag = dict(os.environ, FERRY_TEST_FAULT="lagging-channel")
    src = VM(append="console=ttyS0 quiet ferry.run=memload,--mib,24,--rate,0,--threads,1",
             mem=MEM, name="src-lag", env=lag)
    with src:
        src.wait_for(PASS_RE, timeout=120)
        port = free_tcp_port()
        dst = VM(incoming="tcp:127.0.0.1:%d" % port, mem=MEM, name="dst-lag", env=lag)
        with dst:
            wait_until(lambda: listening(port), 30, "destination listening")
            q = start(src, "tcp:127.0.0.1:%d" % port, channels=2, downtime_ms=50,
                      bandwidth_mbps=400)
            r = wait_migration(q, timeout=300)
            print("channels 2, one lagging: %s" % {k: r.get(k) for k in
                                                   ("total_ms", "rounds", "downtime_ms",
                                                    "error")})
            assert r["rounds"] >= 2, r
            assert_whole(r, src, dst, 2)


def test_postcopy_after_rounds_on_channels():
    """A hot set the capped link cannot carry goes post-copy: the channels'
    rounds end (every channel's END before the POSTCOPY section is acted
    on), then the main stream pushes and serves the rest; the guest runs
    on whole."""
    from test_migrate import assert_guest_healthy, destination, memload_vm as mvm
    with mvm(mib=64, mem=512, name="src") as src:
        src.wait_for(PASS_RE, timeout=180)
        dst, uri = destination(mem=512, name="dst")
        with dst:
            q = src.qmp()
            q.events()
            q.cmd("migrate", uri=uri, bandwidth_mbps=40, postcopy=True, channels=2)
            statuses = []
            while True:
                ev = q.wait_event("MIGRATION", timeout=300)
                statuses.append(ev["data"]["status"])
                if statuses[-1] in ("completed", "failed", "cancelled"):
                    break
            assert statuses[-1] == "completed", ev
            assert "postcopy" in statuses, statuses
            assert ev["data"]["channels"] == 2, ev
            assert src.quit() == 0, src.tail()
            assert_guest_healthy(dst, passes=3)
