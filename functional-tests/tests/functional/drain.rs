//! Cordon, drain, plan and why on real hosts (issue 12): a cordoned machine gets no new
//! unit; a drain moves every unit that can move off a machine (systemd there stops them,
//! systemd elsewhere runs them), leaves a unit pinned with `MachineID` and global units, and
//! exits 2 listing what it left; `plan` and `why` say which rule keeps a unit from a machine.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use functional_tests::{Cluster, wait_until};

use crate::foundation::{Fleet, host_of, install_everywhere};
use crate::rollout::engine_leader;

/// How long units may take to start or move on 2 busy cores.
const DEADLINE: Duration = Duration::from_secs(60);

const INSTANCES: [&str; 4] = [
    "mv@1.service",
    "mv@2.service",
    "mv@3.service",
    "mv@4.service",
];

/// `list-machines --fields machine,cordon`: machine id → `cordoned`, `draining` or `-`.
fn cordon_states(fleet: &Fleet) -> anyhow::Result<BTreeMap<String, String>> {
    let out = fleet.ctl_ok(&[
        "list-machines",
        "--no-legend",
        "--full",
        "--fields",
        "machine,cordon",
    ])?;
    out.lines()
        .map(|line| {
            let mut cells = line.split_whitespace();
            match (cells.next(), cells.next()) {
                (Some(id), Some(state)) => Ok((id.to_owned(), state.to_owned())),
                _ => anyhow::bail!("bad list-machines line {line:?}"),
            }
        })
        .collect()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn drain_moves_what_can_move_and_leaves_a_pinned_unit() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let [h1, h2, h3] = ["h1", "h2", "h3"].map(|host| cluster.machine_id(host));
    let (h1, h2, h3) = (h1?, h2?, h3?);
    let dir = tempfile::tempdir()?;
    let service = "[Service]\nExecStart=/bin/sleep infinity\n";
    write(dir.path(), "mv@.service", service)?;
    let pinned = write(
        dir.path(),
        "pinned.service",
        &format!("{service}\n[X-Fleet]\nMachineID={h1}\n"),
    )?;
    let global = write(
        dir.path(),
        "everywhere.service",
        &format!("{service}\n[X-Fleet]\nGlobal=true\n"),
    )?;
    let instances: Vec<String> = INSTANCES
        .iter()
        .map(|name| dir.path().join(name).to_string_lossy().into_owned())
        .collect();

    // Cordon h2 and h3 (by prefix): everything new lands on h1.
    fleet.ctl_ok(&["cordon", "--reason", "test", &h2[..8]])?;
    fleet.ctl_ok(&["cordon", &h3])?;
    let states = cordon_states(&fleet)?;
    assert_eq!(states[&h2], "cordoned", "{states:?}");
    assert_eq!(states[&h1], "-", "{states:?}");
    let mut start = vec!["start"];
    start.extend(instances.iter().map(String::as_str));
    start.push(&pinned);
    fleet.ctl_ok(&start)?;
    let placed = fleet.wait_active(&[&INSTANCES[..], &["pinned.service"]].concat(), DEADLINE)?;
    assert!(placed.values().all(|machine| machine == &h1), "{placed:?}");
    fleet.ctl_ok(&["start", &global])?;
    fleet.ctl_ok(&["uncordon", &h2[..8]])?;
    fleet.ctl_ok(&["uncordon", &h3[..8]])?;
    fleet.wait_units(DEADLINE, "the global unit on every machine", |rows| {
        rows.iter()
            .filter(|row| row.unit == "everywhere.service" && row.active == "active")
            .count()
            == 3
    })?;

    // Drain h1: the instances move, the pinned and the global unit stay; exit 2 says so.
    let drain = fleet.ctl(&["drain", "--timeout", "2m", &h1[..8]])?;
    let stdout = String::from_utf8_lossy(&drain.stdout);
    assert_eq!(
        drain.status.code(),
        Some(2),
        "drain: {stdout} {:?}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(stdout.contains("1 units cannot move"), "{stdout}");
    let left = stdout
        .lines()
        .find(|line| line.starts_with("pinned.service"))
        .context("pinned.service not listed")?;
    assert!(
        left.ends_with(&format!("no other machine matches MachineID={h1}")),
        "{stdout}"
    );
    let units = fleet.units()?;
    for name in INSTANCES {
        let row = units.iter().find(|row| row.unit == name).context(name)?;
        assert!(row.machine == h2 || row.machine == h3, "{row:?}");
        assert_eq!(row.active, "active", "{row:?}");
        // systemd on h1 no longer runs it.
        let on_h1 = cluster.exec("h1", &["systemctl", "is-active", name])?;
        assert_ne!(
            String::from_utf8_lossy(&on_h1.stdout).trim(),
            "active",
            "{name} still runs on h1"
        );
    }
    let pinned_row = units
        .iter()
        .find(|row| row.unit == "pinned.service")
        .context("pinned")?;
    assert_eq!(pinned_row.machine, h1);
    assert_eq!(
        units
            .iter()
            .filter(|row| row.unit == "everywhere.service")
            .count(),
        3
    );
    assert_eq!(cordon_states(&fleet)?[&h1], "draining");

    // A new unit goes anywhere but the draining machine; why and plan name the rules.
    let extra = write(dir.path(), "extra.service", service)?;
    fleet.ctl_ok(&["start", &extra])?;
    let placed = fleet.wait_active(&["extra.service"], DEADLINE)?;
    assert_ne!(placed["extra.service"], h1);
    let why = fleet.ctl_ok(&["why", "extra.service"])?;
    assert!(why.contains("machine is cordoned"), "{why}");
    let orphan = write(
        dir.path(),
        "orphan.service",
        &format!("{service}\n[X-Fleet]\nMachineOf=missing.service\n"),
    )?;
    let plan = fleet.ctl(&["plan", &orphan])?;
    let plan_out = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(1), "{plan_out}");
    assert!(
        plan_out.contains("cannot be placed: MachineOf peer missing.service is not scheduled"),
        "{plan_out}"
    );
    // start --dry-run says the same and starts nothing.
    let dry = fleet.ctl(&["start", "--dry-run", &orphan])?;
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(1), "{dry_out}");
    assert!(
        dry_out.contains("MachineOf peer missing.service"),
        "{dry_out}"
    );
    // plan and the dry run wrote nothing.
    assert!(
        fleet
            .units()?
            .iter()
            .all(|row| row.unit != "orphan.service")
    );
    assert!(
        !fleet
            .ctl_ok(&["list-unit-files", "--no-legend"])?
            .contains("orphan.service"),
        "a dry run submitted the unit"
    );

    // Uncordon: h1 is back in rotation for new units (nothing moves back by itself).
    fleet.ctl_ok(&["uncordon", &h1[..8]])?;
    wait_until(Duration::from_secs(10), "h1 uncordoned", || {
        Ok(cordon_states(&fleet)?[&h1] == "-")
    })?;
    Ok(())
}

