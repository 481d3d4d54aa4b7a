#!/bin/bash
# build.sh - build the ferry guest into build/guest/: the kernel Image, /init,
# the guest tools and the default initramfs (initrd.img).
#
# Kernel: Debian's linux-source-6.1 tarball is extracted once into
# build/guest/linux-source-6.1 and reused. Its .config is `allnoconfig` with
# guest/kernel.config as KCONFIG_ALLCONFIG; every option the fragment names
# must then be in .config as written, or the build stops and says which one
# was dropped (Kconfig silently drops options whose dependencies fail).
# The raw Image (with its "RISCV" header magic) is copied to build/guest/Image.
#
# Every step runs only when its inputs are newer than its output, so a build
# with nothing to do takes well under a second. JOBS (default 2) sets the
# kernel's make -j.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GUEST=$ROOT/guest
OUT=$ROOT/build/guest
TARBALL=/usr/src/linux-source-6.1.tar.xz
KSRC=$OUT/linux-source-6.1
FRAG=$GUEST/kernel.config
CROSS=riscv64-linux-gnu-
KMAKE=(make -C "$KSRC" ARCH=riscv "CROSS_COMPILE=$CROSS")
CFLAGS=(-std=gnu11 -static -O2 -s -Wall -Wextra -Werror -pthread)
JOBS=${JOBS:-2}

say() {
	echo "guest/build.sh: $*"
}

die() {
	echo "guest/build.sh: $*" >&2
	exit 1
}

# True when $1 is missing or older than any of the other files.
stale() {
	local out=$1 f

	shift
	[ -e "$out" ] || return 0
	for f in "$@"; do
		[ "$f" -nt "$out" ] && return 0
	done
	return 1
}

check_host() {
	command -v "${CROSS}gcc" >/dev/null ||
		die "no ${CROSS}gcc: apt-get install gcc-riscv64-linux-gnu libc6-dev-riscv64-cross"
	[ -f "$TARBALL" ] || die "no $TARBALL: apt-get install linux-source-6.1"
}

# Extract the tarball once; again only if Debian's package changed it.
kernel_extract() {
	local id stamp=$KSRC/.ferry-tarball

	id=$(stat -c '%s %Y' "$TARBALL")
	[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$id" ] && return
	say "extracting $TARBALL into $OUT"
	rm -rf "$KSRC"
	mkdir -p "$OUT"
	tar -C "$OUT" -xf "$TARBALL"
	echo "$id" >"$stamp"
}

# Every CONFIG_X=v and "# CONFIG_X is not set" line of the fragment must
# appear as such in the resulting .config.
kernel_check_config() {
	local line missing=0

	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=* | "# CONFIG_"*" is not set") ;;
		*) continue ;;
		esac
		if ! grep -qxF -- "$line" "$KSRC/.config"; then
			echo "guest/build.sh: '$line' from guest/kernel.config did not survive;" \
				"its dependencies are not met (see 'make ARCH=riscv menuconfig' in $KSRC)" >&2
			missing=1
		fi
	done <"$FRAG"
	if [ $missing != 0 ]; then
		rm -f "$KSRC/.config"	# so that the next run checks again
		die "fix guest/kernel.config"
	fi
}

kernel_configure() {
	stale "$KSRC/.config" "$FRAG" "$KSRC/.ferry-tarball" || return 0
	say "configuring the kernel: allnoconfig + guest/kernel.config"
	"${KMAKE[@]}" -s KCONFIG_ALLCONFIG="$FRAG" allnoconfig
	kernel_check_config
}

# The raw Image starts with a header whose magic is "RISCV\0\0\0" at 0x30.
kernel_check_image() {
	[ "$(head -c 53 "$1" | tail -c 5)" = RISCV ] ||
		die "$1 has no RISC-V Image header magic: is this arch/riscv/boot/Image?"
}

kernel_build() {
	local start

	kernel_extract
	kernel_configure
	stale "$OUT/Image" "$KSRC/.config" || return 0
	say "building the kernel (make -j$JOBS Image; the first build takes minutes)"
	start=$(date +%s)
	"${KMAKE[@]}" -j"$JOBS" Image
	kernel_check_image "$KSRC/arch/riscv/boot/Image"
	cp "$KSRC/arch/riscv/boot/Image" "$OUT/Image.tmp"
	mv "$OUT/Image.tmp" "$OUT/Image"
	say "kernel built in $(($(date +%s) - start)) s"
}

program_build() {
	local src=$1 out=$2

	stale "$out" "$src" || return 0
	say "compiling $(basename "$out")"
	"${CROSS}gcc" "${CFLAGS[@]}" -o "$out.tmp" "$src"
	mv "$out.tmp" "$out"
}

programs_build() {
	local t

	mkdir -p "$OUT/bin"
	program_build "$GUEST/init/init.c" "$OUT/bin/init"
	for t in memload memcheck tcpserve ft; do
		program_build "$GUEST/tools/$t.c" "$OUT/bin/$t"
	done
}

initrd_build() {
	stale "$OUT/initrd.img" "$GUEST/mkinitrd.sh" "$OUT"/bin/* || return 0
	say "writing initrd.img"
	"$GUEST/mkinitrd.sh" "$OUT/initrd.img"
}

check_host
programs_build
initrd_build
kernel_build
say "up to date: build/guest/Image build/guest/initrd.img"
