//! [`Registry`]: typed reads and writes of the fleet keyspace in etcd v3.
//!
//! One attempt per call, each request with the configured deadline; errors are
//! classified ([`RegistryError::is_retriable`]) and the caller owns the retry
//! policy. The only loops here are compare-and-swap retries of one logical
//! write that raced with another writer (bounded, see `units::MAX_CAS_ATTEMPTS`).
//!
//! Reads that return several kinds of records read them at one etcd revision,
//! so a caller never sees a unit without its content or a machine without its
//! metadata because a write landed in between.
//!
//! This file holds what every kind shares: the configuration, the errors, the
//! connection (every request goes through `Registry::run`, which picks the etcd
//! member) and leases. Each kind of record has its own part, all of them
//! `impl Registry` blocks:
//! - `machines`: presence records and dynamic metadata;
//! - `units`: unit records, contents and their references;
//! - `schedule`: placements, the engine's snapshot, leader election and
//!   leader-guarded schedule writes ([`Registry::commit_schedule`]);
//! - `states`: the unit states agents report;
//! - `watch`: raw watches ([`Registry::watch_prefix`]; the engine and the agent
//!   use the typed [`crate::changes::ChangeStream`] over them);
//! - `safety`: unload orders and clean-stop marks.
//! - `forget`: deleting the keys and API metadata of a machine that left for
//!   good (`fleetctl disenrol`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse, KeyValue,
    LeaseGrantOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tracing::{debug, info, warn};

use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};

use crate::discovery::SrvDiscovery;
use crate::endpoints::{Clients, Endpoints, MemberRef};
use crate::keepalive::LeaseKeepAlive;
use crate::keys::{Keys, RegistryKey};
use crate::model::{MachineId, MachineState, Placement, TargetState, Unit, UnitState};
use crate::wire;

pub use crate::ids::{InvalidRevision, LeaseId, Revision};

mod forget;
mod machines;
mod runs;
mod safety;
mod schedule;
mod states;
mod units;
mod watch;

pub use machines::{MetadataOp, merge_metadata};
pub use schedule::{Leadership, SCHEDULE_BATCH, ScheduleChange, ScheduleReasons, Snapshot};
pub use units::{UNITS_PER_CREATE_TXN, UNITS_PER_STATE_TXN, UnitListing, UnusableUnit};
pub use watch::{WatchEvent, WatchEventKind, WatchStream};

/// HTTP/2 pings on the etcd connection, so a dead etcd is noticed by watches
/// (which have no deadline) within about this long.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd (the `etcd_*` options).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// etcd v3 endpoints (`http://host:port`), tried in order.
    pub endpoints: Vec<String>,
    /// `etcd_key_prefix`.
    pub key_prefix: String,
    /// `etcd_request_timeout`: the deadline of one request (not of watches).
    pub request_timeout: Duration,
    /// `etcd_username` / `etcd_password` (both or neither).
    pub username: Option<String>,
    pub password: Option<String>,
    /// `etcd_cafile`, `etcd_certfile`, `etcd_keyfile`.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// What went wrong talking to etcd, or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("etcd {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("etcd {op} failed: {message}")]
    Etcd { op: &'static str, message: String },
    #[error("cannot decode the value at {key}: {message}")]
    Decode { key: String, message: String },
    #[error("machine {0} is already registered by a live fleetd")]
    MachineExists(MachineId),
    #[error("this engine is not the leader")]
    NotLeader,
    #[error("invalid registry configuration: {0}")]
    Config(String),
    /// DNS discovery found no usable etcd member (`etcd_discovery_srv`).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// A watch asked for history etcd has compacted away: list again (a
    /// snapshot) and watch from that revision + 1.
    #[error("etcd history before revision {revision} is compacted")]
    Compacted { revision: Revision },
}

impl RegistryError {
    /// Whether trying again later may succeed (timeouts and transport errors).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            RegistryError::Timeout { .. } | RegistryError::Etcd { .. }
        )
    }
}

/// A handle on the fleet keyspace in etcd. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    keys: Keys,
    inner: Arc<Inner>,
}

