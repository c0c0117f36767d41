//! Blocking until units reach a state (Documentation/compatibility.md, "Blocking").
//!
//! One attempt is 2 s of polling every 250 ms; `--block-attempts=N` allows N
//! attempts (0 waits forever) and `--no-block` does not wait. Like the
//! original, a few units are polled with one `GET` each; beyond that, one
//! poll lists all units (or states) once and checks every pending unit
//! against it, so waiting for 1,000 units costs one request per poll.
//!
//! While a wait lasts more than about 2 s, a progress line goes to stderr:
//! redrawn in place on a terminal, a plain line every few seconds otherwise.

use fleet_model::TargetState;
use std::collections::BTreeSet;
use std::time::Duration;

use fleet_api::client::ClientError;
use fleet_api::entities::Unit;
use tokio::time::Instant;

use crate::cli::BlockArgs;
use crate::context::{Ctx, is_global, unit_state_message};

/// How long one attempt lasts (the original's `defaultSleepTime` window).
pub const ATTEMPT: Duration = Duration::from_secs(2);
/// How often a wait polls the API.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Waits shorter than this show no progress line.
const PROGRESS_AFTER: Duration = Duration::from_secs(2);
/// How often a plain (non-terminal) progress line repeats.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often a wait for an unplaced unit asks fleet why it is not placed.
const WHY_EVERY: Duration = Duration::from_secs(5);

/// What `--block-attempts` / `--no-block` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// `--no-block`: trigger and return.
    NoBlock,
    /// `--block-attempts=0` (the default): wait as long as it takes.
    Forever,
    /// Give up after this many attempts of [`ATTEMPT`] each.
    Attempts(u32),
}

impl Blocking {
    pub fn from_args(args: &BlockArgs) -> Blocking {
        if args.no_block {
            Blocking::NoBlock
        } else {
            Blocking::from_attempts(args.block_attempts)
        }
    }

    pub fn from_attempts(attempts: u32) -> Blocking {
        if attempts == 0 {
            Blocking::Forever
        } else {
            Blocking::Attempts(attempts)
        }
    }

    /// The same limit, but waiting even with `--no-block` (create-time waits
    /// ignore it, as the original's did).
    pub fn ignoring_no_block(self) -> Blocking {
        match self {
            Blocking::NoBlock => Blocking::Forever,
            other => other,
        }
    }

    /// When waiting must give up, counted from `start`.
    fn deadline(self, start: Instant) -> Option<Instant> {
        match self {
            Blocking::Attempts(attempts) => Some(start + ATTEMPT * attempts),
            Blocking::NoBlock | Blocking::Forever => None,
        }
    }
}

/// Prints progress while a wait is long.
struct Progress<'a> {
    ctx: &'a Ctx,
    start: Instant,
    last_plain: Option<Instant>,
    drawn: bool,
    /// Why a pending unit is not placed, as fleet last said.
    hint: Option<String>,
    hint_at: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(ctx: &'a Ctx) -> Progress<'a> {
        Progress {
            ctx,
            start: Instant::now(),
            last_plain: None,
            drawn: false,
            hint: None,
            hint_at: None,
        }
    }

    /// Asks fleet (at most every [`WHY_EVERY`]) why `unit`, which has no
    /// machine, is not placed; the answer joins the progress line. A fleetd
    /// without the operations API gives no hint.
    async fn explain_unplaced(&mut self, unit: Option<&str>) {
        let Some(unit) = unit else {
            self.hint = None;
            return;
        };
        if self.hint_at.is_some_and(|at| at.elapsed() < WHY_EVERY)
            || self.start.elapsed() < PROGRESS_AFTER
        {
            return;
        }
        self.hint_at = Some(Instant::now());
        self.hint = match self.ctx.client.why(unit).await {
            Ok(explanation) if explanation.placed_on.is_empty() => {
                Some(format!("{unit}: {}", explanation.summary))
            }
            _ => None,
        };
    }

    /// `failure`: why the last poll failed, so that an unreachable API does
    /// not look like a slow cluster.
    fn tick(&mut self, n_pending: usize, what: &str, failure: Option<&str>) {
        let now = Instant::now();
        if now.duration_since(self.start) < PROGRESS_AFTER {
            return;
        }
        let noun = if n_pending == 1 { "unit" } else { "units" };
        let mut line = format!("Waiting for {n_pending} {noun} to {what}...");
        if let Some(failure) = failure {
            line.push_str(&format!(" (last poll failed: {failure})"));
        }
        if let Some(hint) = &self.hint {
            line.push_str(&format!(" {hint}"));
        }
        if self.ctx.console.stderr_is_terminal() {
            self.ctx.console.progress(&line);
            self.drawn = true;
        } else if self
            .last_plain
            .is_none_or(|last| now.duration_since(last) >= PLAIN_PROGRESS_EVERY)
        {
            self.ctx.console.err(&line);
            self.last_plain = Some(now);
        }
    }

    fn clear(&mut self) {
        if self.drawn {
            self.ctx.console.progress_done();
            self.drawn = false;
        }
    }
}

