//! `fleetctl enrol` and `disenrol` on real hosts: a bare test host (booted without fleet)
//! joins a running cluster from the Debian package over SSH, runs a unit pinned to it, is
//! enrolled again with nothing to do, and is disenrolled until the host is clean and the
//! machine unlisted. Hosts that cannot be enrolled (etcd unreachable from them, fleetd that
//! never reports in) are refused at the step named and left as they were.
//!
//! The package is built by `scripts/package.sh --bindir <bindir>` (or taken from
//! `FLEET_TEST_PACKAGE`, a path to a fleet `.deb`, to test a given build).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use functional_tests::{Cluster, bin_dir, wait_until, workspace_root};

use crate::foundation::Fleet;
use crate::ssh::Agent;

/// How long units may take to start on 2 busy cores.
const DEADLINE: Duration = Duration::from_secs(60);

/// The fleet package to enrol with, built into `out` (each test its own: tests run in
/// parallel).
fn package(out: &std::path::Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLEET_TEST_PACKAGE") {
        return Ok(PathBuf::from(path));
    }
    let script = workspace_root().join("scripts").join("package.sh");
    let output = Command::new(&script)
        .arg("--bindir")
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("scripts/package.sh failed: {}", text(&output.stderr));
    }
    let path = text(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if !path.ends_with(".deb") || !std::path::Path::new(&path).exists() {
        bail!(
            "scripts/package.sh printed no package: {:?}",
            text(&output.stdout)
        );
    }
    Ok(PathBuf::from(path))
}

