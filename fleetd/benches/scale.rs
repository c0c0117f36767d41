//! The scale benchmark (the performance issue): the real `fleetd` engine and
//! API against a real etcd, with M simulated machines and N units.
//!
//! What runs for real: etcd (spawned here on free loopback ports, data dir on
//! tmpfs, `--metrics=extensive`; one member, or a cluster of
//! `--etcd-members K` on loopback, whose metrics are merged: what members
//! served their clients is summed, what every member does for the cluster,
//! such as Raft proposals, is counted once), and the `fleetd` binary in engine+API-only
//! mode (`disable_agent=true`, `api_listen=tcp://…`), i.e. the production
//! engine, scheduler, leader-guarded schedule writes and API server.
//!
//! What is simulated, in this process: M machines. Each is what a real agent
//! does to etcd, through the production [`Registry`]: its own lease (granted,
//! kept alive every TTL/3), its machine record via `register_machine`, one
//! watch on its own `P/engine/schedule/<id>/` prefix only, and for every placement
//! two unit-state writes under its lease (`reached=loaded`, then
//! `reached=launched` with `active`/`running`), as the agent reports what
//! systemd says. There is no systemd: the simulated unit "starts" at once.
//! All simulated machines share ONE `Registry` (one HTTP/2 connection; etcd
//! multiplexes the 1,000 watch streams and requests over it); a real cluster
//! has one connection per machine, which costs etcd more sockets, not more
//! requests.
//!
//! The engine's own machine is kept out of scheduling by metadata: fleetd runs
//! with `metadata=role=engine`, the simulated machines with `role=worker`, and
//! every unit says `MachineMetadata=role=worker`.
//!
//! Figures (see `Documentation/performance.md` for targets):
//! - time from the first `PUT /fleet/v1/units/<name>` (desiredState launched,
//!   32 concurrent clients) until all N units are reported active;
//! - time to move the units of 10% of the machines after their leases are
//!   revoked, until all of them are active elsewhere (includes
//!   `machine_loss_grace`, reported separately);
//! - etcd requests, writes and bytes received per unit scheduled (etcd
//!   `/metrics` deltas over the submit-to-active phase);
//! - etcd writes per second in the idle cluster (after everything settled);
//! - peak RSS (`VmHWM`) of the engine fleetd;
//! - latency of `GET /fleet/v1/units` (all pages), `GET /fleet/v1/state`
//!   (all pages) and of `fleetctl list-units`.
//!
//! With `--check-perf LOAD` the run ends with `etcdctl check perf` against
//! the same cluster: its write ceiling, to set beside the proposal rate of
//! the submission.
//!
//! Run: `scripts/scale-bench.sh --machines 1000 --units 20000 --json out.json`,
//! or `cargo bench -p fleetd --bench scale -- --help`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use fleet_api::client::{Client, ClientTls, Endpoint};
use fleet_api::entities;
use fleet_registry::changes::{Change, ChangeStream, Watched};
use fleet_registry::store::LeaseId;
use fleet_registry::testing::pki::Pki;
use fleet_registry::{
    LeaseKeepAlive, MachineId, MachineState, Registry, RegistryConfig, RegistryError, TargetState,
    UnitState,
};

const USAGE: &str = "\
scale benchmark: the real fleetd engine+API and etcd, M simulated machines, N units

Options (cargo bench -p fleetd --bench scale -- OPTIONS):
  --machines M          simulated machines (default 50)
  --units N             units to submit (default 500)
  --json PATH           also write the figures as JSON
  --fleetd PATH         fleetd binary (default target/release/fleetd, or $FLEETD_BIN)
  --fleetctl PATH       fleetctl binary (default target/release/fleetctl, or $FLEETCTL_BIN)
  --concurrency C       concurrent API clients submitting units (default 32)
  --kill-fraction F     fraction of machines whose leases are revoked (default 0.1)
  --loss-grace S        fleetd machine_loss_grace in seconds (default 10, fleetd's default)
  --idle-seconds S      length of the idle-writes window (default 10)
  --agent-ttl S         lease TTL of the simulated machines (default 30, fleetd's agent_ttl)
  --batch B             submit through fleetd's batch endpoint (POST /fleet/x1/units, B
                        units a request, as our fleetctl sends more than 4 units) instead
                        of one v1 PUT a unit (as the original fleetctl does)
  --register-rate R     simulated machines start registering at most R a second
                        (default 0: as fast as 64 concurrent registrations go), as
                        a cluster's hosts boot over time rather than all at once
  --keep-alive-per-request
                        simulated machines open a new keep-alive stream per
                        keep-alive (the old way) instead of one per lease
  --etcd-members K      etcd members in the cluster (default 1; e.g. 3)
  --check-perf LOAD     at the end, run `etcdctl check perf --load=LOAD` (s, m, l,
                        xl) against the same cluster: the write ceiling to
                        compare the run's proposal rate with
  --keep                keep the work dir (etcd and fleetd logs) even on success
  --tls                 the API over mTLS (certificates from the test CA, an admin
                        client certificate for the bench's client and fleetctl),
                        to compare with a plaintext run
";

/// The key prefix of the benchmark's cluster.
const PREFIX: &str = "/fleet-scale/";

/// Deadline of one etcd request of the simulated machines: 1,000 machines on
/// two cores share the CPU with etcd and fleetd, so be patient.
const SIM_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Simulated machines registered concurrently.
const REGISTER_CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
struct Args {
    machines: usize,
    units: usize,
    json: Option<PathBuf>,
    fleetd: PathBuf,
    fleetctl: PathBuf,
    concurrency: usize,
    kill_fraction: f64,
    loss_grace: f64,
    idle_seconds: f64,
    agent_ttl: u64,
    /// One keep-alive stream per lease (fleetd's way) rather than one per
    /// keep-alive.
    keep_alive_streams: bool,
    keep: bool,
    /// Serve the API over TLS with client certificates.
    tls: bool,
    /// etcd members (1 or more).
    etcd_members: usize,
    /// `etcdctl check perf` workload to run at the end, if any.
    check_perf: Option<String>,
    /// Registrations started per second (0: unbounded).
    register_rate: f64,
    /// Units per batch request (0: one v1 PUT per unit).
    batch: usize,
}

fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release").join(name)
}

fn parse_args(raw: &[String]) -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        machines: 50,
        units: 500,
        json: None,
        fleetd: workspace_binary("fleetd", "FLEETD_BIN"),
        fleetctl: workspace_binary("fleetctl", "FLEETCTL_BIN"),
        concurrency: 32,
        kill_fraction: 0.1,
        loss_grace: 10.0,
        idle_seconds: 10.0,
        agent_ttl: 30,
        keep_alive_streams: true,
        keep: false,
        tls: false,
        etcd_members: 1,
        check_perf: None,
        register_rate: 0.0,
        batch: 0,
    };
    let mut iter = raw.iter();
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| anyhow!("{name} needs a value"))
        };
        match flag.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--help" | "-h" => return Ok(None),
            "--machines" => args.machines = value(flag)?.parse().context("--machines")?,
            "--units" => args.units = value(flag)?.parse().context("--units")?,
            "--json" => args.json = Some(PathBuf::from(value(flag)?)),
            "--fleetd" => args.fleetd = PathBuf::from(value(flag)?),
            "--fleetctl" => args.fleetctl = PathBuf::from(value(flag)?),
            "--concurrency" => args.concurrency = value(flag)?.parse().context("--concurrency")?,
            "--kill-fraction" => {
                args.kill_fraction = value(flag)?.parse().context("--kill-fraction")?;
            }
            "--loss-grace" => args.loss_grace = value(flag)?.parse().context("--loss-grace")?,
            "--idle-seconds" => {
                args.idle_seconds = value(flag)?.parse().context("--idle-seconds")?;
            }
            "--agent-ttl" => args.agent_ttl = value(flag)?.parse().context("--agent-ttl")?,
            "--keep" => args.keep = true,
            "--tls" => args.tls = true,
            "--etcd-members" => {
                args.etcd_members = value(flag)?.parse().context("--etcd-members")?;
            }
            "--check-perf" => args.check_perf = Some(value(flag)?),
            "--batch" => args.batch = value(flag)?.parse().context("--batch")?,
            "--register-rate" => {
                args.register_rate = value(flag)?.parse().context("--register-rate")?;
            }
            "--keep-alive-per-request" => args.keep_alive_streams = false,
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if args.machines < 2 || args.units == 0 || args.concurrency == 0 {
        bail!("need --machines >= 2, --units >= 1 and --concurrency >= 1");
    }
    if args.batch > fleet_api::x1::MAX_BATCH_UNITS {
        bail!(
            "--batch takes at most {} units a request",
            fleet_api::x1::MAX_BATCH_UNITS
        );
    }
    if !(args.register_rate >= 0.0 && args.register_rate.is_finite()) {
        bail!("--register-rate must be a number of machines a second, 0 for unbounded");
    }
    if !(1..=5).contains(&args.etcd_members) {
        bail!("--etcd-members must be 1 to 5");
    }
    if let Some(load) = &args.check_perf
        && !["s", "m", "l", "xl"].contains(&load.as_str())
    {
        bail!("--check-perf takes s, m, l or xl, not {load:?}");
    }
    if !(args.kill_fraction > 0.0 && args.kill_fraction < 0.5) {
        bail!("--kill-fraction must be in (0, 0.5): more trips the engine's breaker");
    }
    for binary in [&args.fleetd, &args.fleetctl] {
        if !binary.is_file() {
            bail!(
                "{} does not exist: run `cargo build --release -p fleetd -p fleetctl` (or scripts/scale-bench.sh)",
                binary.display()
            );
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&raw) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("scale: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("scale: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scale: FAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}

// --- processes -------------------------------------------------------------

/// `N` distinct ports nobody listens on now (the OS picks them; we release
/// them for the children). All are held until all are picked: picked one at
/// a time, the OS may hand out the same port twice.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// The work dir: on tmpfs when there is one (etcd fsyncs every write, and a
/// shared disk would measure the disk, not fleet).
fn work_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("fleet-scale-");
        builder
    };
    if shm.is_dir()
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder.tempdir().context("creating a work dir")
}

