//! The systemd D-Bus client: one [`Manager`] per connection to a systemd.
//!
//! A thin typed layer over `org.freedesktop.systemd1.Manager` (through the
//! generated `zbus_systemd` proxies): every call has a deadline
//! ([`Manager::with_timeout`]) and fails with a [`DbusError`] that names the
//! method, the unit and the bus address. State changes arrive as [`Event`]s
//! from [`Manager::subscribe`], never by polling.
//!
//! Unit file paths given to [`Manager::link_unit_files`] are paths as the
//! target systemd sees them (inside a container when talking to one).

mod error;
mod events;

use std::time::Duration;

use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

pub use error::DbusError;
pub use events::{Event, Events, JobOutcome};

/// The deadline of one call unless [`Manager::with_timeout`] says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The least deadline of a daemon-reload.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// zbus's queue per signal stream; [`Events`] drains it continuously, the
/// room only absorbs bursts between two polls.
const SIGNAL_QUEUE: Option<std::num::NonZeroUsize> = std::num::NonZeroUsize::new(1024);

/// Where the system bus is when `DBUS_SYSTEM_BUS_ADDRESS` does not say (D-Bus spec).
const SYSTEM_BUS_DEFAULT: &str = "unix:path=/var/run/dbus/system_bus_socket";

/// How [`Manager::start_unit`] and [`Manager::stop_unit`] queue their job.
const JOB_MODE: &str = "replace";

/// A job systemd queued for us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job's object path (`/org/freedesktop/systemd1/job/<id>`).
    pub path: String,
    /// The unit the job is for.
    pub unit: String,
}

/// One row of `ListUnitsByNames`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitStatus {
    pub name: String,
    /// `loaded`, `not-found`, `error`, `masked`, ...
    pub load_state: String,
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active_state: String,
    /// Type-specific: `running`, `dead`, `exited`, ...
    pub sub_state: String,
}

/// One change `LinkUnitFiles`, `EnableUnitFiles` or `DisableUnitFiles` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFileChange {
    /// `symlink` or `unlink`.
    pub kind: String,
    pub file: String,
    pub destination: String,
}

/// What `EnableUnitFiles` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnableReport {
    /// Whether the files had `[Install]` information systemd could use.
    pub carries_install_info: bool,
    pub changes: Vec<UnitFileChange>,
}

/// Properties of one unit, read on demand (not cached).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitProperties {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// The unit's `Result` for services (`success`, `exit-code`, ...), else empty.
    pub result: String,
    /// µs since the epoch when the unit last entered `active`; 0 if never.
    pub active_enter_timestamp: u64,
    /// µs since the epoch when the main process of a service started; `None`
    /// for other unit types, `Some(0)` if it never ran.
    pub exec_main_start_timestamp: Option<u64>,
    /// µs since the epoch when the main process of a service last exited;
    /// `None` for other unit types, `Some(0)` if it never exited.
    pub exec_main_exit_timestamp: Option<u64>,
    /// The exit status of a service's main process (with `exec-code`), or
    /// the signal that killed it; `None` for other unit types.
    pub exec_main_status: Option<i32>,
}

/// A connection to one systemd manager. Cheap to clone (one shared connection).
#[derive(Clone, Debug)]
pub struct Manager {
    connection: zbus::Connection,
    proxy: ManagerProxy<'static>,
    address: String,
    timeout: Duration,
}

impl Manager {
    /// Connects to the systemd on `address` (a D-Bus address such as
    /// `unix:path=/run/dbus/system_bus_socket`), or on the system bus when
    /// `None`, and checks that systemd answers there.
    ///
    /// # Errors
    /// [`DbusError::Connect`] naming the address when the bus cannot be
    /// reached or systemd is not on it.
    pub async fn connect(address: Option<&str>) -> Result<Manager, DbusError> {
        Manager::connect_with_timeout(address, DEFAULT_CALL_TIMEOUT).await
    }

