//! Self-fencing: a machine cut off from etcd stops its movable units before
//! the engine may start them elsewhere, so a unit never runs twice.
//!
//! # The clock the engine runs on
//!
//! The engine moves a machine's units once the machine's lease has expired
//! (its presence key vanished) and `machine_loss_grace` has passed. etcd
//! refreshes a lease when it receives a keep-alive, so a keep-alive that etcd
//! answered and that was *sent* at `s` proves the lease lives until at least
//! `s + agent_ttl`: that is the **bound** (the earliest instant the lease can
//! have expired). The engine cannot move anything before `bound + grace`. The
//! fence falls [`FenceConfig::margin`] earlier, at `bound + grace - margin`,
//! which leaves the margin for the stop jobs and the engine's own delays
//! (watch, pass) are on the safe side.
//!
//! # A partition, not a leaderless etcd
//!
//! etcd expires leases only while it has a leader, and a new leader renews
//! every lease for a whole TTL when it takes office. While keep-alives fail,
//! [`Fence::run`] surveys the members (`Registry::survey`); when they prove
//! that etcd as a whole has no leader (a quorum loss: some member answers
//! "no leader", the others do too or are not running), the bound moves on
//! to `survey sent + ttl`, so an etcd-wide outage never fences anything. A
//! survey in which no member answers (this machine is cut off, or every
//! member's machine is) moves nothing: the fence falls on time.
//!
//! # Latching and lifting
//!
//! [`Fence::verdict`] compares the bound with the clock every time it is
//! asked (the agent asks before every pass), so a machine whose clock jumped
//! past the fence instant (a frozen host thawed, a suspended VM) fences at
//! once, before acting on anything else. Once due, the fence latches: a new
//! lease granted afterwards does not lift it until the agent has stopped the
//! units ([`Fence::applied`]) and a keep-alive sent after that was answered.
//! Then the agent reads its schedule afresh and starts what is still placed
//! here; what the engine moved away stays stopped.
//!
//! The clock is `CLOCK_BOOTTIME` ([`Moment`]), which keeps counting while
//! the machine is suspended.
//!
//! Which units are stopped is [`movable_units`] (pure): not global units, not
//! units pinned with `MachineID=` (the engine cannot move them), not units
//! tied by `MachineOf=` to a pinned one, and not units that opted out with
//! `[X-Fleet] OnPartition=keep-running`. A machine opts out entirely with
//! `on_partition=keep-running` in fleet.conf (then no [`Fence`] exists).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_registry::Registry;
use fleet_registry::survey::Survey;
use fleet_systemd::unit::{OnPartition, Requirements, UnitName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The audit log target: fencing stops services, an operator must see why.
const AUDIT: &str = "fleet::audit";
/// The largest margin between the fence and the earliest move.
const MAX_MARGIN: Duration = Duration::from_secs(5);
/// How often [`Fence::run`] looks at the clock.
const TICK: Duration = Duration::from_millis(250);
/// How often it surveys the etcd members while keep-alives fail.
const SURVEY_INTERVAL: Duration = Duration::from_secs(1);
/// How deep a `MachineOf=` chain is followed.
const MAX_CHAIN: usize = 16;

/// A moment on `CLOCK_BOOTTIME`: monotonic, and counting through a suspend
/// (a process frozen by the cgroup freezer sees the clock jump as well).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Moment(Duration);

impl Moment {
    /// Now.
    pub fn now() -> Moment {
        let mut spec = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own; CLOCK_BOOTTIME
        // exists on every Linux fleetd supports. On an error the zero stays,
        // which only makes the fence fall earlier.
        unsafe {
            libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut spec);
        }
        Moment(Duration::new(
            u64::try_from(spec.tv_sec).unwrap_or(0),
            u32::try_from(spec.tv_nsec).unwrap_or(0),
        ))
    }

    /// A moment this far from the clock's origin (for tests).
    pub fn from_origin(since_origin: Duration) -> Moment {
        Moment(since_origin)
    }

    pub fn plus(self, duration: Duration) -> Moment {
        Moment(self.0.saturating_add(duration))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

/// The fence's clocks, from `agent_ttl` and `machine_loss_grace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceConfig {
    /// `agent_ttl`: what an answered keep-alive guarantees.
    pub ttl: Duration,
    /// `machine_loss_grace`: how long the engine waits after the expiry.
    pub grace: Duration,
    /// How much before the earliest move the fence falls: half the grace,
    /// at most 5 s. Stop jobs run in that time; a unit whose stop takes
    /// longer may still run when the engine starts it elsewhere.
    pub margin: Duration,
}

impl FenceConfig {
    pub fn new(ttl: Duration, grace: Duration) -> FenceConfig {
        FenceConfig {
            ttl,
            grace,
            margin: (grace / 2).min(MAX_MARGIN),
        }
    }

    /// When the fence falls for a lease whose earliest expiry is `bound`.
    pub fn fence_at(&self, bound: Moment) -> Moment {
        bound.plus(self.grace - self.margin)
    }

    /// The bound after an answered keep-alive sent at `sent`.
    pub fn renewed_bound(&self, bound: Option<Moment>, sent: Moment) -> Moment {
        let renewed = sent.plus(self.ttl);
        bound.map_or(renewed, |bound| bound.max(renewed))
    }

    /// The bound after a survey sent at `sent` and answered at `answered`
    /// proved etcd leaderless: when the lease was surely alive at the answer
    /// (`answered < bound`), no leader can expire it before `sent + ttl`
    /// (the next leader renews it for a whole TTL). Otherwise unchanged: the
    /// lease may have expired before etcd lost its leader.
    pub fn leaderless_bound(&self, bound: Moment, sent: Moment, answered: Moment) -> Moment {
        if answered < bound {
            bound.max(sent.plus(self.ttl))
        } else {
            bound
        }
    }
}

/// What the agent must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the schedule as usual.
    Open,
    /// Keep the movable units stopped (and stop them if they run).
    Fenced,
}

