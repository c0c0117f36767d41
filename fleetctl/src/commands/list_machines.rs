//! `list-machines`: one row per machine (spec 7.6).

use fleet_api::entities::Machine;

use crate::cli::ListMachinesArgs;
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{
    Format, format_metadata, list_layout, machine_id_legend, or_dash, render_fields_table,
    render_json,
};

const VALID_FIELDS: &[&str] = &["machine", "ip", "metadata"];

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
