#!/bin/sh
# run-short.sh [SECONDS] - build the migration stream fuzz target if needed
# and run it for SECONDS (default 20).
#
# The target (fuzz/fuzz_stream.c with src/migrate/stream.c) is built with
# clang -fsanitize=fuzzer,address,undefined straight from the sources, so
# it needs neither the Meson build nor the rest of the tree. Its seed corpus
# is the sample streams tests/unit/test_stream.c writes. Everything goes
# to build/fuzz/ (FERRY_FUZZ_DIR overrides): corpus/, crashes/, fuzz.log.
# Exits non-zero when the fuzzer finds a crash, a leak or a hang; the
# input that did it is in crashes/.
set -e
cd "$(dirname "$0")/.."
secs=${1:-20}
out=${FERRY_FUZZ_DIR:-build/fuzz}
CC=${FUZZ_CC:-clang}
mkdir -p "$out/corpus" "$out/crashes"

libs="-lzstd -lxxhash -ljansson"
cflags="-std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Isrc -Itests/unit"
target="$out/fuzz_stream"
seeder="$out/stream_seeds"
stale() {   # stale FILE SOURCES...: FILE is missing or older than a source
	f=$1; shift
	[ -e "$f" ] || return 0
	for s in "$@"; do [ "$s" -nt "$f" ] && return 0; done
	return 1
}

if ! command -v "$CC" >/dev/null; then
	echo "run-short.sh: $CC not found: install clang and libclang-rt-14-dev" >&2
	exit 2
fi
if stale "$target" fuzz/fuzz_stream.c src/migrate/stream.c src/migrate/stream.h; then
	echo "building $target"
	$CC $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-o "$target" fuzz/fuzz_stream.c src/migrate/stream.c $libs
fi
if stale "$seeder" tests/unit/test_stream.c tests/unit/stream_sample.h \
		src/migrate/stream.c src/migrate/stream.h; then
	$CC $cflags -o "$seeder" tests/unit/test_stream.c src/migrate/stream.c \
		$libs -lcmocka -lpthread
fi
FERRY_STREAM_SEEDS="$out/corpus" "$seeder" >/dev/null 2>&1

echo "fuzzing the migration stream reader for ${secs}s (log: $out/fuzz.log)"
set +e
"$target" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	-artifact_prefix="$out/crashes/" -print_final_stats=1 "$out/corpus" \
	>"$out/fuzz.log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss' \
	"$out/fuzz.log" | tail -3
if [ $rc -ne 0 ]; then
	echo "run-short.sh: the fuzzer found a problem (exit $rc):" >&2
	grep -E 'ERROR|SUMMARY|Test unit written' "$out/fuzz.log" | head -5 >&2
	exit 1
fi
echo "fuzz_stream: no crash in ${secs}s"
