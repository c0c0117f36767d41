//! What changed in the cluster, as typed events: the registry's watch of the
//! whole keyspace decoded into [`RegistryEvent`]s, grouped by etcd revision.
//!
//! The watch asks etcd for each key's previous value, so a change can be
//! told apart from a creation (a unit *submitted* or its target *changed*, a
//! machine *joined* or merely re-registered) without any state kept here.
//! Keys that are bookkeeping (content, content references, the placement
//! index, dynamic metadata) produce no event.
//!
//! Every event of one etcd transaction shares its revision, and etcd never
//! splits a revision across watch responses, so a consumer that remembers the
//! last revision it *finished* can resume with [`Registry::watch_events`]
//! from the next one and lose nothing. A revision that etcd has compacted
//! away is [`RegistryError::Compacted`]: the history is gone and the consumer
//! must start again from a fresh read.

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use fleet_systemd::unit::UnitName;

use crate::keys::RegistryKey;
use crate::model::{MachineId, TargetState};
use crate::store::{Registry, RegistryError, Revision};

/// One change in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A new unit was submitted with this target state.
    UnitSubmitted { unit: UnitName, target: TargetState },
    /// A unit's file was replaced (new content hash).
    UnitReplaced { unit: UnitName, target: TargetState },
    /// A unit's target (desired) state changed.
    UnitTargetChanged {
        unit: UnitName,
        from: TargetState,
        to: TargetState,
    },
    /// A unit was destroyed.
    UnitDestroyed { unit: UnitName },
    /// A machine was cordoned (no new placements), or set to drain.
    MachineCordoned { machine: MachineId, draining: bool },
    /// A machine's cordon was lifted.
    MachineUncordoned { machine: MachineId },
    /// The engine placed a unit on a machine, or changed the target state
    /// it has there.
    UnitPlaced {
        unit: UnitName,
        machine: MachineId,
        target: TargetState,
        /// Why, as the engine stored it (`None` from engines that store none).
        reason: Option<String>,
    },
    /// The engine took a unit off a machine.
    UnitUnplaced {
        unit: UnitName,
        machine: MachineId,
        /// Why, from the unload order the engine wrote in the same
        /// transaction (`None` when it stored none).
        reason: Option<String>,
    },
    /// An agent reported a unit's systemd state on its machine.
    UnitStateChanged {
        unit: UnitName,
        machine: MachineId,
        load_state: String,
        active_state: String,
        sub_state: String,
    },
    /// A unit's reported state on a machine went away (unit unloaded there,
    /// or the machine's lease ended).
    UnitStateRemoved { unit: UnitName, machine: MachineId },
    /// A machine joined the cluster.
    MachineJoined {
        machine: MachineId,
        public_ip: String,
    },
    /// A machine's record changed (address or configured metadata).
    MachineChanged {
        machine: MachineId,
        public_ip: String,
    },
    /// A machine left (stopped, or its lease expired).
    MachineLeft { machine: MachineId },
    /// The engine leader changed; `None` while nobody leads.
    LeaderChanged { leader: Option<MachineId> },
}

