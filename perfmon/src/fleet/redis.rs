//! [`RedisBroker`]: the [`Broker`] on Redis Streams. Appends go through one
//! Lua script so that numbering an event and adding it (`XADD ... MAXLEN ~
//! N`) are one atomic step: every reader sees the same gap-free seqs in
//! stream order. Reads are `XREAD` from an id. Above `broker`.

use std::time::Duration;

use redis::streams::StreamReadReply;

use super::broker::{Broker, BrokerError};
use super::wire::{self, Incoming, Outgoing};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may take past its own wait.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a marker of [`Broker::append_once`] is kept.
const MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// KEYS: stream, seq counter, epoch, marker (or the stream again).
/// ARGV: maxlen, a fresh epoch, marker TTL (0: no marker), then per entry
/// kind, source, instance, body. The epoch is set, and the counter reset,
/// when the epoch key is missing: a Redis that lost its data starts a new
/// numbering under a new epoch.
const APPEND: &str = r"
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[2], 0)
end
if ARGV[3] ~= '0' then
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then return 0 end
end
local n = 0
for i = 4, #ARGV, 4 do
  if ARGV[i] == 'event' then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'k', ARGV[i], 'src', ARGV[i + 1], 'inst', ARGV[i + 2], 'seq', seq, 'e', ARGV[i + 3])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
      'k', ARGV[i], 'src', ARGV[i + 1], 'inst', ARGV[i + 2], 'e', ARGV[i + 3])
  end
  n = n + 1
end
return n
";

/// A Redis stream as the fleet's [`Broker`]; reconnects on the next call
/// after a failure (the caller paces the retries).
pub(crate) struct RedisBroker {
    client: redis::Client,
    url: String,
    keys: Keys,
    maxlen: u64,
    connection: Option<redis::Connection>,
    script: redis::Script,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("stream", &self.keys.stream)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// A broker for `stream` at `url`, trimmed to about `maxlen` entries.
    /// Does not connect yet.
    pub(crate) fn new(url: &str, stream: &str, maxlen: u64) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url).map_err(|e| BrokerError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(RedisBroker {
            client,
            url: url.to_owned(),
            keys: Keys::of(stream),
            maxlen: maxlen.max(1),
            connection: None,
            script: redis::Script::new(APPEND),
        })
    }

    fn unreachable(&self, e: &impl std::fmt::Display) -> BrokerError {
        BrokerError::Unreachable {
            url: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Connects if need be, and sets the timeouts for a call that may
    /// wait `wait` at the server.
    fn connect(&mut self, wait: Duration) -> Result<(), BrokerError> {
        if self.connection.is_none() {
            let con = self
                .client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .map_err(|e| self.unreachable(&e))?;
            self.connection = Some(con);
        }
        let timeout = Some(wait + IO_TIMEOUT);
        if let Some(con) = &self.connection
            && let Err(e) = con
                .set_read_timeout(timeout)
                .and_then(|()| con.set_write_timeout(timeout))
        {
            self.connection = None;
            return Err(self.unreachable(&e));
        }
        Ok(())
    }

    /// Runs `f` on a connection; an I/O failure drops the connection (the
    /// next call reconnects), an error reply keeps it.
    fn with<T>(
        &mut self,
        wait: Duration,
        f: impl FnOnce(&mut redis::Connection, &Keys) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        self.connect(wait)?;
        let Some(con) = self.connection.as_mut() else {
            return Err(self.unreachable(&"not connected"));
        };
        match f(con, &self.keys) {
            Ok(v) => Ok(v),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.connection = None;
                Err(self.unreachable(&e))
            }
            Err(e) => Err(BrokerError::Refused(e.to_string())),
        }
    }

    fn invocation(&self, marker: Option<&str>, entries: &[Outgoing]) -> Invocation {
        let mut args: Vec<String> = Vec::with_capacity(3 + entries.len() * 4);
        args.push(self.maxlen.to_string());
        args.push(format!("{:016x}", fastrand::u64(..)));
        args.push(if marker.is_some() {
            MARKER_TTL_SECS.to_string()
        } else {
            "0".to_owned()
        });
        for e in entries {
            args.extend([
                e.kind.to_owned(),
                e.source.to_string(),
                e.instance.to_string(),
                e.body.clone(),
            ]);
        }
        Invocation {
            keys: vec![
                self.keys.stream.clone(),
                self.keys.seq.clone(),
                self.keys.epoch.clone(),
                marker.map_or_else(
                    || self.keys.stream.clone(),
                    |m| format!("{}:once:{m}", self.keys.stream),
                ),
            ],
            args,
        }
    }

    fn run(&mut self, invocation: &Invocation) -> Result<i64, BrokerError> {
        let script = self.script.clone();
        self.with(Duration::ZERO, |con, _| {
            let mut call = script.prepare_invoke();
            for key in &invocation.keys {
                call.key(key);
            }
            for arg in &invocation.args {
                call.arg(arg);
            }
            call.invoke::<i64>(con)
        })
    }
}

/// A script call's keys and arguments.
struct Invocation {
    keys: Vec<String>,
    args: Vec<String>,
}

/// The stream's key and the keys next to it: its seq counter and its epoch.
#[derive(Debug)]
struct Keys {
    stream: String,
    seq: String,
    epoch: String,
}

impl Keys {
    fn of(stream: &str) -> Keys {
        Keys {
            stream: stream.to_owned(),
            seq: format!("{stream}:seq"),
            epoch: format!("{stream}:epoch"),
        }
    }
}

impl Broker for RedisBroker {
    fn append(&mut self, entries: &[Outgoing]) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let invocation = self.invocation(None, entries);
        self.run(&invocation).map(drop)
    }

    fn append_once(&mut self, marker: &str, entry: &Outgoing) -> Result<bool, BrokerError> {
        let invocation = self.invocation(Some(marker), std::slice::from_ref(entry));
        self.run(&invocation).map(|n| n > 0)
    }

    fn read(
        &mut self,
        after: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Incoming>, BrokerError> {
        let reply: Option<StreamReadReply> = self.with(wait, |con, keys| {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(max.max(1));
            if !wait.is_zero() {
                cmd.arg("BLOCK")
                    .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            }
            cmd.arg("STREAMS").arg(&keys.stream).arg(after).query(con)
        })?;
        let Some(reply) = reply else {
            return Ok(Vec::new());
        };
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|entry| Incoming {
                stored_ms: wire::id_ms(&entry.id),
                kind: text(entry.map.get(wire::FIELD_KIND)),
                source: text(entry.map.get(wire::FIELD_SOURCE)),
                instance: text(entry.map.get(wire::FIELD_INSTANCE)),
                seq: text(entry.map.get(wire::FIELD_SEQ)).and_then(|s| s.parse().ok()),
                body: text(entry.map.get(wire::FIELD_BODY)),
                id: entry.id,
            })
            .collect())
    }

    fn epoch(&mut self) -> Result<Option<String>, BrokerError> {
        self.with(Duration::ZERO, |con, keys| {
            redis::cmd("GET").arg(&keys.epoch).query(con)
        })
    }

    fn now_ms(&mut self) -> Result<u64, BrokerError> {
        let (secs, micros): (u64, u64) =
            self.with(Duration::ZERO, |con, _| redis::cmd("TIME").query(con))?;
        Ok(secs * 1000 + micros / 1000)
    }
}
