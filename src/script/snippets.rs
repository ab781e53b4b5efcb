//! Which snippet files a device gets, in which order, and the CHECK signature over them
//! (SPEC §3 steps 8 and 19).

use md5::{Digest, Md5};

/// The candidate snippet files of a device under this configuration: [`candidate_names`] with
/// `all` a candidate wherever more than one phase, class or environment is configured. `txt` for
/// innovaphone devices, `xml` for the SPA profile snippets (issue 9), in the same order.
pub fn configured_candidates(
    config: &crate::config::Config,
    extension: &str,
    phase_files: &str,
    classes: &[String],
    serial: &str,
    environments: &[String],
) -> Vec<String> {
    candidate_names(
        extension,
        phase_files,
        config.phases.len() > 1,
        classes,
        config.classes.len() > 1,
        serial,
        environments,
        config.environments.len() > 1,
    )
}

/// The candidate file names (without folder) in delivery order: phase (outer), class,
/// environment (inner), every part lower-cased, each with `extension`.
///
/// `all` is a candidate phase / class / environment only when more than one phase / class /
/// environment is configured; the serial (lower-cased, `-` → `_`) comes before the device's
/// environments.
#[allow(clippy::too_many_arguments)]
pub fn candidate_names(
    extension: &str,
    phase_files: &str,
    several_phases: bool,
    classes: &[String],
    several_classes: bool,
    serial: &str,
    environments: &[String],
    several_environments: bool,
) -> Vec<String> {
    let mut phases: Vec<&str> = Vec::new();
    if several_phases {
        phases.push("all");
    }
    phases.push(phase_files);
    let mut class_slots: Vec<&str> = Vec::new();
    if several_classes {
        class_slots.push("all");
    }
    class_slots.extend(classes.iter().map(String::as_str));
    let serial_slot = serial.to_lowercase().replace('-', "_");
    let mut env_slots: Vec<&str> = Vec::new();
    if several_environments {
        env_slots.push("all");
    }
    env_slots.push(&serial_slot);
    env_slots.extend(environments.iter().map(String::as_str));

    let mut names = Vec::with_capacity(phases.len() * class_slots.len() * env_slots.len());
    for phase in &phases {
        for class in &class_slots {
            for env in &env_slots {
                let name = lowercase_name(&[phase, "-", class, "-", env, ".", extension]);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// The parts joined and lower-cased, built in one buffer (a poll builds a dozen or more of
/// these): ASCII is lower-cased in place, anything else as `str::to_lowercase` does it.
fn lowercase_name(parts: &[&str]) -> String {
    let mut name = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| name.push_str(part));
    if name.is_ascii() {
        name.make_ascii_lowercase();
        name
    } else {
        name.to_lowercase()
    }
}

/// The CHECK signature: lower-case hex MD5 over the pre-lines, then every line of every
/// delivered file trimmed of surrounding white space with empty lines dropped, then the
/// post-lines, all joined without separators. It must match the old server bit for bit,
/// or every device would run its scripts again after the switch.
pub fn check_signature<'a>(pre: &[String], files: impl IntoIterator<Item = &'a [u8]>, post: &[String]) -> String {
    let mut md5 = Md5::new();
    for line in pre {
        md5.update(line.as_bytes());
    }
    for content in files {
        for line in split_lines(content) {
            let trimmed = trim_php(line);
            if !trimmed.is_empty() {
                md5.update(trimmed);
            }
        }
    }
    for line in post {
        md5.update(line.as_bytes());
    }
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines as PHP's `file()` + `trim()` saw them: split at `\n`; a `\r` before it is trimmed away.
pub fn split_lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.split(|b| *b == b'\n')
}

/// PHP's `trim()`: removes spaces, tabs, CR, LF, NUL and vertical tabs at both ends.
pub fn trim_php(line: &[u8]) -> &[u8] {
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\0' | b'\x0b');
    let start = line.iter().position(|b| !is_blank(b)).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !is_blank(b)).map_or(start, |i| i + 1);
    &line[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn single_phase_single_environment() {
        let names = candidate_names("txt", "update", false, &s(&["phone", "ip232"]), true, "00-90-33-3E-0c-57", &s(&["default"]), false);
        assert_eq!(
            names,
            [
                "update-all-00_90_33_3e_0c_57.txt",
                "update-all-default.txt",
                "update-phone-00_90_33_3e_0c_57.txt",
                "update-phone-default.txt",
                "update-ip232-00_90_33_3e_0c_57.txt",
                "update-ip232-default.txt",
            ]
        );
    }

    #[test]
    fn wildcards_come_first_in_each_slot() {
        let names = candidate_names("txt", "Update", true, &s(&["Lobby"]), false, "0090333e0c57", &s(&["berlin"]), true);
        assert_eq!(&names[..3], ["all-lobby-all.txt", "all-lobby-0090333e0c57.txt", "all-lobby-berlin.txt"]);
        assert_eq!(names[3], "update-lobby-all.txt");
    }

    #[test]
    fn signature_matches_the_old_server() {
        let file = b"# snippet all-default\r\nconfig add CMD0 /location all-default\r\n\r\n";
        assert_eq!(check_signature(&[], [&file[..]], &[]), "3659a6211d36c0173a934818ce8b038c");
        let two: [&[u8]; 2] = [b"# snippet all-default\nconfig add CMD0 /location all-default\n", b"  # snippet phone-default\nconfig add CMD0 /location phone-default"];
        assert_eq!(check_signature(&[], two, &[]), "edace031b945b06831c7fab88aa42154");
    }

    proptest! {
        #[test]
        fn signature_ignores_blank_lines_and_surrounding_space(lines in proptest::collection::vec("[a-z /]{0,12}", 0..8)) {
            let plain = lines.join("\n");
            let padded: String = lines.iter().map(|l| format!("  {l}\t\r\n\n")).collect();
            prop_assert_eq!(
                check_signature(&[], [plain.as_bytes()], &[]),
                check_signature(&[], [padded.as_bytes()], &[])
            );
        }
    }
}
