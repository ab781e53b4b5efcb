//! Cisco/Linksys SPA phones and ATAs (issue 9): which device a provisioning request comes
//! from, read from its User-Agent (research notes §3.1) and, for agents without a MAC, the
//! `mac` argument its profile rule carries (`mac=$MA`). Nothing here answers a request: the
//! caller serves an identified device, passes everything else on to the innovaphone script
//! unchanged, and answers a refused one with a 404 and a log line (never a guess).

pub mod profile;
pub mod version;

use crate::device::{canonical_serial, is_serial};

/// The longest agent read. Real ones are below 60 bytes; a longer one naming an SPA vendor is
/// refused before it is looked at.
pub const MAX_AGENT_BYTES: usize = 200;
/// `SPA-2102`, `SPA525G2`: model names are short.
const MAX_MODEL_BYTES: usize = 16;
/// A parenthesised group: a MAC (12) or a serial (`CCQ16380FYH`, `4MJ00HC02158`).
const MAX_GROUP_BYTES: usize = 20;

/// The brand an agent names (its part before the `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Linksys,
    Cisco,
    /// Linksys's predecessor (SPA-2000/3000). Its HTTP agent is not documented: it is read
    /// when it has the Linksys form, and refused otherwise.
    Sipura,
}

impl Vendor {
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Linksys => "Linksys",
            Vendor::Cisco => "Cisco",
            Vendor::Sipura => "Sipura",
        }
    }
}

/// An identified SPA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaDevice {
    pub vendor: Vendor,
    /// The model as the state's `type`: upper case, without the hyphen the SPA9xx/SPA2102
    /// agents put in (`SPA-942` → `SPA942`). The same model is `SPA942` in its SIP agent, in
    /// `$PN` and in its firmware file names (`spa942-6-1-5a.bin`), and one spelling must reach
    /// the same classes and upgrade path; a hyphen would also be cut off by the firmware file
    /// name rule (`firmware::file_name` stops at the first `-`).
    pub model: String,
    /// The firmware version as the agent shows it (`7.5.2b`, `6.1.5(a)`); read it with
    /// [`version::parse`]. Not checked here: an odd version still gets its profile, only no
    /// upgrade (issue 9).
    pub firmware: String,
    /// The MAC as lower-case hex pairs joined by `-` (`58-bf-ea-11-04-e6`): the base of the
    /// state file name, the spelling innovaphone serials use (`device::canonical_serial`).
    pub mac: String,
    /// Whether the MAC came from the agent (else from the `mac` argument).
    pub mac_from_agent: bool,
    /// The serial number: the last group of the agent (the only one when there is one).
    pub serial: String,
}

/// What a request's agent says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identification {
    /// Not an SPA provisioning agent: the innovaphone script handles the request as ever.
    NotSpa,
    Spa(SpaDevice),
    /// The agent names an SPA vendor but does not identify a device: 404 and a log line.
    Refused(Refusal),
}

/// Why an SPA request was refused, with the agent as it may be logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SPA agent '{agent}' refused: {reason}")]
pub struct Refusal {
    pub reason: RefusalReason,
    /// The agent cut short, anything but printable ASCII replaced ([`shown`]).
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("longer than {MAX_AGENT_BYTES} bytes")]
    TooLong,
    #[error("not printable ASCII")]
    NotPrintable,
    #[error("not of the form Vendor/MODEL-VERSION (GROUP)[(GROUP)]: {0}")]
    Malformed(&'static str),
    #[error("the first of two groups must be the MAC, 12 hex digits")]
    BadMac,
    #[error("no MAC: the agent carries none and the request has no mac argument")]
    NoMac,
    #[error("the mac argument is not 12 hex digits")]
    BadMacArgument,
    #[error("the agent's MAC {agent} and the mac argument {argument} differ")]
    MacMismatch { agent: String, argument: String },
}

