//! Client autoconfiguration: what a mail client needs to set up an account on this server
//! (the host name, and each listener's port and kind of TLS), written out in the forms
//! clients ask for: Thunderbird's autoconfig XML (`config-v1.1.xml`), Outlook's autodiscover
//! XML, and an Apple configuration profile (`.mobileconfig`). The RFC 6186 SRV records
//! (`dns_records`) say the same in DNS.
//!
//! No I/O here; `http::published` serves these.

use crate::config::Config;

/// One service a client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// `imap`, `pop3` or `smtp` (submission).
    pub protocol: &'static str,
    /// The port clients connect to.
    pub port: u16,
    /// TLS from the first byte (993, 995, 465) rather than STARTTLS.
    pub implicit_tls: bool,
    /// The RFC 6186 / RFC 8314 SRV service label (`_imaps._tcp`).
    pub srv: &'static str,
}

/// The client services this server listens for, best first within each protocol (implicit
/// TLS before STARTTLS, RFC 8314 §3): IMAP, POP3, then submission.
pub fn services(config: &Config) -> Vec<Service> {
    let l = &config.listen;
    let port = |a: &Option<crate::config::Addrs>| {
        a.as_ref().and_then(|a| {
            let s = match a {
                crate::config::Addrs::One(s) => s.clone(),
                crate::config::Addrs::Many(v) => v.first()?.clone(),
            };
            s.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        })
    };
    [
        ("imap", &l.imaps, true, "_imaps._tcp"),
        ("imap", &l.imap, false, "_imap._tcp"),
        ("pop3", &l.pop3s, true, "_pop3s._tcp"),
        ("pop3", &l.pop3, false, "_pop3._tcp"),
        ("smtp", &l.submissions, true, "_submissions._tcp"),
        ("smtp", &l.submission, false, "_submission._tcp"),
    ]
    .into_iter()
    .filter_map(|(protocol, addrs, implicit_tls, srv)| {
        port(addrs).map(|port| Service {
            protocol,
            port,
            implicit_tls,
            srv,
        })
    })
    .collect()
}

/// `s` with XML's five special characters escaped.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Thunderbird's autoconfig document for `domain` (the format Thunderbird reads:
/// <https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat>). The user
/// name is the whole address (`%EMAILADDRESS%`, filled in by the client).
pub fn thunderbird(config: &Config, domain: &str) -> String {
    let host = xml_escape(&config.hostname);
    let domain = xml_escape(domain);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<clientConfig version=\"1.1\">\n");
    x.push_str(&format!("  <emailProvider id=\"{domain}\">\n"));
    x.push_str(&format!("    <domain>{domain}</domain>\n"));
    x.push_str(&format!("    <displayName>{domain}</displayName>\n"));
    x.push_str(&format!(
        "    <displayShortName>{domain}</displayShortName>\n"
    ));
    for s in services(config) {
        let (tag, kind) = if s.protocol == "smtp" {
            ("outgoingServer", "smtp")
        } else {
            ("incomingServer", s.protocol)
        };
        let socket = if s.implicit_tls { "SSL" } else { "STARTTLS" };
        x.push_str(&format!(
            "    <{tag} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{}</port>\n      \
             <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      \
             <username>%EMAILADDRESS%</username>\n    </{tag}>\n",
            s.port
        ));
    }
    x.push_str("  </emailProvider>\n</clientConfig>\n");
    x
}

/// The `EMailAddress` of an Outlook autodiscover request, if it has a usable one.
pub fn autodiscover_address(request: &str) -> Option<String> {
    let start = request.find("<EMailAddress>")? + "<EMailAddress>".len();
    let len = request[start..].find("</EMailAddress>")?;
    let a = request[start..start + len].trim();
    valid_address(a).then(|| a.to_string())
}

/// Whether `a` looks like a mail address we could set up (no markup, one `@`, bounded).
pub fn valid_address(a: &str) -> bool {
    a.len() <= 254
        && a.split('@').count() == 2
        && a.split('@').all(|p| !p.is_empty())
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>&\"'".contains(c))
}

/// Outlook's autodiscover answer (the "outlook" response schema) for `address`.
pub fn autodiscover(config: &Config, address: &str) -> String {
    let host = xml_escape(&config.hostname);
    let address = xml_escape(address);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    x.push_str(
        "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n",
    );
    x.push_str("  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n");
    x.push_str(
        "    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n",
    );
    let mut seen = Vec::new();
    for s in services(config) {
        // One entry per protocol: the best of its listeners.
        if seen.contains(&s.protocol) {
            continue;
        }
        seen.push(s.protocol);
        let kind = match s.protocol {
            "imap" => "IMAP",
            "pop3" => "POP3",
            _ => "SMTP",
        };
        let encryption = if s.implicit_tls { "SSL" } else { "TLS" };
        x.push_str(&format!(
            "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{host}</Server>\n        \
             <Port>{}</Port>\n        <LoginName>{address}</LoginName>\n        <DomainRequired>off</DomainRequired>\n        \
             <SPA>off</SPA>\n        <Encryption>{encryption}</Encryption>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            s.port
        ));
    }
    x.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    x
}

