//! Declared health checks: the agent runs the check a unit declares in
//! `[X-Fleet]` on this machine and publishes the verdict, which a rolling
//! update waits for (see `Documentation/unit-files-and-scheduling.md`).
//!
//! - `HealthCheckExec=CMD`: `/bin/sh -c CMD` on the host; exit 0 is healthy.
//! - `HealthCheckHTTP=http://host:port/path`: a GET from the host; a 2xx
//!   status is healthy.
//! - `HealthCheckInterval=` (default 5s) and `HealthCheckTimeout=` (default
//!   2s): how often, and how long one check may take (a timeout is unhealthy).
//!
//! [`HealthChecks`] looks at the unit files the agent wrote (the units
//! directory), so it checks exactly the units scheduled here, and publishes
//! `P/machine/health/<machine>/<unit>` under the machine lease only when a verdict
//! changes (an idle cluster writes nothing).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleet_registry::{LeaseId, MachineId, Registry};
use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::UnitsDir;
use crate::heart::Presence;

/// How often the units directory is looked at for new or changed units.
const SCAN_EVERY: Duration = Duration::from_secs(1);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a unit declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Exec(String),
    Http { authority: String, path: String },
}

/// A unit's declared check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Check {
    /// The check `file` declares for `unit` (`%i`, `%n`, `%p` expanded), if any.
    pub fn of(file: &UnitFile, unit: &UnitName) -> Option<Check> {
        let value = |key: &str| {
            file.options()
                .iter()
                .rev()
                .find(|option| option.section == "X-Fleet" && option.name == key)
                .map(|option| expand(&option.value, unit))
        };
        let probe = match (value("HealthCheckExec"), value("HealthCheckHTTP")) {
            (Some(command), _) => Probe::Exec(command),
            (None, Some(url)) => parse_http(&url)?,
            (None, None) => return None,
        };
        let duration = |key: &str, default: Duration| {
            value(key)
                .and_then(|text| parse_seconds(&text))
                .unwrap_or(default)
        };
        Some(Check {
            probe,
            interval: duration("HealthCheckInterval", DEFAULT_INTERVAL),
            timeout: duration("HealthCheckTimeout", DEFAULT_TIMEOUT),
        })
    }
}

/// `%i`, `%n`, `%p` and `%%` of the unit's name.
fn expand(value: &str, unit: &UnitName) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('i') => out.push_str(unit.instance()),
            Some('n') => out.push_str(unit.as_str()),
            Some('p') => out.push_str(unit.prefix()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `http://host[:port][/path]`; anything else is no check (and logged by the caller).
fn parse_http(url: &str) -> Option<Probe> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Some(Probe::Http {
        authority,
        path: path.to_owned(),
    })
}

/// `5`, `5s`, `500ms`, `1m`.
fn parse_seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(minutes) = text.strip_suffix("min").or_else(|| text.strip_suffix('m')) {
        return minutes
            .parse::<u64>()
            .ok()
            .map(|m| Duration::from_secs(m * 60));
    }
    let seconds = text.strip_suffix('s').unwrap_or(text);
    seconds.parse().ok().map(Duration::from_secs)
}

/// Runs one check; `true` when healthy.
pub async fn probe(check: &Check) -> bool {
    let run = async {
        match &check.probe {
            Probe::Exec(command) => tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|status| status.success()),
            Probe::Http { authority, path } => http_ok(authority, path).await,
        }
    };
    timeout(check.timeout, run).await.unwrap_or(false)
}

/// A bare HTTP/1.0 GET: the status line is all we read.
async fn http_ok(authority: &str, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(authority).await else {
        return false;
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: fleetd-health\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let Ok(n) = stream.read(&mut head).await else {
        return false;
    };
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (200..300).contains(&code))
}

/// One unit being checked.
struct Watched {
    hash: Option<UnitHash>,
    check: Option<Check>,
    due: Instant,
    published: Option<bool>,
}

/// See the module docs.
pub struct HealthChecks {
    registry: Registry,
    machine: MachineId,
    units_dir: UnitsDir,
    presence: Presence,
    units: BTreeMap<UnitName, Watched>,
}

impl HealthChecks {
    pub fn new(
        registry: Registry,
        machine: MachineId,
        units_dir: UnitsDir,
        presence: Presence,
    ) -> HealthChecks {
        HealthChecks {
            registry,
            machine,
            units_dir,
            presence,
            units: BTreeMap::new(),
        }
    }

