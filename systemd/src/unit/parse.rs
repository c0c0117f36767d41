//! The unit-file parser and serializer (go-systemd semantics, spec 3.2).

use crate::unit::UnitHash;

/// One `Name=Value` line of a unit file, with the section it stands in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnitOption {
    pub section: String,
    pub name: String,
    pub value: String,
}

/// A unit file as an ordered list of options (duplicates kept, file order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitFile {
    options: Vec<UnitOption>,
}

/// Why a unit file did not parse; the messages are the original's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("found garbage after section name {0}")]
    GarbageAfterSection(String),
    #[error("unexpected newline encountered while parsing option name")]
    NewlineInOptionName,
    #[error("EOF")]
    Eof,
    #[error("line too long (max 2048 bytes)")]
    LineTooLong,
}

impl UnitFile {
    /// Parses unit-file text with go-systemd's `unit.Deserialize` semantics.
    ///
    /// # Errors
    /// The original's parse errors (see [`ParseError`]).
    pub fn parse(text: &str) -> Result<UnitFile, ParseError> {
        let _ = text;
        todo!()
    }

    /// A unit from options as they are (API entities carry options, not text).
    pub fn from_options(options: Vec<UnitOption>) -> UnitFile {
        UnitFile { options }
    }

    pub fn options(&self) -> &[UnitOption] {
        &self.options
    }

    /// Options in canonical order: grouped by section in order of first
    /// appearance, file order within a section (what the API returns).
    pub fn canonical_options(&self) -> Vec<UnitOption> {
        todo!()
    }

    /// The canonical text (go-systemd `unit.Serialize`): stored, written to
    /// disk, printed by `fleetctl cat` and hashed.
    pub fn serialize(&self) -> String {
        todo!()
    }

    /// SHA1 of [`UnitFile::serialize`].
    pub fn hash(&self) -> UnitHash {
        todo!()
    }

    /// The raw values of `section`/`name`, in file order.
    pub fn values<'a>(&'a self, section: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
            .map(|o| o.value.as_str())
    }

    /// The first `[Unit] Description`, if any.
    pub fn description(&self) -> Option<&str> {
        self.values("Unit", "Description").next()
    }

    /// Whether the unit has options in `section` (e.g. `Install`, spec 3.8).
    pub fn has_section(&self, section: &str) -> bool {
        self.options.iter().any(|o| o.section == section)
    }
}
