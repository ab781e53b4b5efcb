//! Device certificates (SPEC §5) as far as a poll needs them: the state the device reported
//! through the `certificates` query, and the TLS identity check of `forcetrust` (SPEC §3.16).

use crate::config::Config;
use crate::xml::Element;

/// What the web server reported about the client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsIdentity {
    /// `SSL_CLIENT_S_DN_CN`
    pub common_name: Option<String>,
    /// The subject's `S=`/`ST=` (stateOrProvinceName): an SPA certificate's MAC.
    pub subject_state: Option<String>,
    /// The subject's `L=` (localityName): an SPA certificate's serial.
    pub subject_locality: Option<String>,
    /// `SSL_CLIENT_VERIFY`
    pub verify: Option<String>,
    /// The issuer's CN, from `SSL_CLIENT_I_DN_CN` or `SSL_CLIENT_I_DN`.
    pub issuer: Option<String>,
    /// `SERVER_SOFTWARE` names lighttpd, which enforces verification itself and never exports
    /// the issuer.
    pub lighttpd: bool,
}

impl TlsIdentity {
    /// Reads the identity from CGI variables: the per-field ones (lighttpd, Apache), the whole
    /// subject DN (`SSL_CLIENT_S_DN`, nginx's `$ssl_client_s_dn`), else the exported
    /// certificate itself.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> TlsIdentity {
        let nonempty = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        // lighttpd exports no issuer variable at all; with ssl.verifyclient.exportcert the
        // certificate itself is there to read it from
        let exported = nonempty("SSL_CLIENT_CERT").and_then(|pem| names_in_certificate(&pem)).unwrap_or_default();
        let subject = nonempty("SSL_CLIENT_S_DN");
        let subject_field = |variables: &[&str], keys: &[&str]| {
            variables
                .iter()
                .find_map(|name| nonempty(name))
                .or_else(|| subject.as_deref().and_then(|dn| dn_component(dn, keys)))
        };
        TlsIdentity {
            common_name: nonempty("SSL_CLIENT_S_DN_CN").or(exported.subject_cn),
            subject_state: subject_field(&["SSL_CLIENT_S_DN_ST", "SSL_CLIENT_S_DN_S"], &["ST", "S"]).or(exported.subject_state),
            subject_locality: subject_field(&["SSL_CLIENT_S_DN_L"], &["L"]).or(exported.subject_locality),
            verify: nonempty("SSL_CLIENT_VERIFY"),
            issuer: nonempty("SSL_CLIENT_I_DN_CN")
                .or_else(|| nonempty("SSL_CLIENT_I_DN").map(|dn| common_name_of(&dn)))
                .or(exported.issuer_cn),
            lighttpd: var("SERVER_SOFTWARE").is_some_and(|s| s.contains("lighttpd/")),
        }
    }
}

/// The names of a certificate that identify a device and its CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateNames {
    pub subject_cn: Option<String>,
    pub subject_state: Option<String>,
    pub subject_locality: Option<String>,
    pub issuer_cn: Option<String>,
}

/// The names of a PEM (or DER) certificate.
pub fn names_in_certificate(certificate: &str) -> Option<CertificateNames> {
    let der = der_of(certificate.as_bytes())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    fn first<'a>(mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>) -> Option<String> {
        values.next().and_then(|value| value.as_str().ok()).map(String::from)
    }
    let subject = parsed.subject();
    Some(CertificateNames {
        subject_cn: first(subject.iter_common_name()),
        subject_state: first(subject.iter_state_or_province()),
        subject_locality: first(subject.iter_locality()),
        issuer_cn: first(parsed.issuer().iter_common_name()),
    })
}

/// One component of a distinguished name in any of the usual forms (`/C=DE/CN=x`,
/// `CN=x,O=y`, `C = DE, CN = x`), by any of its keys.
fn dn_component(dn: &str, keys: &[&str]) -> Option<String> {
    dn.split(['/', ',']).find_map(|part| {
        let (key, value) = part.split_once('=')?;
        keys.iter().any(|k| key.trim().eq_ignore_ascii_case(k)).then(|| value.trim().to_string())
    })
}

