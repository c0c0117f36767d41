#!/usr/bin/env bash
# The chaos suite: 5 real systemd hosts, a 3-member etcd, 300 units, and named faults injected
# one after another while systemd in every host is watched (Documentation/reliability.md).
#
# Usage: scripts/chaos.sh [--scenario NAME]... [--json FILE] [--hosts N] [--units N] [--conf LINE]...
#                         [--list]
#   --conf adds a fleet.conf line on every host (e.g. on_partition=keep-running).
#   Without --scenario every scenario runs. Exits 1 when an invariant broke, 2 on bad usage or
#   a failed set-up. Needs root and what scripts/setup.sh installs; takes the test-host lock
#   (/run/fleet-testhosts.lock) for its whole run, so it waits for running functional tests.
set -euo pipefail
cd "$(dirname "$0")/.."

case " $* " in
*" --list "* | *" --help "* | *" -h "*) ;;
*)
    [ "$(id -u)" = 0 ] || {
        echo "chaos: error: must run as root (it boots systemd-nspawn hosts)" >&2
        exit 2
    }
    scripts/setup.sh >&2
    ;;
esac
# The whole workspace, as scripts/test.sh builds it: selecting packages would change the
# dependencies' unified features and rebuild them all.
cargo build --quiet --workspace --all-targets >&2
exec target/debug/chaos "$@"
