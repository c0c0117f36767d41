//! fleetd: one per machine. The heart keeps the machine's presence, the
//! engine (on one elected machine) schedules, the agent drives systemd, and
//! the listeners serve the API.
//!
//! Where to start reading:
//! - [`server`]: wires everything together, owns shutdown and SIGHUP reload.
//! - [`config`]: every option, the goini loader and `FLEET_*` overrides.
//! - [`discovered`]: etcd by `etcd_servers` or by DNS SRV records.
//! - [`heart`]: the machine lease and record; publishes [`heart::Presence`].
//! - [`engine`]: leader election and the scheduler (pure, the `fleet-scheduler` crate re-exported as `engine::scheduler`).
//! - [`agent`]: makes this machine's systemd match its schedule.
//! - [`listeners`]: the API sockets (socket activation or `api_listen`),
//!   with TLS ([`api_tls`]), limits, and the [`api_gate`] every request
//!   passes: the pure [`access`] policy and the audit log.
//! - [`machine`]: the machine id, public IP detection and the published state.
//! - [`backoff`]: the one retry delay policy.
//! - [`memory`]: malloc tuning that keeps fleetd's resident size small.
//! - [`pacing`]: act at once when idle, batch only while work is in flight.
//! - [`etcd_role`]: control plane or worker, learned from etcd's permissions.
//! - [`etcd_auth`]: `fleetd etcd-auth`, one etcd identity per machine.
//! - [`supervise`]: a component that dies takes fleetd down (never half-alive).
//! - [`x1`]: the operations API beside v1 (cordon, drain, plan, why).
//! - [`unit_logs`]: a unit's logs and status through the API, forwarded to
//!   the machine that runs it over mutual TLS.
//!
//! `main.rs` only parses the command line, installs logging and calls
//! [`server::run`].

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod access;
pub mod agent;
pub mod api_gate;
pub mod api_tls;
pub mod backoff;
pub mod config;
pub mod discovered;
pub mod engine;
pub mod etcd_auth;
pub mod etcd_role;
pub mod heart;
pub mod listeners;
pub mod machine;
pub mod memory;
pub mod pacing;
pub mod server;
pub mod supervise;
pub mod unit_logs;
pub mod x1;
