//! The server: wires fleetd's parts together and owns their lifecycle.
//!
//! One *generation* is the set of components built from one config: the
//! registry handle, the [`Heart`], the engine (unless `disable_engine`), the
//! agent (unless `disable_agent`) and the API router. Each runs as
//! `run(shutdown)` on the generation's [`TaskTracker`] with a child token.
//! The API listeners outlive generations: they serve an [`ApiSwitch`] into
//! which each generation's router is swapped.
//!
//! Signals:
//! - SIGTERM / SIGINT: graceful stop (the heart unregisters and revokes the
//!   lease; units keep running unless `stop_units_on_shutdown`, the agent's
//!   call), exit 0. A second signal during the stop exits at once.
//! - SIGHUP: "Reloading configuration from <path>", the same loader again; on
//!   error the old config keeps running, else "Restarting server
//!   components": the old generation stops cleanly and a new one starts on
//!   the same listeners (the original left the old one running). If the old one does not stop
//!   within [`STOP_GRACE`], fleetd exits non-zero instead: two generations
//!   (two agents on one machine) never run side by side.
//!
//! A component that fails, panics or ends unasked (see [`crate::supervise`])
//! stops the generation and fleetd exits non-zero, for systemd to restart it.
//! - SIGUSR1: a state dump at INFO.
//!
//! systemd hears READY=1 once this machine is first registered (or after a
//! minute without etcd, so its start timeout does not kill a waiting fleetd)
//! and STOPPING=1 when the stop begins.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use fleet_api::server::{ApiState, Availability};
use fleet_registry::{MachineId, Registry};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::agent::{Agent, Fence};
use crate::config::{Config, DEFAULT_CONFIG_PATH, Loaded};
use crate::engine::Engine;
use crate::etcd_role::EtcdRole;
use crate::heart::{Heart, HeartConfig, Presence};
use crate::listeners::{ApiSwitch, Listeners};
use crate::machine::{LocalMachine, VERSION, read_machine_id};
use crate::supervise::{Failures, supervised};

/// How long a generation's components get to stop before we give up on them.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// How long fleetd waits for its first registration before it tells
/// systemd READY=1 anyway (below systemd's default 90 s start timeout).
const READY_FALLBACK: Duration = Duration::from_secs(60);

/// How long the listeners get to finish in-flight requests on exit.
const LISTENER_GRACE: Duration = Duration::from_secs(5);

/// What [`run`] needs besides the first config.
pub struct ServerOptions {
    /// The `-config` path, if one was given (reloads read the same one).
    pub explicit_config: Option<PathBuf>,
    /// The environment the loader reads `FLEET_*` from on reload.
    pub env: HashMap<String, String>,
}

/// Runs fleetd until SIGTERM/SIGINT (or a component fails).
///
/// # Errors
/// Start-up failures (no machine id, unusable registry config, listeners
/// that cannot be bound), a component that fails for good, or a second
/// signal that cut the graceful stop short.
pub async fn run(loaded: Loaded, options: ServerOptions) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let availability = Availability::new();
    let ready_sent = Arc::new(AtomicBool::new(false));
    let mut config = loaded.config;

    let pieces = Pieces::prepare(&config).await?;
    let listeners = Listeners::open(&config.api_listen).context("opening the API listeners")?;
    let gate = crate::api_gate::from_config(&config, &listeners.listeners)?;
    let connections = Arc::new(tokio::sync::Semaphore::new(
        crate::listeners::MAX_CONNECTIONS,
    ));
    let mut generation = Generation::start(&config, pieces, &availability, &ready_sent);
    let switch = ApiSwitch::new(generation.router.clone());

    let listener_shutdown = CancellationToken::new();
    let listener_tasks = TaskTracker::new();
    let created_socket_files = listeners.created_socket_files.clone();
    for listener in listeners.listeners {
        listener_tasks.spawn(crate::listeners::serve(
            listener,
            switch.service(),
            Arc::clone(&gate),
            Arc::clone(&connections),
            config.api_idle_timeout,
            listener_shutdown.child_token(),
        ));
    }
    listener_tasks.close();

    // Why the loop ended; `Interrupted` skips the graceful stop.
    enum Exit {
        Stop,
        Failed(String),
        Interrupted,
    }
    let exit = loop {
        tokio::select! {
            _ = signals.terminate.recv() => { info!("Received SIGTERM; stopping."); break Exit::Stop; }
            _ = signals.interrupt.recv() => { info!("Received SIGINT; stopping."); break Exit::Stop; }
            () = generation.failures.cancelled() => break Exit::Failed(generation.failure()),
            _ = signals.hangup.recv() => {
                let path = options.explicit_config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
                info!("Reloading configuration from {}", path.display());
                let Some((new_config, pieces)) = reload(&options, &config).await else { continue };
                info!("Restarting server components");
                match generation.stop(&mut signals).await {
                    Stopped::All => {}
                    Stopped::Interrupted => break Exit::Interrupted,
                    // Two agents must never act on one machine: rather than
                    // start a second generation beside a stuck one, exit and
                    // let systemd start a clean fleetd.
                    Stopped::TimedOut => break Exit::Failed(format!(
                        "the old components did not stop within {STOP_GRACE:?} of SIGHUP; exiting instead of running two generations"
                    )),
                }
                generation = Generation::start(&new_config, pieces, &availability, &ready_sent);
                switch.replace(generation.router.clone());
                crate::api_gate::reload(&gate, &new_config);
                config = new_config;
            }
            _ = signals.user1.recv() => generation.dump(),
        }
    };

    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let stopped = match exit {
        Exit::Interrupted => false,
        Exit::Stop | Exit::Failed(_) => generation.stop(&mut signals).await != Stopped::Interrupted,
    };
    availability.set(false);
    listener_shutdown.cancel();
    if stopped
        && tokio::time::timeout(LISTENER_GRACE, listener_tasks.wait())
            .await
            .is_err()
    {
        warn!(grace = ?LISTENER_GRACE, "API connections still open; closing them.");
    }
    for path in &created_socket_files {
        if let Err(error) = std::fs::remove_file(path) {
            debug!(%error, path = %path.display(), "Removing the API socket file failed.");
        }
    }
    if let Exit::Failed(failure) = exit {
        anyhow::bail!(failure);
    }
    if !stopped {
        anyhow::bail!("a second signal cut the graceful stop short");
    }
    info!("fleetd stopped.");
    Ok(())
}

