//! The device filter of the status page, as the old page had it: every word of the filter must
//! match a whole word of the device's facts (ip, serial, type, name, phase, classes,
//! environments, `present`/`missing`, firmware, boot code; SPA devices add `spa`, vendor, serial
//! number, version, the hop last sent and their bare MAC, see `status::facts_of`), `*` and `?`
//! are wildcards, case does not matter, and a bare serial (`0090333e0c57`) matches its dashed
//! form. `www/admin.js` does
//! the same in the browser; this is the server side (`admin.php?mode=status&filter=…`).

use regex::Regex;

/// A compiled filter; an empty one matches everything.
#[derive(Debug, Clone)]
pub struct Filter {
    words: Vec<Regex>,
}

impl Filter {
    pub fn new(text: &str) -> Filter {
        let words = text
            .split_whitespace()
            .take(20)
            .map(|word| Regex::new(&pattern(word)).unwrap_or_else(|_| Regex::new("(?-u:\\b)\\z-never").expect("a valid pattern")))
            .collect();
        Filter { words }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the facts (the words of one device, joined by spaces) match every filter word.
    pub fn matches(&self, facts: &str) -> bool {
        self.words.iter().all(|w| w.is_match(facts))
    }
}

/// The regular expression of one filter word: whole word, wildcards, case-insensitive.
pub fn pattern(word: &str) -> String {
    let word = dashed_serial(word).unwrap_or_else(|| word.to_string());
    let mut out = String::from("(?i)(?-u:\\b)");
    for c in word.chars().take(100) {
        match c {
            // written out: the regex crate is built without its Unicode class tables
            '*' => out.push_str("[^ \\t\\r\\n]*"),
            '?' => out.push_str("[^ \\t\\r\\n]"),
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0u8; 4]))),
        }
    }
    out.push_str("(?-u:\\b)");
    out
}

/// `0090333e0c57` → `00-90-33-3e-0c-57`: the state files name serials in the dashed form.
fn dashed_serial(word: &str) -> Option<String> {
    if word.len() != 12 || !word.bytes().all(|b| b.is_ascii_hexdigit()) || !word.to_ascii_lowercase().starts_with("009033") {
        return None;
    }
    let pairs: Vec<&str> = (0..6).map(|i| &word[i * 2..i * 2 + 2]).collect();
    Some(pairs.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: &str = "172.16.0.20 00-90-33-3e-0c-57 ip222 Reception desk update phone, pre_opus_phone, ip222 default present 13r3 13r3";

    #[test]
    fn whole_words_only() {
        assert!(Filter::new("16").matches(FACTS));
        assert!(!Filter::new("16").matches("192.168.0.1"));
        assert!(Filter::new("172.16.").matches(FACTS));
        assert!(Filter::new("172.16. IP222").matches(FACTS), "all words, any case");
        assert!(!Filter::new("172.16. ip232").matches(FACTS));
        assert!(!Filter::new("recep").matches(FACTS));
        assert!(Filter::new("recep*").matches(FACTS));
        assert!(Filter::new("ip2?2").matches(FACTS));
        assert!(Filter::new("present").matches(FACTS));
        assert!(!Filter::new("missing").matches(FACTS));
        assert!(Filter::new("").matches(FACTS));
    }

    #[test]
    fn bare_serials() {
        assert!(Filter::new("0090333E0C57").matches(FACTS));
        assert!(Filter::new("3e").matches(FACTS));
        assert!(!Filter::new("0090333e0c58").matches(FACTS));
    }

    #[test]
    fn regex_characters_are_literal() {
        assert!(!Filter::new("172.16.0.2.").matches(FACTS));
        assert!(!Filter::new("(").matches(FACTS));
        assert!(Filter::new("a+b").matches("x a+b y") || !Filter::new("a+b").matches("x aab y"));
        assert!(!Filter::new("a+b").matches("x aab y"));
    }
}
