//! Running scenarios: set up the cluster and workload once, then for each scenario wait for a
//! healthy cluster, inject the fault while a watcher samples systemd in every host each tick,
//! heal it, and wait for convergence.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ledger::{Expected, Ledger, Limits, Sample};
use super::observe::host_units;
use super::scenario::Scenario;
use super::workload::{self, PREFIX};
use crate::{Cluster, wait_until};

/// `agent_ttl` in the suite's fleet.conf: short, so machines are lost quickly.
pub const AGENT_TTL: Duration = Duration::from_secs(5);
/// `machine_loss_grace` in the suite's fleet.conf: longer than fleetd's `RestartSec` (10 s)
/// minus the TTL, so a killed fleetd is back before its machine counts as lost.
pub const MACHINE_LOSS_GRACE: Duration = Duration::from_secs(12);
/// How often the watcher samples every host.
const TICK: Duration = Duration::from_secs(1);
/// How long a healed cluster may take to converge before the scenario fails.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(180);
/// How long the watcher goes on after convergence, to catch late stops and doubles.
const SETTLE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts to boot (the full suite: 5).
    pub hosts: usize,
    /// Units in the workload (the full suite: 300).
    pub units: usize,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// fleet.conf lines added after the suite's own (`--conf`).
    pub conf: Vec<String>,
}

/// The outcome of one scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    /// Every invariant held and the cluster converged.
    pub ok: bool,
    /// From the heal to the first converged tick.
    pub converge: Option<Duration>,
    pub missing_unit_seconds: f64,
    pub doubled_unit_seconds: f64,
    pub longest_missing: Duration,
    pub longest_doubled: Duration,
    pub restarts_untouched: usize,
    /// Broken invariants, or the error that stopped the scenario.
    pub problems: Vec<String>,
}

/// The suite's limits: no copy for at most ttl + grace + 15 s; two copies for at most one
/// `agent_ttl` (the time a returning agent takes to learn its units moved and stop them).
pub fn limits() -> Limits {
    Limits {
        missing: AGENT_TTL + MACHINE_LOSS_GRACE + Duration::from_secs(15),
        doubled: AGENT_TTL,
    }
}

