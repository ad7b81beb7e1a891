//! `fleet`: every node's `mw_experimental` fact from PuppetDB, one line per node (or JSON, or the
//! X-Wikimedia-Debug routing entries of the nodes that are on, converged and fresh, through
//! [`crate::routing`]). It reads PuppetDB with this host's Puppet certificate and prints; it must
//! never change anything, on this host or in PuppetDB. The configuration only names the routing
//! prefix and port (defaults when there is none).

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::fleet;
use crate::puppetdb::{Client, Tls};
use anyhow::Result;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What `fleet` was asked.
pub struct Options<'a> {
    pub puppetdb: &'a str,
    pub ssldir: &'a Path,
    pub certname: Option<&'a str>,
    pub stale_after: Duration,
    pub timeout: Duration,
    pub routing: bool,
    pub json: bool,
}

pub fn fleet(cfg: &Config, o: &Options) -> Result<ExitCode> {
    let tls = Tls::from_ssldir(o.ssldir, o.certname)?;
    let client = Client::new(o.puppetdb, tls, o.timeout)?;
    let nodes = fleet::read(&client, SystemTime::now(), o.stale_after)?;
    if o.routing {
        // Each node's certname is its host name, as Kubernetes names WMF's nodes.
        let mut entries = Vec::new();
        for n in nodes.iter().filter(|n| fleet::routable(n)) {
            match crate::routing::from_list(cfg, std::slice::from_ref(&n.certname)) {
                Ok(e) => entries.extend(e),
                Err(e) => log::warn!("{}: left out of the routing entries: {e:#}", n.certname),
            }
        }
        entries.sort_by(|a, b| a.backend.cmp(&b.backend));
        if o.json {
            println!("{}", serde_json::json!({ "entries": entries }));
        } else {
            let summary = format!(
                "{} of {} nodes with the mw_experimental fact in {} are on, converged and fresh (facts younger than {})",
                entries.len(),
                nodes.len(),
                client.url(),
                humantime::format_duration(o.stale_after)
            );
            print!("{}", crate::routing::lua(&entries, &summary));
        }
    } else if o.json {
        println!(
            "{}",
            serde_json::json!({
                "puppetdb": client.url(),
                "stale_after_seconds": o.stale_after.as_secs(),
                "nodes": nodes,
            })
        );
    } else {
        print!("{}", fleet::text(&nodes, o.stale_after));
    }
    Ok(ExitCode::Ok)
}
