//! `status`: `systemctl status -l <unit>` on each unit's machine.
//!
//! Runs locally when the unit's machine is this host, as the original did, else over
//! SSH ([`crate::ssh::remote::run_on_machine`]). `--no-block` is accepted
//! and ignored because the original's functional tests pass it.

use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::StatusArgs;
use crate::context::{Ctx, is_global};
use crate::exit::Exit;

async fn status_on(ctx: &Ctx, machine_id: &str, name: &str, ssh_port: u16) -> Exit {
    let argv = ["systemctl", "status", "-l", name].map(String::from);
    crate::ssh::remote::run_on_machine(ctx, machine_id, &argv, ssh_port).await
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<Exit> {
    for (idx, arg) in args.units.iter().enumerate() {
        let name = fleetctl_unit_name(arg);
        if idx > 0 {
            ctx.console.out("");
        }
        let unit = match ctx.client.unit(&name).await {
            Ok(Some(unit)) => unit,
            Ok(None) => {
                ctx.console.err(&format!("Unit {name} does not exist."));
                return Ok(Exit::Failure);
            }
            Err(error) => {
                ctx.console.err(&format!("Error retrieving unit: {error}"));
                return Ok(Exit::Failure);
            }
        };
        if is_global(&unit) {
            // Every machine that reports the unit (the original's global path did nothing).
            let states = match ctx.client.unit_states(None, Some(&name)).await {
                Ok(states) => states,
                Err(error) => {
                    ctx.console.err(&format!("Error retrieving unit: {error}"));
                    return Ok(Exit::Failure);
                }
            };
            if states.is_empty() {
                ctx.console
                    .err(&format!("Unit {name} does not appear to be loaded."));
                return Ok(Exit::Failure);
            }
            for (state_idx, state) in states.iter().enumerate() {
                if state_idx > 0 {
                    ctx.console.out("");
                }
                let exit = status_on(ctx, &state.machine_id, &name, args.ssh_port).await;
                if exit != Exit::Success {
                    return Ok(exit);
                }
            }
            continue;
        }
        if unit.current_state == "inactive" || unit.machine_id.is_empty() {
            ctx.console
                .err(&format!("Unit {name} does not appear to be loaded."));
            return Ok(Exit::Failure);
        }
        let exit = status_on(ctx, &unit.machine_id, &name, args.ssh_port).await;
        if exit != Exit::Success {
            return Ok(exit);
        }
    }
    Ok(Exit::Success)
}
