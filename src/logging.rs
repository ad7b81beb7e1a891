//! Logs go to stderr, or to the journal with priorities when systemd connected stderr to it.
//!
//! Under systemd, `JOURNAL_STREAM` names the device and inode of the journal stream; when stderr is
//! that stream, each line starts with an `sd-daemon(3)` priority prefix (`<3>` for errors), which
//! journald turns into the entry's priority. Stdout stays for data.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Logger {
    journal: bool,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            let prio = match record.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{prio}>{}\n", record.args())
        } else {
            let tag = match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            format!("mw-experimental: {tag}{}\n", record.args())
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// True when stderr is the journal stream systemd set up for this unit.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => {
            dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
        }
        Err(_) => false,
    }
}

/// Installs the logger once; `verbose` raises and `quiet` lowers the level.
pub fn init(verbose: u8, quiet: bool, default: LevelFilter) {
    let level = if quiet {
        LevelFilter::Error
    } else {
        match verbose {
            0 => default,
            1 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    };
    let logger = Box::new(Logger {
        journal: stderr_is_journal(),
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Whether stderr is an interactive terminal (progress output only then).
pub fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// The process's peak resident memory so far in MiB (`VmHWM`), for the debug timing lines;
/// 0 where `/proc` does not say.
pub fn peak_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
