//! The command line: clap types, parsing, and the [`Config`] built from them.
//!
//! Global flags are declared once with `global = true`, so they
//! work before or after the command like cobra's persistent flags. Every
//! global flag can also come from `FLEETCTL_<FLAG>`; that layer is applied
//! here by hand (not with clap's `env`) so that empty values are ignored like
//! the original, deprecated aliases get their variables too, and tests pass
//! the environment as a map instead of touching the process's.
//!
//! Differences from cobra that are deliberate: an unknown command or flag is
//! an error with exit status 1 (the original exited 0), and an ambiguous command prefix
//! says which commands it could mean.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use fleet_api::client::DEFAULT_ENDPOINT;

mod ops;
pub use ops::{CordonArgs, DrainArgs, ExecArgs, PlanArgs, UncordonArgs, WhyArgs, parse_duration};

/// fleetctl's version, printed as `fleetctl version <v>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP_TEMPLATE: &str = "\
NAME:
\t{name} - {about}

USAGE:
\t{usage}

VERSION:
\t{version}

{all-args}
";

const SUBCOMMAND_HELP_TEMPLATE: &str = "\
NAME:
\t{bin} - {about}

USAGE:
\t{usage}{after-help}

{all-args}
";

/// fleetctl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    about = "fleetctl is a command-line interface to fleet, the cluster-wide CoreOS init system.",
    version = VERSION,
    disable_version_flag = true,
    disable_help_flag = true,
    infer_subcommands = true,
    help_template = HELP_TEMPLATE,
    subcommand_help_heading = "COMMANDS",
    next_help_heading = "OPTIONS",
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Print the version and exit
    #[arg(short = 'v', long = "version", action = ArgAction::SetTrue)]
    pub version: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Global flags (Documentation/compatibility.md, "fleetctl global flags and
/// environment"). Each is an `Option` so that "not given" can fall
/// back to the environment, then to the default.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "GLOBAL OPTIONS")]
pub struct GlobalArgs {
    /// Print help
    #[arg(short = 'h', long = "help", global = true, action = ArgAction::Help)]
    pub help: Option<bool>,

    /// fleet endpoint (unix:///path, file:///path or http://host:port[/path]; default unix:///var/run/fleet.sock)
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Adapter used to talk to the cluster: only "API" is supported
    #[arg(long, global = true, value_name = "DRIVER")]
    pub driver: Option<String>,

    /// Establish an SSH tunnel through the provided address for communication with fleet and etcd
    #[arg(long, global = true, value_name = "HOST[:PORT]")]
    pub tunnel: Option<String>,

    /// Username to use when connecting to CoreOS instance (default "core")
    #[arg(long = "ssh-username", global = true, value_name = "USER")]
    pub ssh_username: Option<String>,

    /// Amount of time in seconds to allow for SSH connection initialization before failing (default 10.0)
    #[arg(long = "ssh-timeout", global = true, value_name = "SECONDS")]
    pub ssh_timeout: Option<String>,

    /// File used to store remote machine fingerprints (default ~/.fleetctl/known_hosts)
    #[arg(long = "known-hosts-file", global = true, value_name = "PATH")]
    pub known_hosts_file: Option<String>,

    /// Verify host keys presented by remote machines before initiating SSH connections (default true)
    #[arg(
        long = "strict-host-key-checking",
        global = true,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub strict_host_key_checking: Option<String>,

    /// Amount of time in seconds to allow a single request before considering it failed (default: no limit for the API)
    #[arg(long = "request-timeout", global = true, value_name = "SECONDS")]
    pub request_timeout: Option<String>,

    /// Path to the CA file used for TLS with an https:// endpoint
    #[arg(
        long = "ca-file",
        alias = "etcd-cafile",
        global = true,
        value_name = "PATH"
    )]
    pub ca_file: Option<String>,

    /// Path to the client certificate used for TLS with an https:// endpoint
    #[arg(
        long = "cert-file",
        alias = "etcd-certfile",
        global = true,
        value_name = "PATH"
    )]
    pub cert_file: Option<String>,

    /// Path to the client key used for TLS with an https:// endpoint
    #[arg(
        long = "key-file",
        alias = "etcd-keyfile",
        global = true,
        value_name = "PATH"
    )]
    pub key_file: Option<String>,

    /// Bearer token for the API's access policy (sent as Authorization: Bearer; or FLEETCTL_TOKEN)
    #[arg(long = "token", global = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Keyspace for fleet data in etcd (etcd driver only)
    #[arg(long = "etcd-key-prefix", global = true, value_name = "PREFIX")]
    pub etcd_key_prefix: Option<String>,

    /// Print out more debug information to stderr
    #[arg(
        long,
        global = true,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub debug: Option<String>,

    /// Deprecated; has no effect with the API driver
    #[arg(
        long = "experimental-api",
        global = true,
        hide = true,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub experimental_api: Option<String>,
}

