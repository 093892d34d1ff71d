//! A reusable real-time fan-out server for JSON events, on tokio and
//! tokio-tungstenite (through axum), with resume, filters, backpressure and
//! limits. It knows nothing of perfmon's types: the host publishes
//! already-encoded [`Item`]s and answers snapshot and HTTP requests through
//! a [`Backend`]. perfmon's feature `ws` plugs a `Monitor` into it.
//!
//! # Core concepts
//!
//! - [`Hub`]: a replay ring of the last N items and one bounded queue per
//!   connection. Each item is encoded once and its bytes shared. Publishing
//!   is O(1) in the number of connections: each connection's writer pulls
//!   what is new when it is ready to write, so a stalled client costs nothing
//!   per event.
//! - [`Server`]: HTTP and WebSocket on one port; one writer task per
//!   connection batches what arrived within a short window into one frame.
//! - Protocol `perfmon.v1` ([`protocol`]): see PROTOCOL.md for every message.
//! - [`Client`]: a Rust client that reconnects with backoff and full jitter,
//!   resumes from the last seq it saw, and reports its [`ConnectionState`].
//!
//! # Usage
//!
//! ```no_run
//! # async fn run(backend: std::sync::Arc<dyn perfmon_ws::Backend>) -> Result<(), perfmon_ws::Error> {
//! use perfmon_ws::{Config, Hub, Priority, Server, item};
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| perfmon_ws::Error::Listener {
//!     addr: "127.0.0.1:0".into(),
//!     source: e,
//! })?;
//! let hub = std::sync::Arc::new(Hub::new(10_000));
//! let server = Server::start(listener, Config::default(), backend, hub)?;
//! server.hub().publish(item(1, Some("proj_1".into()), "agent_completed".into(), None, Priority::High,
//!     r#"{"type":"agent_completed","seq":1}"#.to_owned()));
//! # Ok(()) }
//! ```

// Dependency order, bottom to top (no two modules import each other):
//   stats, auth, config, backend, site → protocol, hub → shared → connection
//   → routes → listen → server;  client stands alone (it uses only protocol).
mod auth;
mod backend;
mod client;
mod config;
mod connection;
mod hub;
mod listen;
pub mod protocol;
mod routes;
mod server;
mod shared;
mod site;
mod stats;

pub use auth::{Access, AuthError, Authorizer, BearerToken, percent_decode, percent_encode};
pub use backend::{Backend, Reply, ServerInfo};
pub use client::{Client, ClientBuilder, ConnectionState, Received, SendError};
pub use config::Config;
pub use hub::{Dropped, Filter, Hub, Item, Priority, Replay, item};
pub use server::{Error, Server};
pub use stats::{Stats, StatsSnapshot};
