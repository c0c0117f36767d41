//! The rollout driver: the decisions of a rolling update, as a pure function.
//!
//! [`step`] takes a rollout's spec (what the operator asked), its progress so
//! far (what the engine wrote last time, possibly a previous engine), the
//! placements of its units now, what the agents report about the units being
//! updated, and the wall clock; it returns the next progress. [`pins`] says
//! which placements must carry the new content for that progress. The engine
//! (`super::rollouts`) reads the inputs, writes the progress and the schedule;
//! nothing here does I/O, so a new engine that reads the same etcd decides
//! the same thing, and every rule is unit-tested below.
//!
//! The rules:
//! - A target is one placement (unit on machine) that existed when the engine
//!   took the rollout in, in unit then machine order. At most `max_parallel`
//!   targets are updating at once; a target is updating from the moment its
//!   placement gets the new content until it is healthy.
//! - Healthy: the agent reports the new content `active`, not restarting
//!   (`auto-restart`) and not failing its declared health check, continuously
//!   for `min_healthy_time`. A target not healthy within `healthy_deadline` of
//!   its start fails.
//! - A failure with auto-revert ends the rollout (`reverted`): it pins
//!   nothing more, so every placement goes back to the unit record's content,
//!   which is still the old one. Without auto-revert it holds (`failed`) until
//!   the operator aborts.
//! - With `canary = N`, the first N targets go first; when they are healthy
//!   the rollout waits (`awaiting-promotion`) until the operator promotes it.
//! - Pause stops new targets from starting (those updating finish); abort ends
//!   the rollout like a revert.
//! - A pending target whose machine is not present (a global unit stays placed
//!   on a lost machine) waits while others go: it starts if its machine comes
//!   back, and is skipped (gone) when nothing else is left to do. A target
//!   already updating when its machine vanished keeps its deadline.
//! - When every target is healthy (or its placement went away) the rollout
//!   has `succeeded`; the engine then switches the unit records.
//! - A restart (`spec.restart`) is a rollout to the content the units have:
//!   an updating target is first held at `loaded` ([`target_pins`]) until its
//!   agent reports the unit stopped, then released to its unit record's
//!   target (`launched`), and healthy as above once it runs again. The agent
//!   only needs what it does anyway: stop a unit whose placement says
//!   `loaded`, start it when it says `launched`.

use std::collections::{BTreeSet, HashMap};

use fleet_registry::TargetState;

use fleet_api::rollout::{
    Control, HistoryEvent, Phase, RolloutProgress, RolloutSpec, Target, TargetPhase,
};

/// A placement: (unit, machine).
pub type PlacementKey = (String, String);

/// The placements of a rollout's units now: every one, and those on a
/// machine that is not present (no agent there can act until it returns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placements {
    pub all: BTreeSet<PlacementKey>,
    pub absent: BTreeSet<PlacementKey>,
}

impl From<BTreeSet<PlacementKey>> for Placements {
    /// Every placement on a present machine.
    fn from(all: BTreeSet<PlacementKey>) -> Placements {
        Placements {
            all,
            absent: BTreeSet::new(),
        }
    }
}

/// What an agent reports about one placement being updated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub hash: String,
    pub active_state: String,
    pub sub_state: String,
    /// The declared health check's verdict, if the unit declares one.
    pub health: Option<bool>,
}

impl Observed {
    /// Running `hash`, active, not restarting; with a declared check
    /// (`checked`), also passing it (no verdict yet is not healthy).
    fn is_healthy_on(&self, hash: &str, checked: bool) -> bool {
        let check_ok = if checked {
            self.health == Some(true)
        } else {
            self.health != Some(false)
        };
        self.hash == hash
            && self.active_state == "active"
            && self.sub_state != "auto-restart"
            && check_ok
    }

    fn describe(&self) -> String {
        let health = match self.health {
            Some(false) => ", health check failing",
            _ => "",
        };
        format!("{}/{}{health}", self.active_state, self.sub_state)
    }
}

