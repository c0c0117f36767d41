//! Unit names: validation (spec 3.1) and template decomposition.

use std::fmt;
use std::str::FromStr;

/// A unit name fleet accepts (`name[@instance].type`), checked once at the edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(String);

/// Why a unit name is invalid; the messages are the original's (spec 3.1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUnitName {
    #[error("unit name cannot be empty")]
    Empty,
    #[error("unit name exceeds maximum length (256)")]
    TooLong,
    #[error("unit name must contain \".\"")]
    NoDot,
    #[error("unit name cannot end in \".\"")]
    EndsInDot,
    #[error("invalid unit type: {0:?}")]
    InvalidType(String),
    #[error("invalid unit type for template: {0:?}")]
    InvalidTemplateType(String),
    #[error("invalid character '{0}' in unit name")]
    InvalidCharacter(char),
    #[error("unit name cannot start in \"@\"")]
    StartsWithAt,
}

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The suffix after the last `.` (`service`).
    pub fn suffix(&self) -> &str {
        todo!()
    }
    /// The text before the first `@` (or the whole name without suffix).
    pub fn prefix(&self) -> &str {
        todo!()
    }
    /// The text after the first `@`, before the suffix; empty when none.
    pub fn instance(&self) -> &str {
        todo!()
    }
    /// `foo@.service`: a template (has `@`, empty instance).
    pub fn is_template(&self) -> bool {
        todo!()
    }
    /// `foo@bar.service`: an instance (non-empty instance).
    pub fn is_instance(&self) -> bool {
        todo!()
    }
    /// For an instance or a template, the template's name `prefix@.suffix`.
    pub fn template(&self) -> Option<UnitName> {
        todo!()
    }
    /// The name without its suffix (`%N`).
    pub fn without_suffix(&self) -> &str {
        todo!()
    }
}

impl FromStr for UnitName {
    type Err = InvalidUnitName;
    fn from_str(s: &str) -> Result<UnitName, InvalidUnitName> {
        let _ = s;
        todo!()
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
