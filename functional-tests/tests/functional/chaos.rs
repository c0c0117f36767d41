//! Short chaos scenarios in CI (the full suite is `scripts/chaos.sh`): a small cluster with a
//! 3-member etcd and a workload of every placement kind, faults one after another, and the
//! suite's invariants checked by watching systemd in every host the whole time.

use functional_tests::chaos::run::{self, Options, Row};
use functional_tests::chaos::scenario::Scenario;

/// Runs `scenarios` on 3 hosts with 30 units and fails with every broken invariant.
fn assert_scenarios_hold(scenarios: &[Scenario]) -> anyhow::Result<()> {
    let options = Options {
        hosts: 3,
        units: 30,
        scenarios: scenarios.to_vec(),
        conf: Vec::new(),
    };
    let rows = run::run(&options, &|line| eprintln!("chaos: {line}"))?;
    assert_eq!(rows.len(), scenarios.len());
    let failed: Vec<&Row> = rows.iter().filter(|row| !row.ok).collect();
    assert!(failed.is_empty(), "invariants broke: {failed:#?}");
    for row in &rows {
        assert!(row.converge.is_some(), "{} did not converge", row.name);
        assert_eq!(row.restarts_untouched, 0, "{}", row.name);
    }
    Ok(())
}

/// kill -9 of fleetd on one host, `systemctl restart fleet` on every host at once, then the
/// etcd Raft leader killed for 20 s (self-fencing on, the default): no unit is restarted
/// anywhere, none runs twice or goes missing, and the cluster converges after each.
#[test]
fn chaos_fleetd_and_etcd_leader_faults_keep_every_unit() -> anyhow::Result<()> {
    assert_scenarios_hold(&[
        Scenario::KillFleetd,
        Scenario::RestartAll,
        Scenario::EtcdLeaderKill,
    ])
}
