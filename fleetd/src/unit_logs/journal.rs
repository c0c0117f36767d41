//! Reading a unit's journal and status on this machine: `journalctl` and
//! `systemctl status`, as the original's `fleetctl journal` and `status` ran
//! them over SSH, here run by fleetd itself.
//!
//! The journal becomes a stream of server-sent events pulled by the HTTP
//! response: a line is read from `journalctl`'s pipe only when the client
//! has taken the previous ones, so a slow reader holds `journalctl` back
//! instead of filling fleetd's memory. The process is killed when the
//! stream is dropped (client gone).

use std::convert::Infallible;
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::Event;
use futures_util::stream::{self, Stream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval, interval_at};

use fleet_api::x1::{LOG_ERROR_EVENT, LOG_LINE_EVENT, LOG_PING_EVENT, UnitStatus};
use fleet_systemd::unit::UnitName;

use super::{LogsConfig, LogsError, Wanted};

/// How often a followed, quiet journal sends a ping.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// The longest journal line sent whole; longer ones are cut (journald's own
/// default limit is 48 KiB).
const MAX_LINE_BYTES: usize = 16 * 1024;

/// The most `systemctl status` output sent.
const MAX_STATUS_BYTES: u64 = 256 * 1024;

/// How long `systemctl status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// `line` as one `data:` line: cut to [`MAX_LINE_BYTES`], and a carriage
/// return or line break (which SSE would read as a new line) made a space.
fn one_line(line: &str) -> String {
    let mut end = line.len().min(MAX_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end]
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// One journal line as an event.
pub fn line_event(line: &str) -> Event {
    Event::default().event(LOG_LINE_EVENT).data(one_line(line))
}

pub fn ping_event() -> Event {
    Event::default().event(LOG_PING_EVENT).data("")
}

/// The event that ends a broken stream.
pub fn error_event(message: &str) -> Event {
    Event::default()
        .event(LOG_ERROR_EVENT)
        .data(one_line(message))
}

/// The `journalctl` command line for `unit`.
fn journalctl(unit: &UnitName, wanted: &Wanted, user_units: bool) -> Command {
    let mut command = Command::new("journalctl");
    command.args(["--no-pager", "--quiet", "--output=short-iso"]);
    command.arg(format!("--lines={}", wanted.lines));
    let unit_option = if user_units { "--user-unit" } else { "--unit" };
    command.arg(format!("{unit_option}={unit}"));
    if wanted.follow {
        command.arg("--follow");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A running `journalctl` and what the stream needs between events.
struct Journal {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    ping: Interval,
    follow: bool,
    /// Held for the stream's life: one of [`super::MAX_LOG_STREAMS`].
    _permit: OwnedSemaphorePermit,
}

/// Starts `journalctl` for `unit` and returns its lines as events.
///
/// # Errors
/// A 500 when `journalctl` cannot be started.
pub fn stream(
    unit: &UnitName,
    wanted: &Wanted,
    user_units: bool,
    permit: OwnedSemaphorePermit,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, LogsError> {
    let mut child = journalctl(unit, wanted, user_units)
        .spawn()
        .map_err(|error| {
            LogsError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run journalctl for {unit}: {error}"),
            )
        })?;
    let Some(stdout) = child.stdout.take() else {
        // Stdout was set to piped just above.
        return Err(LogsError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "journalctl has no output pipe".to_owned(),
        ));
    };
    let journal = Journal {
        child,
        lines: BufReader::new(stdout).lines(),
        ping: interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL),
        follow: wanted.follow,
        _permit: permit,
    };
    Ok(stream::unfold(Some(journal), next_event))
}

/// What woke the stream.
enum Woken {
    Line(std::io::Result<Option<String>>),
    Ping,
}

/// The next event of the stream; `None` ends it.
async fn next_event(
    state: Option<Journal>,
) -> Option<(Result<Event, Infallible>, Option<Journal>)> {
    let mut journal = state?;
    // Both branches are cancel safe: `next_line` keeps a partial line.
    let woken = tokio::select! {
        line = journal.lines.next_line() => Woken::Line(line),
        _ = journal.ping.tick(), if journal.follow => Woken::Ping,
    };
    match woken {
        Woken::Line(Ok(Some(line))) => Some((Ok(line_event(&line)), Some(journal))),
        Woken::Line(Ok(None)) => finish(journal).await.map(|event| (Ok(event), None)),
        Woken::Line(Err(error)) => {
            let message = format!("reading journalctl's output: {error}");
            Some((Ok(error_event(&message)), None))
        }
        Woken::Ping => Some((Ok(ping_event()), Some(journal))),
    }
}

/// At the end of `journalctl`'s output: an error event if it failed.
async fn finish(mut journal: Journal) -> Option<Event> {
    match journal.child.wait().await {
        Ok(status) if status.success() => None,
        Ok(status) => Some(error_event(&format!("journalctl ended with {status}"))),
        Err(error) => Some(error_event(&format!("waiting for journalctl: {error}"))),
    }
}

/// `systemctl status` of `unit` on this machine.
///
/// # Errors
/// A 500 when `systemctl` cannot be run, a 504 when it takes longer than
/// [`STATUS_TIMEOUT`].
pub async fn status(unit: &UnitName, config: &LogsConfig) -> Result<UnitStatus, LogsError> {
    let mut command = Command::new("systemctl");
    if config.user_units {
        command.arg("--user");
    }
    command
        .args(["status", "--no-pager", "--full", "--"])
        .arg(unit.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let failed = |error: std::io::Error| {
        LogsError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot run systemctl status {unit}: {error}"),
        )
    };
    let mut child = command.spawn().map_err(failed)?;
    let run = async {
        let mut output = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout
                .take(MAX_STATUS_BYTES)
                .read_to_end(&mut output)
                .await?;
        }
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((output, status))
    };
    let (output, exit) = tokio::time::timeout(STATUS_TIMEOUT, run)
        .await
        .map_err(|_| {
            LogsError(
                StatusCode::GATEWAY_TIMEOUT,
                format!("systemctl status {unit} took longer than {STATUS_TIMEOUT:?}"),
            )
        })?
        .map_err(failed)?;
    Ok(UnitStatus {
        machine: config.machine.to_string(),
        output: String::from_utf8_lossy(&output).into_owned(),
        exit_status: exit.code().unwrap_or(-1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journalctl_is_asked_for_the_unit_and_its_lines() {
        let unit: UnitName = "web@1.service".parse().expect("unit name");
        let wanted = Wanted {
            lines: 25,
            follow: true,
        };
        let command = journalctl(&unit, &wanted, false);
        let args: Vec<_> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--no-pager",
                "--quiet",
                "--output=short-iso",
                "--lines=25",
                "--unit=web@1.service",
                "--follow"
            ]
        );
    }

    #[test]
    fn a_line_stays_one_bounded_line() {
        assert_eq!(one_line("a\rb\nc"), "a b c");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_LINE_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
