//! `fleetd etcd-auth`: one etcd identity per machine.
//!
//! ```text
//! fleetd etcd-auth [--config FILE] init
//! fleetd etcd-auth [--config FILE] add-machine MACHINE_ID [--engine]
//! fleetd etcd-auth [--config FILE] remove-machine MACHINE_ID
//! fleetd etcd-auth [--config FILE] forget-machine MACHINE_ID
//! ```
//!
//! Run by an operator with etcd's root credentials, given the way fleetd
//! takes its own: `etcd_servers`, `etcd_username`, `etcd_password` and the
//! TLS options from the config file (`--config`, default
//! `/etc/fleet/fleet.conf` if it exists) or `FLEET_ETCD_*`. The roles and
//! what each may write are described in `Documentation/security.md`.
//!
//! `forget-machine` is the exception: it deletes the keys a machine that left
//! for good wrote (`fleetctl disenrol` runs it on that host after stopping
//! fleetd), with whatever credentials the config holds: the machine's own
//! identity reaches exactly those keys, and without etcd auth none is needed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use fleet_registry::MachineId;
use fleet_registry::auth::{EtcdAdmin, machine_user};

use crate::config::Config;

pub const USAGE: &str = "Usage: fleetd etcd-auth [--config FILE] COMMAND
Commands (run with etcd's root credentials: FLEET_ETCD_USERNAME/FLEET_ETCD_PASSWORD or the config file):
  init                              create fleet's etcd roles and enable etcd authentication
  add-machine MACHINE_ID [--engine] create (or reset) MACHINE_ID's etcd user; --engine makes it a
                                    control-plane machine (engine and API writes); prints its fleet.conf lines
  remove-machine MACHINE_ID         delete MACHINE_ID's etcd user and role
  forget-machine MACHINE_ID         delete the keys MACHINE_ID wrote (refused while it is registered);
                                    its own credentials suffice, or none without etcd auth
";

/// One `etcd-auth` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    Init,
    AddMachine { machine: MachineId, engine: bool },
    RemoveMachine { machine: MachineId },
    ForgetMachine { machine: MachineId },
}

/// A parsed `fleetd etcd-auth` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub config: Option<PathBuf>,
    pub command: AuthCommand,
}

/// Parses the arguments after `etcd-auth`.
///
/// # Errors
/// A message naming what is wrong, with the usage.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut config = None;
    let mut engine = false;
    let mut words = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-config" => {
                let path = args
                    .next()
                    .ok_or_else(|| format!("--config needs a file\n{USAGE}"))?;
                config = Some(PathBuf::from(path));
            }
            "--engine" | "-engine" => engine = true,
            "--help" | "-help" | "-h" => return Err(USAGE.to_owned()),
            flag if flag.starts_with('-') => {
                if let Some(path) = flag
                    .strip_prefix("--config=")
                    .or_else(|| flag.strip_prefix("-config="))
                {
                    config = Some(PathBuf::from(path));
                } else {
                    return Err(format!("unknown flag {flag}\n{USAGE}"));
                }
            }
            word => words.push(word),
        }
    }
    let machine = |id: &str| {
        id.parse::<MachineId>()
            .map_err(|error| format!("{error}\n{USAGE}"))
    };
    let command = match words.as_slice() {
        ["init"] => AuthCommand::Init,
        ["add-machine", id] => AuthCommand::AddMachine {
            machine: machine(id)?,
            engine,
        },
        ["remove-machine", id] => AuthCommand::RemoveMachine {
            machine: machine(id)?,
        },
        ["forget-machine", id] => AuthCommand::ForgetMachine {
            machine: machine(id)?,
        },
        [] => return Err(format!("missing command\n{USAGE}")),
        _ => return Err(format!("unexpected arguments {words:?}\n{USAGE}")),
    };
    if engine && !matches!(command, AuthCommand::AddMachine { .. }) {
        return Err(format!("--engine goes with add-machine only\n{USAGE}"));
    }
    Ok(Invocation { config, command })
}

