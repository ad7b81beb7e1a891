//! `generate`: the man pages and shell completion scripts, for packaging.
//!
//! Both come from the clap definitions in `crate::cli`, so they never drift from the real
//! flags. It must never read the configuration or touch the system beyond the directory it is
//! given (man pages) or stdout (a completion script).

use crate::cli::{Cli, Generated};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;

/// Does what `generate` asked for: man pages into a directory, or a completion script on stdout.
pub fn generate(what: &Generated) -> Result<()> {
    let mut cmd = Cli::command();
    match what {
        Generated::Man { dir } => clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing the man pages into {}", dir.display())),
        Generated::Completion { shell } => {
            // Rendered into memory first: clap_complete panics on a failed write (closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "mw-experimental", &mut script);
            std::io::stdout()
                .write_all(&script)
                .with_context(|| format!("printing the {shell} completion script"))
        }
    }
}
