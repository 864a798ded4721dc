//! Answering many concurrent requests in batches: one task takes whatever has
//! queued up and hands it on as one unit of work.
//!
//! Used where a burst of callers would otherwise make one round trip each: the
//! gateway's appends to Redis (`ingest::Appender`) and the database part of its
//! connects (`arrivals`). A lone request is a batch of one, sent at once: no
//! batch waits to fill. Requests pile up only while `in_flight` batches are
//! being answered, and the next batch takes them together.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Takes up to `batch` queued requests whenever fewer than `in_flight` batches
/// are being answered, and answers them with `answer` in a task of its own.
/// Returns when `stop` is cancelled or every sender is gone; requests still
/// queued are dropped (their callers see their reply channel closed), batches
/// already taken are answered.
pub async fn answer_in_batches<T, F, Fut>(
    mut queue: mpsc::Receiver<T>,
    batch: usize,
    in_flight: usize,
    stop: CancellationToken,
    answer: F,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    let batch = batch.max(1);
    let mut taken = Vec::with_capacity(batch);
    loop {
        // A slot first: while every batch is busy, requests pile up in the
        // queue and the next batch takes them together.
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = queue.recv_many(&mut taken, batch) => received,
        };
        if received == 0 {
            return;
        }
        let requests = std::mem::replace(&mut taken, Vec::with_capacity(batch));
        let work = answer(requests);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::answer_in_batches;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// What queued up while the only batch in flight was answered goes out
    /// together, and nothing is answered twice or lost.
    #[tokio::test]
    async fn requests_that_pile_up_go_out_together() {
        let (requests, queue) = mpsc::channel(100);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = sizes.clone();
        let task = tokio::spawn(answer_in_batches(
            queue,
            10,
            1,
            CancellationToken::new(),
            move |batch: Vec<u32>| {
                let seen = seen.clone();
                let mut released = released.clone();
                async move {
                    seen.lock().expect("sizes").push(batch.len());
                    let _ = released.wait_for(|open| *open).await;
                }
            },
        ));
        requests.send(0).await.expect("queued");
        tokio::task::yield_now().await;
        for i in 1..=15 {
            requests.send(i).await.expect("queued");
        }
        release.send(true).expect("released");
        drop(requests);
        task.await.expect("batching task");
        let sizes = sizes.lock().expect("sizes").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 16, "{sizes:?}");
        assert!(sizes.iter().all(|size| *size <= 10), "{sizes:?}");
        assert!(sizes.len() <= 3, "15 queued requests made {sizes:?}");
    }
}
