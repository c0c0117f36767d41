//! The chaos suite: faults injected on purpose into a real fleet cluster (systemd hosts and a
//! 3-member etcd) under a workload, with invariants checked the whole time by watching systemd
//! in every host. `scripts/chaos.sh` runs it; `Documentation/reliability.md` says what each
//! scenario does and what the suite measured.
//!
//! - [`workload`]: the unit files scheduled (global, conflicting template instances,
//!   metadata-constrained and plain units);
//! - [`observe`]: one `systemctl show` per host per tick;
//! - [`ledger`]: samples turned into figures and broken invariants (pure);
//! - [`scenario`]: the faults, their length and their heal;
//! - [`run`]: set-up and the scenario loop with its watcher thread;
//! - [`report`]: the table and the JSON.

pub mod ledger;
pub mod observe;
pub mod report;
pub mod run;
pub mod scenario;
pub mod workload;
