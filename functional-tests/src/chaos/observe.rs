//! Watching systemd in a host from outside: one `systemctl show` per host per tick.
//!
//! The suite judges fleet by what systemd runs, never by fleet's own view. One call per host
//! lists every loaded unit whose name starts with the workload's prefix, with its active state
//! and main PID, so 5 hosts × 300 units cost 5 short processes a tick. A frozen host's systemd
//! cannot answer: the call is bounded by `timeout` inside the host (the command runs outside
//! the host's cgroup, so it is not frozen itself) and by another outside it, and such a host
//! reads as unobservable.

use std::process::{Command, Stdio};

use super::ledger::HostUnits;
use crate::{STATE_DIR, bin_dir, workspace_root};

/// How long systemd in a host gets to answer one tick's question.
const ANSWER_SECONDS: &str = "4";

/// The active units named `<prefix>*` in `host` with their main PIDs, or `None` if the host
/// is down, frozen or otherwise unable to answer.
pub fn host_units(host: &str, prefix: &str) -> Option<HostUnits> {
    let pattern = format!("{prefix}*");
    let output = Command::new("timeout")
        .args(["-k", "1", "8"])
        .arg(workspace_root().join("scripts").join("testhosts.sh"))
        .args(["exec", host, "timeout", ANSWER_SECONDS, "systemctl", "show"])
        .args(["-p", "Id,ActiveState,MainPID", "--", &pattern])
        .env("FLEET_TESTHOSTS_DIR", STATE_DIR)
        .env("FLEET_BINDIR", bin_dir())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(parse_show(&String::from_utf8_lossy(&output.stdout)))
}

/// Parses `systemctl show -p Id,ActiveState,MainPID` of many units (blocks of `Key=value`
/// lines separated by blank lines, keys in any order) into the active ones with a main PID.
pub fn parse_show(text: &str) -> HostUnits {
    let mut units = HostUnits::new();
    for block in text.split("\n\n") {
        let (mut id, mut active, mut pid) = (None, false, 0u32);
        for line in block.lines() {
            match line.split_once('=') {
                Some(("Id", value)) => id = Some(value.trim()),
                Some(("ActiveState", value)) => active = value.trim() == "active",
                Some(("MainPID", value)) => pid = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        if let Some(id) = id
            && active
            && pid != 0
        {
            units.insert(id.to_string(), pid);
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_units_with_a_main_pid_count() {
        let text = "MainPID=120\nId=c-a.service\nActiveState=active\n\n\
                    Id=c-b.service\nActiveState=inactive\nMainPID=0\n\n\
                    Id=c-c.service\nActiveState=deactivating\nMainPID=140\n\n\
                    ActiveState=active\nMainPID=0\nId=c-d.service\n\n\
                    Id=c-e@1.service\nActiveState=active\nMainPID=notanumber\n\n\
                    Id=c-f@2.service\nActiveState=active\nMainPID=77\n";
        let units = parse_show(text);
        let expected: HostUnits = [
            ("c-a.service".to_string(), 120),
            ("c-f@2.service".to_string(), 77),
        ]
        .into_iter()
        .collect();
        assert_eq!(units, expected);
    }

    #[test]
    fn nothing_loaded_is_an_empty_host() {
        assert!(parse_show("").is_empty());
    }
}
