//! Finished runs on their way to the statistics: each thread keeps the
//! synchronous runs it closed in a bounded buffer of its own, and they
//! reach their agents' statistics (and `metrics`) and their pipelines in
//! batches. (A future's run is applied when it closes: measured, the
//! buffer cost futures more than it saved.)
//!
//! This takes the statistics update (the agent's mutex, its histogram, the
//! `metrics` recorder) and the pipeline update (its mutex, its per-agent
//! totals) off the moment a span closes: the closing thread only appends
//! a small record under a lock no other thread takes, except a flush. In a
//! batch, consecutive runs of one agent take its lock once, and those of
//! one pipeline its lock once.
//!
//! Who applies a batch was chosen by measuring (BENCHMARKS.md, issue 16):
//! the closing thread, at [`BATCH`] runs, whether or not they export
//! `metrics`. Handing batches to another thread cost more CPU in all and,
//! with `metrics` on, no less wall time on the closing thread: the
//! records, the agent's counters and the pipeline's lock travel between
//! cores, and each wake is a system call (measured twice: for every run,
//! then, until the fourth round, for runs exported to `metrics`).
//!
//! When the records are applied:
//! - by the closing thread, at [`BATCH`] runs;
//! - by [`flush`], which every read of statistics or of a pipeline calls
//!   first (`Recorder::entries`, `Recorder::finish_pipeline`, reports so
//!   far, snapshots), so every read is exact: a run whose span closed
//!   before the read began is counted in it;
//! - by the process's collector thread (`perfmon-runs`, while any monitor
//!   lives) every [`FLUSH_EVERY`]: the `metrics` recorder
//!   (which a Prometheus scrape reads without asking perfmon) and a quiet
//!   thread's runs are at most that far behind;
//! - when a thread exits, by its buffer's destructor, and at once for runs
//!   that close after it (in other thread-local destructors).
//!
//! Imports the statistics and the pipeline state; the layer (which
//! pushes) and the recorder (which flushes) are above it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::outcome::Outcome;
use crate::pipeline::{Closer, PipelineState, RunExtras, Ticket, Timing};
use crate::stats::{AgentEntry, FinishedRun};
use crate::sync::lock;

/// Runs a thread keeps at most (about 80 bytes each, twice: the buffer and
/// the batch being applied); at this many it applies them, in one batch.
pub(crate) const BATCH: usize = 256;

/// How often the collector applies every thread's runs.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One finished run, as the layer measured it.
pub(crate) struct Finished {
    pub(crate) entry: Arc<AgentEntry>,
    /// Its pipeline and its place there, if it ran in one.
    pub(crate) pipeline: Option<(Arc<PipelineState>, Ticket)>,
    pub(crate) timing: Timing,
    /// Boxed, and only for runs that did not simply succeed: most records
    /// stay small enough to move without a `memcpy` call.
    pub(crate) outcome: Option<Box<Outcome>>,
    pub(crate) extras: Option<Box<RunExtras>>,
}

impl Finished {
    /// Counts the run in its agent's statistics and its pipeline.
    pub(crate) fn apply(mut self) {
        self.entry.runs_finished(&[self.view()]);
        if let Some((pipeline, _)) = self.pipeline.clone() {
            pipeline.closing(|closer| self.close_in(closer));
        }
    }

    /// Records its end in its pipeline, whose lock `closer` holds.
    fn close_in(&mut self, closer: &mut Closer<'_>) {
        if let Some((_, ticket)) = &self.pipeline {
            let outcome = self.outcome.as_deref().unwrap_or(&SUCCEEDED);
            closer.close(
                *ticket,
                &self.entry.name,
                self.timing,
                outcome,
                self.extras.take(),
            );
        }
    }

    /// What the agent's statistics take of it.
    fn view(&self) -> FinishedRun<'_> {
        FinishedRun {
            wall: self.timing.wall,
            self_time: self.timing.self_time,
            outcome: self.outcome.as_deref().unwrap_or(&SUCCEEDED),
            usage: self
                .extras
                .as_ref()
                .map(|e| e.usage)
                .filter(|u| !u.is_zero()),
        }
    }
}

/// Applies `batch` and empties it (keeping its capacity). Consecutive runs
/// of one agent take its statistics lock once, and consecutive runs of one
/// pipeline its lock once: a thread's runs come in such groups.
fn apply_all(batch: &mut Vec<Finished>) {
    let mut views = Vec::new();
    for group in batch.chunk_by(|a, b| Arc::ptr_eq(&a.entry, &b.entry)) {
        views.clear();
        views.extend(group.iter().map(Finished::view));
        if let Some(first) = group.first() {
            first.entry.runs_finished(&views);
        }
    }
    drop(views);
    let same_pipeline = |a: &Finished, b: &Finished| match (&a.pipeline, &b.pipeline) {
        (Some((a, _)), Some((b, _))) => Arc::ptr_eq(a, b),
        _ => false,
    };
    for group in batch.chunk_by_mut(same_pipeline) {
        let Some(Some((pipeline, _))) = group.first().map(|run| run.pipeline.clone()) else {
            continue;
        };
        pipeline.closing(|closer| {
            for run in group.iter_mut() {
                run.close_in(closer);
            }
        });
    }
    batch.clear();
}

/// The outcome of a run that recorded none.
static SUCCEEDED: Outcome = Outcome::Succeeded;

/// One thread's buffer.
struct Buffer {
    /// Appended to by its thread; taken whole by whoever applies them.
    runs: Mutex<Vec<Finished>>,
    /// Held while a batch taken from `runs` is applied (and holding the
    /// batch, to keep its capacity): a flush that finds `runs` empty waits
    /// here for a batch another flush took but has not applied yet, so that
    /// it never returns before every run closed earlier is counted.
    applying: Mutex<Vec<Finished>>,
}

