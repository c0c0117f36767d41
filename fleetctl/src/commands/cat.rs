//! `cat`: print a unit's canonical text exactly, without an extra newline.

use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::CatArgs;
use crate::context::{Ctx, unit_file_of};
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: CatArgs) -> anyhow::Result<Exit> {
    let [arg] = args.units.as_slice() else {
        ctx.console.err("One unit file must be provided");
        return Ok(Exit::Failure);
    };
    let name = fleetctl_unit_name(arg);
    match ctx.client.unit(&name).await {
        Ok(Some(unit)) => {
            ctx.console.out_raw(&unit_file_of(&unit).serialize());
            Ok(Exit::Success)
        }
        Ok(None) => {
            ctx.console.err(&format!("Unit {name} not found"));
            Ok(Exit::Failure)
        }
        Err(error) => {
            ctx.console
                .err(&format!("Error retrieving Unit {name}: {error}"));
            Ok(Exit::Failure)
        }
    }
}
