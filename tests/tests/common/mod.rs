//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use perfmon::{MockClock, Monitor, MonitorBuilder};
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::layer::SubscriberExt;

/// A monitor whose layer is the thread's default subscriber while the guard lives.
pub fn install(builder: MonitorBuilder) -> (Monitor, DefaultGuard) {
    let monitor = builder.metrics(false).build();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    (monitor, guard)
}

/// A monitor on a mock clock, installed as the thread's default subscriber.
pub fn mocked() -> (Monitor, MockClock, DefaultGuard) {
    let clock = MockClock::new();
    let (monitor, guard) = install(Monitor::builder().mock_clock(&clock));
    (monitor, clock, guard)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts `got` is within `pct` percent of `want`.
pub fn assert_close(got: Duration, want: Duration, pct: f64) {
    let (g, w) = (got.as_secs_f64(), want.as_secs_f64());
    assert!(
        (g - w).abs() <= w * pct / 100.0,
        "got {got:?}, want {want:?} ± {pct}%"
    );
}
