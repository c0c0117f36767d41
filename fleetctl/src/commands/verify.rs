//! `verify` (hidden, deprecated): always refuses with status 2.

use crate::exit::Exit;
use crate::output::Console;

pub fn run(console: Console) -> Exit {
    console.err("WARNING: The signed/verified units feature is DEPRECATED and cannot be used.");
    Exit::Verify
}
