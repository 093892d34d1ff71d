//! The [`Broker`] trait: what the fleet needs from a message broker, so that
//! another engine (NATS JetStream) can follow Redis Streams. Above `wire`.

use std::time::Duration;

use super::wire::{Incoming, Outgoing};

/// Why a broker call failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL is not one the broker understands.
    #[error("{url:?} is not a broker URL: {reason}; give one like redis://127.0.0.1:6379")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Could not connect, or the connection broke: the broker is down,
    /// restarting, or unreachable. Retried with backoff.
    #[error("the broker at {url} is unreachable: {reason}; is it running? Retrying with backoff")]
    Unreachable {
        /// The URL.
        url: String,
        /// The error.
        reason: String,
    },
    /// The broker answered with an error (out of memory, a wrong type at
    /// the stream's key, ...).
    #[error("the broker refused: {0}; check its log and the stream's key")]
    Refused(String),
}

/// A stream that many publishers append to and many collectors read from,
/// each reader seeing everything, in one order.
pub(crate) trait Broker: Send {
    /// Appends `entries` in order; numbers the events among them (a
    /// fleet-wide, gap-free seq) and bounds the stream's length.
    fn append(&mut self, entries: &[Outgoing]) -> Result<(), BrokerError>;

    /// Appends `entry` unless `marker` was already used (by any process),
    /// for events that one collector of many should write. `Ok(false)` when
    /// it was.
    fn append_once(&mut self, marker: &str, entry: &Outgoing) -> Result<bool, BrokerError>;

    /// Up to `max` entries after position `after` (`"0"` for the oldest
    /// kept), waiting up to `wait` when there are none yet.
    fn read(
        &mut self,
        after: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Incoming>, BrokerError>;

    /// The stream's epoch: changes when its numbering starts again (a
    /// broker that lost its data). `None` before anything was appended.
    fn epoch(&mut self) -> Result<Option<String>, BrokerError>;

    /// The broker's clock, unix ms, to judge heartbeats by the same clock
    /// that stamped them.
    fn now_ms(&mut self) -> Result<u64, BrokerError>;
}
