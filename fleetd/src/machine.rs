//! The local machine: its id, its public IP and the [`MachineState`] the
//! heart publishes.
//!
//! The id is the trimmed contents of `machine_id_file` (`/etc/machine-id`);
//! the IP is `public_ip` when configured, else detected as the original did
//! in two steps: the interface of the default route, then that interface's
//! first IPv4 global unicast address. Reading both again every minute is the
//! heart's job; this module only reads once per call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fleet_registry::{MachineId, MachineState};

use crate::config::Config;

/// fleetd's version as published in the machine record (no leading `v`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the local machine could not be described.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("unable to determine local machine ID: cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to determine local machine ID: {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("unable to determine local machine ID: {} holds an invalid id", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: fleet_registry::InvalidMachineId,
    },
}

/// Reads the machine id from `path` (trimmed).
///
/// # Errors
/// A missing or unreadable file, an empty one, or an id that cannot name a
/// machine.
pub fn read_machine_id(path: &Path) -> Result<MachineId, MachineError> {
    let text = std::fs::read_to_string(path).map_err(|source| MachineError::Read {
        path: path.to_owned(),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(MachineError::Empty {
            path: path.to_owned(),
        });
    }
    id.parse().map_err(|source| MachineError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// What the heart needs to describe this machine, taken from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMachine {
    /// `machine_id_file`.
    pub machine_id_file: PathBuf,
    /// `public_ip`; empty means detect.
    pub public_ip: String,
    /// `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `disable_engine`, published so the API and other engines can see it.
    pub disable_engine: bool,
    /// `disable_agent`, published so the engine places no units here.
    pub disable_agent: bool,
    /// `api_advertise_url`, published so other fleetds can forward a unit's
    /// logs and status requests here; empty publishes nothing.
    pub api_url: String,
}

impl LocalMachine {
    pub fn from_config(config: &Config) -> LocalMachine {
        LocalMachine {
            machine_id_file: config.machine_id_file.clone(),
            public_ip: config.public_ip.clone(),
            metadata: config.metadata.clone(),
            disable_engine: config.disable_engine,
            disable_agent: config.disable_agent,
            api_url: config.api_advertise_url.clone(),
        }
    }

    /// Reads the id and the IP now and builds the state to publish.
    ///
    /// # Errors
    /// When the machine id cannot be read ([`read_machine_id`]). A public IP
    /// that cannot be detected is published as empty, as the original did.
    pub fn state(&self) -> Result<MachineState, MachineError> {
        let id = read_machine_id(&self.machine_id_file)?;
        let public_ip = if self.public_ip.is_empty() {
            detect_public_ip()
                .map(|ip| ip.to_string())
                .unwrap_or_default()
        } else {
            self.public_ip.clone()
        };
        Ok(MachineState {
            id,
            public_ip,
            metadata: self.metadata.clone(),
            version: VERSION.to_owned(),
            disable_engine: self.disable_engine,
            disable_agent: self.disable_agent,
            api_url: self.api_url.clone(),
        })
    }
}

/// The first IPv4 global unicast address of the default route's interface,
/// or `None` (no default route, no such address, or an unreadable table).
pub fn detect_public_ip() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let interface = default_route_interface(&routes)?;
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    addresses
        .filter(|address| address.interface_name == interface)
        .filter_map(|address| address.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .find(|ip| is_global_unicast(*ip))
}

/// The interface of the first default route (destination and mask 0, up) in
/// the text of `/proc/net/route`.
pub fn default_route_interface(routes: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (interface, destination, flags, mask) = (
            fields.first()?,
            fields.get(1)?,
            fields.get(3)?,
            fields.get(7)?,
        );
        let flags = u32::from_str_radix(flags, 16).ok()?;
        (*destination == "00000000" && *mask == "00000000" && flags & RTF_UP != 0)
            .then(|| (*interface).to_owned())
    })
}

/// Go's `net.IP.IsGlobalUnicast` for IPv4: private ranges count, loopback,
/// link-local, multicast, broadcast and unspecified do not.
pub fn is_global_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
";

    #[test]
    fn default_route() {
        assert_eq!(default_route_interface(ROUTES).as_deref(), Some("eth0"));
        let no_default = ROUTES.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(default_route_interface(&no_default), None);
        // A route that is down does not count.
        let down = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\neth9\t00000000\t01\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(default_route_interface(down), None);
        assert_eq!(default_route_interface(""), None);
    }

    #[test]
    fn global_unicast() {
        assert!(is_global_unicast(Ipv4Addr::new(10, 231, 0, 11)));
        assert!(is_global_unicast(Ipv4Addr::new(8, 8, 8, 8)));
        for ip in [
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(169, 254, 1, 1),
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::UNSPECIFIED,
        ] {
            assert!(!is_global_unicast(ip), "{ip}");
        }
    }

    #[test]
    fn machine_id_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("machine-id");
        let error = read_machine_id(&path).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with("unable to determine local machine ID"),
            "{error}"
        );
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
        std::fs::write(&path, " \n").expect("write");
        assert!(matches!(
            read_machine_id(&path),
            Err(MachineError::Empty { .. })
        ));
        std::fs::write(&path, "a/b\n").expect("write");
        assert!(matches!(
            read_machine_id(&path),
            Err(MachineError::Invalid { .. })
        ));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        assert_eq!(
            read_machine_id(&path).expect("reads").as_str(),
            "0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn state_uses_the_configured_ip_and_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("machine-id");
        std::fs::write(&path, "m1\n").expect("write");
        let local = LocalMachine {
            machine_id_file: path,
            public_ip: "10.0.0.9".to_owned(),
            metadata: BTreeMap::from([("role".to_owned(), "db".to_owned())]),
            disable_engine: true,
            disable_agent: false,
            api_url: String::new(),
        };
        let state = local.state().expect("state");
        assert_eq!(state.id.as_str(), "m1");
        assert_eq!(state.public_ip, "10.0.0.9");
        assert_eq!(state.metadata.get("role").map(String::as_str), Some("db"));
        assert_eq!(state.version, VERSION);
        assert!(state.disable_engine);
    }
}