/// The CN of a distinguished name; a bare name is taken as it is.
pub fn common_name_of(dn: &str) -> String {
    dn_component(dn, &["CN"]).unwrap_or_else(|| dn.trim().to_string())
}

/// The configured CA names a device certificate must be issued by.
pub fn ca_names(customcerts: &Element) -> Vec<String> {
    let separator = customcerts.attr("CAnamesep").filter(|s| !s.is_empty()).unwrap_or(",");
    customcerts
        .attr("CAname")
        .unwrap_or("")
        .split(separator)
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// `customcerts` and the CA names of its `CAname`: forcetrust trusts nobody without them.
fn trusted_cas(config: &Config) -> Result<(&Element, Vec<String>), String> {
    let customcerts = config.customcerts.as_ref().ok_or("customcerts/@CAname must be defined")?;
    let names = ca_names(customcerts);
    if names.is_empty() {
        return Err("customcerts/@CAname must be defined".into());
    }
    Ok((customcerts, names))
}

/// Checks that the client certificate names the device of both `sn` and `hwid` and was issued
/// by a configured CA. The error says which check failed.
pub fn check_identity(tls: &TlsIdentity, serial: &str, hwid: &str, config: &Config) -> Result<(), String> {
    let (customcerts, names) = trusted_cas(config)?;
    let cn = tls.common_name.as_deref().ok_or("no client certificate (SSL_CLIENT_S_DN_CN missing)")?;
    let cn = repaired_common_name(cn);
    let wildcard = customcerts.attr("CAwildcard").filter(|w| !w.is_empty());
    let names_device = cn.eq_ignore_ascii_case(hwid)
        || cn.eq_ignore_ascii_case(&serial.replace(['-', ':'], ""))
        || wildcard == Some(cn.as_str());
    if !names_device {
        return Err(format!("client certificate CN '{cn}' does not name this device ({hwid}, {serial})"));
    }
    if !crate::device::hwid_belongs_to_serial(hwid, serial) {
        return Err(format!("hwid '{hwid}' does not belong to serial '{serial}'"));
    }
    verified_by_configured_ca(tls, &names)
}

/// Checks, with forcetrust, that the client certificate of an SPA device names it (research
/// notes §4: the subject's `S=` is the MAC, `L=` the serial; a generic certificate,
/// `S=ciscogeneric`, names no device unless `customcerts/@CAwildcard` says so) and was issued
/// by a configured CA.
pub fn check_spa_identity(tls: &TlsIdentity, mac: &str, serial: &str, config: &Config) -> Result<(), String> {
    let (customcerts, names) = trusted_cas(config)?;
    let (state, locality) = (tls.subject_state.as_deref(), tls.subject_locality.as_deref());
    if state.is_none() && locality.is_none() {
        return Err("no client certificate naming an SPA device (no S= or L= in its subject)".into());
    }
    let plain_mac = |text: &str| text.replace(['-', ':', '.'], "").to_ascii_lowercase();
    let wildcard = customcerts.attr("CAwildcard").filter(|w| !w.is_empty());
    let names_device = state.is_some_and(|s| plain_mac(s) == plain_mac(mac))
        || locality.is_some_and(|l| !serial.is_empty() && l.eq_ignore_ascii_case(serial))
        || wildcard.is_some_and(|w| state == Some(w) || locality == Some(w));
    if !names_device {
        return Err(format!(
            "client certificate S={} L={} does not name this device (MAC {mac}, serial {})",
            crate::spa::shown(state.unwrap_or("")),
            crate::spa::shown(locality.unwrap_or("")),
            if serial.is_empty() { "unknown" } else { serial }
        ));
    }
    verified_by_configured_ca(tls, &names)
}

/// The web server verified the certificate, and its issuer is one of `customcerts/@CAname`.
fn verified_by_configured_ca(tls: &TlsIdentity, names: &[String]) -> Result<(), String> {
    match tls.verify.as_deref() {
        Some("SUCCESS") => {}
        Some(other) => return Err(format!("client certificate not verified ({other})")),
        // lighttpd before 1.4.42 exports no verification result; with ssl.verifyclient.enforce
        // an unverified client never gets this far
        None if tls.lighttpd => {}
        None => return Err("client certificate verification unknown (SSL_CLIENT_VERIFY missing)".into()),
    }
    match tls.issuer.as_deref() {
        Some(issuer) if names.iter().any(|n| n == issuer) => Ok(()),
        Some(issuer) => Err(format!("client certificate issuer '{issuer}' is not one of customcerts/@CAname")),
        // lighttpd never exports the issuer; it only lets certificates of its ssl.ca-file in
        None if tls.lighttpd => Ok(()),
        None => Err("client certificate issuer unknown (SSL_CLIENT_I_DN missing)".into()),
    }
}

/// Early device certificates carry `IP222s`, `IP232s`, `IP240a`, `IP200a` as first CN part.
fn repaired_common_name(cn: &str) -> String {
    let (first, rest) = cn.split_once('-').unwrap_or((cn, ""));
    let fixed = match first {
        "IP222s" | "IP232s" | "IP240a" | "IP200a" => &first[..first.len() - 1],
        other => other,
    };
    if rest.is_empty() && !cn.contains('-') {
        fixed.to_string()
    } else {
        format!("{fixed}-{rest}")
    }
}

/// What the server holds for a device's certificate request: the facts the roll-out decides
/// on, read by the caller. File names are as shown to people: `<customcerts/@dir>/<sn>-…`.
#[derive(Debug, Clone, Default)]
pub struct ServerFiles {
    /// `customcerts/@dir` as configured.
    pub dir: String,
    /// `<sn>-request.p10.der`: the device's CSR, downloaded by a vardump.
    pub request_der: bool,
    /// `<sn>-request.p10.pem`, written from the DER.
    pub request_pem: bool,
    /// `<sn>-signedrequest.cer`: the signed certificate an admin uploaded, as DER.
    pub signed_certificate: Option<Vec<u8>>,
    /// `<sn>-request.der.key`.
    pub request_key: bool,
    /// The CA chain (`CAkeys` glob, sorted): file name (relative to the root) and DER.
    pub ca_chain: Vec<(String, Vec<u8>)>,
}

/// The values the `CSR*` attributes may use as meta words (`{sn}`, `{hwid}`, …).
#[derive(Debug, Clone, Default)]
pub struct CsrWords {
    pub serial: String,
    pub device_type: String,
    /// `realip` and `hwid` as stored by the previous poll.
    pub stored_realip: Option<String>,
    pub stored_hwid: Option<String>,
    /// The current remote address and proxy.
    pub ip: String,
    pub proxy: Option<String>,
    /// The device name from the `admin` query.
    pub name: Option<String>,
    /// Reverse DNS name of the stored realip (looked up only when a CSR attribute uses it).
    pub rdns: Option<String>,
}

/// A server-side file of the device's request that the roll-out acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFile {
    Der,
    Pem,
    Signed,
    Key,
}

