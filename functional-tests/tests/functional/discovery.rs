//! A test host's fleetd finds etcd through DNS SRV records (`etcd_discovery_srv`): dnsmasq on
//! the test bridge names the cluster's etcd, and the host's `fleet.conf` has no `etcd_servers`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use fleet_registry::testing::dnsmasq::{Dnsmasq, Srv};
use functional_tests::{Cluster, wait_until};

use crate::foundation::{FAST_CONF, Fleet};

/// The host side of the test bridge, where etcd listens.
const BRIDGE: &str = "10.231.0.1";

const MACHINE_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_host_finds_etcd_through_dns_srv_records() -> anyhow::Result<()> {
    let cluster = Cluster::start(1)?;
    let etcd_port: u16 = cluster
        .etcd_url()
        .rsplit_once(':')
        .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in the etcd URL {}", cluster.etcd_url()))?;
    let bridge: IpAddr = BRIDGE.parse()?;
    // The target is the bridge address itself: the host's own resolver knows no test names.
    let dns = Dnsmasq::start_on(
        bridge,
        "fleet.test",
        &[Srv::new("_etcd-client._tcp.fleet.test", BRIDGE, etcd_port)],
    );
    let resolver = format!("etcd_discovery_srv_resolver={}", dns.address());
    let mut conf = vec!["etcd_discovery_srv=fleet.test", resolver.as_str()];
    conf.extend_from_slice(FAST_CONF);
    cluster.install_fleet_without_etcd_servers("h1", &conf)?;

    let fleet = Fleet::new(&cluster, "h1")?;
    let id = cluster.machine_id("h1")?;
    wait_until(MACHINE_DEADLINE, "h1 is in list-machines", || {
        Ok(fleet.machines()?.iter().any(|machine| machine.id == id))
    })?;
    let journal = cluster.exec_ok("h1", &["journalctl", "-u", "fleet", "--no-pager"])?;
    assert!(
        journal.contains("Found the etcd members in DNS SRV records"),
        "the journal does not show the look-up:\n{journal}\ndnsmasq:\n{}",
        dns.log()
    );
    Ok(())
}
