//! Query answers (`update.php?mode=query&sn=…&id=…`, SPEC §6): a device PUTs the XML output
//! of a configured command; it is kept under `queries/<id>` in the device's state.

use compact_str::ToCompactString;
use crate::xml::{Element, ErrorKind, ParseError};

/// Why a query answer is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body declares a DTD: entity tricks are never accepted from a device.
    #[error("a query answer may not declare a DTD or entities")]
    Dtd,
    /// Not well-formed (the old server answered this with a comment and status 200).
    #[error("invalid xml: {0}")]
    Malformed(ParseError),
    /// Beyond [`crate::xml::Limits::DEVICE`] (size, nesting, nodes): no device answers like
    /// that, and nothing of it is parsed into a tree, let alone stored.
    #[error("query answer refused: {0}")]
    TooLarge(ParseError),
}

/// Parses a query answer body within [`crate::xml::Limits::DEVICE`].
pub fn parse_answer(body: &str) -> Result<Element, Refusal> {
    let head = body.trim_start();
    if head.contains("<!DOCTYPE") || head.contains("<!ENTITY") {
        return Err(Refusal::Dtd);
    }
    Element::parse(body).map_err(|e| match e.kind {
        ErrorKind::OverLimit => Refusal::TooLarge(e),
        ErrorKind::Malformed if e.message.contains("DTD") => Refusal::Dtd,
        ErrorKind::Malformed => Refusal::Malformed(e),
    })
}

/// Replaces the stored answer of query `id` with `answer`, stamped `seen`.
pub fn store_answer(state: &mut Element, id: &str, answer: Element, now: i64) {
    let queries = state.child_or_insert("queries");
    queries.children.retain(|c| c.name != id);
    let mut entry = Element::new(id);
    entry.set_attr("seen", now.to_compact_string());
    entry.children.push(answer);
    queries.children.push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_replace_the_previous_one() {
        let mut state = Element::new("state");
        store_answer(&mut state, "admin", parse_answer("<info name='a'/>").unwrap(), 1);
        store_answer(&mut state, "admin", parse_answer("<info name='b'/>").unwrap(), 2);
        let queries = state.child("queries").unwrap();
        assert_eq!(queries.children.len(), 1);
        assert_eq!(queries.children[0].attr("seen"), Some("2"));
        assert_eq!(queries.children[0].children[0].attr("name"), Some("b"));
    }

    #[test]
    fn entity_bodies_and_malformed_bodies_are_refused() {
        let bomb = "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]><x>&b;</x>";
        assert_eq!(parse_answer(bomb).unwrap_err(), Refusal::Dtd);
        assert!(matches!(parse_answer("<info><unclosed></info>"), Err(Refusal::Malformed(_))));
    }

    #[test]
    fn answers_too_deep_for_the_state_are_refused() {
        let depth = crate::xml::Limits::DEVICE.depth;
        let fits = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        let mut state = Element::new("state");
        store_answer(&mut state, "admin", parse_answer(&fits).unwrap(), 1);
        assert_eq!(state.depth(), crate::xml::STATE_DEPTH, "a stored answer fits the state's depth exactly");
        let deeper = format!("<a>{fits}</a>");
        assert!(matches!(parse_answer(&deeper), Err(Refusal::TooLarge(_))));
        // unclosed and too deep: refused as too deep before anything else is looked at
        assert!(matches!(parse_answer(&"<a>".repeat(3100)), Err(Refusal::TooLarge(_))));
    }
}
