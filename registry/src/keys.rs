//! The etcd key layout. **Nothing outside this module formats a key.**
//!
//! `P` is `etcd_key_prefix` (default `/_coreos.com/fleet/`, always with a
//! trailing `/`). Every value is JSON unless said otherwise.
//!
//! | key | value | lease | writer |
//! |---|---|---|---|
//! | `P/machines/<machine>` | `{"id","publicIP","metadata","version","disableEngine"}` (configured metadata) | machine lease | the machine's heart |
//! | `P/metadata/<machine>/<key>` | bare string; `""` removes a configured key | none (survives restarts) | API `PATCH /machines` |
//! | `P/units/<unit>` | `{"hash","desiredState"}` | none | API |
//! | `P/content/<hash>` | the canonical unit text | none | API; deleted with its last reference |
//! | `P/content-refs/<hash>/<unit>` | empty | none | API, with the unit record in one txn |
//! | `P/schedule/<machine>/<unit>` | `{"hash","targetState"}` | none | engine (leader-guarded txn) |
//! | `P/placement/<unit>/<machine>` | empty | none | engine, with the schedule key in one txn |
//! | `P/states/<unit>/<machine>` | `{"hash","loadState","activeState","subState","reached"}` | machine lease | the machine's agent |
//! | `P/engine/leader` | the leader's machine id | engine lease | engines (create-if-absent) |
//! | `P/cordon/<machine>` | `{"draining","by","reason","since"}` | none (survives restarts) | API writers (`/fleet/x1/machines/<id>/cordon`); read by the engine |
//!
//! Why this shape:
//! - Agents watch only `P/schedule/<their id>/`: a decision wakes one machine.
//! - `P/placement/<unit>/` answers "where does this unit run" with one small
//!   range read (what `GET /units/<name>` needs) instead of a scan of the schedule.
//! - Content is stored once per hash; `content-refs` lets the last destroy
//!   delete it in a txn that compares the whole refs range to empty.
//! - Everything a machine reports lives under its lease: when it is gone, its
//!   presence and its unit states vanish together, with no heartbeat writes.

use fleet_systemd::unit::{UnitHash, UnitName};

use crate::model::MachineId;

/// What a key of the layout names, parsed back (for watch events): the only
/// way code outside this module learns what a key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryKey {
    /// `P/machines/<machine>`.
    Machine(MachineId),
    /// `P/metadata/<machine>/<key>`.
    Metadata { machine: MachineId, key: String },
    /// `P/units/<unit>`.
    Unit(UnitName),
    /// `P/content/<hash>`.
    Content(UnitHash),
    /// `P/content-refs/<hash>/<unit>`.
    ContentRef { hash: UnitHash, unit: UnitName },
    /// `P/schedule/<machine>/<unit>`.
    Scheduled { machine: MachineId, unit: UnitName },
    /// `P/placement/<unit>/<machine>`.
    Placement { unit: UnitName, machine: MachineId },
    /// `P/states/<unit>/<machine>`.
    State { unit: UnitName, machine: MachineId },
    /// `P/engine/leader`.
    EngineLeader,
    /// `P/cordon/<machine>`.
    Cordon(MachineId),
}