impl RequestFile {
    fn suffix(self) -> &'static str {
        match self {
            RequestFile::Der => "-request.p10.der",
            RequestFile::Pem => "-request.p10.pem",
            RequestFile::Signed => "-signedrequest.cer",
            RequestFile::Key => "-request.der.key",
        }
    }

    /// `<serial><suffix>`: the file's name in the certificate directory.
    pub fn file_name(self, serial: &str) -> String {
        format!("{serial}{}", self.suffix())
    }

    /// `<dir>/<serial><suffix>`, the name the old server used in its messages.
    pub fn name(self, dir: &str, serial: &str) -> String {
        format!("{dir}/{}", self.file_name(serial))
    }
}

/// What the certificate step (SPEC §5) decided for this poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificatePlan {
    /// Messages for people, in order; the last one becomes `device/@certstat` (none: it stays).
    pub notes: Vec<String>,
    /// The certificate commands, each with its comment. `None`: the normal update goes on;
    /// `Some` (even empty): they take the whole poll.
    pub commands: Option<Vec<(String, String)>>,
    /// The next poll runs the queries only (a device command that changes its certificate
    /// state was sent).
    pub skip_next: bool,
    /// The server's request state was reset: `device/@requestDownloaded` = `false`.
    pub reset_request_state: bool,
    /// Server-side request files to remove (they are named in `notes`).
    pub remove: Vec<RequestFile>,
    /// Write the missing PEM of the downloaded CSR from its DER.
    pub write_pem: bool,
}

