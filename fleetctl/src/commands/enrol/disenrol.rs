//! `fleetctl disenrol MACHINE --reason WHY`: takes a machine out of the
//! cluster for good and leaves its host without fleet.
//!
//! 1. connect to the machine's primary IP (as `fleetctl ssh MACHINE`) and
//!    check the host there has that machine id: never purge the wrong host;
//! 2. drain it (the engine moves its units; `fleetctl drain`), recording who
//!    and why with the cordon (fleetd logs both);
//! 3. stop and disable fleet there, logging who and why in the host's journal;
//! 4. delete the machine's keys in etcd (`fleetd etcd-auth forget-machine`
//!    on the host, with its own credentials, once its presence is gone);
//! 5. with etcd auth, delete its etcd user and role (`remove-machine`, with
//!    the root credentials given);
//! 6. stop the units fleet had started there, `dpkg -P fleet`, remove
//!    `/etc/fleet`;
//! 7. check the host is clean (no fleetd, no /etc/fleet, no fleet units),
//!    drop the cordon, and check the machine is gone from list-machines.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fleet_api::entities::Machine;
use tokio::time::Instant;

use crate::cli::DrainArgs;
use crate::cli::parse_duration;
use crate::commands::cordon::{UNITS_LEFT, run_drain, who};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::ssh::Destination;
use crate::ssh::resolve::{machine_by_prefix, ssh_address};
use crate::ssh::script::{Input, sh_quote};

use super::conf::{self, Credential};
use super::host::{EtcdAt, Host, Refused};
use super::{POLL, connect, root_from};

#[derive(Debug, Args)]
pub struct DisenrolArgs {
    /// Why (required: recorded with the drain, logged on the host and printed)
    #[arg(long, value_name = "WHY", required = true)]
    pub reason: String,
    /// Disenrol even when units pinned to the machine cannot move (they stop)
    #[arg(long)]
    pub force: bool,
    /// Give up waiting for the drain after this long
    #[arg(long = "drain-timeout", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long to wait for etcd to let go of the machine once fleet stopped
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// etcd's root user, to delete the machine's own etcd user (etcd auth)
    #[arg(long = "etcd-root-user", value_name = "USER", default_value = "root")]
    pub etcd_root_user: String,
    /// File holding etcd's root password (or FLEETCTL_ETCD_ROOT_PASSWORD)
    #[arg(long = "etcd-root-password-file", value_name = "FILE")]
    pub etcd_root_password_file: Option<PathBuf>,
    /// Port of sshd on the machine
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// The machine: its ID or a unique prefix of it
    #[arg(value_name = "MACHINE")]
    pub machine: String,
}

const STEPS: [&str; 7] = [
    "connect",
    "drain",
    "stop fleet",
    "forget etcd keys",
    "remove etcd identity",
    "purge fleet",
    "check clean",
];

/// What the host looks like when fleet is gone; prints what is left.
const CLEAN_CHECK: &str = "left=''; [ -e /usr/bin/fleetd ] && left=\"$left /usr/bin/fleetd\"; \
    [ -e /etc/fleet ] && left=\"$left /etc/fleet\"; \
    units=$(systemctl list-unit-files fleet.service fleet.socket --no-legend 2>/dev/null | awk '{print $1}' | tr '\\n' ' '); \
    [ -n \"$units\" ] && left=\"$left $units\"; \
    dpkg-query -W -f='${db:Status-Status}' fleet 2>/dev/null | grep -q . && left=\"$left package\"; \
    [ -z \"$left\" ] || { echo \"left:$left\"; exit 1; }";

struct Disenrolment<'a> {
    ctx: &'a Ctx,
    args: &'a DisenrolArgs,
    root: Option<Credential>,
    by: String,
}

type StepResult<T> = Result<T, (usize, Refused)>;

fn at<T>(step: usize, result: Result<T, Refused>) -> StepResult<T> {
    result.map_err(|refused| (step, refused))
}