/// A UUID-shaped identifier derived from `seed`, so the same profile keeps its identity.
fn uuid_of(seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let h: String = d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An Apple configuration profile (`.mobileconfig`) that sets up `address`: the best
/// incoming service (IMAP before POP3) and submission, always over TLS (Apple's clients use
/// STARTTLS on a port other than 993/995/465). The password is asked for on install.
pub fn mobileconfig(config: &Config, address: &str) -> Option<String> {
    let all = services(config);
    let incoming = all
        .iter()
        .find(|s| s.protocol == "imap")
        .or_else(|| all.iter().find(|s| s.protocol == "pop3"))?;
    let outgoing = all.iter().find(|s| s.protocol == "smtp")?;
    let host = xml_escape(&config.hostname);
    let a = xml_escape(address);
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or(address);
    let reverse: Vec<&str> = domain.split('.').rev().collect();
    let ident = xml_escape(&format!("{}.corvus.mail", reverse.join(".")));
    let kind = if incoming.protocol == "imap" {
        "EmailTypeIMAP"
    } else {
        "EmailTypePOP"
    };
    Some(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
<plist version=\"1.0\">\n<dict>\n\
  <key>PayloadContent</key>\n  <array>\n    <dict>\n\
      <key>EmailAccountDescription</key><string>{a}</string>\n\
      <key>EmailAccountName</key><string>{a}</string>\n\
      <key>EmailAccountType</key><string>{kind}</string>\n\
      <key>EmailAddress</key><string>{a}</string>\n\
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>\n\
      <key>IncomingMailServerHostName</key><string>{host}</string>\n\
      <key>IncomingMailServerPortNumber</key><integer>{}</integer>\n\
      <key>IncomingMailServerUseSSL</key><true/>\n\
      <key>IncomingMailServerUsername</key><string>{a}</string>\n\
      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>\n\
      <key>OutgoingMailServerHostName</key><string>{host}</string>\n\
      <key>OutgoingMailServerPortNumber</key><integer>{}</integer>\n\
      <key>OutgoingMailServerUseSSL</key><true/>\n\
      <key>OutgoingMailServerUsername</key><string>{a}</string>\n\
      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>\n\
      <key>PayloadDescription</key><string>Mail account {a}</string>\n\
      <key>PayloadDisplayName</key><string>{a}</string>\n\
      <key>PayloadIdentifier</key><string>{ident}.account</string>\n\
      <key>PayloadType</key><string>com.apple.mail.managed</string>\n\
      <key>PayloadUUID</key><string>{}</string>\n\
      <key>PayloadVersion</key><integer>1</integer>\n\
    </dict>\n  </array>\n\
  <key>PayloadDisplayName</key><string>Mail: {a}</string>\n\
  <key>PayloadIdentifier</key><string>{ident}</string>\n\
  <key>PayloadRemovalDisallowed</key><false/>\n\
  <key>PayloadType</key><string>Configuration</string>\n\
  <key>PayloadUUID</key><string>{}</string>\n\
  <key>PayloadVersion</key><integer>1</integer>\n\
</dict>\n</plist>\n",
        incoming.port,
        outgoing.port,
        uuid_of(&format!("account:{address}")),
        uuid_of(&format!("profile:{address}")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config {
            hostname: "mail.example.org".into(),
            ..Default::default()
        };
        c.listen.imaps = Some(crate::config::Addrs::One("0.0.0.0:993".into()));
        c.listen.imap = Some(crate::config::Addrs::One("0.0.0.0:143".into()));
        c.listen.submission = Some(crate::config::Addrs::Many(vec!["[::]:587".into()]));
        c
    }

    #[test]
    fn services_follow_the_listeners_best_first() {
        let s = services(&config());
        let got: Vec<(&str, u16, bool)> = s
            .iter()
            .map(|s| (s.protocol, s.port, s.implicit_tls))
            .collect();
        assert_eq!(
            got,
            [
                ("imap", 993, true),
                ("imap", 143, false),
                ("smtp", 587, false)
            ]
        );
    }

    #[test]
    fn documents_escape_what_the_client_sent() {
        let x = thunderbird(&config(), "a<b>&.test");
        assert!(x.contains("<domain>a&lt;b&gt;&amp;.test</domain>"), "{x}");
        assert!(x.contains("<socketType>SSL</socketType>") && x.contains("<port>993</port>"));
        assert_eq!(
            autodiscover_address("<Request><EMailAddress> u@example.org </EMailAddress></Request>"),
            Some("u@example.org".into())
        );
        assert_eq!(
            autodiscover_address("<EMailAddress>u@<x>@y</EMailAddress>"),
            None
        );
        assert_eq!(autodiscover_address("<EMailAddress>nothing"), None);
        let a = autodiscover(&config(), "u@example.org");
        assert!(a.contains("<Type>IMAP</Type>") && a.contains("<Type>SMTP</Type>"));
        assert_eq!(
            a.matches("<Type>IMAP</Type>").count(),
            1,
            "one entry per protocol"
        );
        let m = mobileconfig(&config(), "u@example.org").unwrap();
        assert!(m.contains("<integer>993</integer>") && m.contains("<integer>587</integer>"));
        assert_eq!(
            m,
            mobileconfig(&config(), "u@example.org").unwrap(),
            "stable identity"
        );
    }
}
