//! SSH for fleetctl: `--tunnel`, `ssh`, and `status`/`journal` on other
//! machines (Documentation/compatibility.md, "fleetctl SSH").
//!
//! Everything drives the system OpenSSH client through the `openssh` crate
//! (process multiplexing): one verified master connection per machine
//! ([`master::Master`]), commands and port forwards over its control socket.
//! We do not speak the SSH protocol ourselves. What the original did by hand
//! is mapped onto OpenSSH options:
//!
//! - ssh-agent only authentication: `SSH_AUTH_SOCK` must be set
//!   ([`SshError::NoAgent`], the original's message) and is the only identity
//!   source we configure (`IdentityAgent`, publickey only, `BatchMode`).
//! - Host keys: OpenSSH checks them against `--known-hosts-file`; fleetctl
//!   adds the original's interactive prompt for unknown hosts on top
//!   ([`known_hosts`]).
//! - `--tunnel`: a forwarded unix socket to the API, and a `ProxyCommand`
//!   through the bastion's master for machines ([`tunnel`]).
//! - [`remote`]: what the commands call (`ssh`, and running `status` /
//!   `journal` on a machine, with the local-machine shortcut).
//!
//! Pure parts ([`quote`], [`resolve`], parsing in [`known_hosts`] and
//! [`Destination`]) are unit-tested; the rest is tested against real sshd in
//! the functional tests (`functional-tests/tests/functional/ssh.rs`).

pub mod exec;
pub mod known_hosts;
pub mod master;
pub mod quote;
pub mod remote;
pub mod resolve;
pub mod script;
pub mod tunnel;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Config;

/// The original's message when no agent is available.
pub const NO_AGENT_MESSAGE: &str = "SSH_AUTH_SOCK environment variable is not set. Verify ssh-agent is running. See https://github.com/coreos/fleet/blob/master/Documentation/using-the-client.md for help.";

/// Why an SSH connection or tunnel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{NO_AGENT_MESSAGE}")]
    NoAgent,
    #[error("invalid SSH address {0:?}: expected host or host:port")]
    BadAddress(String),
    /// The host presented a key other than the one in the known hosts file;
    /// OpenSSH's warning banner has been printed.
    #[error("host key mismatch for {0}")]
    HostKeyMismatch(String),
    /// An unknown host whose key the user did not accept.
    #[error("host key verification failed for {0}: unauthorized host")]
    HostKeyRejected(String),
    /// OpenSSH could not connect or authenticate; `detail` is its message.
    #[error("{detail}")]
    Connect { detail: String },
    /// The port forward of a tunnel was refused.
    #[error("cannot forward {local} to {remote} through {bastion}: {detail}")]
    Forward {
        local: String,
        remote: String,
        bastion: String,
        detail: String,
    },
    /// A local file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {
    fn io(what: impl Into<String>, source: std::io::Error) -> SshError {
        SshError::Io {
            what: what.into(),
            source,
        }
    }
}

/// How host keys are checked (`--strict-host-key-checking`,
/// `--known-hosts-file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Check against this file; prompt for unknown hosts.
    Strict { known_hosts_file: PathBuf },
    /// No checking at all (the original's `--strict-host-key-checking=false`).
    Off,
}

/// Everything an SSH connection needs from the global configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshOptions {
    /// `--ssh-username` (default `core`).
    pub user: String,
    /// `--ssh-timeout`: connection set-up (TCP connect and SSH handshake).
    pub connect_timeout: Duration,
    pub host_keys: HostKeyPolicy,
    /// The ssh-agent socket (`SSH_AUTH_SOCK`).
    pub agent_socket: PathBuf,
}

impl SshOptions {
    /// Builds the options from the configuration and the value of
    /// `SSH_AUTH_SOCK`.
    ///
    /// # Errors
    /// [`SshError::NoAgent`] when `agent_socket` is unset or empty.
    pub fn new(config: &Config, agent_socket: Option<OsString>) -> Result<SshOptions, SshError> {
        let agent_socket = agent_socket
            .filter(|sock| !sock.is_empty())
            .map(PathBuf::from)
            .ok_or(SshError::NoAgent)?;
        let host_keys = if config.strict_host_key_checking {
            HostKeyPolicy::Strict {
                known_hosts_file: config.known_hosts_file.clone(),
            }
        } else {
            HostKeyPolicy::Off
        };
        Ok(SshOptions {
            user: config.ssh_username.clone(),
            connect_timeout: config.ssh_timeout,
            host_keys,
            agent_socket,
        })
    }

