//! One verified OpenSSH master connection to a machine, and running a
//! command over it.
//!
//! [`Master::connect`] writes a private `ssh_config` for the connection (in a
//! 0700 temporary directory that also holds the control socket), starts
//! `ssh -M` through `openssh::SessionBuilder`, and runs the host key flow of
//! [`crate::ssh::known_hosts`] when OpenSSH refuses the host. The user's own
//! `~/.ssh/config` is not read (the original ignored it too), so every
//! connection behaves the same whatever the local set-up.
//!
//! Commands run with the system `ssh` as a multiplexing client of the master
//! ([`Master::run`]), with the terminal attached: OpenSSH then handles the
//! PTY (`-t` when stdin is a terminal), raw mode, window size and the exit
//! status, which is the remote command's (255 when SSH itself fails).
//!
//! A master reached through a bastion uses a `ProxyCommand` that opens a
//! `-W` stdio channel through the bastion's own master, so the bastion's key
//! is checked once and its connection reused.
//!
//! Dropping a [`Master`] sends `ssh -O exit` (the openssh crate's drop) and
//! then removes its directory; while a command runs, Ctrl-C ends the command,
//! not fleetctl, so that this cleanup happens. Masters also end on their own after
//! [`IDLE_EXIT`] without channels, so a killed fleetctl leaves nothing
//! running for long.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tempfile::TempDir;

use crate::ssh::known_hosts::{self, Failure, Prompt, Terminal};
use crate::ssh::{Destination, HostKeyPolicy, SshError, SshOptions};

/// How long a master without channels lives on (OpenSSH `ControlPersist`),
/// in seconds: long enough for the gaps between the API requests of a
/// blocking command, short enough that a killed fleetctl does not leave
/// connections behind.
pub const IDLE_EXIT: usize = 60;

/// Whether the machine may use the local ssh-agent (`-A`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentForwarding {
    Off,
    On,
}

/// A connected, verified master connection.
pub struct Master {
    /// Dropped first: its drop tells the master to exit while the control
    /// socket in `dir` still exists.
    session: Session,
    /// The private directory: `ssh_config`, scratch files, the control
    /// socket, forwarded sockets.
    dir: TempDir,
    destination: Destination,
    agent: AgentForwarding,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("destination", &self.destination)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The `ssh_config` of one connection. Host, user, port, timeout and host
/// key options are on the command line (the openssh builder); these are the
/// rest. `proxy_control_socket` is the bastion master's control socket.
pub fn render_config(agent: AgentForwarding, proxy_control_socket: Option<&Path>) -> String {
    let mut config = String::from(
        "# Written by fleetctl for one connection (see Documentation/using-the-client.md).\n\
         Host *\n\
         \x20   BatchMode yes\n\
         \x20   PreferredAuthentications publickey\n\
         \x20   PasswordAuthentication no\n\
         \x20   KbdInteractiveAuthentication no\n\
         \x20   HostbasedAuthentication no\n\
         \x20   GSSAPIAuthentication no\n\
         \x20   GlobalKnownHostsFile /dev/null\n\
         \x20   HashKnownHosts no\n\
         \x20   CheckHostIP no\n\
         \x20   UpdateHostKeys no\n\
         \x20   FingerprintHash md5\n\
         \x20   ServerAliveInterval 15\n\
         \x20   ServerAliveCountMax 3\n",
    );
    config.push_str(match agent {
        AgentForwarding::On => "    ForwardAgent yes\n",
        AgentForwarding::Off => "    ForwardAgent no\n",
    });
    if let Some(socket) = proxy_control_socket {
        // Quoted for the shell that runs ProxyCommand; our own temp path, so
        // it has no single quotes.
        config.push_str(&format!(
            "    ProxyCommand ssh -F /dev/null -o BatchMode=yes -o ControlMaster=no -S '{}' -W '[%h]:%p' none\n",
            socket.display()
        ));
    }
    config
}

/// The text of an openssh error: OpenSSH's own message when there is one.
fn error_text(error: &openssh::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => known_hosts::ssh_message(&source.to_string()),
        None => error.to_string(),
    }
}

impl Master {
    /// Connects to `destination` (through `via`'s master if given),
    /// prompting on the terminal for an unknown host key.
    ///
    /// # Errors
    /// [`SshError`]: a mismatched or refused host key, or OpenSSH's message
    /// when it cannot connect or authenticate.
    pub async fn connect(
        options: &SshOptions,
        destination: &Destination,
        via: Option<&Master>,
        agent: AgentForwarding,
    ) -> Result<Master, SshError> {
        Self::connect_with_prompt(options, destination, via, agent, &mut Terminal).await
    }

