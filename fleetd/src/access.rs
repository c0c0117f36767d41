//! Who may do what on the API: roles, identities, the access file and the
//! `Host` check. Pure: no I/O except [`AccessPolicy::load`], no clock.
//!
//! A request arrives over a [`Transport`] (the unix socket, plaintext TCP or
//! TLS, with the client certificate's common name when one was presented).
//! [`decide`] turns the transport, the request's bearer token, method, path
//! and `Host` into a [`Decision`]: allowed as an [`Identity`] with a [`Role`],
//! or refused with the status and message the client sees.
//!
//! - The unix socket is guarded by its file mode and group; a caller there is
//!   `admin`.
//! - Plaintext TCP is only started on loopback (or with `api_insecure_tcp`);
//!   a caller there is `admin` like a local socket user, but a plaintext
//!   loopback listener answers 421 to a `Host` that is not a loopback name,
//!   so a web page cannot reach it through DNS rebinding.
//! - TLS requires credentials: a bearer token (checked first, when sent) or a
//!   client certificate whose common name the access file maps to a role.
//!   No credentials is a 401; a known identity without the needed role, or a
//!   certificate name without a role, is a 403.
//!
//! Roles are ordered: `read` (every GET but a unit's logs) < `operate` (also
//! a unit's logs, PUT and DELETE of units, and `POST /fleet/x1/units`, many
//! unit PUTs at once; i.e. units and their desired state) < `admin`
//! (everything, such as machine metadata). `peer` is apart:
//! the identity of another fleetd, allowed only on the peer paths
//! (`/fleet/x1/peer/`), which the users' roles other than `admin` are not.
//! The access file format is documented in `Documentation/security.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use http::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an identity may do; a higher role includes the lower ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Another fleetd forwarding a logs or status request: the peer paths
    /// only. Lowest, so it passes no check meant for the users' roles.
    Peer,
    /// Every GET but a unit's logs.
    Read,
    /// Units and their desired state: PUT and DELETE on units.
    Operate,
    /// Everything, including machine metadata.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a connection reached the API; set once per connection by the listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The unix socket: its file mode and group decide who connects.
    UnixSocket,
    /// Plaintext TCP; `loopback` when the listener's address is loopback.
    PlainTcp { loopback: bool },
    /// TLS, with the subject common name of the client certificate when the
    /// client presented one (verified against `api_tls_client_ca_file`).
    Tls { client_name: Option<String> },
}

/// Who made a request, as the audit log names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A caller on the unix socket.
    UnixSocket,
    /// A caller on a plaintext TCP listener (no credentials exist there).
    PlainTcp,
    /// A client certificate's subject common name.
    Certificate(String),
    /// The name the access file gives a bearer token.
    Token(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::UnixSocket => f.write_str("unix-socket"),
            Identity::PlainTcp => f.write_str("plaintext-tcp"),
            Identity::Certificate(name) => write!(f, "cert:{name}"),
            Identity::Token(name) => write!(f, "token:{name}"),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        identity: Identity,
        role: Role,
    },
    /// Refused: the status (401, 403 or 421) and the message of the API's
    /// error entity; `identity` when the caller was recognised.
    Deny {
        status: StatusCode,
        message: String,
        identity: Option<Identity>,
    },
}

/// One bearer token of the access file: a name for the logs and its role.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
}

/// The access file (`api_access_file`): certificate names and token hashes
/// mapped to roles. Only hashes of tokens are stored, never a token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Certificate common name → role.
    roles: BTreeMap<String, Role>,
    /// SHA-256 of a token → its entry.
    tokens: Vec<([u8; 32], TokenEntry)>,
}

/// The access file as TOML; converted by [`AccessPolicy::parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    roles: BTreeMap<String, Role>,
    #[serde(default)]
    tokens: BTreeMap<String, TokenEntry>,
}

/// Why an access file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileError {
    #[error("cannot read the access file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("access file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The prefix of a token key in the access file.
const TOKEN_HASH_PREFIX: &str = "sha256:";

