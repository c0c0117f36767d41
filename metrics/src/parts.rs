//! The metrics of each part of fleetd, with one method per thing recorded.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::{
    Counters, Gauges, Histograms, Owned2, Static1, Static2, latency_family, latency_histogram,
    seconds_since,
};

/// The engine: election, scheduling passes and what they see.
pub struct Engine {
    leader: Gauge,
    elections: Counter,
    passes: Counter,
    pass_duration: Histogram,
    decisions: Counters<Static1>,
    unschedulable: Gauges<Static1>,
    units: Gauges<Static1>,
    machines: Gauges<Static1>,
    breaker_tripped: Gauge,
    breaker_events: Counters<Static1>,
}

impl Engine {
    pub(crate) fn register(registry: &mut Registry) -> Engine {
        let engine = Engine {
            leader: Gauge::default(),
            elections: Counter::default(),
            passes: Counter::default(),
            pass_duration: latency_histogram(),
            decisions: Counters::default(),
            unschedulable: Gauges::default(),
            units: Gauges::default(),
            machines: Gauges::default(),
            breaker_tripped: Gauge::default(),
            breaker_events: Counters::default(),
        };
        let r = registry;
        r.register(
            "leader",
            "1 while this fleetd's engine leads the cluster, else 0",
            engine.leader.clone(),
        );
        r.register(
            "elections",
            "Times this engine won the leadership",
            engine.elections.clone(),
        );
        r.register(
            "passes",
            "Scheduling passes run by this engine while leading",
            engine.passes.clone(),
        );
        r.register(
            "pass_duration_seconds",
            "Time the scheduler took to decide one pass",
            engine.pass_duration.clone(),
        );
        r.register(
            "decisions",
            "Schedule changes written, by kind (place, unplace)",
            engine.decisions.clone(),
        );
        r.register(
            "unschedulable_units",
            "Units the last pass could not place, by reason",
            engine.unschedulable.clone(),
        );
        r.register(
            "units",
            "Units known to the leading engine, by target state",
            engine.units.clone(),
        );
        r.register(
            "machines",
            "Machines known to the leading engine, by state (present, lost)",
            engine.machines.clone(),
        );
        r.register(
            "breaker_tripped",
            "1 while the machine-loss breaker holds rescheduling",
            engine.breaker_tripped.clone(),
        );
        r.register(
            "breaker_events",
            "Machine-loss breaker transitions, by event",
            engine.breaker_events.clone(),
        );
        engine
    }

    /// Whether this engine leads; leading again counts an election.
    pub fn set_leader(&self, leading: bool) {
        if leading {
            self.elections.inc();
        } else {
            // A follower knows nothing current about the cluster.
            self.units.clear();
            self.machines.clear();
            self.unschedulable.clear();
            self.breaker_tripped.set(0);
        }
        self.leader.set(i64::from(leading));
    }

    /// One scheduling pass that took from `started` until now.
    pub fn pass(&self, started: Instant) {
        self.passes.inc();
        self.pass_duration.observe(seconds_since(started));
    }

    /// `n` schedule changes of `kind` (`place` or `unplace`) were written.
    pub fn decisions(&self, kind: &'static str, n: usize) {
        self.decisions
            .get_or_create(&[("kind", kind)])
            .inc_by(n as u64);
    }

    /// The unschedulable units of the last pass, as reason texts (classified
    /// by [`unschedulable_reason`]).
    pub fn unschedulable<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        self.unschedulable.clear();
        for reason in reasons {
            self.unschedulable
                .get_or_create(&[("reason", unschedulable_reason(reason))])
                .inc();
        }
    }

    /// Unit counts by target state (`inactive`, `loaded`, `launched`).
    pub fn units_by_target<'a>(&self, targets: impl IntoIterator<Item = &'a str>) {
        self.units.clear();
        for target in targets {
            let target = match target {
                "inactive" => "inactive",
                "loaded" => "loaded",
                "launched" => "launched",
                _ => "other",
            };
            self.units.get_or_create(&[("target_state", target)]).inc();
        }
    }

    /// Machine counts: `present` ones and `lost` ones (gone beyond grace).
    pub fn machines(&self, present: usize, lost: usize) {
        self.machines
            .get_or_create(&[("state", "present")])
            .set(present as i64);
        self.machines
            .get_or_create(&[("state", "lost")])
            .set(lost as i64);
    }

    /// Whether the breaker holds now.
    pub fn breaker(&self, tripped: bool) {
        self.breaker_tripped.set(i64::from(tripped));
    }

    /// A breaker transition (`tripped`, `resumed_returned`, `resumed_expired`).
    pub fn breaker_event(&self, event: &'static str) {
        self.breaker_events.get_or_create(&[("event", event)]).inc();
    }
}

