//! `fleetctl update`: rolling updates of units that already exist.
//!
//! `fleetctl update FILE...` asks fleetd to replace the content of the units
//! named by each file (a template `web@.service` updates every instance, a
//! global unit every machine) batch by batch; the elected engine drives the
//! rollout (see `Documentation/using-the-client.md`). Without `--no-block`
//! it follows the rollout's history until it ends and exits 0 only when it
//! succeeded (or waits for a canary promotion). `--status [NAME]`, `--pause`,
//! `--resume`, `--abort` and `--promote NAME` act on a rollout by its name.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use fleet_api::rollout::{Action, Phase, Rollout, RolloutRequest, Strategy};
use fleet_systemd::unit::fleetctl_unit_name;

use crate::context::Ctx;
use crate::exit::Exit;
use crate::output;

/// How often a following `update` polls the rollout.
const POLL_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// How many units are updated at once
    #[arg(long = "max-parallel", value_name = "N", default_value_t = 1)]
    pub max_parallel: u32,
    /// How long an updated unit must be active (and healthy) to count, e.g. 10s, 1m30s
    #[arg(long = "min-healthy-time", value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub min_healthy_time: Duration,
    /// How long an updated unit may take to become healthy before its batch fails
    #[arg(long = "healthy-deadline", value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub healthy_deadline: Duration,
    /// Update N units first, then wait for `fleetctl update --promote NAME`
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    /// Send every updated unit back to the old content when a batch fails
    #[arg(
        long = "auto-revert",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = clap::value_parser!(bool)
    )]
    pub auto_revert: bool,
    /// Start the rollout and return without following it
    #[arg(long = "no-block")]
    pub no_block: bool,
    /// Show the rollout NAME (or every rollout)
    #[arg(long, conflicts_with_all = ["pause", "resume", "abort", "promote"])]
    pub status: bool,
    /// Pause the rollout NAME (units updating finish; no new ones start)
    #[arg(long, conflicts_with_all = ["resume", "abort", "promote"])]
    pub pause: bool,
    /// Resume the paused rollout NAME
    #[arg(long, conflicts_with_all = ["abort", "promote"])]
    pub resume: bool,
    /// Abort the rollout NAME: every updated unit goes back to the old content
    #[arg(long, conflicts_with = "promote")]
    pub abort: bool,
    /// Let the rollout NAME continue after its canaries
    #[arg(long)]
    pub promote: bool,
    /// Unit files to roll out, or with --status/--pause/... the rollout's name
    #[arg(value_name = "FILE|NAME")]
    pub args: Vec<String>,
}

/// Parses `10s`, `500ms`, `5m`, `1h`, `1m30s` (Go's duration syntax, without
/// fractions); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (use e.g. 10s, 500ms, 5m, 1m30s)");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total += Duration::from_millis(value.checked_mul(millis).ok_or_else(bad)?);
        rest = &rest[unit_len..];
    }
    if text.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

pub async fn run(ctx: &Ctx, args: UpdateArgs) -> anyhow::Result<Exit> {
    let action = [
        (args.pause, Action::Pause),
        (args.resume, Action::Resume),
        (args.abort, Action::Abort),
        (args.promote, Action::Promote),
    ]
    .into_iter()
    .find_map(|(set, action)| set.then_some(action));
    if args.status {
        return status(ctx, args.args.first().map(String::as_str)).await;
    }
    if let Some(action) = action {
        return act(ctx, action, &args.args).await;
    }
    if args.args.is_empty() {
        ctx.console.err("One unit file must be provided");
        return Ok(Exit::Failure);
    }
    start(ctx, &args).await
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn start(ctx: &Ctx, args: &UpdateArgs) -> anyhow::Result<Exit> {
    let strategy = Strategy {
        max_parallel: args.max_parallel.max(1),
        min_healthy_time_ms: millis(args.min_healthy_time),
        healthy_deadline_ms: millis(args.healthy_deadline),
        canary: args.canary,
        auto_revert: args.auto_revert,
    };
    let mut names = Vec::new();
    for file in &args.args {
        let path = Path::new(file);
        let Some(base) = path.file_name().and_then(|name| name.to_str()) else {
            ctx.console.err(&format!("Invalid unit file path {file}"));
            return Ok(Exit::Failure);
        };
        let name = fleetctl_unit_name(base);
        let unit_file = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                ctx.console
                    .err(&format!("Unable to read unit file {file}: {error}"));
                return Ok(Exit::Failure);
            }
        };
        let request = RolloutRequest {
            name: name.clone(),
            unit_file,
            strategy: strategy.clone(),
            restart: false,
        };
        match ctx.client.start_rollout(&request).await {
            Ok(rollout) => {
                ctx.console.out(&format!(
                    "Rolling out {name} to {} unit(s)",
                    rollout.spec.units.len()
                ));
                names.push(name);
            }
            Err(error) => {
                ctx.console
                    .err(&format!("Unable to start the rollout of {name}: {error}"));
                return Ok(Exit::Failure);
            }
        }
    }
    if args.no_block {
        return Ok(Exit::Success);
    }
    let mut exit = Exit::Success;
    for name in names {
        if follow(ctx, &name).await? != Exit::Success {
            exit = Exit::Failure;
        }
    }
    Ok(exit)
}

