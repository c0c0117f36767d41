//! Discovery: finding the etcd members through DNS SRV records
//! (`etcd_discovery_srv`), the way etcd's own clients do.
//!
//! `etcdctl --discovery-srv DOMAIN` looks up two SRV record sets and makes one
//! URL of each record's target and port:
//!
//! - `_etcd-client-ssl._tcp.DOMAIN`: members that serve clients over TLS
//!   (`https://target:port`),
//! - `_etcd-client._tcp.DOMAIN`: members that serve plain HTTP/2
//!   (`http://target:port`).
//!
//! With a service name (`--discovery-srv-name NAME`, our
//! `etcd_discovery_srv_name`) the names become `_etcd-client-ssl-NAME._tcp`
//! and `_etcd-client-NAME._tcp`, so one domain can name several clusters.
//!
//! Where fleetd differs from etcd, and why:
//!
//! - **One scheme.** etcd hands both sets to its client. One fleetd speaks to
//!   etcd with one TLS configuration, so it takes the `https` set when TLS is
//!   configured (`etcd_cafile`, `etcd_certfile` or `etcd_keyfile`) and the
//!   `http` set otherwise, and logs (at DEBUG) which records it ignored. It never falls
//!   back to plaintext because only plaintext records exist: that is an error
//!   that names the records and the options.
//! - **Trailing dots.** A target in DNS is absolute (`etcd1.example.com.`);
//!   etcd's client URL keeps the dot, its peer discovery strips it. We strip
//!   it, so the URL, the TLS server name and the logs carry the plain host
//!   name a certificate names.
//! - **Order.** Records are sorted by priority, then URL, and duplicates
//!   dropped; every member is used (requests go round robin over the live
//!   ones, see `endpoints`), so weights do not pick members. A target of `.`
//!   ("service not offered here", RFC 2782) is not a member.
//! - **Errors.** Like etcd, a look-up fails only when neither set yields a
//!   usable member; the error names the domain, every record name asked and
//!   what DNS said for each (no such name, no records, no answer).
//!
//! The target's addresses are looked up by the system resolver when a member
//! is connected (as etcd's client does), so they follow `/etc/hosts` and
//! `/etc/resolv.conf`. The SRV look-ups use `/etc/resolv.conf` too, unless a
//! DNS server is named (`etcd_discovery_srv_resolver`, for tests and
//! for sites whose etcd records live on a server the host does not use).
//!
//! Every look-up builds a new resolver: no cache, so a changed record is
//! seen at the next look-up. [`refresh`] looks up again every
//! [`REFRESH_INTERVAL`], and soon after every member has failed (at most
//! once per [`MIN_LOOKUP_GAP`]), and swaps the member list when it changed.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::endpoints::Endpoints;
use crate::store::RegistryConfig;

/// How often the records are looked up again while members answer.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// The shortest time between two look-ups (a total failure wakes the
/// look-up at once, but not more often than this).
pub const MIN_LOOKUP_GAP: Duration = Duration::from_secs(5);

/// The deadline of one query to a DNS server, and how many are sent.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// Where the etcd members are published: a domain, an optional service name
/// and the DNS server to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvDiscovery {
    /// Without a trailing dot; always looked up as an absolute name.
    domain: String,
    service_name: Option<String>,
    resolver: Option<SocketAddr>,
}

/// Which record set: members over TLS or plain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// One SRV record, as far as discovery cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub port: u16,
    /// As DNS gives it, usually with a trailing dot.
    pub target: String,
}

/// What DNS said for one record name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Records(Vec<SrvRecord>),
    /// The name exists but holds no SRV records (or only `.` targets).
    NoRecords,
    /// NXDOMAIN.
    NoSuchName,
    /// No usable answer: timeout, refused, unreachable server, SERVFAIL.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Records(records) => write!(f, "{} record(s)", records.len()),
            Outcome::NoRecords => f.write_str("no SRV records"),
            Outcome::NoSuchName => f.write_str("no such name (NXDOMAIN)"),
            Outcome::Failed(reason) => write!(f, "look-up failed: {reason}"),
        }
    }
}

