//! Organizational domains by a small embedded public suffix list.
//!
//! mail-auth 0.13 finds the Organizational Domain with the DNS tree walk of DMARCbis
//! (RFC 9989 §4.10), which needs no public suffix list but trusts that a public suffix either
//! publishes no DMARC record or marks it `psd=y`. As a second line of defence, Corvus only
//! accepts *relaxed* alignment between two different domains when they also have the same
//! organizational domain by the RFC 7489 §3.2 method, using this list: the registry-style
//! suffixes most often seen in mail (country second levels such as `co.uk`, `com.au`) and
//! common shared hosting suffixes. A suffix missing here only makes the check *weaker* for
//! domains under it (the tree walk still applies), never stricter than the full list would be
//! for the suffixes it has. Every single-label TLD is a public suffix (the PSL's `*` rule).

/// Multi-label public suffixes (lower case, no leading dot).
const SUFFIXES: &[&str] = &[
    // United Kingdom
    "co.uk",
    "org.uk",
    "me.uk",
    "ltd.uk",
    "plc.uk",
    "net.uk",
    "ac.uk",
    "gov.uk",
    "sch.uk",
    "nhs.uk",
    "police.uk",
    "mod.uk",
    // Australia, New Zealand
    "com.au",
    "net.au",
    "org.au",
    "edu.au",
    "gov.au",
    "asn.au",
    "id.au",
    "co.nz",
    "org.nz",
    "net.nz",
    "ac.nz",
    "govt.nz",
    "geek.nz",
    "school.nz",
    // Asia
    "co.jp",
    "ne.jp",
    "or.jp",
    "ac.jp",
    "go.jp",
    "ad.jp",
    "ed.jp",
    "gr.jp",
    "lg.jp",
    "com.cn",
    "net.cn",
    "org.cn",
    "gov.cn",
    "edu.cn",
    "ac.cn",
    "com.hk",
    "net.hk",
    "org.hk",
    "edu.hk",
    "gov.hk",
    "com.tw",
    "net.tw",
    "org.tw",
    "edu.tw",
    "gov.tw",
    "co.kr",
    "or.kr",
    "ne.kr",
    "ac.kr",
    "go.kr",
    "re.kr",
    "co.in",
    "net.in",
    "org.in",
    "firm.in",
    "gen.in",
    "ind.in",
    "ac.in",
    "edu.in",
    "gov.in",
    "com.sg",
    "net.sg",
    "org.sg",
    "edu.sg",
    "gov.sg",
    "com.my",
    "net.my",
    "org.my",
    "edu.my",
    "gov.my",
    "co.id",
    "or.id",
    "ac.id",
    "go.id",
    "web.id",
    "net.id",
    "com.ph",
    "net.ph",
    "org.ph",
    "edu.ph",
    "gov.ph",
    "co.th",
    "in.th",
    "ac.th",
    "go.th",
    "or.th",
    "com.vn",
    "net.vn",
    "org.vn",
    "edu.vn",
    "gov.vn",
    "com.pk",
    "net.pk",
    "org.pk",
    "edu.pk",
    "gov.pk",
    "co.il",
    "org.il",
    "net.il",
    "ac.il",
    "gov.il",
    "com.tr",
    "net.tr",
    "org.tr",
    "edu.tr",
    "gov.tr",
    "com.sa",
    "net.sa",
    "org.sa",
    "edu.sa",
    "gov.sa",
    "ae.org",
    "co.ae",
    "net.ae",
    "org.ae",
    "gov.ae",
    // Americas
    "com.br",
    "net.br",
    "org.br",
    "gov.br",
    "edu.br",
    "com.mx",
    "net.mx",
    "org.mx",
    "gob.mx",
    "edu.mx",
    "com.ar",
    "net.ar",
    "org.ar",
    "gob.ar",
    "edu.ar",
    "com.co",
    "net.co",
    "org.co",
    "gov.co",
    "edu.co",
    "com.pe",
    "net.pe",
    "org.pe",
    "gob.pe",
    "edu.pe",
    "cl.cl",
    "gob.cl",
    "qc.ca",
    "on.ca",
    "bc.ca",
    "ab.ca",
    // Europe, Africa
    "co.at",
    "or.at",
    "ac.at",
    "gv.at",
    "com.es",
    "nom.es",
    "org.es",
    "gob.es",
    "edu.es",
    "com.pt",
    "org.pt",
    "edu.pt",
    "gov.pt",
    "com.pl",
    "net.pl",
    "org.pl",
    "edu.pl",
    "gov.pl",
    "com.ua",
    "net.ua",
    "org.ua",
    "gov.ua",
    "edu.ua",
    "com.ru",
    "net.ru",
    "org.ru",
    "msk.ru",
    "spb.ru",
    "com.gr",
    "net.gr",
    "org.gr",
    "edu.gr",
    "gov.gr",
    "com.cy",
    "com.mt",
    "com.ro",
    "co.hu",
    "co.it",
    "co.za",
    "org.za",
    "net.za",
    "gov.za",
    "ac.za",
    "web.za",
    "com.eg",
    "com.ng",
    "co.ke",
    "or.ke",
    "co.tz",
    "co.ug",
    // Shared hosting and mail services (PSL private section)
    "github.io",
    "gitlab.io",
    "herokuapp.com",
    "blogspot.com",
    "appspot.com",
    "azurewebsites.net",
    "cloudapp.net",
    "cloudfront.net",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "fly.dev",
    "onrender.com",
    "s3.amazonaws.com",
    "elasticbeanstalk.com",
    "myshopify.com",
    "wordpress.com",
    "duckdns.org",
    "dyndns.org",
    "no-ip.org",
    "ngrok.io",
    "glitch.me",
    "repl.co",
];

