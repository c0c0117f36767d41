//! The faults the chaos suite injects, each a named scenario: what it breaks, for how long,
//! and how it heals.
//!
//! A scenario names the hosts it touches. Faults of fleet alone (killing or restarting
//! fleetd, killing etcd members) touch no host: systemd must keep every unit's main PID
//! everywhere. Faults of a whole host (kill, freeze, cut) touch that host only.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Cluster, wait_until};

/// fleetd's key prefix in etcd (the default).
const ETCD_PREFIX: &str = "/_coreos.com/fleet/";

/// One named fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    KillFleetd,
    RestartAll,
    KillEngine,
    KillHost,
    FreezeHost,
    PartitionHost,
    EtcdLeaderKill,
    EtcdQuorumLoss,
    EtcdRestartAll,
    CleanStop,
}

/// Every scenario, in the order a full run takes them.
pub const ALL: [Scenario; 10] = [
    Scenario::KillFleetd,
    Scenario::RestartAll,
    Scenario::KillEngine,
    Scenario::KillHost,
    Scenario::FreezeHost,
    Scenario::PartitionHost,
    Scenario::EtcdLeaderKill,
    Scenario::EtcdQuorumLoss,
    Scenario::EtcdRestartAll,
    Scenario::CleanStop,
];

/// What a scenario broke, so it can be healed.
#[derive(Debug, Clone)]
pub enum Target {
    /// A host (or no host when the fault is fleet's alone).
    Host(Option<String>),
    /// etcd members (1-based).
    Members(Vec<usize>),
    /// Nothing to heal.
    Nothing,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillFleetd => "kill-fleetd",
            Scenario::RestartAll => "restart-all",
            Scenario::KillEngine => "kill-engine",
            Scenario::KillHost => "kill-host",
            Scenario::FreezeHost => "freeze-host",
            Scenario::PartitionHost => "partition-host",
            Scenario::EtcdLeaderKill => "etcd-leader-kill",
            Scenario::EtcdQuorumLoss => "etcd-quorum-loss",
            Scenario::EtcdRestartAll => "etcd-restart-all",
            Scenario::CleanStop => "clean-stop",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Hosts whose units may be restarted by this fault (the rest must keep their PIDs).
    pub fn touched(self, target: &Target) -> Vec<String> {
        match (self, target) {
            (
                Scenario::KillHost
                | Scenario::FreezeHost
                | Scenario::PartitionHost
                | Scenario::CleanStop,
                Target::Host(Some(host)),
            ) => vec![host.clone()],
            _ => Vec::new(),
        }
    }

    /// How long the fault lasts before it is healed, given the machine-loss window
    /// (`agent_ttl` + `machine_loss_grace`).
    pub fn hold(self, loss_window: Duration) -> Duration {
        match self {
            Scenario::KillHost => loss_window + Duration::from_secs(20),
            Scenario::FreezeHost => loss_window + Duration::from_secs(10),
            Scenario::PartitionHost => loss_window * 2,
            Scenario::EtcdLeaderKill => Duration::from_secs(20),
            Scenario::EtcdQuorumLoss => Duration::from_secs(60),
            Scenario::EtcdRestartAll => Duration::from_secs(2),
            Scenario::CleanStop => loss_window + Duration::from_secs(10),
            Scenario::KillFleetd | Scenario::RestartAll | Scenario::KillEngine => Duration::ZERO,
        }
    }

    /// Injects the fault, returning what to heal.
    ///
    /// # Errors
    /// The fault could not be injected (the message says which step).
    pub fn inject(self, cluster: &Cluster) -> anyhow::Result<Target> {
        let hosts = cluster.hosts();
        // Faulted hosts are spread over the cluster; h1 serves the suite's own requests.
        let pick = |idx: usize| hosts[idx % hosts.len()].clone();
        match self {
            Scenario::KillFleetd => {
                let host = pick(2);
                kill_fleetd(cluster, &host)?;
                Ok(Target::Host(None))
            }
            Scenario::KillEngine => {
                let host = retry("the engine leader", || engine_host(cluster))?;
                kill_fleetd(cluster, &host)?;
                Ok(Target::Host(None))
            }
            Scenario::RestartAll => {
                thread::scope(|scope| {
                    let restarts: Vec<_> = hosts
                        .iter()
                        .map(|host| {
                            scope.spawn(move || {
                                cluster.exec_ok(host, &["systemctl", "restart", "fleet"])
                            })
                        })
                        .collect();
                    for restart in restarts {
                        restart
                            .join()
                            .map_err(|_| anyhow::anyhow!("a restart thread panicked"))??;
                    }
                    anyhow::Ok(())
                })?;
                Ok(Target::Nothing)
            }
            Scenario::KillHost => self.break_one(cluster, pick(3), "kill"),
            Scenario::FreezeHost => self.break_one(cluster, pick(4), "freeze"),
            Scenario::PartitionHost => self.break_one(cluster, pick(1), "cut"),
            Scenario::CleanStop => {
                let host = pick(3);
                cluster.exec_ok(&host, &["systemctl", "stop", "fleet"])?;
                Ok(Target::Host(Some(host)))
            }
            Scenario::EtcdLeaderKill => {
                let leader = retry("the etcd leader", || etcd_leader(cluster))?;
                cluster.etcd_kill_member(leader)?;
                Ok(Target::Members(vec![leader]))
            }
            Scenario::EtcdQuorumLoss => {
                let leader = retry("the etcd leader", || etcd_leader(cluster))?;
                // The leader and one follower: the survivor alone has no quorum.
                let other = if leader == 1 { 2 } else { 1 };
                cluster.etcd_kill_member(leader)?;
                cluster.etcd_kill_member(other)?;
                Ok(Target::Members(vec![leader, other]))
            }
            Scenario::EtcdRestartAll => {
                for member in 1..=3 {
                    cluster.etcd_kill_member(member)?;
                }
                Ok(Target::Members(vec![1, 2, 3]))
            }
        }
    }