/// The commands, in the order help lists them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Output the contents of a submitted unit
    #[command(
        after_help = "DESCRIPTION:\n\tOutputs the unit file that is currently loaded in the cluster, exactly as stored."
    )]
    Cat(CatArgs),
    /// Destroy one or more units in the cluster
    #[command(
        after_help = "DESCRIPTION:\n\tCompletely remove one or more running or submitted units from the cluster.\n\tWaits until no machine runs them any more, unless --no-block is given."
    )]
    Destroy(DestroyArgs),
    /// Print what changes in the cluster (units, placements, states, machines, leader)
    #[command(
        after_help = "DESCRIPTION:\n\tWithout -f, prints the events of the recent history (or since --since) and exits;\n\twith -f, keeps printing new events until interrupted, resuming after a broken connection."
    )]
    Events(EventsArgs),
    /// Proxy stdin and stdout to a unix domain socket
    #[command(name = "fd-forward", hide = true)]
    FdForward(FdForwardArgs),
    /// Print the journal of a unit in the cluster to stdout
    Journal(JournalArgs),
    /// Enumerate the current hosts in the cluster
    #[command(name = "list-machines")]
    ListMachines(ListMachinesArgs),
    /// Print a unit's journal through the fleet API (no SSH)
    #[command(
        after_help = "DESCRIPTION:\n\tAsks the fleetd at --endpoint, which reads the journal on the machine that\n\truns the unit (forwarding to that machine's fleetd over mutual TLS when it is\n\tanother one). Needs role operate on a TLS API. -f keeps printing new lines."
    )]
    Logs(LogsArgs),
    /// List the units that exist in the cluster.
    #[command(name = "list-unit-files")]
    ListUnitFiles(ListUnitFilesArgs),
    /// List the current state of units in the cluster
    #[command(name = "list-units")]
    ListUnits(ListUnitsArgs),
    /// Schedule one or more units in the cluster, first submitting them if necessary.
    Load(CreateArgs),
    /// Instruct systemd to rolling restart one or more units in the cluster.
    Restart(RestartArgs),
    /// Open interactive shell on a machine in the cluster
    Ssh(SshArgs),
    /// Instruct systemd to start one or more units in the cluster, first submitting and loading if necessary.
    Start(CreateArgs),
    /// Output the status of one or more units in the cluster
    Status(StatusArgs),
    /// Instruct systemd to stop one or more units in the cluster.
    Stop(BlockingUnitsArgs),
    /// Upload one or more units to the cluster without starting them
    Submit(SubmitArgs),
    /// Unschedule one or more units in the cluster.
    Unload(BlockingUnitsArgs),
    /// Roll new content out to existing units in batches, with health gates and automatic revert.
    Update(crate::commands::update::UpdateArgs),
    /// DEPRECATED - No longer works
    #[command(hide = true)]
    Verify(UnitsArgs),
    /// Print the version and exit
    Version,
    /// Print a shell completion script (bash, zsh or fish)
    #[command(
        after_help = "DESCRIPTION:\n\tPrints a completion script on stdout. Try it with: source <(fleetctl completion bash).\n\tThe Debian package installs the scripts for bash, zsh and fish."
    )]
    Completion(crate::commands::completion::CompletionArgs),
    /// Write fleetctl's man pages into a directory (for packaging)
    #[command(name = "man-pages", hide = true)]
    ManPages(crate::commands::completion::ManPagesArgs),
    /// Stop placing new units on a machine; what runs there stays
    Cordon(CordonArgs),
    /// Put a cordoned or drained machine back in rotation
    Uncordon(UncordonArgs),
    /// Cordon a machine and move its units to other machines
    #[command(
        after_help = "DESCRIPTION:\n\tCordons the machine and moves every unit off it, a bounded number at a time, respecting\n\tevery [X-Fleet] rule. Units that cannot move (MachineID pins them, or no other machine\n\tsatisfies them) are listed and left; global units stay. Exits 2 when units were left.\n\tThe engine drives the drain: interrupting fleetctl does not stop it (uncordon does)."
    )]
    Drain(DrainArgs),
    /// Show where the scheduler would place units now and why, changing nothing
    Plan(PlanArgs),
    /// Explain where a submitted unit is placed, or why it cannot be
    Why(WhyArgs),
    /// Run a command on many machines over SSH
    #[command(
        after_help = "DESCRIPTION:\n\tRuns COMMAND on the selected machines over SSH (the same options and host-key rules as\n\tssh), --parallel at a time. Every output line is prefixed with the machine's ID; a summary\n\ttable (machine, exit status, duration) follows. Exits 1 if the command failed anywhere."
    )]
    Exec(ExecArgs),
    /// Bring a host into the cluster over SSH: install fleet, configure and start it
    #[command(
        after_help = "DESCRIPTION:\n\tChecks the host (systemd, D-Bus, architecture, root or sudo) and etcd from it, copies the\n\tDebian package over SSH, installs it, writes /etc/fleet/fleet.conf (mode 0600; with\n\t--etcd-root-password-file the machine's own etcd user), starts fleet and waits until the machine\n\tis listed. Each step is printed; a failed step undoes what the run did. Running it again changes\n\tonly what differs. --dry-run checks and prints what would change."
    )]
    Enrol(crate::commands::enrol::EnrolArgs),
    /// Drain a machine, remove fleet from its host and forget it
    #[command(
        after_help = "DESCRIPTION:\n\tDrains the machine, stops fleet on its host over SSH, deletes its keys and (etcd auth) its etcd\n\tuser, purges the package and checks the host is clean. --reason is required and logged."
    )]
    Disenrol(crate::commands::enrol::DisenrolArgs),
}

