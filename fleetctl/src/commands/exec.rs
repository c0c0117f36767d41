//! `exec [--machines ID,...|--metadata k=v|--all] [--parallel N] -- COMMAND...`:
//! one command on many machines over SSH.
//!
//! Connections are set up one at a time (an unknown host key asks on the
//! terminal, and two questions must not interleave); the commands then run
//! `--parallel` at a time. Each output line is printed as `<machine>: <line>`
//! as it arrives (stdout to stdout, stderr to stderr), and a table of every
//! machine's exit status and duration follows.

use std::sync::Arc;
use std::time::Duration;

use fleet_api::entities::Machine;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use crate::cli::ExecArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{machine_id_legend, render_table};
use crate::ssh::exec::Stream;
use crate::ssh::master::{AgentForwarding, Master};
use crate::ssh::quote::remote_command_line;
use crate::ssh::resolve::{machine_by_prefix, ssh_address};
use crate::ssh::{Destination, SshOptions};

/// How one machine's run ended.
struct Outcome {
    machine: String,
    /// The remote status; `None` when SSH could not connect.
    status: Option<u8>,
    duration: Duration,
}

/// The machines `args` select, in id order, or why the selection is bad.
pub fn select(machines: &[Machine], args: &ExecArgs) -> Result<Vec<Machine>, String> {
    let mut selected: Vec<Machine> = if args.all {
        machines.to_vec()
    } else if !args.machines.is_empty() {
        let mut found = Vec::new();
        for prefix in &args.machines {
            let machine = machine_by_prefix(machines, prefix)
                .map_err(|error| format!("machine {prefix}: {error}"))?;
            found.push(machine.clone());
        }
        found
    } else {
        let mut wanted = Vec::new();
        for item in &args.metadata {
            match item.split_once('=') {
                Some((key, value)) if !key.is_empty() => wanted.push((key, value)),
                _ => return Err(format!("invalid --metadata {item:?}: expected KEY=VALUE")),
            }
        }
        machines
            .iter()
            .filter(|machine| {
                wanted.iter().all(|(key, value)| {
                    machine.metadata.get(*key).map(String::as_str) == Some(*value)
                })
            })
            .cloned()
            .collect()
    };
    selected.sort_by(|a, b| a.id.cmp(&b.id));
    selected.dedup_by(|a, b| a.id == b.id);
    if selected.is_empty() {
        return Err("no machine matches the selection".to_owned());
    }
    Ok(selected)
}