/// Where the fence stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stand {
    Open,
    /// Due since `since`; `applied` once the agent stopped the units.
    Fenced {
        since: Moment,
        applied: Option<Moment>,
    },
}

/// What the heart and the survey told the fence.
#[derive(Debug)]
struct Ledger {
    /// The earliest instant the current lease can have expired; `None`
    /// until this fleetd registered (then it has no lease to lose, and no
    /// schedule to act on).
    bound: Option<Moment>,
    stand: Stand,
    /// When the last survey was sent, so surveys are spaced.
    surveyed: Option<Moment>,
    /// Whether the last survey found etcd leaderless (logged on change).
    leaderless: bool,
}

struct Shared {
    config: FenceConfig,
    ledger: Mutex<Ledger>,
    /// Bumped when the verdict changes, to wake the agent.
    changed: watch::Sender<u64>,
}

/// The fence of one machine, shared by the heart (renewals), the agent
/// (verdicts) and its own task ([`Fence::run`]). Cheap to clone.
#[derive(Clone)]
pub struct Fence {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Fence {
    pub fn new(config: FenceConfig) -> Fence {
        let (changed, _) = watch::channel(0);
        Fence {
            shared: Arc::new(Shared {
                config,
                ledger: Mutex::new(Ledger {
                    bound: None,
                    stand: Stand::Open,
                    surveyed: None,
                    leaderless: false,
                }),
                changed,
            }),
        }
    }

