//! The WebSocket sidecar (feature `ws`): streams a [`Monitor`]'s events live
//! and serves its snapshots over HTTP, on one port.
//!
//! ```no_run
//! # fn main() -> Result<(), perfmon::ws::SidecarError> {
//! let monitor = perfmon::Monitor::new();
//! let sidecar = perfmon::ws::Sidecar::builder()
//!     .bind("127.0.0.1:9464")        // the default; loopback unless told otherwise
//!     .token("s3cret")               // optional; then every request but / and /healthz needs it
//!     .serve(&monitor)?;             // on the current tokio runtime, or its own thread
//! println!("Dashboard: {}", sidecar.url());
//! sidecar.shutdown();
//! # Ok(()) }
//! ```
//!
//! | path | what |
//! | --- | --- |
//! | `WS /ws`, `WS /ws/{pipeline}` | every event; one pipeline's room (starts with its `snapshot`) |
//! | `GET /api/performance/overview` | [`Overview`](crate::Overview) |
//! | `GET /api/performance/pipelines/active` | active pipelines |
//! | `GET /api/performance/pipelines/recent?limit=N` | recent reports (default 20, at most 1,000) |
//! | `GET /api/performance/pipeline/{id}` | one report, 404 if unknown |
//! | `GET /api/performance/agents`, `/agents/slowest?limit=N` | agent statistics |
//! | `GET /api/performance/websocket/status` | connections, messages, bytes, drops, rate-limit hits, latency |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 |
//!
//! The wire protocol is in PROTOCOL.md.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub use perfmon_ws::{Access, AuthError, Authorizer, BearerToken, Config, Priority, StatsSnapshot};
use perfmon_ws::{Backend, Reply, Server, ServerInfo};

use crate::events::{Event, EventKind};
use crate::monitor::Monitor;

/// The page at `GET /`: the live dashboard (one self-contained file, no external resources).
const INDEX_HTML: &str = include_str!("dashboard.html");

/// The default address: loopback, port 9464.
pub const DEFAULT_BIND: &str = "127.0.0.1:9464";

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The bind address is not an address.
    #[error("{0:?} is not a socket address like 127.0.0.1:9464")]
    Address(String),
    /// The address could not be bound.
    #[error(
        "could not listen on {addr}: {source}; is another program on that port? Use --bind with another port, or port 0"
    )]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server could not start on the socket.
    #[error(transparent)]
    Server(#[from] perfmon_ws::Error),
    /// The sidecar's own thread could not start.
    #[error("could not start the sidecar thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Configures a [`Sidecar`].
#[derive(Debug)]
pub struct SidecarBuilder {
    bind: String,
    config: Config,
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    addr: SocketAddr,
    stop: Option<Stop>,
}

#[derive(Debug)]
enum Stop {
    /// Running on the caller's runtime.
    Runtime {
        server: Server,
        handle: tokio::runtime::Handle,
    },
    /// Running on its own thread.
    Thread {
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl Sidecar {
    /// Starts configuring a sidecar.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder {
            bind: DEFAULT_BIND.to_owned(),
            config: Config::default(),
        }
    }

    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Closes every connection with code 1001 and stops. On its own thread,
    /// waits for it (up to a few seconds); on the caller's runtime, returns
    /// at once while the shutdown completes there.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        match self.stop.take() {
            Some(Stop::Runtime { server, handle }) => {
                handle.spawn(server.shutdown(Duration::from_secs(2)));
            }
            Some(Stop::Thread { stop, thread }) => {
                let _ = stop.send(());
                let _ = thread.join();
            }
            None => {}
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl SidecarBuilder {
    /// Where to listen (default `127.0.0.1:9464`; port 0 picks a free port).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.bind = addr.into();
        self
    }

    /// Requires `token` (`Authorization: Bearer` or `?token=`) on every
    /// request but the page and `/healthz`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.authorizer = Some(Arc::new(BearerToken::new(token)));
        self
    }

    /// A custom check instead of a token (JWTs, cookies, ...).
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.config.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Accept browser connections only from these `Origin`s (403 otherwise).
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Offer compressed frames (subprotocol `perfmon.v1.deflate`) to clients
    /// that ask for them: about 8× fewer bytes on a typical stream, for some
    /// CPU per connection (see PROTOCOL.md). Default off.
    pub fn compression(mut self, enabled: bool) -> Self {
        self.config.compression = enabled;
        self
    }

    /// Limits and buffers: see [`Config`]. Keeps an authorizer and origins
    /// set before unless `config` sets its own.
    pub fn config(mut self, config: Config) -> Self {
        let authorizer = self.config.authorizer.take();
        let origins = self.config.allowed_origins.take();
        self.config = config;
        self.config.authorizer = self.config.authorizer.take().or(authorizer);
        self.config.allowed_origins = self.config.allowed_origins.take().or(origins);
        self
    }

    /// Binds and starts serving `monitor`: on the current tokio runtime if
    /// there is one, else on a thread of its own with its own runtime (which
    /// records no tracing of itself).
    ///
    /// # Errors
    ///
    /// A bad address, a port in use, or no thread.
    pub fn serve(self, monitor: &Monitor) -> Result<Sidecar, SidecarError> {
        let addr = self
            .bind
            .to_socket_addrs()
            .map_err(|_| SidecarError::Address(self.bind.clone()))?
            .next()
            .ok_or_else(|| SidecarError::Address(self.bind.clone()))?;
        let listener = TcpListener::bind(addr).map_err(|source| SidecarError::Bind {
            addr: self.bind.clone(),
            source,
        })?;
        let local = listener.local_addr().map_err(|source| SidecarError::Bind {
            addr: self.bind.clone(),
            source,
        })?;
        let backend: Arc<dyn Backend> = Arc::new(MonitorBackend {
            monitor: monitor.clone(),
        });
        let mut config = self.config;
        config.index_html = config.index_html.or(Some(INDEX_HTML));
        let hub = hub_of(monitor, config.ring_capacity)?;

        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _enter = handle.enter();
            let server = Server::start(listener, config, backend, hub)?;
            return Ok(Sidecar {
                addr: local,
                stop: Some(Stop::Runtime { server, handle }),
            });
        }

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), perfmon_ws::Error>>();
        let thread = std::thread::Builder::new()
            .name("perfmon-sidecar".into())
            .spawn(move || {
                // The sidecar's own work is not the host's: trace none of it.
                let _quiet =
                    tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(perfmon_ws::Error::Bind {
                            addr: local.to_string(),
                            source: err,
                        }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let server = match Server::start(listener, config, backend, hub) {
                        Ok(server) => server,
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.await;
                    server.shutdown(Duration::from_secs(2)).await;
                });
            })
            .map_err(SidecarError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Sidecar {
                addr: local,
                stop: Some(Stop::Thread {
                    stop: stop_tx,
                    thread,
                }),
            }),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(SidecarError::Thread(std::io::Error::other(
                "the sidecar thread ended while starting",
            ))),
        }
    }
}

