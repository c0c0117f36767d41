//! `logs`: a unit's journal through the fleet API, without SSH.
//!
//! The fleetd at `--endpoint` reads the journal on the unit's machine
//! (forwarding to that machine's fleetd when it is another one) and streams
//! the lines; we print each as it comes. Unlike `journal`, nothing runs over
//! SSH, so it works where only the API is reachable.

use fleet_api::client::{Caller, LogMessage, LogsRequest};
use fleet_systemd::unit::fleetctl_unit_name;

use crate::cli::LogsArgs;
use crate::context::Ctx;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<Exit> {
    if args.lines > fleet_api::x1::MAX_LOG_LINES {
        ctx.console.err(&format!(
            "Invalid -n {}: at most {} lines.",
            args.lines,
            fleet_api::x1::MAX_LOG_LINES
        ));
        return Ok(Exit::Failure);
    }
    let request = LogsRequest {
        unit: fleetctl_unit_name(&args.unit),
        lines: args.lines,
        follow: args.follow,
        machine: args.machine,
    };
    let mut reader = match ctx.client.unit_logs(Caller::User, &request).await {
        Ok(reader) => reader,
        Err(error) => {
            ctx.console.err(&format!(
                "Error reading the journal of {}: {error}",
                request.unit
            ));
            return Ok(Exit::Failure);
        }
    };
    loop {
        match reader.next().await {
            Ok(Some(LogMessage::Line(line))) => ctx.console.out(&line),
            Ok(Some(LogMessage::Ping)) => {}
            Ok(None) => return Ok(Exit::Success),
            Err(error) => {
                ctx.console.err(&format!(
                    "Error reading the journal of {}: {error}",
                    request.unit
                ));
                return Ok(Exit::Failure);
            }
        }
    }
}
