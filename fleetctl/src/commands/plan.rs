//! `plan` and `why`: what the scheduler would do, and why, changing nothing.
//!
//! Both ask fleetd (`/fleet/x1/plan`, `/fleet/x1/why/<unit>`), which runs the
//! engine's scheduler over a fresh snapshot: the answer names, for each
//! machine, the rule that excludes it (`conflicts with a.service`,
//! `MachineID=…`, `machine is cordoned`, …).

use fleet_api::x1::{Explanation, PlanRequest};

use crate::cli::{PlanArgs, WhyArgs};
use crate::context::Ctx;
use crate::exit::Exit;
use crate::output::{machine_id_legend, render_table};
use crate::units::planned_unit;

/// The lines of one explanation: a summary, then one row per machine.
pub fn render(explanation: &Explanation) -> String {
    let mut text = format!("{}: {}\n", explanation.name, explanation.summary);
    let rows: Vec<Vec<String>> = explanation
        .machines
        .iter()
        .map(|verdict| {
            let mark = if verdict.chosen {
                "*"
            } else if verdict.fits {
                "+"
            } else {
                "-"
            };
            vec![
                format!("  {mark} {}", machine_id_legend(&verdict.machine, false)),
                verdict.reason.clone(),
            ]
        })
        .collect();
    text.push_str(&render_table(&rows));
    text
}

pub async fn run_plan(ctx: &Ctx, args: PlanArgs) -> anyhow::Result<Exit> {
    Ok(plan_units(ctx, &args.units, true).await)
}

/// `start --dry-run` and `load --dry-run`: what `plan` prints for these
/// units, writing nothing. A unit already submitted is explained as `why`
/// does (its record, not the local file), unless `replace` says the file
/// would replace it.
pub async fn dry_run(ctx: &Ctx, units: &[String], replace: bool) -> Exit {
    plan_units(ctx, units, replace).await
}

/// Explains every unit argument (in argument order, each name once) and
/// prints the explanations; fails when one cannot be placed. `from_files`:
/// plan every unit from its file even when the cluster has it.
async fn plan_units(ctx: &Ctx, args: &[String], from_files: bool) -> Exit {
    let mut names: Vec<String> = Vec::new();
    let mut request = PlanRequest::default();
    let mut submitted = Vec::new();
    for arg in args {
        let name = fleet_systemd::unit::fleetctl_unit_name(arg);
        if names.contains(&name) {
            continue;
        }
        names.push(name.clone());
        match submitted_explanation(ctx, &name, from_files).await {
            Ok(Some(explanation)) => {
                submitted.push(explanation);
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                ctx.console
                    .err(&format!("Error asking fleet about {name}: {error}"));
                return Exit::Failure;
            }
        }
        match planned_unit(ctx, arg).await {
            Ok(unit) => request.units.push(unit),
            Err(error) => {
                ctx.console
                    .err(&format!("Error planning unit {arg}: {error}"));
                return Exit::Failure;
            }
        }
    }
    let mut planned = Vec::new();
    if !request.units.is_empty() {
        match ctx.client.plan(&request).await {
            Ok(plan) => planned = plan.units,
            Err(error) => {
                ctx.console
                    .err(&format!("Error asking fleet for a plan: {error}"));
                return Exit::Failure;
            }
        }
    }
    let mut exit = Exit::Success;
    for name in &names {
        let found = submitted
            .iter()
            .chain(&planned)
            .find(|explanation| &explanation.name == name);
        let Some(explanation) = found else { continue };
        ctx.console.out_raw(&render(explanation));
        if explanation.placed_on.is_empty() {
            exit = Exit::Failure;
        }
    }
    exit
}

/// `why` of a unit the cluster already has; `None` when it has not (or when
/// the unit is to be planned from its file anyway).
async fn submitted_explanation(
    ctx: &Ctx,
    name: &str,
    from_files: bool,
) -> Result<Option<Explanation>, fleet_api::client::ClientError> {
    if from_files {
        return Ok(None);
    }
    match ctx.client.why(name).await {
        Ok(explanation) => Ok(Some(explanation)),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error),
    }
}

pub async fn run_why(ctx: &Ctx, args: WhyArgs) -> anyhow::Result<Exit> {
    let name = fleet_systemd::unit::fleetctl_unit_name(&args.unit);
    match ctx.client.why(&name).await {
        Ok(explanation) => {
            ctx.console.out_raw(&render(&explanation));
            Ok(Exit::Success)
        }
        Err(error) if error.is_not_found() => {
            ctx.console.err(&format!("Unit {name} does not exist"));
            Ok(Exit::Failure)
        }
        Err(error) => {
            ctx.console
                .err(&format!("Error asking fleet about {name}: {error}"));
            Ok(Exit::Failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_api::x1::MachineVerdict;

    #[test]
    fn an_explanation_marks_the_chosen_and_the_excluded_machines() {
        let verdict = |machine: &str, chosen, fits, reason: &str| MachineVerdict {
            machine: machine.to_owned(),
            chosen,
            fits,
            reason: reason.to_owned(),
        };
        let explanation = Explanation {
            name: "x.service".to_owned(),
            placed_on: vec!["m3".to_owned()],
            summary: "would be placed on m3: least-loaded machine that fits".to_owned(),
            machines: vec![
                verdict(
                    "113f16a7e4bd4a9a",
                    false,
                    false,
                    "conflicts with other.service",
                ),
                verdict("m2", false, true, "fits"),
                verdict("m3", true, true, "placed here"),
            ],
        };
        assert_eq!(
            render(&explanation),
            "x.service: would be placed on m3: least-loaded machine that fits\n\
             \x20 - 113f16a7...\tconflicts with other.service\n\
             \x20 + m2...\tfits\n\
             \x20 * m3...\tplaced here\n"
        );
    }
}