/// Identifies a request from its User-Agent and its `mac` argument (`mac=$MA`, for agents
/// without a MAC). A MAC in both must agree: a request whose two statements contradict each
/// other does not say which device it is.
pub fn identify(agent: Option<&str>, mac_argument: Option<&str>) -> Identification {
    let Some(agent) = agent else { return Identification::NotSpa };
    let agent = agent.trim_matches([' ', '\t']);
    let Some(vendor) = vendor_of(agent) else { return Identification::NotSpa };
    let refuse = |reason| Identification::Refused(Refusal { reason, agent: shown(agent) });
    let parsed = match parse_agent(agent, vendor) {
        Ok(parsed) => parsed,
        Err(reason) => return refuse(reason),
    };
    let argument = match mac_argument.filter(|m| !m.is_empty()) {
        None => None,
        Some(m) if is_serial(m) => Some(canonical_serial(m)),
        Some(_) => return refuse(RefusalReason::BadMacArgument),
    };
    let (mac, mac_from_agent) = match (parsed.mac, argument) {
        (Some(agent_mac), Some(argument)) if agent_mac != argument => {
            return refuse(RefusalReason::MacMismatch { agent: agent_mac, argument })
        }
        (Some(agent_mac), _) => (agent_mac, true),
        (None, Some(argument)) => (argument, false),
        (None, None) => return refuse(RefusalReason::NoMac),
    };
    Identification::Spa(SpaDevice {
        vendor,
        model: parsed.model,
        firmware: parsed.firmware,
        mac,
        mac_from_agent,
        serial: parsed.serial,
    })
}

/// The vendor an agent's product token names (`Cisco/…`), in any case: a lower-cased
/// `cisco/` is still no innovaphone device and must not be served as one. Only the first
/// bytes are looked at, whatever the agent's length.
fn vendor_of(agent: &str) -> Option<Vendor> {
    let bytes = agent.as_bytes();
    [Vendor::Linksys, Vendor::Cisco, Vendor::Sipura].into_iter().find(|vendor| {
        let name = vendor.as_str().as_bytes();
        bytes.len() > name.len() && bytes[..name.len()].eq_ignore_ascii_case(name) && bytes[name.len()] == b'/'
    })
}

struct ParsedAgent {
    model: String,
    firmware: String,
    mac: Option<String>,
    serial: String,
}

/// `Vendor/MODEL-VERSION (A)` or `Vendor/MODEL-VERSION (MAC)(SERIAL)`, nothing else. The SIP
/// agents (`Linksys/SPA942-5.1.10`, no groups) are not provisioning agents and do not parse.
fn parse_agent(agent: &str, vendor: Vendor) -> Result<ParsedAgent, RefusalReason> {
    use RefusalReason::Malformed;
    if agent.len() > MAX_AGENT_BYTES {
        return Err(RefusalReason::TooLong);
    }
    if !agent.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(RefusalReason::NotPrintable);
    }
    let rest = &agent[vendor.as_str().len() + 1..];
    let (product, groups) = rest.split_once(' ').ok_or(Malformed("no group in parentheses"))?;
    // the version holds no '-', the model may (`SPA-942-6.1.5(a)`): split at the last one
    let (model, firmware) = product.rsplit_once('-').ok_or(Malformed("no '-' between model and version"))?;
    let model_ok = !model.is_empty()
        && model.len() <= MAX_MODEL_BYTES
        && model.as_bytes()[0].is_ascii_alphabetic()
        && model.split('-').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !model_ok {
        return Err(Malformed("the model is 1 to 16 letters and digits, parts joined by '-'"));
    }
    let firmware_ok = !firmware.is_empty()
        && firmware.len() <= version::MAX_VERSION_BYTES
        && firmware.as_bytes()[0].is_ascii_digit()
        && firmware.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'(' | b')' | b'_'));
    if !firmware_ok {
        return Err(Malformed("the version starts with a digit and holds letters, digits, '.', '(', ')', '_'"));
    }
    let inner = groups
        .strip_prefix('(')
        .and_then(|g| g.strip_suffix(')'))
        .ok_or(Malformed("the groups must be in parentheses and end the agent"))?;
    let mut parts = inner.split(")(");
    let (first, second) = (parts.next().unwrap_or(""), parts.next());
    if parts.next().is_some() {
        return Err(Malformed("more than two groups"));
    }
    let group_ok = |g: &str| !g.is_empty() && g.len() <= MAX_GROUP_BYTES && g.bytes().all(|b| b.is_ascii_alphanumeric());
    if !group_ok(first) || !second.is_none_or(group_ok) {
        return Err(Malformed("a group is 1 to 20 letters and digits"));
    }
    let (mac, serial) = match second {
        // with two groups the first is the MAC; with one, it is the serial (research notes
        // §3.1: the SPA2102's `(88012BA01234)` is its serial, though it looks like a MAC)
        Some(serial) => {
            if first.len() != 12 || !first.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RefusalReason::BadMac);
            }
            (Some(canonical_serial(first)), serial)
        }
        None => (None, first),
    };
    Ok(ParsedAgent {
        model: model.replace('-', "").to_ascii_uppercase(),
        firmware: firmware.to_string(),
        mac,
        serial: serial.to_string(),
    })
}