/// A bounded label for a scheduler's unschedulable reason text: the text
/// names units and machines, the label only says which rule stopped it.
pub fn unschedulable_reason(reason: &str) -> &'static str {
    if reason.starts_with("no machines are available") {
        "no_machines"
    } else if reason.starts_with("no machine matches") {
        "no_matching_machine"
    } else if reason.starts_with("MachineOf") {
        "machine_of"
    } else if reason.starts_with("no machine fits") || reason.starts_with("conflicts with") {
        "conflicts"
    } else {
        "other"
    }
}

/// The agent: reconcile passes, D-Bus calls, unit states on this machine.
pub struct Agent {
    passes: Counter,
    pass_duration: Histogram,
    dbus_calls: Counters<Static1>,
    dbus_errors: Counters<Static1>,
    dbus_duration: Histograms<Static1>,
    units: Gauges<Owned2>,
    state_writes: Counters<Static1>,
}

impl Agent {
    pub(crate) fn register(registry: &mut Registry) -> Agent {
        let agent = Agent {
            passes: Counter::default(),
            pass_duration: latency_histogram(),
            dbus_calls: Counters::default(),
            dbus_errors: Counters::default(),
            dbus_duration: latency_family(),
            units: Gauges::default(),
            state_writes: Counters::default(),
        };
        let r = registry;
        r.register(
            "reconcile_passes",
            "Reconcile passes (schedule against systemd) run by the agent",
            agent.passes.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass took, systemd jobs included",
            agent.pass_duration.clone(),
        );
        r.register(
            "dbus_calls",
            "Calls to systemd's D-Bus manager, by method",
            agent.dbus_calls.clone(),
        );
        r.register(
            "dbus_call_errors",
            "Calls to systemd's D-Bus manager that failed or timed out, by method",
            agent.dbus_errors.clone(),
        );
        r.register(
            "dbus_call_duration_seconds",
            "Time of one D-Bus call to systemd, by method",
            agent.dbus_duration.clone(),
        );
        r.register(
            "units",
            "Units scheduled to this machine, by systemd active and sub state",
            agent.units.clone(),
        );
        r.register(
            "state_writes",
            "Unit states written to etcd by this agent, by kind (put, delete)",
            agent.state_writes.clone(),
        );
        agent
    }

    /// One reconcile pass that took from `started` until now.
    pub fn reconcile(&self, started: Instant) {
        self.passes.inc();
        self.pass_duration.observe(seconds_since(started));
    }

    /// One D-Bus call of `method`, from `started` until now.
    pub fn dbus_call(&self, method: &'static str, started: Instant, ok: bool) {
        let labels = [("method", method)];
        self.dbus_calls.get_or_create(&labels).inc();
        self.dbus_duration
            .get_or_create(&labels)
            .observe(seconds_since(started));
        if !ok {
            self.dbus_errors.get_or_create(&labels).inc();
        }
    }

    /// The units of this machine as (active, sub) states, replacing the last.
    pub fn units<'a>(&self, states: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.units.clear();
        for (active, sub) in states {
            let labels: Owned2 = [
                ("active_state", bounded_state(active)),
                ("sub_state", bounded_state(sub)),
            ];
            self.units.get_or_create(&labels).inc();
        }
    }

    /// One unit state written (`put`) or removed (`delete`).
    pub fn state_write(&self, kind: &'static str) {
        self.state_writes.get_or_create(&[("kind", kind)]).inc();
    }
}