/// One etcd member the bench started.
struct EtcdMember {
    child: Child,
    pid: u32,
    client_url: String,
    metrics_port: u16,
}

/// The etcd cluster of a run: one member, or several (`--etcd-members`) on
/// loopback, each with its own data dir in the work dir.
struct EtcdProcess {
    members: Vec<EtcdMember>,
}

impl EtcdProcess {
    /// Every member's client URL.
    fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.client_url.clone())
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|member| member.pid).collect()
    }

    fn metrics_ports(&self) -> Vec<u16> {
        self.members
            .iter()
            .map(|member| member.metrics_port)
            .collect()
    }

    async fn kill(&mut self) {
        for member in &mut self.members {
            let _ = member.child.kill().await;
        }
    }
}

/// Starts `n` etcd members as one cluster (all spawned before any is
/// waited on: members wait for each other) and waits until each is healthy.
async fn start_etcd(dir: &Path, n: usize) -> anyhow::Result<EtcdProcess> {
    let ports: Vec<[u16; 3]> = {
        // All ports picked while all are held: no port twice.
        let flat: [u16; 15] = free_ports()?;
        flat.chunks(3).take(n).map(|c| [c[0], c[1], c[2]]).collect()
    };
    let name = |index: usize| format!("fleet-scale-{index}");
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(index, [_, peer, _])| format!("{}=http://127.0.0.1:{peer}", name(index)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::with_capacity(n);
    for (index, &[client_port, peer_port, metrics_port]) in ports.iter().enumerate() {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join(format!("etcd-{index}.log")))?;
        let child = Command::new("etcd")
            .arg(format!("--name={}", name(index)))
            .arg(format!(
                "--data-dir={}",
                dir.join(format!("etcd-data-{index}")).display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=fleet-scale")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ))
            .arg("--metrics=extensive")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        let pid = child.id().ok_or_else(|| anyhow!("etcd exited at once"))?;
        members.push(EtcdMember {
            child,
            pid,
            client_url,
            metrics_port,
        });
    }
    let etcd = EtcdProcess { members };
    let deadline = Instant::now() + Duration::from_secs(30);
    for (index, member) in etcd.members.iter().enumerate() {
        loop {
            if let Ok(body) = http_get(member.metrics_port, "/health").await
                && body.contains("\"health\":\"true\"")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {index} not healthy within 30 s; see {}",
                    dir.join(format!("etcd-{index}.log")).display()
                );
            }
            // Polling a local port: there is no event to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(etcd)
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (etcd's metrics port), the body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("GET timed out")??;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok(body)
}

struct Fleetd {
    child: Child,
    pid: u32,
    api_url: String,
    machine: MachineId,
    /// With `--tls`: the CA and the admin client certificate.
    tls: Option<ClientTls>,
}

impl Fleetd {
    /// An API client (over mTLS with `--tls`).
    fn client(&self) -> anyhow::Result<Client> {
        let endpoint = Endpoint::parse(&self.api_url).map_err(|error| anyhow!("{error}"))?;
        let client = match &self.tls {
            Some(tls) => Client::with_tls(endpoint, tls)?,
            None => Client::new(endpoint),
        };
        Ok(client.with_timeout(Some(Duration::from_secs(120))))
    }

    /// fleetctl's TLS flags (the original's), empty without `--tls`.
    fn fleetctl_tls_args(&self) -> Vec<std::ffi::OsString> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let mut args = Vec::new();
        for (flag, file) in [
            ("--ca-file", &tls.ca_file),
            ("--cert-file", &tls.cert_file),
            ("--key-file", &tls.key_file),
        ] {
            if let Some(file) = file {
                args.push(flag.into());
                args.push(file.clone().into_os_string());
            }
        }
        args
    }
}

/// With `--tls`: a test CA in `dir/pki`, the API's certificate for 127.0.0.1, an
/// admin client certificate and the access file; returns fleet.conf lines and the
/// client's TLS files.
fn api_tls(dir: &Path) -> anyhow::Result<(String, ClientTls)> {
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = Pki::new(&pki_dir);
    let (cert, key) = pki.sign_server("api", &["127.0.0.1"]);
    let (client_cert, client_key) = pki.sign_client("bench");
    let access = pki_dir.join("access.toml");
    std::fs::write(&access, "[roles]\nbench = \"admin\"\n")?;
    let conf = format!(
        "api_tls_cert_file={}\napi_tls_key_file={}\napi_tls_client_ca_file={}\napi_access_file={}\n",
        cert.display(),
        key.display(),
        pki.ca_file().display(),
        access.display()
    );
    let tls = ClientTls {
        ca_file: Some(pki.ca_file()),
        cert_file: Some(client_cert),
        key_file: Some(client_key),
    };
    Ok((conf, tls))
}

async fn start_fleetd(args: &Args, dir: &Path, etcd_url: &str) -> anyhow::Result<Fleetd> {
    let [api_port] = free_ports()?;
    let (scheme, tls_conf, tls) = if args.tls {
        let (conf, tls) = api_tls(dir)?;
        ("https", conf, Some(tls))
    } else {
        ("http", String::new(), None)
    };
    let api_url = format!("{scheme}://127.0.0.1:{api_port}");
    let machine: MachineId = "e0e0e0e0fleetscaleengine00000000"
        .parse()
        .map_err(|error| anyhow!("{error}"))?;
    let machine_id_file = dir.join("machine-id");
    std::fs::write(&machine_id_file, format!("{machine}\n"))?;
    let config_file = dir.join("fleet.conf");
    let config = format!(
        "etcd_servers={etcd_url}\n\
         etcd_key_prefix={PREFIX}\n\
         api_listen=tcp://127.0.0.1:{api_port}\n\
         machine_id_file={}\n\
         disable_agent=true\n\
         public_ip=127.0.0.1\n\
         metadata=role=engine\n\
         machine_loss_grace={}\n\
         {tls_conf}",
        machine_id_file.display(),
        args.loss_grace,
    );
    std::fs::write(&config_file, config)?;
    let log = std::fs::File::create(dir.join("fleetd.log"))?;
    let child = Command::new(&args.fleetd)
        .arg("-config")
        .arg(&config_file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.fleetd.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("fleetd exited at once"))?;
    Ok(Fleetd {
        child,
        pid,
        api_url,
        machine,
        tls,
    })
}

impl Fleetd {
    /// `VmHWM` and `VmRSS` of the fleetd process, in bytes.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .ok_or_else(|| anyhow!("no {name} in /proc/{}/status", self.pid))?;
            let kib: u64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// SIGTERM, then SIGKILL if it is not gone within 10 s.
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds; 0 when
/// it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count from after its ')'.
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// CPU seconds of etcd, fleetd and this process (simulated machines and API
/// clients): on a shared machine, where the time of a phase went.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    etcd: f64,
    fleetd: f64,
    bench: f64,
}

impl Cpu {
    /// `etcd`: every member's pid (their CPU is summed).
    fn sample(etcd: &[u32], fleetd: u32) -> Cpu {
        Cpu {
            etcd: etcd.iter().map(|&pid| cpu_seconds(pid)).sum(),
            fleetd: cpu_seconds(fleetd),
            bench: cpu_seconds(std::process::id()),
        }
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            etcd: self.etcd - earlier.etcd,
            fleetd: self.fleetd - earlier.fleetd,
            bench: self.bench - earlier.bench,
        }
    }

    fn describe(self) -> String {
        format!(
            "etcd {:.1} s, fleetd {:.1} s, bench {:.1} s",
            self.etcd, self.fleetd, self.bench
        )
    }

    fn json(self) -> serde_json::Value {
        serde_json::json!({ "etcd_s": self.etcd, "fleetd_s": self.fleetd, "bench_s": self.bench })
    }
}

// --- etcd metrics ----------------------------------------------------------

/// One scrape of etcd's `/metrics`: every series, and sums per metric name.
#[derive(Clone, Debug, Default)]
struct Metrics {
    series: HashMap<String, f64>,
    sums: HashMap<String, f64>,
}

impl Metrics {
    /// Scrapes every member and merges them into one view of the cluster.
    /// Counters of what a member served its clients (`grpc_*`,
    /// `etcd_network_client_*`) are summed over the members; everything
    /// else (proposals, key writes, WAL bytes) every member does for the
    /// whole cluster, so the largest member's figure is the cluster's.
    async fn scrape(ports: &[u16]) -> anyhow::Result<Metrics> {
        let mut merged = Metrics::default();
        for &port in ports {
            let member = Metrics::scrape_member(port).await?;
            for (series, value) in member.series {
                let served =
                    series.starts_with("grpc_") || series.starts_with("etcd_network_client_");
                let entry = merged.series.entry(series).or_insert(0.0);
                *entry = if served {
                    *entry + value
                } else {
                    entry.max(value)
                };
            }
        }
        for (series, value) in &merged.series {
            let name = series.split('{').next().unwrap_or(series);
            *merged.sums.entry(name.to_owned()).or_default() += value;
        }
        Ok(merged)
    }

    async fn scrape_member(port: u16) -> anyhow::Result<Metrics> {
        let body = http_get(port, "/metrics").await?;
        let mut metrics = Metrics::default();
        for line in body.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            metrics.series.insert(series.to_owned(), value);
        }
        if metrics.series.is_empty() {
            bail!("etcd's /metrics (port {port}) was empty");
        }
        Ok(metrics)
    }

    fn sum(&self, name: &str) -> f64 {
        self.sums.get(name).copied().unwrap_or(0.0)
    }

    fn delta(&self, earlier: &Metrics, name: &str) -> f64 {
        self.sum(name) - earlier.sum(name)
    }

    /// Requests etcd handled (every gRPC method; a keep-alive stream counts once).
    fn requests(&self, earlier: &Metrics) -> f64 {
        self.delta(earlier, "grpc_server_handled_total")
    }

    /// Keep-alive requests etcd received (messages on keep-alive streams)
    /// and keep-alive streams it closed.
    fn keep_alives(&self, earlier: &Metrics) -> (f64, f64) {
        let method = |prefix: &str| {
            self.series
                .iter()
                .filter(|(series, _)| {
                    series.starts_with(prefix) && series.contains("grpc_method=\"LeaseKeepAlive\"")
                })
                .map(|(series, value)| value - earlier.series.get(series).copied().unwrap_or(0.0))
                .sum::<f64>()
        };
        (
            method("grpc_server_msg_received_total{"),
            method("grpc_server_handled_total{"),
        )
    }

    /// Keys written or deleted (every put and delete, in txns too).
    fn writes(&self, earlier: &Metrics) -> f64 {
        self.delta(earlier, "etcd_mvcc_put_total") + self.delta(earlier, "etcd_mvcc_delete_total")
    }

    /// Raft proposals committed (writes, lease grants and revokes; not
    /// keep-alives).
    fn proposals(&self, earlier: &Metrics) -> f64 {
        self.delta(earlier, "etcd_server_proposals_committed_total")
    }

    /// gRPC requests per method, as deltas, largest first.
    fn by_method(&self, earlier: &Metrics) -> Vec<(String, f64)> {
        let mut methods: BTreeMap<String, f64> = BTreeMap::new();
        for (series, value) in &self.series {
            if !series.starts_with("grpc_server_handled_total{") {
                continue;
            }
            let method = series
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            let before = earlier.series.get(series).copied().unwrap_or(0.0);
            *methods.entry(method.to_owned()).or_default() += value - before;
        }
        let mut methods: Vec<(String, f64)> =
            methods.into_iter().filter(|(_, n)| *n > 0.0).collect();
        methods.sort_by(|a, b| b.1.total_cmp(&a.1));
        methods
    }
}

