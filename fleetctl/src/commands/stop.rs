//! `stop` and `unload` (spec 7.6): lower the desired state of units that are
//! in the registry and wait for it.

use std::sync::Arc;

use crate::cli::BlockingUnitsArgs;
use crate::commands::{Ctx, find_units, is_global};
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
    let mut stopping = Vec::new();
    for unit in &units {
        let global = is_global(unit);
        if !global {
            if unit.current_state == "inactive" {
                ctx.console.err(&format!(
                    "Unable to stop unit {} in state inactive",
                    unit.name
                ));
                return Ok(Exit::Failure);
            }
            if unit.current_state == "loaded" {
                continue;
            }
        }
        if let Err(error) = ctx.client.set_unit_target_state(&unit.name, "loaded").await {
            ctx.console.err(&format!(
                "Error setting target state of unit {}: {error}",
                unit.name
            ));
            return Ok(Exit::Failure);
        }
        if global {
            ctx.console
                .out(&format!("Triggered global unit {} stop", unit.name));
        } else {
            stopping.push(unit.name.clone());
        }
    }
    let errors = wait_for_unit_states(
        ctx,
        &stopping,
        "loaded",
        "stop",
        Blocking::from_args(&args.block),
    )
    .await;
    for error in &errors {
        ctx.console
            .err(&format!("Error waiting for units: {error}"));
    }
    if errors.is_empty() {
        ctx.console.err(&format!(
            "Successfully stopped units {}.",
            go_list(&stopping)
        ));
        Ok(Exit::Success)
    } else {
        ctx.console.err(&format!(
            "Failed to stop units {}. exit status: 1",
            go_list(&stopping)
        ));
        Ok(Exit::Failure)
    }
}

pub async fn run_unload(ctx: &Arc<Ctx>, args: BlockingUnitsArgs) -> anyhow::Result<Exit> {
    let units = match find_units(ctx, &args.units).await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&error.to_string());
            return Ok(Exit::Failure);
        }
    };
    let mut waiting = Vec::new();
    for unit in &units {
        let global = is_global(unit);
        if !global && unit.current_state == "inactive" {
            continue;
        }
        if let Err(error) = ctx
            .client
            .set_unit_target_state(&unit.name, "inactive")
            .await
        {
            ctx.console.err(&format!(
                "Error setting target state of unit {}: {error}",
                unit.name
            ));
            return Ok(Exit::Failure);
        }
        if global {
            ctx.console
                .out(&format!("Triggered global unit {} unload", unit.name));
        } else {
            waiting.push(unit.name.clone());
        }
    }
    let errors = wait_for_unit_states(
        ctx,
        &waiting,
        "inactive",
        "unload",
        Blocking::from_args(&args.block),
    )
    .await;
    for error in &errors {
        ctx.console
            .err(&format!("Error waiting for units: {error}"));
    }
    if errors.is_empty() {
        ctx.console.err(&format!(
            "Successfully unloaded units {}.",
            go_list(&waiting)
        ));
        Ok(Exit::Success)
    } else {
        ctx.console.err(&format!(
            "Failed to unload units {}. exit status: 1",
            go_list(&waiting)
        ));
        Ok(Exit::Failure)
    }
}