/// systemd's state words are a small fixed vocabulary; anything else (a
/// stranger's value) becomes `other` so a label cannot grow without bound.
fn bounded_state(state: &str) -> String {
    let plain = !state.is_empty()
        && state.len() <= 24
        && state.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if plain {
        state.to_owned()
    } else {
        "other".to_owned()
    }
}

/// The registry's etcd client: requests, watches and lease keep-alives.
pub struct Etcd {
    requests: Counters<Static1>,
    errors: Counters<Static1>,
    duration: Histograms<Static1>,
    watch_starts: Counter,
    watch_failures: Counters<Static1>,
    keep_alive_failures: Counter,
}

impl Etcd {
    pub(crate) fn register(registry: &mut Registry) -> Etcd {
        let etcd = Etcd {
            requests: Counters::default(),
            errors: Counters::default(),
            duration: latency_family(),
            watch_starts: Counter::default(),
            watch_failures: Counters::default(),
            keep_alive_failures: Counter::default(),
        };
        let r = registry;
        r.register(
            "requests",
            "etcd requests, by operation",
            etcd.requests.clone(),
        );
        r.register(
            "request_errors",
            "etcd requests that failed or timed out, by operation",
            etcd.errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time of one etcd request, by operation",
            etcd.duration.clone(),
        );
        r.register(
            "watch_starts",
            "Watches started (first starts and restarts after a failure)",
            etcd.watch_starts.clone(),
        );
        r.register(
            "watch_failures",
            "Watches that ended with an error, by reason (compacted, broken)",
            etcd.watch_failures.clone(),
        );
        r.register(
            "lease_keep_alive_failures",
            "Lease keep-alives that failed or found the lease expired",
            etcd.keep_alive_failures.clone(),
        );
        etcd
    }

    /// One request of operation `op`, from `started` until now.
    pub fn request(&self, op: &'static str, started: Instant, ok: bool) {
        let labels = [("op", op)];
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(seconds_since(started));
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
    }

    pub fn watch_started(&self) {
        self.watch_starts.inc();
    }

    /// A watch failed: `compacted` (history gone) or `broken` (connection).
    pub fn watch_failed(&self, reason: &'static str) {
        self.watch_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn keep_alive_failed(&self) {
        self.keep_alive_failures.inc();
    }
}

/// The HTTP API: requests by route template, method and status code.
pub struct Api {
    requests: Counters<RequestLabels>,
    duration: Histograms<Static2>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    code: u16,
}

impl Api {
    pub(crate) fn register(registry: &mut Registry) -> Api {
        let api = Api {
            requests: Counters::default(),
            duration: latency_family(),
        };
        registry.register(
            "requests",
            "API requests served, by route template, method and status code",
            api.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer one API request (to the response head), by route template and method",
            api.duration.clone(),
        );
        api
    }

    /// One request to `route` (a template such as `/fleet/v1/units/{name}`).
    pub fn request(&self, route: &'static str, method: &'static str, code: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                code,
            })
            .inc();
        self.duration
            .get_or_create(&[("route", route), ("method", method)])
            .observe(seconds_since(started));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_states_stay_bounded() {
        assert_eq!(
            unschedulable_reason("no machines are available"),
            "no_machines"
        );
        assert_eq!(
            unschedulable_reason("no machine matches MachineID=abc"),
            "no_matching_machine"
        );
        assert_eq!(
            unschedulable_reason("MachineOf peer a.service is not scheduled"),
            "machine_of"
        );
        assert_eq!(
            unschedulable_reason("no machine fits: conflicts with b.service on every machine"),
            "conflicts"
        );
        assert_eq!(unschedulable_reason("anything else"), "other");
        assert_eq!(bounded_state("running"), "running");
        assert_eq!(bounded_state("auto-restart"), "auto-restart");
        assert_eq!(bounded_state("Weird\"value"), "other");
        assert_eq!(bounded_state(""), "other");
    }
}
