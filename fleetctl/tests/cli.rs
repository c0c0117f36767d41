//! Runs the built `fleetctl` binary: version, help, usage errors and their
//! exit codes, endpoint errors, `fd-forward`, and a few commands against a
//! scripted API server on a unix socket (a std thread that checks each
//! request line in order and answers it). The scripted server is not a stand-in
//! for fleetd: it pins the exact requests fleetctl sends (paths, query strings,
//! bodies, their order), which a real server would accept in several forms, so
//! a change in what fleetctl asks for shows here. What fleetctl does against a
//! real fleetd (and systemd) is tested in `functional-tests/`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `fleetctl` with a clean `FLEETCTL_*` environment.
fn fleetctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    for (name, _) in std::env::vars() {
        if name.starts_with("FLEETCTL_") {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

fn run(args: &[&str]) -> Output {
    fleetctl().args(args).output().expect("fleetctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that fleetctl exited with `code` and said `needle` on stderr.
#[track_caller]
fn assert_fails(output: &Output, code: i32, needle: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", stderr(output));
    assert!(stderr(output).contains(needle), "{}", stderr(output));
}

#[test]
fn version_in_every_spelling() {
    for args in [&["version"][..], &["--version"], &["-v"]] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert_eq!(
            stdout(&output),
            format!("fleetctl version {VERSION}\n"),
            "{args:?}"
        );
    }
}

#[test]
fn help_exits_zero_and_shows_the_version() {
    for args in [&["help"][..], &["--help"], &["-h"], &[]] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let text = stdout(&output);
        assert!(text.contains(VERSION), "{args:?}: {text}");
        assert!(text.contains("list-machines"), "{args:?}: {text}");
    }
    let output = run(&["help", "list-units"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains("--no-legend"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn unknown_commands_and_flags_fail() {
    let output = run(&["bogus"]);
    assert_fails(&output, 1, "bogus");

    let output = run(&["list-units", "--bogus"]);
    assert_fails(&output, 1, "--bogus");

    let output = run(&["list-u"]);
    assert_fails(&output, 1, "ambiguous command");
}

#[test]
fn unreachable_endpoint() {
    let output = run(&["--endpoint", "unix:///nonexistent.sock", "list-machines"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("Error retrieving list of active machines from fleet API (")
            && lines[0].contains("unix:///nonexistent.sock"),
        "{text}"
    );
    assert_eq!(
        &lines[1..],
        [
            "Possible issues:",
            "  etcd is unhealthy and/or lost quorum",
            "  connection cannot be established to any etcd servers"
        ]
    );
}

#[test]
fn endpoint_from_the_environment_and_prefix_commands() {
    let output = fleetctl()
        .env("FLEETCTL_ENDPOINT", "unix:///nonexistent-env.sock")
        .args(["list-m"])
        .output()
        .unwrap();
    assert_fails(&output, 1, "unix:///nonexistent-env.sock");
}

#[test]
fn bad_endpoints_and_unsupported_transports() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--endpoint", "/var/run/fleet.sock", "list-units"],
            "Unable to initialize client: URL scheme undefined",
        ),
        (
            &["--endpoint", "unix://host/x.sock", "list-units"],
            r#"Unable to initialize client: unable to connect to host "host" with scheme "unix""#,
        ),
        (
            &[
                "--endpoint",
                "https://h:1",
                "--ca-file",
                "/nonexistent/ca.pem",
                "list-units",
            ],
            "Unable to initialize client: cannot read CA certificates from /nonexistent/ca.pem",
        ),
        (
            &[
                "--endpoint",
                "https://h:1",
                "--cert-file",
                "/nonexistent/c.pem",
                "list-units",
            ],
            "--cert-file and --key-file must be given together",
        ),
        (
            &["--driver", "etcd", "list-units"],
            "etcd driver is not supported",
        ),
        (
            &[
                "status",
                "--no-block",
                "--endpoint",
                "unix:///nonexistent.sock",
                "global.service",
            ],
            "Error retrieving unit",
        ),
    ];
    for (args, expected) in cases {
        let output = run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn verify_is_deprecated_with_status_2() {
    let output = run(&["verify", "a.service"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("DEPRECATED"));
}

#[test]
fn fd_forward_fails_when_it_cannot_dial() {
    let output = run(&["fd-forward", "/nonexistent/fleet.sock"]);
    assert_fails(&output, 1, "/nonexistent/fleet.sock");
}

#[test]
fn fd_forward_copies_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Echo everything until the client half-closes, then close.
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        stream.write_all(&received).unwrap();
    });
    let mut child = fleetctl()
        .args(["fd-forward", &socket.to_string_lossy()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ping over the socket")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    server.join().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "ping over the socket");
}

/// One scripted exchange: the request line we expect (without ` HTTP/1.1`;
/// ending in `*`, a prefix of it), then the status and body we answer.
type Exchange = (String, u16, String);

/// Serves `script` in order on `socket`, one connection per request (as the
/// client makes them); returns the request bodies it saw.
fn scripted_api(socket: &Path, script: Vec<Exchange>) -> JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for (expected_line, status, body) in script {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut content_length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = value.trim().parse().unwrap();
                }
                if header == "\r\n" || header.is_empty() {
                    break;
                }
            }
            let mut request_body = vec![0; content_length];
            reader.read_exact(&mut request_body).unwrap();
            bodies.push(String::from_utf8_lossy(&request_body).into_owned());
            match expected_line.strip_suffix('*') {
                // Concurrent requests come in any order: a prefix matches.
                Some(prefix) => assert!(request_line.starts_with(prefix), "{request_line}"),
                None => assert_eq!(request_line.trim_end(), format!("{expected_line} HTTP/1.1")),
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            reader.get_mut().write_all(reply.as_bytes()).unwrap();
        }
        bodies
    })
}

/// Waits for the scripted server after fleetctl has exited. If fleetctl made
/// fewer requests than scripted, the server is still in `accept`: an empty
/// connection makes it fail its request-line check instead of hanging.
fn finish(server: JoinHandle<Vec<String>>, socket: &Path) -> Vec<String> {
    let _poke = std::os::unix::net::UnixStream::connect(socket);
    match server.join() {
        Ok(bodies) => bodies,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn exchange(line: &str, status: u16, body: &str) -> Exchange {
    (line.to_owned(), status, body.to_owned())
}

#[test]
fn list_units_renders_the_original_table() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/v1/state?alt=json",
                200,
                r#"{"states":[{"name":"hello.service","hash":"e55c0aeb44ba0b68004ceb8a200e685194448b45","machineID":"113f16a7e4bd4a9a8d6c3a1d3bb6a4c2","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running"}]}"#,
            ),
            exchange(
                "GET /fleet/v1/machines?alt=json",
                200,
                r#"{"machines":[{"id":"113f16a7e4bd4a9a8d6c3a1d3bb6a4c2","primaryIP":"172.17.8.103"}]}"#,
            ),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&["--endpoint", &endpoint, "list-units"]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
    );
}

#[test]
fn api_errors_read_like_googleapi() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // The client sends an idempotent request again on a 503 (five times, with
    // backoff) before it reports the error: the server answers every attempt.
    let unavailable = || {
        exchange(
            "GET /fleet/v1/units?alt=json",
            503,
            r#"{"error":{"code":503,"message":"fleet server unable to communicate with etcd"}}"#,
        )
    };
    let server = scripted_api(&socket, (0..6).map(|_| unavailable()).collect());
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&["--endpoint", &endpoint, "list-unit-files"]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "Error retrieving list of units from repository: googleapi: Error 503: fleet server unable to communicate with etcd\n"
    );
}