/// The key layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix`; a trailing `/` is added when missing.
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn machines(&self) -> String {
        format!("{}machines/", self.prefix)
    }
    pub fn machine(&self, machine: &str) -> String {
        format!("{}machines/{machine}", self.prefix)
    }
    pub fn all_metadata(&self) -> String {
        format!("{}metadata/", self.prefix)
    }
    pub fn machine_metadata(&self, machine: &str) -> String {
        format!("{}metadata/{machine}/", self.prefix)
    }
    pub fn metadata(&self, machine: &str, key: &str) -> String {
        format!("{}metadata/{machine}/{key}", self.prefix)
    }
    pub fn units(&self) -> String {
        format!("{}units/", self.prefix)
    }
    pub fn unit(&self, unit: &str) -> String {
        format!("{}units/{unit}", self.prefix)
    }
    pub fn all_content(&self) -> String {
        format!("{}content/", self.prefix)
    }
    pub fn content(&self, hash: &str) -> String {
        format!("{}content/{hash}", self.prefix)
    }
    pub fn content_refs(&self, hash: &str) -> String {
        format!("{}content-refs/{hash}/", self.prefix)
    }
    pub fn content_ref(&self, hash: &str, unit: &str) -> String {
        format!("{}content-refs/{hash}/{unit}", self.prefix)
    }
    pub fn schedule(&self) -> String {
        format!("{}schedule/", self.prefix)
    }
    pub fn machine_schedule(&self, machine: &str) -> String {
        format!("{}schedule/{machine}/", self.prefix)
    }
    pub fn scheduled(&self, machine: &str, unit: &str) -> String {
        format!("{}schedule/{machine}/{unit}", self.prefix)
    }
    pub fn placements(&self) -> String {
        format!("{}placement/", self.prefix)
    }
    pub fn unit_placements(&self, unit: &str) -> String {
        format!("{}placement/{unit}/", self.prefix)
    }
    pub fn placement(&self, unit: &str, machine: &str) -> String {
        format!("{}placement/{unit}/{machine}", self.prefix)
    }
    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }
    pub fn unit_states(&self, unit: &str) -> String {
        format!("{}states/{unit}/", self.prefix)
    }
    pub fn state(&self, unit: &str, machine: &str) -> String {
        format!("{}states/{unit}/{machine}", self.prefix)
    }
    pub fn engine_leader(&self) -> String {
        format!("{}engine/leader", self.prefix)
    }

    // --- cordon and drain: written by the API writers, read by the engine ---

    pub fn cordons(&self) -> String {
        format!("{}cordon/", self.prefix)
    }
    pub fn cordon(&self, machine: &str) -> String {
        format!("{}cordon/{machine}", self.prefix)
    }

    /// What `key` names; `None` for keys outside the layout or with names
    /// that do not parse (a foreign or corrupt key is ignored, never fatal).
    pub fn parse(&self, key: &str) -> Option<RegistryKey> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (dir, rest) = rest.split_once('/')?;
        let one = || (!rest.is_empty() && !rest.contains('/')).then_some(rest);
        let two = || {
            let (a, b) = rest.split_once('/')?;
            (!a.is_empty() && !b.is_empty() && !b.contains('/')).then_some((a, b))
        };
        match dir {
            "machines" => Some(RegistryKey::Machine(one()?.parse().ok()?)),
            "metadata" => {
                let (machine, key) = two()?;
                Some(RegistryKey::Metadata {
                    machine: machine.parse().ok()?,
                    key: key.to_owned(),
                })
            }
            "units" => Some(RegistryKey::Unit(one()?.parse().ok()?)),
            "content" => Some(RegistryKey::Content(one()?.parse().ok()?)),
            "content-refs" => {
                let (hash, unit) = two()?;
                Some(RegistryKey::ContentRef {
                    hash: hash.parse().ok()?,
                    unit: unit.parse().ok()?,
                })
            }
            "schedule" => {
                let (machine, unit) = two()?;
                Some(RegistryKey::Scheduled {
                    machine: machine.parse().ok()?,
                    unit: unit.parse().ok()?,
                })
            }
            "placement" => {
                let (unit, machine) = two()?;
                Some(RegistryKey::Placement {
                    unit: unit.parse().ok()?,
                    machine: machine.parse().ok()?,
                })
            }
            "states" => {
                let (unit, machine) = two()?;
                Some(RegistryKey::State {
                    unit: unit.parse().ok()?,
                    machine: machine.parse().ok()?,
                })
            }
            "engine" => (rest == "leader").then_some(RegistryKey::EngineLeader),
            "cordon" => Some(RegistryKey::Cordon(one()?.parse().ok()?)),
            _ => None,
        }
    }

    /// The last path segment of `key` after `dir` (e.g. the unit of a state
    /// key after `unit_states`); `None` when `key` is not directly under it.
    pub fn child<'a>(&self, dir: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(dir)
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
    }

    /// The two segments of `key` after `dir` (`<a>/<b>`).
    pub fn children<'a>(&self, dir: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(dir)?;
        let (a, b) = rest.split_once('/')?;
        (!a.is_empty() && !b.is_empty() && !b.contains('/')).then_some((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_gets_a_trailing_slash() {
        assert_eq!(Keys::new("/x").machine("m1"), "/x/machines/m1");
        assert_eq!(Keys::new("/x/").machine("m1"), "/x/machines/m1");
    }

    #[test]
    fn children_split_two_segments() {
        let keys = Keys::new("/p/");
        let key = keys.state("a.service", "m1");
        assert_eq!(
            keys.children(&keys.states(), &key),
            Some(("a.service", "m1"))
        );
        assert_eq!(
            keys.child(&keys.units(), &keys.unit("a.service")),
            Some("a.service")
        );
        assert_eq!(keys.child(&keys.units(), "/p/units/a/b"), None);
    }

    #[test]
    fn parse_reads_back_what_the_layout_formats() {
        let keys = Keys::new("/p/");
        let machine: MachineId = "m1".parse().expect("valid id");
        assert_eq!(
            keys.parse(&keys.machine("m1")),
            Some(RegistryKey::Machine(machine.clone()))
        );
        assert_eq!(
            keys.parse(&keys.metadata("m1", "region")),
            Some(RegistryKey::Metadata {
                machine,
                key: "region".to_owned()
            })
        );
        let hash = UnitHash([7; 20]);
        assert_eq!(
            keys.parse(&keys.content(&hash.to_string())),
            Some(RegistryKey::Content(hash))
        );
        assert_eq!(
            keys.parse(&keys.engine_leader()),
            Some(RegistryKey::EngineLeader)
        );
        assert_eq!(keys.parse("/p/engine/other"), None);
        assert_eq!(keys.parse("/q/machines/m1"), None);
        assert_eq!(keys.parse("/p/machines/"), None);
        assert_eq!(keys.parse("/p/machines/a/b"), None);
        assert_eq!(keys.parse("/p/content/not-a-hash"), None);
    }
}
