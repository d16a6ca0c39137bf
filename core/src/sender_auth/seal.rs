//! ARC sealing (RFC 8617 §5.1) of mail that Corvus forwards: when an alias sends a message on
//! to another domain, the forwarded copy gets an ARC set — our results (ARC-Authentication-
//! Results), a signature over the message (ARC-Message-Signature) and a seal over the chain
//! (ARC-Seal) — signed with the DKIM key of the alias's domain, so the next hop can trust
//! the SPF/DKIM/DMARC results we saw before forwarding broke SPF.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{AuthenticatedMessage, AuthenticationResults};

use super::{Checked, SenderAuth};
use crate::store::Store;

fn seal_with<T: SigningKey<Hasher = Sha256>>(
    key: T,
    domain: &str,
    selector: &str,
    msg: &AuthenticatedMessage<'_>,
    results: &AuthenticationResults<'_>,
    arc: &mail_auth::ArcOutput<'_>,
) -> Result<String, mail_auth::Error> {
    let set = ArcSealer::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(
            // What DKIM signs, and the DKIM signatures themselves.
            crate::dkim::SIGNED_HEADERS
                .iter()
                .copied()
                .chain(["DKIM-Signature"]),
        )
        .seal(msg, results, arc)?;
    Ok(set.to_header())
}

impl SenderAuth {
    /// The three ARC header fields (CRLF-terminated) to put on top of `message`, the copy
    /// about to be forwarded, sealed as `domain` with its stored DKIM key. `None` when the
    /// domain has no key, when sealing is off, or when the incoming chain had already failed
    /// (RFC 8617 §5.1.1: a failed chain is not sealed again).
    pub async fn arc_seal(
        &self,
        message: &[u8],
        checked: &Checked,
        store: &Store,
        domain: &str,
    ) -> Option<String> {
        if !self.config.arc_seal {
            return None;
        }
        let domain = domain.to_ascii_lowercase();
        let key = match crate::dkim::key(store, &domain).await {
            Ok(Some(k)) => k,
            _ => {
                tracing::info!(
                    domain,
                    "not ARC-sealing the forwarded message: no DKIM key for the domain (corvus dkim generate)"
                );
                return None;
            }
        };
        let msg = AuthenticatedMessage::parse(message)?;
        // The existing chain, again (its DNS records are cached from the check).
        let arc = tokio::time::timeout(
            self.config.timeout,
            self.auth.verify_arc(self.caches.params(&msg)),
        )
        .await
        .ok()?;
        if !arc.can_be_sealed() {
            tracing::info!(domain, "not ARC-sealing: the incoming chain already failed");
            return None;
        }
        let der = B64.decode(&key.private_key).ok()?;
        let sealed = if key.algorithm == "ed25519" {
            let k = Ed25519Key::from_pkcs8_der(&der).ok()?;
            seal_with(k, &domain, &key.selector, &msg, &checked.aar, &arc)
        } else {
            let pk = rustls::pki_types::PrivateKeyDer::Pkcs8(der.into());
            let k = RsaKey::<Sha256>::from_key_der(pk).ok()?;
            seal_with(k, &domain, &key.selector, &msg, &checked.aar, &arc)
        };
        match sealed {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(domain, error = %e, "ARC sealing failed");
                None
            }
        }
    }
}
