#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration and functional tests (the functional
# tests boot real systemd hosts with scripts/testhosts.sh, so this needs root).
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

echo "+ scripts/setup.sh"
scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
    echo "test: error: the functional tests need root (network namespaces, mounts, systemd-nspawn)" >&2
    exit 1
fi
# The lint gate first: it is fast and a formatting or clippy failure is the cheapest to fix.
echo "+ cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "+ cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "+ cargo build --workspace --all-targets"
cargo build --workspace --all-targets
# --no-fail-fast: run every test binary and report every failure, still exiting non-zero.
echo "+ cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@"
echo "test: all tests passed"
