//! `status`: `systemctl status -l <unit>` on each unit's machine.
//!
//! Runs locally when the unit's machine is this host, as the original did, else over
//! SSH ([`crate::ssh::remote::run_on_machine`]). `--no-block` is accepted
//! and ignored because the original's functional tests pass it.
//!
//! With `--api`, the fleetd at `--endpoint` runs `systemctl status` on the
//! unit's machine (forwarding to that machine's fleetd) and we print what it
//! printed, exiting with its exit status as the SSH path does. SSH stays the
//! default: the original's users and scripts rely on it.

use std::time::Duration;

use fleet_api::client::Caller;
use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::StatusArgs;
use crate::context::{Ctx, is_global};
use crate::exit::Exit;

/// How long `status --api` waits for the answer (the fleetd allows its peer 15 s).
const API_STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// How the status of a unit is fetched.
#[derive(Clone, Copy)]
enum Via {
    Ssh { port: u16 },
    Api,
}

async fn status_on(ctx: &Ctx, machine_id: &str, name: &str, via: Via) -> Exit {
    match via {
        Via::Ssh { port } => {
            let argv = ["systemctl", "status", "-l", name].map(String::from);
            crate::ssh::remote::run_on_machine(ctx, machine_id, &argv, port).await
        }
        Via::Api => status_through_api(ctx, machine_id, name).await,
    }
}

async fn status_through_api(ctx: &Ctx, machine_id: &str, name: &str) -> Exit {
    let status = ctx
        .client
        .unit_status(Caller::User, name, Some(machine_id), API_STATUS_TIMEOUT)
        .await;
    match status {
        Ok(status) => {
            ctx.console.out_raw(&status.output);
            match status.exit_status {
                0 => Exit::Success,
                code => Exit::Remote(u8::try_from(code & 0xff).unwrap_or(1)),
            }
        }
        Err(error) => {
            ctx.console
                .err(&format!("Error retrieving the status of {name}: {error}"));
            Exit::Failure
        }
    }
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> anyhow::Result<Exit> {
    let via = if args.api {
        Via::Api
    } else {
        Via::Ssh {
            port: args.ssh_port,
        }
    };
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
                let exit = status_on(ctx, &state.machine_id, &name, via).await;
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
        let exit = status_on(ctx, &unit.machine_id, &name, via).await;
        if exit != Exit::Success {
            return Ok(exit);
        }
    }
    Ok(Exit::Success)
}
