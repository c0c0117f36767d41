//! The heart: this machine's presence in etcd.
//!
//! It grants a lease of `agent_ttl`, publishes the machine record under it
//! (create-if-absent, so a second fleetd with the same machine id waits
//! instead of taking over), and keeps the lease alive with keep-alives every
//! TTL/3, which are not Raft writes: an idle machine writes nothing. Every
//! minute it reads the machine id and public IP again and rewrites the
//! record only if the IP changed. When the lease expires it registers again
//! from scratch. When etcd cannot be reached for a whole TTL, the machine
//! counts as unregistered (presence `None`) but the heart keeps sending
//! keep-alives for the same lease: after a quorum loss or an etcd restart
//! the new leader has renewed it, and taking it up again is quicker (and
//! moves nothing) than waiting for it to expire before registering anew.
//!
//! With self-fencing ([`Heart::with_fence`]) it tells the [`Fence`] the send
//! time of every keep-alive etcd answered and of every new lease: the fence's
//! clock starts there.
//!
//! The current lease is published as [`Presence`]: the agent writes unit
//! states under it, and the server turns it into the API's availability
//! (503 while `None`). On shutdown the heart unregisters and revokes the
//! lease, so the record and every unit state under it vanish at once. When
//! the units are left running ([`Heart::with_clean_stop_mark`]), it first
//! leaves a clean-stop mark (`P/machine/stopped/<machine>`), so the engine waits the
//! restart grace instead of the machine-loss grace before moving them; the
//! next registration deletes the mark.
//!
//! It never touches units: that is the agent's business.

use std::time::Duration;

