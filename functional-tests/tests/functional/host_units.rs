//! Agent safety on a real host: a fleet unit may not replace a unit the host already has, and
//! an option value with a line break cannot smuggle `[X-Fleet]` options past the API.

use std::time::Duration;

use functional_tests::Cluster;

use crate::foundation::{Fleet, install_everywhere};

/// How long the agent may take to try (and refuse) the unit.
const DEADLINE: Duration = Duration::from_secs(30);

/// `ssh.service` exists on every test host (OpenSSH). A fleet unit of that name is refused by
/// the agent (reported `error`/`inactive`/`refused-host-unit`), the host's unit is untouched and
/// nothing is written to fleet's units directory.
#[test]
fn a_unit_the_host_already_has_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(1)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let before = cluster.exec_ok(
        "h1",
        &[
            "systemctl",
            "show",
            "-p",
            "FragmentPath,MainPID",
            "ssh.service",
        ],
    )?;
    assert!(
        before.contains("FragmentPath=/") && !before.contains("/run/fleet"),
        "the host has no ssh.service of its own: {before}"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ssh.service");
    std::fs::write(&file, "[Service]\nExecStart=/bin/sleep 1000\n")?;
    fleet.ctl_ok(&["start", "--no-block", &file.to_string_lossy()])?;
    fleet.wait_units(DEADLINE, "ssh.service refused", |units| {
        units
            .iter()
            .any(|row| row.unit == "ssh.service" && row.sub == "refused-host-unit")
    })?;
    let units = fleet.units()?;
    let row = units
        .iter()
        .find(|row| row.unit == "ssh.service")
        .expect("waited for it");
    assert_eq!(row.active, "inactive", "{row:?}");

    let after = cluster.exec_ok(
        "h1",
        &[
            "systemctl",
            "show",
            "-p",
            "FragmentPath,MainPID",
            "ssh.service",
        ],
    )?;
    assert_eq!(after, before, "the host's ssh.service changed");
    let written = cluster.exec("h1", &["test", "-e", "/run/fleet/units/ssh.service"])?;
    assert!(
        !written.status.success(),
        "the refused unit was written to fleet's units directory"
    );
    let journal = cluster.exec_ok("h1", &["journalctl", "-u", "fleet", "--no-pager"])?;
    assert!(
        journal.contains("Refused to load ssh.service: this host already has a unit of that name"),
        "fleetd's log does not say why"
    );
    Ok(())
}

/// A line break in an option value is a 400 that names the option, and nothing is stored.
#[test]
fn an_option_with_a_line_break_is_refused_by_the_api() -> anyhow::Result<()> {
    let cluster = Cluster::start(1)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let body = r#"{"desiredState":"launched","options":[
        {"section":"Service","name":"ExecStart","value":"/bin/sleep 1000"},
        {"section":"Unit","name":"Description","value":"x\n[X-Fleet]\nGlobal=true"}]}"#;
    let answer = fleet.api(
        "PUT",
        "/fleet/v1/units/smuggle.service",
        Some("application/json"),
        Some(body),
    )?;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("[Unit] Description"), "{answer:?}");
    assert!(fleet.unit_files()?.is_empty(), "a refused unit was stored");
    Ok(())
}