    /// [`Master::connect`] with the prompt supplied by the caller.
    ///
    /// # Errors
    /// As [`Master::connect`].
    pub async fn connect_with_prompt(
        options: &SshOptions,
        destination: &Destination,
        via: Option<&Master>,
        agent: AgentForwarding,
        prompt: &mut (dyn Prompt + Send),
    ) -> Result<Master, SshError> {
        let dir = tempfile::Builder::new()
            .prefix("fleetctl-ssh-")
            .tempdir()
            .map_err(|e| SshError::io("creating a directory for SSH", e))?;
        let config_file = dir.path().join("ssh_config");
        let proxy = via.map(Master::control_socket);
        std::fs::write(&config_file, render_config(agent, proxy))
            .map_err(|e| SshError::io("writing the SSH configuration", e))?;

        let session = match launch(options, destination, dir.path(), &config_file).await {
            Ok(session) => session,
            Err(error) => {
                let text = error_text(&error);
                match (known_hosts::classify_failure(&text), &options.host_keys) {
                    (Failure::HostKeyChanged, _) => {
                        prompt.say(&text);
                        return Err(SshError::HostKeyMismatch(destination.known_hosts_name()));
                    }
                    (Failure::HostKeyUnknown, HostKeyPolicy::Strict { known_hosts_file }) => {
                        let base_args = base_args(options, &config_file);
                        let scratch = dir.path().join("probed_known_hosts");
                        let key =
                            known_hosts::probe_host_key(&base_args, destination, &scratch).await?;
                        known_hosts::confirm_and_record(
                            prompt,
                            destination,
                            &key,
                            known_hosts_file,
                        )?;
                        launch(options, destination, dir.path(), &config_file)
                            .await
                            .map_err(|error| SshError::Connect {
                                detail: error_text(&error),
                            })?
                    }
                    _ => return Err(SshError::Connect { detail: text }),
                }
            }
        };
        Ok(Master {
            session,
            dir,
            destination: destination.clone(),
            agent,
        })
    }

    /// The master's control socket (for multiplexing clients).
    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
    }

    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The master's private directory (0700), removed on drop.
    pub fn private_dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// An `ssh` command that only talks through this master's control
    /// socket. The "discard" port and a dummy host: if the master is gone,
    /// it fails instead of opening a new, unverified connection. Callers add
    /// their own options and the remote command.
    pub(super) fn through_master(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ssh");
        command
            .arg("-F")
            .arg("/dev/null")
            .arg("-S")
            .arg(self.control_socket())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ControlMaster=no",
                "-q",
                "-p",
                "9",
            ]);
        command
    }

    /// Runs `command_line` (an interactive shell when `None`) on the machine
    /// with this process's stdin, stdout and stderr, and returns its exit
    /// status: the remote command's, or 255 when SSH fails.
    ///
    /// # Errors
    /// [`SshError::Io`] when `ssh` cannot be started.
    pub async fn run(&self, command_line: Option<&str>) -> Result<u8, SshError> {
        let mut command = self.through_master();
        command.arg(if std::io::stdin().is_terminal() {
            "-t"
        } else {
            "-T"
        });
        if self.agent == AgentForwarding::On {
            command.arg("-A");
        }
        command.arg("--").arg("none");
        if let Some(line) = command_line {
            command.arg(line);
        }
        // Ctrl-C (without a PTY, e.g. `journal -f`) reaches ssh too, in the same
        // process group; we outlive it so that dropping the master closes the connection
        // and removes its directory instead of leaving them to the idle timeout.
        let _interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        let status = command
            .status()
            .await
            .map_err(|e| SshError::io("running ssh", e))?;
        Ok(status
            .code()
            .and_then(|code| u8::try_from(code & 0xff).ok())
            .unwrap_or(255))
    }
}

/// The options every ssh process of one connection shares (also the probe).
fn base_args(options: &SshOptions, config_file: &Path) -> Vec<OsString> {
    vec![
        "-F".into(),
        config_file.into(),
        "-l".into(),
        options.user.clone().into(),
        "-o".into(),
        format!("ConnectTimeout={}", options.connect_timeout_secs()).into(),
    ]
}

/// Starts the master with OpenSSH doing the host key check (never
/// prompting: `BatchMode`).
async fn launch(
    options: &SshOptions,
    destination: &Destination,
    dir: &Path,
    config_file: &Path,
) -> Result<Session, openssh::Error> {
    let mut builder = SessionBuilder::default();
    builder
        .user(options.user.clone())
        .port(destination.port)
        .connect_timeout(Duration::from_secs(options.connect_timeout_secs()))
        .control_directory(dir)
        .config_file(config_file)
        .ssh_auth_sock(&options.agent_socket);
    if let Some(idle) = NonZeroUsize::new(IDLE_EXIT) {
        builder.control_persist(ControlPersist::IdleFor(idle));
    }
    match &options.host_keys {
        HostKeyPolicy::Strict { known_hosts_file } => {
            builder
                .known_hosts_check(KnownHosts::Strict)
                .user_known_hosts_file(known_hosts_file);
        }
        HostKeyPolicy::Off => {
            builder
                .known_hosts_check(KnownHosts::Accept)
                .user_known_hosts_file(PathBuf::from("/dev/null"));
        }
    }
    builder.connect(&destination.host).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_allows_only_the_agent_and_checks_keys_strictly() {
        let config = render_config(AgentForwarding::Off, None);
        for line in [
            "Host *",
            "BatchMode yes",
            "PreferredAuthentications publickey",
            "PasswordAuthentication no",
            "GlobalKnownHostsFile /dev/null",
            "FingerprintHash md5",
            "ForwardAgent no",
        ] {
            assert!(
                config.lines().any(|l| l.trim() == line),
                "missing {line:?} in\n{config}"
            );
        }
        assert!(!config.contains("ProxyCommand"));
    }

    #[test]
    fn machines_behind_a_bastion_go_through_its_master() {
        let config = render_config(
            AgentForwarding::On,
            Some(Path::new("/tmp/fleetctl-ssh-x/.ssh-connection1/master")),
        );
        assert!(config.contains("    ForwardAgent yes\n"));
        assert!(config.contains(
            "    ProxyCommand ssh -F /dev/null -o BatchMode=yes -o ControlMaster=no -S '/tmp/fleetctl-ssh-x/.ssh-connection1/master' -W '[%h]:%p' none\n"
        ));
    }
}
