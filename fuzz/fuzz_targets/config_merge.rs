//! The configuration merge (src/config/merge.rs, src/config/mod.rs): a user file, read as the
//! operator's files are read, merged into the shipped config.xml, ordered by `seq`, checked
//! and typed. Attributes the user file sets on `<config>` must win.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use update_server::config::{self, merge};
use update_server::xml::Element;

fn shipped() -> &'static Element {
    static SHIPPED: OnceLock<Element> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        Element::parse_trusted(include_str!("../../config.xml")).expect("the shipped config.xml parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(user) = Element::parse_trusted(text) else {
        return;
    };
    let mut merged = shipped().clone();
    if merge::merge(&mut merged, &user).is_ok() {
        for (name, _) in &user.attrs {
            let last = user.attrs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            assert_eq!(merged.attr(name), last, "the user file's {name} did not win");
        }
        merge::order_by_seq(&mut merged);
    }
    let _ = config::build(shipped().clone(), &user, "config/user-config.xml");
});
