//! The writing half of a connection: the first messages, replies, batched
//! events pulled from the hub, drop notices, pings and close frames, each
//! write bounded by the stall limit. Generic over the sink, so tests drive
//! it with a channel instead of a socket.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt};
use tokio::sync::{Notify, mpsc, watch};

use super::Control;
use crate::hub::Queue;
use crate::protocol::{self, ServerMessage, close};
use crate::shared::Shared;

/// Why the writer stopped writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The socket failed or the peer is gone.
    Socket,
    /// A write did not complete within the stall limit.
    Stalled,
    /// A close frame was sent (or the server is shutting down).
    Closed,
}

/// One connection's writer: the sink and what it reads from.
pub(crate) struct Writer<S> {
    pub(crate) sink: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<Queue>,
    /// `welcome`, a room's `snapshot`, a resume's `resumed`: sent first.
    pub(crate) first: Vec<String>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) announcements: watch::Receiver<u64>,
    /// Frames go out zlib-compressed, as binary (`perfmon.v1.deflate`).
    pub(crate) compressed: bool,
    /// Which items count for publish→send latency.
    pub(crate) live: Live,
}

/// Publish→send latency is about live events only: an item counts if it
/// was published after this connection started and has a seq above every
/// item sent before (a resume's or a `replay`'s items are old news, and
/// their age says nothing about the server's speed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    since: Instant,
    highest_sent: u64,
}

impl Live {
    /// Counting from now.
    pub(crate) fn now() -> Self {
        Live {
            since: Instant::now(),
            highest_sent: 0,
        }
    }

    /// Whether `item` is live; remembers its seq either way.
    fn is_live(&mut self, seq: u64, published: Instant) -> bool {
        let live = seq > self.highest_sent && published >= self.since;
        self.highest_sent = self.highest_sent.max(seq);
        live
    }
}

impl<S> Writer<S>
where
    S: Sink<Message> + Unpin,
{
    /// Writes until the connection ends, then closes the queue.
    pub(crate) async fn run(mut self) {
        let _ = self.serve().await;
        self.queue.close();
    }

    async fn serve(&mut self) -> Result<(), Ended> {
        for text in std::mem::take(&mut self.first) {
            self.send(Message::Text(text.into())).await?;
        }
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let mut shutdown = shared.shutdown.clone();
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    return self.close(close::GOING_AWAY, "server shutting down; resume with ?since=").await;
                }
                control = self.control.recv() => match control {
                    Some(control) => self.control(control).await?,
                    None => return Ok(()),
                },
                () = wake(&self.queue.notify, &mut self.announcements) => self.flush_queue().await?,
                _ = ping.tick() => self.send(Message::Ping(bytes::Bytes::new())).await?,
            }
        }
    }

    /// Sends what the hub and the queue have for this connection, in
    /// frames of up to `batch_max` events.
    async fn flush_queue(&mut self) -> Result<(), Ended> {
        let shared = Arc::clone(&self.shared);
        let (hub, config, stats) = (&shared.hub, &shared.config, &shared.hub.stats);
        if self.queue.backlog(hub) < config.batch_max {
            tokio::time::sleep(config.batch_window).await;
        }
        self.queue.pull(hub);
        if self
            .queue
            .stalled_for()
            .is_some_and(|d| d >= config.stall_limit)
        {
            stats.slow_disconnect(1);
            return self
                .close(close::SLOW_CONSUMER, "too slow: reconnect with ?since=")
                .await;
        }
        // Replies enqueued before these items (a `resumed` before its
        // replay) go first.
        while let Ok(control) = self.control.try_recv() {
            self.control(control).await?;
        }
        loop {
            self.queue.pull(hub);
            let batch = self.queue.take(config.batch_max);
            if let Some(d) = batch.dropped {
                let notice = ServerMessage::Dropped {
                    count: d.count,
                    first_seq: d.first_seq,
                    last_seq: d.last_seq,
                };
                self.send(Message::Text(notice.encode().into())).await?;
            }
            if batch.items.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            for item in &batch.items {
                if self.live.is_live(item.seq, item.published) {
                    stats.latency(now.duration_since(item.published));
                }
            }
            let frame = if let [item] = batch.items.as_slice() {
                item.json.clone()
            } else {
                Utf8Bytes::from(protocol::batch(batch.items.iter().map(|i| i.json.as_str())))
            };
            self.send(Message::Text(frame)).await?;
            if self.queue.backlog(hub) == 0 {
                return Ok(());
            }
        }
    }

    async fn control(&mut self, control: Control) -> Result<(), Ended> {
        match control {
            Control::Text(text) => self.send(Message::Text(text.into())).await,
            Control::Close(code, reason) => self.close(code, reason).await,
            Control::Replay(items) => {
                self.queue.push_replay(items);
                Ok(())
            }
        }
    }

    /// Sends one frame (compressed if asked) within the stall limit.
    async fn send(&mut self, msg: Message) -> Result<(), Ended> {
        let msg = if self.compressed { deflate(msg) } else { msg };
        let len = match &msg {
            Message::Text(t) => t.len() as u64,
            Message::Binary(b) => b.len() as u64,
            _ => 0,
        };
        let stats = &self.shared.hub.stats;
        let sink = &mut self.sink;
        let sent = tokio::time::timeout(self.shared.config.stall_limit, async {
            sink.feed(msg).await?;
            sink.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {
                stats.message_out(1);
                stats.bytes_out(len);
                Ok(())
            }
            Ok(Err(_)) => Err(Ended::Socket),
            Err(_) => {
                stats.slow_disconnect(1);
                Err(Ended::Stalled)
            }
        }
    }

    /// Sends a close frame, best effort, and ends the connection.
    async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), Ended> {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(self.shared.config.stall_limit, self.sink.send(frame)).await;
        Err(Ended::Closed)
    }
}

