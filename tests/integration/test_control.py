"""The control socket of a running ferry-vm, as a user sees it.

Each test boots the guest (build/guest/Image and initrd.img) with
--control on a socket in the VM's own directory and speaks QMP-style JSON
to it: the greeting, query-status, stop and cont with their events, quit,
malformed requests that must get an error while the guest keeps running,
several clients at once, and a client that vanishes in the middle of a
line. The protocol details are unit-tested in tests/unit/test_control.c;
here the point is that ferry-vm wires it to the machine.
"""

import os
import socket
import stat

from ferrylib import QMP, QMPError, VM

TIMEOUT = 300
BOOT = 120          # seconds to wait for the guest's "ferry-init: ready"

CONTRACT_COMMANDS = {"query-status", "stop", "cont", "quit", "migrate",
                     "query-migrate", "migrate-cancel", "save"}


def expect_error(reply, cls="GenericError"):
    """reply is an error of class cls, with a description."""
    assert "error" in reply and "return" not in reply, f"expected an error, got {reply}"
    assert reply["error"]["class"] == cls, reply
    assert reply["error"]["desc"], reply


def assert_running(vm, qmp):
    """The process lives and the guest runs."""
    assert vm.running(), f"ferry-vm ended with status {vm.proc.returncode}"
    status = qmp.cmd("query-status")
    assert status["status"] == "running" and status["running"] is True, status


def test_greeting_and_query_status():
    with VM(append="console=ttyS0") as vm:
        qmp = vm.qmp(negotiate=False)
        version = qmp.greeting["QMP"]["version"]
        assert version["ferry"].count(".") == 2, qmp.greeting
        assert qmp.greeting["QMP"]["capabilities"] == []
        assert qmp.cmd("qmp_capabilities") == {}
        assert_running(vm, qmp)
        # the socket is the owner's alone: it can stop or migrate the VM
        mode = stat.S_IMODE(os.stat(vm.control_path).st_mode)
        assert mode & 0o077 == 0, f"control socket mode {oct(mode)}"


def test_query_commands_lists_the_contract():
    with VM() as vm:
        names = {c["name"] for c in vm.qmp().cmd("query-commands")}
        missing = CONTRACT_COMMANDS - names
        assert not missing, f"query-commands lacks {sorted(missing)}: {sorted(names)}"


def test_stop_and_cont():
    with VM() as vm:
        qmp = vm.qmp()
        vm.wait_ready(BOOT)
        assert qmp.cmd("stop") == {}
        qmp.wait_event("STOP")
        status = qmp.cmd("query-status")
        assert status["status"] == "paused" and status["running"] is False, status
        assert qmp.cmd("stop") == {}          # stopping a stopped VM is fine
        status = qmp.cmd("query-status")
        assert status["status"] == "paused", status
        assert qmp.cmd("cont") == {}
        qmp.wait_event("RESUME")
        assert_running(vm, qmp)


def test_guest_boots_after_stop_and_cont_during_boot():
    """A pause in the middle of the boot loses nothing: the guest still
    gets to its /init afterwards."""
    with VM() as vm:
        qmp = vm.qmp()
        qmp.cmd("stop")
        status = qmp.cmd("query-status")
        assert status["status"] == "paused", status
        qmp.cmd("cont")
        vm.wait_ready(BOOT)
        assert_running(vm, qmp)


def test_quit_ends_the_process_with_status_0():
    with VM() as vm:
        qmp = vm.qmp()
        vm.wait_ready(BOOT)
        assert qmp.cmd("quit") == {}
        status = vm.wait_exit(60)
        assert status == 0, f"exit status {status} after quit; last lines:\n{vm.tail()}"
        assert not vm.control_path.exists(), "ferry-vm left its control socket behind"


def test_malformed_requests_get_an_error_and_the_vm_keeps_running():
    bad = [
        (b"this is not json", "GenericError"),
        (b'{"execute": ', "GenericError"),
        (b'["execute", "query-status"]', "GenericError"),
        (b"42", "GenericError"),
        (b"{}", "GenericError"),
        (b'{"execute": 7}', "GenericError"),
        (b'{"execute": "query-status", "arguments": [1]}', "GenericError"),
        (b'{"execute": "query-status", "argumnets": {}}', "GenericError"),
        (b'{"execute": "no-such-command"}', "CommandNotFound"),
        (b'{"execute": "\xff\xfe"}', "GenericError"),
        (b"x" * 70000, "GenericError"),
    ]
    with VM() as vm:
        qmp = vm.qmp()
        for line, cls in bad:
            expect_error(qmp.raw(line), cls)
            assert_running(vm, qmp)
        try:
            qmp.cmd("no-such-command")
            raise AssertionError("an unknown command succeeded")
        except QMPError as e:
            assert e.cls == "CommandNotFound", e
        vm.wait_ready(BOOT)
        assert_running(vm, qmp)


def test_id_is_echoed():
    with VM() as vm:
        qmp = vm.qmp()
        reply = qmp.raw('{"execute": "query-status", "id": "abc"}')
        assert reply["id"] == "abc" and reply["return"]["running"] is True, reply
        reply = qmp.raw('{"execute": "no-such-command", "id": [1, 2]}')
        assert reply["id"] == [1, 2], reply
        expect_error(reply, "CommandNotFound")


def test_events_reach_every_client():
    with VM() as vm:
        a, b = vm.qmp(), vm.qmp()
        a.cmd("stop")
        for client in (a, b):
            event = client.wait_event("STOP")
            assert set(event["timestamp"]) == {"seconds", "microseconds"}, event
        b.cmd("cont")
        for client in (a, b):
            client.wait_event("RESUME")
        assert_running(vm, a)


def test_client_vanishing_mid_line_is_harmless():
    with VM() as vm:
        qmp = vm.qmp()
        # a quit that never got its newline must not run
        for partial in (b'{"execute": "quit"}', b'{"execute": "qu'):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(vm.control_path))
            s.sendall(partial)
            s.close()
        # a client that stops reading its replies halfway
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(vm.control_path))
        s.sendall(b'{"execute": "query-status"}\n' * 1000)
        s.close()
        assert_running(vm, qmp)
        vm.wait_ready(BOOT)
        assert_running(vm, qmp)
        with QMP(vm.control_path) as late:     # and new clients still come in
            assert late.cmd("query-status")["running"] is True


def test_socket_in_use_is_refused():
    with VM(name="first") as first:
        qmp = first.qmp()
        with VM(name="second", control=first.control_path) as second:
            status = second.wait_exit(60)
            assert status != 0, "a second ferry-vm took over a live control socket"
            out = second.output()
            assert str(first.control_path) in out, out
        assert_running(first, qmp)


def test_stale_socket_is_replaced():
    with VM(start=False) as vm:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(vm.control_path))      # bound, never served: stale
        stale.close()
        vm.start()
        assert_running(vm, vm.qmp())