impl Buffer {
    /// Applies every run in the buffer.
    fn drain(&self) {
        let mut batch = lock(&self.applying);
        std::mem::swap(&mut *batch, &mut *lock(&self.runs));
        apply_all(&mut batch);
    }
}

/// Every live thread's buffer, for [`flush`].
static BUFFERS: Mutex<Vec<Arc<Buffer>>> = Mutex::new(Vec::new());

/// This thread's buffer, registered in [`BUFFERS`] while the thread lives.
struct Local(Arc<Buffer>);

impl Local {
    fn register() -> Self {
        let buffer = Arc::new(Buffer {
            runs: Mutex::new(Vec::with_capacity(BATCH)),
            applying: Mutex::new(Vec::with_capacity(BATCH)),
        });
        lock(&BUFFERS).push(Arc::clone(&buffer));
        Local(buffer)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The thread is exiting: count what it left, and forget it.
        self.0.drain();
        lock(&BUFFERS).retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// Hands a finished run over; applies it at once on a thread that is
/// past its buffer's destructor.
#[inline]
pub(crate) fn push(run: Finished) {
    let mut run = Some(run);
    let _ = LOCAL.try_with(|local| {
        let mut runs = lock(&local.0.runs);
        let Some(run) = run.take() else { return };
        runs.push(run);
        if runs.len() >= BATCH {
            drop(runs);
            local.0.drain();
        }
    });
    if let Some(run) = run {
        run.apply();
    }
}

/// Applies every thread's finished runs. Returns once every run whose span
/// closed before the call began is counted.
pub(crate) fn flush() {
    let buffers: Vec<Arc<Buffer>> = lock(&BUFFERS).clone();
    for buffer in &buffers {
        buffer.drain();
    }
}

/// The process's collector thread, shared by every monitor alive: it
/// applies every thread's runs every [`FLUSH_EVERY`] (a quiet thread's,
/// and the `metrics` recorder's share).
struct Collector {
    /// Monitors holding a [`CollectorUse`].
    users: usize,
    /// The running thread and its stop flag.
    thread: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

static COLLECTOR: Mutex<Collector> = Mutex::new(Collector {
    users: 0,
    thread: None,
});

/// A monitor's share of the collector thread: the first one starts it,
/// dropping the last one stops and joins it (after a last flush).
#[derive(Debug)]
pub(crate) struct CollectorUse(());

impl CollectorUse {
    /// Counts one more user, starting the thread `perfmon-runs` if none runs.
    ///
    /// # Errors
    ///
    /// The thread could not be spawned. Runs are still counted: by the
    /// threads that close them (a full buffer) and by every read; only a
    /// quiet thread's runs reach the `metrics` recorder later.
    pub(crate) fn acquire() -> std::io::Result<CollectorUse> {
        let mut collector = lock(&COLLECTOR);
        if collector.thread.is_none() {
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("perfmon-runs".into())
                .spawn(move || {
                    while !stopped.load(Ordering::Acquire) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        flush();
                    }
                })?;
            collector.thread = Some((stop, handle));
        }
        collector.users += 1;
        Ok(CollectorUse(()))
    }
}

impl Drop for CollectorUse {
    fn drop(&mut self) {
        let stopping = {
            let mut collector = lock(&COLLECTOR);
            collector.users = collector.users.saturating_sub(1);
            if collector.users == 0 {
                collector.thread.take()
            } else {
                None
            }
        };
        if let Some((stop, handle)) = stopping {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RunKind;

    fn run(entry: &Arc<AgentEntry>, ms: u64) -> Finished {
        entry.run_started();
        Finished {
            entry: Arc::clone(entry),
            pipeline: None,
            timing: Timing {
                wall: Duration::from_millis(ms),
                self_time: Duration::from_millis(ms),
                busy: None,
            },
            outcome: None,
            extras: None,
        }
    }

    #[test]
    fn a_thread_that_exits_applies_what_it_buffered() {
        let entry = Arc::new(AgentEntry::new(Arc::from("exit"), RunKind::Agent, false));
        let e = Arc::clone(&entry);
        std::thread::spawn(move || {
            for ms in 1..=5 {
                push(run(&e, ms));
            }
        })
        .join()
        .unwrap();
        // No flush: the thread's buffer was applied as it exited.
        assert_eq!(entry.counts(), (5, 0));
        assert_eq!(entry.stats().running, 0);
    }

    #[test]
    fn a_flush_applies_every_live_threads_runs_and_a_full_buffer_applies_itself() {
        // With `metrics` off and on: the closing thread applies a full
        // buffer either way (it once woke the collector for the latter).
        for metrics in [false, true] {
            let entry = Arc::new(AgentEntry::new(Arc::from("flush"), RunKind::Agent, metrics));
            let (pushed_tx, pushed_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let e = Arc::clone(&entry);
            let worker = std::thread::spawn(move || {
                for _ in 0..3 {
                    push(run(&e, 2));
                }
                pushed_tx.send(()).unwrap();
                let _ = done_rx.recv();
                // A batch: the thread applies it itself.
                for _ in 0..BATCH {
                    push(run(&e, 2));
                }
                pushed_tx.send(()).unwrap();
                let _ = done_rx.recv();
            });
            pushed_rx.recv().unwrap();
            flush();
            assert_eq!(entry.counts().0, 3);
            done_tx.send(()).unwrap();
            pushed_rx.recv().unwrap();
            // A batch filled up: the thread applied all of it, unasked.
            assert_eq!(entry.counts().0, 3 + BATCH as u64, "metrics {metrics}");
            done_tx.send(()).unwrap();
            worker.join().unwrap();
        }
    }
}