    /// Like [`SshOptions::new`] with this process's `SSH_AUTH_SOCK`, which is
    /// also what the ssh processes we start inherit.
    ///
    /// # Errors
    /// [`SshError::NoAgent`].
    pub fn from_env(config: &Config) -> Result<SshOptions, SshError> {
        SshOptions::new(config, std::env::var_os("SSH_AUTH_SOCK"))
    }

    /// `ConnectTimeout` takes whole seconds, at least 1.
    fn connect_timeout_secs(&self) -> u64 {
        let secs = self.connect_timeout.as_secs_f64().ceil();
        if secs < 1.0 { 1 } else { secs as u64 }
    }
}

/// A machine to connect to: `host` or `host:port` (port 22 by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// A host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Parses `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
    ///
    /// # Errors
    /// [`SshError::BadAddress`] for an empty host or a bad port.
    pub fn parse(address: &str) -> Result<Destination, SshError> {
        let bad = || SshError::BadAddress(address.to_owned());
        let address = address.trim();
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad()),
            }
        } else if address.matches(':').count() == 1 {
            let (host, port) = address.split_once(':').ok_or_else(bad)?;
            (host, Some(port))
        } else {
            // No colon, or a bare IPv6 address.
            (address, None)
        };
        // The host becomes an argument of ssh: never let it look like an
        // option or carry shell or ssh_config metacharacters.
        if host.is_empty()
            || host.starts_with('-')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(bad());
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(bad)?,
            None => 22,
        };
        Ok(Destination {
            host: host.to_owned(),
            port,
        })
    }

    /// How OpenSSH (and the original) name the host in a known hosts file:
    /// `host` on port 22, else `[host]:port`.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cli::GlobalArgs;

    fn config(args: GlobalArgs) -> Config {
        let env = HashMap::from([("HOME".to_owned(), "/home/u".to_owned())]);
        Config::from_args(&args, &env).unwrap()
    }

    #[test]
    fn an_agent_is_required() {
        let config = config(GlobalArgs::default());
        let error = SshOptions::new(&config, None).unwrap_err();
        assert_eq!(error.to_string(), NO_AGENT_MESSAGE);
        assert!(matches!(
            SshOptions::new(&config, Some(OsString::new())),
            Err(SshError::NoAgent)
        ));
        let options = SshOptions::new(&config, Some("/tmp/agent.sock".into())).unwrap();
        assert_eq!(options.user, "core");
        assert_eq!(options.connect_timeout_secs(), 10);
        assert_eq!(
            options.host_keys,
            HostKeyPolicy::Strict {
                known_hosts_file: PathBuf::from("/home/u/.fleetctl/known_hosts")
            }
        );
    }

    #[test]
    fn flags_reach_the_options() {
        let config = config(GlobalArgs {
            ssh_username: Some("admin".to_owned()),
            ssh_timeout: Some("0.2".to_owned()),
            strict_host_key_checking: Some("false".to_owned()),
            ..GlobalArgs::default()
        });
        let options = SshOptions::new(&config, Some("/a".into())).unwrap();
        assert_eq!(options.user, "admin");
        assert_eq!(options.connect_timeout_secs(), 1);
        assert_eq!(options.host_keys, HostKeyPolicy::Off);
    }

    fn check_destination(address: &str, expected: Option<(&str, u16, &str)>) {
        let got = Destination::parse(address)
            .ok()
            .map(|d| (d.host.clone(), d.port, d.known_hosts_name()));
        let expected = expected.map(|(h, p, k)| (h.to_owned(), p, k.to_owned()));
        assert_eq!(got, expected, "{address:?}");
    }

    #[test]
    fn destinations() {
        check_destination("10.0.0.1", Some(("10.0.0.1", 22, "10.0.0.1")));
        check_destination("10.0.0.1:22", Some(("10.0.0.1", 22, "10.0.0.1")));
        check_destination("h1:2222", Some(("h1", 2222, "[h1]:2222")));
        check_destination("[fd00::1]:2222", Some(("fd00::1", 2222, "[fd00::1]:2222")));
        check_destination("fd00::1", Some(("fd00::1", 22, "fd00::1")));
        check_destination("", None);
        check_destination(":22", None);
        check_destination("h1:x", None);
        check_destination("h1:0", None);
        check_destination("h1:70000", None);
        check_destination("-oProxyCommand=x", None);
        check_destination("h1;reboot", None);
        check_destination("h 1", None);
    }
}
