//! Units on real systemd hosts, end to end (issue 5): start/stop/unload/destroy reach
//! systemd, the scheduler's constraints (Conflicts, one-way conflicts, MachineOf,
//! MachineMetadata, MachineID, Global, Replaces) place units where they must, `--replace`
//! reloads a changed unit, a lost machine's units move (with their MachineOf followers) and
//! neither a rebooted nor a thawed machine keeps running them, restarting fleet or losing etcd
//! for longer than the TTL leaves the units alone, and a unit that cannot start is reported
//! `failed` without blocking others.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use functional_tests::{Cluster, wait_until, workspace_root};

use crate::foundation::{Fleet, host_of};

/// How long a unit may take to become active (the target is well under a second; 2 busy
/// cores and debug builds need slack).
const ACTIVE_DEADLINE: Duration = Duration::from_secs(30);

/// What systemd in `host` says of `unit` (`systemctl is-active`).
fn systemd_state(cluster: &Cluster, host: &str, unit: &str) -> anyhow::Result<String> {
    let output = cluster.exec(host, &["systemctl", "is-active", unit])?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Waits until systemd in `host` says `state` of `unit`.
fn wait_systemd(cluster: &Cluster, host: &str, unit: &str, state: &str) -> anyhow::Result<()> {
    wait_until(
        ACTIVE_DEADLINE,
        &format!("{unit} {state} in {host}'s systemd"),
        || Ok(systemd_state(cluster, host, unit)? == state),
    )
}

/// Writes a unit file into `dir`, returning its path.
fn unit_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// A long-running service, with extra lines for its `[X-Fleet]` section.
fn sleeper(x_fleet: &str) -> String {
    format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\n{x_fleet}\n")
}

/// start/stop/unload/destroy in systemd; Conflicts, MachineOf, MachineMetadata, MachineID,
/// Global and Replaces; `--replace`; a failing unit next to a working one.
#[test]
fn units_run_where_the_scheduler_puts_them() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    crate::foundation::install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let dir = tempfile::tempdir()?;
    let hello = workspace_root().join("examples/hello.service");
    let hello = hello.to_string_lossy();

    // start (blocking) → active in list-units and in the systemd of the machine it names.
    let started = fleet.ctl_ok(&["start", "--block-attempts=15", &hello])?;
    assert!(
        started.contains("Unit hello.service launched on"),
        "start said {started:?}"
    );
    let placed = fleet.wait_active(&["hello.service"], ACTIVE_DEADLINE)?;
    let host = host_of(&cluster, &placed["hello.service"])?;
    assert_eq!(systemd_state(&cluster, &host, "hello.service")?, "active");
    for other in cluster.hosts().iter().filter(|other| **other != host) {
        assert_ne!(
            systemd_state(&cluster, other, "hello.service")?,
            "active",
            "{other}"
        );
    }

    // stop → loaded but not running; unload → gone from systemd and list-units; destroy.
    fleet.ctl_ok(&["stop", "--block-attempts=15", "hello.service"])?;
    wait_systemd(&cluster, &host, "hello.service", "inactive")?;
    fleet.wait_units(ACTIVE_DEADLINE, "hello.service inactive", |units| {
        units
            .iter()
            .any(|row| row.unit == "hello.service" && row.active == "inactive")
    })?;
    fleet.ctl_ok(&["unload", "--block-attempts=15", "hello.service"])?;
    fleet.wait_units(
        ACTIVE_DEADLINE,
        "hello.service out of list-units",
        |units| units.iter().all(|row| row.unit != "hello.service"),
    )?;
    wait_until(
        ACTIVE_DEADLINE,
        "hello.service unloaded from systemd",
        || {
            let load = cluster.exec_ok(
                &host,
                &["systemctl", "show", "-p", "LoadState", "hello.service"],
            )?;
            Ok(load.trim() == "LoadState=not-found")
        },
    )?;
    fleet.ctl_ok(&["destroy", "hello.service"])?;
    wait_until(ACTIVE_DEADLINE, "hello.service destroyed", || {
        Ok(fleet
            .unit_files()?
            .iter()
            .all(|row| row.unit != "hello.service"))
    })?;

    // Six instances that conflict with each other: one per machine, three wait.
    unit_file(
        dir.path(),
        "conflict@.service",
        &sleeper("Conflicts=conflict@*.service"),
    )?;
    let instances: Vec<String> = (1..=6)
        .map(|idx| {
            dir.path()
                .join(format!("conflict@{idx}.service"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(instances.iter().map(String::as_str));
    fleet.ctl_ok(&args)?;
    fleet.wait_units(ACTIVE_DEADLINE, "3 conflict@ units active", |units| {
        units.iter().filter(|row| row.active == "active").count() == 3
    })?;
    let units = fleet.units()?;
    let machines: BTreeSet<&str> = units
        .iter()
        .filter(|row| row.active == "active")
        .map(|row| row.machine.as_str())
        .collect();
    assert_eq!(
        machines.len(),
        3,
        "two conflicting units share a machine: {units:?}"
    );
    let files = fleet.unit_files()?;
    let conflict_files: Vec<_> = files
        .iter()
        .filter(|row| row.unit.starts_with("conflict@"))
        .collect();
    assert_eq!(conflict_files.len(), 6, "{files:?}");
    assert!(
        conflict_files.iter().all(|row| row.dstate == "launched"),
        "{files:?}"
    );
    let waiting = conflict_files
        .iter()
        .filter(|row| row.target == "-")
        .count();
    assert_eq!(waiting, 3, "{files:?}");
    let names: Vec<String> = conflict_files.iter().map(|row| row.unit.clone()).collect();
    let mut args = vec!["destroy"];
    args.extend(names.iter().map(String::as_str));
    fleet.ctl_ok(&args)?;
    fleet.wait_units(ACTIVE_DEADLINE, "conflict@ units gone", |units| {
        units.iter().all(|row| !row.unit.starts_with("conflict@"))
    })?;
    // Destroying a running unit stops it in systemd too.
    for host in cluster.hosts() {
        wait_until(
            ACTIVE_DEADLINE,
            &format!("conflict@ units stopped in {host}"),
            || {
                let active = cluster.exec_ok(
                    host,
                    &[
                        "systemctl",
                        "list-units",
                        "--state=active",
                        "--no-legend",
                        "conflict@*",
                    ],
                )?;
                Ok(active.trim().is_empty())
            },
        )?;
    }

    // MachineOf, MachineMetadata, MachineID.
    let h3_id = cluster.machine_id("h3")?;
    let ping = unit_file(dir.path(), "ping.service", &sleeper(""))?;
    let pong = unit_file(
        dir.path(),
        "pong.service",
        &sleeper("MachineOf=ping.service"),
    )?;
    let meta = unit_file(
        dir.path(),
        "meta.service",
        &sleeper("MachineMetadata=hostname=h2"),
    )?;
    let pin = unit_file(
        dir.path(),
        "pin.service",
        &sleeper(&format!("MachineID={h3_id}")),
    )?;
    fleet.ctl_ok(&["start", "--no-block", &ping, &pong, &meta, &pin])?;
    let placed = fleet.wait_active(
        &[
            "ping.service",
            "pong.service",
            "meta.service",
            "pin.service",
        ],
        ACTIVE_DEADLINE,
    )?;
    assert_eq!(
        placed["pong.service"], placed["ping.service"],
        "MachineOf ignored"
    );
    assert_eq!(
        placed["meta.service"],
        cluster.machine_id("h2")?,
        "MachineMetadata ignored"
    );
    assert_eq!(placed["pin.service"], h3_id, "MachineID ignored");
    wait_systemd(&cluster, "h3", "pin.service", "active")?;
    wait_systemd(&cluster, "h2", "meta.service", "active")?;

    // A global unit runs on every machine.
    let global = workspace_root().join("examples/global.service");
    fleet.ctl_ok(&["start", &global.to_string_lossy()])?;
    fleet.wait_units(
        ACTIVE_DEADLINE,
        "global.service active on 3 machines",
        |units| {
            let machines: BTreeSet<&str> = units
                .iter()
                .filter(|row| row.unit == "global.service" && row.active == "active")
                .map(|row| row.machine.as_str())
                .collect();
            machines.len() == 3
        },
    )?;
    for host in cluster.hosts() {
        wait_systemd(&cluster, host, "global.service", "active")?;
    }

    // Replaces: kick is held to victim's machine and displaces it.
    let victim = unit_file(dir.path(), "victim.service", &sleeper(""))?;
    fleet.ctl_ok(&["start", "--no-block", &victim])?;
    let victim_machine =
        fleet.wait_active(&["victim.service"], ACTIVE_DEADLINE)?["victim.service"].clone();
    let victim_host = host_of(&cluster, &victim_machine)?;
    let kick = unit_file(
        dir.path(),
        "kick.service",
        &sleeper(&format!(
            "Replaces=victim.service\nMachineMetadata=hostname={victim_host}"
        )),
    )?;
    fleet.ctl_ok(&["start", "--no-block", &kick])?;
    let mut last = None;
    wait_until(ACTIVE_DEADLINE, "kick on victim's old machine, victim elsewhere", || {
        let placed = fleet.wait_active(&["victim.service", "kick.service"], Duration::ZERO);
        let done = matches!(&placed, Ok(placed)
            if placed["kick.service"] == victim_machine && placed["victim.service"] != victim_machine);
        last = Some(fleet.units()?);
        Ok(done)
    })
    .with_context(|| format!("list-units: {last:?}"))?;
    wait_until(ACTIVE_DEADLINE, "victim stopped on its old host", || {
        Ok(systemd_state(&cluster, &victim_host, "victim.service")? != "active")
    })?;

    // --replace of a changed unit: its host reloads the new text.
    let changed = unit_file(
        dir.path(),
        "changed.service",
        "[Service]\nExecStart=/bin/sleep 1001\n",
    )?;
    fleet.ctl_ok(&["start", "--block-attempts=15", &changed])?;
    fleet.wait_active(&["changed.service"], ACTIVE_DEADLINE)?;
    unit_file(
        dir.path(),
        "changed.service",
        "[Service]\nExecStart=/bin/sleep 1002\n",
    )?;
    fleet.ctl_ok(&["start", "--replace", "--block-attempts=15", &changed])?;
    wait_until(
        ACTIVE_DEADLINE,
        "changed.service running the new text",
        || {
            let placed = fleet.wait_active(&["changed.service"], Duration::ZERO)?;
            let host = host_of(&cluster, &placed["changed.service"])?;
            let text = cluster.exec_ok(&host, &["systemctl", "cat", "changed.service"])?;
            Ok(text.contains("sleep 1002")
                && systemd_state(&cluster, &host, "changed.service")? == "active")
        },
    )?;

    // A one-way conflict (TestScheduleOneWayConflict), both held to h1: lonely waits while
    // grumpy runs, and takes h1 once grumpy is destroyed.
    let grumpy = unit_file(
        dir.path(),
        "grumpy.service",
        &sleeper("Conflicts=lonely.service\nMachineMetadata=hostname=h1"),
    )?;
    let lonely = unit_file(
        dir.path(),
        "lonely.service",
        &sleeper("MachineMetadata=hostname=h1"),
    )?;
    fleet.ctl_ok(&["start", "--block-attempts=15", &grumpy])?;
    // marker, started with lonely, shows the engine has been through both.
    let marker = unit_file(
        dir.path(),
        "marker.service",
        &sleeper("MachineMetadata=hostname=h1"),
    )?;
    fleet.ctl_ok(&["start", "--no-block", &lonely, &marker])?;
    fleet.wait_active(&["marker.service"], ACTIVE_DEADLINE)?;
    let files = fleet.unit_files()?;
    let lonely_row = files
        .iter()
        .find(|row| row.unit == "lonely.service")
        .context("lonely.service not listed")?;
    assert_eq!(
        lonely_row.target, "-",
        "lonely placed next to grumpy: {files:?}"
    );
    fleet.ctl_ok(&["destroy", "grumpy.service"])?;
    let placed = fleet.wait_active(&["lonely.service"], ACTIVE_DEADLINE)?;
    assert_eq!(placed["lonely.service"], cluster.machine_id("h1")?);
    wait_systemd(&cluster, "h1", "grumpy.service", "inactive")?;

    // A unit whose binary does not exist is `failed`; another unit still starts.
    let broken = unit_file(
        dir.path(),
        "broken.service",
        "[Service]\nExecStart=/no/such/binary\n",
    )?;
    fleet.ctl_ok(&["start", "--no-block", &broken])?;
    fleet.wait_units(ACTIVE_DEADLINE, "broken.service failed", |units| {
        units
            .iter()
            .any(|row| row.unit == "broken.service" && row.active == "failed")
    })?;
    let after = unit_file(dir.path(), "after.service", &sleeper(""))?;
    fleet.ctl_ok(&["start", "--block-attempts=15", &after])?;
    fleet.wait_active(&["after.service"], ACTIVE_DEADLINE)?;
    Ok(())
}

/// Restarting fleet leaves its units running; a killed machine's units move and its return
/// does not run them again; a frozen machine that comes back stops what moved away.
#[test]
fn units_survive_fleet_restart_and_leave_a_lost_machine() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    // A longer grace than elsewhere: a restart of fleet must not look like a lost machine.
    for host in cluster.hosts() {
        cluster.install_fleet(host, &["agent_ttl=3s", "machine_loss_grace=8"])?;
    }
    // h1 stays up throughout: the test talks to it.
    let fleet = Fleet::new(&cluster, "h1")?;
    wait_until(Duration::from_secs(20), "3 machines", || {
        Ok(fleet.machines()?.len() == 3)
    })?;
    let dir = tempfile::tempdir()?;

    // work1 on h1; work2 on h2 or h3 (OR within one metadata key).
    let work1 = unit_file(
        dir.path(),
        "work1.service",
        &sleeper("MachineMetadata=hostname=h1"),
    )?;
    let work2 = unit_file(
        dir.path(),
        "work2.service",
        &sleeper("MachineMetadata=hostname=h2\nMachineMetadata=hostname=h3"),
    )?;
    // follow2 goes wherever work2 goes.
    let follow2 = unit_file(
        dir.path(),
        "follow2.service",
        &sleeper("MachineOf=work2.service"),
    )?;
    fleet.ctl_ok(&["start", "--no-block", &work1, &work2, &follow2])?;
    let placed = fleet.wait_active(
        &["work1.service", "work2.service", "follow2.service"],
        ACTIVE_DEADLINE,
    )?;
    assert_eq!(placed["follow2.service"], placed["work2.service"]);
    assert_eq!(placed["work1.service"], cluster.machine_id("h1")?);

    // `systemctl restart fleet` in h1: work1 keeps its process.
    wait_systemd(&cluster, "h1", "work1.service", "active")?;
    let show = || {
        cluster.exec_ok(
            "h1",
            &[
                "systemctl",
                "show",
                "-p",
                "ExecMainStartTimestamp,MainPID",
                "work1.service",
            ],
        )
    };
    let before = show()?;
    assert!(
        before.contains("MainPID=") && !before.contains("MainPID=0\n"),
        "work1 has no main process: {before}"
    );
    cluster.exec_ok("h1", &["systemctl", "restart", "fleet"])?;
    let h1_id = cluster.machine_id("h1")?;
    wait_until(
        ACTIVE_DEADLINE,
        "work1 reported again after the restart",
        || {
            let placed = fleet.wait_active(&["work1.service"], Duration::ZERO)?;
            Ok(placed["work1.service"] == h1_id)
        },
    )?;
    assert_eq!(show()?, before, "restarting fleet restarted work1");

    // Kill work2's host: work2 moves to the other one once TTL + grace have passed...
    let machine2 = placed["work2.service"].clone();
    let host2 = host_of(&cluster, &machine2)?;
    let other = if host2 == "h2" { "h3" } else { "h2" };
    let other_id = cluster.machine_id(other)?;
    cluster.break_host(&host2, "kill")?;
    let moved_deadline = Duration::from_secs(60);
    wait_until(
        moved_deadline,
        "work2 and follow2 active on the other machine",
        || {
            let placed =
                fleet.wait_active(&["work2.service", "follow2.service"], Duration::ZERO)?;
            Ok(placed["work2.service"] == other_id && placed["follow2.service"] == other_id)
        },
    )?;
    wait_systemd(&cluster, other, "work2.service", "active")?;
    // ...and when that host boots again, fleet there does not run it.
    cluster.boot_one(&host2, false)?;
    wait_until(Duration::from_secs(30), "the killed machine back", || {
        Ok(fleet.machines()?.iter().any(|row| row.id == machine2))
    })?;
    let units = fleet.units()?;
    let rows: Vec<_> = units
        .iter()
        .filter(|row| row.unit == "work2.service")
        .collect();
    assert_eq!(rows.len(), 1, "{units:?}");
    assert_eq!(rows[0].machine, other_id, "{units:?}");
    assert_ne!(systemd_state(&cluster, &host2, "work2.service")?, "active");

    // Freeze the host running work2 now: its processes live on, its lease expires, and work2
    // moves back to the returned host. Thawed, the frozen host must stop its copy, which is
    // no longer its own.
    cluster.break_host(other, "freeze")?;
    let thaw_guard = Thaw {
        cluster: &cluster,
        host: other,
    };
    wait_until(moved_deadline, "work2 back on the returned machine", || {
        let placed = fleet.wait_active(&["work2.service"], Duration::ZERO)?;
        Ok(placed["work2.service"] == machine2)
    })?;
    drop(thaw_guard);
    wait_until(
        ACTIVE_DEADLINE,
        "the thawed machine stops its stale work2",
        || Ok(systemd_state(&cluster, other, "work2.service")? != "active"),
    )?;
    wait_until(ACTIVE_DEADLINE, "the thawed machine back", || {
        Ok(fleet.machines()?.iter().any(|row| row.id == other_id))
    })?;
    let units = fleet.units()?;
    let rows: Vec<_> = units
        .iter()
        .filter(|row| row.unit == "work2.service")
        .collect();
    assert_eq!(rows.len(), 1, "{units:?}");
    assert_eq!(rows[0].machine, machine2, "{units:?}");
    Ok(())
}

/// Thaws a frozen host on drop, so a failing assertion never leaves it frozen for cleanup.
struct Thaw<'a> {
    cluster: &'a Cluster,
    host: &'a str,
}

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.cluster.break_host(self.host, "thaw") {
            eprintln!("thawing {}: {error:#}", self.host);
        }
    }
}