/// `--block-attempts` and `--no-block` (Documentation/compatibility.md, "Blocking").
#[derive(Debug, Default, Clone, Args)]
pub struct BlockArgs {
    /// Wait until the units reach their target state, trying N times (2 s each); 0 waits forever
    #[arg(long = "block-attempts", value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,
    /// Do not wait until the units reach their target state
    #[arg(long = "no-block")]
    pub no_block: bool,
}

#[derive(Debug, Args)]
pub struct UnitsArgs {
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BlockingUnitsArgs {
    #[command(flatten)]
    pub block: BlockArgs,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub block: BlockArgs,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Replace the already submitted units in the cluster with new versions
    #[arg(long)]
    pub replace: bool,
    /// DEPRECATED - this option cannot be used
    #[arg(long, hide = true)]
    pub sign: bool,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// `load` and `start`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub block: BlockArgs,
    /// Replace the already submitted units in the cluster with new versions
    #[arg(long)]
    pub replace: bool,
    /// DEPRECATED - this option cannot be used
    #[arg(long, hide = true)]
    pub sign: bool,
    /// Print where the scheduler would place the units and why (as `plan` does); change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Wait until the units reach their target state, trying N times (2 s each); 0 waits forever
    #[arg(long = "block-attempts", value_name = "N", default_value_t = 0)]
    pub block_attempts: u32,
    /// A global unit: how long it must stay active on a machine before the next machine restarts
    #[arg(long = "min-healthy-time", value_name = "D", default_value = "2s", value_parser = parse_duration)]
    pub min_healthy_time: std::time::Duration,
    /// A global unit: how long one machine's stop, start and healthy time may take before the restart fails
    #[arg(long = "healthy-deadline", value_name = "D", default_value = "5m", value_parser = parse_duration)]
    pub healthy_deadline: std::time::Duration,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

/// `list-machines`, `list-units`, `list-unit-files` share these.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Do not ellipsize fields on output
    #[arg(long = "full", short = 'l', alias = "l")]
    pub full: bool,
    /// Do not print a legend (column headers)
    #[arg(long = "no-legend")]
    pub no_legend: bool,
    /// Output format: table (default) or json
    #[arg(
        long = "output",
        short = 'o',
        value_name = "FORMAT",
        default_value = "table"
    )]
    pub output: String,
}

#[derive(Debug, Args)]
pub struct ListMachinesArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Machine. Valid fields are "machine,ip,metadata,cordon"
    #[arg(long, default_value = "machine,ip,metadata")]
    pub fields: String,
}

#[derive(Debug, Args)]
pub struct ListUnitsArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Unit. Valid fields are "active,hash,load,machine,sub,unit,result,status,exited,attempts"
    #[arg(long, default_value = "unit,machine,active,sub")]
    pub fields: String,
}

