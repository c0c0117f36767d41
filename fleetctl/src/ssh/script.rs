//! Running a shell script on a machine with its input fed from here and its
//! output captured (for `fleetctl enrol` and `disenrol`, which drive a host
//! step by step over one verified [`Master`] connection).
//!
//! The script travels as one argument of `sh -c`, quoted for the remote
//! user's shell ([`sh_quote`]); secrets and files travel on stdin, never on
//! the command line, so they do not show in the host's process list. A file
//! is streamed over the SSH channel: the host needs no network access of its
//! own.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::ssh::SshError;
use crate::ssh::master::Master;

/// What the script reads on stdin.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Nothing,
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// A finished script: its exit status (255 when SSH failed) and output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Captured {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The last non-empty line of stderr (else stdout): what to show when the
    /// script failed.
    pub fn reason(&self) -> String {
        let last = |text: &str| {
            text.lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(|line| line.trim().to_owned())
        };
        last(&self.stderr)
            .or_else(|| last(&self.stdout))
            .unwrap_or_else(|| format!("exit status {}", self.code))
    }
}

/// `text` as one POSIX shell word: single-quoted, with `'` written as `'\''`.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The remote command line running `script` with `sh`, through `sudo -n`
/// (never prompting) when `sudo` is set.
pub fn sh_command_line(script: &str, sudo: bool) -> String {
    let sh = format!("sh -c {}", sh_quote(script));
    if sudo { format!("sudo -n {sh}") } else { sh }
}

impl Master {
    /// Runs `command_line` without a terminal, feeding it `input`, and
    /// returns its status and output.
    ///
    /// # Errors
    /// [`SshError::Io`] when `ssh` cannot be started, the input file cannot
    /// be read or the output cannot be collected.
    pub async fn run_with_input(
        &self,
        command_line: &str,
        input: Input<'_>,
    ) -> Result<Captured, SshError> {
        let mut child = self
            .through_master()
            .args(["-T", "--", "none"])
            .arg(command_line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SshError::io("running ssh", e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async move {
            let Some(mut stdin) = stdin else {
                return Ok(());
            };
            match input {
                Input::Nothing => {}
                Input::Bytes(bytes) => stdin.write_all(bytes).await?,
                Input::File(path) => {
                    let mut file = tokio::fs::File::open(path).await?;
                    tokio::io::copy(&mut file, &mut stdin).await?;
                }
            }
            stdin.shutdown().await
        };
        let (fed, out, err) = tokio::join!(feed, read_all(stdout), read_all(stderr));
        let out = out.map_err(|e| SshError::io("reading the output of ssh", e))?;
        let err = err.map_err(|e| SshError::io("reading the output of ssh", e))?;
        let status = child
            .wait()
            .await
            .map_err(|e| SshError::io("waiting for ssh", e))?;
        let code = status
            .code()
            .and_then(|code| u8::try_from(code & 0xff).ok())
            .unwrap_or(255);
        // A script that exits without reading all its input breaks the pipe:
        // its status says what happened. A file we could not read is ours.
        if let (Err(error), Input::File(path)) = (fed, input)
            && error.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(SshError::io(format!("sending {}", path.display()), error));
        }
        Ok(Captured {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }

    /// Runs `script` with `sh` (through `sudo -n` when `sudo`), feeding it
    /// `input`.
    ///
    /// # Errors
    /// As [`Master::run_with_input`].
    pub async fn run_script(
        &self,
        script: &str,
        sudo: bool,
        input: Input<'_>,
    ) -> Result<Captured, SshError> {
        self.run_with_input(&sh_command_line(script, sudo), input)
            .await
    }
}

async fn read_all(reader: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    if let Some(mut reader) = reader {
        reader.read_to_end(&mut text).await?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_one_shell_word() {
        assert_eq!(sh_quote("echo hi"), "'echo hi'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_command_line("id -u", false), "sh -c 'id -u'");
        assert_eq!(sh_command_line("id -u", true), "sudo -n sh -c 'id -u'");
    }

    #[test]
    fn the_reason_is_the_last_line_said() {
        let captured = Captured {
            code: 1,
            stdout: "a\nb\n".to_owned(),
            stderr: "warning\ndpkg: error: boom\n\n".to_owned(),
        };
        assert_eq!(captured.reason(), "dpkg: error: boom");
        let silent = Captured {
            code: 3,
            stdout: String::new(),
            stderr: String::new(),
        };
        assert_eq!(silent.reason(), "exit status 3");
    }
}