/// `fleetctl disenrol`.
pub async fn run(ctx: &Ctx, args: DisenrolArgs) -> anyhow::Result<Exit> {
    if args.reason.trim().is_empty() {
        ctx.console
            .err("Unable to disenrol: give --reason (a destructive act is logged with why)");
        return Ok(Exit::Failure);
    }
    let root = match root_from(
        &args.etcd_root_user,
        args.etcd_root_password_file.as_deref(),
    ) {
        Ok(root) => root,
        Err(error) => {
            ctx.console.err(&format!("Unable to disenrol: {error}"));
            return Ok(Exit::Failure);
        }
    };
    let run = Disenrolment {
        ctx,
        args: &args,
        root,
        by: who(),
    };
    match run.steps().await {
        Ok(machine) => {
            ctx.console.out(&format!(
                "Machine {machine} disenrolled by {}: {}",
                run.by, args.reason
            ));
            Ok(Exit::Success)
        }
        Err((step, Refused(why))) => {
            ctx.console.out(&run.line(step, &why, "FAILED"));
            ctx.console.err(&format!(
                "Disenrolment of {} stopped at step {} ({}): {why}",
                args.machine,
                step + 1,
                STEPS[step]
            ));
            Ok(Exit::Failure)
        }
    }
}

impl Disenrolment<'_> {
    fn line(&self, step: usize, detail: &str, verdict: &str) -> String {
        format!(
            "[{}/{}] {}: {detail} ... {verdict}",
            step + 1,
            STEPS.len(),
            STEPS[step]
        )
    }

    fn say(&self, step: usize, detail: &str, verdict: &str) {
        self.ctx.console.out(&self.line(step, detail, verdict));
    }

    async fn steps(&self) -> StepResult<String> {
        let (machine, host, host_conf) = self.connect_step().await?;
        self.drain_step(&machine).await?;
        at(2, host.stop_fleet().await)?;
        let note = format!(
            "fleet disenrolled machine {} by {}: {}",
            machine.id, self.by, self.args.reason
        );
        let _ = host
            .as_root(
                &format!("logger -t fleetctl {}", sh_quote(&note)),
                Input::Nothing,
            )
            .await;
        self.say(
            2,
            "fleet.service and fleet.socket stopped and disabled",
            "ok",
        );
        self.forget_step(&host, &machine).await?;
        self.identity_step(&host, &machine, &host_conf).await?;
        let units_dir = conf::value_of(&host_conf, "units_directory")
            .filter(|dir| dir.starts_with('/') && !dir.contains(['\'', '"', '$', '`', '\\']))
            .unwrap_or_else(|| "/run/fleet/units".to_owned());
        let purge = format!(
            "d={}; for f in \"$d\"/*; do [ -e \"$f\" ] || continue; n=$(basename \"$f\"); \
             systemctl stop \"$n\" 2>/dev/null; rm -f \"/run/systemd/system/$n\"; done; rm -rf \"$d\"; \
             DEBIAN_FRONTEND=noninteractive dpkg -P fleet && rm -rf /etc/fleet && systemctl daemon-reload && \
             {{ systemctl reset-failed fleet.service fleet.socket 2>/dev/null; true; }}",
            sh_quote(units_dir.trim_end_matches('/'))
        );
        at(5, host.must("purging fleet", &purge, Input::Nothing).await)?;
        self.say(
            5,
            "units fleet started stopped, dpkg -P fleet, /etc/fleet removed",
            "ok",
        );
        at(
            6,
            host.must("the host is not clean", CLEAN_CHECK, Input::Nothing)
                .await,
        )?;
        self.gone_step(&machine).await?;
        Ok(machine.id)
    }

    /// Step 1: the machine, its host over SSH (checked to be that machine)
    /// and the host's fleet.conf.
    async fn connect_step(&self) -> StepResult<(Machine, Host, String)> {
        let machines = at(
            0,
            self.ctx
                .client
                .machines()
                .await
                .map_err(|e| Refused(format!("listing machines: {e}"))),
        )?;
        let machine = at(
            0,
            machine_by_prefix(&machines, &self.args.machine)
                .cloned()
                .map_err(|e| Refused(format!("{e}: {}", self.args.machine))),
        )?;
        if machine.primary_ip.is_empty() {
            return Err((
                0,
                Refused(format!("machine {} has no primary IP", machine.id)),
            ));
        }
        let destination = at(
            0,
            Destination::parse(&ssh_address(&machine.primary_ip, self.args.ssh_port))
                .map_err(Refused::from),
        )?;
        let master = at(0, connect(self.ctx, None, &destination).await)?;
        let host = Host {
            master,
            sudo: false,
        };
        let facts = at(0, host.as_user("id -u; cat /etc/machine-id").await)?;
        let mut lines = facts.stdout.lines().map(str::trim);
        let root = lines.next() == Some("0");
        let host = Host {
            sudo: !root,
            ..host
        };
        if lines.next() != Some(machine.id.as_str()) {
            return Err((
                0,
                Refused(format!(
                    "the host at {} is not machine {} (its /etc/machine-id differs)",
                    machine.primary_ip, machine.id
                )),
            ));
        }
        let host_conf = at(0, host.read_conf().await)?.unwrap_or_default();
        let has_identity = conf::value_of(&host_conf, "etcd_username")
            .is_some_and(|user| user == format!("fleet-machine-{}", machine.id));
        if has_identity && self.root.is_none() {
            return Err((
                0,
                Refused(
                    "the machine has its own etcd user: give etcd's root credentials (--etcd-root-password-file or FLEETCTL_ETCD_ROOT_PASSWORD) to remove it".to_owned(),
                ),
            ));
        }
        self.say(
            0,
            &format!("machine {} at {}", machine.id, machine.primary_ip),
            "ok",
        );
        Ok((machine, host, host_conf))
    }

    async fn drain_step(&self, machine: &Machine) -> StepResult<()> {
        let drain = DrainArgs {
            reason: format!("disenrol: {}", self.args.reason),
            no_block: false,
            timeout: Some(self.args.drain_timeout),
            machine: machine.id.clone(),
        };
        match run_drain(self.ctx, drain).await {
            Ok(Exit::Success) => {
                self.say(1, &format!("by {}", self.by), "ok");
                Ok(())
            }
            Ok(exit) if exit == UNITS_LEFT && self.args.force => {
                self.say(1, "units pinned to the machine stay and stop with it (--force)", "ok");
                Ok(())
            }
            Ok(exit) if exit == UNITS_LEFT => Err((
                1,
                Refused("units cannot move off the machine (listed above): move or destroy them, or give --force".to_owned()),
            )),
            Ok(_) => Err((1, Refused("the drain did not finish (see above)".to_owned()))),
            Err(error) => Err((1, Refused(error.to_string()))),
        }
    }

    /// Step 4: once etcd has let go of the machine's presence, its keys.
    async fn forget_step(&self, host: &Host, machine: &Machine) -> StepResult<()> {
        let deadline = Instant::now() + self.args.timeout;
        let script = format!("fleetd etcd-auth forget-machine {}", machine.id);
        loop {
            let captured = at(3, host.as_root(&script, Input::Nothing).await)?;
            if captured.success() {
                self.say(3, captured.stdout.trim(), "ok");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err((
                    3,
                    Refused(format!(
                        "fleetd etcd-auth forget-machine: {}",
                        captured.reason()
                    )),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn identity_step(
        &self,
        host: &Host,
        machine: &Machine,
        host_conf: &str,
    ) -> StepResult<()> {
        let has_identity = conf::value_of(host_conf, "etcd_username").is_some();
        match (&self.root, has_identity) {
            (Some(root), true) => {
                let command = format!("remove-machine {}", machine.id);
                let removed = at(4, host.etcd_auth(root, EtcdAt::HostConf, &command).await)?;
                self.say(4, removed.stdout.trim(), "ok");
            }
            _ => self.say(4, "the machine has no etcd user of its own", "skipped"),
        }
        Ok(())
    }

    /// Step 7 (after the host check): the cordon dropped, the machine unlisted.
    async fn gone_step(&self, machine: &Machine) -> StepResult<()> {
        if let Err(error) = self.ctx.client.uncordon(&machine.id).await
            && !error.is_not_found()
        {
            return Err((6, Refused(format!("dropping the cordon: {error}"))));
        }
        let deadline = Instant::now() + self.args.timeout;
        loop {
            if let Ok(machines) = self.ctx.client.machines().await
                && !machines.iter().any(|m| m.id == machine.id)
            {
                self.say(
                    6,
                    "no fleetd, /etc/fleet or fleet units on the host; not in list-machines",
                    "ok",
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err((
                    6,
                    Refused(format!("machine {} is still listed", machine.id)),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
