#!/usr/bin/env bash
# Rolling update on real systemd hosts: starts N instances (default 100) of a template, then
# times `fleetctl update --max-parallel P --min-healthy-time H` (default 10 and 1s) of a new
# version of the template until the rollout has succeeded (fleetctl returns), and checks that
# every instance then runs the new version.
#
# Usage: scripts/bench-rollout.sh [--instances N] [--max-parallel P] [--min-healthy-time D]
#   Boots its own 3-host cluster (scripts/testhosts.sh, state dir /run/fleet-testhosts-bench;
#   it waits for any test cluster to finish first) and tears it down on exit.
# Needs root and target/debug/{fleetd,fleetctl} (or $FLEET_BINDIR).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BINDIR="${FLEET_BINDIR:-$root/target/debug}"
FLEETCTL="$BINDIR/fleetctl"
TH="$root/scripts/testhosts.sh"
INSTANCES=100
PARALLEL=10
HEALTHY=1s
LOCK=/run/fleet-testhosts.lock

while (($#)); do
    case "$1" in
        --instances) INSTANCES=${2:?--instances needs a number}; shift 2 ;;
        --max-parallel) PARALLEL=${2:?--max-parallel needs a number}; shift 2 ;;
        --min-healthy-time) HEALTHY=${2:?--min-healthy-time needs a duration}; shift 2 ;;
        -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-rollout: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$FLEETCTL" ] || { echo "bench-rollout: $FLEETCTL missing: cargo build -p fleetd -p fleetctl" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench-rollout: needs root to boot its cluster" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-rollout.XXXXXX)
export FLEET_TESTHOSTS_DIR=/run/fleet-testhosts-bench FLEET_BINDIR="$BINDIR"
cleanup() {
    rm -rf "$WORK"
    "$TH" cleanup >/dev/null 2>&1 || true
}
# Clusters take turns on the functional tests' lock (held until this script exits).
exec 9>"$LOCK"
flock 9
trap cleanup EXIT
"$TH" cleanup >/dev/null
"$TH" rootfs >/dev/null
etcd_url=$("$TH" etcd start | tail -n1)
"$TH" boot 3 >/dev/null
for host in h1 h2 h3; do
    "$TH" install-fleet "$host" "$etcd_url" "agent_ttl=10s" >/dev/null
done
ENDPOINT="http://$("$TH" ip h1):54728"
fc() { "$FLEETCTL" --endpoint "$ENDPOINT" "$@"; }
for _ in $(seq 1 120); do
    [ "$(fc list-machines --no-legend 2>/dev/null | grep -c . || true)" -ge 3 ] && break
    sleep 0.25
done

mkdir -p "$WORK/v1" "$WORK/v2"
for v in v1 v2; do
    printf '[Unit]\nDescription=bench %%i %s\n\n[Service]\nExecStart=/bin/sh -c '"'"'echo %s > /run/bench-%%i.version; exec sleep infinity'"'"'\n' \
        "$v" "$v" >"$WORK/$v/bench@.service"
done
names=()
for i in $(seq 1 "$INSTANCES"); do names+=("bench@$i.service"); done
(cd "$WORK/v1" && fc submit bench@.service "${names[@]}" >/dev/null)
fc start --no-block "${names[@]}" >/dev/null
for _ in $(seq 1 600); do
    active=$(fc list-units --no-legend --fields active | grep -c '^active' || true)
    [ "$active" -ge "$INSTANCES" ] && break
    sleep 0.5
done
echo "$active of $INSTANCES instances active on 3 hosts; rolling out v2 with --max-parallel $PARALLEL --min-healthy-time $HEALTHY"

start=$(date +%s%N)
fc update --max-parallel "$PARALLEL" --min-healthy-time "$HEALTHY" "$WORK/v2/bench@.service" >"$WORK/update.log"
end=$(date +%s%N)
tail -n1 "$WORK/update.log"
on_v2=0
for host in h1 h2 h3; do
    n=$("$TH" exec "$host" sh -c 'cat /run/bench-*.version 2>/dev/null' | grep -c '^v2' || true)
    on_v2=$((on_v2 + n))
done
echo "rolling update of $INSTANCES instances, --max-parallel $PARALLEL, --min-healthy-time $HEALTHY: $(((end - start) / 1000000)) ms; $on_v2 instances report v2"
