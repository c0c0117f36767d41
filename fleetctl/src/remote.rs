//! The local half of running a command on a unit's machine (`status`,
//! `journal`, global `restart`): the original's "local machine" shortcut
//! (no SSH to this host). When the machine ID is this host's `/etc/machine-id`, the
//! command runs here with the terminal attached and its exit status is
//! returned; `crate::ssh::remote` decides between this and SSH.

use std::process::Command;

use crate::exit::Exit;

/// Where this host's machine ID lives.
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";

/// Why a local command could not run.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The local command could not be started.
    #[error("unable to run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// This host's machine ID, if it can be read.
pub fn local_machine_id() -> Option<String> {
    std::fs::read_to_string(MACHINE_ID_FILE)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// Runs `argv` here with the terminal attached and returns its status.
///
/// # Errors
/// [`RemoteError::Spawn`] when the program cannot be started.
pub fn run_locally(argv: &[String]) -> Result<Exit, RemoteError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(Exit::Success);
    };
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|source| RemoteError::Spawn {
            program: program.clone(),
            source,
        })?;
    Ok(Exit::from_status(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_commands_return_their_status() {
        assert_eq!(run_locally(&["true".to_owned()]).unwrap(), Exit::Success);
        assert_eq!(
            run_locally(&["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()]).unwrap(),
            Exit::Remote(3)
        );
        assert!(run_locally(&["/nonexistent/program".to_owned()]).is_err());
    }
}
