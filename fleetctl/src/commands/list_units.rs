//! `list-units`: one row per unit state, i.e. per unit and machine, with the original's
//! fields and defaults (Documentation/compatibility.md, "Tables and help").

use fleet_api::entities::UnitState;

use crate::cli::ListUnitsArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{
    Format, MachineIps, legend_for, list_layout, or_dash, render_fields_table, render_json,
};

/// The original's fields, then ours (never in the default columns):
/// `result`, `status`, `exited` and `attempts` describe how a
/// run-to-completion unit's run ended (`-` for every other unit).
const VALID_FIELDS: &[&str] = &[
    "unit", "load", "active", "sub", "machine", "hash", "result", "status", "exited", "attempts",
];

/// The cells of one unit state for `fields`.
pub fn state_row(
    state: &UnitState,
    fields: &[String],
    machines: &MachineIps,
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
            "result" => state.run_result.clone().unwrap_or_else(|| "-".to_owned()),
            "status" => state
                .exit_status
                .map_or_else(|| "-".to_owned(), |status| status.to_string()),
            "exited" => state.exited_at.clone().unwrap_or_else(|| "-".to_owned()),
            "attempts" => state
                .attempts
                .map_or_else(|| "-".to_owned(), |attempts| attempts.to_string()),
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
    let ips = MachineIps::new(&machines);
    let rows = states
        .iter()
        .map(|state| state_row(state, &fields, &ips, args.list.full))
        .collect();
    ctx.console
        .out_raw(&render_fields_table(&fields, rows, !args.list.no_legend));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_api::entities::Machine;

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
            ..UnitState::default()
        };
        let fields: Vec<String> = ["unit", "machine", "active", "sub"]
            .map(String::from)
            .to_vec();
        let rows = vec![state_row(
            &state,
            &fields,
            &MachineIps::new(&machines),
            false,
        )];
        assert_eq!(
            render_fields_table(&fields, rows, true),
            "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
        );
        let all: Vec<String> = ["hash", "load", "machine"].map(String::from).to_vec();
        assert_eq!(
            state_row(&state, &all, &MachineIps::new(&[]), false),
            ["e55c0ae", "loaded", "113f16a7..."]
        );
        assert_eq!(
            state_row(&state, &all, &MachineIps::new(&machines), true),
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
        assert_eq!(
            state_row(&empty, &all, &MachineIps::new(&[]), false),
            ["-", "-", "-"]
        );
        let runs: Vec<String> = ["unit", "active", "result", "status", "exited", "attempts"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            state_row(&state, &runs, &MachineIps::new(&[]), false),
            ["hello.service", "active", "-", "-", "-", "-"]
        );
        let finished = UnitState {
            name: "job.service".to_owned(),
            systemd_active_state: "failed".to_owned(),
            run_result: Some("exit-code".to_owned()),
            exit_status: Some(3),
            exited_at: Some("2026-12-07T02:12:18Z".to_owned()),
            attempts: Some(2),
            ..UnitState::default()
        };
        assert_eq!(
            state_row(&finished, &runs, &MachineIps::new(&[]), false),
            [
                "job.service",
                "failed",
                "exit-code",
                "3",
                "2026-12-07T02:12:18Z",
                "2"
            ]
        );
    }
}