    pub fn config(&self) -> FenceConfig {
        self.shared.config
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A poisoned ledger is still a whole one: every update is one store.
        self.shared
            .ledger
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Wakes whoever waits on [`Fence::subscribe`].
    fn notify(&self) {
        self.shared
            .changed
            .send_modify(|generation| *generation += 1);
    }

    /// A receiver that changes whenever the verdict may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// The heart: a keep-alive of the current lease sent at `sent` was
    /// answered (the lease lives).
    pub fn renewed(&self, sent: Moment) {
        let lifted = {
            let mut ledger = self.ledger();
            ledger.bound = Some(self.shared.config.renewed_bound(ledger.bound, sent));
            lift(&mut ledger, sent)
        };
        if lifted {
            info!(target: AUDIT, "Self-fencing lifted: this machine reaches etcd again; the agent reads its schedule afresh and starts what is still placed here.");
            self.notify();
        }
    }

    /// The heart: a new lease, granted by a request sent at `sent`. The old
    /// lease is judged first: if its fence instant has passed, the engine
    /// may have moved the units, so the fence latches before the new lease
    /// counts.
    pub fn registered(&self, sent: Moment) {
        let latched = {
            let mut ledger = self.ledger();
            let latched = judge(&self.shared.config, &mut ledger, Moment::now());
            ledger.bound = Some(sent.plus(self.shared.config.ttl));
            (latched, lift(&mut ledger, sent))
        };
        match latched {
            (true, _) => {
                self.log_latched(
                    "its previous lease expired while the engine may have moved its units",
                );
                self.notify();
            }
            (false, true) => {
                info!(target: AUDIT, "Self-fencing lifted: this machine registered again; the agent reads its schedule afresh and starts what is still placed here.");
                self.notify();
            }
            (false, false) => {}
        }
    }

    /// The agent: the verdict at this instant (latching the fence when its
    /// instant has passed).
    pub fn verdict(&self) -> Verdict {
        let (latched, verdict) = {
            let mut ledger = self.ledger();
            let latched = judge(&self.shared.config, &mut ledger, Moment::now());
            let verdict = match ledger.stand {
                Stand::Open => Verdict::Open,
                Stand::Fenced { .. } => Verdict::Fenced,
            };
            (latched, verdict)
        };
        if latched {
            self.log_latched("no keep-alive of its lease was answered in time");
            self.notify();
        }
        verdict
    }

    /// The agent: it stopped the movable units (lifting may follow).
    pub fn applied(&self) {
        let mut ledger = self.ledger();
        if let Stand::Fenced {
            since,
            applied: None,
        } = ledger.stand
        {
            ledger.stand = Stand::Fenced {
                since,
                applied: Some(Moment::now()),
            };
        }
    }

    fn log_latched(&self, why: &str) {
        let config = self.shared.config;
        error!(
            target: AUDIT,
            who = "fleetd self-fencing",
            why,
            ttl = ?config.ttl,
            grace = ?config.grace,
            margin = ?config.margin,
            "Self-fencing: this machine cannot show etcd that it is alive and the engine may soon start its units elsewhere; stopping its movable units now so that none runs twice (global units, units pinned with MachineID= and units with OnPartition=keep-running keep running)."
        );
    }

    /// Until `shutdown`: looks at the clock every [`TICK`] (latching the
    /// fence on time even while the agent sleeps) and, while keep-alives
    /// are late, surveys the etcd members to tell a leaderless etcd from a
    /// partition of this machine.
    ///
    /// # Errors
    /// None; the `Result` is the supervisor's shape.
    pub async fn run(self, registry: Registry, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(TICK) => {}
            }
            if self.survey_due(Moment::now()) {
                let sent = Moment::now();
                let survey = registry.survey();
                tokio::pin!(survey);
                // A survey takes up to a request deadline; the clock is
                // watched meanwhile, so it never delays the fence.
                let survey = loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        survey = &mut survey => break survey,
                        () = tokio::time::sleep(TICK) => {
                            self.verdict();
                        }
                    }
                };
                self.surveyed(&survey, sent, Moment::now());
            }
            // Latches (and logs, and wakes the agent) when due.
            self.verdict();
        }
    }

    /// Whether keep-alives are late (the last answered one was sent more
    /// than half a TTL ago) and no survey was sent within the interval.
    fn survey_due(&self, now: Moment) -> bool {
        let mut ledger = self.ledger();
        let Some(bound) = ledger.bound else {
            return false;
        };
        let late = now.plus(self.shared.config.ttl / 2) >= bound;
        let spaced = ledger
            .surveyed
            .is_none_or(|surveyed| now.since(surveyed) >= SURVEY_INTERVAL);
        if late && spaced && matches!(ledger.stand, Stand::Open) {
            ledger.surveyed = Some(now);
            return true;
        }
        false
    }

    /// Takes in a survey sent at `sent` and answered at `answered`.
    fn surveyed(&self, survey: &Survey, sent: Moment, answered: Moment) {
        let leaderless = survey.cluster_is_leaderless();
        let mut ledger = self.ledger();
        if leaderless && let Some(bound) = ledger.bound {
            ledger.bound = Some(self.shared.config.leaderless_bound(bound, sent, answered));
        }
        if leaderless != ledger.leaderless {
            ledger.leaderless = leaderless;
            if leaderless {
                warn!(%survey, "etcd has no leader: no lease can expire and the engine can move nothing, so this machine does not fence its units.");
            } else {
                info!(%survey, "etcd no longer proves leaderless; self-fencing follows the lease clock again.");
            }
        } else {
            debug!(%survey, leaderless, "Surveyed the etcd members.");
        }
    }
}