impl CertificatePlan {
    fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    fn command(&mut self, comment: impl Into<String>, command: impl Into<String>) {
        self.commands.get_or_insert_with(Vec::new).push((comment.into(), command.into()));
    }

    /// Ends the poll with the commands gathered so far (none at all is allowed).
    fn take_the_poll(&mut self) {
        self.commands.get_or_insert_with(Vec::new);
    }

    /// `device/@certstat` after this poll, when it changes.
    pub fn status(&self) -> Option<&str> {
        self.notes.last().map(String::as_str)
    }

    /// Nothing of the device's request is needed any more: the server's files go, and a
    /// request the device still holds is removed there too (which takes the poll).
    fn reset_request(&mut self, files: &ServerFiles, serial: &str, device_has_request: bool) {
        for (file, exists, what) in [
            (RequestFile::Der, files.request_der, "CSR/DER"),
            (RequestFile::Pem, files.request_pem, "CSR/PEM"),
            (RequestFile::Signed, files.signed_certificate.is_some(), "signed CSR"),
            (RequestFile::Key, files.request_key, "CSR Key"),
        ] {
            if exists {
                self.note(format!("removing {what} {}", file.name(&files.dir, serial)));
                self.remove.push(file);
            }
        }
        if device_has_request {
            self.command("removing CSR from device", "vars del X509/REQUEST ");
            self.command("removing CSR key from device", "vars del X509/REQUESTKEY ");
        }
        self.reset_request_state = true;
    }
}

/// The facts of one poll's certificate step.
pub struct CertificateFacts<'a> {
    /// The device state as read (its `queries/certificates` answer).
    pub state: &'a Element,
    /// `customcerts` when certificate handling is on (a `dir` and state tracking).
    pub customcerts: Option<&'a Element>,
    /// `times/@forcetrust`: a device waiting for its signed certificate gets nothing else.
    pub forcetrust: bool,
    pub words: &'a CsrWords,
    pub files: &'a ServerFiles,
    /// The absolute URL of `update.php`, for the vardump commands.
    pub vardump_base: &'a str,
    pub now: i64,
}