/// Why no member list came out of DNS.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the system's DNS configuration (/etc/resolv.conf): {0}")]
    SystemConfig(String),
    #[error(
        "found no etcd members in the DNS SRV records of {domain}: {}",
        describe(.tried)
    )]
    NotFound {
        domain: String,
        tried: Vec<(String, Outcome)>,
    },
    #[error(
        "the DNS SRV records of {domain} name only etcd members served over TLS ({}); set etcd_cafile (and etcd_certfile/etcd_keyfile when etcd wants client certificates) to use them",
        describe(.tried)
    )]
    OnlyTls {
        domain: String,
        tried: Vec<(String, Outcome)>,
    },
    #[error(
        "the DNS SRV records of {domain} name only plaintext etcd members ({}) but TLS is configured (etcd_cafile/etcd_certfile/etcd_keyfile); fleetd does not fall back to plaintext: publish _etcd-client-ssl records or remove the TLS options",
        describe(.tried)
    )]
    OnlyPlaintext {
        domain: String,
        tried: Vec<(String, Outcome)>,
    },
}

fn describe(tried: &[(String, Outcome)]) -> String {
    tried
        .iter()
        .map(|(name, outcome)| format!("{name}: {outcome}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `etcd_discovery_srv`: a DNS name of 1 to 253 characters, labels of
/// letters, digits, `-` and `_`, an optional trailing dot. Returns it
/// without the dot.
///
/// # Errors
/// What is wrong with it, for the option's error message.
pub fn parse_domain(value: &str) -> Result<String, String> {
    let expected = "a DNS domain such as example.com";
    let domain = value.trim();
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() || domain.len() > 253 {
        return Err(format!("{expected} (1 to 253 characters)"));
    }
    if let Some(label) = domain.split('.').find(|label| !valid_label(label)) {
        return Err(format!(
            "{expected} (label {label:?}: 1 to 63 letters, digits, '-' or '_', not starting or ending with '-')"
        ));
    }
    Ok(domain.to_owned())
}

/// `etcd_discovery_srv_name`: the suffix of the service label, letters,
/// digits, `-` and `_` (`_etcd-client-ssl-NAME` must stay within 63).
///
/// # Errors
/// What is wrong with it.
pub fn parse_service_name(value: &str) -> Result<String, String> {
    let name = value.trim();
    // "_etcd-client-ssl-" is 17 characters of the 63 a label may have.
    if name.len() > 63 - 17 || !valid_label(name) {
        return Err(
            "a service name of 1 to 46 letters, digits, '-' or '_' (as etcd's --discovery-srv-name)"
                .to_owned(),
        );
    }
    Ok(name.to_owned())
}

/// 1 to 63 letters, digits, `-` and `_`, not starting or ending with `-`.
fn valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// The member URLs of one record set: `scheme://target:port` with the
/// target's trailing dot removed, `.` targets skipped, sorted by priority
/// and then URL, without duplicates.
pub fn member_urls(scheme: Scheme, records: &[SrvRecord]) -> Vec<String> {
    let mut members: Vec<(u16, String)> = records
        .iter()
        .filter_map(|record| {
            let host = record.target.strip_suffix('.').unwrap_or(&record.target);
            (!host.is_empty()).then(|| {
                let url = format!("{}://{host}:{}", scheme.as_str(), record.port);
                (record.priority, url)
            })
        })
        .collect();
    members.sort();
    let mut urls: Vec<String> = Vec::with_capacity(members.len());
    for (_, url) in members {
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

impl SrvDiscovery {
    /// `domain` and `service_name` as [`parse_domain`] and
    /// [`parse_service_name`] accept them (an empty name is none);
    /// `resolver` is the DNS server to ask, `None` for `/etc/resolv.conf`.
    ///
    /// # Errors
    /// The message of [`parse_domain`] or [`parse_service_name`].
    pub fn new(
        domain: &str,
        service_name: &str,
        resolver: Option<SocketAddr>,
    ) -> Result<SrvDiscovery, String> {
        let service_name = match service_name.trim() {
            "" => None,
            name => Some(parse_service_name(name)?),
        };
        Ok(SrvDiscovery {
            domain: parse_domain(domain)?,
            service_name,
            resolver,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The absolute name of one record set, e.g. `_etcd-client-ssl._tcp.example.com.`.
    pub fn record_name(&self, scheme: Scheme) -> String {
        let service = match scheme {
            Scheme::Https => "etcd-client-ssl",
            Scheme::Http => "etcd-client",
        };
        match &self.service_name {
            Some(name) => format!("_{service}-{name}._tcp.{}.", self.domain),
            None => format!("_{service}._tcp.{}.", self.domain),
        }
    }

    /// Looks both record sets up and returns the member URLs of the set
    /// `tls` asks for (see the module doc for the rules).
    ///
    /// # Errors
    /// [`DiscoveryError`]: nothing usable found, or only the other scheme.
    pub async fn members(&self, tls: bool) -> Result<Vec<String>, DiscoveryError> {
        let resolver = self.resolver()?;
        let (https_name, http_name) = (
            self.record_name(Scheme::Https),
            self.record_name(Scheme::Http),
        );
        let (https, http) = tokio::join!(
            look_up(&resolver, &https_name),
            look_up(&resolver, &http_name)
        );
        let urls_of = |scheme, outcome: &Outcome| match outcome {
            Outcome::Records(records) => member_urls(scheme, records),
            _ => Vec::new(),
        };
        let https_urls = urls_of(Scheme::Https, &https);
        let http_urls = urls_of(Scheme::Http, &http);
        let (wanted, other, other_name) = if tls {
            (https_urls, http_urls, &http_name)
        } else {
            (http_urls, https_urls, &https_name)
        };
        let domain = self.domain.clone();
        let tried = vec![(https_name.clone(), https), (http_name.clone(), http)];
        if !wanted.is_empty() {
            if !other.is_empty() {
                // Every refresh gets here: DEBUG, not INFO, to keep the log quiet.
                debug!(records = %other_name, ignored = ?other, tls, "Ignoring the etcd members of the other scheme: one fleetd uses one TLS configuration.");
            }
            return Ok(wanted);
        }
        Err(match (other.is_empty(), tls) {
            (true, _) => DiscoveryError::NotFound { domain, tried },
            (false, false) => DiscoveryError::OnlyTls { domain, tried },
            (false, true) => DiscoveryError::OnlyPlaintext { domain, tried },
        })
    }

    /// `config` with the members found now as its endpoints, for a
    /// short-lived client (`fleetd etcd-auth`) that does not follow changes.
    ///
    /// # Errors
    /// As [`SrvDiscovery::members`].
    pub async fn resolve_config(
        &self,
        config: &RegistryConfig,
    ) -> Result<RegistryConfig, DiscoveryError> {
        let endpoints = self.members(crate::store::uses_tls(config)).await?;
        Ok(RegistryConfig {
            endpoints,
            ..config.clone()
        })
    }

    /// A resolver without a cache: the named server, or `/etc/resolv.conf`.
    fn resolver(&self) -> Result<TokioResolver, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.resolver {
            Some(address) => {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                let config = ResolverConfig::from_name_servers(vec![server]);
                Resolver::builder_with_config(config, provider)
            }
            None => Resolver::builder(provider)
                .map_err(|error| DiscoveryError::SystemConfig(error.to_string()))?,
        };
        let options = builder.options_mut();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = QUERY_ATTEMPTS;
        options.cache_size = 0;
        builder
            .build()
            .map_err(|error| DiscoveryError::SystemConfig(error.to_string()))
    }
}

/// One SRV look-up of an absolute `name`.
async fn look_up(resolver: &TokioResolver, name: &str) -> Outcome {
    match resolver.srv_lookup(name).await {
        Ok(lookup) => {
            let records: Vec<SrvRecord> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) if !srv.target.is_root() => Some(SrvRecord {
                        priority: srv.priority,
                        port: srv.port,
                        target: srv.target.to_string(),
                    }),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                Outcome::NoRecords
            } else {
                Outcome::Records(records)
            }
        }
        Err(error) if error.is_nx_domain() => Outcome::NoSuchName,
        Err(error) if error.is_no_records_found() => Outcome::NoRecords,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// Keeps `endpoints` following the records: looks up again every
/// [`REFRESH_INTERVAL`] and when every member has failed (not sooner than
/// [`MIN_LOOKUP_GAP`] after the last look-up), and replaces the member list
/// when it changed. A failed look-up keeps the members there are. Ends when
/// the endpoints are dropped.
pub(crate) async fn refresh(endpoints: Weak<Endpoints>, discovery: SrvDiscovery, tls: bool) {
    let Some(all_down) = endpoints.upgrade().map(|endpoints| endpoints.all_down()) else {
        return;
    };
    let mut last_lookup = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(last_lookup + REFRESH_INTERVAL) => {}
            () = all_down.notified() => {
                tokio::time::sleep_until(last_lookup + MIN_LOOKUP_GAP).await;
            }
        }
        if endpoints.strong_count() == 0 {
            return;
        }
        last_lookup = Instant::now();
        let found = discovery.members(tls).await;
        let Some(endpoints) = endpoints.upgrade() else {
            return;
        };
        match found {
            Ok(urls) => {
                let before = endpoints.urls();
                if endpoints.replace(&urls) {
                    info!(domain = %discovery.domain, ?before, after = ?urls, "The etcd members in DNS changed; using the new list.");
                }
            }
            Err(error) => {
                warn!(%error, members = ?endpoints.urls(), "Looking up the etcd members again failed; keeping the members we have.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u16, target: &str, port: u16) -> SrvRecord {
        SrvRecord {
            priority,
            port,
            target: target.to_owned(),
        }
    }

    #[test]
    fn urls_drop_the_trailing_dot_and_sort_by_priority() {
        let records = [
            record(10, "etcd2.example.com.", 2379),
            record(0, "etcd1.example.com.", 2379),
            record(0, "etcd1.example.com.", 2379),
            record(0, ".", 2379),
            record(5, "etcd3.example.com", 2479),
        ];
        assert_eq!(
            member_urls(Scheme::Https, &records),
            [
                "https://etcd1.example.com:2379",
                "https://etcd3.example.com:2479",
                "https://etcd2.example.com:2379",
            ]
        );
        assert_eq!(
            member_urls(Scheme::Http, &records[..1]),
            ["http://etcd2.example.com:2379"]
        );
    }

    #[test]
    fn record_names_follow_etcd() {
        let plain = SrvDiscovery::new("example.com.", "", None).unwrap();
        assert_eq!(
            plain.record_name(Scheme::Https),
            "_etcd-client-ssl._tcp.example.com."
        );
        assert_eq!(
            plain.record_name(Scheme::Http),
            "_etcd-client._tcp.example.com."
        );
        let named = SrvDiscovery::new("example.com", "blue", None).unwrap();
        assert_eq!(
            named.record_name(Scheme::Https),
            "_etcd-client-ssl-blue._tcp.example.com."
        );
        assert_eq!(
            named.record_name(Scheme::Http),
            "_etcd-client-blue._tcp.example.com."
        );
    }

    #[test]
    fn bad_domains_and_names_are_refused() {
        for domain in ["", ".", "a..b", "exa mple.com", "-", "a/b", &"a".repeat(64)] {
            assert!(parse_domain(domain).is_err(), "{domain:?} was accepted");
        }
        assert_eq!(parse_domain(" Example.COM. ").unwrap(), "Example.COM");
        assert_eq!(parse_domain("_x.fleet-1.test").unwrap(), "_x.fleet-1.test");
        for name in ["a.b", "a b", "-x", &"n".repeat(47)] {
            assert!(parse_service_name(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(parse_service_name("prod-1").unwrap(), "prod-1");
    }

    #[test]
    fn errors_name_the_domain_and_every_record_name() {
        let error = DiscoveryError::NotFound {
            domain: "fleet.test".to_owned(),
            tried: vec![
                (
                    "_etcd-client-ssl._tcp.fleet.test.".to_owned(),
                    Outcome::NoSuchName,
                ),
                (
                    "_etcd-client._tcp.fleet.test.".to_owned(),
                    Outcome::Failed("request timed out".to_owned()),
                ),
            ],
        };
        assert_eq!(
            error.to_string(),
            "found no etcd members in the DNS SRV records of fleet.test: \
             _etcd-client-ssl._tcp.fleet.test.: no such name (NXDOMAIN); \
             _etcd-client._tcp.fleet.test.: look-up failed: request timed out"
        );
    }
}
