#!/usr/bin/env bash
# Bad input against a real fleetd and a real etcd: API requests, unit files, config files,
# flags and etcd contents written by someone else. Prints a Markdown table (the one in
# Documentation/reliability.md, "Bad input") with what each input got.
#
# Usage: scripts/bad-input.sh     (after `cargo build --workspace`; needs etcd and curl)
#
# fleetd runs here without agent or engine (disable_agent, disable_engine), on TCP on
# 127.0.0.1, against its own etcd on free ports; nothing touches the test hosts. A case is
# BAD when fleetd dies or panics, a refused request changed etcd, or bad input was accepted;
# a FINDING is a clear-enough refusal that still falls short (a 5xx). Either makes the script
# exit 1. Odd input the original fleet accepts too is marked "valid: accepted".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${FLEET_BINDIR:-$PWD/target/debug}"
for tool in etcd etcdctl curl ss; do
    command -v "$tool" >/dev/null || { echo "bad-input: '$tool' missing: run scripts/setup.sh" >&2; exit 2; }
done
[ -x "$BIN/fleetd" ] && [ -x "$BIN/fleetctl" ] || { echo "bad-input: build first (cargo build --workspace)" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local port
    while :; do
        port=$((30000 + RANDOM % 20000))
        [ -z "$(ss -Htan "( sport = :$port )")" ] && { echo "$port"; return; }
    done
}

ETCD_PORT=$(free_port)
PEER_PORT=$(free_port)
API_PORT=$(free_port)
ETCD=http://127.0.0.1:$ETCD_PORT
API=http://127.0.0.1:$API_PORT/fleet/v1
P=/_coreos.com/fleet/
etcd --name bad --data-dir "$WORK/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "bad=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
ectl() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD" --command-timeout=5s "$@"; }
wait_for() { # SECONDS WHAT CMD...
    local deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "bad-input: timed out waiting for $what" >&2; exit 2; }
        sleep 0.1
    done
}
wait_for 30 etcd ectl endpoint health

echo 0123456789abcdef0123456789abcdef >"$WORK/machine-id"
base_conf() {
    printf 'etcd_servers=%s\nmachine_id_file=%s\ndisable_agent=true\ndisable_engine=true\nagent_ttl=10s\npublic_ip=127.0.0.1\n' \
        "$ETCD" "$WORK/machine-id"
}
{ base_conf; echo "api_listen=tcp://127.0.0.1:$API_PORT"; } >"$WORK/fleet.conf"
"$BIN/fleetd" -config "$WORK/fleet.conf" >"$WORK/fleetd.log" 2>&1 &
FLEETD=$!
PIDS+=("$FLEETD")
wait_for 60 "fleetd's API" curl -sf "$API/machines"

# A unit that exists, so "nothing changed" has something to keep.
GOOD='{"desiredState":"loaded","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"}]}'
curl -sf -X PUT -H 'Content-Type: application/json' -d "$GOOD" "$API/units/keep.service" >/dev/null

# etcd without the machine's own lease-bound record (its keep-alives do not change it).
snapshot() { ectl get --prefix "$P" -w json | sed 's/"revision":[0-9]*,//; s/"raft_term":[0-9]*,//' |
    tr ',' '\n' | grep -v '"header"\|cluster_id\|member_id' | md5sum; }

RESULTS=0
row() { # KIND INPUT RESULT VERDICT
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"
    [ "${4%% *}" = ok ] || RESULTS=1
}
alive() { kill -0 "$FLEETD" 2>/dev/null && ! grep -q 'panicked' "$WORK/fleetd.log"; }
short() { tr '\n|' ' /' | sed "s|$WORK|DIR|g" | cut -c1-90 | sed 's/ *$//'; }

# api LABEL METHOD PATH [BODY] [CONTENT-TYPE]: the answer, and whether etcd stayed the same.
# accept LABEL ...: input the original fleet accepts too (odd but valid): a 2xx, and fleetd up.
accept() {
    local label=$1 method=$2 path=$3 body=$4 code verdict="ok (valid: accepted)"
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X "$method" -H "Content-Type: application/json" \
        --data-binary "@$body" "$API$path" || true)
    alive || verdict="BAD: fleetd died or panicked"
    case "$code" in 2??) ;; *) verdict="BAD: $code" ;; esac
    row API "$label" "$code $(short <"$WORK/body")" "$verdict"
    curl -s -X DELETE "$API$path" >/dev/null || true
}
api() {
    local label=$1 method=$2 path=$3 body=${4-} type=${5:-application/json} before after out code verdict=ok
    before=$(snapshot)
    if [ -n "$body" ]; then
        out=$(curl -s -o "$WORK/body" -w '%{http_code}' -X "$method" -H "Content-Type: $type" \
            --data-binary "@$body" "$API$path" || true)
    else
        out=$(curl -s -o "$WORK/body" -w '%{http_code}' -X "$method" "$API$path" || true)
    fi
    code=$out
    after=$(snapshot)
    [ "$before" = "$after" ] || verdict="BAD: etcd changed"
    alive || verdict="BAD: fleetd died or panicked"
    case "$code" in 4??) ;; *) [ "$verdict" = ok ] && verdict="BAD: not a 4xx" ;; esac
    row API "$label" "$code $(short <"$WORK/body")" "$verdict"
}

