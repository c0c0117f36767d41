//! `restart`: a rolling restart, one unit after the other.
//!
//! Quirks fixed on purpose: a launched unit is set to `loaded` and we wait for
//! `loaded`, then `launched` and we wait for `launched` (the original waited
//! for `launched` both times). A global unit is restarted machine by machine
//! by the agents: fleetctl asks fleetd for a restart rollout, which the engine
//! drives like a rolling update (each machine's placement held at `loaded`
//! until its agent stopped the unit, then `launched` again and active for a
//! moment before the next machine), and follows it. Against a fleetd without
//! rollouts (an original one answers 404) it falls back to
//! `systemctl restart` on every machine that reports the unit (directly on
//! this machine, over SSH elsewhere); the original's global path did nothing.
//! See Documentation/compatibility.md, "Quirks of the original".

use fleet_model::TargetState;
use std::sync::Arc;
use std::time::Duration;

use fleet_api::rollout::{RolloutRequest, Strategy};

use fleet_api::entities::Unit;

use crate::cli::RestartArgs;
use crate::commands::update::follow;
use crate::context::{Ctx, find_units, is_global};
use crate::exit::Exit;
use crate::output::machine_id_legend;
use crate::ssh::remote::run_on_machine;
use crate::units::{CreateCommand, lazy_create_units};
use crate::wait::{Blocking, wait_for_unit_states};

/// `restart` has no `--ssh-port`; the original used the default.
const DEFAULT_SSH_PORT: u16 = 22;

async fn set_and_wait(
    ctx: &Ctx,
    unit: &Unit,
    state: TargetState,
    blocking: Blocking,
) -> Result<(), Exit> {
    if let Err(error) = ctx.client.set_unit_target_state(&unit.name, state).await {
        ctx.console.err(&format!(
            "Error setting target state of unit {}: {error}",
            unit.name
        ));
        return Err(Exit::Failure);
    }
    let errors = wait_for_unit_states(
        ctx,
        std::slice::from_ref(&unit.name),
        state,
        "restart",
        blocking,
    )
    .await;
    if errors.is_empty() {
        return Ok(());
    }
    for error in errors {
        ctx.console
            .err(&format!("Error waiting for units: {error}"));
    }
    Err(Exit::Failure)
}

/// Restarts a global unit machine by machine through the agents (a restart
/// rollout); `None` when fleetd has no rollouts, so the caller falls back.
/// `args` gives the rollout's limits: how long the unit must stay active on
/// one machine before the next machine's restart begins
/// (`--min-healthy-time`), and how long one machine may take
/// (`--healthy-deadline`).
async fn restart_global_by_agents(ctx: &Ctx, unit: &Unit, args: &RestartArgs) -> Option<Exit> {
    let request = RolloutRequest {
        name: unit.name.clone(),
        unit_file: String::new(),
        strategy: Strategy {
            max_parallel: 1,
            min_healthy_time_ms: millis(args.min_healthy_time),
            healthy_deadline_ms: millis(args.healthy_deadline),
            canary: 0,
            auto_revert: true,
        },
        restart: true,
    };
    match ctx.client.start_rollout(&request).await {
        Ok(_) => {}
        Err(error) if error.is_not_found() => return None,
        Err(error) => {
            ctx.console.err(&format!(
                "Error restarting global unit {}: {error}",
                unit.name
            ));
            return Some(Exit::Failure);
        }
    }
    ctx.console.out(&format!(
        "Restarting global unit {} machine by machine",
        unit.name
    ));
    match follow(ctx, &unit.name).await {
        Ok(Exit::Success) => {
            ctx.console
                .out(&format!("Triggered global unit {} restart", unit.name));
            Some(Exit::Success)
        }
        Ok(exit) => Some(exit),
        Err(error) => {
            ctx.console.err(&format!(
                "Error following the restart of {}: {error}",
                unit.name
            ));
            Some(Exit::Failure)
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn restart_global(ctx: &Ctx, unit: &Unit, args: &RestartArgs) -> Exit {
    if let Some(exit) = restart_global_by_agents(ctx, unit, args).await {
        return exit;
    }
    ctx.console.err(&format!(
        "fleetd has no restart through the agents; restarting {} with systemctl on each machine",
        unit.name
    ));
    restart_global_over_ssh(ctx, unit).await
}

async fn restart_global_over_ssh(ctx: &Ctx, unit: &Unit) -> Exit {
    let states = match ctx.client.unit_states(None, Some(&unit.name)).await {
        Ok(states) => states,
        Err(error) => {
            ctx.console.err(&format!(
                "Error retrieving states of unit {}: {error}",
                unit.name
            ));
            return Exit::Failure;
        }
    };
    let argv = ["systemctl", "restart", unit.name.as_str()].map(String::from);
    let mut exit = Exit::Success;
    for state in states {
        // Prints its own errors (SSH failures included).
        let machine_exit = run_on_machine(ctx, &state.machine_id, &argv, DEFAULT_SSH_PORT).await;
        if machine_exit != Exit::Success {
            ctx.console.err(&format!(
                "Error restarting global unit {} on machine {}",
                unit.name,
                machine_id_legend(&state.machine_id, false)
            ));
            exit = Exit::Failure;
        }
    }
    if exit == Exit::Success {
        ctx.console
            .out(&format!("Triggered global unit {} restart", unit.name));
    }
    exit
}

pub async fn run(ctx: &Arc<Ctx>, args: RestartArgs) -> anyhow::Result<Exit> {
    if args.units.is_empty() {
        ctx.console.err("No units given");
        return Ok(Exit::Success);
    }
    let blocking = Blocking::from_attempts(args.block_attempts);
    if let Err(error) =
        lazy_create_units(ctx, &args.units, CreateCommand::Restart, false, blocking).await
    {
        ctx.console.err(&format!("Error creating units: {error}"));
        return Ok(Exit::Failure);
    }
    let units = match find_units(ctx, &args.units).await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&error.to_string());
            return Ok(Exit::Failure);
        }
    };
    let mut exit = Exit::Success;
    for unit in &units {
        if is_global(unit) {
            if restart_global(ctx, unit, &args).await != Exit::Success {
                exit = Exit::Failure;
            }
            continue;
        }
        let phases: &[TargetState] = match unit.current() {
            Some(TargetState::Inactive) => {
                ctx.console.err(&format!(
                    "Unable to restart unit {} in state inactive",
                    unit.name
                ));
                continue;
            }
            Some(TargetState::Loaded) => &[TargetState::Launched],
            _ => &[TargetState::Loaded, TargetState::Launched],
        };
        for &state in phases {
            if let Err(failure) = set_and_wait(ctx, unit, state, blocking).await {
                return Ok(failure);
            }
        }
    }
    Ok(exit)
}
