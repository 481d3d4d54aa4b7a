"""No lost guest: what a ferry-vm says and does about a paused guest.

A source that handed its guest over stays, paused in postmigrate and
answering queries, until it is told quit; one whose destination went
silent after it let go of the disks stays paused with the reason
"handoff-unknown", and `cont` there needs {"force": true} and is announced
to every client. query-status names the reason for every pause. Also the
machine's refusals of bad boot input: a truncated kernel Image, a TAP
name that does not exist.

The guest runs memload (see test_migrate.py), which checks every page of
its working set: a guest resumed with wrong memory fails these tests.
Migrations run over loopback; the destination's faults come from
FERRY_TEST_FAULT (src/migrate/incoming.c).
"""

import os
import subprocess

from ferrylib import (GUEST_IMAGE, GUEST_INITRD, FERRY_VM, REPO, VM, QMPError, Skip,
                      wait_until)
from test_migrate import (PASS_RE, assert_guest_healthy, destination, memload_vm,
                          wait_migration)

TIMEOUT = 240


def status(vm):
    return vm.qmp().cmd("query-status")


def expect_refused(q, name, word, **args):
    try:
        q.cmd(name, **args)
    except QMPError as e:
        assert word in e.desc, e.desc
        return e.desc
    raise AssertionError(f"{name} {args} was accepted")


