//! `journal`: `journalctl` for one unit on its machine.
//!
//! Runs locally when the unit's machine is this host, as the original did, else over
//! SSH ([`crate::ssh::remote::run_on_machine`]).

use fleet_model::TargetState;
use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::JournalArgs;
use crate::context::{Ctx, is_global};
use crate::exit::Exit;

/// The command line the original runs: `[sudo] journalctl --unit <n>
/// --no-pager -n <N> --output <mode> [-f]`.
pub fn journal_command(name: &str, args: &JournalArgs) -> Vec<String> {
    let mut argv = Vec::new();
    if args.sudo {
        argv.push("sudo".to_owned());
    }
    argv.extend(
        [
            "journalctl",
            "--unit",
            name,
            "--no-pager",
            "-n",
            &args.lines.to_string(),
            "--output",
            &args.output,
        ]
        .map(String::from),
    );
    if args.follow {
        argv.push("-f".to_owned());
    }
    argv
}

pub async fn run(ctx: &Ctx, args: JournalArgs) -> anyhow::Result<Exit> {
    let [arg] = args.units.as_slice() else {
        ctx.console.err("One unit file must be provided.");
        return Ok(Exit::Failure);
    };
    let name = fleetctl_unit_name(arg);
    let unit = match ctx.client.unit(&name).await {
        Ok(Some(unit)) => unit,
        Ok(None) => {
            ctx.console.err(&format!("Unit {name} does not exist."));
            return Ok(Exit::Failure);
        }
        Err(error) => {
            ctx.console
                .err(&format!("Error retrieving unit {name}: {error}"));
            return Ok(Exit::Failure);
        }
    };
    if is_global(&unit) {
        ctx.console.err(&format!(
            "Unable to retrieve journal of global unit {name}."
        ));
        return Ok(Exit::Failure);
    }
    if unit.current() == Some(TargetState::Inactive) || unit.machine_id.is_empty() {
        ctx.console
            .err(&format!("Unit {name} does not appear to be running."));
        return Ok(Exit::Failure);
    }
    let argv = journal_command(&name, &args);
    Ok(crate::ssh::remote::run_on_machine(ctx, &unit.machine_id, &argv, args.ssh_port).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_command_line() {
        let args = JournalArgs {
            lines: 20,
            follow: true,
            ssh_port: 22,
            sudo: true,
            output: "cat".to_owned(),
            units: vec![],
        };
        assert_eq!(
            journal_command("hello.service", &args).join(" "),
            "sudo journalctl --unit hello.service --no-pager -n 20 --output cat -f"
        );
    }
}
