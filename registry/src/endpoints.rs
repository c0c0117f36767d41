//! Endpoints: which etcd member a request goes to, and what happens when one
//! is down.
//!
//! fleetd is given every member of the etcd cluster. Each member gets its own
//! gRPC connection ([`Member`]), opened on first use. Requests go to the
//! members that are up in turn (round robin), so the load spreads over the
//! cluster. A request that fails because of its member — a transport error
//! (connection refused or reset), etcd's "unavailable" (the member has no
//! leader, the leader changed) or no answer within the request deadline —
//! marks that member down and is sent again, at once, to the next member. A
//! member that is down is asked only when every member is down. A background
//! probe (one task per down member, every [`PROBE_INTERVAL`]) sends a cheap
//! read and marks the member up when it answers, so a restarted member is used
//! again within about a second.
//!
//! etcd-client's own balanced channel cannot do this: it keeps handing
//! requests to a member whose connection fails, so one dead member out of
//! three failed a third of all requests for minutes.
//!
//! # Which requests may be sent twice
//!
//! A request that failed in transit may have been applied by etcd anyway.
//! [`Endpoints::run`] sends a request again, so every caller must be
//! *retry-safe*: applying it twice must be the same as applying it once.
//! Reads are. Writes in `store` are made so: puts write a fixed value
//! (idempotent), deletes delete a fixed key, transactions are guarded by a
//! compare that the first application falsifies (a retry then fails its guard
//! and the caller reads what is there), and a lease is granted under an id we
//! choose, so a second grant of it fails as "already exists" instead of
//! granting a second lease. A new write must keep this promise or not use
//! [`Endpoints::run`].
//!
//! # A member list that changes
//!
//! With DNS discovery (`crate::discovery`) the list of members is looked up
//! again while fleetd runs, and [`Endpoints::replace`] swaps it: a member
//! whose URL stays keeps its connection and health, a new one starts as up,
//! and a dropped one is no longer asked (a watch it serves runs on until it
//! breaks). Requests and probes hold the member they use, not a position in
//! the list. [`Endpoints::all_down`] wakes the look-up when every member
//! has failed, which is when a replaced member matters.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, KvClient, LeaseClient, MaintenanceClient, WatchClient,
};
use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::store::RegistryError;
use crate::survey::MemberSeen;

/// How often a down member is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The largest response we accept. tonic's default (4 MiB) is too small for
/// one range over 20,000 unit records; etcd itself has no send limit.
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// The pause after every member failed once, doubled per round up to
/// [`MAX_ROUND_PAUSE`]: during a leader election every member answers
/// "no leader" for about a second.
const FIRST_ROUND_PAUSE: Duration = Duration::from_millis(50);
const MAX_ROUND_PAUSE: Duration = Duration::from_millis(400);

/// The gRPC clients of one member (cheap to clone: they share a connection).
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) kv: KvClient,
    pub(crate) watch: WatchClient,
    pub(crate) lease: LeaseClient,
    /// For `Status`, which a member answers without a leader (the survey).
    pub(crate) maintenance: MaintenanceClient,
}

/// One etcd member: its URL, its connection and whether it answers.
struct Member {
    url: String,
    /// Connected on first use, so fleetd starts while etcd is down (with
    /// credentials, connecting authenticates, which needs the member). A
    /// failed attempt leaves it empty and the next request tries again.
    clients: OnceCell<Clients>,
    up: AtomicBool,
    /// Whether a probe task is running for this member.
    probing: AtomicBool,
}

/// The etcd members of one registry handle, with their health.
pub(crate) struct Endpoints {
    /// Swapped whole by [`Endpoints::replace`]; read as a snapshot.
    members: RwLock<Arc<[Arc<Member>]>>,
    /// Notified when every member is down (and when the endpoints are
    /// dropped, so a waiting look-up task ends).
    all_down: Arc<Notify>,
    options: ConnectOptions,
    request_timeout: Duration,
    /// Round-robin position.
    next: AtomicUsize,
    /// For the probe tasks, which must not keep the registry alive.
    weak_self: Weak<Endpoints>,
}

/// Which member served a request, so a broken stream can report it later.
#[derive(Clone)]
pub(crate) struct MemberRef {
    endpoints: Weak<Endpoints>,
    member: Arc<Member>,
}

impl MemberRef {
    /// Reports that the stream served by this member broke with `error`:
    /// marks the member down if the error is the member's fault.
    pub(crate) fn failed(&self, error: &etcd_client::Error) {
        if is_member_failure(error)
            && let Some(endpoints) = self.endpoints.upgrade()
        {
            endpoints.mark_down(&self.member, &error.to_string());
        }
    }
}

