//! Rolling updates end to end (issue 12): `fleetctl update` of a template with six running
//! instances on three real systemd hosts. The checks read systemd on the hosts: how many
//! instances are down at once, and which version each runs (every version writes its name
//! to `/run/web-<instance>.version` when it starts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use functional_tests::{Cluster, wait_until};

use crate::foundation::{Fleet, host_of, install_everywhere};

const N_INSTANCES: usize = 6;

/// How long six instances may take to start (two busy cores).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a whole rollout of six instances may take: 3 batches of 2 s healthy time
/// plus stop/start, or a 10 s healthy deadline and a revert, with slack for busy cores
/// and an engine failover.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

/// A template whose instances write `version` to their marker and then run; `extra` goes
/// into `[Service]` after `ExecStart` (a failing version adds its own `ExecStartPost`).
fn template(version: &str, exec: &str) -> String {
    format!(
        "[Unit]\nDescription=web %i {version}\n\n[Service]\n\
         ExecStart=/bin/sh -c 'echo {version} > /run/web-%i.version; {exec}'\n"
    )
}

/// Writes `web@.service` with `text` into a new directory under `dir`.
fn write_template(dir: &Path, sub: &str, text: &str) -> anyhow::Result<PathBuf> {
    let sub = dir.join(sub);
    std::fs::create_dir_all(&sub)?;
    let path = sub.join("web@.service");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn instances() -> Vec<String> {
    (1..=N_INSTANCES)
        .map(|i| format!("web@{i}.service"))
        .collect()
}

/// A cluster of three hosts running six instances of version `v1`.
fn six_instances(cluster: &Cluster, dir: &Path) -> anyhow::Result<PathBuf> {
    install_everywhere(cluster)?;
    let fleet = Fleet::new(cluster, "h1")?;
    let v1 = write_template(dir, "v1", &template("v1", "exec sleep infinity"))?;
    let mut args = vec!["submit".to_owned(), v1.to_string_lossy().into_owned()];
    for name in instances() {
        args.push(v1.with_file_name(name).to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet.ctl_ok(&args)?;
    let names = instances();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut start = vec!["start"];
    start.extend(&names);
    fleet.ctl_ok(&start)?;
    fleet.wait_active(&names, START_DEADLINE)?;
    Ok(v1)
}

/// How many instances systemd runs (`active`) on any host.
fn n_active(cluster: &Cluster) -> anyhow::Result<usize> {
    let names = instances();
    let mut active = vec![false; names.len()];
    for host in cluster.hosts() {
        let mut cmd = vec!["systemctl", "is-active"];
        cmd.extend(names.iter().map(String::as_str));
        // Non-zero when any is not active: read the lines, not the status.
        let output = cluster.exec(host, &cmd)?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        for (slot, line) in active.iter_mut().zip(text.lines()) {
            *slot |= line.trim() == "active";
        }
    }
    Ok(active.into_iter().filter(|up| *up).count())
}

/// The version each instance's marker names on the host where the instance is active.
fn versions(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    for host in cluster.hosts() {
        for (idx, name) in instances().iter().enumerate() {
            let state = cluster.exec(host, &["systemctl", "is-active", name])?;
            if String::from_utf8_lossy(&state.stdout).trim() != "active" {
                continue;
            }
            let marker = format!("/run/web-{}.version", idx + 1);
            let version = cluster.exec_ok(host, &["cat", &marker])?;
            found.insert(name.clone(), version.trim().to_owned());
        }
    }
    Ok(found)
}

/// The phase `fleetctl update --status web@.service` prints.
fn phase(fleet: &Fleet) -> anyhow::Result<String> {
    let out = fleet.ctl_ok(&["update", "--status", "web@.service"])?;
    let first = out.lines().next().unwrap_or_default();
    // "Rollout web@.service: <phase> (<n>/<m> updated)"
    Ok(first
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_default()
        .to_owned())
}

fn wait_phase(fleet: &Fleet, wanted: &str) -> anyhow::Result<()> {
    wait_until(ROLLOUT_DEADLINE, &format!("rollout {wanted}"), || {
        let now = phase(fleet)?;
        if now != wanted && ["succeeded", "reverted", "aborted", "failed"].contains(&now.as_str()) {
            bail!("the rollout ended {now}, not {wanted}");
        }
        Ok(now == wanted)
    })
    .with_context(|| {
        fleet
            .ctl_ok(&["update", "--status", "web@.service"])
            .unwrap_or_default()
    })
}

fn all_on(versions: &BTreeMap<String, String>, version: &str) -> bool {
    versions.len() == N_INSTANCES && versions.values().all(|v| v == version)
}

/// Six instances, `--max-parallel 2`: a sampler reads systemd on every host throughout the
/// rollout and never sees more than two instances down; at the end every instance runs v2
/// and the unit records carry the new hash.
#[test]
fn a_rollout_of_six_instances_keeps_at_most_two_down() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    let dir = tempfile::tempdir()?;
    six_instances(&cluster, dir.path())?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let v1_hash = template_hash(&fleet)?;
    let v2 = write_template(dir.path(), "v2", &template("v2", "exec sleep infinity"))?;

    let done = Arc::new(AtomicBool::new(false));
    let max_down = Arc::new(AtomicUsize::new(0));
    let n_samples = Arc::new(AtomicUsize::new(0));
    let result = std::thread::scope(|scope| -> anyhow::Result<()> {
        let sampler = scope.spawn(|| -> anyhow::Result<()> {
            while !done.load(Ordering::Acquire) {
                let down = N_INSTANCES - n_active(&cluster)?;
                max_down.fetch_max(down, Ordering::AcqRel);
                n_samples.fetch_add(1, Ordering::AcqRel);
            }
            Ok(())
        });
        let v2_path = v2.to_string_lossy().into_owned();
        let outcome = fleet.ctl_ok(&[
            "update",
            "--max-parallel",
            "2",
            "--min-healthy-time",
            "2s",
            "--healthy-deadline",
            "60s",
            &v2_path,
        ]);
        done.store(true, Ordering::Release);
        let sampled = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        sampled?;
        let out = outcome?;
        assert!(out.contains("Succeeded"), "fleetctl update printed {out:?}");
        Ok(())
    });
    result?;
    assert!(
        n_samples.load(Ordering::Acquire) >= 5,
        "too few samples to judge"
    );
    let max_down = max_down.load(Ordering::Acquire);
    assert!(max_down <= 2, "{max_down} instances were down at once");
    assert_eq!(phase(&fleet)?, "succeeded");
    let versions = versions(&cluster)?;
    assert!(all_on(&versions, "v2"), "instances run {versions:?}");
    let after = fleet.unit_files()?;
    assert_eq!(after.len(), N_INSTANCES + 1, "{after:?}");
    for row in &after {
        assert_ne!(row.hash, v1_hash, "{} keeps the old content", row.unit);
        assert_eq!(row.hash, after[0].hash, "{} differs", row.unit);
    }
    Ok(())
}

/// A v2 that runs but fails the health check it declares (`HealthCheckExec=`, run by the
/// agents on the hosts): past the healthy deadline the engine reverts by itself and every
/// instance runs v1 again.
#[test]
fn a_rollout_whose_new_version_is_unhealthy_reverts_every_instance() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    let dir = tempfile::tempdir()?;
    six_instances(&cluster, dir.path())?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let v1_hash = template_hash(&fleet)?;
    // Active, but its declared check never passes.
    let broken = format!(
        "{}\n[X-Fleet]\nHealthCheckExec=test -e /run/web-%i.healthy\nHealthCheckInterval=1s\n",
        template("v2", "exec sleep infinity")
    );
    let v2 = write_template(dir.path(), "v2", &broken)?;
    let out = fleet.ctl(&[
        "update",
        "--max-parallel",
        "2",
        "--min-healthy-time",
        "2s",
        "--healthy-deadline",
        "10s",
        &v2.to_string_lossy(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "update of a broken version succeeded: {stdout}"
    );
    assert!(
        stdout.contains("reverting 2"),
        "fleetctl update printed {stdout:?}"
    );
    assert!(
        stdout.contains("health check failing"),
        "fleetctl update printed {stdout:?}"
    );
    assert_eq!(phase(&fleet)?, "reverted");
    wait_until(ROLLOUT_DEADLINE, "every instance back on v1", || {
        Ok(all_on(&versions(&cluster)?, "v1"))
    })
    .with_context(|| format!("{:?}", versions(&cluster)))?;
    for row in fleet.unit_files()? {
        assert_eq!(row.hash, v1_hash, "{} changed content", row.unit);
    }
    Ok(())
}

/// The engine's fleetd is killed while the rollout runs; another engine takes over from
/// the progress in etcd and the rollout finishes with every instance on v2.
#[test]
fn a_rollout_finishes_after_the_engine_is_killed() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    let dir = tempfile::tempdir()?;
    six_instances(&cluster, dir.path())?;
    let v2 = write_template(dir.path(), "v2", &template("v2", "exec sleep infinity"))?;
    let leader = engine_leader(&cluster)?;
    let leader_host = host_of(&cluster, &leader)?;
    // Talk to a host that keeps its fleetd.
    let other = cluster
        .hosts()
        .iter()
        .find(|host| **host != leader_host)
        .context("no second host")?
        .clone();
    let fleet = Fleet::new(&cluster, &other)?;
    fleet.ctl_ok(&[
        "update",
        "--no-block",
        "--max-parallel",
        "1",
        "--min-healthy-time",
        "3s",
        "--healthy-deadline",
        "60s",
        &v2.to_string_lossy(),
    ])?;
    wait_until(ROLLOUT_DEADLINE, "the first instance updated", || {
        let out = fleet.ctl_ok(&["update", "--status", "web@.service"])?;
        Ok(out.contains("healthy"))
    })?;
    assert_eq!(
        phase(&fleet)?,
        "running",
        "the rollout ended before the kill"
    );
    cluster.exec_ok(
        &leader_host,
        &["systemctl", "kill", "-s", "KILL", "fleet.service"],
    )?;
    wait_phase(&fleet, "succeeded")?;
    wait_until(ROLLOUT_DEADLINE, "every instance on v2", || {
        Ok(all_on(&versions(&cluster)?, "v2"))
    })
    .with_context(|| format!("{:?}", versions(&cluster)))?;
    let status = fleet.ctl_ok(&["update", "--status", "web@.service"])?;
    assert!(status.contains("Succeeded"), "{status}");
    Ok(())
}

/// A global unit that notes each start and stop in `/run/stamp.log` (`start <ns>` or
/// `stop <ns>`, nanoseconds of the host clock, which every test host shares); `%%` and `$$`
/// are systemd's escapes for a literal `%` and `$`.
const STAMPED: &str = "[Service]\n\
    ExecStartPre=/bin/sh -c 'echo start $$(date +%%s%%N) >> /run/stamp.log'\n\
    ExecStart=/bin/sleep infinity\n\
    ExecStopPost=/bin/sh -c 'echo stop $$(date +%%s%%N) >> /run/stamp.log'\n\
    [X-Fleet]\nGlobal=true\n";

/// The (stop, start again) times of one host's restart, from its stamp log.
fn restart_window(cluster: &Cluster, host: &str) -> anyhow::Result<(u128, u128)> {
    let log = cluster.exec_ok(host, &["cat", "/run/stamp.log"])?;
    let stamps: Vec<(&str, u128)> = log
        .lines()
        .map(|line| {
            let (what, at) = line.split_once(' ').context("bad stamp line")?;
            Ok((what, at.trim().parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    match stamps[..] {
        [("start", _), ("stop", stop), ("start", again)] => Ok((stop, again)),
        _ => bail!("{host} was not restarted exactly once: {log}"),
    }
}

/// Starts [`STAMPED`] and waits until it is active on each of the 3 hosts.
fn start_stamped_everywhere(fleet: &Fleet) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stamp.service");
    std::fs::write(&path, STAMPED)?;
    fleet.ctl_ok(&["start", &path.to_string_lossy()])?;
    fleet.wait_units(START_DEADLINE, "the global unit on every host", |rows| {
        rows.iter()
            .filter(|row| row.unit == "stamp.service" && row.active == "active")
            .count()
            == 3
    })
}

/// systemd on every host stopped and started [`STAMPED`] exactly once, and no host
/// stopped it before the previous one had started it again.
fn assert_restarted_one_machine_at_a_time(cluster: &Cluster) -> anyhow::Result<()> {
    let mut windows = Vec::new();
    for host in cluster.hosts() {
        windows.push(restart_window(cluster, host)?);
    }
    windows.sort();
    for pair in windows.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two machines were down at once: {windows:?}"
        );
    }
    Ok(())
}

/// `fleetctl restart` of a global unit goes through the agents, one machine at a time:
/// systemd on every host stopped and started it exactly once, and no host stopped it
/// before the previous one had started it again.
#[test]
fn a_global_unit_restarts_machine_by_machine_through_the_agents() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    start_stamped_everywhere(&fleet)?;
    let started = std::time::Instant::now();
    let out = fleet.ctl_ok(&["restart", "stamp.service"])?;
    eprintln!(
        "restart: a global unit restarted on 3 machines one at a time in {:?}",
        started.elapsed()
    );
    assert!(
        out.contains("Restarting global unit stamp.service machine by machine"),
        "{out}"
    );
    assert!(
        out.contains("Triggered global unit stamp.service restart"),
        "{out}"
    );
    assert_restarted_one_machine_at_a_time(&cluster)?;
    let status = fleet.ctl_ok(&["update", "--status", "stamp.service"])?;
    assert!(status.contains("Succeeded"), "{status}");
    Ok(())
}

/// The engine's fleetd is killed with SIGKILL in the middle of `fleetctl restart` of a
/// global unit (one machine restarted, the others not yet): the next engine continues the
/// restart from its progress in etcd, and every host still stops and starts the unit exactly
/// once, never two hosts at a time. The restart is followed through a host whose fleetd is
/// not the engine's.
#[test]
fn a_global_restart_finishes_after_the_engine_is_killed() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let leader = engine_leader(&cluster)?;
    let leader_host = host_of(&cluster, &leader)?;
    let other = cluster
        .hosts()
        .iter()
        .find(|host| **host != leader_host)
        .context("no second host")?
        .clone();
    let fleet = Fleet::new(&cluster, &other)?;
    start_stamped_everywhere(&fleet)?;
    let n_restarted = || -> anyhow::Result<usize> {
        let mut restarted = 0;
        for host in cluster.hosts() {
            let log = cluster.exec_ok(host, &["cat", "/run/stamp.log"])?;
            restarted += usize::from(log.lines().count() >= 3);
        }
        Ok(restarted)
    };
    let result = std::thread::scope(|scope| -> anyhow::Result<()> {
        // A long healthy time, so that the kill lands between two machines.
        let restart = scope.spawn(|| {
            fleet.ctl_ok(&[
                "restart",
                "--min-healthy-time",
                "5s",
                "--healthy-deadline",
                "60s",
                "stamp.service",
            ])
        });
        let killed = wait_until(ROLLOUT_DEADLINE, "one machine restarted", || {
            Ok(n_restarted()? >= 1)
        })
        .and_then(|()| {
            if n_restarted()? == 3 {
                bail!("the restart ended before the kill");
            }
            cluster.exec_ok(
                &leader_host,
                &["systemctl", "kill", "-s", "KILL", "fleet.service"],
            )?;
            Ok(())
        });
        let out = restart
            .join()
            .map_err(|_| anyhow::anyhow!("the restart thread panicked"))?;
        killed?;
        let out = out?;
        assert!(
            out.contains("Triggered global unit stamp.service restart"),
            "{out}"
        );
        Ok(())
    });
    result?;
    assert_restarted_one_machine_at_a_time(&cluster)?;
    assert_ne!(engine_leader(&cluster)?, leader, "the engine did not move");
    let status = fleet.ctl_ok(&["update", "--status", "stamp.service"])?;
    assert!(status.contains("Succeeded"), "{status}");
    Ok(())
}

/// The hash `list-unit-files` shows for the template.
fn template_hash(fleet: &Fleet) -> anyhow::Result<String> {
    fleet
        .unit_files()?
        .into_iter()
        .find(|row| row.unit == "web@.service")
        .map(|row| row.hash)
        .context("web@.service is not listed")
}

/// The machine id in `P/engine/leader`.
pub(crate) fn engine_leader(cluster: &Cluster) -> anyhow::Result<String> {
    let endpoint = cluster
        .etcd_url()
        .split(',')
        .next()
        .context("no etcd url")?
        .to_string();
    let mut leader = String::new();
    wait_until(Duration::from_secs(20), "an engine leader", || {
        let output = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoint, "get", "--print-value-only"])
            .arg(format!("{}engine/leader", crate::foundation::PREFIX))
            .output()
            .context("running etcdctl")?;
        leader = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(!leader.is_empty())
    })?;
    Ok(leader)
}
