//! Protocol `perfmon.v1`: what clients send, and the server's own messages.
//! Every message is a JSON object with a `"type"`. See PROTOCOL.md.

use serde::{Deserialize, Serialize};

/// The subprotocol name, and the `protocol` field of `welcome`.
pub const PROTOCOL: &str = "perfmon.v1";

/// The opt-in compressed variant (`Config::compression`): every server
/// frame is the same JSON, zlib-compressed, in a binary frame (a browser
/// inflates it with `new DecompressionStream("deflate")`). Client messages
/// stay JSON text.
pub const PROTOCOL_DEFLATE: &str = "perfmon.v1.deflate";

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// `{"type":"ping","id":7}`: answered with `pong` (echoing `id`).
    Ping {
        /// Echoed back.
        #[serde(default)]
        id: Option<u64>,
    },
    /// Narrow what this connection receives: each list given replaces the
    /// previous one (empty = all).
    Subscribe(Lists),
    /// Remove entries from the lists set by `subscribe`.
    Unsubscribe(Lists),
    /// Send again every event after `since` that is still in the ring.
    Replay {
        /// The last seq the client has.
        since: u64,
    },
    /// The server's own counters (`metrics` reply).
    GetMetrics,
    /// The current state of one pipeline (or of everything): `snapshot` reply.
    GetSnapshot {
        /// The pipeline id; omitted = everything.
        #[serde(default)]
        pipeline: Option<String>,
    },
}

/// The filter lists of `subscribe` / `unsubscribe`; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    /// Pipeline ids (topics).
    #[serde(default)]
    pub pipelines: Option<Vec<String>>,
    /// Event types, e.g. `"agent_completed"`.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Agent names.
    #[serde(default)]
    pub agents: Option<Vec<String>>,
}

/// Error codes of the `error` message.
pub mod codes {
    /// Not JSON, not an object, or not a known command.
    pub const BAD_MESSAGE: &str = "bad_message";
    /// Too many messages: slow down (the connection stays).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// `get_snapshot` for a pipeline the server does not know.
    pub const NOT_FOUND: &str = "not_found";
    /// A binary frame: the protocol is JSON text.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
}

/// WebSocket close codes the server uses.
pub mod close {
    /// The server is shutting down: reconnect later, resume with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// Sustained flood past the rate limit.
    pub const POLICY: u16 = 1008;
    /// A message larger than the limit (64 KiB by default).
    pub const TOO_BIG: u16 = 1009;
    /// The client read too slowly for too long: reconnect and resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing received (not even a pong) for the idle timeout.
    pub const IDLE: u16 = 4001;
}

/// `welcome`: the first message on every connection.
#[derive(Debug, Serialize)]
pub(crate) struct Welcome<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) session: u64,
    pub(crate) protocol: &'static str,
    pub(crate) last_seq: u64,
    pub(crate) room: Option<&'a str>,
}

/// `replay` result: how a resume went.
#[derive(Debug, Serialize)]
pub(crate) struct Resumed {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) since: u64,
    pub(crate) recovered: bool,
    pub(crate) replayed: usize,
    pub(crate) oldest_seq: u64,
}

pub(crate) fn error(code: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "code": code, "message": message}).to_string()
}

pub(crate) fn pong(id: Option<u64>) -> String {
    serde_json::json!({"type": "pong", "id": id}).to_string()
}

pub(crate) fn dropped(count: u64, first_seq: u64, last_seq: u64) -> String {
    serde_json::json!({"type": "dropped", "count": count, "first_seq": first_seq, "last_seq": last_seq}).to_string()
}

/// A `batch` frame from already-encoded events, without decoding them.
pub(crate) fn batch<'a>(events: impl ExactSizeIterator<Item = &'a str>) -> String {
    let mut out = String::with_capacity(32 + events.len() * 256);
    out.push_str(r#"{"type":"batch","events":["#);
    for (i, event) in events.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(event);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_fields_are_refused() {
        let c: Command =
            serde_json::from_str(r#"{"type":"subscribe","types":["agent_completed"]}"#).unwrap();
        assert_eq!(
            c,
            Command::Subscribe(Lists {
                pipelines: None,
                types: Some(vec!["agent_completed".into()]),
                agents: None
            })
        );
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"type":"replay","since":5}"#).unwrap(),
            Command::Replay { since: 5 }
        );
        assert!(serde_json::from_str::<Command>(r#"{"type":"replay"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"ping","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"launch_missiles"}"#).is_err());
    }

    #[test]
    fn batches_are_valid_json() {
        let frame = batch([r#"{"seq":1}"#, r#"{"seq":2}"#].into_iter());
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "batch");
        assert_eq!(v["events"][1]["seq"], 2);
    }
}