/// The next progress of `spec`. `progress` is the stored one (ignored when it
/// belongs to an earlier rollout of the same name); `placements` are the
/// current placements of the spec's units; `observed` what the agents report
/// for them; `now_ms` the wall clock.
pub fn step(
    spec: &RolloutSpec,
    progress: Option<&RolloutProgress>,
    placements: &Placements,
    observed: &HashMap<PlacementKey, Observed>,
    now_ms: u64,
) -> RolloutProgress {
    let mut next = match progress.filter(|progress| progress.id == spec.id) {
        Some(progress) => progress.clone(),
        None => begin(spec, &placements.all, now_ms),
    };
    if next.phase.is_terminal() {
        return next;
    }
    if spec.control == Control::Abort {
        log(
            &mut next,
            now_ms,
            "Aborted by the operator; every unit goes back to its old content.".to_owned(),
        );
        next.phase = Phase::Aborted;
        return next;
    }
    let events = observe(spec, &mut next.targets, &placements.all, observed, now_ms);
    for message in events {
        log(&mut next, now_ms, message);
    }
    if let Some(failed) = next
        .targets
        .iter()
        .find(|target| target.phase == TargetPhase::Failed)
    {
        if next.phase != Phase::Failed {
            let what = format!(
                "{} on {} failed: {}",
                failed.unit,
                failed.machine,
                failed.reason.as_deref().unwrap_or("not healthy")
            );
            if spec.strategy.auto_revert {
                let touched = next
                    .targets
                    .iter()
                    .filter(|target| target.started_ms.is_some())
                    .count();
                let message = if spec.restart {
                    format!("{what}; the restart stops here (every unit runs as before).")
                } else {
                    format!("{what}; reverting {touched} updated unit(s) to the old content.")
                };
                log(&mut next, now_ms, message);
                next.phase = Phase::Reverted;
            } else {
                log(
                    &mut next,
                    now_ms,
                    format!("{what}; holding (auto-revert is off)."),
                );
                next.phase = Phase::Failed;
            }
        }
        return next;
    }
    if spec.control == Control::Pause {
        if next.phase != Phase::Paused {
            log(&mut next, now_ms, "Paused by the operator.".to_owned());
            next.phase = Phase::Paused;
        }
        return next;
    }
    if next.phase == Phase::Paused {
        log(&mut next, now_ms, "Resumed by the operator.".to_owned());
        next.phase = Phase::Running;
    }
    if next.phase == Phase::AwaitingPromotion && spec.promoted {
        log(&mut next, now_ms, "Promoted by the operator.".to_owned());
        next.phase = Phase::Running;
    }
    let started = start_batch(spec, &mut next.targets, &placements.absent, now_ms);
    if !started.is_empty() {
        log(
            &mut next,
            now_ms,
            format!("{} {}.", verb(spec), started.join(", ")),
        );
    }
    for skipped in skip_absent(&mut next.targets, &placements.absent) {
        log(
            &mut next,
            now_ms,
            format!("{skipped}: its machine is not present; skipped."),
        );
    }
    let done = next
        .targets
        .iter()
        .all(|target| matches!(target.phase, TargetPhase::Healthy | TargetPhase::Gone));
    if done {
        let message = match spec.restart {
            true => format!("Succeeded: {} placement(s) restarted.", next.targets.len()),
            false => format!(
                "Succeeded: {} unit(s) run the new content.",
                spec.units.len()
            ),
        };
        log(&mut next, now_ms, message);
        next.phase = Phase::Succeeded;
    } else if canary_limit(spec).is_some_and(|limit| n_started(&next.targets) >= limit)
        && !next
            .targets
            .iter()
            .any(|target| target.phase == TargetPhase::Updating)
        && next.phase != Phase::AwaitingPromotion
    {
        log(
            &mut next,
            now_ms,
            "Canaries healthy; waiting for `fleetctl update --promote`.".to_owned(),
        );
        next.phase = Phase::AwaitingPromotion;
    }
    next
}

/// What starting a target means, for the history.
fn verb(spec: &RolloutSpec) -> &'static str {
    if spec.restart {
        "Restarting"
    } else {
        "Updating"
    }
}

/// Appends a history line.
fn log(progress: &mut RolloutProgress, at_ms: u64, message: String) {
    progress.history.push(HistoryEvent { at_ms, message });
}