impl RegistryEvent {
    /// The event's type name, `noun.verb` (what the event stream calls it).
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryEvent::UnitSubmitted { .. } => "unit.submitted",
            RegistryEvent::UnitReplaced { .. } => "unit.replaced",
            RegistryEvent::UnitTargetChanged { .. } => "unit.target-changed",
            RegistryEvent::UnitDestroyed { .. } => "unit.destroyed",
            RegistryEvent::UnitPlaced { .. } => "unit.placed",
            RegistryEvent::UnitUnplaced { .. } => "unit.unplaced",
            RegistryEvent::UnitStateChanged { .. } => "unit.state-changed",
            RegistryEvent::UnitStateRemoved { .. } => "unit.state-removed",
            RegistryEvent::MachineJoined { .. } => "machine.joined",
            RegistryEvent::MachineChanged { .. } => "machine.changed",
            RegistryEvent::MachineLeft { .. } => "machine.left",
            RegistryEvent::MachineCordoned { .. } => "machine.cordoned",
            RegistryEvent::MachineUncordoned { .. } => "machine.uncordoned",
            RegistryEvent::LeaderChanged { .. } => "engine.leader-changed",
        }
    }

    /// The unit the event is about, if any.
    pub fn unit(&self) -> Option<&UnitName> {
        match self {
            RegistryEvent::UnitSubmitted { unit, .. }
            | RegistryEvent::UnitReplaced { unit, .. }
            | RegistryEvent::UnitTargetChanged { unit, .. }
            | RegistryEvent::UnitDestroyed { unit }
            | RegistryEvent::UnitPlaced { unit, .. }
            | RegistryEvent::UnitUnplaced { unit, .. }
            | RegistryEvent::UnitStateChanged { unit, .. }
            | RegistryEvent::UnitStateRemoved { unit, .. } => Some(unit),
            _ => None,
        }
    }

    /// The machine the event is about, if any (the new leader for a leader
    /// change).
    pub fn machine(&self) -> Option<&MachineId> {
        match self {
            RegistryEvent::UnitPlaced { machine, .. }
            | RegistryEvent::UnitUnplaced { machine, .. }
            | RegistryEvent::UnitStateChanged { machine, .. }
            | RegistryEvent::UnitStateRemoved { machine, .. }
            | RegistryEvent::MachineJoined { machine, .. }
            | RegistryEvent::MachineChanged { machine, .. }
            | RegistryEvent::MachineLeft { machine }
            | RegistryEvent::MachineCordoned { machine, .. }
            | RegistryEvent::MachineUncordoned { machine } => Some(machine),
            RegistryEvent::LeaderChanged { leader } => leader.as_ref(),
            _ => None,
        }
    }
}

/// The events of one etcd revision, in the order etcd applied them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<RegistryEvent>,
}

/// How long [`EventWatch::next_until`] waits for more history before it
/// takes the history as complete.
const HISTORY_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// A watch of the whole fleet keyspace, decoded. See the module docs.
pub struct EventWatch {
    registry: Registry,
    stream: etcd_client::WatchStream,
    /// Batches decoded from one response, handed out one revision at a time.
    pending: std::collections::VecDeque<RevisionEvents>,
    /// [`EventWatch::next_until`] reached its end.
    ended: bool,
}

impl std::fmt::Debug for EventWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWatch").finish_non_exhaustive()
    }
}

impl Registry {
    /// The cluster's current revision (one cheap read).
    pub async fn head_revision(&self) -> Result<Revision, RegistryError> {
        let key = self.keys().engine_leader();
        let response = self
            .get(
                "head revision",
                key,
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(Revision::new(
            response.header().map_or(0, |header| header.revision()),
        ))
    }

    /// Watches every change from `from_revision` on (0: from now), as typed
    /// events. Waits within the request deadline until etcd accepts it.
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when `from_revision` is compacted already.
    pub async fn watch_events(&self, from_revision: Revision) -> Result<EventWatch, RegistryError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from_revision.get());
        let prefix = self.keys().prefix().to_owned();
        let (stream, first, _member) = self.open_watch("watch events", prefix, options).await?;
        check_cancelled(&first)?;
        Ok(EventWatch {
            registry: self.clone(),
            stream,
            pending: Default::default(),
            ended: false,
        })
    }
}

/// A cancelled watch's error (compaction, or etcd's reason).
fn check_cancelled(response: &etcd_client::WatchResponse) -> Result<(), RegistryError> {
    if !response.canceled() {
        return Ok(());
    }
    if response.compact_revision() > 0 {
        return Err(RegistryError::Compacted {
            revision: Revision::new(response.compact_revision()),
        });
    }
    Err(RegistryError::Etcd {
        op: "watch events",
        message: format!("etcd cancelled the watch: {}", response.cancel_reason()),
    })
}

