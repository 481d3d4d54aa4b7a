"""ferrylib - what every ferry integration test uses.

Integration tests are plain functions named test_* in tests/integration/
test_*.py, run by tests/run (no pytest). They start real ferry-vm processes
and talk to them the way a user would:

    from ferrylib import VM

    def test_pause():
        with VM(append="console=ttyS0", smp=2) as vm:
            vm.wait_for(r"ferry-init: ready")
            qmp = vm.qmp()
            qmp.cmd("stop")
            assert qmp.cmd("query-status")["status"] == "paused"

Pieces:
- paths: REPO, BUILD (build/, or $FERRY_BUILD), FERRY_VM, GUEST_IMAGE,
  GUEST_INITRD;
- VM: one ferry-vm process with its own temporary directory (control socket,
  console log); a context manager that always kills the process and removes
  the directory, and prints the console's last lines when the test failed;
- QMP: a client for the control socket (greeting, commands, events);
- Skip: raise it (or call need_tool/need_root) when the machine lacks
  something the test needs; never for a missing or broken ferry build,
  which is a failure;
- small helpers: wait_until, free_tcp_port, need_tool, need_root.

Set FERRY_KEEP_TMP=1 to keep each VM's directory for a look afterwards.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("FERRY_BUILD") or REPO / "build").resolve()
FERRY_VM = BUILD / "ferry-vm"
GUEST_IMAGE = BUILD / "guest" / "Image"
GUEST_INITRD = BUILD / "guest" / "initrd.img"

DEFAULT_APPEND = "console=ttyS0"
READY = r"ferry-init: ready"    # the guest's /init idles from here on
TAIL_LINES = 30


class Skip(Exception):
    """The environment lacks something this test needs (a tool, root, a
    kernel feature). tests/run counts the test as skipped and prints the
    reason. Not for a ferry that is not built or does not work."""


class QMPError(Exception):
    """A command answered {"error": {"class": ..., "desc": ...}}."""

    def __init__(self, cls, desc, reply=None):
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc
        self.reply = reply


class VMExited(Exception):
    """The VM ended while a test was waiting for something else."""


# ---- small helpers ----------------------------------------------------------

def tail(text, n=TAIL_LINES):
    """The last n lines of text, carriage returns dropped."""
    return "\n".join(text.replace("\r", "").splitlines()[-n:])


def wait_until(predicate, timeout, what, interval=0.05):
    """Polls predicate() until it returns something true, and returns that.
    Raises TimeoutError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def free_tcp_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (for migration listeners)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def need_tool(name, package):
    """Skip unless the host has the program name (from Debian's package)."""
    if not shutil.which(name):
        raise Skip(f"{name} is not installed (apt-get install {package})")


def need_root(why):
    """Skip unless running as root (network namespaces, TAP devices...)."""
    if os.geteuid() != 0:
        raise Skip(f"needs root: {why}")


