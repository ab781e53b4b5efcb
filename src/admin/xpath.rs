//! The `show` columns of the queries (`queries/query/show`): XPath 1.0 expressions evaluated on
//! a device's state XML, as the old page did with PHP's DOMXPath. Node-sets show the string
//! values of their nodes joined by `, `; an expression that fails shows a short error.

use super::tree::Node;
use crate::xml::Element;
use sxd_xpath::{Context, Factory, Value, XPath};

/// One column: its title and the compiled expression (or why it does not compile).
pub struct Column {
    pub query: String,
    pub title: String,
    /// The expression as configured.
    pub source: String,
    pub expression: Result<XPath, String>,
}

/// A query with `show` columns, as the status page groups them.
pub struct QueryColumns {
    pub id: String,
    pub title: String,
    pub columns: Vec<Column>,
}

/// Which parts of a state the expressions can see. Building the XPath document is the most
/// expensive step of a row, and most of a state (log messages, delivered snippets) is never
/// looked at: an element below `state` or `queries` is left out when no expression names it
/// and no expression could reach it without naming it (wildcards, `//`, axes, `..`, `node()`,
/// `text()`, or the string value of `state` or `queries` as a whole).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    everything: bool,
    expressions: Vec<String>,
}

impl Reach {
    pub fn of(queries: &[QueryColumns]) -> Reach {
        static WHOLE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
        let whole = WHOLE.get_or_init(|| {
            regex::Regex::new(r"(?:^|[^A-Za-z0-9_@.-])(?:state|queries)[ \t\r\n]*(?:$|[^A-Za-z0-9_/.-])").expect("a valid pattern")
        });
        let expressions: Vec<String> = queries.iter().flat_map(|q| q.columns.iter().map(|c| c.source.clone())).collect();
        let everything = expressions.iter().any(|e| {
            ["*", "//", "::", "..", "node(", "text(", "comment(", "processing-instruction("].iter().any(|t| e.contains(t)) || whole.is_match(e)
        });
        Reach { everything, expressions }
    }

    fn keeps(&self, name: &str) -> bool {
        self.everything || self.expressions.iter().any(|e| e.contains(name))
    }
}

/// Everything a thread needs to fill the `show` columns of its rows.
pub struct Shows {
    pub queries: Vec<QueryColumns>,
    pub reach: Reach,
    pub context: Context<'static>,
}

impl Shows {
    pub fn new(config: &Element) -> Shows {
        let queries = columns(config);
        let reach = Reach::of(&queries);
        Shows { queries, reach, context: Context::new() }
    }

    /// No columns at all (for readers that show none).
    pub fn none() -> Shows {
        Shows { queries: Vec::new(), reach: Reach::default(), context: Context::new() }
    }
}

/// The queries of the configuration that have a title and `show` entries (a `show` of `none`
/// is no column), their expressions compiled once for all devices.
pub fn columns(config: &Element) -> Vec<QueryColumns> {
    let factory = Factory::new();
    let Some(queries) = config.child("queries") else { return Vec::new() };
    queries
        .children_named("query")
        .filter_map(|query| {
            let id = query.attr("id").unwrap_or("").to_string();
            let title = query.attr("title").unwrap_or("").to_string();
            let columns: Vec<Column> = query
                .children_named("show")
                .filter(|show| show.trimmed_text() != "none")
                .map(|show| Column {
                    query: id.clone(),
                    title: show.attr("title").unwrap_or("").to_string(),
                    source: show.trimmed_text().to_string(),
                    expression: compile(&factory, show.trimmed_text()),
                })
                .collect();
            (!title.is_empty() && !columns.is_empty() && !id.is_empty()).then_some(QueryColumns { id, title, columns })
        })
        .collect()
}

fn compile(factory: &Factory, expression: &str) -> Result<XPath, String> {
    match std::panic::catch_unwind(|| factory.build(expression)) {
        Ok(Ok(Some(xpath))) => Ok(xpath),
        Ok(Ok(None)) => Err("empty XPath expression".into()),
        Ok(Err(e)) => Err(format!("invalid XPath expression: {}", short(&e.to_string()))),
        Err(_) => Err("invalid XPath expression".into()),
    }
}

fn short(text: &str) -> String {
    let mut out: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A device's state as an XPath document, built once per device for all its columns.
pub struct StateDocument {
    package: sxd_document::Package,
}

impl StateDocument {
    pub fn new(state: Node, reach: &Reach) -> StateDocument {
        let package = sxd_document::Package::new();
        {
            let document = package.as_document();
            let root = shallow(&document, state);
            for child in state.children().filter(|c| c.name() == "queries" || reach.keeps(c.name())) {
                if child.name() == "queries" {
                    let queries = shallow(&document, child);
                    for answer in child.children().filter(|a| reach.keeps(a.name())) {
                        queries.append_child(build(&document, answer));
                    }
                    root.append_child(queries);
                } else {
                    root.append_child(build(&document, child));
                }
            }
            document.root().append_child(root);
        }
        StateDocument { package }
    }

    /// The column's value on this device: text to show, or a short error. `context` is the
    /// evaluation context (the core function library), built once per thread: building it
    /// costs more than most evaluations.
    pub fn evaluate(&self, column: &Column, context: &Context<'static>) -> Result<String, String> {
        let xpath = column.expression.as_ref().map_err(Clone::clone)?;
        let document = self.package.as_document();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            xpath.evaluate(context, document.root()).map(|value| text_of(&value))
        }));
        match outcome {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(e)) => Err(format!("XPath error: {}", short(&e.to_string()))),
            Err(_) => Err("XPath error".into()),
        }
    }
}