// --- simulated machines ----------------------------------------------------

/// What the simulated agents reported, shared with the coordinator.
#[derive(Default)]
struct Tracker {
    /// Unit → the machine (index) that last reported it active.
    active_on: HashMap<String, usize>,
}

struct Sim {
    registry: Registry,
    tracker: Mutex<Tracker>,
    /// Bumped after every report, so the coordinator wakes and re-checks.
    progress: watch::Sender<u64>,
    state_writes: AtomicU64,
    errors: AtomicU64,
    /// Errors per kind ("keep-alive", "watch", ...).
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    keep_alive_every: Duration,
    keep_alive_streams: bool,
}

impl Sim {
    fn error(&self, what: &str, error: &dyn std::fmt::Display) {
        if let Ok(mut by_kind) = self.errors_by_kind.lock() {
            *by_kind.entry(what.to_owned()).or_default() += 1;
        }
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            eprintln!("scale: simulated agent: {what}: {error}");
        }
    }

    fn report_active(&self, unit: &str, machine: usize) {
        if let Ok(mut tracker) = self.tracker.lock() {
            tracker.active_on.insert(unit.to_owned(), machine);
        }
        self.progress.send_modify(|n| *n += 1);
    }

    fn report_gone(&self, unit: &str, machine: usize) {
        if let Ok(mut tracker) = self.tracker.lock()
            && tracker.active_on.get(unit) == Some(&machine)
        {
            tracker.active_on.remove(unit);
        }
        self.progress.send_modify(|n| *n += 1);
    }
}

