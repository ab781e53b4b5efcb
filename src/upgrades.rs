//! Upgrade paths (issue 9): the firmware a device must pass through on its way to the target,
//! for SPA models (an SPA50x on 7.3.7 must load 7.5.2b before 7.6.1) and for innovaphone
//! classes (a device on a very old build first loads an intermediate build, then the one the
//! master names, SPEC §4). The `<upgrades>` section of the configuration, checked once when it
//! is loaded, and the next-hop decision, a pure function of the device's current version.
//!
//! One rule for both: the next hop is the lowest `via` above the current version and below
//! the target; with none, the target; at the target, nothing. A version the server cannot
//! order against the path never leads to an upgrade.

use crate::config::Applies;
use crate::spa::version::{self, Version};
use crate::xml::Element;
use std::cmp::Ordering;

/// Paths in the configuration, vias in one path, models in one path: far above any real
/// fleet, and they keep the checks below (pairs of vias, pairs of paths) small.
const MAX_PATHS: usize = 256;
const MAX_VIAS: usize = 16;
const MAX_MODELS: usize = 64;
/// A firmware file name or URL.
const MAX_FILE_BYTES: usize = 512;
/// Digits of a build: 18 fit a `u64`.
const MAX_BUILD_DIGITS: usize = 18;

// a configuration holds a handful of paths, read once per load: their size does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradePath {
    /// `<path models=… version=… file=…>`: SPA models.
    Spa(SpaPath),
    /// `<path applies=…>`: innovaphone devices; the target is the master's build.
    Innovaphone(BuildPath),
}

/// A firmware image of an SPA path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareFile {
    /// The version as configured, for messages and the profile.
    pub version_text: String,
    pub version: Version,
    /// The image: a path below this server's `update.php` or an absolute URL, as
    /// `fwstorage/@url` (made absolute by the caller, `script::absolute_url`).
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaPath {
    /// The models it is for, spelled as identification spells them (upper case, no hyphen:
    /// `SPA-942` in the configuration is `SPA942`).
    pub models: Vec<String>,
    pub target: FirmwareFile,
    /// Intermediate images, lowest first, each below the target.
    pub vias: Vec<FirmwareFile>,
    /// `Downgrade_Rev_Limit`: as configured, at or below the target.
    pub downgrade_limit: Option<(String, Version)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPath {
    /// Which devices: `*`, a class, or with `env="true"` an environment (as `master/applies`).
    pub applies: Applies,
    /// Intermediate builds, lowest first.
    pub vias: Vec<Build>,
}

/// An innovaphone build number, with its text as configured (it names the `fwstorage`
/// directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub number: u64,
    pub text: String,
}

/// Reads the `<upgrades>` section of the merged configuration (none: no paths). The error
/// names the path and what is wrong with it.
pub fn parse(config: &Element) -> Result<Vec<UpgradePath>, String> {
    let mut sections = config.children_named("upgrades");
    let Some(section) = sections.next() else { return Ok(Vec::new()) };
    if sections.next().is_some() {
        return Err("upgrades: only one <upgrades> section is allowed".into());
    }
    if let Some((name, _)) = section.attrs.first() {
        return Err(format!("upgrades: unknown attribute '{name}'"));
    }
    if let Some(other) = section.children.iter().find(|c| c.name != "path") {
        return Err(format!("upgrades: unknown element <{}> (only <path> belongs here)", other.name));
    }
    if section.children.len() > MAX_PATHS {
        return Err(format!("upgrades: more than {MAX_PATHS} paths"));
    }
    let mut paths = Vec::new();
    for (index, element) in section.children.iter().enumerate() {
        let path = parse_path(element).map_err(|e| format!("upgrades/path {}: {e}", index + 1))?;
        paths.push(path);
    }
    check_paths_apart(&paths)?;
    Ok(paths)
}

fn parse_path(element: &Element) -> Result<UpgradePath, String> {
    if let Some(other) = element.children.iter().find(|c| c.name != "via") {
        return Err(format!("unknown element <{}> (only <via> belongs here)", other.name));
    }
    if element.children.len() > MAX_VIAS {
        return Err(format!("more than {MAX_VIAS} vias"));
    }
    match (element.attr("models"), element.attr("applies")) {
        (Some(_), Some(_)) => Err("either models (SPA) or applies (innovaphone), not both".into()),
        (None, None) => Err("models (SPA) or applies (innovaphone) is required".into()),
        (Some(models), None) => parse_spa_path(element, models).map(UpgradePath::Spa),
        (None, Some(applies)) => parse_build_path(element, applies).map(UpgradePath::Innovaphone),
    }
}

