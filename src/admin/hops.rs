//! The firmware facts of the status page for SPA devices and for innovaphone devices on an
//! upgrade path (issue 9): the hop last sent and the one planned next. Every function here is
//! pure: a row's attributes in, a cell out. What is the same for every row (the configuration's
//! firmware choice and the cached master info, read once per page and never fetched) is
//! [`Targets`].

use crate::config::Config;
use crate::script::decide::applies_any;
use crate::script::firmware::BuildChoice;
use crate::upgrades::{BuildHop, BuildPath, SpaHop, SpaPath};

/// A planned next hop as the firmware cell shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub text: String,
    /// The tooltip: the image to load, or the whole reason.
    pub title: String,
    pub kind: HopKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// A firmware is due (a via or the target).
    Load,
    /// At or above the target: nothing to load.
    Done,
    /// No path, or no firmware updates for the device at all.
    None,
    /// The server cannot order the version against the path: no upgrade, and why.
    Undecidable,
}

impl HopKind {
    /// The CSS class of the cell's line.
    pub fn class(self) -> &'static str {
        match self {
            HopKind::Load => "load",
            HopKind::Done => "done",
            HopKind::None => "none",
            HopKind::Undecidable => "undecidable",
        }
    }
}

fn hop(text: impl Into<String>, title: impl Into<String>, kind: HopKind) -> Hop {
    Hop { text: text.into(), title: title.into(), kind }
}

/// The next hop of an SPA device running `version` (as its agent reported it), on the path of
/// its model (None: the model has none).
pub fn spa_hop(path: Option<&SpaPath>, version: &str) -> Hop {
    let Some(path) = path else {
        return hop("no path", "no upgrade path for this model in <upgrades>: firmware left as it is", HopKind::None);
    };
    let target = &path.target.version_text;
    match path.decide(version).hop {
        SpaHop::Load { file, via: true } => {
            hop(format!("{} (via)", file.version_text), format!("{}, an intermediate version on the way to {target}", file.file), HopKind::Load)
        }
        SpaHop::Load { file, via: false } => hop(file.version_text.clone(), file.file.clone(), HopKind::Load),
        SpaHop::AtTarget => hop("at target", format!("at the target {target}"), HopKind::Done),
        SpaHop::AboveTarget => hop("above target", format!("above the target {target}: no upgrade (a downgrade is the operator's decision)"), HopKind::Done),
        SpaHop::Undecidable(reason) => hop(reason.clone(), reason, HopKind::Undecidable),
    }
}

/// An SPA path in a line: `7.5.2b (via) → 7.6.1, downgrade limit 7.6.1`.
pub fn spa_path_line(path: &SpaPath) -> String {
    let mut line: String = path.vias.iter().map(|v| format!("{} (via) → ", v.version_text)).collect();
    line.push_str(&path.target.version_text);
    if let Some((limit, _)) = &path.downgrade_limit {
        line.push_str(&format!(", downgrade limit {limit}"));
    }
    line
}

/// The build an innovaphone device on a path is walking towards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The build the firmware command names when no via is due (the master's, or a fixed one).
    Build(String),
    /// The script sends no firmware command to this device, and why.
    NoUpdate(String),
    /// The master's build is not known without asking the master (no cached box info): the
    /// status page never asks.
    Unknown,
}

/// What every row's target hangs on, gathered once per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Whether the configuration has an innovaphone path at all (else rows skip the work).
    pub paths: bool,
    firmware: Target,
}

impl Targets {
    /// Reads the cached master info when a row may need it (an innovaphone path and
    /// `master/@firmware` the master's build); never fetches.
    pub fn read(root: &std::path::Path, config: &Config) -> Targets {
        let paths = config.upgrades.iter().any(|p| matches!(p, crate::upgrades::UpgradePath::Innovaphone(_)));
        let wants_cache = paths && BuildChoice::parse(&config.master.firmware, false) == Ok(BuildChoice::Master);
        let cached = if wants_cache { crate::master::cached_builds(root, &config.master) } else { None };
        Targets::of(config, cached.as_ref())
    }

