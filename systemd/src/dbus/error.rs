//! [`DbusError`]: what can go wrong talking to systemd, always naming the
//! method, the unit (or file) and the bus address involved.

use std::time::Duration;

/// D-Bus error names that mean "the bus or systemd went away", not "systemd
/// refused": worth a retry after a reconnect.
const TRANSPORT_ERROR_NAMES: &[&str] = &[
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
];

/// A failure of the systemd D-Bus client.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbusError {
    /// The bus could not be reached, or systemd is not on it.
    #[error("cannot reach systemd on the D-Bus at {address}: {message}")]
    Connect { address: String, message: String },
    /// The call got no answer within its deadline.
    #[error("systemd {method}({target}) timed out after {after:?} (bus {address})")]
    Timeout {
        method: &'static str,
        target: String,
        address: String,
        after: Duration,
    },
    /// systemd answered with an error (e.g. `org.freedesktop.systemd1.NoSuchUnit`).
    #[error("systemd {method}({target}) failed: {name}: {message}")]
    Systemd {
        method: &'static str,
        target: String,
        name: String,
        message: String,
    },
    /// The connection broke or the reply could not be read.
    #[error("systemd {method}({target}) failed on the bus {address}: {message}")]
    Transport {
        method: &'static str,
        target: String,
        address: String,
        message: String,
    },
    /// `EnableUnitFiles` succeeded but the unit has no usable `[Install]` section.
    #[error("systemd reports no install information for {unit}")]
    NoInstallInfo { unit: String },
    /// A job ended without the `JobRemoved` we waited for within the deadline.
    #[error("job {job} of {unit} did not finish within {after:?}")]
    JobTimeout {
        job: String,
        unit: String,
        after: Duration,
    },
    /// The stream of systemd's signals ended (the connection closed).
    #[error("the stream of systemd signals from {address} ended")]
    EventsClosed { address: String },
}

impl DbusError {
    /// Whether a later attempt (possibly on a new connection) may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            DbusError::Connect { .. }
                | DbusError::Timeout { .. }
                | DbusError::Transport { .. }
                | DbusError::JobTimeout { .. }
                | DbusError::EventsClosed { .. }
        )
    }

    /// Whether the connection itself is broken and must be re-established.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            DbusError::Connect { .. }
                | DbusError::Transport { .. }
                | DbusError::EventsClosed { .. }
        )
    }

    /// The D-Bus error name systemd answered with, if it answered with one.
    pub fn systemd_error_name(&self) -> Option<&str> {
        match self {
            DbusError::Systemd { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Classifies a zbus error of `method` on `target`.
    pub(crate) fn from_zbus(
        method: &'static str,
        target: &str,
        address: &str,
        error: zbus::Error,
    ) -> DbusError {
        use zbus::DBusError as _;
        let (name, message) = match &error {
            zbus::Error::MethodError(name, detail, _) => (
                name.to_string(),
                detail.clone().unwrap_or_else(|| "no details".to_owned()),
            ),
            zbus::Error::FDO(fdo) => (
                fdo.name().to_string(),
                fdo.description().unwrap_or("no details").to_owned(),
            ),
            _ => {
                return DbusError::Transport {
                    method,
                    target: target.to_owned(),
                    address: address.to_owned(),
                    message: error.to_string(),
                };
            }
        };
        if TRANSPORT_ERROR_NAMES.contains(&name.as_str()) {
            return DbusError::Transport {
                method,
                target: target.to_owned(),
                address: address.to_owned(),
                message: format!("{name}: {message}"),
            };
        }
        DbusError::Systemd {
            method,
            target: target.to_owned(),
            name,
            message,
        }
    }
}
