//! `submit`: create units without scheduling them, from local files as the original did
//! (Documentation/compatibility.md, "Units from command-line arguments").

use std::sync::Arc;

use crate::cli::SubmitArgs;
use crate::commands::start::refuse_sign;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::units::{CreateCommand, lazy_create_units};
use crate::wait::Blocking;

pub async fn run(ctx: &Arc<Ctx>, args: SubmitArgs) -> anyhow::Result<Exit> {
    if args.sign {
        return Ok(refuse_sign(ctx));
    }
    if args.units.is_empty() {
        ctx.console.err("No units given");
        return Ok(Exit::Success);
    }
    // submit has no --block-attempts: its create-time wait has no limit.
    if let Err(error) = lazy_create_units(
        ctx,
        &args.units,
        CreateCommand::Submit,
        args.replace,
        Blocking::Forever,
    )
    .await
    {
        ctx.console.err(&format!("Error creating units: {error}"));
        return Ok(Exit::Failure);
    }
    Ok(Exit::Success)
}