    /// The page-wide target, as the script's firmware step decides it (SPEC §4), from the
    /// cached master builds (firmware, boot code).
    pub fn of(config: &Config, cached: Option<&(String, String)>) -> Targets {
        let paths = config.upgrades.iter().any(|p| matches!(p, crate::upgrades::UpgradePath::Innovaphone(_)));
        let master = &config.master;
        let firmware = if master.info.is_empty() {
            Target::NoUpdate("no master device configured: no firmware updates".into())
        } else {
            match BuildChoice::parse(&master.firmware, false) {
                Err(e) => Target::NoUpdate(format!("config: master/@firmware: {e}")),
                Ok(BuildChoice::Disabled | BuildChoice::Firmware) => Target::NoUpdate("no firmware update configured (master/@firmware none)".into()),
                Ok(BuildChoice::Fixed(build)) => Target::Build(build),
                Ok(BuildChoice::Master) if master.info == "none" => {
                    Target::NoUpdate("master/@firmware is the master's build, but master/@info is none".into())
                }
                Ok(BuildChoice::Master) => match cached {
                    Some((build, _)) if !build.is_empty() => Target::Build(build.clone()),
                    _ => Target::Unknown,
                },
            }
        };
        Targets { paths, firmware }
    }

    /// The target of one device: `master/applies` and `nofirmdev` as the script reads them.
    pub fn of_device(&self, config: &Config, device_type: &str, classes: &[String], environments: &[String]) -> Target {
        if let Target::NoUpdate(_) = self.firmware {
            return self.firmware.clone();
        }
        if !config.master.applies.iter().all(|a| applies_any(a, classes, environments)) {
            return Target::NoUpdate("master/applies does not match this device: no firmware updates".into());
        }
        if config.nofirmdev.contains(&device_type.to_lowercase()) {
            return Target::NoUpdate(format!("{device_type} gets no firmware updates (nofirmdev)"));
        }
        self.firmware.clone()
    }
}

/// The next hop of an innovaphone device on `path` that last reported `prot`; None when the
/// target is unknown (no cached master info: the row shows the via from the state only).
pub fn build_hop(target: &Target, path: &BuildPath, prot: Option<&str>) -> Option<Hop> {
    let master = match target {
        Target::Unknown => return None,
        Target::NoUpdate(reason) => return Some(hop("no update", reason.clone(), HopKind::None)),
        Target::Build(build) => build,
    };
    Some(match path.decide(master, prot) {
        BuildHop::Via(via) => {
            let title = format!("below the via build {via}: the next firmware command names it, then {master}");
            hop(format!("{via} (via)"), title, HopKind::Load)
        }
        BuildHop::Master(build) => hop(build, "the build the master names", HopKind::Load),
        BuildHop::AtTarget => hop("at target", format!("at the build the master names, {master}"), HopKind::Done),
        BuildHop::Undecidable(reason) => hop(reason.clone(), reason, HopKind::Undecidable),
    })
}

