//! Bounded allocation while decoding client frames: every corpus file and a few
//! generated giants are decoded under a counting allocator, and the bytes
//! allocated must stay linear in the frame's length (≤ 4 × length + 64 KiB; measured at
//! most 3.1 ×, for an escaped frame type echoed in its error). With the gateway's 32 KiB
//! frame cap that is under 200 KiB per frame.
//!
//! This is its own test binary with a single test, because the counting
//! allocator is global: tests running in parallel would blur the count.

use chatter_shared::protocol::ClientFrame;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROOM: &str = "01a23151-22f5-7769-98c2-695ab3fc40e5";

fn bound(len: usize) -> usize {
    4 * len + 64 * 1024
}

#[test]
fn decoding_allocates_linearly_in_the_frame_length() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut frames: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name != "EXPECTED"))
        .map(|path| {
            let bytes = std::fs::read(&path).expect("corpus file");
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    // Giants the corpus keeps small: 4 MiB of each.
    let big = 4 << 20;
    frames.push((
        "message_4mib".into(),
        format!(
            r#"{{"type":"SendMessage","data":{{"room_id":"{ROOM}","message":"{}"}}}}"#,
            "é".repeat(big / 2)
        ),
    ));
    frames.push((
        "open_brackets_4mib".into(),
        format!(r#"{{"type":"Ping","x":{}"#, "[".repeat(big)),
    ));
    frames.push((
        "escaped_type_4mib".into(),
        format!(r#"{{"type":"{}"}}"#, r"\u0001".repeat(big / 6)),
    ));
    frames.push((
        "resume_rooms_4mib".into(),
        format!(
            r#"{{"type":"Resume","data":{{"rooms":{{{}}}}}}}"#,
            (0..big / 48)
                .map(|i| format!(r#""01a23151-22f5-7769-98c2-{i:012x}":{i}"#))
                .collect::<Vec<_>>()
                .join(",")
        ),
    ));

    let mut report = Vec::new();
    for (name, frame) in &frames {
        let region = Region::new(GLOBAL);
        let parsed = ClientFrame::parse(frame);
        let change = region.change();
        // Growth by realloc is counted apart from fresh allocations.
        let allocated = change.bytes_allocated + change.bytes_reallocated.max(0).unsigned_abs();
        drop(parsed);
        report.push(format!(
            "{name}: {} bytes -> {allocated} allocated",
            frame.len()
        ));
        assert!(
            allocated <= bound(frame.len()),
            "{name}: {allocated} bytes allocated for a {}-byte frame",
            frame.len()
        );
    }
    println!("{}", report.join("\n"));
}
