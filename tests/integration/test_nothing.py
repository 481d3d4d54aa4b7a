"""Shared-nothing migration: `migrate` with "disks": "copy".

The guest writes a log to its raw disk (`ft disklog`, O_DIRECT|O_DSYNC)
while it migrates between two namespaced hosts whose images live in
separate directories: the source's image (with host data placed before
the boot) and, on the destination, a new, empty image of the same size.

What is proved, and how it would fail:
- after the migration the guest's own check (`ft disklog-check`, run on
  the destination) finds every record written before, during and after
  the copy; the host finds the log and the host data in the destination's
  image byte for byte, and the image still sparse: a block written during
  the copy and not sent again (dirty tracking), a lost last round at the
  switchover, or a data extent skipped fails it;
- a destination killed in the disk phase, in the memory phase or after
  the final round (all state received, not confirmed) leaves
  the guest running on the source, its image locked and intact; the guest
  later checks its whole log there;
- a relay that flips a byte in a DISK section: the destination refuses,
  the source runs on, and the destination's partial image is emptied; a
  relay that cuts the link in the disk phase (under a migration secret)
  does the same;
- a block changed after the source hashed it (FERRY_TEST_FAULT=disk-
  corrupt on the source): the destination's disk digest refuses it, the
  source runs on, the partial copy is emptied;
- a destination lost after the source let go leaves the source paused
  in handoff-unknown (its own lock cannot tell whether the guest runs
  there);
- refused before anything moves: a destination image that holds data, or
  one of another size, or the source's own image.
"""
import os
import re
import socket
import select
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import topology
from ferrylib import VM, Skip, free_tcp_port, wait_until
from test_storage import (BOOT, DISK_MIB, MIB, RATE, allocated, host_check_data,
                          host_check_log, lock_state, make_image)
from test_migrate import _listening, wait_migration

MEM = 128


def logging_guest(image, records, prefix=(), name="src"):
    run = ["ft", "disklog", "/dev/vda", "--count", str(records), "--rate", str(RATE),
           ";", "ft", "disklog-check", "/dev/vda"]
    return VM(append=f"console=ttyS0 quiet ferry.run={','.join(run)}", mem=MEM,
              disk=image, prefix=prefix, name=name)


def empty_image(path, mib=DISK_MIB):
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
    return path