def require_file(path, how):
    """Fails (not skips) when a build product is missing: say how to make it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; build it: {how}")


# ---- the control socket -----------------------------------------------------

class QMP:
    """A client of a ferry-vm control socket.

    Connecting reads the greeting (kept in .greeting) and, by default, sends
    qmp_capabilities. cmd() sends a request with a fresh "id" and returns the
    "return" value, or raises QMPError; events that arrive meanwhile are kept
    for events() and wait_event(). raw() sends any line, for tests of the
    protocol itself. Every read gives up after `timeout` seconds.
    """

    def __init__(self, path, timeout=30, negotiate=True):
        self.path = str(path)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(self.path)
        except OSError:
            self.sock.close()
            raise
        self._buf = b""
        self._events = []
        self._next_id = 1
        self.greeting = self._read_message(timeout)
        if "QMP" not in self.greeting:
            raise ConnectionError(f"{self.path}: expected a QMP greeting, "
                                  f"got {self.greeting!r}")
        if negotiate:
            self.cmd("qmp_capabilities")

    # -- lines
    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError(f"{self.path}: no message from ferry-vm "
                                   f"in {timeout:.0f} s")
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.path}: ferry-vm closed the "
                                      "control connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _read_message(self, timeout):
        line = self._read_line(timeout)
        try:
            msg = json.loads(line)
        except ValueError as e:
            raise ConnectionError(f"{self.path}: ferry-vm sent a line that is "
                                  f"not JSON ({e}): {line[:200]!r}")
        if not isinstance(msg, dict):
            raise ConnectionError(f"{self.path}: ferry-vm sent a non-object: {msg!r}")
        return msg

    def _read_reply(self, timeout):
        """The next message that is not an event; events are queued."""
        while True:
            msg = self._read_message(timeout)
            if "event" in msg:
                self._events.append(msg)
                continue
            return msg

    def send_line(self, line):
        """Sends line (str or bytes) as is, adding a newline if it has none."""
        if isinstance(line, str):
            line = line.encode()
        if not line.endswith(b"\n"):
            line += b"\n"
        self.sock.sendall(line)

    # -- requests
    def raw(self, line, timeout=None):
        """Sends one raw line and returns the next reply, as a dict (errors
        are returned, not raised)."""
        self.send_line(line)
        return self._read_reply(timeout or self.timeout)

    def execute(self, name, arguments=None, timeout=None):
        """Like cmd(), with the arguments as a dict (for names that are not
        Python identifiers)."""
        req = {"execute": name, "id": self._next_id}
        self._next_id += 1
        if arguments is not None:
            req["arguments"] = arguments
        self.send_line(json.dumps(req))
        reply = self._read_reply(timeout or self.timeout)
        if reply.get("id") != req["id"]:
            raise ConnectionError(f"{self.path}: reply to {name} carries id "
                                  f"{reply.get('id')!r}, expected {req['id']}: {reply}")
        if "error" in reply:
            err = reply["error"]
            raise QMPError(err.get("class"), err.get("desc"), reply)
        if "return" not in reply:
            raise ConnectionError(f"{self.path}: reply to {name} has neither "
                                  f"return nor error: {reply}")
        return reply["return"]

    def cmd(self, name, **args):
        """Runs a command; returns its "return" value or raises QMPError."""
        return self.execute(name, args if args else None)

    # -- events
    def _poll_events(self):
        """Queues what has already arrived, without waiting."""
        while select.select([self.sock], [], [], 0)[0] or b"\n" in self._buf:
            if b"\n" not in self._buf:
                data = self.sock.recv(65536)
                if not data:
                    return
                self._buf += data
                continue
            msg = self._read_message(self.timeout)
            if "event" in msg:
                self._events.append(msg)
            else:
                raise ConnectionError(f"{self.path}: unexpected message {msg}")

    def events(self):
        """Every event received so far and not yet taken, oldest first."""
        self._poll_events()
        out, self._events = self._events, []
        return out

    def wait_event(self, name, timeout=30):
        """Waits for the event called name and returns it (the events before
        it stay queued)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("event") == name:
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e.get("event") for e in self._events]
                raise TimeoutError(f"{self.path}: no {name} event in {timeout} s "
                                   f"(got {seen})")
            try:
                msg = self._read_message(left)
            except TimeoutError:
                seen = [e.get("event") for e in self._events]
                raise TimeoutError(f"{self.path}: no {name} event in {timeout} s "
                                   f"(got {seen})") from None
            if "event" not in msg:
                raise ConnectionError(f"{self.path}: unexpected message {msg}")
            self._events.append(msg)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- one VM -----------------------------------------------------------------

