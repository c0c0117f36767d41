//! `events`: what changes in the cluster, from `GET /fleet/v1/events`.
//!
//! Without `-f` the server sends the history up to now (the recent history,
//! or everything after `--since`) and ends the stream. With `-f` the stream
//! stays open; when the connection breaks we reconnect from the last event
//! id we printed, so no event is lost (a revision printed in part may be
//! printed again from its start).

use fleet_api::client::SseMessage;
use fleet_api::events::{EventEntity, EventError};

use crate::cli::EventsArgs;
use crate::commands::Ctx;
use crate::exit::Exit;

/// How many times in a row a broken `-f` stream is reopened.
const MAX_RECONNECTS: u32 = 10;
/// The pause before reopening a broken stream.
const RECONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(ctx: &Ctx, args: EventsArgs) -> anyhow::Result<Exit> {
    let json = match args.output.as_str() {
        "text" => false,
        "json" => true,
        other => {
            ctx.console.err(&format!(
                "Invalid output format {other:?}: use text or json."
            ));
            return Ok(Exit::Failure);
        }
    };
    let mut since = args.since;
    let mut failures = 0;
    loop {
        let since_text = since.map(|s| s.to_string());
        let mut query: Vec<(&str, &str)> = Vec::new();
        if !args.follow {
            query.push(("follow", "false"));
        }
        if let Some(unit) = &args.unit {
            query.push(("unit", unit));
        }
        if let Some(machine) = &args.machine {
            query.push(("machine", machine));
        }
        if let Some(since) = &since_text {
            query.push(("since", since));
        }
        let broken = match ctx.client.events(&query).await {
            Err(error) if failures == 0 || error.status().is_some() => {
                ctx.console.err(&format!("Error reading events: {error}"));
                return Ok(Exit::Failure);
            }
            Err(error) => error.to_string(),
            Ok(mut reader) => loop {
                match reader.next().await {
                    Ok(Some(message)) => {
                        failures = 0;
                        if let Some(exit) = print(ctx, &message, json) {
                            return Ok(exit);
                        }
                        if let Some(id) = message.id.and_then(|id| id.parse().ok()) {
                            since = Some(id);
                        }
                    }
                    Ok(None) if !args.follow => return Ok(Exit::Success),
                    Ok(None) => break "the server ended the stream".to_owned(),
                    Err(error) => break error.to_string(),
                }
            },
        };
        failures += 1;
        if !args.follow || failures > MAX_RECONNECTS {
            ctx.console.err(&format!("Error reading events: {broken}"));
            return Ok(Exit::Failure);
        }
        ctx.console
            .err(&format!("Event stream broke ({broken}); reconnecting."));
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Prints one message; `Some(exit)` when the stream reported an error.
fn print(ctx: &Ctx, message: &SseMessage, json: bool) -> Option<Exit> {
    if message.event == "error" {
        let text = serde_json::from_str::<EventError>(&message.data)
            .map_or_else(|_| message.data.clone(), |error| error.message);
        ctx.console.err(&format!("Error reading events: {text}"));
        return Some(Exit::Failure);
    }
    if json {
        ctx.console.out(&message.data);
        return None;
    }
    match serde_json::from_str::<EventEntity>(&message.data) {
        Ok(event) => ctx.console.out(&text_line(&event)),
        Err(_) => ctx.console.out(&message.data),
    }
    None
}

/// `REVISION TYPE UNIT MACHINE DETAIL`, tab-separated, `-` for absent fields.
fn text_line(event: &EventEntity) -> String {
    let detail = match (&event.active_state, &event.target_state) {
        (Some(active), _) => format!(
            "{}/{}/{}",
            event.load_state.as_deref().unwrap_or("-"),
            active,
            event.sub_state.as_deref().unwrap_or("-")
        ),
        (None, Some(target)) => match &event.previous_target_state {
            Some(from) => format!("{from} -> {target}"),
            None => target.clone(),
        },
        (None, None) => event.public_ip.clone().unwrap_or_else(|| "-".to_owned()),
    };
    // Placements say why: `launched: machine m1 was lost`.
    let detail = match &event.reason {
        Some(reason) if detail == "-" => reason.clone(),
        Some(reason) => format!("{detail}: {reason}"),
        None => detail,
    };
    [
        event.revision.to_string(),
        event.kind.clone(),
        event.unit.clone().unwrap_or_else(|| "-".to_owned()),
        event.machine.clone().unwrap_or_else(|| "-".to_owned()),
        detail,
    ]
    .join("\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_show_the_fields_of_each_kind() {
        let state = EventEntity {
            revision: 9,
            kind: "unit.state-changed".to_owned(),
            unit: Some("a.service".to_owned()),
            machine: Some("m1".to_owned()),
            load_state: Some("loaded".to_owned()),
            active_state: Some("active".to_owned()),
            sub_state: Some("running".to_owned()),
            ..EventEntity::default()
        };
        assert_eq!(
            text_line(&state),
            "9\tunit.state-changed\ta.service\tm1\tloaded/active/running"
        );
        let target = EventEntity {
            revision: 10,
            kind: "unit.target-changed".to_owned(),
            unit: Some("a.service".to_owned()),
            target_state: Some("launched".to_owned()),
            previous_target_state: Some("loaded".to_owned()),
            ..EventEntity::default()
        };
        assert_eq!(
            text_line(&target),
            "10\tunit.target-changed\ta.service\t-\tloaded -> launched"
        );
        let placed = EventEntity {
            revision: 11,
            kind: "unit.placed".to_owned(),
            unit: Some("a.service".to_owned()),
            machine: Some("m2".to_owned()),
            target_state: Some("launched".to_owned()),
            reason: Some("machine m1 was lost".to_owned()),
            ..EventEntity::default()
        };
        assert_eq!(
            text_line(&placed),
            "11\tunit.placed\ta.service\tm2\tlaunched: machine m1 was lost"
        );
        let unplaced = EventEntity {
            revision: 11,
            kind: "unit.unplaced".to_owned(),
            unit: Some("a.service".to_owned()),
            machine: Some("m1".to_owned()),
            reason: Some("machine m1 was lost".to_owned()),
            ..EventEntity::default()
        };
        assert_eq!(
            text_line(&unplaced),
            "11\tunit.unplaced\ta.service\tm1\tmachine m1 was lost"
        );
    }
}