/// Undoes a `drop` of a host's etcd traffic on drop of the guard.
struct Undrop<'a> {
    cluster: &'a Cluster,
    host: &'a str,
}

impl Drop for Undrop<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.cluster.break_host(self.host, "undrop") {
            eprintln!("undropping {}: {error:#}", self.host);
        }
    }
}

/// TestSingleNodeConnectivityLoss: a machine that opted out of self-fencing
/// (`on_partition=keep-running`, the original's behaviour) cut off etcd for longer than its TTL
/// keeps its units running, and once it is back nothing is stopped or restarted.
#[test]
fn units_keep_running_while_etcd_is_unreachable() -> anyhow::Result<()> {
    let cluster = Cluster::start(1)?;
    crate::foundation::install_everywhere_with(&cluster, &["on_partition=keep-running"])?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let dir = tempfile::tempdir()?;
    let launched = unit_file(dir.path(), "keep-launched.service", &sleeper(""))?;
    let loaded = unit_file(dir.path(), "keep-loaded.service", &sleeper(""))?;
    let global = workspace_root().join("examples/global.service");
    fleet.ctl_ok(&["start", "--no-block", &launched, &global.to_string_lossy()])?;
    fleet.ctl_ok(&["load", "--no-block", &loaded])?;
    let expected = |units: &[crate::foundation::UnitRow]| {
        let state = |name: &str| {
            units
                .iter()
                .find(|row| row.unit == name)
                .map(|row| row.active.clone())
        };
        state("keep-launched.service").as_deref() == Some("active")
            && state("global.service").as_deref() == Some("active")
            && state("keep-loaded.service").as_deref() == Some("inactive")
    };
    fleet.wait_units(ACTIVE_DEADLINE, "the units in their states", expected)?;
    let show = || {
        cluster.exec_ok(
            "h1",
            &[
                "systemctl",
                "show",
                "-p",
                "ExecMainStartTimestamp,MainPID",
                "keep-launched.service",
                "global.service",
            ],
        )
    };
    let before = show()?;

    // Cut h1 off etcd until its lease has expired and fleet there knows it (503).
    cluster.break_host("h1", "drop")?;
    let undrop = Undrop {
        cluster: &cluster,
        host: "h1",
    };
    wait_until(Duration::from_secs(30), "h1's lease to expire", || {
        Ok(crate::foundation::etcd_keys(&cluster, "machine/presence/")?.is_empty())
    })?;
    wait_until(Duration::from_secs(30), "h1's API to answer 503", || {
        Ok(crate::foundation::api_in_host(&cluster, "h1", "/fleet/v1/machines")?.status == 503)
    })?;
    assert_eq!(
        show()?,
        before,
        "units restarted while etcd was unreachable"
    );
    assert_eq!(
        systemd_state(&cluster, "h1", "keep-loaded.service")?,
        "inactive"
    );
    drop(undrop);

    // Back: the same states, and a later unit starts (the engine has been through a pass).
    fleet.wait_units(ACTIVE_DEADLINE, "the units back in their states", expected)?;
    let later = unit_file(dir.path(), "later.service", &sleeper(""))?;
    fleet.ctl_ok(&["start", "--block-attempts=15", &later])?;
    fleet.wait_active(&["later.service"], ACTIVE_DEADLINE)?;
    assert_eq!(show()?, before, "units restarted after etcd came back");
    let journal = cluster.exec_ok("h1", &["journalctl", "--no-pager", "_PID=1"])?;
    assert!(
        !journal.contains("Stopping keep-launched") && !journal.contains("Stopping Hello World"),
        "systemd stopped a unit: {journal}"
    );
    Ok(())
}
