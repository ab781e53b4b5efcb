//! Merging the user's file into the shipped defaults, exactly as the old server did
//! (SPEC §2), and the `seq` re-ordering that follows it.

use crate::xml::Element;
use compact_str::CompactString;

/// Merges `user` into `defaults` (both the `<config>` element).
pub fn merge(defaults: &mut Element, user: &Element) -> Result<(), String> {
    if defaults.children.is_empty() && user.children.is_empty() && !user.text.trim().is_empty() {
        defaults.text = user.text.clone();
    }
    for (name, value) in &user.attrs {
        defaults.put_attr(name, value);
    }
    for user_child in &user.children {
        let tag = user_child.name.as_str();
        let default_count = defaults.children_named(tag).count();
        let user_count = user.children_named(tag).count();
        let first_has_id = defaults.child(tag).is_some_and(|c| c.attr("id").is_some());
        let target = if default_count == 0 {
            None
        } else if first_has_id {
            let id = user_child
                .attr("id")
                .ok_or_else(|| format!("must have 'id' attribute in '{tag}' tag in user-config.xml"))?;
            defaults.children.iter().position(|c| c.name == tag && c.attr("id") == Some(id))
        } else if default_count > 1 || user_count > 1 {
            None
        } else {
            defaults.children.iter().position(|c| c.name == tag)
        };
        match target {
            Some(index) => merge(&mut defaults.children[index], user_child)?,
            None => {
                let mut fresh = Element::new(tag);
                merge(&mut fresh, user_child)?;
                defaults.children.push(fresh);
            }
        }
    }
    Ok(())
}

/// Inside every first-level element, children of a tag of which any carries `seq` are put in
/// `seq` order; of several with the same `seq` only the last survives (the old server keyed
/// them by `seq`).
pub fn order_by_seq(config: &mut Element) {
    for section in &mut config.children {
        let sequenced: Vec<CompactString> = section
            .children
            .iter()
            .filter(|c| c.attr("seq").is_some())
            .map(|c| c.name.clone())
            .collect();
        if sequenced.is_empty() {
            continue;
        }
        let mut result: Vec<Element> = Vec::with_capacity(section.children.len());
        let mut placed: Vec<CompactString> = Vec::new();
        let children = std::mem::take(&mut section.children);
        for child in &children {
            if !sequenced.contains(&child.name) {
                result.push(child.clone());
                continue;
            }
            if placed.contains(&child.name) {
                continue;
            }
            placed.push(child.name.clone());
            let mut group: Vec<(i64, &Element)> = Vec::new();
            for candidate in children.iter().filter(|c| c.name == child.name) {
                let seq = php_intval(candidate.attr("seq").unwrap_or(""));
                match group.iter_mut().find(|(s, _)| *s == seq) {
                    Some(slot) => slot.1 = candidate,
                    None => group.push((seq, candidate)),
                }
            }
            group.sort_by_key(|(seq, _)| *seq);
            result.extend(group.into_iter().map(|(_, e)| e.clone()));
        }
        section.children = result;
    }
}

/// PHP's `intval` on a string: leading white space, optional sign, digits; anything else is 0.
pub fn php_intval(text: &str) -> i64 {
    let t = text.trim_start();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse::<i64>().map(|n| sign * n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Element {
        Element::parse(text).unwrap()
    }

    fn ids(e: &Element) -> Vec<String> {
        e.children.iter().map(|c| c.attr("id").unwrap_or("").to_string()).collect()
    }

    #[test]
    fn id_keyed_elements_merge_by_id_or_append() {
        let mut d = parse("<config><classes><class id='phone'><model>ip232</model></class></classes></config>");
        let u = parse("<config><classes><class id='phone'><model>ip999</model></class><class id='kiosk'><model>x</model></class></classes></config>");
        merge(&mut d, &u).unwrap();
        let classes = d.child("classes").unwrap();
        assert_eq!(ids(classes), ["phone", "kiosk"]);
        let models: Vec<_> = classes.children[0].children.iter().map(|m| m.trimmed_text().to_string()).collect();
        // a single default <model> and a single user <model>: merged, the user text wins
        assert_eq!(models, ["ip999"]);
    }

    #[test]
    fn missing_id_is_an_error() {
        let mut d = parse("<config><phases><phase id='update' seq='200'/></phases></config>");
        let u = parse("<config><phases><phase seq='10'/></phases></config>");
        assert_eq!(merge(&mut d, &u).unwrap_err(), "must have 'id' attribute in 'phase' tag in user-config.xml");
    }

    #[test]
    fn single_tags_merge_attributes_multi_tags_append() {
        let mut d = parse("<config><times grace='90' polling='5'/><nofirmdev><model>a</model><model>b</model></nofirmdev></config>");
        let u = parse("<config><times polling='2' interval='30'/><nofirmdev><model>c</model></nofirmdev></config>");
        merge(&mut d, &u).unwrap();
        let times = d.child("times").unwrap();
        assert_eq!(times.attr("grace"), Some("90"));
        assert_eq!(times.attr("polling"), Some("2"));
        assert_eq!(times.attr("interval"), Some("30"));
        assert_eq!(d.child("nofirmdev").unwrap().children.len(), 3);
    }

    #[test]
    fn seq_orders_and_last_equal_wins() {
        let mut d = parse("<config><phases><phase id='update' seq='200'/><phase id='a' seq='50'/><phase id='b' seq='50'/></phases></config>");
        order_by_seq(&mut d);
        assert_eq!(ids(d.child("phases").unwrap()), ["b", "update"]);
    }

    #[test]
    fn intval_like_php() {
        assert_eq!(php_intval(" 42abc"), 42);
        assert_eq!(php_intval("-7"), -7);
        assert_eq!(php_intval("x"), 0);
        assert_eq!(php_intval(""), 0);
    }
}
