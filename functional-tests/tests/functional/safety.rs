//! Fail-safe behaviour on real hosts (Documentation/reliability.md, "Fail-safe behaviour"):
//! a clean stop of fleet longer than `agent_ttl + machine_loss_grace` does not move its units,
//! so no unit ever runs on two hosts.

use std::time::{Duration, Instant};

use functional_tests::{Cluster, wait_until};

use crate::foundation::{Fleet, host_of};

const ACTIVE_DEADLINE: Duration = Duration::from_secs(30);

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

/// Stops fleet on a host for three times `agent_ttl + machine_loss_grace`, checking systemd on
/// every host all along: the units stay where they run (the clean-stop mark gives the machine
/// the restart grace), then fleet starts again and adopts them.
#[test]
fn a_clean_stop_does_not_run_units_twice() -> anyhow::Result<()> {
    let cluster = Cluster::start(2)?;
    for host in cluster.hosts() {
        cluster.install_fleet(host, &["agent_ttl=2s", "machine_loss_grace=1"])?;
    }
    let fleet = Fleet::new(&cluster, "h1")?;
    wait_until(Duration::from_secs(20), "2 machines", || {
        Ok(fleet.machines()?.len() == 2)
    })?;
    let dir = tempfile::tempdir()?;
    let units = [
        "one.service",
        "two.service",
        "three.service",
        "four.service",
    ];
    let mut paths = Vec::new();
    for unit in units {
        let path = dir.path().join(unit);
        std::fs::write(&path, "[Service]\nExecStart=/bin/sleep 100000\n")?;
        paths.push(path.to_string_lossy().into_owned());
    }
    let mut args = vec!["start", "--no-block"];
    args.extend(paths.iter().map(String::as_str));
    // Talk to h1; stop fleet on h2 (which runs some of the units: least-loaded placement).
    fleet.ctl_ok(&args)?;
    let placed = fleet.wait_active(&units, ACTIVE_DEADLINE)?;
    let h2_id = cluster.machine_id("h2")?;
    let on_h2: Vec<&str> = units
        .iter()
        .copied()
        .filter(|unit| placed[*unit] == h2_id)
        .collect();
    assert!(!on_h2.is_empty(), "nothing placed on h2: {placed:?}");
    for unit in units {
        wait_until(
            ACTIVE_DEADLINE,
            &format!("{unit} active in systemd"),
            || Ok(active_on(&cluster, unit)?.len() == 1),
        )?;
    }

    cluster.exec_ok("h2", &["systemctl", "stop", "fleet"])?;
    let stopped_at = Instant::now();
    // 3 × (ttl + grace): without the mark, the engine would have moved h2's units after 3 s.
    let span = Duration::from_secs(9);
    let mut checks = 0;
    // A polled invariant: every check must hold, for the whole span.
    while stopped_at.elapsed() < span {
        for unit in units {
            let hosts = active_on(&cluster, unit)?;
            assert_eq!(
                hosts.len(),
                1,
                "{unit} active on {hosts:?} while fleet is stopped on h2"
            );
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(checks > 1, "systemd was checked throughout the stop");
    for unit in &on_h2 {
        assert_eq!(
            active_on(&cluster, unit)?,
            vec!["h2".to_owned()],
            "{unit} stays on h2"
        );
    }

    cluster.exec_ok("h2", &["systemctl", "start", "fleet"])?;
    wait_until(ACTIVE_DEADLINE, "h2 back", || {
        Ok(fleet.machines()?.len() == 2)
    })?;
    let placed = fleet.wait_active(&units, ACTIVE_DEADLINE)?;
    for unit in units {
        let hosts = active_on(&cluster, unit)?;
        assert_eq!(hosts.len(), 1, "{unit} active on {hosts:?}");
        assert_eq!(host_of(&cluster, &placed[unit])?, hosts[0], "{unit}");
    }
    Ok(())
}