fn parse_spa_path(element: &Element, models: &str) -> Result<SpaPath, String> {
    only_attributes(element, &["models", "version", "file", "downgradelimit"], "an SPA path (models)")?;
    let models: Vec<String> = models.split_whitespace().map(spa_model).collect::<Result<_, _>>()?;
    if models.is_empty() {
        return Err("models names no model".into());
    }
    if models.len() > MAX_MODELS {
        return Err(format!("more than {MAX_MODELS} models"));
    }
    let target = firmware_file(element, "the path")?;
    let mut vias = Vec::new();
    for via in &element.children {
        only_attributes(via, &["version", "file"], "an SPA via")?;
        let via = firmware_file(via, "a via")?;
        match version::compare(&via.version, &target.version) {
            Some(Ordering::Less) => {}
            Some(_) => return Err(format!("via {} is not below the target {}", via.version_text, target.version_text)),
            None => return Err(format!("via {} has no order against the target {}", via.version_text, target.version_text)),
        }
        vias.push(via);
    }
    // every pair ordered and distinct: then sorting is sound and "the lowest via above the
    // current version" is one image
    for (i, a) in vias.iter().enumerate() {
        for b in &vias[i + 1..] {
            match version::compare(&a.version, &b.version) {
                Some(Ordering::Equal) => return Err(format!("via {} is given twice", a.version_text)),
                None => return Err(format!("vias {} and {} have no order", a.version_text, b.version_text)),
                Some(_) => {}
            }
        }
    }
    vias.sort_by(|a, b| version::compare(&a.version, &b.version).unwrap_or(Ordering::Equal));
    let downgrade_limit = match element.attr("downgradelimit") {
        None => None,
        Some(text) => {
            let limit = version::parse(text).map_err(|e| format!("downgradelimit: {e}"))?;
            match version::compare(&limit, &target.version) {
                Some(Ordering::Less | Ordering::Equal) => Some((text.to_string(), limit)),
                // the phone would refuse the target itself
                Some(Ordering::Greater) => {
                    return Err(format!("downgradelimit {text} is above the target {}", target.version_text))
                }
                None => return Err(format!("downgradelimit {text} has no order against the target {}", target.version_text)),
            }
        }
    };
    Ok(SpaPath { models, target, vias, downgrade_limit })
}

/// A model as identification spells it ([`crate::spa::SpaDevice::model`]).
fn spa_model(text: &str) -> Result<String, String> {
    let ok = text.len() <= 16
        && text.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(format!("model '{}' is not a model name (letters, digits, '-')", crate::spa::shown(text)));
    }
    Ok(normal_model(text))
}

fn normal_model(text: &str) -> String {
    text.replace('-', "").to_ascii_uppercase()
}

fn firmware_file(element: &Element, what: &str) -> Result<FirmwareFile, String> {
    let version_text = element.attr("version").ok_or_else(|| format!("{what} needs a version"))?;
    let version = version::parse(version_text)?;
    let file = element.attr("file").ok_or_else(|| format!("{what} needs a file"))?;
    check_file(file)?;
    Ok(FirmwareFile { version_text: version_text.to_string(), version, file: file.to_string() })
}

/// A file goes into the phone's `Upgrade_Rule`, where `$` starts a macro, `|` separates
/// alternatives, `( )?` is a condition, `[ ]` holds options and `#` comments out the rest
/// (research notes §1.2): such a name would not be loaded as written, so it is refused here.
/// The phone is ASCII only; `..` would climb out of the server's tree.
fn check_file(file: &str) -> Result<(), String> {
    let shown = crate::spa::shown(file);
    if file.is_empty() || file.len() > MAX_FILE_BYTES {
        return Err(format!("file '{shown}' must be 1 to {MAX_FILE_BYTES} bytes"));
    }
    if let Some(bad) = file.chars().find(|&c| !c.is_ascii_graphic() || "$|#()[]<>\"'`\\{}^".contains(c)) {
        return Err(format!("file '{shown}': '{}' is not allowed in an Upgrade_Rule", bad.escape_default()));
    }
    if file.split(['/', '?']).any(|segment| segment == "..") {
        return Err(format!("file '{shown}': '..' is not allowed"));
    }
    Ok(())
}