#[derive(Debug, Args)]
pub struct ListUnitFilesArgs {
    #[command(flatten)]
    pub list: ListArgs,
    /// Columns to print for each Unit file. Valid fields are "desc,dstate,global,hash,state,target,tmachine,unit"
    #[arg(long, default_value = "unit,hash,dstate,state,target")]
    pub fields: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// SSH port used to connect to the machine (default 22)
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// Accepted and ignored (the original's functional tests pass it)
    #[arg(long = "no-block", hide = true)]
    pub no_block: bool,
    /// Accepted and ignored, for symmetry with --no-block
    #[arg(long = "block-attempts", hide = true, value_name = "N")]
    pub block_attempts: Option<u32>,
    /// Ask the fleet API instead of SSH (the unit's fleetd runs systemctl status)
    #[arg(long)]
    pub api: bool,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Number of recent journal lines to print (at most 10000)
    #[arg(short = 'n', long, value_name = "N", default_value_t = fleet_api::x1::DEFAULT_LOG_LINES)]
    pub lines: u32,
    /// Keep printing new lines as they are appended to the journal
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The machine to read, for a unit that runs on several (global units)
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    #[arg(value_name = "UNIT")]
    pub unit: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events about this unit
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// Only events about this machine
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// Start after this event id (an etcd revision)
    #[arg(long, value_name = "REVISION")]
    pub since: Option<i64>,
    /// Output format: text (default) or json (one object per line)
    #[arg(
        long = "output",
        short = 'o',
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub output: String,
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Number of recent log lines to return
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub lines: u64,
    /// Continuously print new entries as they are appended to the journal.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// SSH port used to connect to the machine (default 22)
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// Use 'sudo' to run journalctl
    #[arg(long)]
    pub sudo: bool,
    /// Output mode, passed to journalctl --output
    #[arg(long, value_name = "MODE", default_value = "short")]
    pub output: String,
    #[arg(value_name = "UNIT")]
    pub units: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Open SSH connection to a particular machine.
    #[arg(long, value_name = "ID")]
    pub machine: Option<String>,
    /// Open SSH connection to machine running provided unit.
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
    /// Forward local ssh-agent to target machine.
    #[arg(short = 'A', long = "forward-agent")]
    pub forward_agent: bool,
    /// SSH port used to connect to the machine (default 22)
    #[arg(long = "ssh-port", value_name = "PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// The machine or unit, then the command to run.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FdForwardArgs {
    #[arg(value_name = "SOCKET")]
    pub socket: Vec<String>,
}

/// Which backend talks to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The HTTP API (the only one implemented).
    Api,
}

/// The global configuration, built once from flags, `FLEETCTL_*` and
/// defaults. Past this point nobody sees clap types for global options.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The API endpoint URL (the first entry of a comma-separated list).
    pub endpoint: String,
    /// Entries of `--endpoint` beyond the first, which the API driver ignores.
    pub ignored_endpoints: Vec<String>,
    pub driver: Driver,
    /// `--tunnel` as `host:port` (`:22` added), if set.
    pub tunnel: Option<String>,
    pub ssh_username: String,
    pub ssh_timeout: Duration,
    pub known_hosts_file: PathBuf,
    pub strict_host_key_checking: bool,
    /// Deadline of one API request. `None` (the default) waits forever like
    /// the original; `--request-timeout` sets it (the original ignored it).
    pub request_timeout: Option<Duration>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `--token` / `FLEETCTL_TOKEN`: a bearer token for the API.
    pub token: Option<String>,
    pub etcd_key_prefix: String,
    pub debug: bool,
    pub experimental_api: bool,
}

/// A global option with a bad value; the message names the flag (or its
/// variable), the value and the expected form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {source_name}: {expected}")]
pub struct ConfigError {
    pub source_name: String,
    pub value: String,
    pub expected: String,
}

/// One global option: its flag name and the variables that may set it
/// (canonical first, then deprecated aliases).
struct Setting<'a> {
    flag: &'static str,
    given: &'a Option<String>,
    env_names: &'static [&'static str],
}

impl Setting<'_> {
    /// The flag's value, else the first non-empty variable, with the name of
    /// where it came from.
    fn resolve(&self, env: &HashMap<String, String>) -> Option<(String, String)> {
        if let Some(value) = self.given {
            return Some((format!("--{}", self.flag), value.clone()));
        }
        self.env_names.iter().find_map(|name| {
            env.get(*name)
                .filter(|value| !value.is_empty())
                .map(|value| ((*name).to_owned(), value.clone()))
        })
    }
}

