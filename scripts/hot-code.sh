#!/usr/bin/env bash
# Writes fleetd/hot-code.txt: the functions a fleetd cluster runs, which a release build of
# fleetd places first and together (fleetd/build.rs; Documentation/performance.md, "Round six").
#
# Usage: scripts/hot-code.sh [--check [BINARY]]
#   --check  only print how many names of hot-code.txt an unstripped fleetd binary has (default:
#            build the release binary and look in target/release/fleetd)
#
# Why: the kernel maps a binary's code 64 KiB around every page fault (fault-around), so a host
# pays for every 64 KiB window of the binary that holds one function it ran. In link order the
# functions a host runs are spread over most of the binary; placed together they take what they
# weigh.
#
# How it finds them, exactly, on real hosts:
#   1. a release build of the same packages as `cargo build --release -p fleetd -p fleetctl`
#      (so every symbol name is the shipped build's), where the final link aligns every function
#      to its own 4 KiB page (LLVM's -align-all-functions=12, added by a RUSTC_WRAPPER to the
#      fleetd binary's rustc only: the crates' metadata, and so the names, stay the same);
#   2. the binary on a loop-mounted file system with read-ahead off, freshly mounted: nothing of
#      it is in the page cache, and a page fault reads in its own page only;
#   3. three test hosts run it: start, list, stop and destroy a single unit and 150 template
#      instances, then idle through heartbeats;
#   4. mincore() then tells which of the binary's pages were read: a function ran iff the page of
#      its first byte is in the page cache.
# The names are written in the order the linker had them (calls stay near their callees).
#
# Run it again after a dependency or toolchain update, or a large change (names that no longer
# exist are skipped by the linker; new functions are placed after the hot ones). Needs root,
# losetup and the test hosts (scripts/testhosts.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TH="$ROOT/scripts/testhosts.sh"
OUT=fleetd/hot-code.txt
PROF_TARGET=${FLEET_HOT_CODE_TARGET:-$ROOT/target/hot-code}

if [ "${1:-}" = --check ]; then
    binary=${2:-}
    if [ -z "$binary" ]; then
        cargo build --release -p fleetd -p fleetctl
        binary=target/release/fleetd
    fi
    have=$(nm --defined-only "$binary" | awk '{ print $3 }' | sort -u)
    want=$(grep -v '^#' "$OUT" | sort -u)
    found=$(comm -12 <(echo "$have") <(echo "$want") | wc -l)
    echo "hot-code: $found of $(echo "$want" | wc -l) names of $OUT are in $binary (run scripts/hot-code.sh when few are)"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "hot-code: needs root (a loop device, the test hosts)" >&2; exit 1; }
for tool in losetup mkfs.ext4 nm readelf gcc python3; do
    command -v "$tool" >/dev/null || { echo "hot-code: $tool missing (apt-get install util-linux e2fsprogs binutils gcc python3)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/fleet-hot-code.XXXXXX)
MNT="$WORK/mnt"
LOOP=""
export FLEET_TESTHOSTS_DIR=/run/fleet-testhosts-hot-code
cleanup() {
    "$TH" cleanup >/dev/null 2>&1 || true
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. The profiling build.
cat >"$WORK/rustc-wrapper" <<'EOF'
#!/bin/sh
rustc=$1; shift
case " $* " in
    *" --crate-name fleetd "*"--crate-type bin"*) exec "$rustc" "$@" -C llvm-args=-align-all-functions=12 ;;
esac
exec "$rustc" "$@"
EOF
chmod +x "$WORK/rustc-wrapper"
echo "+ cargo build --release -p fleetd -p fleetctl (functions page-aligned, in $PROF_TARGET)"
CARGO_TARGET_DIR="$PROF_TARGET" RUSTC_WRAPPER="$WORK/rustc-wrapper" cargo build --release -p fleetd -p fleetctl
BIN="$PROF_TARGET/release"

# 2. A file system that reads only the pages faulted on.
truncate -s 400M "$WORK/fs.img"
mkfs.ext4 -q -F "$WORK/fs.img"
LOOP=$(losetup -f --show "$WORK/fs.img")
echo 0 >"/sys/block/$(basename "$LOOP")/queue/read_ahead_kb"
mkdir -p "$MNT"
mount "$LOOP" "$MNT"
mkdir "$MNT/bin"
cp "$BIN/fleetd" "$BIN/fleetctl" "$MNT/bin/"
umount "$MNT"
mount "$LOOP" "$MNT" # a fresh mount: none of the binary is cached

gcc -O2 -o "$WORK/mincore" -x c - <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
/* Prints the index of every 4 KiB page of the file that is in the page cache. */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) { perror(argv[1]); return 1; }
    size_t pages = (st.st_size + 4095) / 4096;
    void *map = mmap(0, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    unsigned char *in_core = malloc(pages);
    if (map == MAP_FAILED || !in_core || mincore(map, st.st_size, in_core)) { perror("mincore"); return 1; }
    for (size_t i = 0; i < pages; i++) if (in_core[i] & 1) printf("%zu\n", i);
    return 0;
}
EOF