impl EventWatch {
    /// The next revision that produced events; `Ok(None)` when etcd ended
    /// the watch. Cancel-safe (usable in `select!`).
    ///
    /// # Errors
    /// [`RegistryError::Compacted`] when etcd compacted past our position;
    /// [`RegistryError::Etcd`] when the connection broke.
    pub async fn next(&mut self) -> Result<Option<RevisionEvents>, RegistryError> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(Some(batch));
            }
            let Some(response) = self.response().await? else {
                return Ok(None);
            };
            self.decode(&response);
        }
    }

    /// Like [`EventWatch::next`], but `Ok(None)` once the history up to
    /// revision `head` has been handed out: for reading history that ends.
    /// The end is the first event at or after `head`, or [`HISTORY_QUIET`]
    /// without a response: etcd sends stored history in bursts, and its
    /// progress notifications cannot prove the end (etcd 3.4 answers them
    /// before a catching-up watch has sent its history).
    pub async fn next_until(
        &mut self,
        head: Revision,
    ) -> Result<Option<RevisionEvents>, RegistryError> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                if batch.revision >= head {
                    self.pending.clear();
                    self.ended = true;
                }
                return Ok((batch.revision <= head).then_some(batch));
            }
            if self.ended {
                return Ok(None);
            }
            let response = tokio::time::timeout(HISTORY_QUIET, self.response()).await;
            match response {
                Err(_) => return Ok(None),
                Ok(response) => {
                    let Some(response) = response? else {
                        return Ok(None);
                    };
                    self.decode(&response);
                }
            }
        }
    }

    /// The next response of the watch; errors counted in the metrics.
    async fn response(&mut self) -> Result<Option<etcd_client::WatchResponse>, RegistryError> {
        let response = match self.stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(None),
            Err(error) => {
                fleet_metrics::get().etcd.watch_failed("broken");
                return Err(RegistryError::Etcd {
                    op: "watch events",
                    message: error.to_string(),
                });
            }
        };
        if let Err(error) = check_cancelled(&response) {
            fleet_metrics::get().etcd.watch_failed("compacted");
            return Err(error);
        }
        Ok(Some(response))
    }

    /// Decodes a response's events into `pending`, grouped by revision.
    fn decode(&mut self, response: &etcd_client::WatchResponse) {
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = Revision::new(kv.mod_revision());
            if event.event_type() == EventType::Put && self.explain_unplacement(kv, revision) {
                continue;
            }
            let decoded = match event.event_type() {
                EventType::Put => self.registry.decode_put(kv, event.prev_kv()),
                EventType::Delete => self.registry.decode_delete(kv),
            };
            let Some(decoded) = decoded else { continue };
            match self.pending.back_mut() {
                Some(last) if last.revision == revision => last.events.push(decoded),
                _ => self.pending.push_back(RevisionEvents {
                    revision,
                    events: vec![decoded],
                }),
            }
        }
    }
}

impl EventWatch {
    /// An unload order names why the engine unplaced its unit: it is
    /// written after the schedule key's delete in the same transaction, so
    /// the reason goes onto that revision's `UnitUnplaced` event. Returns
    /// whether `kv` was an unload order (which is no event of its own).
    fn explain_unplacement(&mut self, kv: &KeyValue, revision: Revision) -> bool {
        let Some((machine, unit)) = kv
            .key_str()
            .ok()
            .and_then(|key| self.registry.keys().parse_unload_order(key))
        else {
            return false;
        };
        let reason = String::from_utf8_lossy(kv.value()).into_owned();
        let Some(batch) = self.pending.back_mut().filter(|b| b.revision == revision) else {
            return true;
        };
        for event in batch.events.iter_mut().rev() {
            if let RegistryEvent::UnitUnplaced {
                unit: u,
                machine: m,
                reason: slot,
            } = event
                && *u == unit
                && *m == machine
            {
                *slot = (!reason.is_empty()).then_some(reason);
                break;
            }
        }
        true
    }
}

