//! Unit files in the registry, end to end (issue 3): submit, hash, `cat`, a thousand
//! instances of one template stored once, destroy, and bad input refused with the spec's
//! messages while the registry stays as it was.

use std::time::{Duration, Instant};

use anyhow::Context;
use functional_tests::{Cluster, wait_until, workspace_root};

use crate::foundation::{Fleet, PREFIX, etcd_keys, install_everywhere};

/// `examples/hello.service` in canonical form: the file is already canonical, so
/// `fleetctl cat` must print exactly this.
const HELLO_CANONICAL: &str = "[Unit]\nDescription=Hello World\n\n[Service]\n\
ExecStart=/bin/bash -c \"while true; do echo \\\"Hello, world\\\"; sleep 1; done\"\n";

/// Its hash, the one the original computes for it (Documentation/compatibility.md, "Unit files
/// and the unit hash").
const HELLO_HASH: &str = "e55c0aeb44ba0b68004ceb8a200e685194448b45";

/// How many instances one `submit` creates.
const N_INSTANCES: usize = 1000;

/// Submit and `cat` keep the canonical text and its hash; 1,000 instances submitted in one
/// command share one stored copy of their template's text; destroy removes everything; bad
/// unit files, names, option combinations and request bodies are refused with the spec's
/// messages and change nothing.
#[test]
fn units_are_stored_once_and_bad_units_are_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(1)?;
    install_everywhere(&cluster)?;
    let fleet = Fleet::new(&cluster, "h1")?;
    let examples = workspace_root().join("examples");
    let hello = examples.join("hello.service");
    let hello_path = hello.to_string_lossy().into_owned();
    assert_eq!(
        std::fs::read_to_string(&hello)?,
        HELLO_CANONICAL,
        "examples/hello.service changed: update this test"
    );

    // submit → list-unit-files shows the hash (short by default), cat prints the text.
    fleet.ctl_ok(&["submit", &hello_path])?;
    let short = fleet.ctl_ok(&["list-unit-files", "--no-legend", "--fields", "unit,hash"])?;
    let short: Vec<&str> = short.split_whitespace().collect();
    assert_eq!(short, ["hello.service", &HELLO_HASH[..7]]);
    let files = fleet.unit_files()?;
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].hash, HELLO_HASH);
    assert_eq!(files[0].dstate, "inactive");
    let cat = fleet.ctl_ok(&["cat", "hello.service"])?;
    assert_eq!(
        cat, HELLO_CANONICAL,
        "fleetctl cat is not the canonical text"
    );
    fleet.ctl_ok(&["destroy", "hello.service"])?;
    wait_until(Duration::from_secs(10), "hello.service destroyed", || {
        Ok(fleet.unit_files()?.is_empty())
    })?;

    // The template and 1,000 instances from the local template, in one command.
    let template = examples.join("hello@.service");
    let mut names = vec![template.to_string_lossy().into_owned()];
    for idx in 1..=N_INSTANCES {
        names.push(
            examples
                .join(format!("hello@{idx}.service"))
                .to_string_lossy()
                .into_owned(),
        );
    }
    let args: Vec<&str> = std::iter::once("submit")
        .chain(names.iter().map(String::as_str))
        .collect();
    let submit_started = Instant::now();
    fleet.ctl_ok(&args)?;
    eprintln!(
        "units: submitting the template and {N_INSTANCES} instances took {:?}",
        submit_started.elapsed()
    );
    let files = fleet.unit_files()?;
    assert_eq!(files.len(), N_INSTANCES + 1);
    let template_hash = files
        .iter()
        .find(|row| row.unit == "hello@.service")
        .map(|row| row.hash.clone())
        .context("hello@.service not listed")?;
    assert!(
        files
            .iter()
            .all(|row| row.hash == template_hash && row.dstate == "inactive")
    );
    // The text is stored once, however many units use it.
    let content = etcd_keys(&cluster, "api/content/")?;
    assert_eq!(content, [format!("{PREFIX}api/content/{template_hash}")]);

    // Destroy them all: the units and, with the last reference, the text.
    let unit_names: Vec<String> = files.iter().map(|row| row.unit.clone()).collect();
    let args: Vec<&str> = std::iter::once("destroy")
        .chain(unit_names.iter().map(String::as_str))
        .collect();
    let destroy_started = Instant::now();
    fleet.ctl_ok(&args)?;
    wait_until(Duration::from_secs(30), "every unit destroyed", || {
        Ok(fleet.unit_files()?.is_empty())
    })?;
    eprintln!(
        "units: destroying {} units took {:?}",
        unit_names.len(),
        destroy_started.elapsed()
    );
    wait_until(Duration::from_secs(10), "the content deleted", || {
        Ok(etcd_keys(&cluster, "api/content/")?.is_empty())
    })?;

    // Bad input, with one unit in place that must survive it unchanged.
    fleet.ctl_ok(&["submit", &hello_path])?;
    let before = fleet.unit_files()?;
    let dir = tempfile::tempdir()?;
    let bad_file = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let cases = [
        (
            bad_file("garbage.service", "[Unit] x\nDescription=x\n")?,
            "found garbage after section name",
        ),
        (
            bad_file("bad%name.service", "[Service]\nExecStart=/bin/true\n")?,
            "invalid character '%' in unit name",
        ),
        (
            bad_file(
                "pinned.service",
                &format!(
                    "[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nMachineID={}\nGlobal=true\n",
                    cluster.machine_id("h1")?
                ),
            )?,
            "MachineID cannot be used with Global",
        ),
    ];
    for (path, message) in &cases {
        let output = fleet.ctl(&["submit", path])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "submit {path} succeeded");
        assert!(
            stderr.contains(message),
            "submit {path}: stderr {stderr:?}, want {message:?}"
        );
    }

    // The same through the API, plus bodies fleetctl never sends.
    let machine_id = cluster.machine_id("h1")?;
    let pinned_global = format!(
        r#"{{"desiredState":"inactive","options":[
            {{"section":"Service","name":"ExecStart","value":"/bin/true"}},
            {{"section":"X-Fleet","name":"MachineID","value":"{machine_id}"}},
            {{"section":"X-Fleet","name":"Global","value":"true"}}]}}"#
    );
    let good = r#"{"desiredState":"inactive","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#;
    let requests: [(&str, &str, &str, u16, &str); 4] = [
        (
            "pinned.service",
            "application/json",
            pinned_global.as_str(),
            400,
            "MachineID cannot be used with Global",
        ),
        (
            "bad%25name.service",
            "application/json",
            good,
            400,
            "invalid character '%' in unit name",
        ),
        (
            "nojson.service",
            "application/json",
            "this is not json",
            400,
            "unable to decode body",
        ),
        (
            "texty.service",
            "text/plain",
            good,
            415,
            "only acceptable Content-Type is application/json",
        ),
    ];
    for (name, content_type, body, status, message) in requests {
        let answer = fleet.api(
            "PUT",
            &format!("/fleet/v1/units/{name}"),
            Some(content_type),
            Some(body),
        )?;
        assert_eq!(answer.status, status, "PUT {name}: {answer:?}");
        assert!(
            answer.body.contains(message),
            "PUT {name}: {answer:?}, want {message:?}"
        );
        assert!(
            answer.content_type.starts_with("application/json"),
            "PUT {name}: {answer:?}"
        );
    }
    assert_eq!(
        fleet.unit_files()?,
        before,
        "bad input changed the registry"
    );
    Ok(())
}
