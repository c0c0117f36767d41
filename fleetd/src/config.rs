//! fleetd's options (the original's, plus this rewrite's new ones) and their loader.
//!
//! [`Config::load`] builds one [`Config`] in layers: the defaults of the spec's
//! table ([`Config::default`]), then the config file (`/etc/fleet/fleet.conf`
//! if it exists, or the `-config` path, which must exist), then the
//! `FLEET_<OPTION>` environment variables. The environment is an argument (a
//! map), so tests never touch the process environment.
//!
//! The file format is goini's, parsed by [`parse_ini`]. Unlike the
//! original, a value that does not parse for its type is an error that names
//! the option, the value, where it came from and the expected form;
//! the original silently kept the default.
//!
//! Parts get their own small config built here ([`Config::engine`],
//! [`Config::agent`], [`Config::registry`]) and passed explicitly; nothing
//! reads a global. This module does no logging: what an operator should hear
//! about (deprecated or unknown options) is returned in [`Loaded::notices`]
//! for `main` to log once the subscriber is installed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_registry::{RegistryConfig, SrvDiscovery};
use fleet_systemd::unit::OnPartition;

use crate::agent::FenceConfig;

/// Where fleetd looks for its config file when no `-config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fleet/fleet.conf";

/// Every option fleetd knows, in the order of the spec's table and then the
/// new ones. A file key or environment variable outside this list is
/// reported as a notice, never used.
pub const OPTION_NAMES: &[&str] = &[
    "verbosity",
    "etcd_servers",
    "etcd_username",
    "etcd_password",
    "etcd_keyfile",
    "etcd_certfile",
    "etcd_cafile",
    "etcd_key_prefix",
    "etcd_request_timeout",
    "engine_reconcile_interval",
    "public_ip",
    "metadata",
    "agent_ttl",
    "units_directory",
    "systemd_user",
    "token_limit",
    "disable_engine",
    "disable_watches",
    "enable_grpc",
    "verify_units",
    "authorized_keys_file",
    // New in this rewrite.
    "api_listen",
    "machine_id_file",
    "disable_agent",
    "systemd_bus_address",
    "machine_loss_grace",
    "reschedule_breaker_fraction",
    "stop_units_on_shutdown",
    "allow_host_unit_override",
    // Fail-safe behaviour (Documentation/reliability.md).
    "unload_breaker_fraction",
    "machine_restart_grace",
    "on_partition",
    // API security (Documentation/security.md).
    "api_tls_cert_file",
    "api_tls_key_file",
    "api_tls_client_ca_file",
    "api_access_file",
    "api_insecure_tcp",
    // etcd members from DNS SRV records (Documentation/configuration.md).
    "etcd_discovery_srv",
    "etcd_discovery_srv_name",
    "etcd_discovery_srv_resolver",
    "api_idle_timeout",
    // Logs and status through the API (Documentation/observability.md).
    "api_advertise_url",
    "api_peer_cert_file",
    "api_peer_key_file",
    "api_peer_ca_file",
];

/// The engine's slice of the config (see `fleetd::engine`). No `Default`:
/// tests say what they use.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// TTL of the engine leader lease: 5 × the reconcile interval, as in the original.
    pub lease_ttl: Duration,
    /// `machine_loss_grace`: how long a machine may be gone before its units move.
    pub machine_loss_grace: Duration,
    /// `reschedule_breaker_fraction`: above this fraction of machines lost in
    /// one window, the engine waits instead of rescheduling.
    pub breaker_fraction: f64,
    /// `machine_restart_grace`: the grace of a machine whose fleetd stopped
    /// cleanly (its units left running), instead of `machine_loss_grace`.
    pub machine_restart_grace: Duration,
}

/// The agent's slice of the config (see `fleetd::agent`). No `Default`.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// `units_directory`: where the agent writes the unit files it loads.
    pub units_directory: PathBuf,
    /// `systemd_bus_address`; `None` is the system bus.
    pub bus_address: Option<String>,
    /// `agent_ttl`: the machine lease's TTL (unit states ride on it).
    pub agent_ttl: Duration,
    /// `stop_units_on_shutdown`: the original's behaviour of stopping every
    /// unit when fleetd stops (off by default: a fleetd upgrade must not restart services).
    pub stop_units_on_shutdown: bool,
    /// `allow_host_unit_override`: fleet units may replace units the host
    /// already has (off: the agent refuses them).
    pub allow_host_unit_override: bool,
    /// `unload_breaker_fraction`: unordered unloads of this fraction of the
    /// machine's units (or more) wait instead (see `agent::breaker`).
    pub unload_breaker_fraction: f64,
}

/// Where the API is served when systemd passes no sockets (`api_listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// `unix:///path`: a unix socket at an absolute path.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port`: `host:port` as given.
    Tcp(String),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Unix(path) => write!(f, "unix://{}", path.display()),
            ListenAddress::Tcp(host_port) => write!(f, "tcp://{host_port}"),
        }
    }
}