/// Up to this many pending units are polled with one `GET` each; more with
/// one listing of all units, which costs the same for 1 or 1,000 of them.
const MAX_SINGLE_GETS: usize = 4;

/// The current records of the `pending` units (missing ones left out).
async fn poll_units(ctx: &Ctx, pending: &[String]) -> Result<Vec<Unit>, ClientError> {
    if pending.len() > MAX_SINGLE_GETS {
        return ctx.client.units().await;
    }
    let mut units = Vec::with_capacity(pending.len());
    for name in pending {
        if let Some(unit) = ctx.client.unit(name).await? {
            units.push(unit);
        }
    }
    Ok(units)
}

/// Waits until every unit in `names` reports `target` (`currentState`, or
/// `desiredState` for global units) and prints `Unit <n> <state> [on <legend>]`
/// for each as it gets there. Returns one error text per unit that timed out.
///
/// With [`Blocking::NoBlock`] it prints `Triggered unit <n> <verb>` instead.
pub async fn wait_for_unit_states(
    ctx: &Ctx,
    names: &[String],
    target: TargetState,
    verb: &str,
    blocking: Blocking,
) -> Vec<String> {
    if blocking == Blocking::NoBlock {
        for name in names {
            ctx.console.out(&format!("Triggered unit {name} {verb}"));
        }
        return Vec::new();
    }
    if names.is_empty() {
        return Vec::new();
    }
    let mut pending: Vec<String> = names.to_vec();
    let start = Instant::now();
    let deadline = blocking.deadline(start);
    let mut progress = Progress::new(ctx);
    let mut last_error: Option<String>;
    loop {
        match poll_units(ctx, &pending).await {
            Ok(units) => {
                last_error = None;
                let mut still_pending = Vec::new();
                for name in pending {
                    let reached = units.iter().find(|u| u.name == name).and_then(|unit| {
                        let state = if is_global(unit) {
                            unit.desired()
                        } else {
                            unit.current()
                        };
                        (state == Some(target)).then_some(unit)
                    });
                    match reached {
                        Some(unit) => {
                            progress.clear();
                            let shown = if unit.current_state.is_empty() {
                                target.to_string()
                            } else {
                                unit.current_state.clone()
                            };
                            let message =
                                unit_state_message(ctx, &name, &shown, &unit.machine_id).await;
                            ctx.console.out(&message);
                        }
                        None => still_pending.push(name),
                    }
                }
                pending = still_pending;
                // An inactive unit has no machine on purpose.
                let unplaced = pending
                    .iter()
                    .filter(|_| target != TargetState::Inactive)
                    .find(|name| {
                        units.iter().any(|unit| {
                            &&unit.name == name && unit.machine_id.is_empty() && !is_global(unit)
                        })
                    });
                progress
                    .explain_unplaced(unplaced.map(String::as_str))
                    .await;
            }
            // Like the original, a failed poll is retried until the deadline.
            Err(error) => last_error = Some(error.to_string()),
        }
        if pending.is_empty() {
            progress.clear();
            return Vec::new();
        }
        if deadline.is_some_and(|deadline| Instant::now() + POLL_INTERVAL > deadline) {
            progress.clear();
            return pending
                .iter()
                .map(|name| {
                    let mut text =
                        format!("timed out waiting for unit {name} to report state {target}");
                    if let Some(error) = &last_error {
                        text.push_str(&format!(" (last error: {error})"));
                    }
                    text
                })
                .collect();
        }
        progress.tick(
            pending.len(),
            &format!("become {target}"),
            last_error.as_deref(),
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until systemd reports every unit in `names` as loaded and active
/// on some machine (`start`'s second wait). Silent on success; returns one
/// error text per unit that timed out.
pub async fn wait_for_systemd_active(
    ctx: &Ctx,
    names: &[String],
    blocking: Blocking,
) -> Vec<String> {
    if blocking == Blocking::NoBlock || names.is_empty() {
        return Vec::new();
    }
    let mut pending: BTreeSet<String> = names.iter().cloned().collect();
    let deadline = blocking.deadline(Instant::now());
    let mut progress = Progress::new(ctx);
    loop {
        // One unit: `GET /state/<n>` like the original; many: one listing of all states.
        let states = if pending.len() == 1 {
            let name = pending.iter().next().cloned().unwrap_or_default();
            ctx.client
                .unit_state(&name)
                .await
                .map(|state| state.into_iter().collect::<Vec<_>>())
        } else {
            ctx.client.unit_states(None, None).await
        };
        if let Ok(states) = states {
            for state in states {
                if state.systemd_active_state == "active" && state.systemd_load_state == "loaded" {
                    pending.remove(&state.name);
                }
            }
        }
        if pending.is_empty() {
            progress.clear();
            return Vec::new();
        }
        if deadline.is_some_and(|deadline| Instant::now() + POLL_INTERVAL > deadline) {
            progress.clear();
            return pending
                .iter()
                .map(|name| format!("timed out waiting for unit {name} to report active state"))
                .collect();
        }
        progress.tick(pending.len(), "become active", None);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until every unit in `names` is gone from the registry and no
/// machine reports a state for it any more (the agents have unloaded it).
/// Returns one error text per unit that timed out.
pub async fn wait_for_removal(ctx: &Ctx, names: &[String], blocking: Blocking) -> Vec<String> {
    if blocking == Blocking::NoBlock || names.is_empty() {
        return Vec::new();
    }
    let mut pending: BTreeSet<String> = names.iter().cloned().collect();
    let deadline = blocking.deadline(Instant::now());
    let mut progress = Progress::new(ctx);
    loop {
        let units = ctx.client.units().await;
        let states = ctx.client.unit_states(None, None).await;
        if let (Ok(units), Ok(states)) = (units, states) {
            pending.retain(|name| {
                units.iter().any(|u| &u.name == name) || states.iter().any(|s| &s.name == name)
            });
        }
        if pending.is_empty() {
            progress.clear();
            return Vec::new();
        }
        if deadline.is_some_and(|deadline| Instant::now() + POLL_INTERVAL > deadline) {
            progress.clear();
            return pending
                .iter()
                .map(|name| {
                    format!("timed out waiting for unit {name} to be removed from its machines")
                })
                .collect();
        }
        progress.tick(pending.len(), "be removed", None);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_from_flags() {
        let args = |block_attempts, no_block| BlockArgs {
            block_attempts,
            no_block,
        };
        assert_eq!(Blocking::from_args(&args(0, false)), Blocking::Forever);
        assert_eq!(Blocking::from_args(&args(3, false)), Blocking::Attempts(3));
        assert_eq!(Blocking::from_args(&args(3, true)), Blocking::NoBlock);
        assert_eq!(Blocking::NoBlock.ignoring_no_block(), Blocking::Forever);
        assert_eq!(
            Blocking::Attempts(2).ignoring_no_block(),
            Blocking::Attempts(2)
        );
    }

    #[test]
    fn attempts_last_two_seconds_each() {
        let start = Instant::now();
        assert_eq!(
            Blocking::Attempts(3).deadline(start),
            Some(start + Duration::from_secs(6))
        );
        assert_eq!(Blocking::Forever.deadline(start), None);
    }
}
