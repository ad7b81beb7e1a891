//! The progress line that `sync` and `apply permissions` show on a terminal while they work.
//!
//! The work reports into a [`crate::progress::Progress`] (plain atomics); a thread here reads it
//! every 100 ms and redraws one line on stderr with `indicatif` (at most 10 draws a second). It is
//! shown only when stderr is a terminal, not under systemd (`JOURNAL_STREAM` or `INVOCATION_ID`
//! set) and not with `-q`; otherwise nothing is started and the work gets no sink. It must never
//! write to stdout, which is for data.

use crate::progress::{Progress, Sink};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether progress may be drawn: stderr is a terminal, not systemd's, and not `-q`.
pub fn wanted(quiet: bool) -> bool {
    !quiet
        && std::env::var_os("JOURNAL_STREAM").is_none()
        && std::env::var_os("INVOCATION_ID").is_none()
        && crate::logging::stderr_is_terminal()
}

/// A running progress line; cleared when dropped.
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the line for `what` when [`wanted`]; returns the sink to hand to the work.
pub fn start(what: &str, quiet: bool) -> (Sink, Option<Display>) {
    if !wanted(quiet) {
        return (None, None);
    }
    let progress = Progress::new();
    let stop = Arc::new(AtomicBool::new(false));
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(what.to_string());
    let (p, s) = (progress.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            let (scanned, written, bytes) = p.get();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "{scanned} scanned, {written} written, {} ({}/s)",
                HumanBytes(bytes),
                HumanBytes((bytes as f64 / secs) as u64)
            ));
            bar.tick();
            if s.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
    });
    (
        Some(progress),
        Some(Display {
            stop,
            thread: Some(thread),
        }),
    )
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
