//! A fuzz suite on stable Rust: property-based tests (proptest) over everything
//! that decodes client input, plus a committed corpus of the nastiest frames found
//! or constructed (`fuzz_corpus/`, replayed by [`corpus_replays_as_expected`]).
//! `cargo-fuzz` would need a nightly toolchain; proptest runs in the normal
//! `cargo test`, so CI runs all of this on every change.
//!
//! What protects the decoder, and what these tests pin down:
//! - **Size.** The gateway refuses a frame over `MAX_FRAME_BYTES` (32 KiB) before
//!   decoding it (4014), and tungstenite buffers at most twice that; the decoder
//!   itself must still behave on inputs far larger, which is what is fed here.
//! - **Depth.** serde_json's recursion limit (128) stops typed parsing of deep
//!   JSON; the parts kept raw (`data`) or skipped (unknown fields) are scanned
//!   iteratively, with no recursion at all. [`deep_nesting_needs_no_stack`] runs
//!   100,000 levels on a thread with a 256 KiB stack.
//! - **UTF-8.** A WebSocket text frame is UTF-8 or the connection is failed by
//!   tungstenite (1007) before chatter sees it; binary frames get `bad_frame`.
//!   Escaped lone surrogates (`"\ud800"`) are refused by serde_json.
//! - **Allocation.** `fuzz_alloc.rs` measures it: at most 4 × the frame's length
//!   + 64 KiB.

use chatter_shared::protocol::{ClientFrame, FrameError, peek_created_at, peek_message_received};
use chatter_shared::store::RoomCursor;
use proptest::prelude::*;
use std::path::PathBuf;

const ROOM: &str = "01a23151-22f5-7769-98c2-695ab3fc40e5";

/// The name an outcome is recorded under in `fuzz_corpus/EXPECTED`.
fn outcome(parsed: &Result<ClientFrame, FrameError>) -> String {
    match parsed {
        Ok(frame) => format!(
            "ok:{}",
            match frame {
                ClientFrame::SendMessage(_) => "SendMessage",
                ClientFrame::Resume(_) => "Resume",
                ClientFrame::SubscribePresence => "SubscribePresence",
                ClientFrame::Ping => "Ping",
                ClientFrame::Typing(_) => "Typing",
                ClientFrame::MarkRead(_) => "MarkRead",
                ClientFrame::Join(_) => "Join",
                ClientFrame::Load => "Load",
                ClientFrame::JoinUser(_) => "JoinUser",
            }
        ),
        Err(error) => format!("err:{}", error.code),
    }
}

/// Every error is one of the documented codes, with a message to show.
fn check(parsed: &Result<ClientFrame, FrameError>) {
    if let Err(error) = parsed {
        assert!(
            ["bad_frame", "bad_data", "unknown_type"].contains(&error.code),
            "undocumented code {}",
            error.code
        );
        assert!(!error.message.is_empty());
    }
}

/// Decodes bytes the way the gateway would get them: only valid UTF-8 reaches
/// the decoder; the lossy form is decoded too, to fuzz the decoder with it.
fn decode_bytes(bytes: &[u8]) -> Option<Result<ClientFrame, FrameError>> {
    let lossy = ClientFrame::parse(&String::from_utf8_lossy(bytes));
    check(&lossy);
    std::str::from_utf8(bytes).ok().map(|text| {
        let parsed = ClientFrame::parse(text);
        check(&parsed);
        parsed
    })
}

/// Any JSON value, nested up to a few levels, with nasty leaves.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Number, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        Just(Value::String(ROOM.into())),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("room_id".to_owned()),
                    Just("message".to_owned()),
                    Just("message_temp_id".to_owned()),
                    Just("parent_id".to_owned()),
                    Just("rooms".to_owned()),
                    Just("seq".to_owned()),
                    Just(ROOM.to_owned()),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame type name: every known one, near misses, and anything.
fn frame_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SendMessage".to_owned()),
        Just("Resume".to_owned()),
        Just("Typing".to_owned()),
        Just("MarkRead".to_owned()),
        Just("Ping".to_owned()),
        Just("SubscribePresence".to_owned()),
        Just("Join".to_owned()),
        Just("Load".to_owned()),
        Just("JoinUser".to_owned()),
        Just("ChatMessage".to_owned()),
        Just("sendmessage".to_owned()),
        Just("SendMessage\u{0}".to_owned()),
        any::<String>(),
    ]
}

