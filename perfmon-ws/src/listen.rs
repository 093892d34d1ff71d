//! The accept loop: every TCP connection is served by hyper's HTTP/1 with a
//! timer, so that a client cannot hold a connection, memory or a file
//! descriptor without sending a request:
//!
//! - a request head must arrive whole within `header_timeout`, whether the
//!   connection is new, idle between requests, or trickling bytes
//!   (slowloris); otherwise the connection is closed;
//! - a head larger than `max_header_bytes` gets 431 and the connection is closed;
//! - each socket's kernel send buffer is capped (`send_buffer_bytes`), so a
//!   client that stops reading holds little and its writer waits early;
//! - at most `max_pending_connections` connections that have not become
//!   WebSockets are served at once; beyond that a new one is closed at once
//!   (counted in `connections_refused`). Upgraded connections count against
//!   `max_connections` instead.
//!
//! `axum::serve` gives hyper no timer, so none of these would apply.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::shared::Shared;

/// Returns once the server is told to stop (the guard `wait_for` returns
/// is dropped here, not held across the caller's next await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Accepts and serves until `stop` turns `true`; then asks every
/// connection still in HTTP to finish its request and close.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let pending = Arc::new(Semaphore::new(config.max_pending_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(config.max_header_bytes)
        .max_buf_size(config.max_header_bytes.max(8 * 1024));
    let http = Arc::new(http);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of file descriptors, or a connection reset before
                // accept: pause briefly rather than spin, and go on.
                shared.hub.stats.error(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            shared.hub.stats.connection_refused(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = config.send_buffer_bytes {
            // A failure leaves the system default: the connection still works.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
        }
        let service = TowerToHyperService::new(app.clone());
        let http = Arc::clone(&http);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let conn = http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            // The future ends when the connection closes, or when it hands
            // its socket to a WebSocket: either way it is no longer pending.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
}