class VM:
    """One ferry-vm process.

    Arguments map to ferry-vm options (None leaves an option out):
      kernel, initrd   default to the guest image (GUEST_IMAGE, GUEST_INITRD)
      append           kernel command line (default "console=ttyS0")
      mem, smp         MiB and harts
      disk             a path, "path,ro", or a list of them
      net              e.g. "tap=tap0,mac=52:54:00:12:34:56"
      control          True: a socket in the VM's directory (the default);
                       a path: that socket; False: none
      incoming         "tcp:HOST:PORT" or "file:PATH" (kernel then defaults
                       to none)
      console          "log" (default): --console stdio into the log file;
                       "none", or a file path, passed on as given
      args             extra raw arguments, appended last
      prefix           a command to run ferry-vm under, e.g.
                       ["ip", "netns", "exec", "ns1"]
      start            False to only prepare; call start() later

    ferry-vm's stdout and stderr always go to output.log in the VM's
    directory; with console="log" that is also the console, which
    wait_for() reads.
    """

    def __init__(self, kernel=None, initrd=None, append=None, mem=None, smp=None,
                 disk=None, net=None, control=True, incoming=None, console="log",
                 args=(), prefix=(), binary=None, env=None, name="vm", start=True):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"ferry-{name}-"))
        self.binary = Path(binary) if binary else FERRY_VM
        self.output_path = self.dir / "output.log"
        if control is True:
            self.control_path = self.dir / "control.sock"
        elif control:
            self.control_path = Path(control)
        else:
            self.control_path = None
        if console in ("log", "stdio"):
            self.console_path = self.output_path
            console_arg = "stdio"
        elif console == "none":
            self.console_path = self.output_path
            console_arg = "none"
        else:
            self.console_path = Path(console)
            console_arg = str(console)

        if incoming is None:
            kernel = kernel or GUEST_IMAGE
            initrd = initrd or GUEST_INITRD
            append = DEFAULT_APPEND if append is None else append
        cmd = [str(self.binary)]
        for opt, value in (("--kernel", kernel), ("--initrd", initrd),
                           ("--append", append), ("--mem", mem), ("--smp", smp),
                           ("--net", net), ("--incoming", incoming)):
            if value is not None:
                cmd += [opt, str(value)]
        for d in ([disk] if isinstance(disk, (str, Path)) else disk or []):
            cmd += ["--disk", str(d)]
        if self.control_path:
            cmd += ["--control", str(self.control_path)]
        cmd += ["--console", console_arg]
        cmd += [str(a) for a in args]
        self.cmd = list(prefix) + cmd
        self.env = env
        self.proc = None
        self._log = None
        self._clients = []
        self._cursor = 0
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    def __repr__(self):
        return f"<VM {self.name} pid={self.pid} dir={self.dir}>"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        """Starts the process (once)."""
        require_file(self.binary, "ninja -C build")
        self._log = open(self.output_path, "ab")
        self._log.write(("$ " + " ".join(self.cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, env=self.env)
        self._cursor = 0
        return self

    # -- output
    def output(self):
        """ferry-vm's stdout and stderr so far (with console="log", the
        console too), carriage returns dropped."""
        return self._read(self.output_path)

    def console(self):
        """The console so far, carriage returns dropped."""
        return self._read(self.console_path)

    @staticmethod
    def _read(path):
        try:
            return Path(path).read_bytes().decode(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def tail(self, n=TAIL_LINES):
        """The last n lines of the console (and of ferry-vm's own output
        when that is a different file)."""
        text = tail(self.console(), n)
        if self.console_path != self.output_path:
            text = (f"-- ferry-vm output:\n{tail(self.output(), n)}\n"
                    f"-- console:\n{text}")
        return text

    def running(self):
        """True while the process has not ended."""
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, regex, timeout=60, from_start=False):
        """Waits until the console shows a match for regex (re.MULTILINE)
        and returns the match. Each call searches from the end of the
        previous match (or from the start with from_start), so waiting for
        the same line twice finds its second occurrence. Raises TimeoutError,
        or VMExited as soon as the process ends without the match, with the
        console's last lines in the message."""
        pattern = re.compile(regex, re.MULTILINE)
        start = 0 if from_start else self._cursor
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()
            text = self.console()
            m = pattern.search(text, start)
            if m:
                self._cursor = m.end()
                return m
            if exited:
                raise VMExited(f"{self.name} exited with status {self.proc.returncode} "
                               f"before the console showed /{regex}/; last lines:\n"
                               f"{self.tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: /{regex}/ not on the console in "
                                   f"{timeout} s; last lines:\n{self.tail()}")
            time.sleep(0.05)

    def wait_ready(self, timeout=120):
        """Waits for the guest's /init to say it is up (READY)."""
        return self.wait_for(READY, timeout)

    def wait_exit(self, timeout=60):
        """Waits for the process to end and returns its exit status
        (negative: killed by that signal). Raises TimeoutError."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout} s; "
                               f"last lines:\n{self.tail()}") from None

    # -- control
    def qmp(self, timeout=30, negotiate=True):
        """A new QMP client on this VM's control socket, once ferry-vm
        serves it (closed with the VM)."""
        if not self.control_path:
            raise ValueError(f"{self.name} was started without a control socket")

        def connect():
            if not self.running():
                raise VMExited(f"{self.name} exited with status "
                               f"{self.proc.returncode} before serving "
                               f"{self.control_path}; last lines:\n{self.tail()}")
            try:
                return QMP(self.control_path, timeout=timeout, negotiate=negotiate)
            except (FileNotFoundError, ConnectionRefusedError):
                return None
        client = wait_until(connect, timeout, f"{self.name}: control socket "
                                              f"{self.control_path}")
        self._clients.append(client)
        return client

    # -- ending
    def quit(self, timeout=30):
        """Sends quit on a new control connection and returns the exit
        status (a source that handed its guest over waits for this, in
        postmigrate)."""
        with QMP(self.control_path, timeout=timeout) as q:
            q.cmd("quit")
        return self.wait_exit(timeout)

    def signal(self, sig):
        """Sends a signal to the process, if it runs."""
        if self.running():
            self.proc.send_signal(sig)

    def kill(self):
        """Kills the process (SIGKILL) and reaps it; returns its status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def close(self, failed=False):
        """Kills the process, closes clients and the log, and removes the
        directory (kept with FERRY_KEEP_TMP=1). With failed, prints the
        console's last lines to stderr first."""
        for c in self._clients:
            c.close()
        self._clients = []
        self.kill()
        if self._log:
            self._log.close()
            self._log = None
        if failed and self.proc is not None:
            print(f"---- {self.name} (pid {self.pid}, {' '.join(self.cmd)}): "
                  f"last lines ----\n{self.tail()}\n---- end of {self.name} ----",
                  file=sys.stderr)
        if os.environ.get("FERRY_KEEP_TMP"):
            print(f"{self.name}: kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)