/// A retriable etcd error is retried a few times with backoff, as an agent does.
async fn retry<T, F, Fut>(mut attempt: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retriable() && tries < 8 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

/// A 32-hex-digit machine id whose first 8 digits (the short id) are unique.
fn sim_machine_id(index: usize) -> MachineId {
    let n = u32::try_from(index).unwrap_or(u32::MAX);
    // Multiplying by an odd constant is a bijection on u32: unique shorts.
    let short = n.wrapping_mul(2_654_435_761);
    format!("{short:08x}5ca1e0000000000{n:09x}")
        .parse()
        .expect("a hex string is a valid machine id")
}

struct SimMachine {
    id: MachineId,
    lease: LeaseId,
    cancel: CancellationToken,
}

async fn register(
    sim: &Sim,
    index: usize,
    ttl: Duration,
) -> anyhow::Result<(SimMachine, ChangeStream)> {
    let registry = &sim.registry;
    let id = sim_machine_id(index);
    let lease = retry(|| registry.grant_lease(ttl)).await?;
    let state = MachineState {
        id: id.clone(),
        public_ip: format!(
            "10.{}.{}.{}",
            index / 65536 % 256,
            index / 256 % 256,
            index % 256
        ),
        metadata: BTreeMap::from([("role".to_owned(), "worker".to_owned())]),
        version: "0.1.0".to_owned(),
        disable_engine: true,
        disable_agent: false,
        api_url: String::new(),
    };
    // Watch first (from the revision of our empty schedule), then announce
    // ourselves: no placement can slip in between.
    let (_, revision) = retry(|| registry.machine_schedule(&id)).await?;
    let stream =
        retry(|| registry.watch_changes(Watched::ScheduleOf(id.clone()), revision.next())).await?;
    retry(|| registry.register_machine(&state, lease)).await?;
    Ok((
        SimMachine {
            id,
            lease,
            cancel: CancellationToken::new(),
        },
        stream,
    ))
}

/// One simulated agent: keeps its lease alive and acknowledges its schedule.
async fn run_machine(
    sim: Arc<Sim>,
    index: usize,
    id: MachineId,
    lease: LeaseId,
    mut stream: ChangeStream,
    cancel: CancellationToken,
    first_keep_alive: Duration,
) {
    let mut keep_alive = tokio::time::interval_at(
        tokio::time::Instant::now() + first_keep_alive,
        sim.keep_alive_every,
    );
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keeper = LeaseKeepAlive::new(&sim.registry, lease);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = keep_alive.tick() => match if sim.keep_alive_streams {
                keeper.keep_alive().await
            } else {
                sim.registry.keep_alive_once(lease).await
            } {
                Ok(Some(_)) => {}
                Ok(None) => sim.error("keep-alive", &format!("lease of {id} expired")),
                Err(error) => {
                    sim.error("keep-alive", &error);
                    // As fleetd's agent does: try again after TTL/12, not
                    // TTL/3, while the lease runs out.
                    keep_alive.reset_after(sim.keep_alive_every / 4);
                }
            },
            batch = stream.next() => match batch {
                Ok(Some(events)) => {
                    for changed in events {
                        if cancel.is_cancelled() {
                            return;
                        }
                        handle_change(&sim, index, &id, lease, changed.change).await;
                    }
                }
                Ok(None) => {
                    sim.error("watch", &format!("the watch of {id} ended"));
                    return;
                }
                Err(error) => {
                    sim.error("watch", &error);
                    return;
                }
            },
        }
    }
}

async fn handle_change(sim: &Sim, index: usize, id: &MachineId, lease: LeaseId, change: Change) {
    let registry = &sim.registry;
    match change {
        Change::Placed(placement) => {
            let mut state = UnitState {
                unit: placement.unit.clone(),
                machine: id.clone(),
                hash: placement.hash,
                load_state: "loaded".to_owned(),
                active_state: "inactive".to_owned(),
                sub_state: "dead".to_owned(),
                reached: TargetState::Loaded,
                run: None,
            };
            if let Err(error) = retry(|| registry.put_unit_state(&state, lease)).await {
                sim.error("put unit state", &error);
                return;
            }
            sim.state_writes.fetch_add(1, Ordering::Relaxed);
            if placement.target_state == TargetState::Launched {
                state.active_state = "active".to_owned();
                state.sub_state = "running".to_owned();
                state.reached = TargetState::Launched;
                if let Err(error) = retry(|| registry.put_unit_state(&state, lease)).await {
                    sim.error("put unit state", &error);
                    return;
                }
                sim.state_writes.fetch_add(1, Ordering::Relaxed);
                sim.report_active(placement.unit.as_str(), index);
            } else {
                sim.report_gone(placement.unit.as_str(), index);
            }
        }
        Change::Unplaced { unit, .. } => {
            if let Err(error) = retry(|| registry.delete_unit_state(&unit, id)).await {
                sim.error("delete unit state", &error);
                return;
            }
            sim.state_writes.fetch_add(1, Ordering::Relaxed);
            sim.report_gone(unit.as_str(), index);
        }
        _ => {}
    }
}

/// Waits until `done` holds for the tracker, or `deadline` passes; the time
/// it took from `since`, or `None` on timeout.
async fn wait_until(
    sim: &Sim,
    since: Instant,
    deadline: Duration,
    mut done: impl FnMut(&Tracker) -> bool,
    mut describe: impl FnMut(&Tracker) -> String,
) -> Option<Duration> {
    let mut progress = sim.progress.subscribe();
    let end = tokio::time::Instant::from_std(since + deadline);
    let mut last_report = Instant::now();
    loop {
        {
            let tracker = sim.tracker.lock().ok()?;
            if done(&tracker) {
                return Some(since.elapsed());
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "scale:   … {:.0} s: {}",
                    since.elapsed().as_secs_f64(),
                    describe(&tracker)
                );
                last_report = Instant::now();
            }
        }
        // Wake on progress, and at least every second to print where we are.
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        tokio::select! {
            () = tokio::time::sleep_until(end) => {
                let tracker = sim.tracker.lock().ok()?;
                eprintln!("scale: TIMEOUT after {deadline:?}: {}", describe(&tracker));
                return None;
            }
            () = tokio::time::sleep_until(tick) => {}
            changed = progress.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
        }
    }
}

// --- the run ---------------------------------------------------------------

fn unit_entity(index: usize) -> entities::Unit {
    let option = |section: &str, name: &str, value: &str| entities::UnitOption {
        section: section.to_owned(),
        name: name.to_owned(),
        value: value.to_owned(),
    };
    entities::Unit {
        name: unit_name(index),
        options: vec![
            option("Unit", "Description", "fleet scale benchmark unit"),
            option("Service", "ExecStart", "/bin/sleep infinity"),
            option("X-Fleet", "MachineMetadata", "role=worker"),
        ],
        desired_state: "launched".to_owned(),
        ..entities::Unit::default()
    }
}

fn unit_name(index: usize) -> String {
    format!("scale-{index:06}.service")
}

fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = work_dir()?;
    eprintln!(
        "scale: M={} machines, N={} units; work dir {}",
        args.machines,
        args.units,
        dir.path().display()
    );
    let outcome = run_in(&args, dir.path()).await;
    if outcome.is_err() || args.keep {
        // Keep the logs of a failed run for whoever reads the error.
        let kept = dir.keep();
        eprintln!("scale: logs kept in {}", kept.display());
    }
    outcome
}

