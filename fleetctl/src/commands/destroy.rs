//! `destroy`: delete units and, unless `--no-block`, wait until
//! they are gone from the registry and from every machine.
//!
//! A quirk fixed on purpose: the original waited only when `--no-block` was given
//! (Documentation/compatibility.md, "Quirks of the original").

use std::sync::Arc;

use crate::cli::DestroyArgs;
use crate::context::{Ctx, concurrently, find_units};
use crate::exit::Exit;
use crate::wait::{Blocking, wait_for_removal};

pub async fn run(ctx: &Arc<Ctx>, args: DestroyArgs) -> anyhow::Result<Exit> {
    if args.units.is_empty() {
        ctx.console.err("No units given");
        return Ok(Exit::Success);
    }
    let units = match find_units(ctx, &args.units).await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&error.to_string());
            return Ok(Exit::Failure);
        }
    };
    let names: Vec<String> = units.into_iter().map(|u| u.name).collect();
    let results = concurrently(ctx, names.clone(), |ctx, name| async move {
        match ctx.client.destroy_unit(&name).await {
            // Somebody else destroyed it first: that is what we wanted.
            Err(error) if error.is_not_found() => Ok(()),
            other => other,
        }
    })
    .await;
    let mut exit = Exit::Success;
    let mut destroyed = Vec::new();
    for (name, result) in names.into_iter().zip(results) {
        match result {
            Ok(()) => {
                ctx.console.out(&format!("Destroyed {name}"));
                destroyed.push(name);
            }
            Err(error) => {
                ctx.console.err(&format!("Error destroying units: {error}"));
                exit = Exit::Failure;
            }
        }
    }
    let errors = wait_for_removal(ctx, &destroyed, Blocking::from_args(&args.block)).await;
    for error in &errors {
        ctx.console
            .err(&format!("Error waiting for units: {error}"));
        exit = Exit::Failure;
    }
    Ok(exit)
}
