//! Many processes, one dashboard (feature `fleet`): each worker publishes
//! its events to a Redis stream; a collector reads the stream and serves the
//! dashboard, REST, `/metrics` and the WebSocket protocol for the whole
//! fleet.
//!
//! ```text
//!  worker-1 ─┐  XADD ... MAXLEN ~ N          XREAD from an id    ┌─ browsers
//!  worker-2 ─┼──────────────▶  Redis stream  ──────────────▶ collector ─┼─ perfmon top
//!  worker-3 ─┘  (events, heartbeats)        (every collector sees all) └─ Prometheus
//! ```
//!
//! In each worker:
//!
//! ```no_run
//! # fn main() -> Result<(), perfmon::fleet::FleetError> {
//! let monitor = perfmon::Monitor::new();
//! let publisher = perfmon::fleet::Publisher::builder("redis://127.0.0.1:6379")
//!     .source("worker-3")
//!     .start(&monitor)?;       // never blocks: an absent Redis is retried in the background
//! # drop(publisher); Ok(()) }
//! ```
//!
//! Somewhere (`cargo run --example collector -- --redis URL --bind ADDR`):
//!
//! ```no_run
//! # fn main() -> Result<(), perfmon::fleet::FleetError> {
//! let collector = perfmon::fleet::Collector::builder("redis://127.0.0.1:6379")
//!     .bind("127.0.0.1:9464")
//!     .serve()?;
//! println!("Dashboard: {}", collector.url());
//! # Ok(()) }
//! ```
//!
//! - Every event is encoded once by its publisher and numbered by Redis
//!   (one Lua script: `INCR` then `XADD`), so the collector's stream keeps
//!   the protocol's gap-free `seq`, every collector numbers alike, and a
//!   restarted collector numbers as before: WebSocket resume works across
//!   collector restarts. The stream's `epoch` (in `welcome`) changes when
//!   Redis lost its data; a resume from another epoch gets `recovered: false`.
//! - Events carry `"source"`; listings take `?source=NAME`; WebSocket
//!   clients `subscribe {"sources": [..]}` or connect with `?source=NAME`.
//! - Sources heartbeat every 5 s; one silent for 12 s is *silent*, for 30 s
//!   *gone*: a collector appends `source_gone` (once, whichever collector
//!   sees it first) and every collector closes that process's open
//!   pipelines as lost. A restarted worker's `source_started` does the same
//!   for its previous process.
//! - Malformed entries are skipped and counted; Redis memory is bounded by
//!   the stream's MAXLEN; publishers buffer (bounded) while Redis is away.
//!
//! Dependency order, bottom to top: wire → broker → redis → publisher;
//! wire → state → shared → backend → collector.

mod backend;
mod broker;
mod collector;
mod publisher;
mod redis;
mod shared;
mod state;
mod wire;

pub use broker::BrokerError;
pub use collector::{Collector, CollectorBuilder, DEFAULT_GONE_AFTER, DEFAULT_SILENT_AFTER};
pub use publisher::{
    DEFAULT_BUFFER, DEFAULT_HEARTBEAT, DEFAULT_MAXLEN, DEFAULT_STREAM, Publisher, PublisherBuilder,
    PublisherStats,
};
pub use shared::BrokerStatus;
pub use state::{ReadStats, SourceState, SourceView};
pub use wire::SourceInfo;

/// Why a publisher or collector could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The broker URL is wrong, or the broker refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A collector could not reach the broker when it started.
    #[error(
        "the collector could not read the stream for {waited:?}: {error}; start Redis (or fix \
         the URL), then start the collector again"
    )]
    NoBroker {
        /// How long it tried.
        waited: std::time::Duration,
        /// The last error.
        error: String,
    },
    /// The collector's server could not start.
    #[error(transparent)]
    Server(#[from] crate::ws::SidecarError),
    /// A thread could not start.
    #[error("could not start the fleet's thread: {0}; the process is out of threads or memory")]
    Thread(#[source] std::io::Error),
}