fn parse_build_path(element: &Element, applies: &str) -> Result<BuildPath, String> {
    only_attributes(element, &["applies", "env"], "an innovaphone path (applies); its target is the master's build")?;
    if applies != "*" && !crate::device::is_plain_token(applies) {
        return Err(format!("applies '{}' is neither '*' nor a class or environment name", crate::spa::shown(applies)));
    }
    let environment = match element.attr("env") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("env '{}' is neither true nor false", crate::spa::shown(other))),
    };
    let mut vias: Vec<Build> = Vec::new();
    for via in &element.children {
        only_attributes(via, &["build"], "an innovaphone via")?;
        let text = via.attr("build").ok_or("an innovaphone via needs a build")?;
        let number = build_number(text).ok_or_else(|| format!("build '{}' is not a build number", crate::spa::shown(text)))?;
        if vias.iter().any(|b| b.number == number) {
            return Err(format!("via build {text} is given twice"));
        }
        vias.push(Build { number, text: text.to_string() });
    }
    if vias.is_empty() {
        return Err("an innovaphone path needs at least one <via build=…/>".into());
    }
    vias.sort_by_key(|b| b.number);
    Ok(BuildPath { applies: Applies { value: applies.to_string(), environment }, vias })
}

fn only_attributes(element: &Element, allowed: &[&str], what: &str) -> Result<(), String> {
    match element.attrs.iter().find(|(name, _)| !allowed.contains(&name.as_str())) {
        Some((name, _)) => Err(format!("'{name}' does not belong to {what} (allowed: {})", allowed.join(", "))),
        None => Ok(()),
    }
}

/// One path per SPA model, one per `applies` condition: otherwise which one counts would hang
/// on the order of the file.
fn check_paths_apart(paths: &[UpgradePath]) -> Result<(), String> {
    let mut models = std::collections::HashSet::new();
    let mut conditions: Vec<&Applies> = Vec::new();
    for path in paths {
        match path {
            UpgradePath::Spa(spa) => {
                for model in &spa.models {
                    if !models.insert(model.as_str()) {
                        return Err(format!("upgrades: model {model} is on two paths"));
                    }
                }
            }
            UpgradePath::Innovaphone(build) => {
                if conditions.contains(&&build.applies) {
                    return Err(format!("upgrades: two paths apply to '{}'", build.applies.value));
                }
                conditions.push(&build.applies);
            }
        }
    }
    Ok(())
}

/// A build number: 1 to 18 ASCII digits, surrounding white space ignored (PROT as devices
/// send it, `0136105` is `136105` as the old server compared).
fn build_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_BUILD_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The SPA path of a model (as [`crate::spa::SpaDevice::model`] spells it; a configuration
/// spelling is accepted too).
pub fn spa_path<'a>(paths: &'a [UpgradePath], model: &str) -> Option<&'a SpaPath> {
    let model = normal_model(model);
    paths.iter().find_map(|path| match path {
        UpgradePath::Spa(spa) if spa.models.contains(&model) => Some(spa),
        _ => None,
    })
}

/// The first innovaphone path whose `applies` matches the device's classes or environments.
pub fn build_path<'a>(paths: &'a [UpgradePath], classes: &[String], environments: &[String]) -> Option<&'a BuildPath> {
    paths.iter().find_map(|path| match path {
        UpgradePath::Innovaphone(build) if crate::script::decide::applies_any(&build.applies, classes, environments) => {
            Some(build)
        }
        _ => None,
    })
}

/// What an SPA device's profile says about firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaUpgrade<'a> {
    pub hop: SpaHop<'a>,
    pub downgrade_limit: DowngradeLimit<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaHop<'a> {
    /// Load this image (`Upgrade_Enable Yes`, `Upgrade_Rule` its URL): a via or the target.
    Load { file: &'a FirmwareFile, via: bool },
    /// At the target: `Upgrade_Enable No`, so the phone does not keep fetching the image.
    AtTarget,
    /// Newer than the target: no upgrade either (`Upgrade_Enable No`); a downgrade is the
    /// operator's decision, not a path's.
    AboveTarget,
    /// The version cannot be ordered against the path: no upgrade (`Upgrade_Enable No`), and
    /// the reason for the profile comment and the state message.
    Undecidable(String),
}

