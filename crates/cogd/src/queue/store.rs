//! The queue's Redis commands, through `redis-rs`'s connection manager
//! (which reconnects by itself after Redis goes away). Two connections: one
//! for the blocking `XREADGROUP`, which holds its connection while it waits,
//! and one for everything else.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{RedisError, RedisResult, Value};

use crate::config::QueueConfig;

/// How long a command other than the blocking read may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the completion marker of a prediction is kept.
const DONE_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// Renews the claims this consumer still holds, in one round trip, and says
/// which of the given entries it no longer holds (another replica reclaimed
/// them, or they were acknowledged). `XCLAIM … JUSTID` resets an entry's
/// idle time without counting a delivery.
const RENEW: &str = r"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
";

/// One replica's view of the stream.
#[derive(Clone)]
pub(crate) struct Store {
    read: ConnectionManager,
    ops: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    dead: String,
}

/// The group's backlog, as `XINFO GROUPS` reports it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Backlog {
    /// Entries not yet delivered to the group (`None`: Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
}

impl Store {
    /// A store for `config`; connects lazily, so it is made even while Redis
    /// is unreachable.
    pub(crate) fn new(config: &QueueConfig, block: Duration) -> RedisResult<Self> {
        let client = redis::Client::open(config.url.as_str())?;
        let manager = |timeout: Duration| {
            ConnectionManager::new_lazy_with_config(
                client.clone(),
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500)),
            )
        };
        Ok(Self {
            read: manager(block + COMMAND_TIMEOUT)?,
            ops: manager(COMMAND_TIMEOUT)?,
            stream: config.stream.clone(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            dead: format!("{}:dead", config.stream),
        })
    }

    /// Creates the group (and the stream) when missing, reading from the
    /// stream's start so entries added before any replica came are run.
    pub(crate) async fn ensure_group(&self) -> RedisResult<()> {
        let created: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.ops.clone())
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// New entries for this consumer, at most `count`, waiting up to `block`.
    pub(crate) async fn read(&self, count: usize, block: Duration) -> RedisResult<Vec<StreamId>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.read.clone())
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Claims up to `count` entries idle past `min_idle` from `cursor` on;
    /// returns them with how many times each has now been delivered, and the
    /// cursor to go on from.
    pub(crate) async fn reclaim(
        &self,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> RedisResult<(Vec<(StreamId, u64)>, String)> {
        let mut ops = self.ops.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut ops)
            .await?;
        if reply.claimed.is_empty() {
            return Ok((Vec::new(), reply.next_stream_id));
        }
        let mut pipe = redis::pipe();
        for entry in &reply.claimed {
            pipe.cmd("XPENDING")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let pending: Vec<StreamPendingCountReply> = pipe.query_async(&mut ops).await?;
        let claimed = reply
            .claimed
            .into_iter()
            .zip(pending)
            .map(|(entry, p)| {
                let count = p.ids.first().map_or(1, |p| p.times_delivered as u64);
                (entry, count)
            })
            .collect();
        Ok((claimed, reply.next_stream_id))
    }

    /// Renews the claims on `ids`; returns those this consumer no longer holds.
    pub(crate) async fn renew(&self, ids: &[String]) -> RedisResult<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(ids)
            .query_async(&mut self.ops.clone())
            .await
    }

    /// Acknowledges an entry: it is done with.
    pub(crate) async fn ack(&self, id: &str) -> RedisResult<()> {
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .query_async(&mut self.ops.clone())
            .await
    }

    fn done_key(&self, prediction_id: &str) -> String {
        format!("{}:done:{prediction_id}", self.stream)
    }

    /// Marks a prediction done, with its final JSON; false when it already
    /// was (another delivery of its entry completed first).
    pub(crate) async fn mark_done(&self, prediction_id: &str, json: &str) -> RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.done_key(prediction_id))
            .arg(json)
            .arg("NX")
            .arg("EX")
            .arg(DONE_TTL_SECONDS)
            .query_async(&mut self.ops.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Whether a prediction was marked done.
    pub(crate) async fn is_done(&self, prediction_id: &str) -> RedisResult<bool> {
        redis::cmd("EXISTS")
            .arg(self.done_key(prediction_id))
            .query_async(&mut self.ops.clone())
            .await
    }

    /// Moves an entry to `<stream>:dead` with why, and acknowledges it, in
    /// one transaction.
    pub(crate) async fn dead_letter(
        &self,
        entry: &StreamId,
        error: &str,
        deliveries: u64,
    ) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let add = pipe.cmd("XADD").arg(&self.dead).arg("*");
        for (field, value) in &entry.map {
            if matches!(field.as_str(), "error" | "entry_id" | "deliveries") {
                continue;
            }
            match value {
                Value::BulkString(bytes) => add.arg(field).arg(bytes.as_slice()),
                Value::SimpleString(text) => add.arg(field).arg(text),
                _ => continue,
            };
        }
        add.arg("error")
            .arg(error)
            .arg("entry_id")
            .arg(&entry.id)
            .arg("deliveries")
            .arg(deliveries)
            .ignore();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&entry.id)
            .ignore();
        pipe.query_async(&mut self.ops.clone()).await
    }

    /// Which of `keys` exist, in one round trip.
    pub(crate) async fn exist(&self, keys: &[String]) -> RedisResult<Vec<bool>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("EXISTS").arg(key);
        }
        pipe.query_async(&mut self.ops.clone()).await
    }

    /// Sets `key` to a prediction's JSON.
    pub(crate) async fn set(&self, key: &str, json: &str) -> RedisResult<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .query_async(&mut self.ops.clone())
            .await
    }

    /// The group's lag and pending count.
    pub(crate) async fn backlog(&self) -> RedisResult<Backlog> {
        let groups: Vec<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut self.ops.clone())
            .await?;
        for group in groups {
            let fields: Vec<(String, Value)> = match group {
                Value::Map(pairs) => pairs
                    .into_iter()
                    .filter_map(|(k, v)| Some((redis::from_redis_value::<String>(k).ok()?, v)))
                    .collect(),
                Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|pair| {
                        let key = redis::from_redis_value_ref::<String>(pair.first()?).ok()?;
                        Some((key, pair.get(1)?.clone()))
                    })
                    .collect(),
                _ => continue,
            };
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let name = field("name").and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            if name.as_deref() != Some(self.group.as_str()) {
                continue;
            }
            let number = |name: &str| field(name).and_then(|v| redis::from_redis_value_ref(v).ok());
            return Ok(Backlog {
                lag: number("lag"),
                pending: number("pending").unwrap_or(0),
            });
        }
        Ok(Backlog::default())
    }
}

/// Whether an error says the group is missing (Redis restarted empty).
pub(crate) fn is_no_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}
