//! Member lists from request bodies, checked while they are parsed.
//!
//! A 256 KiB body holds ~36,000 short ids. Building that list and then
//! deduplicating it with `Vec::contains` cost seconds of CPU per request, before
//! the caller was even authorized. Here the body extractor only checks that the
//! list is JSON (kept raw, [`RawValue`]); the handler authorizes the caller, then
//! parses the list with a cap that fits them: repeats are dropped with a
//! `HashSet` (linear), and parsing stops at the first id past the cap, so at
//! most `cap` ids are ever kept or validated, whatever the body holds.
//!
//! A serde [`DeserializeSeed`] carries the cap, which is configuration
//! (`MAX_ROOM_MEMBERS`) and so cannot live in a plain `Deserialize` impl.

use crate::http::error::ApiError;
use chatter_shared::auth::validate_user_id;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

/// Parses a JSON list of user ids: valid ids, repeats dropped (first occurrence
/// kept, in order), at most `cap` distinct. Over the cap the answer is
/// `over_cap()`; a malformed id is `bad_user_id`; anything else that is not a
/// list of strings is `bad_json`.
pub(super) fn parse(
    raw: &RawValue,
    cap: usize,
    over_cap: impl FnOnce() -> ApiError,
) -> Result<Vec<String>, ApiError> {
    let problem = Cell::new(None);
    let seed = UserIds {
        cap,
        problem: &problem,
    };
    let mut parser = serde_json::Deserializer::from_str(raw.get());
    match seed.deserialize(&mut parser) {
        Ok(ids) => Ok(ids),
        Err(error) => Err(match problem.get() {
            Some(Problem::OverCap) => over_cap(),
            Some(Problem::BadUserId(message)) => ApiError::bad_request("bad_user_id", message),
            None => ApiError::bad_request("bad_json", format!("not a list of user ids: {error}")),
        }),
    }
}

/// [`parse`] for a list that may be absent (an empty list).
pub(super) fn parse_optional(
    raw: Option<&RawValue>,
    cap: usize,
    over_cap: impl FnOnce() -> ApiError,
) -> Result<Vec<String>, ApiError> {
    raw.map_or(Ok(Vec::new()), |raw| parse(raw, cap, over_cap))
}

/// Why parsing stopped, beyond what the JSON error says.
#[derive(Clone, Copy)]
enum Problem {
    OverCap,
    BadUserId(&'static str),
}

struct UserIds<'a> {
    cap: usize,
    problem: &'a Cell<Option<Problem>>,
}

impl UserIds<'_> {
    fn stop<E: de::Error>(&self, problem: Problem, message: &str) -> E {
        self.problem.set(Some(problem));
        E::custom(message)
    }
}

impl<'de> DeserializeSeed<'de> for UserIds<'_> {
    type Value = Vec<String>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for UserIds<'_> {
    type Value = Vec<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of user ids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut ids = Vec::new();
        while let Some(id) = seq.next_element::<String>()? {
            if seen.contains(&id) {
                continue;
            }
            // The cap before the id's own check: a caller allowed one id learns
            // that they may not list more before anything else is looked at.
            if ids.len() >= self.cap {
                return Err(self.stop(Problem::OverCap, "too many user ids"));
            }
            if let Err(message) = validate_user_id(&id) {
                return Err(self.stop(Problem::BadUserId(message), message));
            }
            seen.insert(id.clone());
            ids.push(id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("JSON")
    }

    fn over() -> ApiError {
        ApiError::bad_request("over", "over the cap")
    }

    #[test]
    fn repeats_are_dropped_in_order() {
        let ids = parse(&raw(r#"["b", "a", "b", "c", "a"]"#), 3, over).expect("ids");
        assert_eq!(ids, ["b", "a", "c"]);
    }

    #[test]
    fn parsing_stops_at_the_first_id_past_the_cap() {
        // The id after the cap is not even checked: it would be a bad_user_id.
        let error = parse(&raw(r#"["a", "a", "b", "\u0007", 1]"#), 2, over).expect_err("over");
        assert_eq!(error.code, "over");
        let error = parse(&raw(r#"["a"]"#), 0, over).expect_err("over");
        assert_eq!(error.code, "over");
    }

    #[test]
    fn bad_ids_and_bad_shapes_are_told_apart() {
        let error = parse(&raw(r#"["ok", " padded"]"#), 5, over).expect_err("bad id");
        assert_eq!(error.code, "bad_user_id");
        for shape in [r#""alice""#, r#"[1]"#, r#"{"a": 1}"#, "null"] {
            let error = parse(&raw(shape), 5, over).expect_err("bad shape");
            assert_eq!(error.code, "bad_json", "{shape}");
        }
    }

    #[test]
    fn a_huge_list_is_refused_quickly() {
        let ids: Vec<String> = (0..36_000).map(|i| format!("{i:x}")).collect();
        let body = raw(&serde_json::to_string(&ids).expect("JSON"));
        let started = std::time::Instant::now();
        let error = parse(&body, 1000, over).expect_err("over");
        assert_eq!(error.code, "over");
        assert!(started.elapsed() < std::time::Duration::from_millis(200));
    }
}
