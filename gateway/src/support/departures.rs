//! `UserLeft` / `SupportLeft`: a side of a support chat has no connection left
//! anywhere in the cluster.
//!
//! The presence task learns that a user went offline from the presence
//! scripts, which decide it once for the whole cluster (the last gateway to let
//! go of the user, or the one that reaped a dead gateway). It hands the user to
//! this task through a bounded queue; this task looks up the user's open chats
//! and tells the other side. A notice that does not fit in the queue is
//! dropped and counted: presence itself is still right, and dashboards show it.

use crate::state::AppState;
use chatter_shared::keyspace;
use chatter_shared::protocol::ServerFrame;
use chatter_shared::telemetry::metric;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Users gone offline waiting to be looked up.
const QUEUE: usize = 4096;

/// The presence task's end of the queue.
#[derive(Clone)]
pub struct Departures(mpsc::Sender<String>);

impl Departures {
    pub fn channel() -> (Departures, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Departures(tx), rx)
    }

    /// `user_id` went offline in the whole cluster.
    pub fn went_offline(&self, user_id: &str) {
        if self.0.try_send(user_id.to_owned()).is_err() {
            metrics::counter!(metric::SUPPORT_DEPARTURES_DROPPED).increment(1);
        }
    }
}

pub async fn run(app: AppState, mut gone: mpsc::Receiver<String>, stop: CancellationToken) {
    loop {
        let user_id = tokio::select! {
            () = stop.cancelled() => return,
            user = gone.recv() => match user {
                Some(user) => user,
                None => return,
            },
        };
        let chats = match app.store.open_chats_of(&user_id).await {
            Ok(chats) => chats,
            Err(error) => {
                tracing::warn!(%error, "cannot look up a departed user's support chats");
                continue;
            }
        };
        for chat in chats {
            let frame = if chat.is_agent {
                ServerFrame::SupportLeft {
                    room_id: chat.room_id,
                    user_id: &user_id,
                }
            } else {
                ServerFrame::UserLeft {
                    room_id: chat.room_id,
                    user_id: &user_id,
                }
            }
            .to_json();
            let mut channels = vec![keyspace::room_channel(chat.room_id)];
            // A waiting user who left: dashboards can show it in the queue.
            if chat.pending && !chat.is_agent {
                channels.push(keyspace::SUPPORT_AGENTS_CHANNEL.to_owned());
            }
            for channel in channels {
                if let Err(error) = app.bus.publish(&channel, frame.clone()).await {
                    tracing::warn!(%error, "cannot publish a support departure");
                }
            }
        }
    }
}