/// A device-supplied text as it may appear in a log line, a profile comment or a state
/// message: at most 80 characters, anything but printable ASCII as `?` (SPA profiles are
/// ASCII only, and a log line must stay one line).
pub fn shown(text: &str) -> String {
    text.chars().take(80).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spa(agent: &str, mac: Option<&str>) -> SpaDevice {
        match identify(Some(agent), mac) {
            Identification::Spa(device) => device,
            other => panic!("{agent}: {other:?}"),
        }
    }

    fn refusal(agent: &str, mac: Option<&str>) -> RefusalReason {
        match identify(Some(agent), mac) {
            Identification::Refused(refusal) => refusal.reason,
            other => panic!("{agent}: {other:?}"),
        }
    }

    #[test]
    fn the_two_group_forms_give_mac_and_serial() {
        let linksys = spa("Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)", None);
        assert_eq!(
            linksys,
            SpaDevice {
                vendor: Vendor::Linksys,
                model: "SPA504G".into(),
                firmware: "7.3.7".into(),
                mac: "58-bf-ea-11-04-e6".into(),
                mac_from_agent: true,
                serial: "CCQ16380FYH".into(),
            }
        );
        let cisco = spa("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", None);
        assert_eq!((cisco.vendor, cisco.firmware.as_str()), (Vendor::Cisco, "7.6.1"));
        // the prefix changes on the way up (research notes §2.1): the same device, the same file
        assert_eq!((cisco.model, cisco.mac, cisco.serial), (linksys.model, linksys.mac, linksys.serial));
        assert_eq!(spa("Linksys/SPA504G-7.4.3a (1EDF0F4A6C48)(CXT199006KD)", None).firmware, "7.4.3a");
        // the same MAC in the argument agrees, in any spelling
        assert!(spa("Cisco/SPA504G-7.5.2b (58BFEA1104E6)(CCQ16380FYH)", Some("58bfea1104e6")).mac_from_agent);
    }

    #[test]
    fn the_one_group_forms_need_the_mac_argument() {
        let spa525 = spa("Cisco/SPA525G-7.4.7 (CBT141900G7)", Some("0022556a1b2c"));
        assert_eq!(
            (spa525.model.as_str(), spa525.firmware.as_str(), spa525.mac.as_str(), spa525.serial.as_str()),
            ("SPA525G", "7.4.7", "00-22-55-6a-1b-2c", "CBT141900G7")
        );
        assert!(!spa525.mac_from_agent);
        let spa942 = spa("Linksys/SPA-942-6.1.5(a) (88019FA42805)", Some("000E08ABCDEF"));
        assert_eq!(
            (spa942.model.as_str(), spa942.firmware.as_str(), spa942.mac.as_str(), spa942.serial.as_str()),
            ("SPA942", "6.1.5(a)", "00-0e-08-ab-cd-ef", "88019FA42805")
        );
        let spa2102 = spa("Linksys/SPA-2102-2.0.5 (88012BA01234)", Some("00:0e:08:ab:cd:ef"));
        assert_eq!((spa2102.model.as_str(), spa2102.firmware.as_str()), ("SPA2102", "2.0.5"));
        assert_eq!((spa2102.mac.as_str(), spa2102.serial.as_str()), ("00-0e-08-ab-cd-ef", "88012BA01234"));
        // a lone group is the serial even when it looks like a MAC: never taken for one
        assert_eq!(refusal("Linksys/SPA-2102-2.0.5 (88012BA01234)", None), RefusalReason::NoMac);
        assert_eq!(refusal("Cisco/SPA525G-7.4.7 (CBT141900G7)", Some("")), RefusalReason::NoMac);
    }

    #[test]
    fn other_agents_are_not_spa() {
        for agent in [
            None,
            Some(""),
            Some("innovaphone-IP232/13r2"),
            Some("Mozilla/5.0 (X11; Linux x86_64)"),
            // the MPP successor has its own protocol (research notes §3.1)
            Some("Cisco-CP-8841-3PCC/11.0 (00562b043615)"),
            Some("Cisco"),
            Some("Linksys"),
            Some("CiscoX/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)"),
        ] {
            assert_eq!(identify(agent, Some("58bfea1104e6")), Identification::NotSpa, "{agent:?}");
        }
        // an overlong non-SPA agent is no concern of this module
        assert_eq!(identify(Some(&"x".repeat(100_000)), None), Identification::NotSpa);
    }

    #[test]
    fn odd_spa_agents_are_refused_never_guessed() {
        use RefusalReason::*;
        let malformed = |agent: &str| matches!(refusal(agent, Some("58bfea1104e6")), Malformed(_));
        for agent in [
            "Cisco/",
            "Cisco/SPA504G-7.6.1",
            // the SIP forms: no groups
            "Linksys/SPA942-5.1.10",
            "Linksys/PAP2T-5.1.6(LS)",
            "Cisco/SPA504G-7.6.1 ",
            "Cisco/SPA504G-7.6.1 ()",
            "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)(X)",
            "Cisco/SPA504G-7.6.1 (58BFEA1104E6) (CCQ16380FYH)",
            "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH) trailing",
            "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH",
            "Cisco/SPA504G-7.6.1 58BFEA1104E6",
            "Cisco/SPA504G-7.6.1 (58BF:EA11:04E6)",
            "Cisco/SPA504G-7.6.1  (58BFEA1104E6)",
            "Cisco/SPA504G7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/-7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA504G- (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA--504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA504G-v7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA504G-7.6.1/../x (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA504GSPA504GSPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)",
            "Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH0123456789X)",
        ] {
            assert!(malformed(agent), "{agent}");
        }
        // the first of two groups is a MAC or the agent says nothing reliable
        assert_eq!(refusal("Cisco/SPA504G-7.6.1 (58BFEA1104E)(CCQ16380FYH)", None), BadMac);
        assert_eq!(refusal("Cisco/SPA504G-7.6.1 (58BFEA1104E6F)(CCQ16380FYH)", None), BadMac);
        assert_eq!(refusal("Cisco/SPA504G-7.6.1 (CCQ16380FYH)(58BFEA1104E6)", None), BadMac);
        assert_eq!(refusal(&format!("Cisco/SPA504G-7.6.1 ({})", "A".repeat(200)), None), TooLong);
        assert_eq!(refusal("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH\u{e9})", None), NotPrintable);
        assert_eq!(refusal("Cisco/SPA504G-7.6.1\t(58BFEA1104E6)(CCQ16380FYH)", None), NotPrintable);
        assert_eq!(refusal("Cisco/SPA504G-7.6.1 (58BFEA1104E6)\r\n(CCQ16380FYH)", None), NotPrintable);
        assert_eq!(refusal("Cisco/SPA525G-7.4.7 (CBT141900G7)", Some("$MA")), BadMacArgument);
        assert_eq!(refusal("Cisco/SPA525G-7.4.7 (CBT141900G7)", Some("0022556a1b2")), BadMacArgument);
        assert_eq!(
            refusal("Cisco/SPA504G-7.6.1 (58BFEA1104E6)(CCQ16380FYH)", Some("0022556a1b2c")),
            MacMismatch { agent: "58-bf-ea-11-04-e6".into(), argument: "00-22-55-6a-1b-2c".into() }
        );
        // the log line shows the agent on one line and short
        let Identification::Refused(r) = identify(Some(&format!("Cisco/\n{}", "\u{e9}".repeat(150))), None) else {
            panic!("not refused")
        };
        assert!(r.agent.len() <= 80 && r.agent.bytes().all(|b| b.is_ascii_graphic()), "{}", r.agent);
        assert!(r.to_string().starts_with("SPA agent 'Cisco/?"), "{r}");
    }

    #[test]
    fn odd_but_unambiguous_spellings_are_read() {
        // a lower-case MAC, a lower-cased vendor, surrounding blanks, a lower-case model
        let device = spa(" cisco/spa504g-7.6.1 (58bfea1104e6)(CCQ16380FYH)\t", None);
        assert_eq!((device.vendor, device.model.as_str(), device.mac.as_str()), (Vendor::Cisco, "SPA504G", "58-bf-ea-11-04-e6"));
        // an odd version is still a device: the upgrade decision refuses it, not identification
        assert_eq!(spa("Cisco/SPA112-1.3.5(004p_XU001) (88755A000001)", Some("88755a000001")).firmware, "1.3.5(004p_XU001)");
        assert_eq!(spa("Sipura/SPA-2000-3.1.5 (FM500F100001)", Some("000e08000001")).model, "SPA2000");
    }

    #[test]
    fn shown_is_printable_ascii_and_short() {
        assert_eq!(shown("a\u{e9}\n b"), "a?? b");
        assert_eq!(shown(&"x".repeat(1000)).len(), 80);
    }
}
