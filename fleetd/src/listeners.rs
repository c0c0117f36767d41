//! The API listeners: where fleetd serves `fleet_api::server::router`.
//!
//! Sockets come from systemd socket activation (`LISTEN_PID`/`LISTEN_FDS`,
//! unix and TCP stream sockets, as `fleet.socket` passes them); only when
//! systemd passes none does fleetd bind `api_listen` itself (the original
//! then served no API at all).
//!
//! The listeners live as long as the process: a SIGHUP rebuilds every
//! component, and the new API router is swapped into [`ApiSwitch`] while the
//! same sockets keep accepting (a fix: in the original old and new
//! servers ran side by side).
//!
//! Each connection is served by hyper's HTTP/1.1 server in its own task
//! ([`serve`]): TCP speaks TLS first when the gate has a certificate
//! (`crate::api_tls`), then every request passes the gate
//! (`crate::api_gate`), which knows how the connection arrived
//! ([`crate::access::Transport`]). Limits: the idle timeout (`api_idle_timeout`,
//! default [`DEFAULT_IDLE_TIMEOUT`]: how long a connection may wait for its next
//! request, headers included), [`TLS_HANDSHAKE_TIMEOUT`], [`MAX_CONNECTIONS`]
//! and [`MAX_IN_FLIGHT`]; the body limit is the router's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::access::Transport;
use crate::api_gate::Gate;

use crate::config::ListenAddress;

/// One listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Where it listens, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map_or_else(
                |_| "tcp://?".to_owned(),
                |address| format!("tcp://{address}"),
            ),
            Listener::Unix(listener) => listener
                .local_addr()
                .ok()
                .and_then(|address| {
                    address
                        .as_pathname()
                        .map(|path| format!("unix://{}", path.display()))
                })
                .unwrap_or_else(|| "unix://?".to_owned()),
        }
    }
}

/// The listeners fleetd serves on, and the socket files it created itself
/// (removed again on exit; systemd owns the ones it passed).
#[derive(Debug)]
pub struct Listeners {
    pub listeners: Vec<Listener>,
    pub created_socket_files: Vec<PathBuf>,
}

impl Listeners {
    /// The sockets systemd passed, else `api_listen` bound here.
    ///
    /// # Errors
    /// A passed fd that is not a stream socket, or an address that cannot be bound.
    pub fn open(api_listen: &[ListenAddress]) -> anyhow::Result<Listeners> {
        let passed = from_systemd().context("taking the sockets passed by systemd")?;
        if !passed.is_empty() {
            return Ok(Listeners {
                listeners: passed,
                created_socket_files: Vec::new(),
            });
        }
        let mut listeners = Vec::new();
        let mut created_socket_files = Vec::new();
        for address in api_listen {
            listeners.push(bind(address).with_context(|| format!("listening on {address}"))?);
            if let ListenAddress::Unix(path) = address {
                created_socket_files.push(path.clone());
            }
        }
        Ok(Listeners {
            listeners,
            created_socket_files,
        })
    }

    /// Removes the socket files fleetd created.
    pub fn remove_socket_files(&self) {
        for path in &self.created_socket_files {
            if let Err(error) = std::fs::remove_file(path) {
                tracing::debug!(%error, path = %path.display(), "Removing the API socket file failed.");
            }
        }
    }
}

/// The stream sockets passed by systemd (empty when none were passed to us).
///
/// # Errors
/// A passed fd that is neither a unix nor a TCP stream socket.
pub fn from_systemd() -> io::Result<Vec<Listener>> {
    let mut passed = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for idx in 0..passed.len() {
        if let Ok(Some(listener)) = passed.take_unix_listener(idx) {
            listener.set_nonblocking(true)?;
            listeners.push(Listener::Unix(UnixListener::from_std(listener)?));
            continue;
        }
        match passed.take_tcp_listener(idx)? {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                listeners.push(Listener::Tcp(TcpListener::from_std(listener)?));
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("passed fd {} is unusable", idx + 3),
                ));
            }
        }
    }
    Ok(listeners)
}

/// Binds one `api_listen` address. A unix socket's stale file is removed
/// first and the socket gets mode 0660 (root and the `fleet` group, as in the original).
///
/// # Errors
/// When the address cannot be bound or the socket file cannot be set up.
pub fn bind(address: &ListenAddress) -> io::Result<Listener> {
    match address {
        ListenAddress::Unix(path) => bind_unix(path),
        ListenAddress::Tcp(host_port) => {
            let listener = std::net::TcpListener::bind(host_port.as_str())?;
            listener.set_nonblocking(true)?;
            Ok(Listener::Tcp(TcpListener::from_std(listener)?))
        }
    }
}

fn bind_unix(path: &Path) -> io::Result<Listener> {
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "Removed a stale API socket file."),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    give_to_fleet_group(path);
    listener.set_nonblocking(true)?;
    Ok(Listener::Unix(UnixListener::from_std(listener)?))
}

/// The group whose members may use the API socket (`fleetctl --tunnel` as
/// a non-root SSH user). The install script and the package create it.
pub const SOCKET_GROUP: &str = "fleet";

/// Gives the socket file to [`SOCKET_GROUP`] when that group exists; the
/// socket then stays root's alone, which is safe, and the log says why.
fn give_to_fleet_group(path: &Path) {
    match nix::unistd::Group::from_name(SOCKET_GROUP) {
        Ok(Some(group)) => {
            if let Err(error) = nix::unistd::chown(path, None, Some(group.gid)) {
                warn!(%error, path = %path.display(), "Cannot give the API socket to group {SOCKET_GROUP}.");
            }
        }
        Ok(None) => info!(
            path = %path.display(),
            "No group {SOCKET_GROUP}: only root can use the API socket (create the group to share it)."
        ),
        Err(error) => warn!(%error, "Cannot look up group {SOCKET_GROUP}."),
    }
}