/// What to shed first for slow clients: chatter before outcomes.
fn priority(event: &Event) -> Priority {
    match event.kind {
        EventKind::AgentProgress { .. }
        | EventKind::Thought { .. }
        | EventKind::StateUpdate { .. } => Priority::Low,
        _ => Priority::High,
    }
}

/// The monitor's hub: created with its bridge thread on first use, then
/// kept for the monitor's lifetime, so that a restarted sidecar serves the
/// same replay ring and nothing published while it was down is lost.
fn hub_of(monitor: &Monitor, ring_capacity: usize) -> Result<Arc<perfmon_ws::Hub>, SidecarError> {
    if let Some(hub) = monitor.inner.ws_hub.get() {
        return Ok(Arc::clone(hub));
    }
    let hub = Arc::new(perfmon_ws::Hub::new(ring_capacity));
    if monitor.inner.ws_hub.set(Arc::clone(&hub)).is_err() {
        // Another sidecar won the race: use its hub.
        return monitor.inner.ws_hub.get().cloned().ok_or_else(|| {
            SidecarError::Thread(std::io::Error::other(
                "the sidecar hub vanished while starting",
            ))
        });
    }
    // Holds the subscription, not the monitor: it ends when the monitor is dropped.
    let mut events = monitor.subscribe();
    let bridge_hub = Arc::clone(&hub);
    std::thread::Builder::new()
        .name("perfmon-ws-bridge".into())
        .spawn(move || bridge(&mut events, &bridge_hub))
        .map_err(SidecarError::Thread)?;
    Ok(hub)
}

/// Monitor events → hub items, each encoded once. Also mirrors the server's
/// counters into the `metrics` facade, at most once a second.
fn bridge(events: &mut crate::Subscription, hub: &perfmon_ws::Hub) {
    let mut exported = std::time::Instant::now();
    while let Some(event) = events.recv_blocking_until_closed() {
        let Ok(json) = serde_json::to_string(&event) else {
            continue;
        };
        hub.publish(perfmon_ws::item(
            event.seq,
            event.pipeline.clone(),
            Arc::from(event.type_name()),
            event.agent().map(Arc::from),
            priority(&event),
            json,
        ));
        if exported.elapsed() >= Duration::from_secs(1) {
            export_stats(&hub.stats_snapshot());
            exported = std::time::Instant::now();
        }
    }
}

