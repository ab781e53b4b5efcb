//! A small owned XML tree: parsed with roxmltree (no DTDs, no entity expansion), edited in
//! place, written back. Configuration merging and the device state files both need to change
//! a document and serialize it again, which a read-only parser cannot do.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    /// Text directly inside the element (all text nodes concatenated).
    pub text: String,
    pub children: Vec<Element>,
}

/// Why a document could not be read, with the position a person can look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl Element {
    pub fn new(name: &str) -> Element {
        Element { name: name.to_string(), ..Element::default() }
    }

    /// Parses a whole document from an untrusted source (a device, a request): a document
    /// type declaration is refused, so no entity can be defined, let alone expanded.
    pub fn parse(text: &str) -> Result<Element, ParseError> {
        Element::parse_with(text, false)
    }

    /// Parses a file the operator wrote (configuration): a `<!DOCTYPE … SYSTEM "full-config.dtd">`
    /// line is allowed, as the documentation recommends it for editors. External DTDs are never
    /// loaded.
    pub fn parse_trusted(text: &str) -> Result<Element, ParseError> {
        Element::parse_with(text, true)
    }

    fn parse_with(text: &str, allow_dtd: bool) -> Result<Element, ParseError> {
        let options = roxmltree::ParsingOptions { allow_dtd, nodes_limit: 1_000_000 };
        let doc = roxmltree::Document::parse_with_options(text, options).map_err(|e| {
            let pos = e.pos();
            ParseError { line: pos.row, column: pos.col, message: e.to_string() }
        })?;
        Ok(Element::from_node(doc.root_element()))
    }

    fn from_node(node: roxmltree::Node) -> Element {
        let mut element = Element {
            name: node.tag_name().name().to_string(),
            attrs: node.attributes().map(|a| (a.name().to_string(), a.value().to_string())).collect(),
            text: String::new(),
            children: Vec::new(),
        };
        for child in node.children() {
            if child.is_element() {
                element.children.push(Element::from_node(child));
            } else if child.is_text() {
                element.text.push_str(child.text().unwrap_or(""));
            }
        }
        element
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Sets an attribute; an empty value removes it, as the old server's state files show.
    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if value.is_empty() {
            self.remove_attr(name);
            return;
        }
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((name.to_string(), value)),
        }
    }

    /// Sets an attribute even to the empty string (configuration merging keeps empty values).
    pub fn put_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.attrs.push((name.to_string(), value.to_string())),
        }
    }

    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.name == name)
    }

    /// The first child called `name`, created at the end when there is none.
    pub fn child_or_insert(&mut self, name: &str) -> &mut Element {
        let index = match self.children.iter().position(|c| c.name == name) {
            Some(index) => index,
            None => {
                self.children.push(Element::new(name));
                self.children.len() - 1
            }
        };
        &mut self.children[index]
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text content trimmed of surrounding white space.
    pub fn trimmed_text(&self) -> &str {
        self.text.trim()
    }

    /// The document form, with an XML declaration.
    pub fn to_document(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        self.write_to(&mut out, 0);
        out
    }

    fn write_to(&self, out: &mut String, depth: usize) {
        for _ in 0..depth {
            out.push_str("  ");
        }
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}=\"{}\"", escape(v, true));
        }
        let text = self.text.trim();
        if self.children.is_empty() && text.is_empty() {
            out.push_str("/>\n");
            return;
        }
        out.push('>');
        out.push_str(&escape(text, false));
        if !self.children.is_empty() {
            out.push('\n');
            for child in &self.children {
                child.write_to(out, depth + 1);
            }
            for _ in 0..depth {
                out.push_str("  ");
            }
        }
        let _ = writeln!(out, "</{}>", self.name);
    }
}

/// Escapes text for XML content or (with `attribute`) a double-quoted attribute value.
pub fn escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attribute => out.push_str("&quot;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' if attribute => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            // characters XML 1.0 cannot carry at all are dropped rather than producing a file
            // nobody can read back
            c if !is_xml_char(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether XML 1.0 can carry the character at all.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || ((c as u32) >= 0x20 && !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_write_round_trip() {
        let doc = "<state seen=\"1\"><device sn=\"a&amp;b\" type='IP232'/><msgs time=\"2\" msg=\"x &lt; y\"/></state>";
        let root = Element::parse(doc).unwrap();
        assert_eq!(root.child("device").unwrap().attr("sn"), Some("a&b"));
        let again = Element::parse(&root.to_document()).unwrap();
        assert_eq!(strip_lines(again), strip_lines(root));
    }

    #[test]
    fn dtd_is_refused() {
        let doc = "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><x>&a;</x>";
        assert!(Element::parse(doc).is_err());
    }

    #[test]
    fn error_has_position() {
        let err = Element::parse("<config>\n  <master info='x'>\n</config>").unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn empty_value_removes_attribute() {
        let mut e = Element::new("state");
        e.set_attr("phase", "update");
        e.set_attr("phase", "");
        assert_eq!(e.attr("phase"), None);
    }

    fn strip_lines(mut e: Element) -> Element {
        e.text = e.text.trim().to_string();
        e.children = e.children.into_iter().map(strip_lines).collect();
        e
    }

    proptest! {
        #[test]
        fn any_attribute_value_survives_writing(value in "\\PC*") {
            let mut e = Element::new("device");
            e.set_attr("name", value.clone());
            let back = Element::parse(&e.to_document()).unwrap();
            let expected: String = value.chars().filter(|c| is_xml_char(*c)).collect();
            let got = back.attr("name").unwrap_or("").to_string();
            prop_assert_eq!(got, expected);
        }
    }
}