async fn run_in(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let mut etcd = start_etcd(dir, args.etcd_members).await?;
    let mut fleetd = start_fleetd(args, dir, &etcd.client_urls().join(",")).await?;
    let outcome = measure(args, &etcd, &fleetd).await;
    fleetd.stop().await;
    etcd.kill().await;
    let report = outcome?;
    print_table(args, &report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.json)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("scale: wrote {}", path.display());
    }
    Ok(())
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: serde_json::Value,
}

/// What every phase of a run uses.
struct Bench<'a> {
    args: &'a Args,
    etcd: &'a EtcdProcess,
    fleetd: &'a Fleetd,
    /// Every etcd member's metrics port.
    metrics_ports: Vec<u16>,
    registry: Registry,
    client: Client,
    sim: Arc<Sim>,
}

/// The figures of phase 3: submission until every unit is active.
struct SubmitFigures {
    submit_time: Duration,
    all_active: Duration,
    before: Metrics,
    after: Metrics,
    cpu: Cpu,
    state_writes: u64,
    hwm_after_active: u64,
}

/// The figures of phase 4: listing latencies at N units.
struct ListFigures {
    api_units: Duration,
    api_states: Duration,
    fleetctl: Duration,
}

/// The figures of phase 5: machines lost, their units moved.
struct RescheduleFigures {
    lost: usize,
    moved: usize,
    from_revoke: Duration,
    after_grace: f64,
    requests: f64,
    writes: f64,
}

/// The figures of phase 6: an idle cluster.
struct IdleFigures {
    secs: f64,
    writes: f64,
    proposals: f64,
    requests: f64,
    keep_alive_messages: f64,
    keep_alive_streams: f64,
    cpu: Cpu,
}