/// Reads global options: a flag wins over its variables (see [`Setting`]),
/// and a value that does not parse is a [`ConfigError`] naming where it came
/// from.
struct Resolver<'a> {
    env: &'a HashMap<String, String>,
}

type EnvNames = &'static [&'static str];

impl Resolver<'_> {
    /// The raw value and where it came from, if set anywhere.
    fn get(
        &self,
        flag: &'static str,
        given: &Option<String>,
        env_names: EnvNames,
    ) -> Option<(String, String)> {
        Setting {
            flag,
            given,
            env_names,
        }
        .resolve(self.env)
    }

    fn string_or(
        &self,
        flag: &'static str,
        given: &Option<String>,
        env_names: EnvNames,
        default: &str,
    ) -> String {
        self.get(flag, given, env_names)
            .map_or_else(|| default.to_owned(), |(_, value)| value)
    }

    fn bool(
        &self,
        flag: &'static str,
        given: &Option<String>,
        env_names: EnvNames,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match self.get(flag, given, env_names) {
            None => Ok(default),
            Some((source_name, value)) => parse_go_bool(&source_name, &value),
        }
    }

    fn seconds(
        &self,
        flag: &'static str,
        given: &Option<String>,
        env_names: EnvNames,
    ) -> Result<Option<Duration>, ConfigError> {
        self.get(flag, given, env_names)
            .map(|(source_name, value)| parse_seconds(&source_name, &value))
            .transpose()
    }

    fn path(
        &self,
        flag: &'static str,
        given: &Option<String>,
        env_names: EnvNames,
    ) -> Option<PathBuf> {
        self.get(flag, given, env_names)
            .map(|(_, value)| PathBuf::from(value))
    }
}

/// The first entry of a comma-separated endpoint list, and the rest (which
/// the API driver ignores, as the original did).
fn split_endpoints(list: &str) -> (String, Vec<String>) {
    let mut endpoints = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let first = endpoints
        .next()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    (first, endpoints.collect())
}

/// `--driver`: the API only (the etcd driver reached etcd directly, which
/// this fleetctl never does).
fn parse_driver(value: Option<(String, String)>) -> Result<Driver, ConfigError> {
    match value {
        None => Ok(Driver::Api),
        Some((_, value)) if value.eq_ignore_ascii_case("api") => Ok(Driver::Api),
        Some((source_name, value)) if value == "etcd" => Err(ConfigError {
            source_name,
            value,
            expected: "the etcd driver is not supported; fleetctl talks to the fleet API only (use --driver=API and --endpoint)".to_owned(),
        }),
        Some((source_name, value)) => Err(ConfigError {
            source_name,
            expected: format!("unrecognized driver {value:?}"),
            value,
        }),
    }
}

/// `--tunnel host` means port 22.
fn with_default_ssh_port(tunnel: String) -> String {
    if tunnel.contains(':') {
        tunnel
    } else {
        format!("{tunnel}:22")
    }
}

/// Go's `strconv.ParseBool`, which pflag uses for boolean flags.
fn parse_go_bool(source_name: &str, value: &str) -> Result<bool, ConfigError> {
    fleet_model::parse_go_bool(value).ok_or_else(|| ConfigError {
        source_name: source_name.to_owned(),
        value: value.to_owned(),
        expected: "expected true or false".to_owned(),
    })
}

fn parse_seconds(source_name: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| ConfigError {
            source_name: source_name.to_owned(),
            value: value.to_owned(),
            expected: "expected a non-negative number of seconds".to_owned(),
        })
}

/// `~` and `~user` expansion of the original (`pkg.ParseFilepath`).
fn expand_home(path: &str, env: &HashMap<String, String>) -> PathBuf {
    if path == "~" || path.starts_with("~/") {
        if let Some(home) = env.get("HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(format!("{home}{}", &path[1..]));
        }
    } else if let Some(rest) = path.strip_prefix('~') {
        let (user, tail) = rest.split_once('/').map_or((rest, ""), |(u, t)| (u, t));
        if let Some(home) = home_of_user(user) {
            return if tail.is_empty() {
                home
            } else {
                home.join(tail)
            };
        }
    }
    PathBuf::from(path)
}

/// A user's home directory from `/etc/passwd`, for `~user`.
fn home_of_user(user: &str) -> Option<PathBuf> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[0] == user).then(|| PathBuf::from(fields[5]))
    })
}