/// Latches the fence when its instant has passed; `true` when it just did.
fn judge(config: &FenceConfig, ledger: &mut Ledger, now: Moment) -> bool {
    let Some(bound) = ledger.bound else {
        return false;
    };
    if ledger.stand == Stand::Open && now >= config.fence_at(bound) {
        ledger.stand = Stand::Fenced {
            since: now,
            applied: None,
        };
        return true;
    }
    false
}

/// Lifts an applied fence after a renewal sent at `sent` (after the units
/// were stopped); `true` when it did.
fn lift(ledger: &mut Ledger, sent: Moment) -> bool {
    if let Stand::Fenced {
        applied: Some(applied),
        ..
    } = ledger.stand
        && sent >= applied
    {
        ledger.stand = Stand::Open;
        ledger.leaderless = false;
        return true;
    }
    false
}

/// Which of the units scheduled here the fence stops, given their
/// requirements (`None`: content unknown, stopped to be safe).
///
/// Kept running: global units (the engine never moves them: they run
/// everywhere), units with `MachineID=` (it cannot move them), units whose
/// `MachineOf=` peer (followed through chains) is pinned that way, and units
/// with `OnPartition=keep-running`.
pub fn movable_units(units: &BTreeMap<UnitName, Option<Requirements>>) -> BTreeSet<UnitName> {
    units
        .iter()
        .filter(|(name, requirements)| match requirements {
            None => true,
            Some(requirements) => {
                !requirements.global
                    && requirements.on_partition == OnPartition::Stop
                    && !pinned(units, name, 0)
            }
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether `name` cannot be moved: `MachineID=`, or a `MachineOf=` peer
/// scheduled here that cannot be.
fn pinned(units: &BTreeMap<UnitName, Option<Requirements>>, name: &UnitName, depth: usize) -> bool {
    let Some(Some(requirements)) = units.get(name) else {
        return false;
    };
    if requirements.machine_id.is_some() {
        return true;
    }
    depth < MAX_CHAIN
        && requirements.machine_of.iter().any(|peer| {
            peer.parse::<UnitName>()
                .is_ok_and(|peer| pinned(units, &peer, depth + 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_systemd::unit::{UnitFile, UnitOption};

    fn at(secs: f64) -> Moment {
        Moment::from_origin(Duration::from_secs_f64(secs))
    }

    /// The chaos suite's clocks: ttl 5 s, grace 12 s (margin 5 s).
    fn config() -> FenceConfig {
        FenceConfig::new(Duration::from_secs(5), Duration::from_secs(12))
    }

    #[test]
    fn the_fence_falls_a_margin_before_the_earliest_move() {
        let config = config();
        assert_eq!(config.margin, Duration::from_secs(5));
        // Last answered keep-alive sent at 100 s: the lease lives until at
        // least 105 s, the engine moves from 117 s on, the fence falls at 112 s.
        let bound = config.renewed_bound(None, at(100.0));
        assert_eq!(bound, at(105.0));
        assert_eq!(config.fence_at(bound), at(112.0));
        // A later renewal moves the bound; an earlier (reordered) one does not.
        assert_eq!(config.renewed_bound(Some(bound), at(101.0)), at(106.0));
        assert_eq!(config.renewed_bound(Some(bound), at(99.0)), bound);
        // A small grace: half of it.
        let small = FenceConfig::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(small.margin, Duration::from_millis(500));
        assert_eq!(small.fence_at(at(10.0)), at(10.5));
        // No grace: the fence falls at the earliest expiry.
        let none = FenceConfig::new(Duration::from_secs(2), Duration::ZERO);
        assert_eq!(none.fence_at(at(10.0)), at(10.0));
    }

    #[test]
    fn a_leaderless_etcd_moves_the_bound_only_while_the_lease_surely_lives() {
        let config = config();
        let bound = at(105.0);
        // Surveyed at 103 s, answered at 103.2 s: the lease lived then, and
        // no leader can expire it before 108 s.
        assert_eq!(
            config.leaderless_bound(bound, at(103.0), at(103.2)),
            at(108.0)
        );
        // Answered after the bound: it may have expired before etcd lost
        // its leader; nothing moves.
        assert_eq!(config.leaderless_bound(bound, at(105.5), at(106.0)), bound);
    }

    fn ledger(bound: Option<f64>) -> Ledger {
        Ledger {
            bound: bound.map(at),
            stand: Stand::Open,
            surveyed: None,
            leaderless: false,
        }
    }

    #[test]
    fn the_fence_latches_at_its_instant_and_lifts_only_after_it_was_applied() {
        let config = config();
        let mut state = ledger(Some(105.0));
        assert!(!judge(&config, &mut state, at(111.9)));
        assert_eq!(state.stand, Stand::Open);
        // A thawed host: the clock jumped far past the instant.
        assert!(judge(&config, &mut state, at(140.0)));
        assert!(!judge(&config, &mut state, at(141.0)), "latched once");
        // A renewal before the units were stopped does not lift it.
        assert!(!lift(&mut state, at(142.0)));
        state.stand = Stand::Fenced {
            since: at(140.0),
            applied: Some(at(143.0)),
        };
        // Nor one sent before they were stopped.
        assert!(!lift(&mut state, at(142.5)));
        assert!(lift(&mut state, at(143.5)));
        assert_eq!(state.stand, Stand::Open);
        // Never registered in this fleetd: nothing to fence.
        let mut fresh = ledger(None);
        assert!(!judge(&config, &mut fresh, at(1e6)));
    }

    fn unit(options: &[(&str, &str)]) -> Option<Requirements> {
        let file = UnitFile::from_options(
            std::iter::once(UnitOption::new(
                "Service",
                "ExecStart",
                "/bin/sleep infinity",
            ))
            .chain(
                options
                    .iter()
                    .map(|(name, value)| UnitOption::new("X-Fleet", *name, *value)),
            )
            .collect(),
        );
        Some(Requirements::of_unnamed(&file))
    }

    fn check(units: &[(&str, Option<Requirements>)], expected: &[&str]) {
        let units: BTreeMap<UnitName, Option<Requirements>> = units
            .iter()
            .map(|(name, requirements)| (name.parse().unwrap(), requirements.clone()))
            .collect();
        let movable: Vec<String> = movable_units(&units)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(movable, expected);
    }

    #[test]
    fn movable_units_are_those_the_engine_could_move_and_did_not_opt_out() {
        check(
            &[
                ("plain.service", unit(&[])),
                ("global.service", unit(&[("Global", "true")])),
                ("pinned.service", unit(&[("MachineID", "0123456789abcdef")])),
                ("keep.service", unit(&[("OnPartition", "keep-running")])),
                ("meta.service", unit(&[("MachineMetadata", "region=eu")])),
                ("unknown.service", None),
            ],
            &["meta.service", "plain.service", "unknown.service"],
        );
    }

    #[test]
    fn machine_of_chains_follow_their_pinned_end() {
        check(
            &[
                ("db.service", unit(&[("MachineID", "0123456789abcdef")])),
                ("side.service", unit(&[("MachineOf", "db.service")])),
                ("side2.service", unit(&[("MachineOf", "side.service")])),
                ("web.service", unit(&[])),
                ("webside.service", unit(&[("MachineOf", "web.service")])),
                // A peer not scheduled here, and a cycle: movable.
                ("lonely.service", unit(&[("MachineOf", "gone.service")])),
                ("a.service", unit(&[("MachineOf", "b.service")])),
                ("b.service", unit(&[("MachineOf", "a.service")])),
            ],
            &[
                "a.service",
                "b.service",
                "lonely.service",
                "web.service",
                "webside.service",
            ],
        );
    }
}
