//! A Rust client for `perfmon.v1`: reconnects by itself (exponential backoff
//! with full jitter) and resumes from the last seq it saw, so a consumer sees
//! a gap-free stream across disconnects, or an explicit `Resumed { recovered: false }`.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// What the client hands you, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// Connected (again): the server's `welcome`.
    Welcome {
        /// The server's session number for this connection.
        session: u64,
        /// The newest seq on the server.
        last_seq: u64,
        /// The server's epoch, if it has one (a collector): when it
        /// changes, seqs start again and the client starts over with them.
        epoch: Option<String>,
    },
    /// One event (batches are unpacked).
    Event {
        /// Its seq.
        seq: u64,
        /// Its `"type"`.
        kind: String,
        /// The whole object.
        value: Value,
    },
    /// One event as its JSON text, with [`ClientBuilder::raw_events`].
    RawEvent {
        /// Its seq.
        seq: u64,
        /// Its `"type"`.
        kind: String,
        /// The whole object, as the server sent it.
        json: String,
    },
    /// The server shed events this client read too slowly.
    Dropped {
        /// How many.
        count: u64,
        /// The first one's seq.
        first_seq: u64,
        /// The last one's seq.
        last_seq: u64,
    },
    /// How a resume went; `recovered == false` means a real gap.
    Resumed {
        /// The seq resumed after.
        since: u64,
        /// Whether every event after `since` was still there.
        recovered: bool,
    },
    /// Anything else (`snapshot`, `pong`, `error`, `metrics`, ...), as JSON.
    Other(Value),
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected.
    Connected,
    /// Lost; the next attempt comes after `delay`.
    Reconnecting {
        /// Attempts made since the last success.
        attempt: u32,
        /// The wait before the next one.
        delay: Duration,
    },
    /// Out of attempts; the client has stopped.
    GaveUp {
        /// The last error.
        error: String,
    },
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .connect()"]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_attempts: Option<u32>,
    heartbeat: Duration,
    outgoing_capacity: usize,
    incoming_capacity: usize,
    raw: bool,
}

/// Why a command could not be queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The queue of commands waiting for a connection is full.
    #[error(
        "the client's command queue is full ({0} waiting): wait for the connection, or send less"
    )]
    Full(usize),
    /// The client has stopped (gave up, or was dropped).
    #[error("the client has stopped")]
    Stopped,
}

/// A connection that reconnects and resumes by itself; see [`Client::builder`].
#[derive(Debug)]
#[must_use = "the client disconnects when dropped: keep it while you read events"]
pub struct Client {
    incoming: mpsc::Receiver<Received>,
    commands: mpsc::Sender<String>,
    state: watch::Receiver<ConnectionState>,
    capacity: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts configuring a client for `url` (e.g. `ws://127.0.0.1:9464/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: None,
            heartbeat: Duration::from_secs(15),
            outgoing_capacity: 64,
            incoming_capacity: 1_024,
            raw: false,
        }
    }

    /// The next message; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<Received> {
        self.incoming.recv().await
    }

    /// Queues a command (a JSON object, e.g. `{"type":"subscribe",...}`); it
    /// is sent now, or as soon as the connection is back.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] when the bounded queue is full, [`SendError::Stopped`]
    /// when the client gave up.
    pub fn send(&self, command: &Value) -> Result<(), SendError> {
        self.commands
            .try_send(command.to_string())
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full(self.capacity),
                mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
            })
    }

    /// The connection state now, and every change after (`changed().await`).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer token`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Backoff before the first retry (default 0.5 s) and its cap (default 30 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Give up after this many failed attempts in a row (default: never).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Ping this often; a connection silent for two intervals is dropped and
    /// re-made (default 15 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Hand events over as their JSON text ([`Received::RawEvent`]) instead
    /// of parsed [`Received::Event`]s: for a client that reads many events
    /// and decodes them into its own types (building a `serde_json::Value`
    /// for each costs more than reading it). Default off.
    pub fn raw_events(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }

    /// Starts the client on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn connect(self) -> Client {
        let (incoming_tx, incoming) = mpsc::channel(self.incoming_capacity);
        let (commands, commands_rx) = mpsc::channel(self.outgoing_capacity);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let capacity = self.outgoing_capacity;
        let task = tokio::spawn(run(self, incoming_tx, commands_rx, state_tx));
        Client {
            incoming,
            commands,
            state,
            capacity,
            task,
        }
    }
}

/// `[0, min(cap, base × 2^attempt)]`: "full jitter".
fn backoff(b: &ClientBuilder, attempt: u32) -> Duration {
    let ceiling = b
        .initial_backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(b.max_backoff);
    ceiling.mul_f64(fastrand::f64())
}

async fn run(
    b: ClientBuilder,
    incoming: mpsc::Sender<Received>,
    mut commands: mpsc::Receiver<String>,
    state: watch::Sender<ConnectionState>,
) {
    let mut last_seq = Cursor::default();
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut failures = 0u32;
    loop {
        let error = match session(
            &b,
            &incoming,
            &mut commands,
            &state,
            &mut last_seq,
            &mut pending,
        )
        .await
        {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Lost(reason)) => {
                failures = 0;
                reason
            }
            Err(err) => err,
        };
        failures += 1;
        if b.max_attempts.is_some_and(|max| failures >= max) {
            let _ = state.send(ConnectionState::GaveUp { error });
            return;
        }
        let delay = backoff(&b, failures - 1);
        let _ = state.send(ConnectionState::Reconnecting {
            attempt: failures,
            delay,
        });
        // Commands keep arriving while we wait; keep them, bounded by the channel.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) if pending.len() < b.outgoing_capacity => pending.push_back(cmd),
                    Some(_) => {} // over capacity: the caller was told by `send`'s bound
                    None => return,
                },
            }
        }
    }
}