body() { printf '%s' "$1" >"$WORK/req"; echo "$WORK/req"; }

echo '| kind | input | what it got | verdict |'
echo '|---|---|---|---|'
api 'PUT unit, body not JSON (`{`)' PUT /units/x.service "$(body '{')"
api 'PUT unit, body a JSON list' PUT /units/x.service "$(body '[]')"
api 'PUT unit, body invalid UTF-8' PUT /units/x.service "$(body $'{"desiredState":"\xff"}')"
api 'PUT unit, unknown desiredState' PUT /units/x.service "$(body '{"desiredState":"running","options":[]}')"
api 'PUT new unit without options' PUT /units/x.service "$(body '{"desiredState":"launched"}')"
api 'PUT unit, name in body differs from path' PUT /units/x.service "$(body "${GOOD%\}},\"name\":\"y.service\"}")"
api 'PUT unit, name without a type (`noext`)' PUT /units/noext "$(body "$GOOD")"
api 'PUT unit, name with a space' PUT '/units/bad%20name.service' "$(body "$GOOD")"
api 'PUT unit, name with `/` (`..%2Fx.service`)' PUT '/units/..%2Fx.service' "$(body "$GOOD")"
accept 'PUT unit, option without a section' PUT /units/x.service "$(body '{"desiredState":"launched","options":[{"name":"ExecStart","value":"/bin/true"}]}')"
api 'PUT unit, option value a number' PUT /units/x.service "$(body '{"desiredState":"launched","options":[{"section":"Service","name":"ExecStart","value":7}]}')"
accept 'PUT unit, `Global=true` with `Conflicts=`' PUT /units/x.service "$(body '{"desiredState":"launched","options":[{"section":"X-Fleet","name":"Global","value":"true"},{"section":"X-Fleet","name":"Conflicts","value":"a*"}]}')"
accept 'PUT unit, `MachineID=` not 32 hex digits' PUT /units/x.service "$(body '{"desiredState":"launched","options":[{"section":"X-Fleet","name":"MachineID","value":"../../x"}]}')"
head -c 20000000 /dev/zero | tr '\0' 'a' >"$WORK/huge"
api 'PUT unit, 20 MB body' PUT /units/x.service "$WORK/huge"
api 'PUT unit, body as text/plain' PUT /units/x.service "$(body "$GOOD")" text/plain
api 'PATCH /machines, body not JSON' PATCH /machines "$(body 'nope')"
api 'PATCH /machines, unknown op' PATCH /machines "$(body '[{"op":"explode","path":"/0123456789abcdef0123456789abcdef/metadata/a","value":"b"}]')"
api 'PATCH /machines, bad path' PATCH /machines "$(body '[{"op":"add","path":"/../../etc","value":"b"}]')"
api 'GET /units, garbage page token' GET '/units?nextPageToken=%%%garbage'
api 'DELETE a unit that does not exist' DELETE /units/nope.service
api 'POST /units (no such method)' POST /units "$(body '{}')"
api 'GET an unknown route' GET /nothing-here

# Unit files through fleetctl (submit): the exit code and fleetctl's first line of error.
unitfile() { # LABEL NAME TEXT [accept]
    local before after out rc verdict=ok
    printf '%b' "$3" >"$WORK/$2"
    before=$(snapshot)
    out=$("$BIN/fleetctl" --endpoint "http://127.0.0.1:$API_PORT" submit "$WORK/$2" 2>&1) && rc=0 || rc=$?
    after=$(snapshot)
    if [ "${4-}" = accept ]; then
        verdict="ok (valid: accepted)"
        [ "$rc" = 0 ] || verdict="BAD: refused"
        "$BIN/fleetctl" --endpoint "http://127.0.0.1:$API_PORT" destroy "$2" >/dev/null 2>&1 || true
    else
        [ "$before" = "$after" ] || verdict="BAD: etcd changed"
        [ "$rc" != 0 ] || [ "$verdict" != ok ] || verdict="BAD: accepted"
    fi
    alive || verdict="BAD: fleetd died or panicked"
    row "unit file" "$1" "exit $rc: $(printf '%s' "$out" | head -n1 | short)" "$verdict"
}
unitfile 'empty file' empty.service ''
unitfile 'binary garbage' garbage.service '\x00\x01\xff\xfe[Service'
unitfile 'section header never closed' open.service '[Service\nExecStart=/bin/true\n'
unitfile 'line continuation at end of file (would read back as other content)' cont.service '[Service]\nExecStart=/bin/true \\'
unitfile '`Global=true` with `MachineOf=`' glob.service '[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineOf=a.service\n'
unitfile '`MachineOf=` itself (never schedulable)' self.service '[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=self.service\n' accept
unitfile 'file name without a unit type' notype '[Service]\nExecStart=/bin/true\n'

