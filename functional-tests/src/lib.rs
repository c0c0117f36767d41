//! The functional-test harness: a real etcd and real systemd hosts, driven from Rust.
//!
//! [`Cluster`] wraps `scripts/testhosts.sh`: it starts etcd and N `systemd-nspawn` hosts
//! (`h1`..`hN` at `10.231.0.11`..), installs fleetd in them on request, runs commands inside
//! them, breaks them on purpose, and tears everything down on drop, also when a test panics.
//!
//! The bridge, the address range and the cgroup directory of the test hosts are global to the
//! machine, so only one cluster can exist at a time. Every `Cluster` holds an exclusive
//! `flock` on [`LOCK_PATH`] for its whole life: tests running in parallel threads, or in
//! different test binaries, take turns. The tests' state dir ([`STATE_DIR`]) differs from the
//! demo's, so a test never tears down a demo cluster; it fails instead, saying how to clean up.
//!
//! Everything here needs root and the tools `scripts/setup.sh` installs.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod chaos;

/// The lock every cluster holds, so clusters in parallel tests take turns.
pub const LOCK_PATH: &str = "/run/fleet-testhosts.lock";

/// The state dir of test clusters (the demo uses the script's default, `/run/fleet-testhosts`).
pub const STATE_DIR: &str = "/run/fleet-testhosts-tests";

/// The TCP port fleetd's API listens on in every host (`fleet-tcp.socket`).
pub const API_PORT: u16 = 54728;

/// How often [`wait_until`] polls (the original harness polled every 250 ms).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Tools the harness runs, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("nsenter", "util-linux"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("iptables", "iptables"),
    ("curl", "curl"),
    ("ssh-keygen", "openssh-client"),
];

/// A running test cluster: one etcd (1 or 3 members) and N systemd hosts.
///
/// Dropping it stops and removes everything (and, if the thread is panicking, first saves
/// every host's journal under `target/functional-logs/`).
pub struct Cluster {
    /// Comma-separated client URLs of etcd, as the hosts reach it (`http://10.231.0.1:<port>`).
    etcd_url: String,
    /// Host names, `h1`..`hN`.
    hosts: Vec<String>,
    /// Held until drop (after cleanup): the flock that serialises clusters.
    _lock: File,
}

impl Cluster {
    /// Starts etcd (one member) and `n_hosts` hosts, after removing what a previous run left.
    ///
    /// Blocks until no other cluster exists on this machine.
    ///
    /// # Errors
    /// Not root, a missing tool (the message says to run `scripts/setup.sh`), another cluster
    /// (e.g. the demo's) owning the bridge, or any step of the set-up failing.
    pub fn start(n_hosts: usize) -> anyhow::Result<Cluster> {
        Self::start_with(n_hosts, 1)
    }

    /// Like [`Cluster::start`] with an etcd of `etcd_members` members (1 or 3).
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_with(n_hosts: usize, etcd_members: usize) -> anyhow::Result<Cluster> {
        check_prerequisites()?;
        let lock = take_lock()?;
        // A killed earlier run may have left hosts behind; cleanup is idempotent.
        testhosts(["cleanup"])?;
        let mut cluster = Cluster {
            etcd_url: String::new(),
            hosts: (1..=n_hosts).map(|idx| format!("h{idx}")).collect(),
            _lock: lock,
        };
        // From here on, Drop cleans up whatever part was started.
        testhosts(["rootfs"])?;
        let members = etcd_members.to_string();
        cluster.etcd_url = testhosts(["etcd", "start", "--members", &members])?
            .trim()
            .to_string();
        if n_hosts > 0 {
            testhosts(["boot", &n_hosts.to_string()])?;
        }
        Ok(cluster)
    }

    /// Host names, `h1`..`hN`.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The etcd client URL(s) the hosts use, comma-separated.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The host's address, e.g. `10.231.0.11` for `h1`.
    ///
    /// # Errors
    /// A bad host name.
    pub fn ip(&self, host: &str) -> anyhow::Result<String> {
        Ok(testhosts(["ip", host])?.trim().to_string())
    }

    /// The host's machine id (32 hex digits).
    ///
    /// # Errors
    /// A host that was never booted.
    pub fn machine_id(&self, host: &str) -> anyhow::Result<String> {
        Ok(testhosts(["machine-id", host])?.trim().to_string())
    }

