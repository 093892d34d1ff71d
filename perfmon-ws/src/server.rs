//! The HTTP + WebSocket server: one port, one writer task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::auth::{Access, Authorizer};
use crate::hub::{Filter, Hub, Item, Queue};
use crate::protocol::{self, Command, Lists, close, codes};
use crate::stats::Stats;

/// What the host application serves besides the stream: snapshots and
/// read-only HTTP endpoints. perfmon implements it for its `Monitor`.
pub trait Backend: Send + Sync + 'static {
    /// The current state of `topic` (or of everything, for `None`), as a
    /// JSON value; `None` if the topic is unknown.
    fn snapshot(&self, topic: Option<&str>) -> Option<serde_json::Value>;

    /// Answers `GET path?query` for paths the server does not handle
    /// itself; `None` gives 404.
    fn get(&self, path: &str, query: &str, server: &ServerInfo<'_>) -> Option<Reply>;
}

/// What a [`Backend`] may want to know about the server while answering.
#[derive(Debug)]
pub struct ServerInfo<'a> {
    /// The server's counters.
    pub stats: &'a Stats,
    /// The highest seq published.
    pub last_seq: u64,
}

/// An HTTP reply from a [`Backend`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A 200 JSON reply.
    pub fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Reply {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(err) => Reply::error(500, &format!("could not encode the reply: {err}")),
        }
    }

    /// An error reply with a JSON body `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::json!({ "error": message }).to_string(),
        }
    }
}

/// Server settings. Every limit has a default fit for a sidecar.
#[derive(Clone)]
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
    /// Allowed `Origin` headers (browsers); `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
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
            max_message_size: 64 * 1024,
            rate_per_second: 100.0,
            rate_burst: 200,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            stall_limit: Duration::from_secs(10),
            authorizer: None,
            allowed_origins: None,
            index_html: None,
            compression: false,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be bound.
    #[error("could not listen on {addr}: {source}; pick a free port, or port 0 for any")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The address is not a socket address.
    #[error("{0:?} is not an address like 127.0.0.1:9464")]
    Address(String),
}

struct Shared {
    hub: Arc<Hub>,
    backend: Arc<dyn Backend>,
    config: Config,
    shutdown: watch::Receiver<bool>,
    sessions: AtomicU64,
}

/// A running server. [`Server::shutdown`] stops it and waits; dropping it
/// stops it too, without waiting.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves on `listener` (bind it to port 0 for a free port) on the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] if the listener cannot be used by tokio.
    ///
    /// `hub` holds the replay ring: pass the same hub to a restarted server
    /// and clients resume across the restart.
    pub fn start(
        listener: std::net::TcpListener,
        config: Config,
        backend: Arc<dyn Backend>,
        hub: Arc<Hub>,
    ) -> Result<Server, Error> {
        let name = format!("{:?}", listener.local_addr().ok());
        let bind_err = |source| Error::Bind {
            addr: name.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_err)?;
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            hub: Arc::clone(&hub),
            backend,
            config,
            shutdown,
            sessions: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/", get(index))
            .route("/ws", get(ws_all))
            .route("/ws/{topic}", get(ws_room))
            .fallback(get(backend_get))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                guard,
            ))
            .with_state(Arc::clone(&shared));
        let mut until = shared.shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = until.wait_for(|stop| *stop).await;
            });
            // An accept loop error ends the server; nothing else to tell.
            let _ = serve.await;
        });
        Ok(Server {
            addr,
            hub,
            stop,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hub: publish items to it.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Closes every connection with 1001 (going away) and stops listening.
    /// Waits up to `grace` for the listener task to end.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

/// Auth and origin checks, before routing (and so before any upgrade).
/// `/healthz` and the page at `/` are open: they carry no data, and the page
/// must load to ask for the token.
async fn guard(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/" {
        return next.run(req).await;
    }
    if let (Some(allowed), Some(origin)) = (
        &shared.config.allowed_origins,
        req.headers().get(header::ORIGIN),
    ) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a == o));
        if !ok {
            shared.hub.stats.connection_refused(1);
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    if let Some(authorizer) = &shared.config.authorizer {
        let access = Access::from_request(req.headers(), req.uri().query());
        if let Err(err) = authorizer.authorize(&access) {
            shared.hub.stats.connection_refused(1);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                err.to_string(),
            )
                .into_response();
        }
    }
    next.run(req).await
}

async fn index(State(shared): State<Arc<Shared>>) -> Response {
    match shared.config.index_html {
        Some(page) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no page here; see /ws and /api/performance/",
        )
            .into_response(),
    }
}