    fn break_one(self, cluster: &Cluster, host: String, how: &str) -> anyhow::Result<Target> {
        cluster.break_host(&host, how)?;
        Ok(Target::Host(Some(host)))
    }

    /// Undoes the fault.
    ///
    /// # Errors
    /// The heal failed (the message says which step).
    pub fn heal(self, cluster: &Cluster, target: &Target) -> anyhow::Result<()> {
        match (self, target) {
            (Scenario::KillHost, Target::Host(Some(host))) => cluster.boot_one(host, false),
            (Scenario::FreezeHost, Target::Host(Some(host))) => cluster.break_host(host, "thaw"),
            (Scenario::PartitionHost, Target::Host(Some(host))) => {
                cluster.break_host(host, "uncut")
            }
            (Scenario::CleanStop, Target::Host(Some(host))) => cluster
                .exec_ok(host, &["systemctl", "start", "fleet"])
                .map(drop),
            (_, Target::Members(members)) => {
                for member in members {
                    cluster.etcd_start_member(*member)?;
                }
                // The next scenario asks every member who leads. A restarted member once
                // exited at start on a loaded machine (its port refused connections for the
                // whole wait), so every 10 s the members are started again: a running one
                // is left alone.
                let mut next_start = Instant::now() + Duration::from_secs(10);
                wait_until(Duration::from_secs(60), "every etcd member healthy", || {
                    if Instant::now() >= next_start {
                        next_start = Instant::now() + Duration::from_secs(10);
                        for member in members {
                            cluster.etcd_start_member(*member)?;
                        }
                    }
                    Ok(etcdctl(cluster, &["endpoint", "health"]).is_ok())
                })
            }
            _ => Ok(()),
        }
    }
}

/// `find`'s answer, asked until it has one (for 30 s): after the previous scenario a leader
/// may still be being elected.
fn retry<T>(what: &str, mut find: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut found = None;
    wait_until(Duration::from_secs(30), what, || {
        found = Some(find()?);
        Ok(true)
    })?;
    found.context("no answer")
}

/// SIGKILLs fleetd in `host` (systemd restarts it after `RestartSec`).
fn kill_fleetd(cluster: &Cluster, host: &str) -> anyhow::Result<()> {
    cluster.exec_ok(
        host,
        &["systemctl", "kill", "--signal=KILL", "fleet.service"],
    )?;
    Ok(())
}

/// The host whose fleetd is the engine (the machine id in `P/engine/leader`).
fn engine_host(cluster: &Cluster) -> anyhow::Result<String> {
    let key = format!("{ETCD_PREFIX}engine/leader");
    let output = etcdctl(cluster, &["get", "--print-value-only", &key])?;
    let machine = output.trim();
    if machine.is_empty() {
        bail!("no engine leader in etcd ({key} is empty)");
    }
    for host in cluster.hosts() {
        if cluster.machine_id(host)? == machine {
            return Ok(host.clone());
        }
    }
    bail!("the engine leader {machine:?} is no test host")
}

/// The etcd member (1-based, in the order of the cluster's URLs) that leads Raft.
fn etcd_leader(cluster: &Cluster) -> anyhow::Result<usize> {
    let status = etcdctl(cluster, &["endpoint", "status", "-w", "json"])?;
    let rows: serde_json::Value = serde_json::from_str(&status).context("etcdctl status")?;
    let urls: Vec<&str> = cluster.etcd_url().split(',').collect();
    for row in rows.as_array().into_iter().flatten() {
        let member = row["Status"]["header"]["member_id"].as_u64();
        let leader = row["Status"]["leader"].as_u64();
        let endpoint = row["Endpoint"].as_str().unwrap_or_default();
        if member.is_some()
            && member == leader
            && let Some(idx) = urls.iter().position(|url| *url == endpoint)
        {
            return Ok(idx + 1);
        }
    }
    bail!("no etcd member says it leads: {status}")
}

/// `etcdctl --endpoints <all members> args...`, failing unless it exits 0.
pub(crate) fn etcdctl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", cluster.etcd_url(), "--command-timeout=5s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl")?;
    if !output.status.success() {
        bail!(
            "etcdctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_unknown_names_are_none() {
        for scenario in ALL {
            assert_eq!(Scenario::from_name(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::from_name("kill-everything"), None);
    }

    #[test]
    fn only_whole_host_faults_touch_a_host() {
        let host = Target::Host(Some("h3".to_string()));
        assert_eq!(Scenario::FreezeHost.touched(&host), ["h3"]);
        assert!(Scenario::KillFleetd.touched(&Target::Host(None)).is_empty());
        assert!(
            Scenario::EtcdQuorumLoss
                .touched(&Target::Members(vec![1, 2]))
                .is_empty()
        );
    }

    #[test]
    fn host_faults_outlast_the_machine_loss_window() {
        let window = Duration::from_secs(17);
        for scenario in [
            Scenario::KillHost,
            Scenario::FreezeHost,
            Scenario::PartitionHost,
            Scenario::CleanStop,
        ] {
            assert!(scenario.hold(window) > window, "{}", scenario.name());
        }
        assert_eq!(Scenario::PartitionHost.hold(window), window * 2);
    }
}
