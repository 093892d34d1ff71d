//! [`Shared`]: the collector's state as its reader thread writes it and its
//! server reads it: the fleet state, the broker's status, the limits that
//! make a source silent or gone. Above `state`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::state::{FleetState, ReadStats};
use super::wire;

/// What the reader thread and the server share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<FleetState>,
    pub(crate) silent_after: Duration,
    pub(crate) gone_after: Duration,
    /// The broker's clock minus ours, ms.
    pub(crate) clock_offset_ms: AtomicI64,
    pub(crate) connected: AtomicBool,
    pub(crate) read_failures: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) epoch: Mutex<Option<String>>,
    pub(crate) stream: String,
}

/// The broker as `GET /api/performance/sources` reports it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BrokerStatus {
    /// The stream's key.
    pub stream: String,
    /// Whether the last read succeeded.
    pub connected: bool,
    /// Reads that failed (retried with backoff).
    pub read_failures: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// The stream's epoch (see PROTOCOL.md, "Fleet").
    pub epoch: Option<String>,
    /// What was read so far.
    pub read: ReadStats,
}

impl Shared {
    pub(crate) fn new(stream: &str, silent_after: Duration, gone_after: Duration) -> Self {
        Shared {
            state: Mutex::new(FleetState::default()),
            silent_after,
            gone_after,
            clock_offset_ms: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            read_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            epoch: Mutex::new(None),
            stream: stream.to_owned(),
        }
    }

    /// Now by the broker's clock (ours, corrected by the last offset seen).
    pub(crate) fn broker_now_ms(&self) -> u64 {
        let offset = self.clock_offset_ms.load(Ordering::Relaxed);
        wire::unix_ms_now().saturating_add_signed(offset)
    }

    pub(crate) fn broker_status(&self) -> BrokerStatus {
        BrokerStatus {
            stream: self.stream.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            read_failures: self.read_failures.load(Ordering::Relaxed),
            last_error: crate::sync::lock(&self.last_error).clone(),
            epoch: crate::sync::lock(&self.epoch).clone(),
            read: crate::sync::lock(&self.state).read_stats(),
        }
    }
}
