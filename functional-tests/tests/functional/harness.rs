//! Tests of the test hosts themselves: systemd runs in them, they reach etcd, they are
//! distinct machines, and the failures the harness injects really happen.

use std::time::Duration;

use functional_tests::{Cluster, wait_until};

/// Three hosts boot, run systemd, reach etcd, have distinct ids; `cut` isolates a host,
/// `drop` cuts it off etcd, and a killed host boots again with a new machine id.
#[test]
fn three_hosts_boot_reach_etcd_and_can_be_cut_off() -> anyhow::Result<()> {
    let cluster = Cluster::start(3)?;
    let hosts = cluster.hosts().to_vec();
    assert_eq!(hosts, ["h1", "h2", "h3"]);

    let etcd_url = cluster.etcd_url().to_string();
    assert!(
        etcd_url.starts_with("http://10.231.0.1:"),
        "etcd url {etcd_url}"
    );
    let health_url = format!("{etcd_url}/health");
    let mut machine_ids = Vec::new();
    for host in &hosts {
        let state = cluster.exec(host, &["systemctl", "is-system-running"])?;
        let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "{host}: systemd is {state:?}"
        );

        let hostname = cluster.exec_ok(host, &["hostname"])?;
        assert_eq!(hostname.trim(), host.as_str());

        let health = cluster.exec_ok(host, &["curl", "-sS", "--max-time", "5", &health_url])?;
        assert!(
            health.contains("\"health\":\"true\""),
            "{host}: etcd health {health}"
        );

        // The id fleet will read inside the host is the one the harness reports.
        let machine_id = cluster.machine_id(host)?;
        assert_eq!(machine_id.len(), 32, "{host}: machine id {machine_id}");
        let inside = cluster.exec_ok(host, &["cat", "/etc/machine-id"])?;
        assert_eq!(inside.trim(), machine_id);
        machine_ids.push(machine_id);
    }
    machine_ids.sort();
    machine_ids.dedup();
    assert_eq!(machine_ids.len(), 3, "machine ids are not distinct");

    // Each host sees only its own services (its own cgroup, its own systemd).
    cluster.exec_ok(
        "h1",
        &["systemd-run", "--unit=isolation-probe", "sleep", "600"],
    )?;
    let on_h1 = cluster.exec("h1", &["systemctl", "is-active", "isolation-probe"])?;
    assert_eq!(String::from_utf8_lossy(&on_h1.stdout).trim(), "active");
    let on_h2 = cluster.exec("h2", &["systemctl", "is-active", "isolation-probe"])?;
    assert_ne!(
        String::from_utf8_lossy(&on_h2.stdout).trim(),
        "active",
        "h2 sees h1's unit"
    );

    let h2_ip = cluster.ip("h2")?;
    assert_eq!(h2_ip, "10.231.0.12");
    let ping = |count: &str| cluster.exec("h1", &["ping", "-c", count, "-W", "1", &h2_ip]);
    assert!(
        ping("1")?.status.success(),
        "h1 cannot reach h2 before the cut"
    );

    cluster.break_host("h2", "cut")?;
    let unreachable = ping("1")?;
    assert!(
        !unreachable.status.success(),
        "h1 still reaches h2 after the cut"
    );

    cluster.break_host("h2", "uncut")?;
    // The bridge port needs a moment to forward again after the link comes up.
    wait_until(
        Duration::from_secs(10),
        "h2 reachable again after uncut",
        || Ok(ping("1")?.status.success()),
    )?;

    // `drop` silences h3's traffic to etcd only; `undrop` restores it.
    let curl_health = || cluster.exec("h3", &["curl", "-sS", "--max-time", "2", &health_url]);
    cluster.break_host("h3", "drop")?;
    assert!(
        !curl_health()?.status.success(),
        "h3 still reaches etcd after drop"
    );
    cluster.break_host("h3", "undrop")?;
    assert!(
        curl_health()?.status.success(),
        "h3 cannot reach etcd after undrop"
    );

    // A crashed host comes back on its own filesystem; with a new id it is a new machine.
    let old_id = cluster.machine_id("h3")?;
    cluster.break_host("h3", "kill")?;
    assert!(
        !cluster.exec("h3", &["true"])?.status.success(),
        "h3 runs after kill"
    );
    cluster.boot_one("h3", true)?;
    let new_id = cluster.machine_id("h3")?;
    assert_ne!(new_id, old_id);
    assert_eq!(
        cluster.exec_ok("h3", &["cat", "/etc/machine-id"])?.trim(),
        new_id
    );
    Ok(())
}