#[test]
fn start_no_block_creates_then_triggers_once() {
    // The unit it just created is not fetched again before setting its state.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let unit_path = dir.path().join("hello.service");
    std::fs::write(&unit_path, "[Service]\nExecStart=/bin/sleep 100\n").unwrap();
    let existing = r#"{"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 100"}],"desiredState":"inactive","currentState":"inactive"}"#;
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/v1/units/hello.service?alt=json",
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            exchange("PUT /fleet/v1/units/hello.service?alt=json", 201, ""),
            // One unit to wait for: a GET of it, not a listing.
            exchange("GET /fleet/v1/units/hello.service?alt=json", 200, existing),
            exchange("PUT /fleet/v1/units/hello.service?alt=json", 204, ""),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&[
        "--endpoint",
        &endpoint,
        "start",
        "--no-block",
        &unit_path.to_string_lossy(),
    ]);
    let bodies = finish(server, &socket);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "Unit hello.service inactive\nTriggered unit hello.service start\n"
    );
    assert_eq!(
        bodies[1],
        r#"{"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 100"}]}"#
    );
    assert_eq!(
        bodies[3],
        r#"{"name":"hello.service","desiredState":"launched"}"#
    );
}

#[test]
fn start_dry_run_asks_for_a_plan_and_writes_nothing() {
    // A new unit is planned from its file, a submitted one is explained from its record;
    // the only requests are those two questions (the script fails on any PUT or DELETE).
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let unit_path = dir.path().join("new.service");
    std::fs::write(
        &unit_path,
        "[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\nMachineOf=missing.service\n",
    )
    .unwrap();
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/x1/why/new.service?alt=json",
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            exchange(
                "GET /fleet/x1/why/old.service?alt=json",
                200,
                r#"{"name":"old.service","placedOn":["m1"],"summary":"placed on m1","machines":[{"machine":"m1","chosen":true,"fits":true,"reason":"placed here"}]}"#,
            ),
            exchange(
                "POST /fleet/x1/plan?alt=json",
                200,
                r#"{"units":[{"name":"new.service","placedOn":[],"summary":"cannot be placed: MachineOf peer missing.service is not scheduled","machines":[]}]}"#,
            ),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&[
        "--endpoint",
        &endpoint,
        "start",
        "--dry-run",
        &unit_path.to_string_lossy(),
        "old.service",
    ]);
    let bodies = finish(server, &socket);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "new.service: cannot be placed: MachineOf peer missing.service is not scheduled\n\
         old.service: placed on m1\n\
         \x20 * m1...\tplaced here\n"
    );
    assert!(
        bodies[2].starts_with(r#"{"units":[{"name":"new.service","options":["#),
        "{}",
        bodies[2]
    );
}

