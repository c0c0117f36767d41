//! The Debian package on a real Debian 12 systemd host (issue 14): `dpkg -i` installs fleet
//! (files, modes, the group, units enabled but not started without an etcd), fleetd from
//! `/usr/bin` joins the test etcd and runs a unit, `dpkg -i` of a higher version restarts
//! fleetd without touching that unit, `dpkg -r` stops fleet (not the unit, with a warning) and
//! keeps its configuration, and `dpkg -P` leaves nothing of fleet behind. Last,
//! `scripts/install.sh --package` on the clean host writes fleet.conf with the etcd first, so
//! the package's postinst starts fleet by itself.
//!
//! The host binds the workspace's binaries at `/opt/fleet/bin`; everything here runs the
//! packaged `/usr/bin/fleetd` and `/usr/bin/fleetctl` by absolute path, and the test checks that
//! fleet.service runs `/usr/bin/fleetd`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use functional_tests::{Cluster, bin_dir, wait_until, workspace_root};

/// The two versions: the upgrade goes from the first to the second.
const OLD_VERSION: &str = "0.0.1~pkgtest";
const NEW_VERSION: &str = "0.0.2~pkgtest";

/// How long fleetd may take to (re)appear in `list-machines` or to start a unit.
const DEADLINE: Duration = Duration::from_secs(30);

const FLEETCTL: &str = "/usr/bin/fleetctl";

/// A unit that runs until stopped: its MainPID tells whether anything restarted it.
const HELLO: &str = "[Unit]\nDescription=packaged fleet test unit\n\n\
                     [Service]\nExecStart=/bin/sleep infinity\n";

#[test]
fn package_installs_upgrades_without_stopping_units_removes_and_purges() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let old_deb = build_package(OLD_VERSION, out.path())?;
    let new_deb = build_package(NEW_VERSION, out.path())?;

    let cluster = Cluster::start(1)?;
    let host = "h1";
    let root = cluster.host_root(host);
    for deb in [&old_deb, &new_deb] {
        let name = deb.file_name().context("deb name")?;
        fs::copy(deb, root.join("root").join(name))
            .with_context(|| format!("copying {} into {host}", deb.display()))?;
    }

    install_checks_files_and_waits_for_an_etcd(&cluster, host, &old_deb)?;
    configure_and_start(&cluster, host)?;
    let before = start_hello(&cluster, host)?;
    upgrade_keeps_the_unit_running(&cluster, host, &new_deb, &before)?;
    remove_stops_fleet_and_keeps_the_config(&cluster, host)?;
    purge_leaves_nothing(&cluster, host)?;
    install_sh_starts_fleet_named_etcd(&cluster, host, &new_deb)?;
    Ok(())
}

