//! The etcd key layout. **Nothing outside this module formats a key.**
//!
//! `P` is `etcd_key_prefix` (default `/_coreos.com/fleet/`, always with a
//! trailing `/`). Every value is JSON unless said otherwise.
//!
//! | key | value | lease | writer |
//! |---|---|---|---|
//! | `P/machines/<machine>` | machine state | machine lease | the machine's heart |
//! | `P/metadata/<machine>/<key>` | bare string; `""` removes a configured key | none (survives restarts) | API `PATCH /machines` |
//! | `P/units/<unit>` | `{"hash","desiredState"}` | none | API |
//! | `P/content/<hash>` | the canonical unit text | none | API; deleted with its last reference |
//! | `P/content-refs/<hash>/<unit>` | empty | none | API, with the unit record in one txn |
//! | `P/schedule/<machine>/<unit>` | `{"hash","targetState"}` | none | engine (leader-guarded txn) |
//! | `P/placement/<unit>/<machine>` | empty | none | engine, with the schedule key in one txn |
//! | `P/states/<unit>/<machine>` | unit state | machine lease | the machine's agent |
//! | `P/engine/leader` | the leader's machine id | engine lease | engines (create-if-absent) |
//!
//! Why this shape:
//! - Agents watch only `P/schedule/<their id>/`: a decision wakes one machine.
//! - `P/placement/<unit>/` answers "where does this unit run" with one small
//!   range read (what `GET /units/<name>` needs) instead of a scan of the schedule.
//! - Content is stored once per hash; `content-refs` lets the last destroy
//!   delete it in a txn that compares the whole refs range to empty.
//! - Everything a machine reports lives under its lease: when it is gone, its
//!   presence and its unit states vanish together, with no heartbeat writes.

/// The key layout under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix`; a trailing `/` is added when missing.
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn machines(&self) -> String {
        format!("{}machines/", self.prefix)
    }
    pub fn machine(&self, machine: &str) -> String {
        format!("{}machines/{machine}", self.prefix)
    }
    pub fn all_metadata(&self) -> String {
        format!("{}metadata/", self.prefix)
    }
    pub fn machine_metadata(&self, machine: &str) -> String {
        format!("{}metadata/{machine}/", self.prefix)
    }
    pub fn metadata(&self, machine: &str, key: &str) -> String {
        format!("{}metadata/{machine}/{key}", self.prefix)
    }
    pub fn units(&self) -> String {
        format!("{}units/", self.prefix)
    }
    pub fn unit(&self, unit: &str) -> String {
        format!("{}units/{unit}", self.prefix)
    }
    pub fn all_content(&self) -> String {
        format!("{}content/", self.prefix)
    }
    pub fn content(&self, hash: &str) -> String {
        format!("{}content/{hash}", self.prefix)
    }
    pub fn content_refs(&self, hash: &str) -> String {
        format!("{}content-refs/{hash}/", self.prefix)
    }
    pub fn content_ref(&self, hash: &str, unit: &str) -> String {
        format!("{}content-refs/{hash}/{unit}", self.prefix)
    }
    pub fn schedule(&self) -> String {
        format!("{}schedule/", self.prefix)
    }
    pub fn machine_schedule(&self, machine: &str) -> String {
        format!("{}schedule/{machine}/", self.prefix)
    }
    pub fn scheduled(&self, machine: &str, unit: &str) -> String {
        format!("{}schedule/{machine}/{unit}", self.prefix)
    }
    pub fn placements(&self) -> String {
        format!("{}placement/", self.prefix)
    }
    pub fn unit_placements(&self, unit: &str) -> String {
        format!("{}placement/{unit}/", self.prefix)
    }
    pub fn placement(&self, unit: &str, machine: &str) -> String {
        format!("{}placement/{unit}/{machine}", self.prefix)
    }
    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }
    pub fn unit_states(&self, unit: &str) -> String {
        format!("{}states/{unit}/", self.prefix)
    }
    pub fn state(&self, unit: &str, machine: &str) -> String {
        format!("{}states/{unit}/{machine}", self.prefix)
    }
    pub fn engine_leader(&self) -> String {
        format!("{}engine/leader", self.prefix)
    }

    /// The last path segment of `key` after `dir` (e.g. the unit of a state
    /// key after `unit_states`); `None` when `key` is not directly under it.
    pub fn child<'a>(&self, dir: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(dir).filter(|rest| !rest.is_empty() && !rest.contains('/'))
    }

    /// The two segments of `key` after `dir` (`<a>/<b>`).
    pub fn children<'a>(&self, dir: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(dir)?;
        let (a, b) = rest.split_once('/')?;
        (!a.is_empty() && !b.is_empty() && !b.contains('/')).then_some((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_gets_a_trailing_slash() {
        assert_eq!(Keys::new("/x").machine("m1"), "/x/machines/m1");
        assert_eq!(Keys::new("/x/").machine("m1"), "/x/machines/m1");
    }

    #[test]
    fn children_split_two_segments() {
        let keys = Keys::new("/p/");
        let key = keys.state("a.service", "m1");
        assert_eq!(keys.children(&keys.states(), &key), Some(("a.service", "m1")));
        assert_eq!(keys.child(&keys.units(), &keys.unit("a.service")), Some("a.service"));
        assert_eq!(keys.child(&keys.units(), "/p/units/a/b"), None);
    }
}