/// fleetd's options (the original's and the new ones): defaults, then the config
/// file, then `FLEET_*`; validated once by [`Config::load`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `verbosity` (int, default 0): above 0 enables DEBUG logs.
    pub verbosity: i64,
    /// `etcd_servers` (list, default `http://127.0.0.1:2379,http://127.0.0.1:4001`):
    /// etcd v3 endpoints, in the order they are tried.
    pub etcd_servers: Vec<String>,
    /// `etcd_username` (default empty = no authentication).
    pub etcd_username: String,
    /// `etcd_password` (default empty).
    pub etcd_password: String,
    /// `etcd_keyfile`: client TLS key (default empty = none).
    pub etcd_keyfile: String,
    /// `etcd_certfile`: client TLS certificate (default empty = none).
    pub etcd_certfile: String,
    /// `etcd_cafile`: CA bundle to verify etcd with (default empty = none).
    pub etcd_cafile: String,
    /// `etcd_key_prefix` (default `/_coreos.com/fleet/`): every key lives under it.
    pub etcd_key_prefix: String,
    /// `etcd_request_timeout` (float seconds, default 1.0): deadline of one
    /// etcd request (watches excepted).
    pub etcd_request_timeout: Duration,
    /// `engine_reconcile_interval` (float seconds, default 2.0): sets the
    /// engine leader lease TTL (5 × this), so it bounds how long a dead
    /// engine holds the leadership. The engine reacts to watch events and
    /// resyncs on its own fixed period (`engine::RESYNC_INTERVAL`).
    pub engine_reconcile_interval: Duration,
    /// `public_ip` (default empty = detect from the default route, every minute).
    pub public_ip: String,
    /// `metadata` (`k=v,k2=v2`, default empty): the machine's configured metadata.
    pub metadata: BTreeMap<String, String>,
    /// `agent_ttl` (Go duration, default `30s`): life of the machine lease
    /// without keep-alives.
    pub agent_ttl: Duration,
    /// `units_directory` (default `/run/fleet/units/`).
    pub units_directory: PathBuf,
    /// `systemd_user` (bool, default false): talk to the user's systemd
    /// (needs `systemd_bus_address` or `DBUS_SESSION_BUS_ADDRESS`).
    pub systemd_user: bool,
    /// `token_limit` (int 1..=65535, default 100): the API's page size.
    pub token_limit: u16,
    /// `disable_engine` (bool, default false): never campaign for the engine.
    pub disable_engine: bool,
    /// `disable_watches` (bool, default false): accepted for compatibility;
    /// this fleetd always uses etcd v3 watches (a notice says so).
    pub disable_watches: bool,
    /// `enable_grpc` (bool, default false): accepted for compatibility; the
    /// experimental gRPC mode is not implemented (a notice says so).
    pub enable_grpc: bool,
    /// `verify_units` (bool, default false): deprecated and ignored.
    pub verify_units: bool,
    /// `authorized_keys_file` (default empty): deprecated and ignored.
    pub authorized_keys_file: String,
    /// `api_listen` (list, default `unix:///var/run/fleet.sock`): where to
    /// serve the API when systemd passes no sockets. New.
    pub api_listen: Vec<ListenAddress>,
    /// `machine_id_file` (default `/etc/machine-id`): the machine's id. New.
    pub machine_id_file: PathBuf,
    /// `disable_agent` (bool, default false): no agent and no D-Bus; this
    /// fleetd only keeps presence, serves the API and may be the engine. New.
    pub disable_agent: bool,
    /// `systemd_bus_address` (default empty = the system bus), e.g.
    /// `unix:path=/run/dbus/system_bus_socket`. New.
    pub systemd_bus_address: String,
    /// `machine_loss_grace` (float seconds, default 10.0): how long a machine
    /// may be gone before the engine moves its units. New.
    pub machine_loss_grace: Duration,
    /// `reschedule_breaker_fraction` (float in (0, 1], default 0.5): when more
    /// than this fraction of the machines is lost at once, the engine waits. New.
    pub reschedule_breaker_fraction: f64,
    /// `stop_units_on_shutdown` (bool, default false): stop this machine's
    /// units when fleetd stops, as the original did. New.
    pub stop_units_on_shutdown: bool,
    /// `allow_host_unit_override` (bool, default false): let a fleet unit
    /// replace a unit this host already has (`ssh.service`). New.
    pub allow_host_unit_override: bool,
    /// `unload_breaker_fraction` (float in (0, 1], default 0.5): the agent
    /// holds unloads that the engine did not order once they reach this
    /// fraction of the machine's units (and at least 2). New.
    pub unload_breaker_fraction: f64,
    /// `machine_restart_grace` (float seconds, default 900): how long a
    /// machine whose fleetd stopped cleanly may stay away before its units
    /// move (they were left running). New.
    pub machine_restart_grace: Duration,
    /// `on_partition` (`stop` or `keep-running`, default `stop`): whether
    /// this machine, cut off from etcd, stops its movable units before the
    /// engine may start them elsewhere (self-fencing). New.
    pub on_partition: OnPartition,
    /// `api_tls_cert_file` (PEM, default empty = plaintext TCP): the API's
    /// server certificate (chain); with it every TCP listener speaks only TLS. New.
    pub api_tls_cert_file: String,
    /// `api_tls_key_file` (PEM, default empty): its private key. New.
    pub api_tls_key_file: String,
    /// `api_tls_client_ca_file` (PEM, default empty = no client certificates):
    /// TCP clients must present a certificate signed by this CA. New.
    pub api_tls_client_ca_file: String,
    /// `api_access_file` (TOML, default empty = no identity has a role on
    /// TLS): certificate names and token hashes mapped to roles; re-read on
    /// SIGHUP. New.
    pub api_access_file: String,
    /// `api_insecure_tcp` (bool, default false): allow plaintext TCP on an
    /// address that is not loopback (anyone who reaches it is root). New.
    pub api_insecure_tcp: bool,
    /// `etcd_discovery_srv` (DNS domain, default empty = off): find the etcd
    /// members in the SRV records `_etcd-client-ssl._tcp.DOMAIN` and
    /// `_etcd-client._tcp.DOMAIN` instead of `etcd_servers` (setting both is
    /// an error). Without the trailing dot. New.
    pub etcd_discovery_srv: String,
    /// `etcd_discovery_srv_name` (default empty): etcd's
    /// `--discovery-srv-name`: look up `_etcd-client[-ssl]-NAME._tcp.DOMAIN`. New.
    pub etcd_discovery_srv_name: String,
    /// `etcd_discovery_srv_resolver` (`IP:PORT`, default empty = the servers
    /// of /etc/resolv.conf): the DNS server asked for the SRV records. New.
    pub etcd_discovery_srv_resolver: Option<SocketAddr>,
    /// `api_idle_timeout` (float seconds > 0, default 10): how long an API
    /// connection may wait for its next request to arrive whole (headers
    /// included); an idle keep-alive connection is closed after this long.
    /// Read at start-up only. New.
    pub api_idle_timeout: Duration,
    /// `api_advertise_url` (`https://HOST:PORT`, default empty = not
    /// published): the address of this machine's TLS API listener that other
    /// fleetds reach to read the logs and status of the units running here.
    /// Published in the machine's presence record. New.
    pub api_advertise_url: String,
    /// `api_peer_cert_file` (PEM, default empty = no forwarding): the client
    /// certificate this fleetd presents to another machine's API when it
    /// forwards a logs or status request there. New.
    pub api_peer_cert_file: String,
    /// `api_peer_key_file` (PEM, default empty): its private key. New.
    pub api_peer_key_file: String,
    /// `api_peer_ca_file` (PEM, default empty): the CA that signs the other
    /// machines' API server certificates. New.
    pub api_peer_ca_file: String,
}

