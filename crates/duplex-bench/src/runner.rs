//! Client threads: each runs one single-threaded tokio runtime that owns some connections.
//!
//! A run has three steps that every thread goes through together: set up (connect, open
//! streams, join rooms) and report ready; wait for the start signal with the run's
//! [`Timing`]; load until done or told to stop. The coordinator (the caller's thread) sees
//! every thread ready before it starts the clock, so setup never counts as load.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::BenchError;

/// When the run started and which part of it is measured, on [`crate::clock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Load starts here (warmup begins).
    pub start: u64,
    /// Measurement starts here (warmup ends).
    pub measure_start: u64,
    /// No new load is offered from here on.
    pub measure_end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Wait,
    Start(Timing),
    Stop,
    Abort,
}

/// A thread's side of the coordination.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    ready: std_mpsc::Sender<Result<(), String>>,
    signal: watch::Receiver<Signal>,
}

impl Gate {
    /// Reports this thread's setup result.
    pub(crate) fn ready(&self, setup: Result<(), String>) {
        let _ = self.ready.send(setup);
    }

    /// Reports this thread's setup result and, when it succeeded, waits for the start;
    /// `None` when setup failed or the run was aborted.
    pub(crate) async fn ready_then_started(&mut self, setup: Result<(), String>) -> Option<Timing> {
        let failed = setup.is_err();
        self.ready(setup);
        if failed {
            return None;
        }
        self.started().await
    }

    /// Waits for the start; `None` when the run was aborted instead.
    pub(crate) async fn started(&mut self) -> Option<Timing> {
        loop {
            match *self.signal.borrow_and_update() {
                Signal::Start(timing) => return Some(timing),
                Signal::Stop | Signal::Abort => return None,
                Signal::Wait => {}
            }
            if self.signal.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Resolves once the coordinator says stop (or aborts, or is gone).
    pub(crate) async fn stopped(&mut self) {
        loop {
            if matches!(
                *self.signal.borrow_and_update(),
                Signal::Stop | Signal::Abort
            ) {
                return;
            }
            if self.signal.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The coordinator's handle on the client threads.
pub(crate) struct Threads<R> {
    handles: Vec<JoinHandle<R>>,
    ready: std_mpsc::Receiver<Result<(), String>>,
    signal: watch::Sender<Signal>,
}

/// Starts `count` threads, each running `make(thread_index, gate)` on its own runtime.
pub(crate) fn spawn<R, F, Fut>(count: usize, make: F) -> Result<Threads<R>, BenchError>
where
    R: Send + 'static,
    F: Fn(usize, Gate) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + 'static,
{
    let (ready_tx, ready) = std_mpsc::channel();
    let (signal, signal_rx) = watch::channel(Signal::Wait);
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let gate = Gate {
            ready: ready_tx.clone(),
            signal: signal_rx.clone(),
        };
        let make = make.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Setup(format!("cannot start a runtime: {e}")))?;
        let handle = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || runtime.block_on(make(index, gate)))
            .map_err(|e| BenchError::Setup(format!("cannot start a thread: {e}")))?;
        handles.push(handle);
    }
    Ok(Threads {
        handles,
        ready,
        signal,
    })
}

impl<R> Threads<R> {
    /// Waits until every thread is set up. On a failure or a timeout, aborts the others and
    /// returns the error.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..self.handles.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let outcome = match self.ready.recv_timeout(left) {
                Ok(outcome) => outcome,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    Err(format!("setup took longer than {timeout:?}"))
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    Err("a client thread stopped during setup".into())
                }
            };
            if let Err(reason) = outcome {
                let _ = self.signal.send(Signal::Abort);
                return Err(BenchError::Setup(reason));
            }
        }
        Ok(())
    }

    /// Starts the load with `timing`.
    pub(crate) fn start(&self, timing: Timing) {
        let _ = self.signal.send(Signal::Start(timing));
    }

    /// Tells every thread to wind down.
    pub(crate) fn stop(&self) {
        let _ = self.signal.send(Signal::Stop);
    }

    /// True once every thread has returned.
    pub(crate) fn finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every thread and returns their results (a panicked thread is skipped).
    pub(crate) fn join(self) -> Vec<R> {
        self.handles
            .into_iter()
            .filter_map(|handle| handle.join().ok())
            .collect()
    }
}

/// Splits `items` round-robin into `groups` lists of indices.
pub(crate) fn round_robin(items: usize, groups: usize) -> Vec<Vec<usize>> {
    let groups = groups.max(1);
    let mut out = vec![Vec::new(); groups];
    for item in 0..items {
        out[item % groups].push(item);
    }
    out
}
