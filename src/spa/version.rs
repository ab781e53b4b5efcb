//! SPA firmware versions and their order (research notes §3.2, issue 9): `7.5.2b`, `6.1.5(a)`,
//! `1.4.1(SR5)`, `1.3.5(004p)`. The order is partial on purpose: where the vendor's numbering
//! says nothing (a variant label such as `(LS)` or `(004p_XU001)`), [`compare`] answers "no
//! order" rather than a guess, and the upgrade decisions never act on that answer.
//!
//! There is deliberately no `PartialOrd` for [`Version`]: with it, `current >= target` is
//! `false` for an incomparable pair and reads as "below the target, upgrade" — the class of
//! mistake the thread's `cmp_ver` made. [`compare`] returns an `Option` the caller must face.

use std::cmp::Ordering;

/// The longest version text read. Real ones are below 20 bytes (`1.3.5(004p_XU001)`).
pub const MAX_VERSION_BYTES: usize = 40;
/// Digits of one number: up to 9, so every number fits a `u32`.
const MAX_NUMBER_DIGITS: usize = 9;
/// Letters after the third number (`7.5.2b`): one in every known version.
const MAX_LETTERS: usize = 4;
/// The text between the parentheses (`004p_XU001`).
const MAX_TAG_BYTES: usize = 24;

/// A parsed version: `N1.N2.N3[letters][ (TAG)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// N1, N2, N3, compared as integers (`7.5.10` > `7.5.9`).
    pub numbers: [u32; 3],
    /// Lower-case letters right after N3 (`b` of `7.5.2b`); empty for none.
    pub letters: String,
    /// The parenthesised tag, if any.
    pub tag: Option<Tag>,
}

/// What the parentheses of a version say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// `(SRn)`: the n-th service release, after the base release.
    ServiceRelease(u32),
    /// A build tag led by digits (`014`, `004p`, `0412s`): by its number, then its letters.
    Build { number: u32, letters: String },
    /// Anything else (`LS`, `GW`, `a`, `004p_XU001`): a variant label, equal only to itself.
    Variant(String),
}

/// Reads a version. Anything outside the grammar is refused with the reason: a version the
/// server cannot read must never be taken for another one.
pub fn parse(text: &str) -> Result<Version, String> {
    let refuse = |why: &str| Err(format!("'{}' is not a firmware version: {why}", super::shown(text)));
    if text.len() > MAX_VERSION_BYTES {
        return refuse("too long");
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return refuse("only printable ASCII is allowed");
    }
    let (core, tag) = match text.split_once('(') {
        None => (text, None),
        Some((core, rest)) => {
            let Some(inner) = rest.strip_suffix(')') else {
                return refuse("a tag in parentheses must end the version");
            };
            // the web UI writes `1.4.1 (SR5)`: one space before the tag is the same version
            (core.strip_suffix(' ').unwrap_or(core), Some(inner))
        }
    };
    let mut fields = core.split('.');
    let (Some(first), Some(second), Some(third), None) = (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return refuse("three numbers separated by '.' are expected");
    };
    let digits_end = third.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(third.len());
    let (third, letters) = third.split_at(digits_end);
    let (Some(n1), Some(n2), Some(n3)) = (number(first), number(second), number(third)) else {
        return refuse("each of the three numbers must be 1 to 9 digits");
    };
    if letters.len() > MAX_LETTERS || !letters.bytes().all(|b| b.is_ascii_lowercase()) {
        return refuse("only up to 4 lower-case letters may follow the third number");
    }
    let tag = match tag {
        None => None,
        Some(inner) => match parse_tag(inner) {
            Some(tag) => Some(tag),
            None => return refuse("a tag is 1 to 24 letters, digits or '_'"),
        },
    };
    Ok(Version { numbers: [n1, n2, n3], letters: letters.to_string(), tag })
}

