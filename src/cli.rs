//! The command line: clap definitions and nothing else.
//!
//! This is plain data that `commands` reads: the flags, the subcommands and their help, from
//! which clap also makes the man pages and completions. It must never import from the crate or
//! do any work (no configuration loading, no I/O): `crate::commands` reads it, so a `crate::`
//! name here would close an import circle.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mw-experimental: converge a MediaWiki experimental Kubernetes worker and keep its
/// /srv/mediawiki current from the newest mediawiki-multiversion image.
#[derive(Debug, Parser)]
#[command(name = "mw-experimental", version, propagate_version = true)]
pub struct Cli {
    /// The configuration file (YAML). Every key is optional.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MW_EXPERIMENTAL_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// Print JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The external fact: one JSON object {"mw_experimental": {...}}, from the state file only.
    Facts,
    /// What apply would change. Exit 0 converged, 1 changes pending, 2 error.
    Plan {
        /// Components to check: group, permissions, node, code (default: group permissions node).
        #[arg(value_name = "COMPONENT")]
        components: Vec<String>,
    },
    /// Converge the named components (default: group permissions node). Exit 0 ok, 2 error.
    Apply {
        #[arg(value_name = "COMPONENT")]
        components: Vec<String>,
        /// How long to wait for another run's lock, in seconds.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        lock_wait: u64,
    },
    /// Refresh the code tree from the newest image; engineers' edits are kept.
    Sync {
        /// Overwrite engineers' edits too (each is backed up first).
        #[arg(long)]
        force: bool,
        /// Say what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        lock_wait: u64,
    },
    /// Follow containerd's image events and touch TRIGGER when an image of image.repository is
    /// created or updated (mw-experimental-sync.path then starts a sync). Runs until killed.
    Watch {
        /// The file to touch; mw-experimental-sync.path watches it.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/mw-experimental/image-event"
        )]
        trigger: PathBuf,
        /// Stop after this many triggers (for tests; default: never).
        #[arg(long, value_name = "N", hide = true)]
        max_triggers: Option<u64>,
    },
    /// A short human overview of the switch, each component and the last runs.
    Status,
    /// Engineers' edits against the image the tree was last synced from.
    Diff {
        /// Paths in the tree (absolute, or relative to it); default: the whole tree.
        paths: Vec<PathBuf>,
        /// Show a unified diff for text files.
        #[arg(long)]
        patch: bool,
        /// Per file, the count of changed lines against the image (like `git diff --stat`).
        #[arg(long, conflicts_with = "patch")]
        stat: bool,
        /// Only your own edits: those whose editor is you (your real uid; under sudo, the uid
        /// that ran sudo). Edits whose editor is unknown are nobody's. Root without sudo sees all.
        #[arg(long)]
        mine: bool,
    },
    /// Restore paths from the image (each backed up first).
    Reset {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        lock_wait: u64,
    },
    /// Print the Kubernetes objects (namespace, php settings, DaemonSet, Service) for the image
    /// the node's code follows.
    Render {
        /// Print instead the values overlay for WMF's mediawiki chart release of mw-experimental.
        #[arg(long)]
        helmfile_values: bool,
    },
    /// Print the X-Wikimedia-Debug routing entries (ATS Lua table lines) for the nodes that
    /// carry every managed label, as the cluster lists them.
    Routing {
        /// A hand-made list instead of the cluster's: NAME or NAME=HOST, repeatable.
        #[arg(long = "node", value_name = "NAME[=HOST]")]
        nodes: Vec<String>,
    },
    /// Every node's mw_experimental fact from PuppetDB, one line per node (switch, converged,
    /// image, last sync, edits, holds, facts' age, last error); stale facts are marked, not dropped.
    Fleet {
        /// PuppetDB's URL, https://HOST:PORT.
        #[arg(
            long,
            value_name = "URL",
            env = "MW_EXPERIMENTAL_PUPPETDB",
            default_value = "https://puppetdb:8081"
        )]
        puppetdb: String,
        /// The Puppet agent's ssldir: its certificate, key and the CA authenticate to PuppetDB.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/puppet/ssl")]
        ssldir: PathBuf,
        /// Which certificate of the ssldir (default: the only one there).
        #[arg(long, value_name = "NAME")]
        certname: Option<String>,
        /// Facts older than this are marked stale (and never routed), e.g. 2h, 90m.
        #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
        stale_after: std::time::Duration,
        /// The bound on each PuppetDB query, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
        /// Print only the X-Wikimedia-Debug routing entries of the nodes that are on, converged
        /// and fresh.
        #[arg(long)]
        routing: bool,
    },
    /// Print the effective configuration.
    Config,
    /// Pause the code refresh (sync, plan/apply code) until you release it or it expires.
    /// Any member of the deployer group may hold, without root; several may hold at once.
    Hold {
        /// Why, shown to everyone (status, the login banner, the journal).
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        /// How long it lasts: 30m, 8h, 2d (at most 7d).
        #[arg(long = "for", value_name = "DURATION", default_value = "8h", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
    /// Remove your hold; the refresh resumes when no hold is left.
    Release {
        /// Remove every hold and anything else in the hold spool (root only).
        #[arg(long)]
        all: bool,
    },
    /// The login banner for engineers (nothing while the switch is off), from the state file.
    Motd,
    /// For packaging: the man pages and the shell completion scripts.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

/// What `generate` makes.
#[derive(Debug, Subcommand)]
pub enum Generated {
    /// Write mw-experimental.1 and one page per command (mw-experimental-plan.1, ...) into DIR.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL on stdout.
    Completion { shell: clap_complete::Shell },
}