# Config files: fleetd must refuse to start, name the option, and not panic.
config() { # LABEL LINE...
    local label=$1 out rc verdict=ok
    shift
    { base_conf; echo "etcd_key_prefix=/bad-config/"; echo "api_listen=tcp://127.0.0.1:$(free_port)"; printf '%b\n' "$@"; } >"$WORK/bad.conf"
    out=$(timeout 15 "$BIN/fleetd" -config "$WORK/bad.conf" 2>&1) && rc=0 || rc=$?
    grep -q panicked <<<"$out" && verdict="BAD: panicked"
    [ "$rc" = 0 ] || [ "$rc" = 124 ] && [ "$verdict" = ok ] && verdict="BAD: started"
    row "config" "$label" "exit $rc: $(grep -iv '^$' <<<"$out" | grep -i 'error\|invalid\|must\|unable\|syntax' | tail -n1 | short)" "$verdict"
}
config '`agent_ttl=forever`' 'agent_ttl=forever'
config '`agent_ttl=0`' 'agent_ttl=0'
config '`agent_ttl=9999999999h`' 'agent_ttl=9999999999h'
config '`machine_loss_grace=1e308`' 'machine_loss_grace=1e308'
config '`machine_loss_grace=-1`' 'machine_loss_grace=-1'
config '`engine_reconcile_interval=1e300`' 'engine_reconcile_interval=1e300'
config '`engine_reconcile_interval=NaN`' 'engine_reconcile_interval=NaN'
config '`token_limit=70000`' 'token_limit=70000'
config '`reschedule_breaker_fraction=2`' 'reschedule_breaker_fraction=2'
config '`etcd_servers=not a url`' 'etcd_servers=not a url'
config '`api_listen=ftp://x`' 'api_listen=ftp://x'
config 'a line that is no option' 'this is not ini'
config 'invalid UTF-8' 'metadata=\xff\xfe'

# Flags.
flag() { # LABEL CMD...
    local label=$1 out rc verdict=ok
    shift
    out=$(timeout 15 "$@" 2>&1) && rc=0 || rc=$?
    grep -q panicked <<<"$out" && verdict="BAD: panicked"
    [ "$rc" != 0 ] && [ "$rc" != 124 ] || [ "$verdict" != ok ] || verdict="BAD: accepted"
    row "flag" "$label" "exit $rc: $(printf '%s' "$out" | grep -v '^$' | head -n1 | short)" "$verdict"
}
flag '`fleetd --bogus`' "$BIN/fleetd" --bogus
flag '`fleetd extra-argument`' "$BIN/fleetd" extra-argument
flag '`fleetd -config` (no value)' "$BIN/fleetd" -config
flag '`fleetd -config /nonexistent`' "$BIN/fleetd" -config /nonexistent/fleet.conf
flag '`fleetctl --bogus list-units`' "$BIN/fleetctl" --bogus list-units
flag '`fleetctl --endpoint notaurl list-units`' "$BIN/fleetctl" --endpoint notaurl list-units
flag '`fleetctl list-units --fields nosuch`' "$BIN/fleetctl" --endpoint "http://127.0.0.1:$API_PORT" list-units --fields nosuch
flag '`fleetctl --request-timeout=-1 list-units`' "$BIN/fleetctl" --request-timeout=-1 --endpoint "http://127.0.0.1:$API_PORT" list-units

# etcd contents written by someone else: fleetd must answer (an error is fine), stay up, and
# leave the foreign keys as they are.
foreign() { # LABEL KEY VALUE PATH
    local label=$1 key=$2 value=$3 path=$4 code verdict=ok
    printf '%b' "$value" | ectl put "$key" >/dev/null
    code=$(curl -s -o "$WORK/body" -w '%{http_code}' "$API$path" || true)
    alive || verdict="BAD: fleetd died or panicked"
    [ "$(ectl get --print-value-only "$key" | od -c)" = "$(printf '%b\n' "$value" | od -c)" ] || verdict="BAD: key rewritten"
    case "$code" in 5??|000) [ "$verdict" = ok ] && verdict="FINDING: $code, the detail only in fleetd's log" ;; esac
    row "etcd content" "$label, then \`GET $path\`" "$code $(short <"$WORK/body")" "$verdict"
    ectl del "$key" >/dev/null
}
foreign 'unit record not JSON' "${P}units/junk.service" 'not json' /units
foreign 'unit record not JSON' "${P}units/junk.service" 'not json' /units/junk.service
foreign 'unit record naming missing content' "${P}units/ghost.service" '{"hash":"0000000000000000000000000000000000000000","desiredState":"launched"}' /units/ghost.service
foreign 'unit name in a key is invalid' "${P}units/bad name" '{"hash":"00","desiredState":"launched"}' /units
foreign 'machine record not JSON' "${P}machines/ffffffffffffffffffffffffffffffff" '\xff\xfe' /machines
foreign 'unit state not JSON' "${P}states/keep.service/0123456789abcdef0123456789abcdef" '{{' /state
foreign 'content not a unit file' "${P}content/1111111111111111111111111111111111111111" '\x00\x01' /units
foreign 'engine leader key garbage' "${P}engine/leader" '\xff' /machines

alive || RESULTS=1
exit $RESULTS
