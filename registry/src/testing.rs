//! A real etcd for tests (feature `testing`): free loopback ports, a temporary
//! data dir, killed on drop.
//!
//! ```no_run
//! # async fn example() {
//! use fleet_registry::{Registry, testing::Etcd};
//! let etcd = Etcd::start().await;
//! let registry = Registry::connect(&etcd.config("/test-1/")).await.unwrap();
//! # }
//! ```
//!
//! There is no fake registry: code that talks to etcd is tested against etcd.
//! [`Etcd::stop`] and [`Etcd::restart`] keep the data dir and the ports, so a
//! test can check that a client recovers when etcd comes back.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod pki;
pub mod wait;

use crate::store::{Registry, RegistryConfig, RegistryError, Revision};

pub mod dnsmasq;

/// How long etcd may take to become healthy (a cold start on a loaded
/// 2-core machine takes a few seconds).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The root password of an etcd started with [`Etcd::start_auth`].
pub const ROOT_PASSWORD: &str = "fleet-test-root";

/// The request timeout of [`Etcd::config`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A running etcd, owned by a test. Killed (and its data dir removed) on drop.
#[derive(Debug)]
pub struct Etcd {
    process: Option<Child>,
    data_dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Serves `/health` over plain HTTP, also when the client port is TLS.
    metrics_port: u16,
    tls: Option<TlsFiles>,
}

/// The certificates of an etcd started with [`Etcd::start_tls`].
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that signed the server and the client certificate.
    pub ca_file: PathBuf,
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    /// A client certificate etcd accepts (`--client-cert-auth`).
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// `N` distinct ports nobody listens on now, taken below the kernel's
/// ephemeral range: a member killed by a test restarts on its old ports, and
/// a port in that range may meanwhile have become the source port of some
/// outgoing connection (the other members' included), which makes the
/// restart fail with "address already in use". All `N` listeners are held
/// until every port is known, so no port is handed out twice.
fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Where the next search starts: spread over the range by process id,
    // then moving on, so concurrent tests rarely try the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (10_000u32, ephemeral_floor().max(10_001));
    let span = high - low;
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(N);
    let mut tried = 0;
    while listeners.len() < N {
        assert!(tried < span, "no free TCP port below {high}");
        tried += 1;
        let offset = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = u16::try_from(low + offset % span).expect("below 65536");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    std::array::from_fn(|index| {
        listeners[index]
            .local_addr()
            .expect("a bound socket has an address")
            .port()
    })
}