impl MemberRef {
    /// Reports that a stream served by this member did not answer in time.
    pub(crate) fn timed_out(&self) {
        if let Some(endpoints) = self.endpoints.upgrade() {
            endpoints.mark_down(&self.member, "no answer within the request timeout");
        }
    }
}

/// Whether `error` says the member (or the way to it) failed, rather than
/// that etcd refused the request: only then does another member help.
pub(crate) fn is_member_failure(error: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    use tonic::Code;
    match error {
        Error::TransportError(_) | Error::IoError(_) | Error::WatchError(_) => true,
        // tonic reports a refused or broken connection as Unavailable or
        // Unknown; etcd answers Unavailable when it has no leader.
        Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
        ),
        _ => false,
    }
}

/// Whether the member answered that it has no leader (`ErrGRPCNoLeader`).
fn is_no_leader(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::Unavailable && status.message() == "etcdserver: no leader")
}

/// Whether `error` is a refused TCP connection (the member's machine is
/// reachable and nothing listens), found in the error's source chain or,
/// as tonic sometimes flattens it, in its text.
fn is_refused(error: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = current.source();
    }
    error.to_string().contains("Connection refused")
}

/// How one attempt ended.
enum Attempt<T> {
    Done(T),
    /// The member failed: try another.
    MemberFailed(RegistryError),
    /// etcd refused the request: another member would too.
    Refused(RegistryError),
}

impl Endpoints {
    pub(crate) fn new(
        urls: &[String],
        options: ConnectOptions,
        request_timeout: Duration,
    ) -> Arc<Endpoints> {
        let members = urls
            .iter()
            .map(|url| Arc::new(Member::new(url)))
            .collect::<Arc<[_]>>();
        // Start each handle at a random member, so many fleetds do not all
        // begin on the first one.
        let start = fastrand::usize(..members.len().max(1));
        Arc::new_cyclic(|weak_self| Endpoints {
            members: RwLock::new(members),
            all_down: Arc::new(Notify::new()),
            options,
            request_timeout,
            next: AtomicUsize::new(start),
            weak_self: weak_self.clone(),
        })
    }

    /// The current members (a snapshot: [`Endpoints::replace`] may swap
    /// the list while the caller uses it).
    fn members(&self) -> Arc<[Arc<Member>]> {
        // A poisoned lock still holds a whole list: the swap is one store.
        Arc::clone(
            &self
                .members
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.members()
            .iter()
            .map(|member| member.url.clone())
            .collect()
    }

    /// Each member's URL and whether it is considered up.
    pub(crate) fn health(&self) -> Vec<(String, bool)> {
        self.members()
            .iter()
            .map(|member| (member.url.clone(), member.up.load(Ordering::Relaxed)))
            .collect()
    }

    /// Notified when every member is down, and when these endpoints are dropped.
    pub(crate) fn all_down(&self) -> Arc<Notify> {
        Arc::clone(&self.all_down)
    }

    /// Makes `urls` the members. A URL already known keeps its member (its
    /// connection and health); new URLs start as up. Returns whether the
    /// list changed. An empty `urls` is ignored: fleetd never runs without
    /// a member to ask.
    pub(crate) fn replace(&self, urls: &[String]) -> bool {
        if urls.is_empty() {
            return false;
        }
        let mut members = self
            .members
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let unchanged = members.len() == urls.len()
            && members
                .iter()
                .zip(urls)
                .all(|(member, url)| member.url == *url);
        if unchanged {
            return false;
        }
        let replacement = urls
            .iter()
            .map(|url| {
                members
                    .iter()
                    .find(|member| member.url == *url)
                    .map_or_else(|| Arc::new(Member::new(url)), Arc::clone)
            })
            .collect::<Arc<[_]>>();
        *members = replacement;
        true
    }

    /// Members to try, in order: those up, from the round-robin position on,
    /// then those down (asked only when no member is up).
    fn order(&self) -> Vec<Arc<Member>> {
        let members = self.members();
        let count = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotation = (0..count).map(|offset| Arc::clone(&members[(start + offset) % count]));
        let (up, down): (Vec<_>, Vec<_>) =
            rotation.partition(|member| member.up.load(Ordering::Relaxed));
        up.into_iter().chain(down).collect()
    }

    /// Runs `request` on a member with the request deadline, and on another
    /// member when that one fails, until one answers or the budget is spent:
    /// every member once, and more rounds (with a short pause) while less than
    /// the request timeout has passed. etcd's refusals (a failed compare is
    /// not one: that is an answer) return at once.
    ///
    /// `request` must be retry-safe (see the module doc).
    pub(crate) async fn run<T, F, Fut>(
        self: &Arc<Self>,
        op: &'static str,
        mut request: F,
    ) -> Result<(T, MemberRef), RegistryError>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut pause = FIRST_ROUND_PAUSE;
        let mut last_error = None;
        loop {
            for member in self.order() {
                match self.attempt(op, &member, &mut request).await {
                    Attempt::Done(value) => {
                        let member = MemberRef {
                            endpoints: Arc::downgrade(self),
                            member,
                        };
                        return Ok((value, member));
                    }
                    Attempt::Refused(error) => return Err(error),
                    Attempt::MemberFailed(error) => {
                        debug!(op, member = %member.url, %error, "An etcd member failed a request; trying the next.");
                        last_error = Some(error);
                    }
                }
            }
            let remaining = self.request_timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            // Jitter, so the fleetds of a cluster do not retry in step.
            let jittered = pause.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::time::sleep(jittered.min(remaining)).await;
            pause = (pause * 2).min(MAX_ROUND_PAUSE);
        }
        Err(last_error.unwrap_or(RegistryError::Config("no etcd endpoints".to_owned())))
    }

