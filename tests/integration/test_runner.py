"""tests/run itself: counting, skips, time limits and selection.

Every check copies tests/run and ferrylib.py into a scratch tree of its own
(the runner finds its repository from its own path), adds made-up tests
there, fake unit "binaries" that are shell scripts speaking cmocka's TAP,
runs the copy from another directory, and reads what it printed. The
closing "N passed, M failed[, K skipped]" line is what `make test` and CI
depend on, so it is checked exactly.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import ferrylib

TIMEOUT = 120

UNIT_GOOD = """#!/bin/sh
printf '1..2\\nok 1 - adds\\nok 2 - subtracts\\n# ok - tests\\n'
"""
UNIT_BAD = """#!/bin/sh
printf '1..3\\nok 1 - first\\nnot ok 2 - second\\n# 0x1 != 0x2\\n'
printf '# tests/unit/test_x.c:42: error: Failure!\\nok 3 - third\\n'
exit 1
"""
UNIT_CRASH = """#!/bin/sh
printf '1..4\\nok 1 - before\\n'
kill -ABRT $$
"""

MIXED = '''
import ferrylib

def test_passes():
    pass

def test_fails():
    value = 1
    assert value == 2

def test_is_skipped():
    raise ferrylib.Skip("no frobnicator on this host")

def test_raises():
    raise RuntimeError("the disk caught fire")

def test_wants_a_fixture(tmp_path):
    pass

def helper_not_a_test():
    raise RuntimeError("must not run")
'''

HANG = '''
import time
import ferrylib
TIMEOUT = 2

def test_hangs():
    with ferrylib.VM(binary=ferrylib.BUILD / "stubborn", control=False) as vm:
        vm.wait_for("stubborn")
        time.sleep(600)
'''

# -j 2: these two meet (each waits for the other's mark: run one at a time,
# they would both time out); the serial module's tests each run alone, and
# so does the test a partly serial module names, while its two others meet.
TOGETHER = '''
import time
from pathlib import Path
HERE = Path(__file__).parent

def meet(me, other):
    (HERE / me).touch()
    deadline = time.monotonic() + 20
    while not (HERE / other).exists():
        assert time.monotonic() < deadline, "ran alone: the other test never started"
        time.sleep(0.05)

def note(name):
    start = time.time()
    time.sleep(1)
    with open(HERE / "intervals", "a") as f:
        f.write(f"{name} {start} {time.time()}\\n")

def test_one():
    meet("one", "two")
    note("one")

def test_two():
    meet("two", "one")
    note("two")

def test_three():
    note("three")
'''

ALONE = '''
SERIAL = True
from test_a_together import note

def test_first():
    note("first")

def test_second():
    note("second")
'''

PARTLY = '''
SERIAL = ("test_partly_alone",)
from test_a_together import meet, note

def test_partly_alone():
    note("partly_alone")

def test_beside_a():
    meet("beside_a", "beside_b")
    note("beside_a")

def test_beside_b():
    meet("beside_b", "beside_a")
    note("beside_b")
'''

# --again FERRY_X=bar: the test (and the unit binary) run a second time,
# under their own names, with the variable set
AGAIN = '''
import os

def test_sees_it():
    assert os.environ.get("FERRY_X") == "bar", os.environ.get("FERRY_X")
'''
UNIT_AGAIN = """#!/bin/sh
printf '1..1\\n'
[ "$FERRY_X" = bar ] && echo 'ok 1 - sees_it' || echo 'not ok 1 - sees_it'
"""

STUBBORN = """#!/bin/sh
trap '' TERM
sleep 600 &
echo "stubborn $$ $!" > "$(dirname "$0")/stubborn.pids"
echo "stubborn $$"
wait
"""


class Scratch:
    """A throwaway repository with the real runner and ferrylib."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ferry-runner-test-"))
        (self.root / "tests" / "integration").mkdir(parents=True)
        (self.root / "build").mkdir()
        shutil.copy(ferrylib.REPO / "tests" / "run", self.root / "tests" / "run")
        shutil.copy(ferrylib.REPO / "tests" / "integration" / "ferrylib.py",
                    self.root / "tests" / "integration" / "ferrylib.py")

    def test_file(self, name, text):
        (self.root / "tests" / "integration" / name).write_text(textwrap.dedent(text))

    def build_file(self, name, text):
        path = self.root / "build" / name
        path.write_text(text)
        path.chmod(0o755)

    def run(self, *args):
        """Runs the runner from / ; returns (status, output lines)."""
        env = dict(os.environ)
        env.pop("FERRY_BUILD", None)
        res = subprocess.run([sys.executable, str(self.root / "tests" / "run"), *args],
                             cwd="/", env=env, capture_output=True, text=True,
                             timeout=100)
        lines = res.stdout.splitlines()
        assert lines, f"the runner printed nothing; stderr:\n{res.stderr}"
        return res.returncode, lines

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


def line_starting(lines, prefix):
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"expected one line starting {prefix!r}:\n" + "\n".join(lines)
    return found[0]