async fn backend_get(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let stats = &shared.hub.stats;
    let info = ServerInfo {
        stats,
        last_seq: shared.hub.last_seq(),
    };
    let reply = match path.as_str() {
        "/api/performance/websocket/status" => Some(Reply::json(&shared.hub.stats_snapshot())),
        _ => shared.backend.get(&path, &query, &info),
    };
    let reply = reply.unwrap_or_else(|| Reply::error(404, &format!("nothing at {path}")));
    Response::builder()
        .status(reply.status)
        .header(header::CONTENT_TYPE, reply.content_type)
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    since: Option<u64>,
}

async fn ws_all(
    ws: WebSocketUpgrade,
    Query(q): Query<WsQuery>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    upgrade(ws, q, shared, None)
}

async fn ws_room(
    ws: WebSocketUpgrade,
    Path(topic): Path<String>,
    Query(q): Query<WsQuery>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    upgrade(ws, q, shared, Some(topic))
}

fn upgrade(
    ws: WebSocketUpgrade,
    q: WsQuery,
    shared: Arc<Shared>,
    room: Option<String>,
) -> Response {
    if shared.hub.stats.active() >= shared.config.max_connections as u64 {
        shared.hub.stats.connection_refused(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many connections",
        )
            .into_response();
    }
    let c = &shared.config;
    let offered: &[&'static str] = if c.compression {
        &[protocol::PROTOCOL_DEFLATE, protocol::PROTOCOL]
    } else {
        &[protocol::PROTOCOL]
    };
    let ws = ws.protocols(offered.iter().copied());
    let compressed = ws
        .selected_protocol()
        .is_some_and(|p| p == protocol::PROTOCOL_DEFLATE);
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(c.max_message_size)
        .max_frame_size(c.max_message_size)
        .on_upgrade(move |socket| connection(socket, shared, room, q.since, compressed))
}

/// Token bucket for client messages.
struct RateLimit {
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
}

enum Verdict {
    Ok,
    Refused { tell: bool },
    Flood,
}

impl RateLimit {
    fn check(&mut self, config: &Config) -> Verdict {
        let now = Instant::now();
        let burst = f64::from(config.rate_burst);
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * config.rate_per_second)
            .min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            Verdict::Ok
        } else {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row >= config.rate_burst {
                Verdict::Flood
            } else {
                // Say so on the first refusal and every 50th, not on each.
                Verdict::Refused {
                    tell: self.refused_in_a_row % 50 == 1,
                }
            }
        }
    }
}

