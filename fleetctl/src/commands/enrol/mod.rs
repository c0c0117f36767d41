//! `fleetctl enrol [USER@]HOST` and `fleetctl disenrol MACHINE`: bringing a
//! host into the cluster over SSH, and taking it out again.
//!
//! Enrol drives the host in seven steps over one verified SSH connection
//! (the same options and host-key rules as `fleetctl ssh`), printing each:
//!
//! 1. check the host: systemd is PID 1, the D-Bus system bus answers, the
//!    package's architecture matches, root or password-less sudo;
//! 2. check from the host that etcd answers (before anything is changed);
//! 3. copy the Debian package over the SSH channel (the host needs no
//!    network of its own);
//! 4. `dpkg -i`;
//! 5. write `/etc/fleet/fleet.conf` (0600, atomically) and, with etcd auth,
//!    the machine's own etcd user (`fleetd etcd-auth add-machine` run on the
//!    host: fleetctl never links an etcd client);
//! 6. enable and start `fleet.socket` and `fleet.service`;
//! 7. wait until the machine is listed by the API fleetctl talks to.
//!
//! Every step first compares: a package of the same version, an identical
//! fleet.conf, fleet already running are left alone, so enrolling an
//! enrolled host says "already enrolled, nothing to do". A step that fails
//! undoes what this run did, newest first (the package it installed is
//! purged, the previous fleet.conf restored, the etcd user it made removed),
//! and names the step. `--dry-run` runs the read-only checks and says what
//! each step would do.

mod conf;
mod disenrol;
mod facts;
mod host;
mod package;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use crate::cli::parse_duration;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::ssh::master::{AgentForwarding, Master};
use crate::ssh::resolve::ssh_address;
use crate::ssh::script::Input;
use crate::ssh::{Destination, SshOptions};

use conf::{Credential, FleetConf};
use facts::{CHECK_SCRIPT, HostFacts};
use host::{EtcdAt, Host, Refused};
use package::Package;

pub use disenrol::{DisenrolArgs, run as run_disenrol};

/// How often the wait for list-machines asks.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct EnrolArgs {
    /// etcd client URLs the host's fleetd uses, comma separated (http(s)://host:port)
    #[arg(long = "etcd-servers", value_name = "URLS", required = true)]
    pub etcd_servers: String,
    /// The machine's metadata (key=value, comma separated)
    #[arg(long, value_name = "K=V,...", default_value = "")]
    pub metadata: String,
    /// The fleet Debian package to install (scripts/package.sh builds it)
    #[arg(long, value_name = "FILE.deb")]
    pub package: Option<PathBuf>,
    /// Let the machine run the engine (default: disable_engine=true)
    #[arg(long)]
    pub engine: bool,
    /// The machine's public IP (default: HOST when it is an IP address, else detected by fleetd)
    #[arg(long = "public-ip", value_name = "IP")]
    pub public_ip: Option<IpAddr>,
    /// One more fleet.conf line (repeatable), e.g. --conf agent_ttl=10s
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    pub conf: Vec<String>,
    /// etcd's root user, to create the machine's own etcd user (etcd auth)
    #[arg(long = "etcd-root-user", value_name = "USER", default_value = "root")]
    pub etcd_root_user: String,
    /// File holding etcd's root password (or FLEETCTL_ETCD_ROOT_PASSWORD); turns on etcd auth
    #[arg(long = "etcd-root-password-file", value_name = "FILE")]
    pub etcd_root_password_file: Option<PathBuf>,
    /// Port of sshd on the host
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// How long to wait for the machine to appear in list-machines
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Check the host and print what each step would do; change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// The host: [USER@]HOST[:PORT]
    #[arg(value_name = "[USER@]HOST")]
    pub host: String,
}

/// The step names, in order.
const STEPS: [&str; 7] = [
    "check host",
    "check etcd from the host",
    "copy package",
    "install package",
    "write fleet.conf",
    "start fleet",
    "wait for list-machines",
];

fn step_line(step: usize, detail: &str, verdict: &str) -> String {
    format!(
        "[{}/{}] {}: {detail} ... {verdict}",
        step + 1,
        STEPS.len(),
        STEPS[step]
    )
}

/// Everything taken from the command line, checked before the host is touched.
struct Inputs {
    user: Option<String>,
    destination: Destination,
    servers: Vec<String>,
    metadata: Vec<(String, String)>,
    extra: Vec<(String, String)>,
    public_ip: Option<String>,
    package: Option<Package>,
    root: Option<Credential>,
}