/// The certificate step of a poll (SPEC §5): is the certificate the device reported good, and
/// if not, which step of its replacement is due. An `Err` is a configuration error (bailout).
pub fn plan(facts: &CertificateFacts) -> Result<CertificatePlan, String> {
    let mut plan = CertificatePlan::default();
    let files = facts.files;
    let serial = facts.words.serial.as_str();
    let certificates_answer = facts.state.child("queries").and_then(|q| q.child("certificates"));
    let info = certificates_answer.and_then(|c| c.child("info"));
    let device_has_request =
        info.and_then(|i| i.child("requests")).is_some_and(|r| r.child("request").is_some());
    let Some(customcerts) = facts.customcerts else {
        plan.note("either certificate handling or state tracking not enabled - not doing any certificate checking");
        plan.reset_request(files, serial, device_has_request);
        return Ok(plan);
    };
    if certificates_answer.is_none() {
        // with handling on, nothing else happens until the device has answered the query
        plan.note("we dont know anything about the current certificate state - not doing any certificate checking");
        plan.take_the_poll();
        return Ok(plan);
    }
    if info.is_some_and(|i| i.child("request-error").is_some()) {
        plan.command(
            "certificate processing STOPPED due to previous upload error, clean X509/REQUESTERROR to continue",
            "ser",
        );
        return Ok(plan);
    }
    let ca_type = customcerts.attr("CAtype").unwrap_or("manual");
    if ca_type != "manual" {
        return Err(format!("certificates: no support for certificates of type '{ca_type}'"));
    }
    if info.is_some_and(|i| i.child("busy").is_some()) {
        plan.note("wait for signing request to be generated (ongoing)");
        plan.take_the_poll();
        return Ok(plan);
    }

    // is the certificate chain the device uses good?
    let names = ca_names(customcerts);
    let separator = customcerts.attr("CAnamesep").filter(|s| !s.is_empty()).unwrap_or(",");
    let renew_days = customcerts.attr("renew").and_then(|r| r.trim().parse::<i64>().ok()).unwrap_or(90);
    let chain = issuer_first(
        info.and_then(|i| i.child("servercert")).map(|s| s.children_named("certificate").collect()).unwrap_or_default(),
    );
    let mut replace = false;
    for certificate in &chain {
        let issuer = certificate.attr("issuer_cn").unwrap_or("");
        if !names.iter().any(|n| n == issuer) {
            plan.note(format!(
                "CN {}: invalid issuer: {issuer}: not in {} ({separator})",
                certificate.attr("subject_cn").unwrap_or(""),
                customcerts.attr("CAname").unwrap_or("")
            ));
            replace = true;
        }
    }
    for certificate in &chain {
        let subject = certificate.attr("subject_cn").unwrap_or("");
        // a certificate without dates counts as starting now and ending now, as the old
        // server read it: not yet valid, or (without an end) due for renewal
        let not_before = certificate.attr("not_before").and_then(parse_time);
        if not_before.is_none_or(|t| t > facts.now) {
            // wait until it becomes valid; nothing is reset meanwhile
            plan.note(format!("{subject}: not yet valid"));
            return Ok(plan);
        }
        let not_after = certificate.attr("not_after").and_then(parse_time).unwrap_or(facts.now);
        if not_after < facts.now {
            plan.note(format!("{subject}: expired"));
            replace = true;
        }
        if not_after < facts.now + renew_days * 86400 {
            plan.note(format!("{subject}: valid but must be renewed"));
            replace = true;
        }
    }
    if !replace {
        plan.note("OK");
        plan.reset_request(files, serial, device_has_request);
        return Ok(plan);
    }

    // replace it: fetch any request error, then whichever step of the request is due
    let dir = files.dir.as_str();
    plan.command(
        "download request error from device (if any)",
        vardump_command(facts.vardump_base, "X509/REQUESTERROR", &format!("{dir}/{serial}-requesterror"), false),
    );
    if !device_has_request {
        plan.command("wrong certificate - need to create CSR", csr_create_command(customcerts, facts.words));
        plan.reset_request(files, serial, false);
        plan.skip_next = true;
        return Ok(plan);
    }
    if !files.request_der {
        plan.command(
            "need to download CSR from device",
            vardump_command(facts.vardump_base, "X509/REQUEST", &RequestFile::Der.name(dir, serial), true),
        );
        return Ok(plan);
    }
    plan.write_pem = !files.request_pem;
    let Some(signed) = &files.signed_certificate else {
        plan.note("signing request must be processed by CA (ongoing)");
        if !facts.forcetrust {
            // the device goes on with its current certificate meanwhile
            plan.commands = None;
        }
        return Ok(plan);
    };
    plan.note(format!("there is an uploaded signed CSR ({})", RequestFile::Signed.name(dir, serial)));
    plan.command("upload new signed certificate", format!("vars create X509/REQUESTRESPONSE/00000 pb {}", hex(signed)));
    for (i, (name, der)) in files.ca_chain.iter().enumerate() {
        plan.command(
            format!("upload CA certificate #{} ({name})", i + 1),
            format!("vars create X509/REQUESTRESPONSE/{:05} pb {}", i + 1, hex(der)),
        );
    }
    plan.skip_next = true;
    Ok(plan)
}

