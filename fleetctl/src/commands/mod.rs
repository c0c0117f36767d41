//! The commands, one module per verb, and what they share: [`Ctx`] (config,
//! API client, console, machine cache) and the dispatcher [`run`].
//!
//! Each command prints its own messages (the original's exact texts) and
//! returns an [`Exit`]; an `Err` reaching [`run`] is unexpected and printed as
//! `error: …` with status 1.

mod cat;
mod destroy;
mod fd_forward;
mod journal;
mod list_machines;
mod list_unit_files;
mod list_units;
mod restart;
mod ssh;
mod start;
mod status;
mod stop;
mod submit;
mod verify;

use std::future::Future;
use std::sync::Arc;

use fleet_api::client::{Client, ClientTls, Endpoint};
use fleet_api::entities::{Machine, Unit};
use fleet_systemd::unit::{Requirements, UnitFile, UnitOption};

use crate::cli::{Command, Config};
use crate::exit::Exit;
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

/// Runs a parsed command.
pub async fn run(config: Config, command: Command, console: Console) -> Exit {
    // Commands that never talk to the API.
    match command {
        Command::Verify(_) => return verify::run(console),
        Command::FdForward(args) => return fd_forward::run(args, console).await,
        Command::Version => {
            console.out(&format!("fleetctl version {}", crate::cli::VERSION));
            return Exit::Success;
        }
        _ => {}
    }

    let client = match build_client(&config, console) {
        Ok(client) => client,
        Err(exit) => return exit,
    };
    let (client, tunnel) = match crate::ssh::tunnel::through_tunnel(&config, client).await {
        Ok(pair) => pair,
        Err(error) => {
            console.err(&format!(
                "Unable to initialize client: failed initializing SSH client: {error}"
            ));
            return Exit::Failure;
        }
    };
    let ctx = Arc::new(Ctx::new(config, client, console).with_tunnel(tunnel));
    let outcome = match command {
        Command::Cat(args) => cat::run(&ctx, args).await,
        Command::Destroy(args) => destroy::run(&ctx, args).await,
        Command::Journal(args) => journal::run(&ctx, args).await,
        Command::ListMachines(args) => list_machines::run(&ctx, args).await,
        Command::ListUnitFiles(args) => list_unit_files::run(&ctx, args).await,
        Command::ListUnits(args) => list_units::run(&ctx, args).await,
        Command::Load(args) => start::run_load(&ctx, args).await,
        Command::Restart(args) => restart::run(&ctx, args).await,
        Command::Ssh(args) => ssh::run(&ctx, args).await,
        Command::Start(args) => start::run_start(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Stop(args) => stop::run_stop(&ctx, args).await,
        Command::Submit(args) => submit::run(&ctx, args).await,
        Command::Unload(args) => stop::run_unload(&ctx, args).await,
        Command::Verify(_) | Command::FdForward(_) | Command::Version => Ok(Exit::Success),
    };
    outcome.unwrap_or_else(|error| {
        console.err(&format!("error: {error:#}"));
        Exit::Failure
    })
}

fn build_client(config: &Config, console: Console) -> Result<Client, Exit> {
    if !config.ignored_endpoints.is_empty() {
        console.err(&format!(
            "WARNING: multiple endpoints provided but only the first ({}) is used",
            config.endpoint
        ));
    }
    match Endpoint::parse(&config.endpoint) {
        Ok(endpoint) => {
            let tls = ClientTls {
                ca_file: config.ca_file.clone(),
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
            };
            match Client::with_tls(endpoint, &tls) {
                Ok(client) => Ok(client
                    .with_timeout(config.request_timeout)
                    .with_token(config.token.clone())),
                Err(error) => {
                    console.err(&format!("Unable to initialize client: {error}"));
                    Err(Exit::Failure)
                }
            }
        }
        Err(error) => {
            console.err(&format!("Unable to initialize client: {error}"));
            Err(Exit::Failure)
        }
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
