//! The API listeners: where fleetd serves `fleet_api::server::router`.
//!
//! Sockets come from systemd socket activation (`LISTEN_PID`/`LISTEN_FDS`,
//! unix and TCP stream sockets, as `fleet.socket` passes them); only when
//! systemd passes none does fleetd bind `api_listen` itself (the original
//! then served no API at all, spec 1.2).
//!
//! The listeners live as long as the process: a SIGHUP rebuilds every
//! component, and the new API router is swapped into [`ApiSwitch`] while the
//! same sockets keep accepting (fix of spec quirk 12, where old and new
//! servers ran side by side).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{error, info};

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
/// first and the socket gets mode 0660 (spec 6.1: root and the `fleet` group).
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
    listener.set_nonblocking(true)?;
    Ok(Listener::Unix(UnixListener::from_std(listener)?))
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

/// Serves `app` on `listener` until `shutdown`, then finishes in-flight requests.
pub async fn serve(listener: Listener, app: Router, shutdown: CancellationToken) {
    let described = listener.describe();
    info!(listener = %described, "Serving the API.");
    let result = match listener {
        Listener::Tcp(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Listener::Unix(listener) => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    };
    if let Err(error) = result {
        error!(listener = %described, "Failed serving HTTP on listener: {error}");
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
