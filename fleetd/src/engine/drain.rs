//! Cordons and the pace of drains, on the engine's side.
//!
//! The engine keeps the cordon records it read and watched ([`Cordon`]) and
//! hands the scheduler a [`Cordons`] each pass. A drain moves units a bounded
//! number at a time: a unit moved off a draining machine is *in flight* until
//! its new machine's agent reports the target state reached (or
//! [`DRAIN_MOVE_TIMEOUT`] passes, so that one unit that never starts cannot
//! stall the drain), and the scheduler may move only [`DRAIN_PARALLEL`] minus
//! the units in flight. While a drain has work left the engine wakes every
//! [`DRAIN_POLL`] to look again, because unit states are not among its watches.
//!
//! The drain itself is state in etcd (the cordon record with `draining`), so
//! a new engine after a failover continues it; it only forgets what was in
//! flight, so for one batch up to twice the bound may be moving.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use fleet_registry::cordon::Cordon;
use fleet_registry::{MachineId, Placement, Registry, RegistryError, TargetState};
use fleet_systemd::unit::UnitName;

use crate::engine::scheduler::{Cordons, Unschedulable};

/// How many units moved off draining machines may be starting at once.
pub const DRAIN_PARALLEL: usize = 10;

/// A moved unit counts as in flight for at most this long.
pub const DRAIN_MOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a drain with work left looks at the units in flight.
pub const DRAIN_POLL: Duration = Duration::from_millis(500);

/// See the module docs.
#[derive(Debug, Default)]
pub struct DrainTracker {
    /// Cordon records by machine, as read and watched.
    pub cordons: BTreeMap<MachineId, Cordon>,
    /// Moved units not yet started on their new machine.
    in_flight: HashMap<UnitName, (MachineId, TargetState, Instant)>,
    /// When the engine should run a pass for the drain next.
    wake: Option<Instant>,
    /// What was last logged about units a drain must leave.
    reported_blocked: Vec<Unschedulable>,
}

impl DrainTracker {
    /// Replaces every cordon (after a re-list).
    pub fn set_all(&mut self, cordons: Vec<Cordon>) {
        self.cordons = cordons
            .into_iter()
            .map(|cordon| (cordon.machine.clone(), cordon))
            .collect();
    }

    /// A cordon record was written.
    pub fn put(&mut self, cordon: Cordon) {
        if self.cordons.get(&cordon.machine) != Some(&cordon) {
            let what = if cordon.draining {
                "draining"
            } else {
                "cordoned"
            };
            info!(machine = %cordon.machine, by = %cordon.by, reason = %cordon.reason,
                "Machine {} is {what} (by {}: {}).", cordon.machine, cordon.by, cordon.reason);
        }
        self.cordons.insert(cordon.machine.clone(), cordon);
    }

    /// A cordon record was deleted.
    pub fn remove(&mut self, machine: &MachineId) {
        if self.cordons.remove(machine).is_some() {
            info!(machine = %machine, "Machine {machine} is back in rotation (uncordoned).");
        }
    }

    /// When the engine should run a pass for a drain.
    pub fn wake(&self) -> Option<Instant> {
        self.wake
    }

    /// What the scheduler gets this pass: reads the states of the units in
    /// flight (only while a drain moves units) to know how many more may move.
    pub async fn cordons(&mut self, registry: &Registry) -> Result<Cordons, RegistryError> {
        let mut cordons = Cordons::default();
        for cordon in self.cordons.values() {
            cordons.cordoned.insert(cordon.machine.clone());
            if cordon.draining {
                cordons.draining.insert(cordon.machine.clone());
            }
        }
        if cordons.draining.is_empty() {
            self.in_flight.clear();
            return Ok(cordons);
        }
        self.settle_in_flight(registry).await?;
        cordons.drain_budget = DRAIN_PARALLEL.saturating_sub(self.in_flight.len());
        Ok(cordons)
    }

    async fn settle_in_flight(&mut self, registry: &Registry) -> Result<(), RegistryError> {
        let now = Instant::now();
        let mut landed = Vec::new();
        for (unit, (machine, target, since)) in &self.in_flight {
            if now.duration_since(*since) >= DRAIN_MOVE_TIMEOUT {
                warn!(unit = %unit, machine = %machine,
                    "Drained unit {unit} has not reached {target} on {machine} within {DRAIN_MOVE_TIMEOUT:?}; the drain goes on.");
                landed.push(unit.clone());
                continue;
            }
            let states = registry.states_of_unit(unit).await?;
            if states
                .iter()
                .any(|state| &state.machine == machine && state.reached >= *target)
            {
                landed.push(unit.clone());
            }
        }
        for unit in landed {
            self.in_flight.remove(&unit);
        }
        Ok(())
    }

    /// Records what a pass moved and left; schedules the next look.
    pub fn after_pass(&mut self, moved: &[Placement], blocked: &[Unschedulable], waiting: usize) {
        let now = Instant::now();
        for placement in moved {
            self.in_flight.insert(
                placement.unit.clone(),
                (placement.machine.clone(), placement.target_state, now),
            );
        }
        if !moved.is_empty() {
            info!(
                n_moved = moved.len(),
                n_waiting = waiting,
                n_in_flight = self.in_flight.len(),
                "Drain moved units."
            );
        }
        if blocked != self.reported_blocked.as_slice() {
            for entry in blocked {
                warn!(unit = %entry.unit, reason = %entry.reason,
                    "Drain leaves {} where it is: {}.", entry.unit, entry.reason);
            }
            self.reported_blocked = blocked.to_vec();
        }
        self.wake = (!self.in_flight.is_empty() || waiting > 0).then(|| now + DRAIN_POLL);
    }
}
