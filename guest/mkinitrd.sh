#!/bin/bash
# mkinitrd.sh - build a ferry guest initramfs (newc cpio, uncompressed).
#
#   guest/mkinitrd.sh OUT.img [HOSTFILE[:GUESTPATH] ...]
#
# The archive holds /init, the guest tools in /bin (memload, memcheck,
# tcpserve, ft),
# the empty mount points /dev /proc /sys /mnt /tmp, a /dev/console node for
# the kernel's first messages, and every extra HOSTFILE given, at GUESTPATH
# (default /bin/BASENAME). This is how to run your own static riscv64
# programs in a guest without rebuilding the kernel:
#
#   guest/mkinitrd.sh my.img ./hello:/bin/hello
#   ferry-vm --kernel build/guest/Image --initrd my.img --append "ferry.run=hello"
#
# The list is written for the kernel's own usr/gen_init_cpio, built here for
# the host, so no root rights are needed for the device node. ELF files are
# checked to be static riscv64 programs, since the guest has no libraries.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${FERRY_GUEST_OUT:-$ROOT/build/guest}
BIN=$OUT_DIR/bin
GEN=$OUT_DIR/host/gen_init_cpio
TARBALL=/usr/src/linux-source-6.1.tar.xz
KSRC=$OUT_DIR/linux-source-6.1
READELF=riscv64-linux-gnu-readelf

die() {
	echo "mkinitrd.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: guest/mkinitrd.sh OUT.img [HOSTFILE[:GUESTPATH] ...]" >&2
	echo "Build an initramfs with /init, the ferry guest tools and the given files" >&2
	echo "(GUESTPATH defaults to /bin/BASENAME)." >&2
	exit 2
}

# gen_init_cpio from the kernel tree (or, if it is not extracted, the tarball).
build_gen_init_cpio() {
	local src=$KSRC/usr/gen_init_cpio.c tmp

	[ -x "$GEN" ] && return
	mkdir -p "$(dirname "$GEN")"
	if [ ! -f "$src" ]; then
		[ -f "$TARBALL" ] || die "no $src nor $TARBALL: apt-get install linux-source-6.1"
		tmp=$OUT_DIR/host/gen_init_cpio.c
		tar -xOf "$TARBALL" linux-source-6.1/usr/gen_init_cpio.c >"$tmp"
		src=$tmp
	fi
	cc -O2 -o "$GEN.tmp" "$src" || die "cannot compile $src with the host cc"
	mv "$GEN.tmp" "$GEN"
}

# A guest program must be a static riscv64 ELF; anything not ELF is data.
check_program() {
	local f=$1

	[ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || return 0
	command -v "$READELF" >/dev/null || return 0
	"$READELF" -h "$f" | grep -q 'Machine: *RISC-V' ||
		die "$f is not a riscv64 program: build it with riscv64-linux-gnu-gcc -static"
	if "$READELF" -l "$f" | grep -q INTERP; then
		die "$f is dynamically linked and the guest has no libraries: link it with -static"
	fi
}

declare -A DIRS=()

# Emit dir entries for every parent of a guest path, once each.
emit_parents() {
	local path=$1 parent=""
	local IFS=/ part

	read -ra parts <<<"${path#/}"
	for part in "${parts[@]:0:${#parts[@]}-1}"; do
		parent=$parent/$part
		if [ -z "${DIRS[$parent]:-}" ]; then
			DIRS[$parent]=1
			echo "dir $parent 0755 0 0"
		fi
	done
}

emit_dir() {
	DIRS[$1]=1
	echo "dir $1 $2 0 0"
}

emit_file() {
	local host=$1 guest=$2 mode=$3

	case "$host$guest" in
	*[[:space:]]*) die "'$host' -> '$guest': paths with spaces are not supported" ;;
	esac
	[ -f "$host" ] || die "$host: no such file"
	check_program "$host"
	emit_parents "$guest"
	echo "file $guest $(cd "$(dirname "$host")" && pwd)/$(basename "$host") $mode 0 0"
}

write_list() {
	local arg host guest

	emit_dir /dev 0755
	echo "nod /dev/console 0600 0 0 c 5 1"
	emit_dir /proc 0755
	emit_dir /sys 0755
	emit_dir /mnt 0755
	emit_dir /tmp 1777
	emit_dir /bin 0755
	emit_file "$BIN/init" /init 0755
	for tool in memload tcpserve ft; do
		emit_file "$BIN/$tool" "/bin/$tool" 0755
	done
	# memcheck came later: a guest built before it has none until
	# guest/build.sh runs again (seconds: the kernel is not rebuilt).
	if [ -x "$BIN/memcheck" ]; then
		emit_file "$BIN/memcheck" /bin/memcheck 0755
	fi
	for arg in "$@"; do
		host=${arg%%:*}
		guest=/bin/$(basename "$host")
		[ "$host" = "$arg" ] || guest=${arg#*:}
		[ "${guest:0:1}" = / ] || die "guest path '$guest' must be absolute (in $arg)"
		[ -f "$host" ] || die "$host: no such file"
		emit_file "$host" "$guest" "$(stat -c %a "$host")"
	done
}

LIST=""
OUT_TMP=""

main() {
	local out

	[ $# -ge 1 ] || usage
	case "$1" in -h|--help) usage ;; esac
	out=$1
	shift
	for f in init memload tcpserve ft; do
		[ -x "$BIN/$f" ] || die "$BIN/$f is missing: run guest/build.sh (or make guest) first"
	done
	build_gen_init_cpio
	LIST=$(mktemp)
	OUT_TMP=$out.tmp
	trap 'rm -f "$LIST" "$OUT_TMP"' EXIT
	write_list "$@" >"$LIST"
	"$GEN" -t 0 "$LIST" >"$OUT_TMP" || die "gen_init_cpio failed on $LIST"
	mv "$OUT_TMP" "$out"
}

main "$@"