/// What the profile does with `Downgrade_Rev_Limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DowngradeLimit<'a> {
    /// No limit configured, or the version is not understood: the profile says nothing.
    Unchanged,
    /// Send the limit: the device runs or loads a version at or above it.
    Set(&'a str),
    /// Send it empty: a via below the limit is due, and the phone does not complete an
    /// upgrade to a version below its limit (research notes §2): a limit set before (a phone
    /// taken back to old firmware by hand) would stop the path half-way.
    Clear,
}

impl SpaPath {
    /// The next hop of a device running `current` (the version its agent shows).
    pub fn decide(&self, current: &str) -> SpaUpgrade<'_> {
        let undecidable = |reason: String| SpaUpgrade { hop: SpaHop::Undecidable(reason), downgrade_limit: DowngradeLimit::Unchanged };
        let current_version = match version::parse(current) {
            Ok(v) => v,
            Err(e) => return undecidable(format!("no upgrade: {e}")),
        };
        let shown = crate::spa::shown(current);
        let step = next_step(&current_version, self.vias.iter().map(|v| &v.version), &self.target.version, version::compare);
        let (hop, runs_or_loads) = match step {
            Step::Via(index) => (SpaHop::Load { file: &self.vias[index], via: true }, &self.vias[index].version),
            Step::Target => (SpaHop::Load { file: &self.target, via: false }, &self.target.version),
            Step::AtTarget => (SpaHop::AtTarget, &current_version),
            Step::AboveTarget => (SpaHop::AboveTarget, &current_version),
            Step::NoOrder(against) => {
                let other = match against {
                    Against::Target => &self.target.version_text,
                    Against::Via(index) => &self.vias[index].version_text,
                };
                return undecidable(format!("no upgrade: version {shown} has no order against {other}"));
            }
        };
        let downgrade_limit = match &self.downgrade_limit {
            None => DowngradeLimit::Unchanged,
            Some((text, limit)) => match version::compare(runs_or_loads, limit) {
                Some(Ordering::Greater | Ordering::Equal) => DowngradeLimit::Set(text),
                // a via below the limit (or without order against it): the limit must not
                // stand in its way
                _ => DowngradeLimit::Clear,
            },
        };
        SpaUpgrade { hop, downgrade_limit }
    }
}

/// Which build an innovaphone device on a path is asked to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildHop {
    /// PROT is below this via build: the `prot` command names it instead of the master's.
    Via(String),
    /// No via is due: the master's build, decided as without a path. That includes a PROT
    /// above the master's build, which the old server takes back to the master's (a rollback
    /// through the master); a path only ever puts a via build in between.
    Master(String),
    /// PROT is the master's build: nothing to load.
    AtTarget,
    /// PROT or the master's build is not a build number: no firmware command, and the reason.
    Undecidable(String),
}

impl BuildPath {
    /// The build a device reporting `prot` is asked to load while the master names
    /// `master_build`. Builds compare as numbers.
    pub fn decide(&self, master_build: &str, prot: Option<&str>) -> BuildHop {
        let Some(target) = build_number(master_build) else {
            return BuildHop::Undecidable(format!(
                "no firmware update: the master's build '{}' is not a build number",
                crate::spa::shown(master_build)
            ));
        };
        let current = match prot {
            None => return BuildHop::Undecidable("no firmware update: the device reports no PROT build".into()),
            Some(text) => match build_number(text) {
                Some(number) => number,
                None => {
                    return BuildHop::Undecidable(format!(
                        "no firmware update: PROT '{}' is not a build number",
                        crate::spa::shown(text)
                    ))
                }
            },
        };
        let numbers = |a: &u64, b: &u64| Some(a.cmp(b));
        match next_step(&current, self.vias.iter().map(|b| &b.number), &target, numbers) {
            Step::Via(index) => BuildHop::Via(self.vias[index].text.clone()),
            Step::Target | Step::AboveTarget => BuildHop::Master(master_build.to_string()),
            Step::AtTarget => BuildHop::AtTarget,
            // numbers are always ordered; were they not, no update rather than a guess
            Step::NoOrder(_) => BuildHop::Undecidable("no firmware update: builds without order".into()),
        }
    }
}

