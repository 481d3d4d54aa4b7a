"""Live migration between two ferry-vm processes over TCP on loopback.

The guest runs memload, which rewrites its memory continuously and checks
every page against what it wrote one pass earlier: a page that arrives
stale, zero or torn makes it print "memload: ERROR" and exit 1. So a
migration that loses or misorders a single page fails these tests.
"""

import json
import os
import signal
import time

from ferrylib import VM, QMPError, free_tcp_port, wait_until

TIMEOUT = 420
PASS_RE = r"memload: pass \d+ verified"


def memload_vm(mib=16, rate=0, smp=1, mem=256, threads=1, **kw):
    cmd = "memload,--mib,%d,--rate,%d,--threads,%d" % (mib, rate, threads)
    return VM(append="console=ttyS0 quiet ferry.run=" + cmd, smp=smp, mem=mem, **kw)


def destination(mem=256, smp=1, env=None, **kw):
    port = free_tcp_port()
    vm = VM(incoming="tcp:127.0.0.1:%d" % port, mem=mem, smp=smp, env=env, **kw)
    wait_until(lambda: _listening(port), 30, "destination listening")
    return vm, "tcp:127.0.0.1:%d" % port


def _listening(port):
    with open("/proc/net/tcp") as f:
        return any(":%04X" % port in line.split()[1] and line.split()[3] == "0A"
                   for line in f.readlines()[1:])


def wait_migration(qmp, timeout=300):
    """Wait for the MIGRATION event that ends it; returns its figures (the
    event carries them; a completed source then waits in postmigrate for
    quit)."""
    deadline = time.time() + timeout
    while True:
        ev = qmp.wait_event("MIGRATION", timeout=max(1, deadline - time.time()))
        if ev["data"]["status"] in ("completed", "failed", "cancelled"):
            return ev["data"]


def assert_guest_healthy(vm, passes=2, timeout=60):
    """memload keeps passing on vm and never reports an error."""
    for _ in range(passes):
        vm.wait_for(PASS_RE, timeout=timeout)
    assert "memload: ERROR" not in vm.console(), vm.tail()
    assert vm.running(), vm.tail()


def migrate(src, dst_uri, **args):
    q = src.qmp()
    q.cmd("migrate", uri=dst_uri, **args)
    r = wait_migration(q)
    assert r["status"] == "completed", r
    return r


def test_migrate_memload_smp1():
    with memload_vm(mib=16, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst")
        with dst:
            r = migrate(src, uri)
            assert src.quit() == 0, src.tail()     # it waited in postmigrate
            assert r["transferred_bytes"] > 0 and r["rounds"] >= 1, r
            assert r["downtime_ms"] < 5000, r
            assert_guest_healthy(dst)
            st = dst.qmp().cmd("query-status")
            assert st["status"] == "running", st


def test_migrate_back_and_forth_smp4():
    vm = memload_vm(mib=32, smp=4, threads=4, name="hop0")
    vms = [vm]
    try:
        vm.wait_for(PASS_RE, timeout=180)
        for hop in range(1, 4):
            dst, uri = destination(smp=4, name="hop%d" % hop)
            vms.append(dst)
            migrate(vm, uri)
            assert vm.quit() == 0, vm.tail()
            assert_guest_healthy(dst)
            vm = dst
    finally:
        for v in vms:
            v.close()


def test_migrate_refuses_incompatible_destination():
    with memload_vm(mib=8, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(mem=128, name="small")      # less memory
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri)
            r = wait_migration(q)
            assert r["status"] == "failed", r
            assert "memory" in r["error"], r
            assert_guest_healthy(src)
            assert dst.wait_exit(30) != 0


def _fault(point, mib=16, **migrate_args):
    """The destination dies at `point`; the source must keep running."""
    with memload_vm(mib=mib, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst-" + point,
                               env=dict(os.environ, FERRY_TEST_FAULT=point))
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri, **migrate_args)
            r = wait_migration(q)
            assert r["status"] == "failed", r
            assert r.get("error"), r
            assert dst.wait_exit(30) != 0
            assert q.cmd("query-status")["status"] == "running"
            assert_guest_healthy(src, passes=3)


def test_destination_dies_in_setup():
    _fault("handshake")


def test_destination_dies_in_round_1():
    _fault("round1")


def test_destination_dies_in_later_rounds():
    # a slow link and a tight downtime keep pre-copy going for rounds
    _fault("later-rounds", mib=64, bandwidth_mbps=800, downtime_ms=1)


def test_destination_dies_at_switchover_before_confirming():
    _fault("switchover")


def test_cancel_leaves_the_source_running():
    with memload_vm(mib=64, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst")
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri, bandwidth_mbps=200, downtime_ms=1)
            wait_until(lambda: q.cmd("query-migrate")["status"] == "active", 30,
                       "migration active")
            q.events()
            q.cmd("migrate-cancel")
            r = wait_migration(q)
            assert r["status"] == "cancelled", r
            assert_guest_healthy(src)
            assert dst.wait_exit(30) != 0