/// The placements that must carry the new content: every target that
/// started, while the rollout is not over. Every other placement follows its
/// unit record (the old content until the rollout succeeds).
pub fn pins(
    spec: &RolloutSpec,
    progress: Option<&RolloutProgress>,
) -> HashMap<PlacementKey, String> {
    let Some(progress) = progress.filter(|progress| progress.id == spec.id) else {
        return HashMap::new();
    };
    if progress.phase.is_terminal() {
        return HashMap::new();
    }
    progress
        .targets
        .iter()
        .filter(|target| {
            matches!(
                target.phase,
                TargetPhase::Updating | TargetPhase::Healthy | TargetPhase::Failed
            )
        })
        .map(|target| {
            (
                (target.unit.clone(), target.machine.clone()),
                spec.new_hash.clone(),
            )
        })
        .collect()
}

/// In a restart, the placements to hold at `loaded` (stopped): the targets
/// updating whose stop the agent has not reported yet, while the rollout is
/// not over. Every other placement follows its unit record's target.
pub fn target_pins(
    spec: &RolloutSpec,
    progress: Option<&RolloutProgress>,
) -> HashMap<PlacementKey, TargetState> {
    let Some(progress) = progress.filter(|progress| progress.id == spec.id && spec.restart) else {
        return HashMap::new();
    };
    if progress.phase.is_terminal() {
        return HashMap::new();
    }
    progress
        .targets
        .iter()
        .filter(|target| target.phase == TargetPhase::Updating && target.stopped_ms.is_none())
        .map(|target| {
            (
                (target.unit.clone(), target.machine.clone()),
                TargetState::Loaded,
            )
        })
        .collect()
}

/// Whether an agent's report says the unit is stopped (a restart's first half).
fn is_stopped(seen: Option<&Observed>) -> bool {
    seen.is_some_and(|seen| matches!(seen.active_state.as_str(), "inactive" | "failed"))
}

/// The first progress: one pending target per placement now.
fn begin(spec: &RolloutSpec, placements: &BTreeSet<PlacementKey>, now_ms: u64) -> RolloutProgress {
    let targets: Vec<Target> = placements
        .iter()
        .map(|(unit, machine)| Target {
            unit: unit.clone(),
            machine: machine.clone(),
            phase: TargetPhase::Pending,
            started_ms: None,
            healthy_since_ms: None,
            reason: None,
            stopped_ms: None,
        })
        .collect();
    RolloutProgress {
        id: spec.id,
        phase: Phase::Running,
        history: vec![HistoryEvent {
            at_ms: now_ms,
            message: format!(
                "Started: {} unit(s), {} placement(s), at most {} at a time.",
                spec.units.len(),
                targets.len(),
                spec.strategy.max_parallel.max(1)
            ),
        }],
        targets,
    }
}

/// Moves updating targets to healthy or failed, and targets whose placement
/// went away to gone; returns the history lines.
fn observe(
    spec: &RolloutSpec,
    targets: &mut [Target],
    placements: &BTreeSet<PlacementKey>,
    observed: &HashMap<PlacementKey, Observed>,
    now_ms: u64,
) -> Vec<String> {
    let mut events = Vec::new();
    for target in targets.iter_mut() {
        if !matches!(target.phase, TargetPhase::Pending | TargetPhase::Updating) {
            continue;
        }
        let key = (target.unit.clone(), target.machine.clone());
        if !placements.contains(&key) {
            target.phase = TargetPhase::Gone;
            events.push(format!(
                "{} is no longer placed on {}.",
                target.unit, target.machine
            ));
            continue;
        }
        if target.phase != TargetPhase::Updating {
            continue;
        }
        let seen = observed.get(&key);
        if spec.restart && target.stopped_ms.is_none() {
            if is_stopped(seen) {
                target.stopped_ms = Some(now_ms);
                events.push(format!(
                    "{} on {} stopped; starting it again.",
                    target.unit, target.machine
                ));
            } else if now_ms.saturating_sub(target.started_ms.unwrap_or(now_ms))
                >= spec.strategy.healthy_deadline_ms
            {
                target.phase = TargetPhase::Failed;
                target.reason = Some("the unit did not stop within the deadline".to_owned());
            }
            continue;
        }
        if seen.is_some_and(|seen| seen.is_healthy_on(&spec.new_hash, spec.health_check)) {
            let since = *target.healthy_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= spec.strategy.min_healthy_time_ms {
                target.phase = TargetPhase::Healthy;
                events.push(format!("{} on {} is healthy.", target.unit, target.machine));
            }
            continue;
        }
        target.healthy_since_ms = None;
        let started = target.started_ms.unwrap_or(now_ms);
        if now_ms.saturating_sub(started) >= spec.strategy.healthy_deadline_ms {
            target.phase = TargetPhase::Failed;
            target.reason = Some(match seen {
                Some(seen) if seen.hash == spec.new_hash => {
                    format!("not healthy within the deadline ({})", seen.describe())
                }
                _ => "the new content was not loaded within the deadline".to_owned(),
            });
        }
    }
    events
}