impl Default for Config {
    /// The defaults (the original's, and ours for the new options): the
    /// one place they are written down.
    fn default() -> Config {
        Config {
            verbosity: 0,
            etcd_servers: vec![
                "http://127.0.0.1:2379".to_owned(),
                "http://127.0.0.1:4001".to_owned(),
            ],
            etcd_username: String::new(),
            etcd_password: String::new(),
            etcd_keyfile: String::new(),
            etcd_certfile: String::new(),
            etcd_cafile: String::new(),
            etcd_key_prefix: "/_coreos.com/fleet/".to_owned(),
            etcd_request_timeout: Duration::from_secs(1),
            engine_reconcile_interval: Duration::from_secs(2),
            public_ip: String::new(),
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            units_directory: PathBuf::from("/run/fleet/units/"),
            systemd_user: false,
            token_limit: 100,
            disable_engine: false,
            disable_watches: false,
            enable_grpc: false,
            verify_units: false,
            authorized_keys_file: String::new(),
            api_listen: vec![ListenAddress::Unix(PathBuf::from("/var/run/fleet.sock"))],
            machine_id_file: PathBuf::from("/etc/machine-id"),
            disable_agent: false,
            systemd_bus_address: String::new(),
            machine_loss_grace: Duration::from_secs(10),
            reschedule_breaker_fraction: 0.5,
            stop_units_on_shutdown: false,
            allow_host_unit_override: false,
            unload_breaker_fraction: 0.5,
            machine_restart_grace: Duration::from_secs(900),
            on_partition: OnPartition::Stop,
            api_tls_cert_file: String::new(),
            api_tls_key_file: String::new(),
            api_tls_client_ca_file: String::new(),
            api_access_file: String::new(),
            api_insecure_tcp: false,
            etcd_discovery_srv: String::new(),
            etcd_discovery_srv_name: String::new(),
            etcd_discovery_srv_resolver: None,
            api_advertise_url: String::new(),
            api_peer_cert_file: String::new(),
            api_peer_key_file: String::new(),
            api_peer_ca_file: String::new(),
            api_idle_timeout: crate::listeners::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Why the config could not be loaded. Every variant is fatal at start-up
/// and, on SIGHUP, keeps the old config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("config file {} is a directory", .0.display())]
    IsDirectory(PathBuf),
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// goini's message, after the file's name.
    #[error("config file {}: iniparser: syntax error at ':{line}'.", path.display())]
    Syntax { path: PathBuf, line: usize },
    #[error("invalid value {value:?} for option {option} (from {origin}): expected {expected}")]
    Invalid {
        option: &'static str,
        value: String,
        origin: String,
        expected: String,
    },
}

/// The outcome of [`Config::load`].
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any (the default path is used only if it exists).
    pub file: Option<PathBuf>,
    /// Things an operator should hear at WARN: deprecated, unsupported or
    /// unknown options. Sentences, ready to log.
    pub notices: Vec<String>,
}

impl Config {
    /// Loads the config: defaults, then `explicit_file` (which must exist and
    /// be a file) or else [`DEFAULT_CONFIG_PATH`] if it exists, then the
    /// `FLEET_*` variables of `env`. SIGHUP runs this again.
    ///
    /// # Errors
    /// A missing explicit file, an unreadable file, a syntax error, or an
    /// option value that does not parse ([`ConfigError`]).
    pub fn load(
        explicit_file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Loaded, ConfigError> {
        let file = match explicit_file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Missing(path.to_owned()));
                }
                if path.is_dir() {
                    return Err(ConfigError::IsDirectory(path.to_owned()));
                }
                Some(path.to_owned())
            }
            None => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                path.is_file().then(|| path.to_owned())
            }
        };
        let text = match &file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let (config, notices) = Config::from_sources(file.as_deref().zip(text.as_deref()), env)?;
        Ok(Loaded {
            config,
            file,
            notices,
        })
    }

    /// The loader without file-system access: `file` is `(path, contents)`.
    /// Returns the config and its notices.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: &HashMap<String, String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut raw = RawValues::default();
        let mut notices = Vec::new();
        if let Some((path, contents)) = file {
            let entries = parse_ini(contents).map_err(|line| ConfigError::Syntax {
                path: path.to_owned(),
                line,
            })?;
            for (key, value) in entries {
                if OPTION_NAMES.contains(&key.as_str()) {
                    raw.values.insert(key, (value, path.display().to_string()));
                } else {
                    notices.push(format!(
                        "Unknown option {key} in {} - ignoring",
                        path.display()
                    ));
                }
            }
        }
        for name in OPTION_NAMES {
            let variable = env_variable(name);
            // Spec 8.2: a variable that is set, even to empty, wins over the file.
            if let Some(value) = env.get(&variable) {
                raw.values.insert(
                    (*name).to_owned(),
                    (value.clone(), format!("environment variable {variable}")),
                );
            }
        }
        let config = raw.build(env)?;
        notices.extend(config.deprecation_notices());
        Ok((config, notices))
    }

    /// The notices of options that are accepted but ignored.
    fn deprecation_notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        if self.verify_units {
            notices.push("Config option verify_units is no longer supported - ignoring".to_owned());
        }
        if !self.authorized_keys_file.is_empty() {
            notices.push(
                "Config option authorized_keys_file is no longer supported - ignoring".to_owned(),
            );
        }
        if self.enable_grpc {
            notices.push(
                "Config option enable_grpc is not supported (agents read their own schedule from etcd v3) - ignoring"
                    .to_owned(),
            );
        }
        if self.disable_watches {
            notices.push(
                "Config option disable_watches is not supported (fleetd always uses etcd v3 watches) - ignoring"
                    .to_owned(),
            );
        }
        notices
    }

    /// The engine's config.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            lease_ttl: self.engine_reconcile_interval.saturating_mul(5),
            machine_loss_grace: self.machine_loss_grace,
            breaker_fraction: self.reschedule_breaker_fraction,
            machine_restart_grace: self.machine_restart_grace,
        }
    }

    /// The agent's config.
    pub fn agent(&self) -> AgentConfig {
        AgentConfig {
            units_directory: self.units_directory.clone(),
            bus_address: non_empty(&self.systemd_bus_address),
            agent_ttl: self.agent_ttl,
            stop_units_on_shutdown: self.stop_units_on_shutdown,
            allow_host_unit_override: self.allow_host_unit_override,
            unload_breaker_fraction: self.unload_breaker_fraction,
        }
    }

    /// The self-fencing clocks; `None` when this machine keeps its units
    /// running through a partition (`on_partition=keep-running`) or runs
    /// no agent.
    pub fn fence(&self) -> Option<FenceConfig> {
        (!self.disable_agent && self.on_partition == OnPartition::Stop)
            .then(|| FenceConfig::new(self.agent_ttl, self.machine_loss_grace))
    }

    /// How to reach etcd. With `etcd_discovery_srv` the endpoints are
    /// empty: they come from DNS ([`Config::discovery`]).
    pub fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            endpoints: if self.etcd_discovery_srv.is_empty() {
                self.etcd_servers.clone()
            } else {
                Vec::new()
            },
            key_prefix: self.etcd_key_prefix.clone(),
            request_timeout: self.etcd_request_timeout,
            username: non_empty(&self.etcd_username),
            password: non_empty(&self.etcd_password),
            ca_file: non_empty(&self.etcd_cafile),
            cert_file: non_empty(&self.etcd_certfile),
            key_file: non_empty(&self.etcd_keyfile),
        }
    }
}

/// The API's TLS options must form a whole: a certificate with its key, and
/// a client CA only with a certificate (clients cannot be verified without TLS).
fn check_api_tls(config: &Config) -> Result<(), ConfigError> {
    let invalid = |option: &'static str, expected: &str| ConfigError::Invalid {
        option,
        value: String::new(),
        origin: "the defaults".to_owned(),
        expected: expected.to_owned(),
    };
    if config.api_tls_cert_file.is_empty() != config.api_tls_key_file.is_empty() {
        let option = if config.api_tls_cert_file.is_empty() {
            "api_tls_cert_file"
        } else {
            "api_tls_key_file"
        };
        return Err(invalid(
            option,
            "api_tls_cert_file and api_tls_key_file to be set together",
        ));
    }
    if !config.api_tls_client_ca_file.is_empty() && config.api_tls_cert_file.is_empty() {
        return Err(invalid(
            "api_tls_cert_file",
            "a server certificate (api_tls_cert_file, api_tls_key_file) when api_tls_client_ca_file is set",
        ));
    }
    let peer = [
        ("api_peer_cert_file", &config.api_peer_cert_file),
        ("api_peer_key_file", &config.api_peer_key_file),
        ("api_peer_ca_file", &config.api_peer_ca_file),
    ];
    let n_set = peer.iter().filter(|(_, value)| !value.is_empty()).count();
    if n_set != 0 && n_set != peer.len() {
        let (option, _) = peer
            .iter()
            .find(|(_, value)| value.is_empty())
            .copied()
            .unwrap_or(peer[0]);
        return Err(invalid(
            option,
            "api_peer_cert_file, api_peer_key_file and api_peer_ca_file to be set together",
        ));
    }
    Ok(())
}

/// `api_advertise_url`: empty, or `https://HOST:PORT` with nothing after the
/// port but an optional `/` (other fleetds append the API's paths). Only
/// `https`: the calls it receives are authenticated by client certificates.
fn parse_advertise_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "an https URL of this machine's TLS API listener, such as https://10.0.0.11:49153";
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let Some(rest) = value.strip_prefix("https://") else {
        return Err(EXPECTED.to_owned());
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(EXPECTED.to_owned());
    }
    Ok(format!("https://{authority}"))
}

impl Config {
    /// Where to find the etcd members in DNS, when `etcd_discovery_srv` is set.
    pub fn discovery(&self) -> Option<SrvDiscovery> {
        if self.etcd_discovery_srv.is_empty() {
            return None;
        }
        // The loader validated both names; a failure here is impossible and
        // would show as "no discovery", which `registry()` then refuses.
        SrvDiscovery::new(
            &self.etcd_discovery_srv,
            &self.etcd_discovery_srv_name,
            self.etcd_discovery_srv_resolver,
        )
        .ok()
    }
}

/// `etcd_discovery_srv` and `etcd_servers` name the cluster two ways: an
/// operator who sets both meant one of them, and picking one silently could
/// point fleetd at the wrong cluster, so that is an error naming both. The
/// service name and resolver mean nothing without the domain.
fn check_discovery(raw: &RawValues, config: &Config) -> Result<(), ConfigError> {
    let invalid = |option: &'static str, expected: String| {
        let (value, origin) = raw.values.get(option).cloned().unwrap_or_default();
        ConfigError::Invalid {
            option,
            value,
            origin,
            expected,
        }
    };
    if config.etcd_discovery_srv.is_empty() {
        if !config.etcd_discovery_srv_name.is_empty() {
            return Err(invalid(
                "etcd_discovery_srv_name",
                "etcd_discovery_srv to be set too (the name only applies to DNS discovery)"
                    .to_owned(),
            ));
        }
        if config.etcd_discovery_srv_resolver.is_some() {
            return Err(invalid(
                "etcd_discovery_srv_resolver",
                "etcd_discovery_srv to be set too (the resolver only applies to DNS discovery)"
                    .to_owned(),
            ));
        }
        return Ok(());
    }
    if let Some((_, servers_origin)) = raw.values.get("etcd_servers") {
        return Err(invalid(
            "etcd_discovery_srv",
            format!(
                "either etcd_discovery_srv or etcd_servers, not both (etcd_servers is set in {servers_origin}); remove one"
            ),
        ));
    }
    Ok(())
}

/// An empty value turns discovery off; anything else must be a domain.
fn parse_discovery_domain(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    fleet_registry::discovery::parse_domain(value)
}

