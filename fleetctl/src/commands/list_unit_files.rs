//! `list-unit-files`: one row per unit in the registry, with the original's fields and
//! defaults (Documentation/compatibility.md, "Tables and help").

use fleet_api::entities::Unit;

use crate::cli::ListUnitFilesArgs;
use crate::context::{Ctx, is_global, unit_file_of};
use crate::exit::Exit;
use crate::output::{
    Format, MachineIps, legend_for, list_layout, or_dash, render_fields_table, render_json,
};

const VALID_FIELDS: &[&str] = &[
    "unit", "global", "dstate", "target", "tmachine", "state", "hash", "desc",
];

/// The cells of one unit for `fields`.
pub fn unit_row(unit: &Unit, fields: &[String], machines: &MachineIps, full: bool) -> Vec<String> {
    let global = is_global(unit);
    fields
        .iter()
        .map(|field| match field.as_str() {
            "unit" => unit.name.clone(),
            "global" => global.to_string(),
            "dstate" => or_dash(&unit.desired_state),
            "state" if global => "-".to_owned(),
            "state" => or_dash(&unit.current_state),
            "target" | "tmachine" if global => "global".to_owned(),
            "target" | "tmachine" if unit.machine_id.is_empty() => "-".to_owned(),
            "target" | "tmachine" => legend_for(&unit.machine_id, machines, full),
            "hash" => {
                let hash = unit_file_of(unit).hash();
                if full { hash.to_string() } else { hash.short() }
            }
            _ => or_dash(unit_file_of(unit).description().unwrap_or_default()),
        })
        .collect()
}

pub async fn run(ctx: &Ctx, args: ListUnitFilesArgs) -> anyhow::Result<Exit> {
    let (format, fields) = match list_layout(&args.list.output, &args.fields, VALID_FIELDS) {
        Ok(layout) => layout,
        Err(error) => {
            ctx.console.err(&error);
            return Ok(Exit::Failure);
        }
    };
    if format == Format::Table && fields.iter().any(|f| f == "tmachine") {
        ctx.console
            .err(r#"WARNING: The "tmachine" field is deprecated. Use "target" instead"#);
    }
    let mut units = match ctx.client.units().await {
        Ok(units) => units,
        Err(error) => {
            ctx.console.err(&format!(
                "Error retrieving list of units from repository: {error}"
            ));
            return Ok(Exit::Failure);
        }
    };
    units.sort_by(|a, b| a.name.cmp(&b.name));
    if format == Format::Json {
        ctx.console.out_raw(&render_json(&units));
        return Ok(Exit::Success);
    }
    let machines = if fields.iter().any(|f| f == "target" || f == "tmachine") {
        ctx.machines().await
    } else {
        Vec::new()
    };
    let ips = MachineIps::new(&machines);
    let rows = units
        .iter()
        .map(|unit| unit_row(unit, &fields, &ips, args.list.full))
        .collect();
    ctx.console
        .out_raw(&render_fields_table(&fields, rows, !args.list.no_legend));
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use fleet_api::entities::{Machine, UnitOption};

    use super::*;

    fn option(section: &str, name: &str, value: &str) -> UnitOption {
        UnitOption {
            section: section.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn rows_match_the_original() {
        let machines = [Machine {
            id: "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2".to_owned(),
            primary_ip: "172.17.8.101".to_owned(),
            ..Machine::default()
        }];
        let hello = Unit {
            name: "hello.service".to_owned(),
            options: vec![option("Service", "ExecStart", "/bin/sleep 100")],
            desired_state: "launched".to_owned(),
            current_state: "launched".to_owned(),
            machine_id: "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2".to_owned(),
            ..Unit::default()
        };
        let global = Unit {
            name: "global.service".to_owned(),
            options: vec![
                option("Unit", "Description", "Everywhere"),
                option("X-Fleet", "Global", "true"),
            ],
            desired_state: "launched".to_owned(),
            current_state: "inactive".to_owned(),
            ..Unit::default()
        };
        let fields: Vec<String> = ["unit", "hash", "dstate", "state", "target"]
            .map(String::from)
            .to_vec();
        let rows = vec![
            unit_row(&global, &fields, &MachineIps::new(&machines), false),
            unit_row(&hello, &fields, &MachineIps::new(&machines), false),
        ];
        let global_hash = unit_file_of(&global).hash().short();
        assert_eq!(
            render_fields_table(&fields, rows, true),
            format!(
                "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\n\
                 global.service\t{global_hash}\tlaunched\t-\t\tglobal\n\
                 hello.service\t1c6fb6f\tlaunched\tlaunched\t113f16a7.../172.17.8.101\n"
            )
        );
        let more: Vec<String> = ["global", "desc", "tmachine"].map(String::from).to_vec();
        assert_eq!(
            unit_row(&hello, &more, &MachineIps::new(&[]), true),
            ["false", "-", "113f16a7e4bd4a9a8d6c3a1d3bb6a4c2"]
        );
        assert_eq!(
            unit_row(&global, &more, &MachineIps::new(&[]), false),
            ["true", "Everywhere", "global"]
        );
    }
}
