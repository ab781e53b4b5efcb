//! A small reader of the `<!ELEMENT>` and `<!ATTLIST>` declarations of `full-config.dtd`, so
//! that the DTD stays the one list of tags and attributes. It reads what that file uses —
//! comments, processing instructions, element content (`EMPTY`, `ANY`, `(#PCDATA)`, mixed
//! content, sequences and choices with `? * +`) and attribute lists (`CDATA`, other tokenized
//! types, enumerations; `#REQUIRED`, `#IMPLIED`, `#FIXED` and defaults) — and refuses
//! anything else (entities, notations, conditional sections) with a message: it is our own
//! file, not an arbitrary DTD. Bounded: the text may be 256 KiB, groups nest 16 deep.

use std::collections::BTreeMap;

const MAX_DTD_BYTES: usize = 256 * 1024;
const MAX_GROUP_DEPTH: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Empty,
    Any,
    /// `(#PCDATA)` (no names) or `(#PCDATA|a|b)*`.
    Mixed(Vec<String>),
    Children(Particle),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Particle {
    pub kind: ParticleKind,
    pub occurs: Occurs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParticleKind {
    Name(String),
    Choice(Vec<Particle>),
    Sequence(Vec<Particle>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurs {
    Once,
    Optional,
    ZeroOrMore,
    OneOrMore,
}

impl Occurs {
    fn repeats(self) -> bool {
        matches!(self, Occurs::ZeroOrMore | Occurs::OneOrMore)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeType {
    Cdata,
    /// `(a|b|c)`
    Enumeration(Vec<String>),
    /// `ID`, `NMTOKEN`, …: read, not judged.
    Tokenized(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeDefault {
    Required,
    Implied,
    Fixed(String),
    Value(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub kind: AttributeType,
    pub default: AttributeDefault,
}

/// The declarations: element content by name, attribute lists by element name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dtd {
    pub elements: BTreeMap<String, Content>,
    pub attributes: BTreeMap<String, Vec<Attribute>>,
}

impl Dtd {
    pub fn parse(text: &str) -> Result<Dtd, String> {
        if text.len() > MAX_DTD_BYTES {
            return Err(format!("the DTD is {} bytes, more than the {MAX_DTD_BYTES} read", text.len()));
        }
        let mut lexer = Lexer { text, at: 0 };
        let mut dtd = Dtd::default();
        loop {
            lexer.skip_space();
            let rest = lexer.rest();
            if rest.is_empty() {
                break;
            } else if rest.starts_with("<!--") {
                lexer.skip_past("-->")?;
            } else if rest.starts_with("<?") {
                lexer.skip_past("?>")?;
            } else if let Some(after) = rest.strip_prefix("<!ELEMENT") {
                lexer.at = text.len() - after.len();
                let (name, content) = lexer.element_declaration()?;
                if dtd.elements.insert(name.clone(), content).is_some() {
                    return Err(lexer.error(&format!("element '{name}' is declared twice")));
                }
            } else if let Some(after) = rest.strip_prefix("<!ATTLIST") {
                lexer.at = text.len() - after.len();
                let (element, attributes) = lexer.attribute_list()?;
                let list = dtd.attributes.entry(element).or_default();
                for attribute in attributes {
                    // the first declaration of an attribute is binding (XML 1.0 §3.3)
                    if !list.iter().any(|a| a.name == attribute.name) {
                        list.push(attribute);
                    }
                }
            } else {
                return Err(lexer.error("expected <!ELEMENT, <!ATTLIST or a comment"));
            }
        }
        if let Some(element) = dtd.attributes.keys().find(|e| !dtd.elements.contains_key(*e)) {
            return Err(format!("attributes are declared for the undeclared element '{element}'"));
        }
        Ok(dtd)
    }

    /// Child element names `parent` may hold, in declaration order (None: any, `ANY`).
    pub fn allowed_children(&self, parent: &str) -> Option<Vec<&str>> {
        match self.elements.get(parent)? {
            Content::Any => None,
            Content::Empty => Some(Vec::new()),
            Content::Mixed(names) => Some(names.iter().map(String::as_str).collect()),
            Content::Children(particle) => {
                let mut names = Vec::new();
                particle.names(false, &mut |name, _| {
                    if !names.contains(&name) {
                        names.push(name)
                    }
                });
                Some(names)
            }
        }
    }

    /// Whether `child` may appear more than once in `parent` (true when it cannot appear at all:
    /// that is another finding).
    pub fn repeatable(&self, parent: &str, child: &str) -> bool {
        match self.elements.get(parent) {
            Some(Content::Children(particle)) => {
                let (mut seen, mut repeats) = (0, false);
                particle.names(false, &mut |name, repeated| {
                    if name == child {
                        seen += 1;
                        repeats |= repeated;
                    }
                });
                seen != 1 || repeats
            }
            _ => true,
        }
    }

    /// Whether `element` may hold text other than white space.
    pub fn allows_text(&self, element: &str) -> bool {
        matches!(self.elements.get(element), Some(Content::Mixed(_) | Content::Any) | None)
    }

    /// The elements whose content names `child`.
    pub fn parents_of(&self, child: &str) -> Vec<&str> {
        self.elements
            .keys()
            .filter(|parent| self.allowed_children(parent).is_none_or(|names| names.contains(&child)))
            .map(String::as_str)
            .collect()
    }

    pub fn attribute(&self, element: &str, name: &str) -> Option<&Attribute> {
        self.attributes.get(element)?.iter().find(|a| a.name == name)
    }

    pub fn attributes_of(&self, element: &str) -> &[Attribute] {
        self.attributes.get(element).map_or(&[], Vec::as_slice)
    }
}

impl Particle {
    /// Calls `found(name, repeatable)` for every name in the model, `repeatable` when the name
    /// or a group around it may occur more than once.
    fn names<'a>(&'a self, repeated: bool, found: &mut impl FnMut(&'a str, bool)) {
        let repeated = repeated || self.occurs.repeats();
        match &self.kind {
            ParticleKind::Name(name) => found(name, repeated),
            ParticleKind::Choice(items) | ParticleKind::Sequence(items) => {
                for item in items {
                    item.names(repeated, found);
                }
            }
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn error(&self, message: &str) -> String {
        let line = self.text[..self.at].bytes().filter(|b| *b == b'\n').count() + 1;
        format!("full-config.dtd line {line}: {message}")
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn skip_past(&mut self, end: &str) -> Result<(), String> {
        match self.rest().find(end) {
            Some(found) => {
                self.at += found + end.len();
                Ok(())
            }
            None => Err(self.error(&format!("'{end}' is missing"))),
        }
    }

    /// Skips white space and comments inside a declaration.
    fn skip_filler(&mut self) -> Result<(), String> {
        loop {
            self.skip_space();
            if self.rest().starts_with("<!--") {
                self.skip_past("-->")?;
            } else {
                return Ok(());
            }
        }
    }

    fn peek(&mut self) -> Result<Option<char>, String> {
        self.skip_filler()?;
        Ok(self.rest().chars().next())
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        match self.peek()? {
            Some(c) if c == wanted => {
                self.at += c.len_utf8();
                Ok(())
            }
            _ => Err(self.error(&format!("expected '{wanted}'"))),
        }
    }

    /// A name (or a `#KEYWORD`).
    fn name(&mut self) -> Result<&'a str, String> {
        self.skip_filler()?;
        let rest = self.rest();
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '#')))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(self.error("expected a name"));
        }
        self.at += end;
        Ok(&rest[..end])
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.skip_filler()?;
        let quote = self.rest().chars().next().filter(|c| *c == '"' || *c == '\'').ok_or_else(|| self.error("expected a quoted value"))?;
        let body = &self.rest()[1..];
        let end = body.find(quote).ok_or_else(|| self.error("unterminated quoted value"))?;
        self.at += end + 2;
        Ok(body[..end].to_string())
    }

    fn occurs(&mut self) -> Occurs {
        // no white space between a particle and its suffix
        let occurs = match self.rest().chars().next() {
            Some('?') => Occurs::Optional,
            Some('*') => Occurs::ZeroOrMore,
            Some('+') => Occurs::OneOrMore,
            _ => return Occurs::Once,
        };
        self.at += 1;
        occurs
    }

    fn element_declaration(&mut self) -> Result<(String, Content), String> {
        let name = self.name()?.to_string();
        let content = match self.peek()? {
            Some('(') => {
                self.at += 1;
                if self.peek()? == Some('#') {
                    self.mixed()?
                } else {
                    Content::Children(self.group(1)?)
                }
            }
            _ => match self.name()? {
                "EMPTY" => Content::Empty,
                "ANY" => Content::Any,
                other => return Err(self.error(&format!("unknown content '{other}' of element '{name}'"))),
            },
        };
        self.expect('>')?;
        Ok((name, content))
    }

    /// After `(`: `#PCDATA)` or `#PCDATA|a|b)*`.
    fn mixed(&mut self) -> Result<Content, String> {
        if self.name()? != "#PCDATA" {
            return Err(self.error("expected #PCDATA"));
        }
        let mut names = Vec::new();
        loop {
            match self.peek()? {
                Some('|') => {
                    self.at += 1;
                    names.push(self.name()?.to_string());
                }
                Some(')') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error("expected '|' or ')' in mixed content")),
            }
        }
        match self.occurs() {
            Occurs::ZeroOrMore => {}
            Occurs::Once if names.is_empty() => {}
            _ => return Err(self.error("mixed content with names must end in ')*'")),
        }
        Ok(Content::Mixed(names))
    }

    /// After `(`: the items of a choice or sequence, its `)` and suffix.
    fn group(&mut self, depth: usize) -> Result<Particle, String> {
        if depth > MAX_GROUP_DEPTH {
            return Err(self.error(&format!("groups nest more than {MAX_GROUP_DEPTH} deep")));
        }
        let mut items = vec![self.particle(depth)?];
        let mut separator: Option<char> = None;
        loop {
            match self.peek()? {
                Some(c @ ('|' | ',')) => {
                    if separator.is_some_and(|s| s != c) {
                        return Err(self.error("'|' and ',' mixed in one group"));
                    }
                    separator = Some(c);
                    self.at += 1;
                    items.push(self.particle(depth)?);
                }
                Some(')') => {
                    self.at += 1;
                    break;
                }
                _ => return Err(self.error("expected '|', ',' or ')'")),
            }
        }
        let kind = if separator == Some('|') { ParticleKind::Choice(items) } else { ParticleKind::Sequence(items) };
        Ok(Particle { kind, occurs: self.occurs() })
    }

    fn particle(&mut self, depth: usize) -> Result<Particle, String> {
        if self.peek()? == Some('(') {
            self.at += 1;
            return self.group(depth + 1);
        }
        let name = self.name()?.to_string();
        if name.starts_with('#') {
            return Err(self.error("#PCDATA must come first in its group"));
        }
        Ok(Particle { kind: ParticleKind::Name(name), occurs: self.occurs() })
    }

    fn attribute_list(&mut self) -> Result<(String, Vec<Attribute>), String> {
        let element = self.name()?.to_string();
        let mut attributes = Vec::new();
        loop {
            if self.peek()? == Some('>') {
                self.at += 1;
                return Ok((element, attributes));
            }
            let name = self.name()?.to_string();
            let kind = if self.peek()? == Some('(') {
                self.at += 1;
                let mut values = vec![self.name()?.to_string()];
                loop {
                    match self.peek()? {
                        Some('|') => {
                            self.at += 1;
                            values.push(self.name()?.to_string());
                        }
                        Some(')') => {
                            self.at += 1;
                            break;
                        }
                        _ => return Err(self.error("expected '|' or ')' in an enumeration")),
                    }
                }
                AttributeType::Enumeration(values)
            } else {
                match self.name()? {
                    "CDATA" => AttributeType::Cdata,
                    other @ ("ID" | "IDREF" | "IDREFS" | "ENTITY" | "ENTITIES" | "NMTOKEN" | "NMTOKENS") => {
                        AttributeType::Tokenized(other.to_string())
                    }
                    other => return Err(self.error(&format!("unknown type '{other}' of attribute '{name}'"))),
                }
            };
            let default = match self.peek()? {
                Some('"' | '\'') => AttributeDefault::Value(self.quoted()?),
                _ => match self.name()? {
                    "#REQUIRED" => AttributeDefault::Required,
                    "#IMPLIED" => AttributeDefault::Implied,
                    "#FIXED" => AttributeDefault::Fixed(self.quoted()?),
                    other => return Err(self.error(&format!("unknown default '{other}' of attribute '{name}'"))),
                },
            };
            attributes.push(Attribute { name, kind, default });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Dtd {
        Dtd::parse(include_str!("../../full-config.dtd")).expect("the shipped DTD parses")
    }

    #[test]
    fn the_shipped_dtd_declares_what_config_xml_uses() {
        let dtd = shipped();
        assert!(dtd.elements.len() > 30);
        let top = dtd.allowed_children("config").unwrap();
        for section in ["master", "times", "phases", "queries", "upgrades", "dynamic", "proxies", "migrate"] {
            assert!(top.contains(&section), "{section}");
        }
        assert_eq!(dtd.allowed_children("backup"), Some(vec![]));
        assert_eq!(dtd.allowed_children("query"), Some(vec!["cmd", "applies", "show"]));
        assert!(!dtd.repeatable("query", "cmd"));
        assert!(dtd.repeatable("query", "applies"));
        assert!(dtd.repeatable("config", "times"), "(…)* lets every section repeat");
        assert!(dtd.allows_text("model") && !dtd.allows_text("times") && !dtd.allows_text("phases"));
        assert_eq!(dtd.parents_of("model"), ["class", "filenames", "nobootdev", "nofirmdev"]);
        assert_eq!(dtd.attribute("phase", "id").map(|a| &a.default), Some(&AttributeDefault::Required));
        assert_eq!(
            dtd.attribute("config", "debugmerge").map(|a| &a.kind),
            Some(&AttributeType::Enumeration(vec!["true".into(), "false".into()]))
        );
        assert!(dtd.attribute("backup", "dri").is_none());
        assert!(dtd.attributes_of("customcerts").iter().any(|a| a.name == "CSRdn-cn"));
    }

    #[test]
    fn content_models() {
        let dtd = Dtd::parse(
            "<?xml version='1.0'?><!-- c --><!ELEMENT a ((b|c)+, d?, (e, f)*)><!ELEMENT b (#PCDATA|c)*>
             <!ELEMENT c ANY><!ELEMENT d EMPTY><!ELEMENT e (#PCDATA)><!ELEMENT f EMPTY>
             <!ATTLIST d x CDATA 'one' y (p|q) #FIXED \"p\" z NMTOKEN #IMPLIED <!-- inside --> >",
        )
        .unwrap();
        assert_eq!(dtd.allowed_children("a"), Some(vec!["b", "c", "d", "e", "f"]));
        assert!(dtd.repeatable("a", "b") && !dtd.repeatable("a", "d") && dtd.repeatable("a", "f"));
        assert_eq!(dtd.allowed_children("b"), Some(vec!["c"]));
        assert_eq!(dtd.allowed_children("c"), None);
        assert_eq!(dtd.attribute("d", "x").unwrap().default, AttributeDefault::Value("one".into()));
        assert_eq!(dtd.attribute("d", "y").unwrap().default, AttributeDefault::Fixed("p".into()));
        assert_eq!(dtd.attribute("d", "z").unwrap().kind, AttributeType::Tokenized("NMTOKEN".into()));
    }

    #[test]
    fn anything_else_is_refused_with_its_line() {
        for (text, wanted) in [
            ("<!ENTITY x 'y'>", "line 1: expected <!ELEMENT"),
            ("\n<!ELEMENT a (b|c,d)>", "line 2: '|' and ',' mixed"),
            ("<!ELEMENT a (b|#PCDATA)>", "#PCDATA must come first"),
            ("<!ELEMENT a (#PCDATA|b)>", "must end in ')*'"),
            ("<!ELEMENT a EMPTY><!ELEMENT a EMPTY>", "declared twice"),
            ("<!ELEMENT a EMPTY><!ATTLIST b x CDATA #IMPLIED>", "undeclared element 'b'"),
            ("<!ELEMENT a EMPTY><!ATTLIST a x CDATA #SOMETIMES>", "unknown default"),
            ("<!ELEMENT a (b", "expected"),
            ("<!-- open", "'-->' is missing"),
        ] {
            let error = Dtd::parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error}");
        }
        let deep = format!("<!ELEMENT a {}b{}>", "(".repeat(40), ")".repeat(40));
        assert!(Dtd::parse(&deep).unwrap_err().contains("nest more than"));
        assert!(Dtd::parse(&" ".repeat(MAX_DTD_BYTES + 1)).is_err());
    }
}