fn export_stats(s: &StatsSnapshot) {
    metrics::gauge!("perfmon_ws_connections_active").set(s.connections_active as f64);
    metrics::counter!("perfmon_ws_connections_total").absolute(s.connections_total);
    metrics::counter!("perfmon_ws_messages_out_total").absolute(s.messages_out);
    metrics::counter!("perfmon_ws_bytes_out_total").absolute(s.bytes_out);
    metrics::counter!("perfmon_ws_messages_in_total").absolute(s.messages_in);
    metrics::counter!("perfmon_ws_dropped_total").absolute(s.dropped);
    metrics::counter!("perfmon_ws_rate_limited_total").absolute(s.rate_limited);
    metrics::counter!("perfmon_ws_errors_total").absolute(s.errors);
}

/// Answers snapshots and REST requests from a [`Monitor`].
struct MonitorBackend {
    monitor: Monitor,
}

fn limit(query: &str) -> usize {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
        .clamp(1, 1_000)
}

impl Backend for MonitorBackend {
    fn snapshot(&self, topic: Option<&str>) -> Option<serde_json::Value> {
        let m = &self.monitor;
        match topic {
            Some(id) => m.pipeline(id).and_then(|r| serde_json::to_value(r).ok()),
            None => Some(serde_json::json!({
                "overview": m.overview(),
                "active": m.active_pipelines(),
                "recent": m.recent_pipelines(20),
                "agents": m.agents(),
            })),
        }
    }

    fn get(&self, path: &str, query: &str, server: &ServerInfo<'_>) -> Option<Reply> {
        let m = &self.monitor;
        let reply = match path.trim_end_matches('/') {
            "/api/performance/overview" => Reply::json(&m.overview()),
            "/api/performance/pipelines/active" => Reply::json(&m.active_pipelines()),
            "/api/performance/pipelines/recent" => Reply::json(&m.recent_pipelines(limit(query))),
            "/api/performance/agents" => Reply::json(&m.agents()),
            "/api/performance/agents/slowest" => Reply::json(&m.slowest_agents(limit(query))),
            "/metrics" => Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: prometheus(m, server),
            },
            other => {
                let id = other.strip_prefix("/api/performance/pipeline/")?;
                let id = perfmon_ws::percent_decode(id);
                match m.pipeline(&id) {
                    Some(report) => Reply::json(&report),
                    None => Reply::error(
                        404,
                        &format!(
                            "no pipeline {id:?}: it is unknown or fell out of the recent ring"
                        ),
                    ),
                }
            }
        };
        Some(reply)
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text from the monitor's own numbers (no recorder needed).
fn prometheus(m: &Monitor, server: &ServerInfo<'_>) -> String {
    let mut out = String::new();
    let o = m.overview();
    let agents = m.agents();
    let _ = writeln!(out, "# TYPE perfmon_agent_runs_total counter");
    for a in &agents {
        let name = escape(&a.agent);
        let _ = writeln!(
            out,
            "perfmon_agent_runs_total{{agent=\"{name}\",outcome=\"succeeded\"}} {}",
            a.runs - a.failures
        );
        let _ = writeln!(
            out,
            "perfmon_agent_runs_total{{agent=\"{name}\",outcome=\"failed\"}} {}",
            a.failures
        );
    }
    let _ = writeln!(out, "# TYPE perfmon_agent_duration_seconds summary");
    for a in &agents {
        let name = escape(&a.agent);
        for (q, d) in [("0.5", a.p50), ("0.9", a.p90), ("0.99", a.p99)] {
            let _ = writeln!(
                out,
                "perfmon_agent_duration_seconds{{agent=\"{name}\",quantile=\"{q}\"}} {}",
                d.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "perfmon_agent_duration_seconds_sum{{agent=\"{name}\"}} {}",
            a.total.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "perfmon_agent_duration_seconds_count{{agent=\"{name}\"}} {}",
            a.runs
        );
    }
    let _ = writeln!(
        out,
        "# TYPE perfmon_pipelines_active gauge\nperfmon_pipelines_active {}",
        o.pipelines_active
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_pipelines_total counter\nperfmon_pipelines_total {}",
        o.pipelines_total
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_pipelines_failed_total counter\nperfmon_pipelines_failed_total {}",
        o.pipelines_failed
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_events_dropped_total counter\nperfmon_events_dropped_total {}",
        o.events_dropped
    );
    let s = server.stats.snapshot();
    let _ = writeln!(
        out,
        "# TYPE perfmon_ws_connections_active gauge\nperfmon_ws_connections_active {}",
        s.connections_active
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_ws_messages_out_total counter\nperfmon_ws_messages_out_total {}",
        s.messages_out
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_ws_dropped_total counter\nperfmon_ws_dropped_total {}",
        s.dropped
    );
    let _ = writeln!(
        out,
        "# TYPE perfmon_ws_rate_limited_total counter\nperfmon_ws_rate_limited_total {}",
        s.rate_limited
    );
    out
}