    /// Checks until `shutdown`.
    ///
    /// # Errors
    /// None: failures are logged and retried on the next round.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut lease = None;
        loop {
            let current = *self.presence.borrow();
            if current != lease {
                // A new lease dropped what we published: publish again.
                lease = current;
                for watched in self.units.values_mut() {
                    watched.published = None;
                }
            }
            self.scan().await;
            self.check_due(lease).await;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = sleep(SCAN_EVERY) => {}
            }
        }
    }

    /// Follows the unit files in the units directory.
    async fn scan(&mut self) {
        let found = match self.units_dir.scan().await {
            Ok(found) => found,
            Err(error) => {
                debug!(%error, "Reading the units directory for health checks failed.");
                return;
            }
        };
        let gone: Vec<UnitName> = self
            .units
            .keys()
            .filter(|unit| !found.contains_key(*unit))
            .cloned()
            .collect();
        for unit in gone {
            if let Some(watched) = self.units.remove(&unit)
                && watched.published.is_some()
                && let Err(error) = self.registry.delete_unit_health(&unit, &self.machine).await
            {
                debug!(%error, unit = %unit, "Withdrawing a health verdict failed; it goes with the lease.");
            }
        }
        for (unit, hash) in found {
            if self.units.get(&unit).is_some_and(|w| w.hash == hash) {
                continue;
            }
            let check = self.read_check(&unit).await;
            if let Some(check) = &check {
                info!(unit = %unit, ?check, "Health check declared.");
            }
            self.units.insert(
                unit,
                Watched {
                    hash,
                    check,
                    due: Instant::now(),
                    published: None,
                },
            );
        }
    }

    async fn read_check(&self, unit: &UnitName) -> Option<Check> {
        let text = tokio::fs::read_to_string(self.units_dir.path(unit))
            .await
            .ok()?;
        let file = UnitFile::parse(&text).ok()?;
        Check::of(&file, unit)
    }

    /// Runs the checks that are due (concurrently) and publishes changes.
    async fn check_due(&mut self, lease: Option<LeaseId>) {
        let now = Instant::now();
        let due: Vec<(UnitName, Check)> = self
            .units
            .iter()
            .filter(|(_, watched)| watched.due <= now)
            .filter_map(|(unit, watched)| Some((unit.clone(), watched.check.clone()?)))
            .collect();
        // Together: each is bounded by its timeout, so a round is too.
        let mut runs = tokio::task::JoinSet::new();
        for (unit, check) in &due {
            let (unit, check) = (unit.clone(), check.clone());
            runs.spawn(async move { (unit, probe(&check).await) });
        }
        let mut verdicts = HashMap::new();
        while let Some(joined) = runs.join_next().await {
            if let Ok((unit, healthy)) = joined {
                verdicts.insert(unit, healthy);
            }
        }
        let Some(lease) = lease else {
            return;
        };
        for (unit, check) in due {
            let Some(watched) = self.units.get_mut(&unit) else {
                continue;
            };
            watched.due = now + check.interval;
            let healthy = verdicts.get(&unit).copied().unwrap_or(false);
            if watched.published == Some(healthy) {
                continue;
            }
            match self
                .registry
                .put_unit_health(&unit, &self.machine, healthy, lease)
                .await
            {
                Ok(()) => {
                    info!(unit = %unit, healthy, "Health check verdict changed.");
                    watched.published = Some(healthy);
                }
                Err(error) => {
                    warn!(%error, unit = %unit, "Publishing a health verdict failed; retrying.")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_systemd::unit::UnitOption;

    use super::*;

    fn unit(options: &[(&str, &str)]) -> UnitFile {
        UnitFile::from_options(
            std::iter::once(UnitOption::new("Service", "ExecStart", "/bin/true"))
                .chain(
                    options
                        .iter()
                        .map(|(name, value)| UnitOption::new("X-Fleet", *name, *value)),
                )
                .collect(),
        )
    }

    fn name(text: &str) -> UnitName {
        text.parse().expect("valid unit name")
    }

    #[test]
    fn a_declared_exec_check_expands_the_instance() {
        let file = unit(&[
            ("HealthCheckExec", "test -e /run/web-%i.ok"),
            ("HealthCheckInterval", "2s"),
            ("HealthCheckTimeout", "500ms"),
        ]);
        let check = Check::of(&file, &name("web@7.service")).expect("a check");
        assert_eq!(check.probe, Probe::Exec("test -e /run/web-7.ok".to_owned()));
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.timeout, Duration::from_millis(500));
    }

    #[test]
    fn an_http_check_gets_a_default_port_and_path() {
        let file = unit(&[("HealthCheckHTTP", "http://127.0.0.1")]);
        let check = Check::of(&file, &name("web.service")).expect("a check");
        assert_eq!(
            check.probe,
            Probe::Http {
                authority: "127.0.0.1:80".to_owned(),
                path: "/".to_owned()
            }
        );
        assert_eq!(check.interval, DEFAULT_INTERVAL);
        assert!(Check::of(&unit(&[("HealthCheckHTTP", "ftp://x")]), &name("a.service")).is_none());
        assert!(Check::of(&unit(&[]), &name("a.service")).is_none());
    }

    #[tokio::test]
    async fn exec_checks_use_the_exit_status_and_the_timeout() {
        let check = |command: &str| Check {
            probe: Probe::Exec(command.to_owned()),
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_millis(300),
        };
        assert!(probe(&check("true")).await);
        assert!(!probe(&check("exit 3")).await);
        assert!(!probe(&check("sleep 5")).await);
    }

    #[tokio::test]
    async fn http_checks_read_the_status_of_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let authority = listener.local_addr().expect("address").to_string();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 256];
                let _ = stream.read(&mut buf).await;
                let answer = format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        let check = Check {
            probe: Probe::Http {
                authority,
                path: "/health".to_owned(),
            },
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_secs(2),
        };
        assert!(probe(&check).await);
        assert!(!probe(&check).await);
        server.await.expect("server");
    }
}
