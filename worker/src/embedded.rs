//! The worker loop of the embedded mode: the gateway's in-process bus hands
//! accepted messages over a bounded queue instead of a Redis stream.

use crate::batch::{Batches, RETRY_MIN};
use chatter_shared::ingest::IngestEntry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stores batches from `entries` until the sending side is gone. On `shutdown` it
/// keeps going until the queue is drained — the gateway stops accepting first — so
/// a graceful stop loses nothing.
pub async fn run(mut entries: mpsc::Receiver<IngestEntry>, batches: Batches, batch_size: usize) {
    let mut batch = Vec::with_capacity(batch_size);
    // Storing never gives up on its own: retries end only when the process does.
    let never = CancellationToken::new();
    while entries.recv_many(&mut batch, batch_size).await > 0 {
        // `store` gives up (None) on a transient error while storing entry by
        // entry: try the batch again rather than drop accepted messages.
        let inserted = loop {
            if let Some(stored) = batches.store(&batch, &never).await {
                break stored.inserted;
            }
            tokio::time::sleep(RETRY_MIN).await;
        };
        tracing::debug!(
            read = batch.len(),
            stored = inserted.len(),
            "batch persisted"
        );
        batches.notify(&batch, &inserted).await;
        batch.clear();
    }
    batches.notifier.finish().await;
}
