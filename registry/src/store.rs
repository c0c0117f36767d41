//! [`Registry`]: typed reads and writes of the fleet keyspace in etcd v3.
//!
//! One attempt per call, each request with the configured deadline; errors are
//! classified ([`RegistryError::is_retriable`]) and the caller owns the retry
//! policy. The only loops here are compare-and-swap retries of one logical
//! write that raced with another writer (bounded, see [`MAX_CAS_ATTEMPTS`]).
//!
//! Reads that return several kinds of records read them at one etcd revision,
//! so a caller never sees a unit without its content or a machine without its
//! metadata because a write landed in between.
//!
//! For the engine: [`Registry::snapshot`] (one revision), [`Registry::watch_prefix`]
//! (events from the next revision; [`RegistryError::Compacted`] means re-list),
//! the typed decoders (`decode_*`, [`Registry::parse_key`]) so no caller parses a
//! key, leader election ([`Registry::campaign`]) and leader-guarded schedule
//! writes ([`Registry::commit_schedule`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, EventType, GetOptions, GetResponse, KeyValue,
    LeaseGrantOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use tracing::{debug, warn};

use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};

use crate::endpoints::{Clients, Endpoints, MemberRef};
use crate::keepalive::LeaseKeepAlive;
use crate::keys::{Keys, RegistryKey};
use crate::model::{MachineId, MachineState, Placement, TargetState, Unit, UnitState};
use crate::wire;

pub use crate::ids::{InvalidRevision, LeaseId, Revision};

mod forget;
mod safety;

/// The most changes [`Registry::commit_schedule`] puts in one transaction.
/// Each change is two operations, and etcd refuses a txn of more than 128
/// operations by default (`--max-txn-ops`).
pub const SCHEDULE_BATCH: usize = 64;

/// The most metadata keys [`Registry::apply_metadata`] writes in one txn (the
/// same etcd limit as above, with room to spare).
const METADATA_BATCH: usize = 100;

/// The most single-key gets [`Registry::states_of_unit`] puts in one txn
/// (etcd's default `--max-txn-ops` is 128).
const STATE_GETS_BATCH: usize = 100;

/// How often a read-modify-write of one unit record is retried when another
/// writer changed the record in between. Contention on one unit is rare (two
/// API calls for the same name at the same moment), so a few tries suffice.
const MAX_CAS_ATTEMPTS: usize = 8;

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

/// One metadata edit of `PATCH /machines`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataOp {
    /// add/replace: set `key` of `machine` to a non-empty value.
    Set {
        machine: String,
        key: String,
        value: String,
    },
    /// remove: hide `key` of `machine`, configured or dynamic.
    Remove { machine: String, key: String },
}

/// The engine's proof of leadership: the leader key's create revision. Every
/// schedule write compares it, so a deposed engine cannot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub machine: MachineId,
    /// `create_revision` of `P/engine/leader` when we created it.
    pub revision: Revision,
}

/// One edit of the schedule by the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Writes (or rewrites, e.g. a new target state) a placement.
    Place(Placement),
    /// Removes the placement of `unit` on `machine` (absent is fine).
    Unplace { unit: UnitName, machine: MachineId },
}

/// Machines, units and placements, all read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision everything was read at: watch from `revision + 1`.
    pub revision: Revision,
    /// Live machines sorted by id, metadata merged.
    pub machines: Vec<MachineState>,
    /// Units sorted by name.
    pub units: Vec<Unit>,
    /// Placements sorted by (unit, machine).
    pub placements: Vec<Placement>,
    /// Units whose record does not decode or whose content is missing or
    /// does not parse: not destroyed, so their placements must stay.
    pub unusable_units: Vec<UnitName>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Put,
    Delete,
}

/// One change seen by a watch. Decode it with [`Registry::parse_key`] and the
/// `decode_*` methods; never by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// The new value; empty for a delete.
    pub value: Vec<u8>,
    pub kind: WatchEventKind,
    /// The revision of the change (for a delete, the revision of the delete).
    pub mod_revision: Revision,
}

/// The events of a watch, in revision order, grouped as etcd sends them (all
/// the events of one transaction arrive in one batch).
pub struct WatchStream {
    /// Holds the request half too: dropping it would end the watch.
    stream: etcd_client::WatchStream,
    /// The member serving the watch, marked down when the stream breaks.
    member: MemberRef,
    /// Events that came with the response confirming the watch.
    pending: Option<Vec<WatchEvent>>,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl WatchStream {
    /// The next batch of events; `Ok(None)` when etcd ended the stream.
    /// Cancel-safe: usable in a looping `select!` (no state is kept between
    /// awaits).
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when etcd compacted past our position
    /// (re-list and watch again); [`RegistryError::Etcd`] when the connection
    /// broke or etcd cancelled the watch (watch again from the last revision seen).
    pub async fn next(&mut self) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
        if let Some(events) = self.pending.take() {
            return Ok(Some(events));
        }
        let batch = self.next_batch().await;
        if let Err(error) = &batch {
            fleet_metrics::get().etcd.watch_failed(match error {
                RegistryError::Compacted { .. } => "compacted",
                _ => "broken",
            });
        }
        batch
    }

    async fn next_batch(&mut self) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(None),
                Err(error) => {
                    self.member.failed(&error);
                    return Err(etcd_error("watch", error));
                }
            };
            if let Some(events) = watch_batch(&response)? {
                return Ok(Some(events));
            }
        }
    }
}