fn parse_discovery_name(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    fleet_registry::discovery::parse_service_name(value)
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// The environment variable that overrides `option` (`FLEET_` and the upper-cased name).
pub fn env_variable(option: &str) -> String {
    format!("FLEET_{}", option.to_uppercase().replace(['.', '-'], "_"))
}

/// Raw string values by option name, each with where it came from.
#[derive(Default)]
struct RawValues {
    values: HashMap<String, (String, String)>,
}

impl RawValues {
    /// A string option: any value, even empty, replaces the default.
    fn text(&self, option: &'static str, default: String) -> String {
        debug_assert!(OPTION_NAMES.contains(&option));
        self.values
            .get(option)
            .map_or(default, |(value, _)| value.clone())
    }

    /// A typed option: absent or empty (after trimming) means the default;
    /// anything else must parse.
    fn typed<T>(
        &self,
        option: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        debug_assert!(OPTION_NAMES.contains(&option));
        match self.values.get(option) {
            None => Ok(default),
            Some((value, _)) if value.trim().is_empty() => Ok(default),
            Some((value, origin)) => parse(value.trim()).ok_or_else(|| ConfigError::Invalid {
                option,
                value: value.clone(),
                origin: origin.clone(),
                expected: expected.to_owned(),
            }),
        }
    }

    /// A typed option whose parser explains what is wrong.
    fn checked<T>(
        &self,
        option: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
        default: T,
    ) -> Result<T, ConfigError> {
        debug_assert!(OPTION_NAMES.contains(&option));
        match self.values.get(option) {
            None => Ok(default),
            Some((value, origin)) => parse(value).map_err(|expected| ConfigError::Invalid {
                option,
                value: value.clone(),
                origin: origin.clone(),
                expected,
            }),
        }
    }

    fn build(&self, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        const BOOL: &str = "a boolean (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)";
        let d = Config::default();
        let seconds = |option: &'static str, default: Duration, allow_zero: bool| {
            self.typed(
                option,
                if allow_zero {
                    "a number of seconds ≥ 0 and at most one year, such as 10 or 2.5"
                } else {
                    "a number of seconds > 0 and at most one year, such as 1 or 0.5"
                },
                |value| {
                    parse_seconds(value)
                        .filter(|duration| allow_zero || !duration.is_zero())
                        .filter(|duration| *duration <= MAX_DURATION)
                },
                default,
            )
        };
        let mut config = Config {
            verbosity: self.typed("verbosity", "an integer", parse_int, d.verbosity)?,
            etcd_servers: self.checked("etcd_servers", parse_etcd_servers, d.etcd_servers)?,
            etcd_username: self.text("etcd_username", d.etcd_username),
            etcd_password: self.text("etcd_password", d.etcd_password),
            etcd_keyfile: self.text("etcd_keyfile", d.etcd_keyfile),
            etcd_certfile: self.text("etcd_certfile", d.etcd_certfile),
            etcd_cafile: self.text("etcd_cafile", d.etcd_cafile),
            etcd_key_prefix: self.text("etcd_key_prefix", d.etcd_key_prefix),
            etcd_request_timeout: seconds("etcd_request_timeout", d.etcd_request_timeout, false)?,
            engine_reconcile_interval: seconds(
                "engine_reconcile_interval",
                d.engine_reconcile_interval,
                false,
            )?,
            public_ip: self.text("public_ip", d.public_ip).trim().to_owned(),
            metadata: self.checked("metadata", parse_metadata, d.metadata)?,
            agent_ttl: self.typed(
                "agent_ttl",
                "a positive Go duration of at most one year, such as 30s, 1m30s, 500ms or 2h",
                |value| {
                    parse_go_duration(value)
                        .filter(|duration| !duration.is_zero() && *duration <= MAX_DURATION)
                },
                d.agent_ttl,
            )?,
            units_directory: PathBuf::from(self.text("units_directory", String::new())),
            systemd_user: self.typed("systemd_user", BOOL, parse_go_bool, d.systemd_user)?,
            token_limit: self.typed(
                "token_limit",
                "an integer from 1 to 65535",
                |value| {
                    parse_int(value)
                        .and_then(|limit| u16::try_from(limit).ok())
                        .filter(|limit| *limit > 0)
                },
                d.token_limit,
            )?,
            disable_engine: self.typed("disable_engine", BOOL, parse_go_bool, d.disable_engine)?,
            disable_watches: self.typed(
                "disable_watches",
                BOOL,
                parse_go_bool,
                d.disable_watches,
            )?,
            enable_grpc: self.typed("enable_grpc", BOOL, parse_go_bool, d.enable_grpc)?,
            verify_units: self.typed("verify_units", BOOL, parse_go_bool, d.verify_units)?,
            authorized_keys_file: self.text("authorized_keys_file", d.authorized_keys_file),
            api_listen: self.checked("api_listen", parse_api_listen, d.api_listen)?,
            machine_id_file: PathBuf::from(self.text("machine_id_file", String::new())),
            disable_agent: self.typed("disable_agent", BOOL, parse_go_bool, d.disable_agent)?,
            systemd_bus_address: self
                .text("systemd_bus_address", d.systemd_bus_address)
                .trim()
                .to_owned(),
            machine_loss_grace: seconds("machine_loss_grace", d.machine_loss_grace, true)?,
            reschedule_breaker_fraction: self.typed(
                "reschedule_breaker_fraction",
                "a number greater than 0 and at most 1, such as 0.5",
                |value| {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|fraction| *fraction > 0.0 && *fraction <= 1.0)
                },
                d.reschedule_breaker_fraction,
            )?,
            stop_units_on_shutdown: self.typed(
                "stop_units_on_shutdown",
                BOOL,
                parse_go_bool,
                d.stop_units_on_shutdown,
            )?,
            allow_host_unit_override: self.typed(
                "allow_host_unit_override",
                BOOL,
                parse_go_bool,
                d.allow_host_unit_override,
            )?,
            unload_breaker_fraction: self.typed(
                "unload_breaker_fraction",
                "a number greater than 0 and at most 1, such as 0.5",
                |value| {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|fraction| *fraction > 0.0 && *fraction <= 1.0)
                },
                d.unload_breaker_fraction,
            )?,
            machine_restart_grace: seconds("machine_restart_grace", d.machine_restart_grace, true)?,
            on_partition: self.typed(
                "on_partition",
                "stop or keep-running",
                OnPartition::parse,
                d.on_partition,
            )?,
            api_tls_cert_file: self.text("api_tls_cert_file", d.api_tls_cert_file),
            api_tls_key_file: self.text("api_tls_key_file", d.api_tls_key_file),
            api_tls_client_ca_file: self.text("api_tls_client_ca_file", d.api_tls_client_ca_file),
            api_access_file: self.text("api_access_file", d.api_access_file),
            api_insecure_tcp: self.typed(
                "api_insecure_tcp",
                BOOL,
                parse_go_bool,
                d.api_insecure_tcp,
            )?,
            etcd_discovery_srv: self.checked(
                "etcd_discovery_srv",
                parse_discovery_domain,
                d.etcd_discovery_srv,
            )?,
            etcd_discovery_srv_name: self.checked(
                "etcd_discovery_srv_name",
                parse_discovery_name,
                d.etcd_discovery_srv_name,
            )?,
            etcd_discovery_srv_resolver: self.typed(
                "etcd_discovery_srv_resolver",
                "the IP address and port of a DNS server, such as 10.0.0.2:53 or [fd00::2]:53",
                |value| value.parse::<SocketAddr>().ok().map(Some),
                d.etcd_discovery_srv_resolver,
            )?,
            api_idle_timeout: seconds("api_idle_timeout", d.api_idle_timeout, false)?,
            api_advertise_url: self.checked(
                "api_advertise_url",
                parse_advertise_url,
                d.api_advertise_url,
            )?,
            api_peer_cert_file: self.text("api_peer_cert_file", d.api_peer_cert_file),
            api_peer_key_file: self.text("api_peer_key_file", d.api_peer_key_file),
            api_peer_ca_file: self.text("api_peer_ca_file", d.api_peer_ca_file),
        };
        check_api_tls(&config)?;
        check_discovery(self, &config)?;
        // A path option set to empty means the default: an empty path names nothing.
        if config.units_directory.as_os_str().is_empty() {
            config.units_directory = d.units_directory;
        }
        if config.machine_id_file.as_os_str().is_empty() {
            config.machine_id_file = d.machine_id_file;
        }
        if config.etcd_username.is_empty() != config.etcd_password.is_empty() {
            let option = if config.etcd_username.is_empty() {
                "etcd_username"
            } else {
                "etcd_password"
            };
            return Err(ConfigError::Invalid {
                option,
                value: String::new(),
                origin: "the defaults".to_owned(),
                expected: "etcd_username and etcd_password to be set together".to_owned(),
            });
        }
        // The user's systemd is reached over the session bus: take its
        // address from the environment unless one is configured.
        if config.systemd_user && config.systemd_bus_address.is_empty() {
            match env
                .get("DBUS_SESSION_BUS_ADDRESS")
                .filter(|address| !address.is_empty())
            {
                Some(address) => config.systemd_bus_address = address.clone(),
                None => {
                    return Err(ConfigError::Invalid {
                        option: "systemd_user",
                        value: "true".to_owned(),
                        origin: self
                            .values
                            .get("systemd_user")
                            .map_or_else(String::new, |(_, origin)| origin.clone()),
                        expected:
                            "systemd_bus_address or DBUS_SESSION_BUS_ADDRESS to name the user's bus"
                                .to_owned(),
                    });
                }
            }
        }
        Ok(config)
    }
}

