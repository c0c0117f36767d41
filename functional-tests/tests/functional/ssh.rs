//! fleetctl's SSH features against real sshd in the test hosts: `--tunnel` (unix and http
//! endpoints), host key checking (prompt, refusal, changed key), `ssh` (argument resolution,
//! command output, exit status), `status` and `journal` on another machine, and
//! `scripts/fleetctl-inject-ssh.sh`.
//!
//! Every fleetctl here runs with a test ssh-agent holding the harness key (which `core` and
//! `root` accept in every host) and its own known hosts file, never the user's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use functional_tests::{Cluster, bin_dir, wait_until, workspace_root};

/// The original's message when no agent is reachable.
const NO_AGENT: &str =
    "SSH_AUTH_SOCK environment variable is not set. Verify ssh-agent is running.";

/// A private ssh-agent, killed on drop.
pub(crate) struct Agent {
    child: Child,
    pub socket: PathBuf,
}

impl Agent {
    /// Starts `ssh-agent -D -a <dir>/agent.sock` and adds `keys`.
    pub fn start(dir: &Path, keys: &[&Path]) -> anyhow::Result<Agent> {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting ssh-agent (package openssh-client)")?;
        let agent = Agent { child, socket };
        wait_until(Duration::from_secs(10), "the ssh-agent socket", || {
            Ok(agent.socket.exists())
        })?;
        for key in keys {
            let output = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .stdin(Stdio::null())
                .output()?;
            if !output.status.success() {
                bail!(
                    "ssh-add {} failed: {}",
                    key.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(agent)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one fleetctl run is set up.
struct Run<'a> {
    /// `SSH_AUTH_SOCK`, or none at all.
    agent: Option<&'a Agent>,
    known_hosts: &'a Path,
    /// What stdin carries; `None` is a closed stdin.
    stdin: Option<&'a str>,
}

/// fleetctl set up for `run`, with stdout and stderr piped and stdin not yet set.
fn fleetctl_command(run: &Run<'_>, args: &[&str]) -> Command {
    let mut command = Command::new(bin_dir().join("fleetctl"));
    command
        .arg("--known-hosts-file")
        .arg(run.known_hosts)
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        // The user's FLEETCTL_* settings must not leak into the tests.
        .env_remove("FLEETCTL_TUNNEL")
        .env_remove("FLEETCTL_ENDPOINT")
        .env_remove("FLEETCTL_SSH_USERNAME")
        .env_remove("FLEETCTL_STRICT_HOST_KEY_CHECKING")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(agent) = run.agent {
        command.env("SSH_AUTH_SOCK", &agent.socket);
    }
    command
}

fn fleetctl(run: &Run<'_>, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = fleetctl_command(run, args);
    command.stdin(if run.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command.spawn().context("running fleetctl")?;
    if let (Some(text), Some(mut stdin)) = (run.stdin, child.stdin.take()) {
        // fleetctl may exit without reading; a broken pipe is fine.
        let _ = stdin.write_all(text.as_bytes());
    }
    let output = child.wait_with_output()?;
    eprintln!(
        "fleetctl {}: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Boots `n_hosts` hosts with fleet, sshd up and the API socket usable by `core` (the SSH
/// user reaches `/var/run/fleet.sock` through the tunnel, like the original's `fd-forward`).
fn cluster_with_ssh(n_hosts: usize) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(n_hosts)?;
    for host in cluster.hosts() {
        cluster.install_fleet(host, &[])?;
        wait_until(Duration::from_secs(30), &format!("sshd in {host}"), || {
            let output = cluster.exec(host, &["systemctl", "is-active", "ssh.service"])?;
            Ok(stdout(&output).trim() == "active")
        })?;
        cluster.exec_ok(host, &["chgrp", "core", "/var/run/fleet.sock"])?;
    }
    Ok(cluster)
}

/// Waits until fleet lists `n` machines through `args` (an endpoint or a tunnel).
fn wait_for_machines(run: &Run<'_>, args: &[&str], n: usize) -> anyhow::Result<()> {
    let mut list = args.to_vec();
    list.extend(["list-machines", "--no-legend"]);
    wait_until(Duration::from_secs(30), &format!("{n} machines"), || {
        let output = fleetctl(run, &list)?;
        Ok(output.status.success() && stdout(&output).lines().count() == n)
    })
}

/// `--tunnel` with the API only on the bastion's unix socket, host key checking (unknown
/// host refused with stdin closed, accepted with `yes`, changed key refused), `ssh` through
/// the bastion (output, exit status, resolution errors), an http endpoint through the tunnel,
/// a missing agent and an unreachable bastion.
#[test]
fn tunnel_host_keys_and_ssh() -> anyhow::Result<()> {
    let cluster = cluster_with_ssh(2)?;
    let dir = tempfile::tempdir()?;
    let key = cluster.ssh_key()?;
    let agent = Agent::start(dir.path(), &[&key])?;
    let known_hosts = dir.path().join("fleetctl").join("known_hosts");
    let h1 = cluster.ip("h1")?;
    let h2 = cluster.ip("h2")?;
    let h2_id = cluster.machine_id("h2")?;
    let closed = Run {
        agent: Some(&agent),
        known_hosts: &known_hosts,
        stdin: None,
    };
    let tunnel = ["--tunnel", h1.as_str()];

    // No agent: the original's message, nothing attempted.
    let no_agent = Run {
        agent: None,
        ..closed
    };
    let output = fleetctl(&no_agent, &["--tunnel", &h1, "list-machines"])?;
    assert!(!output.status.success());
    assert!(stderr(&output).contains(NO_AGENT), "{}", stderr(&output));

    // Unknown bastion, stdin closed: the prompt, then refusal; nothing recorded.
    let output = fleetctl(&closed, &["--tunnel", &h1, "list-machines"])?;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "The authenticity of host '{h1}' can't be established."
        )),
        "{err}"
    );
    assert!(
        err.contains("Are you sure you want to continue connecting (yes/no)? "),
        "{err}"
    );
    assert!(err.contains("Host key verification failed."), "{err}");
    assert!(!known_hosts.exists(), "a refused key was recorded");

    // "yes": recorded (file 0644 in a 0700 directory), and the API answers through the tunnel.
    let yes = Run {
        stdin: Some("yes\n"),
        ..closed
    };
    let output = fleetctl(&yes, &["--tunnel", &h1, "list-machines", "--no-legend"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!(
            "Warning: Permanently added '{h1}' (ED25519) to the list of known hosts."
        )),
        "{}",
        stderr(&output)
    );
    let recorded = std::fs::read_to_string(&known_hosts)?;
    assert!(
        recorded.starts_with(&format!("{h1} ssh-ed25519 ")),
        "{recorded}"
    );
    // Known now: no prompt, stdin closed is fine.
    wait_for_machines(&closed, &tunnel, 2)?;
    let output = fleetctl(&closed, &["--tunnel", &h1, "list-machines", "--full"])?;
    assert!(output.status.success());
    assert!(stdout(&output).contains(&h2_id), "{}", stdout(&output));
    assert!(
        !stderr(&output).contains("authenticity"),
        "prompted for a known host"
    );

    // An http endpoint through the tunnel (reachable from the bastion only as far as fleetctl
    // is concerned: the request goes through h1).
    let endpoint = format!("http://{h2}:{}", functional_tests::API_PORT);
    let output = fleetctl(
        &closed,
        &["--tunnel", &h1, "--endpoint", &endpoint, "list-machines"],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 3, "{}", stdout(&output));

    // ssh through the bastion to h2 by machine ID prefix: h2's key is new, accept it.
    let prefix = &h2_id[..8];
    let output = fleetctl(&yes, &["--tunnel", &h1, "ssh", prefix, "--", "hostname"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "h2");
    let output = fleetctl(
        &closed,
        &["--tunnel", &h1, "ssh", prefix, "--", "sh", "-c", "exit 3"],
    )?;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    // The remote command line keeps arguments apart (Go %q quoting).
    let output = fleetctl(
        &closed,
        &[
            "--tunnel",
            &h1,
            "ssh",
            "--machine",
            prefix,
            "printf",
            "<%s>",
            "a b",
            "c",
        ],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "<a b><c>");

    // With a terminal on stdin, the remote command gets a PTY (`script` provides one).
    let fleetctl_bin = bin_dir().join("fleetctl");
    let line = format!(
        "{} --known-hosts-file {} --tunnel {h1} ssh {prefix} -- tty",
        fleetctl_bin.display(),
        known_hosts.display()
    );
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .stdin(Stdio::null())
        .output()
        .context("running script (package bsdutils)")?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("/dev/pts/"),
        "no PTY: {}",
        stdout(&output)
    );

    // Resolution errors.
    let output = fleetctl(
        &closed,
        &["--tunnel", &h1, "ssh", "--machine", "", "hostname"],
    )?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Unable to proceed: found more than one machine"),
        "{}",
        stderr(&output)
    );
    let output = fleetctl(
        &closed,
        &["--tunnel", &h1, "ssh", "zzzz-no-such", "hostname"],
    )?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Unable to proceed: could not find matching unit or machine"),
        "{}",
        stderr(&output)
    );

    // Direct (no tunnel): the API over TCP, ssh straight to h1.
    let h1_endpoint = cluster.endpoint("h1")?;
    let h1_id = cluster.machine_id("h1")?;
    let output = fleetctl(
        &closed,
        &[
            "--endpoint",
            &h1_endpoint,
            "ssh",
            &h1_id[..8],
            "--",
            "hostname",
        ],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "h1");

    // h2 gets a new host key: a changed key is refused with OpenSSH's warning.
    cluster.exec_ok(
        "h2",
        &[
            "sh",
            "-c",
            "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh.service",
        ],
    )?;
    let output = fleetctl(
        &yes,
        &["--endpoint", &h1_endpoint, "ssh", prefix, "--", "hostname"],
    )?;
    assert_eq!(output.status.code(), Some(255), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    assert!(err.contains("host key mismatch"), "{err}");
    assert!(!stdout(&output).contains("h2"));
    // Without strict checking, the changed key is not even looked at.
    let output = fleetctl(
        &closed,
        &[
            "--endpoint",
            &h1_endpoint,
            "--strict-host-key-checking=false",
            "ssh",
            prefix,
            "--",
            "hostname",
        ],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "h2");

    // An unreachable bastion: a clear message and a failure, within the SSH timeout.
    let output = fleetctl(
        &closed,
        &[
            "--tunnel",
            "10.231.0.250",
            "--ssh-timeout",
            "2",
            "list-machines",
        ],
    )?;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("Unable to initialize client: failed initializing SSH client:")
            && err.contains("10.231.0.250"),
        "{err}"
    );
    Ok(())
}

/// `status` and `journal` of a unit fleet runs on another machine go over SSH (through the
/// bastion with `--tunnel`) and return the remote status.
#[test]
fn status_and_journal_over_ssh() -> anyhow::Result<()> {
    let cluster = cluster_with_ssh(2)?;
    let dir = tempfile::tempdir()?;
    let key = cluster.ssh_key()?;
    let agent = Agent::start(dir.path(), &[&key])?;
    let known_hosts = dir.path().join("known_hosts");
    let h1 = cluster.ip("h1")?;
    let h2_id = cluster.machine_id("h2")?;
    let endpoint = cluster.endpoint("h1")?;
    // Two questions at most: the bastion h1, then h2 behind it.
    let yes = Run {
        agent: Some(&agent),
        known_hosts: &known_hosts,
        stdin: Some("yes\nyes\n"),
    };
    wait_for_machines(&yes, &["--endpoint", &endpoint], 2)?;

    let unit = dir.path().join("ssh-probe.service");
    std::fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=SSH probe\n\n[Service]\nExecStart=/bin/sh -c 'echo ssh-probe-says-hello; while true; do echo ssh-probe-tick; sleep 1; done'\n\n[X-Fleet]\nMachineID={h2_id}\n"
        ),
    )?;
    let unit_path = unit.to_string_lossy().into_owned();
    let output = fleetctl(
        &yes,
        &[
            "--endpoint",
            &endpoint,
            "start",
            "--block-attempts=15",
            &unit_path,
        ],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));

    // h1 and h2 are unknown: both questions are answered yes; h2 is reached through h1.
    let output = fleetctl(&yes, &["--tunnel", &h1, "status", "ssh-probe.service"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.contains("ssh-probe.service") && out.contains("active (running)"),
        "{out}"
    );

    // `ssh --unit` goes to the unit's machine.
    let output = fleetctl(
        &yes,
        &[
            "--endpoint",
            &endpoint,
            "ssh",
            "--unit",
            "ssh-probe.service",
            "hostname",
        ],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "h2");

    // core may not read the system journal; --sudo (passwordless in the test hosts) can.
    wait_until(Duration::from_secs(10), "the probe's journal line", || {
        let output = fleetctl(
            &yes,
            &[
                "--endpoint",
                &endpoint,
                "journal",
                "--sudo",
                "--lines",
                "20",
                "ssh-probe",
            ],
        )?;
        Ok(output.status.success() && stdout(&output).contains("ssh-probe-says-hello"))
    })?;

    // `journal -f` streams new lines until interrupted: the probe prints a tick every second
    // and `--lines 0` shows only what is written after the journal started.
    let quiet = Run {
        agent: Some(&agent),
        known_hosts: &known_hosts,
        stdin: None,
    };
    let follow_args = [
        "--endpoint",
        &endpoint,
        "journal",
        "-f",
        "--sudo",
        "--lines",
        "0",
        "ssh-probe",
    ];
    let mut follow = fleetctl_command(&quiet, &follow_args)
        .stdin(Stdio::null())
        .spawn()
        .context("running fleetctl journal -f")?;
    let result = count_streamed_ticks(&mut follow, 2, Duration::from_secs(20));
    // Interrupted as Ctrl-C would, it ends.
    let _ = Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status();
    let ended = wait_until(
        Duration::from_secs(10),
        "journal -f to end on SIGINT",
        || Ok(follow.try_wait()?.is_some()),
    );
    if ended.is_err() {
        let _ = follow.kill();
        let _ = follow.wait();
    }
    result?;
    ended?;
    Ok(())
}

