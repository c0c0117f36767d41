//! The `api` fuzz target: see [`fleet_fuzz::api`].

fn main() {
    #[cfg(feature = "afl")]
    afl::fuzz!(|data: &[u8]| fleet_fuzz::api(data));
    #[cfg(not(feature = "afl"))]
    fleet_fuzz::run_stdin(fleet_fuzz::api);
}
