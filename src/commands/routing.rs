//! `routing`: prints the X-Wikimedia-Debug entries for the mw-experimental nodes, as lines of
//! WMF's ATS Lua table (or `--json`), from the cluster's labelled Nodes or a hand-made list. It
//! only reads: it must never change a Node.

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::routing;
use anyhow::Result;
use serde_json::json;

pub fn routing(cfg: &Config, nodes: &[String], json: bool) -> Result<ExitCode> {
    let (entries, source) = if nodes.is_empty() {
        let list = routing::labelled_nodes(cfg)?;
        let (entries, notes) = routing::from_nodes(cfg, &list);
        for n in &notes {
            log::warn!("{n}");
        }
        (
            entries,
            format!("the Nodes labelled {}", routing::selector(cfg)),
        )
    } else {
        (routing::from_list(cfg, nodes)?, "--node".to_string())
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"source": source, "entries": entries}))?
        );
    } else {
        let summary = format!(
            "mw-experimental: {} X-Wikimedia-Debug backend{} from {source} (NodePort {})",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" },
            cfg.service.node_port
        );
        print!("{}", routing::lua(&entries, &summary));
    }
    Ok(ExitCode::Ok)
}