/// Where the walk along a path ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The via of this index (in the ascending list) is the next hop.
    Via(usize),
    Target,
    AtTarget,
    AboveTarget,
    /// The current version has no order against the target or a via: decide nothing.
    NoOrder(Against),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    Target,
    Via(usize),
}

/// The one rule of both vendors: the lowest via above `current` and below `target`, else the
/// target, unless `current` is at or above it. `vias` come lowest first, so the first one
/// above `current` is the lowest; a via at or above the target (an innovaphone via above the
/// build the master names now) is no stop on the way.
fn next_step<'a, T: 'a>(
    current: &T,
    vias: impl Iterator<Item = &'a T>,
    target: &T,
    compare: impl Fn(&T, &T) -> Option<Ordering>,
) -> Step {
    match compare(current, target) {
        None => return Step::NoOrder(Against::Target),
        Some(Ordering::Equal) => return Step::AtTarget,
        Some(Ordering::Greater) => return Step::AboveTarget,
        Some(Ordering::Less) => {}
    }
    for (index, via) in vias.enumerate() {
        match compare(via, target) {
            Some(Ordering::Less) => {}
            Some(_) => continue,
            None => return Step::NoOrder(Against::Via(index)),
        }
        match compare(via, current) {
            Some(Ordering::Greater) => return Step::Via(index),
            Some(_) => {}
            None => return Step::NoOrder(Against::Via(index)),
        }
    }
    Step::Target
}

#[cfg(test)]
mod tests {
    use super::*;

    const THE_ISSUE: &str = r#"<upgrades>
        <path models="SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G"
              version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
          <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
        </path>
        <!-- innovaphone: the target is the build the master names (SPEC §4); via builds -->
        <path applies="phone"><via build="131504"/></path>
      </upgrades>"#;

    fn config(upgrades: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let defaults = Element::parse_trusted(include_str!("../config.xml")).unwrap();
        let user = Element::parse(&format!("<config><master info=''/>{upgrades}</config>")).unwrap();
        crate::config::build(defaults, &user, "user-config.xml")
    }

    fn paths(upgrades: &str) -> Vec<UpgradePath> {
        config(upgrades).unwrap_or_else(|e| panic!("{e}")).upgrades
    }

