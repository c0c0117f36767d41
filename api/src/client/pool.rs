//! The client's idle connections, kept for the next request.
//!
//! Without reuse, every request paid for a new connection: a TCP connect
//! and, over TLS, a full mutual-TLS handshake. That is invisible to one
//! command and costly to bulk work (a listing of 20,000 units is 200 pages;
//! a start of 1,000 units is 2,000 requests).
//!
//! A connection is reused only while it is fresh: fleetd closes idle
//! connections after `api_idle_timeout` (10 s by default), and a request
//! sent on a connection the server is closing at that moment fails. So an
//! idle connection is taken only within [`REUSE_WITHIN`] of its last answer,
//! far inside any sensible idle timeout; and a request that fails on a
//! reused connection before it was answered is sent again on a new one when
//! it is idempotent (see `Client::exchange`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;

/// How long after its last answer an idle connection may be reused.
pub(super) const REUSE_WITHIN: Duration = Duration::from_secs(2);

/// The most idle connections kept (fleetctl runs at most this many requests
/// at once).
const MAX_IDLE: usize = 16;

/// One HTTP/1.1 connection's request half; its connection task ends when
/// this is dropped.
pub(super) type Sender = SendRequest<Full<Bytes>>;

#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// A fresh idle connection ready for a request, if there is one; stale
    /// and closed ones are dropped on the way.
    pub(super) async fn take(&self) -> Option<Sender> {
        loop {
            let (mut sender, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() >= REUSE_WITHIN || sender.is_closed() {
                continue;
            }
            // Its connection task may not have finished the last exchange yet.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keeps a connection that answered, for the next request.
    pub(super) fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((sender, Instant::now()));
        }
    }
}
