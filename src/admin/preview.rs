//! The status page's Preview of one device (`mode=preview&sn=…`, issue 11 item 2): the text
//! `update-server preview` prints for it, computed by the same function, for the poll the
//! device's state file describes. A state records most of what a poll carries; the rest
//! (its `polling` value, HTTPS, a client certificate, its `CHECK`) is assumed and the page
//! says so, together with the command line that previews the same.

use super::tree::Node;
use crate::config::Config;
use crate::preview::PreviewArgs;

/// Where a preview value came from, for the page's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    pub value: String,
    /// `state: device/@hwid`, or why the value was assumed.
    pub source: String,
    pub assumed: bool,
}

/// The poll a state describes, ready for [`crate::app::App::preview`].
#[derive(Debug, Clone)]
pub struct DevicePoll {
    pub args: PreviewArgs,
    pub values: Vec<Value>,
    /// What the preview cannot know and does not pretend to.
    pub notes: Vec<String>,
    /// `state/@nextphase`, when the device's URL was moved on to it and the preview is not of it.
    pub next_phase: Option<String>,
}

/// The poll of the device `sn` whose state is `state`, in `phase` (None: the phase of its last
/// poll), to the `update.php` of the host and path the admin page is reached under
/// (`host_name` without a port, `install_path` as `/mtls/update` or empty).
pub fn device_poll(state: Node, sn: &str, phase: Option<&str>, config: &Config, host_name: &str, install_path: &str) -> Result<DevicePoll, String> {
    let device = state.child("device").ok_or("the state records no device (no poll was answered yet)")?;
    let attr = |element: Node, name: &str| element.attr(name).map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    let mut values = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    let spa = attr(device, "vendor").is_some();
    let mut user_agent = None;
    if spa {
        // the agent as the phone sends it: the state keeps each of its parts
        let (vendor, model, version, serial) = (attr(device, "vendor"), attr(device, "type"), attr(device, "version"), attr(device, "serial"));
        let (Some(vendor), Some(model), Some(version), Some(serial)) = (vendor, model, version, serial) else {
            return Err("the state of this SPA device lacks its vendor, model, firmware version or serial number".into());
        };
        let agent = format!("{vendor}/{model}-{version} ({})({serial})", sn.replace('-', "").to_ascii_uppercase());
        values.push(Value {
            name: "User-Agent".into(),
            value: agent.clone(),
            source: "state: device/@vendor, @type, @version, the serial (MAC) and @serial".into(),
            assumed: false,
        });
        user_agent = Some(agent);
    } else {
        from_state(&mut args, &mut values, "type", attr(device, "type"), "device/@type");
        from_state(&mut args, &mut values, "sn", Some(sn.to_string()), "the file name");
        from_state(&mut args, &mut values, "hwid", attr(device, "hwid"), "device/@hwid");
        from_state(&mut args, &mut values, "ip", attr(device, "realip").or_else(|| attr(device, "ip")), "device/@realip");
    }
    let last_phase = attr(device, "phase");
    let phase = match phase {
        Some(asked) if config.phases.iter().any(|p| p.id == asked) => Some(asked.to_string()),
        Some(asked) => return Err(format!("there is no phase '{}' in the configuration", crate::spa::shown(asked))),
        None => last_phase.clone(),
    };
    if let Some(phase) = &phase {
        if !spa {
            // the URL the server gave the device carries the polling that goes with its phase:
            // fast polling while a later phase follows, 0 in the last one
            let last = config.phases.last().is_some_and(|p| &p.id == phase);
            let polling = if last { "0".to_string() } else { config.times.polling.to_string() };
            let why = if last { "assumed: 0 in the last phase, as the server set it" } else { "assumed: times/@polling, as the server sets it before the last phase" };
            args.push(("polling".into(), polling.clone()));
            values.push(Value { name: "polling".into(), value: polling, source: why.into(), assumed: true });
        }
        let source = if Some(phase) == last_phase.as_ref() { "state: device/@phase (its last poll)".to_string() } else { "chosen on this page".to_string() };
        args.push(("phase".into(), phase.clone()));
        values.push(Value { name: "phase".into(), value: phase.clone(), source, assumed: false });
    }
    let environments = attr(device, "environments").map(|list| list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect::<Vec<_>>().join(","));
    from_state(&mut args, &mut values, "env", environments.filter(|e| !e.is_empty()), "device/@environments (with what they imply)");
    if !spa {
        from_state(&mut args, &mut values, "PROT", state.child("firmware").and_then(|f| attr(f, "build")), "firmware/@build");
        from_state(&mut args, &mut values, "BOOT", state.child("bootcode").and_then(|b| attr(b, "build")), "bootcode/@build");
    }

    // how the request reaches the server
    let (remote_addr, forwarded_for) = match (attr(device, "ip"), attr(device, "proxy")) {
        (Some(ip), Some(proxy)) if device.attr("rp") == Some("true") => (Some(proxy), Some(ip)),
        (ip, _) => (ip, None),
    };
    if let Some(address) = &remote_addr {
        let source = if forwarded_for.is_some() { "state: device/@proxy (the reverse proxy)" } else { "state: device/@ip" };
        values.push(Value { name: "from address".into(), value: address.clone(), source: source.into(), assumed: false });
    }
    if let Some(client) = &forwarded_for {
        values.push(Value { name: "X-Forwarded-For".into(), value: client.clone(), source: "state: device/@ip".into(), assumed: false });
    }
    let https = config.times.forcehttps || config.times.forcetrust;
    let port = match (&config.times.httpsport, https) {
        (Some(port), true) if port != "443" => format!(":{port}"),
        _ => String::new(),
    };
    let url = format!("{}://{host_name}{port}{install_path}/update.php", if https { "https" } else { "http" });
    let scheme_why = if https { "assumed: HTTPS, as forcehttps/forcetrust moves devices there" } else { "assumed: plain HTTP (the state does not record it)" };
    values.push(Value { name: "URL".into(), value: url.clone(), source: format!("{scheme_why}; this page's host and path"), assumed: true });
    let mut notes = vec![
        "CHECK is not recorded in the state: this is what a device gets whose CHECK does not match (after a change of its snippets); one that matches gets no snippets again.".to_string(),
    ];
    let (mut cn, mut issuer) = (None, None);
    if config.times.forcetrust && !spa {
        cn = attr(device, "hwid");
        issuer = config.customcerts.as_ref().and_then(|c| crate::certs::ca_names(c).into_iter().next());
        if let (Some(cn), Some(issuer)) = (&cn, &issuer) {
            values.push(Value {
                name: "client certificate".into(),
                value: format!("CN={cn}, issued by {issuer}"),
                source: "assumed: forcetrust is on and the device's certificate is valid".into(),
                assumed: true,
            });
        }
    }
    if cn.is_none() {
        notes.push(if config.times.forcetrust {
            "forcetrust is on, but no client certificate is assumed for this device: the preview shows the refusal.".to_string()
        } else {
            "No client certificate assumed.".to_string()
        });
        issuer = None;
    }
    let next_phase = attr(state, "nextphase").filter(|next| Some(next) != phase.as_ref() && config.phases.iter().any(|p| &p.id == next));
    if let Some(next) = &next_phase {
        notes.push(format!("Its last answer moved the device's URL on to phase '{next}': its next poll is most likely in that phase."));
    }
    let args = PreviewArgs { args, query: None, user_agent, url, https, cn, issuer, remote_addr, forwarded_for };
    Ok(DevicePoll { args, values, notes, next_phase })
}

