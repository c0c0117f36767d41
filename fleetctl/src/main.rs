//! fleetctl's entry point: parse, run, turn the outcome into an exit code.
//! Everything else lives in the library so tests can call it directly.

// Input and I/O paths return errors; unwrap() is for tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::process::ExitCode;

fn main() -> ExitCode {
    let env = std::env::vars().collect();
    fleetctl::main_with(std::env::args_os().collect(), &env)
}
