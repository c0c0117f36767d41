//! Observability of the real `fleetd` binary: its `/metrics` page.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_registry::testing::Etcd;

use crate::daemon::{Fleetd, config};
use crate::util::{free_port, get_tcp, machine_id_file, prefix, wait_for};

const DEADLINE: Duration = Duration::from_secs(20);

/// `promtool check metrics` on `text`: its exit status and output.
fn promtool_check(text: &str) -> (bool, String) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => panic!(
            "cannot run promtool ({error}): install Debian's `prometheus` package (scripts/setup.sh)"
        ),
    };
    let mut stdin = child.stdin.take().expect("promtool's stdin is piped");
    stdin
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting for promtool");
    let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

#[tokio::test]
async fn metrics_page_passes_promtool_and_shows_every_part() {
    let etcd = Etcd::start().await;
    let key_prefix = prefix("metrics");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fleet.sock");
    let port = free_port();
    let id_file = machine_id_file(dir.path(), "m-metrics");
    // The engine runs too (it leads: the only one); the agent needs systemd.
    let text = config(&etcd.endpoint(), &key_prefix, &id_file, &socket, port)
        .replace("disable_engine = true\n", "");
    let fleetd = Fleetd::start(dir.path(), &text, &[]);
    let address = format!("127.0.0.1:{port}");

    wait_for(DEADLINE, "fleetd serves /fleet/v1/units", || {
        let address = address.clone();
        async move {
            matches!(get_tcp(&address, "/fleet/v1/units").await, Ok((200, _))).then_some(())
        }
    })
    .await;
    let page = wait_for(DEADLINE, "the engine leads and has run a pass", || {
        let address = address.clone();
        async move {
            let (status, page) = get_tcp(&address, "/metrics").await.ok()?;
            let leading = page.lines().any(|l| l == "fleet_engine_leader 1");
            let passed = page
                .lines()
                .any(|l| l.starts_with("fleet_engine_passes_total ") && !l.ends_with(" 0"));
            (status == 200 && leading && passed).then_some(page)
        }
    })
    .await;

    let (valid, said) = promtool_check(&page);
    assert!(
        valid,
        "promtool rejects /metrics: {said}\npage:\n{page}\nlog:\n{}",
        fleetd.log()
    );
    for expected in [
        r#"fleet_api_requests_total{route="/fleet/v1/units",method="GET",code="200"}"#,
        "# TYPE fleet_api_request_duration_seconds histogram",
        r#"fleet_etcd_requests_total{op="register machine"}"#,
        "# TYPE fleet_etcd_request_duration_seconds histogram",
        "fleet_etcd_watch_starts_total ",
        "fleet_engine_elections_total 1",
        r#"fleet_engine_machines{state="present"} 1"#,
        "# TYPE fleet_engine_pass_duration_seconds histogram",
        "# TYPE fleet_agent_reconcile_passes_total counter",
    ] {
        assert!(page.contains(expected), "{expected} missing from\n{page}");
    }
}