def wait_check_passes(vm, records):
    status = vm.wait_exit(BOOT + records // RATE)
    m = re.search(r"^ft: disklog-check: (\d+) records ok$", vm.console(), re.M)
    assert status == 0 and m and int(m.group(1)) >= records, (
        f"{vm.name}: disklog-check (status {status}):\n{vm.tail()}")


def local_destination(image, env=None, name="dst", secret=None):
    port = free_tcp_port()
    spec = f"tcp:127.0.0.1:{port}" + (f",secret-file={secret}" if secret else "")
    vm = VM(incoming=spec, mem=MEM, disk=image, env=env, name=name)
    wait_until(lambda: _listening(port) or not vm.running(), 30, "destination listening")
    return vm, f"tcp:127.0.0.1:{port}"


def migrate_copy(src, uri, **args):
    q = src.qmp()
    q.cmd("migrate", uri=uri, disks="copy", **args)
    return wait_migration(q, timeout=120)


def test_shared_nothing_between_two_hosts():
    if not topology.available():
        raise Skip("cannot create network namespaces (needs root and iproute2)")
    records = 4000
    with topology.Topology() as topo, \
            tempfile.TemporaryDirectory(prefix="ferry-host-a-") as dir_a, \
            tempfile.TemporaryDirectory(prefix="ferry-host-b-") as dir_b:
        src_image = Path(dir_a) / "guest.raw"
        dst_image = empty_image(Path(dir_b) / "guest.raw")
        make_image(src_image)
        with logging_guest(src_image, records, topo.exec_prefix(topo.hosts["a"])) as src:
            src.wait_for(r"^ft: disklog: seq \d+", BOOT)
            port = 4444
            uri = f"tcp:{topo.host_ip('b')}:{port}"
            dst = VM(incoming=uri, mem=MEM, disk=dst_image, name="dst",
                     prefix=topo.exec_prefix(topo.hosts["b"]))
            with dst:
                topo.wait_listening(topo.hosts["b"], port, alive=dst.running)
                r = migrate_copy(src, uri)
                assert r["status"] == "completed", f"{r}\n{src.tail()}\n{dst.tail()}"
                assert src.quit() == 0, src.tail()
                print(f"migrated with its disk: total {r.get('total_ms')} ms, downtime "
                      f"{r.get('downtime_ms')} ms, {r.get('transferred_bytes')} bytes")
                wait_check_passes(dst, records)
        host_check_log(dst_image, records)
        host_check_data(dst_image)
        host_check_data(src_image)
        assert allocated(dst_image) < 24 * MIB, (
            f"the copy is not sparse: {allocated(dst_image)} bytes allocated")


def test_destination_killed_in_disk_or_memory_phase_keeps_the_source():
    records = 8000
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        with logging_guest(src_image, records) as src:
            src.wait_for(r"^ft: disklog: seq \d+", BOOT)
            for point in ("disk", "round1", "switchover"):
                dst_image = empty_image(Path(d) / f"dst-{point}.raw")
                dst, uri = local_destination(dst_image, env=dict(os.environ, FERRY_TEST_FAULT=point),
                                             name=f"dst-{point}")
                with dst:
                    r = migrate_copy(src, uri)
                    assert r["status"] == "failed", r
                    dst.wait_exit(30)
                assert src.qmp().cmd("query-status")["status"] == "running", src.tail()
                assert lock_state(src_image) == "write", "the source let go of its image"
                print(f"destination killed at {point}: {r.get('error')}")
            wait_check_passes(src, records)
        host_check_log(src_image, records)
        host_check_data(src_image)


def test_slow_link_sends_disk_extents_compressed():
    """Below 1 Gbit/s (here a 400 Mbit/s cap) DISK extents go as zstd, as
    pages do: 16 MiB of text on the disk cross in far fewer bytes, and the
    copy is still the image byte for byte (its digest, the host's check).
    Without compression the transfer would carry all 16 MiB."""
    text = b"".join(b"block %08d of a text a disk compresses well\n" % i
                    for i in range(16 * MIB // 48))[:16 * MIB]
    records = 600
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        with open(src_image, "r+b") as f:
            f.seek(8 * MIB)
            f.write(text)
        dst_image = empty_image(Path(d) / "dst.raw")
        with logging_guest(src_image, records) as src:
            src.wait_for(r"^ft: disklog: seq \d+", BOOT)
            dst, uri = local_destination(dst_image)
            with dst:
                r = migrate_copy(src, uri, bandwidth_mbps=400)
                assert r["status"] == "completed", r
                assert src.quit() == 0, src.tail()
                print(f"16 MiB of text and 8 MiB of host data on the disk: "
                      f"{r['transferred_bytes'] / MIB:.1f} MiB sent")
                # measured: 5.0 MiB sent, 28.8 MiB with the extents raw
                assert r["transferred_bytes"] < 16 * MIB, r
                wait_check_passes(dst, records)
        host_check_data(dst_image)
        with open(dst_image, "rb") as f:
            f.seek(8 * MIB)
            assert f.read(len(text)) == text, "the text on the disk changed on the way"


def test_bad_destination_images_are_refused():
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        full = Path(d) / "full.raw"
        make_image(full)
        small = empty_image(Path(d) / "small.raw", DISK_MIB // 2)
        with VM(append="console=ttyS0 quiet", mem=MEM, disk=src_image, name="src") as src:
            for image, why in ((full, "already holds data"), (small, "bytes"),
                               (src_image, "source's own")):
                dst, uri = local_destination(image, name="dst")
                with dst:
                    r = migrate_copy(src, uri)
                    assert r["status"] == "failed" and why in r.get("error", ""), r
                    dst.wait_exit(30)
                assert src.qmp().cmd("query-status")["status"] == "running", src.tail()
            host_check_data(full)       # nothing written into it


class FlipRelay:
    """Carries the source's stream to the destination and flips one byte
    of the data of the 20th DISK section (docs/stream.md), so the
    destination has written some blocks before it finds out."""

    DISK = 0x008

    def __init__(self, dst_uri, cut=False, skip=0):
        host, port = dst_uri[4:].rsplit(":", 1)
        self.cut = cut          # close both ways there instead of flipping
        self.skip = skip        # bytes before the stream (the secret's proof)
        self.dst = (host, int(port))
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.uri = "tcp:127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.buf, self.need, self.part, self.flipped = bytearray(), 16, "stream", False
        self.seen = 0
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _forward(self, data):
        data = bytearray(data)
        pos = min(self.skip, len(data))
        self.skip -= pos
        while pos < len(data) and not self.flipped:
            take = min(self.need - len(self.buf), len(data) - pos)
            self.buf += data[pos:pos + take]
            pos += take
            if len(self.buf) < self.need:
                break
            if self.part == "section":
                stype, _f, length = struct.unpack_from("<IIQ", self.buf)
                if stype == self.DISK and length > 24 + 100:
                    self.seen += 1
                    if self.seen == 20 and self.cut:
                        self.flipped = True
                        self.stop.set()
                        return bytes(data[:max(pos - 16, 0)])
                    if self.seen == 20:
                        data[pos + 24 + 50 if pos + 74 < len(data) else pos - 1] ^= 0x40
                        self.flipped = True
                self.buf, self.need, self.part = bytearray(), length + 8, "payload"
            else:
                self.buf, self.need, self.part = bytearray(), 16, "section"
        return bytes(data)

    def _run(self):
        self.lsock.settimeout(60)
        src = self.lsock.accept()[0]
        dst = socket.create_connection(self.dst)
        while not self.stop.is_set():
            for s in select.select([src, dst], [], [], 0.1)[0]:
                data = s.recv(65536)
                if not data:
                    self.stop.set()
                    break
                (src if s is dst else dst).sendall(data if s is dst else self._forward(data))
        src.close()
        dst.close()

    def close(self):
        self.stop.set()
        self.lsock.close()


def test_flipped_disk_stream_is_refused_and_the_partial_copy_emptied():
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        dst_image = empty_image(Path(d) / "dst.raw")
        with VM(append="console=ttyS0 quiet", mem=MEM, disk=src_image, name="src") as src:
            dst, uri = local_destination(dst_image, name="dst")
            relay = FlipRelay(uri)
            with dst:
                r = migrate_copy(src, relay.uri)
                assert r["status"] == "failed", r
                assert relay.flipped, "the relay found no disk data to flip"
                dst.wait_exit(30)
                assert "checksum" in dst.console() or "checksum" in r.get("error", ""), (
                    f"{r}\n{dst.tail()}")
            relay.close()
            assert src.qmp().cmd("query-status")["status"] == "running", src.tail()
        assert allocated(dst_image) == 0 and os.path.getsize(dst_image) == DISK_MIB * MIB, (
            f"the partial copy was left: {allocated(dst_image)} bytes allocated")
        host_check_data(src_image)


def test_cut_disk_stream_under_a_secret_fails_cleanly():
    """The disk extents run in the secured channel like everything else
    (a secret here); a link cut in the disk phase fails the migration, the
    source runs on, and the destination empties its partial image."""
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        dst_image = empty_image(Path(d) / "dst.raw")
        secret = Path(d) / "secret"
        secret.write_text("a secret both hosts were given\n")
        with VM(append="console=ttyS0 quiet", mem=MEM, disk=src_image, name="src") as src:
            dst, uri = local_destination(dst_image, name="dst", secret=secret)
            relay = FlipRelay(uri, cut=True, skip=64)     # nonce, HMAC (docs/stream.md)
            with dst:
                r = migrate_copy(src, relay.uri, secret_file=str(secret))
                assert r["status"] == "failed", r
                assert relay.flipped, "the relay found no disk data to cut in"
                assert dst.wait_exit(30) != 0, dst.tail()
            relay.close()
            assert src.qmp().cmd("query-status")["status"] == "running", src.tail()
            assert lock_state(src_image) == "write", "the source let go of its image"
        assert allocated(dst_image) == 0, (
            f"the partial copy was left: {allocated(dst_image)} bytes allocated")
        host_check_data(src_image)


def test_destination_lost_after_the_release_holds_the_source():
    """With disks: copy the destination runs on images of its own, so the
    source taking its own lock back proves nothing: a destination lost
    after the source let go (it may have started the guest) leaves the
    source paused in handoff-unknown, never resumed on its own."""
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        dst_image = empty_image(Path(d) / "dst.raw")
        with VM(append="console=ttyS0 quiet", mem=MEM, disk=src_image, name="src") as src:
            dst, uri = local_destination(dst_image, name="dst",
                                         env=dict(os.environ, FERRY_TEST_FAULT="released"))
            with dst:
                r = migrate_copy(src, uri)
                assert r["status"] == "failed", r
                dst.wait_exit(30)
            st = src.qmp().cmd("query-status")
            assert st["status"] == "paused" and st.get("reason") == "handoff-unknown", st


def test_disk_digest_mismatch_is_refused():
    """A block that differs from what the source hashed (a bug between its
    read and the wire) reaches the destination with a valid checksum; the
    disk digest before the switchover catches it."""
    with tempfile.TemporaryDirectory(prefix="ferry-nothing-") as d:
        src_image = Path(d) / "src.raw"
        make_image(src_image)
        dst_image = empty_image(Path(d) / "dst.raw")
        with VM(append="console=ttyS0 quiet", mem=MEM, disk=src_image, name="src",
                env=dict(os.environ, FERRY_TEST_FAULT="disk-corrupt")) as src:
            dst, uri = local_destination(dst_image, name="dst")
            with dst:
                r = migrate_copy(src, uri)
                assert r["status"] == "failed", r
                assert dst.wait_exit(30) != 0
                assert "disk 0 digest mismatch" in dst.console() + r.get("error", ""), (
                    f"{r}\n{dst.tail()}")
            assert src.qmp().cmd("query-status")["status"] == "running", src.tail()
        assert allocated(dst_image) == 0, (
            f"the refused copy was left: {allocated(dst_image)} bytes allocated")
        host_check_data(src_image)