/// A number of 1 to 9 ASCII digits (leading zeros allowed: `7.05.2` is `7.5.2`).
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > MAX_NUMBER_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_tag(inner: &str) -> Option<Tag> {
    if inner.is_empty() || inner.len() > MAX_TAG_BYTES || !inner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    if let Some(n) = inner.strip_prefix("SR").and_then(number) {
        return Some(Tag::ServiceRelease(n));
    }
    let digits_end = inner.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(inner.len());
    let (digits, letters) = inner.split_at(digits_end);
    match number(digits) {
        Some(n) if letters.len() <= MAX_LETTERS && letters.bytes().all(|b| b.is_ascii_lowercase()) => {
            Some(Tag::Build { number: n, letters: letters.to_string() })
        }
        _ => Some(Tag::Variant(inner.to_string())),
    }
}

/// The order of two versions; `None` when the numbering does not order them (then neither
/// may be treated as newer).
///
/// Numbers first, then the letters (none < `a` < `b` … < `z` < `aa`: by length, then
/// alphabetically), then the tag: no tag < `(SR1)` < `(SR2)` …; build tags by number, then
/// letters; a variant label equals only itself. Every other pair of tags has no order (a
/// plain `1.3.5` against `1.3.5(004p)` included: nothing says which came first).
pub fn compare(a: &Version, b: &Version) -> Option<Ordering> {
    let base = a.numbers.cmp(&b.numbers).then_with(|| compare_letters(&a.letters, &b.letters));
    if base != Ordering::Equal {
        return Some(base);
    }
    match (&a.tag, &b.tag) {
        (None, None) => Some(Ordering::Equal),
        (None, Some(Tag::ServiceRelease(_))) => Some(Ordering::Less),
        (Some(Tag::ServiceRelease(_)), None) => Some(Ordering::Greater),
        (Some(Tag::ServiceRelease(x)), Some(Tag::ServiceRelease(y))) => Some(x.cmp(y)),
        (Some(Tag::Build { number: x, letters: xl }), Some(Tag::Build { number: y, letters: yl })) => {
            Some(x.cmp(y).then_with(|| compare_letters(xl, yl)))
        }
        (Some(Tag::Variant(x)), Some(Tag::Variant(y))) if x == y => Some(Ordering::Equal),
        _ => None,
    }
}