/// Reads `child`'s stdout until `n` probe ticks arrived, or fails after `within`.
fn count_streamed_ticks(child: &mut Child, n: usize, within: Duration) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().context("the journal's stdout")?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    // The reader ends by itself when the child's stdout closes.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + within;
    let mut ticks = 0;
    while ticks < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) if line.contains("ssh-probe-tick") => ticks += 1,
            Ok(_) => {}
            Err(_) => bail!("journal -f streamed {ticks} of {n} new lines within {within:?}"),
        }
    }
    Ok(())
}

/// `scripts/fleetctl-inject-ssh.sh` authorizes a new key for core on every machine, once.
#[test]
fn inject_ssh_key_authorizes_a_key_everywhere() -> anyhow::Result<()> {
    let cluster = cluster_with_ssh(2)?;
    let dir = tempfile::tempdir()?;
    let new_key = dir.path().join("id_new");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "inject-test", "-f"])
        .arg(&new_key)
        .status()?;
    assert!(status.success());
    let public_key = std::fs::read_to_string(dir.path().join("id_new.pub"))?;
    let endpoint = cluster.endpoint("h1")?;
    let inject = || -> anyhow::Result<Output> {
        let mut child = Command::new(workspace_root().join("scripts/fleetctl-inject-ssh.sh"))
            .args(["alice", "--endpoint", &endpoint])
            .env("FLEETCTL", bin_dir().join("fleetctl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(public_key.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    };
    // h1 keeps the harness's authorized_keys (the key is appended); h2 has none (the unit
    // creates the directory and the file).
    cluster.exec_ok("h2", &["rm", "-rf", "/home/core/.ssh"])?;
    let output = inject()?;
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    let line = public_key.trim();
    let count_in = |host: &str| -> anyhow::Result<usize> {
        let keys = cluster.exec_ok(host, &["cat", "/home/core/.ssh/authorized_keys"])?;
        Ok(keys.lines().filter(|l| l.trim() == line).count())
    };
    for host in ["h1", "h2"] {
        wait_until(
            Duration::from_secs(30),
            &format!("the key in {host}"),
            || Ok(count_in(host)? == 1),
        )?;
    }
    let modes = cluster.exec_ok(
        "h2",
        &[
            "stat",
            "-c",
            "%a %U",
            "/home/core/.ssh",
            "/home/core/.ssh/authorized_keys",
        ],
    )?;
    assert_eq!(modes, "700 core\n600 core\n");
    let harness_key = std::fs::read_to_string(format!("{}.pub", cluster.ssh_key()?.display()))?;
    let h1_keys = cluster.exec_ok("h1", &["cat", "/home/core/.ssh/authorized_keys"])?;
    assert!(
        h1_keys.contains(harness_key.trim()),
        "h1 lost its existing key"
    );

    // The new key alone now opens SSH to the machines.
    let agent = Agent::start(dir.path(), &[&new_key])?;
    let known_hosts = dir.path().join("known_hosts");
    let run = Run {
        agent: Some(&agent),
        known_hosts: &known_hosts,
        stdin: Some("yes\nyes\n"),
    };
    let h2_id = cluster.machine_id("h2")?;
    let output = fleetctl(
        &run,
        &["--endpoint", &endpoint, "ssh", &h2_id[..8], "hostname"],
    )?;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "h2");

    // Running it again adds nothing: the unit exists and the key is already there.
    let output = inject()?;
    assert!(output.status.success(), "{}", stderr(&output));
    cluster.exec_ok(
        "h1",
        &["systemctl", "restart", "fleet-inject-ssh-alice.service"],
    )?;
    assert_eq!(count_in("h1")?, 1);
    Ok(())
}

/// `fleetctl exec` on real hosts over SSH: every machine's output prefixed with its id, a
/// summary table, exit 1 when the command failed on one machine, selection by prefix and by
/// metadata, and a bad selection refused before anything runs.
#[test]
fn exec_runs_a_command_on_many_machines() -> anyhow::Result<()> {
    let cluster = cluster_with_ssh(2)?;
    let dir = tempfile::tempdir()?;
    let key = cluster.ssh_key()?;
    let agent = Agent::start(dir.path(), &[&key])?;
    let known_hosts = dir.path().join("known_hosts");
    let endpoint = cluster.endpoint("h1")?;
    let [h1, h2] = ["h1", "h2"].map(|host| cluster.machine_id(host));
    let (h1, h2) = (h1?, h2?);
    let run = Run {
        agent: Some(&agent),
        known_hosts: &known_hosts,
        stdin: None,
    };
    let exec = |args: &[&str]| {
        let mut all = vec![
            "--endpoint",
            endpoint.as_str(),
            "--strict-host-key-checking=false",
            "exec",
        ];
        all.extend_from_slice(args);
        fleetctl(&run, &all)
    };
    wait_for_machines(&run, &["--endpoint", &endpoint], 2)?;

    let output = exec(&["--all", "--parallel", "2", "--", "cat", "/etc/machine-id"])?;
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    for id in [&h1, &h2] {
        assert!(out.contains(&format!("{}...: {id}", &id[..8])), "{out}");
    }
    let summary: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("MACHINE"))
        .collect();
    assert_eq!(summary.len(), 3, "{out}");
    assert!(summary[1].split_whitespace().nth(1) == Some("0"), "{out}");

    // The command fails on h2 only: its status is in the table and fleetctl exits 1.
    let fail_on_h2 = format!("test \"$(cat /etc/machine-id)\" != {h2} || exit 3");
    let output = exec(&[
        "--machines",
        &format!("{},{}", &h1[..8], &h2[..8]),
        "--",
        "sh",
        "-c",
        &fail_on_h2,
    ])?;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let out = stdout(&output);
    let row = out
        .lines()
        .find(|line| line.starts_with(&h2[..8]))
        .context("no summary row for h2")?;
    assert_eq!(row.split_whitespace().nth(1), Some("3"), "{out}");

    // No machine matches: refused, nothing runs.
    let output = exec(&["--metadata", "role=nothing", "--", "true"])?;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no machine matches the selection"),
        "{}",
        stderr(&output)
    );
    Ok(())
}