/// Loads the config again; `None` (after logging why) keeps the old one.
async fn reload(options: &ServerOptions, old: &Config) -> Option<(Config, Pieces)> {
    let loaded = match Config::load(options.explicit_config.as_deref(), &options.env) {
        Ok(loaded) => loaded,
        Err(error) => {
            error!("Failed to reload the configuration, keeping the old one: {error}");
            return None;
        }
    };
    for notice in &loaded.notices {
        warn!("{notice}");
    }
    if loaded.config.api_listen != old.api_listen {
        warn!(
            "The API listeners cannot change on reload (they are kept); restart fleetd to apply api_listen."
        );
    }
    match Pieces::prepare(&loaded.config).await {
        Ok(pieces) => Some((loaded.config, pieces)),
        Err(error) => {
            error!("Failed to reload the configuration, keeping the old one: {error:#}");
            None
        }
    }
}

/// What a generation needs that can fail, built before an old generation
/// is stopped so a bad reload leaves the old one running.
struct Pieces {
    machine: MachineId,
    registry: Registry,
    role: EtcdRole,
}

impl Pieces {
    async fn prepare(config: &Config) -> anyhow::Result<Pieces> {
        let machine = read_machine_id(&config.machine_id_file)?;
        let registry = crate::discovered::connect(config).await?;
        let role = crate::etcd_role::learn(config, &registry).await;
        Ok(Pieces {
            machine,
            registry,
            role,
        })
    }
}

/// How [`Generation::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopped {
    All,
    /// Some component outlived [`STOP_GRACE`]: it may still act.
    TimedOut,
    /// A second SIGTERM/SIGINT cut the wait short.
    Interrupted,
}

/// The components built from one config.
struct Generation {
    machine: MachineId,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// What a component that failed, panicked or ended early reported.
    failures: Failures,
    presence: Presence,
    router: axum::Router,
    engine_enabled: bool,
    agent_enabled: bool,
}