/// Runs the phases in order and gathers their figures into a report.
async fn measure(args: &Args, etcd: &EtcdProcess, fleetd: &Fleetd) -> anyhow::Result<Report> {
    let config = RegistryConfig {
        endpoints: etcd.client_urls(),
        key_prefix: PREFIX.to_owned(),
        request_timeout: SIM_REQUEST_TIMEOUT,
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let registry = Registry::connect(&config).await?;
    let client = fleetd.client()?;
    let ttl = Duration::from_secs(args.agent_ttl);
    let sim = Arc::new(Sim {
        registry: registry.clone(),
        tracker: Mutex::new(Tracker::default()),
        progress: watch::Sender::new(0),
        state_writes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        errors_by_kind: Mutex::new(BTreeMap::new()),
        keep_alive_every: ttl / 3,
        keep_alive_streams: args.keep_alive_streams,
    });
    let bench = Bench {
        args,
        etcd,
        fleetd,
        metrics_ports: etcd.metrics_ports(),
        registry,
        client,
        sim,
    };
    bench.wait_for_leadership().await?;
    let (machines, register_time) = bench.register_machines(ttl).await?;
    let submit = bench.submit_units().await?;
    let lists = bench.list_units().await?;
    let reschedule = bench.lose_machines(&machines).await?;
    let idle = bench.idle_window().await?;
    let (hwm, rss) = fleetd.memory()?;
    let check_perf = match &args.check_perf {
        Some(load) => Some(bench.check_perf(load).await?),
        None => None,
    };
    for machine in &machines {
        machine.cancel.cancel();
    }
    let figures = Figures {
        register_time,
        submit,
        lists,
        reschedule,
        idle,
        hwm,
        rss,
        sim_errors: bench.sim.errors.load(Ordering::Relaxed),
        sim_errors_by_kind: bench
            .sim
            .errors_by_kind
            .lock()
            .map(|by_kind| by_kind.clone())
            .unwrap_or_default(),
        check_perf,
    };
    Ok(figures.report(args))
}

impl Bench<'_> {
    /// Phase 1: fleetd up, registered (the API answers) and leading the engine.
    async fn wait_for_leadership(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let leader = self.registry.leader().await.ok().flatten();
            if leader.as_ref() == Some(&self.fleetd.machine) && self.client.machines().await.is_ok()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "fleetd did not serve the API and lead the engine within 60 s (see fleetd.log)"
                );
            }
            // Polling another process's readiness: no event to wait on.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "scale: fleetd (pid {}) leads, API at {} ({:.1} s)",
            self.fleetd.pid,
            self.fleetd.api_url,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Phase 2: M simulated machines, registered and watching their schedule,
    /// and listed by the API.
    async fn register_machines(
        &self,
        ttl: Duration,
    ) -> anyhow::Result<(Vec<SimMachine>, Duration)> {
        let m = self.args.machines;
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..REGISTER_CONCURRENCY.min(m) {
            let (sim, next) = (self.sim.clone(), next.clone());
            let pace = Pace {
                started,
                rate: self.args.register_rate,
            };
            workers.push(tokio::spawn(register_some(sim, next, m, ttl, pace)));
        }
        let mut machines: Vec<Option<SimMachine>> = (0..m).map(|_| None).collect();
        for worker in workers {
            for (index, machine) in worker.await?? {
                machines[index] = Some(machine);
            }
        }
        let machines: Vec<SimMachine> = machines.into_iter().flatten().collect();
        let register_time = started.elapsed();
        // The API lists them once the engine-side registry has them all.
        loop {
            let listed = self.client.machines().await?.len();
            if listed > m {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) + pace_time(m, self.args.register_rate)
            {
                bail!("the API lists {listed} machines, expected {}", m + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "scale: {m} simulated machines registered and watching ({:.1} s)",
            register_time.as_secs_f64()
        );
        Ok((machines, register_time))
    }

    /// Phase 3: submits N units through the API and waits until all are active.
    async fn submit_units(&self) -> anyhow::Result<SubmitFigures> {
        let n = self.args.units;
        let before = Metrics::scrape(&self.metrics_ports).await?;
        let cpu_before = Cpu::sample(&self.etcd.pids(), self.fleetd.pid);
        let writes_before = self.sim.state_writes.load(Ordering::Relaxed);
        let started = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut submitters = Vec::new();
        for _ in 0..self.args.concurrency.min(n) {
            let (client, next) = (self.client.clone(), next.clone());
            let batch = self.args.batch;
            submitters.push(tokio::spawn(async move {
                if batch > 0 {
                    submit_batches(client, next, n, batch).await
                } else {
                    submit_some(client, next, n).await
                }
            }));
        }
        for submitter in submitters {
            submitter.await??;
        }
        let submit_time = started.elapsed();
        eprintln!(
            "scale: {n} units submitted ({:.1} s); waiting until all are active",
            submit_time.as_secs_f64()
        );
        let deadline = Duration::from_secs(120).max(Duration::from_millis(20 * n as u64));
        let all_active = wait_until(
            &self.sim,
            started,
            deadline,
            |tracker| tracker.active_on.len() >= n,
            |tracker| format!("{} of {n} units active", tracker.active_on.len()),
        )
        .await
        .ok_or_else(|| anyhow!("not all units became active within {deadline:?}"))?;
        let after = Metrics::scrape(&self.metrics_ports).await?;
        let cpu = Cpu::sample(&self.etcd.pids(), self.fleetd.pid).since(cpu_before);
        let state_writes = self.sim.state_writes.load(Ordering::Relaxed) - writes_before;
        let (hwm_after_active, _) = self.fleetd.memory()?;
        eprintln!(
            "scale: all {n} units active after {:.2} s",
            all_active.as_secs_f64()
        );
        Ok(SubmitFigures {
            submit_time,
            all_active,
            before,
            after,
            cpu,
            state_writes,
            hwm_after_active,
        })
    }

    /// Phase 4: listing latencies at N units (API pages and fleetctl), each
    /// checked for completeness.
    async fn list_units(&self) -> anyhow::Result<ListFigures> {
        let n = self.args.units;
        let started = Instant::now();
        let units = self.client.units().await?;
        let api_units = started.elapsed();
        let launched = units
            .iter()
            .filter(|unit| unit.current() == Some(TargetState::Launched))
            .count();
        if units.len() != n || launched != n {
            bail!(
                "GET /units lists {} units, {launched} launched; expected {n}",
                units.len()
            );
        }
        let started = Instant::now();
        let states = self.client.unit_states(None, None).await?;
        let api_states = started.elapsed();
        let active = states
            .iter()
            .filter(|state| state.systemd_active_state == "active")
            .count();
        if active != n {
            bail!("GET /state has {active} active states, expected {n}");
        }
        let fleetctl = self.fleetctl_list_units().await?;
        eprintln!(
            "scale: GET /units {:.2} s, GET /state {:.2} s, fleetctl list-units {:.2} s",
            api_units.as_secs_f64(),
            api_states.as_secs_f64(),
            fleetctl.as_secs_f64()
        );
        Ok(ListFigures {
            api_units,
            api_states,
            fleetctl,
        })
    }

    /// How long `fleetctl list-units` takes, checking it printed every unit.
    async fn fleetctl_list_units(&self) -> anyhow::Result<Duration> {
        let n = self.args.units;
        let started = Instant::now();
        let output = Command::new(&self.args.fleetctl)
            .arg(format!("--endpoint={}", self.fleetd.api_url))
            .args(self.fleetd.fleetctl_tls_args())
            .arg("list-units")
            .arg("--no-legend")
            .stdin(Stdio::null())
            .output()
            .await
            .context("running fleetctl")?;
        let took = started.elapsed();
        let rows = String::from_utf8_lossy(&output.stdout).lines().count();
        if !output.status.success() || rows != n {
            bail!(
                "fleetctl list-units: {}, {rows} rows (expected {n}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(took)
    }

    /// Phase 5: revokes the leases of a fraction of the machines and waits
    /// until their units are active elsewhere.
    async fn lose_machines(&self, machines: &[SimMachine]) -> anyhow::Result<RescheduleFigures> {
        let m = self.args.machines;
        let n_kill = ((m as f64 * self.args.kill_fraction).round() as usize).max(1);
        let stride = m / n_kill;
        let killed: HashSet<usize> = (0..n_kill).map(|k| k * stride).collect();
        let affected = self.units_on(&killed)?;
        let before = Metrics::scrape(&self.metrics_ports).await?;
        let started = Instant::now();
        for &index in &killed {
            machines[index].cancel.cancel();
        }
        let mut revokes = Vec::new();
        for &index in &killed {
            let (registry, lease) = (self.registry.clone(), machines[index].lease);
            revokes.push(tokio::spawn(async move {
                retry(|| registry.revoke_lease(lease)).await
            }));
        }
        for revoke in revokes {
            revoke.await??;
        }
        eprintln!(
            "scale: revoked {n_kill} leases ({} units to move) in {:.2} s",
            affected.len(),
            started.elapsed().as_secs_f64()
        );
        let deadline = Duration::from_secs_f64(self.args.loss_grace + 120.0);
        let moved = |tracker: &Tracker| {
            affected
                .iter()
                .filter(|unit| {
                    tracker
                        .active_on
                        .get(*unit)
                        .is_some_and(|machine| !killed.contains(machine))
                })
                .count()
        };
        let from_revoke = wait_until(
            &self.sim,
            started,
            deadline,
            |tracker| moved(tracker) == affected.len(),
            |tracker| format!("{} of {} units moved", moved(tracker), affected.len()),
        )
        .await
        .ok_or_else(|| {
            anyhow!("the units of the lost machines did not move within {deadline:?}")
        })?;
        let after = Metrics::scrape(&self.metrics_ports).await?;
        eprintln!(
            "scale: {} units active elsewhere {:.2} s after the revoke (grace {} s)",
            affected.len(),
            from_revoke.as_secs_f64(),
            self.args.loss_grace
        );
        Ok(RescheduleFigures {
            lost: n_kill,
            moved: affected.len(),
            from_revoke,
            after_grace: (from_revoke.as_secs_f64() - self.args.loss_grace).max(0.0),
            requests: after.requests(&before),
            writes: after.writes(&before),
        })
    }

    /// The write ceiling of this cluster on this machine, taken in the same
    /// run: `etcdctl check perf` (60 s of single-key puts from many
    /// clients) against every member, with fleet idle beside it.
    async fn check_perf(&self, load: &str) -> anyhow::Result<CheckPerf> {
        eprintln!("scale: etcdctl check perf --load={load} (about 60 s)");
        let run = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd.client_urls().join(",")))
            .arg("check")
            .arg("perf")
            .arg(format!("--load={load}"))
            .arg("--prefix=/etcdctl-check-perf/")
            .stdin(Stdio::null())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .context("etcdctl check perf did not finish within 300 s")?
            .context("running etcdctl (Debian package etcd-client)")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let writes_per_s = check_perf_writes(&text)
            .ok_or_else(|| anyhow!("no throughput in etcdctl check perf's output:\n{text}"))?;
        let verdict = text
            .lines()
            .filter(|line| line.starts_with("PASS") || line.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("; ");
        eprintln!("scale: check perf: {verdict}");
        Ok(CheckPerf {
            load: load.to_owned(),
            writes_per_s,
            verdict,
        })
    }

    /// The units active on the machines `indexes`.
    fn units_on(&self, indexes: &HashSet<usize>) -> anyhow::Result<Vec<String>> {
        let tracker = self
            .sim
            .tracker
            .lock()
            .map_err(|_| anyhow!("tracker lock poisoned"))?;
        Ok(tracker
            .active_on
            .iter()
            .filter(|(_, machine)| indexes.contains(machine))
            .map(|(unit, _)| unit.clone())
            .collect())
    }

    /// Phase 6: waits until etcd sees no writes for 3 s (at most 60 s), then
    /// counts what an idle cluster costs over the idle window.
    async fn idle_window(&self) -> anyhow::Result<IdleFigures> {
        let settle_start = Instant::now();
        let mut last = Metrics::scrape(&self.metrics_ports).await?;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(3)
            && settle_start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = Metrics::scrape(&self.metrics_ports).await?;
            if now.writes(&last) > 0.0 || now.proposals(&last) > 0.0 {
                quiet_since = Instant::now();
            }
            last = now;
        }
        let start = Metrics::scrape(&self.metrics_ports).await?;
        let cpu_before = Cpu::sample(&self.etcd.pids(), self.fleetd.pid);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(self.args.idle_seconds)).await;
        let end = Metrics::scrape(&self.metrics_ports).await?;
        let cpu = Cpu::sample(&self.etcd.pids(), self.fleetd.pid).since(cpu_before);
        let secs = started.elapsed().as_secs_f64();
        let (messages, streams) = end.keep_alives(&start);
        Ok(IdleFigures {
            secs,
            writes: end.writes(&start) / secs,
            proposals: end.proposals(&start) / secs,
            requests: end.requests(&start) / secs,
            keep_alive_messages: messages / secs,
            keep_alive_streams: streams / secs,
            cpu,
        })
    }
}

/// The write throughput in `etcdctl check perf`'s output: the number
/// before " writes/s" ("PASS: Throughput is 151 writes/s", "FAIL: Throughput
/// too low: 6954 writes/s").
fn check_perf_writes(output: &str) -> Option<f64> {
    let line = output.lines().find(|line| line.contains(" writes/s"))?;
    let before = line.split(" writes/s").next()?;
    before.rsplit([' ', ':']).next()?.trim().parse().ok()
}

