//! `--tunnel`: the fleet API through an SSH bastion.
//!
//! The original ran `fleetctl fd-forward <socket>` in a new SSH session for
//! every HTTP connection, which needs fleetctl on the bastion's `PATH`. We
//! use OpenSSH's own forwarding instead: one master connection to the
//! bastion and one local forward from a unix socket in the master's private
//! directory to the API:
//!
//! - unix endpoint: `-L <local.sock>:/var/run/fleet.sock` (a
//!   `direct-streamlocal` channel per connection; sshd's
//!   `AllowStreamLocalForwarding`, on by default, must allow it);
//! - http endpoint: `-L <local.sock>:<host>:<port>` (`direct-tcpip`, like the
//!   original; the address must be reachable from the bastion).
//!
//! Why: nothing has to be installed on the bastion, no remote process per
//! request, and both endpoint kinds share one code path. The API client
//! keeps its endpoint (paths, `Host` header) and only dials the local socket
//! ([`Tunnel::client`]). As with `fd-forward`, the SSH user needs permission
//! to connect to the API socket on the bastion.
//!
//! Dropping the last [`Tunnel`] (the client holds one) closes the master and
//! removes the socket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_api::client::{Client, Connection, DialFuture, Dialer, Endpoint, ExplainFuture};
use openssh::{ForwardType, Socket};

use crate::cli::Config;
use crate::ssh::master::{AgentForwarding, Master};
use crate::ssh::{Destination, SshError, SshOptions};

/// What client construction calls: with `--tunnel`, opens the tunnel and
/// returns a client for the same endpoint (and timeout) going through it,
/// plus the tunnel (for reaching machines through the bastion); without,
/// returns `client` as it is.
///
/// # Errors
/// [`SshError`] when the tunnel cannot be opened (no agent, bastion
/// unreachable or unverified, forward refused).
pub async fn through_tunnel(
    config: &Config,
    client: Client,
) -> Result<(Client, Option<Arc<Tunnel>>), SshError> {
    let Some(bastion) = &config.tunnel else {
        return Ok((client, None));
    };
    let options = SshOptions::from_env(config)?;
    let endpoint = client.endpoint().clone();
    let tunnel = Tunnel::open(&options, bastion, &endpoint).await?;
    let client = tunnel
        .client(endpoint)
        .with_timeout(config.request_timeout)
        .with_token(config.token.clone());
    Ok((client, Some(tunnel)))
}

/// A forwarded path to the fleet API through a bastion.
#[derive(Debug)]
pub struct Tunnel {
    master: Master,
    local_socket: PathBuf,
    /// The API as the bastion reaches it, for messages.
    remote: String,
    /// The API socket on the bastion, for a unix endpoint.
    remote_socket_path: Option<PathBuf>,
}

impl Tunnel {
    /// Connects to `bastion` (`host[:port]`) and forwards a local socket to
    /// `endpoint` as seen from the bastion.
    ///
    /// # Errors
    /// [`SshError`] when the bastion cannot be reached or verified, or it
    /// refuses the forward.
    pub async fn open(
        options: &SshOptions,
        bastion: &str,
        endpoint: &Endpoint,
    ) -> Result<Arc<Tunnel>, SshError> {
        let destination = Destination::parse(bastion)?;
        let master = Master::connect(options, &destination, None, AgentForwarding::Off).await?;
        let local_socket = master.private_dir().join("api.sock");
        let (remote_socket, remote) = match endpoint {
            Endpoint::Unix { path, .. } => (
                Socket::UnixSocket {
                    path: path.as_path().into(),
                },
                path.display().to_string(),
            ),
            Endpoint::Http { authority, .. } => {
                let target = Destination::parse(authority)?;
                let host = if target.host.contains(':') {
                    format!("[{}]", target.host)
                } else {
                    target.host.clone()
                };
                (Socket::new(host, target.port), target.to_string())
            }
        };
        master
            .session()
            .request_port_forward(
                ForwardType::Local,
                Socket::UnixSocket {
                    path: local_socket.as_path().into(),
                },
                remote_socket,
            )
            .await
            .map_err(|error| SshError::Forward {
                local: local_socket.display().to_string(),
                remote: remote.clone(),
                bastion: destination.to_string(),
                detail: std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), ToString::to_string),
            })?;
        let remote_socket_path = match endpoint {
            Endpoint::Unix { path, .. } => Some(path.clone()),
            Endpoint::Http { .. } => None,
        };
        Ok(Arc::new(Tunnel {
            master,
            local_socket,
            remote,
            remote_socket_path,
        }))
    }

    /// The local end of the forward.
    pub fn local_socket(&self) -> &Path {
        &self.local_socket
    }

    /// The local end as an endpoint URL (`unix:///…/api.sock`).
    pub fn local_endpoint(&self) -> String {
        format!("unix://{}", self.local_socket.display())
    }

    /// The bastion's master, for reaching machines through it.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// An API client for `endpoint` whose connections go through this
    /// tunnel. The client keeps the tunnel alive.
    pub fn client(self: &Arc<Self>, endpoint: Endpoint) -> Client {
        Client::with_dialer(
            endpoint,
            Arc::new(TunnelDialer {
                tunnel: Arc::clone(self),
            }),
        )
    }
}

/// Dials the tunnel's local socket; one forwarded channel per connection.
struct TunnelDialer {
    tunnel: Arc<Tunnel>,
}

impl Dialer for TunnelDialer {
    fn dial(&self) -> DialFuture<'_> {
        Box::pin(async move {
            let tunnel = &self.tunnel;
            let stream = tokio::net::UnixStream::connect(&tunnel.local_socket)
                .await
                .map_err(|error| {
                    io::Error::new(
                        error.kind(),
                        format!(
                            "dial {} through the SSH tunnel to {}: {error}",
                            tunnel.remote,
                            tunnel.master.destination()
                        ),
                    )
                })?;
            Ok(Box::new(stream) as Box<dyn Connection>)
        })
    }

    /// sshd closes a forwarded channel it cannot connect without saying why;
    /// ask the bastion whether its SSH user may use the socket at all.
    fn explain_failure(&self) -> ExplainFuture<'_> {
        Box::pin(async move {
            let tunnel = &self.tunnel;
            let path = tunnel.remote_socket_path.as_ref()?.display().to_string();
            let remote_test = |flag: &'static str| {
                let path = path.clone();
                async move {
                    let session = tunnel.master.session();
                    let status = session.command("test").arg(flag).arg(&path).status().await;
                    status.ok().map(|status| status.success())
                }
            };
            let bastion = tunnel.master.destination();
            if !remote_test("-S").await? {
                return Some(format!(
                    "{path} is not a socket on {bastion}: is fleet.socket running there?"
                ));
            }
            if remote_test("-w").await? {
                return None;
            }
            Some(format!(
                "permission denied: the SSH user on {bastion} may not connect to {path}; add it to \
                 the group fleet there (sudo usermod -aG fleet <user>) or use --ssh-username root"
            ))
        })
    }
}
