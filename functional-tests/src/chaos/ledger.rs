//! The invariant ledger: what systemd in every host showed, tick by tick, turned into the
//! suite's figures and verdicts.
//!
//! Each tick brings one [`Sample`]: for every host, the fleet units systemd has active with
//! their main PID, or nothing if the host could not be asked (killed, frozen). The ledger then
//! counts, per non-global unit, the seconds it ran nowhere (*missing*) and on two or more
//! hosts at once (*doubled*), and the longest unbroken stretch of each; a stretch longer than
//! its [`Limits`] is a violation. On hosts the fault did not touch, every unit that was running
//! at the start must keep its main PID: a changed or vanished PID is a restart. After the
//! fault heals, the first tick at which every launched unit is active exactly once (and every
//! global unit on every host) is the convergence time.
//!
//! Time is a [`Duration`] since the scenario began, so the ledger is pure and tested here
//! without hosts. An unobservable host counts as running nothing: a frozen host's processes
//! exist but do not run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Active fleet units in one host: unit name → main PID.
pub type HostUnits = BTreeMap<String, u32>;

/// One tick: every host → its active units, or `None` when it could not be observed.
pub type Sample = BTreeMap<String, Option<HostUnits>>;

/// The longest a unit may run nowhere, and on two hosts, before it is a violation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest stretch with no running copy.
    pub missing: Duration,
    /// Longest stretch with two or more running copies.
    pub doubled: Duration,
}

/// The units that must run: single units once somewhere, global units on every host.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Non-global units: exactly one copy.
    pub singles: BTreeSet<String>,
    /// Global units: one copy on every host.
    pub globals: BTreeSet<String>,
    /// Every host of the cluster.
    pub hosts: BTreeSet<String>,
}

impl Expected {
    /// Whether `sample` shows the cluster converged: every host observed, every single unit
    /// active exactly once, every global unit active on every host.
    pub fn converged(&self, sample: &Sample) -> bool {
        let mut views = Vec::new();
        for host in &self.hosts {
            match sample.get(host) {
                Some(Some(units)) => views.push(units),
                _ => return false,
            }
        }
        let singles_once = self.singles.iter().all(|unit| {
            views
                .iter()
                .filter(|units| units.contains_key(unit))
                .count()
                == 1
        });
        let globals_everywhere = self
            .globals
            .iter()
            .all(|unit| views.iter().all(|units| units.contains_key(unit)));
        singles_once && globals_everywhere
    }
}

/// The figures and verdicts of one scenario so far.
#[derive(Debug, Clone)]
pub struct Ledger {
    expected: Expected,
    limits: Limits,
    /// Main PIDs on untouched hosts when the scenario began.
    baseline: BTreeMap<(String, String), u32>,
    restarted: BTreeSet<(String, String)>,
    last_at: Option<Duration>,
    missing_since: BTreeMap<String, Duration>,
    doubled_since: BTreeMap<String, Duration>,
    flagged: BTreeSet<(String, &'static str)>,
    /// Unit-seconds with no running copy.
    pub missing_unit_seconds: f64,
    /// Unit-seconds with two or more running copies.
    pub doubled_unit_seconds: f64,
    /// Longest stretch any unit ran nowhere.
    pub longest_missing: Duration,
    /// Longest stretch any unit ran twice.
    pub longest_doubled: Duration,
    /// When the fault was healed (set by the runner).
    pub healed_at: Option<Duration>,
    /// The first tick after `healed_at` at which the cluster was converged.
    pub converged_at: Option<Duration>,
    /// Invariants broken, in words.
    pub violations: Vec<String>,
    /// Ticks recorded.
    pub ticks: usize,
}

impl Ledger {
    /// A ledger starting from `first`, the healthy cluster before the fault; hosts not in
    /// `touched` must keep every main PID they show in it.
    pub fn new(expected: Expected, limits: Limits, first: &Sample, touched: &[String]) -> Ledger {
        let mut baseline = BTreeMap::new();
        for (host, units) in first {
            if touched.contains(host) {
                continue;
            }
            for (unit, pid) in units.iter().flatten() {
                baseline.insert((host.clone(), unit.clone()), *pid);
            }
        }
        Ledger {
            expected,
            limits,
            baseline,
            restarted: BTreeSet::new(),
            last_at: None,
            missing_since: BTreeMap::new(),
            doubled_since: BTreeMap::new(),
            flagged: BTreeSet::new(),
            missing_unit_seconds: 0.0,
            doubled_unit_seconds: 0.0,
            longest_missing: Duration::ZERO,
            longest_doubled: Duration::ZERO,
            healed_at: None,
            converged_at: None,
            violations: Vec::new(),
            ticks: 0,
        }
    }

