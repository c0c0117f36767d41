//! DNS discovery (`etcd_discovery_srv`) against a real DNS server (dnsmasq)
//! whose SRV records point at a real etcd.

use std::time::Duration;

use fleet_registry::testing::Etcd;
use fleet_registry::testing::dnsmasq::{Dnsmasq, Srv};
use fleet_registry::{DiscoveryError, Registry, RegistryConfig, RegistryError, SrvDiscovery};

use crate::util::{machine, unique_prefix, wait_until};

const DOMAIN: &str = "fleet.test";

/// A port nothing listens on: records pointing there name a dead member.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("bound").port()
}

fn discovery(dns: &Dnsmasq, service_name: &str) -> SrvDiscovery {
    SrvDiscovery::new(DOMAIN, service_name, Some(dns.address())).expect("a valid domain")
}

/// A config whose `endpoints` would fail: discovery must not use them.
fn plain_config(test: &str) -> RegistryConfig {
    RegistryConfig {
        endpoints: vec!["http://127.0.0.1:1".to_owned()],
        key_prefix: unique_prefix(test),
        request_timeout: Duration::from_secs(2),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

async fn discovery_error(config: &RegistryConfig, discovery: &SrvDiscovery) -> DiscoveryError {
    match Registry::connect_discovered(config, discovery).await {
        Err(RegistryError::Discovery(error)) => error,
        Err(other) => panic!("expected a discovery error, got {other}"),
        Ok(registry) => panic!("discovery succeeded: {:?}", registry.endpoint_health()),
    }
}

#[tokio::test]
async fn finds_a_plain_etcd_through_srv_records_with_and_without_a_service_name() {
    let etcd = Etcd::start().await;
    let port = etcd.client_port();
    let dead = dead_port();
    // The TLS set points at a dead member: without TLS options only the
    // plain set may be used. The named service has its own member.
    let dns = Dnsmasq::start(
        DOMAIN,
        &[
            Srv::new("_etcd-client._tcp.fleet.test", "localhost", port),
            Srv::new("_etcd-client-ssl._tcp.fleet.test", "localhost", dead),
            Srv::new("_etcd-client-blue._tcp.fleet.test", "127.0.0.1", port),
        ],
    );

    let config = plain_config("srv-plain");
    let registry = Registry::connect_discovered(&config, &discovery(&dns, ""))
        .await
        .unwrap_or_else(|error| panic!("discovery failed: {error}\n{}", dns.log()));
    assert_eq!(
        registry.endpoint_health(),
        [(format!("http://localhost:{port}"), true)],
        "the target's trailing dot is gone and the TLS record is not used"
    );
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant through the discovered member");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register through the discovered member");
    assert_eq!(
        registry.machines().await.expect("machines"),
        [machine("m1")]
    );

    let named = Registry::connect_discovered(&config, &discovery(&dns, "blue"))
        .await
        .unwrap_or_else(|error| panic!("named discovery failed: {error}\n{}", dns.log()));
    assert_eq!(
        named.endpoint_health(),
        [(format!("http://127.0.0.1:{port}"), true)]
    );
    assert_eq!(named.machines().await.expect("machines"), [machine("m1")]);
}

#[tokio::test]
async fn no_records_is_an_error_naming_the_domain_and_both_record_names() {
    let dns = Dnsmasq::start(DOMAIN, &[]);
    let error = discovery_error(&plain_config("srv-none"), &discovery(&dns, "")).await;
    assert!(
        matches!(error, DiscoveryError::NotFound { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    for part in [
        "fleet.test",
        "_etcd-client-ssl._tcp.fleet.test.: no such name (NXDOMAIN)",
        "_etcd-client._tcp.fleet.test.: no such name (NXDOMAIN)",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn a_dead_dns_server_is_an_error_naming_both_record_names() {
    let mut dns = Dnsmasq::start(DOMAIN, &[]);
    dns.stop();
    let error = discovery_error(&plain_config("srv-dead"), &discovery(&dns, "")).await;
    let message = error.to_string();
    assert!(
        matches!(&error, DiscoveryError::NotFound { tried, .. }
            if tried.iter().all(|(_, outcome)| matches!(outcome, fleet_registry::discovery::Outcome::Failed(_)))),
        "{message}"
    );
    for part in [
        "fleet.test",
        "_etcd-client-ssl._tcp.fleet.test.: look-up failed",
        "_etcd-client._tcp.fleet.test.: look-up failed",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn follows_the_records_when_every_member_is_gone() {
    let old = Etcd::start().await;
    let mut dns = Dnsmasq::start(
        DOMAIN,
        &[Srv::new(
            "_etcd-client._tcp.fleet.test",
            "localhost",
            old.client_port(),
        )],
    );
    let config = plain_config("srv-follow");
    let registry = Registry::connect_discovered(&config, &discovery(&dns, ""))
        .await
        .expect("discovery of the first member");
    registry.machines().await.expect("the first member answers");

    // The member is replaced: a new etcd elsewhere, the records updated,
    // the old one gone. Requests fail until the look-up finds the new one.
    let new = Etcd::start().await;
    let new_url = format!("http://localhost:{}", new.client_port());
    dns.replace_records(&[Srv::new(
        "_etcd-client._tcp.fleet.test",
        "localhost",
        new.client_port(),
    )]);
    drop(old);
    wait_until(
        Duration::from_secs(30),
        "the registry uses the member the records now name",
        || async { registry.machines().await.is_ok() },
    )
    .await;
    assert_eq!(registry.endpoint_health(), [(new_url, true)]);
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant on the new member");
    registry
        .register_machine(&machine("m2"), lease)
        .await
        .expect("register on the new member");
    let on_new = Registry::connect(&RegistryConfig {
        endpoints: vec![new.endpoint()],
        ..config
    })
    .await
    .expect("connect");
    assert_eq!(on_new.machines().await.expect("machines"), [machine("m2")]);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn finds_a_tls_etcd_through_ssl_records_and_never_falls_back_to_plaintext() {
    let etcd = Etcd::start_tls().await;
    let port = etcd.client_port();
    let dns = Dnsmasq::start(
        DOMAIN,
        &[
            Srv::new("_etcd-client-ssl._tcp.fleet.test", "localhost", port),
            Srv::new("_etcd-client-plain._tcp.fleet.test", "localhost", port),
        ],
    );
    let config = RegistryConfig {
        endpoints: Vec::new(),
        ..etcd.config(&unique_prefix("srv-tls"))
    };
    let registry = Registry::connect_discovered(&config, &discovery(&dns, ""))
        .await
        .unwrap_or_else(|error| panic!("discovery failed: {error}\n{}", dns.log()));
    assert_eq!(
        registry.endpoint_health(),
        [(format!("https://localhost:{port}"), true)]
    );
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant over TLS");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register over TLS");
    assert_eq!(
        registry.machines().await.expect("machines"),
        [machine("m1")]
    );

    // Only TLS records and no TLS options: an error that says what to set.
    let error = discovery_error(&plain_config("srv-tls-none"), &discovery(&dns, "")).await;
    assert!(matches!(error, DiscoveryError::OnlyTls { .. }), "{error:?}");
    assert!(error.to_string().contains("etcd_cafile"), "{error}");

    // Only plaintext records (service "plain") with TLS options: refused.
    let error = discovery_error(&config, &discovery(&dns, "plain")).await;
    assert!(
        matches!(error, DiscoveryError::OnlyPlaintext { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("_etcd-client-plain._tcp.fleet.test."),
        "{error}"
    );
}