/// Prints the rollout's history as it grows until it ends (or waits for a
/// promotion, or holds after a failure).
pub(crate) async fn follow(ctx: &Ctx, name: &str) -> anyhow::Result<Exit> {
    let mut printed = 0;
    loop {
        let Some(rollout) = ctx.client.rollout(name).await? else {
            ctx.console.err(&format!("The rollout of {name} is gone"));
            return Ok(Exit::Failure);
        };
        if let Some(progress) = rollout
            .progress
            .as_ref()
            .filter(|progress| progress.id == rollout.spec.id)
        {
            for event in progress.history.iter().skip(printed) {
                ctx.console.out(&format!("{name}: {}", event.message));
            }
            printed = progress.history.len();
            match progress.phase {
                Phase::Succeeded | Phase::AwaitingPromotion => return Ok(Exit::Success),
                Phase::Reverted | Phase::Aborted | Phase::Failed => return Ok(Exit::Failure),
                Phase::Running | Phase::Paused => {}
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn act(ctx: &Ctx, action: Action, args: &[String]) -> anyhow::Result<Exit> {
    let [name] = args else {
        ctx.console
            .err("One rollout name must be provided (the unit or template name)");
        return Ok(Exit::Failure);
    };
    let name = fleetctl_unit_name(name);
    match ctx.client.rollout_action(&name, action).await {
        Ok(_) => {
            let verb = match action {
                Action::Pause => "Paused",
                Action::Resume => "Resumed",
                Action::Abort => "Aborted",
                Action::Promote => "Promoted",
            };
            ctx.console.out(&format!("{verb} the rollout of {name}"));
            Ok(Exit::Success)
        }
        Err(error) => {
            ctx.console
                .err(&format!("Unable to change the rollout of {name}: {error}"));
            Ok(Exit::Failure)
        }
    }
}

async fn status(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Exit> {
    let Some(name) = name else {
        let rollouts = ctx.client.rollouts().await?;
        let mut rows = vec![vec![
            "ROLLOUT".to_owned(),
            "PHASE".to_owned(),
            "UPDATED".to_owned(),
        ]];
        rows.extend(rollouts.iter().map(summary_row));
        ctx.console.out_raw(&output::render_table(&rows));
        return Ok(Exit::Success);
    };
    let name = fleetctl_unit_name(name);
    let Some(rollout) = ctx.client.rollout(&name).await? else {
        ctx.console.err(&format!("No rollout of {name}"));
        return Ok(Exit::Failure);
    };
    let row = summary_row(&rollout);
    ctx.console
        .out(&format!("Rollout {name}: {} ({} updated)", row[1], row[2]));
    if let Some(progress) = rollout.progress.filter(|p| p.id == rollout.spec.id) {
        let mut rows = vec![vec![
            "UNIT".to_owned(),
            "MACHINE".to_owned(),
            "STATE".to_owned(),
            "REASON".to_owned(),
        ]];
        rows.extend(progress.targets.iter().map(|target| {
            vec![
                target.unit.clone(),
                output::short_id(&target.machine).to_owned(),
                target.phase.as_str().to_owned(),
                output::or_dash(target.reason.as_deref().unwrap_or("")),
            ]
        }));
        ctx.console.out_raw(&output::render_table(&rows));
        ctx.console.out("History:");
        for event in &progress.history {
            ctx.console.out(&format!("  {}", event.message));
        }
    }
    Ok(Exit::Success)
}

fn summary_row(rollout: &Rollout) -> Vec<String> {
    let (healthy, total) = rollout
        .progress
        .as_ref()
        .filter(|progress| progress.id == rollout.spec.id)
        .map_or((0, 0), |progress| {
            let healthy = progress
                .targets
                .iter()
                .filter(|t| t.phase == fleet_api::rollout::TargetPhase::Healthy)
                .count();
            (healthy, progress.targets.len())
        });
    vec![
        rollout.spec.name.clone(),
        rollout.phase_name().to_owned(),
        format!("{healthy}/{total}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
