//! `list-machines`: one row per machine.

use fleet_api::entities::{Machine, MachineCordon};

use crate::cli::ListMachinesArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{
    Format, format_metadata, list_layout, machine_id_legend, or_dash, render_fields_table,
    render_json,
};

const VALID_FIELDS: &[&str] = &["machine", "ip", "metadata", "cordon"];

/// The cells of one machine for `fields`. `cordon` is the field fleetd adds
/// to the machine entity: `cordoned`, `draining`, or `-` for a machine in
/// rotation (and for every machine of a server that does not know cordons).
pub fn machine_row(machine: &Machine, fields: &[String], full: bool) -> Vec<String> {
    fields
        .iter()
        .map(|field| match field.as_str() {
            "machine" => machine_id_legend(&machine.id, full),
            "ip" => or_dash(&machine.primary_ip),
            "cordon" => or_dash(machine.cordon.map_or("", MachineCordon::as_str)),
            _ => format_metadata(&machine.metadata),
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
    let rows = machines
        .iter()
        .map(|machine| machine_row(machine, &fields, args.list.full))
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
                cordon: None,
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

    #[test]
    fn the_cordon_field_shows_the_added_state() {
        let machine = |id: &str, cordon| Machine {
            id: id.to_owned(),
            cordon,
            ..Machine::default()
        };
        let fields: Vec<String> = ["machine", "cordon"].map(String::from).to_vec();
        let rows = [
            machine("aaaaaaaa1", None),
            machine("bbbbbbbb2", Some(MachineCordon::Cordoned)),
            machine("cccccccc3", Some(MachineCordon::Draining)),
        ]
        .iter()
        .map(|m| machine_row(m, &fields, false))
        .collect();
        assert_eq!(
            render_fields_table(&fields, rows, true),
            "MACHINE\t\tCORDON\n\
             aaaaaaaa...\t-\n\
             bbbbbbbb...\tcordoned\n\
             cccccccc...\tdraining\n"
        );
    }
}
