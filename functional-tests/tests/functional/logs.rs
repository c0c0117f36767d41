//! Logs and status without SSH on real systemd hosts: two machines whose APIs speak only
//! mutual TLS, each publishing its address (`api_advertise_url`) and holding a peer
//! certificate (`api_peer_*`). A unit pinned to `h2` logs a line; `fleetctl logs` through
//! `h1`'s API shows it (h1 forwards to h2, which reads its journald); `logs -f` sees a line
//! logged later; `status --api` shows systemd's `Active: active (running)`; and a
//! certificate without the `peer` role is refused on `h2`'s peer path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_registry::testing::pki::Pki;
use functional_tests::{Cluster, bin_dir, wait_until};

use crate::foundation::FAST_CONF;

/// How long a unit may take to start, and a journal line to show, on 2 busy cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// The TLS port of `fleet-tcp.socket` on every test host.
const API_PORT: u16 = 54728;

/// Every machine's access file: the peers (one certificate name shared by the fleetds
/// here) and an operator.
const ACCESS: &str =
    "[roles]\nfleet-peer = \"peer\"\nops-operator = \"operate\"\nops-reader = \"read\"\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Installs `host`'s server certificate, the peer certificate, the CA and the access file,
/// and returns the fleet.conf lines that turn on TLS, roles and forwarding.
fn install_tls(
    cluster: &Cluster,
    pki: &Pki,
    dir: &Path,
    host: &str,
) -> anyhow::Result<Vec<String>> {
    let ip = cluster.ip(host)?;
    let (cert, key) = pki.sign_server("api", &[&ip]);
    let (peer_cert, peer_key) = pki.sign_client("fleet-peer");
    let access = dir.join(format!("access-{host}.toml"));
    std::fs::write(&access, ACCESS)?;
    let etc = cluster.host_root(host).join("etc/fleet");
    std::fs::create_dir_all(&etc)?;
    for (from, to) in [
        (cert, "api.pem"),
        (key, "api-key.pem"),
        (peer_cert, "peer.pem"),
        (peer_key, "peer-key.pem"),
        (pki.ca_file(), "ca.pem"),
        (access, "api-access.toml"),
    ] {
        std::fs::copy(&from, etc.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let mut lines: Vec<String> = [
        "api_tls_cert_file=/etc/fleet/api.pem",
        "api_tls_key_file=/etc/fleet/api-key.pem",
        "api_tls_client_ca_file=/etc/fleet/ca.pem",
        "api_access_file=/etc/fleet/api-access.toml",
        "api_peer_cert_file=/etc/fleet/peer.pem",
        "api_peer_key_file=/etc/fleet/peer-key.pem",
        "api_peer_ca_file=/etc/fleet/ca.pem",
    ]
    .map(str::to_owned)
    .to_vec();
    lines.push(format!("api_advertise_url=https://{ip}:{API_PORT}"));
    lines.extend(FAST_CONF.iter().map(|line| (*line).to_owned()));
    Ok(lines)
}

/// fleetctl against `h1`'s TLS API as `ops-operator`.
struct Operator {
    args: Vec<String>,
}

impl Operator {
    fn new(cluster: &Cluster, pki: &Pki) -> anyhow::Result<Operator> {
        let (cert, key) = pki.sign_client("ops-operator");
        Ok(Operator {
            args: vec![
                "--endpoint".into(),
                format!("https://{}:{API_PORT}", cluster.ip("h1")?),
                "--ca-file".into(),
                pki.ca_file().display().to_string(),
                "--cert-file".into(),
                cert.display().to_string(),
                "--key-file".into(),
                key.display().to_string(),
            ],
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin_dir().join("fleetctl"));
        command
            .args(&self.args)
            .args(args)
            .env_remove("FLEETCTL_TUNNEL")
            .env_remove("FLEETCTL_ENDPOINT")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.command(args).output().context("running fleetctl")?;
        eprintln!(
            "fleetctl {}: {}\nstdout:\n{}stderr:\n{}",
            args.join(" "),
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
        Ok(output)
    }

    fn run_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.run(args)?;
        if !output.status.success() {
            bail!(
                "fleetctl {} failed: {}",
                args.join(" "),
                text(&output.stderr)
            );
        }
        Ok(text(&output.stdout))
    }
}

/// A unit pinned to `machine` that logs a first line, then a second one once
/// `/run/logs-trigger` exists.
fn logger_unit(dir: &Path, machine: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("logger.service");
    std::fs::write(
        &path,
        format!(
            "[Service]\n\
             ExecStart=/bin/sh -c 'echo first-logged-line; while [ ! -e /run/logs-trigger ]; do sleep 0.2; done; echo second-logged-line; exec sleep infinity'\n\
             [X-Fleet]\nMachineID={machine}\n"
        ),
    )?;
    Ok(path)
}

/// `fleetctl logs -f` in the background, its stdout lines collected by a thread.
struct Follower {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    fn start(operator: &Operator, unit: &str) -> anyhow::Result<Follower> {
        let mut child = operator
            .command(&["logs", "-f", "-n", "5", unit])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting fleetctl logs -f")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().expect("lines lock").push(line);
            }
        });
        Ok(Follower { child, lines })
    }

    fn saw(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .any(|line| line.contains(needle))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl to `h2`'s peer path with a client certificate named `name`: the HTTP status.
fn peer_call_status(cluster: &Cluster, pki: &Pki, name: &str) -> anyhow::Result<String> {
    let (cert, key) = pki.sign_client(name);
    let url = format!(
        "https://{}:{API_PORT}/fleet/x1/peer/units/logger.service/status",
        cluster.ip("h2")?
    );
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(pki.ca_file())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()
        .context("running curl")?;
    Ok(text(&output.stdout))
}

#[test]
fn logs_and_status_reach_the_unit_machine_through_any_fleetd() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path());
    let cluster = Cluster::start(2)?;
    for host in ["h1", "h2"] {
        let conf = install_tls(&cluster, &pki, dir.path(), host)?;
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        cluster.install_fleet(host, &conf)?;
    }
    let h2 = cluster.machine_id("h2")?;
    let operator = Operator::new(&cluster, &pki)?;
    wait_until(DEADLINE, "both machines listed over mTLS", || {
        let out = operator.run_ok(&["list-machines", "--no-legend", "--full"])?;
        Ok(out.contains(&h2) && out.contains(&cluster.machine_id("h1")?))
    })?;
    let unit = logger_unit(dir.path(), &h2)?;
    operator.run_ok(&["start", "--no-block", &unit.display().to_string()])?;
    wait_until(DEADLINE, "logger.service active on h2", || {
        let output = cluster.exec("h2", &["systemctl", "is-active", "logger.service"])?;
        Ok(text(&output.stdout).trim() == "active")
    })?;

    // Through h1, which forwards to h2, which reads its own journal.
    wait_until(
        DEADLINE,
        "fleetctl logs through h1 shows the unit's line",
        || {
            let output = operator.run(&["logs", "logger.service"])?;
            Ok(output.status.success() && text(&output.stdout).contains("first-logged-line"))
        },
    )?;

    // -f: a line logged later arrives on the open stream.
    let follower = Follower::start(&operator, "logger.service")?;
    wait_until(DEADLINE, "logs -f shows the first line", || {
        Ok(follower.saw("first-logged-line"))
    })?;
    cluster.exec_ok("h2", &["touch", "/run/logs-trigger"])?;
    wait_until(DEADLINE, "logs -f shows the line logged later", || {
        Ok(follower.saw("second-logged-line"))
    })?;
    drop(follower);

    // status --api: systemctl status, run on h2.
    let status = operator.run_ok(&["status", "--api", "logger.service"])?;
    assert!(
        status.contains("Active: active (running)"),
        "status --api: {status}"
    );

    // h2's peer path: the peer certificate passes; a user's role or no role is refused.
    assert_eq!(peer_call_status(&cluster, &pki, "fleet-peer")?, "200");
    assert_eq!(peer_call_status(&cluster, &pki, "ops-operator")?, "403");
    assert_eq!(peer_call_status(&cluster, &pki, "stranger")?, "403");
    Ok(())
}