enum Ended {
    /// The connection was lost after it had worked.
    Lost(String),
    /// The user is gone.
    Stopped,
}

async fn session(
    b: &ClientBuilder,
    incoming: &mpsc::Sender<Received>,
    commands: &mut mpsc::Receiver<String>,
    state: &watch::Sender<ConnectionState>,
    last_seq: &mut Cursor,
    pending: &mut VecDeque<String>,
) -> Result<Ended, String> {
    let sep = if b.url.contains('?') { '&' } else { '?' };
    let url = match (last_seq.seq, &last_seq.epoch) {
        (Some(seq), Some(epoch)) => {
            format!(
                "{}{sep}since={seq}&epoch={}",
                b.url,
                crate::auth::percent_encode(epoch)
            )
        }
        (Some(seq), None) => format!("{}{sep}since={seq}", b.url),
        (None, _) => b.url.clone(),
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {}: {e}", b.url))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(crate::protocol::PROTOCOL),
    );
    if let Some(token) = &b.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.headers_mut().insert("Authorization", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    let _ = state.send(ConnectionState::Connected);
    let (mut sink, mut stream) = ws.split();
    while let Some(cmd) = pending.pop_front() {
        sink.send(Message::text(cmd))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut heartbeat = tokio::time::interval(b.heartbeat);
    heartbeat.tick().await;
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            msg = stream.next() => {
                silent_ticks = 0;
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(Ended::Lost(format!("closed by the server: {frame:?}")));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
                    None => return Ok(Ended::Lost("connection ended".into())),
                };
                let decoded = if b.raw {
                    decode_raw(&text, last_seq)
                } else {
                    None
                };
                let decoded = match decoded {
                    Some(decoded) => decoded,
                    None => {
                        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                        decode(value, last_seq)
                    }
                };
                for received in decoded {
                    if incoming.send(received).await.is_err() {
                        return Ok(Ended::Stopped);
                    }
                }
            }
            cmd = commands.recv() => match cmd {
                Some(cmd) => {
                    if let Err(e) = sink.send(Message::text(cmd.clone())).await {
                        pending.push_back(cmd);
                        return Ok(Ended::Lost(e.to_string()));
                    }
                }
                None => return Ok(Ended::Stopped),
            },
            _ = heartbeat.tick() => {
                silent_ticks += 1;
                if silent_ticks > 2 {
                    return Ok(Ended::Lost("no message for two heartbeats".into()));
                }
                if sink.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    return Ok(Ended::Lost("ping failed".into()));
                }
            }
        }
    }
}

