//! The sidecar's own counters: `/api/performance/websocket/status`, the
//! `metrics` reply, and the `perfmon_ws_*` metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    latency: Mutex<LatencyWindow>,
}

/// Latencies above this (µs) are clamped: one hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// How long a latency sample counts: the figures cover the last one to two
/// windows, so one slow moment fades instead of staying in p99 for good.
const LATENCY_WINDOW: Duration = Duration::from_secs(60);

/// Two histograms, the current window's and the one before; the figures
/// merge both.
#[derive(Debug, Default)]
struct LatencyWindow {
    current: Option<hdrhistogram::Histogram<u64>>,
    previous: Option<hdrhistogram::Histogram<u64>>,
    started: Option<Instant>,
}

impl LatencyWindow {
    fn rotate(&mut self, now: Instant) {
        let started = *self.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        if age >= 2 * LATENCY_WINDOW {
            self.previous = None;
            self.current = None;
            self.started = Some(now);
        } else if age >= LATENCY_WINDOW {
            self.previous = self.current.take();
            self.started = Some(now);
        }
    }

    fn record(&mut self, now: Instant, micros: u64) {
        self.rotate(now);
        let h = self.current.get_or_insert_with(|| {
            // UNWRAP: 1 µs .. 1 h at 2 significant digits is a valid configuration.
            #[allow(clippy::unwrap_used)]
            hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).unwrap()
        });
        // Cannot fail: the value is clamped into the bounds.
        let _ = h.record(micros);
    }

    /// (p50, p99) in milliseconds over the current and previous windows.
    fn quantiles(&mut self, now: Instant) -> (f64, f64) {
        self.rotate(now);
        let mut merged = match (&self.current, &self.previous) {
            (None, None) => return (0.0, 0.0),
            (Some(h), _) | (None, Some(h)) => h.clone(),
        };
        if let (Some(_), Some(previous)) = (&self.current, &self.previous) {
            // Same bounds and precision: adding cannot fail.
            let _ = merged.add(previous);
        }
        (
            merged.value_at_quantile(0.5) as f64 / 1e3,
            merged.value_at_quantile(0.99) as f64 / 1e3,
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    /// Publish → write latency of live events (not replays or resumes),
    /// median, in milliseconds, over the last one to two minutes.
    pub latency_p50_ms: f64,
    /// The same, 99th percentile.
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
        let micros = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_US);
        lock(&self.latency).record(Instant::now(), micros);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (p50, p99) = lock(&self.latency).quantiles(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_figures_cover_a_moving_window() {
        let t0 = Instant::now();
        let mut w = LatencyWindow::default();
        w.record(t0, 5_000_000); // one 5 s outlier
        for _ in 0..10 {
            w.record(t0, 1_000);
        }
        assert!(w.quantiles(t0).1 >= 4_900.0, "the outlier is in p99 now");
        let later = t0 + LATENCY_WINDOW + Duration::from_secs(1);
        w.record(later, 1_000);
        assert!(w.quantiles(later).1 >= 4_900.0, "and for one more window");
        let much_later = later + LATENCY_WINDOW + Duration::from_secs(1);
        w.record(much_later, 1_000);
        let (p50, p99) = w.quantiles(much_later);
        assert!(p99 < 2.0 && p50 < 2.0, "then it is gone: {p50} {p99}");
        let idle = much_later + 3 * LATENCY_WINDOW;
        assert_eq!(w.quantiles(idle), (0.0, 0.0), "nothing recent: no figure");
    }
}
