//! The D-Bus client against a real systemd: a `systemd-nspawn` test host booted
//! by the functional-test harness (`functional_tests::Cluster`, which wraps
//! `scripts/testhosts.sh` and serialises clusters with a flock).
//!
//! One test drives the whole flow of the original's `TestSystemdUnitFlow`
//! (link, reload, start, stop, unlink) plus `[Install]` handling and error
//! reporting; booting a host is the expensive part, so the checks share one.

use std::time::{Duration, Instant};

use fleet_systemd::dbus::{DbusError, Event, Events, Job, Manager, UnitStatus};
use functional_tests::Cluster;

/// How long any one expected signal may take to arrive.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// Where the units live inside the host (the agent's default `units_directory`).
const UNITS_DIR: &str = "/run/fleet/units";

fn write_unit(cluster: &Cluster, name: &str, text: &str) -> String {
    let path = format!("{UNITS_DIR}/{name}");
    // printf %s keeps the text as is; the shell only sees the path.
    cluster
        .exec_ok(
            "h1",
            &[
                "sh",
                "-c",
                &format!("mkdir -p {UNITS_DIR} && printf %s \"$0\" > {path}"),
                text,
            ],
        )
        .expect("writing the unit file in the host");
    path
}

async fn status(manager: &Manager, name: &str) -> UnitStatus {
    let mut rows = manager
        .list_units_by_names(&[name.to_owned()])
        .await
        .expect("ListUnitsByNames");
    assert_eq!(rows.len(), 1, "one row for {name}: {rows:?}");
    rows.remove(0)
}

