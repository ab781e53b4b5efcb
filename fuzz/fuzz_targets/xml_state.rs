//! XML → device state → XML (src/xml.rs, src/state.rs, src/queries.rs): the input is read the
//! way a poll reads `status/<sn>.xml` and the way `mode=query` reads a device's answer; the
//! state is changed as a poll changes it, written, and read back. Writing must give a document
//! that parses again to the same tree (text compared trimmed, as the writer indents). The
//! reader of files as this server wrote them (`Element::parse_as_written`) must give exactly
//! the parser's tree for whatever it accepts, the input itself and every state written here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_server::xml::{Element, Limits};
use update_server::{queries, state};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    // both readers need UTF-8: a state file that is not is read as empty, a query body refused
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    as_written_reads_as_parsed(text);
    // as a state file on a poll
    if let Ok(mut doc) = Element::parse(text) {
        if doc.name == "state" {
            state::mark_request(&mut doc, NOW);
            state::log(&mut doc, NOW, "firmware <IP232> & \"things\"\r\n");
            state::device(&mut doc).set_attr("sn", "00-90-33-3e-0c-57");
            state::prune_log(&mut doc, NOW, 3600);
            let written = doc.to_document();
            read_back(&doc, &written);
            check_in_place_update(text, &written);
            as_written_reads_as_parsed(&state::render(&doc));
        }
    }
    // as a query answer stored into a device's state
    if let Ok(answer) = queries::parse_answer(text) {
        let mut doc = Element::new("state");
        state::device(&mut doc).set_attr("sn", "00-90-33-3e-0c-57");
        queries::store_answer(&mut doc, "admin", answer, NOW);
        let written = doc.to_document();
        read_back(&doc, &written);
    }
});

/// What the reader of files as written accepts, the parser reads as the very same tree (text
/// runs included).
fn as_written_reads_as_parsed(text: &str) {
    if let Some(fast) = Element::parse_as_written(text, state::LAYOUT, &Limits::STATE) {
        match Element::parse_within(text, &Limits::STATE) {
            Ok(parsed) => assert!(first_difference(&fast, &parsed).is_none() && fast == parsed, "read as written differently:\n{text}"),
            Err(error) => panic!("read as written, but the parser refuses it: {error}\n{text}"),
        }
    }
}

/// The written document must parse (the next poll reads it) and give the same tree back.
fn read_back(original: &Element, written: &str) {
    let again = match Element::parse(written) {
        Ok(again) => again,
        Err(error) => panic!("a written state does not parse again: {error}\n{written}"),
    };
    if let Some(difference) = first_difference(original, &again) {
        panic!("the written state reads back differently: {difference}\n{written}");
    }
}

/// Compares two trees without recursion (the depth is the input's).
fn first_difference(a: &Element, b: &Element) -> Option<String> {
    let mut pending = vec![(a, b)];
    while let Some((a, b)) = pending.pop() {
        if a.name != b.name || a.attrs != b.attrs || text_of(a) != text_of(b) {
            return Some(format!(
                "<{} {:?}> {:?} became <{} {:?}> {:?}",
                a.name,
                a.attrs,
                text_of(a),
                b.name,
                b.attrs,
                text_of(b)
            ));
        }
        if a.children.len() != b.children.len() {
            return Some(format!("<{}> has {} children, then {}", a.name, a.children.len(), b.children.len()));
        }
        pending.extend(a.children.iter().zip(&b.children));
    }
    None
}

/// Text as the writer keeps it: trimmed (it indents), and with a carriage return read back as a
/// line feed: text content is written with a raw CR (from `&#13;` in the input), which XML
/// line-end handling turns into LF. Known and harmless for the product's own data (no value the
/// server acts on is element text), reported; attribute values must survive exactly.
fn text_of(element: &Element) -> String {
    element.text.trim().replace("\r\n", "\n").replace('\r', "\n")
}

/// The in-place update of a state file rewrites only digits, and gives exactly the new text.
fn check_in_place_update(old: &str, new: &str) {
    match state::digits_only_change(old, new) {
        None => {}
        Some(None) => assert_eq!(old, new),
        Some(Some((start, end))) => {
            assert!(start < end && end <= new.len());
            let mut patched = old.as_bytes().to_vec();
            patched[start..end].copy_from_slice(&new.as_bytes()[start..end]);
            assert_eq!(patched, new.as_bytes());
            let changed = old.bytes().zip(new.bytes()).filter(|(a, b)| a != b);
            assert!(changed.into_iter().all(|(a, b)| a.is_ascii_digit() && b.is_ascii_digit()));
        }
    }
}