#[test]
fn start_of_many_names_lists_the_units_instead_of_a_get_per_name() {
    // Five instances that exist and are launched already: one listing to
    // find them before creating, one before setting the state, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::write(
        dir.path().join("hello@.service"),
        "[Service]\nExecStart=/bin/sleep 100\n",
    )
    .unwrap();
    let units: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                r#"{{"name":"hello@{i}.service","options":[{{"section":"Service","name":"ExecStart","value":"/bin/sleep 100"}}],"desiredState":"launched","currentState":"launched"}}"#
            )
        })
        .collect();
    let listing = format!(r#"{{"units":[{}]}}"#, units.join(","));
    let server = scripted_api(
        &socket,
        vec![
            exchange("GET /fleet/v1/units?alt=json", 200, &listing),
            exchange("GET /fleet/v1/units?alt=json", 200, &listing),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let args: Vec<String> = (1..=5)
        .map(|i| {
            dir.path()
                .join(format!("hello@{i}.service"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut command = vec!["--endpoint", &endpoint, "start", "--no-block"];
    command.extend(args.iter().map(String::as_str));
    let output = run(&command);
    let bodies = finish(server, &socket);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(bodies.len(), 2, "exactly the two listings were requested");
    assert_eq!(stdout(&output), "");
}

/// Five instances of a local template: their names, the listing of them
/// as created (inactive), and the arguments naming them.
fn five_instances(dir: &Path) -> (Vec<String>, String, Vec<String>) {
    std::fs::write(
        dir.join("hello@.service"),
        "[Service]\nExecStart=/bin/sleep 100\n",
    )
    .unwrap();
    let names: Vec<String> = (1..=5).map(|i| format!("hello@{i}.service")).collect();
    let units: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                r#"{{"name":"{name}","options":[{{"section":"Service","name":"ExecStart","value":"/bin/sleep 100"}}],"desiredState":"inactive","currentState":"inactive"}}"#
            )
        })
        .collect();
    let listing = format!(r#"{{"units":[{}]}}"#, units.join(","));
    let args = names
        .iter()
        .map(|name| dir.join(name).to_string_lossy().into_owned())
        .collect();
    (names, listing, args)
}

/// The registry's template, asked for once: absent (the local file is used).
fn no_template() -> Exchange {
    exchange(
        "GET /fleet/v1/units/hello@.service?alt=json",
        404,
        r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
    )
}

/// A batch answer: one result per name with `code`.
fn batch_results(names: &[String], code: u16) -> String {
    let results: Vec<String> = names
        .iter()
        .map(|name| format!(r#"{{"name":"{name}","code":{code}}}"#))
        .collect();
    format!(r#"{{"results":[{}]}}"#, results.join(","))
}

/// `start --no-block` of five instances against `script`: exit code,
/// stdout, stderr and the request bodies.
fn start_five(
    dir: &Path,
    args: &[String],
    script: Vec<Exchange>,
) -> (Option<i32>, String, String, Vec<String>) {
    let socket = dir.join("api.sock");
    let _ = std::fs::remove_file(&socket);
    let server = scripted_api(&socket, script);
    let endpoint = format!("unix://{}", socket.display());
    let mut command = vec!["--endpoint", &endpoint, "start", "--no-block"];
    command.extend(args.iter().map(String::as_str));
    let output = run(&command);
    let bodies = finish(server, &socket);
    (
        output.status.code(),
        stdout(&output),
        stderr(&output),
        bodies,
    )
}

#[test]
fn start_of_many_new_units_sends_them_in_one_batch_and_says_what_puts_say() {
    // Creates in one POST, desired states in another; from a server without
    // the batch API (404, the original fleetd), a PUT per unit; the output
    // is the same either way.
    let dir = tempfile::tempdir().unwrap();
    let (names, listing, args) = five_instances(dir.path());
    let empty = r#"{"units":[]}"#;
    let batch = start_five(
        dir.path(),
        &args,
        vec![
            exchange("GET /fleet/v1/units?alt=json", 200, empty),
            no_template(),
            exchange(
                "POST /fleet/x1/units?alt=json",
                200,
                &batch_results(&names, 201),
            ),
            exchange("GET /fleet/v1/units?alt=json", 200, &listing),
            exchange(
                "POST /fleet/x1/units?alt=json",
                200,
                &batch_results(&names, 204),
            ),
        ],
    );
    assert_eq!(batch.0, Some(0), "{}", batch.2);
    assert!(
        batch.3[2].starts_with(
            r#"{"units":[{"name":"hello@1.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/sleep 100"}]},{"name":"hello@2.service""#
        ),
        "{}",
        batch.3[2]
    );
    assert!(
        batch.3[4].starts_with(
            r#"{"units":[{"name":"hello@1.service","desiredState":"launched"},{"name":"hello@2.service""#
        ),
        "{}",
        batch.3[4]
    );
    let not_found = r#"{"error":{"code":404,"message":""}}"#;
    let mut script = vec![
        exchange("GET /fleet/v1/units?alt=json", 200, empty),
        no_template(),
        exchange("POST /fleet/x1/units?alt=json", 404, not_found),
    ];
    script.extend((0..5).map(|_| exchange("PUT /fleet/v1/units/hello@*", 201, "")));
    script.push(exchange("GET /fleet/v1/units?alt=json", 200, &listing));
    script.push(exchange("POST /fleet/x1/units?alt=json", 404, not_found));
    script.extend((0..5).map(|_| exchange("PUT /fleet/v1/units/hello@*", 204, "")));
    let one_by_one = start_five(dir.path(), &args, script);
    assert_eq!(
        (batch.0, &batch.1, &batch.2),
        (one_by_one.0, &one_by_one.1, &one_by_one.2)
    );
    let mut expected: Vec<String> = names
        .iter()
        .map(|name| format!("Unit {name} inactive\n"))
        .collect();
    expected.extend(
        names
            .iter()
            .map(|name| format!("Triggered unit {name} start\n")),
    );
    assert_eq!(batch.1, expected.concat());
}

#[test]
fn a_unit_refused_in_a_batch_fails_the_command_like_its_put() {
    let dir = tempfile::tempdir().unwrap();
    let (names, _, args) = five_instances(dir.path());
    let answer = batch_results(&names, 201).replace(
        r#"{"name":"hello@3.service","code":201}"#,
        r#"{"name":"hello@3.service","code":400,"message":"MachineID cannot be used with Global"}"#,
    );
    let (code, stdout, stderr, _) = start_five(
        dir.path(),
        &args,
        vec![
            exchange("GET /fleet/v1/units?alt=json", 200, r#"{"units":[]}"#),
            no_template(),
            exchange("POST /fleet/x1/units?alt=json", 200, &answer),
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "Error creating units: failed creating unit hello@3.service: googleapi: Error 400: MachineID cannot be used with Global\n"
    );
}

#[test]
fn units_refused_one_by_one_by_the_original_fail_the_command_alike() {
    // The 404 fallback: every PUT refused; the first in argument order is said.
    let dir = tempfile::tempdir().unwrap();
    let (_, _, args) = five_instances(dir.path());
    let refusal = r#"{"error":{"code":400,"message":"boom"}}"#;
    let mut script = vec![
        exchange("GET /fleet/v1/units?alt=json", 200, r#"{"units":[]}"#),
        no_template(),
        exchange(
            "POST /fleet/x1/units?alt=json",
            404,
            r#"{"error":{"code":404,"message":""}}"#,
        ),
    ];
    script.extend((0..5).map(|_| exchange("PUT /fleet/v1/units/hello@*", 400, refusal)));
    let (code, stdout, stderr, _) = start_five(dir.path(), &args, script);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "Error creating units: failed creating unit hello@1.service: googleapi: Error 400: boom\n"
    );
}

#[test]
fn a_batch_denied_by_an_older_fleetd_falls_back_to_puts() {
    // A fleetd of ours from before the batch API, with an access policy, denies the unknown
    // path with 403: the PUTs then decide, here refusing each as that fleetd would.
    let dir = tempfile::tempdir().unwrap();
    let (_, _, args) = five_instances(dir.path());
    let denied = r#"{"error":{"code":403,"message":"forbidden"}}"#;
    let mut script = vec![
        exchange("GET /fleet/v1/units?alt=json", 200, r#"{"units":[]}"#),
        no_template(),
        exchange("POST /fleet/x1/units?alt=json", 403, denied),
    ];
    script.extend((0..5).map(|_| exchange("PUT /fleet/v1/units/hello@*", 403, denied)));
    let (code, stdout, stderr, _) = start_five(dir.path(), &args, script);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "Error creating units: failed creating unit hello@1.service: googleapi: Error 403: forbidden\n"
    );
}

#[test]
fn cat_prints_the_canonical_text_without_extra_newline() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/v1/units/hello.service?alt=json",
                200,
                r#"{"name":"hello.service","options":[{"section":"Unit","name":"Description","value":"Hello"},{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#,
            ),
            exchange(
                "GET /fleet/v1/units/nope.service?alt=json",
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&["--endpoint", &endpoint, "cat", "hello"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "[Unit]\nDescription=Hello\n\n[Service]\nExecStart=/bin/true\n"
    );
    let output = run(&["--endpoint", &endpoint, "cat", "nope.service"]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "Unit nope.service not found\n");
}

#[test]
fn destroy_waits_until_no_machine_reports_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let unit = r#"{"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"launched"}"#;
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/v1/units?alt=json",
                200,
                &format!(r#"{{"units":[{unit}]}}"#),
            ),
            exchange("DELETE /fleet/v1/units/hello.service?alt=json", 204, ""),
            // The record is gone but a machine still reports the unit: keep waiting.
            exchange("GET /fleet/v1/units?alt=json", 200, "{}"),
            exchange(
                "GET /fleet/v1/state?alt=json",
                200,
                r#"{"states":[{"name":"hello.service","machineID":"m1"}]}"#,
            ),
            exchange("GET /fleet/v1/units?alt=json", 200, "{}"),
            exchange("GET /fleet/v1/state?alt=json", 200, "{}"),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&["--endpoint", &endpoint, "destroy", "hello"]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "Destroyed hello.service\n");
}

#[test]
fn destroy_no_block_does_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = scripted_api(
        &socket,
        vec![
            exchange(
                "GET /fleet/v1/units?alt=json",
                200,
                r#"{"units":[{"name":"hello.service"}]}"#,
            ),
            exchange(
                "DELETE /fleet/v1/units/hello.service?alt=json",
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
        ],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&[
        "--endpoint",
        &endpoint,
        "destroy",
        "--no-block",
        "hello.service",
        "other",
    ]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // A unit someone else destroyed first counts as destroyed.
    assert_eq!(stdout(&output), "Destroyed hello.service\n");
}

#[test]
fn stop_reports_units_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = scripted_api(
        &socket,
        vec![exchange("GET /fleet/v1/units?alt=json", 200, "{}")],
    );
    let endpoint = format!("unix://{}", socket.display());
    let output = run(&["--endpoint", &endpoint, "stop", "nothere"]);
    finish(server, &socket);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stderr(&output), "Units not found in registry\n");
}
