//! [`Ctx`], what every command gets (config, API client, console, machine
//! cache), and the helpers several commands share. It sits below the
//! commands: command modules import from here, never from each other's
//! dispatcher.

use std::future::Future;
use std::sync::Arc;

use fleet_api::client::Client;
use fleet_api::entities::{Machine, Unit};
use fleet_systemd::unit::{Requirements, UnitFile, UnitOption};

use crate::cli::Config;
use crate::output::{self, Console};

/// How many API requests a batch command keeps in flight. Enough to hide
/// the per-request latency of 1,000-unit batches, small enough not to flood
/// fleetd.
const MAX_IN_FLIGHT: usize = 32;

/// How often an unknown machine ID may trigger a new machine listing.
const MACHINE_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The machine list behind [`Ctx::machines`] and when it was fetched.
#[derive(Default)]
struct MachineCache {
    machines: Option<Vec<Machine>>,
    fetched_at: Option<tokio::time::Instant>,
}

impl MachineCache {
    /// The machines, listing them first if that was never done; an error
    /// leaves the list empty (legends then show the ID without the IP).
    async fn fill(&mut self, client: &Client) -> &[Machine] {
        if self.machines.is_none() {
            self.machines = Some(client.machines().await.unwrap_or_default());
            self.fetched_at = Some(tokio::time::Instant::now());
        }
        self.machines.as_deref().unwrap_or_default()
    }
}

/// What every command gets.
pub struct Ctx {
    pub config: Config,
    pub client: Client,
    pub console: Console,
    /// Machines, fetched once on first use for legends (the original's
    /// `cachedMachineState`).
    machines: tokio::sync::Mutex<MachineCache>,
    /// The `--tunnel` connection, if any: machines are reached through it.
    pub tunnel: Option<Arc<crate::ssh::tunnel::Tunnel>>,
}

impl Ctx {
    pub fn new(config: Config, client: Client, console: Console) -> Ctx {
        Ctx {
            config,
            client,
            console,
            machines: tokio::sync::Mutex::new(MachineCache::default()),
            tunnel: None,
        }
    }

    /// Sets the `--tunnel` connection (see [`crate::ssh::tunnel`]).
    pub fn with_tunnel(mut self, tunnel: Option<Arc<crate::ssh::tunnel::Tunnel>>) -> Ctx {
        self.tunnel = tunnel;
        self
    }

    /// The cached machine list; an error leaves it empty (legends then show
    /// the ID without the IP), like the original.
    pub async fn machines(&self) -> Vec<Machine> {
        let mut cache = self.machines.lock().await;
        cache.fill(&self.client).await.to_vec()
    }

    /// The machine with this ID. An unknown ID refreshes the cache (the
    /// machine may have joined after it was filled), at most once per
    /// [`MACHINE_REFRESH_EVERY`] so that waiting on units of a machine that
    /// has gone does not list the machines on every poll.
    pub async fn machine(&self, machine_id: &str) -> Option<Machine> {
        let mut cache = self.machines.lock().await;
        let find = |machines: &[Machine]| machines.iter().find(|m| m.id == machine_id).cloned();
        if let Some(machine) = find(cache.fill(&self.client).await) {
            return Some(machine);
        }
        if cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < MACHINE_REFRESH_EVERY)
        {
            return None;
        }
        let fresh = self.client.machines().await.ok()?;
        let found = find(&fresh);
        cache.machines = Some(fresh);
        cache.fetched_at = Some(tokio::time::Instant::now());
        found
    }
}

/// The unit file of an API entity.
pub fn unit_file_of(unit: &Unit) -> UnitFile {
    UnitFile::from_options(
        unit.options
            .iter()
            .map(|o| UnitOption::new(o.section.clone(), o.name.clone(), o.value.clone()))
            .collect(),
    )
}

/// The original's `suToGlobal`: whether the unit has a truthy `Global=`.
pub fn is_global(unit: &Unit) -> bool {
    Requirements::of_unnamed(&unit_file_of(unit)).global
}

/// `Unit <n> <state>` plus ` on <legend>` when the unit's machine is known
/// (the original's `assertUnitState` message).
pub async fn unit_state_message(ctx: &Ctx, name: &str, state: &str, machine_id: &str) -> String {
    let mut message = format!("Unit {name} {state}");
    if !machine_id.is_empty()
        && let Some(machine) = ctx.machine(machine_id).await
    {
        message.push_str(" on ");
        message.push_str(&output::machine_full_legend(
            &machine.id,
            &machine.primary_ip,
            false,
        ));
    }
    message
}

/// Runs `f` on every item with at most [`MAX_IN_FLIGHT`] running at once and
/// returns the results in the items' order.
pub async fn concurrently<T, R, F, Fut>(ctx: &Arc<Ctx>, items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Arc<Ctx>, T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut handles = Vec::with_capacity(items.len());
    for item in items {
        let permits = Arc::clone(&permits);
        let task = f(Arc::clone(ctx), item);
        handles.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = permits.acquire_owned().await;
            task.await
        }));
    }
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(result) => results.push(result),
            // A panicking task is a bug; surface it instead of hiding it.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    results
}

/// The original's `findUnits`: the registry's units named by `args` (after
/// name mangling), in argument order; names not found are dropped.
pub async fn find_units(
    ctx: &Ctx,
    args: &[String],
) -> Result<Vec<Unit>, fleet_api::client::ClientError> {
    let units = ctx.client.units().await?;
    let mut found = Vec::new();
    for arg in args {
        let name = fleet_systemd::unit::fleetctl_unit_name(arg);
        if let Some(unit) = units.iter().find(|u| u.name == name) {
            found.push(unit.clone());
        }
    }
    Ok(found)
}