struct Inner {
    /// The etcd members and their health: every request goes through
    /// [`Endpoints::run`].
    endpoints: Arc<Endpoints>,
    request_timeout: Duration,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("endpoints", &self.inner.endpoints.urls())
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

/// The end of the range of every key starting with `prefix` (etcd's prefix end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only reachable for an all-0xff prefix; "\0" means "to the end" to etcd.
    vec![0]
}

fn etcd_error(op: &'static str, error: etcd_client::Error) -> RegistryError {
    RegistryError::Etcd {
        op,
        message: error.to_string(),
    }
}

fn prefix_options() -> GetOptions {
    GetOptions::new().with_prefix()
}

/// The range responses of a txn's branch, in order.
fn txn_ranges(response: &TxnResponse) -> Vec<GetResponse> {
    response
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect()
}

pub(crate) fn header_revision(response: &GetResponse) -> Revision {
    Revision::new(response.header().map_or(0, |header| header.revision()))
}

/// The keys of a large read take at most this many keys per request
/// ([`Registry::get_prefix`]).
const LIST_PAGE: i64 = 10_000;

/// The most single-key gets one read txn carries (etcd's default
/// `--max-txn-ops` is 128): reads of many named keys go in txns of this
/// many (unit states of a unit, which unit names exist).
pub(super) const GETS_PER_TXN: usize = 100;

/// Every key under a prefix, read at one revision (possibly in pages).
pub(crate) struct PrefixListing {
    kvs: Vec<KeyValue>,
    revision: Revision,
}

impl PrefixListing {
    pub(crate) fn kvs(&self) -> &[KeyValue] {
        &self.kvs
    }

    /// The revision every page was read at.
    pub(crate) fn revision(&self) -> Revision {
        self.revision
    }
}

/// Whether etcd is reached over TLS (any of the TLS files is configured).
pub(crate) fn uses_tls(config: &RegistryConfig) -> bool {
    config.ca_file.is_some() || config.cert_file.is_some() || config.key_file.is_some()
}

