//! Host key checking with the original's prompt (Documentation/compatibility.md,
//! "fleetctl SSH"), on top of
//! OpenSSH.
//!
//! OpenSSH does the checking: masters run with
//! `StrictHostKeyChecking=yes` and `UserKnownHostsFile=<--known-hosts-file>`
//! (`BatchMode`, so it never prompts itself). When it refuses a host,
//! [`classify_failure`] tells a changed key (OpenSSH has printed its
//! "REMOTE HOST IDENTIFICATION HAS CHANGED" banner into the error, which we
//! show, with an MD5 fingerprint because we set `FingerprintHash md5`) from an
//! unknown host. For an unknown host, [`probe_host_key`] learns the key the
//! host presents by connecting once more with `StrictHostKeyChecking=accept-new`
//! into an empty scratch file and **no authentication methods**, so nothing
//! is sent to an unverified host. The user is then asked the original's
//! question; `yes` appends OpenSSH's line for the host to the known hosts
//! file ([`append_entries`]: dir 0700, file 0644) and the connection is made
//! again under strict checking.
//!
//! Differences from the original, all in OpenSSH's favour: hashed entries and
//! `@cert-authority`/`@revoked` markers are honoured (the original skipped
//! them); the host key algorithm preference is OpenSSH's (which also prefers
//! algorithms already known for the host).

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::Stdio;

use crate::ssh::{Destination, SshError};

/// What an OpenSSH connection failure was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The host's key differs from the known one.
    HostKeyChanged,
    /// No key is known for the host (strict checking refused it).
    HostKeyUnknown,
    /// Anything else (network, authentication, ...).
    Other,
}

/// Classifies OpenSSH's error output.
pub fn classify_failure(ssh_stderr: &str) -> Failure {
    if ssh_stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || ssh_stderr.contains("has changed and you have requested strict checking")
    {
        Failure::HostKeyChanged
    } else if ssh_stderr.contains("Host key verification failed") {
        Failure::HostKeyUnknown
    } else {
        Failure::Other
    }
}

/// A host key learned from the host itself, not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedKey {
    /// OpenSSH's known hosts lines for the host (`<name> <type> <base64>`).
    pub lines: Vec<String>,
    /// `ED25519`, `RSA`, `ECDSA`, ... as OpenSSH names it.
    pub algorithm: String,
    /// `aa:bb:...`, the MD5 fingerprint the original showed.
    pub md5: String,
}

/// Parses `ssh-keygen -l -E md5 -f FILE` output:
/// `256 MD5:aa:bb:... 10.0.0.1 (ED25519)` into (algorithm, fingerprint).
pub fn parse_fingerprint(ssh_keygen_output: &str) -> Option<(String, String)> {
    let line = ssh_keygen_output.lines().find(|l| !l.trim().is_empty())?;
    let mut fields = line.split_whitespace();
    let _bits = fields.next()?;
    let fingerprint = fields.next()?;
    let md5 = fingerprint.strip_prefix("MD5:").unwrap_or(fingerprint);
    let algorithm = fields.next_back()?.strip_prefix('(')?.strip_suffix(')')?;
    Some((algorithm.to_owned(), md5.to_owned()))
}

/// The original's question for an unknown host.
pub fn question(host: &str, algorithm: &str, md5: &str) -> String {
    format!(
        "The authenticity of host '{host}' can't be established.\n{algorithm} key fingerprint is {md5}.\nAre you sure you want to continue connecting (yes/no)? "
    )
}

/// `yes` or `y`, any case, surrounding white space ignored.
pub fn is_yes(answer: &str) -> bool {
    let answer = answer.trim();
    answer.eq_ignore_ascii_case("yes") || answer.eq_ignore_ascii_case("y")
}

/// Where the question goes and the answer comes from.
pub trait Prompt {
    /// Shows `question` and returns whether the answer is yes. No answer
    /// (end of input) is no.
    fn confirm(&mut self, question: &str) -> bool;
    /// Shows a line (warnings).
    fn say(&mut self, line: &str);
}

/// stderr and stdin, like the original.
pub struct Terminal;

impl Prompt for Terminal {
    fn confirm(&mut self, question: &str) -> bool {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(question.as_bytes());
        let _ = stderr.flush();
        let mut answer = String::new();
        match std::io::stdin().lock().read_line(&mut answer) {
            Ok(0) | Err(_) => false,
            Ok(_) => is_yes(&answer),
        }
    }

