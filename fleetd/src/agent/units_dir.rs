//! The units directory (`units_directory`, default `/run/fleet/units/`): the
//! files the agent writes and systemd links to. Everything in it is ours.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};
use tracing::warn;

/// File mode of a unit file: 0644, as the original wrote them.
const FILE_MODE: u32 = 0o644;
/// Mode of the directory when we create it.
const DIR_MODE: u32 = 0o755;

/// A file operation on the units directory failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct UnitsDirError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The units directory.
#[derive(Clone, Debug)]
pub struct UnitsDir {
    dir: PathBuf,
}

impl UnitsDir {
    pub fn new(dir: PathBuf) -> UnitsDir {
        UnitsDir { dir }
    }

    /// The path of `unit`'s file (as systemd sees it: the agent runs on the host).
    pub fn path(&self, unit: &UnitName) -> PathBuf {
        self.dir.join(unit.as_str())
    }

    /// Creates the directory (mode 0755) if it is missing.
    pub async fn ensure(&self) -> Result<(), UnitsDirError> {
        let error = |source| UnitsDirError {
            op: "creating",
            path: self.dir.clone(),
            source,
        };
        if tokio::fs::metadata(&self.dir).await.is_ok() {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(error)?;
        tokio::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(DIR_MODE))
            .await
            .map_err(error)
    }

    /// Writes `file`'s canonical text as `unit`'s file (mode 0644),
    /// atomically: a temporary file renamed over the old one.
    pub async fn write(&self, unit: &UnitName, file: &UnitFile) -> Result<PathBuf, UnitsDirError> {
        let path = self.path(unit);
        let temp = self.dir.join(format!(".{unit}.tmp"));
        let error = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| UnitsDirError { op, path, source }
        };
        tokio::fs::write(&temp, file.serialize())
            .await
            .map_err(error("writing", &temp))?;
        tokio::fs::set_permissions(&temp, std::fs::Permissions::from_mode(FILE_MODE))
            .await
            .map_err(error("setting the mode of", &temp))?;
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(error("renaming into place", &path))?;
        Ok(path)
    }

    /// Removes `unit`'s file; a missing file is fine.
    pub async fn remove(&self, unit: &UnitName) -> Result<(), UnitsDirError> {
        let path = self.path(unit);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(UnitsDirError {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// The file of `unit` as written, if it is there and parses (`None`
    /// otherwise: the caller falls back to its safe default).
    pub async fn read(&self, unit: &UnitName) -> Option<UnitFile> {
        let text = tokio::fs::read_to_string(self.path(unit)).await.ok()?;
        UnitFile::parse(&text).ok()
    }

    /// Every unit file in the directory with the hash of its canonical text
    /// (`None` when it does not parse). Files whose name is not a unit name
    /// are skipped with a warning (never ours).
    pub async fn scan(&self) -> Result<BTreeMap<UnitName, Option<UnitHash>>, UnitsDirError> {
        let error = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| UnitsDirError { op, path, source }
        };
        let mut found = BTreeMap::new();
        let mut entries = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(error("listing", &self.dir))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(error("listing", &self.dir))?
        {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                warn!(path = %entry.path().display(), "Skipping a file whose name is not UTF-8 in the units directory.");
                continue;
            };
            if file_name.starts_with('.') {
                continue; // our temporary files
            }
            let Ok(unit) = file_name.parse::<UnitName>() else {
                warn!(path = %entry.path().display(), "Skipping a file that is not named like a unit in the units directory.");
                continue;
            };
            let text = tokio::fs::read_to_string(entry.path())
                .await
                .map_err(error("reading", &entry.path()))?;
            let hash = match UnitFile::parse(&text) {
                Ok(file) => Some(file.hash()),
                Err(parse_error) => {
                    warn!(unit = %unit, error = %parse_error, "A unit file on disk does not parse; it will be replaced or removed.");
                    None
                }
            };
            found.insert(unit, hash);
        }
        Ok(found)
    }
}