pub async fn run(ctx: &Arc<Ctx>, args: ExecArgs) -> anyhow::Result<Exit> {
    let Some(command_line) = remote_command_line(&args.command) else {
        ctx.console
            .err("No command given: fleetctl exec ... -- COMMAND");
        return Ok(Exit::Failure);
    };
    let options = match SshOptions::from_env(&ctx.config) {
        Ok(options) => options,
        Err(error) => {
            ctx.console
                .err(&format!("Failed building SSH client: {error}"));
            return Ok(Exit::Failure);
        }
    };
    let machines = match ctx.client.machines().await {
        Ok(machines) => machines,
        Err(error) => {
            ctx.console
                .err(&format!("Error retrieving list of machines: {error}"));
            return Ok(Exit::Failure);
        }
    };
    let selected = match select(&machines, &args) {
        Ok(selected) => selected,
        Err(error) => {
            ctx.console.err(&format!("Unable to proceed: {error}"));
            return Ok(Exit::Failure);
        }
    };
    let connecting = Arc::new(Mutex::new(()));
    let running = Arc::new(Semaphore::new(usize::from(args.parallel)));
    let options = Arc::new(options);
    let command_line = Arc::new(command_line);
    let mut tasks = Vec::with_capacity(selected.len());
    for machine in selected {
        let ctx = Arc::clone(ctx);
        let (connecting, running) = (Arc::clone(&connecting), Arc::clone(&running));
        let (options, command_line) = (Arc::clone(&options), Arc::clone(&command_line));
        let ssh_port = args.ssh_port;
        tasks.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = running.acquire_owned().await;
            run_one(
                &ctx,
                &machine,
                &options,
                ssh_port,
                &command_line,
                &connecting,
            )
            .await
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    ctx.console.out_raw(&summary(&outcomes));
    let all_ok = outcomes.iter().all(|outcome| outcome.status == Some(0));
    Ok(if all_ok { Exit::Success } else { Exit::Failure })
}

async fn run_one(
    ctx: &Ctx,
    machine: &Machine,
    options: &SshOptions,
    ssh_port: u16,
    command_line: &str,
    connecting: &Mutex<()>,
) -> Outcome {
    let started = Instant::now();
    let label = machine_id_legend(&machine.id, false);
    let finish = |status| Outcome {
        machine: machine.id.clone(),
        status,
        duration: started.elapsed(),
    };
    let master = {
        let _one_at_a_time = connecting.lock().await;
        let destination = match Destination::parse(&ssh_address(&machine.primary_ip, ssh_port)) {
            Ok(destination) => destination,
            Err(error) => {
                ctx.console.err(&format!("{label}: {error}"));
                return finish(None);
            }
        };
        let via = ctx.tunnel.as_deref().map(|tunnel| tunnel.master());
        match Master::connect(options, &destination, via, AgentForwarding::Off).await {
            Ok(master) => master,
            Err(error) => {
                ctx.console
                    .err(&format!("{label}: Failed building SSH client: {error}"));
                return finish(None);
            }
        }
    };
    let print = |stream: Stream, line: &str| match stream {
        Stream::Stdout => ctx.console.out(&format!("{label}: {line}")),
        Stream::Stderr => ctx.console.err(&format!("{label}: {line}")),
    };
    match master.run_captured(command_line, &print).await {
        Ok(status) => finish(Some(status)),
        Err(error) => {
            ctx.console.err(&format!("{label}: {error}"));
            finish(None)
        }
    }
}

/// The table after the output: `MACHINE EXIT DURATION`, `ssh failed` when
/// the machine could not be reached.
fn summary(outcomes: &[Outcome]) -> String {
    let mut rows = vec![vec![
        "MACHINE".to_owned(),
        "EXIT".to_owned(),
        "DURATION".to_owned(),
    ]];
    rows.extend(outcomes.iter().map(|outcome| {
        vec![
            machine_id_legend(&outcome.machine, false),
            outcome
                .status
                .map_or_else(|| "ssh failed".to_owned(), |status| status.to_string()),
            format!("{:.1}s", outcome.duration.as_secs_f64()),
        ]
    }));
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        exec: ExecArgs,
    }

    fn machine(id: &str, role: &str) -> Machine {
        Machine {
            id: id.to_owned(),
            primary_ip: "10.0.0.1".to_owned(),
            metadata: [("role".to_owned(), role.to_owned())].into(),
            cordon: None,
        }
    }

    fn args(line: &[&str]) -> ExecArgs {
        let mut all = vec!["exec"];
        all.extend_from_slice(line);
        Wrapper::parse_from(all).exec
    }

    #[test]
    fn machines_are_selected_by_prefix_metadata_or_all() {
        let machines = [
            machine("aaaa1111", "web"),
            machine("bbbb2222", "db"),
            machine("bbbb3333", "web"),
        ];
        let ids = |args: ExecArgs| -> Result<Vec<String>, String> {
            select(&machines, &args).map(|found| found.into_iter().map(|m| m.id).collect())
        };
        assert_eq!(ids(args(&["--all", "--", "true"])).unwrap().len(), 3);
        assert_eq!(
            ids(args(&["--machines", "bbbb3,aaaa", "--", "true"])).unwrap(),
            ["aaaa1111", "bbbb3333"]
        );
        assert_eq!(
            ids(args(&["--metadata", "role=web", "--", "true"])).unwrap(),
            ["aaaa1111", "bbbb3333"]
        );
        assert!(
            ids(args(&["--machines", "bbbb", "--", "true"])).is_err(),
            "ambiguous prefix"
        );
        assert!(ids(args(&["--metadata", "role=none", "--", "true"])).is_err());
        assert!(ids(args(&["--metadata", "role", "--", "true"])).is_err());
    }

    #[test]
    fn a_selection_and_a_command_are_required() {
        let parse = |line: &[&str]| {
            let mut all = vec!["exec"];
            all.extend_from_slice(line);
            Wrapper::try_parse_from(all).is_ok()
        };
        assert!(!parse(&["--", "true"]), "no selection");
        assert!(!parse(&["--all"]), "no command");
        assert!(
            !parse(&["--all", "--machines", "a", "--", "true"]),
            "two selections"
        );
        assert!(!parse(&["--all", "--parallel", "0", "--", "true"]));
        assert!(parse(&["--all", "--parallel", "3", "--", "uptime", "-p"]));
    }

    #[test]
    fn the_summary_lists_status_and_duration() {
        let outcomes = [
            Outcome {
                machine: "aaaa1111bbbb".to_owned(),
                status: Some(0),
                duration: Duration::from_millis(1300),
            },
            Outcome {
                machine: "cccc2222dddd".to_owned(),
                status: None,
                duration: Duration::from_millis(40),
            },
        ];
        let table = summary(&outcomes);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split('\t').filter(|c| !c.is_empty()).collect())
            .collect();
        assert_eq!(rows[0], ["MACHINE", "EXIT", "DURATION"]);
        assert_eq!(rows[1], ["aaaa1111...", "0", "1.3s"]);
        assert_eq!(rows[2], ["cccc2222...", "ssh failed", "0.0s"]);
    }
}
