//! The API's security against the real `fleetd` binary and a real etcd:
//! mTLS (no certificate: handshake refused; a read-only certificate lists
//! but cannot start; operate can start), bearer tokens and 401s over TLS,
//! the audit log, the `Host` check of plaintext loopback, the refusal of
//! plaintext on a non-loopback address, the body limit, and our `fleetctl`
//! with the original's flags (`--endpoint https://… --ca-file --cert-file
//! --key-file`). Certificates come from the shared test CA (`fleet_registry::testing::pki`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_api::client::{Client, ClientError, ClientTls, Endpoint};
use fleet_api::entities::{Unit, UnitOption};
use fleet_registry::testing::Etcd;
use fleet_registry::testing::pki::Pki;
use sha2::{Digest, Sha256};

use crate::daemon::Fleetd;
use crate::util::{free_port, machine_id_file, prefix, wait_for, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

/// The token of the access file's `ci` entry (role operate).
const CI_TOKEN: &str = "s3cret-ci-token";

/// A test CA and the PEM files it signed, in a temporary directory.
/// Client TLS options trusting `pki`'s CA, with a client certificate for
/// `common_name` if any.
fn client_tls(pki: &Pki, common_name: Option<&str>) -> ClientTls {
    let (cert_file, key_file) = match common_name {
        Some(name) => {
            let (cert, key) = pki.sign_client(name);
            (Some(cert), Some(key))
        }
        None => (None, None),
    };
    ClientTls {
        ca_file: Some(pki.ca_file()),
        cert_file,
        key_file,
    }
}

/// The access file of these tests, in the documented simplest form.
fn access_file(dir: &Path) -> PathBuf {
    let hash = hex::encode(Sha256::digest(CI_TOKEN.as_bytes()));
    let text = format!(
        "[roles]            # certificate common name = role\n\
         ops-admin = \"admin\"\n\
         ops-reader = \"read\"\n\
         ops-operator = \"operate\"\n\
         [tokens]           # \"sha256:<hex of the token>\" = {{ name = \"...\", role = \"...\" }}\n\
         \"sha256:{hash}\" = {{ name = \"ci\", role = \"operate\" }}\n"
    );
    let path = dir.join("access.toml");
    std::fs::write(&path, text).expect("writing the access file");
    path
}

/// A fleetd with TLS on 127.0.0.1:`port`; `client_ca` requires client certificates.
fn start_tls_fleetd(
    etcd: &Etcd,
    dir: &Path,
    pki: &Pki,
    port: u16,
    client_ca: bool,
    test: &str,
) -> Fleetd {
    let (cert, key) = pki.sign_server("fleetd-api", &["localhost", "127.0.0.1"]);
    let id_file = machine_id_file(dir, &format!("m-{test}"));
    let mut text = format!(
        "etcd_servers = {}\n\
         etcd_key_prefix = {}\n\
         machine_id_file = {}\n\
         disable_agent = true\n\
         disable_engine = true\n\
         api_listen = tcp://127.0.0.1:{port}\n\
         api_tls_cert_file = {}\n\
         api_tls_key_file = {}\n\
         api_access_file = {}\n",
        etcd.endpoint(),
        prefix(test),
        id_file.display(),
        cert.display(),
        key.display(),
        access_file(dir).display(),
    );
    if client_ca {
        text.push_str(&format!(
            "api_tls_client_ca_file = {}\n",
            pki.ca_file().display()
        ));
    }
    Fleetd::start(dir, &text, &[("RUST_LOG", "info")])
}

fn https_client(port: u16, tls: &ClientTls) -> Client {
    let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).expect("endpoint");
    Client::with_tls(endpoint, tls)
        .expect("client TLS files load")
        .with_timeout(Some(Duration::from_secs(5)))
}

fn hello_unit(name: &str, desired_state: &str) -> Unit {
    Unit {
        name: name.to_owned(),
        desired_state: desired_state.to_owned(),
        options: vec![UnitOption {
            section: "Service".into(),
            name: "ExecStart".into(),
            value: "/bin/sleep 1000".into(),
        }],
        ..Unit::default()
    }
}

/// Waits until the API answers `client` with anything but a transport error
/// or a 503 (fleetd registers itself first).
async fn wait_serving(client: &Client, fleetd: &mut Fleetd) {
    wait_until(DEADLINE, "the API serves over TLS", || async {
        match client.machines().await {
            Ok(_) => true,
            Err(error) => error.status().is_some_and(|code| code != 503),
        }
    })
    .await;
    assert!(
        fleetd.is_running(),
        "fleetd exited; its log:\n{}",
        fleetd.log()
    );
}

fn api_status(result: Result<(), ClientError>) -> Option<u16> {
    result.err().and_then(|error| error.status())
}