/// fleetctl with the test agent and a known hosts file holding `host`'s key: strict host
/// key checking, as a user's would be.
struct Ctl<'a> {
    endpoint: String,
    agent: &'a Agent,
    known_hosts: PathBuf,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = Command::new(bin_dir().join("fleetctl"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .arg("--known-hosts-file")
            .arg(&self.known_hosts)
            .args(args)
            .env("SSH_AUTH_SOCK", &self.agent.socket)
            .env_remove("FLEETCTL_TUNNEL")
            .env_remove("FLEETCTL_SSH_USERNAME")
            .env_remove("FLEETCTL_ETCD_ROOT_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .context("running fleetctl")?;
        eprintln!(
            "fleetctl {}: {}\nstdout:\n{}stderr:\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    }
}

/// Boots `n_fleet` hosts with fleet plus one bare host (the last), waits for sshd there,
/// and records its host key in `dir/known_hosts`. Returns the cluster and the bare host.
fn cluster_and_bare_host(
    n_fleet: usize,
    dir: &std::path::Path,
) -> anyhow::Result<(Cluster, String)> {
    let cluster = Cluster::start(n_fleet + 1)?;
    let hosts = cluster.hosts().to_vec();
    for host in &hosts[..n_fleet] {
        cluster.install_fleet(host, &["agent_ttl=5s"])?;
    }
    let bare = hosts[n_fleet].clone();
    wait_until(Duration::from_secs(30), &format!("sshd in {bare}"), || {
        let output = cluster.exec(&bare, &["systemctl", "is-active", "ssh.service"])?;
        Ok(String::from_utf8_lossy(&output.stdout).trim() == "active")
    })?;
    let key = std::fs::read_to_string(
        cluster
            .host_root(&bare)
            .join("etc/ssh/ssh_host_ed25519_key.pub"),
    )?;
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    std::fs::write(
        dir.join("known_hosts"),
        format!("{} {}\n", cluster.ip(&bare)?, key.join(" ")),
    )?;
    Ok((cluster, bare))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What fleet leaves on a host (its binary, files in /etc/fleet, its units, its package);
/// empty on a host without fleet. (The test image has an empty /etc/fleet.)
fn leftovers(cluster: &Cluster, host: &str) -> anyhow::Result<Vec<String>> {
    let root = cluster.host_root(host);
    let mut left: Vec<String> = Vec::new();
    if root.join("usr/bin/fleetd").exists() {
        left.push("/usr/bin/fleetd".to_owned());
    }
    if let Ok(entries) = std::fs::read_dir(root.join("etc/fleet")) {
        left.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().display().to_string()),
        );
    }
    let units = cluster.exec(
        host,
        &[
            "systemctl",
            "list-unit-files",
            "fleet.service",
            "fleet.socket",
            "--no-legend",
        ],
    )?;
    left.extend(text(&units.stdout).lines().map(str::to_owned));
    let package = cluster.exec(host, &["dpkg-query", "-W", "fleet"])?;
    if package.status.success() {
        left.push(format!("package {}", text(&package.stdout).trim()));
    }
    Ok(left)
}

fn machine_listed(fleet: &Fleet<'_>, id: &str) -> anyhow::Result<bool> {
    Ok(fleet.machines()?.iter().any(|machine| machine.id == id))
}

#[test]
fn a_bare_host_is_enrolled_runs_a_unit_and_is_disenrolled_clean() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let package = package(dir.path())?;
    let (cluster, bare) = cluster_and_bare_host(2, dir.path())?;
    let agent = Agent::start(dir.path(), &[&cluster.ssh_key()?])?;
    let ctl = Ctl {
        endpoint: cluster.endpoint("h1")?,
        agent: &agent,
        known_hosts: dir.path().join("known_hosts"),
    };
    let fleet = Fleet::new(&cluster, "h1")?;
    let id = cluster.machine_id(&bare)?;
    let target = format!("root@{}", cluster.ip(&bare)?);
    let package = package.to_string_lossy().into_owned();
    let enrol = [
        "enrol",
        target.as_str(),
        "--package",
        package.as_str(),
        "--etcd-servers",
        cluster.etcd_url(),
        "--metadata",
        "role=enrolled",
        "--conf",
        "agent_ttl=5s",
    ];

    // A dry run checks the host and says what it would do; it changes nothing.
    let mut dry = enrol.to_vec();
    dry.push("--dry-run");
    let output = ctl.run(&dry)?;
    assert!(output.status.success());
    assert!(
        text(&output.stdout).contains("would install fleet"),
        "dry run output"
    );
    assert_eq!(
        leftovers(&cluster, &bare)?,
        Vec::<String>::new(),
        "the dry run changed the host"
    );

    let output = ctl.run(&enrol)?;
    let out = text(&output.stdout);
    assert!(output.status.success(), "enrol failed");
    for step in 1..=7 {
        assert!(
            out.contains(&format!("[{step}/7] ")),
            "step {step} not printed: {out}"
        );
    }
    assert!(out.contains("[1/7] check host: systemd "), "{out}");
    assert!(out.contains(&format!("Machine {id} enrolled")), "{out}");
    assert!(machine_listed(&fleet, &id)?, "not in list-machines");
    let mode = cluster.exec_ok(&bare, &["stat", "-c", "%a", "/etc/fleet/fleet.conf"])?;
    assert_eq!(mode.trim(), "600");

    // A unit pinned to the new machine runs there.
    let unit = dir.path().join("pinned.service");
    std::fs::write(
        &unit,
        format!("[Service]\nExecStart=/bin/sleep infinity\n[X-Fleet]\nMachineID={id}\n"),
    )?;
    fleet.ctl_ok(&["start", "--no-block", &unit.to_string_lossy()])?;
    let placed = fleet.wait_active(&["pinned.service"], DEADLINE)?;
    assert_eq!(placed["pinned.service"], id);
    let active = cluster.exec(&bare, &["systemctl", "is-active", "pinned.service"])?;
    assert_eq!(text(&active.stdout).trim(), "active");

    // Again: nothing to do.
    let output = ctl.run(&enrol)?;
    assert!(output.status.success());
    assert!(
        text(&output.stdout).contains("already enrolled, nothing to do"),
        "second enrol changed something"
    );

    // Other metadata: only fleet.conf changes (fleetd restarts; the unit keeps running).
    let mut changed = enrol.to_vec();
    changed[7] = "role=changed";
    let output = ctl.run(&changed)?;
    let out = text(&output.stdout);
    assert!(
        output.status.success(),
        "re-enrol with other metadata failed"
    );
    assert!(
        out.contains("(changed metadata, mode 0600) ... ok"),
        "{out}"
    );
    assert!(
        out.contains("[3/7] copy package: fleet ") && out.contains("up to date"),
        "{out}"
    );
    let row = fleet.machines()?.into_iter().find(|m| m.id == id);
    assert!(
        row.is_some_and(|m| m.metadata.contains("role=changed")),
        "metadata not applied"
    );
    let active = cluster.exec(&bare, &["systemctl", "is-active", "pinned.service"])?;
    assert_eq!(
        text(&active.stdout).trim(),
        "active",
        "the restart stopped the unit"
    );

    // Out again: the pinned unit cannot move, so --force; the host ends clean.
    let output = ctl.run(&["disenrol", &id, "--reason", "functional test", "--force"])?;
    let out = text(&output.stdout);
    assert!(output.status.success(), "disenrol failed");
    assert!(
        out.contains(&format!("Machine {id} disenrolled by ")),
        "{out}"
    );
    assert!(out.contains(": functional test"), "{out}");
    assert_eq!(
        leftovers(&cluster, &bare)?,
        Vec::<String>::new(),
        "host not clean"
    );
    let active = cluster.exec(&bare, &["systemctl", "is-active", "pinned.service"])?;
    assert_ne!(
        text(&active.stdout).trim(),
        "active",
        "fleet's unit still runs"
    );
    assert!(!machine_listed(&fleet, &id)?, "still in list-machines");
    let journal = cluster.exec_ok(
        &bare,
        &["journalctl", "-t", "fleetctl", "--no-pager", "-o", "cat"],
    )?;
    assert!(
        journal.contains("functional test"),
        "who and why not logged: {journal}"
    );
    Ok(())
}

#[test]
fn hosts_that_cannot_be_enrolled_are_named_at_the_step_and_left_as_they_were() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let package = package(dir.path())?;
    let (cluster, bare) = cluster_and_bare_host(1, dir.path())?;
    let agent = Agent::start(dir.path(), &[&cluster.ssh_key()?])?;
    let ctl = Ctl {
        endpoint: cluster.endpoint("h1")?,
        agent: &agent,
        known_hosts: dir.path().join("known_hosts"),
    };
    let target = format!("root@{}", cluster.ip(&bare)?);
    let package = package.to_string_lossy().into_owned();

    // etcd is not reachable from the host: refused before anything is installed.
    let output = ctl.run(&[
        "enrol",
        &target,
        "--package",
        &package,
        "--etcd-servers",
        "http://10.231.0.1:9",
    ])?;
    assert!(!output.status.success());
    assert!(
        text(&output.stdout)
            .contains("[2/7] check etcd from the host: etcd does not answer from the host"),
        "step not named"
    );
    assert!(text(&output.stderr).contains("failed at step 2"));
    assert_eq!(leftovers(&cluster, &bare)?, Vec::<String>::new());

    // fleetd starts but never shows in list-machines (it writes under another prefix):
    // step 7 fails and the run undoes itself (fleet stopped, fleet.conf restored, package
    // purged).
    let output = ctl.run(&[
        "enrol",
        &target,
        "--package",
        &package,
        "--etcd-servers",
        cluster.etcd_url(),
        "--conf",
        "etcd_key_prefix=/elsewhere/",
        "--timeout",
        "10s",
    ])?;
    assert!(!output.status.success());
    let err = text(&output.stderr);
    assert!(
        text(&output.stdout).contains("[7/7] wait for list-machines: machine "),
        "step 7 not named"
    );
    assert!(err.contains("rollback: purge the package ... ok"), "{err}");
    // The package's postinst wrote a sample fleet.conf before ours: that is put back, and
    // the purge removes it.
    assert!(
        err.contains("rollback: restore the previous fleet.conf ... ok"),
        "{err}"
    );
    assert_eq!(
        leftovers(&cluster, &bare)?,
        Vec::<String>::new(),
        "not rolled back"
    );

    // A package for another architecture: refused at step 1.
    let other = dir.path().join("other-arch");
    let deb = dir.path().join("fleet_arm64.deb");
    let repack = format!(
        "dpkg-deb -R {pkg} {o} && sed -i 's/^Architecture: .*/Architecture: arm64/' {o}/DEBIAN/control \
         && dpkg-deb -Zxz -z0 --root-owner-group -b {o} {deb} >/dev/null",
        pkg = package,
        o = other.display(),
        deb = deb.display()
    );
    let status = Command::new("sh").args(["-c", &repack]).status()?;
    assert!(status.success(), "repacking the package failed");
    let deb = deb.to_string_lossy().into_owned();
    let output = ctl.run(&[
        "enrol",
        &target,
        "--package",
        &deb,
        "--etcd-servers",
        cluster.etcd_url(),
    ])?;
    assert!(!output.status.success());
    assert!(
        text(&output.stdout)
            .contains("wrong architecture: the package is arm64, the host is amd64"),
        "architecture not checked"
    );
    assert_eq!(leftovers(&cluster, &bare)?, Vec::<String>::new());

    // SSH refused (nothing listens on the port): step 1, nothing touched.
    let output = ctl.run(&[
        "enrol",
        &target,
        "--ssh-port",
        "2",
        "--package",
        &package,
        "--etcd-servers",
        cluster.etcd_url(),
    ])?;
    assert!(!output.status.success());
    assert!(
        text(&output.stdout).contains("[1/7] check host: SSH: "),
        "step 1 not named"
    );
    Ok(())
}

