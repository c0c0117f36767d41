//! etcd's two numbers that fleet passes around: revisions and lease ids.
//!
//! Both are `i64` on the wire, and both used to be `i64` aliases here, which
//! let a lease id be passed where a revision was meant (and compared to it)
//! without a word from the compiler. As newtypes they cannot be mixed up,
//! and the only arithmetic a revision needs (the one after it, for resuming a
//! watch) is a named method.

use std::fmt;
use std::str::FromStr;

/// An etcd revision: the store's logical clock, one per committed write
/// transaction. A watch resumes from [`Revision::next`] of the last one it saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(i64);

impl Revision {
    /// The revision etcd reported (a header, a key's mod revision).
    pub const fn new(revision: i64) -> Revision {
        Revision(revision)
    }

    /// The number etcd's requests take.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The revision before this one: the last one a reader knew of before the
    /// change made at this one.
    pub const fn previous(self) -> Revision {
        Revision(self.0.saturating_sub(1))
    }

    /// The revision after this one: where a watch that saw this one resumes.
    pub const fn next(self) -> Revision {
        Revision(self.0.saturating_add(1))
    }
}

/// Text that is not a revision (a non-negative integer), e.g. a client's
/// resume point.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a revision is a non-negative integer, not {0:?}")]
pub struct InvalidRevision(pub String);

impl FromStr for Revision {
    type Err = InvalidRevision;

    fn from_str(text: &str) -> Result<Revision, InvalidRevision> {
        match text.parse::<i64>() {
            Ok(revision) if revision >= 0 => Ok(Revision(revision)),
            _ => Err(InvalidRevision(text.to_owned())),
        }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An etcd lease id: what a machine's presence and unit states are attached
/// to, and what the engine's leadership key rides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(i64);

impl LeaseId {
    /// The id etcd granted (or the one fleet chose when granting).
    pub const fn new(id: i64) -> LeaseId {
        LeaseId(id)
    }

    /// The number etcd's requests take.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    /// Hexadecimal, as `etcdctl lease list` prints lease ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_resumes_after_the_last_revision_it_saw() {
        assert_eq!(Revision::new(41).next(), Revision::new(42));
        assert_eq!(Revision::new(i64::MAX).next(), Revision::new(i64::MAX));
    }

    #[test]
    fn a_revision_parses_only_from_a_non_negative_integer() {
        assert_eq!("42".parse::<Revision>(), Ok(Revision::new(42)));
        assert!("-1".parse::<Revision>().is_err());
        assert!("4x".parse::<Revision>().is_err());
    }

    #[test]
    fn lease_ids_print_as_etcdctl_prints_them() {
        assert_eq!(
            LeaseId::new(0x694d_7a3f_1c2b_0001).to_string(),
            "694d7a3f1c2b0001"
        );
    }
}