    fn say(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// Appends `lines` to the known hosts file, creating its directory (0700)
/// and the file (0644) as the original did.
///
/// # Errors
/// The directory or file cannot be created or written.
pub fn append_entries(known_hosts_file: &Path, lines: &[String]) -> std::io::Result<()> {
    if let Some(dir) = known_hosts_file.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A file not ending in a newline would glue our entry to its last line.
    let needs_newline = std::fs::read(known_hosts_file)
        .map(|bytes| bytes.last().is_some_and(|last| *last != b'\n'))
        .unwrap_or(false);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(known_hosts_file)?;
    let mut text = String::new();
    if needs_newline {
        text.push('\n');
    }
    for line in lines {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    file.write_all(text.as_bytes())
}

/// Learns the key `destination` presents, without authenticating: `ssh`
/// with `base_args` (the connection's config file and options),
/// `accept-new` into the empty file `scratch`, and every authentication
/// method off.
///
/// # Errors
/// [`SshError::Connect`] with OpenSSH's message when no key was recorded
/// (the host is unreachable, or it is not an SSH server).
pub async fn probe_host_key(
    base_args: &[OsString],
    destination: &Destination,
    scratch: &Path,
) -> Result<ProbedKey, SshError> {
    std::fs::write(scratch, b"").map_err(|e| SshError::io("creating a scratch file", e))?;
    let mut known_hosts = OsString::from("UserKnownHostsFile=");
    known_hosts.push(scratch);
    let output = tokio::process::Command::new("ssh")
        .args(base_args)
        .arg("-o")
        .arg(known_hosts)
        .args([
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "HostbasedAuthentication=no",
            "-o",
            "GSSAPIAuthentication=no",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ControlPath=none",
            "-p",
        ])
        .arg(destination.port.to_string())
        .arg("--")
        .arg(&destination.host)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| SshError::io("running ssh", e))?;
    let lines: Vec<String> = std::fs::read_to_string(scratch)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(SshError::Connect {
            detail: ssh_message(&String::from_utf8_lossy(&output.stderr)),
        });
    }
    let keygen = tokio::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "md5", "-f"])
        .arg(scratch)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| SshError::io("running ssh-keygen", e))?;
    let stdout = String::from_utf8_lossy(&keygen.stdout);
    let (algorithm, md5) = parse_fingerprint(&stdout).ok_or_else(|| SshError::Connect {
        detail: format!(
            "cannot read the host key of {destination}: ssh-keygen said {:?}",
            format!("{stdout}{}", String::from_utf8_lossy(&keygen.stderr)).trim()
        ),
    })?;
    Ok(ProbedKey {
        lines,
        algorithm,
        md5,
    })
}

/// Asks whether to trust `key` for `destination`; on yes records it in
/// `known_hosts_file` and says so (the original's messages).
///
/// # Errors
/// [`SshError::HostKeyRejected`] on no (after printing "Host key
/// verification failed."), [`SshError::Io`] when the file cannot be written.
pub fn confirm_and_record(
    prompt: &mut dyn Prompt,
    destination: &Destination,
    key: &ProbedKey,
    known_hosts_file: &Path,
) -> Result<(), SshError> {
    let name = destination.known_hosts_name();
    if !prompt.confirm(&question(&name, &key.algorithm, &key.md5)) {
        prompt.say("Host key verification failed.");
        return Err(SshError::HostKeyRejected(name));
    }
    append_entries(known_hosts_file, &key.lines).map_err(|e| {
        SshError::io(
            format!(
                "writing the known hosts file {}",
                known_hosts_file.display()
            ),
            e,
        )
    })?;
    prompt.say(&format!(
        "Warning: Permanently added '{name}' ({}) to the list of known hosts.",
        key.algorithm
    ));
    Ok(())
}