impl Registry {
    /// The event a put means, given the key's previous value.
    fn decode_put(&self, kv: &KeyValue, prev: Option<&KeyValue>) -> Option<RegistryEvent> {
        let key = kv.key_str().ok()?;
        let value = kv.value();
        let prev_value = prev.map(KeyValue::value);
        match self.parse_key(key)? {
            RegistryKey::Unit(_) => {
                let (unit, hash, target) = self.decode_unit_record(key, value)?;
                let before = prev_value.and_then(|v| self.decode_unit_record(key, v));
                Some(match before {
                    None => RegistryEvent::UnitSubmitted { unit, target },
                    Some((_, old_hash, _)) if old_hash != hash => {
                        RegistryEvent::UnitReplaced { unit, target }
                    }
                    Some((_, _, from)) => RegistryEvent::UnitTargetChanged {
                        unit,
                        from,
                        to: target,
                    },
                })
            }
            RegistryKey::Scheduled { .. } => {
                let placement = self.decode_placement(key, value)?;
                let before = prev_value.and_then(|v| self.decode_placement(key, v));
                // A rewrite with the same target (a new hash) is not news here:
                // the unit's own event said it was replaced.
                if before.is_some_and(|b| b.target_state == placement.target_state) {
                    return None;
                }
                Some(RegistryEvent::UnitPlaced {
                    unit: placement.unit,
                    machine: placement.machine,
                    target: placement.target_state,
                    reason: crate::wire::placement_reason(value),
                })
            }
            RegistryKey::State { .. } => {
                let state = self.decode_unit_state(key, value)?;
                let before = prev_value.and_then(|v| self.decode_unit_state(key, v));
                let same = before.is_some_and(|b| {
                    (&b.load_state, &b.active_state, &b.sub_state)
                        == (&state.load_state, &state.active_state, &state.sub_state)
                });
                (!same).then_some(RegistryEvent::UnitStateChanged {
                    unit: state.unit,
                    machine: state.machine,
                    load_state: state.load_state,
                    active_state: state.active_state,
                    sub_state: state.sub_state,
                })
            }
            RegistryKey::Machine(_) => {
                let machine = self.decode_machine(key, value)?;
                let before = prev_value.and_then(|v| self.decode_machine(key, v));
                match before {
                    None => Some(RegistryEvent::MachineJoined {
                        machine: machine.id,
                        public_ip: machine.public_ip,
                    }),
                    Some(before) if before == machine => None,
                    Some(_) => Some(RegistryEvent::MachineChanged {
                        machine: machine.id,
                        public_ip: machine.public_ip,
                    }),
                }
            }
            RegistryKey::Cordon(_) => {
                let cordon = self.decode_cordon(key, value)?;
                Some(RegistryEvent::MachineCordoned {
                    machine: cordon.machine,
                    draining: cordon.draining,
                })
            }
            RegistryKey::EngineLeader => {
                let leader = String::from_utf8_lossy(value).parse::<MachineId>().ok();
                let same = prev_value.is_some_and(|v| v == value);
                (!same).then_some(RegistryEvent::LeaderChanged { leader })
            }
            RegistryKey::Metadata { .. }
            | RegistryKey::Content(_)
            | RegistryKey::ContentRef { .. }
            | RegistryKey::Placement { .. }
            | RegistryKey::Run { .. }
            | RegistryKey::RunAttempts(_) => None,
        }
    }

    /// The event a delete means (the key alone says what went).
    fn decode_delete(&self, kv: &KeyValue) -> Option<RegistryEvent> {
        match self.parse_key(kv.key_str().ok()?)? {
            RegistryKey::Unit(unit) => Some(RegistryEvent::UnitDestroyed { unit }),
            RegistryKey::Scheduled { machine, unit } => Some(RegistryEvent::UnitUnplaced {
                unit,
                machine,
                reason: None,
            }),
            RegistryKey::State { unit, machine } => {
                Some(RegistryEvent::UnitStateRemoved { unit, machine })
            }
            RegistryKey::Machine(machine) => Some(RegistryEvent::MachineLeft { machine }),
            RegistryKey::EngineLeader => Some(RegistryEvent::LeaderChanged { leader: None }),
            RegistryKey::Cordon(machine) => Some(RegistryEvent::MachineUncordoned { machine }),
            RegistryKey::Metadata { .. }
            | RegistryKey::Content(_)
            | RegistryKey::ContentRef { .. }
            | RegistryKey::Placement { .. }
            | RegistryKey::Run { .. }
            | RegistryKey::RunAttempts(_) => None,
        }
    }
}
