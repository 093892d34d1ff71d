//! The sidecar's own counters: `/api/performance/websocket/status`, the
//! `metrics` reply, and the `perfmon_ws_*` metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Counters, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Stats {
    connections_active: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    dropped: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
    slow_disconnects: AtomicU64,
    latency: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Open WebSocket connections.
    pub connections_active: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Upgrades refused (limit, auth, origin).
    pub connections_refused: u64,
    /// Messages received from clients.
    pub messages_in: u64,
    /// Frames sent to clients.
    pub messages_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Items shed from slow clients' queues.
    pub dropped: u64,
    /// Client messages refused by the rate limit.
    pub rate_limited: u64,
    /// Bad messages and protocol errors.
    pub errors: u64,
    /// Clients disconnected for reading too slowly.
    pub slow_disconnects: u64,
    /// Connections more than their queue's capacity behind the newest
    /// event right now: they will be told what they lost (`dropped`) when
    /// their writer catches up, or be closed if they stay stalled.
    pub connections_behind: u64,
    /// Publish → write latency, median, in milliseconds.
    pub latency_p50_ms: f64,
    /// Publish → write latency, 99th percentile, in milliseconds.
    pub latency_p99_ms: f64,
}

macro_rules! counter {
    ($($name:ident => $field:ident),* $(,)?) => {
        $(pub(crate) fn $name(&self, n: u64) { self.$field.fetch_add(n, Ordering::Relaxed); })*
    };
}

impl Stats {
    counter! {
        connection_refused => connections_refused,
        message_in => messages_in,
        message_out => messages_out,
        bytes_in => bytes_in,
        bytes_out => bytes_out,
        dropped => dropped,
        rate_limited => rate_limited,
        error => errors,
        slow_disconnect => slow_disconnects,
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn active(&self) -> u64 {
        self.connections_active.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self, d: Duration) {
        let mut h = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = h.get_or_insert_with(|| {
            // UNWRAP: 1 µs .. 1 h at 2 significant digits is a valid configuration.
            #[allow(clippy::unwrap_used)]
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap()
        });
        let _ = h.record(
            u64::try_from(d.as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, 3_600_000_000),
        );
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (p50, p99) = {
            let h = self
                .latency
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h.as_ref().map_or((0.0, 0.0), |h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                )
            })
        };
        StatsSnapshot {
            connections_active: get(&self.connections_active),
            connections_total: get(&self.connections_total),
            connections_refused: get(&self.connections_refused),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            dropped: get(&self.dropped),
            rate_limited: get(&self.rate_limited),
            errors: get(&self.errors),
            slow_disconnects: get(&self.slow_disconnects),
            connections_behind: 0,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
        }
    }
}
