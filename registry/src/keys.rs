//! The etcd key layout. **Nothing outside this module formats a key.**
//!
//! `P` is `etcd_key_prefix` (default `/_coreos.com/fleet/`, always with a
//! trailing `/`). Every value is JSON unless said otherwise.
//!
//! **The rule: a key's first segment after `P` names its only writer.** etcd
//! grants permissions on key ranges, so grouping keys by writer lets each
//! writer get a credential that reaches its own keys and nothing else (see
//! `Documentation/security.md`, "etcd: one identity per machine"):
//!
//! - `P/machine/<kind>/<machine>…`: written by that machine's fleetd only.
//!   Its etcd role is granted exactly [`Keys::machine_grants`], one range per
//!   kind; a new kind a machine writes must be added there.
//! - `P/engine/…`: written by the elected engine only (role `fleet-engine`).
//! - `P/api/…`: written by the API of a control-plane fleetd (role
//!   `fleet-api-writer`).
//!
//! Every fleetd may read all of `P` (its API serves reads, its agent reads
//! its schedule and unit contents).
//!
//! | key | value | lease | writer |
//! |---|---|---|---|
//! | `P/machine/presence/<machine>` | `{"id","publicIP","metadata","version","disableEngine","apiURL"}` (configured metadata; `apiURL` optional) | machine lease | the machine's heart |
//! | `P/machine/states/<machine>/<unit>` | `{"hash","loadState","activeState","subState","reached"}` | machine lease | the machine's agent |
//! | `P/api/units/<unit>` | `{"hash","desiredState"}` | none | API |
//! | `P/api/content/<hash>` | the canonical unit text | none | API; deleted with its last reference |
//! | `P/api/content-refs/<hash>/<unit>` | empty | none | API, with the unit record in one txn |
//! | `P/api/metadata/<machine>/<key>` | bare string; `""` removes a configured key | none (survives restarts) | API `PATCH /machines` |
//! | `P/engine/schedule/<machine>/<unit>` | `{"hash","targetState","reason"}` (`reason` optional: why, for events) | none | engine (leader-guarded txn) |
//! | `P/engine/placement/<unit>/<machine>` | empty | none | engine, with the schedule key in one txn |
//! | `P/engine/leader` | the leader's machine id | engine lease | engines (create-if-absent) |
//! | `P/api/rollouts/<name>` | a rolling update's spec and controls | none | API |
//! | `P/engine/rollout-progress/<name>` | the rollout's progress and history | none | engine (leader-guarded txn) |
//! | `P/api/content-refs/<hash>/rollout:<name>` | empty | none | API at the rollout's start; the engine (on a control-plane machine, which holds the API-writer role too) at its end |
//! | `P/machine/health/<machine>/<unit>` | `healthy` or `unhealthy` (declared health check) | machine lease | the machine's agent |
//! | `P/api/cordon/<machine>` | `{"draining","by","reason","since"}` | none (survives restarts) | API writers (`/fleet/x1/machines/<id>/cordon`); read by the engine |
//! | `P/machine/runs/<machine>/<unit>` | `{"hash","result","exitStatus","exitedAt","attempt"}`: how a run-to-completion unit's run ended | none (outlives the machine's lease) | the machine's agent; read by the engine |
//! | `P/engine/runs/<unit>` | `{"hash","attempts","failures"}`: a run-to-completion unit's runs and the failures acted on | none | engine (leader-guarded) |
//!
//! `P/engine/probe` and `P/api/probe` are never written: a fleetd learns
//! whether its credential may write a writer's range with a transaction that
//! would put them under a compare that never holds (etcd checks the
//! permissions of every operation of a txn, taken branch or not).
//!
//! Why this shape:
//! - Agents watch only `P/engine/schedule/<their id>/`: a decision wakes one
//!   machine.
//! - `P/engine/placement/<unit>/` answers "where does this unit run" with one
//!   small range read (what `GET /units/<name>` needs) instead of a scan of
//!   the schedule.
//! - Unit states are keyed machine first (the writer's range). The states of
//!   one unit are read with one single-key get per live machine (one txn),
//!   and the state on the machine a unit is placed on with one get: neither
//!   scans the states of other units.
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
    /// `P/machine/presence/<machine>`.
    Machine(MachineId),
    /// `P/api/metadata/<machine>/<key>`.
    Metadata { machine: MachineId, key: String },
    /// `P/api/units/<unit>`.
    Unit(UnitName),
    /// `P/api/content/<hash>`.
    Content(UnitHash),
    /// `P/api/content-refs/<hash>/<unit>`.
    ContentRef { hash: UnitHash, unit: UnitName },
    /// `P/engine/schedule/<machine>/<unit>`.
    Scheduled { machine: MachineId, unit: UnitName },
    /// `P/engine/placement/<unit>/<machine>`.
    Placement { unit: UnitName, machine: MachineId },
    /// `P/machine/states/<machine>/<unit>`.
    State { unit: UnitName, machine: MachineId },
    /// `P/engine/leader`.
    EngineLeader,
    /// `P/api/cordon/<machine>`.
    Cordon(MachineId),
    /// `P/machine/runs/<machine>/<unit>`.
    Run { unit: UnitName, machine: MachineId },
    /// `P/engine/runs/<unit>`.
    RunAttempts(UnitName),
}