/// `scripts/package.sh --bindir <test binaries> --version V --out DIR`.
fn build_package(version: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new(workspace_root().join("scripts").join("package.sh"))
        .args(["--bindir".as_ref(), bin_dir().as_os_str()])
        .args(["--version", version, "--out"])
        .arg(out)
        .output()
        .context("running scripts/package.sh")?;
    if !output.status.success() {
        bail!(
            "scripts/package.sh --version {version} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !deb.is_file() {
        bail!("scripts/package.sh printed {}, not a file", deb.display());
    }
    Ok(deb)
}

fn deb_in_host(deb: &Path) -> anyhow::Result<String> {
    let name = deb.file_name().context("deb name")?.to_string_lossy();
    Ok(format!("/root/{name}"))
}

fn install_checks_files_and_waits_for_an_etcd(
    cluster: &Cluster,
    host: &str,
    deb: &Path,
) -> anyhow::Result<()> {
    cluster.exec_ok(host, &["dpkg", "-i", &deb_in_host(deb)?])?;
    let status = cluster.exec_ok(
        host,
        &["dpkg-query", "-W", "-f=${Status} ${Version}", "fleet"],
    )?;
    assert_eq!(status, format!("install ok installed {OLD_VERSION}"));

    // path, mode, owner:group
    let expected = [
        ("/usr/bin/fleetd", "755 root:root"),
        ("/usr/bin/fleetctl", "755 root:root"),
        ("/lib/systemd/system/fleet.service", "644 root:root"),
        ("/lib/systemd/system/fleet.socket", "644 root:root"),
        ("/etc/fleet/fleet.conf", "600 root:root"),
        ("/usr/share/man/man1/fleetctl.1.gz", "644 root:root"),
        (
            "/usr/share/man/man1/fleetctl-list-machines.1.gz",
            "644 root:root",
        ),
        ("/usr/share/man/man8/fleetd.8.gz", "644 root:root"),
        (
            "/usr/share/bash-completion/completions/fleetctl",
            "644 root:root",
        ),
        (
            "/usr/share/zsh/vendor-completions/_fleetctl",
            "644 root:root",
        ),
        (
            "/usr/share/fish/vendor_completions.d/fleetctl.fish",
            "644 root:root",
        ),
        ("/usr/share/doc/fleet/deployment.md", "644 root:root"),
        ("/usr/share/doc/fleet/copyright", "644 root:root"),
    ];
    for (path, mode) in expected {
        let stat = cluster.exec_ok(host, &["stat", "-c", "%a %U:%G", path])?;
        assert_eq!(stat.trim(), mode, "{path}");
    }
    // The written fleet.conf is the commented sample: no etcd is named yet.
    let conf = cluster.exec_ok(host, &["cat", "/etc/fleet/fleet.conf"])?;
    assert!(conf.contains("# etcd_servers="), "{conf}");
    assert!(!conf.lines().any(|line| line.starts_with("etcd_servers")));
    let group = cluster.exec_ok(host, &["getent", "group", "fleet"])?;
    assert!(group.starts_with("fleet:"), "{group}");

    let enabled = cluster.exec(
        host,
        &["systemctl", "is-enabled", "fleet.socket", "fleet.service"],
    )?;
    assert_eq!(
        String::from_utf8_lossy(&enabled.stdout),
        "enabled\nenabled\n"
    );
    // Not started: fleet.conf names no etcd.
    assert_eq!(unit_state(cluster, host, "fleet.service")?, "inactive");
    assert_eq!(unit_state(cluster, host, "fleet.socket")?, "inactive");
    let exec_start = cluster.exec_ok(
        host,
        &["systemctl", "show", "-p", "ExecStart", "fleet.service"],
    )?;
    assert!(exec_start.contains("path=/usr/bin/fleetd"), "{exec_start}");
    // The packaged fleetctl knows its completion command.
    let completion = cluster.exec_ok(host, &[FLEETCTL, "completion", "bash"])?;
    assert!(completion.contains("list-machines"));
    Ok(())
}

/// Names the test etcd in fleet.conf (the file keeps its mode) and starts fleet, then waits
/// until this machine is listed.
fn configure_and_start(cluster: &Cluster, host: &str) -> anyhow::Result<()> {
    let conf = cluster.host_root(host).join("etc/fleet/fleet.conf");
    let lines = format!(
        "etcd_servers={}\npublic_ip={}\nmetadata=hostname={host}\n",
        cluster.etcd_url(),
        cluster.ip(host)?
    );
    fs::write(&conf, lines).with_context(|| format!("writing {}", conf.display()))?;
    let stat = cluster.exec_ok(host, &["stat", "-c", "%a", "/etc/fleet/fleet.conf"])?;
    assert_eq!(stat.trim(), "600");
    cluster.exec_ok(
        host,
        &["systemctl", "start", "fleet.socket", "fleet.service"],
    )?;
    wait_listed(cluster, host)?;
    // The API socket belongs to the package's group; the daemon is the packaged binary.
    let socket = cluster.exec_ok(
        host,
        &["stat", "-L", "-c", "%a %U:%G", "/var/run/fleet.sock"],
    )?;
    assert_eq!(socket.trim(), "660 root:fleet");
    let pid = unit_run(cluster, host, "fleet.service")?.main_pid;
    let exe = cluster.exec_ok(host, &["readlink", &format!("/proc/{pid}/exe")])?;
    assert_eq!(exe.trim(), "/usr/bin/fleetd");
    Ok(())
}

fn wait_listed(cluster: &Cluster, host: &str) -> anyhow::Result<()> {
    let machine = cluster.machine_id(host)?;
    wait_until(DEADLINE, "the machine in list-machines", || {
        let listed =
            cluster.exec_ok(host, &[FLEETCTL, "list-machines", "--full", "--no-legend"])?;
        Ok(listed.contains(&machine))
    })
}

/// What must not change when fleetd restarts: the unit's main process and start time.
#[derive(Debug, PartialEq, Eq)]
struct UnitRun {
    main_pid: String,
    active_since: String,
}

fn start_hello(cluster: &Cluster, host: &str) -> anyhow::Result<UnitRun> {
    let file = cluster.host_root(host).join("root/pkg-hello.service");
    fs::write(&file, HELLO).with_context(|| format!("writing {}", file.display()))?;
    cluster.exec_ok(
        host,
        &[FLEETCTL, "start", "--no-block", "/root/pkg-hello.service"],
    )?;
    wait_until(DEADLINE, "pkg-hello.service active", || {
        Ok(unit_state(cluster, host, "pkg-hello.service")? == "active")
    })?;
    unit_run(cluster, host, "pkg-hello.service")
}

fn upgrade_keeps_the_unit_running(
    cluster: &Cluster,
    host: &str,
    deb: &Path,
    before: &UnitRun,
) -> anyhow::Result<()> {
    let fleetd_before = unit_run(cluster, host, "fleet.service")?;
    cluster.exec_ok(host, &["dpkg", "-i", &deb_in_host(deb)?])?;
    let version = cluster.exec_ok(host, &["dpkg-query", "-W", "-f=${Version}", "fleet"])?;
    assert_eq!(version, NEW_VERSION);
    // fleetd was restarted (a new process), came back and registered again.
    wait_until(DEADLINE, "a new fleetd active", || {
        let now = unit_run(cluster, host, "fleet.service")?;
        Ok(now.main_pid != fleetd_before.main_pid
            && unit_state(cluster, host, "fleet.service")? == "active")
    })?;
    wait_listed(cluster, host)?;
    // The new fleetd has seen the unit (its agent reconciled), and the unit never restarted.
    wait_until(DEADLINE, "pkg-hello.service listed as running", || {
        let units = cluster.exec_ok(host, &[FLEETCTL, "list-units", "--no-legend"])?;
        Ok(units
            .lines()
            .any(|line| line.starts_with("pkg-hello.service") && line.contains("running")))
    })?;
    assert_eq!(&unit_run(cluster, host, "pkg-hello.service")?, before);
    // The upgrade kept the host's fleet.conf.
    let conf = cluster.exec_ok(host, &["cat", "/etc/fleet/fleet.conf"])?;
    assert!(conf.starts_with("etcd_servers="), "{conf}");
    Ok(())
}

fn remove_stops_fleet_and_keeps_the_config(cluster: &Cluster, host: &str) -> anyhow::Result<()> {
    let removal = cluster.exec(host, &["dpkg", "-r", "fleet"])?;
    let said = String::from_utf8_lossy(&removal.stderr);
    assert!(removal.status.success(), "dpkg -r failed: {said}");
    // Removing fleet leaves its units running, and says so.
    assert!(said.contains("1 fleet units keep running"), "{said}");
    assert_eq!(unit_state(cluster, host, "pkg-hello.service")?, "active");
    let status = cluster.exec_ok(host, &["dpkg-query", "-W", "-f=${Status}", "fleet"])?;
    assert_eq!(status, "deinstall ok config-files");
    assert_eq!(unit_state(cluster, host, "fleet.service")?, "inactive");
    assert_eq!(unit_state(cluster, host, "fleet.socket")?, "inactive");
    assert!(!exists(cluster, host, "/usr/bin/fleetd")?);
    let conf = cluster.exec_ok(host, &["cat", "/etc/fleet/fleet.conf"])?;
    assert!(conf.starts_with("etcd_servers="), "{conf}");
    // Disabled: no enablement links are left behind.
    assert_eq!(fleet_links(cluster, host)?, "");
    Ok(())
}

fn purge_leaves_nothing(cluster: &Cluster, host: &str) -> anyhow::Result<()> {
    cluster.exec_ok(host, &["dpkg", "-P", "fleet"])?;
    let query = cluster.exec(host, &["dpkg-query", "-W", "-f=${Status}", "fleet"])?;
    let status = String::from_utf8_lossy(&query.stdout);
    assert!(
        !query.status.success() || status.starts_with("unknown ok not-installed"),
        "{status}"
    );
    for path in [
        "/etc/fleet",
        "/lib/systemd/system/fleet.service",
        "/usr/share/fleet",
    ] {
        assert!(!exists(cluster, host, path)?, "{path} left after purge");
    }
    let group = cluster.exec(host, &["getent", "group", "fleet"])?;
    assert!(!group.status.success(), "group fleet left after purge");
    assert_eq!(fleet_links(cluster, host)?, "");
    let cat = cluster.exec(host, &["systemctl", "cat", "fleet.service"])?;
    assert!(!cat.status.success(), "systemd still knows fleet.service");
    Ok(())
}

/// `systemctl is-active UNIT` (it exits non-zero for anything but active).
fn unit_state(cluster: &Cluster, host: &str, unit: &str) -> anyhow::Result<String> {
    let output = cluster.exec(host, &["systemctl", "is-active", unit])?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn unit_run(cluster: &Cluster, host: &str, unit: &str) -> anyhow::Result<UnitRun> {
    let show = cluster.exec_ok(
        host,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "-p",
            "ActiveEnterTimestampMonotonic",
            unit,
        ],
    )?;
    let value = |key: &str| {
        show.lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::to_string)
            .with_context(|| format!("{key} missing in {show}"))
    };
    Ok(UnitRun {
        main_pid: value("MainPID=")?,
        active_since: value("ActiveEnterTimestampMonotonic=")?,
    })
}

