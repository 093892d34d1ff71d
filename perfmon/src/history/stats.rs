//! [`HistoryStats`]: what the history writer did and failed to do, counted
//! by the writer thread and read by anyone.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::sync::lock;

/// Counters the writer bumps; read with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pipelines_written: AtomicU64,
    pub(crate) runs_written: AtomicU64,
    pub(crate) alerts_written: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) events_missed: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) pipelines_lost: AtomicU64,
    pub(crate) read_failures: AtomicU64,
    pub(crate) pipelines_pruned: AtomicU64,
    pub(crate) file_bytes: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        let text = format!("{what}: {error}");
        let first = lock(&self.last_error).replace(text.clone()).is_none();
        if first {
            tracing::warn!(target: "perfmon::history", "history {text}; failures are counted in HistoryStats");
        }
    }

    pub(crate) fn snapshot(&self) -> HistoryStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HistoryStats {
            pipelines_written: get(&self.pipelines_written),
            runs_written: get(&self.runs_written),
            alerts_written: get(&self.alerts_written),
            batches: get(&self.batches),
            events_missed: get(&self.events_missed),
            write_failures: get(&self.write_failures),
            pipelines_lost: get(&self.pipelines_lost),
            read_failures: get(&self.read_failures),
            pipelines_pruned: get(&self.pipelines_pruned),
            file_bytes: get(&self.file_bytes),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// What the history writer has done, and what it could not do.
///
/// Everything it failed to store is counted here: `events_missed` (the
/// writer fell behind the event stream), `pipelines_lost` (a batch SQLite
/// refused: disk full, file locked or read-only); `last_error` says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HistoryStats {
    /// Pipeline reports stored.
    pub pipelines_written: u64,
    /// Agent and tool runs inside them.
    pub runs_written: u64,
    /// Alert transitions stored.
    pub alerts_written: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Events the writer never saw because it fell behind the stream
    /// (their pipelines and runs are not stored).
    pub events_missed: u64,
    /// Transactions that failed.
    pub write_failures: u64,
    /// Pipeline reports lost with those transactions.
    pub pipelines_lost: u64,
    /// Reads that failed (the in-memory answer was given instead).
    pub read_failures: u64,
    /// Pipelines removed by the retention or the size cap.
    pub pipelines_pruned: u64,
    /// The file's size at the last check.
    pub file_bytes: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}
