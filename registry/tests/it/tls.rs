//! etcd over TLS with client certificates (feature `tls`).

use std::time::Duration;

use fleet_registry::testing::Etcd;
use fleet_registry::{Registry, RegistryConfig};

use crate::util::{machine, unique_prefix};

#[tokio::test]
async fn talks_to_etcd_over_tls_with_a_client_certificate() {
    let etcd = Etcd::start_tls().await;
    let config = etcd.config(&unique_prefix("tls"));
    assert!(config.endpoints[0].starts_with("https://"));
    let registry = Registry::connect(&config).await.expect("connect");
    let lease = registry
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant over TLS");
    registry
        .register_machine(&machine("m1"), lease)
        .await
        .expect("register over TLS");
    assert_eq!(
        registry.machines().await.expect("machines over TLS"),
        vec![machine("m1")]
    );

    // Without a client certificate etcd refuses us.
    let anonymous = RegistryConfig {
        cert_file: None,
        key_file: None,
        ..config.clone()
    };
    let registry = Registry::connect(&anonymous).await.expect("connect");
    let error = registry
        .machines()
        .await
        .expect_err("no client certificate");
    assert!(error.is_retriable(), "a transport error: {error}");

    // A certificate file that does not exist is a configuration error.
    let missing = RegistryConfig {
        ca_file: Some("/nonexistent/ca.pem".to_owned()),
        ..config
    };
    assert!(Registry::connect(&missing).await.is_err());
}
