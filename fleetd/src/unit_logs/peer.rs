//! Forwarding a logs or status request to the fleetd of the machine that
//! runs the unit, over mutual TLS.
//!
//! This fleetd presents `api_peer_cert_file` and checks the other machine's
//! server certificate against `api_peer_ca_file`; the other machine checks
//! ours against its `api_tls_client_ca_file` and gives our certificate's
//! name the `peer` role in its access file. The user's identity, which this
//! fleetd authorised, travels in a header for the other machine's audit log.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::Event;
use futures_util::stream::{self, Stream};
use tokio::sync::OwnedSemaphorePermit;

use fleet_api::client::{
    Caller, Client, ClientError, ClientTls, Endpoint, LogMessage, LogReader, LogsRequest,
};
use fleet_api::x1::UnitStatus;
use fleet_registry::MachineId;
use fleet_systemd::unit::UnitName;

use super::journal::{error_event, line_event, ping_event};
use super::{LogsConfig, LogsError, Wanted};

/// How long a peer may take to answer (the response head, or a status).
pub const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a forwarded stream waits for the peer's next message (a line
/// or the ping it sends every [`super::journal::PING_INTERVAL`]) before it
/// gives up on the peer.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The API of the machine that runs a unit, with our client certificate.
pub struct Target {
    machine: MachineId,
    url: String,
    client: Client,
}

/// The client TLS files of `api_peer_*`.
pub fn client_tls(cert_file: &str, key_file: &str, ca_file: &str) -> Option<ClientTls> {
    if cert_file.is_empty() {
        return None;
    }
    Some(ClientTls {
        ca_file: Some(PathBuf::from(ca_file)),
        cert_file: Some(PathBuf::from(cert_file)),
        key_file: Some(PathBuf::from(key_file)),
    })
}

fn bad_gateway(message: String) -> LogsError {
    LogsError(StatusCode::BAD_GATEWAY, message)
}

impl Target {
    /// A client for `machine`'s advertised `url`. The certificate files are
    /// read per request, so renewed files are used without a reload.
    ///
    /// # Errors
    /// A 503 without peer TLS, a 502 for an unusable URL or certificate file.
    pub fn new(machine: &MachineId, url: &str, config: &LogsConfig) -> Result<Target, LogsError> {
        let Some(tls) = &config.peer_tls else {
            return Err(LogsError(
                StatusCode::SERVICE_UNAVAILABLE,
                "forwarding needs api_peer_cert_file, api_peer_key_file and api_peer_ca_file"
                    .to_owned(),
            ));
        };
        let endpoint = Endpoint::parse(url).map_err(|error| {
            bad_gateway(format!(
                "machine {machine} advertises an unusable API address {url}: {error}"
            ))
        })?;
        let client = Client::with_tls(endpoint, tls).map_err(|error| {
            LogsError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the peer certificate of this fleetd is unusable: {error}"),
            )
        })?;
        Ok(Target {
            machine: machine.clone(),
            url: url.to_owned(),
            client,
        })
    }

    fn failed(&self, error: &ClientError) -> LogsError {
        bad_gateway(format!(
            "machine {} (at {}) could not answer: {error}",
            self.machine, self.url
        ))
    }

    /// Opens the unit's journal on the peer and relays it.
    ///
    /// # Errors
    /// A 502 (or 504) when the peer cannot be reached or refuses.
    pub async fn logs(
        &self,
        unit: &UnitName,
        wanted: &Wanted,
        identity: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, LogsError> {
        let request = LogsRequest {
            unit: unit.to_string(),
            lines: wanted.lines,
            follow: wanted.follow,
            machine: None,
        };
        let open = self
            .client
            .unit_logs(Caller::PeerOnBehalfOf(identity), &request);
        let reader = tokio::time::timeout(PEER_ANSWER_TIMEOUT, open)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|error| self.failed(&error))?;
        let relay = Relay {
            reader,
            machine: self.machine.clone(),
            _permit: permit,
        };
        Ok(stream::unfold(Some(relay), next_relayed))
    }

    /// `systemctl status` of the unit on the peer.
    ///
    /// # Errors
    /// A 502 (or 504) when the peer cannot be reached or refuses.
    pub async fn status(&self, unit: &UnitName, identity: &str) -> Result<UnitStatus, LogsError> {
        let caller = Caller::PeerOnBehalfOf(identity);
        match self
            .client
            .unit_status(caller, unit.as_str(), None, PEER_ANSWER_TIMEOUT)
            .await
        {
            Ok(status) => Ok(status),
            Err(ClientError::Timeout { .. }) => Err(self.timed_out()),
            Err(error) => Err(self.failed(&error)),
        }
    }

    fn timed_out(&self) -> LogsError {
        LogsError(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "machine {} (at {}) did not answer within {PEER_ANSWER_TIMEOUT:?}",
                self.machine, self.url
            ),
        )
    }
}

/// A forwarded stream between messages.
struct Relay {
    reader: LogReader,
    machine: MachineId,
    _permit: OwnedSemaphorePermit,
}

async fn next_relayed(state: Option<Relay>) -> Option<(Result<Event, Infallible>, Option<Relay>)> {
    let mut relay = state?;
    let next = tokio::time::timeout(PEER_IDLE_TIMEOUT, relay.reader.next()).await;
    let event = match next {
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(LogMessage::Line(line)))) => line_event(&line),
        Ok(Ok(Some(LogMessage::Ping))) => ping_event(),
        Ok(Err(error)) => {
            let message = format!("machine {}: {error}", relay.machine);
            return Some((Ok(error_event(&message)), None));
        }
        Err(_) => {
            let message = format!(
                "machine {} sent nothing for {PEER_IDLE_TIMEOUT:?}; giving up on it",
                relay.machine
            );
            return Some((Ok(error_event(&message)), None));
        }
    };
    Some((Ok(event), Some(relay)))
}
