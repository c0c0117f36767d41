//! The Debian package enrol installs: its name, version and architecture,
//! read here with `dpkg-deb` before anything is sent to the host.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A local `.deb` of fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub path: PathBuf,
    pub version: String,
    pub arch: String,
    pub size: u64,
}

impl Package {
    /// Reads the package's control fields.
    ///
    /// # Errors
    /// The file is missing, is not a Debian package, is not fleet, or
    /// `dpkg-deb` is not installed here.
    pub fn read(path: &Path) -> Result<Package, String> {
        let size = std::fs::metadata(path)
            .map_err(|error| format!("{}: {error}", path.display()))?
            .len();
        let output = Command::new("dpkg-deb")
            .arg("--field")
            .arg(path)
            .args(["Package", "Version", "Architecture"])
            .output()
            .map_err(|error| {
                format!("running dpkg-deb (install the Debian package dpkg): {error}")
            })?;
        if !output.status.success() {
            return Err(format!(
                "{} is not a Debian package: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let fields = parse_fields(&String::from_utf8_lossy(&output.stdout));
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if field("Package").as_deref() != Some("fleet") {
            return Err(format!("{} is not the fleet package", path.display()));
        }
        match (field("Version"), field("Architecture")) {
            (Some(version), Some(arch)) => Ok(Package {
                path: path.to_owned(),
                version,
                arch,
                size,
            }),
            _ => Err(format!("{} has no Version or Architecture", path.display())),
        }
    }
}

/// `Name: value` lines of a control file.
fn parse_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_are_read() {
        assert_eq!(
            parse_fields("Package: fleet\nVersion: 0.1.0-1\nArchitecture: amd64\n"),
            vec![
                ("Package".to_owned(), "fleet".to_owned()),
                ("Version".to_owned(), "0.1.0-1".to_owned()),
                ("Architecture".to_owned(), "amd64".to_owned())
            ]
        );
    }

    #[test]
    fn a_file_that_is_no_package_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.deb");
        std::fs::write(&path, b"not a package").unwrap();
        let error = Package::read(&path).unwrap_err();
        assert!(
            error.contains("not a Debian package") || error.contains("dpkg-deb"),
            "{error}"
        );
        assert!(Package::read(&dir.path().join("missing.deb")).is_err());
    }
}