def test_counts_every_kind_of_outcome():
    with Scratch() as s:
        s.test_file("test_mixed.py", MIXED)
        s.test_file("test_cannot_import.py", "import no_such_module_here\n")
        s.build_file("test-good", UNIT_GOOD)
        s.build_file("test-bad", UNIT_BAD)
        s.build_file("test-crash", UNIT_CRASH)
        status, lines = s.run()
        out = "\n".join(lines)
        # unit: 2 + 2 + 1 passed; 1 failed, and 3 never ran after the crash
        # integration: 1 passed, 4 failed (with the import), 1 skipped
        assert lines[-1] == "6 passed, 8 failed, 1 skipped", f"{lines[-1]!r} in\n{out}"
        assert status == 1
        line_starting(lines, "PASS test-good (2 tests")
        assert "0x1 != 0x2 (test_x.c:42)" in line_starting(lines, "FAIL test-bad::second:")
        assert "SIGABRT after 1 of 4 tests" in line_starting(lines, "FAIL test-crash:")
        line_starting(lines, "PASS test_mixed.py::test_passes (")
        assert "assert value == 2" in line_starting(lines, "FAIL test_mixed.py::test_fails:")
        assert line_starting(lines, "SKIP test_mixed.py::test_is_skipped:").endswith(
            ": no frobnicator on this host")
        assert "the disk caught fire" in line_starting(lines, "FAIL test_mixed.py::test_raises:")
        assert "tmp_path" in line_starting(lines, "FAIL test_mixed.py::test_wants_a_fixture:")
        assert "no_such_module_here" in line_starting(lines, "FAIL test_cannot_import.py:")
        assert "helper_not_a_test" not in out
        # integration tests run in file order
        names = [line.split()[1].rstrip(":") for line in lines
                 if line.split()[1].startswith("test_mixed.py::")]
        assert names == ["test_mixed.py::test_passes", "test_mixed.py::test_fails",
                         "test_mixed.py::test_is_skipped", "test_mixed.py::test_raises",
                         "test_mixed.py::test_wants_a_fixture"], names


def test_all_passing_exits_0_without_a_skip_count():
    with Scratch() as s:
        s.test_file("test_ok.py", "def test_one():\n    pass\n")
        s.build_file("test-good", UNIT_GOOD)
        status, lines = s.run("-j", "2")
        assert lines[-1] == "3 passed, 0 failed", lines
        assert status == 0


def test_j_runs_tests_side_by_side_and_serial_ones_alone():
    with Scratch() as s:
        s.test_file("test_a_together.py", TOGETHER)
        s.test_file("test_b_alone.py", ALONE)
        s.test_file("test_c_partly.py", PARTLY)
        s.build_file("test-good", UNIT_GOOD)
        status, lines = s.run("-j", "2")
        assert lines[-1] == "10 passed, 0 failed", lines
        spans = {}
        for line in (s.root / "tests" / "integration" / "intervals").read_text().splitlines():
            name, start, end = line.split()
            spans[name] = (float(start), float(end))
        assert sorted(spans) == ["beside_a", "beside_b", "first", "one", "partly_alone",
                                 "second", "three", "two"], spans
        for serial in ("first", "second", "partly_alone"):
            a, b = spans[serial]
            for other, (c, d) in spans.items():
                assert other == serial or d <= a or b <= c, \
                    f"{serial} ran beside {other}: {spans}"


def test_serial_naming_no_test_is_a_failure():
    with Scratch() as s:
        s.test_file("test_typo.py", "SERIAL = ('test_nope',)\ndef test_one():\n    pass\n")
        s.build_file("test-good", UNIT_GOOD)
        status, lines = s.run("--integration")
        assert lines[-1] == "0 passed, 1 failed", lines
        assert "SERIAL names no test of the module: test_nope" in line_starting(
            lines, "FAIL test_typo.py:")


def test_again_runs_tests_a_second_time_with_a_variable():
    with Scratch() as s:
        s.test_file("test_again.py", AGAIN)
        s.build_file("test-again", UNIT_AGAIN)
        s.build_file("test-good", UNIT_GOOD)
        status, lines = s.run("-j", "2", "--again", "FERRY_X=bar", "test_sees|test-again")
        # the first runs fail (no FERRY_X), the second pass
        assert lines[-1] == "4 passed, 2 failed", lines
        line_starting(lines, "FAIL test_again.py::test_sees_it:")
        line_starting(lines, "PASS FERRY_X=bar:test_again.py::test_sees_it (")
        line_starting(lines, "FAIL test-again::sees_it:")
        line_starting(lines, "PASS FERRY_X=bar:test-again (1 test")
        assert not [line for line in lines if "FERRY_X=bar:test-good" in line], lines


def test_missing_unit_binaries_is_a_failure():
    with Scratch() as s:
        s.test_file("test_ok.py", "def test_one():\n    pass\n")
        status, lines = s.run()
        assert lines[-1] == "1 passed, 1 failed", lines
        assert status == 1


def test_k_selects_by_name():
    with Scratch() as s:
        s.test_file("test_mixed.py", MIXED)
        s.build_file("test-good", UNIT_GOOD)
        s.build_file("test-bad", UNIT_BAD)
        status, lines = s.run("-k", "test_passes")
        assert lines[-1] == "1 passed, 0 failed", lines
        status, lines = s.run("-k", "test-bad::third")
        assert lines[-1] == "1 passed, 0 failed", lines
        assert status == 0
        status, lines = s.run("-k", "second")
        assert lines[-1] == "0 passed, 1 failed", lines


def test_time_limit_ends_the_test_and_what_it_started():
    with Scratch() as s:
        s.test_file("test_hang.py", HANG)
        s.build_file("test-good", UNIT_GOOD)
        s.build_file("stubborn", STUBBORN)
        status, lines = s.run("-k", "test_hangs")
        assert lines[-1] == "0 passed, 1 failed", lines
        assert "timed out after 2 s" in line_starting(lines, "FAIL test_hang.py::test_hangs:")
        # the VM wrote its last lines into the log the failure shows
        assert any("stubborn" in line for line in lines if line.startswith("    | "))
        pids = (s.root / "build" / "stubborn.pids").read_text().split()[1:]
        for pid in map(int, pids):
            assert not process_alive(pid), f"process {pid} outlived its test"


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purpose
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False
