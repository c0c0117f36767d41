//! The client of a unit's logs and status through the API
//! (`/fleet/x1/units/<unit>/logs` and `/status`, see [`crate::x1`]).
//!
//! `fleetctl logs` and `status --api` use the user-facing paths; a fleetd
//! that forwards a request to the machine running the unit uses the `peer`
//! ones, which that machine answers itself and never forwards again.

use std::time::Duration;

use http::Method;

use super::{Client, ClientError, EventReader, escape_path_segment, escape_query_value};
use crate::x1::{LOG_ERROR_EVENT, LOG_LINE_EVENT, LOG_PING_EVENT, UnitStatus};

/// The header a forwarding fleetd sends with the identity it authorised, so
/// the machine that reads the journal can log on whose behalf it did.
pub const ON_BEHALF_OF_HEADER: &str = "x-fleet-on-behalf-of";

/// What to read of a unit's journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsRequest {
    pub unit: String,
    /// The last `lines` lines (`journalctl -n`).
    pub lines: u32,
    /// Keep the stream open and send new lines (`journalctl -f`).
    pub follow: bool,
    /// For a unit on several machines (global units): which one.
    pub machine: Option<String>,
}

/// Whose request a peer call carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A user asks a fleetd (`fleetctl`, the dashboard).
    User,
    /// A fleetd forwards the request of this identity to the unit's machine.
    PeerOnBehalfOf(&'a str),
}

/// One message of a log stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogMessage {
    /// A journal line, as `journalctl -o short-iso` prints it.
    Line(String),
    /// The journal is quiet; the stream is alive.
    Ping,
}

/// An open log stream.
#[derive(Debug)]
pub struct LogReader {
    events: EventReader,
}

impl LogReader {
    /// The next message; `Ok(None)` when the stream ended (all lines sent).
    ///
    /// # Errors
    /// [`ClientError::Transport`] when the connection breaks;
    /// [`ClientError::Api`] with code 502 when the server ended the stream
    /// with an error (e.g. the machine running the unit went away).
    pub async fn next(&mut self) -> Result<Option<LogMessage>, ClientError> {
        loop {
            let Some(message) = self.events.next().await? else {
                return Ok(None);
            };
            match message.event.as_str() {
                LOG_LINE_EVENT => return Ok(Some(LogMessage::Line(message.data))),
                LOG_PING_EVENT => return Ok(Some(LogMessage::Ping)),
                LOG_ERROR_EVENT => {
                    return Err(ClientError::Api {
                        code: 502,
                        message: message.data,
                    });
                }
                _ => {} // Unknown events are for newer clients.
            }
        }
    }
}

impl Client {
    fn unit_path(&self, caller: Caller<'_>, unit: &str, what: &str) -> String {
        let peer = match caller {
            Caller::User => "",
            Caller::PeerOnBehalfOf(_) => "peer/",
        };
        format!(
            "{}{peer}units/{}/{what}",
            self.x1_base(),
            escape_path_segment(unit)
        )
    }

    /// Opens the journal of `request.unit` on the machine that runs it. No
    /// timeout once open: a followed stream lasts as long as the caller reads.
    ///
    /// # Errors
    /// Transport failures, or the API's error answer (404 for a unit that
    /// runs nowhere, 503 when forwarding is not configured, ...).
    pub async fn unit_logs(
        &self,
        caller: Caller<'_>,
        request: &LogsRequest,
    ) -> Result<LogReader, ClientError> {
        let mut uri = format!(
            "{}?lines={}&follow={}",
            self.unit_path(caller, &request.unit, "logs"),
            request.lines,
            request.follow
        );
        if let Some(machine) = &request.machine {
            uri.push_str(&format!("&machine={}", escape_query_value(machine)));
        }
        let headers = on_behalf_of(caller);
        let events = self.open_sse(&uri, &headers).await?;
        Ok(LogReader { events })
    }

    /// `systemctl status` of `unit` on the machine that runs it.
    ///
    /// # Errors
    /// Transport failures, or the API's error answer.
    pub async fn unit_status(
        &self,
        caller: Caller<'_>,
        unit: &str,
        machine: Option<&str>,
        timeout: Duration,
    ) -> Result<UnitStatus, ClientError> {
        let path = self.unit_path(caller, unit, "status");
        let (base, rest) = path.split_at(self.x1_base().len());
        let mut query = Vec::new();
        if let Some(machine) = machine {
            query.push(("machine", machine));
        }
        let headers = on_behalf_of(caller);
        let exchange = self.request_with_headers(base, Method::GET, rest, query, &headers);
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    endpoint: self.endpoint.url().to_owned(),
                    timeout,
                })
            })?;
        serde_json::from_slice(&body).map_err(|error| ClientError::Decode {
            endpoint: self.endpoint.url().to_owned(),
            detail: error.to_string(),
        })
    }
}

fn on_behalf_of(caller: Caller<'_>) -> Vec<(&'static str, String)> {
    match caller {
        Caller::User => Vec::new(),
        // Header values cannot carry control characters; identities are
        // certificate names and token names, so this only guards.
        Caller::PeerOnBehalfOf(identity) => vec![(
            ON_BEHALF_OF_HEADER,
            identity.chars().filter(|c| !c.is_control()).collect(),
        )],
    }
}