/// Sets up a cluster with the workload and runs `options.scenarios`, one row each. `progress`
/// receives a line per step.
///
/// # Errors
/// The cluster or workload could not be set up (a scenario's own failure is a failed row).
pub fn run(options: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Row>> {
    let cluster = Cluster::start_with(options.hosts, 3)?;
    let ttl = format!("agent_ttl={}s", AGENT_TTL.as_secs());
    let grace = format!("machine_loss_grace={}", MACHINE_LOSS_GRACE.as_secs());
    let mut conf: Vec<&str> = vec![&ttl, &grace];
    conf.extend(options.conf.iter().map(String::as_str));
    for host in cluster.hosts() {
        cluster.install_fleet(host, &conf)?;
    }
    let dir = tempfile::tempdir()?;
    let workload = workload::write(dir.path(), cluster.hosts(), options.units)?;
    let started = Instant::now();
    wait_machines(&cluster, options.hosts)?;
    submit(&cluster, &workload.paths)?;
    wait_converged(&cluster, &workload.expected, Duration::from_secs(600))?;
    progress(&format!(
        "{} units on {} hosts converged in {:.1} s",
        options.units,
        options.hosts,
        started.elapsed().as_secs_f64()
    ));
    let mut rows = Vec::new();
    for scenario in &options.scenarios {
        progress(&format!("scenario {}", scenario.name()));
        let row = run_one(&cluster, *scenario, &workload.expected).unwrap_or_else(|error| Row {
            name: scenario.name(),
            ok: false,
            converge: None,
            missing_unit_seconds: 0.0,
            doubled_unit_seconds: 0.0,
            longest_missing: Duration::ZERO,
            longest_doubled: Duration::ZERO,
            restarts_untouched: 0,
            problems: vec![format!("{error:#}")],
        });
        progress(&format!("  {}", super::report::line(&row)));
        rows.push(row);
    }
    Ok(rows)
}

/// One scenario from a converged cluster to a converged cluster.
fn run_one(cluster: &Cluster, scenario: Scenario, expected: &Expected) -> anyhow::Result<Row> {
    wait_converged(cluster, expected, CONVERGE_DEADLINE)
        .context("the cluster was not healthy before the scenario")?;
    let loss_window = AGENT_TTL + MACHINE_LOSS_GRACE;
    let begin = Instant::now();
    let first = sample(cluster);
    // The baseline needs the touched hosts, known once the fault picked its target; the
    // first sample, taken just before, is the healthy state it compares against.
    let target = scenario.inject(cluster)?;
    let touched = scenario.touched(&target);
    let mut ledger = Ledger::new(expected.clone(), limits(), &first, &touched);
    // Recorded as the first tick, so a stretch that began while the fault was being injected
    // (killing a host takes seconds) is dated from before it.
    ledger.record(Duration::ZERO, &first);
    let ledger = Arc::new(Mutex::new(ledger));
    let stop = Arc::new(AtomicBool::new(false));
    let result = thread::scope(|scope| {
        let watcher = scope.spawn(|| watch(cluster, begin, &ledger, &stop));
        let result = fault_and_heal(cluster, scenario, &target, loss_window, begin, &ledger);
        stop.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        result
    });
    let mut ledger = ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger poisoned"))?
        .clone();
    ledger.finish(begin.elapsed());
    let mut problems = ledger.violations.clone();
    if let Err(error) = result {
        problems.push(format!("{error:#}"));
    }
    let converge = match (ledger.healed_at, ledger.converged_at) {
        (Some(healed), Some(converged)) => Some(converged.saturating_sub(healed)),
        _ => None,
    };
    if converge.is_none() && problems.is_empty() {
        problems.push("the cluster did not converge".to_string());
    }
    Ok(Row {
        name: scenario.name(),
        ok: problems.is_empty(),
        converge,
        missing_unit_seconds: ledger.missing_unit_seconds,
        doubled_unit_seconds: ledger.doubled_unit_seconds,
        longest_missing: ledger.longest_missing,
        longest_doubled: ledger.longest_doubled,
        restarts_untouched: ledger.restarts(),
        problems,
    })
}

/// Holds the fault, heals it, and waits for the watcher to see convergence, then settles.
fn fault_and_heal(
    cluster: &Cluster,
    scenario: Scenario,
    target: &super::scenario::Target,
    loss_window: Duration,
    begin: Instant,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<()> {
    // The fault's length is the point of the scenario, not a wait for a condition.
    thread::sleep(scenario.hold(loss_window));
    let healed = scenario.heal(cluster, target);
    if let Ok(mut ledger) = ledger.lock() {
        ledger.healed_at = Some(begin.elapsed());
    }
    healed.context("healing the fault")?;
    wait_until(CONVERGE_DEADLINE, "the cluster to converge", || {
        let ledger = ledger
            .lock()
            .map_err(|_| anyhow::anyhow!("ledger poisoned"))?;
        Ok(ledger.converged_at.is_some())
    })?;
    thread::sleep(SETTLE);
    Ok(())
}

/// Samples every host each tick into `ledger` until `stop`.
fn watch(cluster: &Cluster, begin: Instant, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let sample = sample(cluster);
        if let Ok(mut ledger) = ledger.lock() {
            ledger.record(begin.elapsed(), &sample);
        }
        if let Some(rest) = TICK.checked_sub(tick.elapsed()) {
            thread::sleep(rest);
        }
    }
}

/// What systemd runs in every host now, asked in parallel.
fn sample(cluster: &Cluster) -> Sample {
    thread::scope(|scope| {
        let asks: Vec<_> = cluster
            .hosts()
            .iter()
            .map(|host| (host.clone(), scope.spawn(move || host_units(host, PREFIX))))
            .collect();
        asks.into_iter()
            .map(|(host, ask)| (host, ask.join().ok().flatten()))
            .collect::<BTreeMap<_, _>>()
    })
}

/// Waits until systemd in every host shows the workload converged.
fn wait_converged(
    cluster: &Cluster,
    expected: &Expected,
    deadline: Duration,
) -> anyhow::Result<()> {
    wait_until(deadline, "every launched unit active exactly once", || {
        Ok(expected.converged(&sample(cluster)))
    })
}

/// Waits until fleet lists `n` machines.
fn wait_machines(cluster: &Cluster, n: usize) -> anyhow::Result<()> {
    let endpoint = cluster.endpoint(&cluster.hosts()[0])?;
    wait_until(Duration::from_secs(60), "every machine listed", || {
        let output = cluster.fleetctl(["--endpoint", &endpoint, "list-machines", "--no-legend"])?;
        let listed = String::from_utf8_lossy(&output.stdout).lines().count();
        Ok(output.status.success() && listed == n)
    })
}

/// `fleetctl start --no-block` of every workload unit through the first host.
fn submit(cluster: &Cluster, paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let endpoint = cluster.endpoint(&cluster.hosts()[0])?;
    let mut args = vec![
        "--endpoint".into(),
        endpoint.into(),
        "start".into(),
        "--no-block".into(),
    ];
    args.extend(paths.iter().map(|path| path.clone().into_os_string()));
    let output = cluster.fleetctl(args)?;
    if !output.status.success() {
        bail!(
            "fleetctl start failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