#[cfg(feature = "tls")]
pub(crate) fn tls_options(
    config: &RegistryConfig,
) -> Result<Option<etcd_client::TlsOptions>, RegistryError> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    if config.ca_file.is_none() && config.cert_file.is_none() && config.key_file.is_none() {
        return Ok(None);
    }
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|error| {
            RegistryError::Config(format!("cannot read etcd {what} {path}: {error}"))
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca_file) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA file", ca_file)?));
    }
    match (&config.cert_file, &config.key_file) {
        (Some(cert_file), Some(key_file)) => {
            tls = tls.identity(Identity::from_pem(
                read("certificate file", cert_file)?,
                read("key file", key_file)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(RegistryError::Config(
                "etcd_certfile and etcd_keyfile must be set together".to_owned(),
            ));
        }
    }
    Ok(Some(tls))
}

impl Registry {
    /// Connects to etcd. Does not fail when etcd is down: the first request does.
    ///
    /// # Errors
    /// [`RegistryError::Config`] for unusable TLS files or endpoints.
    pub async fn connect(config: &RegistryConfig) -> Result<Registry, RegistryError> {
        if config.endpoints.is_empty() {
            return Err(RegistryError::Config("no etcd endpoints".to_owned()));
        }
        Registry::open(config, &config.endpoints)
    }

    /// Connects to the etcd members that `discovery` finds in DNS (instead
    /// of `config.endpoints`, which is ignored), and keeps following the
    /// records while the registry lives (`discovery::refresh`). The look-up
    /// happens now: it fails when DNS names no usable member, so fleetd
    /// never starts without one.
    ///
    /// # Errors
    /// [`RegistryError::Discovery`], or as [`Registry::connect`].
    pub async fn connect_discovered(
        config: &RegistryConfig,
        discovery: &SrvDiscovery,
    ) -> Result<Registry, RegistryError> {
        let tls = uses_tls(config);
        let urls = discovery.members(tls).await?;
        info!(domain = discovery.domain(), members = ?urls, "Found the etcd members in DNS SRV records.");
        let registry = Registry::open(config, &urls)?;
        tokio::spawn(crate::discovery::refresh(
            Arc::downgrade(&registry.inner.endpoints),
            discovery.clone(),
            tls,
        ));
        Ok(registry)
    }

    /// `config` with `urls` as the etcd members.
    fn open(config: &RegistryConfig, urls: &[String]) -> Result<Registry, RegistryError> {
        if config.request_timeout.is_zero() {
            return Err(RegistryError::Config(
                "etcd_request_timeout must be greater than zero".to_owned(),
            ));
        }
        let uses_tls = uses_tls(config);
        for endpoint in urls {
            let valid = endpoint.starts_with("http://") || endpoint.starts_with("https://");
            if !valid {
                return Err(RegistryError::Config(format!(
                    "etcd endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
            if uses_tls != endpoint.starts_with("https://") {
                return Err(RegistryError::Config(format!(
                    "etcd endpoint {endpoint:?}: use https:// with etcd_cafile/etcd_certfile/etcd_keyfile, http:// without"
                )));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster fails requests and watches
            // instead of serving stale data.
            .with_require_leader(true);
        match (&config.username, &config.password) {
            (Some(username), Some(password)) => {
                options = options
                    .with_user(username, password)
                    .with_auto_token_refresh(true);
            }
            (None, None) => {}
            _ => {
                return Err(RegistryError::Config(
                    "etcd_username and etcd_password must be set together".to_owned(),
                ));
            }
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        #[cfg(not(feature = "tls"))]
        if uses_tls {
            return Err(RegistryError::Config(
                "etcd TLS (etcd_cafile, etcd_certfile, etcd_keyfile) needs fleet-registry built with the feature \"tls\""
                    .to_owned(),
            ));
        }
        Ok(Registry {
            keys: Keys::new(&config.key_prefix),
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(urls, options, config.request_timeout),
                request_timeout: config.request_timeout,
            }),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The deadline of one request.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Each endpoint and whether it is considered up (requests avoid the
    /// ones that are not; see `Documentation/architecture.md`).
    pub fn endpoint_health(&self) -> Vec<(String, bool)> {
        self.inner.endpoints.health()
    }

    /// Asks every etcd member at once what it knows of its leader (see
    /// [`crate::survey`]); takes at most one request deadline. Never an
    /// error: a member that cannot be asked is reported as such.
    pub async fn survey(&self) -> crate::survey::Survey {
        crate::survey::Survey {
            members: self.inner.endpoints.survey().await,
        }
    }

    /// Runs one request on a live etcd member, with the request deadline,
    /// sending it to another member when one fails (`endpoints` module).
    /// **`request` must be retry-safe**: applying it twice must equal
    /// applying it once.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        request: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = std::time::Instant::now();
        let result = self.inner.endpoints.run(op, request).await;
        fleet_metrics::get()
            .etcd
            .request(op, started, result.is_ok());
        let (value, _member) = result?;
        Ok(value)
    }

    pub(crate) async fn get(
        &self,
        op: &'static str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, RegistryError> {
        // Retry-safe: a read.
        self.run(op, |mut clients| {
            let (key, options) = (key.clone(), options.clone());
            async move { clients.kv.get(key, options).await }
        })
        .await
    }

    /// Every key under `prefix`, at `revision` (latest when `None`), read in
    /// pages of [`LIST_PAGE`] keys, every page at the revision of the first,
    /// each its own request with its own deadline. One range of 100,000
    /// keys can take an etcd busy with writes longer than the request
    /// timeout; pages make a large listing slower under load rather than
    /// failed, and keep each of etcd's answers small.
    pub(crate) async fn get_prefix(
        &self,
        op: &'static str,
        prefix: String,
        revision: Option<Revision>,
    ) -> Result<PrefixListing, RegistryError> {
        let end = prefix_end(&prefix);
        let mut revision = revision;
        let mut from = prefix.into_bytes();
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(revision) = revision {
                options = options.with_revision(revision.get());
            }
            let mut page = self.get_bytes(op, from.clone(), options).await?;
            let at = *revision.get_or_insert_with(|| header_revision(&page));
            let more = page.more();
            let page_kvs = page.take_kvs();
            let Some(last) = page_kvs.last() else {
                return Ok(PrefixListing { kvs, revision: at });
            };
            // The next page starts just after the last key of this one.
            from = last.key().to_vec();
            from.push(0);
            kvs.extend(page_kvs);
            if !more {
                return Ok(PrefixListing { kvs, revision: at });
            }
        }
    }

    async fn get_bytes(
        &self,
        op: &'static str,
        key: Vec<u8>,
        options: GetOptions,
    ) -> Result<GetResponse, RegistryError> {
        // Retry-safe: a read.
        self.run(op, |mut clients| {
            let (key, options) = (key.clone(), options.clone());
            async move { clients.kv.get(key, Some(options)).await }
        })
        .await
    }

    /// Runs a txn. Retry-safe only because every txn of this module is a
    /// read, or guarded by a compare its own success falsifies, or writes
    /// fixed values (say which at each caller).
    pub(crate) async fn txn(
        &self,
        op: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, RegistryError> {
        self.run(op, |mut clients| {
            let txn = txn.clone();
            async move { clients.kv.txn(txn).await }
        })
        .await
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    ///
    /// Retry-safe: the lease id is ours (random), so a grant sent again after
    /// the first one landed fails as "lease already exists" (which means it
    /// is granted) instead of granting a second lease.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, RegistryError> {
        const OP: &str = "lease grant";
        let secs = ttl
            .as_secs()
            .saturating_add(u64::from(ttl.subsec_nanos() > 0))
            .max(1);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        let id = LeaseId::new(fastrand::i64(1..i64::MAX));
        let granted = self
            .run(OP, |mut clients| async move {
                let options = LeaseGrantOptions::new().with_id(id.get());
                clients.lease.grant(secs, Some(options)).await
            })
            .await;
        match granted {
            Ok(response) => Ok(LeaseId::new(response.id())),
            Err(RegistryError::Etcd { message, .. })
                if message.contains("lease already exists") =>
            {
                Ok(id)
            }
            Err(error) => Err(error),
        }
    }

    /// Sends one keep-alive for `lease` over a new stream; returns the
    /// remaining TTL, or `Ok(None)` when the lease has expired. Code that
    /// keeps a lease alive for long uses [`LeaseKeepAlive`] (one stream).
    pub async fn keep_alive_once(&self, lease: LeaseId) -> Result<Option<Duration>, RegistryError> {
        LeaseKeepAlive::new(self, lease).keep_alive().await
    }

    /// Revokes `lease`: every key attached to it is deleted at once. A lease
    /// that is already gone is fine (which also makes it retry-safe).
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), RegistryError> {
        const OP: &str = "lease revoke";
        match self
            .run(OP, |mut clients| async move {
                clients.lease.revoke(lease.get()).await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(RegistryError::Etcd { message, .. })
                if message.contains("requested lease not found") =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    pub(crate) fn endpoints(&self) -> &Arc<Endpoints> {
        &self.inner.endpoints
    }

    /// What `key` names in the layout (for watch events, deletes included).
    pub(crate) fn parse_key(&self, key: &str) -> Option<RegistryKey> {
        self.keys.parse(key)
    }
}

impl Registry {}

fn warn_undecodable(key: &str, message: &str) {
    warn!(key, %message, "Skipping an undecodable registry value.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(
            prefix_end("/p/content-refs/ab/"),
            b"/p/content-refs/ab0".to_vec()
        );
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn metadata_merge_sets_and_removes() {
        let configured = BTreeMap::from([
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]);
        let dynamic = BTreeMap::from([
            ("b".to_owned(), String::new()),
            ("c".to_owned(), "3".to_owned()),
        ]);
        let merged = merge_metadata(&configured, &dynamic);
        assert_eq!(
            merged,
            BTreeMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("c".to_owned(), "3".to_owned())
            ])
        );
    }
}