impl AccessPolicy {
    /// Reads and parses the access file at `path`.
    ///
    /// # Errors
    /// An unreadable file or [`AccessPolicy::parse`]'s errors, naming the path.
    pub fn load(path: &Path) -> Result<AccessPolicy, AccessFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AccessPolicy::parse(&text).map_err(|message| AccessFileError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses the TOML text of an access file.
    ///
    /// # Errors
    /// TOML syntax, an unknown table or key, a role other than `read`,
    /// `operate` or `admin`, or a token key that is not `sha256:` and 64 hex
    /// digits.
    pub fn parse(text: &str) -> Result<AccessPolicy, String> {
        let file: AccessFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for (key, entry) in file.tokens {
            let hash = parse_token_hash(&key).ok_or_else(|| {
                format!(
                    "token key {key:?} is not \"sha256:\" followed by the 64 hex digits of the token's SHA-256 \
                     (make it with: printf %s \"$TOKEN\" | sha256sum)"
                )
            })?;
            tokens.push((hash, entry));
        }
        Ok(AccessPolicy {
            roles: file.roles,
            tokens,
        })
    }

    /// The role of a certificate common name, if the file gives it one.
    pub fn certificate_role(&self, name: &str) -> Option<Role> {
        self.roles.get(name).copied()
    }

    /// The entry of a bearer token, if its hash is in the file. Every entry
    /// is compared in constant time, so timing tells nothing about the hashes.
    pub fn token(&self, token: &str) -> Option<&TokenEntry> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (known, entry) in &self.tokens {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found
    }
}

fn parse_token_hash(key: &str) -> Option<[u8; 32]> {
    let hex_digits = key.strip_prefix(TOKEN_HASH_PREFIX)?;
    let bytes = hex::decode(hex_digits).ok()?;
    bytes.try_into().ok()
}

/// The path prefix another fleetd calls to read a unit's logs and status
/// on the machine that runs it.
pub const PEER_PATH_PREFIX: &str = "/fleet/x1/peer/";

/// Whether `path` is a unit's journal (`/fleet/x1/units/<unit>/logs`).
fn is_unit_logs(path: &str) -> bool {
    path.strip_prefix("/fleet/x1/units/")
        .and_then(|rest| rest.strip_suffix("/logs"))
        .is_some_and(|unit| !unit.is_empty() && !unit.contains('/'))
}

/// The role a request needs: a unit's logs operate (journals carry what
/// services print, secrets included, which `read` should not see); other
/// GETs (and HEAD) read; PUT and DELETE of a unit operate; anything else
/// (machine metadata, unknown methods) admin. The peer paths need `peer`,
/// which [`decide`] matches exactly (or `admin`).
pub fn required_role(method: &Method, path: &str) -> Role {
    if path.starts_with(PEER_PATH_PREFIX) {
        return Role::Peer;
    }
    if *method == Method::GET || *method == Method::HEAD {
        if is_unit_logs(path) {
            return Role::Operate;
        }
        return Role::Read;
    }
    let is_unit = ["/fleet/v1/units/", "/v1-alpha/units/"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if is_unit && (*method == Method::PUT || *method == Method::DELETE) {
        return Role::Operate;
    }
    // Many unit PUTs in one request: the role of a unit PUT.
    if path == fleet_api::server::BATCH_UNITS_PATH && *method == Method::POST {
        return Role::Operate;
    }
    Role::Admin
}

/// Whether a request changes something (and so goes to the audit log).
pub fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What [`decide`] reads from one request.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The `Host` header, if any.
    pub host: Option<&'a str>,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
}

/// Decides one request. `policy` is the access file, `None` when
/// `api_access_file` is not set (then TLS callers have no role at all).
pub fn decide(
    policy: Option<&AccessPolicy>,
    transport: &Transport,
    request: RequestFacts,
) -> Decision {
    let (identity, role) = match transport {
        Transport::UnixSocket => (Identity::UnixSocket, Role::Admin),
        Transport::PlainTcp { loopback } => {
            if let Some(host) = request.host
                && *loopback
                && !is_loopback_host(host)
            {
                return deny(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!(
                        "this plaintext API listener only answers requests addressed to a loopback \
                         name (localhost, 127.0.0.1, [::1]), not Host {host:?}"
                    ),
                    None,
                );
            }
            (Identity::PlainTcp, Role::Admin)
        }
        Transport::Tls { client_name } => {
            match tls_identity(policy, client_name.as_deref(), request.authorization) {
                Ok(allowed) => allowed,
                Err(denied) => return denied,
            }
        }
    };
    let needed = required_role(request.method, request.path);
    // A peer may call the peer paths only; of the users, only admin may.
    let allowed = match needed {
        Role::Peer => matches!(role, Role::Peer | Role::Admin),
        _ => role >= needed,
    };
    if !allowed {
        let message = format!(
            "{identity} has role {role}; {} {} needs role {needed}",
            request.method, request.path
        );
        return deny(StatusCode::FORBIDDEN, message, Some(identity));
    }
    Decision::Allow { identity, role }
}

/// The identity and role of a TLS caller: the bearer token when one is sent,
/// else the client certificate's name.
fn tls_identity(
    policy: Option<&AccessPolicy>,
    client_name: Option<&str>,
    authorization: Option<&str>,
) -> Result<(Identity, Role), Decision> {
    let empty = AccessPolicy::default();
    let policy = policy.unwrap_or(&empty);
    if let Some(header) = authorization {
        let Some(token) = bearer_token(header) else {
            return Err(deny(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be \"Bearer <token>\"".to_owned(),
                None,
            ));
        };
        return match policy.token(token) {
            Some(entry) => Ok((Identity::Token(entry.name.clone()), entry.role)),
            None => Err(deny(
                StatusCode::UNAUTHORIZED,
                "unknown bearer token (its sha256 is not in the API access file)".to_owned(),
                None,
            )),
        };
    }
    let Some(name) = client_name else {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "credentials required: present a client certificate signed by the API's CA, or \
             Authorization: Bearer <token>"
                .to_owned(),
            None,
        ));
    };
    let identity = Identity::Certificate(name.to_owned());
    match policy.certificate_role(name) {
        Some(role) => Ok((identity, role)),
        None => Err(deny(
            StatusCode::FORBIDDEN,
            format!(
                "{identity} has no role: add it under [roles] in the API access file (api_access_file)"
            ),
            Some(identity),
        )),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), if well formed.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn deny(status: StatusCode, message: String, identity: Option<Identity>) -> Decision {
    Decision::Deny {
        status,
        message,
        identity,
    }
}

