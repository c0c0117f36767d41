#!/usr/bin/env bash
# Test hosts for fleet: a real etcd and real systemd machines (systemd-nspawn containers of a
# Debian rootfs), on a machine where PID 1 need not be systemd.
#
# Usage: scripts/testhosts.sh <command> [args]
#   rootfs                      build (or reuse) the cached Debian rootfs; prints its path
#   etcd start [--members 1|3]  start etcd on 127.0.0.1 and 10.231.0.1; prints the client URL(s)
#   etcd stop                   stop every etcd member
#   etcd kill-member N          SIGKILL member N (1..3)
#   etcd start-member N         restart member N with its data dir
#   etcd url                    print the client URL(s) again
#   boot N                      boot hosts h1..hN (10.231.0.11 ..) with new machine ids
#   boot-one hN [--new-id]      boot (or re-boot) one host on its existing overlay
#   exec hN CMD...              run CMD inside host hN
#   bus hN                      print hN's system bus address, usable from outside
#   ip hN                       print hN's address
#   machine-id hN               print hN's machine id
#   install-fleet hN ETCD_URL [CONF_LINE...]
#                               write /etc/fleet/fleet.conf (etcd_servers, public_ip, metadata=hostname=hN,
#                               then CONF_LINEs; ETCD_URL "none" writes no etcd_servers, for
#                               etcd_discovery_srv), install packaging/fleet.{service,socket}
#                               and fleet-tcp.socket (<ip>:54728), enable and start them
#   ssh-key                     print the path of the private key that root and core accept
#   break hN cut|uncut|drop|undrop|freeze|thaw|kill|stop
#   cleanup                     stop and remove everything this state dir created (idempotent)
#
# Environment:
#   FLEET_TESTHOSTS_DIR  state dir (default /run/fleet-testhosts)
#   FLEET_CACHE          cache of the rootfs and downloaded packages (default /var/cache/fleet-build)
#   FLEET_BINDIR         binaries bind-mounted read-only at /opt/fleet/bin in every host
#                        (default <workspace>/target/debug)
#   FLEET_PACKAGING_DIR  where install-fleet takes fleet.service and fleet.socket from
#                        (default <workspace>/packaging)
#   FLEET_DEBIAN_MIRROR  where debootstrap downloads from (default http://deb.debian.org/debian)
#
# One cluster per machine: the bridge fleetbr0, 10.231.0.0/24 and the cgroup directory "fleet"
# are global. A second state dir refuses to start while another owns the bridge; the Rust
# wrapper (functional_tests::Cluster) serialises test clusters with flock on
# /run/fleet-testhosts.lock. Needs root.
#
# Per host: an overlay of the rootfs, its own machine id, hostname, network namespace (veth on
# the bridge), cgroups, system bus socket (bound out to the state dir), and systemd-nspawn
# --register=no --keep-unit booting systemd. Timings on 2 cores: rootfs ~100 s cold, ~3 s from
# the cached tarball; 3 hosts boot in ~1.2 s; cleanup ~3-5 s.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE="${FLEET_TESTHOSTS_DIR:-/run/fleet-testhosts}"
CACHE="${FLEET_CACHE:-/var/cache/fleet-build}"
BINDIR="${FLEET_BINDIR:-$WORKSPACE/target/debug}"
BRIDGE=fleetbr0
BRIDGE_IP=10.231.0.1
BRIDGE_OWNER=/run/fleet-testhosts.bridge-owner
MIRROR="${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PACKAGES="systemd,systemd-sysv,dbus,libsystemd0,iproute2,iputils-ping,procps,openssh-server,curl,sudo"
MAX_HOSTS=200
HOST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/fleet/bin

log() { echo "testhosts: $*" >&2; }
die() {
    echo "testhosts: error: $*" >&2
    exit 1
}

