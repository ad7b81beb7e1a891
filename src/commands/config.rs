//! `config`: prints the effective configuration (the file merged over the defaults), as YAML or,
//! with `--json`, JSON. It must never write the configuration back.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use anyhow::{Context, Result};

/// Prints `cfg` on stdout.
pub fn config(cfg: &Config, json: bool) -> Result<ExitCode> {
    let out = if json {
        serde_json::to_string_pretty(cfg)? + "\n"
    } else {
        serde_saphyr::to_string(cfg).context("printing the configuration as YAML")?
    };
    print!("{out}");
    Ok(ExitCode::Ok)
}
