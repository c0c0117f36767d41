#!/usr/bin/env bash
# Installs fleet on a real systemd host: fleetd and fleetctl, fleet.service and fleet.socket,
# and /etc/fleet/fleet.conf (only if absent), then starts the API socket and fleetd.
#
# Usage: scripts/install.sh [--bindir DIR] [--no-start] [--etcd URL[,URL...]] [--metadata k=v,...]
#   --bindir DIR   where the built binaries are (default: target/release, else target/debug)
#   --no-start     install only; do not enable or start anything
#   --etcd, --metadata  written into a NEW /etc/fleet/fleet.conf (an existing one is kept)
#
# Environment: DESTDIR (default empty) installs into another root, e.g. a host image.
# Idempotent: running it again replaces the binaries and units and keeps fleet.conf.
set -euo pipefail
cd "$(dirname "$0")/.."

bindir=""
start=1
etcd=""
metadata=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bindir) bindir="$2"; shift 2 ;;
        --no-start) start=0; shift ;;
        --etcd) etcd="$2"; shift 2 ;;
        --metadata) metadata="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "install: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$bindir" ]; then
    if [ -x target/release/fleetd ]; then bindir=target/release; else bindir=target/debug; fi
fi
for binary in fleetd fleetctl; do
    [ -x "$bindir/$binary" ] || {
        echo "install: $bindir/$binary not found: build it first (cargo build --release -p fleetd -p fleetctl)" >&2
        exit 1
    }
done

root="${DESTDIR:-}"
install -d "$root/usr/bin" "$root/etc/systemd/system" "$root/etc/fleet"
# The group of the API socket (fleet.socket's SocketGroup): its members may use fleetctl.
if [ -n "$root" ]; then
    groupadd -R "$root" -f --system fleet
else
    groupadd -f --system fleet
fi
install -m 0755 "$bindir/fleetd" "$bindir/fleetctl" "$root/usr/bin/"
install -m 0644 packaging/fleet.service packaging/fleet.socket "$root/etc/systemd/system/"
if [ ! -e "$root/etc/fleet/fleet.conf" ]; then
    # Mode 0600 from the first byte: fleet.conf can hold etcd credentials.
    (
        umask 077
        {
            echo "# fleetd configuration; every option: /usr/share/doc/fleet/configuration.md"
            [ -n "$etcd" ] && echo "etcd_servers=$etcd"
            [ -n "$metadata" ] && echo "metadata=$metadata"
            echo
            cat packaging/fleet.conf.sample
        } >"$root/etc/fleet/fleet.conf"
    )
    chmod 0600 "$root/etc/fleet/fleet.conf"
    echo "install: wrote $root/etc/fleet/fleet.conf"
else
    echo "install: kept the existing $root/etc/fleet/fleet.conf"
fi
install -d "$root/usr/share/doc/fleet"
install -m 0644 Documentation/*.md "$root/usr/share/doc/fleet/"
echo "install: fleetd and fleetctl in $root/usr/bin, units in $root/etc/systemd/system"

if [ "$start" = 1 ] && [ -z "$root" ]; then
    systemctl daemon-reload
    systemctl enable --now fleet.socket
    systemctl enable fleet.service
    systemctl restart fleet.service
    echo "install: fleet.socket and fleet.service started; try: fleetctl list-machines"
fi