/// The first port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A temporary dir on tmpfs when there is one: etcd fsyncs every write, and on
/// a shared disk that makes tests slow.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("fleet-etcd-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("fleet-etcd-")
        .tempdir()
        .expect("creating a temporary dir for etcd")
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    ///
    /// # Panics
    /// When the `etcd` binary is missing ("etcd not found: run
    /// scripts/setup.sh (Debian package etcd-server)"), or etcd is not healthy
    /// within 30 s (the message includes its log).
    pub async fn start() -> Etcd {
        let mut etcd = Etcd::unstarted();
        etcd.spawn().await;
        etcd
    }

    /// Starts etcd serving clients over TLS only, requiring a client
    /// certificate signed by a fresh test CA ([`pki::Pki`]).
    /// [`Etcd::config`] then carries the CA and a client certificate.
    ///
    /// # Panics
    /// As [`Etcd::start`].
    pub async fn start_tls() -> Etcd {
        let mut etcd = Etcd::unstarted();
        etcd.tls = Some(make_certificates(etcd.data_dir.path()));
        etcd.spawn().await;
        etcd
    }

    fn unstarted() -> Etcd {
        let [client_port, peer_port, metrics_port] = free_ports();
        Etcd {
            process: None,
            data_dir: temp_dir(),
            client_port,
            peer_port,
            metrics_port,
            tls: None,
        }
    }

    /// `http://127.0.0.1:<port>` (`https://` for [`Etcd::start_tls`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The port etcd serves clients on (for DNS SRV records).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The certificates of a TLS etcd.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// A registry config for this etcd under `prefix` (unique per test),
    /// with a 2 s request timeout.
    pub fn config(&self, prefix: &str) -> RegistryConfig {
        RegistryConfig {
            endpoints: vec![self.endpoint()],
            key_prefix: prefix.to_owned(),
            request_timeout: REQUEST_TIMEOUT,
            username: None,
            password: None,
            ca_file: self
                .tls
                .as_ref()
                .map(|tls| tls.ca_file.display().to_string()),
            cert_file: self
                .tls
                .as_ref()
                .map(|tls| tls.client_cert_file.display().to_string()),
            key_file: self
                .tls
                .as_ref()
                .map(|tls| tls.client_key_file.display().to_string()),
        }
    }

    /// Starts etcd with authentication on: the fleet roles for `prefix` are
    /// created and the root user has [`ROOT_PASSWORD`] (what
    /// `fleetd etcd-auth init` does). Connect with [`Etcd::root_config`] or
    /// with a machine's credential ([`Etcd::config_as`]).
    ///
    /// # Panics
    /// As [`Etcd::start`], and when etcd refuses to enable auth.
    pub async fn start_auth(prefix: &str) -> Etcd {
        let etcd = Etcd::start().await;
        let admin = crate::auth::EtcdAdmin::connect(&etcd.root_config(prefix))
            .await
            .expect("connecting to the test etcd as root");
        admin
            .init(Some(ROOT_PASSWORD))
            .await
            .expect("enabling auth on the test etcd");
        etcd
    }

    /// [`Etcd::config`] as etcd's root user.
    pub fn root_config(&self, prefix: &str) -> RegistryConfig {
        self.config_as(prefix, "root", ROOT_PASSWORD)
    }

    /// [`Etcd::config`] as `username`.
    pub fn config_as(&self, prefix: &str, username: &str, password: &str) -> RegistryConfig {
        RegistryConfig {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            ..self.config(prefix)
        }
    }

    /// etcd's log (stdout and stderr of every run), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills etcd, keeping its data dir and ports for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            // Already exited is fine: we only want it gone.
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts etcd again on the same ports with the same data, and waits until
    /// it is healthy.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    fn data_path(&self) -> PathBuf {
        self.data_dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("etcd.log")
    }

    /// Starts etcd and waits until it is healthy. On a first start, a port
    /// [`free_ports`] picked may be taken by another process before etcd
    /// binds it (other tests start etcds at the same moment): then new ports
    /// are picked and etcd tried again. A restart keeps its ports (clients
    /// hold them), so there it is an error.
    async fn spawn(&mut self) {
        let first = !self.data_path().join("member").exists();
        for _ in 0..5 {
            self.spawn_process();
            match self.wait_healthy().await {
                Ok(()) => return,
                Err(log) if first && log.contains("address already in use") => {
                    [self.client_port, self.peer_port, self.metrics_port] = free_ports();
                    let _ = std::fs::remove_dir_all(self.data_path());
                }
                Err(log) => panic!("{log}"),
            }
        }
        panic!(
            "etcd found its ports taken five times; its log:\n{}",
            self.log()
        );
    }

    fn spawn_process(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert_file.display()))
                .arg(format!("--key-file={}", tls.server_key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth=true");
        }
        command
            .arg("--name=fleet-test")
            .arg(format!("--data-dir={}", self.data_path().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=fleet-test={peer_url}"))
            .arg("--initial-cluster-state=new");
        self.process = Some(spawn_etcd(command, self.metrics_port, &self.log_path()));
    }

    /// Waits until etcd is healthy; `Err` with what happened and its log.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(process) = self.process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                return Err(format!(
                    "etcd exited with {status} before it was healthy; its log:\n{}",
                    self.log()
                ));
            }
            if healthy(address).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd was not healthy within {START_DEADLINE:?}; its log:\n{}",
                    self.log()
                ));
            }
            // Polling a local port; there is no event to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether etcd's `/health` answers `"health":"true"`.
/// Starts `command` (an `etcd` with its member flags) with the flags every
/// test etcd shares: metrics on `metrics_port`, logs appended to `log_path`.
///
/// # Panics
/// When etcd is not installed (naming the package) or cannot be started.
fn spawn_etcd(mut command: Command, metrics_port: u16, log_path: &Path) -> Child {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("creating etcd's log file in its temporary dir");
    let log_err = log.try_clone().expect("duplicating etcd's log file handle");
    let spawned = command
        .arg(format!(
            "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
        ))
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn();
    match spawned {
        Ok(process) => process,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("etcd not found: run scripts/setup.sh (Debian package etcd-server)")
        }
        Err(error) => panic!("cannot start etcd: {error}"),
    }
}

async fn healthy(address: SocketAddr) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response);
        Some(response.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(true))
    )
}

