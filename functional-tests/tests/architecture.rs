//! The architecture invariants of `Documentation/architecture.md` that the
//! compiler does not enforce by itself, checked on the workspace:
//!
//! - only the `systemd` crate names `zbus`, and only the `registry` crate
//!   names `etcd_client` (in sources and in `Cargo.toml`);
//! - `fleetctl` links neither zbus nor etcd-client, nor axum, and the model and
//!   the scheduler link no tokio, etcd, D-Bus or server (their dependency
//!   trees, as `cargo tree` prints them);
//! - every `[dependencies]` entry of a crate is named in its `src/` (what only
//!   tests and benchmarks use is a dev-dependency).
//!
//! Each rule names the crate that broke it, so a failure says what to move.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate lives one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("functional-tests has a parent directory")
        .to_path_buf()
}

/// Every `.rs` and `Cargo.toml` file of a top-level crate directory.
fn files_of(crate_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![crate_dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs")
                || path.file_name().is_some_and(|name| name == "Cargo.toml")
            {
                found.push(path);
            }
        }
    }
    found
}

/// The crates of the workspace (top-level directories with a `Cargo.toml`).
fn crates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace())
        .expect("read the workspace")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.join("Cargo.toml").is_file() && path.file_name() != Some("target".as_ref())
        })
        .collect();
    dirs.sort();
    dirs
}

/// Files outside the crate `owner` that use the crate `dependency`: a
/// `Cargo.toml` that declares it (a line starting with its name) or Rust
/// source that names its path (`-` spelled `_`). Comments and Debian package
/// names that happen to match do not count.
fn offenders(dependency: &str, owner: &str) -> Vec<PathBuf> {
    let path_name = dependency.replace('-', "_");
    crates()
        .into_iter()
        .filter(|dir| !dir.ends_with(owner))
        .flat_map(|dir| files_of(&dir))
        .filter(|file| !file.ends_with("tests/architecture.rs"))
        .filter(|file| {
            let Ok(text) = std::fs::read_to_string(file) else {
                return false;
            };
            if file.ends_with("Cargo.toml") {
                text.lines()
                    .any(|line| line.trim_start().starts_with(dependency))
            } else {
                text.lines()
                    .filter(|line| !line.trim_start().starts_with("//"))
                    .any(|line| {
                        line.contains(&format!("{path_name}::"))
                            || line.contains(&format!("use {path_name}"))
                    })
            }
        })
        .collect()
}

#[test]
fn only_the_systemd_crate_names_zbus() {
    let found = offenders("zbus", "systemd");
    assert!(
        found.is_empty(),
        "zbus is named outside systemd/: {found:?}"
    );
}

#[test]
fn only_the_registry_crate_names_etcd_client() {
    let found = offenders("etcd-client", "registry");
    assert!(
        found.is_empty(),
        "etcd-client is named outside registry/: {found:?}"
    );
}

/// The normal (non-dev) dependency tree of `package`, one crate a line
/// ("name vX.Y.Z ..."), as `cargo tree` prints it.
fn dependency_tree(package: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        tree.lines()
            .any(|line| line.starts_with(&format!("{package} "))),
        "cargo tree printed no {package}:\n{tree}"
    );
    tree
}

/// Fails naming the first of `forbidden` crates that `package` links.
fn assert_links_none(package: &str, forbidden: &[&str]) {
    let tree = dependency_tree(package);
    for crate_name in forbidden {
        assert!(
            !tree
                .lines()
                .any(|line| line.starts_with(&format!("{crate_name} "))),
            "{package} links {crate_name}:\n{tree}"
        );
    }
}

#[test]
fn fleetctl_links_no_dbus_no_etcd_no_server() {
    assert_links_none("fleetctl", &["zbus", "etcd-client", "axum"]);
    assert!(
        dependency_tree("fleetctl")
            .lines()
            .any(|line| line.starts_with("fleet-api ")),
        "fleetctl does not link fleet-api"
    );
}

/// The scheduler is a pure function and the model is plain data: neither may
/// link an async runtime, etcd, D-Bus or a server, so no I/O can creep in.
#[test]
fn the_model_and_the_scheduler_link_no_runtime_no_etcd_no_dbus() {
    let impure = ["tokio", "etcd-client", "zbus", "axum", "hyper"];
    assert_links_none("fleet-model", &impure);
    assert_links_none("fleet-scheduler", &impure);
}

/// The names in a `Cargo.toml`'s `[dependencies]` table (not dev or build).
fn normal_dependencies(manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut names = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == "[dependencies]";
            continue;
        }
        if !in_table || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(key) = line.split(['=', '.']).next() {
            names.push(key.trim().to_owned());
        }
    }
    names
}

/// A dependency that only tests or benchmarks use belongs in
/// `[dev-dependencies]`: in `[dependencies]` it is built into every binary
/// and every user's build. Each crate's `src/` must name each of its
/// dependencies.
#[test]
fn every_dependency_is_used_by_its_crates_sources() {
    let mut unused = Vec::new();
    for dir in crates() {
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let sources: String = files_of(&dir.join("src"))
            .iter()
            .filter(|file| file.extension().is_some_and(|ext| ext == "rs"))
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .collect();
        for dependency in normal_dependencies(&manifest) {
            let path_name = dependency.replace('-', "_");
            if !sources.contains(&format!("{path_name}::"))
                && !sources.contains(&format!("use {path_name}"))
                && !sources.contains(&format!("{path_name}!"))
            {
                unused.push(format!("{}: {dependency}", dir.display()));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "dependencies no source file of their crate names (move them to [dev-dependencies] or drop them): {unused:?}"
    );
}