#[tokio::test]
async fn mtls_roles_decide_who_may_start_units() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let port = free_port();
    let mut fleetd = start_tls_fleetd(&etcd, dir.path(), &pki, port, true, "mtls");

    let admin = https_client(port, &client_tls(&pki, Some("ops-admin")));
    wait_serving(&admin, &mut fleetd).await;

    // No certificate: the handshake fails, nothing reaches HTTP.
    let anonymous = https_client(port, &client_tls(&pki, None));
    match anonymous.units().await {
        Err(ClientError::Transport { detail, .. }) => assert!(
            detail.contains("the API requires a client certificate"),
            "the refusal is not explained: {detail}"
        ),
        other => panic!("a client without a certificate got {other:?}"),
    }

    // read: lists, cannot create or start (403 with the API's error body).
    let reader = https_client(port, &client_tls(&pki, Some("ops-reader")));
    reader.units().await.expect("a reader lists units");
    let denied = reader
        .create_unit(&hello_unit("hello.service", "launched"))
        .await;
    match denied {
        Err(ClientError::Api { code: 403, message }) => assert!(
            message.contains("cert:ops-reader has role read"),
            "{message}"
        ),
        other => panic!("a reader's PUT got {other:?}"),
    }

    // A certificate from the CA whose name has no role: 403 even for reads.
    let stranger = https_client(port, &client_tls(&pki, Some("stranger")));
    match stranger.units().await {
        Err(ClientError::Api { code: 403, message }) => {
            assert!(message.contains("cert:stranger has no role"), "{message}");
        }
        other => panic!("a certificate without a role got {other:?}"),
    }

    // operate: creates and starts; cannot change machine metadata (admin).
    let operator = https_client(port, &client_tls(&pki, Some("ops-operator")));
    operator
        .create_unit(&hello_unit("hello.service", "loaded"))
        .await
        .expect("an operator creates a unit");
    operator
        .set_unit_target_state("hello.service", fleet_registry::TargetState::Launched)
        .await
        .expect("an operator starts a unit");
    let unit = admin
        .unit("hello.service")
        .await
        .expect("reads the unit")
        .expect("the unit exists");
    assert_eq!(unit.desired_state, "launched");
    assert_eq!(
        api_status(reader.destroy_unit("hello.service").await),
        Some(403)
    );
    // Many PUTs in one request need the role of a PUT.
    let batch = [hello_unit("batch.service", "loaded")];
    assert_eq!(
        api_status(reader.put_units(&batch).await.map(drop)),
        Some(403)
    );
    let results = operator
        .put_units(&batch)
        .await
        .expect("an operator sends a batch");
    assert_eq!(results[0].code, 201, "{results:?}");

    // Every mutating request is in the audit log once, with who and what.
    wait_until(DEADLINE, "the audit lines are logged", || async {
        let log = fleetd.log();
        log.contains("fleet::audit")
            && log.contains("identity=cert:ops-operator role=operate method=PUT path=/fleet/v1/units/hello.service status=201")
            && log.contains("identity=cert:ops-reader role=none method=PUT path=/fleet/v1/units/hello.service status=403")
    })
    .await;
    let audit_lines = fleetd
        .log()
        .lines()
        .filter(|line| line.contains("fleet::audit") && line.contains("method=PUT"))
        .count();
    assert_eq!(audit_lines, 3, "{}", fleetd.log());
}

#[tokio::test]
async fn tokens_over_tls_and_401_without_credentials() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let port = free_port();
    let mut fleetd = start_tls_fleetd(&etcd, dir.path(), &pki, port, false, "token");
    let tls = client_tls(&pki, None);
    let ci = https_client(port, &tls).with_token(Some(CI_TOKEN.to_owned()));
    wait_serving(&ci, &mut fleetd).await;

    // No credentials: 401 with the API's JSON error body.
    match https_client(port, &tls).units().await {
        Err(ClientError::Api { code: 401, message }) => {
            assert!(message.contains("credentials required"), "{message}");
        }
        other => panic!("no credentials got {other:?}"),
    }
    // A token that is not in the file: 401.
    let wrong = https_client(port, &tls).with_token(Some("guess".to_owned()));
    assert_eq!(
        wrong.units().await.err().and_then(|e| e.status()),
        Some(401)
    );

    // The ci token (operate) creates and starts.
    ci.create_unit(&hello_unit("web.service", "launched"))
        .await
        .expect("the ci token creates and starts a unit");
    let listed = ci.units().await.expect("the ci token lists");
    assert_eq!(listed.len(), 1);

    // A body above etcd's request limit is a 413 that names the limit, also
    // when the body is larger than the sockets' buffers (the server reads it
    // to the end before answering, so the client is not cut off mid-write).
    for size in [1600 * 1024, 6 * 1024 * 1024] {
        let mut huge = hello_unit("huge.service", "loaded");
        huge.options[0].value = "x".repeat(size);
        match ci.create_unit(&huge).await {
            Err(ClientError::Api { code: 413, message }) => {
                assert!(message.contains("1.5 MiB"), "{message}");
            }
            other => panic!("an oversized unit ({size} bytes) got {other:?}"),
        }
    }
}