/// `fleetd etcd-auth COMMAND` from the outer machine with etcd's root credentials
/// (`password`); the security tests use it too.
pub(crate) fn etcd_auth(
    cluster: &Cluster,
    password: &str,
    command: &[&str],
) -> anyhow::Result<String> {
    let output = Command::new(bin_dir().join("fleetd"))
        .arg("etcd-auth")
        .args(command)
        .env("FLEET_ETCD_SERVERS", cluster.etcd_url())
        .env("FLEET_ETCD_USERNAME", "root")
        .env("FLEET_ETCD_PASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .context("running fleetd etcd-auth")?;
    if !output.status.success() {
        bail!(
            "fleetd etcd-auth {command:?} failed: {}",
            text(&output.stderr)
        );
    }
    Ok(text(&output.stdout))
}

/// With etcd auth on, enrol (as a sudo user) gives the host its own etcd user (a worker)
/// and keeps it when run again; disenrol deletes that user and role.
#[test]
fn with_etcd_auth_the_machine_gets_its_own_etcd_user_and_loses_it_at_disenrol() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let package = package(dir.path())?;
    let (cluster, bare) = cluster_and_bare_host(1, dir.path())?;
    let password = "enrol-test-root";
    etcd_auth(&cluster, password, &["init"])?;
    let h1 = cluster.machine_id("h1")?;
    let credential = etcd_auth(&cluster, password, &["add-machine", &h1, "--engine"])?;
    let lines: Vec<&str> = credential.lines().collect();
    // h1 runs fleet already (started before auth was on): new fleet.conf, restart.
    cluster.install_fleet("h1", &lines)?;
    cluster.exec_ok("h1", &["systemctl", "restart", "fleet.service"])?;
    let fleet = Fleet::new(&cluster, "h1")?;
    wait_until(DEADLINE, "h1 listed with its etcd user", || {
        machine_listed(&fleet, &h1)
    })?;

    let agent = Agent::start(dir.path(), &[&cluster.ssh_key()?])?;
    let ctl = Ctl {
        endpoint: cluster.endpoint("h1")?,
        agent: &agent,
        known_hosts: dir.path().join("known_hosts"),
    };
    let password_file = dir.path().join("etcd-root");
    std::fs::write(&password_file, format!("{password}\n"))?;
    let password_file = password_file.to_string_lossy().into_owned();
    let id = cluster.machine_id(&bare)?;
    // As core, through sudo -n (the test image lets core sudo without a password).
    let target = format!("core@{}", cluster.ip(&bare)?);
    let package = package.to_string_lossy().into_owned();
    let enrol = [
        "enrol",
        target.as_str(),
        "--package",
        package.as_str(),
        "--etcd-servers",
        cluster.etcd_url(),
        "--etcd-root-password-file",
        password_file.as_str(),
    ];
    let output = ctl.run(&enrol)?;
    assert!(output.status.success(), "enrol with etcd auth failed");
    let conf = cluster.exec_ok(&bare, &["cat", "/etc/fleet/fleet.conf"])?;
    assert!(
        conf.contains(&format!("etcd_username=fleet-machine-{id}\n")),
        "no machine user in fleet.conf"
    );
    assert!(machine_listed(&fleet, &id)?);

    let output = ctl.run(&enrol)?;
    assert!(text(&output.stdout).contains("already enrolled, nothing to do"));
    assert_eq!(
        cluster.exec_ok(&bare, &["cat", "/etc/fleet/fleet.conf"])?,
        conf,
        "the credential was replaced"
    );

    let output = ctl.run(&[
        "disenrol",
        &id,
        "--reason",
        "etcd auth test",
        "--etcd-root-password-file",
        &password_file,
    ])?;
    assert!(output.status.success(), "disenrol failed");
    assert!(
        text(&output.stdout).contains("[5/7] remove etcd identity: Removed etcd user and role")
    );
    let again = etcd_auth(&cluster, password, &["remove-machine", &id])?;
    assert!(again.contains("had no etcd user or role"), "{again}");
    assert_eq!(leftovers(&cluster, &bare)?, Vec::<String>::new());
    assert!(!machine_listed(&fleet, &id)?);
    Ok(())
}