# Fails with what to install when a tool is missing.
need() {
    local tool=$1 package=$2
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found: install the Debian package '$package' (scripts/setup.sh does)"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, mounts, cgroups, nspawn)"
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# rootfs

# Everything done to the debootstrapped tree. Its text is part of the cache key, so editing
# this function rebuilds the rootfs.
rootfs_tweaks() {
    local r=$1
    # Empty: every host gets its own id at boot (fleet names machines by it).
    : >"$r/etc/machine-id"
    rm -f "$r/etc/hostname" "$r/var/lib/dbus/machine-id"
    local unit
    for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer console-getty.service getty@tty1.service \
        systemd-pstore.service systemd-udev-hwdb-update.service; do
        ln -sf /dev/null "$r/etc/systemd/system/$unit"
    done
    mkdir -p "$r/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n' >"$r/etc/systemd/journald.conf.d/fleet-test.conf"
    # SSH: no host key in the image; each host makes its own at first boot (and again after
    # boot-one --new-id), so a replaced machine has a new host key.
    rm -f "$r"/etc/ssh/ssh_host_*
    mkdir -p "$r/etc/ssh/sshd_config.d"
    printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n' >"$r/etc/ssh/sshd_config.d/fleet-test.conf"
    cat >"$r/etc/systemd/system/fleet-test-hostkey.service" <<'EOF'
[Unit]
Description=Generate this test host's SSH host key
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
EOF
    mkdir -p "$r/etc/systemd/system/ssh.service.wants" "$r/etc/systemd/system/multi-user.target.wants"
    ln -sf ../fleet-test-hostkey.service "$r/etc/systemd/system/ssh.service.wants/fleet-test-hostkey.service"
    ln -sf /lib/systemd/system/ssh.service "$r/etc/systemd/system/multi-user.target.wants/ssh.service"
    # The user the original functional tests ssh in as (uid 500), with passwordless sudo.
    chroot "$r" /usr/sbin/groupadd -g 500 core
    # In systemd-journal and adm as on CoreOS, so `fleetctl journal` (journalctl over SSH as
    # core, without sudo) can read the system journal.
    chroot "$r" /usr/sbin/useradd -m -u 500 -g 500 -G systemd-journal,adm -s /bin/bash core
    echo 'core ALL=(ALL) NOPASSWD: ALL' >"$r/etc/sudoers.d/core"
    chmod 0440 "$r/etc/sudoers.d/core"
    echo 'export PATH=/opt/fleet/bin:$PATH' >"$r/etc/profile.d/fleet.sh"
    mkdir -p "$r/opt/fleet/bin" "$r/etc/fleet"
}

rootfs_key() {
    { echo "$SUITE $PACKAGES"; declare -f rootfs_tweaks; } | sha256sum | cut -c1-16
}

# Removes cached rootfs trees and tarballs of other keys (older versions of the tweaks), except
# those a mounted overlay still uses.
prune_rootfs_cache() {
    local key=$1 path
    for path in "$CACHE"/rootfs-*; do
        [ -e "$path" ] || continue
        case "$path" in "$CACHE/rootfs-$key" | "$CACHE/rootfs-$key".* | "$CACHE/rootfs.lock") continue ;; esac
        if grep -qF "lowerdir=${path%.tar.gz}," /proc/mounts; then
            continue
        fi
        log "removing stale cache $path"
        rm -rf "$path"
    done
}

