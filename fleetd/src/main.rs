//! fleetd's entry point: parses the command line (Documentation/compatibility.md,
//! "fleetd command line and config file"), loads the
//! config, installs logging and runs [`fleetd::server::run`]. Everything
//! else lives in the library.
//!
//! `fleetd [-config PATH] [-version]`, Go flag style: `-x` and `--x`, with
//! `-x=v` or `-x v`. `fleetd version` is `-version`. Options are set in the
//! config file or the environment, never as flags. `fleetd etcd-auth ...`
//! manages etcd identities (`fleetd::etcd_auth`).

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use fleetd::config::Config;
use fleetd::machine::VERSION;
use fleetd::server::{self, ServerOptions};
use tracing::{error, warn};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "Usage of fleetd:
  -config string
        Path to config file. Defaults to /etc/fleet/fleet.conf (used only if it exists).
  -version
        Print the version and exit.
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run {
        config: Option<PathBuf>,
    },
    Version,
    Help,
    /// `fleetd etcd-auth ...`: the arguments after `etcd-auth`.
    EtcdAuth(Vec<String>),
}

/// A command line we refuse, with its exit code (Go's flag package exits 2).
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    message: String,
    exit_code: u8,
}

fn parse_args(args: &[String]) -> Result<Command, Refusal> {
    if args.first().map(String::as_str) == Some("etcd-auth") {
        return Ok(Command::EtcdAuth(args[1..].to_vec()));
    }
    let mut config = None;
    let mut version = false;
    let mut idx = 0;
    while let Some(arg) = args.get(idx) {
        idx += 1;
        if arg == "--" {
            if args.get(idx).is_some() {
                return Err(takes_no_arguments());
            }
            break;
        }
        let Some(flag) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|flag| !flag.is_empty())
        else {
            if arg == "version" && idx == args.len() {
                return Ok(Command::Version);
            }
            return Err(takes_no_arguments());
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        match name {
            "config" => {
                let value = match inline_value {
                    Some(value) => value,
                    None => {
                        let value = args.get(idx).ok_or_else(|| Refusal {
                            message: format!("flag needs an argument: -config\n{USAGE}"),
                            exit_code: 2,
                        })?;
                        idx += 1;
                        value.clone()
                    }
                };
                config = Some(PathBuf::from(value));
            }
            "version" => {
                version = match inline_value.as_deref() {
                    None => true,
                    Some(value) => fleetd::config::parse_go_bool(value).ok_or_else(|| Refusal {
                        message: format!("invalid boolean value {value:?} for -version\n{USAGE}"),
                        exit_code: 2,
                    })?,
                };
            }
            "h" | "help" => return Ok(Command::Help),
            _ => {
                return Err(Refusal {
                    message: format!("flag provided but not defined: -{name}\n{USAGE}"),
                    exit_code: 2,
                });
            }
        }
    }
    Ok(if version {
        Command::Version
    } else {
        Command::Run { config }
    })
}

fn takes_no_arguments() -> Refusal {
    Refusal {
        message: format!(
            "fleetd takes no arguments. Did you mean to invoke fleetctl instead?\n{USAGE}"
        ),
        exit_code: 1,
    }
}

fn main() -> ExitCode {
    fleetd::memory::limit_malloc_arenas();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let explicit_config = match parse_args(&args) {
        Ok(Command::Version) => {
            println!("fleetd version {VERSION}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run { config }) => config,
        Ok(Command::EtcdAuth(args)) => return etcd_auth(&args),
        Err(refusal) => {
            eprint!("{}", refusal.message);
            return ExitCode::from(refusal.exit_code);
        }
    };

    // Non-UTF-8 variables cannot be fleet options; skip them rather than fail.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    let loaded = match Config::load(explicit_config.as_deref(), &env) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("ERROR fleetd: Failed to load the configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    install_logging(
        loaded.config.verbosity,
        env.get("RUST_LOG").map(String::as_str),
    );
    for notice in &loaded.notices {
        warn!("{notice}");
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!("Failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(
        loaded,
        ServerOptions {
            explicit_config,
            env,
        },
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `fleetd etcd-auth`: parse, connect with the operator's credentials, run.
fn etcd_auth(args: &[String]) -> ExitCode {
    let invocation = match fleetd::etcd_auth::parse(args) {
        Ok(invocation) => invocation,
        Err(message) => {
            eprint!("{message}");
            return ExitCode::from(2);
        }
    };
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    install_logging(0, env.get("RUST_LOG").map(String::as_str));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ERROR fleetd etcd-auth: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fleetd::etcd_auth::run(invocation, &env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ERROR fleetd etcd-auth: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `LEVEL target: message` on stderr without timestamps (journald adds
/// them; Documentation/compatibility.md, "Log messages and strings relied on").
/// `RUST_LOG` wins; else `verbosity` > 0 is DEBUG.
fn install_logging(verbosity: i64, rust_log: Option<&str>) {
    let default_directives = if verbosity > 0 {
        "debug,h2=info,hyper=info,tower=info"
    } else {
        "info"
    };
    let filter = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_directives));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_target(true)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, Refusal> {
        parse_args(&args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn command_lines() {
        assert_eq!(parse(&[]), Ok(Command::Run { config: None }));
        for args in [
            &["-config", "/a"][..],
            &["--config", "/a"],
            &["-config=/a"],
            &["--config=/a"],
        ] {
            assert_eq!(
                parse(args),
                Ok(Command::Run {
                    config: Some(PathBuf::from("/a"))
                }),
                "{args:?}"
            );
        }
        assert_eq!(parse(&["-version"]), Ok(Command::Version));
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["version"]), Ok(Command::Version));
        assert_eq!(
            parse(&["-version=false"]),
            Ok(Command::Run { config: None })
        );
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
        assert_eq!(
            parse(&["etcd-auth", "init"]),
            Ok(Command::EtcdAuth(vec!["init".to_owned()]))
        );
        let refusal = parse(&["list-units"]).expect_err("positional");
        assert_eq!(refusal.exit_code, 1);
        assert!(
            refusal
                .message
                .starts_with("fleetd takes no arguments. Did you mean to invoke fleetctl instead?")
        );
        assert_eq!(
            parse(&["version", "x"])
                .expect_err("two positionals")
                .exit_code,
            1
        );
        assert_eq!(parse(&["-bogus"]).expect_err("unknown flag").exit_code, 2);
        assert_eq!(parse(&["-config"]).expect_err("missing value").exit_code, 2);
    }

    /// fleetd's man page is written by hand (packaging/fleetd.8, shipped by the Debian
    /// package): every flag the usage names, and every etcd-auth command, is in it.
    #[test]
    fn man_page_documents_every_flag() {
        let page = include_str!("../../packaging/fleetd.8");
        let flags = USAGE
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix('-'))
            .filter_map(|rest| rest.split_whitespace().next());
        for flag in flags {
            // roff escapes the dash: `\-config`.
            assert!(
                page.contains(&format!("\\-{flag}")),
                "fleetd.8 lacks -{flag}"
            );
        }
        for command in ["init", "add\\-machine", "remove\\-machine"] {
            assert!(
                page.contains(&format!("etcd\\-auth {command}")),
                "{command}"
            );
            let plain = command.replace('\\', "");
            assert!(
                fleetd::etcd_auth::USAGE.contains(&format!("  {plain} ")),
                "{plain}"
            );
        }
    }
}
