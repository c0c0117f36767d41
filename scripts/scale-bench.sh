#!/usr/bin/env bash
# The scale benchmark: a real etcd, the real fleetd (engine + API only, from a
# release build), M simulated machines and N units. See fleetd/benches/scale.rs
# for what is measured and how, Documentation/performance.md for the figures.
#
# Usage: scripts/scale-bench.sh [--machines M] [--units N] [--json out.json] [more bench options]
#   e.g. scripts/scale-bench.sh --machines 1000 --units 20000 --json /tmp/scale.json
#   Other options pass through to the bench (--help lists them): --concurrency,
#   --kill-fraction, --loss-grace, --idle-seconds, --agent-ttl, --keep, --tls (the API over mTLS),
#   --etcd-members K (a K-member etcd cluster), --check-perf LOAD (etcdctl check perf
#   s|m|l|xl against the same cluster at the end: the write ceiling of this run).
#
# Needs: etcd (Debian etcd-server) on PATH, a Rust toolchain. Builds with
# cargo's release profile; on 2 cores the first build takes several minutes.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

args=()
while (($#)); do
    case "$1" in
        -h|--help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --json)
            # The bench runs with the crate as its working dir: make it absolute.
            [[ $# -ge 2 ]] || { echo "scale-bench: --json needs a path" >&2; exit 2; }
            case "$2" in
                /*) args+=(--json "$2") ;;
                *) args+=(--json "$PWD/$2") ;;
            esac
            shift 2
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done

command -v etcd >/dev/null || { echo "scale-bench: etcd not found (apt-get install etcd-server)" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-$root/target}"
echo "scale-bench: building fleetd and fleetctl (release)..." >&2
cargo build --release -p fleetd -p fleetctl
export FLEETD_BIN="$target/release/fleetd" FLEETCTL_BIN="$target/release/fleetctl"
# fleetd and the simulated machines each open many sockets and watches.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
exec cargo bench -p fleetd --bench scale -- "${args[@]}"
