//! `list-units`: one row per unit state, i.e. per unit and machine, with the original's
//! fields and defaults (Documentation/compatibility.md, "Tables and help").

use fleet_api::entities::{Machine, UnitState};

use crate::cli::ListUnitsArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{Format, legend_for, list_layout, or_dash, render_fields_table, render_json};

const VALID_FIELDS: &[&str] = &["unit", "load", "active", "sub", "machine", "hash"];

/// The cells of one unit state for `fields`.
pub fn state_row(
    state: &UnitState,
    fields: &[String],
    machines: &[Machine],
    full: bool,
) -> Vec<String> {
    fields
        .iter()
        .map(|field| match field.as_str() {
            "unit" => or_dash(&state.name),
            "load" => or_dash(&state.systemd_load_state),
            "active" => or_dash(&state.systemd_active_state),
            "sub" => or_dash(&state.systemd_sub_state),
            "machine" if state.machine_id.is_empty() => "-".to_owned(),
            "machine" => legend_for(&state.machine_id, machines, full),
            _ if state.hash.is_empty() => "-".to_owned(),
            _ if full => state.hash.clone(),
            _ => state.hash.chars().take(7).collect(),
        })
        .collect()
}

pub async fn run(ctx: &Ctx, args: ListUnitsArgs) -> anyhow::Result<Exit> {
    let (format, fields) = match list_layout(&args.list.output, &args.fields, VALID_FIELDS) {
        Ok(layout) => layout,
        Err(error) => {
            ctx.console.err(&error);
            return Ok(Exit::Failure);
        }
    };
    let mut states = match ctx.client.unit_states(None, None).await {
        Ok(states) => states,
        Err(error) => {
            ctx.console.err(&format!(
                "Error retrieving list of units from repository: {error}"
            ));
            return Ok(Exit::Failure);
        }
    };
    // The API sorts already; sorting here keeps the promise with any server.
    states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    if format == Format::Json {
        ctx.console.out_raw(&render_json(&states));
        return Ok(Exit::Success);
    }
    let machines = if fields.iter().any(|f| f == "machine") {
        ctx.machines().await
    } else {
        Vec::new()
    };
    let rows = states
        .iter()
        .map(|state| state_row(state, &fields, &machines, args.list.full))
        .collect();
    ctx.console
        .out_raw(&render_fields_table(&fields, rows, !args.list.no_legend));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_original() {
        let machines = [Machine {
            id: "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2".to_owned(),
            primary_ip: "172.17.8.103".to_owned(),
            ..Machine::default()
        }];
        let state = UnitState {
            name: "hello.service".to_owned(),
            hash: "e55c0aeb44ba0b68004ceb8a200e685194448b45".to_owned(),
            machine_id: "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2".to_owned(),
            systemd_load_state: "loaded".to_owned(),
            systemd_active_state: "active".to_owned(),
            systemd_sub_state: "running".to_owned(),
        };
        let fields: Vec<String> = ["unit", "machine", "active", "sub"]
            .map(String::from)
            .to_vec();
        let rows = vec![state_row(&state, &fields, &machines, false)];
        assert_eq!(
            render_fields_table(&fields, rows, true),
            "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
        );
        let all: Vec<String> = ["hash", "load", "machine"].map(String::from).to_vec();
        assert_eq!(
            state_row(&state, &all, &[], false),
            ["e55c0ae", "loaded", "113f16a7..."]
        );
        assert_eq!(
            state_row(&state, &all, &machines, true),
            [
                "e55c0aeb44ba0b68004ceb8a200e685194448b45",
                "loaded",
                "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2/172.17.8.103"
            ]
        );
        let empty = UnitState {
            name: "x.service".to_owned(),
            ..UnitState::default()
        };
        assert_eq!(state_row(&empty, &all, &[], false), ["-", "-", "-"]);
    }
}