    /// The fleet API endpoint of the host, `http://<ip>:54728`.
    ///
    /// # Errors
    /// A bad host name.
    pub fn endpoint(&self, host: &str) -> anyhow::Result<String> {
        Ok(format!("http://{}:{API_PORT}", self.ip(host)?))
    }

    /// The host's system bus address, usable from outside the host.
    ///
    /// # Errors
    /// A bad host name.
    pub fn bus(&self, host: &str) -> anyhow::Result<String> {
        Ok(testhosts(["bus", host])?.trim().to_string())
    }

    /// The host's root filesystem as seen from outside (its overlay mount): files written
    /// here appear in the host at once.
    pub fn host_root(&self, host: &str) -> PathBuf {
        Path::new(STATE_DIR).join("hosts").join(host).join("root")
    }

    /// The private key `root` and `core` in every host accept over SSH.
    ///
    /// # Errors
    /// The key could not be created.
    pub fn ssh_key(&self) -> anyhow::Result<PathBuf> {
        Ok(PathBuf::from(testhosts(["ssh-key"])?.trim()))
    }

    /// Configures and starts fleetd in `host`: `/etc/fleet/fleet.conf` with this cluster's
    /// etcd, the host's `public_ip`, `metadata=hostname=<host>`, plus `extra_conf` lines
    /// (e.g. `"agent_ttl=3s"`); the packaged `fleet.service` and `fleet.socket` and a
    /// `fleet-tcp.socket` on `<ip>:54728`.
    ///
    /// # Errors
    /// fleetd not built, packaging files missing, or systemd failing to start fleet.
    pub fn install_fleet(&self, host: &str, extra_conf: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["install-fleet", host, self.etcd_url.as_str()];
        args.extend_from_slice(extra_conf);
        testhosts(args)?;
        Ok(())
    }

    /// [`Cluster::install_fleet`] without `etcd_servers`: `extra_conf` says how fleetd finds
    /// etcd (`etcd_discovery_srv=...`).
    ///
    /// # Errors
    /// As [`Cluster::install_fleet`].
    pub fn install_fleet_without_etcd_servers(
        &self,
        host: &str,
        extra_conf: &[&str],
    ) -> anyhow::Result<()> {
        let mut args = vec!["install-fleet", host, "none"];
        args.extend_from_slice(extra_conf);
        testhosts(args)?;
        Ok(())
    }

    /// Runs `cmd` inside `host` (all of its namespaces) and returns its output, whatever its
    /// exit status.
    ///
    /// # Errors
    /// The command could not be run at all (e.g. the host is down).
    pub fn exec(&self, host: &str, cmd: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["exec", host];
        args.extend_from_slice(cmd);
        run_output(testhosts_command(args))
    }

