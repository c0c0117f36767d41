//! A survey of the etcd members: what each one says about its leader.
//!
//! Asked by fleetd's self-fencing when this machine's lease cannot be
//! renewed. etcd expires leases only while it has a leader, and a new leader
//! renews every lease for a full TTL when it takes office. So when every
//! member either answers "no leader" or is not running at all, no lease can
//! expire until etcd has a leader again, and nothing of this machine can be
//! moved: that is a quorum loss, not a partition of this machine. Members
//! that do not answer are taken as down (see [`Survey::cluster_is_leaderless`]
//! for the risk that accepts).
//!
//! The judgement ([`Survey::cluster_is_leaderless`]) is pure; the asking is
//! `Registry::survey` (each member's `Status`, which a member serves from
//! its own state, with or without a leader).

/// What one member said when surveyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberSeen {
    /// It answered and follows (or is) a leader.
    Led,
    /// It answered and has no leader: it can neither renew nor expire a lease.
    Leaderless,
    /// Its machine refused the connection: the member's process is not
    /// running there, so it leads nothing anywhere.
    Refused,
    /// No answer (timeout, no route, reset): it may be alive beyond a
    /// partition, with a leader.
    Unreachable(String),
}

/// Every member's answer to one survey, by URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    pub members: Vec<(String, MemberSeen)>,
}

impl Survey {
    /// Whether this survey shows etcd without a leader: at least one member
    /// answered "no leader" and none answered that it has one. Members that
    /// did not answer are taken as down (a quorum loss: killed or stopped
    /// members). The risk accepted: a machine cut off together with a
    /// minority of members, while the majority it cannot reach elects a
    /// leader, counts as leaderless too. A survey in which no member
    /// answers (this machine is cut off) never counts.
    pub fn cluster_is_leaderless(&self) -> bool {
        self.members
            .iter()
            .any(|(_, seen)| *seen == MemberSeen::Leaderless)
            && !self
                .members
                .iter()
                .any(|(_, seen)| *seen == MemberSeen::Led)
    }

    /// Whether some member answered at all (with or without a leader).
    pub fn any_answered(&self) -> bool {
        self.members
            .iter()
            .any(|(_, seen)| matches!(seen, MemberSeen::Led | MemberSeen::Leaderless))
    }
}

impl std::fmt::Display for Survey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (url, seen)) in self.members.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            match seen {
                MemberSeen::Led => write!(f, "{url}: has a leader")?,
                MemberSeen::Leaderless => write!(f, "{url}: no leader")?,
                MemberSeen::Refused => write!(f, "{url}: refused")?,
                MemberSeen::Unreachable(why) => write!(f, "{url}: unreachable ({why})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(members: &[MemberSeen], leaderless: bool) {
        let survey = Survey {
            members: members
                .iter()
                .enumerate()
                .map(|(index, seen)| (format!("http://m{index}"), seen.clone()))
                .collect(),
        };
        assert_eq!(survey.cluster_is_leaderless(), leaderless, "{survey}");
    }

    #[test]
    fn only_answers_without_a_leader_from_every_running_member_prove_a_leaderless_etcd() {
        use MemberSeen::*;
        let lost = || Unreachable("timeout".to_owned());
        // Quorum loss: two members killed, the third has no leader.
        check(&[Refused, Refused, Leaderless], true);
        check(&[Leaderless, Leaderless, Leaderless], true);
        // A partition of this machine: nobody answers.
        check(&[lost(), lost(), lost()], false);
        // Quorum loss where the dead members time out instead of refusing.
        check(&[Leaderless, lost(), lost()], true);
        // Every member refused: a stopped etcd or a rejecting firewall.
        check(&[Refused, Refused, Refused], false);
        // Someone leads: leases expire.
        check(&[Led, Leaderless, Refused], false);
        check(&[], false);
    }
}