    async fn attempt<T, F, Fut>(
        &self,
        op: &'static str,
        member: &Arc<Member>,
        request: &mut F,
    ) -> Attempt<T>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let after = self.request_timeout;
        let clients = match tokio::time::timeout(after, self.clients(member)).await {
            Ok(Ok(clients)) => clients,
            Ok(Err(error)) => return self.failed(op, member, error),
            Err(_) => {
                self.mark_down(member, "connecting timed out");
                return Attempt::MemberFailed(RegistryError::Timeout { op, after });
            }
        };
        match tokio::time::timeout(after, request(clients)).await {
            Ok(Ok(value)) => {
                mark_up(member);
                Attempt::Done(value)
            }
            Ok(Err(error)) => self.failed(op, member, error),
            Err(_) => {
                self.mark_down(member, "no answer within the request timeout");
                Attempt::MemberFailed(RegistryError::Timeout { op, after })
            }
        }
    }

    fn failed<T>(
        &self,
        op: &'static str,
        member: &Arc<Member>,
        error: etcd_client::Error,
    ) -> Attempt<T> {
        let member_failed = is_member_failure(&error);
        let error_text = error.to_string();
        let registry_error = RegistryError::Etcd {
            op,
            message: format!("{error_text} (etcd member {})", member.url),
        };
        if member_failed {
            self.mark_down(member, &error_text);
            Attempt::MemberFailed(registry_error)
        } else {
            Attempt::Refused(registry_error)
        }
    }

    /// The member's clients, connecting on first use.
    async fn clients(&self, member: &Member) -> Result<Clients, etcd_client::Error> {
        let clients = member
            .clients
            .get_or_try_init(|| async {
                let client =
                    Client::connect([member.url.as_str()], Some(self.options.clone())).await?;
                Ok::<_, etcd_client::Error>(Clients {
                    kv: client
                        .kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES),
                    watch: client
                        .watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES),
                    lease: client.lease_client(),
                    maintenance: client.maintenance_client(),
                })
            })
            .await?;
        Ok(clients.clone())
    }

    /// Asks every member, at once, for its status (served by the member
    /// itself, with or without a leader), each within the request deadline.
    /// Health marks are left alone: this is an observation, not routing.
    pub(crate) async fn survey(self: &Arc<Self>) -> Vec<(String, MemberSeen)> {
        let mut asked = tokio::task::JoinSet::new();
        for member in self.members().iter() {
            let (endpoints, member) = (Arc::clone(self), Arc::clone(member));
            asked.spawn(async move {
                let status = async {
                    let mut maintenance = endpoints.clients(&member).await?.maintenance;
                    maintenance.status().await
                };
                let seen = match tokio::time::timeout(endpoints.request_timeout, status).await {
                    Ok(Ok(status)) if status.leader() == 0 => MemberSeen::Leaderless,
                    Ok(Ok(_)) => MemberSeen::Led,
                    // Every request carries "require a leader" (see
                    // `Registry::connect`), so a leaderless member refuses
                    // even `Status` with etcd's own "no leader" error.
                    Ok(Err(error)) if is_no_leader(&error) => MemberSeen::Leaderless,
                    Ok(Err(error)) if is_refused(&error) => MemberSeen::Refused,
                    Ok(Err(error)) => MemberSeen::Unreachable(error.to_string()),
                    Err(_) => {
                        MemberSeen::Unreachable("no answer within the request timeout".to_owned())
                    }
                };
                (member.url.clone(), seen)
            });
        }
        let mut seen = Vec::new();
        while let Some(answer) = asked.join_next().await {
            // A survey task only awaits; it panics only if a dependency does.
            if let Ok(answer) = answer {
                seen.push(answer);
            }
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        seen
    }

    /// Marks a member down and starts its probe (unless one runs); wakes
    /// the discovery look-up when no member is left up.
    fn mark_down(&self, member: &Arc<Member>, reason: &str) {
        if member.up.swap(false, Ordering::Relaxed) {
            warn!(member = %member.url, %reason, "etcd member failed; routing requests to the others until it answers.");
        }
        let members = self.members();
        if members.len() > 1 && !member.probing.swap(true, Ordering::Relaxed) {
            // The probe holds a weak handle: it ends with the registry.
            tokio::spawn(probe(self.weak_self.clone(), Arc::clone(member)));
        }
        if members
            .iter()
            .all(|member| !member.up.load(Ordering::Relaxed))
        {
            self.all_down.notify_one();
        }
    }

    /// Whether `member` is still one of the members (not replaced).
    fn contains(&self, member: &Arc<Member>) -> bool {
        self.members()
            .iter()
            .any(|known| Arc::ptr_eq(known, member))
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        // Ends a discovery task waiting for a total failure.
        self.all_down.notify_one();
    }
}