# Prints the path of a complete rootfs, building or extracting it if needed.
ensure_rootfs() {
    need_root
    local key dir tarball
    key=$(rootfs_key)
    dir="$CACHE/rootfs-$key"
    tarball="$CACHE/rootfs-$key.tar.gz"
    if [ -e "$dir/.complete" ]; then
        echo "$dir"
        return
    fi
    mkdir -p "$CACHE"
    # Two concurrent callers must not build the same tree.
    exec 8>"$CACHE/rootfs.lock"
    flock 8
    if [ ! -e "$dir/.complete" ]; then
        local start tmp
        start=$(now_ms)
        rm -rf "$dir"
        if [ -s "$tarball" ]; then
            log "extracting cached rootfs $tarball"
            mkdir -p "$dir"
            tar -xzf "$tarball" -C "$dir" || die "extracting $tarball failed (remove it to rebuild)"
            touch "$dir/.complete"
            log "rootfs extracted in $(($(now_ms) - start)) ms"
        else
            need debootstrap debootstrap
            tmp="$CACHE/rootfs-$key.tmp"
            rm -rf "$tmp"
            mkdir -p "$CACHE/debs"
            log "building rootfs with debootstrap (about a minute, downloads from $MIRROR)"
            if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" \
                "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
                tail -n 20 "$CACHE/debootstrap.log" >&2
                die "debootstrap failed (log: $CACHE/debootstrap.log); needs the 'debootstrap' package and access to $MIRROR"
            fi
            rootfs_tweaks "$tmp" || die "customising the rootfs failed"
            log "caching rootfs as $tarball"
            tar -czf "$tarball.tmp" -C "$tmp" . || die "writing $tarball failed"
            mv "$tarball.tmp" "$tarball"
            touch "$tmp/.complete"
            mv "$tmp" "$dir"
            log "rootfs built in $(($(now_ms) - start)) ms"
            prune_rootfs_cache "$key"
        fi
    fi
    flock -u 8
    echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# network

ensure_bridge() {
    need ip iproute2
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        local owner=""
        [ -e "$BRIDGE_OWNER" ] && owner=$(cat "$BRIDGE_OWNER")
        if [ -n "$owner" ] && [ "$owner" != "$STATE" ]; then
            die "bridge $BRIDGE belongs to another test cluster (state dir $owner); one cluster per machine: run 'FLEET_TESTHOSTS_DIR=$owner $0 cleanup' first"
        fi
    else
        ip link add "$BRIDGE" type bridge || die "creating bridge $BRIDGE failed (needs root and the bridge kernel module)"
        ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    echo "$STATE" >"$BRIDGE_OWNER"
    mkdir -p "$STATE"
}

# A TCP port nothing listens on (random in 20000..44999).
# A port below the kernel's ephemeral range: a killed etcd member restarts on its old ports, and
# a port in that range may meanwhile be the source port of an outgoing connection (the other
# members' included), which makes the restart fail with "bind: address already in use".
free_port() {
    local port floor
    floor=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$floor" -gt 12000 ] 2>/dev/null || floor=32768
    for _ in $(seq 1 100); do
        port=$((10000 + RANDOM % (floor - 10000)))
        if [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ] && ! grep -qsx "$port" "$STATE/etcd/ports"; then
            echo "$port" >>"$STATE/etcd/ports"
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

# ---------------------------------------------------------------------------------------------
# etcd

etcd_member_pid() {
    local pidfile="$STATE/etcd/s$1.pid"
    [ -s "$pidfile" ] || return 1
    local pid
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

etcd_launch_member() {
    local n=$1
    [ -s "$STATE/etcd/s$n.cmd" ] || die "etcd member $n was never started"
    if etcd_member_pid "$n" >/dev/null; then
        log "etcd member $n already runs"
        return
    fi
    # The pid is recorded from inside the new session so it is etcd's own.
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$STATE/etcd/s$n.pid" \
        $(cat "$STATE/etcd/s$n.cmd") >>"$STATE/etcd/s$n.log" 2>&1 </dev/null &
}

etcd_wait_healthy() {
    local endpoints=$1 deadline=$(($(date +%s) + 30))
    until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=1s --command-timeout=2s \
        endpoint health >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 20 "$STATE"/etcd/s*.log >&2 || true
            die "etcd did not become healthy within 30 s (logs: $STATE/etcd/)"
        fi
        sleep 0.1
    done
}

cmd_etcd() {
    need_root
    local sub=${1:-}
    shift || true
    case "$sub" in
    start)
        local members=1
        if [ "${1:-}" = --members ]; then
            members=${2:-}
        fi
        case "$members" in 1 | 3) ;; *) die "etcd start: --members must be 1 or 3" ;; esac
        need etcd etcd-server
        need etcdctl etcd-client
        need ss iproute2
        ensure_bridge
        if [ -s "$STATE/etcd/urls" ]; then
            die "etcd already started for $STATE (urls: $(cat "$STATE/etcd/urls")); run 'etcd stop' or 'cleanup' first"
        fi
        mkdir -p "$STATE/etcd"
        local i cluster="" urls="" local_urls="" client peer
        local -a clients peers
        for i in $(seq 1 "$members"); do
            clients[i]=$(free_port)
            peers[i]=$(free_port)
            cluster+="${cluster:+,}s$i=http://127.0.0.1:${peers[i]}"
        done
        for i in $(seq 1 "$members"); do
            client=${clients[i]}
            peer=${peers[i]}
            mkdir -p "$STATE/etcd/s$i.data"
            echo "etcd --name s$i --data-dir $STATE/etcd/s$i.data" \
                "--listen-client-urls http://127.0.0.1:$client,http://$BRIDGE_IP:$client" \
                "--advertise-client-urls http://$BRIDGE_IP:$client" \
                "--listen-peer-urls http://127.0.0.1:$peer --initial-advertise-peer-urls http://127.0.0.1:$peer" \
                "--initial-cluster $cluster --initial-cluster-state new --initial-cluster-token fleet-test" \
                >"$STATE/etcd/s$i.cmd"
            etcd_launch_member "$i"
            urls+="${urls:+,}http://$BRIDGE_IP:$client"
            local_urls+="${local_urls:+,}http://127.0.0.1:$client"
        done
        etcd_wait_healthy "$local_urls"
        echo "$urls" >"$STATE/etcd/urls"
        echo "$urls"
        ;;
    stop)
        etcd_stop
        ;;
    kill-member)
        local n=${1:?etcd kill-member N}
        local pid
        if pid=$(etcd_member_pid "$n"); then
            kill -KILL "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        else
            log "etcd member $n is not running"
        fi
        ;;
    start-member)
        local n=${1:?etcd start-member N}
        etcd_launch_member "$n"
        ;;
    url)
        [ -s "$STATE/etcd/urls" ] || die "etcd is not started"
        cat "$STATE/etcd/urls"
        ;;
    *) die "usage: etcd start [--members 1|3] | stop | kill-member N | start-member N | url" ;;
    esac
}