    /// Restarts seen on untouched hosts: (host, unit) pairs whose main PID changed or vanished.
    pub fn restarts(&self) -> usize {
        self.restarted.len()
    }

    /// Records the sample taken at `at`.
    pub fn record(&mut self, at: Duration, sample: &Sample) {
        // A stretch is dated from the tick before the one that first saw it (the worst case).
        let since = self.last_at.unwrap_or(at);
        let dt = at.saturating_sub(since).as_secs_f64();
        self.last_at = Some(at);
        self.ticks += 1;
        for unit in self.expected.singles.clone() {
            let copies = sample
                .values()
                .flatten()
                .filter(|units| units.contains_key(&unit))
                .count();
            if copies == 0 {
                self.missing_unit_seconds += dt;
            }
            if copies >= 2 {
                self.doubled_unit_seconds += dt;
            }
            self.track(&unit, copies == 0, since, at, Stretch::Missing);
            self.track(&unit, copies >= 2, since, at, Stretch::Doubled);
        }
        self.check_pids(sample);
        if self.converged_at.is_none()
            && self.healed_at.is_some_and(|healed| at >= healed)
            && self.expected.converged(sample)
        {
            self.converged_at = Some(at);
        }
    }

    /// Closes open stretches at `at` (the end of the scenario), judging them too.
    pub fn finish(&mut self, at: Duration) {
        for unit in self.expected.singles.clone() {
            self.track(&unit, false, at, at, Stretch::Missing);
            self.track(&unit, false, at, at, Stretch::Doubled);
        }
    }

