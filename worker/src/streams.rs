//! Reading a consumer group's new entries from one stream or from many.
//!
//! On one Redis each of the worker's streams (ingest, outbox, events) is a
//! single key, read with a blocking `XREADGROUP` on a connection of its own. On
//! Redis Cluster there is one per shard (`keyspace.rs`), and `XREADGROUP` may
//! not span hash slots; a blocking read per shard would hold a connection per
//! shard. So the shards are *polled*: one non-blocking `XREADGROUP` per stream,
//! all sent at once (fred pipelines them per node), and after a round that
//! found nothing the next waits, from [`POLL_MIN`] doubling up to
//! [`POLL_MAX`] — an idle worker costs each master a few commands per shard
//! per second, and a busy one never waits.

use fred::bytes::Bytes;
use fred::prelude::*;
use fred::types::{FromKey, Key};
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The wait after the first round that found nothing.
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// The longest wait between two rounds of an idle worker: how late a
/// message's persistence can start.
pub const POLL_MAX: Duration = Duration::from_millis(250);

/// Entries of one stream: `(entry id, fields)`.
pub type Entries<K, V> = Vec<(String, HashMap<K, V>)>;

/// Turns the reply of an `XREADGROUP` of one stream into its entries.
pub type Decode<E> = fn(Value, &str) -> Result<Vec<E>, Error>;

/// [`Decode`] into a map of fields per entry: for the streams whose entries
/// are few and whose fields vary (outbox, events).
pub fn maps<K, V>(reply: Value, stream: &str) -> Result<Entries<K, V>, Error>
where
    K: FromKey + Hash + Eq,
    V: FromValue,
{
    let mut streams = reply.into_xread_response::<Key, String, K, V>()?;
    Ok(streams.remove(&Key::from(stream)).unwrap_or_default())
}

/// An entry as Redis sent it: its id, and its fields' names and values in the
/// order they were added, as bytes.
///
/// Why not a map: an ingest batch is hundreds of entries of eight fields, and
/// building and hashing a map per entry cost the worker more than parsing the
/// entries (bench/README.md, "Persistence"); eight names are found faster by
/// looking along them.
#[derive(Debug)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Bytes, Bytes)>,
}

impl RawEntry {
    /// The value of field `name`, if the entry has it.
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields
            .iter()
            .find(|(field, _)| field.as_ref() == name.as_bytes())
            .map(|(_, value)| value)
    }
}

/// [`Decode`] into [`RawEntry`]s. The reply is `[[stream, entries]]`, or
/// `{stream: entries}` in RESP3.
pub fn raw(reply: Value, _stream: &str) -> Result<Vec<RawEntry>, Error> {
    let entries = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Map(map) => map.inner().into_values().next(),
        Value::Array(streams) => streams.into_iter().next().and_then(|stream| match stream {
            Value::Array(pair) => pair.into_iter().nth(1),
            _ => None,
        }),
        other => return Err(unexpected("an XREADGROUP reply", &other)),
    };
    entries.map_or(Ok(Vec::new()), raw_entries)
}

