//! What enrol learns about a host before it changes anything, and whether the
//! host can run fleet. Pure: the host's answers (`key=value` lines from
//! [`CHECK_SCRIPT`]) are parsed and judged here, unit-tested without a host.

/// Read-only, as the SSH user: one `key=value` line per fact.
pub const CHECK_SCRIPT: &str = r#"
echo "pid1=$(cat /proc/1/comm 2>/dev/null)"
echo "systemd=$(systemctl --version 2>/dev/null | head -n 1)"
if busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId >/dev/null 2>&1; then echo bus=yes; else echo bus=no; fi
echo "arch=$(dpkg --print-architecture 2>/dev/null)"
echo "uid=$(id -u)"
if [ "$(id -u)" != 0 ] && sudo -n true >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi
echo "machine_id=$(cat /etc/machine-id 2>/dev/null)"
echo "fleet=$(dpkg-query -W -f='${Version} ${db:Status-Status}' fleet 2>/dev/null)"
if command -v curl >/dev/null 2>&1; then echo curl=yes; else echo curl=no; fi
"#;

/// The facts of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub pid1: String,
    /// systemd's version number, if `systemctl --version` answered.
    pub systemd: Option<u32>,
    pub bus: bool,
    /// Debian architecture (`amd64`, `arm64`); empty without dpkg.
    pub arch: String,
    pub root: bool,
    pub sudo: bool,
    pub machine_id: String,
    /// The installed fleet package's version, when it is installed.
    pub fleet_version: Option<String>,
    pub curl: bool,
}

impl HostFacts {
    pub fn parse(text: &str) -> HostFacts {
        let mut facts = HostFacts::default();
        for (key, value) in text.lines().filter_map(|line| line.split_once('=')) {
            let value = value.trim();
            match key {
                "pid1" => facts.pid1 = value.to_owned(),
                "systemd" => {
                    facts.systemd = value
                        .split_whitespace()
                        .nth(1)
                        .and_then(|version| version.parse().ok());
                }
                "bus" => facts.bus = value == "yes",
                "arch" => facts.arch = value.to_owned(),
                "uid" => facts.root = value == "0",
                "sudo" => facts.sudo = value == "yes",
                "machine_id" => facts.machine_id = value.to_owned(),
                "fleet" => {
                    // "<version> installed"; "config-files" and the like are not installed.
                    facts.fleet_version = value
                        .strip_suffix(" installed")
                        .filter(|version| !version.is_empty())
                        .map(str::to_owned);
                }
                "curl" => facts.curl = value == "yes",
                _ => {}
            }
        }
        facts
    }

    /// Whether root's commands run through `sudo -n`.
    pub fn needs_sudo(&self) -> bool {
        !self.root
    }

    /// Checks the host can run `package_arch` fleet; the one-line summary
    /// (`systemd 252, amd64, root`) or why not.
    ///
    /// # Errors
    /// The first fact that rules the host out, in words.
    pub fn judge(&self, package_arch: Option<&str>) -> Result<String, String> {
        if self.pid1 != "systemd" {
            return Err(format!(
                "systemd is not PID 1 (PID 1 is {:?}): fleet needs systemd as the init system",
                self.pid1
            ));
        }
        let Some(systemd) = self.systemd else {
            return Err("systemctl --version did not answer".to_owned());
        };
        if !self.bus {
            return Err(
                "the D-Bus system bus does not answer (is dbus installed and running?)".to_owned(),
            );
        }
        if self.arch.is_empty() {
            return Err("dpkg is missing: enrol installs a Debian package".to_owned());
        }
        if let Some(wanted) = package_arch
            && wanted != "all"
            && wanted != self.arch
        {
            return Err(format!(
                "wrong architecture: the package is {wanted}, the host is {}",
                self.arch
            ));
        }
        if !self.root && !self.sudo {
            return Err("the SSH user is not root and cannot sudo without a password".to_owned());
        }
        if self.machine_id.len() != 32 || !self.machine_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "/etc/machine-id holds no machine id ({:?})",
                self.machine_id
            ));
        }
        let who = if self.root { "root" } else { "sudo" };
        Ok(format!("systemd {systemd}, {}, {who}", self.arch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "pid1=systemd\nsystemd=systemd 252 (252.30-1~deb12u2)\nbus=yes\narch=amd64\nuid=0\nsudo=no\nmachine_id=0123456789abcdef0123456789abcdef\nfleet=\ncurl=yes\n";

    #[test]
    fn a_debian_host_is_read() {
        let facts = HostFacts::parse(GOOD);
        assert_eq!(facts.systemd, Some(252));
        assert!(facts.root && facts.bus && facts.curl && !facts.needs_sudo());
        assert_eq!(facts.fleet_version, None);
        assert_eq!(
            facts.judge(Some("amd64")),
            Ok("systemd 252, amd64, root".to_owned())
        );
        assert_eq!(
            facts.judge(Some("all")),
            Ok("systemd 252, amd64, root".to_owned())
        );
        let installed = HostFacts::parse(&GOOD.replace("fleet=\n", "fleet=0.1.0-1 installed\n"));
        assert_eq!(installed.fleet_version.as_deref(), Some("0.1.0-1"));
        let purged_conf =
            HostFacts::parse(&GOOD.replace("fleet=\n", "fleet=0.1.0-1 config-files\n"));
        assert_eq!(purged_conf.fleet_version, None);
    }

    #[test]
    fn hosts_that_cannot_run_fleet_are_refused_with_the_reason() {
        let judge = |from: &str, to: &str, arch: &str| {
            HostFacts::parse(&GOOD.replace(from, to))
                .judge(Some(arch))
                .unwrap_err()
        };
        assert!(judge("pid1=systemd", "pid1=init", "amd64").contains("systemd is not PID 1"));
        assert!(judge("bus=yes", "bus=no", "amd64").contains("D-Bus"));
        assert!(
            judge("arch=amd64", "arch=arm64", "amd64")
                .contains("wrong architecture: the package is amd64, the host is arm64")
        );
        assert!(judge("uid=0", "uid=1000", "amd64").contains("not root"));
        assert!(
            judge(
                "machine_id=0123456789abcdef0123456789abcdef",
                "machine_id=",
                "amd64"
            )
            .contains("machine id")
        );
        let sudo = HostFacts::parse(
            &GOOD
                .replace("uid=0", "uid=500")
                .replace("sudo=no", "sudo=yes"),
        );
        assert!(sudo.needs_sudo());
        assert_eq!(sudo.judge(None), Ok("systemd 252, amd64, sudo".to_owned()));
    }
}