impl Config {
    /// Builds the configuration: flags win over non-empty `FLEETCTL_*`
    /// variables, which win over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] for a value that does not parse, or a driver other than
    /// `API` (`etcd` gets its own explanation).
    pub fn from_args(
        global: &GlobalArgs,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let r = Resolver { env };
        let endpoint_list = r.string_or(
            "endpoint",
            &global.endpoint,
            &["FLEETCTL_ENDPOINT"],
            DEFAULT_ENDPOINT,
        );
        let (endpoint, ignored_endpoints) = split_endpoints(&endpoint_list);
        let request_timeout = r
            .seconds(
                "request-timeout",
                &global.request_timeout,
                &["FLEETCTL_REQUEST_TIMEOUT"],
            )?
            // Zero keeps the original's "no deadline".
            .filter(|timeout| !timeout.is_zero());
        let known_hosts_file = r.string_or(
            "known-hosts-file",
            &global.known_hosts_file,
            &["FLEETCTL_KNOWN_HOSTS_FILE"],
            "~/.fleetctl/known_hosts",
        );
        Ok(Config {
            endpoint,
            ignored_endpoints,
            driver: parse_driver(r.get("driver", &global.driver, &["FLEETCTL_DRIVER"]))?,
            tunnel: r
                .get("tunnel", &global.tunnel, &["FLEETCTL_TUNNEL"])
                .map(|(_, tunnel)| with_default_ssh_port(tunnel)),
            ssh_username: r.string_or(
                "ssh-username",
                &global.ssh_username,
                &["FLEETCTL_SSH_USERNAME"],
                "core",
            ),
            ssh_timeout: r
                .seconds(
                    "ssh-timeout",
                    &global.ssh_timeout,
                    &["FLEETCTL_SSH_TIMEOUT"],
                )?
                .unwrap_or(Duration::from_secs(10)),
            known_hosts_file: expand_home(&known_hosts_file, env),
            strict_host_key_checking: r.bool(
                "strict-host-key-checking",
                &global.strict_host_key_checking,
                &["FLEETCTL_STRICT_HOST_KEY_CHECKING"],
                true,
            )?,
            request_timeout,
            ca_file: r.path(
                "ca-file",
                &global.ca_file,
                &["FLEETCTL_CA_FILE", "FLEETCTL_ETCD_CAFILE"],
            ),
            cert_file: r.path(
                "cert-file",
                &global.cert_file,
                &["FLEETCTL_CERT_FILE", "FLEETCTL_ETCD_CERTFILE"],
            ),
            key_file: r.path(
                "key-file",
                &global.key_file,
                &["FLEETCTL_KEY_FILE", "FLEETCTL_ETCD_KEYFILE"],
            ),
            token: r
                .get("token", &global.token, &["FLEETCTL_TOKEN"])
                .map(|(_, token)| token),
            etcd_key_prefix: r.string_or(
                "etcd-key-prefix",
                &global.etcd_key_prefix,
                &["FLEETCTL_ETCD_KEY_PREFIX"],
                "/_coreos.com/fleet/",
            ),
            debug: r.bool("debug", &global.debug, &["FLEETCTL_DEBUG"], false)?,
            experimental_api: r.bool(
                "experimental-api",
                &global.experimental_api,
                &["FLEETCTL_EXPERIMENTAL_API"],
                true,
            )?,
        })
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Print this text on stdout and exit 0 (help, `fleetctl` alone).
    Help(String),
    /// Print `fleetctl version <v>` and exit 0.
    Version,
    /// A usage error: print on stderr, exit 1.
    Error(String),
    /// Run a command.
    Run(Box<GlobalArgs>, Command),
}

/// The clap command with our help templates applied to every subcommand.
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    let mut cmd = cmd.mut_subcommands(|sub| {
        sub.help_template(SUBCOMMAND_HELP_TEMPLATE).mut_args(|arg| {
            let is_option = arg.get_long().is_some() || arg.get_short().is_some();
            match arg.get_help_heading() {
                Some(_) => arg,
                None if is_option => arg.help_heading("OPTIONS"),
                None => arg.help_heading("ARGUMENTS"),
            }
        })
    });
    cmd.build();
    cmd
}