/// What [`decode_raw`] reads of a message: its type and seq, and a
/// batch's events, without building a `Value`.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    events: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// Events (and batches of them) as [`Received::RawEvent`]s; `None` for
/// anything else (the caller decodes it as a `Value`).
fn decode_raw(text: &str, last_seq: &mut Cursor) -> Option<Vec<Received>> {
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    let raws: Vec<&str> = match (&*head.kind, head.events, head.seq) {
        ("batch", Some(events), _) => events.iter().map(|e| e.get()).collect(),
        (_, None, Some(_)) => vec![text],
        _ => return None,
    };
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        let Ok(Head {
            kind,
            seq: Some(seq),
            ..
        }) = serde_json::from_str::<Head<'_>>(raw)
        else {
            continue;
        };
        // A replay may repeat what we already have: skip it.
        if last_seq.seq.is_some_and(|last| seq <= last) {
            continue;
        }
        last_seq.seq = Some(seq);
        out.push(Received::RawEvent {
            seq,
            kind: kind.into_owned(),
            json: raw.to_owned(),
        });
    }
    Some(out)
}

/// Where a resume starts: the last seq seen, in which epoch.
#[derive(Debug, Default)]
struct Cursor {
    seq: Option<u64>,
    epoch: Option<String>,
}

/// Server JSON → what the user sees; tracks the last seq for resuming.
fn decode(value: Value, last_seq: &mut Cursor) -> Vec<Received> {
    let kind = value["type"].as_str().unwrap_or_default().to_owned();
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or_default();
    match kind.as_str() {
        "welcome" => {
            let epoch = value["epoch"].as_str().map(str::to_owned);
            if epoch != last_seq.epoch {
                // Another history: its seqs start again, so what we saw
                // says nothing about what is new.
                last_seq.seq = None;
                last_seq.epoch.clone_from(&epoch);
            }
            vec![Received::Welcome {
                session: u(&value, "session"),
                last_seq: u(&value, "last_seq"),
                epoch,
            }]
        }
        "batch" => {
            let events = match value {
                Value::Object(mut map) => map.remove("events"),
                _ => None,
            };
            match events {
                Some(Value::Array(list)) => {
                    list.into_iter().flat_map(|e| decode(e, last_seq)).collect()
                }
                _ => Vec::new(),
            }
        }
        "dropped" => vec![Received::Dropped {
            count: u(&value, "count"),
            first_seq: u(&value, "first_seq"),
            last_seq: u(&value, "last_seq"),
        }],
        "resumed" => vec![Received::Resumed {
            since: u(&value, "since"),
            recovered: value["recovered"] == true,
        }],
        _ => match value["seq"].as_u64() {
            Some(seq) => {
                // A replay may repeat what we already have: skip it.
                if last_seq.seq.is_some_and(|last| seq <= last) {
                    return Vec::new();
                }
                last_seq.seq = Some(seq);
                vec![Received::Event { seq, kind, value }]
            }
            None => vec![Received::Other(value)],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_events_are_split_from_batches_in_order_without_repeats() {
        let mut cursor = Cursor::default();
        let batch = r#"{"type":"batch","events":[{"type":"a","seq":1,"data":{"x":[1,2]}},{"type":"b","seq":2}]}"#;
        let got = decode_raw(batch, &mut cursor).unwrap();
        assert_eq!(
            got,
            [
                Received::RawEvent {
                    seq: 1,
                    kind: "a".into(),
                    json: r#"{"type":"a","seq":1,"data":{"x":[1,2]}}"#.into()
                },
                Received::RawEvent {
                    seq: 2,
                    kind: "b".into(),
                    json: r#"{"type":"b","seq":2}"#.into()
                },
            ]
        );
        // A replay repeating seq 2 is skipped; seq 3 comes through.
        let again = decode_raw(r#"{"type":"b","seq":2}"#, &mut cursor).unwrap();
        assert!(again.is_empty());
        assert_eq!(
            decode_raw(r#"{"type":"c","seq":3}"#, &mut cursor)
                .unwrap()
                .len(),
            1
        );
        // Not an event: left to the Value decoder.
        assert!(
            decode_raw(
                r#"{"type":"dropped","count":2,"first_seq":4,"last_seq":5}"#,
                &mut cursor
            )
            .is_none()
        );
        assert!(decode_raw("not json", &mut cursor).is_none());
    }
}