/// How many targets may start before a promotion, if a canary is waiting.
fn canary_limit(spec: &RolloutSpec) -> Option<usize> {
    (spec.strategy.canary > 0 && !spec.promoted).then_some(spec.strategy.canary as usize)
}

fn n_started(targets: &[Target]) -> usize {
    targets
        .iter()
        .filter(|target| target.started_ms.is_some())
        .count()
}

/// When no target is updating and every pending one is on an absent
/// machine, those are skipped (gone); returns them.
fn skip_absent(targets: &mut [Target], absent: &BTreeSet<PlacementKey>) -> Vec<String> {
    let waiting = |target: &Target| {
        target.phase == TargetPhase::Updating
            || (target.phase == TargetPhase::Pending && !is_absent(target, absent))
    };
    if targets.iter().any(waiting) {
        return Vec::new();
    }
    let mut skipped = Vec::new();
    for target in targets.iter_mut() {
        if target.phase == TargetPhase::Pending {
            target.phase = TargetPhase::Gone;
            skipped.push(format!("{} on {}", target.unit, target.machine));
        }
    }
    skipped
}

fn is_absent(target: &Target, absent: &BTreeSet<PlacementKey>) -> bool {
    absent.contains(&(target.unit.clone(), target.machine.clone()))
}

/// Starts pending targets on present machines up to `max_parallel` updating
/// at once (and up to the canary count before a promotion); returns what
/// started.
fn start_batch(
    spec: &RolloutSpec,
    targets: &mut [Target],
    absent: &BTreeSet<PlacementKey>,
    now_ms: u64,
) -> Vec<String> {
    let max_parallel = spec.strategy.max_parallel.max(1) as usize;
    let limit = canary_limit(spec).unwrap_or(usize::MAX);
    let mut in_flight = targets
        .iter()
        .filter(|target| target.phase == TargetPhase::Updating)
        .count();
    let mut started = n_started(targets);
    let mut names = Vec::new();
    for target in targets.iter_mut() {
        if in_flight >= max_parallel || started >= limit {
            break;
        }
        if target.phase != TargetPhase::Pending || is_absent(target, absent) {
            continue;
        }
        target.phase = TargetPhase::Updating;
        target.started_ms = Some(now_ms);
        in_flight += 1;
        started += 1;
        names.push(format!("{} on {}", target.unit, target.machine));
    }
    names
}

#[cfg(test)]
mod tests {
    use fleet_api::rollout::{RolloutUnit, Strategy};

    use super::*;

    const OLD: &str = "old";
    const NEW: &str = "new";

    fn spec(n_units: usize, strategy: Strategy) -> RolloutSpec {
        RolloutSpec {
            name: "web@.service".to_owned(),
            id: 1,
            new_hash: NEW.to_owned(),
            units: (0..n_units)
                .map(|i| RolloutUnit {
                    unit: format!("web@{i}.service"),
                    old_hash: OLD.to_owned(),
                })
                .collect(),
            strategy,
            control: Control::Run,
            promoted: false,
            health_check: false,
            restart: false,
        }
    }

    fn strategy(max_parallel: u32) -> Strategy {
        Strategy {
            max_parallel,
            min_healthy_time_ms: 1_000,
            healthy_deadline_ms: 10_000,
            canary: 0,
            auto_revert: true,
        }
    }

