//! `stop` and `unload`: lower the desired state of units that are
//! in the registry and wait for it.

use fleet_model::TargetState;
use std::sync::Arc;

use fleet_api::entities::Unit;

use crate::cli::BlockingUnitsArgs;
use crate::context::{Ctx, find_units, is_global};
use crate::exit::Exit;
use crate::output::go_list;
use crate::wait::{Blocking, wait_for_unit_states};

pub async fn run_stop(ctx: &Arc<Ctx>, args: BlockingUnitsArgs) -> anyhow::Result<Exit> {
    let units = match find_units(ctx, &args.units).await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&error.to_string());
            return Ok(Exit::Failure);
        }
    };
    if units.is_empty() {
        ctx.console.err("Units not found in registry");
        return Ok(Exit::Success);
    }
    let mut to_stop = Vec::new();
    for unit in &units {
        if !is_global(unit) {
            if unit.current() == Some(TargetState::Inactive) {
                ctx.console.err(&format!(
                    "Unable to stop unit {} in state inactive",
                    unit.name
                ));
                return Ok(Exit::Failure);
            }
            if unit.current() == Some(TargetState::Loaded) {
                continue;
            }
        }
        to_stop.push(unit);
    }
    let lowering = Lowering {
        target: TargetState::Loaded,
        verb: "stop",
        done: "stopped",
    };
    Ok(lowering
        .run(ctx, &to_stop, Blocking::from_args(&args.block))
        .await)
}

pub async fn run_unload(ctx: &Arc<Ctx>, args: BlockingUnitsArgs) -> anyhow::Result<Exit> {
    let units = match find_units(ctx, &args.units).await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&error.to_string());
            return Ok(Exit::Failure);
        }
    };
    let to_unload: Vec<&Unit> = units
        .iter()
        .filter(|unit| is_global(unit) || unit.current() != Some(TargetState::Inactive))
        .collect();
    let lowering = Lowering {
        target: TargetState::Inactive,
        verb: "unload",
        done: "unloaded",
    };
    Ok(lowering
        .run(ctx, &to_unload, Blocking::from_args(&args.block))
        .await)
}

/// One lowering of desired state: the target and the words of its messages.
struct Lowering {
    target: TargetState,
    verb: &'static str,
    done: &'static str,
}

impl Lowering {
    /// Sets the target on every unit, waits for the non-global ones (global
    /// units are never waited on, as in the original) and prints the original's lines.
    async fn run(&self, ctx: &Arc<Ctx>, units: &[&Unit], blocking: Blocking) -> Exit {
        let mut waiting = Vec::new();
        for unit in units {
            if let Err(error) = ctx
                .client
                .set_unit_target_state(&unit.name, self.target)
                .await
            {
                ctx.console.err(&format!(
                    "Error setting target state of unit {}: {error}",
                    unit.name
                ));
                return Exit::Failure;
            }
            if is_global(unit) {
                ctx.console.out(&format!(
                    "Triggered global unit {} {}",
                    unit.name, self.verb
                ));
            } else {
                waiting.push(unit.name.clone());
            }
        }
        let errors = wait_for_unit_states(ctx, &waiting, self.target, self.verb, blocking).await;
        for error in &errors {
            ctx.console
                .err(&format!("Error waiting for units: {error}"));
        }
        if errors.is_empty() {
            ctx.console.err(&format!(
                "Successfully {} units {}.",
                self.done,
                go_list(&waiting)
            ));
            Exit::Success
        } else {
            ctx.console.err(&format!(
                "Failed to {} units {}. exit status: 1",
                self.verb,
                go_list(&waiting)
            ));
            Exit::Failure
        }
    }
}