/// A range of keys an etcd role is granted: one key, or every key under a
/// prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Key(String),
    Prefix(String),
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

    // --- the writers' ranges (etcd roles are granted these) ---

    /// Everything only the engine writes.
    pub fn engine_prefix(&self) -> String {
        format!("{}engine/", self.prefix)
    }
    /// Everything only API writers (control-plane fleetds) write.
    pub fn api_prefix(&self) -> String {
        format!("{}api/", self.prefix)
    }
    /// A key in the engine's range that is never written (see the module doc).
    pub fn engine_probe(&self) -> String {
        format!("{}engine/probe", self.prefix)
    }
    /// A key in the API writers' range that is never written.
    pub fn api_probe(&self) -> String {
        format!("{}api/probe", self.prefix)
    }
    /// Everything `machine` writes, and nothing another machine writes: its
    /// presence key and its unit states.
    pub fn machine_grants(&self, machine: &MachineId) -> Vec<KeyRange> {
        vec![
            KeyRange::Key(self.machine(machine)),
            KeyRange::Prefix(self.machine_states(machine)),
            KeyRange::Prefix(self.machine_health(machine)),
            KeyRange::Key(self.stopped(machine)),
            // To delete the unload orders it carried out (its own only).
            KeyRange::Prefix(self.unload_orders(machine)),
            KeyRange::Prefix(self.machine_runs(machine)),
        ]
    }

    // --- written by each machine ---

    pub fn machines(&self) -> String {
        format!("{}machine/presence/", self.prefix)
    }
    pub fn machine(&self, machine: &MachineId) -> String {
        format!("{}machine/presence/{machine}", self.prefix)
    }
    pub fn states(&self) -> String {
        format!("{}machine/states/", self.prefix)
    }
    pub fn machine_states(&self, machine: &MachineId) -> String {
        format!("{}machine/states/{machine}/", self.prefix)
    }
    pub fn state(&self, unit: &UnitName, machine: &MachineId) -> String {
        format!("{}machine/states/{machine}/{unit}", self.prefix)
    }

    /// `P/machine/runs/<machine>/<unit>`: how the run of a run-to-completion
    /// unit ended on that machine, written by its agent **without a lease**,
    /// so that the engine still knows the unit finished (and does not run it
    /// again) when the machine is lost; the agent deletes it when the unit
    /// is started again, stopped or unloaded.
    pub fn all_runs(&self) -> String {
        format!("{}machine/runs/", self.prefix)
    }
    pub fn machine_runs(&self, machine: &MachineId) -> String {
        format!("{}machine/runs/{machine}/", self.prefix)
    }
    pub fn run(&self, unit: &UnitName, machine: &MachineId) -> String {
        format!("{}machine/runs/{machine}/{unit}", self.prefix)
    }

    // --- written by the API ---

    pub fn all_metadata(&self) -> String {
        format!("{}api/metadata/", self.prefix)
    }
    pub fn machine_metadata(&self, machine: &MachineId) -> String {
        format!("{}api/metadata/{machine}/", self.prefix)
    }
    pub fn metadata(&self, machine: &MachineId, key: &str) -> String {
        format!("{}api/metadata/{machine}/{key}", self.prefix)
    }
    pub fn units(&self) -> String {
        format!("{}api/units/", self.prefix)
    }
    pub fn unit(&self, unit: &UnitName) -> String {
        format!("{}api/units/{unit}", self.prefix)
    }
    pub fn all_content(&self) -> String {
        format!("{}api/content/", self.prefix)
    }
    pub fn content(&self, hash: &UnitHash) -> String {
        format!("{}api/content/{hash}", self.prefix)
    }
    pub fn content_refs(&self, hash: &UnitHash) -> String {
        format!("{}api/content-refs/{hash}/", self.prefix)
    }
    pub fn content_ref(&self, hash: &UnitHash, unit: &UnitName) -> String {
        format!("{}api/content-refs/{hash}/{unit}", self.prefix)
    }

    // --- written by the engine ---

    pub fn schedule(&self) -> String {
        format!("{}engine/schedule/", self.prefix)
    }
    pub fn machine_schedule(&self, machine: &MachineId) -> String {
        format!("{}engine/schedule/{machine}/", self.prefix)
    }
    pub fn scheduled(&self, machine: &MachineId, unit: &UnitName) -> String {
        format!("{}engine/schedule/{machine}/{unit}", self.prefix)
    }
    pub fn placements(&self) -> String {
        format!("{}engine/placement/", self.prefix)
    }
    pub fn unit_placements(&self, unit: &UnitName) -> String {
        format!("{}engine/placement/{unit}/", self.prefix)
    }
    pub fn placement(&self, unit: &UnitName, machine: &MachineId) -> String {
        format!("{}engine/placement/{unit}/{machine}", self.prefix)
    }
    pub fn engine_leader(&self) -> String {
        format!("{}engine/leader", self.prefix)
    }
    /// `P/engine/runs/<unit>`: the engine's count of a run-to-completion
    /// unit's runs and the failed runs it acted on (leader-guarded).
    pub fn all_run_attempts(&self) -> String {
        format!("{}engine/runs/", self.prefix)
    }
    pub fn run_attempts(&self, unit: &UnitName) -> String {
        format!("{}engine/runs/{unit}", self.prefix)
    }

    // --- Rolling updates. Writers: `P/api/rollouts/<name>` (the spec and the
    // operator's controls) the API; `P/engine/rollout-progress/<name>` the
    // elected engine (leader-guarded); `P/api/content-refs/<hash>/rollout:<name>` (keeps
    // a rollout's old and new content alive) the API when the rollout starts,
    // released by the engine when it ends. At the end of a successful rollout
    // the engine also switches the unit records to the new content.

    pub fn rollouts(&self) -> String {
        format!("{}api/rollouts/", self.prefix)
    }
    pub fn rollout(&self, name: &str) -> String {
        format!("{}api/rollouts/{name}", self.prefix)
    }
    pub fn all_rollout_progress(&self) -> String {
        format!("{}engine/rollout-progress/", self.prefix)
    }
    pub fn rollout_progress(&self, name: &str) -> String {
        format!("{}engine/rollout-progress/{name}", self.prefix)
    }
    pub fn rollout_content_ref(&self, hash: &UnitHash, rollout: &str) -> String {
        format!("{}api/content-refs/{hash}/rollout:{rollout}", self.prefix)
    }
    /// `P/machine/health/<machine>/<unit>`: `healthy` or `unhealthy`, the
    /// verdict of the unit's declared health check; written by that
    /// machine's agent under its lease, only on change. Machine first, like
    /// unit states: the writer's own range.
    pub fn all_health(&self) -> String {
        format!("{}machine/health/", self.prefix)
    }
    pub fn machine_health(&self, machine: &MachineId) -> String {
        format!("{}machine/health/{machine}/", self.prefix)
    }
    pub fn health(&self, unit: &UnitName, machine: &MachineId) -> String {
        format!("{}machine/health/{machine}/{unit}", self.prefix)
    }

    // --- cordon and drain: written by the API writers, read by the engine ---

    pub fn cordons(&self) -> String {
        format!("{}api/cordon/", self.prefix)
    }
    pub fn cordon(&self, machine: &MachineId) -> String {
        format!("{}api/cordon/{machine}", self.prefix)
    }

    /// What `key` names; `None` for keys outside the layout or with names
    /// that do not parse (a foreign or corrupt key is ignored, never fatal).
    pub fn parse(&self, key: &str) -> Option<RegistryKey> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (writer, rest) = rest.split_once('/')?;
        let (dir, rest) = match rest.split_once('/') {
            Some((dir, rest)) => (dir, rest),
            // `P/engine/leader` is the only key directly under a writer.
            None => (rest, ""),
        };
        let one = || (!rest.is_empty() && !rest.contains('/')).then_some(rest);
        let two = || {
            let (a, b) = rest.split_once('/')?;
            (!a.is_empty() && !b.is_empty() && !b.contains('/')).then_some((a, b))
        };
        match (writer, dir) {
            ("machine", "presence") => Some(RegistryKey::Machine(one()?.parse().ok()?)),
            ("machine", "states") => {
                let (machine, unit) = two()?;
                Some(RegistryKey::State {
                    unit: unit.parse().ok()?,
                    machine: machine.parse().ok()?,
                })
            }
            ("api", "metadata") => {
                let (machine, key) = two()?;
                Some(RegistryKey::Metadata {
                    machine: machine.parse().ok()?,
                    key: key.to_owned(),
                })
            }
            ("api", "units") => Some(RegistryKey::Unit(one()?.parse().ok()?)),
            ("api", "content") => Some(RegistryKey::Content(one()?.parse().ok()?)),
            ("api", "content-refs") => {
                let (hash, unit) = two()?;
                Some(RegistryKey::ContentRef {
                    hash: hash.parse().ok()?,
                    unit: unit.parse().ok()?,
                })
            }
            ("engine", "schedule") => {
                let (machine, unit) = two()?;
                Some(RegistryKey::Scheduled {
                    machine: machine.parse().ok()?,
                    unit: unit.parse().ok()?,
                })
            }
            ("engine", "placement") => {
                let (unit, machine) = two()?;
                Some(RegistryKey::Placement {
                    unit: unit.parse().ok()?,
                    machine: machine.parse().ok()?,
                })
            }
            ("engine", "leader") => rest.is_empty().then_some(RegistryKey::EngineLeader),
            ("api", "cordon") => Some(RegistryKey::Cordon(one()?.parse().ok()?)),
            ("machine", "runs") => {
                let (machine, unit) = two()?;
                Some(RegistryKey::Run {
                    unit: unit.parse().ok()?,
                    machine: machine.parse().ok()?,
                })
            }
            ("engine", "runs") => Some(RegistryKey::RunAttempts(one()?.parse().ok()?)),
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

// --- Fail-safe markers (Documentation/reliability.md, "Fail-safe behaviour") ---
//
// | `P/engine/unload-order/<machine>/<unit>` | the unplacement's reason (for events) or empty; its mod revision is what counts | none | engine, in the txn that unplaces the unit; the machine's agent deletes it after the unload (the one engine range a machine is granted, and only its own orders: forging one can only unload its own unit) |
// | `P/machine/stopped/<machine>` | `{"at":<unix seconds>}` | none (survives the stop) | the machine's heart at a clean stop; deleted when it registers again |
impl Keys {
    /// `P/engine/unload-order/<machine>/`: the engine's unload orders for `machine`.
    pub fn unload_orders(&self, machine: &MachineId) -> String {
        format!("{}engine/unload-order/{machine}/", self.prefix)
    }
    /// `P/engine/unload-order/<machine>/<unit>`: written by the engine in the same
    /// leader-guarded txn that takes `unit` off `machine`, so the agent can
    /// tell an ordered unload from a wiped or foreign registry.
    pub fn unload_order(&self, machine: &MachineId, unit: &UnitName) -> String {
        format!("{}engine/unload-order/{machine}/{unit}", self.prefix)
    }
    /// The machine and unit of an unload order key (its value is the reason
    /// of the unplacement, which the event stream reads).
    pub fn parse_unload_order(&self, key: &str) -> Option<(MachineId, UnitName)> {
        let dir = format!("{}engine/unload-order/", self.prefix);
        let (machine, unit) = self.children(&dir, key)?;
        Some((machine.parse().ok()?, unit.parse().ok()?))
    }
    /// `P/machine/stopped/`: machines whose fleetd stopped cleanly, units left running.
    pub fn stopped_machines(&self) -> String {
        format!("{}machine/stopped/", self.prefix)
    }
    pub fn stopped(&self, machine: &MachineId) -> String {
        format!("{}machine/stopped/{machine}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> MachineId {
        id.parse().expect("valid machine id")
    }

    fn u(name: &str) -> UnitName {
        name.parse().expect("valid unit name")
    }

    #[test]
    fn prefix_gets_a_trailing_slash() {
        assert_eq!(Keys::new("/x").machine(&m("m1")), "/x/machine/presence/m1");
        assert_eq!(Keys::new("/x/").machine(&m("m1")), "/x/machine/presence/m1");
    }

    #[test]
    fn children_split_two_segments() {
        let keys = Keys::new("/p/");
        let key = keys.state(&u("a.service"), &m("m1"));
        assert_eq!(
            keys.children(&keys.states(), &key),
            Some(("m1", "a.service"))
        );
        assert_eq!(
            keys.child(&keys.units(), &keys.unit(&u("a.service"))),
            Some("a.service")
        );
        assert_eq!(keys.child(&keys.units(), "/p/api/units/a/b"), None);
    }

    #[test]
    fn parse_reads_back_what_the_layout_formats() {
        let keys = Keys::new("/p/");
        let machine: MachineId = "m1".parse().expect("valid id");
        assert_eq!(
            keys.parse(&keys.machine(&m("m1"))),
            Some(RegistryKey::Machine(machine.clone()))
        );
        assert_eq!(
            keys.parse(&keys.metadata(&m("m1"), "region")),
            Some(RegistryKey::Metadata {
                machine,
                key: "region".to_owned()
            })
        );
        let hash = UnitHash([7; 20]);
        assert_eq!(
            keys.parse(&keys.content(&hash)),
            Some(RegistryKey::Content(hash))
        );
        assert_eq!(
            keys.parse(&keys.engine_leader()),
            Some(RegistryKey::EngineLeader)
        );
        assert_eq!(
            keys.parse(&keys.state(&u("a.service"), &m("m1"))),
            Some(RegistryKey::State {
                unit: "a.service".parse().expect("valid name"),
                machine: "m1".parse().expect("valid id"),
            })
        );
        assert_eq!(
            keys.parse(&keys.run(&u("a.service"), &m("m1"))),
            Some(RegistryKey::Run {
                unit: u("a.service"),
                machine: m("m1"),
            })
        );
        assert_eq!(
            keys.parse(&keys.run_attempts(&u("a.service"))),
            Some(RegistryKey::RunAttempts(u("a.service")))
        );
        assert_eq!(keys.parse(&keys.engine_probe()), None);
        assert_eq!(keys.parse(&keys.api_probe()), None);
        assert_eq!(keys.parse("/p/engine/leader/x"), None);
        assert_eq!(keys.parse("/q/machine/presence/m1"), None);
        assert_eq!(keys.parse("/p/machine/presence/"), None);
        assert_eq!(keys.parse("/p/machine/presence/a/b"), None);
        assert_eq!(keys.parse("/p/api/content/not-a-hash"), None);
    }

    /// Every key a machine writes is inside its grants, and no key of another
    /// machine, the API or the engine is.
    #[test]
    fn machine_grants_cover_its_own_keys_only() {
        let keys = Keys::new("/p/");
        let within = |key: &str, machine: &str| {
            keys.machine_grants(&m(machine))
                .iter()
                .any(|range| match range {
                    KeyRange::Key(own) => own == key,
                    KeyRange::Prefix(prefix) => key.starts_with(prefix.as_str()),
                })
        };
        assert!(within(&keys.machine(&m("m1")), "m1"));
        assert!(within(&keys.state(&u("a.service"), &m("m1")), "m1"));
        assert!(within(&keys.health(&u("a.service"), &m("m1")), "m1"));
        assert!(within(&keys.run(&u("a.service"), &m("m1")), "m1"));
        for foreign in [
            keys.run(&u("a.service"), &m("m10")),
            keys.run_attempts(&u("a.service")),
            keys.machine(&m("m10")),
            keys.machine(&m("m2")),
            keys.state(&u("a.service"), &m("m10")),
            keys.health(&u("a.service"), &m("m2")),
            keys.rollout("r1"),
            keys.rollout_progress("r1"),
            keys.metadata(&m("m1"), "region"),
            keys.unit(&u("a.service")),
            keys.scheduled(&m("m1"), &u("a.service")),
            keys.placement(&u("a.service"), &m("m1")),
            keys.engine_leader(),
        ] {
            assert!(!within(&foreign, "m1"), "{foreign} is granted to m1");
        }
        for (writer, key) in [
            (keys.api_prefix(), keys.unit(&u("a.service"))),
            (
                keys.api_prefix(),
                keys.content_ref(&UnitHash([0xab; 20]), &u("a.service")),
            ),
            (keys.api_prefix(), keys.metadata(&m("m1"), "region")),
            (
                keys.engine_prefix(),
                keys.scheduled(&m("m1"), &u("a.service")),
            ),
            (
                keys.engine_prefix(),
                keys.placement(&u("a.service"), &m("m1")),
            ),
            (keys.engine_prefix(), keys.engine_leader()),
        ] {
            assert!(key.starts_with(&writer), "{key} is outside {writer}");
        }
    }
}
