//! Self-fencing on real hosts (Documentation/reliability.md, "Partitions: self-fencing"): a
//! host cut off from etcd for longer than `agent_ttl + machine_loss_grace` stops its movable
//! units before the engine starts them elsewhere, so none runs on two hosts; a unit with
//! `OnPartition=keep-running` and a global unit keep running; after the heal the cut-off host
//! runs what is still placed on it.

use std::time::{Duration, Instant};

use functional_tests::{Cluster, wait_until};

use crate::foundation::Fleet;

const ACTIVE_DEADLINE: Duration = Duration::from_secs(60);

/// The hosts whose systemd says `unit` is active.
fn active_on(cluster: &Cluster, unit: &str) -> anyhow::Result<Vec<String>> {
    let mut hosts = Vec::new();
    for host in cluster.hosts() {
        let output = cluster.exec(host, &["systemctl", "is-active", unit])?;
        if String::from_utf8_lossy(&output.stdout).trim() == "active" {
            hosts.push(host.clone());
        }
    }
    Ok(hosts)
}

fn write_unit(dir: &std::path::Path, name: &str, x_fleet: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\n{x_fleet}\n"),
    )?;
    Ok(path.to_string_lossy().into_owned())
}

/// Cuts h2's link for ttl + grace + 8 s while polling systemd on both hosts: no movable unit is
/// ever active on both; they end up on h1; the opted-out and the global unit stay active on h2
/// throughout. After the heal every movable unit runs exactly once and the fence's audit line
/// is in h2's journal.
#[test]
fn a_cut_off_host_stops_its_movable_units_before_they_move() -> anyhow::Result<()> {
    let cluster = Cluster::start(2)?;
    // ttl 2 s, grace 4 s: the fence falls 4 s after the last answered keep-alive (the margin is
    // half the grace), the engine may move units from 6 s on.
    for host in cluster.hosts() {
        cluster.install_fleet(
            host,
            &["agent_ttl=2s", "machine_loss_grace=4", "on_partition=stop"],
        )?;
    }
    let fleet = Fleet::new(&cluster, "h1")?;
    wait_until(Duration::from_secs(20), "2 machines", || {
        Ok(fleet.machines()?.len() == 2)
    })?;
    let dir = tempfile::tempdir()?;
    // Movable units are plain: the scheduler spreads them, the ones on h2 are those that count.
    let movable = ["m1.service", "m2.service", "m3.service", "m4.service"];
    let mut paths = Vec::new();
    for unit in movable {
        paths.push(write_unit(dir.path(), unit, "")?);
    }
    paths.push(write_unit(
        dir.path(),
        "keep.service",
        "MachineMetadata=hostname=h2\nOnPartition=keep-running",
    )?);
    paths.push(write_unit(dir.path(), "everywhere.service", "Global=true")?);
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));
    fleet.ctl_ok(&args)?;
    fleet.wait_active(&movable, ACTIVE_DEADLINE)?;
    for unit in movable.iter().chain(&["keep.service"]) {
        wait_until(
            ACTIVE_DEADLINE,
            &format!("{unit} active in systemd"),
            || Ok(active_on(&cluster, unit)?.len() == 1),
        )?;
    }
    wait_until(ACTIVE_DEADLINE, "the global unit on both hosts", || {
        Ok(active_on(&cluster, "everywhere.service")?.len() == 2)
    })?;
    let mut on_h2 = Vec::new();
    for unit in movable {
        if active_on(&cluster, unit)? == ["h2"] {
            on_h2.push(unit);
        }
    }
    assert!(!on_h2.is_empty(), "no movable unit runs on h2");

    cluster.break_host("h2", "cut")?;
    let cut_at = Instant::now();
    // ttl + grace + 8 s: long enough for the engine to move h2's units to h1.
    let span = Duration::from_secs(14);
    let mut checks = 0;
    // A polled invariant: every check must hold, for the whole span.
    while cut_at.elapsed() < span {
        for unit in movable {
            let hosts = active_on(&cluster, unit)?;
            assert!(
                hosts.len() <= 1,
                "{unit} active on {hosts:?} {:?} after the cut",
                cut_at.elapsed()
            );
        }
        assert_eq!(
            active_on(&cluster, "keep.service")?,
            ["h2"],
            "the opted-out unit keeps running on h2"
        );
        assert_eq!(
            active_on(&cluster, "everywhere.service")?.len(),
            2,
            "the global unit keeps running on both hosts"
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checks > 1, "systemd was checked throughout the cut");
    for unit in &on_h2 {
        assert_eq!(
            active_on(&cluster, unit)?,
            ["h1"],
            "{unit} was moved to h1 and stopped on h2"
        );
    }

    cluster.break_host("h2", "uncut")?;
    wait_until(ACTIVE_DEADLINE, "h2 back", || {
        Ok(fleet.machines()?.len() == 2)
    })?;
    fleet.wait_active(&movable, ACTIVE_DEADLINE)?;
    wait_until(ACTIVE_DEADLINE, "every movable unit active once", || {
        for unit in movable {
            if active_on(&cluster, unit)?.len() != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    // The engine may have unplaced it while h2 was gone (no other host matches): it returns.
    wait_until(ACTIVE_DEADLINE, "keep.service on h2", || {
        Ok(active_on(&cluster, "keep.service")? == ["h2"])
    })?;
    let journal = cluster.exec_ok("h2", &["journalctl", "-u", "fleet", "--no-pager"])?;
    assert!(
        journal.contains("Self-fencing: stopping this machine's movable units"),
        "h2's journal has the fence's audit line"
    );
    assert!(
        journal.contains("Self-fencing lifted"),
        "h2's journal says the fence was lifted"
    );
    Ok(())
}
