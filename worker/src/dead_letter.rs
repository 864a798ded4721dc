//! Where work that cannot be done goes, so it is never silently dropped.
//!
//! In a cluster: Redis streams (`chatter:ingest:dead`, `chatter:notify:dead`) that
//! an operator can inspect and replay (the outbox's and the webhooks' dead letters
//! are written by `delivery.rs`, capped). In the embedded mode there is no Redis:
//! the record is written to the log at error level, in full.

use chatter_shared::keyspace::{INGEST_DEAD_LETTER, NOTIFY_DEAD_LETTER};
use fred::bytes::Bytes;
use fred::prelude::*;

#[derive(Clone)]
pub enum DeadLetters {
    Redis(Client),
    Log,
}

impl DeadLetters {
    /// An ingest entry that can never be stored, with every field it had (see
    /// `IngestEntry::to_fields`) plus `problem`. Fields are bytes, kept exactly
    /// as read, so an entry that is not even UTF-8 is kept too. False if the
    /// dead letter could not be written: the caller must then keep the entry
    /// (not acknowledge it), so that it is retried rather than lost.
    #[must_use]
    pub async fn ingest<K: Into<Bytes>, V: Into<Bytes>>(
        &self,
        fields: impl IntoIterator<Item = (K, V)>,
        problem: &str,
    ) -> bool {
        tracing::error!(problem, "an ingest entry cannot be stored; dead-lettered");
        let fields = fields.into_iter().map(|(k, v)| (k.into(), v.into()));
        self.write(INGEST_DEAD_LETTER, fields.collect(), problem)
            .await
    }

    /// A notification of the embedded mode's in-process queue that failed
    /// after every retry (or never got a chance).
    pub async fn notification(&self, body: String, problem: &str) {
        tracing::warn!(problem, "notification dead-lettered");
        // The in-process queue is at most once across a crash (docs/ARCHITECTURE.md):
        // a dead letter that cannot be written is logged, and that is all.
        let fields = vec![(Bytes::from_static(b"body"), Bytes::from(body))];
        let _ = self.write(NOTIFY_DEAD_LETTER, fields, problem).await;
    }

    async fn write(&self, stream: &str, mut fields: Vec<(Bytes, Bytes)>, problem: &str) -> bool {
        fields.push((
            Bytes::from_static(b"problem"),
            Bytes::copy_from_slice(problem.as_bytes()),
        ));
        match self {
            DeadLetters::Redis(redis) => {
                let added: Result<String, Error> =
                    redis.xadd(stream, false, None, "*", fields).await;
                if let Err(error) = &added {
                    tracing::error!(%error, stream, "cannot write a dead letter");
                }
                added.is_ok()
            }
            DeadLetters::Log => {
                let fields: Vec<_> = fields
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
                    .collect();
                tracing::error!(stream, ?fields, "dead letter");
                true
            }
        }
    }
}
