#!/usr/bin/env bash
# fleetctl-inject-ssh.sh NAME [fleetctl flags...] < key.pub
#
# Authorizes the SSH public key read from stdin for the user `core` on every machine of the
# cluster, so that `fleetctl ssh`, `status`, `journal` and `--tunnel` work with that key.
#
# It submits and starts a Global unit, fleet-inject-ssh-NAME.service: a oneshot with
# RemainAfterExit that creates ~core/.ssh (0700) and ~core/.ssh/authorized_keys (0600), both
# owned by core, and appends the key only if that exact line is not there yet (grep -qxF).
# Being Global, it also runs on machines that join later. The fleetctl flags (e.g.
# --endpoint, --tunnel) are passed to `fleetctl ... start`.
#
# The original script piped the key into CoreOS's `update-ssh-keys -a NAME`; this one works
# on any Linux with a POSIX shell, getent and install(1).
#
# Environment: FLEETCTL (default: fleetctl from PATH), FLEET_INJECT_SSH_USER (default core).
# To change the key of a NAME, first `fleetctl destroy fleet-inject-ssh-NAME.service`
# (destroying the unit does not remove keys it added).
#
# Example: fleetctl-inject-ssh.sh alice --tunnel 10.0.0.1 < ~/.ssh/id_ed25519.pub

set -euo pipefail

die() {
    echo "fleetctl-inject-ssh.sh: $*" >&2
    exit 1
}

usage() {
    echo "Usage: $0 NAME [fleetctl flags...] < key.pub" >&2
    echo "Authorizes the SSH public key on stdin for user core on every machine (a Global unit)." >&2
    exit "${1:-1}"
}

[ $# -ge 1 ] || usage 1
case "$1" in -h | --help) usage 0 ;; esac
name=$1
shift
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME must be letters, digits, '.', '_' or '-' (got '$name')"

ssh_user=${FLEET_INJECT_SSH_USER:-core}
[[ "$ssh_user" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "FLEET_INJECT_SSH_USER is not a user name: '$ssh_user'"
fleetctl=${FLEETCTL:-fleetctl}

[ -t 0 ] && die "reading the public key from stdin (pipe or redirect it in)"
# One key: the first non-empty line that is not a comment.
key=$(grep -v -e '^[[:space:]]*$' -e '^[[:space:]]*#' | head -n 1 || true)
key=$(printf '%s' "$key" | tr -d '\r' | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
[ -n "$key" ] || die "no public key on stdin"
# A public key line: type, base64 blob, optional comment. Characters that systemd or the shell
# would interpret are refused rather than escaped.
[[ "$key" =~ ^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+\ [A-Za-z0-9+/=]+(\ [^\"\'\\\$\`%]*)?$ ]] ||
    die "stdin does not look like an SSH public key (type, base64 key, optional comment without quotes, \\, \$, \` or %)"

unit="fleet-inject-ssh-$name.service"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# In ExecStart, systemd expands $VAR and %x itself: $$ and %% pass a literal $ and % to sh.
cat >"$dir/$unit" <<EOF
[Unit]
Description=Authorize SSH key $name for $ssh_user (fleetctl-inject-ssh.sh)

[Service]
Type=oneshot
RemainAfterExit=yes
Environment="FLEET_SSH_USER=$ssh_user" "FLEET_SSH_KEY=$key"
ExecStart=/bin/sh -c 'set -e; home=\$\$(getent passwd "\$\$FLEET_SSH_USER" | cut -d: -f6); [ -n "\$\$home" ] || { echo "no user \$\$FLEET_SSH_USER" >&2; exit 1; }; group=\$\$(id -gn "\$\$FLEET_SSH_USER"); install -d -m 0700 -o "\$\$FLEET_SSH_USER" -g "\$\$group" "\$\$home/.ssh"; keys="\$\$home/.ssh/authorized_keys"; [ -e "\$\$keys" ] || install -m 0600 -o "\$\$FLEET_SSH_USER" -g "\$\$group" /dev/null "\$\$keys"; grep -qxF "\$\$FLEET_SSH_KEY" "\$\$keys" || printf "%%s\\\\n" "\$\$FLEET_SSH_KEY" >>"\$\$keys"'

[X-Fleet]
Global=true
EOF

# Not exec: the trap must remove the temporary directory afterwards.
"$fleetctl" "$@" start "$dir/$unit"
