//! [`LeaseKeepAlive`]: keeps one lease alive over one long-lived gRPC stream.
//!
//! etcd's keep-alive is a bidirectional stream: each request on it refreshes
//! the lease and is answered with the remaining TTL. Opening a stream per
//! keep-alive costs a stream set-up and an extra round trip every time; at
//! 1,000 machines that was most of etcd's request load on an idle cluster.
//! Here a stream is opened once (on a live member, through the `endpoints`
//! module) and used for every keep-alive after. When it breaks (its member
//! died, or no answer within the request timeout), it is dropped and the
//! next keep-alive opens a new one on another member. Keep-alives are
//! retry-safe: refreshing a lease twice is refreshing it.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tracing::debug;

use crate::endpoints::MemberRef;
use crate::store::{LeaseId, Registry, RegistryError};

const OP: &str = "lease keep-alive";

/// Keeps one lease alive; owned by the task that does so.
pub struct LeaseKeepAlive {
    registry: Registry,
    lease: LeaseId,
    open: Option<OpenStream>,
    /// How long one keep-alive may wait for its answer before its stream is
    /// given up (the registry's request timeout unless set longer).
    deadline: Duration,
}

impl std::fmt::Debug for LeaseKeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeepAlive")
            .field("lease", &self.lease)
            .field("open", &self.open.is_some())
            .finish()
    }
}

struct OpenStream {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    member: MemberRef,
}

/// What one keep-alive on an open stream gave.
enum Exchange {
    /// The remaining TTL; `None` when the lease has expired.
    Answered(Option<Duration>),
    /// The stream is unusable: open another.
    Broken(String),
}

impl LeaseKeepAlive {
    /// Keeps `lease` alive through `registry`; opens its stream on first use.
    pub fn new(registry: &Registry, lease: LeaseId) -> LeaseKeepAlive {
        LeaseKeepAlive {
            registry: registry.clone(),
            lease,
            open: None,
            deadline: registry.request_timeout(),
        }
    }

    /// Waits up to `deadline` (never less than the registry's request
    /// timeout) for each keep-alive's answer. An overloaded etcd answers a
    /// keep-alive late rather than never, while its apply catches up; a
    /// holder whose lease has a long TTL can afford to wait for that answer
    /// instead of giving up the stream and opening another on the same
    /// overloaded member.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> LeaseKeepAlive {
        self.deadline = deadline.max(self.registry.request_timeout());
        self
    }

    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// Refreshes the lease once; returns the remaining TTL, or `Ok(None)` when
    /// the lease has expired (it must be granted again).
    ///
    /// # Errors
    /// Transport errors and timeouts when no member could refresh it.
    pub async fn keep_alive(&mut self) -> Result<Option<Duration>, RegistryError> {
        let kept = self.keep_alive_inner().await;
        if !matches!(kept, Ok(Some(_))) {
            fleet_metrics::get().etcd.keep_alive_failed();
        }
        kept
    }

    async fn keep_alive_inner(&mut self) -> Result<Option<Duration>, RegistryError> {
        if let Some(open) = self.open.as_mut() {
            match exchange_within(self.deadline, open).await {
                Some(Exchange::Answered(ttl)) => return Ok(ttl),
                Some(Exchange::Broken(reason)) => {
                    debug!(lease = %self.lease, %reason, "The keep-alive stream broke; opening another.");
                }
                None => {
                    open.member.timed_out();
                    debug!(
                        lease = %self.lease,
                        "The keep-alive stream did not answer; opening another."
                    );
                }
            }
            self.open = None;
        }
        let lease = self.lease;
        let (opened, member) = self
            .registry
            .endpoints()
            .run(OP, |mut clients| async move {
                // Opening sends a first keep-alive and reads its answer, which
                // says whether the lease still exists.
                match clients.lease.keep_alive(lease.get()).await {
                    Ok(pair) => Ok(Some(pair)),
                    Err(etcd_client::Error::LeaseKeepAliveError(message))
                        if message.contains("not found") =>
                    {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            })
            .await?;
        let Some((keeper, stream)) = opened else {
            return Ok(None);
        };
        let open = self.open.insert(OpenStream {
            keeper,
            stream,
            member,
        });
        // The opening answer is swallowed by etcd-client; one more
        // keep-alive on the new stream tells the TTL.
        match exchange_within(self.deadline, open).await {
            Some(Exchange::Answered(ttl)) => Ok(ttl),
            Some(Exchange::Broken(message)) => {
                self.open = None;
                Err(RegistryError::Etcd { op: OP, message })
            }
            None => {
                self.open = None;
                Err(RegistryError::Timeout {
                    op: OP,
                    after: self.deadline,
                })
            }
        }
    }
}

/// [`exchange`] within `deadline`; `None` when it ran out.
async fn exchange_within(deadline: Duration, open: &mut OpenStream) -> Option<Exchange> {
    tokio::time::timeout(deadline, exchange(open)).await.ok()
}

/// One keep-alive request and its answer on an open stream.
async fn exchange(open: &mut OpenStream) -> Exchange {
    if let Err(error) = open.keeper.keep_alive().await {
        open.member.failed(&error);
        return Exchange::Broken(error.to_string());
    }
    match open.stream.message().await {
        Ok(Some(response)) if response.ttl() > 0 => Exchange::Answered(Some(Duration::from_secs(
            u64::try_from(response.ttl()).unwrap_or(0),
        ))),
        Ok(Some(_)) => Exchange::Answered(None),
        Ok(None) => Exchange::Broken("etcd ended the keep-alive stream".to_owned()),
        Err(error) => {
            open.member.failed(&error);
            Exchange::Broken(error.to_string())
        }
    }
}
