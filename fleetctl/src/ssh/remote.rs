//! What the commands call: `fleetctl ssh`, and running `status` / `journal`
//! command lines on a unit's machine (Documentation/compatibility.md, "fleetctl SSH").
//!
//! Messages and exit codes follow the original: resolution errors print
//! `Unable to proceed: <err>` (status 1); an SSH connection that cannot be set
//! up prints `Failed building SSH client: <err>` (`ssh`) or `Error running
//! remote command: <err>` (`status`, `journal`) and exits 255 (the original's
//! -1); otherwise the remote command's status is returned. With `--tunnel`,
//! machines are reached through the bastion's connection.

use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::SshArgs;
use crate::context::{Ctx, is_global};
use crate::exit::Exit;
use crate::remote::{local_machine_id, run_locally};
use crate::ssh::master::{AgentForwarding, Master};
use crate::ssh::quote::remote_command_line;
use crate::ssh::resolve::{self, FoundUnit, Lookup, ResolveError};
use crate::ssh::{Destination, SshError, SshOptions};

/// The exit status of a command whose SSH connection failed.
const SSH_FAILURE: Exit = Exit::Remote(255);

fn exit_of(code: u8) -> Exit {
    if code == 0 {
        Exit::Success
    } else {
        Exit::Remote(code)
    }
}

/// Connects to `address` (`ip` or `ip:port`), through the tunnel's bastion
/// when there is one.
async fn connect(ctx: &Ctx, address: &str, agent: AgentForwarding) -> Result<Master, SshError> {
    let options = SshOptions::from_env(&ctx.config)?;
    let destination = Destination::parse(address)?;
    let via = ctx.tunnel.as_deref().map(|tunnel| tunnel.master());
    Master::connect(&options, &destination, via, agent).await
}

/// Runs `argv` on the machine `machine_id`: here when it is this host's
/// machine ID (the original's local shortcut), else over SSH to the
/// machine's public IP (`ssh_port` appended when not 22). Prints its own
/// errors.
pub async fn run_on_machine(ctx: &Ctx, machine_id: &str, argv: &[String], ssh_port: u16) -> Exit {
    if local_machine_id().is_some_and(|local| local == machine_id) {
        return match run_locally(argv) {
            Ok(exit) => exit,
            Err(error) => {
                ctx.console
                    .err(&format!("Error running local command: {error}"));
                Exit::Failure
            }
        };
    }
    let Some(machine) = ctx
        .machine(machine_id)
        .await
        .filter(|m| !m.primary_ip.is_empty())
    else {
        ctx.console.err(&format!(
            "Error getting machine IP: machine {machine_id} not found or has no public IP"
        ));
        return Exit::Failure;
    };
    let address = resolve::ssh_address(&machine.primary_ip, ssh_port);
    let master = match connect(ctx, &address, AgentForwarding::Off).await {
        Ok(master) => master,
        Err(error) => {
            ctx.console
                .err(&format!("Error running remote command: {error}"));
            return SSH_FAILURE;
        }
    };
    match master.run(remote_command_line(argv).as_deref()).await {
        Ok(code) => exit_of(code),
        Err(error) => {
            ctx.console
                .err(&format!("Error running remote command: {error}"));
            SSH_FAILURE
        }
    }
}

/// Looks a unit up for resolution; `None` when it does not exist or the
/// registry cannot say (the original ignored those errors too).
async fn find_unit(ctx: &Ctx, name: &str) -> Option<FoundUnit> {
    let unit = ctx.client.unit(&fleetctl_unit_name(name)).await.ok()??;
    Some(FoundUnit {
        global: is_global(&unit),
        machine_id: unit.machine_id,
    })
}

/// `fleetctl ssh {MACHINE|UNIT} [--] [command...]`.
pub async fn ssh_command(ctx: &Ctx, args: &SshArgs) -> Exit {
    let unable = |error: &dyn std::fmt::Display| {
        ctx.console.err(&format!("Unable to proceed: {error}"));
        Exit::Failure
    };
    let (lookup, rest) = match (&args.machine, &args.unit) {
        (Some(_), Some(_)) => return unable(&ResolveError::BothFlags),
        (Some(machine), None) => (Lookup::Machine(machine), args.args.as_slice()),
        (None, Some(unit)) => (Lookup::Unit(unit), args.args.as_slice()),
        (None, None) => {
            // clap may keep a `--` in front of the machine; skip it.
            let args = match args.args.first() {
                Some(first) if first == "--" => &args.args[1..],
                _ => args.args.as_slice(),
            };
            match args.split_first() {
                Some((first, rest)) => (Lookup::Either(first), rest),
                None => return unable(&ResolveError::NothingGiven),
            }
        }
    };
    let machines = match ctx.client.machines().await {
        Ok(machines) => machines,
        Err(error) => return unable(&error),
    };
    let unit = match lookup {
        Lookup::Machine(_) => None,
        Lookup::Unit(name) | Lookup::Either(name) => find_unit(ctx, name).await,
    };
    let target = match resolve::resolve(lookup, &machines, unit.as_ref()) {
        Ok(target) => target,
        Err(error) => return unable(&error),
    };
    let address = resolve::ssh_address(&target.public_ip, args.ssh_port);
    let agent = if args.forward_agent {
        AgentForwarding::On
    } else {
        AgentForwarding::Off
    };
    let master = match connect(ctx, &address, agent).await {
        Ok(master) => master,
        Err(error) => {
            ctx.console
                .err(&format!("Failed building SSH client: {error}"));
            return SSH_FAILURE;
        }
    };
    let command = remote_command_line(resolve::trim_to_dashes(rest));
    match master.run(command.as_deref()).await {
        Ok(code) => exit_of(code),
        Err(error) => {
            let what = if command.is_some() {
                "Failed running command over SSH"
            } else {
                "Failed opening shell over SSH"
            };
            ctx.console.err(&format!("{what}: {error}"));
            SSH_FAILURE
        }
    }
}