/// Valid frames of every type, as text, to mutate.
fn valid_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        ("\\PC{1,30}", proptest::option::of("\\PC{0,10}")).prop_map(|(message, temp)| {
            serde_json::json!({"type": "SendMessage", "data": {
                "room_id": ROOM, "message": message, "message_temp_id": temp}})
            .to_string()
        }),
        any::<i64>().prop_map(|seq| {
            serde_json::json!({"type": "Resume", "data": {"rooms": {ROOM: seq}}}).to_string()
        }),
        any::<i64>().prop_map(|seq| {
            serde_json::json!({"type": "MarkRead", "data": {"room_id": ROOM, "seq": seq}})
                .to_string()
        }),
        Just(serde_json::json!({"type": "Typing", "data": {"room_id": ROOM}}).to_string()),
        Just(r#"{"type":"Ping"}"#.to_owned()),
        Just(r#"{"type":"SubscribePresence","ref":"r1"}"#.to_owned()),
        "\\PC{0,30}".prop_map(|topic| {
            serde_json::json!({"type": "Join", "data": {"from": "User", "topic": topic}}).to_string()
        }),
        Just(serde_json::json!({"type": "Join", "data": {"from": "Support", "room_id": ROOM}}).to_string()),
        Just(r#"{"type":"Load","data":{}}"#.to_owned()),
        Just(serde_json::json!({"type": "JoinUser", "data": {"room_id": ROOM}}).to_string()),
        "\\PC{1,30}".prop_map(|content| {
            serde_json::json!({"type": "ChatMessage", "data": {"room_id": ROOM, "content": content}})
                .to_string()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes, valid UTF-8 or not.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_bytes(&bytes);
    }

    /// Arbitrary text, biased towards JSON's punctuation.
    #[test]
    fn json_like_text_never_panics(text in r#"[\{\}\[\]":,0-9a-zA-Z\\ u\-\.eE]{0,300}"#) {
        let parsed = ClientFrame::parse(&text);
        check(&parsed);
    }

    /// Every frame type with arbitrary `data`, `ref` and extra fields.
    #[test]
    fn every_frame_type_with_any_data(
        kind in frame_type(),
        data in proptest::option::of(json_value()),
        reference in proptest::option::of(json_value()),
        extra in proptest::option::of(json_value()),
    ) {
        let mut frame = serde_json::json!({"type": kind});
        if let Some(data) = data { frame["data"] = data; }
        if let Some(reference) = reference { frame["ref"] = reference; }
        if let Some(extra) = extra { frame["extra"] = extra; }
        let text = frame.to_string();
        let parsed = ClientFrame::parse(&text);
        check(&parsed);
        // What parses is what was sent.
        if let Ok(ClientFrame::SendMessage(send)) = &parsed {
            prop_assert_eq!(send.message.as_str(), frame["data"]["message"].as_str().unwrap_or("?"));
        }
    }

    /// Valid frames with bytes inserted, removed or replaced anywhere.
    #[test]
    fn mutated_valid_frames_never_panic(
        frame in valid_frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
    ) {
        let mut bytes = frame.into_bytes();
        for (at, edit, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match edit {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => bytes.push(byte),
            }
        }
        decode_bytes(&bytes);
    }

    /// Numbers of any size where the frames expect integers.
    #[test]
    fn huge_numbers_are_bad_data(digits in "-?[0-9]{19,400}(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,30})?") {
        let frame = format!(r#"{{"type":"MarkRead","data":{{"room_id":"{ROOM}","seq":{digits}}}}}"#);
        let parsed = ClientFrame::parse(&frame);
        check(&parsed);
        if let Ok(ClientFrame::MarkRead(mark)) = parsed {
            // Only integers that fit are accepted, exactly.
            prop_assert_eq!(mark.seq.to_string(), digits);
        }
    }

    /// Long strings in every string field.
    #[test]
    fn long_strings_round_trip(text in "\\PC{1000,4000}") {
        let frame = serde_json::json!({"type": "SendMessage", "ref": text, "data": {
            "room_id": ROOM, "message": text, "message_temp_id": text}});
        match ClientFrame::parse(&frame.to_string()) {
            Ok(ClientFrame::SendMessage(send)) => {
                prop_assert_eq!(&send.message, &text);
                prop_assert_eq!(send.message_temp_id.as_deref(), Some(text.as_str()));
            }
            other => prop_assert!(false, "{:?}", other.map(|_| ())),
        }
    }

    /// The other decoders of text that clients influence: the peeks at published
    /// frames (whose message text a client wrote) and `GET /rooms` cursors.
    #[test]
    fn peeks_and_cursors_never_panic(text in any::<String>(), seq in any::<u64>()) {
        let framed = format!(r#"{{"type":"MessageReceived","data":{{"seq":{seq},"id":"{text}"#);
        let _ = peek_message_received(&framed);
        let _ = peek_message_received(&text);
        let _ = peek_created_at(&text);
        let _ = peek_created_at(&format!(r#""created_at":"{text}""#));
        let _ = RoomCursor::parse(&text);
        let _ = RoomCursor::parse(&format!("{seq}{text}"));
    }
}

/// 100,000 levels of nesting in every place a frame can hold them, decoded on
/// a thread whose stack (256 KiB) is an eighth of a tokio worker's: the decoder
/// must not recurse per level.
#[test]
fn deep_nesting_needs_no_stack() {
    const DEPTH: usize = 100_000;
    let open = "[".repeat(DEPTH);
    let closed = format!("{open}{}", "]".repeat(DEPTH));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(DEPTH), "}".repeat(DEPTH));
    let frames = vec![
        open.clone(),
        closed.clone(),
        objects.clone(),
        format!(r#"{{"type":"SendMessage","data":{closed}}}"#),
        format!(r#"{{"type":"SendMessage","data":{objects}}}"#),
        format!(r#"{{"type":"Resume","data":{{"rooms":{{"{ROOM}":{closed}}}}}}}"#),
        format!(r#"{{"type":"Ping","x":{closed}}}"#),
        format!(r#"{{"type":"Ping","x":{objects}}}"#),
        format!(r#"{{"type":"Ping","ref":{closed}}}"#),
        format!(r#"{{"type":{closed}}}"#),
        format!(r#"{{"type":"Typing","data":{open}"#),
    ];
    let outcomes = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            frames
                .iter()
                .map(|frame| {
                    let parsed = ClientFrame::parse(frame);
                    check(&parsed);
                    outcome(&parsed)
                })
                .collect::<Vec<_>>()
        })
        .expect("thread")
        .join()
        .expect("no stack overflow, no panic");
    assert_eq!(
        outcomes,
        [
            "err:bad_frame",
            "err:bad_frame",
            "err:bad_frame",
            "err:bad_data",
            "err:bad_data",
            "err:bad_data",
            "ok:Ping",
            "ok:Ping",
            "err:bad_frame",
            "err:bad_frame",
            "err:bad_frame",
        ]
    );
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus")
}

/// `(file name, bytes, expected outcome)` for every file of the corpus.
fn corpus() -> Vec<(String, Vec<u8>, String)> {
    let expected = std::fs::read_to_string(corpus_dir().join("EXPECTED")).expect("EXPECTED");
    expected
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, outcome) = line.split_once('\t').expect("name<TAB>outcome");
            let bytes = std::fs::read(corpus_dir().join(name)).expect("corpus file");
            (name.to_owned(), bytes, outcome.to_owned())
        })
        .collect()
}

/// Replays the committed corpus: every file decodes as recorded, and every file
/// in the folder is recorded.
#[test]
fn corpus_replays_as_expected() {
    let corpus = corpus();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "EXPECTED")
        .collect();
    files.sort();
    let mut recorded: Vec<String> = corpus.iter().map(|(name, _, _)| name.clone()).collect();
    recorded.sort();
    assert_eq!(files, recorded, "every corpus file is listed in EXPECTED");

    let mismatches: Vec<String> = corpus
        .iter()
        .filter_map(|(name, bytes, expected)| {
            let got = match decode_bytes(bytes) {
                Some(parsed) => outcome(&parsed),
                None => "not_utf8".to_owned(),
            };
            (got != *expected).then(|| format!("{name}: expected {expected}, got {got}"))
        })
        .collect();
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
