#!/bin/sh
# run-short.sh [SECONDS] - build the migration fuzz targets if needed and
# run each for SECONDS (default 20).
#
# fuzz_stream (fuzz/fuzz_stream.c with the stream library and the section
# grammar) and fuzz_load (fuzz/fuzz_load.c with the whole tree but main.c:
# a restore into a real board, through the grammar and every CPU and
# device loader) are built with clang -fsanitize=fuzzer,address,undefined
# straight from the sources, not by Meson. fuzz_stream's seed corpus is
# the sample streams tests/unit/test_stream.c writes and the FT streams of
# tests/unit/test_ft.c; fuzz_load writes its
# own seed (a saved stream of its board). Everything goes to build/fuzz/
# (FERRY_FUZZ_DIR overrides): corpus/, load-corpus/, crashes/, fuzz.log,
# load.log.
# Exits non-zero when the fuzzer finds a crash, a leak or a hang; the
# input that did it is in crashes/.
set -e
cd "$(dirname "$0")/.."
secs=${1:-20}
out=${FERRY_FUZZ_DIR:-build/fuzz}
CC=${FUZZ_CC:-clang}
mkdir -p "$out/corpus" "$out/crashes"

libs="-lzstd -lxxhash -ljansson -lgnutls"
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
lib_src="src/migrate/stream.c src/migrate/grammar.c src/migrate/ft_grammar.c src/migrate/channel.c"
lib_hdr="src/migrate/stream.h src/migrate/grammar.h src/migrate/ft_grammar.h src/migrate/channel.h"
if stale "$target" fuzz/fuzz_stream.c fuzz/fix_checksums.h $lib_src $lib_hdr; then
	echo "building $target"
	$CC $cflags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-o "$target" fuzz/fuzz_stream.c $lib_src $libs
fi
if stale "$seeder" tests/unit/test_stream.c tests/unit/stream_sample.h $lib_src $lib_hdr; then
	$CC $cflags -o "$seeder" tests/unit/test_stream.c $lib_src \
		$libs -lcmocka -lpthread
fi
# fuzz_load: what ferry-vm is built from (meson.build's ferrycore: these
# folders and vmm.c) but main.c; fpu.c apart with its rounding flag
load="$out/fuzz_load"
core="util cpu machine virtio backend control migrate storage"
tree="src/vmm.c $(for d in $core; do ls src/$d/*.c; done | grep -v '^src/cpu/fpu.c$')"
if stale "$load" fuzz/fuzz_load.c fuzz/fix_checksums.h $tree src/cpu/fpu.c src/*/*.h; then
	echo "building $load"
	$CC -std=gnu11 -D_GNU_SOURCE -g -O1 -Isrc -frounding-math \
		-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
		-c -o "$out/fpu.o" src/cpu/fpu.c
	$CC $cflags -DFERRY_VERSION='"fuzz"' -fno-strict-aliasing \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-o "$load" fuzz/fuzz_load.c $tree "$out/fpu.o" $libs -lfdt -lm -lpthread
fi
FERRY_STREAM_SEEDS="$out/corpus" "$seeder" >/dev/null 2>&1
ft_seeder="$out/ft_seeds"     # FT streams with guest writes (tests/unit/test_ft.c)
if stale "$ft_seeder" tests/unit/test_ft.c tests/unit/stream_sample.h $lib_src $lib_hdr; then
	$CC $cflags -o "$ft_seeder" tests/unit/test_ft.c $lib_src $libs -lcmocka -lpthread
fi
FERRY_STREAM_SEEDS="$out/corpus" "$ft_seeder"

# fuzz TARGET CORPUS LOG NAME: run one target; exits on a finding
fuzz() {
	echo "fuzzing $4 for ${secs}s (log: $3)"
	set +e
	"$1" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix="$out/crashes/" -print_final_stats=1 "$2" >"$3" 2>&1
	rc=$?
	set -e
	grep -E '^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss' \
		"$3" | tail -3
	if [ $rc -ne 0 ]; then
		echo "run-short.sh: the fuzzer found a problem in $4 (exit $rc):" >&2
		grep -E 'ERROR|SUMMARY|Test unit written' "$3" | head -5 >&2
		exit 1
	fi
}
fuzz "$target" "$out/corpus" "$out/fuzz.log" "the migration stream reader"
mkdir -p "$out/load-corpus"
FERRY_FUZZ_WRITE_SEED="$out/load-corpus/seed" "$load"
fuzz "$load" "$out/load-corpus" "$out/load.log" "restore into a machine (the loaders)"
echo "fuzz_stream, fuzz_load: no crash in ${secs}s each"
