//! Unit files: parse, canonical form, hash, names, `[X-Fleet]` requirements.
//!
//! The hash of a unit is the SHA1 of its canonical text, so the parser and the
//! serializer here must match go-systemd's `unit.Deserialize`/`unit.Serialize`
//! byte for byte: our hashes equal the original's (Documentation/compatibility.md,
//! "Unit files and the unit hash").
//!
//! - [`UnitFile`]: an ordered list of [`UnitOption`]s; [`UnitFile::parse`],
//!   [`UnitFile::serialize`] (canonical text) and [`UnitFile::hash`].
//! - [`UnitName`]: a validated unit name, with its template parts;
//!   [`recognized_type`] and [`fleetctl_unit_name`] for fleetctl and the agent.
//! - [`Requirements`]: the `[X-Fleet]` options of one named unit, specifiers
//!   resolved, and the matching rules the scheduler needs.
//! - [`validate_options`]: the original's validation of `[X-Fleet]` options.
//! - [`glob_match`]: Go's `path.Match`, which Conflicts and Replaces use.

mod fleet;
mod glob;
mod hash;
mod name;
mod parse;

pub use fleet::{
    MAX_RETRIES, OnPartition, Requirements, X_FLEET, is_truthy, parse_multivalue_line,
    runs_to_completion, unrecognized_requirements, validate_options,
};
pub use glob::{glob_is_valid, glob_match};
pub use hash::UnitHash;
pub use name::{InvalidUnitName, UnitName, fleetctl_unit_name, recognized_type};
pub use parse::{ParseError, UnitFile, UnitOption};
