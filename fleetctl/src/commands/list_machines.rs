//! `list-machines`: one row per machine.

use std::collections::BTreeMap;

use fleet_api::entities::Machine;

use crate::cli::ListMachinesArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{
    Format, format_metadata, list_layout, machine_id_legend, or_dash, render_fields_table,
    render_json,
};

const VALID_FIELDS: &[&str] = &["machine", "ip", "metadata", "cordon"];

/// The cells of one machine for `fields`.
pub fn machine_row(machine: &Machine, fields: &[String], full: bool) -> Vec<String> {
    fields
        .iter()
        .map(|field| match field.as_str() {
            "machine" => machine_id_legend(&machine.id, full),
            "ip" => or_dash(&machine.primary_ip),
            _ => format_metadata(&machine.metadata),
        })
        .collect()
}

/// `cordoned` or `draining` by machine id (the `cordon` field). A fleetd
/// without the operations API has no cordons: its machines show `-`.
async fn cordon_states(ctx: &Ctx) -> BTreeMap<String, String> {
    let Ok(list) = ctx.client.cordons().await else {
        return BTreeMap::new();
    };
    list.cordons
        .into_iter()
        .map(|cordon| {
            let state = if cordon.draining {
                "draining"
            } else {
                "cordoned"
            };
            (cordon.machine, state.to_owned())
        })
        .collect()
}

pub async fn run(ctx: &Ctx, args: ListMachinesArgs) -> anyhow::Result<Exit> {
    let (format, fields) = match list_layout(&args.list.output, &args.fields, VALID_FIELDS) {
        Ok(layout) => layout,
        Err(error) => {
            ctx.console.err(&error);
            return Ok(Exit::Failure);
        }
    };
    let machines = match ctx.client.machines().await {
        Ok(machines) => machines,
        Err(error) => {
            ctx.console.err(&format!(
                "Error retrieving list of active machines from fleet API ({error})"
            ));
            ctx.console.err("Possible issues:");
            ctx.console.err("  etcd is unhealthy and/or lost quorum");
            ctx.console
                .err("  connection cannot be established to any etcd servers");
            return Ok(Exit::Failure);
        }
    };
    if format == Format::Json {
        ctx.console.out_raw(&render_json(&machines));
        return Ok(Exit::Success);
    }
    let cordons = if fields.iter().any(|field| field == "cordon") {
        cordon_states(ctx).await
    } else {
        BTreeMap::new()
    };
    let rows = machines
        .iter()
        .map(|machine| {
            let mut row = machine_row(machine, &fields, args.list.full);
            for (cell, field) in row.iter_mut().zip(&fields) {
                if field == "cordon" {
                    *cell = or_dash(cordons.get(&machine.id).map_or("", String::as_str));
                }
            }
            row
        })
        .collect();
    ctx.console
        .out_raw(&render_fields_table(&fields, rows, !args.list.no_legend));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render_fields_table;

    #[test]
    fn rows_match_the_original() {
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("region".to_owned(), "us-west".to_owned());
        metadata.insert("hostname".to_owned(), "smoke0".to_owned());
        let machines = [
            Machine {
                id: "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2".to_owned(),
                primary_ip: "172.17.8.101".to_owned(),
                metadata,
            },
            Machine {
                id: "9e4f0a2b11112222333344445555aaaa".to_owned(),
                ..Machine::default()
            },
        ];
        let fields: Vec<String> = ["machine", "ip", "metadata"].map(String::from).to_vec();
        let rows = machines
            .iter()
            .map(|m| machine_row(m, &fields, false))
            .collect();
        assert_eq!(
            render_fields_table(&fields, rows, true),
            "MACHINE\t\tIP\t\tMETADATA\n\
             113f16a7...\t172.17.8.101\thostname=smoke0,region=us-west\n\
             9e4f0a2b...\t-\t\t-\n"
        );
        assert_eq!(
            machine_row(&machines[1], &fields, true)[0],
            "9e4f0a2b11112222333344445555aaaa"
        );
    }
}