/// `[USER@]HOST[:PORT]`.
fn split_user(text: &str) -> Result<(Option<String>, &str), String> {
    match text.split_once('@') {
        None => Ok((None, text)),
        Some((user, host)) => {
            let ok = !user.is_empty()
                && !user.starts_with('-')
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if ok {
                Ok((Some(user.to_owned()), host))
            } else {
                Err(format!("invalid user in {text:?}"))
            }
        }
    }
}

/// etcd's root credentials, when given (file or environment).
fn root_credential(args: &EnrolArgs) -> Result<Option<Credential>, String> {
    root_from(
        &args.etcd_root_user,
        args.etcd_root_password_file.as_deref(),
    )
}

pub(super) fn root_from(
    user: &str,
    password_file: Option<&std::path::Path>,
) -> Result<Option<Credential>, String> {
    let password = match password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => std::env::var("FLEETCTL_ETCD_ROOT_PASSWORD").unwrap_or_default(),
    };
    if password.is_empty() {
        return Ok(None);
    }
    if password.contains(['\n', '\r']) || user.is_empty() {
        return Err("etcd root user or password is unusable".to_owned());
    }
    Ok(Some(Credential {
        username: user.to_owned(),
        password,
    }))
}

impl Inputs {
    /// etcd as the host's fleet.conf will name it.
    fn etcd_at(&self) -> EtcdAt<'_> {
        EtcdAt::Given {
            servers: &self.servers,
            options: &self.extra,
        }
    }

    fn read(args: &EnrolArgs) -> Result<Inputs, String> {
        let (user, host) = split_user(&args.host)?;
        let destination =
            Destination::parse(&ssh_address(host, args.ssh_port)).map_err(|e| e.to_string())?;
        let public_ip = args.public_ip.map(|ip| ip.to_string()).or_else(|| {
            destination
                .host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| ip.to_string())
        });
        let extra = args
            .conf
            .iter()
            .map(|line| conf::parse_extra(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Inputs {
            user,
            destination,
            servers: conf::parse_etcd_servers(&args.etcd_servers).map_err(|e| e.to_string())?,
            metadata: conf::parse_metadata(&args.metadata).map_err(|e| e.to_string())?,
            extra,
            public_ip,
            package: args.package.as_deref().map(Package::read).transpose()?,
            root: root_credential(args)?,
        })
    }
}

/// Connects as `user` (else `--ssh-username`) with fleetctl's SSH options.
pub(super) async fn connect(
    ctx: &Ctx,
    user: Option<&str>,
    destination: &Destination,
) -> Result<Master, Refused> {
    let mut options = SshOptions::from_env(&ctx.config)?;
    if let Some(user) = user {
        user.clone_into(&mut options.user);
    }
    let via = ctx.tunnel.as_deref().map(|tunnel| tunnel.master());
    Ok(Master::connect(&options, destination, via, AgentForwarding::Off).await?)
}

/// What this run changed, to undo newest first when a later step fails.
#[derive(Debug)]
enum Done {
    Installed { previous: Option<String> },
    Identity { machine: String },
    Conf { had_one: bool, made_dir: bool },
    Started { was_running: bool },
}

/// `fleetctl enrol`.
pub async fn run(ctx: &Ctx, args: EnrolArgs) -> anyhow::Result<Exit> {
    let inputs = match Inputs::read(&args) {
        Ok(inputs) => inputs,
        Err(error) => {
            ctx.console
                .err(&format!("Unable to enrol {}: {error}", args.host));
            return Ok(Exit::Failure);
        }
    };
    let mut run = Enrolment {
        ctx,
        args: &args,
        inputs,
        done: Vec::new(),
        upload: None,
        machine_id: String::new(),
    };
    let host = match run.check_host().await {
        Ok(host) => host,
        Err(Refused(why)) => return Ok(run.fail(0, &why, None).await),
    };
    let outcome = run.steps(&host.0, &host.1).await;
    if let Some(dir) = run.upload.take() {
        let _ = host.0.remove_upload(&dir).await;
    }
    match outcome {
        Ok(changed) if args.dry_run => {
            ctx.console.out(&format!(
                "Dry run: nothing was changed on {} ({})",
                args.host,
                if changed {
                    "enrol would change it"
                } else {
                    "already enrolled"
                }
            ));
            Ok(Exit::Success)
        }
        Ok(false) => {
            ctx.console.out(&format!(
                "Machine {} already enrolled, nothing to do",
                host.1.machine_id
            ));
            Ok(Exit::Success)
        }
        Ok(true) => {
            let _ = host.0.keep_conf().await;
            ctx.console
                .out(&format!("Machine {} enrolled", host.1.machine_id));
            Ok(Exit::Success)
        }
        Err((step, Refused(why))) => Ok(run.fail(step, &why, Some(&host.0)).await),
    }
}