/// What the reader asks the writer to send.
enum Control {
    Text(String),
    Close(u16, &'static str),
}

/// Returns when the connection has something to send: a replay queued, or
/// anything published.
async fn wake(notify: &tokio::sync::Notify, announcements: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::select! {
        () = notify.notified() => {}
        changed = announcements.changed() => {
            if changed.is_err() {
                // The hub is gone: only the other branches can end this.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn connection(
    socket: WebSocket,
    shared: Arc<Shared>,
    room: Option<String>,
    since: Option<u64>,
    compressed: bool,
) {
    let stats = Arc::clone(&shared.hub.stats);
    stats.connection_opened();
    let session = shared.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let filter = Filter {
        room: room.clone(),
        ..Filter::default()
    };
    let queue = Arc::new(Queue::new(shared.config.queue_capacity, filter));
    let (mut sink, mut stream) = socket.split();

    // The welcome, then a room's snapshot, then any replay: in that order,
    // before live events (the queue is attached now but drained later).
    // Listen before attaching, and start "changed", so nothing published
    // from here on (or replayed) waits for a later event to be sent.
    let mut announcements = shared.hub.announcements();
    announcements.mark_changed();
    let replay = shared.hub.attach(Arc::clone(&queue), since);
    let welcome = protocol::Welcome {
        kind: "welcome",
        session,
        protocol: protocol::PROTOCOL,
        last_seq: shared.hub.last_seq(),
        room: room.as_deref(),
    };
    let mut first = vec![serde_json::to_string(&welcome).unwrap_or_default()];
    if let Some(topic) = &room
        && let Some(state) = shared.backend.snapshot(Some(topic))
    {
        first.push(
            serde_json::json!({"type": "snapshot", "pipeline": topic, "data": state}).to_string(),
        );
    }
    if let (Some(since), Some(replay)) = (since, replay) {
        // The replayed items are already queued, behind these messages.
        first.push(resumed(since, &replay));
    }

    let (control_tx, mut control_rx) = mpsc::channel::<Control>(64);
    let writer_queue = Arc::clone(&queue);
    let writer_shared = Arc::clone(&shared);
    let writer = tokio::spawn(async move {
        let shared = writer_shared;
        let queue = writer_queue;
        let stats = &shared.hub.stats;
        let config = &shared.config;
        let mut shutdown = shared.shutdown.clone();
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        let send_timeout = config.stall_limit;
        macro_rules! send {
            ($label:lifetime, $msg:expr) => {{
                let msg: Message = $msg;
                let msg = if compressed { deflate(msg) } else { msg };
                let len = match &msg {
                    Message::Text(t) => t.len() as u64,
                    Message::Binary(b) => b.len() as u64,
                    _ => 0,
                };
                match tokio::time::timeout(send_timeout, async {
                    sink.feed(msg).await?;
                    sink.flush().await
                })
                .await
                {
                    Ok(Ok(())) => {
                        stats.message_out(1);
                        stats.bytes_out(len);
                    }
                    Ok(Err(_)) => break $label,
                    Err(_) => {
                        stats.slow_disconnect(1);
                        break $label;
                    }
                }
            }};
        }
        // Any failed send ends the connection: `send!` breaks out of this block.
        'conn: {
            for text in first {
                send!('conn, Message::Text(text.into()));
            }
            loop {
                tokio::select! {
                    biased;
                    () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                        let _ = sink.send(close_frame(close::GOING_AWAY, "server shutting down; resume with ?since=")).await;
                        break;
                    }
                    control = control_rx.recv() => match control {
                        Some(Control::Text(text)) => send!('conn, Message::Text(text.into())),
                        Some(Control::Close(code, reason)) => {
                            let _ = sink.send(close_frame(code, reason)).await;
                            break;
                        }
                        None => break,
                    },
                    () = wake(&queue.notify, &mut announcements) => {
                        if queue.backlog(&shared.hub) < config.batch_max {
                            tokio::time::sleep(config.batch_window).await;
                        }
                        queue.pull(&shared.hub);
                        if queue.stalled_for().is_some_and(|d| d >= config.stall_limit) {
                            stats.slow_disconnect(1);
                            let _ = sink.send(close_frame(close::SLOW_CONSUMER, "too slow: reconnect with ?since=")).await;
                            break;
                        }
                        // Replies enqueued before these items (a `resumed` before
                        // its replay) go first.
                        let mut closing = None;
                        while let Ok(control) = control_rx.try_recv() {
                            match control {
                                Control::Text(text) => send!('conn, Message::Text(text.into())),
                                Control::Close(code, reason) => {
                                    closing = Some((code, reason));
                                    break;
                                }
                            }
                        }
                        if let Some((code, reason)) = closing {
                            let _ = sink.send(close_frame(code, reason)).await;
                            break;
                        }
                        loop {
                            queue.pull(&shared.hub);
                            let batch = queue.take(config.batch_max);
                            if let Some(d) = batch.dropped {
                                send!('conn, Message::Text(protocol::dropped(d.count, d.first_seq, d.last_seq).into()));
                            }
                            if batch.items.is_empty() {
                                break;
                            }
                            let now = Instant::now();
                            for item in &batch.items {
                                stats.latency(now.duration_since(item.published));
                            }
                            let frame = if let [item] = batch.items.as_slice() {
                                item.json.clone()
                            } else {
                                Utf8Bytes::from(protocol::batch(batch.items.iter().map(|i| i.json.as_str())))
                            };
                            send!('conn, Message::Text(frame));
                            if queue.backlog(&shared.hub) == 0 {
                                break;
                            }
                        }
                    }
                    _ = ping.tick() => send!('conn, Message::Ping(bytes::Bytes::new())),
                }
            }
        }
        queue.close();
    });

    // The reader: commands, limits, idle timeout.
    let mut limit = RateLimit {
        tokens: f64::from(shared.config.rate_burst),
        last: Instant::now(),
        refused_in_a_row: 0,
    };
    let mut writer = writer;
    let mut writer_done = false;
    loop {
        // If the writer ends (slow client cut off, socket error, shutdown),
        // the connection ends with it.
        let next = tokio::select! {
            next = tokio::time::timeout(shared.config.idle_timeout, stream.next()) => next,
            _ = &mut writer => {
                writer_done = true;
                break;
            }
        };
        let msg = match next {
            Err(_) => {
                let _ = control_tx
                    .send(Control::Close(close::IDLE, "idle: nothing received"))
                    .await;
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                if is_capacity(err) {
                    stats.error(1);
                    let _ = control_tx
                        .send(Control::Close(close::TOO_BIG, "message too big"))
                        .await;
                }
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                stats.message_in(1);
                stats.bytes_in(text.len() as u64);
                match limit.check(&shared.config) {
                    Verdict::Ok => {}
                    Verdict::Refused { tell } => {
                        stats.rate_limited(1);
                        if tell {
                            let _ = control_tx.try_send(Control::Text(protocol::error(
                                codes::RATE_LIMITED,
                                "too many messages: slow down (100/s, burst 200 by default)",
                            )));
                        }
                        continue;
                    }
                    Verdict::Flood => {
                        stats.rate_limited(1);
                        let _ = control_tx
                            .send(Control::Close(close::POLICY, "message flood"))
                            .await;
                        break;
                    }
                }
                let (replies, replay) = handle_command(&shared, &queue, &text);
                for reply in replies {
                    if control_tx.send(Control::Text(reply)).await.is_err() {
                        break;
                    }
                }
                // After the reply is queued, so that it is sent first.
                if let Some(items) = replay {
                    queue.push_replay(items);
                }
            }
            Message::Binary(_) => {
                stats.error(1);
                let _ = control_tx.try_send(Control::Text(protocol::error(
                    codes::BINARY_NOT_SUPPORTED,
                    "send JSON text frames",
                )));
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    drop(control_tx);
    if !writer_done {
        let _ = writer.await;
    }
    shared.hub.detach(&queue);
    stats.connection_closed();
}

/// A text frame as a zlib-compressed binary frame (`perfmon.v1.deflate`).
fn deflate(msg: Message) -> Message {
    use std::io::Write as _;
    let Message::Text(text) = msg else { return msg };
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    match encoder
        .write_all(text.as_bytes())
        .and_then(|()| encoder.finish())
    {
        Ok(bytes) => Message::Binary(bytes.into()),
        // Writing to a Vec cannot fail; if it ever did, send it uncompressed.
        Err(_) => Message::Text(text),
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn is_capacity(err: axum::Error) -> bool {
    err.into_inner()
        .downcast::<tokio_tungstenite::tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

fn resumed(since: u64, replay: &crate::hub::Replay) -> String {
    serde_json::to_string(&protocol::Resumed {
        kind: "resumed",
        since,
        recovered: replay.recovered,
        replayed: replay.items.len(),
        oldest_seq: replay.oldest,
    })
    .unwrap_or_default()
}

/// Answers one client message: the replies to send, then any items to replay.
fn handle_command(
    shared: &Shared,
    queue: &Arc<Queue>,
    text: &str,
) -> (Vec<String>, Option<Vec<Arc<Item>>>) {
    let command: Command = match serde_json::from_str(text) {
        Ok(command) => command,
        Err(err) => {
            shared.hub.stats.error(1);
            return (
                vec![protocol::error(
                    codes::BAD_MESSAGE,
                    &format!("not a perfmon.v1 command: {err}"),
                )],
                None,
            );
        }
    };
    let replies = match command {
        Command::Ping { id } => vec![protocol::pong(id)],
        Command::Subscribe(Lists {
            pipelines,
            types,
            agents,
        }) => {
            queue.update_filter(|f| {
                if let Some(p) = pipelines {
                    f.topics = p;
                }
                if let Some(t) = types {
                    f.kinds = t;
                }
                if let Some(a) = agents {
                    f.tags = a;
                }
            });
            vec![subscribed(&queue.filter())]
        }
        Command::Unsubscribe(Lists {
            pipelines,
            types,
            agents,
        }) => {
            queue.update_filter(|f| {
                let remove = |list: &mut Vec<String>, gone: Option<Vec<String>>| {
                    if let Some(gone) = gone {
                        list.retain(|x| !gone.contains(x));
                    }
                };
                remove(&mut f.topics, pipelines);
                remove(&mut f.kinds, types);
                remove(&mut f.tags, agents);
            });
            vec![subscribed(&queue.filter())]
        }
        Command::Replay { since } => {
            let replay = shared.hub.replay(since);
            return (vec![resumed(since, &replay)], Some(replay.items));
        }
        Command::GetMetrics => {
            vec![
                serde_json::json!({"type": "metrics", "data": shared.hub.stats_snapshot()})
                    .to_string(),
            ]
        }
        Command::GetSnapshot { pipeline } => match shared.backend.snapshot(pipeline.as_deref()) {
            Some(state) => vec![
                serde_json::json!({"type": "snapshot", "pipeline": pipeline, "data": state})
                    .to_string(),
            ],
            None => vec![protocol::error(
                codes::NOT_FOUND,
                &format!("no pipeline {:?}", pipeline.unwrap_or_default()),
            )],
        },
    };
    (replies, None)
}

fn subscribed(filter: &Filter) -> String {
    serde_json::json!({
        "type": "subscribed",
        "room": filter.room,
        "pipelines": filter.topics,
        "types": filter.kinds,
        "agents": filter.tags,
    })
    .to_string()
}

/// Builds an [`Item`] stamped now.
pub fn item(
    seq: u64,
    topic: Option<Arc<str>>,
    kind: Arc<str>,
    tag: Option<Arc<str>>,
    priority: crate::hub::Priority,
    json: String,
) -> Item {
    Item {
        seq,
        topic,
        kind,
        tag,
        priority,
        json: Utf8Bytes::from(json),
        published: Instant::now(),
    }
}