/// The element with its attributes, without its content.
fn shallow<'d>(document: &sxd_document::dom::Document<'d>, element: Node) -> sxd_document::dom::Element<'d> {
    let node = document.create_element(element.name());
    if let Some(raw) = element.raw() {
        for attribute in raw.attributes() {
            node.set_attribute_value(attribute.name(), attribute.value());
        }
    }
    node
}

/// The element with everything in it (elements and text), copied with an explicit stack: the
/// shape of a stored answer is the device's (its depth is bounded when the file is parsed,
/// and this copy does not rely on it).
fn build<'d>(document: &sxd_document::dom::Document<'d>, element: Node) -> sxd_document::dom::Element<'d> {
    let top = shallow(document, element);
    let Some(raw) = element.raw() else { return top };
    let mut pending = vec![(top, raw)];
    while let Some((copy, original)) = pending.pop() {
        for child in original.children() {
            if child.is_element() {
                let child_copy = shallow(document, Node::of(child));
                copy.append_child(child_copy);
                pending.push((child_copy, child));
            } else if let Some(text) = child.text().filter(|t| !t.trim().is_empty()) {
                copy.append_child(document.create_text(text));
            }
        }
    }
    top
}

/// What a value looks like in a cell.
fn text_of(value: &Value) -> String {
    match value {
        Value::Nodeset(nodes) => nodes.document_order().iter().map(|n| n.string_value()).collect::<Vec<_>>().join(", "),
        Value::String(s) => s.clone(),
        Value::Boolean(b) => b.to_string(),
        Value::Number(n) => number_text(*n),
    }
}

/// XPath 1.0's `string()` of a number.
fn number_text(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else if n == n.trunc() && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tree;

    fn config(shows: &str) -> Element {
        Element::parse(&format!("<config><queries><query id='registration' title='Registration'><cmd>x</cmd>{shows}</query><query id='admin' title='Admin'/></queries></config>")).unwrap()
    }

    const STATE: &str = r#"<state seen="1"><device sn="00-90-33-3e-0c-57"/><queries><registration seen="5"><info><reg id="0" state="up" h323="alice" e164="101" gk-addr="10.0.0.1"/><reg id="1" state="down" h323="bob" e164="102"/></info></registration></queries></state>"#;

    #[test]
    fn wiki_examples() {
        let cols = columns(&config(r#"<show title="State: User/Number">concat(/state/queries/registration/info/reg[@id = "0"]/@state, ': ' , /state/queries/registration/info/reg[@id = "0"]/@h323, '/', /state/queries/registration/info/reg[@id = "0"]/@e164)</show><show title="all">/state/queries/registration/info/reg/@h323</show><show title="n">count(//reg)</show><show title="bad">concat(</show><show title="f">nosuch(1)</show><show>none</show>"#));
        assert_eq!(cols.len(), 1, "a query without show columns is left out");
        assert_eq!(cols[0].columns.len(), 5);
        let parsed = tree::parse(STATE).unwrap();
        let doc = StateDocument::new(Node::of(parsed.root_element()), &Reach::of(&cols));
        let context = Context::new();
        let values: Vec<_> = cols[0].columns.iter().map(|c| doc.evaluate(c, &context)).collect();
        assert_eq!(values[0], Ok("up: alice/101".to_string()));
        assert_eq!(values[1], Ok("alice, bob".to_string()));
        assert_eq!(values[2], Ok("2".to_string()));
        assert!(values[3].as_ref().unwrap_err().starts_with("invalid XPath expression"));
        assert!(values[4].is_err());
    }

    #[test]
    fn unreachable_parts_are_left_out_but_never_change_a_value() {
        let parsed = tree::parse(r#"<state seen="7"><device sn="x" type="IP232"/><msgs time="1" msg="a"/><msgs time="2" msg="b"/><queries><registration><info><reg id="0" state="up"/></info></registration><admin><info name="n"/></admin></queries></state>"#).unwrap();
        let state = Node::of(parsed.root_element());
        let cases = [
            (r#"concat(/state/queries/registration/info/reg[@id = "0"]/@state, '!')"#, "up!", false),
            ("/state/device/@type", "IP232", false),
            ("count(/state/*)", "4", true),
            ("count(//msgs)", "2", true),
            ("/state/@seen", "7", false),
            ("string(/state/queries)", "", true),
            ("count(/state/queries/admin/following-sibling::*)", "0", true),
        ];
        for (expression, expected, everything) in cases {
            let cols = columns(&config(&format!("<show title='x'>{}</show>", expression.replace('<', "&lt;"))));
            let reach = Reach::of(&cols);
            assert_eq!(reach.everything, everything, "{expression}");
            let doc = StateDocument::new(state, &reach);
            assert_eq!(doc.evaluate(&cols[0].columns[0], &Context::new()).as_deref(), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn missing_data_is_empty() {
        let cols = columns(&config("<show title='x'>/state/queries/registration/info/reg[@id='9']/@state</show>"));
        let parsed = tree::parse("<state/>").unwrap();
        let doc = StateDocument::new(Node::of(parsed.root_element()), &Reach::of(&cols));
        assert_eq!(doc.evaluate(&cols[0].columns[0], &Context::new()), Ok(String::new()));
    }
}
