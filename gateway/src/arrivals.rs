//! The database's part of opening a WebSocket, batched over concurrent upgrades.
//!
//! A connect needs the user's record written (users are created on first
//! sight), their stored roles and their live rooms. Asked one socket at a time
//! that was three round trips each; after a drain or a crash every client of a
//! pod reconnects within seconds, and those round trips were what a storm
//! waited on. Here upgrades queue their user and one task answers whole
//! batches with one statement ([`Store::arrive`]): a storm costs one round trip
//! per [`BATCH`] sockets, and a lone connect one round trip, with no wait for
//! a batch to fill.

use chatter_shared::auth::Identity;
use chatter_shared::batches::answer_in_batches;
use chatter_shared::store::{Arrival, Arrived, Store};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Users answered by one statement.
const BATCH: usize = 256;
/// Upgrades waiting for a batch; past it they wait to queue.
const QUEUE: usize = 4096;
/// Batches whose statement may run at once. More than one, so a batch that
/// just filled need not wait for the previous one's round trip; few, so a
/// storm still makes large batches and leaves the pool to everyone else.
const IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ArrivalError {
    #[error("cannot read or write the user: {0}")]
    Database(String),
    #[error("the gateway is shutting down")]
    Stopped,
}

struct Request {
    identity: Identity,
    upsert: bool,
    reply: oneshot::Sender<Result<Arrived, ArrivalError>>,
}

/// The handle upgrades use. Cheap to clone.
#[derive(Clone)]
pub struct Arrivals {
    requests: mpsc::Sender<Request>,
}

impl Arrivals {
    /// Starts the batching task; it stops when `shutdown` is cancelled.
    pub fn start(store: Store, shutdown: CancellationToken) -> Arrivals {
        let (requests, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, queue, shutdown));
        Arrivals { requests }
    }

    /// Writes `identity`'s record if `upsert`, and reads its stored roles and
    /// live rooms. Call it once the user's own channel is subscribed: a room
    /// they are added to after the read then reaches them as `MemberAdded`.
    pub async fn arrive(&self, identity: &Identity, upsert: bool) -> Result<Arrived, ArrivalError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            identity: identity.clone(),
            upsert,
            reply,
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| ArrivalError::Stopped)?;
        answer.await.map_err(|_| ArrivalError::Stopped)?
    }
}

async fn run(store: Store, queue: mpsc::Receiver<Request>, shutdown: CancellationToken) {
    // Each batch ends on its own: the statement is bounded by the pool's timeouts.
    answer_in_batches(queue, BATCH, IN_FLIGHT, shutdown, |requests| {
        let store = store.clone();
        async move { answer(&store, requests).await }
    })
    .await;
}

async fn answer(store: &Store, requests: Vec<Request>) {
    let arrivals: Vec<Arrival> = requests
        .iter()
        .map(|request| Arrival {
            identity: &request.identity,
            upsert: request.upsert,
        })
        .collect();
    let result = store.arrive(&arrivals).await;
    drop(arrivals);
    match result {
        Ok(arrived) => {
            for request in requests {
                // A user twice in one batch: both sockets get the same answer.
                let answer = arrived
                    .get(&request.identity.user_id)
                    .cloned()
                    .unwrap_or_default();
                let _ = request.reply.send(Ok(answer));
            }
        }
        Err(error) => {
            let error = error.to_string();
            for request in requests {
                let _ = request
                    .reply
                    .send(Err(ArrivalError::Database(error.clone())));
            }
        }
    }
}