    /// [`Manager::connect`] with a per-call deadline of `timeout`.
    pub async fn connect_with_timeout(
        address: Option<&str>,
        timeout: Duration,
    ) -> Result<Manager, DbusError> {
        let shown = match address {
            Some(address) => address.to_owned(),
            None => format!(
                "the system bus ({})",
                std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                    .unwrap_or_else(|_| SYSTEM_BUS_DEFAULT.to_owned())
            ),
        };
        let connect_error = |message: String| DbusError::Connect {
            address: shown.clone(),
            message,
        };
        let builder = match address {
            Some(address) => zbus::connection::Builder::address(address),
            None => zbus::connection::Builder::system(),
        };
        let connection = match tokio::time::timeout(timeout, builder.build()).await {
            Err(_) => return Err(connect_error(format!("no answer within {timeout:?}"))),
            Ok(Err(error)) => return Err(connect_error(error.to_string())),
            Ok(Ok(connection)) => connection,
        };
        let proxy = match tokio::time::timeout(timeout, manager_proxy(&connection)).await {
            Err(_) => return Err(connect_error(format!("no answer within {timeout:?}"))),
            Ok(Err(error)) => return Err(connect_error(error.to_string())),
            Ok(Ok(proxy)) => proxy,
        };
        let manager = Manager {
            connection,
            proxy,
            address: shown.clone(),
            timeout,
        };
        // The bus may be up without systemd on it (or another service may sit
        // there): ask systemd itself before declaring success.
        match manager.version().await {
            Ok(_) => Ok(manager),
            Err(error) => Err(connect_error(format!(
                "systemd does not answer there: {error}"
            ))),
        }
    }

