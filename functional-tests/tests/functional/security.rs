//! The locked-down set-up of `Documentation/security.md` on real hosts, in one cluster: etcd
//! with auth on (a root user, `fleetd etcd-auth init`, one etcd identity per machine: `h1` the
//! control plane, `h2` a worker) and the API of `h1` on TCP speaking only TLS with client
//! certificates, roles from an access file.
//!
//! What holds: a client without a certificate is refused at the handshake; a `read`
//! certificate lists but cannot start (403 with the server's message, printed by fleetctl,
//! which exits non-zero); an `operate` certificate starts a unit that then runs in systemd on
//! the worker, which reports its state; fleetctl takes the original's flags (`--endpoint
//! https://… --ca-file --cert-file --key-file`); the worker's own etcd credentials cannot
//! write or delete any key another writer owns (etcd refuses); and a unit named like one the
//! host already has (`ssh.service`) is refused on the worker with a clear state. Last,
//! `fleetctl --tunnel` as an SSH user outside group `fleet` is told why the API socket
//! refused it and how to fix that.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleet_registry::testing::pki::Pki;
use functional_tests::{Cluster, bin_dir, wait_until};

use crate::enrol::etcd_auth;
use crate::foundation::{FAST_CONF, PREFIX};
use crate::ssh::Agent;

/// How long units may take to start (or be refused) on 2 busy cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// etcd's root password in this test.
const ROOT_PASSWORD: &str = "security-test-root";

/// The access file `h1`'s API reads: certificate common names and their roles.
const ACCESS: &str = "[roles]\nops-reader = \"read\"\nops-operator = \"operate\"\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Our fleetctl with the original's TLS flags, as one client certificate (or none).
struct TlsCtl<'a> {
    cluster: &'a Cluster,
    endpoint: String,
    ca: PathBuf,
    /// Certificate and key files; `None` connects without a client certificate.
    client: Option<(PathBuf, PathBuf)>,
}

impl TlsCtl<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all: Vec<String> = vec![
            "--endpoint".into(),
            self.endpoint.clone(),
            "--ca-file".into(),
            self.ca.display().to_string(),
        ];
        if let Some((cert, key)) = &self.client {
            all.push("--cert-file".into());
            all.push(cert.display().to_string());
            all.push("--key-file".into());
            all.push(key.display().to_string());
        }
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        let output = self.cluster.fleetctl(&all)?;
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

    /// The `unit active sub machine` rows of `list-units`.
    fn units(&self) -> anyhow::Result<Vec<Vec<String>>> {
        let out = self.run_ok(&[
            "list-units",
            "--no-legend",
            "--full",
            "--fields",
            "unit,active,sub,machine",
        ])?;
        Ok(out
            .lines()
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .filter(|row: &Vec<String>| row.len() == 4)
            .collect())
    }

    /// Waits until `unit` is listed with `sub` state on `machine`.
    fn wait_unit(&self, unit: &str, sub: &str, machine: &str) -> anyhow::Result<()> {
        wait_until(DEADLINE, &format!("{unit} {sub} on {machine}"), || {
            Ok(self
                .units()?
                .iter()
                .any(|row| row[0] == unit && row[2] == sub && row[3].starts_with(machine)))
        })
    }
}

/// A `key=value` line of a host's fleet.conf.
fn conf_value(cluster: &Cluster, host: &str, key: &str) -> anyhow::Result<String> {
    let path = cluster.host_root(host).join("etc/fleet/fleet.conf");
    let conf = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    conf.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(|value| value.trim().to_owned())
        .with_context(|| format!("no {key} in {host}'s fleet.conf"))
}

