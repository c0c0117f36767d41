//! `cordon`, `uncordon` and `drain`: taking a machine out of rotation.
//!
//! The state lives in etcd (`/fleet/x1/machines/<id>/cordon`) and the engine
//! acts on it, so a drain goes on when fleetctl is interrupted or the engine
//! fails over; `drain` only starts it and then watches
//! `/fleet/x1/machines/<id>/drain` until nothing movable is left and the moved
//! units run elsewhere.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_api::entities::Machine;
use fleet_api::x1::{CordonRequest, DrainStatus, DrainUnitState};
use tokio::time::Instant;

use crate::cli::{CordonArgs, DrainArgs, UncordonArgs};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{machine_id_legend, render_table};
use crate::ssh::resolve::{ResolveError, machine_by_prefix};

/// The exit status of a drain that had to leave units on the machine.
pub const UNITS_LEFT: Exit = Exit::Remote(2);

/// How often a blocking drain looks at its progress.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// How often a progress line repeats when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// `user@host` of whoever runs fleetctl, stored with the cordon and logged.
pub(crate) fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|host| host.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{user}@{host}")
}

/// The one live machine whose id starts with `prefix`, or a printed error.
async fn resolve(ctx: &Ctx, prefix: &str) -> Result<Machine, Exit> {
    let machines = match ctx.client.machines().await {
        Ok(machines) => machines,
        Err(error) => {
            ctx.console
                .err(&format!("Error retrieving list of machines: {error}"));
            return Err(Exit::Failure);
        }
    };
    match machine_by_prefix(&machines, prefix) {
        Ok(machine) => Ok(machine.clone()),
        Err(ResolveError::MoreThanOneMachine) => {
            ctx.console.err(&format!(
                "More than one machine has an ID starting with {prefix}"
            ));
            Err(Exit::Failure)
        }
        Err(_) => {
            ctx.console
                .err(&format!("No machine has an ID starting with {prefix}"));
            Err(Exit::Failure)
        }
    }
}

async fn put(ctx: &Ctx, machine: &Machine, draining: bool, reason: String) -> Result<(), Exit> {
    let request = CordonRequest {
        draining,
        by: who(),
        reason,
    };
    match ctx.client.cordon(&machine.id, &request).await {
        Ok(_) => Ok(()),
        Err(error) => {
            ctx.console
                .err(&format!("Error cordoning machine {}: {error}", machine.id));
            Err(Exit::Failure)
        }
    }
}

pub async fn run_cordon(ctx: &Ctx, args: CordonArgs) -> anyhow::Result<Exit> {
    let machine = match resolve(ctx, &args.machine).await {
        Ok(machine) => machine,
        Err(exit) => return Ok(exit),
    };
    if let Err(exit) = put(ctx, &machine, false, args.reason).await {
        return Ok(exit);
    }
    ctx.console.out(&format!("Machine {} cordoned", machine.id));
    Ok(Exit::Success)
}

pub async fn run_uncordon(ctx: &Ctx, args: UncordonArgs) -> anyhow::Result<Exit> {
    // A machine that is gone may still be cordoned: accept its full id too.
    let id = match resolve(ctx, &args.machine).await {
        Ok(machine) => machine.id,
        Err(_) if args.machine.len() == 32 => args.machine.clone(),
        Err(exit) => return Ok(exit),
    };
    match ctx.client.uncordon(&id).await {
        Ok(()) => {
            ctx.console.out(&format!("Machine {id} uncordoned"));
            Ok(Exit::Success)
        }
        Err(error) if error.is_not_found() => {
            ctx.console.err(&format!("Machine {id} is not cordoned"));
            Ok(Exit::Failure)
        }
        Err(error) => {
            ctx.console
                .err(&format!("Error uncordoning machine {id}: {error}"));
            Ok(Exit::Failure)
        }
    }
}

