//! A minimal terminal chat client, for trying chatter out (see the README).
//!
//! ```sh
//! cargo run -p chatter-gateway --example chat -- --token "$TOKEN" --for 10       # listen 10 s
//! echo hi | cargo run -p chatter-gateway --example chat -- --token "$TOKEN" --room "$ROOM"   # say hi
//! ```
//!
//! Prints every frame the server sends, one JSON object per line. `--for SECONDS`
//! leaves after that long (default: when the server closes). With `--room`,
//! each line typed (or piped) in is sent there as a message; at the end of input
//! it waits a moment for the confirmations, then leaves.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(token) = arg("--token") else {
        eprintln!(
            "usage: chat --token TOKEN [--room ROOM_ID] [--for SECONDS] [--url ws://127.0.0.1:8080/ws]"
        );
        std::process::exit(2);
    };
    let url = arg("--url").unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let room = arg("--room");
    let lifetime = arg("--for")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);

    let (socket, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    let (mut outgoing, mut incoming) = socket.split();
    let printer = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Text(text) => println!("{text}"),
                Message::Close(frame) => {
                    if let Some(frame) = frame {
                        println!("closed: {} {}", u16::from(frame.code), frame.reason);
                    }
                    break;
                }
                _ => {}
            }
        }
    });

    let Some(room) = room else {
        // Listen only: until the server closes, `--for` runs out, or Ctrl-C.
        match lifetime {
            Some(lifetime) => {
                let _ = tokio::time::timeout(lifetime, printer).await;
            }
            None => printer.await?,
        }
        return Ok(());
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0;
    while let Some(line) = lines.next_line().await? {
        n += 1;
        let frame = json!({
            "type": "SendMessage",
            "data": {"room_id": room, "message": line, "message_temp_id": format!("cli-{}-{n}", std::process::id())},
        });
        outgoing
            .send(Message::Text(frame.to_string().into()))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    outgoing.send(Message::Close(None)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    Ok(())
}
