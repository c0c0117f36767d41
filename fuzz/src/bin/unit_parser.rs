//! The `unit-parser` fuzz target: see [`fleet_fuzz::unit_parser`].

fn main() {
    #[cfg(feature = "afl")]
    afl::fuzz!(|data: &[u8]| fleet_fuzz::unit_parser(data));
    #[cfg(not(feature = "afl"))]
    fleet_fuzz::run_stdin(fleet_fuzz::unit_parser);
}
