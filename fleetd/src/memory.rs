//! How fleetd keeps its resident memory small (Documentation/performance.md,
//! "Round two").
//!
//! glibc's malloc gives each thread that allocates under contention its own
//! arena, up to eight per core, and an arena keeps the pages it once used.
//! fleetd's threads (the runtime's workers and the blocking pool that file
//! I/O runs on) each end up holding one, so the resident size grows with the
//! thread count rather than with the work. fleetd allocates little and
//! rarely from several threads at once, so one shared arena costs nothing
//! measurable and saves the others.

/// The arenas glibc may create (`M_ARENA_MAX`).
const MALLOC_ARENAS: i32 = 1;

/// Limits glibc's malloc arenas, before any thread starts. An operator's
/// `MALLOC_ARENA_MAX` in the environment wins: glibc reads it itself.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; called from main before
        // any other thread exists. A refusal (returns 0) leaves the default.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
