//! Go's `path.Match` (spec 3.6): what Conflicts and Replaces globs mean.

/// Whether `name` matches the Go `path.Match` pattern. A malformed pattern
/// never matches.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let _ = (pattern, name);
    todo!()
}
