//! Typed changes for the engine and the agent: what a watch saw, in the
//! domain's words, never a raw key and value.
//!
//! The engine keeps an in-memory model of the cluster and the agent a copy of
//! its machine's schedule; both follow etcd through watches. A watch of
//! etcd yields keys and bytes. Left at that, each consumer would parse the
//! key to learn what it names, then hand the bytes back to a decoder that
//! parses the key again. Instead, a [`ChangeStream`] does it once, here,
//! next to the key layout ([`crate::keys`]) and the wire formats:
//!
//! ```no_run
//! # async fn example(registry: fleet_registry::Registry, from: fleet_registry::Revision) -> Result<(), fleet_registry::RegistryError> {
//! use fleet_registry::changes::{Change, Watched};
//! let mut units = registry.watch_changes(Watched::Units, from).await?;
//! while let Some(batch) = units.next().await? {
//!     for changed in batch {
//!         match changed.change {
//!             Change::UnitRecord { unit, record: Some((hash, target)) } => { /* … */ }
//!             Change::UnitRemoved(unit) => { /* … */ }
//!             _ => {}
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! A value that does not decode is logged at WARN where it is decoded; for a
//! unit record the change still says so ([`Change::UnitRecord`] with `record:
//! None`), because the engine must hold such a unit where it runs rather than
//! forget it. The API's event feed has its own, richer events
//! ([`crate::events::RegistryEvent`], with before and after); these are the
//! minimal facts a reconciler needs.

use fleet_systemd::unit::{UnitFile, UnitHash, UnitName};

use crate::cordon::Cordon;
use crate::keys::RegistryKey;
use crate::model::{MachineId, MachineState, Placement, RunOutcome, TargetState};
use crate::store::{Registry, RegistryError, Revision, WatchEvent, WatchEventKind, WatchStream};

/// What a [`ChangeStream`] follows: one part of the key layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Machine presence records.
    Machines,
    /// Every machine's dynamic metadata.
    Metadata,
    /// Unit records (name, content hash, desired state).
    Units,
    /// Unit file contents, by hash.
    Content,
    /// Rolling-update requests.
    Rollouts,
    /// Cordons and drains.
    Cordons,
    /// How the runs of run-to-completion units ended, on every machine.
    Runs,
    /// One machine's schedule (what its agent must run).
    ScheduleOf(MachineId),
    /// The engine leader key.
    EngineLeader,
}

/// One fact a watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A machine's presence record went away (its lease ended or it left).
    MachineRemoved(MachineId),
    /// A machine's presence record was written: the record as stored, with
    /// its configured metadata only (the dynamic metadata, which overrides
    /// it, comes as [`Change::MetadataChanged`]; merge with
    /// [`crate::store::merge_metadata`]).
    MachinePresent(MachineState),
    /// A dynamic metadata key of a machine was set (`Some`; an empty value
    /// is a tombstone that hides the configured key) or deleted (`None`).
    MetadataChanged {
        machine: MachineId,
        key: String,
        value: Option<String>,
    },
    /// A machine's record or metadata key was written but does not decode
    /// (logged by the decoder): read the machine again.
    MachineUpdated(MachineId),
    /// A unit record was written; `record` is its (content hash, desired
    /// state), `None` when the value does not decode.
    UnitRecord {
        unit: UnitName,
        record: Option<(UnitHash, TargetState)>,
    },
    /// A unit was destroyed.
    UnitRemoved(UnitName),
    /// A unit file content was written (parsed once here).
    Content { hash: UnitHash, file: UnitFile },
    /// A content blob went away (no unit uses it any more).
    ContentRemoved(UnitHash),
    /// A machine was cordoned or set to drain.
    Cordoned(Cordon),
    /// A machine's cordon was lifted.
    CordonLifted(MachineId),
    /// A run-to-completion unit's run on a machine ended this way.
    RunEnded(RunOutcome),
    /// The outcome of a unit's run on a machine was deleted (it runs again,
    /// or left the machine).
    RunForgotten { unit: UnitName, machine: MachineId },
    /// The engine placed a unit (or changed its target there).
    Placed(Placement),
    /// The engine took a unit off a machine.
    Unplaced { unit: UnitName, machine: MachineId },
    /// A rolling-update request was written (its JSON, decoded by the
    /// engine's rollout code, which owns that format).
    RolloutRequested { name: String, spec: Vec<u8> },
    /// A rolling-update request was deleted.
    RolloutRemoved(String),
    /// The engine leader key names this machine.
    LeaderIs(MachineId),
    /// The engine leader key is gone: nobody leads.
    LeaderGone,
}

/// A change and the revision it was made at.
#[derive(Clone, Debug)]
pub struct Changed {
    pub revision: Revision,
    pub change: Change,
}

/// The changes of one part of the layout, in revision order, grouped as etcd
/// sends them (all the changes of one transaction arrive in one batch).
pub struct ChangeStream {
    events: WatchStream,
    registry: Registry,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream").finish_non_exhaustive()
    }
}