/// Runs `invocation` against etcd; what it prints is for the operator.
///
/// # Errors
/// An unusable configuration, or what etcd refused.
pub async fn run(invocation: Invocation, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let loaded = Config::load(invocation.config.as_deref(), env)
        .context("loading the etcd connection options")?;
    let config = loaded.config;
    let forgetting = matches!(invocation.command, AuthCommand::ForgetMachine { .. });
    if !forgetting && config.etcd_username.is_empty() && config.etcd_certfile.is_empty() {
        bail!(
            "give etcd's root credentials: FLEET_ETCD_USERNAME=root and FLEET_ETCD_PASSWORD (or etcd_username/etcd_password in --config FILE), or a root client certificate (etcd_certfile/etcd_keyfile)"
        );
    }
    if let AuthCommand::ForgetMachine { machine } = &invocation.command {
        return forget_machine(&config, machine).await;
    }
    let admin = EtcdAdmin::connect(&crate::discovered::registry_config(&config).await?)
        .await
        .context("connecting to etcd")?;
    match invocation.command {
        // Handled above: it needs no admin connection.
        AuthCommand::ForgetMachine { .. } => {}
        AuthCommand::Init => {
            let root_password = (config.etcd_username == "root"
                && !config.etcd_password.is_empty())
            .then_some(config.etcd_password.as_str());
            admin.init(root_password).await?;
            println!(
                "etcd authentication is on with fleet's roles under {}.",
                config.etcd_key_prefix
            );
        }
        AuthCommand::AddMachine { machine, engine } => {
            let credential = admin.add_machine(&machine, engine).await?;
            tracing::info!(
                target: "fleet::audit",
                operator = %operator(&config),
                %machine,
                control_plane = engine,
                "Created or reset a machine's etcd identity."
            );
            println!("etcd_username={}", credential.username);
            println!("etcd_password={}", credential.password);
            eprintln!(
                "Put these lines in {machine}'s fleet.conf (mode 0600). It is {}. With etcd's --client-cert-auth, a client certificate with the common name {} works instead of the password.",
                if engine {
                    "a control-plane machine: engine and API writes"
                } else {
                    "a worker: its own keys only, read-only API"
                },
                credential.username
            );
        }
        AuthCommand::RemoveMachine { machine } => {
            let removed = admin.remove_machine(&machine).await?;
            tracing::info!(
                target: "fleet::audit",
                operator = %operator(&config),
                %machine,
                removed,
                "Removed a machine's etcd identity."
            );
            if removed {
                println!("Removed etcd user and role {}.", machine_user(&machine));
            } else {
                println!("{} had no etcd user or role.", machine_user(&machine));
            }
            // Root may delete what the API stored for the machine.
            let registry = fleet_registry::Registry::connect(
                &crate::discovered::registry_config(&config).await?,
            )
            .await
            .context("connecting to etcd")?;
            let deleted = registry
                .forget_machine_metadata(&machine)
                .await
                .with_context(|| format!("deleting the metadata of machine {machine}"))?;
            println!("Deleted {deleted} metadata keys of machine {machine}.");
        }
    }
    Ok(())
}

/// `forget-machine`: deletes the keys `machine` wrote, as whoever the config
/// names.
async fn forget_machine(config: &Config, machine: &MachineId) -> anyhow::Result<()> {
    let registry =
        fleet_registry::Registry::connect(&crate::discovered::registry_config(config).await?)
            .await
            .context("connecting to etcd")?;
    let deleted = registry
        .forget_machine(machine)
        .await
        .with_context(|| format!("forgetting machine {machine}"))?;
    tracing::info!(
        target: "fleet::audit",
        operator = %operator(config),
        %machine,
        deleted,
        "Deleted the keys of a machine that left the cluster."
    );
    println!("Deleted {deleted} keys of machine {machine}.");
    // The API's metadata for the machine: its own credentials may not
    // delete it when etcd auth is on (remove-machine, as root, does).
    match registry.forget_machine_metadata(machine).await {
        Ok(deleted) => println!("Deleted {deleted} metadata keys of machine {machine}."),
        Err(error) => println!(
            "Kept the metadata of machine {machine} ({error}); `fleetd etcd-auth remove-machine` deletes it with root's credentials."
        ),
    }
    Ok(())
}

/// Who ran the command, for the audit log: the etcd user, or the client
/// certificate that authenticated.
fn operator(config: &Config) -> String {
    if config.etcd_username.is_empty() && config.etcd_certfile.is_empty() {
        "anonymous (no etcd auth)".to_owned()
    } else if config.etcd_username.is_empty() {
        format!("client certificate {}", config.etcd_certfile)
    } else {
        config.etcd_username.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn command_lines() {
        let m1: MachineId = "m1".parse().expect("valid id");
        assert_eq!(
            parse(&args(&["init"])),
            Ok(Invocation {
                config: None,
                command: AuthCommand::Init
            })
        );
        assert_eq!(
            parse(&args(&["--config", "/f", "add-machine", "m1", "--engine"])),
            Ok(Invocation {
                config: Some(PathBuf::from("/f")),
                command: AuthCommand::AddMachine {
                    machine: m1.clone(),
                    engine: true
                }
            })
        );
        assert_eq!(
            parse(&args(&["add-machine", "m1"])).map(|i| i.command),
            Ok(AuthCommand::AddMachine {
                machine: m1.clone(),
                engine: false
            })
        );
        assert_eq!(
            parse(&args(&["--config=/f", "remove-machine", "m1"])).map(|i| i.command),
            Ok(AuthCommand::RemoveMachine {
                machine: m1.clone()
            })
        );
        assert_eq!(
            parse(&args(&["forget-machine", "m1"])).map(|i| i.command),
            Ok(AuthCommand::ForgetMachine { machine: m1 })
        );
        for bad in [
            &[][..],
            &["add-machine"],
            &["add-machine", "a/b"],
            &["init", "--engine"],
            &["init", "extra"],
            &["--bogus", "init"],
            &["--config"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} parsed");
        }
    }
}