/// The events of one watch response, `None` for one without events (created,
/// progress), or the error a cancelled watch means.
fn watch_batch(
    response: &etcd_client::WatchResponse,
) -> Result<Option<Vec<WatchEvent>>, RegistryError> {
    if response.canceled() {
        if response.compact_revision() > 0 {
            return Err(RegistryError::Compacted {
                revision: Revision::new(response.compact_revision()),
            });
        }
        return Err(RegistryError::Etcd {
            op: "watch",
            message: format!("etcd cancelled the watch: {}", response.cancel_reason()),
        });
    }
    if response.events().is_empty() {
        return Ok(None);
    }
    let events = response
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let key = kv.key_str().ok()?.to_owned();
            let kind = match event.event_type() {
                EventType::Put => WatchEventKind::Put,
                EventType::Delete => WatchEventKind::Delete,
            };
            Some(WatchEvent {
                key,
                value: kv.value().to_vec(),
                kind,
                mod_revision: Revision::new(kv.mod_revision()),
            })
        })
        .collect();
    Ok(Some(events))
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

/// The outcome of a guarded write of our machine record.
enum MachineWrite {
    Done,
    /// No record: nobody holds the id.
    Absent,
    /// A record under the given lease.
    Held(LeaseId),
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
        if config.request_timeout.is_zero() {
            return Err(RegistryError::Config(
                "etcd_request_timeout must be greater than zero".to_owned(),
            ));
        }
        let uses_tls =
            config.ca_file.is_some() || config.cert_file.is_some() || config.key_file.is_some();
        for endpoint in &config.endpoints {
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
                endpoints: Endpoints::new(&config.endpoints, options, config.request_timeout),
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

    // --- plumbing ---

    /// Each endpoint and whether it is considered up (requests avoid the
    /// ones that are not; see `Documentation/architecture.md`).
    pub fn endpoint_health(&self) -> Vec<(String, bool)> {
        self.inner.endpoints.health()
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

    /// Every key under `prefix`, at `revision` (latest when `None`).
    pub(crate) async fn get_prefix(
        &self,
        op: &'static str,
        prefix: String,
        revision: Option<Revision>,
    ) -> Result<GetResponse, RegistryError> {
        let options = match revision {
            Some(revision) => prefix_options().with_revision(revision.get()),
            None => prefix_options(),
        };
        self.get(op, prefix, Some(options)).await
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

    // --- leases ---

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

    /// Awaits `work` for at most the request timeout; `None` when it ran out.
    pub(crate) async fn within_deadline<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.inner.request_timeout, work)
            .await
            .ok()
    }

    pub(crate) fn endpoints(&self) -> &Arc<Endpoints> {
        &self.inner.endpoints
    }

    // --- machines ---

    /// Creates the record if absent; otherwise says who holds it.
    async fn create_machine(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let absent = Compare::create_revision(key, CompareOp::Equal, 0);
        self.put_machine_if("register machine", absent, key, value, lease)
            .await
    }

    /// Rewrites the record only if it is under `lease`.
    async fn update_own_machine(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let ours = Compare::lease(key, CompareOp::Equal, lease.get());
        self.put_machine_if("update machine", ours, key, value, lease)
            .await
    }

    /// Puts the record under `lease` if `condition` holds; otherwise says who
    /// holds it (or that it vanished between the compare and the read).
    async fn put_machine_if(
        &self,
        op: &'static str,
        condition: Compare,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<MachineWrite, RegistryError> {
        let txn = Txn::new()
            .when([condition])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.get())),
            )])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(op, txn).await?;
        if response.succeeded() {
            return Ok(MachineWrite::Done);
        }
        Ok(
            match txn_ranges(&response)
                .first()
                .and_then(|get| get.kvs().first())
            {
                Some(kv) => MachineWrite::Held(LeaseId::new(kv.lease())),
                None => MachineWrite::Absent,
            },
        )
    }

    /// Publishes `machine` under `lease` only if no live record has its id.
    /// Registering again under the same lease (a retry after a timeout whose
    /// write had landed) succeeds.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] when another lease holds the id.
    pub async fn register_machine(
        &self,
        machine: &MachineState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(machine.id.as_str());
        let value = wire::encode_machine(machine);
        match self.create_machine(&key, &value, lease).await? {
            MachineWrite::Done => Ok(()),
            MachineWrite::Held(holder) if holder == lease => {
                match self.update_own_machine(&key, &value, lease).await? {
                    MachineWrite::Done => Ok(()),
                    _ => Err(RegistryError::MachineExists(machine.id.clone())),
                }
            }
            MachineWrite::Held(_) | MachineWrite::Absent => {
                Err(RegistryError::MachineExists(machine.id.clone()))
            }
        }
    }

    /// Rewrites our own machine record (e.g. a new IP) under the same lease,
    /// only if it is still ours. A record that vanished (deleted by hand) is
    /// created again.
    ///
    /// # Errors
    /// [`RegistryError::MachineExists`] when another lease holds the id.
    pub async fn update_machine(
        &self,
        machine: &MachineState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(machine.id.as_str());
        let value = wire::encode_machine(machine);
        match self.update_own_machine(&key, &value, lease).await? {
            MachineWrite::Done => Ok(()),
            MachineWrite::Held(_) => Err(RegistryError::MachineExists(machine.id.clone())),
            MachineWrite::Absent => match self.create_machine(&key, &value, lease).await? {
                MachineWrite::Done => Ok(()),
                MachineWrite::Held(holder) if holder == lease => Ok(()),
                _ => Err(RegistryError::MachineExists(machine.id.clone())),
            },
        }
    }

    /// Deletes our machine record (graceful shutdown), if it is ours.
    pub async fn unregister_machine(
        &self,
        machine: &MachineId,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        let key = self.keys.machine(machine.as_str());
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease.get())])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let response = self.txn("unregister machine", txn).await?;
        if !response.succeeded() {
            debug!(%machine, %lease, "The machine record is not ours; left alone.");
        }
        Ok(())
    }

    /// Machine records merged with the dynamic metadata; undecodable records
    /// are skipped with a warning.
    fn decode_machines(&self, machines: &[KeyValue], metadata: &[KeyValue]) -> Vec<MachineState> {
        let mut dynamic: HashMap<MachineId, BTreeMap<String, String>> = HashMap::new();
        for kv in metadata {
            if let Some((machine, key, value)) = self.decode_metadata_kv(kv) {
                dynamic.entry(machine).or_default().insert(key, value);
            }
        }
        let mut states: Vec<MachineState> = machines
            .iter()
            .filter_map(|kv| {
                let mut state = self.decode_machine(kv.key_str().ok()?, kv.value())?;
                if let Some(dynamic) = dynamic.get(&state.id) {
                    state.metadata = merge_metadata(&state.metadata, dynamic);
                }
                Some(state)
            })
            .collect();
        states.sort_by(|a, b| a.id.cmp(&b.id));
        states
    }

    fn decode_metadata_kv(&self, kv: &KeyValue) -> Option<(MachineId, String, String)> {
        self.decode_metadata(kv.key_str().ok()?, kv.value())
    }

    /// Live machines sorted by id, dynamic metadata merged over the configured.
    pub async fn machines(&self) -> Result<Vec<MachineState>, RegistryError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.machines(), Some(prefix_options())),
            TxnOp::get(self.keys.all_metadata(), Some(prefix_options())),
        ]);
        let response = self.txn("list machines", txn).await?;
        let ranges = txn_ranges(&response);
        let (Some(machines), Some(metadata)) = (ranges.first(), ranges.get(1)) else {
            return Err(RegistryError::Etcd {
                op: "list machines",
                message: "short txn response".to_owned(),
            });
        };
        Ok(self.decode_machines(machines.kvs(), metadata.kvs()))
    }

    /// One live machine, metadata merged.
    pub async fn machine(
        &self,
        machine: &MachineId,
    ) -> Result<Option<MachineState>, RegistryError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.machine(machine.as_str()), None),
            TxnOp::get(
                self.keys.machine_metadata(machine.as_str()),
                Some(prefix_options()),
            ),
        ]);
        let response = self.txn("get machine", txn).await?;
        let ranges = txn_ranges(&response);
        let (Some(record), Some(metadata)) = (ranges.first(), ranges.get(1)) else {
            return Err(RegistryError::Etcd {
                op: "get machine",
                message: "short txn response".to_owned(),
            });
        };
        Ok(self
            .decode_machines(record.kvs(), metadata.kvs())
            .into_iter()
            .next())
    }

    /// Applies metadata edits in order, in one transaction (several for more
    /// than 100 distinct keys; a failure part-way leaves the earlier ones
    /// applied, as the original did).
    pub async fn apply_metadata(&self, ops: &[MetadataOp]) -> Result<(), RegistryError> {
        // etcd refuses two writes of one key in a txn: the last edit wins,
        // which is what applying them in order means.
        let mut writes: BTreeMap<String, &str> = BTreeMap::new();
        for op in ops {
            match op {
                MetadataOp::Set {
                    machine,
                    key,
                    value,
                } => writes.insert(self.keys.metadata(machine, key), value),
                // A tombstone, not a delete: it must hide a configured key too.
                MetadataOp::Remove { machine, key } => {
                    writes.insert(self.keys.metadata(machine, key), "")
                }
            };
        }
        let writes: Vec<(String, &str)> = writes.into_iter().collect();
        for batch in writes.chunks(METADATA_BATCH) {
            let puts: Vec<TxnOp> = batch
                .iter()
                .map(|(key, value)| TxnOp::put(key.as_str(), *value, None))
                .collect();
            self.txn("apply metadata", Txn::new().and_then(puts))
                .await?;
        }
        Ok(())
    }

    // --- units ---

    /// Parses every content blob once, keyed by hash.
    fn decode_contents(&self, contents: &[KeyValue]) -> HashMap<UnitHash, Arc<UnitFile>> {
        contents
            .iter()
            .filter_map(|kv| {
                let (hash, file) = self.decode_content(kv.key_str().ok()?, kv.value())?;
                Some((hash, Arc::new(file)))
            })
            .collect()
    }

    fn decode_units(&self, records: &[KeyValue], contents: &[KeyValue]) -> Vec<Unit> {
        let contents = self.decode_contents(contents);
        let mut units: Vec<Unit> = records
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?;
                let (name, hash, desired_state) = self.decode_unit_record(key, kv.value())?;
                let Some(file) = contents.get(&hash) else {
                    warn!(unit = %name, %hash, "The unit's content is missing; skipping the unit.");
                    return None;
                };
                Some(Unit {
                    name,
                    file: Arc::clone(file),
                    hash,
                    desired_state,
                })
            })
            .collect();
        units.sort_by(|a, b| a.name.cmp(&b.name));
        units
    }

    /// All units sorted by name, each with its content (one read per prefix,
    /// both at one revision; each content parsed once and shared).
    pub async fn units(&self) -> Result<Vec<Unit>, RegistryError> {
        let records = self
            .get_prefix("list units", self.keys.units(), None)
            .await?;
        let revision = header_revision(&records);
        let contents = self
            .get_prefix(
                "list unit contents",
                self.keys.all_content(),
                Some(revision),
            )
            .await?;
        Ok(self.decode_units(records.kvs(), contents.kvs()))
    }

    /// One unit with its content.
    ///
    /// # Errors
    /// [`RegistryError::Decode`] when the record or its content is unusable.
    pub async fn unit(&self, name: &UnitName) -> Result<Option<Unit>, RegistryError> {
        let key = self.keys.unit(name.as_str());
        let response = self.get("get unit", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let (hash, desired_state) =
            wire::decode_unit(kv.value()).map_err(|message| RegistryError::Decode {
                key: key.clone(),
                message,
            })?;
        // The content as of the record's revision: a replace right after our
        // read may already have released it.
        let content_key = self.keys.content(&hash.to_string());
        let content = self
            .get(
                "get unit content",
                content_key.clone(),
                Some(GetOptions::new().with_revision(header_revision(&response).get())),
            )
            .await?;
        let Some(content) = content.kvs().first() else {
            return Err(RegistryError::Decode {
                key: content_key,
                message: format!("the content of {name} is missing"),
            });
        };
        let file = parse_content(content.value()).map_err(|message| RegistryError::Decode {
            key: content_key,
            message,
        })?;
        Ok(Some(Unit {
            name: name.clone(),
            file: Arc::new(file),
            hash,
            desired_state,
        }))
    }

    /// The content stored for `hash`, parsed; `Ok(None)` when there is none
    /// (the agent fetches what it must load by hash and caches it).
    ///
    /// # Errors
    /// [`RegistryError::Decode`] when the stored text does not parse.
    pub async fn unit_content(&self, hash: &UnitHash) -> Result<Option<UnitFile>, RegistryError> {
        let key = self.keys.content(&hash.to_string());
        let response = self.get("get unit content", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let file =
            parse_content(kv.value()).map_err(|message| RegistryError::Decode { key, message })?;
        Ok(Some(file))
    }

    /// Releases `unit`'s reference to `hash` and, in the same txn, deletes the
    /// content when that was the last reference: the refs before and after
    /// ours must both be empty ranges (an empty range compares as a zero
    /// version in etcd).
    pub(crate) fn release_content(&self, hash: &UnitHash, unit: &UnitName) -> Txn {
        self.release_content_ref(
            hash,
            &self.keys.content_ref(&hash.to_string(), unit.as_str()),
        )
    }

    /// [`Registry::release_content`] for any reference key `own` under the
    /// hash's refs (a unit's, or a rollout's).
    pub(crate) fn release_content_ref(&self, hash: &UnitHash, own: &str) -> Txn {
        let hash = hash.to_string();
        let refs = self.keys.content_refs(&hash);
        let own = own.to_owned();
        let mut after_own = own.clone().into_bytes();
        after_own.push(0);
        Txn::new()
            .when([
                Compare::version(refs.as_str(), CompareOp::Equal, 0).with_range(own.as_str()),
                Compare::version(after_own, CompareOp::Equal, 0).with_range(prefix_end(&refs)),
            ])
            .and_then([
                TxnOp::delete(own.as_str(), None),
                TxnOp::delete(self.keys.content(&hash), None),
            ])
            .or_else([TxnOp::delete(own.as_str(), None)])
    }

    /// Deletes the content of `hash` if no unit refers to it. Repairs content
    /// leaked by hand edits; the normal paths release content atomically.
    pub async fn collect_content(&self, hash: &UnitHash) -> Result<bool, RegistryError> {
        let hash = hash.to_string();
        let refs = self.keys.content_refs(&hash);
        let txn = Txn::new()
            .when([
                Compare::version(refs.as_str(), CompareOp::Equal, 0).with_range(prefix_end(&refs))
            ])
            .and_then([TxnOp::delete(self.keys.content(&hash), None)]);
        Ok(self.txn("collect unit content", txn).await?.succeeded())
    }

    /// The record of `name` and the compare that holds while it is unchanged.
    async fn unit_record(
        &self,
        op: &'static str,
        name: &UnitName,
    ) -> Result<Option<(Compare, Vec<u8>)>, RegistryError> {
        let key = self.keys.unit(name.as_str());
        let response = self.get(op, key.clone(), None).await?;
        Ok(response.kvs().first().map(|kv| {
            (
                Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                kv.value().to_vec(),
            )
        }))
    }

    fn cas_exhausted(op: &'static str) -> RegistryError {
        RegistryError::Etcd {
            op,
            message: format!(
                "the unit record kept changing under us; gave up after {MAX_CAS_ATTEMPTS} attempts"
            ),
        }
    }

    /// Creates or replaces `name` with `file` and `desired_state`, storing the
    /// content once per hash; releases the old content when replaced. One txn.
    pub async fn create_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        desired_state: TargetState,
    ) -> Result<(), RegistryError> {
        const OP: &str = "create unit";
        let text = file.serialize();
        let hash = file.hash();
        let hash_hex = hash.to_string();
        let key = self.keys.unit(name.as_str());
        let content_key = self.keys.content(&hash_hex);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            // Most creates are of new units: the first attempt assumes there is
            // no record, which the guard checks, and saves a read per unit.
            let record = if attempt == 0 {
                None
            } else {
                self.unit_record(OP, name).await?
            };
            let (guard, old_hash) = match &record {
                None => (
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    None,
                ),
                Some((guard, value)) => {
                    let old_hash = match wire::decode_unit(value) {
                        Ok((old_hash, _)) => Some(old_hash),
                        Err(message) => {
                            warn!(unit = %name, %message, "Replacing an undecodable unit record; its content may leak.");
                            None
                        }
                    };
                    (guard.clone(), old_hash)
                }
            };
            let put_content_if_absent = Txn::new()
                .when([Compare::version(content_key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(content_key.as_str(), text.as_str(), None)]);
            let mut ops = vec![
                TxnOp::put(key.as_str(), wire::encode_unit(&hash, desired_state), None),
                TxnOp::put(self.keys.content_ref(&hash_hex, name.as_str()), "", None),
                TxnOp::txn(put_content_if_absent),
            ];
            if let Some(old_hash) = old_hash.filter(|old_hash| *old_hash != hash) {
                ops.push(TxnOp::txn(self.release_content(&old_hash, name)));
            }
            if self
                .txn(OP, Txn::new().when([guard]).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(());
            }
            if attempt > 0 {
                debug!(unit = %name, "The unit record changed while we wrote it; retrying.");
            }
        }
        Err(Self::cas_exhausted(OP))
    }

    /// Sets the desired state of an existing unit. `Ok(false)` if it is gone.
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        desired_state: TargetState,
    ) -> Result<bool, RegistryError> {
        const OP: &str = "set desired state";
        let key = self.keys.unit(name.as_str());
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((guard, value)) = self.unit_record(OP, name).await? else {
                return Ok(false);
            };
            let (hash, _) = wire::decode_unit(&value).map_err(|message| RegistryError::Decode {
                key: key.clone(),
                message,
            })?;
            let txn = Txn::new().when([guard]).and_then([TxnOp::put(
                key.as_str(),
                wire::encode_unit(&hash, desired_state),
                None,
            )]);
            if self.txn(OP, txn).await?.succeeded() {
                return Ok(true);
            }
            debug!(unit = %name, "The unit record changed while we wrote it; retrying.");
        }
        Err(Self::cas_exhausted(OP))
    }

    /// Removes a unit and, with its last reference, its content (one txn).
    /// `Ok(false)` if it did not exist. Placements are the engine's to remove.
    pub async fn destroy_unit(&self, name: &UnitName) -> Result<bool, RegistryError> {
        const OP: &str = "destroy unit";
        let key = self.keys.unit(name.as_str());
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((guard, value)) = self.unit_record(OP, name).await? else {
                return Ok(false);
            };
            let mut ops = vec![TxnOp::delete(key.as_str(), None)];
            match wire::decode_unit(&value) {
                Ok((hash, _)) => ops.push(TxnOp::txn(self.release_content(&hash, name))),
                Err(message) => {
                    warn!(unit = %name, %message, "Destroying an undecodable unit record; its content may leak.")
                }
            }
            if self
                .txn(OP, Txn::new().when([guard]).and_then(ops))
                .await?
                .succeeded()
            {
                return Ok(true);
            }
            debug!(unit = %name, "The unit record changed while we deleted it; retrying.");
        }
        Err(Self::cas_exhausted(OP))
    }

    // --- placements (the schedule) ---

    fn decode_placements(&self, kvs: &[KeyValue]) -> Vec<Placement> {
        let mut placements: Vec<Placement> = kvs
            .iter()
            .filter_map(|kv| self.decode_placement(kv.key_str().ok()?, kv.value()))
            .collect();
        placements.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
        placements
    }

    /// Every placement, sorted by (unit, machine).
    pub async fn placements(&self) -> Result<Vec<Placement>, RegistryError> {
        let response = self
            .get_prefix("list placements", self.keys.schedule(), None)
            .await?;
        Ok(self.decode_placements(response.kvs()))
    }

    /// The machines `name` is placed on (one read of its placement prefix).
    pub async fn unit_placements(&self, name: &UnitName) -> Result<Vec<MachineId>, RegistryError> {
        let options = prefix_options().with_keys_only();
        let response = self
            .get(
                "get unit placements",
                self.keys.unit_placements(name.as_str()),
                Some(options),
            )
            .await?;
        let mut machines: Vec<MachineId> = response
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Placement { unit, machine } if unit == *name => Some(machine),
                _ => None,
            })
            .collect();
        machines.sort();
        Ok(machines)
    }

    /// This machine's schedule at a revision (to start a watch from `rev + 1`).
    pub async fn machine_schedule(
        &self,
        machine: &MachineId,
    ) -> Result<(Vec<Placement>, Revision), RegistryError> {
        let response = self
            .get_prefix(
                "get machine schedule",
                self.keys.machine_schedule(machine.as_str()),
                None,
            )
            .await?;
        Ok((
            self.decode_placements(response.kvs()),
            header_revision(&response),
        ))
    }

    // --- unit states ---

    fn decode_unit_states(&self, kvs: &[KeyValue]) -> Vec<UnitState> {
        let mut states: Vec<UnitState> = kvs
            .iter()
            .filter_map(|kv| self.decode_unit_state(kv.key_str().ok()?, kv.value()))
            .collect();
        states.sort_by(|a, b| (&a.unit, &a.machine).cmp(&(&b.unit, &b.machine)));
        states
    }

    /// All unit states sorted by (unit, machine).
    pub async fn unit_states(&self) -> Result<Vec<UnitState>, RegistryError> {
        let response = self
            .get_prefix("list unit states", self.keys.states(), None)
            .await?;
        Ok(self.decode_unit_states(response.kvs()))
    }

    /// The states live machines reported for one unit, sorted by machine.
    /// States are keyed by machine (each machine may write only its own), so
    /// this reads the live machines' ids (keys only) and then one key per
    /// machine, in txns of [`STATE_GETS_BATCH`] gets: the cost grows with the
    /// machines, never with the other units' states. A state outlives its
    /// machine's presence only between a graceful unregister and the lease
    /// revoke that follows it.
    pub async fn states_of_unit(&self, name: &UnitName) -> Result<Vec<UnitState>, RegistryError> {
        const OP: &str = "get unit states";
        let machines = self
            .get(
                OP,
                self.keys.machines(),
                Some(prefix_options().with_keys_only()),
            )
            .await?;
        let ids: Vec<MachineId> = machines
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Machine(machine) => Some(machine),
                _ => None,
            })
            .collect();
        let mut states = Vec::new();
        for batch in ids.chunks(STATE_GETS_BATCH) {
            let gets: Vec<TxnOp> = batch
                .iter()
                .map(|machine| TxnOp::get(self.keys.state(name.as_str(), machine.as_str()), None))
                .collect();
            let response = self.txn(OP, Txn::new().and_then(gets)).await?;
            for range in txn_ranges(&response) {
                states.extend(self.decode_unit_states(range.kvs()));
            }
        }
        states.sort_by(|a, b| a.machine.cmp(&b.machine));
        Ok(states)
    }

    /// The state `machine` reported for `name`, if any (one get).
    pub async fn unit_state_on(
        &self,
        name: &UnitName,
        machine: &MachineId,
    ) -> Result<Option<UnitState>, RegistryError> {
        let key = self.keys.state(name.as_str(), machine.as_str());
        let response = self.get("get unit state", key, None).await?;
        Ok(self.decode_unit_states(response.kvs()).into_iter().next())
    }

    /// Publishes a unit state under the machine's lease.
    pub async fn put_unit_state(
        &self,
        state: &UnitState,
        lease: LeaseId,
    ) -> Result<(), RegistryError> {
        const OP: &str = "put unit state";
        let key = self.keys.state(state.unit.as_str(), state.machine.as_str());
        let value = wire::encode_unit_state(state);
        // Retry-safe: a put of a fixed value.
        self.run(OP, |mut clients| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let options = PutOptions::new().with_lease(lease.get());
                clients.kv.put(key, value, Some(options)).await
            }
        })
        .await?;
        Ok(())
    }

    /// Deletes the state `machine` reported for `unit` (only that machine's).
    pub async fn delete_unit_state(
        &self,
        unit: &UnitName,
        machine: &MachineId,
    ) -> Result<(), RegistryError> {
        const OP: &str = "delete unit state";
        let key = self.keys.state(unit.as_str(), machine.as_str());
        // Retry-safe: deleting a key twice leaves it deleted.
        self.run(OP, |mut clients| {
            let key = key.clone();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
        Ok(())
    }

    // --- the engine: snapshot, watches, decoders, election, schedule writes ---

    /// Machines, units and placements read at one revision (ranges pinned to
    /// the revision of the first), to feed an in-memory model that then
    /// watches from `revision + 1`.
    ///
    /// # Errors
    /// Transport errors and timeouts; [`RegistryError::Etcd`] if etcd
    /// compacted the revision between the reads (rare: list again).
    pub async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let machines = self
            .get_prefix("snapshot machines", self.keys.machines(), None)
            .await?;
        let revision = header_revision(&machines);
        let at = Some(revision);
        let metadata = self
            .get_prefix("snapshot metadata", self.keys.all_metadata(), at)
            .await?;
        let units = self
            .get_prefix("snapshot units", self.keys.units(), at)
            .await?;
        let contents = self
            .get_prefix("snapshot unit contents", self.keys.all_content(), at)
            .await?;
        let placements = self
            .get_prefix("snapshot placements", self.keys.schedule(), at)
            .await?;
        let decoded = self.decode_units(units.kvs(), contents.kvs());
        let usable: std::collections::BTreeSet<&UnitName> =
            decoded.iter().map(|unit| &unit.name).collect();
        let unusable_units = units
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys.parse(kv.key_str().ok()?)? {
                RegistryKey::Unit(name) if !usable.contains(&name) => Some(name),
                _ => None,
            })
            .collect();
        Ok(Snapshot {
            revision,
            machines: self.decode_machines(machines.kvs(), metadata.kvs()),
            units: decoded,
            placements: self.decode_placements(placements.kvs()),
            unusable_units,
        })
    }

    /// Watches every key under `prefix` (take it from [`Registry::keys`]),
    /// from `from_revision` on (use a list's revision + 1). Waits, within the
    /// request deadline, until etcd has accepted the watch. Watches have no
    /// deadline themselves; a dead connection surfaces as an error of
    /// [`WatchStream::next`] after the HTTP/2 keep-alive timeout.
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when `from_revision` is compacted already
    /// (from here or from the first [`WatchStream::next`]: etcd confirms the
    /// watch before it cancels it).
    pub async fn watch_prefix(
        &self,
        prefix: String,
        from_revision: Revision,
    ) -> Result<WatchStream, RegistryError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision.get());
        let (stream, first, member) = self.open_watch("watch", prefix, options).await?;
        // Events are not expected before `created`, but never drop any.
        let pending = watch_batch(&first)?;
        Ok(WatchStream {
            stream,
            member,
            pending,
        })
    }

    /// Opens a watch on a live member and reads etcd's first response, which
    /// confirms the watch (or cancels it at once when the revision is
    /// compacted). Retry-safe: a watch is a read; a watch whose member dies
    /// ends with an error and its owner watches again. The one way every
    /// watch of the registry is opened.
    pub(crate) async fn open_watch(
        &self,
        op: &'static str,
        prefix: String,
        options: WatchOptions,
    ) -> Result<
        (
            etcd_client::WatchStream,
            etcd_client::WatchResponse,
            MemberRef,
        ),
        RegistryError,
    > {
        fleet_metrics::get().etcd.watch_started();
        let ((stream, first), member) = self
            .inner
            .endpoints
            .run(op, |mut clients| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move {
                    let mut stream = clients.watch.watch(prefix, Some(options)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first))
                }
            })
            .await?;
        let Some(first) = first else {
            return Err(RegistryError::Etcd {
                op,
                message: "etcd closed the watch at once".to_owned(),
            });
        };
        Ok((stream, first, member))
    }

    /// What `key` names in the layout (for watch events, deletes included).
    pub fn parse_key(&self, key: &str) -> Option<RegistryKey> {
        self.keys.parse(key)
    }

    /// A machine record (its configured metadata only: merge the dynamic one
    /// with [`merge_metadata`]). `None` for other keys; undecodable values are
    /// logged at WARN and give `None`.
    pub fn decode_machine(&self, key: &str, value: &[u8]) -> Option<MachineState> {
        let RegistryKey::Machine(machine) = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_machine(&machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// A dynamic metadata entry `(machine, key, value)`; an empty value is a
    /// tombstone that hides the key.
    pub fn decode_metadata(&self, key: &str, value: &[u8]) -> Option<(MachineId, String, String)> {
        let RegistryKey::Metadata { machine, key: name } = self.keys.parse(key)? else {
            return None;
        };
        match std::str::from_utf8(value) {
            Ok(value) => Some((machine, name, value.to_owned())),
            Err(error) => {
                warn_undecodable(key, &error.to_string());
                None
            }
        }
    }

    /// A unit record: `(name, content hash, desired state)`.
    pub fn decode_unit_record(
        &self,
        key: &str,
        value: &[u8],
    ) -> Option<(UnitName, UnitHash, TargetState)> {
        let RegistryKey::Unit(name) = self.keys.parse(key)? else {
            return None;
        };
        let (hash, desired_state) = wire::decode_unit(value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()?;
        Some((name, hash, desired_state))
    }

    /// A content blob, parsed: `(hash, file)`. Parse each hash once and share
    /// it (`Arc`) among the units that use it.
    pub fn decode_content(&self, key: &str, value: &[u8]) -> Option<(UnitHash, UnitFile)> {
        let RegistryKey::Content(hash) = self.keys.parse(key)? else {
            return None;
        };
        let file = parse_content(value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()?;
        Some((hash, file))
    }

    /// A placement (a key under `P/engine/schedule/`).
    pub fn decode_placement(&self, key: &str, value: &[u8]) -> Option<Placement> {
        let RegistryKey::Scheduled { machine, unit } = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_placement(unit, machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// A unit state (a key under `P/machine/states/`).
    pub fn decode_unit_state(&self, key: &str, value: &[u8]) -> Option<UnitState> {
        let RegistryKey::State { unit, machine } = self.keys.parse(key)? else {
            return None;
        };
        wire::decode_unit_state(unit, machine, value)
            .map_err(|message| warn_undecodable(key, &message))
            .ok()
    }

    /// Tries to become the engine: creates `P/engine/leader` = our id under
    /// `lease` if absent. `Some` when we lead (also when the key already holds
    /// our id under our lease: a campaign retried after a timeout), `None`
    /// when another engine leads.
    pub async fn campaign(
        &self,
        machine: &MachineId,
        lease: LeaseId,
    ) -> Result<Option<Leadership>, RegistryError> {
        let key = self.keys.engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(
                    key.as_str(),
                    machine.as_str(),
                    Some(PutOptions::new().with_lease(lease.get())),
                ),
                TxnOp::get(key.as_str(), None),
            ])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn("campaign", txn).await?;
        let ranges = txn_ranges(&response);
        let Some(kv) = ranges.first().and_then(|get| get.kvs().first()) else {
            // The leader's lease expired between the compare and the read.
            return Ok(None);
        };
        let ours = response.succeeded()
            || (kv.value() == machine.as_str().as_bytes() && kv.lease() == lease.get());
        Ok(ours.then(|| Leadership {
            machine: machine.clone(),
            revision: Revision::new(kv.create_revision()),
        }))
    }

    /// Whether our etcd credential may write the range of `probe` (take it
    /// from [`Keys::engine_probe`] or [`Keys::api_probe`]). Writes nothing:
    /// the put sits behind a compare that never holds, and etcd checks the
    /// permission of every operation of a txn before it evaluates compares.
    /// Without etcd auth every credential may.
    pub async fn may_write(&self, probe: String) -> Result<bool, RegistryError> {
        let txn = Txn::new()
            .when([Compare::version(probe.as_str(), CompareOp::Less, 0)])
            .and_then([TxnOp::put(probe.as_str(), "", None)]);
        match self.txn("probe write permission", txn).await {
            Ok(_) => Ok(true),
            Err(RegistryError::Etcd { message, .. }) if message.contains("permission denied") => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The current engine, if any.
    pub async fn leader(&self) -> Result<Option<MachineId>, RegistryError> {
        let key = self.keys.engine_leader();
        let response = self.get("get leader", key.clone(), None).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let machine = kv
            .value_str()
            .ok()
            .and_then(|value| value.parse::<MachineId>().ok())
            .ok_or_else(|| RegistryError::Decode {
                key,
                message: "not a machine id".to_owned(),
            })?;
        Ok(Some(machine))
    }

    /// Gives up leadership (deletes the leader key if it is still ours).
    pub async fn resign(&self, leadership: &Leadership) -> Result<(), RegistryError> {
        let key = self.keys.engine_leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                leadership.revision.get(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.txn("resign", txn).await?;
        Ok(())
    }

    /// Writes schedule changes in txns of at most [`SCHEDULE_BATCH`] changes,
    /// each guarded by our leadership. A `Place` writes the schedule key and
    /// the placement index; an `Unplace` deletes both. Batches before a failed
    /// one stay written. One change per (unit, machine) per call: etcd refuses
    /// a txn that writes a key twice.
    ///
    /// # Errors
    /// [`RegistryError::NotLeader`] when the leader key is not ours any more.
    pub async fn commit_schedule(
        &self,
        leadership: &Leadership,
        changes: &[ScheduleChange],
    ) -> Result<(), RegistryError> {
        let leader = self.keys.engine_leader();
        let mut rest = changes;
        while !rest.is_empty() {
            let (ops, taken) = self.schedule_ops(rest);
            rest = &rest[taken..];
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader.as_str(),
                    CompareOp::Equal,
                    leadership.revision.get(),
                )])
                .and_then(ops);
            if !self.txn("commit schedule", txn).await?.succeeded() {
                return Err(RegistryError::NotLeader);
            }
        }
        debug!(n_changes = changes.len(), "Committed schedule changes.");
        Ok(())
    }
}

impl Registry {
    /// The operations of one schedule txn: as many of `changes` as fit in
    /// [`SCHEDULE_BATCH`] × 2 operations. An unplacement also writes its
    /// unload order (`P/unload-order/<machine>/<unit>`: the agent's proof that
    /// the engine ordered the unload). Returns the ops and how many changes
    /// they cover (at least one).
    fn schedule_ops(&self, changes: &[ScheduleChange]) -> (Vec<TxnOp>, usize) {
        let max_ops = SCHEDULE_BATCH * 2;
        let mut ops = Vec::with_capacity(max_ops);
        let mut taken = 0;
        for change in changes {
            let needed = match change {
                ScheduleChange::Place(_) => 2,
                ScheduleChange::Unplace { .. } => 3,
            };
            if taken > 0 && ops.len() + needed > max_ops {
                break;
            }
            match change {
                ScheduleChange::Place(placement) => {
                    let (unit, machine) = (placement.unit.as_str(), placement.machine.as_str());
                    ops.push(TxnOp::put(
                        self.keys.scheduled(machine, unit),
                        wire::encode_placement(placement),
                        None,
                    ));
                    ops.push(TxnOp::put(self.keys.placement(unit, machine), "", None));
                }
                ScheduleChange::Unplace { unit, machine } => {
                    let (unit, machine) = (unit.as_str(), machine.as_str());
                    ops.push(TxnOp::delete(self.keys.scheduled(machine, unit), None));
                    ops.push(TxnOp::delete(self.keys.placement(unit, machine), None));
                    ops.push(TxnOp::put(self.keys.unload_order(machine, unit), "", None));
                }
            }
            taken += 1;
        }
        (ops, taken)
    }
}

fn warn_undecodable(key: &str, message: &str) {
    warn!(key, %message, "Skipping an undecodable registry value.");
}

/// Parses stored content (the canonical unit text).
fn parse_content(value: &[u8]) -> Result<UnitFile, String> {
    let text = std::str::from_utf8(value).map_err(|error| error.to_string())?;
    UnitFile::parse(text).map_err(|error| error.to_string())
}

/// Merges dynamic metadata over configured metadata: a non-empty value sets,
/// an empty one removes, as in the original.
pub fn merge_metadata(
    configured: &BTreeMap<String, String>,
    dynamic: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = configured.clone();
    for (key, value) in dynamic {
        if value.is_empty() {
            merged.remove(key);
        } else {
            merged.insert(key.clone(), value.clone());
        }
    }
    merged
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
