//! Scheduler micro-benchmark (being written).
fn main() {}
