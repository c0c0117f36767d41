//! The `/etc/fleet/fleet.conf` that `fleetctl enrol` writes, and the checks on
//! what goes into it. Pure: unit-tested without a host.
//!
//! The file is rendered whole from the command line (and the machine's etcd
//! credential), so running enrol again with the same options renders the same
//! bytes and "nothing to do" is a byte comparison. Every value is checked to be
//! one plain token of fleetd's config dialect: no line breaks, no `#` or `;`
//! (which start a comment in an unquoted value), no quotes or backslashes.

use std::fmt;

/// The first line of a file enrol wrote.
pub const HEADER: &str =
    "# Written by fleetctl enrol; run it again to change this file (Documentation/deployment.md).";

/// A machine's own etcd user (made by `fleetd etcd-auth add-machine`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The `etcd_username=`/`etcd_password=` lines `add-machine` printed.
    pub fn from_lines(text: &str) -> Option<Credential> {
        let username = value_of(text, "etcd_username")?;
        let password = value_of(text, "etcd_password")?;
        (!username.is_empty() && !password.is_empty()).then_some(Credential { username, password })
    }
}

/// What the host's fleet.conf says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetConf {
    pub etcd_servers: Vec<String>,
    pub public_ip: Option<String>,
    pub metadata: Vec<(String, String)>,
    /// `--engine`: may run the engine (else `disable_engine=true`).
    pub engine: bool,
    pub credential: Option<Credential>,
    /// `--conf KEY=VALUE` lines, in order.
    pub extra: Vec<(String, String)>,
}

impl FleetConf {
    /// The file's bytes.
    pub fn render(&self) -> String {
        let mut text = format!("{HEADER}\netcd_servers={}\n", self.etcd_servers.join(","));
        if let Some(ip) = &self.public_ip {
            text.push_str(&format!("public_ip={ip}\n"));
        }
        if !self.metadata.is_empty() {
            let pairs: Vec<String> = self
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            text.push_str(&format!("metadata={}\n", pairs.join(",")));
        }
        if !self.engine {
            text.push_str("disable_engine=true\n");
        }
        if let Some(credential) = &self.credential {
            text.push_str(&format!(
                "etcd_username={}\netcd_password={}\n",
                credential.username, credential.password
            ));
        }
        for (key, value) in &self.extra {
            text.push_str(&format!("{key}={value}\n"));
        }
        text
    }
}

/// The value of the last top-level `key=value` line of a fleet.conf.
pub fn value_of(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(name, _)| name.trim() == key)
        .map(|(_, value)| value.trim().to_owned())
}

/// Whether a fleet.conf sets anything (the package's sample is all comments).
pub fn has_settings(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
}

/// Which lines differ between two files, by key (for "changed: ..."):
/// passwords are named, never shown.
pub fn changed_keys(old: &str, new: &str) -> Vec<String> {
    let keys = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    };
    let (old, new) = (keys(old), keys(new));
    let mut changed: Vec<String> = new
        .iter()
        .filter(|pair| !old.contains(pair))
        .chain(old.iter().filter(|pair| !new.contains(pair)))
        .map(|(key, _)| key.clone())
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

/// Why a value cannot go into fleet.conf.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("{what} {value:?}: {why}")]
    Bad {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

fn bad(what: &'static str, value: &str, why: &'static str) -> ConfError {
    ConfError::Bad {
        what,
        value: value.to_owned(),
        why,
    }
}

/// One plain token: printable ASCII without spaces, `#`, `;`, quotes,
/// backslashes, `,` or `=` (those separate metadata pairs).
fn is_token(value: &str, allow: &[char]) -> bool {
    !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_graphic()
                && !matches!(c, '#' | ';' | '"' | '\'' | '\\' | ',' | '=' | '`' | '$')
                || allow.contains(&c)
        })
}

/// `--metadata k=v,k2=v2`.
///
/// # Errors
/// A pair without `=`, an empty or unusual key or value, a repeated key.
pub fn parse_metadata(text: &str) -> Result<Vec<(String, String)>, ConfError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let (key, value) = pair
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("metadata", pair, "expected key=value"))?;
        if !is_token(key, &[]) || !is_token(value, &[]) {
            return Err(bad(
                "metadata",
                pair,
                "keys and values are plain words (no spaces, quotes, #, ;, $)",
            ));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(bad("metadata", pair, "the key is given twice"));
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

/// `--etcd-servers http://a:2379,https://b:2379`.
///
/// # Errors
/// No URL, or one that is not `http(s)://host:port`.
pub fn parse_etcd_servers(text: &str) -> Result<Vec<String>, ConfError> {
    let urls: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(bad(
            "etcd servers",
            text,
            "give at least one http(s)://host:port",
        ));
    }
    for url in &urls {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                bad(
                    "etcd server",
                    url,
                    "expected http://host:port or https://host:port",
                )
            })?;
        if !is_token(rest, &[]) || rest.contains('/') && !rest.ends_with('/') {
            return Err(bad(
                "etcd server",
                url,
                "expected http://host:port or https://host:port",
            ));
        }
    }
    Ok(urls)
}

