//! The reading half of a connection: client commands, the rate limit, the
//! size limit and the idle timeout. Generic over the message stream, so
//! tests drive it with a channel instead of a socket.

use std::time::Instant;

use axum::extract::ws::Message;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::Control;
use super::commands;
use super::limit::{RateLimit, Verdict};
use crate::hub::Queue;
use crate::protocol::{close, codes};
use crate::shared::Shared;

/// Why reading a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Larger than `max_message_size`: close with 1009.
    TooBig,
    /// A WebSocket protocol violation: close with 1002.
    Protocol,
    /// A text message that is not UTF-8: close with 1007.
    Utf8,
    /// The socket failed or the client vanished: the connection ends.
    Broken,
}

/// Reads until the client goes, breaks a limit, or idles out. Replies and
/// close requests go to the writer through `control`.
pub(crate) async fn run<St>(
    stream: &mut St,
    shared: &Shared,
    queue: &Queue,
    control: mpsc::Sender<Control>,
) where
    St: Stream<Item = Result<Message, ReadError>> + Unpin,
{
    let stats = &shared.hub.stats;
    let config = &shared.config;
    let mut limit = RateLimit::new(config, Instant::now());
    loop {
        let msg = match tokio::time::timeout(config.idle_timeout, stream.next()).await {
            Err(_) => {
                let _ = control
                    .send(Control::Close(close::IDLE, "idle: nothing received"))
                    .await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(ReadError::TooBig))) => {
                stats.error(1);
                let _ = control
                    .send(Control::Close(close::TOO_BIG, "message too big"))
                    .await;
                return;
            }
            Ok(Some(Err(ReadError::Protocol))) => {
                stats.error(1);
                let _ = control
                    .send(Control::Close(
                        close::PROTOCOL_ERROR,
                        "websocket protocol violation",
                    ))
                    .await;
                return;
            }
            Ok(Some(Err(ReadError::Utf8))) => {
                stats.error(1);
                let _ = control
                    .send(Control::Close(close::INVALID_DATA, "text must be UTF-8"))
                    .await;
                return;
            }
            Ok(Some(Err(ReadError::Broken))) => return,
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Text(text) => {
                stats.message_in(1);
                stats.bytes_in(text.len() as u64);
                match limit.check(config, Instant::now()) {
                    Verdict::Ok => {}
                    Verdict::Refused { tell } => {
                        stats.rate_limited(1);
                        if tell {
                            let _ = control.try_send(Control::Text(commands::error(
                                codes::RATE_LIMITED,
                                "too many messages: slow down (100/s, burst 200 by default)",
                            )));
                        }
                        continue;
                    }
                    Verdict::Flood => {
                        stats.rate_limited(1);
                        let _ = control
                            .send(Control::Close(close::POLICY, "message flood"))
                            .await;
                        return;
                    }
                }
                let handled = commands::handle(shared, queue, &text);
                for reply in handled.replies {
                    if control.send(Control::Text(reply)).await.is_err() {
                        return;
                    }
                }
                // Through the writer, after the reply, so that it is sent first.
                if let Some(items) = handled.replay
                    && control.send(Control::Replay(items)).await.is_err()
                {
                    return;
                }
            }
            Message::Binary(_) => {
                stats.error(1);
                let _ = control.try_send(Control::Text(commands::error(
                    codes::BINARY_NOT_SUPPORTED,
                    "send JSON text frames",
                )));
            }
            Message::Close(_) => {
                // Answered, so that the client's close handshake completes.
                let _ = control.send(Control::Close(close::NORMAL, "")).await;
                return;
            }
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::stream;

    use super::*;
    use crate::config::Config;
    use crate::connection::test_support;
    use crate::hub::{Filter, Hub};

    fn shared(config: Config) -> (Arc<Shared>, tokio::sync::watch::Sender<bool>) {
        test_support::shared(Arc::new(Hub::new(16)), config)
    }

    /// Runs the reader over `messages` and returns what it asked the writer to send.
    async fn read(config: Config, messages: Vec<Result<Message, ReadError>>) -> Vec<Control> {
        let (shared, _stop) = shared(config);
        let queue = Queue::new(8, Filter::default());
        let (tx, mut rx) = mpsc::channel(64);
        run(&mut stream::iter(messages), &shared, &queue, tx).await;
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        out
    }

    fn texts(controls: &[Control]) -> Vec<serde_json::Value> {
        controls
            .iter()
            .filter_map(|c| match c {
                Control::Text(t) => serde_json::from_str(t).ok(),
                Control::Close(..) | Control::Replay(_) => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn commands_are_answered_in_order_and_bad_ones_get_an_error() {
        let out = read(
            Config::default(),
            vec![
                Ok(Message::text(r#"{"type":"ping","id":1}"#)),
                Ok(Message::text("not json")),
                Ok(Message::Binary(vec![1, 2].into())),
                Ok(Message::text(r#"{"type":"ping","id":2}"#)),
            ],
        )
        .await;
        let replies = texts(&out);
        assert_eq!(replies[0]["type"], "pong");
        assert_eq!(replies[0]["id"], 1);
        assert_eq!(replies[1]["code"], codes::BAD_MESSAGE);
        assert_eq!(replies[2]["code"], codes::BINARY_NOT_SUPPORTED);
        assert_eq!(replies[3]["id"], 2, "the connection stays after bad input");
    }

    #[tokio::test]
    async fn an_oversized_message_closes_with_1009_and_a_flood_with_1008() {
        let out = read(Config::default(), vec![Err(ReadError::TooBig)]).await;
        assert!(matches!(
            out.last(),
            Some(Control::Close(close::TOO_BIG, _))
        ));

        let config = Config::default().rate_per_second(0.001).rate_burst(3);
        let pings = (0..10)
            .map(|_| Ok(Message::text(r#"{"type":"ping"}"#)))
            .collect();
        let out = read(config, pings).await;
        assert!(matches!(out.last(), Some(Control::Close(close::POLICY, _))));
        assert_eq!(
            texts(&out).iter().filter(|v| v["type"] == "pong").count(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_idle_timeout_closes_with_4001() {
        let (shared, _stop) = shared(Config::default().idle_timeout(Duration::from_secs(5)));
        let queue = Queue::new(8, Filter::default());
        let (tx, mut rx) = mpsc::channel(8);
        run(&mut stream::pending(), &shared, &queue, tx).await;
        assert!(matches!(rx.try_recv(), Ok(Control::Close(close::IDLE, _))));
    }
}
