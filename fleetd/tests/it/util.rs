//! Shared helpers: waiting with a deadline, machine-id files, raw HTTP.

use std::path::{Path, PathBuf};

use fleet_registry::{MachineId, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use fleet_registry::testing::wait::{wait_for, wait_until};

/// Writes a machine-id file for `id` in `dir`.
pub fn machine_id_file(dir: &Path, id: &str) -> PathBuf {
    let path = dir.join(format!("machine-id-{id}"));
    std::fs::write(&path, format!("{id}\n")).expect("writing a machine-id file");
    path
}

/// The ids of the live machines (empty on a registry error).
pub async fn machine_ids(registry: &Registry) -> Vec<MachineId> {
    registry
        .machines()
        .await
        .map(|machines| machines.into_iter().map(|machine| machine.id).collect())
        .unwrap_or_default()
}

/// A unique key prefix per test.
pub fn prefix(test: &str) -> String {
    format!("/fleetd-it-{test}/")
}

/// One HTTP/1.1 GET over an open stream; returns (status, body).
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
) -> std::io::Result<(u16, String)> {
    // A loopback name: plaintext TCP listeners refuse other Host headers.
    http_get_with_host(stream, path, "localhost").await
}

/// One HTTP/1.1 GET with the given `Host` header; returns (status, body).
pub async fn http_get_with_host<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    host: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// GET over TCP.
pub async fn get_tcp(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get(tokio::net::TcpStream::connect(address).await?, path).await
}

/// GET over a unix socket.
pub async fn get_unix(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    http_get(tokio::net::UnixStream::connect(socket).await?, path).await
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}