/// A CA, a server certificate for 127.0.0.1 and localhost (the name DNS
/// discovery tests point their SRV records at) and a client certificate, all
/// P-256 keys, valid until rcgen's default far-future expiry.
fn make_certificates(dir: &Path) -> TlsFiles {
    let pki = pki::Pki::new(dir);
    let (server_cert_file, server_key_file) =
        pki.sign_server("server", &["127.0.0.1", "localhost"]);
    let (client_cert_file, client_key_file) = pki.sign_client("fleet-test-client");
    TlsFiles {
        ca_file: pki.ca_file(),
        server_cert_file,
        server_key_file,
        client_cert_file,
        client_key_file,
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Compacts etcd's history up to `revision`, so tests can check how watchers
/// handle [`RegistryError::Compacted`].
///
/// # Errors
/// Whatever etcd says (e.g. a revision in the future).
pub async fn compact(registry: &Registry, revision: Revision) -> Result<(), RegistryError> {
    const OP: &str = "compact";
    registry
        .run(OP, |mut clients| async move {
            let options = etcd_client::CompactionOptions::new().with_physical();
            clients.kv.compact(revision.get(), Some(options)).await
        })
        .await?;
    Ok(())
}

/// The number of keys under the registry's prefix (tests check that nothing
/// is left behind).
///
/// # Errors
/// Transport errors and timeouts.
pub async fn count_keys(registry: &Registry) -> Result<i64, RegistryError> {
    const OP: &str = "count keys";
    let prefix = registry.keys().prefix().to_owned();
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let response = registry
        .run(OP, |mut clients| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { clients.kv.get(prefix, Some(options)).await }
        })
        .await?;
    Ok(response.count())
}

/// Every key under the registry's prefix, for assertion messages.
///
/// # Errors
/// Transport errors and timeouts.
pub async fn list_keys(registry: &Registry) -> Result<Vec<String>, RegistryError> {
    let prefix = registry.keys().prefix().to_owned();
    Ok(prefix_kvs(registry, "list keys", true)
        .await?
        .into_iter()
        .map(|(key, _)| format!("{prefix}{key}"))
        .collect())
}

/// Every key under the registry's prefix (without it) with its value: what
/// two registries wrote, to compare.
///
/// # Errors
/// Transport errors and timeouts.
pub async fn dump(registry: &Registry) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
    prefix_kvs(registry, "dump keys", false).await
}

/// The keys under the registry's prefix (without it), with their values
/// unless `keys_only`.
async fn prefix_kvs(
    registry: &Registry,
    op: &'static str,
    keys_only: bool,
) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
    let prefix = registry.keys().prefix().to_owned();
    let mut options = etcd_client::GetOptions::new().with_prefix();
    if keys_only {
        options = options.with_keys_only();
    }
    let response = registry
        .run(op, |mut clients| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { clients.kv.get(prefix, Some(options)).await }
        })
        .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let key = key.strip_prefix(prefix.as_str()).unwrap_or(&key).to_owned();
            (key, kv.value().to_vec())
        })
        .collect())
}

/// Writes a raw value behind the registry's back (to plant corrupt records).
///
/// # Errors
/// Transport errors and timeouts.
pub async fn put_raw(registry: &Registry, key: &str, value: &[u8]) -> Result<(), RegistryError> {
    const OP: &str = "put raw";
    registry
        .run(OP, |mut clients| {
            let (key, value) = (key.to_owned(), value.to_vec());
            async move { clients.kv.put(key, value, None).await }
        })
        .await?;
    Ok(())
}

/// Deletes a raw key behind the registry's back.
///
/// # Errors
/// Transport errors and timeouts.
pub async fn delete_raw(registry: &Registry, key: &str) -> Result<(), RegistryError> {
    const OP: &str = "delete raw";
    registry
        .run(OP, |mut clients| {
            let key = key.to_owned();
            async move { clients.kv.delete(key, None).await }
        })
        .await?;
    Ok(())
}

/// A 3-member etcd cluster on loopback, for tests of what happens when a
/// member dies: [`EtcdCluster::kill`] one member (keeping its data and ports),
/// [`EtcdCluster::restart`] it. Every member is killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<ClusterMember>,
    /// `name=peer-url,...` for every member.
    initial_cluster: String,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct ClusterMember {
    name: String,
    process: Option<Child>,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
}

impl ClusterMember {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn metrics_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }
}

/// The number of members of [`EtcdCluster`].
pub const CLUSTER_SIZE: usize = 3;

impl EtcdCluster {
    /// Starts three members and waits until each is healthy (has a leader).
    ///
    /// # Panics
    /// As [`Etcd::start`].
    pub async fn start() -> EtcdCluster {
        let ports: [u16; 3 * CLUSTER_SIZE] = free_ports();
        let members: Vec<ClusterMember> = (0..CLUSTER_SIZE)
            .map(|index| ClusterMember {
                name: format!("fleet-test-{index}"),
                process: None,
                client_port: ports[3 * index],
                peer_port: ports[3 * index + 1],
                metrics_port: ports[3 * index + 2],
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir: temp_dir(),
        };
        // Members wait for each other: spawn all before waiting on any.
        for index in 0..CLUSTER_SIZE {
            cluster.spawn(index);
        }
        for index in 0..CLUSTER_SIZE {
            cluster.wait_healthy(index).await;
        }
        cluster
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(ClusterMember::client_url).collect()
    }

    /// The client URL of member `index`.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].client_url()
    }

