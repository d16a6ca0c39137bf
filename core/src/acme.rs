//! The server's certificate from an ACME CA (RFC 8555; `[acme]`), with instant-acme as the
//! protocol client.
//!
//! One task per process: it installs the stored certificate when it is valid for the
//! configured names, renews it at two thirds of its lifetime, and otherwise orders one,
//! answering the CA's challenge either on every TLS listener (TLS-ALPN-01, RFC 8737: a
//! certificate for the name with the key authorization's digest, given only to clients that
//! offer the `acme-tls/1` protocol) or on the `http` listener (HTTP-01:
//! `/.well-known/acme-challenge/TOKEN`, answered from the store so any node behind the same
//! name can answer). The account and the certificate live in the store's key-value area:
//! nodes sharing a store share them, and a lock there lets one node order at a time while
//! the others pick the result up. Failures are retried after 1 minute, doubling up to 6
//! hours.
//!
//! New certificates take effect at the next TLS handshake: sessions keep theirs.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use crate::config::{AcmeChallenge, Config};
use crate::store::Store;
use crate::tls::Certificates;

/// Key-value namespace of the account, the certificate and the lock.
const NS: &str = "acme";
/// Key-value namespace of HTTP-01 key authorizations, by token.
pub const HTTP_NS: &str = "acme-http";
/// How long a node may hold the ordering lock.
const LOCK_SECS: u64 = 600;
/// The first retry after a failure, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// How often the stored certificate is looked at (another node may have renewed it).
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// A certificate as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    /// PEM chain, leaf first.
    pub chain: String,
    /// PEM private key.
    pub key: String,
    /// Names it covers.
    pub domains: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity, Unix seconds.
    pub not_after: i64,
}

impl Stored {
    /// When to renew: two thirds into its lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    /// Whether it covers `names` and is still valid.
    fn usable_for(&self, names: &[String], now: i64) -> bool {
        now < self.not_after
            && names
                .iter()
                .all(|n| self.domains.iter().any(|d| d.eq_ignore_ascii_case(n)))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The names to certify: `[acme] domains`, or the hostname.
pub fn names(config: &Config) -> Vec<String> {
    if config.acme.domains.is_empty() {
        vec![config.hostname.to_ascii_lowercase()]
    } else {
        config
            .acme
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }
}

/// The validity of the first certificate of a PEM chain (Unix seconds).
pub fn validity(chain: &str) -> Result<(i64, i64), String> {
    let der = rustls_pemfile::certs(&mut chain.as_bytes())
        .next()
        .ok_or("no certificate in the chain")?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

async fn stored(store: &Store) -> Option<Stored> {
    store
        .kv_get(NS, "certificate")
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok())
}

/// Install the stored certificate when it is usable; returns it.
pub async fn install_stored(
    config: &Config,
    store: &Store,
    certs: &Certificates,
) -> Option<Stored> {
    let s = stored(store)
        .await
        .filter(|s| s.usable_for(&names(config), now()))?;
    match certs.install(&s.chain, &s.key) {
        Ok(()) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "acme: the stored certificate cannot be used");
            None
        }
    }
}