/// etcdctl against the test etcd as `user` with `password`.
fn etcdctl(cluster: &Cluster, user: &str, password: &str, args: &[&str]) -> anyhow::Result<Output> {
    let endpoint = cluster
        .etcd_url()
        .split(',')
        .next()
        .context("no etcd url")?;
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--user",
            user,
            "--password",
            password,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running etcdctl (install etcd's client: scripts/setup.sh)")
}

/// Installs the API's certificate, key, client CA and access file into `h1`'s /etc/fleet and
/// returns the fleet.conf lines that turn them on.
fn install_api_tls(cluster: &Cluster, pki: &Pki, dir: &Path) -> anyhow::Result<Vec<String>> {
    let (cert, key) = pki.sign_server("api", &[&cluster.ip("h1")?]);
    let etc = cluster.host_root("h1").join("etc/fleet");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(dir.join("access.toml"), ACCESS)?;
    for (from, to) in [
        (cert, "api.pem"),
        (key, "api-key.pem"),
        (pki.ca_file(), "ca.pem"),
        (dir.join("access.toml"), "api-access.toml"),
    ] {
        std::fs::copy(&from, etc.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    Ok([
        "api_tls_cert_file=/etc/fleet/api.pem",
        "api_tls_key_file=/etc/fleet/api-key.pem",
        "api_tls_client_ca_file=/etc/fleet/ca.pem",
        "api_access_file=/etc/fleet/api-access.toml",
    ]
    .map(str::to_owned)
    .to_vec())
}

/// Boots `h1` (control plane, mTLS API) and `h2` (worker) on an etcd with auth on.
fn locked_down_cluster(pki: &Pki, dir: &Path) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(2)?;
    etcd_auth(&cluster, ROOT_PASSWORD, &["init"])?;
    let h1 = cluster.machine_id("h1")?;
    let h2 = cluster.machine_id("h2")?;
    let mut h1_conf: Vec<String> =
        etcd_auth(&cluster, ROOT_PASSWORD, &["add-machine", &h1, "--engine"])?
            .lines()
            .map(str::to_owned)
            .collect();
    h1_conf.extend(install_api_tls(&cluster, pki, dir)?);
    h1_conf.extend(FAST_CONF.iter().map(|line| (*line).to_owned()));
    let h1_conf: Vec<&str> = h1_conf.iter().map(String::as_str).collect();
    cluster.install_fleet("h1", &h1_conf)?;
    let mut h2_conf: Vec<String> = etcd_auth(&cluster, ROOT_PASSWORD, &["add-machine", &h2])?
        .lines()
        .map(str::to_owned)
        .collect();
    h2_conf.extend(FAST_CONF.iter().map(|line| (*line).to_owned()));
    let h2_conf: Vec<&str> = h2_conf.iter().map(String::as_str).collect();
    cluster.install_fleet("h2", &h2_conf)?;
    Ok(cluster)
}

/// fleetctl to `h1`'s TLS listener as a new client certificate named `client` (or none).
fn tls_ctl<'a>(
    cluster: &'a Cluster,
    pki: &Pki,
    client: Option<&str>,
) -> anyhow::Result<TlsCtl<'a>> {
    Ok(TlsCtl {
        cluster,
        endpoint: format!("https://{}:54728", cluster.ip("h1")?),
        ca: pki.ca_file(),
        client: client.map(|name| pki.sign_client(name)),
    })
}

#[test]
fn mtls_roles_and_per_machine_etcd_identities_hold_on_real_hosts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path());
    let cluster = locked_down_cluster(&pki, dir.path())?;
    let h1 = cluster.machine_id("h1")?;
    let h2 = cluster.machine_id("h2")?;
    let anonymous = tls_ctl(&cluster, &pki, None)?;
    let reader = tls_ctl(&cluster, &pki, Some("ops-reader"))?;
    let operator = tls_ctl(&cluster, &pki, Some("ops-operator"))?;
    wait_until(DEADLINE, "both machines listed over mTLS", || {
        let out = reader.run_ok(&["list-machines", "--no-legend", "--full"])?;
        Ok(out.contains(&h1) && out.contains(&h2))
    })?;

    // No client certificate: the handshake fails, nothing is listed.
    let output = anonymous.run(&["list-units"])?;
    assert!(
        !output.status.success(),
        "a client without a certificate was served"
    );
    assert!(
        text(&output.stderr).contains("the API requires a client certificate"),
        "the refusal does not say a certificate is required: {}",
        text(&output.stderr)
    );

    // read: lists, but may not start; the server's 403 message is printed.
    let unit = dir.path().join("pinned.service");
    std::fs::write(
        &unit,
        format!("[Service]\nExecStart=/bin/sleep infinity\n[X-Fleet]\nMachineID={h2}\n"),
    )?;
    let unit_path = unit.display().to_string();
    let output = reader.run(&["start", "--no-block", &unit_path])?;
    assert!(
        !output.status.success(),
        "a read certificate started a unit"
    );
    let err = text(&output.stderr);
    assert!(
        err.contains("cert:ops-reader has role read") && err.contains("needs role operate"),
        "no 403 message: {err}"
    );
    assert!(
        !reader
            .run_ok(&["list-unit-files"])?
            .contains("pinned.service"),
        "the refused start stored the unit"
    );

    // operate: starts it; it runs in systemd on the worker, which reports its state.
    operator.run_ok(&["start", "--no-block", &unit_path])?;
    operator.wait_unit("pinned.service", "running", &h2)?;
    let active = cluster.exec_ok("h2", &["systemctl", "is-active", "pinned.service"])?;
    assert_eq!(active.trim(), "active");

    worker_cannot_touch_other_writers_keys(&cluster, &h1, &h2)?;

    // The worker still runs its unit and reports its state after the attempts.
    operator.wait_unit("pinned.service", "running", &h2)?;

    // A unit the host already has is refused there, with a state that says so.
    let ssh = dir.path().join("ssh.service");
    std::fs::write(
        &ssh,
        format!("[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineID={h2}\n"),
    )?;
    operator.run_ok(&["start", "--no-block", &ssh.display().to_string()])?;
    operator.wait_unit("ssh.service", "refused-host-unit", &h2)?;
    let fragment = cluster.exec_ok(
        "h2",
        &["systemctl", "show", "-p", "FragmentPath", "ssh.service"],
    )?;
    assert!(
        !fragment.contains("/run/fleet"),
        "fleet replaced ssh.service: {fragment}"
    );

    tunnel_without_socket_permission_says_so(&cluster, dir.path())
}