    fn placements(n: usize) -> Placements {
        (0..n)
            .map(|i| (format!("web@{i}.service"), format!("m{}", i % 3)))
            .collect::<BTreeSet<_>>()
            .into()
    }

    fn running(hash: &str) -> Observed {
        Observed {
            hash: hash.to_owned(),
            active_state: "active".to_owned(),
            sub_state: "running".to_owned(),
            health: None,
        }
    }

    /// What the agents would report: every pinned placement runs the new
    /// content, active (or as `on_new` says).
    fn agents(
        spec: &RolloutSpec,
        progress: &RolloutProgress,
        on_new: &Observed,
    ) -> HashMap<PlacementKey, Observed> {
        pins(spec, Some(progress))
            .into_keys()
            .map(|key| (key, on_new.clone()))
            .collect()
    }

    fn updating(progress: &RolloutProgress) -> usize {
        progress
            .targets
            .iter()
            .filter(|target| target.phase == TargetPhase::Updating)
            .count()
    }

    #[test]
    fn the_first_step_starts_max_parallel_targets_in_order() {
        let spec = spec(6, strategy(2));
        let progress = step(&spec, None, &placements(6), &HashMap::new(), 0);
        assert_eq!(progress.phase, Phase::Running);
        assert_eq!(progress.targets.len(), 6);
        assert_eq!(updating(&progress), 2);
        let pinned = pins(&spec, Some(&progress));
        assert!(pinned.contains_key(&("web@0.service".to_owned(), "m0".to_owned())));
        assert!(pinned.contains_key(&("web@1.service".to_owned(), "m1".to_owned())));
        assert_eq!(pinned.len(), 2);
    }

    #[test]
    fn never_more_than_max_parallel_updating_and_success_at_the_end() {
        let spec = spec(6, strategy(2));
        let placements = placements(6);
        let mut progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let mut now = 0;
        while !progress.phase.is_terminal() {
            assert!(updating(&progress) <= 2, "{progress:?}");
            now += 500;
            let observed = agents(&spec, &progress, &running(NEW));
            progress = step(&spec, Some(&progress), &placements, &observed, now);
            assert!(now < 60_000, "the rollout never ended: {progress:?}");
        }
        assert_eq!(progress.phase, Phase::Succeeded);
        assert!(pins(&spec, Some(&progress)).is_empty());
        assert!(
            progress
                .targets
                .iter()
                .all(|target| target.phase == TargetPhase::Healthy)
        );
    }

