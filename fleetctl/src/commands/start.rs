//! `load` and `start`: create missing units from local files, set the desired
//! state, and wait (Documentation/compatibility.md, "Units from command-line arguments"
//! and "Blocking").
//!
//! A quirk fixed on purpose: with `--no-block`, `start` prints `Triggered unit <n> start`
//! once, not twice (Documentation/compatibility.md, "Quirks of the original").

use fleet_model::TargetState;
use std::collections::HashMap;
use std::sync::Arc;

use fleet_api::entities::Unit;
use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::CreateArgs;
use crate::context::{Ctx, concurrently, is_global};
use crate::exit::Exit;
use crate::units::{
    CreateCommand, lazy_create_units, listed_units, lookup_unit, send_units, settle_answers,
    to_send,
};
use crate::wait::{Blocking, wait_for_systemd_active, wait_for_unit_states};

/// The deprecated `--sign` flag: the original refuses it with status 2.
pub fn refuse_sign(ctx: &Ctx) -> Exit {
    ctx.console
        .err("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.");
    Exit::Verify
}

/// The original's `setTargetStateOfUnits`: sets `state` on every named unit
/// not already there; returns the units it changed (as they were before).
///
/// `known` holds units this command just created: they are not fetched again.
/// The others are looked up by one listing when there are many of them.
///
/// # Errors
/// The first failure in argument order.
pub async fn set_target_state_of_units(
    ctx: &Arc<Ctx>,
    names: Vec<String>,
    known: Vec<Unit>,
    state: TargetState,
) -> Result<Vec<Unit>, String> {
    let known: Arc<HashMap<String, Unit>> = Arc::new(
        known
            .into_iter()
            .map(|unit| (unit.name.clone(), unit))
            .collect(),
    );
    let n_unknown = names
        .iter()
        .filter(|name| !known.contains_key(*name))
        .count();
    let listed = listed_units(ctx, n_unknown).await?;
    let results = concurrently(ctx, names, move |ctx, name| {
        let known = Arc::clone(&known);
        let listed = listed.clone();
        async move {
            let fetched = match known.get(&name) {
                Some(unit) => Ok(Some(unit.clone())),
                None => lookup_unit(&ctx, listed.as_deref(), &name).await,
            };
            let unit = match fetched {
                Ok(Some(unit)) => unit,
                Ok(None) => return Err(format!("unable to find unit {name}")),
                Err(error) => {
                    return Err(format!(
                        "error retrieving unit {name} from registry: {error}"
                    ));
                }
            };
            if unit.desired() == Some(state) {
                return Ok(None);
            }
            Ok(Some(unit))
        }
    })
    .await;
    let results = set_target_states(ctx, results, state).await;
    let mut triggered = Vec::new();
    for result in results {
        if let Some(unit) = result? {
            triggered.push(unit);
        }
    }
    Ok(triggered)
}

/// Sets `state` on the units in `to_change` (`Ok(Some(unit))`): in batch
/// requests when there are many, else (or from the original fleetd) one
/// `PUT` each. Results stay in argument order.
async fn set_target_states(
    ctx: &Arc<Ctx>,
    to_change: Vec<Result<Option<Unit>, String>>,
    state: TargetState,
) -> Vec<Result<Option<Unit>, String>> {
    let changes: Vec<Unit> = to_send(&to_change)
        .map(|unit| Unit {
            name: unit.name.clone(),
            desired_state: state.to_string(),
            ..Unit::default()
        })
        .collect();
    let answers = send_units(ctx, changes, move |ctx, unit| async move {
        ctx.client
            .set_unit_target_state(&unit.name, state)
            .await
            .map_err(|error| error.to_string())
    })
    .await;
    settle_answers(to_change, answers, |unit, answer| {
        answer.map(|()| Some(unit))
    })
}

/// Splits triggered units into the global ones (announced, never waited on)
/// and the names to wait for.
fn announce_global(ctx: &Ctx, triggered: &[Unit], verb: &str) -> Vec<String> {
    let mut waiting = Vec::new();
    for unit in triggered {
        if is_global(unit) {
            ctx.console
                .out(&format!("Triggered global unit {} {verb}", unit.name));
        } else {
            waiting.push(unit.name.clone());
        }
    }
    waiting
}

async fn create_and_trigger(
    ctx: &Arc<Ctx>,
    args: &CreateArgs,
    command: CreateCommand,
    state: TargetState,
) -> Result<Vec<Unit>, Exit> {
    let blocking = Blocking::from_args(&args.block);
    let created = match lazy_create_units(ctx, &args.units, command, args.replace, blocking).await {
        Ok(created) => created,
        Err(error) => {
            ctx.console.err(&format!("Error creating units: {error}"));
            return Err(Exit::Failure);
        }
    };
    let mut names: Vec<String> = Vec::new();
    for name in args.units.iter().map(|arg| fleetctl_unit_name(arg)) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match set_target_state_of_units(ctx, names, created, state).await {
        Ok(triggered) => Ok(triggered),
        Err(error) => {
            let verb = if command == CreateCommand::Load {
                "loading"
            } else {
                "starting"
            };
            ctx.console.err(&format!("Error {verb} units: {error}"));
            Err(Exit::Failure)
        }
    }
}

fn report_wait_errors(ctx: &Ctx, errors: &[String]) -> bool {
    for error in errors {
        ctx.console
            .err(&format!("Error waiting for units: {error}"));
    }
    errors.is_empty()
}

pub async fn run_load(ctx: &Arc<Ctx>, args: CreateArgs) -> anyhow::Result<Exit> {
    if args.sign {
        return Ok(refuse_sign(ctx));
    }
    if args.units.is_empty() {
        ctx.console.err("No units given");
        return Ok(Exit::Success);
    }
    if args.dry_run {
        return Ok(super::plan::dry_run(ctx, &args.units, args.replace).await);
    }
    let triggered =
        match create_and_trigger(ctx, &args, CreateCommand::Load, TargetState::Loaded).await {
            Ok(triggered) => triggered,
            Err(exit) => return Ok(exit),
        };
    let loading = announce_global(ctx, &triggered, "load");
    let blocking = Blocking::from_args(&args.block);
    let errors = wait_for_unit_states(ctx, &loading, TargetState::Loaded, "load", blocking).await;
    if !report_wait_errors(ctx, &errors) {
        ctx.console
            .err("Error waiting for unit states, exit status: 1");
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}

pub async fn run_start(ctx: &Arc<Ctx>, args: CreateArgs) -> anyhow::Result<Exit> {
    if args.sign {
        return Ok(refuse_sign(ctx));
    }
    if args.units.is_empty() {
        ctx.console.err("No units given");
        return Ok(Exit::Success);
    }
    if args.dry_run {
        return Ok(super::plan::dry_run(ctx, &args.units, args.replace).await);
    }
    let triggered =
        match create_and_trigger(ctx, &args, CreateCommand::Start, TargetState::Launched).await {
            Ok(triggered) => triggered,
            Err(exit) => return Ok(exit),
        };
    let starting = announce_global(ctx, &triggered, "start");
    let blocking = Blocking::from_args(&args.block);
    let errors =
        wait_for_unit_states(ctx, &starting, TargetState::Launched, "start", blocking).await;
    if !report_wait_errors(ctx, &errors) {
        ctx.console
            .err("Error waiting for unit states, exit status: 1");
        return Ok(Exit::Failure);
    }
    let errors = wait_for_systemd_active(ctx, &starting, blocking).await;
    if !report_wait_errors(ctx, &errors) {
        ctx.console
            .err("Error waiting for systemd unit states, err: 1");
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}