/// A request argument the state records, with its source for the page.
fn from_state(args: &mut Vec<(String, String)>, values: &mut Vec<Value>, name: &str, value: Option<String>, source: &str) {
    if let Some(value) = value {
        args.push((name.to_string(), value.clone()));
        values.push(Value { name: name.into(), value, source: format!("state: {source}"), assumed: false });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(user: &str) -> Config {
        let defaults = crate::xml::Element::parse_trusted(include_str!("../../config.xml")).unwrap();
        crate::config::build(defaults, &crate::xml::Element::parse(user).unwrap(), "user-config.xml").unwrap()
    }

    fn poll_of(state: &str, phase: Option<&str>, config: &Config) -> Result<DevicePoll, String> {
        let doc = super::super::tree::parse(state).unwrap();
        device_poll(Node::of(doc.root_element()), "00-90-33-3e-0c-57", phase, config, "update.example.com", "/mtls/update")
    }

    const STATE: &str = r#"<state seen="1700000000" phase="update" nextphase="">
  <device sn="00-90-33-3e-0c-57" type="IP232" classes="phone, ip232" ip="172.16.4.57" rp="true" proxy="10.0.0.2" phase="update" environments="default, berlin" hwid="IP232-3e-0c-57" realip="172.16.4.99"/>
  <firmware build="131504"/><bootcode build="131000"/>
</state>"#;

    #[test]
    fn an_innovaphone_state_becomes_its_poll() {
        let c = config("<config><master info=''/></config>");
        let poll = poll_of(STATE, None, &c).unwrap();
        let args: Vec<String> = poll.args.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(args, ["type=IP232", "sn=00-90-33-3e-0c-57", "hwid=IP232-3e-0c-57", "ip=172.16.4.99", "polling=0", "phase=update", "env=default,berlin", "PROT=131504", "BOOT=131000"]);
        assert_eq!((poll.args.remote_addr.as_deref(), poll.args.forwarded_for.as_deref()), (Some("10.0.0.2"), Some("172.16.4.57")), "through its proxy");
        assert_eq!(poll.args.url, "http://update.example.com/mtls/update/update.php");
        assert!(!poll.args.https && poll.args.cn.is_none() && poll.next_phase.is_none());
        assert!(poll.values.iter().any(|v| v.name == "polling" && v.assumed) && poll.values.iter().any(|v| v.name == "hwid" && !v.assumed));
        assert!(poll.notes.iter().any(|n| n.contains("CHECK")), "{:?}", poll.notes);
        assert!(poll_of(STATE, Some("nowhere"), &c).is_err(), "only configured phases");
        assert!(poll_of("<state/>", None, &c).is_err(), "no device, no poll");
    }

    #[test]
    fn phases_https_and_forcetrust_are_assumed_and_said() {
        let c = config(
            r#"<config><master info=''/><phases><phase id="staging" seq="1"/><phase id="update" seq="2"/></phases>
               <times forcetrust="true" httpsport="444"/><customcerts dir="certs" CAname="Device CA,Other CA"/></config>"#,
        );
        let state = STATE.replace(r#"phase="update" nextphase="""#, r#"phase="staging" nextphase="update""#).replace(r#"phase="update" environments"#, r#"phase="staging" environments"#);
        let poll = poll_of(&state, None, &c).unwrap();
        assert!(poll.args.args.contains(&("polling".into(), c.times.polling.to_string())) && poll.args.args.contains(&("phase".into(), "staging".into())));
        assert_eq!(poll.next_phase.as_deref(), Some("update"));
        assert_eq!(poll.args.url, "https://update.example.com:444/mtls/update/update.php");
        assert_eq!((poll.args.cn.as_deref(), poll.args.issuer.as_deref()), (Some("IP232-3e-0c-57"), Some("Device CA")));
        let next = poll_of(&state, Some("update"), &c).unwrap();
        assert!(next.args.args.contains(&("polling".into(), "0".into())) && next.next_phase.is_none());
    }

    #[test]
    fn an_spa_state_becomes_its_agent() {
        let c = config("<config><master info=''/></config>");
        let state = r#"<state seen="1700000000"><device sn="58-bf-ea-11-04-e6" type="SPA504G" vendor="Linksys" serial="CCQ16380FYH" version="7.3.7" ip="10.0.0.5" rp="false" proxy="" phase="update" environments="default"/></state>"#;
        let doc = super::super::tree::parse(state).unwrap();
        let poll = device_poll(Node::of(doc.root_element()), "58-bf-ea-11-04-e6", None, &c, "h", "").unwrap();
        assert_eq!(poll.args.user_agent.as_deref(), Some("Linksys/SPA504G-7.3.7 (58BFEA1104E6)(CCQ16380FYH)"));
        let args: Vec<String> = poll.args.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(args, ["phase=update", "env=default"]);
        assert_eq!(poll.args.remote_addr.as_deref(), Some("10.0.0.5"));
        let crate::spa::Identification::Spa(device) = crate::spa::identify(poll.args.user_agent.as_deref(), None) else { panic!("not identified") };
        assert_eq!((device.mac.as_str(), device.serial.as_str(), device.firmware.as_str()), ("58-bf-ea-11-04-e6", "CCQ16380FYH", "7.3.7"));
    }
}
