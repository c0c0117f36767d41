//! Run-to-completion units end to end (issue 12): a `Type=oneshot` unit runs exactly once,
//! its success and exit time are shown, it is not run again by a fleetd restart nor when its
//! machine is killed afterwards; a failing one with `Retries=1` runs twice, on two machines,
//! and ends failed with its exit status. Every run appends a line to `/run/<unit>.log` in its
//! host, so the runs are counted in systemd's hosts, not in fleet's own reports.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use functional_tests::{Cluster, wait_until};

use crate::foundation::{Fleet, etcd_keys, host_of, install_everywhere};

/// How long a unit may take to start, run or move (machine loss: TTL 3 s + grace 2 s, plus
/// slack for two busy cores).
const DEADLINE: Duration = Duration::from_secs(60);

/// One row of `list-units --fields unit,active,sub,machine,result,status,exited,attempts`.
#[derive(Debug)]
struct RunRow {
    unit: String,
    active: String,
    machine: String,
    result: String,
    status: String,
    exited: String,
    attempts: String,
}

fn run_rows(fleet: &Fleet) -> anyhow::Result<Vec<RunRow>> {
    let out = fleet.ctl_ok(&[
        "list-units",
        "--no-legend",
        "--full",
        "--fields",
        "unit,active,machine,result,status,exited,attempts",
    ])?;
    out.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [unit, active, machine, result, status, exited, attempts] = fields[..] else {
                bail!("unexpected list-units row {line:?}");
            };
            Ok(RunRow {
                unit: unit.to_owned(),
                active: active.to_owned(),
                machine: machine.split('/').next().unwrap_or_default().to_owned(),
                result: result.to_owned(),
                status: status.to_owned(),
                exited: exited.to_owned(),
                attempts: attempts.to_owned(),
            })
        })
        .collect()
}

/// Waits until `unit`'s row satisfies `condition`; returns it.
fn wait_row(
    fleet: &Fleet,
    unit: &str,
    what: &str,
    condition: impl Fn(&RunRow) -> bool,
) -> anyhow::Result<RunRow> {
    let mut found = None;
    wait_until(DEADLINE, what, || {
        found = run_rows(fleet)?
            .into_iter()
            .find(|row| row.unit == unit && condition(row));
        Ok(found.is_some())
    })
    .with_context(|| format!("list-units: {:?}", run_rows(fleet).ok()))?;
    found.context("no row")
}

/// How many runs of `unit` each live host logged (`/run/<unit>.log`), by host.
fn runs_by_host(cluster: &Cluster, hosts: &[String], unit: &str) -> anyhow::Result<Vec<usize>> {
    let log = format!("/run/{unit}.log");
    hosts
        .iter()
        .map(|host| {
            let out = cluster.exec(host, &["cat", &log])?;
            Ok(String::from_utf8_lossy(&out.stdout).lines().count())
        })
        .collect()
}

