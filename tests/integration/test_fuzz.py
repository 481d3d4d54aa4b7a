"""A short libFuzzer run over the migration stream reader and the loaders.

fuzz/run-short.sh builds fuzz/fuzz_stream.c (the stream library and the
section grammar) and fuzz/fuzz_load.c (a restore into a real board, through
every CPU and device loader) with clang's fuzzer, address and
undefined-behaviour sanitizers, seeds them with valid streams, and exits
non-zero if any input crashes, leaks or hangs them.
"""

import subprocess

from ferrylib import REPO, need_tool

TIMEOUT = 180


def test_stream_reader_survives_fuzzing():
    need_tool("clang", "clang")
    r = subprocess.run([str(REPO / "fuzz" / "run-short.sh"), "10"], cwd=REPO,
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "no crash" in r.stdout, r.stdout[-2000:]