impl ChangeStream {
    /// The next batch of changes (possibly empty: events of keys outside the
    /// layout, or values that do not decode, are dropped); `Ok(None)` when
    /// etcd ended the stream. Cancel-safe, as [`WatchStream::next`].
    ///
    /// # Errors
    /// As [`WatchStream::next`]: `Compacted` means re-list and watch again.
    pub async fn next(&mut self) -> Result<Option<Vec<Changed>>, RegistryError> {
        let Some(events) = self.events.next().await? else {
            return Ok(None);
        };
        Ok(Some(
            events
                .iter()
                .filter_map(|event| {
                    let change = self.registry.change(event)?;
                    Some(Changed {
                        revision: event.mod_revision,
                        change,
                    })
                })
                .collect(),
        ))
    }
}

impl Registry {
    /// Watches one part of the layout from revision `from` (inclusive).
    ///
    /// # Errors
    /// As [`Registry::watch_prefix`].
    pub async fn watch_changes(
        &self,
        watched: Watched,
        from: Revision,
    ) -> Result<ChangeStream, RegistryError> {
        let keys = self.keys();
        let prefix = match &watched {
            Watched::Machines => keys.machines(),
            Watched::Metadata => keys.all_metadata(),
            Watched::Units => keys.units(),
            Watched::Content => keys.all_content(),
            Watched::Rollouts => keys.rollouts(),
            Watched::Cordons => keys.cordons(),
            Watched::Runs => keys.all_runs(),
            Watched::ScheduleOf(machine) => keys.machine_schedule(machine),
            Watched::EngineLeader => keys.engine_leader(),
        };
        Ok(ChangeStream {
            events: self.watch_prefix(prefix, from).await?,
            registry: self.clone(),
        })
    }

    /// What a watch event means; `None` for keys no reconciler follows and
    /// for values that do not decode (logged by the decoder), except unit
    /// records (see [`Change::UnitRecord`]).
    fn change(&self, event: &WatchEvent) -> Option<Change> {
        let keys = self.keys();
        if let Some(name) = keys.child(&keys.rollouts(), &event.key) {
            return Some(match event.kind {
                WatchEventKind::Put => Change::RolloutRequested {
                    name: name.to_owned(),
                    spec: event.value.clone(),
                },
                WatchEventKind::Delete => Change::RolloutRemoved(name.to_owned()),
            });
        }
        let (key, value) = (event.key.as_str(), event.value.as_slice());
        let change = match (self.parse_key(key)?, event.kind) {
            (RegistryKey::Machine(machine), WatchEventKind::Delete) => {
                Change::MachineRemoved(machine)
            }
            (RegistryKey::Machine(machine), WatchEventKind::Put) => {
                match self.decode_machine(key, value) {
                    Some(record) => Change::MachinePresent(record),
                    None => Change::MachineUpdated(machine),
                }
            }
            (RegistryKey::Metadata { machine, key: name }, WatchEventKind::Delete) => {
                Change::MetadataChanged {
                    machine,
                    key: name,
                    value: None,
                }
            }
            (RegistryKey::Metadata { machine, .. }, WatchEventKind::Put) => {
                match self.decode_metadata(key, value) {
                    Some((machine, name, value)) => Change::MetadataChanged {
                        machine,
                        key: name,
                        value: Some(value),
                    },
                    None => Change::MachineUpdated(machine),
                }
            }
            (RegistryKey::Unit(unit), WatchEventKind::Put) => Change::UnitRecord {
                record: self
                    .decode_unit_record(key, value)
                    .map(|(_, hash, target)| (hash, target)),
                unit,
            },
            (RegistryKey::Unit(unit), WatchEventKind::Delete) => Change::UnitRemoved(unit),
            (RegistryKey::Content(_), WatchEventKind::Put) => {
                let (hash, file) = self.decode_content(key, value)?;
                Change::Content { hash, file }
            }
            (RegistryKey::Content(hash), WatchEventKind::Delete) => Change::ContentRemoved(hash),
            (RegistryKey::Cordon(_), WatchEventKind::Put) => {
                Change::Cordoned(self.decode_cordon(key, value)?)
            }
            (RegistryKey::Cordon(machine), WatchEventKind::Delete) => Change::CordonLifted(machine),
            (RegistryKey::Run { .. }, WatchEventKind::Put) => {
                Change::RunEnded(self.decode_run_outcome(key, value)?)
            }
            (RegistryKey::Run { unit, machine }, WatchEventKind::Delete) => {
                Change::RunForgotten { unit, machine }
            }
            (RegistryKey::Scheduled { .. }, WatchEventKind::Put) => {
                Change::Placed(self.decode_placement(key, value)?)
            }
            (RegistryKey::Scheduled { machine, unit }, WatchEventKind::Delete) => {
                Change::Unplaced { unit, machine }
            }
            (RegistryKey::EngineLeader, WatchEventKind::Put) => {
                Change::LeaderIs(String::from_utf8_lossy(value).parse().ok()?)
            }
            (RegistryKey::EngineLeader, WatchEventKind::Delete) => Change::LeaderGone,
            _ => return None,
        };
        Some(change)
    }
}