impl Member {
    fn new(url: &str) -> Member {
        Member {
            url: url.to_owned(),
            clients: OnceCell::new(),
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        }
    }
}

fn mark_up(member: &Member) {
    if !member.up.swap(true, Ordering::Relaxed) {
        info!(member = %member.url, "etcd member is answering again.");
    }
}

/// Probes a down member every [`PROBE_INTERVAL`] with a one-key count (with
/// etcd's "require leader", so a member without a leader stays down) until it
/// answers, the registry is dropped or the member is no longer one of the
/// members (replaced after a DNS look-up).
async fn probe(endpoints: Weak<Endpoints>, member: Arc<Member>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(endpoints) = endpoints.upgrade() else {
            return;
        };
        if !endpoints.contains(&member) {
            member.probing.store(false, Ordering::Relaxed);
            return;
        }
        let check = async {
            let mut kv = endpoints.clients(&member).await?.kv;
            kv.get("health", Some(GetOptions::new().with_count_only()))
                .await
        };
        let answered = match tokio::time::timeout(endpoints.request_timeout, check).await {
            Ok(Ok(_)) => true,
            // Any answer that is not the member's failure (e.g. permission
            // denied on the probe key) shows the member serves requests.
            Ok(Err(error)) => !is_member_failure(&error),
            Err(_) => false,
        };
        if answered {
            mark_up(&member);
        }
        if member.up.load(Ordering::Relaxed) {
            member.probing.store(false, Ordering::Relaxed);
            // Marked down again in between, when we still counted as its
            // probe: carry on (unless another probe took over).
            if member.up.load(Ordering::Relaxed) || member.probing.swap(true, Ordering::Relaxed) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|url| (*url).to_owned()).collect()
    }

    fn health(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter()
            .map(|(url, up)| ((*url).to_owned(), *up))
            .collect()
    }

    #[test]
    fn replacing_the_members_keeps_those_that_stay_and_never_empties_the_list() {
        let endpoints = Endpoints::new(
            &urls(&["http://a:2379", "http://b:2379"]),
            ConnectOptions::new(),
            Duration::from_secs(1),
        );
        let before = endpoints.members();
        before[1].up.store(false, Ordering::Relaxed);

        assert!(!endpoints.replace(&[]), "an empty answer changes nothing");
        assert!(!endpoints.replace(&urls(&["http://a:2379", "http://b:2379"])));
        assert!(endpoints.replace(&urls(&["http://b:2379", "http://c:2379"])));

        // b keeps its member (and its health); c is new and up; a is gone.
        assert_eq!(
            endpoints.health(),
            health(&[("http://b:2379", false), ("http://c:2379", true)])
        );
        assert!(Arc::ptr_eq(&endpoints.members()[0], &before[1]));
        assert!(!endpoints.contains(&before[0]));
        assert_eq!(endpoints.order().len(), 2);
    }
}
