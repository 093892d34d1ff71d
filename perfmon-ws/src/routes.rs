//! The HTTP routes of one server: the page, `/healthz`, the WebSocket
//! upgrades (`/ws`, `/ws/{topic}`), the server's own status, and the
//! [`Backend`](crate::Backend)'s REST answers, all behind the auth and origin check.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::auth::Access;
use crate::backend::{Reply, ServerInfo};
use crate::connection;
use crate::protocol;
use crate::shared::Shared;

/// Per-connection socket buffers: small, for many connections (a 128 KiB
/// default read buffer made 10k sockets take 908 MB in tungstenite-rs#480).
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

/// Every route of the server, with the auth and origin check in front.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(index))
        .route("/ws", get(ws_all))
        .route("/ws/{topic}", get(ws_room))
        .fallback(get(backend_get))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            guard,
        ))
        .with_state(shared)
}

/// Host, origin and auth checks, before routing (and so before any
/// upgrade). `/healthz` is open. The page at `/` passes the Host check (no
/// DNS rebinding) but needs no token: it carries no data, and must load to
/// ask for the token.
async fn guard(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path == "/healthz" {
        return next.run(req).await;
    }
    if let Err(refused) = check_site(&shared, req.headers()) {
        shared.hub.stats.connection_refused(1);
        return (StatusCode::FORBIDDEN, refused.to_string()).into_response();
    }
    if path == "/" {
        return next.run(req).await;
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

/// The Host and Origin checks. A value that is not text cannot name this
/// server: it is checked as the replacement character, and refused.
fn check_site(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
) -> Result<(), crate::site::Refused> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    shared.site.check(text(header::HOST), text(header::ORIGIN))
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
    let info = ServerInfo::new(&shared.hub.stats, shared.hub.last_seq());
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
    /// The epoch the client's `since` counts in (see `Hub::set_epoch`).
    epoch: Option<String>,
    /// Only this source's events (a collector's fleet), as `subscribe {sources}`.
    source: Option<String>,
}

async fn ws_all(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    upgrade(ws, &headers, q, shared, None)
}

async fn ws_room(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    Path(topic): Path<String>,
    Query(q): Query<WsQuery>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    upgrade(ws, &headers, q, shared, Some(topic))
}

fn upgrade(
    ws: WebSocketUpgrade,
    headers: &HeaderMap,
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
    let requested = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let chosen =
        match protocol::negotiate(requested, offered) {
            Ok(chosen) => chosen,
            Err(asked) => {
                shared.hub.stats.connection_refused(1);
                return (
                StatusCode::BAD_REQUEST,
                format!(
                    "none of the subprotocols asked for ({asked}) is offered here; offered: {}{}",
                    offered.join(", "),
                    if c.compression { "" } else { " (compression is off on this server)" }
                ),
            )
                .into_response();
            }
        };
    let ws = ws.protocols(chosen);
    let compressed = chosen == Some(protocol::PROTOCOL_DEFLATE);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(c.max_message_size)
        .max_frame_size(c.max_message_size)
        .on_upgrade(move |socket| {
            let resume = connection::Resume {
                since: q.since,
                epoch: q.epoch,
                source: q.source,
            };
            connection::serve(socket, shared, room, resume, compressed)
        })
}
