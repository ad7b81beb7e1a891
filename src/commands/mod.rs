//! The commands: what each subcommand does, on top of the components and capabilities.
//!
//! [`main`] is the program: the `mw_experimental` fact entry (argv0), parsing, logging, and
//! printing an error once with its whole chain. Each command is thin: it loads the
//! configuration, calls components or capabilities, records state and metrics, and prints data on
//! stdout. Nothing below this layer may import from it.

pub mod generate;

use crate::cli::{Cli, Command};
use crate::exit_codes::ExitCode;
use clap::Parser;
use std::path::PathBuf;

/// The program: parse, run, print an error once with its whole chain, exit.
pub fn main() -> std::process::ExitCode {
    // Invoked as `mw_experimental` (the facts.d symlink): the fact, whatever the arguments.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "mw_experimental")
    {
        crate::logging::init(0, true, log::LevelFilter::Error);
        let config = std::env::var_os("MW_EXPERIMENTAL_CONFIG").map(PathBuf::from);
        let fact = crate::facts::fact(config.as_deref());
        println!("{fact}");
        return ExitCode::Ok.into();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::Error.into()
            } else {
                ExitCode::Ok.into()
            };
        }
    };
    let default_level = match cli.command {
        Command::Facts
        | Command::Plan { .. }
        | Command::Diff { .. }
        | Command::Render { .. }
        | Command::Config => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    crate::logging::init(cli.verbose, cli.quiet, default_level);
    match crate::app::run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::Error.into()
        }
    }
}