#[tokio::test]
async fn our_fleetctl_takes_the_original_tls_flags() {
    let fleetctl = fleetctl_binary();
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let port = free_port();
    let mut fleetd = start_tls_fleetd(&etcd, dir.path(), &pki, port, true, "flags");
    let admin = client_tls(&pki, Some("ops-admin"));
    wait_serving(&https_client(port, &admin), &mut fleetd).await;
    let unit_file = dir.path().join("hello.service");
    std::fs::write(&unit_file, "[Service]\nExecStart=/bin/sleep 1000\n").expect("unit file");
    let endpoint = format!("https://127.0.0.1:{port}");
    let run = |common_name: &str, args: &[&str]| {
        let tls = client_tls(&pki, Some(common_name));
        let output = Command::new(&fleetctl)
            .args(["--endpoint", &endpoint, "--ca-file"])
            .arg(tls.ca_file.expect("ca"))
            .arg("--cert-file")
            .arg(tls.cert_file.expect("cert"))
            .arg("--key-file")
            .arg(tls.key_file.expect("key"))
            .args(args)
            .env_remove("FLEETCTL_ENDPOINT")
            .output()
            .expect("fleetctl runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run("ops-admin", &["submit", &unit_file.display().to_string()]);
    assert_eq!(code, Some(0), "submit: {stdout}{stderr}");
    let (code, stdout, stderr) = run("ops-reader", &["list-unit-files"]);
    assert_eq!(code, Some(0), "list-unit-files: {stderr}");
    assert!(stdout.contains("hello.service"), "{stdout}");
    // A reader's destroy is refused: the server's message, exit status 1.
    let (code, _, stderr) = run("ops-reader", &["destroy", "hello.service"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("has role read"), "{stderr}");
    drop(fleetd);
}

/// `fleetctl` next to the `fleetd` under test (scripts/test.sh builds the workspace first).
fn fleetctl_binary() -> PathBuf {
    let fleetd = PathBuf::from(env!("CARGO_BIN_EXE_fleetd"));
    let path = fleetd.with_file_name("fleetctl");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p fleetctl`",
        path.display()
    );
    path
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback_and_checks_host_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-plain");
    // Nothing listens on this etcd: the refusal comes before etcd matters.
    let base = format!(
        "etcd_servers = http://127.0.0.1:{}\nmachine_id_file = {}\ndisable_agent = true\n",
        free_port(),
        id_file.display()
    );
    let open = format!("{base}api_listen = tcp://0.0.0.0:{}\n", free_port());
    let mut refused = Fleetd::start(dir.path(), &open, &[]);
    let status = refused.wait_exit().await;
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains("refusing to serve the API in plaintext")
            && log.contains("api_insecure_tcp=true"),
        "{log}"
    );

    // On loopback, plaintext serves, but only to loopback Host names.
    let port = free_port();
    let loopback = format!("{base}api_listen = tcp://127.0.0.1:{port}\n");
    let _fleetd = Fleetd::start(dir.path(), &loopback, &[]);
    let address = format!("127.0.0.1:{port}");
    let answer = |host: &'static str| {
        let address = address.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(&address).await.ok()?;
            crate::util::http_get_with_host(stream, "/fleet/v1/machines", host)
                .await
                .ok()
        }
    };
    let (status, body) = wait_for(DEADLINE, "fleetd answers on loopback", || {
        answer("evil.example.com")
    })
    .await;
    assert_eq!(status, 421, "{body}");
    assert!(
        body.contains("\"code\":421") && body.contains("loopback"),
        "{body}"
    );
    // etcd is unreachable, so a loopback Host gets the API's 503, not a 421.
    let (status, _) = answer("localhost:4001").await.expect("answers");
    assert_eq!(status, 503);
}

/// `api_idle_timeout`: a keep-alive connection that got its answer and then sends nothing is
/// closed by fleetd, and so is one that never sends a request.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = machine_id_file(dir.path(), "m-idle");
    let port = free_port();
    // Nothing listens on this etcd: the API answers 503, which is answer enough.
    let conf = format!(
        "etcd_servers = http://127.0.0.1:{}\nmachine_id_file = {}\ndisable_agent = true\n\
         api_listen = tcp://127.0.0.1:{port}\napi_idle_timeout = 1\n",
        free_port(),
        id_file.display()
    );
    let _fleetd = Fleetd::start(dir.path(), &conf, &[]);
    let address = format!("127.0.0.1:{port}");
    let mut answered = wait_for(DEADLINE, "fleetd accepts a connection", || async {
        tokio::net::TcpStream::connect(&address).await.ok()
    })
    .await;
    let silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");

    // HTTP/1.1 keeps the connection alive unless told otherwise.
    answered
        .write_all(b"GET /fleet/v1/machines HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("sends a request");
    for (name, mut stream) in [("answered", answered), ("silent", silent)] {
        let mut received = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "the {name} idle connection was not closed: {read:?}"
        );
        if name == "answered" {
            assert!(
                received.starts_with(b"HTTP/1.1 "),
                "no answer before the close: {:?}",
                String::from_utf8_lossy(&received)
            );
        }
    }
}
