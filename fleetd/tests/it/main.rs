//! fleetd's integration tests, one binary (one link step, not one per file): the heart against a
//! real etcd, and the real `fleetd` binary with its API listeners.
//!
//! - `util`: waiting on conditions, machine-id files, raw HTTP requests.
//! - `heart`: presence: registration, duplicates, lease loss, etcd restarts.
//! - `daemon`: the `fleetd` binary: 503 without etcd, the API on unix and
//!   TCP sockets, config errors, SIGTERM.
//! - `discovery`: the binary finding etcd through DNS SRV records (dnsmasq).
//! - `observe`: `/metrics` scraped from the binary and checked by `promtool`.
//! - `client_pool`: the API client reuses its connections and survives an
//!   idle close.
//! - `api_security`: TLS, client certificates, roles, tokens, the audit
//!   log and the plaintext rules of the API, with certificates from the shared test CA.
//! - `unit_logs`: logs and status forwarded between fleetds over mutual TLS.

mod api_security;
mod client_pool;
mod daemon;
mod discovery;
mod heart;
mod observe;
mod unit_logs;
mod util;