fn exists(cluster: &Cluster, host: &str, path: &str) -> anyhow::Result<bool> {
    Ok(cluster.exec(host, &["test", "-e", path])?.status.success())
}

/// Every link to a fleet unit under /etc/systemd/system (enablement), one per line.
fn fleet_links(cluster: &Cluster, host: &str) -> anyhow::Result<String> {
    cluster.exec_ok(
        host,
        &[
            "find",
            "/etc/systemd/system",
            "-name",
            "fleet.s*",
            "-printf",
            "%p\n",
        ],
    )
}

/// `scripts/install.sh --package DEB --etcd URL` on a host without fleet, run from a copy of
/// the script and the sample it needs: fleet.conf is written (0600, with the etcd) before
/// `dpkg -i`, fleet starts and the machine is listed again.
fn install_sh_starts_fleet_named_etcd(
    cluster: &Cluster,
    host: &str,
    deb: &Path,
) -> anyhow::Result<()> {
    let src = cluster.host_root(host).join("root/src");
    fs::create_dir_all(src.join("scripts"))?;
    fs::create_dir_all(src.join("packaging"))?;
    let workspace = workspace_root();
    for file in ["scripts/install.sh", "packaging/fleet.conf.sample"] {
        fs::copy(workspace.join(file), src.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    cluster.exec_ok(
        host,
        &[
            "/root/src/scripts/install.sh",
            "--package",
            &deb_in_host(deb)?,
            "--etcd",
            cluster.etcd_url(),
            "--metadata",
            "installed=by-install-sh",
        ],
    )?;
    let stat = cluster.exec_ok(host, &["stat", "-c", "%a", "/etc/fleet/fleet.conf"])?;
    assert_eq!(stat.trim(), "600");
    assert_eq!(unit_state(cluster, host, "fleet.service")?, "active");
    wait_listed(cluster, host)?;
    let machines = cluster.exec_ok(host, &[FLEETCTL, "list-machines", "--no-legend"])?;
    assert!(machines.contains("installed=by-install-sh"), "{machines}");
    Ok(())
}