    /// A registry config with every member's endpoint under `prefix`, with a
    /// 2 s request timeout.
    pub fn config(&self, prefix: &str) -> RegistryConfig {
        RegistryConfig {
            endpoints: self.endpoints(),
            key_prefix: prefix.to_owned(),
            request_timeout: REQUEST_TIMEOUT,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    /// The index of the member that is the Raft leader now (from each
    /// member's `etcd_server_is_leader` metric), if a running member says so.
    pub async fn leader(&self) -> Option<usize> {
        for (index, member) in self.members.iter().enumerate() {
            if member.process.is_some()
                && let Some(metrics) = fetch_metrics(member.metrics_address()).await
                && metrics
                    .lines()
                    .any(|line| line.trim() == "etcd_server_is_leader 1")
            {
                return Some(index);
            }
        }
        None
    }

    /// Waits (up to 30 s) until a running member is the leader; its index.
    ///
    /// # Panics
    /// When no member leads within the deadline.
    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no etcd member became the leader within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gRPC requests member `index` has handled so far (the sum of its
    /// `grpc_server_handled_total` counters), to see which member serves.
    /// `None` when its metrics do not answer.
    pub async fn handled_requests(&self, index: usize) -> Option<u64> {
        let metrics = fetch_metrics(self.members[index].metrics_address()).await?;
        Some(
            metrics
                .lines()
                .filter(|line| line.starts_with("grpc_server_handled_total{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// The sum over every running member of the series of metric `name`
    /// (e.g. `grpc_server_started_total`) whose labels contain `label`
    /// (e.g. `grpc_method="LeaseKeepAlive"`).
    pub async fn metric_sum(&self, name: &str, label: &str) -> f64 {
        let mut sum = 0.0;
        for member in self
            .members
            .iter()
            .filter(|member| member.process.is_some())
        {
            let Some(metrics) = fetch_metrics(member.metrics_address()).await else {
                continue;
            };
            sum += metrics
                .lines()
                .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// Kills member `index` (SIGKILL), keeping its data dir and ports.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            // Already exited is fine: we only want it gone.
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts member `index` again with its data and waits until it is
    /// healthy.
    pub async fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
        self.wait_healthy(index).await;
    }

    /// All members' logs, for failure messages.
    pub fn log(&self) -> String {
        self.members
            .iter()
            .map(|member| {
                let log = std::fs::read_to_string(self.log_path(member)).unwrap_or_default();
                format!("--- {} ---\n{log}", member.name)
            })
            .collect()
    }

    fn log_path(&self, member: &ClusterMember) -> PathBuf {
        self.dir.path().join(format!("{}.log", member.name))
    }

    fn spawn(&mut self, index: usize) {
        let member = &self.members[index];
        let data_dir = self.dir.path().join(&member.name);
        let mut command = Command::new("etcd");
        command
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={}", member.client_url()))
            .arg(format!("--advertise-client-urls={}", member.client_url()))
            .arg(format!("--listen-peer-urls={}", member.peer_url()))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                member.peer_url()
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=fleet-test-cluster");
        let process = spawn_etcd(command, member.metrics_port, &self.log_path(member));
        self.members[index].process = Some(process);
    }

    async fn wait_healthy(&mut self, index: usize) {
        let address = self.members[index].metrics_address();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(process) = self.members[index].process.as_mut()
                && let Ok(Some(status)) = process.try_wait()
            {
                panic!(
                    "etcd member {index} exited with {status} before it was healthy; logs:\n{}",
                    self.log()
                );
            }
            if healthy(address).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd member {index} was not healthy within {START_DEADLINE:?}; logs:\n{}",
                    self.log()
                );
            }
            // Polling a local port; there is no event to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

/// The text of etcd's `/metrics` at `address`.
async fn fetch_metrics(address: SocketAddr) -> Option<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// Deletes every key in etcd, whatever its prefix: what an operator's
/// `etcdctl del --prefix ""` does to a cluster.
///
/// # Errors
/// Transport errors and timeouts.
pub async fn wipe_everything(registry: &Registry) -> Result<(), RegistryError> {
    registry
        .run("wipe everything", |mut clients| async move {
            let options = etcd_client::DeleteOptions::new().with_all_keys();
            clients.kv.delete("", Some(options)).await
        })
        .await?;
    Ok(())
}
