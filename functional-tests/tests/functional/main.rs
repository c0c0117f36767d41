//! Functional tests: fleet on a real etcd and real systemd hosts (`systemd-nspawn`).
//!
//! One test binary with a module per area, so every test shares one build. The tests need
//! root and the tools `scripts/setup.sh` installs; each boots its own [`functional_tests::Cluster`],
//! and clusters take turns (a file lock), so the default parallel test harness is safe.

mod agent;
mod bad_input;
mod chaos;
mod dashboard;
mod discovery;
mod drain;
mod enrol;
mod fence;
mod foundation;
mod harness;
mod host_units;
mod logs;
mod oneshot;
mod package;
mod rollout;
mod safety;
mod security;
mod ssh;
mod units;