def test_source_stays_in_postmigrate_until_quit():
    with memload_vm(mib=8, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst")
        with dst:
            q = src.qmp()
            q.cmd("migrate", uri=uri)
            r = wait_migration(q)
            assert r["status"] == "completed", r
            # a polling client keeps getting answers: nothing closes on it
            for _ in range(3):
                st = q.cmd("query-status")
                assert st["status"] == "postmigrate" and st["running"] is False, st
                assert st["reason"] == "postmigrate" and uri in st["description"], st
                assert q.cmd("query-migrate")["status"] == "completed"
            assert src.running(), src.tail()
            with src.qmp() as late:     # and new clients still come in
                assert late.cmd("query-status")["status"] == "postmigrate"
            expect_refused(q, "cont", "migrated")
            expect_refused(q, "cont", "migrated", force=True)
            expect_refused(q, "save", "destination", path=str(src.dir / "x"))
            expect_refused(q, "migrate", "not running here", uri=uri)
            assert_guest_healthy(dst)
            assert src.quit() == 0, src.tail()
            assert not src.control_path.exists()


def test_handoff_unknown_needs_a_forced_cont():
    """The destination dies right after the source released the disks:
    the source cannot tell whether it runs the guest (no disk lock to take
    back decides it), so it must not resume on its own, nor on a plain
    cont."""
    with memload_vm(mib=8, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst-released",
                               env=dict(os.environ, FERRY_TEST_FAULT="released"))
        with dst:
            q = src.qmp()
            watcher = src.qmp()         # another client hears the forced cont
            q.cmd("migrate", uri=uri)
            r = wait_migration(q)
            assert r["status"] == "failed", r
            assert dst.wait_exit(30) != 0
        st = q.cmd("query-status")
        assert st["status"] == "paused" and st["running"] is False, st
        assert st["reason"] == "handoff-unknown", st
        assert "force" in st["description"] and uri in st["description"], st
        desc = expect_refused(q, "cont", "force")
        assert "twice" in desc, desc
        expect_refused(q, "cont", "force", force=False)
        expect_refused(q, "cont", "true or false", force="yes")
        expect_refused(q, "migrate", "unknown outcome", uri=uri)
        expect_refused(q, "save", "may run", path=str(src.dir / "x"))
        assert q.cmd("query-status")["reason"] == "handoff-unknown"
        q.cmd("stop")                   # changes nothing: still the same hold
        assert q.cmd("query-status")["reason"] == "handoff-unknown"
        assert "FORCED_RESUME" not in [e["event"] for e in watcher.events()]

        assert q.cmd("cont", force=True) == {}
        ev = watcher.wait_event("FORCED_RESUME")
        assert ev["data"]["reason"] == "handoff-unknown", ev
        assert uri in ev["data"]["description"], ev
        watcher.wait_event("RESUME")
        st = q.cmd("query-status")
        assert st["status"] == "running" and "reason" not in st, st
        assert_guest_healthy(src)


def test_forced_cont_still_needs_the_disks_back():
    """The destination takes the disk and then says nothing: the source
    cannot get the disk's lock back, so even a forced cont is refused while
    the destination holds it; once it is gone, the forced cont works."""
    with VM(start=False, name="disk") as scratch:
        image = scratch.dir / "guest.raw"
        with open(image, "wb") as f:
            f.truncate(8 << 20)
        with memload_vm(mib=8, name="src", disk=image) as src:
            src.wait_for(PASS_RE, timeout=120)
            dst, uri = destination(name="dst-acquired", disk=image,
                                   env=dict(os.environ, FERRY_TEST_FAULT="stall:acquired"))
            with dst:
                q = src.qmp()
                q.cmd("migrate", uri=uri)
                r = wait_migration(q, timeout=120)
                assert r["status"] == "failed", r
                st = q.cmd("query-status")
                assert st["reason"] == "handoff-unknown", st
                desc = expect_refused(q, "cont", "devices back", force=True)
                assert "in use by another process" in desc, desc
                assert q.cmd("query-status")["reason"] == "handoff-unknown"
                dst.kill()
            assert q.cmd("cont", force=True) == {}
            assert q.cmd("query-status")["status"] == "running"
            assert_guest_healthy(src)


def test_postcopy_that_loses_its_destination_holds_the_guest():
    """Past a post-copy handoff the guest ran on the destination: losing it
    leaves the source paused in handoff-unknown, never running on its own."""
    with memload_vm(mib=16, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        dst, uri = destination(name="dst-postcopy")
        with dst:
            q = src.qmp()
            # the guest rewrites its hot set faster than 16 Mbit/s carries
            # it: rounds stop shrinking and the planner goes post-copy
            q.cmd("migrate", uri=uri, postcopy=True, bandwidth_mbps=16, downtime_ms=1)
            while True:
                ev = q.wait_event("MIGRATION", timeout=120)["data"]
                assert ev["status"] not in ("completed", "failed", "cancelled"), ev
                if ev["status"] == "postcopy":
                    break
            dst.kill()
            r = wait_migration(q)
        assert r["status"] == "failed", r
        st = q.cmd("query-status")
        assert st["status"] == "paused" and st["reason"] == "handoff-unknown", st
        assert "post-copy" in st["description"], st
        expect_refused(q, "cont", "force")
        assert q.cmd("cont", force=True) == {}
        assert_guest_healthy(src)


def test_query_status_names_every_pause():
    with memload_vm(mib=8, name="src") as src:
        src.wait_for(PASS_RE, timeout=120)
        q = src.qmp()
        assert "reason" not in q.cmd("query-status")
        q.cmd("stop")
        st = q.cmd("query-status")
        assert st["status"] == "paused" and st["reason"] == "user", st
        assert "cont" in st["description"], st
        q.cmd("cont")
        assert q.cmd("query-status")["status"] == "running"

        q.cmd("save", path=str(src.dir / "saved"))
        st = q.cmd("query-status")
        assert st["status"] == "paused" and st["reason"] == "save", st
        q.cmd("cont")
        assert "reason" not in q.cmd("query-status")

        # a destination that stops answering in the switchover: the source
        # is paused by the migration until the migration fails, then runs
        dst, uri = destination(name="dst-stall",
                               env=dict(os.environ, FERRY_TEST_FAULT="stall:switchover"))
        with dst:
            q.cmd("migrate", uri=uri, downtime_ms=60000)
            wait_until(lambda: q.cmd("query-status")["running"] is False, 60,
                       "the source paused for the switchover")
            st = q.cmd("query-status")
            assert st["status"] == "paused" and st["reason"] == "migration", st
            expect_refused(q, "cont", "migration")
            dst.kill()
            r = wait_migration(q)
            assert r["status"] == "failed", r
        st = q.cmd("query-status")
        assert st["status"] == "running" and "reason" not in st, st
        assert_guest_healthy(src)


# An allocator that fails every large allocation once a flag file exists:
# the source's migration buffers are the only ones that large while its
# guest runs.
FAILING_MALLOC = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
void *malloc(size_t n)
{
    const char *flag = n >= (512u << 10) ? getenv("FERRY_TEST_MALLOC_FLAG") : NULL;
    if (flag && access(flag, F_OK) == 0) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_malloc(n);
}
"""


def test_out_of_memory_fails_the_migration_not_the_guest():
    with VM(start=False, name="lib") as scratch:
        src_c, lib = scratch.dir / "failing_malloc.c", scratch.dir / "failing_malloc.so"
        src_c.write_text(FAILING_MALLOC)
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src_c)],
                       check=True)
        flag = scratch.dir / "fail-now"
        env = dict(os.environ, LD_PRELOAD=str(lib), FERRY_TEST_MALLOC_FLAG=str(flag))
        with memload_vm(mib=8, name="src", env=env) as src:
            src.wait_for(PASS_RE, timeout=120)
            q = src.qmp()
            dst, uri = destination(name="dst1")
            with dst:
                flag.touch()
                q.cmd("migrate", uri=uri)
                r = wait_migration(q)
                assert r["status"] == "failed" and "out of memory" in r["error"], r
                assert_guest_healthy(src)
            flag.unlink()
            dst, uri = destination(name="dst2")
            with dst:
                q.cmd("migrate", uri=uri)
                assert wait_migration(q)["status"] == "completed"
                assert_guest_healthy(dst)
                assert src.quit() == 0


def test_truncated_kernel_image_is_refused():
    cut = GUEST_IMAGE.read_bytes()[:4096]
    with VM(start=False, name="cut") as vm:
        path = vm.dir / "Image-cut"
        path.write_bytes(cut)
        res = subprocess.run([str(FERRY_VM), "--kernel", str(path), "--console", "none"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 2, res
        assert "truncated" in res.stderr and str(path) in res.stderr, res.stderr


def _in_new_netns(script):
    """Runs a shell script in a network namespace of its own, which goes
    away with it: nothing it creates outlives the test."""
    return subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)


def test_missing_tap_is_not_created():
    vm = (f"{FERRY_VM} --kernel {GUEST_IMAGE} --initrd {GUEST_INITRD} --console none "
          "--mem 64")
    run = "--append 'console=ttyS0 quiet ferry.run=ft,true'"
    res = _in_new_netns(f"""
        {vm} --net tap=tapp0 {run}; echo "status $?"
        ip -o link show tapp0 >/dev/null 2>&1 && echo "tapp0 exists"
        ip tuntap add dev tap0 mode tap
        {vm} --net tap=tap0 {run} >/dev/null; echo "existing $?"
        {vm} --net tap=tap1,create=on {run} >/dev/null; echo "created $?"
    """)
    out = res.stdout
    assert "status 1" in out, (out, res.stderr)
    assert "no such interface" in res.stderr and "create=on" in res.stderr, res.stderr
    assert "tapp0 exists" not in out, "ferry-vm created a TAP for a mistyped name"
    assert "existing 0" in out and "created 0" in out, (out, res.stderr)


def test_error_exits_free_everything_under_asan():
    """Every early error exit frees what it built: run under the ASan/UBSan
    build (FERRY_SANITIZED_BUILD, default build-asan), LeakSanitizer finds
    nothing. Skipped when that build has no ferry-vm."""
    build = os.environ.get("FERRY_SANITIZED_BUILD") or str(REPO / "build-asan")
    binary = os.path.join(build, "ferry-vm")
    if not os.path.exists(binary):
        raise Skip(f"no sanitized ferry-vm at {binary} (meson setup build-asan "
                   "-Db_sanitize=address,undefined -Db_lundef=false)")
    with VM(start=False, name="asan") as scratch:
        cut = scratch.dir / "Image-cut"
        cut.write_bytes(GUEST_IMAGE.read_bytes()[:4096])
        boot = ["--kernel", str(GUEST_IMAGE), "--initrd", str(GUEST_INITRD),
                "--console", "none"]
        cases = [
            (boot + ["--disk", str(scratch.dir / "missing.raw")], 1),
            (["--kernel", str(cut), "--console", "none"], 2),
            (boot + ["--control", str(scratch.dir / "no" / "such.sock")], 1),
            (boot + ["--console", str(scratch.dir / "no" / "such.log")], 1),
            (boot + ["--mem", "16", "--initrd", str(GUEST_IMAGE)], 1),
            (["--incoming", f"file:{scratch.dir / 'missing.ferry'}", "--console", "none"], 1),
        ]
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1")
        for args, want in cases:
            res = subprocess.run([binary] + args, capture_output=True, text=True,
                                 timeout=60, env=env)
            assert res.returncode == want, (args, res.returncode, res.stderr[-2000:])
            assert "Sanitizer" not in res.stderr and "runtime error" not in res.stderr, (
                args, res.stderr[-3000:])
