//! The external fact `mw_experimental`.
//!
//! Facter runs this on every Puppet run, so it reads the configuration, the state file and the
//! hold spool (a few small files, with [`crate::hold`]'s limits) and nothing else: no tree walk,
//! no network, no subprocess. Whatever goes wrong, it still prints a
//! valid JSON object (with `"state": "unknown"` and the reason) and exits 0.

use crate::config::{self, Config};
use crate::state::State;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The fact as JSON: `{"mw_experimental": {...}}`.
pub fn fact(config_path: Option<&Path>) -> Value {
    let path = config_path.unwrap_or(Path::new(config::DEFAULT_PATH));
    let mut f = Map::new();
    f.insert("version".into(), json!(crate::VERSION));
    f.insert("config".into(), json!(path));
    let cfg = match Config::load(path, config_path.is_some()) {
        Ok(cfg) => cfg,
        Err(e) => {
            f.insert("enabled".into(), Value::Null);
            f.insert("converged".into(), json!(false));
            f.insert("state".into(), json!("unknown"));
            f.insert("reason".into(), json!(format!("{e:#}")));
            return json!({ "mw_experimental": f });
        }
    };
    f.insert("enabled".into(), json!(cfg.enabled));
    // Holds: a few small files of the spool, read with the same limits as root's sync.
    let spool = crate::hold::read(&cfg.state_dir);
    f.insert("holds".into(), json!(spool.active));
    if !spool.ignored.is_empty() {
        f.insert("holds_ignored".into(), json!(spool.ignored));
    }
    let state_file = cfg.state_file();
    let state = match State::read(&state_file) {
        Ok(Some(state)) => state,
        Ok(None) => {
            f.insert("converged".into(), json!(false));
            f.insert("state".into(), json!("unknown"));
            f.insert(
                "reason".into(),
                json!(format!(
                    "no state file {} yet: apply has not run",
                    state_file.display()
                )),
            );
            return json!({ "mw_experimental": f });
        }
        Err(e) => {
            f.insert("converged".into(), json!(false));
            f.insert("state".into(), json!("unknown"));
            f.insert("reason".into(), json!(format!("{e:#}")));
            return json!({ "mw_experimental": f });
        }
    };
    f.insert("state".into(), json!("known"));
    f.insert("converged".into(), json!(state.converged(cfg.enabled)));
    if let Some(why) = state.why_not_converged(cfg.enabled) {
        f.insert("reason".into(), json!(why));
    }
    f.insert(
        "last_apply".into(),
        serde_json::to_value(&state.last_apply).unwrap_or(Value::Null),
    );
    f.insert(
        "last_sync".into(),
        serde_json::to_value(&state.last_sync).unwrap_or(Value::Null),
    );
    for (c, s) in &state.components {
        let mut v = Map::new();
        v.insert("converged".into(), json!(s.converged));
        v.insert("at".into(), json!(s.at));
        if let Some(e) = &s.error {
            v.insert("error".into(), json!(e));
        }
        if !s.drift.is_empty() {
            v.insert("drift".into(), json!(s.drift));
        }
        v.insert("changed".into(), json!(s.changed));
        if !s.plan.notes.is_empty() {
            v.insert("notes".into(), json!(s.plan.notes));
        }
        if let Value::Object(o) = &s.plan.observed {
            v.extend(o.clone());
        }
        f.insert(c.name().into(), Value::Object(v));
    }
    json!({ "mw_experimental": f })
}