impl Generation {
    fn start(
        config: &Config,
        pieces: Pieces,
        availability: &Availability,
        ready_sent: &Arc<AtomicBool>,
    ) -> Generation {
        let Pieces {
            machine,
            registry,
            role,
        } = pieces;
        // A worker publishes and behaves as `disable_engine=true`.
        let worker_config;
        let config = if role == EtcdRole::Worker {
            worker_config = Config {
                disable_engine: true,
                ..config.clone()
            };
            &worker_config
        } else {
            config
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let failures = Failures::new();

        let (heart, presence) = Heart::new(
            HeartConfig::for_ttl(config.agent_ttl),
            registry.clone(),
            LocalMachine::from_config(config),
        );
        // Units keep running through a clean stop unless the agent stops them.
        let fence = config.fence().map(Fence::new);
        let heart = heart
            .with_clean_stop_mark(!config.disable_agent && !config.stop_units_on_shutdown)
            .with_fence(fence.clone());
        let spawn =
            |name: &'static str,
             task: std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>| {
                let span = info_span!("component", name, machine = %machine);
                tasks.spawn(
                    supervised(name, task, shutdown.clone(), failures.clone()).instrument(span),
                );
            };
        spawn("heart", Box::pin(heart.run(shutdown.child_token())));
        tasks.spawn(track_availability(
            presence.clone(),
            availability.clone(),
            Arc::clone(ready_sent),
            shutdown.child_token(),
        ));
        if config.disable_engine {
            info!("The engine is disabled on this machine (disable_engine).");
        } else {
            // Machines vanishing within one agent TTL is what the breaker counts.
            let engine = Engine::new(config.engine(), registry.clone(), machine.clone())
                .with_breaker_window(config.agent_ttl);
            spawn("engine", Box::pin(engine.run(shutdown.child_token())));
        }
        if config.disable_agent {
            info!("The agent is disabled on this machine (disable_agent).");
        } else {
            let agent = Agent::new(
                config.agent(),
                registry.clone(),
                machine.clone(),
                presence.clone(),
            )
            .with_fence(fence.clone());
            spawn("agent", Box::pin(agent.run(shutdown.child_token())));
            match fence {
                Some(fence) => {
                    info!(config = ?fence.config(), "Self-fencing is on: cut off from etcd, this machine stops its movable units before the engine may move them.");
                    spawn(
                        "fence",
                        Box::pin(fence.run(registry.clone(), shutdown.child_token())),
                    );
                }
                None => info!("Self-fencing is off on this machine (on_partition=keep-running)."),
            }
            let health = crate::agent::health::HealthChecks::new(
                registry.clone(),
                machine.clone(),
                crate::agent::UnitsDir::new(config.agent().units_directory),
                presence.clone(),
            );
            spawn(
                "health checks",
                Box::pin(health.run(shutdown.child_token())),
            );
        }
        tasks.close();

        let x1_router = crate::x1::router(registry.clone(), availability.clone());
        let logs_router = crate::unit_logs::router(
            registry.clone(),
            availability.clone(),
            crate::unit_logs::LogsConfig {
                machine: machine.clone(),
                peer_tls: crate::unit_logs::peer::client_tls(
                    &config.api_peer_cert_file,
                    &config.api_peer_key_file,
                    &config.api_peer_ca_file,
                ),
                user_units: config.systemd_user,
            },
        );
        let router = fleet_api::server::router(ApiState {
            registry: registry.clone(),
            token_limit: config.token_limit,
            version: VERSION.to_owned(),
            available: availability.clone(),
        })
        .merge(x1_router)
        .merge(logs_router);
        let router = match role {
            EtcdRole::ControlPlane => router,
            EtcdRole::Worker => {
                fleet_api::server::worker::read_only(router, registry, machine.clone())
            }
        };
        Generation {
            machine,
            shutdown,
            tasks,
            failures,
            presence,
            router,
            engine_enabled: !config.disable_engine,
            agent_enabled: !config.disable_agent,
        }
    }

    fn failure(&self) -> String {
        self.failures
            .first()
            .unwrap_or_else(|| "a component failed".to_owned())
    }

    /// Stops every component and waits for them (up to [`STOP_GRACE`]).
    async fn stop(&self, signals: &mut Signals) -> Stopped {
        self.shutdown.cancel();
        tokio::select! {
            () = self.tasks.wait() => { debug!("All components stopped."); Stopped::All }
            () = tokio::time::sleep(STOP_GRACE) => {
                error!(grace = ?STOP_GRACE, components_running = self.tasks.len(), "Components still running after the grace period.");
                Stopped::TimedOut
            }
            _ = signals.terminate.recv() => { warn!("Second signal; exiting now."); Stopped::Interrupted }
            _ = signals.interrupt.recv() => { warn!("Second signal; exiting now."); Stopped::Interrupted }
        }
    }

    /// SIGUSR1: what this fleetd is doing, at INFO.
    fn dump(&self) {
        info!(
            machine = %self.machine,
            lease = ?*self.presence.borrow(),
            engine = self.engine_enabled,
            agent = self.agent_enabled,
            components_running = self.tasks.len(),
            "State dump."
        );
    }
}

/// Turns presence into API availability (503 while unregistered) and tells
/// systemd READY=1 the first time this machine is registered, or after
/// [`READY_FALLBACK`] without registration (etcd down at boot), so systemd's
/// start timeout never kills a fleetd that is only waiting for etcd.
async fn track_availability(
    mut presence: Presence,
    availability: Availability,
    ready_sent: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let ready_deadline = tokio::time::Instant::now() + READY_FALLBACK;
    loop {
        let lease = *presence.borrow_and_update();
        availability.set(lease.is_some());
        if lease.is_some() {
            notify_systemd(&[sd_notify::NotifyState::Status("Registered in etcd")]);
            if !ready_sent.swap(true, Ordering::AcqRel) {
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        } else {
            notify_systemd(&[sd_notify::NotifyState::Status(
                "Not registered in etcd; retrying",
            )]);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = presence.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(ready_deadline), if !ready_sent.load(Ordering::Acquire) => {
                if !ready_sent.swap(true, Ordering::AcqRel) {
                    warn!(after = ?READY_FALLBACK, "Not registered in etcd yet; telling systemd we are ready anyway (the API answers 503).");
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
    }
    availability.set(false);
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this does nothing; a failure only matters to Type=notify.
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "Notifying systemd failed.");
    }
}

/// The signals fleetd handles, registered once for the whole run.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        let register =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("handling {name}"));
        Ok(Signals {
            terminate: register(SignalKind::terminate(), "SIGTERM")?,
            interrupt: register(SignalKind::interrupt(), "SIGINT")?,
            hangup: register(SignalKind::hangup(), "SIGHUP")?,
            user1: register(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }
}
