//! The real `fleetd` binary: command line, config errors, the API on unix
//! and TCP listeners (503 until registered), and a graceful SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use fleet_registry::Registry;
use fleet_registry::testing::Etcd;

use crate::util::{
    free_port, get_tcp, get_unix, machine_id_file, machine_ids, prefix, wait_for, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A running fleetd, killed on drop; its stderr goes to a file.
pub(crate) struct Fleetd {
    child: Child,
    log: PathBuf,
}

impl Fleetd {
    pub(crate) fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Fleetd {
        let config_path = dir.join("fleet.conf");
        std::fs::write(&config_path, config).expect("writing fleet.conf");
        let log = dir.join("fleetd.log");
        let stderr = std::fs::File::create(&log).expect("creating the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fleetd"))
            .arg("-config")
            .arg(&config_path)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting fleetd");
        Fleetd { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for fleetd") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "fleetd did not exit; its log:\n{}",
                self.log()
            );
            // Polling a child process; there is no async wait on std's Child.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Fleetd {
    fn drop(&mut self) {
        // Already exited is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads sd_notify datagrams until one contains `line`.
async fn wait_for_notification(socket: &tokio::net::UnixDatagram, line: &str) {
    let mut buffer = vec![0; 4096];
    let received = tokio::time::timeout(DEADLINE, async {
        loop {
            let len = socket
                .recv(&mut buffer)
                .await
                .expect("receiving a notification");
            if String::from_utf8_lossy(&buffer[..len])
                .lines()
                .any(|received| received == line)
            {
                return;
            }
        }
    })
    .await;
    assert!(received.is_ok(), "fleetd never notified {line}");
}

pub(crate) fn config(
    etcd_servers: &str,
    key_prefix: &str,
    id_file: &Path,
    socket: &Path,
    port: u16,
) -> String {
    format!(
        "# written by fleetd's integration tests\n\
         etcd_servers = {etcd_servers}\n\
         etcd_key_prefix = {key_prefix}\n\
         machine_id_file = {}\n\
         disable_agent = true\n\
         disable_engine = true\n\
         agent_ttl = 2s\n\
         public_ip = 10.0.0.2\n\
         metadata = \"role=api,az=a\"\n\
         api_listen = unix://{},tcp://127.0.0.1:{port}\n",
        id_file.display(),
        socket.display()
    )
}

#[tokio::test]
async fn answers_503_while_etcd_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fleet.sock");
    let port = free_port();
    let id_file = machine_id_file(dir.path(), "m-503");
    let text = config(
        "http://127.0.0.1:1",
        "/unreachable/",
        &id_file,
        &socket,
        port,
    );
    let fleetd = Fleetd::start(dir.path(), &text, &[]);
    let address = format!("127.0.0.1:{port}");
    let (status, body) = wait_for(DEADLINE, "fleetd answers on TCP", || {
        let address = address.clone();
        async move { get_tcp(&address, "/fleet/v1/machines").await.ok() }
    })
    .await;
    assert_eq!(status, 503, "{body}\nlog:\n{}", fleetd.log());
    assert!(
        body.contains("fleet server unable to communicate with etcd"),
        "{body}"
    );
    let (status, _) = get_unix(&socket, "/v1-alpha/units")
        .await
        .expect("answers on the unix socket");
    assert_eq!(status, 503);
}

#[tokio::test]
async fn serves_the_api_and_stops_cleanly_on_sigterm() {
    let etcd = Etcd::start().await;
    let key_prefix = prefix("daemon");
    let registry = Registry::connect(&etcd.config(&key_prefix))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fleet.sock");
    let port = free_port();
    let id_file = machine_id_file(dir.path(), "m-daemon");
    let text = config(&etcd.endpoint(), &key_prefix, &id_file, &socket, port);
    // Stand in for systemd's notify socket (Type=notify).
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("binding the notify socket");
    let notify_env = notify_path.display().to_string();
    let mut fleetd = Fleetd::start(
        dir.path(),
        &text,
        &[("RUST_LOG", "debug"), ("NOTIFY_SOCKET", &notify_env)],
    );

    wait_until(DEADLINE, "the machine is registered", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;
    wait_for_notification(&notify, "READY=1").await;
    let address = format!("127.0.0.1:{port}");
    let listing = wait_for(
        DEADLINE,
        "GET /fleet/v1/machines answers 200 over TCP",
        || {
            let address = address.clone();
            async move {
                match get_tcp(&address, "/fleet/v1/machines").await {
                    Ok((200, body)) => Some(body),
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(listing.contains("\"id\":\"m-daemon\""), "{listing}");
    assert!(listing.contains("\"primaryIP\":\"10.0.0.2\""), "{listing}");
    assert!(listing.contains("\"role\":\"api\""), "{listing}");
    let (status, body) = get_unix(&socket, "/fleet/v1/machines")
        .await
        .expect("answers on the unix socket");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("m-daemon"), "{body}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket)
            .expect("socket exists")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);

    fleetd.signal(libc::SIGTERM);
    wait_for_notification(&notify, "STOPPING=1").await;
    let status = fleetd.wait_exit().await;
    let log = fleetd.log();
    assert!(status.success(), "fleetd exited with {status}; log:\n{log}");
    assert!(!log.contains("Failed serving HTTP on listener"), "{log}");
    assert!(
        machine_ids(&registry).await.is_empty(),
        "the machine record is gone after SIGTERM; log:\n{log}"
    );
    assert!(
        !socket.exists(),
        "fleetd removes the socket file it created"
    );
}

#[tokio::test]
async fn sighup_reloads_and_keeps_serving() {
    let etcd = Etcd::start().await;
    let key_prefix = prefix("reload");
    let registry = Registry::connect(&etcd.config(&key_prefix))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fleet.sock");
    let port = free_port();
    let id_file = machine_id_file(dir.path(), "m-reload");
    let text = config(&etcd.endpoint(), &key_prefix, &id_file, &socket, port);
    let mut fleetd = Fleetd::start(dir.path(), &text, &[]);
    wait_until(DEADLINE, "the machine is registered", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;

    // A broken file on reload keeps the old config running.
    std::fs::write(
        dir.path().join("fleet.conf"),
        format!("{text}agent_ttl = soon\n"),
    )
    .expect("rewrite");
    fleetd.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the failed reload is logged", || async {
        fleetd.log().contains("keeping the old one")
    })
    .await;

    // A good file restarts the components with the new metadata, same listeners.
    std::fs::write(
        dir.path().join("fleet.conf"),
        text.replace("role=api", "role=reloaded"),
    )
    .expect("rewrite");
    fleetd.signal(libc::SIGHUP);
    let id = "m-reload".parse().expect("valid id");
    wait_until(
        DEADLINE,
        "the machine is published with the new metadata",
        || async {
            registry
                .machine(&id)
                .await
                .ok()
                .flatten()
                .is_some_and(|machine| {
                    machine.metadata.get("role").map(String::as_str) == Some("reloaded")
                })
        },
    )
    .await;
    let log = fleetd.log();
    assert!(log.contains("Reloading configuration from"), "{log}");
    assert!(log.contains("Restarting server components"), "{log}");
    let address = format!("127.0.0.1:{port}");
    wait_until(DEADLINE, "the same TCP listener serves the new router", || {
        let address = address.clone();
        async move { matches!(get_tcp(&address, "/fleet/v1/machines").await, Ok((200, body)) if body.contains("reloaded")) }
    })
    .await;
    fleetd.signal(libc::SIGTERM);
    assert!(fleetd.wait_exit().await.success(), "log:\n{}", fleetd.log());
}

#[tokio::test]
async fn a_broken_config_value_is_fatal_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-broken");
    let mut fleetd = Fleetd::start(
        dir.path(),
        &format!(
            "machine_id_file = {}\ntoken_limit = lots\n",
            id_file.display()
        ),
        &[],
    );
    let status = fleetd.wait_exit().await;
    let log = fleetd.log();
    assert!(!status.success());
    assert!(
        log.contains("token_limit") && log.contains("\"lots\""),
        "{log}"
    );

    let mut fleetd = Fleetd::start(dir.path(), "", &[("FLEET_AGENT_TTL", "thirty")]);
    let status = fleetd.wait_exit().await;
    assert!(!status.success());
    assert!(fleetd.log().contains("agent_ttl"), "{}", fleetd.log());

    let mut fleetd = Fleetd::start(dir.path(), "this is not ini\n", &[]);
    assert!(!fleetd.wait_exit().await.success());
    assert!(
        fleetd.log().contains("iniparser: syntax error at ':1'."),
        "{}",
        fleetd.log()
    );

    let missing_id = dir.path().join("no-such-machine-id");
    let mut fleetd = Fleetd::start(
        dir.path(),
        &format!("machine_id_file = {}\n", missing_id.display()),
        &[],
    );
    assert!(!fleetd.wait_exit().await.success());
    assert!(
        fleetd
            .log()
            .contains("unable to determine local machine ID"),
        "{}",
        fleetd.log()
    );
}

#[test]
fn command_line() {
    let fleetd = env!("CARGO_BIN_EXE_fleetd");
    let output = Command::new(fleetd).arg("version").output().expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("fleetd version {}\n", fleetd::machine::VERSION)
    );
    let output = Command::new(fleetd)
        .arg("--version")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let output = Command::new(fleetd)
        .arg("list-machines")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("fleetd takes no arguments. Did you mean to invoke fleetctl instead?")
    );
    let missing = Command::new(fleetd)
        .args(["-config", "/nonexistent/fleet.conf"])
        .output()
        .expect("runs");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/fleet.conf"));
}

#[tokio::test]
async fn answers_503_while_etcd_is_gone_and_recovers() {
    let mut etcd = Etcd::start().await;
    let key_prefix = prefix("etcd-gone");
    let registry = Registry::connect(&etcd.config(&key_prefix))
        .await
        .expect("connects");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fleet.sock");
    let port = free_port();
    let id_file = machine_id_file(dir.path(), "m-etcd-gone");
    let text = config(&etcd.endpoint(), &key_prefix, &id_file, &socket, port);
    let fleetd = Fleetd::start(dir.path(), &text, &[]);
    let address = format!("127.0.0.1:{port}");
    let status_is = |expected: u16| {
        let address = address.clone();
        move || {
            let address = address.clone();
            async move {
                matches!(get_tcp(&address, "/fleet/v1/machines").await, Ok((status, _)) if status == expected)
            }
        }
    };
    wait_until(DEADLINE, "the API answers 200", status_is(200)).await;

    etcd.stop();
    wait_until(DEADLINE, "fleetd reports the lost heartbeat", || async {
        fleetd
            .log()
            .contains("Server monitor triggered: Monitor timed out before successful heartbeat")
    })
    .await;
    wait_until(DEADLINE, "the API answers 503", status_is(503)).await;

    etcd.restart().await;
    wait_until(
        Duration::from_secs(40),
        "the API answers 200 again",
        status_is(200),
    )
    .await;
    wait_until(DEADLINE, "the machine is listed again", || async {
        machine_ids(&registry).await.len() == 1
    })
    .await;
}
