//! [`Config`]: the server's limits and buffers, each with a default fit for
//! a sidecar. Build one with `Config::default()` and the setters.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authorizer;

/// Server settings. Every limit has a default fit for a sidecar.
///
/// Non-exhaustive: start from `Config::default()` and use the setters,
/// e.g. `Config::default().queue_capacity(64).stall_limit(Duration::from_secs(2))`.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Events kept for replay. Default 10,000. Also how far behind a
    /// connection can fall before it loses low-priority events it has not
    /// pulled yet (high-priority ones are kept in a second ring of at least
    /// 4,096): keep it above `queue_capacity`.
    pub ring_capacity: usize,
    /// Per-connection outgoing queue, in events. Default 1,024.
    pub queue_capacity: usize,
    /// Events that arrive within this window go out in one `batch` frame. Default 10 ms.
    pub batch_window: Duration,
    /// At most this many events per frame. Default 64.
    pub batch_max: usize,
    /// Connections beyond this are refused with 503 before the upgrade. Default 10,000.
    pub max_connections: usize,
    /// A request head (the request line and headers) must arrive whole
    /// within this time, on a new connection and between requests on a
    /// kept-alive one; otherwise the connection is closed. Stops idle and
    /// slowloris connections from holding file descriptors. Default 10 s.
    pub header_timeout: Duration,
    /// Larger request heads get 431 and the connection is closed. Default 16 KiB.
    pub max_header_bytes: usize,
    /// The kernel send buffer of each accepted socket (`SO_SNDBUF`; Linux
    /// doubles it). A client that stops reading holds at most this much in
    /// the kernel (plus one frame in user space) before its writer waits,
    /// instead of megabytes of autotuned buffer that cost the CPU to fill.
    /// `None` leaves the system default. Default 64 KiB.
    pub send_buffer_bytes: Option<usize>,
    /// Connections served at once that have not become WebSockets (in a
    /// request, or idle between requests); beyond this a new connection is
    /// closed at once and counted in `connections_refused`. Default 1,024.
    pub max_pending_connections: usize,
    /// Larger client messages close the connection with 1009. Default 64 KiB.
    pub max_message_size: usize,
    /// Client messages per second allowed on one connection. Default 100.
    pub rate_per_second: f64,
    /// Burst above the rate. Default 200; a client refused this many times
    /// in a row is closed with 1008.
    pub rate_burst: u32,
    /// Interval of server pings. Default 30 s.
    pub ping_interval: Duration,
    /// Close with 4001 after this long without any client frame. Default 120 s.
    pub idle_timeout: Duration,
    /// Close with 4000 a client whose queue has been shedding (or whose
    /// socket has not accepted a write) this long. Default 10 s.
    pub stall_limit: Duration,
    /// Who may connect; `None` lets everyone in.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// `Origin`s allowed besides the server's own (browsers send `Origin`
    /// on WebSocket upgrades and cross-origin requests). Default `None`:
    /// only pages served by this server may connect, so a page on another
    /// site cannot read a loopback sidecar. `Some(vec!["*".into()])` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names accepted in the `Host` header besides the bound address
    /// (its IP, `localhost` on loopback, any IP literal when bound to all
    /// interfaces), with any port: the names a reverse proxy or DNS gives
    /// the sidecar. Default empty, which refuses DNS rebinding; `"*"` turns
    /// the check off.
    pub allowed_hosts: Vec<String>,
    /// The page served at `GET /`, if any.
    pub index_html: Option<&'static str>,
    /// Offer the subprotocol `perfmon.v1.deflate` (compressed frames) to
    /// clients that ask for it. Default off.
    pub compression: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("ring_capacity", &self.ring_capacity)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_connections", &self.max_connections)
            .field("authorizer", &self.authorizer.as_ref().map(|_| "(set)"))
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_capacity: 10_000,
            queue_capacity: 1_024,
            batch_window: Duration::from_millis(10),
            batch_max: 64,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_pending_connections: 1_024,
            send_buffer_bytes: Some(64 * 1024),
            max_message_size: 64 * 1024,
            rate_per_second: 100.0,
            rate_burst: 200,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            stall_limit: Duration::from_secs(10),
            authorizer: None,
            allowed_origins: None,
            allowed_hosts: Vec::new(),
            index_html: None,
            compression: false,
        }
    }
}

/// One setter per field, named after it, taking the value.
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        impl Config {
            $(
                $(#[$doc])*
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::ring_capacity`].
    ring_capacity: usize,
    /// Sets [`Config::queue_capacity`].
    queue_capacity: usize,
    /// Sets [`Config::batch_window`].
    batch_window: Duration,
    /// Sets [`Config::batch_max`].
    batch_max: usize,
    /// Sets [`Config::max_connections`].
    max_connections: usize,
    /// Sets [`Config::header_timeout`].
    header_timeout: Duration,
    /// Sets [`Config::max_header_bytes`].
    max_header_bytes: usize,
    /// Sets [`Config::max_pending_connections`].
    max_pending_connections: usize,
    /// Sets [`Config::send_buffer_bytes`].
    send_buffer_bytes: Option<usize>,
    /// Sets [`Config::max_message_size`].
    max_message_size: usize,
    /// Sets [`Config::rate_per_second`].
    rate_per_second: f64,
    /// Sets [`Config::rate_burst`].
    rate_burst: u32,
    /// Sets [`Config::ping_interval`].
    ping_interval: Duration,
    /// Sets [`Config::idle_timeout`].
    idle_timeout: Duration,
    /// Sets [`Config::stall_limit`].
    stall_limit: Duration,
    /// Sets [`Config::allowed_origins`].
    allowed_origins: Option<Vec<String>>,
    /// Sets [`Config::allowed_hosts`].
    allowed_hosts: Vec<String>,
    /// Sets [`Config::index_html`].
    index_html: Option<&'static str>,
    /// Sets [`Config::compression`].
    compression: bool,
}

impl Config {
    /// Sets [`Config::authorizer`].
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }
}