use anyhow::Context;
use fleet_registry::store::LeaseId;
use fleet_registry::{LeaseKeepAlive, MachineId, MachineState, Registry, RegistryError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::agent::fence::{Fence, Moment};
use crate::backoff::Backoff;
use crate::machine::LocalMachine;

/// The current machine lease id; `None` while this machine is not registered.
pub type Presence = watch::Receiver<Option<LeaseId>>;

/// The heart's config. No `Default`: tests say what they use.
#[derive(Clone, Debug)]
pub struct HeartConfig {
    /// `agent_ttl`: the machine lease's TTL.
    pub ttl: Duration,
    /// How often the machine id and IP are read again (1 minute in fleetd).
    pub refresh_interval: Duration,
    /// The first retry delay ceiling when registering fails.
    pub retry_initial: Duration,
    /// The largest retry delay ceiling (1 minute in fleetd, as in the original).
    pub retry_max: Duration,
}

impl HeartConfig {
    /// fleetd's heart for `agent_ttl`: refresh every minute, retries from 1 s
    /// doubling up to 1 minute (the original's), but never longer than the TTL so a
    /// duplicate that is waiting notices the original's death quickly.
    pub fn for_ttl(ttl: Duration) -> HeartConfig {
        HeartConfig {
            ttl,
            refresh_interval: Duration::from_secs(60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60).min(ttl.max(Duration::from_secs(1))),
        }
    }
}

/// Keeps this machine's presence. See the module docs.
pub struct Heart {
    config: HeartConfig,
    registry: Registry,
    local: LocalMachine,
    presence: watch::Sender<Option<LeaseId>>,
    /// Leave a clean-stop mark at shutdown (the units keep running).
    clean_stop_mark: bool,
    /// Told of every answered keep-alive and new lease (self-fencing).
    fence: Option<Fence>,
}

/// Why a registration ended.
enum Ended {
    /// Shutdown was asked for; the lease is still ours.
    Shutdown,
    /// The lease expired; register again.
    Lost,
}

impl Heart {
    /// A heart and the receiver of its presence.
    pub fn new(config: HeartConfig, registry: Registry, local: LocalMachine) -> (Heart, Presence) {
        let (presence, receiver) = watch::channel(None);
        (
            Heart {
                config,
                registry,
                local,
                presence,
                clean_stop_mark: false,
                fence: None,
            },
            receiver,
        )
    }

    /// Whether a clean stop leaves the mark that tells the engine this
    /// machine's units still run (off unless set: only a fleetd whose agent
    /// leaves units running at shutdown should say so).
    pub fn with_clean_stop_mark(mut self, mark: bool) -> Heart {
        self.clean_stop_mark = mark;
        self
    }

    /// Tells `fence` when the lease was last proven alive.
    pub fn with_fence(mut self, fence: Option<Fence>) -> Heart {
        self.fence = fence;
        self
    }

    /// Another receiver of this heart's presence.
    pub fn presence(&self) -> Presence {
        self.presence.subscribe()
    }

    /// Registers, keeps alive and re-registers until `shutdown`, then
    /// unregisters and revokes the lease.
    ///
    /// # Errors
    /// Only for errors retrying cannot fix (an invalid registry config).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.config.retry_initial, self.config.retry_max);
        loop {
            let Some((state, lease)) = self.register(&mut backoff, &shutdown).await? else {
                return Ok(());
            };
            backoff.reset();
            info!(machine = %state.id, %lease, public_ip = %state.public_ip, "Registered this machine.");
            if let Err(error) = self.registry.clear_stopped(&state.id).await {
                warn!(%error, "Deleting this machine's clean-stop mark failed; a later loss of this machine would wait the restart grace.");
            }
            self.presence.send_replace(Some(lease));
            let ended = self.keep_alive(state.clone(), lease, &shutdown).await;
            self.presence.send_replace(None);
            match ended {
                Ended::Shutdown => {
                    self.unregister(&state.id, lease).await;
                    return Ok(());
                }
                Ended::Lost => {
                    warn!(machine = %state.id, %lease, "Lost this machine's lease; registering again.")
                }
            }
        }
    }

    /// Grants a lease and publishes the record, retrying with backoff until
    /// it works. `Ok(None)` when shutdown came first.
    async fn register(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(MachineState, LeaseId)>> {
        debug!("Establishing etcd connectivity.");
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            match self.register_once().await {
                Ok(registered) => return Ok(Some(registered)),
                Err(RegisterError::Registry(RegistryError::MachineExists(machine))) => warn!(
                    %machine,
                    retry_within = ?backoff.ceiling(),
                    "Another fleetd with machine id {machine} is alive; retrying."
                ),
                Err(RegisterError::Registry(error)) if !error.is_retriable() => {
                    return Err(error).context("registering this machine");
                }
                Err(error) => {
                    warn!(%error, retry_within = ?backoff.ceiling(), "Registering this machine failed; retrying.")
                }
            }
            if !backoff.wait(shutdown).await {
                return Ok(None);
            }
        }
    }

    async fn register_once(&self) -> Result<(MachineState, LeaseId), RegisterError> {
        let state = self.local.state()?;
        let sent = Moment::now();
        let lease = self.registry.grant_lease(self.config.ttl).await?;
        match self.registry.register_machine(&state, lease).await {
            Ok(()) => {
                if let Some(fence) = &self.fence {
                    fence.registered(sent);
                }
                Ok((state, lease))
            }
            Err(error) => {
                // Do not leave a useless lease behind; if this fails too, it
                // expires by itself within a TTL.
                if let Err(revoke_error) = self.registry.revoke_lease(lease).await {
                    debug!(error = %revoke_error, %lease, "Revoking an unused lease failed.");
                }
                Err(error.into())
            }
        }
    }

    /// Keeps `lease` alive until shutdown or loss; refreshes the record.
    async fn keep_alive(
        &self,
        mut state: MachineState,
        lease: LeaseId,
        shutdown: &CancellationToken,
    ) -> Ended {
        let ttl = self.config.ttl;
        let period = ttl / 3;
        // After a failed keep-alive, try again sooner: the lease is running out.
        let retry_period = (ttl / 12).max(Duration::from_millis(100));
        let mut last_success = Instant::now();
        let mut next_keep_alive = Instant::now() + period;
        let mut next_refresh = Instant::now() + self.config.refresh_interval;
        // One stream for every keep-alive of this lease, re-opened on
        // another etcd member when it breaks.
        let mut keeper = LeaseKeepAlive::new(&self.registry, lease);
        // Whether etcd has not answered for a whole TTL (presence withdrawn).
        let mut unreachable = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                () = tokio::time::sleep_until(next_keep_alive) => {
                    let sent = Moment::now();
                    match keeper.keep_alive().await {
                        Ok(Some(remaining)) => {
                            debug!(%lease, ?remaining, "Kept the machine lease alive.");
                            if let Some(fence) = &self.fence {
                                fence.renewed(sent);
                            }
                            if unreachable {
                                unreachable = false;
                                info!(%lease, "etcd answers again and this machine's lease is still alive; registered again with it.");
                                self.presence.send_replace(Some(lease));
                            }
                            last_success = Instant::now();
                            next_keep_alive = last_success + period;
                        }
                        Ok(None) => {
                            warn!(%lease, "The machine lease has expired.");
                            return Ended::Lost;
                        }
                        Err(error) => {
                            if !unreachable && last_success.elapsed() >= ttl {
                                // The original's wording; tests grep for it.
                                error!(%error, "Server monitor triggered: Monitor timed out before successful heartbeat");
                                // Nothing can be written under the lease now,
                                // but it may outlive the outage: keep asking.
                                unreachable = true;
                                self.presence.send_replace(None);
                            } else {
                                warn!(%error, %lease, "Keeping the machine lease alive failed; retrying.");
                            }
                            next_keep_alive = Instant::now() + retry_period;
                        }
                    }
                }
                () = tokio::time::sleep_until(next_refresh) => {
                    next_refresh = Instant::now() + self.config.refresh_interval;
                    self.refresh(&mut state, lease).await;
                }
            }
        }
    }

    /// Reads the id and IP again; rewrites the record if the IP changed.
    async fn refresh(&self, state: &mut MachineState, lease: LeaseId) {
        let fresh = match self.local.state() {
            Ok(fresh) => fresh,
            Err(error) => {
                warn!(%error, "Refreshing this machine's state failed; keeping the published one.");
                return;
            }
        };
        if fresh.id != state.id {
            // The engine and agent were built for the old id; swapping it
            // under them would orphan this machine's schedule.
            warn!(machine = %state.id, new_machine = %fresh.id, "The machine id changed on disk; restart fleetd to use it.");
            return;
        }
        if fresh == *state {
            debug!(machine = %state.id, "Machine state unchanged.");
            return;
        }
        match self.registry.update_machine(&fresh, lease).await {
            Ok(()) => {
                info!(machine = %fresh.id, public_ip = %fresh.public_ip, "Published this machine's new state.");
                *state = fresh;
            }
            Err(error) => {
                warn!(%error, "Publishing this machine's new state failed; retrying in a minute.")
            }
        }
    }

    /// Graceful shutdown: delete the record, then revoke the lease (which
    /// deletes the unit states under it too).
    async fn unregister(&self, machine: &MachineId, lease: LeaseId) {
        // Before the lease goes: the engine reads the mark when it sees the
        // machine vanish.
        if self.clean_stop_mark {
            match self
                .registry
                .mark_stopped(machine, std::time::SystemTime::now())
                .await
            {
                Ok(()) => {
                    info!(%machine, "Left a clean-stop mark: the engine waits the restart grace before moving this machine's units.")
                }
                Err(error) => {
                    warn!(%error, %machine, "Leaving the clean-stop mark failed; the engine will move this machine's units after the machine-loss grace.")
                }
            }
        }
        if let Err(error) = self.registry.unregister_machine(machine, lease).await {
            warn!(%error, %machine, "Unregistering this machine failed; revoking its lease anyway.");
        }
        match self.registry.revoke_lease(lease).await {
            Ok(()) => info!(%machine, %lease, "Unregistered this machine."),
            Err(error) => {
                warn!(%error, %lease, "Revoking the machine lease failed; it expires within its TTL.")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error(transparent)]
    Machine(#[from] crate::machine::MachineError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}
