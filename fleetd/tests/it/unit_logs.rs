//! A unit's logs and status through the API, against the real `fleetd`
//! binary and a real etcd: three fleetds with mutual-TLS listeners, the
//! request sent to one is forwarded to the machine the unit is placed on,
//! which answers as itself (its machine id in the status); a `read`
//! certificate may read a status but not logs; the peer paths refuse users
//! and certificates without the `peer` role; and forwarding is closed until
//! configured (503 naming `api_advertise_url` or `api_peer_cert_file`).
//!
//! No systemd runs here, so what `journalctl` and `systemctl` print is not
//! checked (the functional test `logs` does that on real systemd hosts).

use std::time::Duration;

use fleet_api::client::{Caller, Client, ClientError, ClientTls, Endpoint, LogsRequest};
use fleet_registry::store::{Registry, ScheduleChange};
use fleet_registry::testing::Etcd;
use fleet_registry::testing::pki::Pki;
use fleet_registry::{MachineId, Placement, TargetState};
use fleet_systemd::unit::UnitHash;

use crate::daemon::Fleetd;
use crate::util::{free_port, machine_id_file, prefix};

const DEADLINE: Duration = Duration::from_secs(20);
const TEST: &str = "unit-logs";

/// One fleetd of the test and how to reach it.
struct Machine {
    id: MachineId,
    port: u16,
    fleetd: Fleetd,
    _dir: tempfile::TempDir,
}

/// What a machine's fleet.conf adds for forwarding.
struct Forwarding {
    advertise: bool,
    peer_certificate: bool,
}

fn start_machine(etcd: &Etcd, pki: &Pki, name: &str, forwarding: &Forwarding) -> Machine {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // One file name per machine: the fleetds read them while the next is signed.
    let (cert, key) = pki.sign_server(&format!("fleetd-api-{name}"), &["localhost", "127.0.0.1"]);
    let access = dir.path().join("access.toml");
    std::fs::write(
        &access,
        "[roles]\nfleet-peer = \"peer\"\nops-operator = \"operate\"\nops-reader = \"read\"\n",
    )
    .expect("writing the access file");
    let id = format!("{name}{}", "0".repeat(32 - name.len()));
    let mut text = format!(
        "etcd_servers = {}\netcd_key_prefix = {}\nmachine_id_file = {}\n\
         disable_agent = true\ndisable_engine = true\n\
         api_listen = tcp://127.0.0.1:{port}\napi_tls_cert_file = {}\napi_tls_key_file = {}\n\
         api_tls_client_ca_file = {}\napi_access_file = {}\n",
        etcd.endpoint(),
        prefix(TEST),
        machine_id_file(dir.path(), &id).display(),
        cert.display(),
        key.display(),
        pki.ca_file().display(),
        access.display(),
    );
    if forwarding.advertise {
        text.push_str(&format!("api_advertise_url = https://127.0.0.1:{port}\n"));
    }
    if forwarding.peer_certificate {
        let (peer_cert, peer_key) = pki.sign_client("fleet-peer");
        text.push_str(&format!(
            "api_peer_cert_file = {}\napi_peer_key_file = {}\napi_peer_ca_file = {}\n",
            peer_cert.display(),
            peer_key.display(),
            pki.ca_file().display()
        ));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let fleetd = Fleetd::start(
        dir.path(),
        &text,
        &[("RUST_LOG", "info"), ("PATH", path.as_str())],
    );
    Machine {
        id: id.parse().expect("machine id"),
        port,
        fleetd,
        _dir: dir,
    }
}

fn client(pki: &Pki, port: u16, common_name: &str) -> Client {
    let (cert, key) = pki.sign_client(common_name);
    let tls = ClientTls {
        ca_file: Some(pki.ca_file()),
        cert_file: Some(cert),
        key_file: Some(key),
    };
    let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).expect("endpoint");
    Client::with_tls(endpoint, &tls)
        .expect("client TLS files load")
        .with_timeout(Some(Duration::from_secs(10)))
}

/// Places `unit` on `machine` as an engine would (no engine runs here).
async fn place(registry: &Registry, unit: &str, machine: &MachineId) {
    let lease = registry
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("lease");
    let leadership = match registry.campaign(machine, lease).await.expect("campaign") {
        Some(leadership) => leadership,
        None => panic!("another engine leads"),
    };
    let placement = Placement {
        unit: unit.parse().expect("unit name"),
        machine: machine.clone(),
        hash: UnitHash([7; 20]),
        target_state: TargetState::Launched,
    };
    registry
        .commit_schedule(&leadership, &[ScheduleChange::Place(placement)])
        .await
        .expect("placing the unit");
    registry.resign(&leadership).await.expect("resigning");
}