fn write_unit(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// A oneshot follows `mover.service` (an ordinary unit) with `MachineOf=`; `after.service`
/// too, started later. The engine moving `mover.service` off a killed machine proves it
/// acted on the loss; the agent starting `after.service` after a fleetd restart proves it
/// reconciled (the same pass would have started the oneshot again).
#[test]
fn a_oneshot_runs_once_even_when_its_machine_is_killed_afterwards() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let dir = tempfile::tempdir()?;
    let mover = write_unit(
        dir.path(),
        "mover.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )?;
    let once = write_unit(
        dir.path(),
        "once.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo run >> /run/once.service.log'\n\
         [X-Fleet]\nMachineOf=mover.service\n",
    )?;
    fleet.ctl_ok(&["start", &mover])?;
    let placed = fleet.wait_active(&["mover.service"], DEADLINE)?;
    let machine = placed["mover.service"].clone();
    let host = host_of(&cluster, &machine)?;

    let started = Instant::now();
    fleet.ctl_ok(&["start", "--no-block", &once])?;
    let row = wait_row(&fleet, "once.service", "once.service succeeded", |row| {
        row.result == "success"
    })?;
    eprintln!(
        "oneshot: start to success shown in list-units in {:?}",
        started.elapsed()
    );
    assert_eq!(row.active, "inactive", "{row:?}");
    assert_eq!(row.status, "0", "{row:?}");
    assert_eq!(row.attempts, "1", "{row:?}");
    assert_eq!(row.machine, machine, "{row:?}");
    assert!(
        row.exited.ends_with('Z') && row.exited.len() == "2026-12-07T02:12:18Z".len(),
        "{row:?}"
    );
    let api = fleet.api("GET", "/fleet/v1/state?unitName=once.service", None, None)?;
    assert!(
        api.body.contains(r#""runResult":"success""#),
        "{}",
        api.body
    );
    let api = fleet.api("GET", "/fleet/v1/state?unitName=mover.service", None, None)?;
    assert!(!api.body.contains("runResult"), "{}", api.body);
    assert_eq!(
        runs_by_host(&cluster, cluster.hosts(), "once.service")?
            .iter()
            .sum::<usize>(),
        1
    );

    // A fleetd restart does not run it again.
    cluster.exec_ok(&host, &["systemctl", "restart", "fleet.service"])?;
    let after = write_unit(
        dir.path(),
        "after.service",
        "[Service]\nExecStart=/bin/sleep infinity\n[X-Fleet]\nMachineOf=mover.service\n",
    )?;
    fleet.ctl_ok(&["start", &after])?;
    fleet.wait_active(&["after.service"], DEADLINE)?;
    wait_row(
        &fleet,
        "once.service",
        "once.service reported again",
        |row| row.result == "success",
    )?;
    assert_eq!(
        runs_by_host(&cluster, cluster.hosts(), "once.service")?,
        cluster
            .hosts()
            .iter()
            .map(|h| usize::from(*h == host))
            .collect::<Vec<_>>(),
        "the oneshot ran again after a fleetd restart"
    );

    // Its machine is killed: mover.service moves, once.service does not run elsewhere.
    // Talk through a host that stays.
    let kept = cluster
        .hosts()
        .iter()
        .find(|h| **h != host)
        .context("no second host")?;
    let fleet = Fleet::new(&cluster, kept)?;
    cluster.break_host(&host, "kill")?;
    // The killed machine's states stay listed until its lease expires.
    fleet.wait_units(DEADLINE, "mover.service active elsewhere", |rows| {
        rows.iter().any(|row| {
            row.unit == "mover.service" && row.active == "active" && row.machine != machine
        }) && rows.iter().all(|row| row.machine != machine)
    })?;
    let moved = fleet.wait_active(&["mover.service", "after.service"], DEADLINE)?;
    assert_ne!(moved["mover.service"], machine);
    let live: Vec<String> = cluster
        .hosts()
        .iter()
        .filter(|h| **h != host)
        .cloned()
        .collect();
    assert_eq!(
        runs_by_host(&cluster, &live, "once.service")?,
        vec![0; live.len()],
        "the oneshot ran again after its machine was lost"
    );
    // The engine still knows it finished: the outcome outlived the machine's lease.
    let kept = etcd_keys(&cluster, "machine/runs/")?;
    assert!(
        kept.iter()
            .any(|key| key.ends_with(&format!("{machine}/once.service"))),
        "{kept:?}"
    );
    Ok(())
}

/// `Retries=1`: the first run fails, the engine counts it and runs the unit again on another
/// machine, which fails too; the unit ends `failed` with the exit status and 2 attempts.
#[test]
fn a_failing_oneshot_with_one_retry_runs_twice_on_two_machines() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let dir = tempfile::tempdir()?;
    let fail = write_unit(
        dir.path(),
        "fail.service",
        "[Service]\nType=oneshot\n\
         ExecStart=/bin/sh -c 'echo run >> /run/fail.service.log; exit 3'\n\
         [X-Fleet]\nRetries=1\n",
    )?;
    let started = Instant::now();
    fleet.ctl_ok(&["start", "--no-block", &fail])?;
    let row = wait_row(&fleet, "fail.service", "the retry failed", |row| {
        row.attempts == "2" && row.result == "exit-code"
    })?;
    eprintln!(
        "oneshot: a failing run and its retry on another machine reported in {:?}",
        started.elapsed()
    );
    assert_eq!(row.active, "failed", "{row:?}");
    assert_eq!(row.status, "3", "{row:?}");
    let runs = runs_by_host(&cluster, cluster.hosts(), "fail.service")?;
    assert_eq!(runs.iter().sum::<usize>(), 2, "runs by host: {runs:?}");
    assert_eq!(
        runs.iter().filter(|n| **n == 1).count(),
        2,
        "not on two machines: {runs:?}"
    );
    // No third run: the unit stays failed where it ran last.
    let status = fleet.ctl_ok(&["list-unit-files", "--no-legend", "--fields", "unit,state"])?;
    assert!(status.contains("launched"), "{status}");
    let api = fleet.api("GET", "/fleet/v1/state?unitName=fail.service", None, None)?;
    assert!(
        api.body.contains(r#""exitStatus":3"#) && api.body.contains(r#""attempts":2"#),
        "{}",
        api.body
    );
    Ok(())
}