/// Parses the command line (program name first).
pub fn parse(mut args: Vec<OsString>) -> Parsed {
    let mut cmd = command();
    expand_help_topic(&cmd, &mut args);
    let matches = match cmd.try_get_matches_from_mut(args) {
        Ok(matches) => matches,
        Err(error) => return parse_error(&mut cmd, error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return Parsed::Error(error.render().to_string()),
    };
    if cli.version {
        return Parsed::Version;
    }
    match cli.command {
        None => Parsed::Help(cmd.render_help().to_string()),
        Some(Command::Version) => Parsed::Version,
        Some(command) => Parsed::Run(Box::new(cli.global), command),
    }
}

/// `fleetctl help list-m`: clap infers prefixes of commands but not of the
/// help topic, so a unique prefix after `help` is expanded here.
fn expand_help_topic(cmd: &clap::Command, args: &mut [OsString]) {
    let [_, first, topic, ..] = args else {
        return;
    };
    if first.to_str() != Some("help") {
        return;
    }
    let Some(given) = topic.to_str() else {
        return;
    };
    let names: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).collect();
    if let PrefixMatch::Unique(name) = match_prefix(given, &names) {
        *topic = OsString::from(name);
    }
}

fn parse_error(cmd: &mut clap::Command, error: clap::Error) -> Parsed {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            Parsed::Help(error.render().to_string())
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            Parsed::Help(cmd.render_help().to_string())
        }
        ErrorKind::InvalidSubcommand => {
            if let Some(ContextValue::String(given)) = error.get(ContextKind::InvalidSubcommand) {
                let names: Vec<&str> = cmd
                    .get_subcommands()
                    .filter(|sub| !sub.is_hide_set())
                    .map(clap::Command::get_name)
                    .collect();
                if let PrefixMatch::Ambiguous(candidates) = match_prefix(given, &names) {
                    return Parsed::Error(format!(
                        "error: ambiguous command {given:?}: could be {}\n\nRun 'fleetctl --help' for usage.\n",
                        candidates.join(", ")
                    ));
                }
            }
            Parsed::Error(error.render().to_string())
        }
        _ => Parsed::Error(error.render().to_string()),
    }
}