# 3. A cluster's life. fleetctl runs from the same directory but is a different file.
exec 9>/run/fleet-testhosts.lock
flock 9
"$TH" cleanup >/dev/null 2>&1 || true
"$TH" rootfs >/dev/null
etcd_url=$("$TH" etcd start | tail -n1)
export FLEET_BINDIR="$MNT/bin"
"$TH" boot 3 >/dev/null
for host in h1 h2 h3; do "$TH" install-fleet "$host" "$etcd_url" agent_ttl=10s >/dev/null; done
fc() { "$MNT/bin/fleetctl" --endpoint "http://$("$TH" ip h1):54728" "$@"; }
wait_for() { # wait_for DESCRIPTION COMMAND...: up to 60 s
    local what=$1
    shift
    for _ in $(seq 1 300); do "$@" && return 0; sleep 0.2; done
    echo "hot-code: $what did not happen within 60 s" >&2
    exit 1
}
machines_up() { [ "$(fc list-machines --no-legend 2>/dev/null | grep -c .)" -ge 3 ]; }
count_active() { fc list-units --no-legend --fields unit,active | awk -v p="$1" 'index($1, p) == 1 && $2 == "active" { n++ } END { print n + 0 }'; }
all_active() { [ "$(count_active "$1")" -ge "$2" ]; }
wait_for "3 machines" machines_up
printf '[Service]\nExecStart=/bin/sleep 100000\n' >"$WORK/one.service"
printf '[Unit]\nDescription=hot %%i\n\n[Service]\nExecStart=/bin/sleep 100000\n' >"$WORK/hot@.service"
fc start "$WORK/one.service" >/dev/null
instances=()
for i in $(seq 1 150); do instances+=("$WORK/hot@$i.service"); done
fc start --no-block "${instances[@]}" >/dev/null
wait_for "150 instances active" all_active "hot@" 150
fc list-units >/dev/null
fc list-unit-files >/dev/null
fc list-machines >/dev/null
fc status one.service >/dev/null 2>&1 || true # over SSH: may fail here, the agent side runs anyway
fc stop one.service >/dev/null
fc destroy one.service >/dev/null
sleep 15 # idle: heartbeats, lease keep-alives, the engine's periodic work

# 4. What was read.
"$WORK/mincore" "$MNT/bin/fleetd" >"$WORK/pages"
readelf -lW "$MNT/bin/fleetd" >"$WORK/segments"
nm -S --defined-only "$MNT/bin/fleetd" | awk '$3 ~ /^[tTwW]$/' >"$WORK/functions"
python3 - "$WORK/functions" "$WORK/pages" "$WORK/segments" >"$WORK/hot" <<'EOF'
import sys
functions, pages, segments = sys.argv[1:4]
# The code segment's file offset minus its address: "LOAD <offset> <address> ... R E <align>".
code = [l.split() for l in open(segments) if l.split()[:1] == ["LOAD"] and "E" in l.split()[6:-1]]
delta = int(code[0][1], 16) - int(code[0][2], 16)
read = {int(line) for line in open(pages)}
rows = sorted((int(f[0], 16), int(f[1], 16), f[3]) for f in (l.split() for l in open(functions)) if len(f) >= 4)
hot = [(size, name) for address, size, name in rows if (address + delta) // 4096 in read]
total = sum(row[1] for row in rows)
print(f"hot-code: {len(hot)} of {len(rows)} functions ran, {sum(s for s, _ in hot) // 1024} of {total // 1024} KiB", file=sys.stderr)
for _, name in hot:
    print(name)
EOF
{
    echo "# The functions a fleetd cluster runs, hottest region first: fleetd/build.rs passes this"
    echo "# file to the linker (--symbol-ordering-file) in release builds. Written by"
    echo "# scripts/hot-code.sh; see it, and Documentation/performance.md, \"Round six\"."
    cat "$WORK/hot"
} >"$OUT"
echo "hot-code: wrote $OUT ($(grep -vc '^#' "$OUT") names)"