/// OpenSSH's error output as one message: trimmed, CRLF made LF, the
/// `ssh: ` prefix dropped.
pub fn ssh_message(ssh_stderr: &str) -> String {
    let text = ssh_stderr.replace("\r\n", "\n");
    let text = text.trim();
    let text = text.strip_prefix("ssh: ").unwrap_or(text);
    if text.is_empty() {
        "ssh exited without saying why".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn failures_are_classified() {
        let unknown = "No ED25519 host key is known for 10.231.0.11 and you have requested strict checking.\r\nHost key verification failed.\r\n";
        assert_eq!(classify_failure(unknown), Failure::HostKeyUnknown);
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\nHost key for 10.231.0.11 has changed and you have requested strict checking.\r\nHost key verification failed.\r\n";
        assert_eq!(classify_failure(changed), Failure::HostKeyChanged);
        assert_eq!(
            classify_failure("ssh: connect to host 10.231.0.99 port 22: No route to host"),
            Failure::Other
        );
        assert_eq!(
            classify_failure("core@10.231.0.11: Permission denied (publickey)."),
            Failure::Other
        );
    }

    #[test]
    fn fingerprints_from_ssh_keygen() {
        assert_eq!(
            parse_fingerprint(
                "256 MD5:6e:2f:11:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66 10.231.0.11 (ED25519)\n"
            ),
            Some((
                "ED25519".to_owned(),
                "6e:2f:11:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66".to_owned()
            ))
        );
        assert_eq!(
            parse_fingerprint("3072 MD5:01:02 [h1]:2222 (RSA)"),
            Some(("RSA".to_owned(), "01:02".to_owned()))
        );
        assert_eq!(parse_fingerprint("not a key file"), None);
        assert_eq!(parse_fingerprint(""), None);
    }

    #[test]
    fn the_question_and_the_answers() {
        assert_eq!(
            question("10.0.0.1", "ED25519", "aa:bb"),
            "The authenticity of host '10.0.0.1' can't be established.\nED25519 key fingerprint is aa:bb.\nAre you sure you want to continue connecting (yes/no)? "
        );
        for yes in ["yes", "y", "YES", "Y\n", " Yes \n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "no", "n", "yess", "ye", "\n"] {
            assert!(!is_yes(no), "{no:?}");
        }
    }

    /// Answers from a script and records what was shown.
    struct Scripted {
        answer: bool,
        shown: Vec<String>,
    }

    impl Prompt for Scripted {
        fn confirm(&mut self, question: &str) -> bool {
            self.shown.push(question.to_owned());
            self.answer
        }
        fn say(&mut self, line: &str) {
            self.shown.push(line.to_owned());
        }
    }

    fn probed() -> ProbedKey {
        ProbedKey {
            lines: vec!["[h1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey".to_owned()],
            algorithm: "ED25519".to_owned(),
            md5: "aa:bb".to_owned(),
        }
    }

    #[test]
    fn accepted_keys_are_appended_with_the_originals_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("new-dir").join("known_hosts");
        let destination = Destination::parse("h1:2222").unwrap();
        let mut prompt = Scripted {
            answer: true,
            shown: vec![],
        };
        confirm_and_record(&mut prompt, &destination, &probed(), &file).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "[h1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(mode(&file), 0o644);
        assert_eq!(
            prompt.shown,
            [
                question("[h1]:2222", "ED25519", "aa:bb"),
                "Warning: Permanently added '[h1]:2222' (ED25519) to the list of known hosts."
                    .to_owned()
            ]
        );

        // A file without a final newline keeps its last entry intact.
        std::fs::write(&file, "h0 ssh-ed25519 AAAAold").unwrap();
        append_entries(&file, &probed().lines).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "h0 ssh-ed25519 AAAAold\n[h1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey\n"
        );
    }

    #[test]
    fn refused_keys_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let destination = Destination::parse("10.0.0.1").unwrap();
        let mut prompt = Scripted {
            answer: false,
            shown: vec![],
        };
        let error = confirm_and_record(&mut prompt, &destination, &probed(), &file).unwrap_err();
        assert!(matches!(error, SshError::HostKeyRejected(ref h) if h == "10.0.0.1"));
        assert!(!file.exists());
        assert_eq!(
            prompt.shown.last().unwrap(),
            "Host key verification failed."
        );
    }

    #[test]
    fn ssh_messages_are_tidied() {
        assert_eq!(
            ssh_message("ssh: connect to host h port 22: Connection refused\r\n"),
            "connect to host h port 22: Connection refused"
        );
        assert_eq!(ssh_message(""), "ssh exited without saying why");
    }
}