/// How a command name prefix resolves.
#[derive(Debug, PartialEq, Eq)]
pub enum PrefixMatch<'a> {
    Exact(&'a str),
    Unique(&'a str),
    Ambiguous(Vec<&'a str>),
    None,
}

/// cobra's `EnablePrefixMatching`: an exact name wins, else a unique prefix.
pub fn match_prefix<'a>(given: &str, names: &[&'a str]) -> PrefixMatch<'a> {
    if let Some(name) = names.iter().find(|name| **name == given) {
        return PrefixMatch::Exact(name);
    }
    let candidates: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| name.starts_with(given))
        .collect();
    match candidates.as_slice() {
        [] => PrefixMatch::None,
        [only] => PrefixMatch::Unique(only),
        _ => PrefixMatch::Ambiguous(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        std::iter::once("fleetctl")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn config(line: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        match parse(args(line)) {
            Parsed::Run(global, _) => Config::from_args(&global, &env(vars)),
            other => panic!("{line:?} did not parse to a command: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let config = config("list-units", &[("HOME", "/home/core")]).unwrap();
        assert_eq!(config.endpoint, "unix:///var/run/fleet.sock");
        assert_eq!(config.driver, Driver::Api);
        assert_eq!(config.ssh_username, "core");
        assert_eq!(config.ssh_timeout, Duration::from_secs(10));
        assert_eq!(
            config.known_hosts_file,
            PathBuf::from("/home/core/.fleetctl/known_hosts")
        );
        assert!(config.strict_host_key_checking);
        assert_eq!(config.request_timeout, None);
        assert_eq!(config.tunnel, None);
        assert_eq!(config.etcd_key_prefix, "/_coreos.com/fleet/");
        assert!(!config.debug);
    }

    #[test]
    fn flags_win_over_env_and_empty_env_is_ignored() {
        let vars = [
            ("FLEETCTL_ENDPOINT", "http://env:1"),
            ("FLEETCTL_SSH_USERNAME", ""),
            ("FLEETCTL_REQUEST_TIMEOUT", "2.5"),
            ("FLEETCTL_STRICT_HOST_KEY_CHECKING", "false"),
        ];
        let from_env = config("list-units", &vars).unwrap();
        assert_eq!(from_env.endpoint, "http://env:1");
        assert_eq!(from_env.ssh_username, "core");
        assert_eq!(from_env.request_timeout, Some(Duration::from_millis(2500)));
        assert!(!from_env.strict_host_key_checking);

        let from_flags = config(
            "--endpoint http://flag:2 list-units --strict-host-key-checking=true --request-timeout=0",
            &vars,
        )
        .unwrap();
        assert_eq!(from_flags.endpoint, "http://flag:2");
        assert!(from_flags.strict_host_key_checking);
        assert_eq!(from_flags.request_timeout, None);
    }

    #[test]
    fn deprecated_aliases_and_their_variables() {
        let config1 = config("--etcd-cafile /ca.pem list-units", &[]).unwrap();
        assert_eq!(config1.ca_file, Some(PathBuf::from("/ca.pem")));
        let config2 = config("list-units", &[("FLEETCTL_ETCD_KEYFILE", "/k.pem")]).unwrap();
        assert_eq!(config2.key_file, Some(PathBuf::from("/k.pem")));
    }

    #[test]
    fn endpoint_lists_use_the_first_entry() {
        let config = config("--endpoint=http://a:1,http://b:2 list-units", &[]).unwrap();
        assert_eq!(config.endpoint, "http://a:1");
        assert_eq!(config.ignored_endpoints, ["http://b:2"]);
    }

    #[test]
    fn tunnel_gets_the_default_port() {
        assert_eq!(
            config("--tunnel 10.0.0.1 list-units", &[])
                .unwrap()
                .tunnel
                .as_deref(),
            Some("10.0.0.1:22")
        );
        assert_eq!(
            config("--tunnel h:2222 list-units", &[])
                .unwrap()
                .tunnel
                .as_deref(),
            Some("h:2222")
        );
    }

    #[test]
    fn bad_values_are_errors() {
        let error = config("list-units", &[("FLEETCTL_DEBUG", "maybe")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid value "maybe" for FLEETCTL_DEBUG: expected true or false"#
        );
        let error = config("--driver etcd list-units", &[]).unwrap_err();
        assert!(
            error.to_string().contains("etcd driver is not supported"),
            "{error}"
        );
        let error = config("--driver foo list-units", &[]).unwrap_err();
        assert!(
            error.to_string().contains(r#"unrecognized driver "foo""#),
            "{error}"
        );
        let error = config("--ssh-timeout=abc list-units", &[]).unwrap_err();
        assert_eq!(error.source_name, "--ssh-timeout");
    }

    #[test]
    fn prefix_matching() {
        let names = [
            "list-machines",
            "list-unit-files",
            "list-units",
            "load",
            "start",
            "status",
        ];
        assert_eq!(
            match_prefix("list-m", &names),
            PrefixMatch::Unique("list-machines")
        );
        assert_eq!(
            match_prefix("list-units", &names),
            PrefixMatch::Exact("list-units")
        );
        assert_eq!(
            match_prefix("list-u", &names),
            PrefixMatch::Ambiguous(vec!["list-unit-files", "list-units"])
        );
        assert_eq!(match_prefix("nope", &names), PrefixMatch::None);
    }

    #[test]
    fn clap_resolves_unique_prefixes_and_rejects_ambiguous_ones() {
        assert!(matches!(
            parse(args("list-m")),
            Parsed::Run(_, Command::ListMachines(_))
        ));
        assert!(matches!(
            parse(args("list-units")),
            Parsed::Run(_, Command::ListUnits(_))
        ));
        match parse(args("list-u")) {
            Parsed::Error(message) => assert!(
                message.contains("ambiguous command \"list-u\""),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        match parse(args("sta")) {
            Parsed::Error(message) => assert!(message.contains("start, status"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_help_and_list_flags() {
        assert!(matches!(parse(args("--version")), Parsed::Version));
        assert!(matches!(parse(args("-v")), Parsed::Version));
        assert!(matches!(parse(args("version")), Parsed::Version));
        match parse(args("")) {
            Parsed::Help(text) => assert!(
                text.contains(VERSION) && text.contains("list-units"),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
        for line in ["list-units -l", "list-units --l", "list-units --full"] {
            match parse(args(line)) {
                Parsed::Run(_, Command::ListUnits(list)) => assert!(list.list.full, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(args("status --no-block global.service")),
            Parsed::Run(_, Command::Status(_))
        ));
        match parse(args("help list-m")) {
            Parsed::Help(text) => assert!(text.contains("list-machines"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(args("list-units --bogus")),
            Parsed::Error(_)
        ));
        assert!(matches!(parse(args("bogus")), Parsed::Error(_)));
    }
}