/// How many units the failover drain moves: two batches of the drain's ten at a time.
const N_FAILOVER: usize = 20;

/// The engine's fleetd is killed while a drain runs (some units moved, some not yet): the
/// next engine continues the drain from the cordon record in etcd, and every unit ends up
/// running elsewhere. The units take 3 s to start, so the second batch waits for the first.
#[test]
fn a_drain_finishes_after_the_engine_is_killed() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let leader = engine_leader(&cluster)?;
    let leader_host = host_of(&cluster, &leader)?;
    // Drain a machine that is not the engine's, and talk to the third one.
    let others: Vec<String> = cluster
        .hosts()
        .iter()
        .filter(|host| **host != leader_host)
        .cloned()
        .collect();
    let [drained_host, kept_host] = &others[..] else {
        anyhow::bail!("expected two hosts beside the engine's: {others:?}");
    };
    let (drained, kept) = (
        cluster.machine_id(drained_host)?,
        cluster.machine_id(kept_host)?,
    );
    let fleet = Fleet::new(&cluster, kept_host)?;
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "slow@.service",
        "[Service]\nExecStartPre=/bin/sleep 3\nExecStart=/bin/sleep infinity\n",
    )?;
    let names: Vec<String> = (1..=N_FAILOVER)
        .map(|i| format!("slow@{i}.service"))
        .collect();
    let paths: Vec<String> = names
        .iter()
        .map(|name| dir.path().join(name).to_string_lossy().into_owned())
        .collect();
    // Everything on the drained machine; the engine's machine stays cordoned so that the
    // moved units all go to the kept one and the kill does not move them again.
    fleet.ctl_ok(&["cordon", &leader])?;
    fleet.ctl_ok(&["cordon", &kept])?;
    let mut start = vec!["start", "--no-block"];
    start.extend(paths.iter().map(String::as_str));
    fleet.ctl_ok(&start)?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let placed = fleet.wait_active(&name_refs, DEADLINE)?;
    assert!(placed.values().all(|m| *m == drained), "{placed:?}");
    fleet.ctl_ok(&["uncordon", &kept])?;

    fleet.ctl_ok(&["drain", "--no-block", &drained])?;
    let on_drained = || -> anyhow::Result<usize> {
        Ok(fleet
            .unit_files()?
            .iter()
            .filter(|row| row.unit.starts_with("slow@") && row.target == drained)
            .count())
    };
    wait_until(DEADLINE, "the first batch moved", || {
        Ok(on_drained()? < N_FAILOVER)
    })?;
    assert!(on_drained()? > 0, "the drain ended before the kill");
    cluster.exec_ok(
        &leader_host,
        &["systemctl", "kill", "-s", "KILL", "fleet.service"],
    )?;

    // Watch the drain (the next engine drives it) until nothing is left to move.
    let drain = fleet.ctl(&["drain", "--timeout", "2m", &drained])?;
    assert_eq!(
        drain.status.code(),
        Some(0),
        "drain: {} {}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    let placed = fleet.wait_active(&name_refs, DEADLINE)?;
    assert!(placed.values().all(|m| *m == kept), "{placed:?}");
    let running_on_drained = cluster.exec_ok(
        drained_host,
        &[
            "sh",
            "-c",
            "systemctl list-units --state=active --no-legend 'slow@*' | wc -l",
        ],
    )?;
    assert_eq!(running_on_drained.trim(), "0");
    assert_eq!(cordon_states(&fleet)?[&drained], "draining");
    assert_ne!(engine_leader(&cluster)?, leader, "the engine did not move");
    Ok(())
}

