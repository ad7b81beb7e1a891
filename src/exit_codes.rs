//! Exit codes, in one place: Puppet's `unless` and the timer's unit read them.

use std::process::ExitCode as StdExitCode;

/// What the process tells its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Done; for `plan`: nothing to change.
    Ok = 0,
    /// `plan` only: changes are pending (Puppet's `unless` then runs `apply`).
    Pending = 1,
    /// Something failed: bad configuration, a tool or the API server failed, a lock was held.
    Error = 2,
}

impl From<ExitCode> for StdExitCode {
    fn from(code: ExitCode) -> Self {
        StdExitCode::from(code as u8)
    }
}
