#!/usr/bin/env bash
# The operator's test of etcd member loss, measured from outside: a 3-member etcd, three test
# hosts running fleetd with all three etcd endpoints, then
#   1. kill the etcd leader member: 30 GETs of /fleet/v1/units and 6 submits through h1's API;
#   2. restart it, kill a follower member: the same again.
# Prints how many succeeded (HTTP 200 / fleetctl exit 0) and the status codes seen.
#
# Usage: scripts/etcd-member-loss.sh      (root; builds nothing: run `cargo build -p fleetd
#        -p fleetctl` first). Holds /run/fleet-testhosts.lock for the whole run and uses its
#        own FLEET_TESTHOSTS_DIR, cleaned up at the end.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "${FLEET_MEMBER_LOSS_LOCKED:-}" != 1 ]; then
    exec env FLEET_MEMBER_LOSS_LOCKED=1 flock /run/fleet-testhosts.lock "$0" "$@"
fi

export FLEET_TESTHOSTS_DIR="${FLEET_TESTHOSTS_DIR:-/run/fleet-member-loss}"
th=scripts/testhosts.sh
fleetctl=target/debug/fleetctl
[ -x "$fleetctl" ] || { echo "etcd-member-loss: $fleetctl missing: cargo build -p fleetd -p fleetctl" >&2; exit 1; }
work=$(mktemp -d)
trap '"$th" cleanup >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

urls=$("$th" etcd start --members 3 | tail -n 1)
"$th" boot 3 >/dev/null
for h in h1 h2 h3; do "$th" install-fleet "$h" "$urls" >/dev/null; done
api="http://$("$th" ip h1):54728"

deadline=$((SECONDS + 60))
until [ "$("$fleetctl" --endpoint "$api" list-machines --no-legend 2>/dev/null | wc -l)" = 3 ]; do
    [ $SECONDS -lt $deadline ] || { echo "etcd-member-loss: machines did not register" >&2; exit 1; }
    sleep 0.5
done

# The index (1..3) of the etcd member that leads now.
leader_member() {
    local i=1 url status
    IFS=, read -ra list <<<"$urls"
    for url in "${list[@]}"; do
        if status=$(ETCDCTL_API=3 etcdctl --endpoints="$url" --dial-timeout=1s endpoint status -w json 2>/dev/null) &&
            python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' <<<"$status"; then
            echo "$i"
            return
        fi
        i=$((i + 1))
    done
    return 1
}

# 30 GETs and 6 submits right after a kill; prints the tally.
round=0
measure() {
    local what=$1 ok=0 codes="" code submitted=0 i
    round=$((round + 1))
    for i in $(seq 1 30); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$api/fleet/v1/units" || echo 000)
        codes+="$code "
        [ "$code" = 200 ] && ok=$((ok + 1))
    done
    for i in $(seq 1 6); do
        printf '[Service]\nExecStart=/bin/sleep infinity\n' >"$work/loss-$round-$i.service"
        if "$fleetctl" --endpoint "$api" submit "$work/loss-$round-$i.service" >"$work/submit.log" 2>&1; then
            submitted=$((submitted + 1))
        else
            echo "  submit $i: $(tail -n 1 "$work/submit.log")"
        fi
    done
    echo "$what: GET /fleet/v1/units $ok/30 (codes: $(tr ' ' '\n' <<<"$codes" | sort | uniq -c | xargs)), submits $submitted/6"
}

leader=$(leader_member)
"$th" etcd kill-member "$leader"
measure "leader member s$leader killed"
"$th" etcd start-member "$leader"
until ETCDCTL_API=3 etcdctl --endpoints="$urls" --dial-timeout=1s endpoint health >/dev/null 2>&1; do
    sleep 0.2
done
leader=$(leader_member)
follower=$((leader % 3 + 1))
"$th" etcd kill-member "$follower"
measure "follower member s$follower killed"