/// How many units the timed drain moves.
const N_DRAINED: usize = 100;

/// The drain figure of `Documentation/performance.md`: a machine running 100 units is
/// drained onto two others; every unit ends up active elsewhere. Prints the time.
#[test]
fn a_machine_running_100_units_drains() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let [h1, h2, h3] = ["h1", "h2", "h3"].map(|host| cluster.machine_id(host));
    let (h1, h2, h3) = (h1?, h2?, h3?);
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "load@.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )?;
    let names: Vec<String> = (1..=N_DRAINED)
        .map(|i| format!("load@{i}.service"))
        .collect();
    let paths: Vec<String> = names
        .iter()
        .map(|name| dir.path().join(name).to_string_lossy().into_owned())
        .collect();
    fleet.ctl_ok(&["cordon", &h2])?;
    fleet.ctl_ok(&["cordon", &h3])?;
    let mut start = vec!["start"];
    start.extend(paths.iter().map(String::as_str));
    fleet.ctl_ok(&start)?;
    fleet.ctl_ok(&["uncordon", &h2])?;
    fleet.ctl_ok(&["uncordon", &h3])?;

    let started = std::time::Instant::now();
    fleet.ctl_ok(&["drain", "--timeout", "5m", &h1])?;
    let took = started.elapsed();
    eprintln!("drain: {N_DRAINED} units moved off one machine onto two in {took:?}");

    let units = fleet.units()?;
    let active_elsewhere = units
        .iter()
        .filter(|row| row.unit.starts_with("load@") && row.machine != h1 && row.active == "active")
        .count();
    assert_eq!(active_elsewhere, N_DRAINED, "{units:?}");
    let running_on_h1 = cluster.exec_ok(
        "h1",
        &[
            "sh",
            "-c",
            "systemctl list-units --state=active --no-legend 'load@*' | wc -l",
        ],
    )?;
    assert_eq!(running_on_h1.trim(), "0");
    Ok(())
}
