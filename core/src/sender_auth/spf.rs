//! SPF (RFC 7208) at MAIL FROM: the HELO and MAIL FROM identities checked at once, the
//! refusal for a hard fail, and the facts hooks see.

use super::*;

impl SenderAuth {
    /// SPF for the HELO name and the MAIL FROM address of a client at `ip`.
    pub async fn check_spf(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SpfCheck {
        // Both identities at once: the client waits for the slower one only. A HELO that is
        // not a domain name (an address literal, a bare word) has no HELO check: `none`, not
        // an error (RFC 7208 §2.3).
        let helo_check = async {
            if helo_is_a_domain(helo) {
                self.spf_identity(SpfParameters::verify_ehlo(ip, helo, self.hostname), helo)
                    .await
            } else {
                SpfOutput::new(helo.to_string()).with_result(SpfResult::None)
            }
        };
        let mail_from_check = async {
            if mail_from.is_empty() {
                return None;
            }
            Some(
                self.spf_identity(
                    SpfParameters::verify_mail_from(ip, helo, self.hostname, mail_from),
                    domain_of(mail_from),
                )
                .await,
            )
        };
        let (helo_out, mail_from_out) = tokio::join!(helo_check, mail_from_check);
        SpfCheck {
            helo: helo_out,
            mail_from: mail_from_out,
            helo_name: helo.to_string(),
            sender: mail_from.to_string(),
        }
    }

    /// One SPF evaluation (`domain`: the identity's domain, for a timeout's result), with
    /// RFC 7208 §4.6.4's void lookup limit on top of mail-auth (which does not enforce it):
    /// more than [`MAX_VOID_LOOKUPS`] terms whose DNS answer was empty or NXDOMAIN make the
    /// result `permerror`. The lookups are seen through recording wrappers around the shared
    /// caches (see [`cache::void_lookups`]).
    async fn spf_identity(&self, params: SpfParameters<'_>, domain: &str) -> SpfOutput {
        let log = std::sync::Mutex::new(Vec::new());
        let caches = self.caches.recording(&log);
        let out = bounded(
            self.config.timeout,
            self.auth.verify_spf(caches.params(params)),
            || SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError),
        )
        .await;
        let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
        self.keep_missing_txt(&log).await;
        if matches!(
            out.result(),
            SpfResult::TempError | SpfResult::PermError | SpfResult::None
        ) {
            return out;
        }
        let mut voids = 0;
        for v in cache::void_lookups(&log) {
            voids += match v {
                cache::Void::Certain(_) => 1,
                cache::Void::Exists(name) => {
                    // mail-auth resolved it without storing; the resolver has the answer cached.
                    let r = tokio::time::timeout(
                        self.config.timeout,
                        self.auth.resolver().lookup_ip(name.as_str()),
                    )
                    .await;
                    match r {
                        Ok(Ok(found)) if found.iter().next().is_some() => 0,
                        Ok(Ok(_)) => 1,
                        Ok(Err(e)) if e.is_no_records_found() => 1,
                        _ => 0,
                    }
                }
            };
        }
        if voids > MAX_VOID_LOOKUPS {
            tracing::info!(
                domain = out.domain(),
                voids,
                "SPF permerror: too many void DNS lookups"
            );
            return SpfOutput::new(out.domain().to_string())
                .with_result(SpfResult::PermError)
                .with_explanation(format!(
                    "{voids} void DNS lookups, more than {MAX_VOID_LOOKUPS} (RFC 7208 section 4.6.4)"
                ));
        }
        out
    }
    /// The refusal text when MAIL FROM must be refused for an SPF hard fail.
    pub fn spf_refusal(&self, spf: &SpfCheck) -> Option<String> {
        let out = spf.effective();
        let domain = out.domain();
        let on = self
            .override_for(domain, |d| d.spf_reject_fail)
            .unwrap_or(self.config.spf_reject_fail);
        (on && out.result() == SpfResult::Fail).then(|| match out.explanation() {
            Some(e) if !e.is_empty() => format!(
                "SPF of {domain} does not allow this host to send its mail: {}",
                comment_text(e)
            ),
            _ => format!("SPF of {domain} does not allow this host to send its mail"),
        })
    }

    /// Hook facts for SPF alone (the MAIL point).
    pub fn spf_facts(spf: &SpfCheck) -> AuthFacts {
        AuthFacts {
            spf: spf_word(spf.effective().result()).into(),
            spf_domain: spf.effective().domain().to_string(),
            spf_helo: spf_word(spf.helo.result()).into(),
            ..Default::default()
        }
    }
}

/// Whether a HELO/EHLO argument is a fully qualified domain name that SPF can check: not an
/// address literal, not an IP address, with a dot and only letters, digits, `-` and `_`.
pub(super) fn helo_is_a_domain(helo: &str) -> bool {
    let h = helo.trim_end_matches('.');
    !h.starts_with('[')
        && h.parse::<IpAddr>().is_err()
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