/// The chain with every issuer before the certificates it issued (the device's own last).
/// Insertion sort: the chain is a handful of certificates, and a comparison that is no total
/// order (unrelated names) must still give the old server's order.
fn issuer_first(mut chain: Vec<&Element>) -> Vec<&Element> {
    use std::cmp::Ordering;
    fn names(c: &Element) -> (&str, &str) {
        (c.attr("subject_cn").unwrap_or(""), c.attr("issuer_cn").unwrap_or(""))
    }
    let order = |a: &Element, b: &Element| -> Ordering {
        let ((a_subject, a_issuer), (b_subject, b_issuer)) = (names(a), names(b));
        if a_issuer == b_subject {
            Ordering::Greater
        } else if b_issuer == a_subject {
            Ordering::Less
        } else {
            a_subject.cmp(b_subject)
        }
    };
    for i in 1..chain.len() {
        let mut j = i;
        while j > 0 && order(chain[j - 1], chain[j]) == Ordering::Greater {
            chain.swap(j - 1, j);
            j -= 1;
        }
    }
    chain
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn vardump_command(base: &str, var: &str, file: &str, convert: bool) -> String {
    use crate::urlenc::rawurlencode;
    let processing = if convert { "&proc=var2bin&postproc=createPemFromDer" } else { "" };
    format!(
        "mod cmd UP0 scfg {base}?mode=vardump&sn=#m&var={var}&file={}{processing} ser nop /always {}",
        rawurlencode(file),
        rawurlencode(&format!("vars read {var}"))
    )
}

/// The device command that creates a key pair and a signing request, its options from the
/// `CSR*` attributes with meta words replaced.
pub fn csr_create_command(customcerts: &Element, words: &CsrWords) -> String {
    let option = |name: &str| -> String {
        let template = customcerts.attr(name).unwrap_or("");
        crate::urlenc::rawurlencode(&replace_words(template, words).unwrap_or_default())
    };
    let kind = if matches!(words.device_type.to_lowercase().as_str(), "mypbxa" | "mypbxi") {
        "Signing+request"
    } else {
        "Signing%20request"
    };
    format!(
        "mod cmd X509 servercert-create /cmd servercert-create /redirect /target device /type {kind}  /key {} /signature {} /dn-cn {} /dn-ou {} /dn-o {} /dn-l {} /dn-st {} /dn-c {} /san-dns {} /san-dns {} /san-dns {} /san-ip {} /san-ip {}",
        option("CSRkey"),
        option("CSRsignature"),
        option("CSRdn-cn"),
        option("CSRdn-ou"),
        option("CSRdn-o"),
        option("CSRdn-l"),
        option("CSRdn-st"),
        option("CSRdn-c"),
        option("CSRsan-dns-1"),
        option("CSRsan-dns-2"),
        option("CSRsan-dns-3"),
        option("CSRsan-ip-1"),
        option("CSRsan-ip-2"),
    )
}

/// Replaces `{realip} {ip} {proxy} {sn} {hwid} {name} {rdns}`; None when a word is unknown or
/// has no value (the whole option is then left empty).
pub fn replace_words(template: &str, words: &CsrWords) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}')? + start;
        let value = match &rest[start + 1..end] {
            "sn" => Some(crate::device::serial_digits(&words.serial)),
            "hwid" => words.stored_hwid.clone(),
            "realip" => words.stored_realip.clone(),
            "ip" => Some(words.ip.clone()),
            "proxy" => words.proxy.clone(),
            "name" => words.name.as_deref().map(device_name_word),
            "rdns" => words.rdns.clone(),
            _ => None,
        }
        .filter(|v| !v.is_empty())?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// `{name}`: lower-cased, every run of characters other than `-a-z0-9` replaced by `-`.
fn device_name_word(name: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

/// Whether any `CSR*` attribute uses `{rdns}` (only then is the reverse lookup done).
pub fn uses_rdns(customcerts: &Element) -> bool {
    customcerts.attrs.iter().any(|(k, v)| k.starts_with("CSR") && v.contains("{rdns}"))
}

/// A certificate file in DER or PEM as DER.
pub fn der_of(data: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok();
    match text.filter(|t| t.contains("-----BEGIN")) {
        Some(text) => {
            let body: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect::<Vec<_>>()
                .concat();
            base64_decode(body.trim())
        }
        None => Some(data.to_vec()),
    }
}

/// Base64 as PEM files hold it: the standard alphabet, padding or not (a certificate an
/// operator pasted may have lost its `=`), white space between the lines ignored.
const PEM_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    PEM_BASE64.decode(clean).ok()
}

