//! Which etcd members fleetd talks to: the fixed `etcd_servers` list, or the
//! members DNS SRV records name (`etcd_discovery_srv`, see
//! `fleet_registry::discovery` and Documentation/configuration.md).
//!
//! Discovery looks the records up when a generation starts (at start and on
//! every SIGHUP), and fails that start when DNS names no usable member:
//! fleetd never runs with an empty member list, and a reload that finds none
//! keeps the old generation. While the registry lives it looks again every
//! minute and soon after every member failed, so a replaced member is found
//! without a restart.

use anyhow::Context;
use fleet_registry::{Registry, RegistryConfig};

use crate::config::Config;

/// Connects the registry the way the config says.
///
/// # Errors
/// An unusable etcd configuration, or no member found in DNS (the message
/// names the domain and every record name asked).
pub async fn connect(config: &Config) -> anyhow::Result<Registry> {
    match config.discovery() {
        Some(discovery) => Registry::connect_discovered(&config.registry(), &discovery)
            .await
            .with_context(|| {
                format!(
                    "finding the etcd members through DNS (etcd_discovery_srv={})",
                    discovery.domain()
                )
            }),
        None => Registry::connect(&config.registry())
            .await
            .context("setting up the etcd client"),
    }
}

/// The registry config with the etcd members as found now, for one-shot
/// clients (`fleetd etcd-auth`).
///
/// # Errors
/// As [`connect`].
pub async fn registry_config(config: &Config) -> anyhow::Result<RegistryConfig> {
    match config.discovery() {
        Some(discovery) => discovery
            .resolve_config(&config.registry())
            .await
            .with_context(|| {
                format!(
                    "finding the etcd members through DNS (etcd_discovery_srv={})",
                    discovery.domain()
                )
            }),
        None => Ok(config.registry()),
    }
}