async fn wait_registered(registry: &Registry, machines: &mut [&mut Machine]) {
    let ids: Vec<MachineId> = machines.iter().map(|m| m.id.clone()).collect();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let live = registry.machines().await.unwrap_or_default();
        if ids.iter().all(|id| live.iter().any(|m| &m.id == id)) {
            break;
        }
        if tokio::time::Instant::now() > end {
            let logs: Vec<String> = machines.iter().map(|m| m.fleetd.log()).collect();
            panic!(
                "the fleetds did not register: {live:?}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for machine in machines {
        assert!(
            machine.fleetd.is_running(),
            "fleetd exited: {}",
            machine.fleetd.log()
        );
    }
}

fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { code, message }) => (code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn logs_request(unit: &str) -> LogsRequest {
    LogsRequest {
        unit: unit.to_owned(),
        lines: 5,
        follow: false,
        machine: None,
    }
}

#[tokio::test]
async fn logs_and_status_are_forwarded_to_the_unit_machine_over_mutual_tls() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let registry = Registry::connect(&etcd.config(&prefix(TEST)))
        .await
        .expect("registry");
    let forwarder = Forwarding {
        advertise: false,
        peer_certificate: true,
    };
    let runner = Forwarding {
        advertise: true,
        peer_certificate: false,
    };
    let closed = Forwarding {
        advertise: false,
        peer_certificate: false,
    };
    let mut a = start_machine(&etcd, &pki, "aa", &forwarder);
    let mut b = start_machine(&etcd, &pki, "bb", &runner);
    let mut c = start_machine(&etcd, &pki, "cc", &closed);
    wait_registered(&registry, &mut [&mut a, &mut b, &mut c]).await;
    let published = registry.machine(&b.id).await.expect("read").expect("b");
    assert_eq!(published.api_url, format!("https://127.0.0.1:{}", b.port));
    place(&registry, "on-b.service", &b.id).await;
    place(&registry, "on-c.service", &c.id).await;

    // Through A, the status comes from B: its machine id, not A's.
    let operator = client(&pki, a.port, "ops-operator");
    let status = operator
        .unit_status(Caller::User, "on-b.service", None, DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("status through A: {error}\n{}", a.fleetd.log()));
    assert_eq!(status.machine, b.id.to_string());
    // Logs through A: B's journalctl answers; the stream opens and ends.
    let mut reader = operator
        .unit_logs(Caller::User, &logs_request("on-b.service"))
        .await
        .expect("logs through A");
    while let Ok(Some(_)) = reader.next().await {}
    let audit = b.fleetd.log();
    assert!(
        audit.contains("Peer read of a unit's logs") && audit.contains("cert:ops-operator"),
        "B's audit log names the user A forwarded for:\n{audit}"
    );

    // A read certificate sees a status but no logs.
    let reader_client = client(&pki, a.port, "ops-reader");
    reader_client
        .unit_status(Caller::User, "on-b.service", None, DEADLINE)
        .await
        .expect("a reader reads a status");
    let (code, message) = api_error(
        reader_client
            .unit_logs(Caller::User, &logs_request("on-b.service"))
            .await,
    );
    assert_eq!(code, 403, "{message}");

    // The peer paths: a user (even operate) and a certificate without a role are refused.
    for name in ["ops-operator", "stranger"] {
        let direct = client(&pki, b.port, name);
        let (code, message) = api_error(
            direct
                .unit_status(Caller::PeerOnBehalfOf("me"), "on-b.service", None, DEADLINE)
                .await,
        );
        assert_eq!(code, 403, "{name}: {message}");
    }
    // A certificate from another CA does not even finish the handshake.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let forged = client(&Pki::new(other_dir.path()), b.port, "fleet-peer");
    match forged
        .unit_status(Caller::PeerOnBehalfOf("me"), "on-b.service", None, DEADLINE)
        .await
    {
        Err(ClientError::Transport { .. }) => {}
        other => panic!("a certificate of another CA got {other:?}"),
    }

    // Closed until configured.
    let (code, message) = api_error(
        operator
            .unit_status(Caller::User, "on-c.service", None, DEADLINE)
            .await,
    );
    assert_eq!(code, 503);
    assert!(message.contains("api_advertise_url"), "{message}");
    let via_c = client(&pki, c.port, "ops-operator");
    let (code, message) = api_error(
        via_c
            .unit_logs(Caller::User, &logs_request("on-b.service"))
            .await,
    );
    assert_eq!(code, 503);
    assert!(message.contains("api_peer_cert_file"), "{message}");
    let (code, message) = api_error(
        operator
            .unit_status(Caller::User, "nowhere.service", None, DEADLINE)
            .await,
    );
    assert_eq!(code, 404, "{message}");
}
