//! The workload the chaos suite schedules: tiny services of every placement kind.
//!
//! Every unit is a `sleep infinity` service named `chaos-*` (so one `systemctl show chaos-*`
//! per host sees them all), in four kinds:
//! - one global unit (`chaos-global.service`, `Global=true`), on every host;
//! - instances of a template with `Conflicts=chaos-excl@*.service`, one fewer than the hosts,
//!   so they still fit when one host is gone;
//! - an eighth of the units with `MachineMetadata=` naming two hosts (either will do, so a
//!   single lost host never strands them);
//! - plain units, the rest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::ledger::Expected;

/// The prefix of every workload unit's name.
pub const PREFIX: &str = "chaos-";

const SERVICE: &str = "[Unit]\nDescription=chaos suite workload\n\n\
                       [Service]\nExecStart=/bin/sleep infinity\n";

/// The unit files written for one run and what must run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Arguments for `fleetctl start`: unit files, and template instances found beside their
    /// template.
    pub paths: Vec<PathBuf>,
    /// The units that must run, and where.
    pub expected: Expected,
}

/// Writes `total` units (at least 1 + one per host) for `hosts` into `dir`.
///
/// # Errors
/// A file could not be written, or too few units for the hosts.
pub fn write(dir: &Path, hosts: &[String], total: usize) -> anyhow::Result<Workload> {
    let n_excl = hosts.len().saturating_sub(1);
    anyhow::ensure!(
        total > n_excl + 1 && hosts.len() >= 2,
        "a workload of {total} units for {} hosts is too small",
        hosts.len()
    );
    let mut paths = Vec::new();
    let mut singles = BTreeSet::new();
    let put = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };

    paths.push(put(
        "chaos-global.service",
        format!("{SERVICE}\n[X-Fleet]\nGlobal=true\n"),
    )?);
    put(
        "chaos-excl@.service",
        format!("{SERVICE}\n[X-Fleet]\nConflicts=chaos-excl@*.service\n"),
    )?;
    for idx in 1..=n_excl {
        let name = format!("chaos-excl@{idx}.service");
        paths.push(dir.join(&name));
        singles.insert(name);
    }
    let rest = total - 1 - n_excl;
    let n_meta = rest / 8;
    for idx in 0..rest {
        let (name, text) = if idx < n_meta {
            let first = &hosts[idx % hosts.len()];
            let second = &hosts[(idx + 1) % hosts.len()];
            (
                format!("chaos-meta-{idx}.service"),
                format!(
                    "{SERVICE}\n[X-Fleet]\nMachineMetadata=hostname={first}\n\
                     MachineMetadata=hostname={second}\n"
                ),
            )
        } else {
            (format!("chaos-plain-{idx}.service"), SERVICE.to_string())
        };
        paths.push(put(&name, text)?);
        singles.insert(name);
    }
    Ok(Workload {
        paths,
        expected: Expected {
            singles,
            globals: ["chaos-global.service".to_string()].into(),
            hosts: hosts.iter().cloned().collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hundred_units_of_every_kind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let hosts: Vec<String> = (1..=5).map(|idx| format!("h{idx}")).collect();
        let workload = write(dir.path(), &hosts, 300)?;
        assert_eq!(workload.paths.len(), 300);
        assert_eq!(
            workload.expected.singles.len() + workload.expected.globals.len(),
            300
        );
        let names = &workload.expected.singles;
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("chaos-excl@"))
                .count(),
            4
        );
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("chaos-meta-"))
                .count(),
            36
        );
        assert!(names.iter().all(|name| name.starts_with(PREFIX)));
        // Instances are started from their template, which is written; they are not.
        assert!(dir.path().join("chaos-excl@.service").exists());
        assert!(!dir.path().join("chaos-excl@1.service").exists());
        let meta = std::fs::read_to_string(dir.path().join("chaos-meta-4.service"))?;
        assert!(
            meta.contains("hostname=h5") && meta.contains("hostname=h1"),
            "{meta}"
        );
        Ok(())
    }

    #[test]
    fn too_small_a_workload_is_refused() {
        let hosts: Vec<String> = (1..=5).map(|idx| format!("h{idx}")).collect();
        let dir = std::env::temp_dir();
        assert!(write(&dir, &hosts, 5).is_err());
    }
}