struct Enrolment<'a> {
    ctx: &'a Ctx,
    args: &'a EnrolArgs,
    inputs: Inputs,
    done: Vec<Done>,
    /// The package's directory on the host, removed at the end.
    upload: Option<String>,
    /// The host's machine id, once step 1 read it.
    machine_id: String,
}

type StepResult<T> = Result<T, (usize, Refused)>;

fn at<T>(step: usize, result: Result<T, Refused>) -> StepResult<T> {
    result.map_err(|refused| (step, refused))
}

impl Enrolment<'_> {
    fn say(&self, step: usize, detail: &str, verdict: &str) {
        self.ctx.console.out(&step_line(step, detail, verdict));
    }

    /// Step 1: connect and judge the host.
    async fn check_host(&mut self) -> Result<(Host, HostFacts), Refused> {
        let master = connect(
            self.ctx,
            self.inputs.user.as_deref(),
            &self.inputs.destination,
        )
        .await?;
        let host = Host {
            master,
            sudo: false,
        };
        let facts = HostFacts::parse(&host.as_user(CHECK_SCRIPT).await?.stdout);
        let arch = self.inputs.package.as_ref().map(|p| p.arch.as_str());
        let summary = facts.judge(arch).map_err(Refused)?;
        if self.inputs.package.is_none() && facts.fleet_version.is_none() {
            return Err(Refused(
                "fleet is not installed on the host: give --package FILE.deb".to_owned(),
            ));
        }
        let host = Host {
            sudo: facts.needs_sudo(),
            ..host
        };
        self.say(0, &format!("{summary}, machine {}", facts.machine_id), "ok");
        facts.machine_id.clone_into(&mut self.machine_id);
        Ok((host, facts))
    }

    /// Steps 2 to 7; `Ok(true)` when something changed (or would, dry).
    async fn steps(&mut self, host: &Host, facts: &HostFacts) -> StepResult<bool> {
        let healthy = at(
            1,
            host.reachable_etcd(&self.inputs.servers, facts.curl).await,
        )?;
        if healthy.is_empty() {
            return Err((
                1,
                Refused(format!(
                    "etcd does not answer from the host at {}",
                    self.inputs.servers.join(",")
                )),
            ));
        }
        self.say(
            1,
            &format!(
                "{} of {} endpoints answer",
                healthy.len(),
                self.inputs.servers.len()
            ),
            "ok",
        );
        let installed = self.package_steps(host, facts).await?;
        let conf_changed = self.conf_step(host, facts).await?;
        let started = self.start_step(host, installed || conf_changed).await?;
        self.wait_step(facts).await?;
        Ok(installed || conf_changed || started)
    }

    /// Steps 3 and 4; `Ok(true)` when the package was (or would be) installed.
    async fn package_steps(&mut self, host: &Host, facts: &HostFacts) -> StepResult<bool> {
        let current = facts.fleet_version.clone();
        let Some(package) = self.inputs.package.clone() else {
            let version = current.unwrap_or_default();
            self.say(
                2,
                &format!("no --package; fleet {version} is installed"),
                "skipped",
            );
            self.say(3, &format!("fleet {version} is installed"), "skipped");
            return Ok(false);
        };
        if current.as_deref() == Some(package.version.as_str()) {
            self.say(
                2,
                &format!("fleet {} is installed", package.version),
                "up to date",
            );
            self.say(
                3,
                &format!("fleet {} is installed", package.version),
                "up to date",
            );
            return Ok(false);
        }
        let name = package.path.display();
        if self.args.dry_run {
            self.say(
                2,
                &format!("would copy {name} ({} bytes)", package.size),
                "dry run",
            );
            let over = current.map(|v| format!(" over {v}")).unwrap_or_default();
            self.say(
                3,
                &format!("would install fleet {}{over}", package.version),
                "dry run",
            );
            return Ok(true);
        }
        let dir = at(2, host.upload(&package.path, package.size).await)?;
        self.upload = Some(dir.clone());
        self.say(2, &format!("{name} ({} bytes)", package.size), "ok");
        at(3, host.dpkg_install(&dir).await)?;
        self.done.push(Done::Installed {
            previous: current.clone(),
        });
        let from = current.map(|v| format!(" (was {v})")).unwrap_or_default();
        self.say(3, &format!("fleet {}{from}", package.version), "ok");
        Ok(true)
    }

    /// Step 5; `Ok(true)` when fleet.conf changed (or would).
    async fn conf_step(&mut self, host: &Host, facts: &HostFacts) -> StepResult<bool> {
        const STEP: usize = 4;
        let existing = at(STEP, host.read_conf().await)?;
        let credential = self.credential(host, facts, existing.as_deref()).await?;
        let wanted = FleetConf {
            etcd_servers: self.inputs.servers.clone(),
            public_ip: self.inputs.public_ip.clone(),
            metadata: self.inputs.metadata.clone(),
            engine: self.args.engine,
            credential,
            extra: self.inputs.extra.clone(),
        }
        .render();
        if existing.as_deref() == Some(wanted.as_str()) {
            self.say(STEP, host::CONF, "unchanged");
            return Ok(false);
        }
        // The package's postinst leaves a commented sample: nothing set is "new" too.
        let what = match existing.as_deref().filter(|old| conf::has_settings(old)) {
            Some(old) => format!("changed {}", conf::changed_keys(old, &wanted).join(", ")),
            None => "new".to_owned(),
        };
        if self.args.dry_run {
            self.say(
                STEP,
                &format!("would write {} ({what})", host::CONF),
                "dry run",
            );
            return Ok(true);
        }
        let made_dir = at(STEP, host.write_conf(&wanted).await)?;
        self.done.push(Done::Conf {
            had_one: existing.is_some(),
            made_dir,
        });
        self.say(STEP, &format!("{} ({what}, mode 0600)", host::CONF), "ok");
        Ok(true)
    }

    /// The machine's etcd credential: none without etcd auth, the one its
    /// fleet.conf holds, else a new one made on the host.
    async fn credential(
        &mut self,
        host: &Host,
        facts: &HostFacts,
        existing: Option<&str>,
    ) -> StepResult<Option<Credential>> {
        let Some(root) = self.inputs.root.clone() else {
            return Ok(None);
        };
        let user = format!("fleet-machine-{}", facts.machine_id);
        if let Some(kept) = existing.and_then(Credential::from_lines)
            && kept.username == user
        {
            return Ok(Some(kept));
        }
        if self.args.dry_run {
            // A placeholder: the rendered file differs, as it will.
            return Ok(Some(Credential {
                username: user,
                password: "(new)".to_owned(),
            }));
        }
        let engine = if self.args.engine { " --engine" } else { "" };
        let command = format!("add-machine {}{engine}", facts.machine_id);
        let made = at(
            4,
            host.etcd_auth(&root, self.inputs.etcd_at(), &command).await,
        )?;
        self.done.push(Done::Identity {
            machine: facts.machine_id.clone(),
        });
        Credential::from_lines(&made.stdout)
            .map(Some)
            .ok_or_else(|| {
                (
                    4,
                    Refused("fleetd etcd-auth add-machine printed no credential".to_owned()),
                )
            })
    }

    /// Step 6; `Ok(true)` when fleet was (or would be) started or restarted.
    async fn start_step(&mut self, host: &Host, changed: bool) -> StepResult<bool> {
        const STEP: usize = 5;
        let running = at(STEP, host.fleet_running().await)?;
        if running && !changed {
            self.say(
                STEP,
                "fleet.socket and fleet.service enabled and running",
                "unchanged",
            );
            return Ok(false);
        }
        let verb = if running {
            "restart"
        } else {
            "enable and start"
        };
        if self.args.dry_run {
            self.say(
                STEP,
                &format!("would {verb} fleet.socket and fleet.service"),
                "dry run",
            );
            return Ok(true);
        }
        at(STEP, host.start_fleet(running).await)?;
        self.done.push(Done::Started {
            was_running: running,
        });
        self.say(
            STEP,
            &format!("{verb} fleet.socket and fleet.service"),
            "ok",
        );
        Ok(true)
    }

    /// Step 7: the machine is listed, with the metadata asked for.
    async fn wait_step(&mut self, facts: &HostFacts) -> StepResult<()> {
        const STEP: usize = 6;
        if self.args.dry_run {
            self.say(
                STEP,
                &format!(
                    "would wait up to {:?} for machine {}",
                    self.args.timeout, facts.machine_id
                ),
                "dry run",
            );
            return Ok(());
        }
        let deadline = Instant::now() + self.args.timeout;
        let mut last_error = String::new();
        loop {
            match self.ctx.client.machines().await {
                Ok(machines) => {
                    let listed = machines.iter().find(|m| m.id == facts.machine_id);
                    if let Some(machine) = listed
                        && self
                            .inputs
                            .metadata
                            .iter()
                            .all(|(k, v)| machine.metadata.get(k) == Some(v))
                    {
                        self.say(
                            STEP,
                            &format!("machine {} at {}", machine.id, machine.primary_ip),
                            "ok",
                        );
                        return Ok(());
                    }
                }
                Err(error) => last_error = format!(" (last error: {error})"),
            }
            if Instant::now() >= deadline {
                return Err((
                    STEP,
                    Refused(format!(
                        "machine {} is not listed after {:?}{last_error}",
                        facts.machine_id, self.args.timeout
                    )),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Prints the failure, undoes this run's changes and says so.
    async fn fail(&mut self, step: usize, why: &str, host: Option<&Host>) -> Exit {
        self.ctx.console.out(&step_line(step, why, "FAILED"));
        if let Some(host) = host {
            if step == 6 {
                let journal = host.fleet_journal().await;
                for line in journal.lines() {
                    self.ctx.console.err(&format!("  fleetd: {line}"));
                }
            }
            self.roll_back(host).await;
        }
        self.ctx.console.err(&format!(
            "Enrolment of {} failed at step {} ({}): {why}; the host was left as it was",
            self.args.host,
            step + 1,
            STEPS[step]
        ));
        Exit::Failure
    }

    async fn roll_back(&mut self, host: &Host) {
        let mut restart_after = false;
        while let Some(done) = self.done.pop() {
            let (what, result) = match &done {
                Done::Started { was_running: false } => {
                    let stopped = host.stop_fleet().await.map(|_| ());
                    // The fleetd this run started left a clean-stop mark in etcd.
                    let forget = format!("fleetd etcd-auth forget-machine {}", self.machine_id);
                    let _ = host.as_root(&forget, Input::Nothing).await;
                    ("stop and disable fleet", stopped)
                }
                Done::Started { was_running: true } => {
                    restart_after = true;
                    continue;
                }
                Done::Conf { had_one, made_dir } => (
                    if *had_one {
                        "restore the previous fleet.conf"
                    } else {
                        "remove fleet.conf"
                    },
                    host.restore_conf(*had_one, *made_dir).await.map(|_| ()),
                ),
                Done::Identity { machine } => match &self.inputs.root {
                    Some(root) => (
                        "remove the machine's etcd user",
                        host.etcd_auth(
                            root,
                            self.inputs.etcd_at(),
                            &format!("remove-machine {machine}"),
                        )
                        .await
                        .map(|_| ()),
                    ),
                    None => continue,
                },
                Done::Installed { previous: None } => {
                    ("purge the package", host.dpkg_purge().await.map(|_| ()))
                }
                Done::Installed {
                    previous: Some(version),
                } => {
                    self.ctx.console.err(&format!(
                        "rollback: fleet stays upgraded from {version} (the old package is not at hand)"
                    ));
                    continue;
                }
            };
            match result {
                Ok(()) => self.ctx.console.err(&format!("rollback: {what} ... ok")),
                Err(Refused(why)) => self
                    .ctx
                    .console
                    .err(&format!("rollback: {what} ... FAILED: {why}")),
            }
        }
        if restart_after {
            let restarted = host
                .must(
                    "restart fleet",
                    "systemctl restart fleet.service",
                    Input::Nothing,
                )
                .await;
            let verdict =
                restarted.map_or_else(|Refused(why)| format!("FAILED: {why}"), |_| "ok".to_owned());
            self.ctx.console.err(&format!(
                "rollback: restart fleet with the previous fleet.conf ... {verdict}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_before_the_at() {
        assert_eq!(
            split_user("root@10.0.0.1"),
            Ok((Some("root".to_owned()), "10.0.0.1"))
        );
        assert_eq!(split_user("h1:2222"), Ok((None, "h1:2222")));
        assert!(split_user("@h1").is_err());
        assert!(split_user("-oProxyCommand=x@h1").is_err());
        assert!(split_user("a b@h1").is_err());
    }

    #[test]
    fn steps_are_numbered() {
        assert_eq!(
            step_line(0, "systemd 252, amd64, root", "ok"),
            "[1/7] check host: systemd 252, amd64, root ... ok"
        );
        assert_eq!(
            step_line(6, "x", "FAILED"),
            "[7/7] wait for list-machines: x ... FAILED"
        );
    }
}
