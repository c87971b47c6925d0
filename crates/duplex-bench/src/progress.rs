//! Live progress on stderr while a run goes: a bar with the live rate on a terminal, one
//! plain line per second otherwise, nothing with `--quiet`.
//!
//! Load tasks only add to two atomic counters (once per chunk of replies, not per message);
//! a separate thread reads them, so progress never slows the load.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counters the load tasks add to.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(&self, messages: u64) {
        self.done.fetch_add(messages, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The display thread; stops when dropped.
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Shows `counters` (labelled `what`, e.g. "round trips") for a run of about `expected`.
    pub(crate) fn start(
        scenario: &'static str,
        what: &'static str,
        counters: Arc<Counters>,
        expected: Duration,
        quiet: bool,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if quiet {
            return Self { stop, thread: None };
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-progress".into())
            .spawn(move || {
                if std::io::stderr().is_terminal() {
                    bar(scenario, what, &counters, expected, &flag);
                } else {
                    lines(scenario, what, &counters, &flag);
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bar(scenario: &str, what: &str, counters: &Counters, expected: Duration, stop: &AtomicBool) {
    let millis = expected.as_millis().max(1) as u64;
    let bar = indicatif::ProgressBar::new(millis);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(scenario.to_owned());
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let done = counters.done.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
        last = (Instant::now(), done);
        bar.set_position((start.elapsed().as_millis() as u64).min(millis));
        bar.set_message(format!(
            "{done} {what}, {rate:.0}/s, {} errors",
            counters.errors.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
}

fn lines(scenario: &str, what: &str, counters: &Counters, stop: &AtomicBool) {
    let start = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut next = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() < next {
            continue;
        }
        next += Duration::from_secs(1);
        let done = counters.done.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
        last = (Instant::now(), done);
        eprintln!(
            "{scenario} {:.0}s: {done} {what}, {rate:.0}/s, {} errors",
            start.elapsed().as_secs_f64(),
            counters.errors.load(Ordering::Relaxed)
        );
    }
}