/// One registration worker: takes machine indexes until M are registered.
/// When registrations may start: machine `i` not before `started + i / rate`.
#[derive(Clone, Copy)]
struct Pace {
    started: Instant,
    rate: f64,
}

/// How long starting `m` registrations at `rate` a second takes (0: unbounded).
fn pace_time(m: usize, rate: f64) -> Duration {
    if rate > 0.0 {
        Duration::from_secs_f64(m as f64 / rate)
    } else {
        Duration::ZERO
    }
}

async fn register_some(
    sim: Arc<Sim>,
    next: Arc<AtomicUsize>,
    m: usize,
    ttl: Duration,
    pace: Pace,
) -> anyhow::Result<Vec<(usize, SimMachine)>> {
    let mut mine = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= m {
            return Ok(mine);
        }
        let due = pace.started + pace_time(index, pace.rate);
        tokio::time::sleep_until(due.into()).await;
        let (machine, stream) = register(&sim, index, ttl)
            .await
            .with_context(|| format!("registering simulated machine {index}"))?;
        let stagger = sim.keep_alive_every.mul_f64(index as f64 / m as f64);
        tokio::spawn(run_machine(
            sim.clone(),
            index,
            machine.id.clone(),
            machine.lease,
            stream,
            machine.cancel.clone(),
            stagger.max(Duration::from_millis(1)),
        ));
        mine.push((index, machine));
    }
}

/// One submitting client: PUTs unit indexes until N are submitted.
async fn submit_some(client: Client, next: Arc<AtomicUsize>, n: usize) -> anyhow::Result<()> {
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= n {
            return Ok(());
        }
        let mut unavailable = 0;
        loop {
            match client.create_unit(&unit_entity(index)).await {
                Ok(_) => break,
                // The client already retried a 503 with backoff; a bulk
                // submitter keeps going (it is idempotent), a bounded
                // number of times, and the run counts it.
                Err(error) if error.status() == Some(503) && unavailable < 20 => {
                    unavailable += 1;
                    if SUBMIT_UNAVAILABLE.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("scale: PUT {}: {error}; sending again", unit_name(index));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("PUT {}", unit_name(index)));
                }
            }
        }
    }
}

/// One submitting client of `--batch`: takes `batch` unit indexes at a time
/// and sends them in one `POST /fleet/x1/units` until N are submitted.
async fn submit_batches(
    client: Client,
    next: Arc<AtomicUsize>,
    n: usize,
    batch: usize,
) -> anyhow::Result<()> {
    loop {
        let first = next.fetch_add(batch, Ordering::Relaxed);
        if first >= n {
            return Ok(());
        }
        let units: Vec<entities::Unit> = (first..(first + batch).min(n)).map(unit_entity).collect();
        let mut pending = units;
        let mut attempts = 0;
        while !pending.is_empty() {
            attempts += 1;
            if attempts > 20 {
                bail!(
                    "{} units still answered 503 after 20 batches",
                    pending.len()
                );
            }
            let results = client
                .put_units(&pending)
                .await
                .with_context(|| format!("POST a batch from {}", unit_name(first)))?;
            let mut again = Vec::new();
            for (unit, result) in pending.into_iter().zip(results) {
                match result.code {
                    200..=299 => {}
                    // The client already retried a 503 with backoff; as in
                    // `submit_some`, a bulk submitter sends it again.
                    503 => {
                        SUBMIT_UNAVAILABLE.fetch_add(1, Ordering::Relaxed);
                        again.push(unit);
                    }
                    code => bail!("{}: {code} {}", result.name, result.message),
                }
            }
            if !again.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            pending = again;
        }
    }
}

/// PUTs answered 503 even after the client's own retries (each sent again).
static SUBMIT_UNAVAILABLE: AtomicU64 = AtomicU64::new(0);

/// Every figure of a run.
struct Figures {
    register_time: Duration,
    submit: SubmitFigures,
    lists: ListFigures,
    reschedule: RescheduleFigures,
    idle: IdleFigures,
    hwm: u64,
    rss: u64,
    sim_errors: u64,
    sim_errors_by_kind: BTreeMap<String, u64>,
    /// `etcdctl check perf`: its load and the writes per second it got.
    check_perf: Option<CheckPerf>,
}

/// What `etcdctl check perf` measured against the run's cluster.
struct CheckPerf {
    load: String,
    writes_per_s: f64,
    /// etcdctl's verdict lines (PASS / FAIL ...).
    verdict: String,
}