def test_migrate_command_errors():
    with memload_vm(mib=8, name="src") as src:
        q = src.qmp()
        for args, word in (({}, "uri"), ({"uri": "udp:1.2.3.4:5"}, "tcp"),
                           ({"uri": "tcp:127.0.0.1:1", "downtime_ms": -1}, "downtime"),
                           ({"uri": "tcp:127.0.0.1:1", "postcopy": "yes"}, "postcopy")):
            try:
                q.cmd("migrate", **args)
                raise AssertionError("migrate %s was accepted" % args)
            except QMPError as e:
                assert word in e.desc, e.desc
        # a peer that is not there: fails cleanly, guest keeps running
        q.cmd("migrate", uri="tcp:127.0.0.1:%d" % free_tcp_port())
        r = wait_migration(q)
        assert r["status"] == "failed" and "connect" in r["error"], r
        assert q.cmd("query-status")["status"] == "running"


def test_save_and_restore():
    with memload_vm(mib=16, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        path = src.dir / "guest.ferry"
        q = src.qmp()
        r = q.cmd("save", path=str(path))
        assert "save_ms" in r
        assert q.cmd("query-status")["status"] == "paused"
        q.cmd("quit")
        assert src.wait_exit(30) == 0
        with VM(incoming="file:%s" % path, name="restored") as dst:
            assert_guest_healthy(dst)


def test_corrupt_or_truncated_save_is_refused():
    with memload_vm(mib=8, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        path = src.dir / "guest.ferry"
        q = src.qmp()
        q.cmd("save", path=str(path))
        q.cmd("quit")
        src.wait_exit(30)
        data = path.read_bytes()
        cases = {
            "flipped": data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40])
                       + data[len(data) // 2 + 1:],
            "truncated": data[:len(data) - 100],
            "header": b"XERRYMIG" + data[8:],
        }
        for name, blob in cases.items():
            bad = src.dir / ("bad-" + name)
            bad.write_bytes(blob)
            with VM(incoming="file:%s" % bad, name="bad-" + name) as dst:
                assert dst.wait_exit(60) == 1, (name, dst.tail())
                out = dst.output()
                assert "incoming migration failed" in out, (name, dst.tail())
                assert "memload" not in out, (name, dst.tail())


def _big_hot_set(**migrate_args):
    """A hot set the capped link cannot carry in one round (64 MiB rewritten
    at ~20 MiB/s, link 5 MB/s): pre-copy alone would never finish."""
    with memload_vm(mib=64, mem=512, name="src") as src:
        src.wait_for(PASS_RE, timeout=180)
        dst, uri = destination(mem=512, name="dst")
        with dst:
            r = migrate(src, uri, bandwidth_mbps=40, **migrate_args)
            assert src.quit() == 0, src.tail()
            assert_guest_healthy(dst)
            return r


def test_big_hot_set_converges_by_throttling():
    r = _big_hot_set()
    assert r["throttle_pct"] > 0, r          # it had to throttle to finish


def test_big_hot_set_meets_a_completion_budget():
    # 64 MiB hot on a 5 MB/s link needs a second round of ~13 s after the
    # first copy: a 20 s budget cannot be kept with a bounded pause, so the
    # planner gives up with the reason (before, it switched over with a
    # pause of seconds) and the guest stays on the source (test_bounds.py
    # has the budgets that can be kept)
    with memload_vm(mib=64, mem=512, name="src") as src:
        src.wait_for(PASS_RE, timeout=180)
        dst, uri = destination(mem=512, name="dst")
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri, bandwidth_mbps=40, max_total_s=20)
            r = wait_migration(q)
            assert r["status"] == "failed" and "budget" in r["error"], r
            assert r["total_ms"] <= 20000, r
            assert_guest_healthy(src)


def test_big_hot_set_completes_by_postcopy():
    with memload_vm(mib=64, mem=512, name="src") as src:
        src.wait_for(PASS_RE, timeout=180)
        dst, uri = destination(mem=512, name="dst")
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri, bandwidth_mbps=40, postcopy=True)
            statuses = []
            while True:
                ev = q.wait_event("MIGRATION", timeout=300)
                statuses.append(ev["data"]["status"])
                if statuses[-1] in ("completed", "failed", "cancelled"):
                    break
            assert statuses[-1] == "completed", ev
            assert "postcopy" in statuses, statuses
            assert ev["data"]["postcopy_requests"] > 0, ev    # it fetched on demand
            assert src.quit() == 0, src.tail()
            assert_guest_healthy(dst, passes=3)


def test_guest_clock_never_steps_back_across_migrations():
    """The guest watches its clocks every 10 ms through two migrations; the
    destination takes the source's clock over, so time only goes forward."""
    vm = VM(append="console=ttyS0 quiet ferry.run=ft,clock,30", name="c0")
    vms = [vm]
    try:
        vm.wait_for(r"ft: clock ok at 2 s", timeout=120)
        for hop in (1, 2):
            dst, uri = destination(name="c%d" % hop)
            vms.append(dst)
            migrate(vm, uri)
            assert vm.quit() == 0, vm.tail()
            vm = dst
            vm.wait_for(r"ft: clock ok at", timeout=60)
        assert vm.wait_exit(120) == 0, vm.tail()       # ft clock succeeded
        assert "backwards" not in vm.console(), vm.tail()
    finally:
        for v in vms:
            v.close()
