//! A read-only view of a parsed state file (roxmltree, no copy), with the few accessors the
//! status page needs. Reading 10,000 state files is the page's main cost; copying each into
//! an owned tree would add a third to it.

/// An element of a parsed document, or the empty element (where one is absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Node<'a> {
    inner: Option<roxmltree::Node<'a, 'a>>,
}

impl<'a> Node<'a> {
    pub fn of(node: roxmltree::Node<'a, 'a>) -> Node<'a> {
        Node { inner: Some(node) }
    }

    pub fn name(&self) -> &'a str {
        self.inner.map_or("", |n| n.tag_name().name())
    }

    pub fn attr(&self, name: &str) -> Option<&'a str> {
        self.inner.and_then(|n| n.attribute(name))
    }

    pub fn child(&self, name: &str) -> Option<Node<'a>> {
        self.children_named(name).next()
    }

    pub fn children(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        self.inner.into_iter().flat_map(|n| n.children().filter(|c| c.is_element()).map(Node::of))
    }

    pub fn children_named(&self, name: &str) -> impl Iterator<Item = Node<'a>> + 'a {
        let name = name.to_string();
        self.children().filter(move |c| c.name() == name)
    }

    pub fn raw(&self) -> Option<roxmltree::Node<'a, 'a>> {
        self.inner
    }
}

/// Parses a state file from an untrusted source within the limits of a state file (no DTD, so
/// no entities; at most [`crate::xml::STATE_DEPTH`] levels, which everything that walks the
/// tree afterwards relies on).
pub fn parse(text: &str) -> Result<roxmltree::Document<'_>, String> {
    crate::xml::parse_document(text, &crate::xml::Limits::STATE, false).map_err(|e| e.to_string())
}