/// Parses goini text into the `(key, value)` pairs outside any
/// section, in file order (a later duplicate wins when collected).
///
/// # Errors
/// The 1-based number of the first line that is not blank, a comment, a
/// section header or a `key = value` line.
pub fn parse_ini(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut entries = Vec::new();
    let mut in_section = false;
    let mut lines = text.lines().enumerate();
    while let Some((idx, first)) = lines.next() {
        let line_number = idx + 1;
        let mut line = first.trim().to_owned();
        // A trailing backslash joins the next line, both trimmed.
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => line.push_str(next.trim()),
                // goini fails at the end of the file here; say where.
                None => return Err(line_number),
            }
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            // Spec 8.2: only options outside any section are used.
            in_section = true;
            continue;
        }
        let (key, value) = parse_ini_assignment(&line).ok_or(line_number)?;
        if !in_section {
            entries.push((key.to_lowercase(), value));
        }
    }
    Ok(entries)
}

/// One `key = value` line, as goini's four regular expressions read it:
/// `"double"` or `'single'` quotes spanning the rest of the line, else an
/// unquoted value up to the first `#` or `;` (trimmed), else an empty value.
fn parse_ini_assignment(line: &str) -> Option<(&str, String)> {
    let key_end = line.find(['=', ' ', '\t']).unwrap_or(line.len());
    let key = &line[..key_end];
    let rest = line[key_end..].trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=')?;
    if key.is_empty() {
        return None;
    }
    let value = rest.trim_start_matches([' ', '\t']);
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|inner| inner.strip_suffix(quote))
            && !inner.contains(quote)
        {
            return Some((key, inner.to_owned()));
        }
    }
    let unquoted = value.split(['#', ';']).next().unwrap_or_default();
    Some((key, unquoted.trim().to_owned()))
}

/// Go's `strconv.ParseBool` (shared with fleetctl's flags).
pub use fleet_model::parse_go_bool;

/// The longest duration any option takes. Durations are multiplied (the
/// engine's lease is 5 reconcile intervals, the breaker looks back 12 grace
/// periods) and added to the clock; one year keeps all of that far from
/// overflow and is longer than any sensible setting.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A decimal integer with an optional sign.
fn parse_int(value: &str) -> Option<i64> {
    value.parse().ok()
}

/// Non-negative, finite float seconds (`1`, `0.5`, `2.0`), at most a Go
/// duration's range (about 292 years): the daemon adds these to the clock
/// and multiplies them, which a larger value overflows.
fn parse_seconds(value: &str) -> Option<Duration> {
    let seconds: f64 = value.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 || seconds * 1e9 > i64::MAX as f64 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// Go's `time.ParseDuration` for non-negative durations: `0`, or a sequence
/// of decimal numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`,
/// `h`), such as `30s`, `1m30s`, `1.5h`, `500ms`. A leading `+` is allowed.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.strip_prefix('+').unwrap_or(value);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        // Go wants digits on at least one side of the point.
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    // Go's limit: an int64 of nanoseconds (about 290 years).
    if total_nanos > i64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_nanos.round() as u64))
}

/// Splits a list option the original's way (as for `etcd_servers`): on
/// `,`, each item stripped of leading ` [ "` and trailing ` " ]`, so both
/// `["a","b"]` and `a,b` work. Empty items are dropped.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|item| {
            item.trim_start_matches([' ', '[', '"'])
                .trim_end_matches([' ', '"', ']'])
                .trim()
        })
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_etcd_servers(value: &str) -> Result<Vec<String>, String> {
    let expected = "a comma-separated list of etcd URLs such as http://127.0.0.1:2379";
    let servers = split_list(value);
    if servers.is_empty() {
        return Err(format!("{expected} (the list is empty)"));
    }
    for server in &servers {
        let host = server
            .strip_prefix("http://")
            .or_else(|| server.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(format!(
                "{expected} ({server:?} is not an http:// or https:// URL)"
            ));
        }
    }
    Ok(servers)
}

fn parse_api_listen(value: &str) -> Result<Vec<ListenAddress>, String> {
    let expected =
        "a comma-separated list of unix:///absolute/path, tcp://host:port or http://host:port";
    let items = split_list(value);
    if items.is_empty() {
        return Err(format!("{expected} (the list is empty)"));
    }
    items
        .iter()
        .map(|item| parse_listen_address(item).ok_or_else(|| format!("{expected} (not {item:?})")))
        .collect()
}

/// One `api_listen` item.
pub fn parse_listen_address(item: &str) -> Option<ListenAddress> {
    if let Some(path) = item.strip_prefix("unix://") {
        return path
            .starts_with('/')
            .then(|| ListenAddress::Unix(PathBuf::from(path)));
    }
    let host_port = item
        .strip_prefix("tcp://")
        .or_else(|| item.strip_prefix("http://"))?;
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    let (host, port) = host_port.rsplit_once(':')?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return None;
    }
    Some(ListenAddress::Tcp(host_port.to_owned()))
}