/// Letter suffixes: shorter first, then alphabetically, so `z` < `aa` as in a spreadsheet's
/// columns (research notes §3.2, rule 3).
fn compare_letters(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares two version texts; `None` when either does not parse or they have no order.
pub fn compare_texts(a: &str, b: &str) -> Option<Ordering> {
    compare(&parse(a).ok()?, &parse(b).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering::{Equal, Greater, Less};

    fn v(text: &str) -> Version {
        parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_form_the_notes_list_parses() {
        let plain = |n: [u32; 3], letters: &str| Version { numbers: n, letters: letters.into(), tag: None };
        let tagged = |n: [u32; 3], tag: Tag| Version { numbers: n, letters: String::new(), tag: Some(tag) };
        let build = |number: u32, letters: &str| Tag::Build { number, letters: letters.into() };
        let variant = |label: &str| Tag::Variant(label.into());
        for (text, expected) in [
            ("7.4.3a", plain([7, 4, 3], "a")),
            ("7.5.2b", plain([7, 5, 2], "b")),
            ("7.6.2c", plain([7, 6, 2], "c")),
            ("7.4.9c", plain([7, 4, 9], "c")),
            ("7.4.8a", plain([7, 4, 8], "a")),
            ("7.3.7", plain([7, 3, 7], "")),
            ("7.6.1", plain([7, 6, 1], "")),
            ("5.1.8", plain([5, 1, 8], "")),
            ("6.1.5(a)", tagged([6, 1, 5], variant("a"))),
            ("4.1.11(c)", tagged([4, 1, 11], variant("c"))),
            ("5.1.6(LS)", tagged([5, 1, 6], variant("LS"))),
            ("5.1.10(GW)", tagged([5, 1, 10], variant("GW"))),
            ("1.4.1(SR5)", tagged([1, 4, 1], Tag::ServiceRelease(5))),
            ("1.4.1 (SR5)", tagged([1, 4, 1], Tag::ServiceRelease(5))),
            ("1.3.2(014)", tagged([1, 3, 2], build(14, ""))),
            ("1.3.5(004p)", tagged([1, 3, 5], build(4, "p"))),
            ("1.3.5(004p_XU001)", tagged([1, 3, 5], variant("004p_XU001"))),
            ("2.0.6(b)", tagged([2, 0, 6], variant("b"))),
            ("2.0.3(0412s)", tagged([2, 0, 3], build(412, "s"))),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_version_is_refused() {
        for text in [
            "", "7", "7.5", "7.5.2.1", "7b.5.2", "7.5b.2", "7.5.2B", "7.5.2abcde", "7..2", ".7.5.2", "7.5.2 ",
            "7.5.2  (SR1)", "7.5.2(", "7.5.2()", "7.5.2(SR1", "7.5.2(SR1)x", "7.5.2(a)(b)", "7.5.2(a b)",
            "-7.5.2", "+7.5.2", "7.5.1234567890", "*", "garbage", "7.5.2\u{e9}", "7.5.2\n", "\u{0}",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
        assert!(parse(&format!("7.5.{}", "1".repeat(100))).unwrap_err().contains("too long"));
    }

    /// The cases where the thread's `cmp_ver` answers wrongly (research notes §3.2, run under
    /// PHP 8.2), next to the rule's answer. `None`: not comparable (or not a version).
    #[test]
    fn where_cmp_ver_is_wrong() {
        let table: [(&str, &str, Option<Ordering>, &str); 12] = [
            // strcmp($ar1[1],$ar2[2]): both `>` were true; a letter on N1 is no version at all
            ("7b.5.2", "7a.5.2", None, "letters after N1"),
            ("7a.5.2", "7b.5.2", None, "letters after N1, reversed"),
            // its regex allows only digits in the parentheses: the whole strings were subtracted
            ("1.4.1(SR5)", "1.4.1(SR1)", Some(Greater), "service releases by number"),
            ("1.4.1(SR10)", "1.4.1(SR9)", Some(Greater), "SR10 after SR9"),
            ("1.3.5(004p_XU001)", "1.3.5(004p)", None, "an XU build is not the plain build"),
            ("5.1.9(GW)", "5.1.8(GW)", Some(Greater), "numbers decide before a label"),
            ("5.1.10(GW)", "5.1.9(GW)", Some(Greater), "numbers as integers before a label"),
            ("6.1.5(a)", "6.1.5(b)", None, "variant labels are not ordered"),
            // the seventh field kept its parentheses and was ignored (PHP 5/7) or threw (PHP 8)
            ("1.3.2(014)", "1.3.2(012)", Some(Greater), "build tags by number"),
            // PHP 8: TypeError (an HTTP 500 to the phone) for anything non-numeric
            ("garbage", "7.5.2b", None, "unparseable"),
            // `*` compared below everything from both sides
            ("*", "7.5.2b", None, "the wildcard is no version"),
            ("7.5.2b", "*", None, "the wildcard is no version, reversed"),
        ];
        for (a, b, expected, why) in table {
            assert_eq!(compare_texts(a, b), expected, "{a} vs {b}: {why}");
            assert_eq!(compare_texts(b, a), expected.map(Ordering::reverse), "{b} vs {a}: {why}");
        }
    }

    #[test]
    fn the_issue_order() {
        let chain = ["7.3.7", "7.4.3a", "7.5.2", "7.5.2b", "7.5.2c", "7.5.5", "7.5.9", "7.5.10", "7.6.1"];
        for (i, a) in chain.iter().enumerate() {
            for (j, b) in chain.iter().enumerate() {
                assert_eq!(compare_texts(a, b), Some(i.cmp(&j)), "{a} vs {b}");
            }
        }
        // cmp_ver gets these right only by accident (PHP's numeric prefix of the whole string)
        assert_eq!(compare_texts("1.4.1", "1.4.1(SR1)"), Some(Less));
        assert_eq!(compare_texts("1.3.5(004p)", "1.3.5(004)"), Some(Greater));
        // by length first (cmp_ver's strcmp puts `z` after `aa`)
        assert_eq!(compare_texts("7.5.2z", "7.5.2aa"), Some(Less));
        assert_eq!(compare_texts("7.05.2", "7.5.2"), Some(Equal));
        assert_eq!(compare_texts("1.4.1 (SR5)", "1.4.1(SR5)"), Some(Equal));
        assert_eq!(compare_texts("1.3.5", "1.3.5(004p)"), None);
        assert_eq!(compare_texts("1.4.1(SR1)", "1.4.1(014)"), None);
        assert_eq!(compare_texts("5.1.6(LS)", "5.1.6(LS)"), Some(Equal));
        assert_eq!(compare_texts("5.1.6(LS)", "5.1.6"), None);
    }

    fn any_tag() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            (0u32..4).prop_map(|n| format!("(SR{n})")),
            (0u32..4, prop_oneof![Just(""), Just("p")]).prop_map(|(n, l)| format!("({n:03}{l})")),
            prop_oneof![Just("(LS)"), Just("(GW)"), Just("(a)"), Just("(004p_XU001)")].prop_map(String::from),
        ]
    }

    /// Version texts from the parts the grammar allows: a wide spread of numbers and letters,
    /// or one of a few prefixes, so that many pairs and triples share one and the tags decide.
    fn any_version_text() -> impl Strategy<Value = String> {
        let letters = || prop_oneof![Just(""), Just("a"), Just("b"), Just("z"), Just("aa")];
        prop_oneof![
            (0u32..3, 0u32..3, 0u32..12, letters(), any_tag())
                .prop_map(|(a, b, c, letters, tag)| format!("{a}.{b}.{c}{letters}{tag}")),
            (prop_oneof![Just("7.5.2"), Just("7.5.2b"), Just("7.5.3")], any_tag())
                .prop_map(|(prefix, tag)| format!("{prefix}{tag}")),
        ]
    }

    fn any_version() -> impl Strategy<Value = Version> {
        any_version_text().prop_map(|text| v(&text))
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_versions(text in "[0-9.a-zSRLX() _]{0,30}") {
            let _ = parse(&text);
        }

        #[test]
        fn every_generated_text_parses(text in any_version_text()) {
            prop_assert!(parse(&text).is_ok(), "{}", text);
        }

        #[test]
        fn reflexive(a in any_version()) {
            prop_assert_eq!(compare(&a, &a), Some(Equal));
        }

        #[test]
        fn antisymmetric(a in any_version(), b in any_version()) {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).map(Ordering::reverse));
            // equal exactly when the parts are the same
            prop_assert_eq!(compare(&a, &b) == Some(Equal), a == b);
        }

        #[test]
        fn transitive_on_comparable_triples(a in any_version(), b in any_version(), c in any_version()) {
            if let (Some(ab), Some(bc)) = (compare(&a, &b), compare(&b, &c)) {
                if ab != Greater && bc != Greater {
                    let expected = if ab == Equal && bc == Equal { Equal } else { Less };
                    prop_assert_eq!(compare(&a, &c), Some(expected), "{:?} {:?} {:?}", a, b, c);
                }
            }
        }

        #[test]
        fn numbers_decide_first(a in any_version(), b in any_version()) {
            if a.numbers != b.numbers {
                prop_assert_eq!(compare(&a, &b), Some(a.numbers.cmp(&b.numbers)));
            }
        }

        #[test]
        fn a_higher_number_is_newer(a in any_version(), field in 0usize..3, step in 1u32..1000) {
            let mut b = a.clone();
            b.numbers[field] += step;
            // whatever comes after the raised field: lower fields, letters, tags
            for lower in field + 1..3 {
                b.numbers[lower] = 0;
            }
            b.letters.clear();
            b.tag = None;
            prop_assert_eq!(compare(&a, &b), Some(Less));
        }
    }
}
