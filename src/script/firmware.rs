//! Firmware and boot code decisions (SPEC §4): which builds a device should run, and the URL
//! it loads them from.

/// Builds a master device reports in `sys/@version`, e.g.
/// `IP811[13r2 sr40 [134567]], Bootcode[134560], Hardware[302]`: the innermost bracketed
/// groups are firmware, boot code and hardware; dots are removed from the builds.
pub fn parse_master_version(version: &str) -> Option<(String, String)> {
    let mut groups = Vec::new();
    let mut start = None;
    for (i, c) in version.char_indices() {
        match c {
            '[' => start = Some(i + 1),
            ']' => {
                if let Some(s) = start.take() {
                    groups.push(version[s..i].replace('.', "").trim().to_string());
                }
            }
            _ => {}
        }
    }
    if groups.len() < 2 || groups[0].is_empty() {
        return None;
    }
    Some((groups[0].clone(), groups[1].clone()))
}

/// What `master/@firmware` / `master/@bootcode` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildChoice {
    Master,
    /// Boot code only: the chosen firmware build.
    Firmware,
    Disabled,
    Fixed(String),
}

impl BuildChoice {
    pub fn parse(value: &str, allow_firmware: bool) -> Result<BuildChoice, String> {
        match value {
            "" | "master" => Ok(BuildChoice::Master),
            "none" => Ok(BuildChoice::Disabled),
            "firmware" if allow_firmware => Ok(BuildChoice::Firmware),
            v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => Ok(BuildChoice::Fixed(v.to_string())),
            v => Err(format!("'{v}' is neither master, none{} nor a build number", if allow_firmware { ", firmware" } else { "" })),
        }
    }
}

/// The builds to run: (firmware, boot code), each None for "no update".
pub fn chosen_builds(
    firmware: &BuildChoice,
    bootcode: &BuildChoice,
    master: Option<&(String, String)>,
) -> (Option<String>, Option<String>) {
    let firmware = match firmware {
        BuildChoice::Master => master.map(|m| m.0.clone()),
        BuildChoice::Fixed(b) => Some(b.clone()),
        BuildChoice::Disabled | BuildChoice::Firmware => None,
    };
    let bootcode = match bootcode {
        BuildChoice::Master => master.map(|m| m.1.clone()),
        BuildChoice::Firmware => firmware.clone(),
        BuildChoice::Fixed(b) => Some(b.clone()),
        BuildChoice::Disabled => None,
    };
    let nonempty = |b: Option<String>| b.filter(|b| !b.is_empty());
    (nonempty(firmware), nonempty(bootcode))
}

/// PHP's loose `==` as the old server compared builds: numerically when both look like
/// numbers (`0136105` == `136105`), else as strings.
pub fn same_build(running: Option<&str>, wanted: &str) -> bool {
    let Some(running) = running else { return false };
    match (running.trim().parse::<u64>(), wanted.trim().parse::<u64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => running == wanted,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Prot,
    Boot,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Prot => "prot",
            FileType::Boot => "boot",
        }
    }
}

/// The default file name of a model's firmware / boot code: the lower-cased type cut at the
/// first `-`; a leading `ip` is kept for firmware (`ip232.bin`) and dropped for boot code
/// (`boot232.bin`); `filenames/model` overrides.
pub fn file_name(device_type: &str, kind: FileType, overrides: &[(String, Option<String>, Option<String>)]) -> String {
    let model = device_type.to_lowercase();
    if let Some((_, prot, boot)) = overrides.iter().find(|(id, _, _)| *id == model) {
        let chosen = match kind {
            FileType::Prot => prot,
            FileType::Boot => boot,
        };
        if let Some(name) = chosen {
            return name.clone();
        }
    }
    let base = model.split('-').next().unwrap_or(&model);
    match kind {
        FileType::Prot => format!("{base}.bin"),
        FileType::Boot => format!("boot{}.bin", base.strip_prefix("ip").unwrap_or(base)),
    }
}

/// `fwstorage/@url` (already absolute) with `{build}`, `{model}`, `{filetype}`, `{filename}`.
pub fn storage_url(template: &str, build: &str, device_type: &str, kind: FileType, filename: &str) -> String {
    template
        .replace("{build}", build)
        .replace("{model}", device_type)
        .replace("{filetype}", kind.as_str())
        .replace("{filename}", filename)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_version_groups() {
        assert_eq!(
            parse_master_version("IP811[13r2 sr40 [134567]], Bootcode[134560], Hardware[302]"),
            Some(("134567".into(), "134560".into()))
        );
        assert_eq!(parse_master_version("IP811[13.6105], Bootcode[13.6100], Hardware[1]"), Some(("136105".into(), "136100".into())));
        assert_eq!(parse_master_version("garbage"), None);
    }

    #[test]
    fn choices() {
        let master = ("134567".to_string(), "134560".to_string());
        let fw = BuildChoice::parse("none", false).unwrap();
        let boot = BuildChoice::parse("firmware", true).unwrap();
        assert_eq!(chosen_builds(&fw, &boot, Some(&master)), (None, None));
        assert_eq!(
            chosen_builds(&BuildChoice::Master, &BuildChoice::Master, Some(&master)),
            (Some("134567".into()), Some("134560".into()))
        );
        assert!(BuildChoice::parse("firmware", false).is_err());
        assert!(BuildChoice::parse("12a", true).is_err());
    }

    #[test]
    fn loose_build_comparison() {
        assert!(same_build(Some("0136105"), "136105"));
        assert!(!same_build(Some("130178"), "136105"));
        assert!(!same_build(None, "136105"));
    }

    #[test]
    fn file_names() {
        let overrides = vec![("mypbxa".to_string(), Some("mypbx.apk".to_string()), Some("alt-bootnomodel.bin".to_string()))];
        assert_eq!(file_name("IP232", FileType::Prot, &overrides), "ip232.bin");
        assert_eq!(file_name("IP232", FileType::Boot, &overrides), "boot232.bin");
        assert_eq!(file_name("IP29-4", FileType::Prot, &overrides), "ip29.bin");
        assert_eq!(file_name("mypbxa", FileType::Prot, &overrides), "mypbx.apk");
        assert_eq!(file_name("swphone", FileType::Boot, &overrides), "bootswphone.bin");
        assert_eq!(
            storage_url("https://fw/{build}/{model}/{filetype}/{filename}", "136100", "IP0011", FileType::Boot, "boot0011.bin"),
            "https://fw/136100/IP0011/boot/boot0011.bin"
        );
    }
}