/// `metadata`: `k=v,k2=v2`, split on `,` then on the first `=`, keys and
/// values trimmed, a later duplicate winning. Unlike the
/// original, which silently dropped them, an entry without `=` or with an
/// empty key is an error; empty entries (`a=b,,c=d`, a trailing comma) are
/// skipped.
pub fn parse_metadata(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut metadata = BTreeMap::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let Some((key, entry_value)) = entry.split_once('=') else {
            return Err(format!(
                "comma-separated key=value pairs (the entry {:?} has no '=')",
                entry.trim()
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "comma-separated key=value pairs (the entry {:?} has an empty key)",
                entry.trim()
            ));
        }
        metadata.insert(key.to_owned(), entry_value.trim().to_owned());
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found with the `config` fuzz target: seconds beyond a Go duration's
    /// range loaded, then overflowed the engine's lease (`* 5`) or the clock.
    #[test]
    fn seconds_beyond_a_go_duration_are_refused_with_the_option_name() {
        for option in [
            "engine_reconcile_interval",
            "machine_loss_grace",
            "etcd_request_timeout",
        ] {
            let text = format!("{option}=1e19\n");
            let file = Some((Path::new("/etc/fleet/fleet.conf"), text.as_str()));
            let error = Config::from_sources(file, &HashMap::new()).unwrap_err();
            assert!(error.to_string().contains(option), "{error}");
        }
        // The largest accepted value (durations are capped at one year)
        // still gives a lease TTL the clock can add.
        let text = "engine_reconcile_interval=31536000\n";
        let file = Some((Path::new("/etc/fleet/fleet.conf"), text));
        let (config, _) = Config::from_sources(file, &HashMap::new()).unwrap();
        assert!(
            std::time::Instant::now()
                .checked_add(config.engine().lease_ttl)
                .is_some()
        );
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn from_file(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Config::from_sources(
            Some((Path::new("/etc/fleet/fleet.conf"), text)),
            &HashMap::new(),
        )
    }

    fn from_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(None, &env(pairs)).map(|(config, _)| config)
    }

    fn invalid_option(result: Result<Config, ConfigError>) -> (&'static str, String) {
        match result {
            Err(error @ ConfigError::Invalid { option, .. }) => (option, error.to_string()),
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_the_spec_table() {
        let (config, notices) = Config::from_sources(None, &HashMap::new()).expect("defaults load");
        assert_eq!(config, Config::default());
        assert!(notices.is_empty());
        assert_eq!(
            config.etcd_servers,
            ["http://127.0.0.1:2379", "http://127.0.0.1:4001"]
        );
        assert_eq!(config.etcd_key_prefix, "/_coreos.com/fleet/");
        assert_eq!(config.etcd_request_timeout, Duration::from_secs(1));
        assert_eq!(config.engine_reconcile_interval, Duration::from_secs(2));
        assert_eq!(config.agent_ttl, Duration::from_secs(30));
        assert_eq!(config.units_directory, Path::new("/run/fleet/units/"));
        assert_eq!(config.token_limit, 100);
        assert_eq!(
            config.api_listen,
            [ListenAddress::Unix(PathBuf::from("/var/run/fleet.sock"))]
        );
        assert_eq!(config.machine_id_file, Path::new("/etc/machine-id"));
        assert_eq!(config.machine_loss_grace, Duration::from_secs(10));
        assert_eq!(config.reschedule_breaker_fraction, 0.5);
        assert!(!config.disable_agent && !config.disable_engine && !config.stop_units_on_shutdown);
    }

    #[test]
    fn every_option_is_read_from_the_file() {
        let text = r#"
verbosity = 1
etcd_servers = ["http://10.0.0.1:2379","http://10.0.0.2:2379"]
etcd_username = root
etcd_password = "s3cret"
etcd_keyfile = /k.pem
etcd_certfile = /c.pem
etcd_cafile = /ca.pem
etcd_key_prefix = /other/
etcd_request_timeout = 2.5
engine_reconcile_interval = 0.5
public_ip = 10.0.0.7
metadata = "region=us-west,az=b"
agent_ttl = 1m30s
units_directory = /tmp/units
token_limit = 50
disable_engine = true
disable_watches = 0
enable_grpc = F
verify_units = False
authorized_keys_file =
api_listen = unix:///tmp/fleet.sock,tcp://127.0.0.1:54728
machine_id_file = /tmp/machine-id
disable_agent = t
systemd_bus_address = unix:path=/run/dbus/system_bus_socket
machine_loss_grace = 0
reschedule_breaker_fraction = 1
stop_units_on_shutdown = TRUE
"#;
        let (config, notices) = from_file(text).expect("file loads");
        assert!(notices.is_empty(), "{notices:?}");
        assert_eq!(config.verbosity, 1);
        assert_eq!(
            config.etcd_servers,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(
            (config.etcd_username.as_str(), config.etcd_password.as_str()),
            ("root", "s3cret")
        );
        assert_eq!(config.etcd_key_prefix, "/other/");
        assert_eq!(config.etcd_request_timeout, Duration::from_millis(2500));
        assert_eq!(config.engine_reconcile_interval, Duration::from_millis(500));
        assert_eq!(config.public_ip, "10.0.0.7");
        assert_eq!(
            config.metadata,
            BTreeMap::from([
                ("region".into(), "us-west".into()),
                ("az".into(), "b".into())
            ])
        );
        assert_eq!(config.agent_ttl, Duration::from_secs(90));
        assert_eq!(config.units_directory, Path::new("/tmp/units"));
        assert_eq!(config.token_limit, 50);
        assert!(
            config.disable_engine
                && !config.disable_watches
                && !config.enable_grpc
                && !config.verify_units
        );
        assert_eq!(
            config.api_listen,
            [
                ListenAddress::Unix(PathBuf::from("/tmp/fleet.sock")),
                ListenAddress::Tcp("127.0.0.1:54728".into())
            ]
        );
        assert_eq!(config.machine_id_file, Path::new("/tmp/machine-id"));
        assert!(config.disable_agent && config.stop_units_on_shutdown);
        assert_eq!(config.machine_loss_grace, Duration::ZERO);
        assert_eq!(config.reschedule_breaker_fraction, 1.0);

        let registry = config.registry();
        assert_eq!(registry.endpoints, config.etcd_servers);
        assert_eq!(registry.username.as_deref(), Some("root"));
        assert_eq!(registry.ca_file.as_deref(), Some("/ca.pem"));
        assert_eq!(registry.request_timeout, Duration::from_millis(2500));
        let engine = config.engine();
        assert_eq!(engine.lease_ttl, Duration::from_millis(2500));
        assert_eq!(engine.breaker_fraction, 1.0);
        let agent = config.agent();
        assert_eq!(
            agent.bus_address.as_deref(),
            Some("unix:path=/run/dbus/system_bus_socket")
        );
        assert!(agent.stop_units_on_shutdown);
    }

    #[test]
    fn the_environment_wins_over_the_file_even_when_empty() {
        let text = "public_ip = 10.0.0.1\nmetadata = a=b\nverbosity = 2\n";
        let file = Some((Path::new("/f.conf"), text));
        let (config, _) = Config::from_sources(
            file,
            &env(&[("FLEET_PUBLIC_IP", ""), ("FLEET_METADATA", "c=d")]),
        )
        .expect("loads");
        assert_eq!(config.public_ip, "");
        assert_eq!(config.metadata, BTreeMap::from([("c".into(), "d".into())]));
        assert_eq!(config.verbosity, 2);
        // An empty value of a typed option means its default.
        let (config, _) =
            Config::from_sources(file, &env(&[("FLEET_VERBOSITY", "")])).expect("loads");
        assert_eq!(config.verbosity, 0);
        assert_eq!(env_variable("etcd_servers"), "FLEET_ETCD_SERVERS");
    }

    #[test]
    fn on_partition_turns_self_fencing_on_or_off_and_refuses_other_values() {
        let (config, _) = from_file("agent_ttl = 5s\nmachine_loss_grace = 12\n").expect("loads");
        let fence = config.fence().expect("on by default");
        assert_eq!(fence.margin, Duration::from_secs(5));
        let (config, _) =
            from_file("agent_ttl = 5s\nmachine_loss_grace = 12\non_partition = stop\n")
                .expect("loads");
        assert_eq!(config.fence(), Some(fence));
        let (config, _) = from_file("on_partition = keep-running\n").expect("loads");
        assert_eq!(config.on_partition, OnPartition::KeepRunning);
        assert_eq!(config.fence(), None);
        let (config, _) = from_file("disable_agent = true\n").expect("loads");
        assert_eq!(config.fence(), None, "no agent, no fence");
        let error = from_file("on_partition = maybe\n").expect_err("invalid");
        let message = error.to_string();
        assert!(
            message.contains("on_partition") && message.contains("stop or keep-running"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_name_the_option_the_value_and_the_form() {
        let (option, message) = invalid_option(from_env(&[("FLEET_TOKEN_LIMIT", "lots")]));
        assert_eq!(option, "token_limit");
        assert!(
            message.contains("\"lots\"") && message.contains("FLEET_TOKEN_LIMIT"),
            "{message}"
        );
        assert!(message.contains("an integer from 1 to 65535"), "{message}");
        assert_eq!(
            invalid_option(from_env(&[("FLEET_TOKEN_LIMIT", "0")])).0,
            "token_limit"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_TOKEN_LIMIT", "65536")])).0,
            "token_limit"
        );
        let (option, message) = invalid_option(from_env(&[("FLEET_AGENT_TTL", "30")]));
        assert_eq!(option, "agent_ttl");
        assert!(message.contains("Go duration"), "{message}");
        assert_eq!(
            invalid_option(from_env(&[("FLEET_AGENT_TTL", "0s")])).0,
            "agent_ttl"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_DISABLE_ENGINE", "yes")])).0,
            "disable_engine"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_VERBOSITY", "1.5")])).0,
            "verbosity"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ETCD_REQUEST_TIMEOUT", "0")])).0,
            "etcd_request_timeout"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ETCD_REQUEST_TIMEOUT", "-1")])).0,
            "etcd_request_timeout"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ENGINE_RECONCILE_INTERVAL", "2s")])).0,
            "engine_reconcile_interval"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_MACHINE_LOSS_GRACE", "nan")])).0,
            "machine_loss_grace"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_RESCHEDULE_BREAKER_FRACTION", "0")])).0,
            "reschedule_breaker_fraction"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_RESCHEDULE_BREAKER_FRACTION", "1.5")])).0,
            "reschedule_breaker_fraction"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ETCD_SERVERS", "127.0.0.1:2379")])).0,
            "etcd_servers"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ETCD_SERVERS", "")])).0,
            "etcd_servers"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_API_LISTEN", "/var/run/fleet.sock")])).0,
            "api_listen"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_API_LISTEN", "tcp://:80")])).0,
            "api_listen"
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_ETCD_USERNAME", "root")])).0,
            "etcd_password"
        );
        let (option, message) = invalid_option(from_env(&[("FLEET_METADATA", "region=west,oops")]));
        assert_eq!(option, "metadata");
        assert!(message.contains("\"oops\" has no '='"), "{message}");
        let (_, message) = invalid_option(from_env(&[("FLEET_METADATA", "=x")]));
        assert!(message.contains("empty key"), "{message}");
    }

    #[test]
    fn bad_file_values_say_which_file() {
        let error = from_file("agent_ttl = forever\n").expect_err("invalid");
        assert!(
            error.to_string().contains("(from /etc/fleet/fleet.conf)"),
            "{error}"
        );
    }

    #[test]
    fn systemd_user_takes_the_session_bus() {
        let config = from_env(&[
            ("FLEET_SYSTEMD_USER", "true"),
            ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1/bus"),
        ])
        .expect("loads");
        assert_eq!(
            config.agent().bus_address.as_deref(),
            Some("unix:path=/run/user/1/bus")
        );
        assert_eq!(
            invalid_option(from_env(&[("FLEET_SYSTEMD_USER", "true")])).0,
            "systemd_user"
        );
    }

    #[test]
    fn deprecated_and_unknown_options_are_noticed() {
        let text = "verify_units = true\nauthorized_keys_file = /root/.ssh/authorized_keys\nenable_grpc = 1\nbogus = 1\n";
        let (_, notices) = from_file(text).expect("loads");
        assert!(
            notices.contains(
                &"Config option verify_units is no longer supported - ignoring".to_owned()
            )
        );
        assert!(
            notices
                .iter()
                .any(|notice| notice.starts_with("Config option authorized_keys_file"))
        );
        assert!(
            notices
                .iter()
                .any(|notice| notice.starts_with("Config option enable_grpc"))
        );
        assert!(
            notices
                .iter()
                .any(|notice| notice.starts_with("Unknown option bogus"))
        );
    }

    fn check_ini(text: &str, expected: &[(&str, &str)]) {
        let entries =
            parse_ini(text).unwrap_or_else(|line| panic!("syntax error at {line} in {text:?}"));
        let entries: Vec<(&str, &str)> = entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        assert_eq!(entries, expected, "{text:?}");
    }

    #[test]
    fn ini_format() {
        check_ini("a = b", &[("a", "b")]);
        check_ini("a=b", &[("a", "b")]);
        check_ini("\n\n   \n# comment\n; comment\n  # indented comment\n", &[]);
        check_ini("Key = Value", &[("key", "Value")]);
        check_ini("a = \"x # y ; z\"", &[("a", "x # y ; z")]);
        check_ini("a = 'x # y'", &[("a", "x # y")]);
        check_ini("a = b # comment", &[("a", "b")]);
        check_ini("a = b ; comment", &[("a", "b")]);
        check_ini("a = b c  ", &[("a", "b c")]);
        check_ini("a =", &[("a", "")]);
        check_ini("a = # only a comment", &[("a", "")]);
        check_ini("a\t=\tb", &[("a", "b")]);
        // Quotes that do not span the rest of the line are kept, as goini does.
        check_ini("a = \"b\" # c", &[("a", "\"b\"")]);
        check_ini("a = \"b", &[("a", "\"b")]);
        check_ini("a = b=c", &[("a", "b=c")]);
        check_ini("a = one \\\n   two", &[("a", "one two")]);
        check_ini("a = b\n[section]\nc = d\n[other]\ne = f", &[("a", "b")]);
        check_ini("a = 1\na = 2", &[("a", "1"), ("a", "2")]);
        check_ini("a = b\r\nc = d\r\n", &[("a", "b"), ("c", "d")]);
    }

    #[test]
    fn ini_syntax_errors_give_the_line() {
        assert_eq!(parse_ini("a = b\njunk\n"), Err(2));
        assert_eq!(parse_ini("my key = b"), Err(1));
        assert_eq!(parse_ini("= b"), Err(1));
        assert_eq!(parse_ini("a = b\nc = \\"), Err(2));
        let error = from_file("\n\nwhat is this\n").expect_err("syntax error");
        assert_eq!(
            error.to_string(),
            "config file /etc/fleet/fleet.conf: iniparser: syntax error at ':3'."
        );
    }

    #[test]
    fn go_durations() {
        let check = |text: &str, expected: Option<Duration>| {
            assert_eq!(parse_go_duration(text), expected, "{text}")
        };
        check("30s", Some(Duration::from_secs(30)));
        check("1m30s", Some(Duration::from_secs(90)));
        check("500ms", Some(Duration::from_millis(500)));
        check("2h", Some(Duration::from_secs(7200)));
        check("1.5h", Some(Duration::from_secs(5400)));
        check(".5s", Some(Duration::from_millis(500)));
        check("1.s", Some(Duration::from_secs(1)));
        check("10us", Some(Duration::from_micros(10)));
        check("10µs", Some(Duration::from_micros(10)));
        check("7ns", Some(Duration::from_nanos(7)));
        check("+5s", Some(Duration::from_secs(5)));
        check("0", Some(Duration::ZERO));
        check("", None);
        check("30", None);
        check("s", None);
        check("1d", None);
        check("-5s", None);
        check("1..5s", None);
        check(".s", None);
        check("5 s", None);
    }

    #[test]
    fn go_bools() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(text), Some(true), "{text}");
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(text), Some(false), "{text}");
        }
        for text in ["yes", "no", "tRUE", "", "2"] {
            assert_eq!(parse_go_bool(text), None, "{text}");
        }
    }

    #[test]
    fn lists_split_like_the_original() {
        assert_eq!(
            split_list("[\"http://a:2379\",\"http://b:2379\"]"),
            ["http://a:2379", "http://b:2379"]
        );
        assert_eq!(
            split_list("http://a:2379, http://b:2379"),
            ["http://a:2379", "http://b:2379"]
        );
        assert_eq!(split_list("[ \"http://a:2379\" ]"), ["http://a:2379"]);
        assert_eq!(split_list("http://a:2379,,"), ["http://a:2379"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address("unix:///run/f.sock"),
            Some(ListenAddress::Unix("/run/f.sock".into()))
        );
        assert_eq!(
            parse_listen_address("tcp://0.0.0.0:54728"),
            Some(ListenAddress::Tcp("0.0.0.0:54728".into()))
        );
        assert_eq!(
            parse_listen_address("http://[::1]:80/"),
            Some(ListenAddress::Tcp("[::1]:80".into()))
        );
        assert_eq!(parse_listen_address("unix://relative.sock"), None);
        assert_eq!(parse_listen_address("tcp://host"), None);
        assert_eq!(parse_listen_address("tcp://host:port"), None);
        assert_eq!(parse_listen_address("https://host:443"), None);
    }

    #[test]
    fn metadata() {
        let parsed = parse_metadata(" region = us-west , az=b,role=x=y, az=c,").expect("parses");
        assert_eq!(
            parsed,
            BTreeMap::from([
                ("region".into(), "us-west".into()),
                ("az".into(), "c".into()),
                ("role".into(), "x=y".into())
            ])
        );
        assert_eq!(
            parse_metadata("k="),
            Ok(BTreeMap::from([("k".into(), String::new())]))
        );
        assert!(parse_metadata("").expect("empty is fine").is_empty());
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata(" = v").is_err());
    }

    #[test]
    fn load_checks_the_explicit_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.conf");
        assert!(matches!(
            Config::load(Some(&missing), &HashMap::new()),
            Err(ConfigError::Missing(_))
        ));
        assert!(matches!(
            Config::load(Some(dir.path()), &HashMap::new()),
            Err(ConfigError::IsDirectory(_))
        ));
        let path = dir.path().join("fleet.conf");
        std::fs::write(&path, "metadata = a=b\n").expect("write");
        let loaded = Config::load(Some(&path), &HashMap::new()).expect("loads");
        assert_eq!(loaded.file.as_deref(), Some(path.as_path()));
        assert_eq!(
            loaded.config.metadata.get("a").map(String::as_str),
            Some("b")
        );
    }

    #[test]
    fn durations_that_would_overflow_are_rejected_with_the_option_name() {
        for (variable, option, value) in [
            (
                "FLEET_ENGINE_RECONCILE_INTERVAL",
                "engine_reconcile_interval",
                "1e19",
            ),
            (
                "FLEET_ENGINE_RECONCILE_INTERVAL",
                "engine_reconcile_interval",
                "4e18",
            ),
            ("FLEET_MACHINE_LOSS_GRACE", "machine_loss_grace", "1e19"),
            ("FLEET_MACHINE_LOSS_GRACE", "machine_loss_grace", "1e300"),
            ("FLEET_ETCD_REQUEST_TIMEOUT", "etcd_request_timeout", "1e12"),
            ("FLEET_AGENT_TTL", "agent_ttl", "2562047h"),
            ("FLEET_AGENT_TTL", "agent_ttl", "8761h"),
        ] {
            let (rejected, message) = invalid_option(from_env(&[(variable, value)]));
            assert_eq!(rejected, option, "{variable}={value}");
            assert!(message.contains("at most one year"), "{message}");
        }
        // One year itself is accepted, and usable without overflow.
        let config = from_env(&[
            ("FLEET_MACHINE_LOSS_GRACE", "31536000"),
            ("FLEET_ENGINE_RECONCILE_INTERVAL", "31536000"),
            ("FLEET_AGENT_TTL", "8760h"),
        ])
        .expect("a year is allowed");
        assert_eq!(config.machine_loss_grace, MAX_DURATION);
        assert_eq!(config.agent_ttl, MAX_DURATION);
        assert!(config.engine().lease_ttl >= MAX_DURATION);
        let later = std::time::Instant::now() + config.machine_loss_grace * 12;
        assert!(later > std::time::Instant::now());
    }
    #[test]
    fn api_idle_timeout_defaults_to_ten_seconds_and_refuses_zero() {
        let (config, _) = from_file("").unwrap();
        assert_eq!(config.api_idle_timeout, Duration::from_secs(10));
        let (config, _) = from_file("api_idle_timeout=2.5\n").unwrap();
        assert_eq!(config.api_idle_timeout, Duration::from_millis(2500));
        let (config, _) =
            Config::from_sources(None, &env(&[("FLEET_API_IDLE_TIMEOUT", "30")])).unwrap();
        assert_eq!(config.api_idle_timeout, Duration::from_secs(30));
        for bad in ["0", "-1", "soon"] {
            let error = from_file(&format!("api_idle_timeout={bad}\n")).unwrap_err();
            assert!(error.to_string().contains("api_idle_timeout"), "{error}");
        }
    }

    #[test]
    fn peer_options_are_off_by_default_and_set_together() {
        let config = from_env(&[]).unwrap();
        assert!(config.api_advertise_url.is_empty() && config.api_peer_cert_file.is_empty());
        let (config, _) = from_file("api_advertise_url=https://10.0.0.11:49153/\n").unwrap();
        assert_eq!(config.api_advertise_url, "https://10.0.0.11:49153");
        for bad in [
            "http://10.0.0.11:49153",
            "https://",
            "https://h:1/fleet",
            "10.0.0.11:49153",
        ] {
            let (option, _) = invalid_option(from_env(&[("FLEET_API_ADVERTISE_URL", bad)]));
            assert_eq!(option, "api_advertise_url", "{bad}");
        }
        let (option, _) = invalid_option(from_env(&[
            ("FLEET_API_PEER_CERT_FILE", "/etc/fleet/peer.pem"),
            ("FLEET_API_PEER_KEY_FILE", "/etc/fleet/peer-key.pem"),
        ]));
        assert_eq!(option, "api_peer_ca_file");
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The packaged sample shows every option, and uncommented it loads.
    #[test]
    fn the_sample_config_shows_every_option_and_loads() {
        let sample = include_str!("../../packaging/fleet.conf.sample");
        let uncommented: String = sample
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| {
                line.split_once('=')
                    .is_some_and(|(key, _)| OPTION_NAMES.contains(&key))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let keys: Vec<&str> = uncommented
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, _)| key)
            .collect();
        for option in OPTION_NAMES {
            assert!(keys.contains(option), "the sample does not show {option}");
        }
        let (config, _) = Config::from_sources(
            Some((Path::new("fleet.conf.sample"), &uncommented)),
            &HashMap::new(),
        )
        .expect("the uncommented sample loads");
        assert_eq!(
            config.metadata.get("region").map(String::as_str),
            Some("us-west")
        );
        assert_eq!(config.api_listen, Config::default().api_listen);
    }
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let file = Some((Path::new("/etc/fleet/fleet.conf"), file));
        Config::from_sources(file, &env).map(|(config, _)| config)
    }

    #[test]
    fn discovery_options_load_and_replace_the_endpoints() {
        let config = load(
            "etcd_discovery_srv = example.com.\netcd_discovery_srv_name = blue\n",
            &[("FLEET_ETCD_DISCOVERY_SRV_RESOLVER", "10.0.0.2:5353")],
        )
        .expect("loads");
        assert_eq!(config.etcd_discovery_srv, "example.com");
        assert_eq!(
            config.etcd_discovery_srv_resolver,
            Some("10.0.0.2:5353".parse().unwrap())
        );
        assert!(config.registry().endpoints.is_empty());
        let discovery = config.discovery().expect("discovery is on");
        assert_eq!(
            discovery.record_name(fleet_registry::discovery::Scheme::Http),
            "_etcd-client-blue._tcp.example.com."
        );
        // Off by default, and an empty value is off too.
        let off = load("etcd_discovery_srv =\n", &[]).expect("loads");
        assert!(off.discovery().is_none());
        assert_eq!(off.registry().endpoints, Config::default().etcd_servers);
    }

    #[test]
    fn setting_both_etcd_servers_and_discovery_is_an_error_naming_both() {
        let error = load(
            "etcd_servers = http://10.0.0.1:2379\n",
            &[("FLEET_ETCD_DISCOVERY_SRV", "example.com")],
        )
        .unwrap_err();
        let ConfigError::Invalid { option, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(*option, "etcd_discovery_srv");
        let message = error.to_string();
        assert!(
            message.contains("etcd_servers is set in /etc/fleet/fleet.conf")
                && message.contains("FLEET_ETCD_DISCOVERY_SRV"),
            "{message}"
        );
    }

    #[test]
    fn bad_discovery_values_are_refused_with_the_option_name() {
        for (text, expected_option) in [
            ("etcd_discovery_srv = exa mple.com\n", "etcd_discovery_srv"),
            ("etcd_discovery_srv = a..b\n", "etcd_discovery_srv"),
            (
                "etcd_discovery_srv = example.com\netcd_discovery_srv_name = a.b\n",
                "etcd_discovery_srv_name",
            ),
            (
                "etcd_discovery_srv = example.com\netcd_discovery_srv_resolver = 10.0.0.2\n",
                "etcd_discovery_srv_resolver",
            ),
            (
                "etcd_discovery_srv_name = blue\n",
                "etcd_discovery_srv_name",
            ),
            (
                "etcd_discovery_srv_resolver = 127.0.0.1:53\n",
                "etcd_discovery_srv_resolver",
            ),
        ] {
            match load(text, &[]) {
                Err(ConfigError::Invalid { option, .. }) => {
                    assert_eq!(option, expected_option, "{text}");
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