/// `--conf KEY=VALUE`: one more fleet.conf line.
///
/// # Errors
/// A key that is not a fleet.conf option name, a key enrol writes itself, or
/// a value that is not one plain token.
pub fn parse_extra(text: &str) -> Result<(String, String), ConfError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad("--conf", text, "expected KEY=VALUE"))?;
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(bad(
            "--conf",
            text,
            "the key is a fleet.conf option (lower case, digits, _)",
        ));
    }
    const OWN: [&str; 6] = [
        "etcd_servers",
        "public_ip",
        "metadata",
        "disable_engine",
        "etcd_username",
        "etcd_password",
    ];
    if OWN.contains(&key) {
        return Err(bad(
            "--conf",
            text,
            "enrol writes this option from its own flags",
        ));
    }
    if !is_token(value, &[',', '=']) {
        return Err(bad(
            "--conf",
            text,
            "the value is one plain word (no spaces, quotes, #, ;, $)",
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> FleetConf {
        FleetConf {
            etcd_servers: vec![
                "http://10.0.0.1:2379".to_owned(),
                "http://10.0.0.2:2379".to_owned(),
            ],
            public_ip: Some("10.0.0.9".to_owned()),
            metadata: vec![
                ("region".to_owned(), "eu".to_owned()),
                ("disk".to_owned(), "ssd".to_owned()),
            ],
            engine: false,
            credential: None,
            extra: vec![("agent_ttl".to_owned(), "10s".to_owned())],
        }
    }

    #[test]
    fn the_file_is_rendered_whole_and_reads_back() {
        let text = conf().render();
        assert_eq!(
            text,
            format!(
                "{HEADER}\netcd_servers=http://10.0.0.1:2379,http://10.0.0.2:2379\npublic_ip=10.0.0.9\n\
                 metadata=region=eu,disk=ssd\ndisable_engine=true\nagent_ttl=10s\n"
            )
        );
        assert_eq!(
            value_of(&text, "metadata").as_deref(),
            Some("region=eu,disk=ssd")
        );
        assert_eq!(value_of(&text, "etcd_username"), None);
        let engine = FleetConf {
            engine: true,
            credential: Some(Credential {
                username: "fleet-machine-m1".to_owned(),
                password: "abc".to_owned(),
            }),
            ..conf()
        }
        .render();
        assert!(!engine.contains("disable_engine"));
        assert_eq!(
            Credential::from_lines(&engine),
            Some(Credential {
                username: "fleet-machine-m1".to_owned(),
                password: "abc".to_owned()
            })
        );
        assert!(!format!("{:?}", Credential::from_lines(&engine)).contains("abc"));
    }

    #[test]
    fn changes_are_named_by_key() {
        let old = conf().render();
        assert!(changed_keys(&old, &old).is_empty());
        assert!(has_settings(&old));
        assert!(!has_settings(
            "# a sample\n\n# etcd_servers=http://127.0.0.1:2379\n"
        ));
        let new = FleetConf {
            metadata: vec![("region".to_owned(), "us".to_owned())],
            credential: Some(Credential {
                username: "u".to_owned(),
                password: "p".to_owned(),
            }),
            ..conf()
        }
        .render();
        assert_eq!(
            changed_keys(&old, &new),
            vec!["etcd_password", "etcd_username", "metadata"]
        );
    }

    #[test]
    fn metadata_is_checked() {
        assert_eq!(
            parse_metadata("region=eu, disk=ssd").unwrap(),
            vec![
                ("region".to_owned(), "eu".to_owned()),
                ("disk".to_owned(), "ssd".to_owned())
            ]
        );
        assert_eq!(parse_metadata("").unwrap(), vec![]);
        for bad in [
            "region",
            "=eu",
            "a=b#c",
            "a=b;c",
            "a=\"b\"",
            "a=$(reboot)",
            "a=1,a=2",
            "a=b c",
        ] {
            assert!(parse_metadata(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn etcd_servers_are_urls() {
        assert_eq!(
            parse_etcd_servers("http://10.0.0.1:2379, https://e:2379").unwrap(),
            vec!["http://10.0.0.1:2379", "https://e:2379"]
        );
        for bad in [
            "",
            ",",
            "10.0.0.1:2379",
            "ftp://e:1",
            "http://e:1;reboot",
            "http://a b:1",
        ] {
            assert!(parse_etcd_servers(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn extra_lines_are_options_enrol_does_not_own() {
        assert_eq!(
            parse_extra("api_listen=unix:///run/f.sock,tcp://127.0.0.1:1").unwrap(),
            (
                "api_listen".to_owned(),
                "unix:///run/f.sock,tcp://127.0.0.1:1".to_owned()
            )
        );
        for bad in [
            "agent_ttl",
            "=1",
            "Agent=1",
            "metadata=a=b",
            "etcd_password=x",
            "a=b c",
            "a=$HOME",
            "a=",
        ] {
            assert!(parse_extra(bad).is_err(), "{bad:?} accepted");
        }
    }
}
