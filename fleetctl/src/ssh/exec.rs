//! Running one command on a machine with its output captured line by line
//! (for `fleetctl exec`, which prefixes every line with the machine).

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::ssh::SshError;
use crate::ssh::master::Master;

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Master {
    /// Runs `command_line` on the machine without a terminal and with no
    /// stdin, calling `on_line` for every line it prints; returns its exit
    /// status (255 when SSH fails).
    ///
    /// # Errors
    /// [`SshError::Io`] when `ssh` cannot be started or its output read.
    pub async fn run_captured(
        &self,
        command_line: &str,
        on_line: &(dyn Fn(Stream, &str) + Sync),
    ) -> Result<u8, SshError> {
        let mut child = self
            .through_master()
            .args(["-T", "--", "none"])
            .arg(command_line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SshError::io("running ssh", e))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (out, err) = tokio::join!(
            forward(stdout, Stream::Stdout, on_line),
            forward(stderr, Stream::Stderr, on_line)
        );
        out.and(err)
            .map_err(|e| SshError::io("reading the output of ssh", e))?;
        let status = child
            .wait()
            .await
            .map_err(|e| SshError::io("waiting for ssh", e))?;
        Ok(status
            .code()
            .and_then(|code| u8::try_from(code & 0xff).ok())
            .unwrap_or(255))
    }
}

async fn forward(
    reader: Option<impl AsyncRead + Unpin>,
    stream: Stream,
    on_line: &(dyn Fn(Stream, &str) + Sync),
) -> std::io::Result<()> {
    let Some(reader) = reader else {
        return Ok(());
    };
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        on_line(stream, &line);
    }
    Ok(())
}
