//! [`MockClock`]: a clock tests advance by hand, for exact timings.
//!
//! Imports nothing from the crate; the builder hands its `quanta::Clock` to
//! the recorder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A clock that only moves when told to, for tests with exact timings.
///
/// ```
/// use std::time::Duration;
/// let clock = perfmon::MockClock::new();
/// let monitor = perfmon::Monitor::builder().mock_clock(&clock).build();
/// clock.advance(Duration::from_millis(5));
/// # let _ = monitor;
/// ```
#[derive(Clone)]
pub struct MockClock {
    pub(crate) clock: quanta::Clock,
    mock: Arc<quanta::Mock>,
}

impl fmt::Debug for MockClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockClock")
            .field("now_ns", &self.mock.value())
            .finish()
    }
}

impl Default for MockClock {
    fn default() -> Self {
        MockClock::new()
    }
}

impl MockClock {
    /// A mock clock at zero.
    pub fn new() -> Self {
        let (clock, mock) = quanta::Clock::mock();
        MockClock { clock, mock }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.mock.increment(by);
    }
}
