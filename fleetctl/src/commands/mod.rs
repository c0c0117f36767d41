//! The commands, one module per verb, and the dispatcher [`run`]. What the
//! commands share (the API client, the console, the machine cache and a few
//! helpers) lives below them in [`crate::context`], so no command module
//! imports from its dispatcher.
//!
//! Each command prints its own messages (the original's exact texts) and
//! returns an [`Exit`]; an `Err` reaching [`run`] is unexpected and printed as
//! `error: …` with status 1.

mod cat;
pub mod completion;
mod cordon;
mod destroy;
pub mod enrol;
mod events;
mod exec;
mod fd_forward;
mod journal;
mod list_machines;
mod list_unit_files;
mod list_units;
mod logs;
mod plan;
mod restart;
mod ssh;
mod start;
mod status;
mod stop;
mod submit;
pub mod update;
mod verify;

use std::sync::Arc;

use fleet_api::client::{Client, ClientTls, Endpoint};

use crate::cli::{Command, Config};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::Console;

/// Runs a parsed command.
pub async fn run(config: Config, command: Command, console: Console) -> Exit {
    // Commands that never talk to the API.
    match command {
        Command::Verify(_) => return verify::run(console),
        Command::FdForward(args) => return fd_forward::run(args, console).await,
        Command::Version => {
            console.out(&format!("fleetctl version {}", crate::cli::VERSION));
            return Exit::Success;
        }
        Command::Completion(args) => return completion::run_completion(&args, console),
        Command::ManPages(args) => return completion::run_man_pages(&args, console),
        _ => {}
    }

    let client = match build_client(&config, console) {
        Ok(client) => client,
        Err(exit) => return exit,
    };
    let (client, tunnel) = match crate::ssh::tunnel::through_tunnel(&config, client).await {
        Ok(pair) => pair,
        Err(error) => {
            console.err(&format!(
                "Unable to initialize client: failed initializing SSH client: {error}"
            ));
            return Exit::Failure;
        }
    };
    let ctx = Arc::new(Ctx::new(config, client, console).with_tunnel(tunnel));
    let outcome = match command {
        Command::Cat(args) => cat::run(&ctx, args).await,
        Command::Destroy(args) => destroy::run(&ctx, args).await,
        Command::Events(args) => events::run(&ctx, args).await,
        Command::Journal(args) => journal::run(&ctx, args).await,
        Command::Logs(args) => logs::run(&ctx, args).await,
        Command::ListMachines(args) => list_machines::run(&ctx, args).await,
        Command::ListUnitFiles(args) => list_unit_files::run(&ctx, args).await,
        Command::ListUnits(args) => list_units::run(&ctx, args).await,
        Command::Load(args) => start::run_load(&ctx, args).await,
        Command::Restart(args) => restart::run(&ctx, args).await,
        Command::Ssh(args) => ssh::run(&ctx, args).await,
        Command::Start(args) => start::run_start(&ctx, args).await,
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Stop(args) => stop::run_stop(&ctx, args).await,
        Command::Submit(args) => submit::run(&ctx, args).await,
        Command::Unload(args) => stop::run_unload(&ctx, args).await,
        Command::Update(args) => update::run(&ctx, args).await,
        Command::Cordon(args) => cordon::run_cordon(&ctx, args).await,
        Command::Uncordon(args) => cordon::run_uncordon(&ctx, args).await,
        Command::Drain(args) => cordon::run_drain(&ctx, args).await,
        Command::Plan(args) => plan::run_plan(&ctx, args).await,
        Command::Why(args) => plan::run_why(&ctx, args).await,
        Command::Exec(args) => exec::run(&ctx, args).await,
        Command::Enrol(args) => enrol::run(&ctx, args).await,
        Command::Disenrol(args) => enrol::run_disenrol(&ctx, args).await,
        Command::Verify(_)
        | Command::FdForward(_)
        | Command::Version
        | Command::Completion(_)
        | Command::ManPages(_) => Ok(Exit::Success),
    };
    outcome.unwrap_or_else(|error| {
        console.err(&format!("error: {error:#}"));
        Exit::Failure
    })
}

fn build_client(config: &Config, console: Console) -> Result<Client, Exit> {
    if !config.ignored_endpoints.is_empty() {
        console.err(&format!(
            "WARNING: multiple endpoints provided but only the first ({}) is used",
            config.endpoint
        ));
    }
    match Endpoint::parse(&config.endpoint) {
        Ok(endpoint) => {
            let tls = ClientTls {
                ca_file: config.ca_file.clone(),
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
            };
            match Client::with_tls(endpoint, &tls) {
                Ok(client) => Ok(client
                    .with_timeout(config.request_timeout)
                    .with_token(config.token.clone())),
                Err(error) => {
                    console.err(&format!("Unable to initialize client: {error}"));
                    Err(Exit::Failure)
                }
            }
        }
        Err(error) => {
            console.err(&format!("Unable to initialize client: {error}"));
            Err(Exit::Failure)
        }
    }
}