    #[test]
    fn a_target_must_stay_healthy_for_the_minimum_time() {
        let spec = spec(1, strategy(1));
        let placements = placements(1);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let healthy = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &placements, &healthy, 100);
        assert_eq!(progress.targets[0].healthy_since_ms, Some(100));
        // Restarting in between resets the clock.
        let mut restarting = running(NEW);
        restarting.active_state = "activating".to_owned();
        restarting.sub_state = "auto-restart".to_owned();
        let restarts = agents(&spec, &progress, &restarting);
        let progress = step(&spec, Some(&progress), &placements, &restarts, 900);
        assert_eq!(progress.targets[0].healthy_since_ms, None);
        let progress = step(&spec, Some(&progress), &placements, &healthy, 1_000);
        let progress = step(&spec, Some(&progress), &placements, &healthy, 1_999);
        assert_eq!(progress.targets[0].phase, TargetPhase::Updating);
        let progress = step(&spec, Some(&progress), &placements, &healthy, 2_000);
        assert_eq!(progress.targets[0].phase, TargetPhase::Healthy);
        assert_eq!(progress.phase, Phase::Succeeded);
    }

    #[test]
    fn the_old_content_running_is_not_healthy() {
        let spec = spec(1, strategy(1));
        let placements = placements(1);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let old = agents(&spec, &progress, &running(OLD));
        let progress = step(&spec, Some(&progress), &placements, &old, 5_000);
        assert_eq!(progress.targets[0].healthy_since_ms, None);
        let progress = step(&spec, Some(&progress), &placements, &old, 10_000);
        assert_eq!(progress.phase, Phase::Reverted);
    }

    #[test]
    fn a_failed_health_check_past_the_deadline_reverts_everything() {
        let spec = spec(4, strategy(2));
        let placements = placements(4);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let mut sick = running(NEW);
        sick.health = Some(false);
        let observed = agents(&spec, &progress, &sick);
        let progress = step(&spec, Some(&progress), &placements, &observed, 9_999);
        assert_eq!(progress.phase, Phase::Running);
        let progress = step(&spec, Some(&progress), &placements, &observed, 10_000);
        assert_eq!(progress.phase, Phase::Reverted);
        // Nothing pinned: every placement follows the record, the old content.
        assert!(pins(&spec, Some(&progress)).is_empty());
        let last = &progress.history[progress.history.len() - 1].message;
        assert!(last.contains("health check failing"), "{last}");
        assert!(last.contains("reverting 2"), "{last}");
        // Terminal: a later step changes nothing.
        assert_eq!(
            step(&spec, Some(&progress), &placements, &observed, 20_000),
            progress
        );
    }

    #[test]
    fn a_declared_check_without_a_verdict_is_not_healthy() {
        let mut spec = spec(1, strategy(1));
        spec.health_check = true;
        let placements = placements(1);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let unknown = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &placements, &unknown, 5_000);
        assert_eq!(progress.targets[0].healthy_since_ms, None);
        let mut passing = running(NEW);
        passing.health = Some(true);
        let observed = agents(&spec, &progress, &passing);
        let progress = step(&spec, Some(&progress), &placements, &observed, 6_000);
        let progress = step(&spec, Some(&progress), &placements, &observed, 7_000);
        assert_eq!(progress.phase, Phase::Succeeded);
    }

    #[test]
    fn without_auto_revert_a_failure_holds_until_abort() {
        let mut strategy = strategy(1);
        strategy.auto_revert = false;
        let mut spec = spec(2, strategy);
        let placements = placements(2);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let progress = step(&spec, Some(&progress), &placements, &HashMap::new(), 10_000);
        assert_eq!(progress.phase, Phase::Failed);
        assert_eq!(pins(&spec, Some(&progress)).len(), 1);
        let again = step(&spec, Some(&progress), &placements, &HashMap::new(), 11_000);
        assert_eq!(again, progress, "a held failure starts nothing");
        spec.control = Control::Abort;
        let progress = step(&spec, Some(&progress), &placements, &HashMap::new(), 12_000);
        assert_eq!(progress.phase, Phase::Aborted);
        assert!(pins(&spec, Some(&progress)).is_empty());
    }

    #[test]
    fn canaries_wait_for_promotion() {
        let mut strategy = strategy(3);
        strategy.canary = 1;
        let mut spec = spec(3, strategy);
        let placements = placements(3);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        assert_eq!(updating(&progress), 1);
        let observed = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &placements, &observed, 0);
        let progress = step(&spec, Some(&progress), &placements, &observed, 1_000);
        assert_eq!(progress.phase, Phase::AwaitingPromotion);
        assert_eq!(pins(&spec, Some(&progress)).len(), 1);
        let same = step(&spec, Some(&progress), &placements, &observed, 5_000);
        assert_eq!(same, progress);
        spec.promoted = true;
        let progress = step(&spec, Some(&progress), &placements, &observed, 6_000);
        assert_eq!(progress.phase, Phase::Running);
        assert_eq!(updating(&progress), 2);
    }

    #[test]
    fn pause_starts_nothing_new_and_resume_continues() {
        let mut spec = spec(3, strategy(1));
        let placements = placements(3);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        spec.control = Control::Pause;
        let observed = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &placements, &observed, 0);
        let progress = step(&spec, Some(&progress), &placements, &observed, 1_000);
        assert_eq!(progress.phase, Phase::Paused);
        assert_eq!(progress.targets[0].phase, TargetPhase::Healthy);
        assert_eq!(updating(&progress), 0);
        spec.control = Control::Run;
        let progress = step(&spec, Some(&progress), &placements, &observed, 2_000);
        assert_eq!(progress.phase, Phase::Running);
        assert_eq!(progress.targets[1].phase, TargetPhase::Updating);
    }

    #[test]
    fn a_vanished_placement_is_gone_and_frees_its_slot() {
        let spec = spec(2, strategy(1));
        let all = placements(2);
        let progress = step(&spec, None, &all, &HashMap::new(), 0);
        let mut fewer = all.clone();
        fewer
            .all
            .remove(&("web@0.service".to_owned(), "m0".to_owned()));
        let progress = step(&spec, Some(&progress), &fewer, &HashMap::new(), 100);
        assert_eq!(progress.targets[0].phase, TargetPhase::Gone);
        assert_eq!(progress.targets[1].phase, TargetPhase::Updating);
    }

    #[test]
    fn a_target_on_an_absent_machine_waits_for_it_and_is_skipped_when_nothing_else_is_left() {
        let spec = spec(3, strategy(1));
        let mut placements = placements(3);
        let away = ("web@0.service".to_owned(), "m0".to_owned());
        placements.absent.insert(away.clone());
        // The first target's machine is away: the second one goes first.
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        assert_eq!(progress.targets[0].phase, TargetPhase::Pending);
        assert_eq!(progress.targets[1].phase, TargetPhase::Updating);
        // The machine is back while the second is updating: it goes next.
        let mut back = placements.clone();
        back.absent.clear();
        let observed = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &back, &observed, 0);
        let progress = step(&spec, Some(&progress), &back, &observed, 5_000);
        assert_eq!(progress.targets[1].phase, TargetPhase::Healthy);
        assert_eq!(progress.targets[0].phase, TargetPhase::Updating);
        // Away again for good: the rest finishes, then it is skipped.
        let observed = agents(&spec, &progress, &running(NEW));
        let mut progress = step(&spec, Some(&progress), &placements, &observed, 5_000);
        for now in [10_000, 15_000, 20_000] {
            let observed = agents(&spec, &progress, &running(NEW));
            progress = step(&spec, Some(&progress), &placements, &observed, now);
        }
        assert_eq!(progress.targets[2].phase, TargetPhase::Healthy);
        assert_eq!(progress.phase, Phase::Succeeded, "{progress:#?}");
    }

    #[test]
    fn pending_targets_all_on_absent_machines_are_skipped_at_once() {
        let spec = restart(2, 1);
        let mut placements = placements(2);
        placements.absent = placements.all.clone();
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        assert!(
            progress
                .targets
                .iter()
                .all(|target| target.phase == TargetPhase::Gone)
        );
        assert_eq!(progress.phase, Phase::Succeeded);
        assert!(
            progress
                .history
                .iter()
                .any(|event| event.message.contains("not present; skipped"))
        );
    }

    #[test]
    fn a_progress_of_an_earlier_rollout_is_ignored_and_nothing_placed_succeeds() {
        let spec = spec(2, strategy(1));
        let mut stale = step(&spec, None, &placements(2), &HashMap::new(), 0);
        stale.id = 0;
        stale.phase = Phase::Reverted;
        let progress = step(
            &spec,
            Some(&stale),
            &Placements::default(),
            &HashMap::new(),
            0,
        );
        assert_eq!(progress.id, 1);
        assert_eq!(progress.phase, Phase::Succeeded);
    }

    #[test]
    fn a_new_engine_continues_from_the_stored_progress() {
        let spec = spec(4, strategy(2));
        let placements = placements(4);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let observed = agents(&spec, &progress, &running(NEW));
        let progress = step(&spec, Some(&progress), &placements, &observed, 0);
        // The stored JSON is all a new engine has.
        let stored = serde_json::to_vec(&progress).expect("serializes");
        let read: RolloutProgress = serde_json::from_slice(&stored).expect("parses");
        let next = step(&spec, Some(&read), &placements, &observed, 1_000);
        assert_eq!(next.targets[0].phase, TargetPhase::Healthy);
        assert_eq!(next.targets[2].phase, TargetPhase::Updating);
        assert_eq!(updating(&next), 2);
    }

    fn restart(n_units: usize, max_parallel: u32) -> RolloutSpec {
        RolloutSpec {
            new_hash: OLD.to_owned(),
            restart: true,
            ..spec(n_units, strategy(max_parallel))
        }
    }

    fn stopped() -> Observed {
        Observed {
            active_state: "inactive".to_owned(),
            sub_state: "dead".to_owned(),
            ..running(OLD)
        }
    }

    #[test]
    fn a_restart_stops_each_target_then_starts_it_one_batch_at_a_time() {
        let spec = restart(3, 1);
        let placements = placements(3);
        let mut progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let first = ("web@0.service".to_owned(), "m0".to_owned());
        assert_eq!(
            target_pins(&spec, Some(&progress)),
            HashMap::from([(first.clone(), TargetState::Loaded)])
        );
        // Still running the same content: not healthy, still held stopped.
        let all_running: HashMap<PlacementKey, Observed> = placements
            .all
            .iter()
            .map(|key| (key.clone(), running(OLD)))
            .collect();
        progress = step(&spec, Some(&progress), &placements, &all_running, 5_000);
        assert_eq!(progress.targets[0].phase, TargetPhase::Updating);
        assert_eq!(target_pins(&spec, Some(&progress)).len(), 1);
        let mut now = 5_000;
        let mut n_stops = 0;
        while !progress.phase.is_terminal() {
            now += 500;
            // The agents: a target held at loaded stops; every other runs.
            let held = target_pins(&spec, Some(&progress));
            assert!(held.len() <= 1, "{progress:?}");
            n_stops += held.len();
            let observed = placements
                .all
                .iter()
                .map(|key| match held.contains_key(key) {
                    true => (key.clone(), stopped()),
                    false => (key.clone(), running(OLD)),
                })
                .collect();
            progress = step(&spec, Some(&progress), &placements, &observed, now);
            assert!(now < 60_000, "the restart never ended: {progress:?}");
        }
        assert_eq!(progress.phase, Phase::Succeeded);
        let history: Vec<&str> = progress
            .history
            .iter()
            .map(|e| e.message.as_str())
            .collect();
        assert!(
            history.contains(&"Restarting web@0.service on m0."),
            "{history:?}"
        );
        assert_eq!(
            history.last(),
            Some(&"Succeeded: 3 placement(s) restarted.")
        );
        assert!(progress.targets.iter().all(|t| t.stopped_ms.is_some()));
        assert!(n_stops >= 3);
        assert!(target_pins(&spec, Some(&progress)).is_empty());
    }

    #[test]
    fn a_restart_whose_unit_never_stops_fails_and_holds_nothing() {
        let spec = restart(2, 1);
        let placements = placements(2);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let observed = placements
            .all
            .iter()
            .map(|key| (key.clone(), running(OLD)))
            .collect();
        let progress = step(&spec, Some(&progress), &placements, &observed, 10_000);
        assert_eq!(progress.targets[0].phase, TargetPhase::Failed);
        assert_eq!(
            progress.targets[0].reason.as_deref(),
            Some("the unit did not stop within the deadline")
        );
        assert!(progress.phase.is_terminal());
        assert!(target_pins(&spec, Some(&progress)).is_empty());
    }

    #[test]
    fn a_new_engine_holds_what_the_stored_restart_progress_holds() {
        let spec = restart(2, 1);
        let placements = placements(2);
        let progress = step(&spec, None, &placements, &HashMap::new(), 0);
        let stopped_first: HashMap<PlacementKey, Observed> =
            HashMap::from([(("web@0.service".to_owned(), "m0".to_owned()), stopped())]);
        let progress = step(&spec, Some(&progress), &placements, &stopped_first, 500);
        assert!(progress.targets[0].stopped_ms.is_some());
        let stored = serde_json::to_vec(&progress).expect("serializes");
        let read: RolloutProgress = serde_json::from_slice(&stored).expect("parses");
        assert_eq!(read, progress);
        // Stopped already: released to its record's target, not held again.
        assert!(target_pins(&spec, Some(&read)).is_empty());
    }

    #[test]
    fn an_update_holds_no_target_state() {
        let spec = spec(2, strategy(2));
        let progress = step(&spec, None, &placements(2), &HashMap::new(), 0);
        assert!(target_pins(&spec, Some(&progress)).is_empty());
    }
}