/// A list of entries (`[[id, [field, value, …]], …]`, as in `XREADGROUP` and
/// `XAUTOCLAIM` replies) as [`RawEntry`]s.
pub fn raw_entries(entries: Value) -> Result<Vec<RawEntry>, Error> {
    let Value::Array(entries) = entries else {
        return Err(unexpected("a list of stream entries", &entries));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else {
            return Err(unexpected("a stream entry", &entry));
        };
        let mut parts = entry.into_iter();
        let id = parts.next().and_then(|id| id.into_string());
        let (Some(id), Some(fields)) = (id, parts.next()) else {
            return Err(Error::new(
                ErrorKind::Parse,
                "a stream entry without an id or fields",
            ));
        };
        // A deleted entry still pending has no fields (`nil`): none to read.
        let fields = match fields {
            Value::Null => Vec::new(),
            Value::Array(flat) => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                    pairs.push((bytes_of(name)?, bytes_of(value)?));
                }
                pairs
            }
            other => return Err(unexpected("an entry's fields", &other)),
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

fn bytes_of(value: Value) -> Result<Bytes, Error> {
    match value {
        Value::String(text) => Ok(text.into_inner()),
        Value::Bytes(bytes) => Ok(bytes),
        other => Err(unexpected("a field name or value", &other)),
    }
}

fn unexpected(what: &str, value: &Value) -> Error {
    Error::new(
        ErrorKind::Parse,
        format!("expected {what}, got {}", value.kind()),
    )
}

/// A consumer of one group on a set of streams (see the module doc).
pub struct GroupStreams {
    pub streams: Vec<String>,
    pub group: &'static str,
    pub consumer: String,
    /// `BLOCK` of the read when there is one stream.
    pub block_ms: u64,
    idle: Duration,
}

/// What one round read: entries per stream (by index in `streams`), and the
/// streams that could not be read (the others' entries are still handed on:
/// they are this consumer's now).
pub struct Round<E> {
    pub entries: Vec<(usize, Vec<E>)>,
    pub failed: Vec<(usize, Error)>,
}

impl GroupStreams {
    pub fn new(
        streams: Vec<String>,
        group: &'static str,
        consumer: String,
        block_ms: u64,
    ) -> GroupStreams {
        GroupStreams {
            streams,
            group,
            consumer,
            block_ms,
            idle: Duration::ZERO,
        }
    }

    /// Reads up to `count` new entries per stream: blocking on `reader` (a
    /// connection of its own) for one stream, one polling round on `commands`
    /// for several, after the idle wait the last empty round set. Returns
    /// early, empty, on `shutdown`.
    pub async fn read<E>(
        &mut self,
        reader: &Client,
        commands: &Client,
        count: u64,
        decode: Decode<E>,
        shutdown: &CancellationToken,
    ) -> Round<E> {
        let mut round = Round {
            entries: Vec::new(),
            failed: Vec::new(),
        };
        if let [stream] = self.streams.as_slice() {
            let block = Some(self.block_ms);
            match self.read_one(reader, stream, count, block, decode).await {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => round.entries.push((0, entries)),
                Err(error) => round.failed.push((0, error)),
            }
            return round;
        }
        if !self.idle.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => return round,
                () = tokio::time::sleep(self.idle) => {}
            }
        }
        let reads = self
            .streams
            .iter()
            .map(|stream| self.read_one(commands, stream, count, None, decode));
        for (index, read) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            match read {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => round.entries.push((index, entries)),
                Err(error) => round.failed.push((index, error)),
            }
        }
        self.idle = if round.entries.is_empty() {
            (self.idle * 2).clamp(POLL_MIN, POLL_MAX)
        } else {
            Duration::ZERO
        };
        round
    }

    async fn read_one<E>(
        &self,
        client: &Client,
        stream: &str,
        count: u64,
        block: Option<u64>,
        decode: Decode<E>,
    ) -> Result<Vec<E>, Error> {
        let reply: Value = client
            .xreadgroup(
                self.group,
                self.consumer.as_str(),
                Some(count),
                block,
                false,
                stream,
                ">",
            )
            .await?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        decode(reply, stream)
    }
}

/// Creates `group` on each of `streams` (and the streams) if missing; "0": a
/// group created after entries were added still reads them all.
pub async fn ensure_group(redis: &Client, streams: &[String], group: &str) -> anyhow::Result<()> {
    for stream in streams {
        let created: Result<(), Error> = redis.xgroup_create(stream, group, "0", true).await;
        if let Err(error) = created
            && !error.details().contains("BUSYGROUP")
        {
            anyhow::bail!("cannot create the consumer group {group} of {stream}: {error}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> Value {
        Value::String(value.into())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            text(id),
            Value::Array(fields.iter().map(|f| text(f)).collect()),
        ])
    }

    #[test]
    fn an_xreadgroup_reply_becomes_raw_entries_in_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            text("chatter:ingest"),
            Value::Array(vec![
                entry("1-0", &["id", "a", "seq", "7"]),
                entry("1-1", &["id", "b"]),
            ]),
        ])]);
        let entries = raw(reply, "chatter:ingest").expect("entries");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("seq").map(|v| v.as_ref()), Some(&b"7"[..]));
        assert_eq!(entries[1].field("id").map(|v| v.as_ref()), Some(&b"b"[..]));
        assert!(entries[1].field("seq").is_none());
    }

    #[test]
    fn bytes_that_are_not_text_stay_bytes_and_a_deleted_entry_has_no_fields() {
        let entries = raw_entries(Value::Array(vec![
            Value::Array(vec![
                text("2-0"),
                Value::Array(vec![text("body"), Value::Bytes(vec![0xff, 0xfe].into())]),
            ]),
            Value::Array(vec![text("2-1"), Value::Null]),
        ]))
        .expect("entries");
        assert_eq!(
            entries[0].field("body").map(|v| v.to_vec()),
            Some(vec![0xff, 0xfe])
        );
        assert!(entries[1].fields.is_empty());
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error_not_a_panic() {
        assert!(raw(Value::Integer(3), "s").is_err());
        assert!(raw_entries(Value::Array(vec![text("x")])).is_err());
        assert!(raw_entries(Value::Array(vec![Value::Array(vec![text("3-0")])])).is_err());
        assert!(raw(Value::Null, "s").expect("nothing").is_empty());
    }
}
