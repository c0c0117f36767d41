//! The `config` fuzz target: see [`fleet_fuzz::config`].

fn main() {
    #[cfg(feature = "afl")]
    afl::fuzz!(|data: &[u8]| fleet_fuzz::config(data));
    #[cfg(not(feature = "afl"))]
    fleet_fuzz::run_stdin(fleet_fuzz::config);
}