/// Whether a `Host` header names this machine's loopback: `localhost`, a
/// name under `.localhost` (which resolvers must answer with loopback), or a
/// loopback address, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((address, _)) => address,
            None => return false,
        }
    } else if host.parse::<IpAddr>().is_ok() {
        host
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    if let Ok(address) = name.parse::<IpAddr>() {
        return address.is_loopback();
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "test".
    const TEST_TOKEN_HASH: &str =
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn policy() -> AccessPolicy {
        AccessPolicy::parse(&format!(
            r#"
[roles]            # certificate common name = role
ops-admin = "admin"
ops-reader = "read"
[tokens]           # "sha256:<hex of the token>" = {{ name = "...", role = "..." }}
"sha256:{TEST_TOKEN_HASH}" = {{ name = "ci", role = "operate" }}
"#
        ))
        .expect("the documented simplest form parses")
    }

    fn facts<'a>(method: &'a Method, path: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            host: Some("fleet.example.com:49153"),
            authorization: None,
        }
    }

    fn tls(name: Option<&str>) -> Transport {
        Transport::Tls {
            client_name: name.map(str::to_owned),
        }
    }

    fn status(decision: &Decision) -> Option<StatusCode> {
        match decision {
            Decision::Allow { .. } => None,
            Decision::Deny { status, .. } => Some(*status),
        }
    }

    #[test]
    fn the_simplest_access_file_parses() {
        let policy = policy();
        assert_eq!(policy.certificate_role("ops-admin"), Some(Role::Admin));
        assert_eq!(policy.certificate_role("ops-reader"), Some(Role::Read));
        assert_eq!(policy.certificate_role("nobody"), None);
        let entry = policy.token("test").expect("the token's hash is known");
        assert_eq!((entry.name.as_str(), entry.role), ("ci", Role::Operate));
        assert_eq!(policy.token("tes"), None);
        assert_eq!(
            AccessPolicy::parse("").expect("empty file"),
            AccessPolicy::default()
        );
    }

    #[test]
    fn bad_access_files_are_refused_with_the_reason() {
        for (text, expected) in [
            ("[roles]\na = \"root\"\n", "unknown variant `root`"),
            (
                "[tokens]\n\"test\" = { name = \"x\", role = \"read\" }\n",
                "is not \"sha256:\"",
            ),
            (
                "[tokens]\n\"sha256:abcd\" = { name = \"x\", role = \"read\" }\n",
                "64 hex digits",
            ),
            (
                "[tokens]\n\"sha256:zz\" = { name = \"x\" }\n",
                "missing field `role`",
            ),
            ("[users]\na = \"read\"\n", "unknown field `users`"),
            ("[roles\n", "TOML parse error"),
        ] {
            let error = AccessPolicy::parse(text).expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn roles_needed_by_requests() {
        let cases = [
            (Method::GET, "/fleet/v1/units", Role::Read),
            (Method::GET, "/fleet/v1/machines", Role::Read),
            (Method::GET, "/metrics", Role::Read),
            (Method::PUT, "/fleet/v1/units/a.service", Role::Operate),
            (Method::POST, "/fleet/x1/units", Role::Operate),
            (Method::PUT, "/fleet/x1/units", Role::Admin),
            (Method::DELETE, "/v1-alpha/units/a.service", Role::Operate),
            (Method::PATCH, "/fleet/v1/machines", Role::Admin),
            (Method::PUT, "/fleet/v1/machines", Role::Admin),
            (Method::POST, "/fleet/v1/units/a.service", Role::Admin),
            (Method::DELETE, "/fleet/v1/unitsX", Role::Admin),
            (Method::GET, "/fleet/x1/units/a.service/status", Role::Read),
            (Method::GET, "/fleet/x1/units/a.service/logs", Role::Operate),
            (Method::GET, "/fleet/x1/units/a/b/logs", Role::Read),
            (
                Method::GET,
                "/fleet/x1/peer/units/a.service/logs",
                Role::Peer,
            ),
            (
                Method::GET,
                "/fleet/x1/peer/units/a.service/status",
                Role::Peer,
            ),
        ];
        for (method, path, role) in cases {
            assert_eq!(required_role(&method, path), role, "{method} {path}");
        }
        assert!(is_mutating(&Method::PATCH) && !is_mutating(&Method::GET));
    }

    /// A peer certificate reads logs and status on the peer paths and
    /// nothing else; of the users' roles only admin reaches the peer paths.
    #[test]
    fn peers_reach_the_peer_paths_only() {
        let policy = AccessPolicy::parse(
            "[roles]\nfleet-peer = \"peer\"\nops = \"operate\"\nroot = \"admin\"\n",
        )
        .expect("peer is a role of the access file");
        let get = Method::GET;
        let peer_logs = "/fleet/x1/peer/units/a.service/logs";
        let decide_as = |name: &str, method: &Method, path: &str| {
            status(&decide(
                Some(&policy),
                &tls(Some(name)),
                facts(method, path),
            ))
        };
        assert_eq!(decide_as("fleet-peer", &get, peer_logs), None);
        assert_eq!(decide_as("root", &get, peer_logs), None);
        assert_eq!(
            decide_as("ops", &get, peer_logs),
            Some(StatusCode::FORBIDDEN)
        );
        for (method, path) in [
            (&get, "/fleet/v1/units"),
            (&get, "/fleet/x1/units/a.service/logs"),
            (&Method::PUT, "/fleet/v1/units/a.service"),
        ] {
            assert_eq!(
                decide_as("fleet-peer", method, path),
                Some(StatusCode::FORBIDDEN),
                "{method} {path}"
            );
        }
        assert_eq!(
            decide_as("ops", &get, "/fleet/x1/units/a.service/logs"),
            None
        );
    }

    #[test]
    fn certificates_get_their_role_and_no_more() {
        let policy = policy();
        let get = Method::GET;
        let put = Method::PUT;
        let reader = decide(
            Some(&policy),
            &tls(Some("ops-reader")),
            facts(&get, "/fleet/v1/units"),
        );
        assert_eq!(
            reader,
            Decision::Allow {
                identity: Identity::Certificate("ops-reader".into()),
                role: Role::Read
            }
        );
        let denied = decide(
            Some(&policy),
            &tls(Some("ops-reader")),
            facts(&put, "/fleet/v1/units/a.service"),
        );
        assert_eq!(status(&denied), Some(StatusCode::FORBIDDEN));
        let Decision::Deny { message, .. } = denied else {
            unreachable!()
        };
        assert_eq!(
            message,
            "cert:ops-reader has role read; PUT /fleet/v1/units/a.service needs role operate"
        );
        let admin = decide(
            Some(&policy),
            &tls(Some("ops-admin")),
            facts(&Method::PATCH, "/fleet/v1/machines"),
        );
        assert_eq!(status(&admin), None);
    }

    #[test]
    fn a_certificate_without_a_role_is_forbidden() {
        let get = Method::GET;
        for policy in [Some(policy()), None] {
            let decision = decide(
                policy.as_ref(),
                &tls(Some("stranger")),
                facts(&get, "/fleet/v1/units"),
            );
            assert_eq!(status(&decision), Some(StatusCode::FORBIDDEN));
        }
    }

    #[test]
    fn no_credentials_on_tls_is_unauthorized() {
        let get = Method::GET;
        let decision = decide(Some(&policy()), &tls(None), facts(&get, "/fleet/v1/units"));
        assert_eq!(status(&decision), Some(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn bearer_tokens() {
        let policy = policy();
        let put = Method::PUT;
        let with = |authorization| RequestFacts {
            authorization: Some(authorization),
            ..facts(&put, "/fleet/v1/units/a.service")
        };
        assert_eq!(
            decide(Some(&policy), &tls(None), with("Bearer test")),
            Decision::Allow {
                identity: Identity::Token("ci".into()),
                role: Role::Operate
            }
        );
        // The token wins over a certificate without a role.
        assert_eq!(
            status(&decide(
                Some(&policy),
                &tls(Some("stranger")),
                with("bearer  test")
            )),
            None
        );
        for bad in ["Bearer nope", "Basic dGVzdA==", "Bearer", "test"] {
            let decision = decide(Some(&policy), &tls(None), with(bad));
            assert_eq!(status(&decision), Some(StatusCode::UNAUTHORIZED), "{bad}");
        }
        // An operate token cannot change machine metadata.
        let patch = Method::PATCH;
        let decision = decide(
            Some(&policy),
            &tls(None),
            RequestFacts {
                authorization: Some("Bearer test"),
                ..facts(&patch, "/fleet/v1/machines")
            },
        );
        assert_eq!(status(&decision), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn the_unix_socket_and_plaintext_are_admin() {
        let patch = Method::PATCH;
        let request = RequestFacts {
            host: Some("127.0.0.1:49153"),
            ..facts(&patch, "/fleet/v1/machines")
        };
        for transport in [
            Transport::UnixSocket,
            Transport::PlainTcp { loopback: true },
        ] {
            assert_eq!(
                status(&decide(None, &transport, request)),
                None,
                "{transport:?}"
            );
        }
        // The socket has no Host to check.
        assert_eq!(
            status(&decide(
                None,
                &Transport::UnixSocket,
                facts(&patch, "/fleet/v1/machines")
            )),
            None
        );
    }

    #[test]
    fn plaintext_loopback_refuses_foreign_hosts() {
        let get = Method::GET;
        let loopback = Transport::PlainTcp { loopback: true };
        let decision = decide(None, &loopback, facts(&get, "/fleet/v1/units"));
        assert_eq!(status(&decision), Some(StatusCode::MISDIRECTED_REQUEST));
        let no_host = RequestFacts {
            host: None,
            ..facts(&get, "/fleet/v1/units")
        };
        assert_eq!(status(&decide(None, &loopback, no_host)), None);
        // An insecure non-loopback listener has no name to check against.
        let open = Transport::PlainTcp { loopback: false };
        assert_eq!(
            status(&decide(None, &open, facts(&get, "/fleet/v1/units"))),
            None
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:49153",
            "localhost.",
            "fleet.localhost:80",
            "127.0.0.1",
            "127.1.2.3:49153",
            "[::1]",
            "[::1]:49153",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:49153",
            "localhost.example.com",
            "[::2]:80",
            "[::1",
            "",
            "127.0.0.1.nip.io",
            "0.0.0.0:49153",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