/// Whether `domain` (lower case, no trailing dot) is a public suffix.
pub fn is_public_suffix(domain: &str) -> bool {
    !domain.contains('.') || SUFFIXES.contains(&domain)
}

/// The organizational domain of `domain` (RFC 7489 §3.2): the public suffix plus one label.
/// A public suffix itself is returned unchanged.
pub fn organizational_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').filter(|l| !l.is_empty()).collect();
    if labels.len() <= 1 {
        return d;
    }
    // The longest suffix in the list (or the TLD) decides.
    let mut suffix_labels = 1;
    for n in (2..labels.len() + 1).rev() {
        let candidate = labels[labels.len() - n..].join(".");
        if SUFFIXES.contains(&candidate.as_str()) {
            suffix_labels = n;
            break;
        }
    }
    if suffix_labels >= labels.len() {
        return d;
    }
    labels[labels.len() - suffix_labels - 1..].join(".")
}

/// Relaxed alignment by the embedded list: the same domain, or the same organizational
/// domain that is not itself a public suffix.
pub fn same_organization(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('.').to_ascii_lowercase();
    let b = b.trim_end_matches('.').to_ascii_lowercase();
    if a == b {
        return true;
    }
    let (oa, ob) = (organizational_domain(&a), organizational_domain(&b));
    oa == ob && !is_public_suffix(&oa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_domains() {
        assert_eq!(organizational_domain("mail.example.com"), "example.com");
        assert_eq!(organizational_domain("example.com"), "example.com");
        assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("co.uk"), "co.uk");
        assert_eq!(organizational_domain("com"), "com");
        assert_eq!(organizational_domain("Bounce.A.Test."), "a.test");
        assert_eq!(organizational_domain("alice.github.io"), "alice.github.io");
    }

    #[test]
    fn relaxed_alignment_guard() {
        assert!(same_organization("bounce.a.test", "a.test"));
        assert!(same_organization("x.example.co.uk", "y.example.co.uk"));
        assert!(!same_organization("evil.co.uk", "victim.co.uk"));
        assert!(!same_organization("a.test", "b.test"));
        assert!(!same_organization("alice.github.io", "bob.github.io"));
        assert!(same_organization("co.uk", "co.uk"));
    }
}