    fn error(upgrades: &str) -> String {
        match config(upgrades) {
            Ok(_) => panic!("accepted: {upgrades}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_issue_example_is_read() {
        let paths = paths(THE_ISSUE);
        assert_eq!(paths.len(), 2);
        let spa = spa_path(&paths, "SPA504G").expect("a path for the SPA504G");
        assert_eq!(spa.models.len(), 7);
        assert_eq!((spa.target.version_text.as_str(), spa.target.file.as_str()), ("7.6.1", "fw/cisco/spa50x-30x-7-6-1.bin"));
        assert_eq!(spa.vias.iter().map(|v| v.file.as_str()).collect::<Vec<_>>(), ["fw/cisco/spa50x-30x-7-5-2b.bin"]);
        assert_eq!(spa.downgrade_limit.as_ref().map(|(text, _)| text.as_str()), Some("7.6.1"));
        assert!(spa_path(&paths, "SPA525G").is_none());
        // the configuration's spelling finds it too
        assert!(spa_path(&paths, "spa-504g").is_some());
        assert!(config("").unwrap().upgrades.is_empty());
    }

    #[test]
    fn an_spa504g_walks_the_thread_path() {
        let paths = paths(THE_ISSUE);
        let spa = spa_path(&paths, "SPA504G").unwrap();
        let load = |current: &str| match spa.decide(current) {
            SpaUpgrade { hop: SpaHop::Load { file, via }, downgrade_limit } => (file.file.as_str(), via, downgrade_limit),
            other => panic!("{current}: {other:?}"),
        };
        let intermediate = ("fw/cisco/spa50x-30x-7-5-2b.bin", true, DowngradeLimit::Clear);
        assert_eq!(load("7.3.7"), intermediate);
        assert_eq!(load("7.4.3a"), intermediate);
        assert_eq!(load("7.5.2"), intermediate);
        assert_eq!(load("7.5.2b"), ("fw/cisco/spa50x-30x-7-6-1.bin", false, DowngradeLimit::Set("7.6.1")));
        assert_eq!(load("7.5.5"), ("fw/cisco/spa50x-30x-7-6-1.bin", false, DowngradeLimit::Set("7.6.1")));
        assert_eq!(spa.decide("7.6.1"), SpaUpgrade { hop: SpaHop::AtTarget, downgrade_limit: DowngradeLimit::Set("7.6.1") });
        assert_eq!(spa.decide("7.6.2c"), SpaUpgrade { hop: SpaHop::AboveTarget, downgrade_limit: DowngradeLimit::Set("7.6.1") });
    }

    #[test]
    fn a_version_without_order_never_upgrades() {
        let paths = paths(THE_ISSUE);
        let spa = spa_path(&paths, "SPA504G").unwrap();
        for (current, says) in [
            ("garbage", "is not a firmware version"),
            ("7.5.2b(XU)", "has no order against 7.5.2b"),
            ("7.6.1(LS)", "has no order against 7.6.1"),
            ("", "is not a firmware version"),
            ("7.5.2\u{e9}", "'7.5.2?' is not a firmware version"),
        ] {
            match spa.decide(current) {
                SpaUpgrade { hop: SpaHop::Undecidable(reason), downgrade_limit: DowngradeLimit::Unchanged } => {
                    assert!(reason.contains(says), "{current}: {reason}")
                }
                other => panic!("{current}: {other:?}"),
            }
        }
        // a label below the via is still below it: the numbers decide
        assert!(matches!(spa.decide("7.3.7(LS)").hop, SpaHop::Load { via: true, .. }));
    }

    #[test]
    fn vias_are_taken_lowest_first_whatever_their_order_in_the_file() {
        let paths = paths(
            r#"<upgrades><path models="SPA112" version="1.4.1(SR5)" file="fw/spa112-1-4-1-sr5.bin">
                 <via version="1.4.1(SR1)" file="fw/sr1.bin"/><via version="1.3.5(SR1)" file="fw/135.bin"/>
                 <via version="1.4.1" file="fw/141.bin"/>
               </path></upgrades>"#,
        );
        let spa = spa_path(&paths, "SPA112").unwrap();
        assert_eq!(spa.vias.iter().map(|v| v.version_text.as_str()).collect::<Vec<_>>(), ["1.3.5(SR1)", "1.4.1", "1.4.1(SR1)"]);
        let file = |current: &str| match spa.decide(current).hop {
            SpaHop::Load { file, .. } => file.file.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(file("1.3.2(SR1)"), "fw/135.bin");
        assert_eq!(file("1.3.5(SR1)"), "fw/141.bin");
        assert_eq!(file("1.4.1"), "fw/sr1.bin");
        assert_eq!(file("1.4.1(SR2)"), "fw/spa112-1-4-1-sr5.bin");
        assert_eq!(spa.decide("1.4.1(SR5)").hop, SpaHop::AtTarget);
        // no limit configured: the profile says nothing about it
        assert_eq!(spa.decide("1.4.1").downgrade_limit, DowngradeLimit::Unchanged);
        // a build-tagged version between two service releases has no place on this path
        assert!(matches!(spa.decide("1.3.5(004p)").hop, SpaHop::Undecidable(_)));
    }

    fn classes(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn an_innovaphone_phone_passes_the_via_build() {
        let paths = paths(THE_ISSUE);
        let phone = build_path(&paths, &classes(&["phone", "ip232"]), &classes(&["default"])).expect("the phone path");
        assert_eq!(phone.decide("134567", Some("130178")), BuildHop::Via("131504".into()));
        assert_eq!(phone.decide("134567", Some("131503")), BuildHop::Via("131504".into()));
        assert_eq!(phone.decide("134567", Some("131504")), BuildHop::Master("134567".into()));
        assert_eq!(phone.decide("134567", Some("134567")), BuildHop::AtTarget);
        assert_eq!(phone.decide("134567", Some("0134567")), BuildHop::AtTarget);
        // above the master: the master's build as ever (the old server's rollback)
        assert_eq!(phone.decide("134567", Some("135000")), BuildHop::Master("134567".into()));
        // a master that names a build below the via: the via is no stop on that way
        assert_eq!(phone.decide("130000", Some("129000")), BuildHop::Master("130000".into()));
        assert_eq!(phone.decide("131504", Some("130178")), BuildHop::Master("131504".into()));
        for (master, prot) in [("134567", None), ("134567", Some("13r2")), ("", Some("130178")), ("13.4567", Some("130178"))] {
            assert!(matches!(phone.decide(master, prot), BuildHop::Undecidable(_)), "{master} {prot:?}");
        }
        assert!(build_path(&paths, &classes(&["gw", "ip0011"]), &classes(&["default"])).is_none());
    }

    #[test]
    fn innovaphone_paths_apply_like_master_applies() {
        let paths = paths(
            r#"<upgrades><path applies="berlin" env="true"><via build="131504"/><via build="128000"/></path>
                 <path applies="*"><via build="120000"/></path></upgrades>"#,
        );
        let berlin = build_path(&paths, &classes(&["phone"]), &classes(&["berlin", "germany"])).unwrap();
        assert_eq!(berlin.vias.iter().map(|b| b.number).collect::<Vec<_>>(), [128000, 131504]);
        assert_eq!(berlin.decide("134567", Some("100000")), BuildHop::Via("128000".into()));
        assert_eq!(berlin.decide("134567", Some("128000")), BuildHop::Via("131504".into()));
        // a class named like the environment is not the environment
        let elsewhere = build_path(&paths, &classes(&["berlin"]), &classes(&["default"])).unwrap();
        assert_eq!(elsewhere.applies.value, "*");
    }

    #[test]
    fn bad_paths_are_refused_with_what_is_wrong() {
        let spa = |attributes: &str, vias: &str| format!("<upgrades><path models='SPA504G' {attributes}>{vias}</path></upgrades>");
        let target = "version='7.6.1' file='fw/761.bin'";
        for (upgrades, says) in [
            (spa(target, "<via version='7.6.1' file='fw/x.bin'/>"), "upgrades/path 1: via 7.6.1 is not below the target 7.6.1"),
            (spa(target, "<via version='7.7.0' file='fw/x.bin'/>"), "via 7.7.0 is not below the target 7.6.1"),
            (spa(target, "<via version='7.6.1(LS)' file='fw/x.bin'/>"), "via 7.6.1(LS) has no order against the target"),
            (spa(target, "<via version='7.5.2b' file='a'/><via version='7.5.2b' file='b'/>"), "via 7.5.2b is given twice"),
            (spa(target, "<via version='7.5.2(LS)' file='a'/><via version='7.5.2(GW)' file='b'/>"), "have no order"),
            (spa(target, "<via version='7.5.2b'/>"), "a via needs a file"),
            (spa(target, "<via file='x'/>"), "a via needs a version"),
            (spa(target, "<via version='7.5.2b' file='x' build='1'/>"), "'build' does not belong to an SPA via"),
            (spa(target, "<step/>"), "unknown element <step>"),
            (spa("file='fw/761.bin'", ""), "the path needs a version"),
            (spa("version='7.6.1'", ""), "the path needs a file"),
            (spa("version='7.6' file='x'", ""), "'7.6' is not a firmware version"),
            (spa("version='7.6.1' file='fw/a b.bin'", ""), "' ' is not allowed"),
            (spa("version='7.6.1' file='fw/$MA.bin'", ""), "'$' is not allowed"),
            (spa("version='7.6.1' file='a.bin|b.bin'", ""), "'|' is not allowed"),
            (spa("version='7.6.1' file='fw/x.bin#'", ""), "'#' is not allowed"),
            (spa("version='7.6.1' file='fw/caf\u{e9}.bin'", ""), "is not allowed"),
            (spa("version='7.6.1' file='../secret.bin'", ""), "'..' is not allowed"),
            (spa("version='7.6.1' file=''", ""), "must be 1 to 512 bytes"),
            (spa(&format!("{target} downgradelimit='7.6.2'"), ""), "downgradelimit 7.6.2 is above the target 7.6.1"),
            (spa(&format!("{target} downgradelimit='7.6.1(a)'"), ""), "has no order against the target"),
            (spa(&format!("{target} downgradelimit='new'"), ""), "downgradelimit: 'new' is not a firmware version"),
            (spa(&format!("{target} downgradeLimit='7.6.1'"), ""), "'downgradeLimit' does not belong to an SPA path"),
            (spa(&format!("{target} env='true'"), ""), "'env' does not belong to an SPA path"),
            ("<upgrades><path models='' version='7.6.1' file='x'/></upgrades>".into(), "models names no model"),
            ("<upgrades><path models='SPA/504G' version='7.6.1' file='x'/></upgrades>".into(), "model 'SPA/504G' is not a model name"),
            (spa(target, "").replace("</upgrades>", "<path models='spa-504g' version='7.6.1' file='x'/></upgrades>"), "model SPA504G is on two paths"),
            ("<upgrades><path version='7.6.1' file='x'/></upgrades>".into(), "models (SPA) or applies (innovaphone) is required"),
            ("<upgrades><path models='SPA504G' applies='phone'/></upgrades>".into(), "not both"),
            ("<upgrades><path applies='phone'/></upgrades>".into(), "needs at least one <via build"),
            ("<upgrades><path applies='phone' file='x'><via build='1'/></path></upgrades>".into(), "'file' does not belong to an innovaphone path"),
            ("<upgrades><path applies='phone'><via build='13r2'/></path></upgrades>".into(), "build '13r2' is not a build number"),
            ("<upgrades><path applies='phone'><via build='1234567890123456789'/></path></upgrades>".into(), "is not a build number"),
            ("<upgrades><path applies='phone'><via version='7.5.2b'/></path></upgrades>".into(), "'version' does not belong to an innovaphone via"),
            ("<upgrades><path applies='phone'><via build='1'/><via build='01'/></path></upgrades>".into(), "via build 01 is given twice"),
            ("<upgrades><path applies='phone' env='yes'><via build='1'/></path></upgrades>".into(), "env 'yes' is neither true nor false"),
            ("<upgrades><path applies='a b'><via build='1'/></path></upgrades>".into(), "applies 'a b' is neither"),
            ("<upgrades><path applies='phone'><via build='1'/></path><path applies='phone'><via build='2'/></path></upgrades>".into(), "two paths apply to 'phone'"),
            ("<upgrades><model/></upgrades>".into(), "upgrades: unknown element <model>"),
            ("<upgrades mode='x'/>".into(), "upgrades: unknown attribute 'mode'"),
            ("<upgrades/><upgrades/>".into(), "only one <upgrades> section"),
            (spa(target, &"<via version='7.5.2b' file='x'/>".repeat(17)), "more than 16 vias"),
        ] {
            let message = error(&upgrades);
            assert!(message.starts_with("config: upgrades"), "{message}");
            assert!(message.contains(says), "{upgrades}\n  gave: {message}\n  expected: {says}");
        }
    }

    #[test]
    fn the_walk_is_the_same_rule_for_any_order() {
        let numbers = |a: &u32, b: &u32| Some(a.cmp(b));
        let vias = [3u32, 5, 7];
        let walk = |current: u32, target: u32| next_step(&current, vias.iter(), &target, numbers);
        assert_eq!(walk(1, 9), Step::Via(0));
        assert_eq!(walk(3, 9), Step::Via(1));
        assert_eq!(walk(6, 9), Step::Via(2));
        assert_eq!(walk(7, 9), Step::Target);
        assert_eq!(walk(9, 9), Step::AtTarget);
        assert_eq!(walk(10, 9), Step::AboveTarget);
        assert_eq!(walk(1, 5), Step::Via(0));
        assert_eq!(walk(4, 5), Step::Target);
        // a device walked hop by hop reaches the target in at most one step per via
        for start in 0..12u32 {
            let mut current = start;
            let mut hops = 0;
            loop {
                match walk(current, 9) {
                    Step::Via(index) => current = vias[index],
                    Step::Target => current = 9,
                    Step::AtTarget | Step::AboveTarget => break,
                    Step::NoOrder(_) => unreachable!(),
                }
                hops += 1;
                assert!(hops <= vias.len() + 1, "from {start}");
            }
            assert!(current >= 9);
        }
    }
}
