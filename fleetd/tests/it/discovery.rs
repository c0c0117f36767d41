//! The `fleetd` binary finding etcd through DNS SRV records
//! (`etcd_discovery_srv`), served by a real dnsmasq, pointing at real etcds.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleet_registry::Registry;
use fleet_registry::testing::Etcd;
use fleet_registry::testing::dnsmasq::{Dnsmasq, Srv};

use crate::daemon::Fleetd;
use crate::util::{machine_id_file, machine_ids, prefix, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

fn config(resolver: SocketAddr, key_prefix: &str, id_file: &Path, socket: &Path) -> String {
    format!(
        "# written by fleetd's discovery tests: no etcd_servers, only DNS\n\
         etcd_discovery_srv = fleet.test\n\
         etcd_discovery_srv_resolver = {resolver}\n\
         etcd_key_prefix = {key_prefix}\n\
         machine_id_file = {}\n\
         disable_agent = true\n\
         disable_engine = true\n\
         agent_ttl = 2s\n\
         public_ip = 10.0.0.2\n\
         api_listen = unix://{}\n",
        id_file.display(),
        socket.display()
    )
}

fn record(etcd: &Etcd) -> Srv {
    Srv::new(
        "_etcd-client._tcp.fleet.test",
        "localhost",
        etcd.client_port(),
    )
}

#[tokio::test]
async fn finds_etcd_through_dns_and_looks_again_on_sighup() {
    let first = Etcd::start().await;
    let key_prefix = prefix("discovery");
    let mut dns = Dnsmasq::start("fleet.test", &[record(&first)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-srv");
    let text = config(
        dns.address(),
        &key_prefix,
        &id_file,
        &dir.path().join("fleet.sock"),
    );
    let fleetd = Fleetd::start(dir.path(), &text, &[("RUST_LOG", "info")]);
    let on_first = Registry::connect(&first.config(&key_prefix))
        .await
        .expect("connects");
    wait_until(
        DEADLINE,
        "the machine is registered in the first etcd",
        || async { machine_ids(&on_first).await.len() == 1 },
    )
    .await;
    assert!(
        fleetd
            .log()
            .contains("Found the etcd members in DNS SRV records"),
        "{}",
        fleetd.log()
    );

    // The records now name another etcd; SIGHUP looks them up again.
    let second = Etcd::start().await;
    dns.replace_records(&[record(&second)]);
    fleetd.signal(libc::SIGHUP);
    let on_second = Registry::connect(&second.config(&key_prefix))
        .await
        .expect("connects");
    wait_until(
        DEADLINE,
        "the machine is registered in the etcd the records now name",
        || async { machine_ids(&on_second).await.len() == 1 },
    )
    .await;
}

#[tokio::test]
async fn does_not_start_when_dns_names_no_member() {
    let dns = Dnsmasq::start("fleet.test", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-srv-none");
    let text = config(
        dns.address(),
        &prefix("discovery-none"),
        &id_file,
        &dir.path().join("fleet.sock"),
    );
    let mut fleetd = Fleetd::start(dir.path(), &text, &[]);
    let status = fleetd.wait_exit().await;
    let log = fleetd.log();
    assert!(
        !status.success(),
        "fleetd started without etcd members:\n{log}"
    );
    for part in [
        "etcd_discovery_srv=fleet.test",
        "_etcd-client-ssl._tcp.fleet.test.: no such name (NXDOMAIN)",
        "_etcd-client._tcp.fleet.test.: no such name (NXDOMAIN)",
    ] {
        assert!(log.contains(part), "{part:?} missing from the log:\n{log}");
    }
}