# Members are stopped together (one at a time can hang on leadership hand-over), then killed.
# Returns at once if there is no etcd.
etcd_stop() {
    [ -d "$STATE/etcd" ] || return 0
    local pids=() pid f
    for f in "$STATE"/etcd/s*.pid; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        kill -0 "$pid" 2>/dev/null && pids+=("$pid")
    done
    if [ ${#pids[@]} -gt 0 ]; then
        # The data is throwaway: one second for a clean exit, then SIGKILL.
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait_gone 1 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
        wait_gone 5 "${pids[@]}" || true
    fi
    rm -rf "$STATE/etcd"
}

# wait_gone SECONDS PID...: true once every pid has exited.
wait_gone() {
    local deadline=$(($(now_ms) + $1 * 1000)) pid alive
    shift
    while :; do
        alive=0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && return 0
        [ "$(now_ms)" -ge $deadline ] && return 1
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------------------
# hosts

host_index() {
    local name=$1
    [[ "$name" =~ ^h([0-9]+)$ ]] || die "bad host name '$name' (expected h1, h2, ...)"
    local n=${BASH_REMATCH[1]}
    [ "$n" -ge 1 ] && [ "$n" -le $MAX_HOSTS ] || die "host index must be 1..$MAX_HOSTS"
    echo "$n"
}

host_dir() { echo "$STATE/hosts/$1"; }
host_ip() { echo "10.231.0.$((10 + $(host_index "$1")))"; }

# The cgroup directories a host's processes live in (one per hierarchy we use).
cgroup_roots() {
    if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
        echo /sys/fs/cgroup/fleet # Pure cgroup v2.
    else
        local c
        for c in systemd unified memory freezer; do
            [ -d "/sys/fs/cgroup/$c" ] && echo "/sys/fs/cgroup/$c/fleet"
        done
    fi
    return 0
}

nspawn_pid() {
    local f
    f="$(host_dir "$1")/nspawn.pid"
    [ -s "$f" ] || return 1
    local pid
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# The host's PID 1 (systemd), a child of nspawn.
leader_pid() {
    local npid child
    npid=$(nspawn_pid "$1") || return 1
    child=$(cat "/proc/$npid/task/$npid/children" 2>/dev/null) || return 1
    child=${child%% *}
    [ -n "$child" ] || return 1
    echo "$child"
}

need_leader() {
    leader_pid "$1" || die "host $1 is not running (boot it with 'boot N' or 'boot-one $1')"
}

in_host() {
    local leader=$1
    shift
    nsenter -t "$leader" -m -u -i -n -p -- env -i PATH="$HOST_PATH" HOME=/root TERM="${TERM:-dumb}" "$@"
}

ensure_ssh_key() {
    mkdir -p "$STATE/ssh"
    if [ ! -s "$STATE/ssh/id_ed25519" ]; then
        need ssh-keygen openssh-client
        ssh-keygen -q -t ed25519 -N "" -C fleet-testhosts -f "$STATE/ssh/id_ed25519"
    fi
}

# Starts nspawn for one host (without waiting for it to be up).
launch_host() {
    local name=$1 new_id=$2 rootfs=$3
    local n h ip mid
    n=$(host_index "$name")
    h=$(host_dir "$name")
    ip=$(host_ip "$name")
    if nspawn_pid "$name" >/dev/null; then
        die "host $name already runs (use 'break $name stop' first)"
    fi
    mkdir -p "$h/upper" "$h/work" "$h/root" "$h/dbus"
    if ! mountpoint -q "$h/root"; then
        mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$h/upper,workdir=$h/work" "$h/root" ||
            die "mounting the overlay for $name failed (needs the overlay kernel module)"
    fi
    if [ "$new_id" = 1 ] || [ ! -s "$h/machine-id" ]; then
        tr -d '-' </proc/sys/kernel/random/uuid >"$h/machine-id"
        rm -f "$h"/root/etc/ssh/ssh_host_* # A new machine gets a new host key too.
    fi
    mid=$(cat "$h/machine-id")
    echo "$mid" >"$h/root/etc/machine-id"
    echo "$name" >"$h/root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$name" >"$h/root/etc/hosts"
    ensure_ssh_key
    local home
    for home in root home/core; do
        mkdir -p "$h/root/$home/.ssh"
        # Appended, never replaced: keys added in the host survive a re-boot.
        local keys="$h/root/$home/.ssh/authorized_keys"
        if [ ! -e "$keys" ]; then
            install -m 0600 "$STATE/ssh/id_ed25519.pub" "$keys"
        elif ! grep -qxF "$(cat "$STATE/ssh/id_ed25519.pub")" "$keys"; then
            cat "$STATE/ssh/id_ed25519.pub" >>"$keys"
        fi
    done
    chown -R 500:500 "$h/root/home/core/.ssh"
    chmod 700 "$h/root/root/.ssh" "$h/root/home/core/.ssh"

    if [ ! -e "/run/netns/$name" ]; then
        ip netns add "$name"
        ip link add "v$name" type veth peer name host0 netns "$name" ||
            die "creating veth for $name failed (needs the veth kernel module)"
        ip link set "v$name" master "$BRIDGE" up
        ip -n "$name" link set lo up
        ip -n "$name" addr add "$ip/24" dev host0
        ip -n "$name" link set host0 up
    fi
    local cg
    for cg in $(cgroup_roots); do
        mkdir -p "$cg/$name"
    done
    mkdir -p "$BINDIR" # cargo may not have built yet; the bind needs a directory.
    rm -f "$h/nspawn.pid"
    # Each host in its own cgroups (else all hosts share one payload cgroup and see each
    # other's services); the pid is recorded from inside so it is nspawn's own.
    # shellcheck disable=SC2016
    setsid bash -c '
        name=$1 h=$2 mid=$3 bindir=$4
        shift 4
        for cg in "$@"; do echo $$ >"$cg/$name/cgroup.procs"; done
        echo $$ >"$h/nspawn.pid"
        exec systemd-nspawn --boot --register=no --keep-unit --quiet --console=read-only \
            --link-journal=no -D "$h/root" -M "$name" --uuid="$mid" \
            --network-namespace-path="/run/netns/$name" \
            --bind="$h/dbus:/run/dbus" --bind-ro="$bindir:/opt/fleet/bin"' \
        _ "$name" "$h" "$mid" "$BINDIR" $(cgroup_roots) >"$h/console.log" 2>&1 </dev/null &
}

wait_host_up() {
    local name=$1 deadline=$(($(date +%s) + 60)) leader state=""
    local h
    h=$(host_dir "$name")
    while :; do
        if leader=$(leader_pid "$name"); then
            state=$(in_host "$leader" systemctl is-system-running 2>/dev/null || true)
            case "$state" in running | degraded) return 0 ;; esac
        elif [ -s "$h/nspawn.pid" ] && ! nspawn_pid "$name" >/dev/null; then
            tail -n 20 "$h/console.log" >&2 || true
            die "systemd-nspawn for $name exited (console: $h/console.log)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 20 "$h/console.log" >&2 || true
            die "host $name did not reach running within 60 s (state '$state', console: $h/console.log)"
        fi
        sleep 0.1
    done
}

boot_hosts() {
    local new_id=$1 rootfs start name
    shift
    need_root
    need systemd-nspawn systemd-container
    need nsenter util-linux
    rootfs=$(ensure_rootfs)
    ensure_bridge
    start=$(now_ms)
    for name in "$@"; do
        launch_host "$name" "$new_id" "$rootfs"
    done
    for name in "$@"; do
        wait_host_up "$name"
    done
    log "booted $* in $(($(now_ms) - start)) ms"
}

cmd_boot() {
    local count=${1:?boot N}
    [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le $MAX_HOSTS ] ||
        die "boot: N must be 1..$MAX_HOSTS"
    local names=() i
    for i in $(seq 1 "$count"); do names+=("h$i"); done
    boot_hosts 1 "${names[@]}"
}

cmd_boot_one() {
    local name=${1:?boot-one hN [--new-id]} new_id=0
    host_index "$name" >/dev/null
    [ "${2:-}" = --new-id ] && new_id=1
    if nspawn_pid "$name" >/dev/null; then
        stop_hosts "$name"
    fi
    boot_hosts "$new_id" "$name"
}

# SIGTERM the given hosts' nspawn together, wait up to 10 s, then SIGKILL what remains
# (the host's systemd first: killing only nspawn would orphan it).
stop_hosts() {
    local name pids=() leaders=() pid cg
    for name in "$@"; do
        # A frozen host cannot act on signals.
        for cg in $(cgroup_roots); do
            [ -e "$cg/$name/freezer.state" ] && echo THAWED >"$cg/$name/freezer.state" 2>/dev/null || true
            [ -e "$cg/$name/cgroup.freeze" ] && echo 0 >"$cg/$name/cgroup.freeze" 2>/dev/null || true
        done
        # Commands nsenter'd into the host live outside its cgroup and keep its shutdown
        # waiting: kill those (only those) first.
        # Those inside the host's pid namespace go before their nsenter parents outside it:
        # the other order leaves the host's shutdown hanging.
        if [ -e "/run/netns/$name" ]; then
            local strays inner=() outer=()
            strays=$(ip netns pids "$name" 2>/dev/null || true)
            for pid in $strays; do
                grep -qs "/fleet/$name" "/proc/$pid/cgroup" && continue
                if [ "$(awk '/^NSpid:/ { print NF }' "/proc/$pid/status" 2>/dev/null)" = 2 ]; then
                    outer+=("$pid")
                else
                    inner+=("$pid")
                fi
            done
            if [ ${#inner[@]} -gt 0 ]; then
                kill -KILL "${inner[@]}" 2>/dev/null || true
                wait_gone 2 "${inner[@]}" || true
            fi
            if [ ${#outer[@]} -gt 0 ]; then
                kill -KILL "${outer[@]}" 2>/dev/null || true
                wait_gone 2 "${outer[@]}" || true
            fi
        fi
        if pid=$(nspawn_pid "$name"); then
            pids+=("$pid")
            leaders+=("$(leader_pid "$name" || true)")
        fi
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    if ! wait_gone 10 "${pids[@]}"; then
        log "hosts did not stop within 10 s: killing them"
        for pid in "${leaders[@]}"; do [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true; done
        wait_gone 5 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
        wait_gone 5 "${pids[@]}" || true
    fi
    # Whatever is left in the hosts' cgroups (nothing, normally).
    for name in "$@"; do
        for cg in $(cgroup_roots); do
            [ -d "$cg/$name" ] || continue
            find "$cg/$name" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        done
    done
}

cmd_break() {
    local name=${1:?break hN HOW} how=${2:?break hN cut|uncut|drop|undrop|freeze|thaw|kill|stop}
    host_index "$name" >/dev/null
    need_root
    local cg leader npid
    case "$how" in
    cut) ip link set "v$name" down ;;
    uncut) ip link set "v$name" up ;;
    drop)
        need iptables iptables
        ip netns exec "$name" iptables -C OUTPUT -d "$BRIDGE_IP" -j DROP 2>/dev/null ||
            ip netns exec "$name" iptables -A OUTPUT -d "$BRIDGE_IP" -j DROP ||
            die "iptables in $name failed (install 'iptables')"
        ;;
    undrop)
        while ip netns exec "$name" iptables -C OUTPUT -d "$BRIDGE_IP" -j DROP 2>/dev/null; do
            ip netns exec "$name" iptables -D OUTPUT -d "$BRIDGE_IP" -j DROP
        done
        ;;
    freeze | thaw)
        local v1=FROZEN v2=1
        [ "$how" = thaw ] && v1=THAWED v2=0
        local done_=0
        for cg in $(cgroup_roots); do
            if [ -e "$cg/$name/freezer.state" ]; then
                echo $v1 >"$cg/$name/freezer.state" && done_=1
            elif [ -e "$cg/$name/cgroup.freeze" ]; then
                echo $v2 >"$cg/$name/cgroup.freeze" && done_=1
            fi
        done
        [ $done_ = 1 ] || die "no freezer cgroup for $name (needs the cgroup v1 freezer or cgroup v2)"
        ;;
    kill)
        leader=$(need_leader "$name")
        npid=$(nspawn_pid "$name")
        kill -KILL "$leader"
        wait_gone 10 "$npid" || kill -KILL "$npid" 2>/dev/null || true
        ;;
    stop)
        nspawn_pid "$name" >/dev/null || die "host $name is not running"
        stop_hosts "$name"
        ;;
    *) die "break: unknown failure '$how' (cut|uncut|drop|undrop|freeze|thaw|kill|stop)" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# fleet inside a host

# install-fleet hN ETCD_URL [CONF_LINE...]: writes /etc/fleet/fleet.conf, installs fleet.service
# and fleet.socket from packaging/ (ExecStart pointed at /opt/fleet/bin/fleetd by a drop-in),
# plus fleet-tcp.socket on <ip>:54728, enables them (so a re-booted host runs fleet again) and
# starts them.
cmd_install_fleet() {
    local name=${1:?install-fleet hN ETCD_URL [CONF_LINE...]} etcd_url=${2:?install-fleet hN ETCD_URL}
    shift 2
    local h ip leader root
    h=$(host_dir "$name")
    ip=$(host_ip "$name")
    leader=$(need_leader "$name")
    root="$h/root"
    local packaging="${FLEET_PACKAGING_DIR:-$WORKSPACE/packaging}"
    local service="$packaging/fleet.service" socket="$packaging/fleet.socket"
    [ -s "$service" ] || die "$service is missing"
    [ -s "$socket" ] || die "$socket is missing"
    [ -x "$BINDIR/fleetd" ] || die "$BINDIR/fleetd is missing: run 'cargo build --workspace' first"

    mkdir -p "$root/etc/fleet"
    {
        echo "# Written by scripts/testhosts.sh install-fleet."
        [ "$etcd_url" = none ] || echo "etcd_servers=$etcd_url"
        echo "public_ip=$ip"
        echo "metadata=hostname=$name"
        # fleet-tcp.socket below serves plaintext on the test bridge, which is not loopback.
        echo "api_insecure_tcp=true"
        local line
        for line in "$@"; do echo "$line"; done
    } >"$root/etc/fleet/fleet.conf"

    local sd="$root/etc/systemd/system"
    cp "$service" "$sd/fleet.service"
    cp "$socket" "$sd/fleet.socket"
    # Point ExecStart at the bind-mounted binary, keeping the packaged arguments.
    local exec_line args
    exec_line=$(grep -m1 '^ExecStart=' "$service" || true)
    if [ -n "$exec_line" ] && [[ "$exec_line" != ExecStart=/opt/fleet/bin/fleetd* ]]; then
        args=$(sed -E 's/^ExecStart=[^ ]*fleetd//' <<<"$exec_line")
        mkdir -p "$sd/fleet.service.d"
        printf '[Service]\nExecStart=\nExecStart=/opt/fleet/bin/fleetd%s\n' "$args" >"$sd/fleet.service.d/testhost.conf"
    fi
    cat >"$sd/fleet-tcp.socket" <<EOF
[Unit]
Description=fleet API on TCP (test host)

[Socket]
ListenStream=$ip:54728
Service=fleet.service

[Install]
WantedBy=sockets.target
EOF
    # Enabled by hand: the packaged files' [Install] sections are not ours to rely on.
    mkdir -p "$sd/sockets.target.wants" "$sd/multi-user.target.wants"
    ln -sf ../fleet.socket "$sd/sockets.target.wants/fleet.socket"
    ln -sf ../fleet-tcp.socket "$sd/sockets.target.wants/fleet-tcp.socket"
    ln -sf ../fleet.service "$sd/multi-user.target.wants/fleet.service"

    in_host "$leader" systemctl daemon-reload || die "systemctl daemon-reload in $name failed"
    # fleet.socket gives the API socket to group fleet, as the package does.
    in_host "$leader" groupadd -f --system fleet || die "groupadd fleet in $name failed"
    in_host "$leader" systemctl start fleet.socket fleet-tcp.socket ||
        die "starting fleet sockets in $name failed (see: $0 exec $name journalctl -u fleet.socket)"
    in_host "$leader" systemctl start fleet.service ||
        die "starting fleet in $name failed (see: $0 exec $name journalctl -u fleet)"
}

# ---------------------------------------------------------------------------------------------
# cleanup

cmd_cleanup() {
    need_root
    local start names=() name d
    start=$(now_ms)
    if [ -d "$STATE/hosts" ]; then
        for d in "$STATE"/hosts/h*; do
            [ -d "$d" ] && names+=("$(basename "$d")")
        done
    fi
    if [ ${#names[@]} -gt 0 ]; then
        stop_hosts "${names[@]}"
    fi
    etcd_stop
    # Every mount under the state dir, deepest first.
    local m
    if [ -d "$STATE" ]; then
        awk -v p="$STATE/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" || log "could not unmount $m"
        done
    fi
    for name in "${names[@]}"; do
        # Processes still in the namespace (nsenter'd commands) keep it alive: kill them.
        if [ -e "/run/netns/$name" ]; then
            ip netns pids "$name" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            ip netns del "$name" 2>/dev/null || log "could not delete netns $name"
        fi
        ip link del "v$name" 2>/dev/null || true
    done
    local cg
    for cg in $(cgroup_roots); do
        [ -d "$cg" ] || continue
        for name in "${names[@]}"; do
            if [ -d "$cg/$name" ]; then
                find "$cg/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || log "could not remove cgroup $cg/$name"
            fi
        done
        # The shared parent goes once no cluster uses it.
        rmdir "$cg" 2>/dev/null || true
    done
    local owner=""
    [ -e "$BRIDGE_OWNER" ] && owner=$(cat "$BRIDGE_OWNER")
    if [ -z "$owner" ] || [ "$owner" = "$STATE" ]; then
        ip link del "$BRIDGE" 2>/dev/null || true
        rm -f "$BRIDGE_OWNER"
    fi
    rm -rf "$STATE"
    log "cleaned up in $(($(now_ms) - start)) ms"
}

# ---------------------------------------------------------------------------------------------

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
    rootfs) ensure_rootfs ;;
    etcd) cmd_etcd "$@" ;;
    boot) cmd_boot "$@" ;;
    boot-one) cmd_boot_one "$@" ;;
    exec)
        local name=${1:?exec hN CMD...}
        shift
        [ $# -gt 0 ] || die "exec: no command"
        local leader
        leader=$(need_leader "$name")
        in_host "$leader" "$@"
        ;;
    bus)
        host_index "${1:?bus hN}" >/dev/null
        echo "unix:path=$(host_dir "$1")/dbus/system_bus_socket"
        ;;
    ip) host_ip "${1:?ip hN}" ;;
    machine-id)
        local f
        f="$(host_dir "${1:?machine-id hN}")/machine-id"
        [ -s "$f" ] || die "host $1 was never booted"
        cat "$f"
        ;;
    install-fleet) cmd_install_fleet "$@" ;;
    ssh-key)
        ensure_ssh_key
        echo "$STATE/ssh/id_ed25519"
        ;;
    break) cmd_break "$@" ;;
    cleanup) cmd_cleanup ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (see $0 --help)" ;;
    esac
}

main "$@"
