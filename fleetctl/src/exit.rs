//! Exit codes, the original's: 0 success, 1 general error, 2 for `verify`, the
//! remote status for commands run on a machine, 255 when SSH itself fails.

use std::process::ExitCode;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failure,
    /// The deprecated `verify` command.
    Verify,
    /// The exit status of a command run on a machine (locally or over SSH).
    Remote(u8),
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Verify => 2,
            Exit::Remote(code) => code,
        }
    }

    /// From a process status; a signal death counts as a failure.
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        match status.code() {
            Some(0) => Exit::Success,
            Some(code) => Exit::Remote(u8::try_from(code & 0xff).unwrap_or(1)),
            None => Exit::Failure,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}