/// Returns when the connection has something to send: a replay queued, or
/// anything published.
async fn wake(notify: &Notify, announcements: &mut watch::Receiver<u64>) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::connection::test_support;
    use crate::hub::{Filter, Hub, Priority};
    use crate::item;

    /// A sink that keeps every frame's text.
    fn recording() -> (
        impl Sink<Message, Error = std::convert::Infallible> + Unpin,
        Arc<Mutex<Vec<Message>>>,
    ) {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&frames);
        let sink = Box::pin(futures_util::sink::unfold((), move |(), msg: Message| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(msg);
                Ok::<_, std::convert::Infallible>(())
            }
        }));
        (sink, frames)
    }

    fn text(msg: &Message) -> Option<serde_json::Value> {
        match msg {
            Message::Text(t) => serde_json::from_str(t).ok(),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_messages_then_events_in_one_batch_then_going_away_on_shutdown() {
        let hub = Arc::new(Hub::new(64));
        let (shared, stop) = test_support::shared(
            Arc::clone(&hub),
            Config::default().batch_window(Duration::from_millis(10)),
        );
        let queue = Arc::new(Queue::new(16, Filter::default()));
        let mut announcements = hub.announcements();
        announcements.mark_changed();
        let _ = hub.attach(Arc::clone(&queue), None);
        for seq in 1..=3 {
            hub.publish(item(
                seq,
                None,
                "agent_completed".into(),
                None,
                Priority::High,
                format!(r#"{{"seq":{seq}}}"#),
            ));
        }
        let (sink, frames) = recording();
        let (_control_tx, control) = mpsc::channel(8);
        let writer = tokio::spawn(
            Writer {
                sink,
                shared,
                queue,
                first: vec![r#"{"type":"welcome"}"#.to_owned()],
                control,
                announcements,
                compressed: false,
                live: Live::now(),
            }
            .run(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        writer.await.unwrap();

        let frames = frames.lock().unwrap();
        assert_eq!(text(&frames[0]).unwrap()["type"], "welcome");
        let batch = text(&frames[1]).unwrap();
        assert_eq!(batch["type"], "batch");
        let seqs: Vec<u64> = batch["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        match frames.last() {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, close::GOING_AWAY),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_that_never_accepts_ends_the_writer_at_the_stall_limit() {
        let hub = Arc::new(Hub::new(8));
        let (shared, _stop) = test_support::shared(
            Arc::clone(&hub),
            Config::default().stall_limit(Duration::from_secs(3)),
        );
        let stuck = Box::pin(futures_util::sink::unfold((), |(), _msg: Message| async {
            std::future::pending::<Result<(), std::convert::Infallible>>().await
        }));
        let (_control_tx, control) = mpsc::channel(8);
        Writer {
            sink: stuck,
            shared: Arc::clone(&shared),
            queue: Arc::new(Queue::new(8, Filter::default())),
            first: vec!["{}".to_owned()],
            control,
            announcements: hub.announcements(),
            compressed: false,
            live: Live::now(),
        }
        .run()
        .await;
        assert_eq!(hub.stats.snapshot().slow_disconnects, 1);
    }
}