    /// Extends or ends `unit`'s stretch of `kind`, flagging it once if it is too long.
    fn track(&mut self, unit: &str, now: bool, since: Duration, at: Duration, kind: Stretch) {
        let (open, limit) = match kind {
            Stretch::Missing => (&mut self.missing_since, self.limits.missing),
            Stretch::Doubled => (&mut self.doubled_since, self.limits.doubled),
        };
        let start = if now {
            *open.entry(unit.to_string()).or_insert(since)
        } else {
            match open.remove(unit) {
                Some(start) => start,
                None => return,
            }
        };
        let length = at.saturating_sub(start);
        let longest = match kind {
            Stretch::Missing => &mut self.longest_missing,
            Stretch::Doubled => &mut self.longest_doubled,
        };
        *longest = (*longest).max(length);
        if length > limit && self.flagged.insert((unit.to_string(), kind.word())) {
            self.violations.push(format!(
                "{unit} ran {} for more than {:.1} s (limit {:.1} s)",
                kind.word(),
                length.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
    }

    /// Marks restarts: a baseline unit of an observed host gone or with another main PID.
    fn check_pids(&mut self, sample: &Sample) {
        for ((host, unit), pid) in &self.baseline {
            let Some(Some(units)) = sample.get(host) else {
                continue;
            };
            if units.get(unit) != Some(pid) && self.restarted.insert((host.clone(), unit.clone())) {
                let now = units
                    .get(unit)
                    .map_or("gone".to_string(), |p| format!("PID {p}"));
                self.violations.push(format!(
                    "{unit} on untouched host {host} was restarted or stopped (PID {pid}, now {now})"
                ));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stretch {
    Missing,
    Doubled,
}

impl Stretch {
    fn word(self) -> &'static str {
        match self {
            Stretch::Missing => "nowhere",
            Stretch::Doubled => "on two hosts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    type Row<'a> = (&'a str, Option<&'a [(&'a str, u32)]>);

    fn sample(rows: &[Row<'_>]) -> Sample {
        rows.iter()
            .map(|(host, units)| {
                let units = units.map(|units| {
                    units
                        .iter()
                        .map(|(unit, pid)| (unit.to_string(), *pid))
                        .collect()
                });
                (host.to_string(), units)
            })
            .collect()
    }

    fn expected() -> Expected {
        Expected {
            singles: ["a", "b"].map(String::from).into(),
            globals: ["g"].map(String::from).into(),
            hosts: ["h1", "h2"].map(String::from).into(),
        }
    }

    fn limits() -> Limits {
        Limits {
            missing: secs(10),
            doubled: secs(3),
        }
    }

    fn healthy() -> Sample {
        sample(&[
            ("h1", Some(&[("a", 10), ("g", 11)])),
            ("h2", Some(&[("b", 20), ("g", 21)])),
        ])
    }

    #[test]
    fn a_healthy_cluster_is_converged_and_counts_nothing() {
        let mut ledger = Ledger::new(expected(), limits(), &healthy(), &[]);
        ledger.healed_at = Some(secs(0));
        for t in 0..5 {
            ledger.record(secs(t), &healthy());
        }
        ledger.finish(secs(5));
        assert_eq!(ledger.converged_at, Some(secs(0)));
        assert_eq!(ledger.missing_unit_seconds, 0.0);
        assert_eq!(ledger.doubled_unit_seconds, 0.0);
        assert_eq!(ledger.restarts(), 0);
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    }

    #[test]
    fn a_unit_missing_too_long_is_a_violation_and_counted() {
        let touched = ["h1".to_string()];
        let mut ledger = Ledger::new(expected(), limits(), &healthy(), &touched);
        ledger.record(secs(0), &healthy());
        let h1_dead = sample(&[("h1", None), ("h2", Some(&[("b", 20), ("g", 21)]))]);
        for t in 1..=12 {
            ledger.record(secs(t), &h1_dead);
        }
        // "a" has been gone since the tick at 0 s: 12 unit-seconds, a 12 s stretch.
        assert_eq!(ledger.missing_unit_seconds, 12.0);
        assert_eq!(ledger.longest_missing, secs(12));
        assert_eq!(ledger.violations.len(), 1, "{:?}", ledger.violations);
        assert!(ledger.violations[0].contains("a ran nowhere"));
        // h1 was touched: its vanished PIDs are no restart.
        assert_eq!(ledger.restarts(), 0);
        assert!(!expected().converged(&h1_dead));
    }

    #[test]
    fn a_short_double_is_counted_but_allowed_and_a_long_one_is_not() {
        let mut ledger = Ledger::new(expected(), limits(), &healthy(), &[]);
        ledger.record(secs(0), &healthy());
        let doubled = sample(&[
            ("h1", Some(&[("a", 10), ("g", 11), ("b", 12)])),
            ("h2", Some(&[("b", 20), ("g", 21)])),
        ]);
        ledger.record(secs(2), &doubled);
        ledger.record(secs(3), &healthy());
        assert_eq!(ledger.doubled_unit_seconds, 2.0);
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        for t in 4..=8 {
            ledger.record(secs(t), &doubled);
        }
        ledger.finish(secs(8));
        assert_eq!(ledger.longest_doubled, secs(5));
        assert_eq!(ledger.violations.len(), 1, "{:?}", ledger.violations);
        assert!(!expected().converged(&doubled));
    }

    #[test]
    fn a_new_pid_on_an_untouched_host_is_a_restart() {
        let mut ledger = Ledger::new(expected(), limits(), &healthy(), &["h1".to_string()]);
        let restarted = sample(&[
            ("h1", Some(&[("a", 99), ("g", 98)])),
            ("h2", Some(&[("b", 77), ("g", 21)])),
        ]);
        ledger.record(secs(1), &restarted);
        ledger.record(secs(2), &restarted);
        assert_eq!(ledger.restarts(), 1);
        assert!(ledger.violations[0].contains("b on untouched host h2"));
    }

    #[test]
    fn convergence_counts_only_after_the_heal_and_needs_every_global() {
        let mut ledger = Ledger::new(expected(), limits(), &healthy(), &[]);
        ledger.record(secs(1), &healthy());
        assert_eq!(ledger.converged_at, None, "not healed yet");
        ledger.healed_at = Some(secs(2));
        let no_global = sample(&[
            ("h1", Some(&[("a", 10), ("g", 11)])),
            ("h2", Some(&[("b", 20)])),
        ]);
        ledger.record(secs(3), &no_global);
        assert_eq!(ledger.converged_at, None);
        ledger.record(secs(4), &healthy());
        assert_eq!(ledger.converged_at, Some(secs(4)));
    }
}