/// Run the certificate manager until `stop`.
pub fn spawn(
    config: Arc<Config>,
    store: Store,
    certs: Arc<Certificates>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut installed: Option<Stored> = None;
        let mut backoff = BACKOFF_MIN;
        let names = names(&config);
        loop {
            let wait = match step(&config, &store, &certs, &names, &mut installed).await {
                Ok(wait) => {
                    backoff = BACKOFF_MIN;
                    wait
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, directory = %config.acme.directory, "acme: could not obtain a certificate");
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    w
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// One look: install what the store has, order when it is due. Returns how long to wait.
async fn step(
    config: &Config,
    store: &Store,
    certs: &Certificates,
    names: &[String],
    installed: &mut Option<Stored>,
) -> Result<Duration, String> {
    let t = now();
    if let Some(s) = stored(store).await.filter(|s| s.usable_for(names, t)) {
        if installed.as_ref() != Some(&s) {
            certs.install(&s.chain, &s.key).map_err(|e| e.to_string())?;
            tracing::info!(domains = ?s.domains, not_after = s.not_after, "acme: certificate installed");
            *installed = Some(s.clone());
        }
        if t < s.renew_at() {
            let until = Duration::from_secs((s.renew_at() - t) as u64);
            return Ok(until.min(CHECK_EVERY));
        }
        tracing::info!(domains = ?s.domains, not_after = s.not_after, "acme: renewing the certificate");
    }
    // One node orders; the others wait for its result.
    let holders = store
        .kv_incr(NS, "lock", 1, Some(LOCK_SECS))
        .await
        .map_err(|e| e.to_string())?;
    if holders > 1 {
        tracing::info!("acme: another node is ordering the certificate; waiting for it");
        return Ok(Duration::from_secs(30));
    }
    let result = async {
        let s = order(config, store, certs, names).await?;
        // Stored before the lock goes, so a node that takes it next finds the certificate.
        let v = serde_json::to_vec(&s).map_err(|e| e.to_string())?;
        store
            .kv_set(NS, "certificate", &v, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Stored, String>(s)
    }
    .await;
    let _ = store.kv_delete(NS, "lock").await;
    let s = result?;
    certs.install(&s.chain, &s.key).map_err(|e| e.to_string())?;
    tracing::info!(domains = ?s.domains, not_before = s.not_before, not_after = s.not_after, "acme: certificate obtained and installed");
    let wait = Duration::from_secs((s.renew_at() - now()).max(1) as u64);
    *installed = Some(s);
    Ok(wait.min(CHECK_EVERY))
}

/// The account, from the store or registered now.
async fn account(config: &Config, store: &Store) -> Result<Account, String> {
    let key = format!("account:{}", config.acme.directory);
    let http = || -> Box<dyn HttpClient> {
        Box::new(Client {
            trust_roots: config.tls.trust_roots.clone(),
        })
    };
    if let Some(v) = store.kv_get(NS, &key).await.map_err(|e| e.to_string())?
        && let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&v)
    {
        return Account::builder_with_http(http())
            .from_credentials(creds)
            .await
            .map_err(|e| format!("account: {e}"));
    }
    let contact = config.acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http())
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.acme.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("registering an account at {}: {e}", config.acme.directory))?;
    let v = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    store
        .kv_set(NS, &key, &v, None)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(directory = %config.acme.directory, "acme: account registered");
    Ok(account)
}

/// Order a certificate for `names`, answering the challenges.
async fn order(
    config: &Config,
    store: &Store,
    certs: &Certificates,
    names: &[String],
) -> Result<Stored, String> {
    let account = account(config, store).await?;
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match config.acme.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut answered: Vec<(String, String)> = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let name = challenge.identifier().to_string();
            let key_auth = challenge.key_authorization();
            match kind {
                ChallengeType::Http01 => {
                    store
                        .kv_set(
                            HTTP_NS,
                            &challenge.token,
                            key_auth.as_str().as_bytes(),
                            Some(3600),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    answered.push(("http".into(), challenge.token.clone()));
                }
                _ => {
                    let (chain, key) = alpn_certificate(&name, key_auth.digest().as_ref())?;
                    certs
                        .set_challenge(&name, Some((&chain, &key)))
                        .map_err(|e| e.to_string())?;
                    answered.push(("alpn".into(), name.clone()));
                }
            }
            tracing::info!(name, challenge = ?kind, "acme: challenge ready");
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "the CA did not validate the names ({status:?}){}",
                order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            ));
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalizing: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("fetching the certificate: {e}"))?;
        Ok((chain, key))
    }
    .await;
    for (kind, what) in answered {
        if kind == "http" {
            let _ = store.kv_delete(HTTP_NS, &what).await;
        } else {
            let _ = certs.set_challenge(&what, None);
        }
    }
    let (chain, key) = result?;
    let (not_before, not_after) = validity(&chain)?;
    Ok(Stored {
        chain,
        key,
        domains: names.to_vec(),
        not_before,
        not_after,
    })
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, the name as its only
/// SAN, the key authorization's SHA-256 in the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<(String, String), String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The HTTP client of the ACME exchanges: HTTPS only, verified against the system roots and
/// `[tls] trust_roots`, one connection per request, 30 s and 1 MiB per answer.
struct Client {
    trust_roots: Option<std::path::PathBuf>,
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>,
    > {
        let roots = self.trust_roots.clone();
        Box::pin(async move {
            let other = |e: String| instant_acme::Error::Other(e.into());
            tokio::time::timeout(
                Duration::from_secs(30),
                crate::https::send(roots.as_deref(), req, 1 << 20),
            )
            .await
            .map_err(|_| other("no answer within 30 s".into()))?
            .map(|(parts, body)| BytesResponse {
                parts,
                body: Box::new(body),
            })
            .map_err(|e| other(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_and_names_must_all_be_covered() {
        let s = Stored {
            chain: String::new(),
            key: String::new(),
            domains: vec!["mail.example.org".into(), "mta-sts.example.org".into()],
            not_before: 1000,
            not_after: 1900,
        };
        assert_eq!(s.renew_at(), 1600);
        assert!(s.usable_for(&["MAIL.example.org".into()], 1899));
        assert!(!s.usable_for(&["mail.example.org".into()], 1900));
        assert!(!s.usable_for(&["other.example.org".into()], 1000));
    }

    #[test]
    fn challenge_certificates_carry_the_digest_and_the_validity_is_read() {
        let (chain, key) = alpn_certificate("mail.example.org", &[7u8; 32]).unwrap();
        assert!(chain.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        let der = rustls_pemfile::certs(&mut chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        // id-pe-acmeIdentifier, critical, holding an OCTET STRING of the digest.
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32]);
        let (nb, na) = validity(&chain).unwrap();
        assert!(na > nb);
    }
}