/// `2099-01-01T00:00:00Z` (the device's time format) as epoch seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim().trim_end_matches('Z');
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next().flatten().unwrap_or(0), t.next().flatten().unwrap_or(0));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // days from the civil date (Howard Hinnant's algorithm)
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hour * 3600 + minute * 60 + second)
}

/// The procedures `mode=vardump` may apply (SPEC §5 deviation: no others exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarProc {
    /// Store the value as it is.
    Plain,
    /// The value is hex: store the bytes.
    Var2Bin,
}

/// The file a variable dump of `var` for `serial` is stored in, derived by the server (never
/// taken from the request), with the processing it needs.
pub fn vardump_target(var: &str, serial: &str) -> Option<(String, VarProc, bool)> {
    match var {
        "X509/REQUEST" => Some((format!("{serial}-request.p10.der"), VarProc::Var2Bin, true)),
        "X509/REQUESTERROR" => Some((format!("{serial}-requesterror"), VarProc::Plain, false)),
        _ => None,
    }
}

/// The value of `var` in a device's `vars read` output: the third token of the line whose
/// first token is the variable's name.
pub fn variable_value<'a>(body: &'a str, var: &str) -> Option<&'a str> {
    body.lines().find_map(|line| {
        let mut tokens = line.split_whitespace();
        (tokens.next() == Some(var)).then(|| {
            tokens.next();
            tokens.next().unwrap_or("")
        })
    })
}

