#!/usr/bin/env bash
# Installs fleet on a real systemd host through its Debian package: builds it with
# scripts/package.sh (or takes --package FILE.deb), writes /etc/fleet/fleet.conf if there is
# none (mode 0600, the given options, then every option commented out), installs the package
# with dpkg -i and starts fleet.socket and fleet.service (Documentation/deployment.md).
#
# Usage: scripts/install.sh [--bindir DIR] [--package FILE.deb] [--no-start] [--etcd URL[,URL...]]
#                           [--metadata k=v,...]
#   --bindir DIR   package the binaries in DIR (default: target/release, else target/debug)
#   --package F    install this .deb instead of building one
#   --no-start     start nothing (the package enables fleet.socket and fleet.service; an upgrade
#                  still restarts a fleetd that runs, which leaves its units running)
#   --etcd, --metadata  written into a NEW /etc/fleet/fleet.conf (an existing one is kept)
#
# Environment: DESTDIR (default empty) installs into another Debian root, e.g. a host image,
# with dpkg --root (the root needs its own dpkg database, as debootstrap makes); nothing starts.
# Idempotent: running it again reinstalls the package (an upgrade restarts fleetd, never the
# units it runs) and keeps fleet.conf.
set -euo pipefail
cd "$(dirname "$0")/.."

bindir=""
package=""
start=1
etcd=""
metadata=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bindir) bindir="${2:?--bindir needs a directory}"; shift 2 ;;
        --package) package="${2:?--package needs a .deb}"; shift 2 ;;
        --no-start) start=0; shift ;;
        --etcd) etcd="${2:?--etcd needs URLs}"; shift 2 ;;
        --metadata) metadata="${2:?--metadata needs k=v,...}"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "install: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install: run as root (dpkg -i)" >&2; exit 1; }
root="${DESTDIR:-}"
[ -z "$root" ] || start=0

if [ -z "$package" ]; then
    if [ -z "$bindir" ]; then
        if [ -x target/release/fleetd ]; then bindir=target/release; else bindir=target/debug; fi
    fi
    for binary in fleetd fleetctl; do
        [ -x "$bindir/$binary" ] || {
            echo "install: $bindir/$binary not found: build it first (cargo build --release -p fleetd -p fleetctl)" >&2
            exit 1
        }
    done
    package=$(scripts/package.sh --bindir "$bindir")
fi
[ -f "$package" ] || { echo "install: $package not found" >&2; exit 1; }

# A host set up by the install.sh of before the package has its own copies of the units in
# /etc/systemd/system, which would hide the packaged ones: disable them and move them aside.
for unit in fleet.service fleet.socket; do
    old="$root/etc/systemd/system/$unit"
    if [ -f "$old" ] && [ ! -L "$old" ]; then
        [ -n "$root" ] || systemctl disable "$unit" 2>/dev/null || true
        install -d -m 0755 "$root/etc/fleet/pre-package"
        mv "$old" "$root/etc/fleet/pre-package/$unit"
        echo "install: moved the old $old to $root/etc/fleet/pre-package/ (the package's unit replaces it)"
    fi
done

write_conf() {
    # Mode 0600 from the first byte: fleet.conf can hold etcd credentials.
    install -d -m 0755 "$root/etc/fleet"
    (
        umask 077
        {
            echo "# fleetd configuration; every option: /usr/share/doc/fleet/configuration.md"
            [ -n "$etcd" ] && echo "etcd_servers=$etcd"
            [ -n "$metadata" ] && echo "metadata=$metadata"
            echo
            cat packaging/fleet.conf.sample
        } >"$root/etc/fleet/fleet.conf.tmp"
    )
    mv "$root/etc/fleet/fleet.conf.tmp" "$root/etc/fleet/fleet.conf"
    echo "install: wrote $root/etc/fleet/fleet.conf"
}

had_conf=0
[ -e "$root/etc/fleet/fleet.conf" ] && had_conf=1
# Before dpkg: the postinst then finds the etcd and starts fleet on a first install. With
# --no-start, after dpkg (replacing the sample the postinst wrote), so nothing starts.
[ "$had_conf" = 1 ] || [ "$start" = 0 ] || write_conf
if [ -n "$root" ]; then
    dpkg --root="$root" -i "$package"
else
    dpkg -i "$package"
fi
[ "$had_conf" = 1 ] || [ "$start" = 1 ] || write_conf
[ "$had_conf" = 0 ] || echo "install: kept the existing $root/etc/fleet/fleet.conf"
echo "install: installed $package${root:+ into $root}"

if [ "$start" = 1 ]; then
    # No-ops when the postinst already started (first install) or restarted (upgrade) fleet.
    systemctl start fleet.socket fleet.service
    echo "install: fleet.socket and fleet.service started; try: fleetctl list-machines"
fi
