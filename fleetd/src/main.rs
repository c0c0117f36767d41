//! fleetd's entry point (being written).
fn main() {}
