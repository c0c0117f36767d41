//! fleetctl, the command-line client of fleet; Documentation/using-the-client.md says what
//! it does and Documentation/compatibility.md what it keeps of the original.
//!
//! Layout:
//! - [`cli`]: clap types, the global [`cli::Config`] (flags, `FLEETCTL_*`, defaults).
//! - [`commands`]: one module per verb and the dispatcher [`commands::run`].
//! - [`context`]: [`context::Ctx`] (config, API client, console, machine cache) and the
//!   helpers several commands share; below the commands, so nothing imports upwards.
//! - [`output`]: tables (Go tabwriter with tab padding), legends, the console.
//! - [`units`]: unit creation from command-line arguments.
//! - [`wait`]: blocking until units reach a state.
//! - [`remote`]: running a command locally when the unit's machine is this host.
//! - [`exit`]: the exit codes.
//! - [`ssh`]: `--tunnel`, `ssh`, and `status`/`journal` on other machines.
//!
//! Start reading at [`main_with`].

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod commands;
pub mod context;
pub mod exit;
pub mod output;
pub mod remote;
pub mod ssh;
pub mod units;
pub mod wait;

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::{Config, Parsed};
use crate::exit::Exit;
use crate::output::Console;

/// Runs fleetctl with these arguments (program name first) and environment.
pub fn main_with(args: Vec<OsString>, env: &HashMap<String, String>) -> ExitCode {
    let console = Console;
    match cli::parse(args) {
        Parsed::Help(text) => {
            console.out_raw(&text);
            Exit::Success.into()
        }
        Parsed::Version => {
            console.out(&format!("fleetctl version {}", cli::VERSION));
            Exit::Success.into()
        }
        Parsed::Error(text) => {
            eprint!("{text}");
            Exit::Failure.into()
        }
        Parsed::Run(global, command) => {
            let config = match Config::from_args(&global, env) {
                Ok(config) => config,
                Err(error) => {
                    console.err(&format!("error: {error}"));
                    return Exit::Failure.into();
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    console.err(&format!("error: cannot start the async runtime: {error}"));
                    return Exit::Failure.into();
                }
            };
            let exit = runtime.block_on(commands::run(config, command, console));
            // A blocking stdin read (fd-forward) must not keep us alive.
            runtime.shutdown_background();
            exit.into()
        }
    }
}
