//! The commands: what each subcommand does, on top of the components and capabilities.
//!
//! [`main`] is the program: the `mw_experimental` fact entry (argv0), parsing, logging, and
//! printing an error once with its whole chain. Each command is thin: it loads the
//! configuration, calls components or capabilities, records state and metrics, and prints data on
//! stdout. Nothing below this layer may import from it.

pub mod config;
pub mod diff;
pub mod facts;
pub mod fleet;
pub mod generate;
pub mod hold;
pub mod motd;
pub mod output;
pub mod plan;
pub mod progress;
pub mod render;
pub mod routing;
pub mod status;
pub mod sync;
pub mod watch;

use crate::cli::{Cli, Command};
use crate::components::parse_components;
use crate::config::{Config, DEFAULT_PATH};
use crate::exit_codes::ExitCode;
use anyhow::Result;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        | Command::Routing { .. }
        | Command::Fleet { .. }
        | Command::Config
        | Command::Hold { .. }
        | Command::Release { .. }
        | Command::Motd => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    crate::logging::init(cli.verbose, cli.quiet, default_level);
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::Error.into()
        }
    }
}

/// Runs `cli`. Errors are returned for `main` to print once, with their whole chain.
pub fn run(cli: Cli) -> Result<ExitCode> {
    // These two need no configuration: the fact must work without one, generate is packaging.
    if let Command::Facts = cli.command {
        return Ok(facts::print_fact(cli.config.as_deref()));
    }
    if let Command::Generate { what } = &cli.command {
        generate::generate(what)?;
        return Ok(ExitCode::Ok);
    }
    let cfg = load_config(cli.config.as_deref())?;
    // Fleet reads PuppetDB; the configuration gives only the routing prefix and port.
    if let Command::Fleet {
        puppetdb,
        ssldir,
        certname,
        stale_after,
        timeout,
        routing,
    } = &cli.command
    {
        return fleet::fleet(
            &cfg,
            &fleet::Options {
                puppetdb,
                ssldir,
                certname: certname.as_deref(),
                stale_after: *stale_after,
                timeout: Duration::from_secs(*timeout),
                routing: *routing,
                json: cli.json,
            },
        );
    }
    let style = output::Style {
        json: cli.json,
        verbose: cli.verbose > 0,
        quiet: cli.quiet,
        started: std::time::Instant::now(),
    };
    match cli.command {
        Command::Facts | Command::Generate { .. } | Command::Fleet { .. } => unreachable!(),
        Command::Config => config::config(&cfg, cli.json),
        Command::Plan { components } => plan::plan(&cfg, &parse_components(&components)?, style),
        Command::Apply {
            components,
            lock_wait,
        } => plan::apply(
            &cfg,
            &parse_components(&components)?,
            style,
            Duration::from_secs(lock_wait),
        ),
        Command::Sync {
            force,
            dry_run,
            lock_wait,
        } => {
            let opts = crate::sync::SyncOptions {
                force,
                dry_run,
                ..Default::default()
            };
            sync::run_sync(&cfg, opts, style, Duration::from_secs(lock_wait))
        }
        Command::Watch {
            trigger,
            max_triggers,
        } => watch::watch(&cfg, &trigger, max_triggers),
        Command::Status => status::status(&cfg, cli.config.as_deref(), cli.json),
        Command::Diff {
            paths,
            patch,
            stat,
            mine,
        } => diff::diff(&cfg, &paths, mine, patch, stat, cli.json),
        Command::Reset { paths, lock_wait } => {
            diff::reset(&cfg, &paths, style, Duration::from_secs(lock_wait))
        }
        Command::Render { helmfile_values } => render::render(&cfg, helmfile_values),
        Command::Routing { nodes } => routing::routing(&cfg, &nodes, cli.json),
        Command::Hold { reason, duration } => hold::hold(&cfg, &reason, duration, cli.json),
        Command::Release { all } => hold::release(&cfg, all, cli.json),
        Command::Motd => motd::motd(&cfg),
    }
}

/// The configuration: the named file (which must exist), or the default path (which may not).
fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p, true),
        None => Config::load(Path::new(DEFAULT_PATH), false),
    }
}
