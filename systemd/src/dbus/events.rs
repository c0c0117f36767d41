//! systemd's signals as a stream of typed [`Event`]s.
//!
//! Four bus match rules feed one stream: three of the Manager's signals
//! (`JobRemoved`, `Reloading`, `UnitRemoved`) and `PropertiesChanged` of the
//! `Unit` interface on every unit object. The match rules are added before
//! `Subscribe()` is called, so no signal emitted after
//! [`crate::dbus::Manager::subscribe`] returns is lost.
//! Decoding happens on a task that never stops reading (see [`Events`]).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;
use zbus::MessageStream;

use super::{DbusError, Job};

/// Where systemd puts its unit objects; the rest of the path is the escaped unit name.
pub(crate) const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// One thing systemd told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A job finished. `result` is systemd's word: `done`, `canceled`,
    /// `timeout`, `failed`, `dependency`, `skipped`.
    JobRemoved {
        id: u32,
        job: String,
        unit: String,
        result: String,
    },
    /// Properties of the unit `unit` changed (its `Unit` interface's: the
    /// load, active and sub states live there). The signal's values are not
    /// read: they carry only what changed, so a reader asks systemd for the
    /// states anyway (`ListUnitsByNames`, many units a call), and decoding
    /// every property of every signal was the largest part of fleetd's own
    /// CPU while it only listened (Documentation/performance.md, "Round six").
    UnitChanged { unit: String },
    /// systemd started (`true`) or finished (`false`) a daemon-reload: any
    /// unit may have changed.
    Reloading { active: bool },
    /// A unit object was removed from memory (it may be re-loaded later).
    UnitRemoved { unit: String },
}

impl Event {
    /// The unit this event is about, if it is about one.
    pub fn unit(&self) -> Option<&str> {
        match self {
            Event::JobRemoved { unit, .. }
            | Event::UnitChanged { unit, .. }
            | Event::UnitRemoved { unit } => Some(unit),
            Event::Reloading { .. } => None,
        }
    }
}

/// The result of a finished job (from its `JobRemoved`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    pub unit: String,
    /// `done` on success; see [`Event::JobRemoved`].
    pub result: String,
}

impl JobOutcome {
    pub fn is_done(&self) -> bool {
        self.result == "done"
    }
}

/// The stream of systemd's signals on one connection; ends when it closes.
///
/// A task owned by this value (aborted on drop) drains the connection's
/// signal queues at all times and decodes what it reads: zbus stops reading
/// the socket, method replies included, while any of its queues is full, so
/// a burst of signals (a daemon-reload emits one per unit) must never wait
/// for the consumer. Decoded events queue here without bound until read.
pub struct Events {
    receiver: mpsc::UnboundedReceiver<Event>,
    pump: tokio::task::JoinHandle<()>,
    address: String,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Events {
    pub(crate) fn new(streams: Vec<MessageStream>, address: String) -> Events {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut messages = futures_util::stream::select_all(streams);
        let pump_address = address.clone();
        let pump = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(message) => {
                        if let Some(event) = decode(&message)
                            && sender.send(event).is_err()
                        {
                            return; // nobody listens any more
                        }
                    }
                    // One unreadable message; the stream goes on.
                    Err(error) => {
                        debug!(address = %pump_address, %error, "Skipping an unreadable D-Bus signal.")
                    }
                }
            }
            debug!(address = %pump_address, "The D-Bus signal stream ended.");
        });
        Events {
            receiver,
            pump,
            address,
        }
    }

    /// The next event; `Err(EventsClosed)` once the connection is gone.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Event, DbusError> {
        match self.receiver.recv().await {
            Some(event) => Ok(event),
            None => Err(DbusError::EventsClosed {
                address: self.address.clone(),
            }),
        }
    }

    /// Waits for the `JobRemoved` of `job` (at most `timeout`), dropping the
    /// other events. Subscribe before starting the job so it cannot be missed.
    pub async fn wait_for_job(
        &mut self,
        job: &Job,
        timeout: Duration,
    ) -> Result<JobOutcome, DbusError> {
        let wait = async {
            loop {
                if let Event::JobRemoved {
                    job: path,
                    unit,
                    result,
                    ..
                } = self.next().await?
                    && path == job.path
                {
                    return Ok(JobOutcome { unit, result });
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(outcome) => outcome,
            Err(_) => Err(DbusError::JobTimeout {
                job: job.path.clone(),
                unit: job.unit.clone(),
                after: timeout,
            }),
        }
    }
}

/// Decodes one signal; `None` for the signals we do not care about or cannot read.
fn decode(message: &zbus::Message) -> Option<Event> {
    let header = message.header();
    let member = header.member()?.as_str().to_owned();
    let path = header.path()?.as_str().to_owned();
    let body = message.body();
    match member.as_str() {
        "JobRemoved" => {
            let (id, job, unit, result): (u32, zbus::OwnedObjectPath, String, String) =
                body.deserialize().ok()?;
            Some(Event::JobRemoved {
                id,
                job: job.as_str().to_owned(),
                unit,
                result,
            })
        }
        "Reloading" => {
            let active: bool = body.deserialize().ok()?;
            Some(Event::Reloading { active })
        }
        "UnitRemoved" => {
            let (unit, _path): (String, zbus::OwnedObjectPath) = body.deserialize().ok()?;
            Some(Event::UnitRemoved { unit })
        }
        // The match rule passes only the Unit interface's changes.
        "PropertiesChanged" => Some(Event::UnitChanged {
            unit: unit_name_from_path(&path)?,
        }),
        _ => None,
    }
}

/// The unit name of a unit object path (`.../unit/hello_2eservice` →
/// `hello.service`): systemd's bus label escaping, `_xx` for a byte.
pub(crate) fn unit_name_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    unescape_bus_label(label)
}

fn unescape_bus_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_unescape() {
        let check = |path: &str, expected: Option<&str>| {
            assert_eq!(unit_name_from_path(path).as_deref(), expected, "{path}");
        };
        check(
            "/org/freedesktop/systemd1/unit/hello_2eservice",
            Some("hello.service"),
        );
        check(
            "/org/freedesktop/systemd1/unit/foo_40bar_2dbaz_2eservice",
            Some("foo@bar-baz.service"),
        );
        check(
            "/org/freedesktop/systemd1/unit/a_5fb_2esocket",
            Some("a_b.socket"),
        );
        check("/org/freedesktop/systemd1/unit/bad_2", None);
        check("/org/freedesktop/systemd1/job/12", None);
    }
}
