#!/usr/bin/env bash
# Runs fleet for real on this machine: an etcd and three systemd hosts (h1..h3, containers at
# 10.231.0.11..13), fleetd in each, then starts the example units and shows the cluster.
# Needs root. Leaves the cluster running; tear it down with: scripts/testhosts.sh cleanup
set -euo pipefail
cd "$(dirname "$0")/.."

TH=scripts/testhosts.sh
ENDPOINT=http://10.231.0.11:54728
FLEETCTL=target/debug/fleetctl
step() { echo; echo "==> $*"; }

step "installing what is missing (scripts/setup.sh)"
scripts/setup.sh
[ "$(id -u)" = 0 ] || { echo "demo: error: needs root (containers, network namespaces)" >&2; exit 1; }

step "building (cargo build --workspace)"
cargo build --workspace

step "removing any previous demo cluster"
$TH cleanup

step "preparing the host image (first time: a Debian debootstrap, about 2 minutes)"
$TH rootfs >/dev/null

step "starting etcd"
ETCD_URL=$($TH etcd start)
echo "etcd: $ETCD_URL"

step "booting three systemd hosts"
$TH boot 3

for host in h1 h2 h3; do
    step "starting fleetd in $host ($($TH ip $host))"
    $TH install-fleet "$host" "$ETCD_URL" "agent_ttl=10s"
done

if [ ! -x "$FLEETCTL" ]; then
    echo "demo: fleetctl is not built; the cluster is up anyway" >&2
    exit 1
fi
fc() {
    echo "\$ fleetctl --endpoint $ENDPOINT $*"
    timeout 120 "$FLEETCTL" --endpoint "$ENDPOINT" "$@"
}
# A failing verb is reported and the demo goes on, so the rest is still shown; the timeout
# keeps a blocking verb (start waits for its units) from hanging the demo.
try() { fc "$@" || echo "demo: 'fleetctl $1' failed (exit $?)" >&2; }

step "waiting for the three machines to register"
for _ in $(seq 1 60); do
    n=$("$FLEETCTL" --endpoint "$ENDPOINT" list-machines --no-legend 2>/dev/null | grep -c . || true)
    [ "$n" -ge 3 ] && break
    sleep 0.5
done
try list-machines

step "starting examples/hello.service and examples/global.service"
for unit in examples/hello.service examples/global.service; do
    if [ -e "$unit" ]; then
        try start "$unit"
    else
        echo "demo: $unit is missing, skipped" >&2
    fi
done

step "waiting for the units to run (hello on one machine, global on all three)"
for _ in $(seq 1 60); do
    n=$("$FLEETCTL" --endpoint "$ENDPOINT" list-units --no-legend 2>/dev/null | awk '$3 == "active"' | grep -c . || true)
    [ "$n" -ge 4 ] && break
    sleep 0.5
done

step "the cluster"
try list-machines
try list-unit-files
try list-units

cat <<EOM

The cluster keeps running. Try, for example:
  $FLEETCTL --endpoint $ENDPOINT list-units
  $FLEETCTL --endpoint $ENDPOINT status hello.service
  $FLEETCTL --endpoint $ENDPOINT journal hello.service
  $FLEETCTL --endpoint $ENDPOINT stop hello.service
  export FLEETCTL_ENDPOINT=$ENDPOINT   # then plain 'fleetctl list-machines'
A shell in a host:   scripts/testhosts.sh exec h2 bash
Break a host:        scripts/testhosts.sh break h2 cut     (and 'uncut')
Tear it all down:    scripts/testhosts.sh cleanup
EOM