/// One row of the printed table: what, the figure, the target and whether it was met.
/// The targets that depend on the size of the run: the performance issue
/// asks more room of 10,000 machines and 100,000 units than of 1,000 × 20,000.
struct Target {
    list_units: Duration,
    engine_hwm: (&'static str, u64),
}

impl Target {
    fn for_size(args: &Args) -> Target {
        if args.units > 20_000 || args.machines > 1_000 {
            Target {
                list_units: Duration::from_secs(3),
                engine_hwm: ("1 GB", 1000 * 1000 * 1000),
            }
        } else {
            Target {
                list_units: Duration::from_secs(2),
                engine_hwm: ("200 MB", 200 * 1000 * 1000),
            }
        }
    }
}

fn row(what: impl Into<String>, figure: String, target: String) -> (String, String, String) {
    (what.into(), figure, target)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Figures {
    fn report(&self, args: &Args) -> Report {
        let mut rows = self.time_rows(args);
        rows.extend(self.cost_rows(args));
        Report {
            rows,
            json: self.json(args),
        }
    }

    /// Raft proposals per second from the first PUT until all were active.
    fn submit_proposal_rate(&self) -> f64 {
        self.submit.after.proposals(&self.submit.before)
            / self.submit.all_active.as_secs_f64().max(1e-3)
    }

    /// Per-unit share of a count over the submission.
    fn per_unit(&self, args: &Args, value: f64) -> f64 {
        value / args.units as f64
    }

    fn time_rows(&self, args: &Args) -> Vec<(String, String, String)> {
        let n = args.units;
        let (submit, reschedule, lists) = (&self.submit, &self.reschedule, &self.lists);
        let pace = if args.register_rate > 0.0 {
            format!(", at most {} a second", args.register_rate)
        } else {
            String::new()
        };
        vec![
            row(
                format!("register {} machines{pace}", args.machines),
                format!("{:.2} s", self.register_time.as_secs_f64()),
                String::new(),
            ),
            row(
                format!(
                    "submit {n} units via API ({}, {} clients)",
                    if args.batch > 0 {
                        format!("batches of {}", args.batch)
                    } else {
                        "PUT".to_owned()
                    },
                    args.concurrency
                ),
                format!("{:.2} s", submit.submit_time.as_secs_f64()),
                String::new(),
            ),
            row(
                format!("submit → all {n} active"),
                format!("{:.2} s", submit.all_active.as_secs_f64()),
                format!(
                    "< 60 s: {}",
                    met(submit.all_active < Duration::from_secs(60))
                ),
            ),
            row(
                format!(
                    "reschedule {} units of {} lost machines (from revoke)",
                    reschedule.moved, reschedule.lost
                ),
                format!("{:.2} s", reschedule.from_revoke.as_secs_f64()),
                format!("incl. machine_loss_grace {} s", args.loss_grace),
            ),
            row(
                "  … of which after the grace period",
                format!("{:.2} s", reschedule.after_grace),
                format!("< 10 s: {}", met(reschedule.after_grace < 10.0)),
            ),
            row(
                format!("GET /fleet/v1/units, all pages ({n} units)"),
                format!("{:.2} s", lists.api_units.as_secs_f64()),
                String::new(),
            ),
            row(
                format!("GET /fleet/v1/state, all pages ({n} states)"),
                format!("{:.2} s", lists.api_states.as_secs_f64()),
                String::new(),
            ),
            row(
                "fleetctl list-units",
                format!("{:.2} s", lists.fleetctl.as_secs_f64()),
                {
                    let target = Target::for_size(args).list_units;
                    format!("< {} s: {}", target.as_secs(), met(lists.fleetctl < target))
                },
            ),
        ]
    }

    fn cost_rows(&self, args: &Args) -> Vec<(String, String, String)> {
        let (before, after) = (&self.submit.before, &self.submit.after);
        let per_unit = |value: f64| self.per_unit(args, value);
        let idle = &self.idle;
        let streams = if args.keep_alive_streams {
            "one stream per lease"
        } else {
            "one stream per keep-alive"
        };
        let mut rows = vec![
            row(
                "etcd requests per unit (submit → active)",
                format!("{:.2}", per_unit(after.requests(before))),
                String::new(),
            ),
            row(
                "etcd key writes per unit (puts + deletes)",
                format!("{:.2}", per_unit(after.writes(before))),
                String::new(),
            ),
            row(
                "etcd Raft proposals per unit",
                format!("{:.2}", per_unit(after.proposals(before))),
                String::new(),
            ),
            row(
                "etcd Raft proposals per second (submit → active)",
                format!("{:.0}", self.submit_proposal_rate()),
                self.check_perf
                    .as_ref()
                    .map(|perf| {
                        format!(
                            "{:.0}% of the ceiling (check perf {}: {:.0} writes/s)",
                            100.0 * self.submit_proposal_rate() / perf.writes_per_s.max(1.0),
                            perf.load,
                            perf.writes_per_s
                        )
                    })
                    .unwrap_or_default(),
            ),
            row(
                "etcd bytes received per unit (client gRPC)",
                format!(
                    "{:.0} B",
                    per_unit(after.delta(before, "etcd_network_client_grpc_received_bytes_total"))
                ),
                String::new(),
            ),
            row(
                "etcd WAL bytes written per unit",
                format!(
                    "{:.0} B",
                    per_unit(after.delta(before, "etcd_disk_wal_write_bytes_total"))
                ),
                String::new(),
            ),
            row(
                format!("idle etcd writes per second ({:.0} s window)", idle.secs),
                format!("{:.2} (proposals {:.2})", idle.writes, idle.proposals),
                format!("0: {}", met(idle.writes == 0.0 && idle.proposals == 0.0)),
            ),
            row(
                "idle etcd requests per second (lease keep-alives)",
                format!("{:.1}", idle.requests),
                String::new(),
            ),
            row(
                format!("idle keep-alive messages / streams closed per second ({streams})"),
                format!(
                    "{:.1} / {:.1}",
                    idle.keep_alive_messages, idle.keep_alive_streams
                ),
                String::new(),
            ),
            row(
                "engine fleetd peak RSS (VmHWM)",
                format!("{:.1} MiB (now {:.1} MiB)", mib(self.hwm), mib(self.rss)),
                {
                    let (label, bytes) = Target::for_size(args).engine_hwm;
                    format!("< {label}: {}", met(self.hwm < bytes))
                },
            ),
            row(
                "CPU used, submit → all active",
                self.submit.cpu.describe(),
                String::new(),
            ),
            row("CPU used, idle window", idle.cpu.describe(), String::new()),
        ];
        let unavailable = SUBMIT_UNAVAILABLE.load(Ordering::Relaxed);
        if unavailable > 0 {
            rows.push(row(
                "PUTs still 503 after the client's retries (sent again; see stderr)",
                unavailable.to_string(),
                String::new(),
            ));
        }
        if self.sim_errors > 0 {
            rows.push(row(
                "simulated agent errors (see stderr)",
                self.sim_errors.to_string(),
                self.sim_errors_by_kind
                    .iter()
                    .map(|(kind, n)| format!("{kind} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        rows
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let (submit, reschedule, lists, idle) =
            (&self.submit, &self.reschedule, &self.lists, &self.idle);
        let (before, after) = (&submit.before, &submit.after);
        let per_unit = |value: f64| self.per_unit(args, value);
        serde_json::json!({
            "machines": args.machines,
            "units": args.units,
            "concurrency": args.concurrency,
            "machine_loss_grace_s": args.loss_grace,
            "register_rate_per_s": args.register_rate,
            "register_machines_s": secs(self.register_time),
            "submit_s": secs(submit.submit_time),
            "all_active_s": secs(submit.all_active),
            "fleetd_hwm_after_active_bytes": submit.hwm_after_active,
            "reschedule": {
                "machines_lost": reschedule.lost,
                "units_moved": reschedule.moved,
                "from_revoke_s": secs(reschedule.from_revoke),
                "after_grace_s": (reschedule.after_grace * 1000.0).round() / 1000.0,
                "etcd_requests": reschedule.requests,
                "etcd_writes": reschedule.writes,
            },
            "per_unit": {
                "etcd_requests": per_unit(after.requests(before)),
                "etcd_writes": per_unit(after.writes(before)),
                "etcd_proposals": per_unit(after.proposals(before)),
                "etcd_received_bytes": per_unit(after.delta(before, "etcd_network_client_grpc_received_bytes_total")),
                "etcd_sent_bytes": per_unit(after.delta(before, "etcd_network_client_grpc_sent_bytes_total")),
                "etcd_wal_bytes": per_unit(after.delta(before, "etcd_disk_wal_write_bytes_total")),
                "agent_state_writes": per_unit(submit.state_writes as f64),
            },
            "submit_requests_by_method": after
                .by_method(before)
                .into_iter()
                .map(|(method, count)| (method, serde_json::json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "idle": {
                "window_s": idle.secs,
                "writes_per_s": idle.writes,
                "proposals_per_s": idle.proposals,
                "requests_per_s": idle.requests,
                "keep_alive_messages_per_s": idle.keep_alive_messages,
                "keep_alive_streams_closed_per_s": idle.keep_alive_streams,
                "keep_alive_stream_per_lease": args.keep_alive_streams,
            },
            "fleetd_rss": { "hwm_bytes": self.hwm, "rss_bytes": self.rss },
            "latency_s": {
                "api_get_units_all_pages": secs(lists.api_units),
                "api_get_state_all_pages": secs(lists.api_states),
                "fleetctl_list_units": secs(lists.fleetctl),
            },
            "simulated_agent_errors": self.sim_errors,
            "submit_503_after_client_retries": SUBMIT_UNAVAILABLE.load(Ordering::Relaxed),
            "simulated_agent_errors_by_kind": self.sim_errors_by_kind,
            "etcd_members": args.etcd_members,
            "submit_proposals_per_s": self.submit_proposal_rate(),
            "check_perf": self.check_perf.as_ref().map(|perf| serde_json::json!({
                "load": perf.load,
                "writes_per_s": perf.writes_per_s,
                "verdict": perf.verdict,
            })),
            "cpu": { "submit_to_active": submit.cpu.json(), "idle": idle.cpu.json() },
        })
    }
}

fn print_table(args: &Args, report: &Report) {
    let width = report
        .rows
        .iter()
        .map(|(figure, _, _)| figure.chars().count())
        .max()
        .unwrap_or(0);
    let value_width = report
        .rows
        .iter()
        .map(|(_, value, _)| value.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "\nfleet scale benchmark: {} machines, {} units, {} etcd member{}",
        args.machines,
        args.units,
        args.etcd_members,
        if args.etcd_members == 1 { "" } else { "s" }
    );
    for (figure, value, target) in &report.rows {
        println!("  {figure:<width$}  {value:>value_width$}  {target}");
    }
}
