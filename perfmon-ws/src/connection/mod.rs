//! One WebSocket connection: attach a queue to the hub, send the first
//! messages, then a [`writer`] task and a [`reader`] loop until either ends.

mod commands;
mod limit;
pub(crate) mod reader;
mod writer;

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use self::reader::ReadError;
use self::writer::Writer;
use crate::hub::{Filter, Queue};
use crate::protocol::{self, ServerMessage};
use crate::shared::Shared;

/// Replies and close requests the reader queues for the writer.
const CONTROL_CAPACITY: usize = 64;

/// What the reader asks the writer to send.
#[derive(Debug)]
pub(crate) enum Control {
    /// A reply.
    Text(String),
    /// A close frame with this code and reason; the connection ends.
    Close(u16, &'static str),
    /// A `replay`'s items, queued by the writer after the `resumed` reply
    /// before it has been sent, so the reply always comes first.
    Replay(Vec<std::sync::Arc<crate::hub::Item>>),
}

/// Where a connection starts, from its URL's query.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// `?since=`: the last seq the client has.
    pub(crate) since: Option<u64>,
    /// `?epoch=`: the history that seq counts in.
    pub(crate) epoch: Option<String>,
    /// `?source=`: only one source's events.
    pub(crate) source: Option<String>,
}

/// Serves one upgraded connection until it ends.
pub(crate) async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    room: Option<String>,
    resume: Resume,
    compressed: bool,
) {
    let _open = shared.open_connection();
    let stats = Arc::clone(&shared.hub.stats);
    stats.connection_opened();
    let filter = Filter {
        room: room.clone(),
        sources: resume.source.into_iter().collect(),
        ..Filter::default()
    };
    // A `since` from another epoch counts in a history that is gone: send
    // the whole ring, and say it is not a recovery.
    let epoch = shared.hub.epoch();
    let stale_epoch =
        matches!((&resume.epoch, &epoch), (Some(theirs), Some(ours)) if **theirs != **ours);
    let since = if stale_epoch {
        resume.since.map(|_| 0)
    } else {
        resume.since
    };
    let queue = Arc::new(Queue::new(shared.config.queue_capacity, filter));
    let (sink, stream) = socket.split();

    // The welcome, then a room's snapshot, then any replay: in that order,
    // before live events (the queue is attached now but drained later).
    // Listen before attaching, and start "changed", so nothing published
    // from here on (or replayed) waits for a later event to be sent.
    let mut announcements = shared.hub.announcements();
    announcements.mark_changed();
    let mut replay = shared.hub.attach(Arc::clone(&queue), since);
    if stale_epoch && let Some(replay) = &mut replay {
        replay.recovered = false;
    }
    let mut first = vec![
        ServerMessage::Welcome {
            session: shared.next_session(),
            protocol: protocol::PROTOCOL,
            last_seq: shared.hub.last_seq(),
            room: room.as_deref(),
            epoch: epoch.as_deref(),
        }
        .encode(),
    ];
    if let Some(topic) = &room
        && let Some(snapshot) = commands::snapshot(&shared, Some(topic))
    {
        first.push(snapshot);
    }
    if let (Some(since), Some(replay)) = (resume.since, replay) {
        // The replayed items are already queued, behind these messages.
        first.push(commands::resumed(since, &replay));
    }

    let (control_tx, control_rx) = mpsc::channel::<Control>(CONTROL_CAPACITY);
    let mut writer = tokio::spawn(
        Writer {
            sink,
            shared: Arc::clone(&shared),
            queue: Arc::clone(&queue),
            first,
            control: control_rx,
            announcements,
            compressed,
            live: writer::Live::now(),
        }
        .run(),
    );
    let mut stream = stream.map(|msg| msg.map_err(read_error));
    let reader = reader::run(&mut stream, &shared, &queue, control_tx);
    // If the writer ends (slow client cut off, socket error, shutdown), the
    // connection ends with it; if the reader ends, the writer sends what the
    // reader asked for (a close frame) and ends when the channel closes.
    tokio::select! {
        () = reader => { let _ = writer.await; }
        _ = &mut writer => {}
    }
    linger(&mut stream).await;
    shared.hub.detach(&queue);
    stats.connection_closed();
}

/// How long, and how many bytes, a closing connection keeps reading.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

/// A lingering close: the close frame is written; now read and discard
/// what the client still sends, until it answers the close, goes away, or
/// a bound (1 s, 1 MiB). Closing a socket with unread input makes the
/// kernel send a reset, which destroys the close frame still in flight: a
/// client that kept sending would never see why it was closed.
async fn linger<St>(stream: &mut St)
where
    St: futures_util::Stream<Item = Result<axum::extract::ws::Message, ReadError>> + Unpin,
{
    use axum::extract::ws::Message;
    let mut read = 0usize;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Some(next) = stream.next().await {
            read += match next {
                Ok(Message::Close(_)) | Err(ReadError::Broken) => break,
                Ok(Message::Text(t)) => t.len(),
                Ok(Message::Binary(b) | Message::Ping(b) | Message::Pong(b)) => b.len(),
                // More bad frames: counted as a chunk each, so a stream of
                // them ends the wait early rather than spinning.
                Err(_) => 4096,
            };
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// A read error, as the reader needs to tell them apart.
fn read_error(err: axum::Error) -> ReadError {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match err.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Capacity(_)) => ReadError::TooBig,
        Ok(Error::Utf8(_)) => ReadError::Utf8,
        Ok(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => ReadError::Broken,
        Ok(Error::Protocol(_)) => ReadError::Protocol,
        _ => ReadError::Broken,
    }
}

/// What the reader's and writer's unit tests share: a server's state with
/// a backend that knows nothing.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use crate::backend::{Backend, Reply, ServerInfo};
    use crate::config::Config;
    use crate::hub::Hub;
    use crate::shared::Shared;

    struct NoBackend;

    impl Backend for NoBackend {
        fn snapshot(&self, _: Option<&str>) -> Option<serde_json::Value> {
            None
        }
        fn get(&self, _: &str, _: &str, _: &ServerInfo<'_>) -> Option<Reply> {
            None
        }
    }

    /// A server's shared state over `hub`, and the sender that shuts it down.
    pub(crate) fn shared(
        hub: Arc<Hub>,
        config: Config,
    ) -> (Arc<Shared>, tokio::sync::watch::Sender<bool>) {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        (
            Arc::new(Shared::new(
                hub,
                Arc::new(NoBackend),
                config,
                ([127, 0, 0, 1], 0).into(),
                shutdown,
            )),
            stop,
        )
    }
}
