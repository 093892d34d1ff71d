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
//! | `GET /metrics` | Prometheus text: the families of [`crate::metrics`] |
//! | `GET /healthz` | 200 |
//!
//! The wire protocol is in PROTOCOL.md.
//!
//! Top of the crate's dependency order: uses the [`Monitor`]'s public API
//! and its hub slot, nothing below. `backend` answers REST, `exposition`
//! renders `/metrics`, `bridge` is the exporter that feeds the hub.

mod backend;
mod bridge;
pub(crate) mod exposition;
#[cfg(feature = "history")]
mod history_routes;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub use perfmon_ws::{Access, AuthError, Authorizer, BearerToken, Config, Priority, StatsSnapshot};
use perfmon_ws::{Backend, Server};

use crate::monitor::Monitor;

/// The page at `GET /`: the live dashboard (one self-contained file, no external resources).
const INDEX_HTML: &str = include_str!("dashboard.html");

/// The default address: loopback, port 9464.
pub const DEFAULT_BIND: &str = "127.0.0.1:9464";

/// How long a shutdown waits for the server to close its connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the sidecar could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The bind address is not a socket address.
    #[error("{0:?} is not a socket address like 127.0.0.1:9464; give a host and a port")]
    Address(String),
    /// The address could not be bound.
    #[error(
        "could not listen on {addr}: {source}; is another program on that port? Bind another \
         port, or port 0 for any free one"
    )]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server could not start on the bound socket.
    #[error(transparent)]
    Server(#[from] perfmon_ws::Error),
    /// The sidecar's own tokio runtime could not be built (no runtime was
    /// running on the calling thread).
    #[error(
        "could not build the sidecar's tokio runtime: {0}; the process is out of threads or \
         file descriptors, or call serve() from inside your own runtime"
    )]
    Runtime(#[source] std::io::Error),
    /// A thread the sidecar needs (its own, or the monitor's event bridge)
    /// could not start.
    #[error("could not start the sidecar's thread: {0}; the process is out of threads or memory")]
    Thread(#[source] std::io::Error),
}

/// Configures a [`Sidecar`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .serve(&monitor)"]
pub struct SidecarBuilder {
    bind: String,
    config: Config,
    own_thread: bool,
}

/// A running sidecar. It stops when dropped: keep it for as long as it
/// should serve.
#[derive(Debug)]
#[must_use = "the sidecar stops when dropped: bind it, e.g. `let sidecar = ...serve(&monitor)?;`"]
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
        /// Fires when the server has shut down and the thread is ending.
        done: tokio::sync::oneshot::Receiver<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl Sidecar {
    /// Starts configuring a sidecar.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder {
            bind: DEFAULT_BIND.to_owned(),
            config: Config::default(),
            own_thread: true,
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

    /// Closes every connection with code 1001 and stops, waiting (up to
    /// about 2 s) until the close frames are written, so a program that
    /// exits right after it has told every client to resume:
    ///
    /// - on the sidecar's own thread (the default): waits, and joins the
    ///   thread; called from a multi-thread tokio runtime's task, without
    ///   stalling the runtime's other tasks (`block_in_place`);
    /// - on the host's multi-thread runtime
    ///   ([`own_thread(false)`](SidecarBuilder::own_thread)): waits the
    ///   same way;
    /// - on the host's current-thread runtime it cannot wait without
    ///   stopping the very tasks that write the frames, so it returns at
    ///   once: use [`Sidecar::close`]`.await` there.
    ///
    /// The event bridge that fills the replay ring belongs to the monitor,
    /// not to the sidecar: a sidecar started again on the same monitor
    /// resumes clients with nothing lost. It stops with the last `Monitor`.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Like [`shutdown`](Sidecar::shutdown), awaited: returns once every
    /// close frame is written (up to about 2 s), on any runtime.
    pub async fn close(mut self) {
        match self.stop.take() {
            Some(Stop::Runtime { server, .. }) => server.shutdown(SHUTDOWN_GRACE).await,
            Some(Stop::Thread { stop, done, thread }) => {
                let _ = stop.send(());
                let _ = done.await;
                // The thread has nothing left to do but return.
                let _ = thread.join();
            }
            None => {}
        }
    }

    fn stop_now(&mut self) {
        match self.stop.take() {
            Some(Stop::Runtime { server, handle }) => shutdown_on(&handle, server),
            Some(Stop::Thread { stop, thread, .. }) => {
                let _ = stop.send(());
                without_stalling_the_runtime(|| {
                    let _ = thread.join();
                });
            }
            None => {}
        }
    }
}

/// Runs `wait` (a bounded blocking wait) so that, called from a task of a
/// multi-thread runtime, the runtime's other tasks go on meanwhile.
fn without_stalling_the_runtime(wait: impl FnOnce()) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// Shuts `server` down on `handle`'s runtime, and waits for it where
/// waiting cannot stall that runtime (see [`Sidecar::shutdown`]).
fn shutdown_on(handle: &tokio::runtime::Handle, server: Server) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    handle.spawn(async move {
        server.shutdown(SHUTDOWN_GRACE).await;
        let _ = done_tx.send(());
    });
    // A little past the server's own grace: it is bounded by it.
    let wait = || {
        let _ = done_rx.recv_timeout(SHUTDOWN_GRACE + Duration::from_millis(500));
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        // Not inside a runtime: blocking this thread stalls nothing.
        Err(_) => wait(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        // A current-thread runtime runs the shutdown only once this returns.
        Ok(_) => {}
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

    /// Also accept browser requests from these `Origin`s (exactly, e.g.
    /// `https://grafana.example`; `"*"` for any). By default only the
    /// sidecar's own page may connect: any other origin gets 403, so a web
    /// page the user visits cannot read a loopback sidecar.
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Also accept these names in the `Host` header (a reverse proxy's or
    /// DNS name for the sidecar; `"*"` turns the check off). By default
    /// only the bound address is accepted (its IP, `localhost` on loopback,
    /// any IP when bound to all interfaces): other names get 403, which
    /// stops DNS rebinding.
    pub fn allowed_hosts(mut self, hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.config.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Serve from a thread of its own with its own (current-thread)
    /// runtime (default `true`), as tokio-console's server does, so that
    /// what the sidecar's clients make it do never delays the host's tasks.
    /// `false` serves on the caller's tokio runtime when
    /// [`serve`](SidecarBuilder::serve) is called inside one (one thread
    /// fewer): its tasks then share the host's workers, and under a
    /// hostile load they delay the host's tasks (BENCHMARKS.md, "The
    /// host's runtime": p99 scheduling delay ~46× with a shared runtime,
    /// ~1× with its own thread).
    pub fn own_thread(mut self, enabled: bool) -> Self {
        self.own_thread = enabled;
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
    /// set before (and allowed hosts) unless `config` sets its own.
    pub fn config(mut self, config: Config) -> Self {
        let authorizer = self.config.authorizer.take();
        let origins = self.config.allowed_origins.take();
        let hosts = std::mem::take(&mut self.config.allowed_hosts);
        self.config = config;
        self.config.authorizer = self.config.authorizer.take().or(authorizer);
        self.config.allowed_origins = self.config.allowed_origins.take().or(origins);
        if self.config.allowed_hosts.is_empty() {
            self.config.allowed_hosts = hosts;
        }
        self
    }

    /// Binds and starts serving `monitor`: on a thread of its own with its
    /// own runtime, which records no tracing of itself, or on the current
    /// tokio runtime if there is one and
    /// [`own_thread(false)`](SidecarBuilder::own_thread) was set.
    ///
    /// # Errors
    ///
    /// A bad address, a port in use, or no thread or runtime: see [`SidecarError`].
    pub fn serve(self, monitor: &Monitor) -> Result<Sidecar, SidecarError> {
        let backend: Arc<dyn Backend> = Arc::new(backend::MonitorBackend::new(monitor.clone()));
        let hub = bridge::hub_of(monitor, self.config.ring_capacity)?;
        self.serve_backend(backend, hub)
    }

    /// Binds and serves `backend` and `hub` (a collector's, or a monitor's).
    pub(crate) fn serve_backend(
        self,
        backend: Arc<dyn Backend>,
        hub: Arc<perfmon_ws::Hub>,
    ) -> Result<Sidecar, SidecarError> {
        let addr = self
            .bind
            .to_socket_addrs()
            .map_err(|_| SidecarError::Address(self.bind.clone()))?
            .next()
            .ok_or_else(|| SidecarError::Address(self.bind.clone()))?;
        let bind_error = |source| SidecarError::Bind {
            addr: self.bind.clone(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let mut config = self.config;
        config.index_html = config.index_html.or(Some(INDEX_HTML));

        if let Some(handle) = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| !self.own_thread)
        {
            let _enter = handle.enter();
            let server = Server::start(listener, config, backend, hub)?;
            return Ok(Sidecar {
                addr: local,
                stop: Some(Stop::Runtime { server, handle }),
            });
        }
        let stop = serve_on_own_thread(listener, config, backend, hub)?;
        Ok(Sidecar {
            addr: local,
            stop: Some(stop),
        })
    }
}

/// Runs the server on a new thread with a current-thread runtime; returns
/// once it serves, or with the reason it could not.
fn serve_on_own_thread(
    listener: TcpListener,
    config: Config,
    backend: Arc<dyn Backend>,
    hub: Arc<perfmon_ws::Hub>,
) -> Result<Stop, SidecarError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), SidecarError>>();
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
                    let _ = ready_tx.send(Err(SidecarError::Runtime(err)));
                    return;
                }
            };
            runtime.block_on(async move {
                let server = match Server::start(listener, config, backend, hub) {
                    Ok(server) => server,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.await;
                server.shutdown(SHUTDOWN_GRACE).await;
                let _ = done_tx.send(());
            });
        })
        .map_err(SidecarError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Stop::Thread {
            stop: stop_tx,
            done: done_rx,
            thread,
        }),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(err)
        }
        Err(_) => {
            let _ = thread.join();
            Err(SidecarError::Thread(std::io::Error::other(
                "the sidecar thread ended while starting",
            )))
        }
    }
}
