#!/usr/bin/env bash
# Installs what building and testing fleet needs on Debian 12 (run as root). Idempotent: when
# everything is already installed it only checks and returns.
#
# The Rust toolchain itself is assumed (rustup, cargo). The packages:
#   etcd-server etcd-client   a real etcd for the registry and functional tests
#   protobuf-compiler         protoc, needed to build the etcd client crate
#   debootstrap               builds the Debian rootfs of the test hosts
#   systemd-container         systemd-nspawn, the test hosts
#   iptables iproute2         test-host networking and failure injection
#   openssh-client/-server    fleetctl ssh and its tests
#   curl                      health checks
#   prometheus                promtool, which validates fleetd's /metrics in a test
#   chromium chromium-driver  headless Chromium for the dashboard's browser test
#   binutils                  strip and objdump for scripts/package.sh (the Debian package)
#
# Environment: FLEET_CACHE (default /var/cache/fleet-build) holds a private apt archive dir, so
# concurrent apt runs (and the image's hook that deletes downloaded .debs) don't collide.
set -euo pipefail

# libprotobuf-dev: the google/protobuf/*.proto files etcd-client's build script compiles with
# protoc (a "Recommends" of protobuf-compiler, which --no-install-recommends leaves out).
# openssl: the etcd TLS test fixture makes its certificates with the openssl command.
PACKAGES=(etcd-server etcd-client protobuf-compiler libprotobuf-dev debootstrap systemd-container
    iptables iproute2 openssh-client openssh-server curl openssl prometheus chromium chromium-driver
    binutils)
CACHE="${FLEET_CACHE:-/var/cache/fleet-build}"

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all packages present (${PACKAGES[*]})"
else
    if [ "$(id -u)" != 0 ]; then
        echo "setup: error: missing packages ${missing[*]}; run this script as root to install them" >&2
        exit 1
    fi
    command -v apt-get >/dev/null || {
        echo "setup: error: apt-get not found; install these Debian 12 packages by hand: ${missing[*]}" >&2
        exit 1
    }
    mkdir -p "$CACHE/apt/partial"
    apt_options=(-o "Dir::Cache::archives=$CACHE/apt" -o DPkg::Lock::Timeout=600)
    echo "setup: installing ${missing[*]}"
    apt-get "${apt_options[@]}" update
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y --no-install-recommends "${missing[@]}"
fi

# Debian's etcd-server starts a system etcd on 2379 where it can; tests never rely on it and
# pick free ports, so it is left alone.
for tool in etcd etcdctl protoc debootstrap systemd-nspawn nsenter ip iptables ssh curl promtool chromium chromedriver strip objdump dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "setup: error: '$tool' still missing after installing packages" >&2
        exit 1
    }
done
command -v cargo >/dev/null || {
    echo "setup: error: cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
}