    /// Runs `cmd` inside `host` and returns its stdout, failing if it exits non-zero.
    ///
    /// # Errors
    /// The command failed; the error has its stderr.
    pub fn exec_ok(&self, host: &str, cmd: &[&str]) -> anyhow::Result<String> {
        let output = self.exec(host, cmd)?;
        if !output.status.success() {
            bail!(
                "`{}` in {host} failed ({}): {}{}",
                cmd.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `target/debug/fleetctl` (or `$FLEET_BINDIR/fleetctl`) on the outer machine with
    /// `args`, returning its output whatever its exit status. Pass `--endpoint` yourself
    /// (see [`Cluster::endpoint`]).
    ///
    /// # Errors
    /// fleetctl is not built or could not be run.
    pub fn fleetctl<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let fleetctl = bin_dir().join("fleetctl");
        if !fleetctl.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace` first",
                fleetctl.display()
            );
        }
        let mut command = Command::new(&fleetctl);
        command.args(args).stdin(Stdio::null());
        run_output(command)
    }

    /// Breaks `host` on purpose: `cut`/`uncut` (its link), `drop`/`undrop` (its traffic to
    /// etcd), `freeze`/`thaw` (all its processes), `kill` (crash), `stop` (clean shutdown).
    ///
    /// # Errors
    /// An unknown failure kind, or the action failed.
    pub fn break_host(&self, host: &str, how: &str) -> anyhow::Result<()> {
        testhosts(["break", host, how])?;
        Ok(())
    }

    /// Boots `host` again on its existing filesystem (stopping it first if it runs); with
    /// `new_id` it gets a new machine id and SSH host key, as a replaced machine would.
    /// Waits until systemd in the host is up. fleet, once installed, starts on boot.
    ///
    /// # Errors
    /// The host did not come up.
    pub fn boot_one(&self, host: &str, new_id: bool) -> anyhow::Result<()> {
        if new_id {
            testhosts(["boot-one", host, "--new-id"])?;
        } else {
            testhosts(["boot-one", host])?;
        }
        Ok(())
    }

    /// SIGKILLs etcd member `member` (1-based; only with 3 members).
    ///
    /// # Errors
    /// The script failed.
    pub fn etcd_kill_member(&self, member: usize) -> anyhow::Result<()> {
        testhosts(["etcd", "kill-member", &member.to_string()])?;
        Ok(())
    }

    /// Restarts etcd member `member` with its data dir.
    ///
    /// # Errors
    /// The script failed.
    pub fn etcd_start_member(&self, member: usize) -> anyhow::Result<()> {
        testhosts(["etcd", "start-member", &member.to_string()])?;
        Ok(())
    }

    /// Saves each host's journal to `target/functional-logs/<test>-<host>.log`.
    fn save_journals(&self) {
        let dir = workspace_root().join("target").join("functional-logs");
        if fs::create_dir_all(&dir).is_err() {
            return;
        }
        // The default test harness names each test's thread after the test.
        let test_name = thread::current()
            .name()
            .unwrap_or("unnamed")
            .replace("::", "-");
        // The etcd members' own logs (a member that would not restart says why there).
        for member in 1..=3 {
            let log = Path::new(STATE_DIR)
                .join("etcd")
                .join(format!("s{member}.log"));
            let path = dir.join(format!("{test_name}-etcd{member}.log"));
            if fs::copy(&log, &path).is_ok() {
                eprintln!(
                    "functional-tests: etcd member {member}'s log saved to {}",
                    path.display()
                );
            }
        }
        for host in &self.hosts {
            let path = dir.join(format!("{test_name}-{host}.log"));
            if let Ok(output) =
                self.exec(host, &["journalctl", "--no-pager", "-o", "short-precise"])
                && fs::write(&path, &output.stdout).is_ok()
            {
                eprintln!(
                    "functional-tests: journal of {host} saved to {}",
                    path.display()
                );
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // FLEET_TEST_JOURNALS=1 keeps them for a test that passed or returned an error too.
        if thread::panicking() || std::env::var_os("FLEET_TEST_JOURNALS").is_some() {
            self.save_journals();
        }
        if let Err(error) = testhosts(["cleanup"]) {
            eprintln!("functional-tests: cleanup failed: {error:#}");
        }
    }
}

/// Polls `condition` every 250 ms until it returns `Ok(true)` or `deadline` has passed.
/// An `Err` from the condition counts as "not yet" and is reported if time runs out.
///
/// # Errors
/// The condition did not hold within `deadline`; the message names `what`.
pub fn wait_until<F>(deadline: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> anyhow::Result<bool>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if start.elapsed() >= deadline {
            return match last_error {
                Some(error) => {
                    Err(error.context(format!("timed out after {deadline:?} waiting for {what}")))
                }
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            };
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where fleetd and fleetctl are taken from: `$FLEET_BINDIR` or `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("FLEET_BINDIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target").join("debug"),
    }
}

fn check_prerequisites() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the functional tests need root (network namespaces, mounts, systemd-nspawn)");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // Root's tools live in sbin, which a test runner's PATH may lack.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !dirs.iter().any(|dir| dir.join(tool).is_file()))
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; run scripts/setup.sh",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Opens and exclusively locks [`LOCK_PATH`], waiting for any other cluster to finish.
fn take_lock() -> anyhow::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .with_context(|| format!("opening {LOCK_PATH}"))?;
    // flock locks belong to the open file, so two threads of one process exclude each other
    // too. EINTR is retried.
    loop {
        // SAFETY: the descriptor is valid for the life of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(file);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error).with_context(|| format!("locking {LOCK_PATH}"));
        }
    }
}

fn testhosts_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(workspace_root().join("scripts").join("testhosts.sh"));
    command
        .args(args)
        .env("FLEET_TESTHOSTS_DIR", STATE_DIR)
        .env("FLEET_BINDIR", bin_dir())
        .stdin(Stdio::null());
    command
}

/// Runs `testhosts.sh args...`, returning its stdout; its stderr goes to the test's output.
fn testhosts<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let command = testhosts_command(args);
    let description = format!("{command:?}");
    let output = run_output(command)?;
    // Shown by the test harness only when the test fails.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!(
            "{description} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_output(mut command: Command) -> anyhow::Result<Output> {
    command
        .output()
        .with_context(|| format!("running {command:?}"))
}