/// Hex digits as bytes; None when the text is not hex.
pub fn hex_to_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// DER bytes as PEM with the given label: base64 in 64-column lines, CRLF line ends, as the old
/// server wrote certificate requests.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\r\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push_str("\r\n");
    }
    out.push_str(&format!("-----END {label}-----\r\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vardump_helpers() {
        assert_eq!(vardump_target("X509/REQUEST", "00-90-33-3e-0c-57").unwrap().0, "00-90-33-3e-0c-57-request.p10.der");
        assert!(vardump_target("../../etc", "x").is_none());
        assert_eq!(variable_value("X509/REQUEST pb 3082\r\nX509/REQUESTKEY pb 00\r\n", "X509/REQUEST"), Some("3082"));
        assert_eq!(variable_value("other pb 1", "X509/REQUEST"), None);
        assert_eq!(hex_to_bytes("30820a"), Some(vec![0x30, 0x82, 0x0a]));
        assert_eq!(hex_to_bytes("3g"), None);
        assert_eq!(pem("X", b"hello"), "-----BEGIN X-----\r\naGVsbG8=\r\n-----END X-----\r\n");
        assert_eq!(pem("X", b"hi!"), "-----BEGIN X-----\r\naGkh\r\n-----END X-----\r\n");
    }

    /// A client certificate of the SPA form (`OU=SPA504G, L=<serial>, ST=<MAC>`), made for the
    /// tests with the openssl CLI and kept in the repository (the key was thrown away).
    #[test]
    fn names_from_an_exported_certificate() {
        let pem = include_str!("../tests/fixtures/certs/spa504g-client.pem");
        let names = names_in_certificate(pem).unwrap();
        assert_eq!(names.subject_cn.as_deref(), Some("SPA504G-58bfea1104e6"));
        assert_eq!(names.subject_state.as_deref(), Some("58bfea1104e6"));
        assert_eq!(names.subject_locality.as_deref(), Some("CCQ16380FYH"));
        assert_eq!(names.issuer_cn.as_deref(), Some("Test SPA Client Root"));
        // what lighttpd hands over in SSL_CLIENT_CERT: the same names, the issuer only from here
        let identity = TlsIdentity::from_vars(|name| (name == "SSL_CLIENT_CERT").then(|| pem.to_string()));
        assert_eq!(identity.issuer.as_deref(), Some("Test SPA Client Root"));
        assert_eq!(identity.subject_state.as_deref(), Some("58bfea1104e6"));
        assert!(names_in_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_none());
    }

    #[test]
    fn pem_round_trip() {
        for len in [0usize, 1, 2, 3, 200, 201] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = pem("CERTIFICATE", &der);
            assert_eq!(der_of(pem.as_bytes()).unwrap(), der, "{len} bytes");
            // a pasted certificate that lost its padding still reads
            assert_eq!(der_of(pem.replace('=', "").as_bytes()).unwrap(), der, "{len} bytes unpadded");
        }
        let der: Vec<u8> = (0u8..=200).collect();
        assert_eq!(der_of(&der).unwrap(), der);
        assert!(der_of(b"-----BEGIN X-----\n!!!!\n-----END X-----\n").is_none());
    }

    #[test]
    fn meta_words() {
        let words = CsrWords {
            serial: "00-90-33-3e-0c-57".into(),
            stored_hwid: Some("IP232-3e-0c-57".into()),
            name: Some("Reception Phone #1".into()),
            ..CsrWords::default()
        };
        assert_eq!(replace_words("{hwid}.example.com", &words).as_deref(), Some("IP232-3e-0c-57.example.com"));
        assert_eq!(replace_words("{sn}", &words).as_deref(), Some("0090333e0c57"));
        assert_eq!(replace_words("{name}", &words).as_deref(), Some("reception-phone-1"));
        assert_eq!(replace_words("x{realip}", &words), None);
        assert_eq!(replace_words("{bogus}", &words), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2020-09-13T12:26:40Z"), Some(1600000000));
        assert_eq!(parse_time("nonsense"), None);
    }

    #[test]
    fn distinguished_names() {
        assert_eq!(common_name_of("C = DE, O = innovaphone AG, CN = IP232-3e-0c-57"), "IP232-3e-0c-57");
        assert_eq!(common_name_of("/C=DE/CN=innovaphone Device Certification Authority"), "innovaphone Device Certification Authority");
        assert_eq!(common_name_of("innovaphone Device Certification Authority"), "innovaphone Device Certification Authority");
    }

    #[test]
    fn spa_subject_fields_from_each_web_server() {
        let from = |vars: &[(&str, &str)]| {
            TlsIdentity::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
        };
        // lighttpd and Apache: one variable per field
        let lighttpd = from(&[("SSL_CLIENT_S_DN_ST", "58bfea1104e6"), ("SSL_CLIENT_S_DN_L", "CCQ16380FYH"), ("SERVER_SOFTWARE", "lighttpd/1.4.69")]);
        assert_eq!((lighttpd.subject_state.as_deref(), lighttpd.subject_locality.as_deref()), (Some("58bfea1104e6"), Some("CCQ16380FYH")));
        assert!(lighttpd.lighttpd);
        // nginx: the whole subject
        let nginx = from(&[("SSL_CLIENT_S_DN", "OU=SPA-962,L=88012BA01234,S=000e08abcdef"), ("SSL_CLIENT_I_DN", "CN=Sipura CA Client Root,O=Sipura")]);
        assert_eq!((nginx.subject_state.as_deref(), nginx.subject_locality.as_deref()), (Some("000e08abcdef"), Some("88012BA01234")));
        assert_eq!(nginx.issuer.as_deref(), Some("Sipura CA Client Root"));
        assert_eq!(dn_component("/C=US/ST=58bfea1104e6/L=x", &["ST", "S"]).as_deref(), Some("58bfea1104e6"));
        assert_eq!(dn_component("CN=a", &["L"]), None);
    }

    #[test]
    fn early_prefixes() {
        assert_eq!(repaired_common_name("IP232s-3e-0c-57"), "IP232-3e-0c-57");
        assert_eq!(repaired_common_name("IP240a-1-2-3"), "IP240-1-2-3");
        assert_eq!(repaired_common_name("0090333e0c57"), "0090333e0c57");
    }
}