/// Reads events until the job's `JobRemoved` has come AND a `PropertiesChanged`
/// of `unit` has been followed by systemd reporting it in `(active, sub)`, in
/// whatever order: the signal says that the unit changed, the agent then asks.
async fn wait_job_and_state(
    manager: &Manager,
    events: &mut Events,
    job: &Job,
    active: &str,
    sub: &str,
) -> String {
    let deadline = Instant::now() + EVENT_DEADLINE;
    let (mut result, mut reached) = (None, false);
    while result.is_none() || !reached {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match tokio::time::timeout(left, events.next()).await {
            Ok(event) => event.expect("the signal stream"),
            Err(_) => panic!(
                "timed out after {EVENT_DEADLINE:?} waiting for {} to reach {active}/{sub} (job result {result:?}, state seen {reached})",
                job.unit
            ),
        };
        match event {
            Event::JobRemoved {
                job: path,
                result: r,
                ..
            } if path == job.path => result = Some(r),
            Event::UnitChanged { unit } if unit == job.unit => {
                let now = status(manager, &unit).await;
                reached = now.active_state == active && now.sub_state == sub;
            }
            _ => {}
        }
    }
    result.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_flow_on_a_real_systemd() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .expect("the harness thread")
        .expect("booting a test host (run scripts/setup.sh as root first)");
    let bus = cluster.bus("h1").expect("the host's bus address");
    let manager = Manager::connect(Some(&bus))
        .await
        .expect("connecting to the host's systemd");
    assert!(!manager.version().await.expect("Version").is_empty());
    let mut events = manager.subscribe().await.expect("Subscribe");

    // --- link, reload: known to systemd, loaded, inactive ---
    let name = "fleet-unit-flow.service";
    let path = write_unit(
        &cluster,
        name,
        "[Unit]\nDescription=flow\n\n[Service]\nExecStart=/usr/bin/sleep 3000\n",
    );
    let changes = manager
        .link_unit_files(std::slice::from_ref(&path), true, true)
        .await
        .expect("LinkUnitFiles");
    assert!(
        changes
            .iter()
            .any(|c| c.kind == "symlink" && c.destination == path),
        "LinkUnitFiles made the runtime link: {changes:?}"
    );
    manager.reload().await.expect("Reload");
    let st = status(&manager, name).await;
    assert_eq!(
        (
            st.load_state.as_str(),
            st.active_state.as_str(),
            st.sub_state.as_str()
        ),
        ("loaded", "inactive", "dead")
    );
    assert_eq!(
        manager
            .unit_file_state(name)
            .await
            .expect("GetUnitFileState"),
        "linked-runtime"
    );

    // --- start: the job's end and active/running arrive as events ---
    let job = manager.start_unit(name).await.expect("StartUnit");
    assert!(
        job.path.starts_with("/org/freedesktop/systemd1/job/"),
        "{job:?}"
    );
    assert_eq!(
        wait_job_and_state(&manager, &mut events, &job, "active", "running").await,
        "done"
    );
    let st = status(&manager, name).await;
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "running")
    );
    let props = manager
        .unit_properties(name)
        .await
        .expect("unit properties");
    assert_eq!(props.active_state, "active");
    assert!(
        props.exec_main_start_timestamp.is_some_and(|t| t > 0),
        "{props:?}"
    );
    assert!(props.active_enter_timestamp > 0, "{props:?}");

    // Starting an active unit is a no-op: same main process start time.
    let again = manager.start_unit(name).await.expect("StartUnit again");
    let outcome = events
        .wait_for_job(&again, EVENT_DEADLINE)
        .await
        .expect("JobRemoved of the second start");
    assert!(outcome.is_done(), "{outcome:?}");
    let props2 = manager
        .unit_properties(name)
        .await
        .expect("unit properties");
    assert_eq!(
        props2.exec_main_start_timestamp, props.exec_main_start_timestamp,
        "the unit was not restarted"
    );

    // --- stop ---
    let job = manager.stop_unit(name).await.expect("StopUnit");
    assert_eq!(
        wait_job_and_state(&manager, &mut events, &job, "inactive", "dead").await,
        "done"
    );

    // --- unload: disable (unlink), reset-failed, remove the file, reload ---
    let changes = manager
        .disable_unit_files(&[name.to_owned()], true)
        .await
        .expect("DisableUnitFiles");
    assert!(
        changes.iter().any(|c| c.kind == "unlink"),
        "DisableUnitFiles removed the link: {changes:?}"
    );
    manager.reset_failed_unit(name).await.ok(); // not failed: systemd may say so, which is fine
    cluster
        .exec_ok("h1", &["rm", "-f", &path])
        .expect("removing the unit file");
    manager.reload().await.expect("Reload");
    let st = status(&manager, name).await;
    assert_eq!(st.load_state, "not-found", "{st:?}");

    // --- [Install]: enable reports install info only when there is some ---
    let with_install = "fleet-install.service";
    let path = write_unit(
        &cluster,
        with_install,
        "[Service]\nExecStart=/usr/bin/sleep 3000\n\n[Install]\nWantedBy=multi-user.target\n",
    );
    manager
        .link_unit_files(std::slice::from_ref(&path), true, true)
        .await
        .expect("LinkUnitFiles");
    let report = manager
        .enable_unit_files(std::slice::from_ref(&path), true, true)
        .await
        .expect("EnableUnitFiles");
    assert!(report.carries_install_info, "{report:?}");
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.file.contains("multi-user.target.wants")),
        "{report:?}"
    );
    manager
        .disable_unit_files(&[with_install.to_owned()], true)
        .await
        .expect("DisableUnitFiles");

    let without_install = "fleet-noinstall.service";
    let path = write_unit(
        &cluster,
        without_install,
        "[Service]\nExecStart=/usr/bin/sleep 3000\n",
    );
    manager
        .link_unit_files(std::slice::from_ref(&path), true, true)
        .await
        .expect("LinkUnitFiles");
    let report = manager
        .enable_unit_files(&[path], true, true)
        .await
        .expect("EnableUnitFiles");
    assert!(!report.carries_install_info, "{report:?}");

    // --- errors name the unit and systemd's reason ---
    let error = manager
        .start_unit("fleet-missing.service")
        .await
        .expect_err("starting a unit with no file");
    let text = error.to_string();
    assert!(matches!(error, DbusError::Systemd { .. }), "{error:?}");
    assert!(
        text.contains("fleet-missing.service") && text.contains("StartUnit"),
        "{text}"
    );
    assert!(!error.is_retriable(), "{error:?}");

    drop(events);
    drop(manager);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("cleanup thread");
}

#[tokio::test]
async fn connecting_where_there_is_no_bus_names_the_address() {
    let dir = tempfile_dir();
    let address = format!("unix:path={}/no-such-socket", dir.display());
    let error = Manager::connect(Some(&address))
        .await
        .expect_err("no bus there");
    assert!(matches!(error, DbusError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains(&address), "{error}");
    assert!(
        error.is_retriable() && error.is_connection_lost(),
        "{error:?}"
    );
}

/// A fresh empty directory under the target dir (no socket can be in it).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleet-dbus-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temporary dir");
    dir
}
