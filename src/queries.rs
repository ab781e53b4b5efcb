//! Query answers (`update.php?mode=query&sn=…&id=…`, SPEC §6): a device PUTs the XML output
//! of a configured command; it is kept under `queries/<id>` in the device's state.

use crate::xml::{Element, ParseError};

/// Why a query answer is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body declares a DTD: entity tricks are never accepted from a device.
    #[error("a query answer may not declare a DTD or entities")]
    Dtd,
    /// Not well-formed (the old server answered this with a comment and status 200).
    #[error("invalid xml: {0}")]
    Malformed(ParseError),
}

/// Parses a query answer body.
pub fn parse_answer(body: &str) -> Result<Element, Refusal> {
    let head = body.trim_start();
    if head.contains("<!DOCTYPE") || head.contains("<!ENTITY") {
        return Err(Refusal::Dtd);
    }
    Element::parse(body).map_err(|e| if e.message.contains("DTD") { Refusal::Dtd } else { Refusal::Malformed(e) })
}

/// Replaces the stored answer of query `id` with `answer`, stamped `seen`.
pub fn store_answer(state: &mut Element, id: &str, answer: Element, now: i64) {
    let queries = state.child_or_insert("queries");
    queries.children.retain(|c| c.name != id);
    let mut entry = Element::new(id);
    entry.set_attr("seen", now.to_string());
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
}
