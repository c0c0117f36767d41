//! The `[X-Fleet]` section: requirements of one unit (spec 3.4, 3.6).

use std::collections::{BTreeMap, BTreeSet};

use crate::unit::{UnitFile, UnitName};

/// The scheduling requirements of one named unit, specifiers (`%n %N %p %i`)
/// resolved, aliases merged. Built once per unit and reused by the scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID` (first value): a full machine id or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf`: units that must run on the same machine (exact names).
    pub machine_of: Vec<String>,
    /// `MachineMetadata`: key -> allowed values (AND across keys, OR within one).
    pub machine_metadata: BTreeMap<String, BTreeSet<String>>,
    /// `Conflicts`: Go `path.Match` globs, one per whitespace-separated item.
    pub conflicts: Vec<String>,
    /// `Global` (last value, truthy per spec 3.6).
    pub global: bool,
    /// `Replaces`: globs of units this one displaces.
    pub replaces: Vec<String>,
}

impl Requirements {
    /// The `[X-Fleet]` requirements of `unit` named `name` (spec 3.4, 3.6).
    pub fn of(unit: &UnitFile, name: &UnitName) -> Requirements {
        let _ = (unit, name);
        todo!()
    }

    /// Whether a machine with this full id satisfies `MachineID` (full or short).
    pub fn machine_id_matches(&self, machine_id: &str) -> bool {
        let _ = machine_id;
        todo!()
    }

    /// Whether a machine with this merged metadata satisfies `MachineMetadata`.
    pub fn metadata_matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        let _ = metadata;
        todo!()
    }

    /// Symmetric conflict test between this unit (`name`) and another unit.
    /// A unit never conflicts with itself.
    pub fn conflicts_with(&self, name: &str, other_name: &str, other: &Requirements) -> bool {
        let _ = (name, other_name, other);
        todo!()
    }

    /// Whether one of this unit's `Replaces` globs matches `other_name`.
    pub fn replaces(&self, other_name: &str) -> bool {
        let _ = other_name;
        todo!()
    }
}

/// The original's `ValidateOptions` (spec 3.6), on raw values without
/// specifier substitution. The error text is the original's message.
pub fn validate_options(unit: &UnitFile) -> Result<(), String> {
    let _ = unit;
    todo!()
}

/// Keys in `[X-Fleet]` that fleet does not know (fleetctl warns about them).
pub fn unrecognized_requirements(unit: &UnitFile) -> Vec<String> {
    let _ = unit;
    todo!()
}
