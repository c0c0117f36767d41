//! The suite's output: a table row per scenario for people, a JSON list for machines.

use std::time::Duration;

use serde_json::{Value, json};

use super::run::Row;

/// The header of [`line`]'s table.
pub const HEADER: &str = "SCENARIO          OUTCOME  CONVERGE  MISSING(unit-s)  DOUBLED(unit-s)  RESTARTS  LONGEST-MISSING  LONGEST-DOUBLED";

/// One row of the table.
pub fn line(row: &Row) -> String {
    let converge = row.converge.map_or("-".to_string(), |converge| {
        format!("{:.1}s", converge.as_secs_f64())
    });
    format!(
        "{:<17} {:<8} {:<9} {:<16.1} {:<16.1} {:<9} {:<16} {}",
        row.name,
        outcome(row),
        converge,
        row.missing_unit_seconds,
        row.doubled_unit_seconds,
        row.restarts_untouched,
        seconds(row.longest_missing),
        seconds(row.longest_doubled),
    )
}

/// `"ok"` or `"failed"`.
pub fn outcome(row: &Row) -> &'static str {
    if row.ok { "ok" } else { "failed" }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// The rows as a JSON list of objects.
pub fn json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                json!({
                    "name": row.name,
                    "outcome": outcome(row),
                    "converge_seconds": row.converge.map(|c| c.as_secs_f64()),
                    "missing_unit_seconds": row.missing_unit_seconds,
                    "doubled_unit_seconds": row.doubled_unit_seconds,
                    "longest_missing_seconds": row.longest_missing.as_secs_f64(),
                    "longest_doubled_seconds": row.longest_doubled.as_secs_f64(),
                    "restarts_untouched": row.restarts_untouched,
                    "problems": row.problems,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_name_and_outcome() {
        let row = Row {
            name: "kill-host",
            ok: false,
            converge: None,
            missing_unit_seconds: 1.5,
            doubled_unit_seconds: 0.0,
            longest_missing: Duration::from_secs(2),
            longest_doubled: Duration::ZERO,
            restarts_untouched: 0,
            problems: vec!["x ran nowhere".to_string()],
        };
        let value = json(std::slice::from_ref(&row));
        assert_eq!(value[0]["name"], "kill-host");
        assert_eq!(value[0]["outcome"], "failed");
        assert_eq!(value[0]["converge_seconds"], Value::Null);
        assert!(line(&row).starts_with("kill-host         failed   -"));
    }
}
