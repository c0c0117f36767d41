//! A real DNS server for discovery tests: Debian's `dnsmasq` on a free
//! loopback port, answering only the SRV records a test gives it.
//!
//! ```no_run
//! # async fn example() {
//! use fleet_registry::testing::{Etcd, dnsmasq::{Dnsmasq, Srv}};
//! let etcd = Etcd::start().await;
//! let dns = Dnsmasq::start("fleet.test", &[Srv::new("_etcd-client._tcp.fleet.test", "localhost", etcd.client_port())]);
//! // SrvDiscovery::new("fleet.test", "", Some(dns.address()))
//! # }
//! ```
//!
//! dnsmasq reads no config file, no `/etc/hosts` and no upstream servers, and
//! is authoritative for the test's domain (`--local`), so a name there
//! without records is NXDOMAIN at once instead of a forwarded query. Its
//! local records have a TTL of 0, and it is killed on drop.
//!
//! Starting is synchronous (dnsmasq listens within milliseconds), so the
//! functional tests, which have no async runtime, use it too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dnsmasq may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// One SRV record: `name` (e.g. `_etcd-client._tcp.fleet.test`) points at
/// `target:port`.
#[derive(Clone, Debug)]
pub struct Srv {
    pub name: String,
    pub target: String,
    pub port: u16,
}

impl Srv {
    pub fn new(name: &str, target: &str, port: u16) -> Srv {
        Srv {
            name: name.to_owned(),
            target: target.to_owned(),
            port,
        }
    }
}

/// A running dnsmasq, owned by a test.
#[derive(Debug)]
pub struct Dnsmasq {
    process: Option<Child>,
    listen: IpAddr,
    port: u16,
    domain: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP on `listen` now.
fn free_dns_port(listen: IpAddr) -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((listen, 0)).expect("binding port 0 (udp) for a free port");
        let port = udp
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if TcpListener::bind((listen, port)).is_ok() {
            return port;
        }
    }
    panic!("found no port free for both UDP and TCP on {listen}");
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1 serving `records` as the only names of
    /// `domain`, and waits until it listens.
    ///
    /// # Panics
    /// When `dnsmasq` is missing ("run scripts/setup.sh (Debian package
    /// dnsmasq-base)") or does not listen within 10 s (with its log).
    pub fn start(domain: &str, records: &[Srv]) -> Dnsmasq {
        Dnsmasq::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), domain, records)
    }

    /// [`Dnsmasq::start`] on another local address (the test hosts' bridge).
    ///
    /// # Panics
    /// As [`Dnsmasq::start`].
    pub fn start_on(listen: IpAddr, domain: &str, records: &[Srv]) -> Dnsmasq {
        let dir = tempfile::Builder::new()
            .prefix("fleet-dnsmasq-")
            .tempdir()
            .expect("creating a temporary dir for dnsmasq");
        let mut dns = Dnsmasq {
            process: None,
            listen,
            port: free_dns_port(listen),
            domain: domain.to_owned(),
            log: dir.path().join("dnsmasq.log"),
            _dir: dir,
        };
        dns.spawn(records);
        dns
    }

    /// The address to give the resolver (`etcd_discovery_srv_resolver`).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.port)
    }

    /// dnsmasq's log (its queries and answers), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Serves `records` instead, on the same port (dnsmasq reads
    /// `--srv-host` only at start, so this restarts it).
    pub fn replace_records(&mut self, records: &[Srv]) {
        self.stop();
        self.spawn(records);
    }

    /// Kills dnsmasq; the port then answers nothing (a dead DNS server).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn spawn(&mut self, records: &[Srv]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("creating dnsmasq's log file");
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            .arg("--log-queries")
            .arg("--log-facility=-")
            .arg("--pid-file=")
            .arg("--bind-interfaces")
            .arg(format!("--listen-address={}", self.listen))
            .arg(format!("--port={}", self.port))
            .arg(format!("--local=/{}/", self.domain));
        for record in records {
            command.arg(format!(
                "--srv-host={},{},{}",
                record.name, record.target, record.port
            ));
        }
        let spawned = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn();
        let process = match spawned {
            Ok(process) => process,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("dnsmasq not found: run scripts/setup.sh (Debian package dnsmasq-base)")
            }
            Err(error) => panic!("starting dnsmasq failed: {error}"),
        };
        self.process = Some(process);
        self.wait_listening();
    }

    /// Waits until dnsmasq accepts TCP connections (it opens UDP first).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if TcpStream::connect(self.address()).is_ok() {
                return;
            }
            if let Some(process) = self.process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                panic!("dnsmasq exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {} within {START_DEADLINE:?}; its log:\n{}",
                self.address(),
                self.log()
            );
            // Polling a port; dnsmasq has no readiness notification we can use.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