/// The service every listener serves: it forwards each request to the
/// current API router, which a reload replaces without closing a socket.
#[derive(Clone)]
pub struct ApiSwitch {
    current: Arc<RwLock<Router>>,
}

impl ApiSwitch {
    pub fn new(router: Router) -> ApiSwitch {
        ApiSwitch {
            current: Arc::new(RwLock::new(router)),
        }
    }

    /// Serves `router` from the next request on.
    pub fn replace(&self, router: Router) {
        // A poisoned lock only means a panic elsewhere mid-swap; the value is a whole router either way.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = router;
    }

    /// The forwarding service.
    pub fn service(&self) -> Router {
        let current = Arc::clone(&self.current);
        Router::new().fallback(move |request: Request| {
            // Clone out of the lock: a std guard must not live across an await.
            let router = current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            async move {
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(infallible) => match infallible {},
                }
            }
        })
    }
}

/// The default of `api_idle_timeout`: how long a connection may wait for its
/// next request to arrive whole, counted from the moment it waits for one.
/// One timer covers both limits the API needs: a keep-alive connection that
/// sends nothing, and headers sent byte by byte (slowloris), are both closed
/// after this long (hyper's header read timer starts when the connection
/// starts waiting, not at the first byte).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once across all listeners; more are closed on accept.
/// Well below `LimitNOFILE` (40000 in fleet.service), so fleetd keeps file
/// descriptors for etcd and D-Bus under a flood.
pub const MAX_CONNECTIONS: usize = 1024;

/// Requests being handled at once across all listeners; more wait.
pub const MAX_IN_FLIGHT: usize = 256;

/// One accepted connection, before TLS.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Serves `app` on `listener` until `shutdown`, then finishes in-flight
/// requests. Every request passes `gate`; `connections` caps the connections
/// open at once (shared by all listeners); a connection waiting longer than
/// `idle_timeout` for its next request is closed.
pub async fn serve(
    listener: Listener,
    app: Router,
    gate: Arc<Gate>,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let described = listener.describe();
    info!(listener = %described, "Serving the API.");
    let loopback = match &listener {
        Listener::Tcp(tcp) => tcp.local_addr().is_ok_and(|a| a.ip().is_loopback()),
        Listener::Unix(_) => true,
    };
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: do not spin on it.
                warn!(listener = %described, %error, "Accepting an API connection failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(listener = %described, limit = MAX_CONNECTIONS, "Closing a new API connection: too many are open.");
            continue;
        };
        let context = Connection {
            app: app.clone(),
            gate: Arc::clone(&gate),
            idle_timeout,
            shutdown: shutdown.clone(),
        };
        tasks.spawn(async move {
            context.run(accepted, loopback).await;
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(tcp) => {
            let (stream, _) = tcp.accept().await?;
            // Answers are small; do not let Nagle delay them.
            let _ = stream.set_nodelay(true);
            Ok(Accepted::Tcp(stream))
        }
        Listener::Unix(unix) => Ok(Accepted::Unix(unix.accept().await?.0)),
    }
}

/// What one connection's task needs.
struct Connection {
    app: Router,
    gate: Arc<Gate>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
}

impl Connection {
    /// Speaks TLS first when the gate has an acceptor (TCP only), then HTTP/1.1.
    async fn run(self, accepted: Accepted, loopback: bool) {
        match accepted {
            Accepted::Unix(stream) => self.http(stream, Transport::UnixSocket).await,
            Accepted::Tcp(stream) => match self.gate.tls() {
                None => self.http(stream, Transport::PlainTcp { loopback }).await,
                Some(acceptor) => {
                    let peer = stream.peer_addr().ok();
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            debug!(?peer, %error, "API TLS handshake refused.");
                            return;
                        }
                        Err(_) => {
                            debug!(?peer, "API TLS handshake timed out.");
                            return;
                        }
                    };
                    let client_name = crate::api_tls::client_name(tls.get_ref().1);
                    self.http(tls, Transport::Tls { client_name }).await;
                }
            },
        }
    }

    async fn http<S>(self, stream: S, transport: Transport)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let Connection {
            app,
            gate,
            idle_timeout,
            shutdown,
        } = self;
        let transport = Arc::new(transport);
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (app, gate, transport) =
                    (app.clone(), Arc::clone(&gate), Arc::clone(&transport));
                async move {
                    let response = gate.handle(&transport, request.map(Body::new), app).await;
                    Ok::<_, Infallible>(response)
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(idle_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(%error, "An API connection ended with an error.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_unix_sockets_over_stale_files_with_mode_0660() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.sock");
        std::fs::write(&path, "stale").expect("write");
        let listener = bind(&ListenAddress::Unix(path.clone())).expect("binds");
        assert_eq!(listener.describe(), format!("unix://{}", path.display()));
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[tokio::test]
    async fn binds_tcp() {
        let listener = bind(&ListenAddress::Tcp("127.0.0.1:0".to_owned())).expect("binds");
        assert!(
            listener.describe().starts_with("tcp://127.0.0.1:"),
            "{}",
            listener.describe()
        );
    }

    #[tokio::test]
    async fn no_passed_sockets_means_none() {
        // This test process was not socket activated (LISTEN_PID is not ours).
        assert!(from_systemd().expect("reads the environment").is_empty());
    }
}