/// `fleetctl --tunnel` as `core`, which is not in group `fleet` on `h2`: the API socket
/// (mode 0660, group `fleet`) refuses it, and fleetctl says that and how to fix it.
fn tunnel_without_socket_permission_says_so(cluster: &Cluster, dir: &Path) -> anyhow::Result<()> {
    let agent = Agent::start(dir, &[&cluster.ssh_key()?])?;
    let h2 = cluster.ip("h2")?;
    wait_until(DEADLINE, "sshd in h2", || {
        let output = cluster.exec("h2", &["systemctl", "is-active", "ssh.service"])?;
        Ok(text(&output.stdout).trim() == "active")
    })?;
    let output = Command::new(bin_dir().join("fleetctl"))
        .args(["--tunnel", &h2, "--ssh-username", "core"])
        .args(["--strict-host-key-checking=false", "--known-hosts-file"])
        .arg(dir.join("known_hosts"))
        .arg("list-machines")
        .env("SSH_AUTH_SOCK", &agent.socket)
        .env_remove("FLEETCTL_TUNNEL")
        .env_remove("FLEETCTL_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .context("running fleetctl")?;
    let err = text(&output.stderr);
    eprintln!(
        "fleetctl --tunnel as core: {}\nstderr:\n{err}",
        output.status
    );
    assert!(!output.status.success(), "core used the API socket");
    assert!(
        err.contains("permission denied: the SSH user on")
            && err.contains("/var/run/fleet.sock")
            && err.contains("usermod -aG fleet"),
        "the failure does not say what it is and how to fix it: {err}"
    );
    Ok(())
}

/// With `h2`'s etcd credentials (from its fleet.conf), every write and delete of a key another
/// writer owns is refused by etcd: `h1`'s presence, unit states and health, every unit key,
/// unit contents, machine metadata, cordons, rollouts, the schedule (its own included: only
/// the engine writes it), placements and the leader key.
fn worker_cannot_touch_other_writers_keys(
    cluster: &Cluster,
    h1: &str,
    h2: &str,
) -> anyhow::Result<()> {
    let user = conf_value(cluster, "h2", "etcd_username")?;
    let password = conf_value(cluster, "h2", "etcd_password")?;
    // Reading is allowed (the credential works): the unit record is there.
    let read = etcdctl(
        cluster,
        &user,
        &password,
        &[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}api/units/"),
        ],
    )?;
    assert!(
        read.status.success(),
        "the worker cannot read: {}",
        text(&read.stderr)
    );
    assert!(
        text(&read.stdout).contains("pinned.service"),
        "no unit key read"
    );

    let keys = [
        format!("{PREFIX}machine/presence/{h1}"),
        format!("{PREFIX}machine/states/{h1}/pinned.service"),
        format!("{PREFIX}machine/health/{h1}/pinned.service"),
        format!("{PREFIX}api/units/pinned.service"),
        format!("{PREFIX}api/units/forged.service"),
        format!("{PREFIX}api/content/forged"),
        format!("{PREFIX}api/metadata/{h2}/role"),
        format!("{PREFIX}api/cordon/{h1}"),
        format!("{PREFIX}api/rollouts/forged"),
        format!("{PREFIX}engine/schedule/{h1}/forged.service"),
        format!("{PREFIX}engine/schedule/{h2}/pinned.service"),
        format!("{PREFIX}engine/placement/pinned.service/{h2}"),
        format!("{PREFIX}engine/leader"),
    ];
    for key in &keys {
        for op in [
            vec!["put", key.as_str(), "forged"],
            vec!["del", key.as_str()],
        ] {
            let output = etcdctl(cluster, &user, &password, &op)?;
            assert!(
                !output.status.success() && text(&output.stderr).contains("permission denied"),
                "etcd let the worker {} {key}: {}{}",
                op[0],
                text(&output.stdout),
                text(&output.stderr)
            );
        }
    }
    // A range delete over the whole prefix is refused too.
    let output = etcdctl(cluster, &user, &password, &["del", "--prefix", PREFIX])?;
    assert!(
        text(&output.stderr).contains("permission denied"),
        "etcd let the worker delete the prefix"
    );
    Ok(())
}
