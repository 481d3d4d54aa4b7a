#!/bin/bash
# qemu-check.sh - boot the guest image under QEMU's virt machine and check
# that /init, the tools and the kernel's devices do what tests rely on.
#
#   guest/qemu-check.sh        (after guest/build.sh; about half a minute)
#
# QEMU is the reference machine here, so a failure means the image is wrong,
# not ferry-vm. Each check boots a fresh guest with -no-reboot (a guest
# reset ends QEMU too) and looks for lines on the serial console. The
# network check uses QEMU's user-mode network with restrict=on and a port
# forwarded from 127.0.0.1 only: no traffic leaves this host.
# Ends with "N passed, N failed" and exits 1 if any check failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/guest
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PASSED=0
FAILED=0

qemu() {
	timeout 300 qemu-system-riscv64 -M virt -smp 2 -m 256 -nographic \
		-bios default -no-reboot -kernel "$OUT/Image" \
		-initrd "${INITRD:-$OUT/initrd.img}" "$@" </dev/null 2>&1
}

# check NAME LOG PATTERN...: every extended regex must match a line of LOG.
check() {
	local name=$1 log=$2 pat

	shift 2
	for pat in "$@"; do
		if ! tr -d '\r' <"$log" | grep -Eq -- "$pat"; then
			echo "FAIL $name: no line matching '$pat' (console in $log):"
			tail -n 15 "$log" | sed 's/^/    /'
			FAILED=$((FAILED + 1))
			cp "$log" "$ROOT/build/guest/qemu-check-$name.log"
			return
		fi
	done
	echo "ok   $name"
	PASSED=$((PASSED + 1))
}

check_echo() {
	qemu -append "console=ttyS0 quiet ferry.run=ft,echo,hello" >"$TMP/echo.log"
	check echo "$TMP/echo.log" '^hello$' '^ferry-init: exit 0$' '^reboot: Power down'
}

check_failure_resets() {
	qemu -append "console=ttyS0 quiet ferry.run=ft,echo,one,;,ft,false,;,ft,echo,two" \
		>"$TMP/fail.log"
	check failure-resets "$TMP/fail.log" '^one$' '^ferry-init: exit 1$' \
		'^reboot: Restarting system'
	grep -q '^two' "$TMP/fail.log" && {
		echo "FAIL failure-resets: the command after the failing one ran"
		FAILED=$((FAILED + 1))
	}
}

check_hvc_ready() {
	(qemu -append "console=hvc0 earlycon=sbi" >"$TMP/hvc.log") &
	local pid=$!

	for _ in $(seq 300); do
		grep -q 'ferry-init: ready' "$TMP/hvc.log" && break
		sleep 0.1
	done
	pkill -P "$pid" timeout 2>/dev/null
	wait "$pid" 2>/dev/null
	check hvc-ready "$TMP/hvc.log" 'earlycon: sbi0' '^ferry-init: ready$'
}

check_memload() {
	qemu -append "console=ttyS0 quiet ferry.run=memload,--mib,32,--rate,40,--seconds,3,--threads,2" \
		>"$TMP/memload.log"
	check memload "$TMP/memload.log" '^memload: pass 1 verified' '^memload: done pass' \
		'^ferry-init: exit 0$'
	qemu -append "console=ttyS0 quiet ferry.run=memload,--mib,8,--corrupt-after,1" \
		>"$TMP/memload-bad.log"
	check memload-detects "$TMP/memload-bad.log" '^memload: ERROR page 0 .*stale page' \
		'^ferry-init: exit 1$'
}

check_memcheck() {
	qemu -append "console=ttyS0 quiet ferry.run=memcheck,--mib,8,--passes,8,--every,4" \
		>"$TMP/memcheck.log"
	check memcheck "$TMP/memcheck.log" '^memcheck: filled 8 MiB \(guest-physical of page 0: 0x[89]' \
		'^memcheck: pass 8 checked 64 MiB errors 0$' '^ferry-init: exit 0$'
	qemu -append "console=ttyS0 quiet ferry.run=memcheck,--mib,8,--stale-at,3" \
		>"$TMP/memcheck-bad.log"
	check memcheck-detects "$TMP/memcheck-bad.log" \
		'^memcheck: ERROR page 0 \(va .*, guest-physical 0x[89][0-9a-f]+\): 511 of 512 words wrong.*generation 1 \(want 2\).*stale page$' \
		'^ferry-init: exit 1$'
}

check_ext2() {
	truncate -s 32M "$TMP/d.img" && mkfs.ext2 -q -F "$TMP/d.img"
	local disk=(-drive "file=$TMP/d.img,if=none,format=raw,id=d0"
		    -device "virtio-blk-device,drive=d0")

	qemu "${disk[@]}" -append "console=ttyS0 quiet ferry.run=ft,mount,/dev/vda,/mnt,ext2,;,ft,writefile,/mnt/f,4,42,;,ft,umount,/mnt" \
		>"$TMP/ext2-w.log"
	qemu "${disk[@]}" -append "console=ttyS0 quiet ferry.run=ft,mount,/dev/vda,/mnt,ext2,;,ft,checkfile,/mnt/f,4,42,;,ft,checkfile,/mnt/f,4,43" \
		>"$TMP/ext2-r.log"
	cat "$TMP/ext2-w.log" "$TMP/ext2-r.log" >"$TMP/ext2.log"
	check ext2 "$TMP/ext2.log" '^ok$' '^ferry-init: power off$' \
		'^ft: checkfile /mnt/f: bad data at offset 0$' '^reboot: Restarting system'
}

check_disklog() {
	truncate -s 1M "$TMP/r.img"
	qemu -drive "file=$TMP/r.img,if=none,format=raw,id=d0" -device virtio-blk-device,drive=d0 \
		-append "console=ttyS0 quiet ferry.run=ft,disklog,/dev/vda,--count,1000,;,ft,disklog-check,/dev/vda" \
		>"$TMP/disklog.log"
	check disklog "$TMP/disklog.log" '^ft: disklog: seq 999$' \
		'^ft: disklog-check: 1000 records ok$' '^ferry-init: power off$'
}

check_network() {
	local port=$((20000 + RANDOM % 20000))

	(qemu -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:7000" \
		-device virtio-net-device,netdev=n0 \
		-append "console=ttyS0 quiet ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.2 ferry.run=tcpserve,--port,7000" \
		>"$TMP/net.log") &
	local pid=$!
	for _ in $(seq 300); do
		grep -q 'tcpserve: listening' "$TMP/net.log" && break
		sleep 0.1
	done
	python3 - "$port" >"$TMP/client.log" 2>&1 <<'EOF'
import socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
data = b"".join(b"%08d\n" % i for i in range(50000))
got = bytearray()
def reader():
    while chunk := s.recv(65536):
        got.extend(chunk)
t = threading.Thread(target=reader)
t.start()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
t.join()
print("client: echo", "intact" if bytes(got) == data else "WRONG")
EOF
	pkill -P "$pid" timeout 2>/dev/null
	wait "$pid" 2>/dev/null
	cat "$TMP/client.log" >>"$TMP/net.log"
	check network "$TMP/net.log" '^ferry-init: eth0 10.0.2.15/24$' \
		'closed after 450000 bytes' '^client: echo intact$'
}

if [ ! -f "$OUT/Image" ] || [ ! -f "$OUT/initrd.img" ]; then
	echo "qemu-check.sh: no $OUT/Image or initrd.img: run guest/build.sh first" >&2
	exit 2
fi
check_echo
check_failure_resets
check_hvc_ready
check_memload
check_memcheck
check_ext2
check_disklog
check_network
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
