//! `facts`: the external fact on stdout, for Facter.
//!
//! It must never fail: whatever goes wrong, Facter gets one JSON object and exit 0 (the reason is
//! inside the fact). The fact itself is built by [`crate::facts`].

use crate::exit_codes::ExitCode;
use std::path::Path;

/// Prints the fact as one line of JSON.
pub fn print_fact(config: Option<&Path>) -> ExitCode {
    let fact = crate::facts::fact(config);
    println!(
        "{}",
        serde_json::to_string(&fact)
            .unwrap_or_else(|_| "{\"mw_experimental\":{\"state\":\"unknown\"}}".into())
    );
    ExitCode::Ok
}
