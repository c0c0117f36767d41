//! fleetd's metrics: one process-wide Prometheus registry.
//!
//! Every metric fleetd exports lives here, grouped by the part that moves it
//! ([`Engine`], [`Agent`], [`Etcd`], [`Api`]). Call sites record with one
//! line (`fleet_metrics::get().etcd.request(op, started, ok)`), so the code
//! that does the work stays readable; [`render`] is what `GET /metrics`
//! serves. The list of metrics with their meaning is in
//! `Documentation/observability.md`.
//!
//! Why one global: a fleetd is one process, its parts are built in many
//! places, and threading a handle through every constructor would touch code
//! that has nothing to do with metrics. Tests that run several fleetd parts in
//! one process therefore share the figures; they assert on deltas or presence.
//!
//! Names follow the Prometheus guide: `fleet_` prefix, base units
//! (`_seconds`), counters end in `_total` (the encoder adds the suffix),
//! and every label has a small, bounded set of values (operation names,
//! route templates, states) — never a unit or machine name.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod parts;

pub use parts::{Agent, Api, Engine, Etcd, unschedulable_reason};

/// The content type of [`render`]'s output: the Prometheus text format,
/// which every Prometheus scrapes and `promtool check metrics` reads.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label set of one label with a static value (operation, method, kind).
pub(crate) type Static1 = [(&'static str, &'static str); 1];
/// Label set of two labels with static values.
pub(crate) type Static2 = [(&'static str, &'static str); 2];
/// Label set of two labels whose values come from the data (states).
pub(crate) type Owned2 = [(&'static str, String); 2];

pub(crate) type Counters<L> = Family<L, Counter>;
pub(crate) type Gauges<L> = Family<L, Gauge>;
pub(crate) type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 16 s, doubling: etcd requests, API
/// requests, D-Bus calls, passes.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A histogram family with [`latency_histogram`] buckets.
pub(crate) fn latency_family<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// Seconds since `started`, as histograms want them.
pub(crate) fn seconds_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    pub engine: Engine,
    pub agent: Agent,
    pub etcd: Etcd,
    pub api: Api,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fleet");
        let engine = Engine::register(registry.sub_registry_with_prefix("engine"));
        let agent = Agent::register(registry.sub_registry_with_prefix("agent"));
        let etcd = Etcd::register(registry.sub_registry_with_prefix("etcd"));
        let api = Api::register(registry.sub_registry_with_prefix("api"));
        Metrics {
            registry,
            engine,
            agent,
            etcd,
            api,
        }
    }
}

/// The process's metrics, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in
    // a label value, and a partial page is still better than none.
    let _ = encode(&mut text, &get().registry);
    openmetrics_to_prometheus(&text)
}

/// The crate encodes OpenMetrics, where a counter family `x` has samples
/// `x_total`; the Prometheus text format names the family by its samples
/// (`x_total`) and has no `# EOF`. Renames counter families, drops `# EOF`.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|tag| Some((tag, line.strip_prefix(tag)?)));
        match header {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{tag}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_renders_with_the_fleet_prefix() {
        let metrics = get();
        metrics
            .api
            .request("/fleet/v1/units", "GET", 200, Instant::now());
        metrics.etcd.request("get unit", Instant::now(), true);
        metrics.engine.set_leader(true);
        metrics.agent.dbus_call("StartUnit", Instant::now(), false);
        let text = render();
        for line in [
            "# TYPE fleet_api_requests_total counter",
            r#"fleet_api_requests_total{route="/fleet/v1/units",method="GET",code="200"} 1"#,
            r#"fleet_etcd_requests_total{op="get unit"} 1"#,
            "fleet_engine_leader 1",
            r#"fleet_agent_dbus_call_errors_total{method="StartUnit"} 1"#,
            "# TYPE fleet_etcd_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn counters_are_named_by_their_samples() {
        let open = "# HELP a_seconds A.\n# TYPE a_seconds gauge\na_seconds 1\n\
                    # HELP b B.\n# TYPE b counter\nb_total 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(open),
            "# HELP a_seconds A.\n# TYPE a_seconds gauge\na_seconds 1\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total 2\n"
        );
    }
}