pub async fn run_drain(ctx: &Ctx, args: DrainArgs) -> anyhow::Result<Exit> {
    let machine = match resolve(ctx, &args.machine).await {
        Ok(machine) => machine,
        Err(exit) => return Ok(exit),
    };
    if let Err(exit) = put(ctx, &machine, true, args.reason).await {
        return Ok(exit);
    }
    ctx.console.out(&format!("Machine {} draining", machine.id));
    if args.no_block {
        return Ok(Exit::Success);
    }
    let deadline = args.timeout.map(|timeout| Instant::now() + timeout);
    let mut watch = DrainWatch::default();
    loop {
        match ctx.client.drain_status(&machine.id).await {
            Ok(status) => {
                if watch.observe(ctx, &status).await {
                    return Ok(watch.report(ctx, &machine.id));
                }
            }
            Err(error) => watch.failure = Some(error.to_string()),
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            ctx.console.progress_done();
            ctx.console.err(&format!(
                "Timed out waiting for the drain of {}; it goes on in the engine ({} units left to move)",
                machine.id, watch.n_left
            ));
            return Ok(Exit::Failure);
        }
        watch.progress(ctx, &machine.id);
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// What a blocking drain has seen.
#[derive(Default)]
struct DrainWatch {
    /// Units seen on the machine that will move.
    moving: BTreeSet<String>,
    /// Units that stay, with why.
    blocked: Vec<(String, String)>,
    n_left: usize,
    n_starting: usize,
    failure: Option<String>,
    last_plain: Option<Instant>,
}

impl DrainWatch {
    /// Takes in one status; `true` when the drain is over: nothing movable
    /// left, every moved unit reached its target state elsewhere, and the
    /// drained machine's agent has unloaded what left it (it reports no
    /// state for a unit no longer placed there).
    async fn observe(&mut self, ctx: &Ctx, status: &DrainStatus) -> bool {
        self.failure = None;
        self.blocked.clear();
        self.n_left = 0;
        for unit in &status.units {
            match unit.state {
                DrainUnitState::Waiting => {
                    self.moving.insert(unit.name.clone());
                    self.n_left += 1;
                }
                DrainUnitState::Blocked => {
                    self.blocked.push((unit.name.clone(), unit.reason.clone()));
                }
                DrainUnitState::Global => {}
            }
        }
        if !status.is_done() {
            return false;
        }
        // Moved units: placed elsewhere and at their desired state there.
        let Ok(units) = ctx.client.units().await else {
            return false;
        };
        self.n_starting = self
            .moving
            .iter()
            .filter(|name| {
                units.iter().any(|unit| {
                    &&unit.name == name
                        && (unit.machine_id == status.machine
                            || unit.current_state != unit.desired_state)
                })
            })
            .count();
        if self.n_starting > 0 {
            return false;
        }
        // A unit can be active on its new machine before the old machine's
        // agent has stopped it: until then it still runs on the drained one.
        let Ok(states) = ctx.client.unit_states(Some(&status.machine), None).await else {
            return false;
        };
        let placed_here: BTreeSet<&str> =
            status.units.iter().map(|unit| unit.name.as_str()).collect();
        self.n_starting = states
            .iter()
            .filter(|state| {
                state.machine_id == status.machine && !placed_here.contains(state.name.as_str())
            })
            .count();
        self.n_starting == 0
    }

    fn progress(&mut self, ctx: &Ctx, machine: &str) {
        let mut line = format!(
            "Draining {}: {} units to move, {} starting elsewhere, {} staying",
            machine_id_legend(machine, false),
            self.n_left,
            self.n_starting,
            self.blocked.len()
        );
        if let Some(failure) = &self.failure {
            line.push_str(&format!(" (last poll failed: {failure})"));
        }
        if ctx.console.stderr_is_terminal() {
            ctx.console.progress(&line);
        } else if self
            .last_plain
            .is_none_or(|last| last.elapsed() >= PLAIN_PROGRESS_EVERY)
        {
            ctx.console.err(&line);
            self.last_plain = Some(Instant::now());
        }
    }

    fn report(&self, ctx: &Ctx, machine: &str) -> Exit {
        ctx.console.progress_done();
        ctx.console.out(&format!(
            "Machine {machine} drained: {} units moved",
            self.moving.len()
        ));
        if self.blocked.is_empty() {
            return Exit::Success;
        }
        ctx.console.out(&format!(
            "{} units cannot move and stay on {machine}:",
            self.blocked.len()
        ));
        let mut rows = vec![vec!["UNIT".to_owned(), "REASON".to_owned()]];
        rows.extend(
            self.blocked
                .iter()
                .map(|(name, reason)| vec![name.clone(), reason.clone()]),
        );
        ctx.console.out_raw(&render_table(&rows));
        UNITS_LEFT
    }
}