/// An innovaphone path in a line: `131504 (via) → 134567` (the target as known).
pub fn build_path_line(path: &BuildPath, target: &Target) -> String {
    let mut line: String = path.vias.iter().map(|v| format!("{} (via) → ", v.text)).collect();
    line.push_str(match target {
        Target::Build(build) => build,
        Target::NoUpdate(_) | Target::Unknown => "the master's build",
    });
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    const PATHS: &str = r#"<upgrades>
        <path models="SPA504G" version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
          <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
        </path>
        <path applies="phone"><via build="131504"/></path>
      </upgrades>"#;

    fn config(master: &str, rest: &str) -> Config {
        let defaults = Element::parse_trusted(include_str!("../../config.xml")).unwrap();
        let user = Element::parse(&format!("<config>{master}{PATHS}{rest}</config>")).unwrap();
        crate::config::build(defaults, &user, "user-config.xml").unwrap()
    }

    fn spa(config: &Config) -> &SpaPath {
        crate::upgrades::spa_path(&config.upgrades, "SPA504G").unwrap()
    }

    fn phone(config: &Config) -> &BuildPath {
        let classes = ["phone".to_string()];
        crate::upgrades::build_path(&config.upgrades, &classes, &["default".to_string()]).unwrap()
    }

    fn shown(hop: &Hop) -> (&str, HopKind) {
        (hop.text.as_str(), hop.kind)
    }

    #[test]
    fn every_spa_hop_has_its_text() {
        let c = config("<master info=''/>", "");
        let path = Some(spa(&c));
        let via = spa_hop(path, "7.3.7");
        assert_eq!(shown(&via), ("7.5.2b (via)", HopKind::Load));
        assert!(via.title.starts_with("fw/cisco/spa50x-30x-7-5-2b.bin") && via.title.contains("7.6.1"), "{}", via.title);
        let target = spa_hop(path, "7.5.2b");
        assert_eq!((shown(&target), target.title.as_str()), (("7.6.1", HopKind::Load), "fw/cisco/spa50x-30x-7-6-1.bin"));
        assert_eq!(shown(&spa_hop(path, "7.6.1")), ("at target", HopKind::Done));
        assert_eq!(shown(&spa_hop(path, "7.6.2c")), ("above target", HopKind::Done));
        assert_eq!(shown(&spa_hop(None, "7.3.7")), ("no path", HopKind::None));
        for (version, says) in [("7.5.2b(XU1)", "no upgrade: version 7.5.2b(XU1) has no order against 7.5.2b"), ("", "is not a firmware version")] {
            let hop = spa_hop(path, version);
            assert_eq!(hop.kind, HopKind::Undecidable, "{version}");
            assert!(hop.text.contains(says) && hop.title == hop.text, "{version}: {}", hop.text);
        }
        assert_eq!(spa_path_line(spa(&c)), "7.5.2b (via) → 7.6.1, downgrade limit 7.6.1");
    }

    #[test]
    fn every_build_hop_has_its_text() {
        let c = config("<master info='http://10.0.0.1/CMD0/box_info.xml'/>", "");
        let master = Target::Build("134567".into());
        let path = phone(&c);
        let via = build_hop(&master, path, Some("130178")).unwrap();
        assert_eq!(shown(&via), ("131504 (via)", HopKind::Load));
        assert!(via.title.contains("134567"), "{}", via.title);
        assert_eq!(shown(&build_hop(&master, path, Some("131504")).unwrap()), ("134567", HopKind::Load));
        // above the master: the master's build (the old server's rollback)
        assert_eq!(shown(&build_hop(&master, path, Some("135000")).unwrap()), ("134567", HopKind::Load));
        assert_eq!(shown(&build_hop(&master, path, Some("0134567")).unwrap()), ("at target", HopKind::Done));
        for (prot, says) in [(None, "reports no PROT build"), (Some("13r3"), "PROT '13r3' is not a build number")] {
            let hop = build_hop(&master, path, prot).unwrap();
            assert_eq!(hop.kind, HopKind::Undecidable);
            assert!(hop.text.contains(says), "{prot:?}: {}", hop.text);
        }
        assert_eq!(build_hop(&Target::Unknown, path, Some("130178")), None);
        let none = build_hop(&Target::NoUpdate("ip232 gets no firmware updates (nofirmdev)".into()), path, Some("130178")).unwrap();
        assert_eq!((shown(&none), none.title.as_str()), (("no update", HopKind::None), "ip232 gets no firmware updates (nofirmdev)"));
        assert_eq!(build_path_line(path, &master), "131504 (via) → 134567");
        assert_eq!(build_path_line(path, &Target::Unknown), "131504 (via) → the master's build");
    }

    #[test]
    fn the_target_is_the_scripts_choice_from_the_cache_only() {
        let cached = ("134567".to_string(), "134560".to_string());
        let classes = ["phone".to_string(), "ip232".to_string()];
        let envs = ["default".to_string()];
        let of = |master: &str, rest: &str, cached: Option<&(String, String)>| {
            let c = config(master, rest);
            let targets = Targets::of(&c, cached);
            assert!(targets.paths);
            targets.of_device(&c, "IP232", &classes, &envs)
        };
        let info = "info='http://10.0.0.1/CMD0/box_info.xml'";
        assert_eq!(of(&format!("<master {info}/>"), "", Some(&cached)), Target::Build("134567".into()));
        assert_eq!(of(&format!("<master {info}/>"), "", None), Target::Unknown);
        assert_eq!(of(&format!("<master {info} firmware='133000'/>"), "", None), Target::Build("133000".into()));
        assert!(matches!(of("<master info=''/>", "", Some(&cached)), Target::NoUpdate(r) if r.contains("no master")));
        assert!(matches!(of(&format!("<master {info} firmware='none'/>"), "", Some(&cached)), Target::NoUpdate(r) if r.contains("none")));
        assert!(matches!(of("<master info='none'/>", "", None), Target::NoUpdate(r) if r.contains("info is none")));
        assert_eq!(of("<master info='none' firmware='133000'/>", "", None), Target::Build("133000".into()));
        let gw_only = format!("<master {info}><applies>gw</applies></master>");
        assert!(matches!(of(&gw_only, "", Some(&cached)), Target::NoUpdate(r) if r.contains("master/applies")));
        assert!(matches!(of(&format!("<master {info}/>"), "<nofirmdev><model>IP232</model></nofirmdev>", Some(&cached)), Target::NoUpdate(r) if r.contains("nofirmdev")));
        let without = {
            let defaults = Element::parse_trusted(include_str!("../../config.xml")).unwrap();
            crate::config::build(defaults, &Element::parse("<config><master info=''/></config>").unwrap(), "u").unwrap()
        };
        assert!(!Targets::of(&without, None).paths);
    }
}