    /// The same connection with a different per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Manager {
        self.timeout = timeout;
        self
    }

    /// The bus address this manager talks to, as given (or "the system bus").
    pub fn address(&self) -> &str {
        &self.address
    }

    /// systemd's version string (e.g. `252.33-1~deb12u1`).
    pub async fn version(&self) -> Result<String, DbusError> {
        self.call("Version", "", self.proxy.version()).await
    }

    /// `LinkUnitFiles(paths, runtime, force)`: makes files outside the unit
    /// search path known to systemd (a link in `/run/systemd/system` when `runtime`).
    pub async fn link_unit_files(
        &self,
        paths: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<Vec<UnitFileChange>, DbusError> {
        let changes = self
            .call(
                "LinkUnitFiles",
                &paths.join(" "),
                self.proxy.link_unit_files(paths.to_vec(), runtime, force),
            )
            .await?;
        Ok(changes.into_iter().map(UnitFileChange::from).collect())
    }

    /// `EnableUnitFiles(paths, runtime, force)`: applies their `[Install]` sections.
    pub async fn enable_unit_files(
        &self,
        paths: &[String],
        runtime: bool,
        force: bool,
    ) -> Result<EnableReport, DbusError> {
        let (carries_install_info, changes) = self
            .call(
                "EnableUnitFiles",
                &paths.join(" "),
                self.proxy.enable_unit_files(paths.to_vec(), runtime, force),
            )
            .await?;
        Ok(EnableReport {
            carries_install_info,
            changes: changes.into_iter().map(UnitFileChange::from).collect(),
        })
    }

    /// `DisableUnitFiles(names, runtime)`: removes the links of `names`
    /// (unit names or paths) made by link or enable.
    pub async fn disable_unit_files(
        &self,
        names: &[String],
        runtime: bool,
    ) -> Result<Vec<UnitFileChange>, DbusError> {
        let changes = self
            .call(
                "DisableUnitFiles",
                &names.join(" "),
                self.proxy.disable_unit_files(names.to_vec(), runtime),
            )
            .await?;
        Ok(changes.into_iter().map(UnitFileChange::from).collect())
    }

    /// `Reload()`: daemon-reload. Returns when systemd has reloaded.
    ///
    /// Its deadline is at least [`RELOAD_TIMEOUT`]: a reload re-reads every
    /// unit and takes longer the more there are.
    pub async fn reload(&self) -> Result<(), DbusError> {
        let timeout = self.timeout.max(RELOAD_TIMEOUT);
        self.call_within(timeout, "Reload", "", self.proxy.reload())
            .await
    }

    /// `StartUnit(name, "replace")`. Returns at once with the queued job;
    /// wait for it with [`Events::wait_for_job`] (subscribe first).
    pub async fn start_unit(&self, name: &str) -> Result<Job, DbusError> {
        let path = self
            .call(
                "StartUnit",
                name,
                self.proxy.start_unit(name.to_owned(), JOB_MODE.to_owned()),
            )
            .await?;
        Ok(Job {
            path: path.as_str().to_owned(),
            unit: name.to_owned(),
        })
    }

    /// `StopUnit(name, "replace")`, like [`Manager::start_unit`].
    pub async fn stop_unit(&self, name: &str) -> Result<Job, DbusError> {
        let path = self
            .call(
                "StopUnit",
                name,
                self.proxy.stop_unit(name.to_owned(), JOB_MODE.to_owned()),
            )
            .await?;
        Ok(Job {
            path: path.as_str().to_owned(),
            unit: name.to_owned(),
        })
    }

    /// `ResetFailedUnit(name)`: forgets a failed state.
    pub async fn reset_failed_unit(&self, name: &str) -> Result<(), DbusError> {
        self.call(
            "ResetFailedUnit",
            name,
            self.proxy.reset_failed_unit(name.to_owned()),
        )
        .await
    }

    /// `ListUnitsByNames(names)`: the states of `names`, in systemd's order.
    /// Unknown units come back with `load_state` `not-found`.
    pub async fn list_units_by_names(
        &self,
        names: &[String],
    ) -> Result<Vec<UnitStatus>, DbusError> {
        let rows = self
            .call(
                "ListUnitsByNames",
                &names.join(" "),
                self.proxy.list_units_by_names(names.to_vec()),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(name, _description, load_state, active_state, sub_state, ..)| UnitStatus {
                    name,
                    load_state,
                    active_state,
                    sub_state,
                },
            )
            .collect())
    }

    /// `ListUnitFilesByPatterns([], patterns)`: the unit files systemd finds
    /// on its search path whose name matches one of `patterns` (fnmatch
    /// globs), as `(path, state)`. One call answers for many names, where
    /// [`Manager::unit_file_state`] answers for one.
    pub async fn unit_files_matching(
        &self,
        patterns: &[String],
    ) -> Result<Vec<(String, String)>, DbusError> {
        self.call(
            "ListUnitFilesByPatterns",
            &patterns.join(" "),
            self.proxy
                .list_unit_files_by_patterns(Vec::new(), patterns.to_vec()),
        )
        .await
    }

    /// `GetUnitFileState(name)`: `enabled`, `linked-runtime`, `static`, ...
    pub async fn unit_file_state(&self, name: &str) -> Result<String, DbusError> {
        self.call(
            "GetUnitFileState",
            name,
            self.proxy.get_unit_file_state(name.to_owned()),
        )
        .await
    }

    /// Reads the properties of `name` (loading it into systemd if needed).
    pub async fn unit_properties(&self, name: &str) -> Result<UnitProperties, DbusError> {
        let path = self
            .call("LoadUnit", name, self.proxy.load_unit(name.to_owned()))
            .await?;
        let unit = self
            .call(
                "UnitProxy",
                name,
                UnitProxy::builder(&self.connection)
                    .path(path.clone())
                    .cache_properties(CacheProperties::No)
                    .build(),
            )
            .await?;
        let load_state = self.call("LoadState", name, unit.load_state()).await?;
        let active_state = self.call("ActiveState", name, unit.active_state()).await?;
        let sub_state = self.call("SubState", name, unit.sub_state()).await?;
        let active_enter_timestamp = self
            .call("ActiveEnterTimestamp", name, unit.active_enter_timestamp())
            .await?;
        let (result, exec_main_start_timestamp, exec_main_exit_timestamp, exec_main_status) =
            if name.ends_with(".service") && load_state == "loaded" {
                let service = self
                    .call(
                        "ServiceProxy",
                        name,
                        ServiceProxy::builder(&self.connection)
                            .path(path)
                            .cache_properties(CacheProperties::No)
                            .build(),
                    )
                    .await?;
                let result = self.call("Result", name, service.result()).await?;
                let started = self
                    .call(
                        "ExecMainStartTimestamp",
                        name,
                        service.exec_main_start_timestamp(),
                    )
                    .await?;
                let exited = self
                    .call(
                        "ExecMainExitTimestamp",
                        name,
                        service.exec_main_exit_timestamp(),
                    )
                    .await?;
                let status = self
                    .call("ExecMainStatus", name, service.exec_main_status())
                    .await?;
                (result, Some(started), Some(exited), Some(status))
            } else {
                (String::new(), None, None, None)
            };
        Ok(UnitProperties {
            name: name.to_owned(),
            load_state,
            active_state,
            sub_state,
            result,
            active_enter_timestamp,
            exec_main_start_timestamp,
            exec_main_exit_timestamp,
            exec_main_status,
        })
    }

    /// Subscribes to systemd's signals on this connection: job ends and unit
    /// property changes arrive as [`Event`]s. The subscription lives as long
    /// as the connection; call it once per connection.
    ///
    /// One match rule per signal we read, so the bus daemon forwards only
    /// those: a burst of starts makes systemd emit `UnitNew`, `JobNew` and a
    /// `PropertiesChanged` of the type-specific interface (`Service`, with
    /// dozens of properties) for every unit, none of which we use, and
    /// receiving them cost the agent and the bus daemon CPU the hosts'
    /// systemd needed (Documentation/performance.md, "Round six").
    pub async fn subscribe(&self) -> Result<Events, DbusError> {
        let mut streams = Vec::with_capacity(4);
        for member in ["JobRemoved", "Reloading", "UnitRemoved"] {
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender("org.freedesktop.systemd1")
                .interface("org.freedesktop.systemd1.Manager")
                .member(member)
                .path("/org/freedesktop/systemd1");
            streams.push(self.signal_stream(rule, member).await?);
        }
        // PropertiesChanged's first argument is the interface whose
        // properties changed; the states we track live on Unit's.
        let units_rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.systemd1")
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace("/org/freedesktop/systemd1/unit")
            .arg(0, "org.freedesktop.systemd1.Unit");
        streams.push(self.signal_stream(units_rule, "unit signals").await?);
        // systemd only emits signals on the bus while someone is subscribed.
        match self.call("Subscribe", "", self.proxy.subscribe()).await {
            Ok(()) => {}
            Err(error)
                if error.systemd_error_name()
                    == Some("org.freedesktop.systemd1.AlreadySubscribed") => {}
            Err(error) => return Err(error),
        }
        Ok(Events::new(streams, self.address.clone()))
    }

    /// Adds one match rule and returns the stream of what it matches.
    async fn signal_stream(
        &self,
        rule: zbus::match_rule::Builder<'static>,
        what: &str,
    ) -> Result<zbus::MessageStream, DbusError> {
        let rule = rule
            .build()
            .map_err(|error| DbusError::from_zbus("AddMatch", what, &self.address, error))?;
        self.call(
            "AddMatch",
            what,
            zbus::MessageStream::for_match_rule(rule, &self.connection, SIGNAL_QUEUE),
        )
        .await
    }

    /// Runs one call with this manager's deadline and classifies its error.
    ///
    /// The deadline is ours, not zbus's (which is left unset): a call that
    /// times out is a [`DbusError::Timeout`], not a broken connection.
    async fn call<T>(
        &self,
        method: &'static str,
        target: &str,
        call: impl Future<Output = zbus::Result<T>>,
    ) -> Result<T, DbusError> {
        self.call_within(self.timeout, method, target, call).await
    }

    async fn call_within<T>(
        &self,
        timeout: Duration,
        method: &'static str,
        target: &str,
        call: impl Future<Output = zbus::Result<T>>,
    ) -> Result<T, DbusError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(timeout, call).await;
        fleet_metrics::get()
            .agent
            .dbus_call(method, started, matches!(result, Ok(Ok(_))));
        match result {
            Err(_) => Err(DbusError::Timeout {
                method,
                target: target.to_owned(),
                address: self.address.clone(),
                after: timeout,
            }),
            Ok(Err(error)) => Err(DbusError::from_zbus(method, target, &self.address, error)),
            Ok(Ok(value)) => Ok(value),
        }
    }
}

async fn manager_proxy(connection: &zbus::Connection) -> zbus::Result<ManagerProxy<'static>> {
    // Uncached: the one property we read (Version) is read once, and caching
    // would subscribe to PropertiesChanged on the manager for nothing.
    ManagerProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

impl From<(String, String, String)> for UnitFileChange {
    fn from((kind, file, destination): (String, String, String)) -> UnitFileChange {
        UnitFileChange {
            kind,
            file,
            destination,
        }
    }
}
