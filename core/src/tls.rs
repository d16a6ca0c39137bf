//! TLS for every listener: load the configured PEM files or generate a self-signed certificate
//! (rcgen) into `data_dir/tls/` on first start and reuse it afterwards (a year's validity,
//! made anew at a start when less than a month is left).
//!
//! Each protocol has its own acceptor that announces its ALPN identifier (`smtp`, `imap`,
//! `pop3`): a client that offers ALPN without that identifier (a browser offering `http/1.1`,
//! the ALPACA cross-protocol attack) fails the handshake (RFC 7301 §3.2,
//! `no_application_protocol`); a client that offers no ALPN is served as before.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Errors while preparing TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file held no usable PEM item.
    #[error("{0}: no {1} found in PEM file")]
    Empty(PathBuf, &'static str),
    /// rustls refused the pair.
    #[error("TLS certificate/key rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The certificate every listener presents, swapped at run time without dropping sessions
/// (ACME renewals: new handshakes get the new one), and the TLS-ALPN-01 challenge
/// certificates (RFC 8737) presented to a client that offers only `acme-tls/1`.
#[derive(Debug)]
pub struct Certificates {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    challenges:
        std::sync::Mutex<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl Certificates {
    fn new(key: Arc<rustls::sign::CertifiedKey>) -> Self {
        Certificates {
            current: std::sync::RwLock::new(key),
            challenges: Default::default(),
        }
    }

    /// Present `chain` (PEM, leaf first) with `key` (PEM) from the next handshake on.
    pub fn install(&self, chain: &str, key: &str) -> Result<(), TlsError> {
        let ck = certified_key(chain.as_bytes(), key.as_bytes(), Path::new("(store)"))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// Answer TLS-ALPN-01 for `domain` with `chain`/`key` (PEM); `None` removes it.
    pub fn set_challenge(&self, domain: &str, cert: Option<(&str, &str)>) -> Result<(), TlsError> {
        let mut map = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        match cert {
            Some((chain, key)) => {
                let ck = challenge_key(chain.as_bytes(), key.as_bytes())?;
                map.insert(domain.to_ascii_lowercase(), Arc::new(ck));
            }
            None => {
                map.remove(&domain.to_ascii_lowercase());
            }
        }
        Ok(())
    }

    /// The leaf certificate presented now (DER).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .first()
            .cloned()
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only the challenge certificate, and only for the name asked (RFC 8737 §3).
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A certificate chain and key from PEM, checked to belong together.
fn certified_key(
    chain: &[u8],
    key: &[u8],
    path: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let certs = rustls_pemfile::certs(&mut &chain[..])
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(io(path))?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf(), "certificate"));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
        .map_err(io(path))?
        .ok_or_else(|| TlsError::Empty(path.to_path_buf(), "private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = rustls::sign::CertifiedKey::from_der(certs, key_der, &provider)?;
    Ok(ck)
}

/// [`certified_key`] for a TLS-ALPN-01 challenge certificate, whose critical acmeIdentifier
/// extension the consistency check's certificate parser refuses; it is made by Corvus with
/// its own key, so there is nothing to check.
fn challenge_key(chain: &[u8], key: &[u8]) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let path = Path::new("(acme challenge)");
    let certs = rustls_pemfile::certs(&mut &chain[..])
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(io(path))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
        .map_err(io(path))?
        .ok_or_else(|| TlsError::Empty(path.to_path_buf(), "private key"))?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key_der)?;
    Ok(rustls::sign::CertifiedKey::new(certs, signer))
}

/// The TLS acceptors of the listeners, one per protocol (they differ in ALPN only).
#[derive(Clone)]
pub struct Acceptors {
    /// smtp (STARTTLS), submission (STARTTLS), submissions (implicit TLS).
    pub smtp: TlsAcceptor,
    /// imap (STARTTLS), imaps.
    pub imap: TlsAcceptor,
    /// pop3 (STLS), pop3s.
    pub pop3: TlsAcceptor,
    /// managesieve (STARTTLS; no ALPN id is registered for it).
    pub managesieve: TlsAcceptor,
    /// The `https` listener (HTTP/1.1).
    pub http: TlsAcceptor,
    /// The certificate they all present.
    pub certificates: Arc<Certificates>,
}

/// Build the acceptors from the configured or generated certificate.
pub fn acceptors(config: &Config) -> Result<Acceptors, TlsError> {
    let (cert, key) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => self_signed(config)?,
    };
    let chain = std::fs::read(&cert).map_err(io(&cert))?;
    let key_pem = std::fs::read(&key).map_err(io(&key))?;
    // The chain's errors name the certificate file, the key's the key file.
    if rustls_pemfile::certs(&mut &chain[..]).next().is_none() {
        return Err(TlsError::Empty(cert, "certificate"));
    }
    if !matches!(rustls_pemfile::private_key(&mut &key_pem[..]), Ok(Some(_))) {
        return Err(TlsError::Empty(key, "private key"));
    }
    let certificates = Arc::new(Certificates::new(Arc::new(certified_key(
        &chain, &key_pem, &cert,
    )?)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    // TLS-ALPN-01 validation comes to any TLS listener (RFC 8737 §3); the resolver gives
    // such a client the challenge certificate only.
    let acme =
        config.acme.enabled() && config.acme.challenge == crate::config::AcmeChallenge::TlsAlpn01;
    let with_alpn = |id: &[u8]| {
        let mut c = server.clone();
        c.alpn_protocols = vec![id.to_vec()];
        if acme {
            c.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        TlsAcceptor::from(Arc::new(c))
    };
    Ok(Acceptors {
        smtp: with_alpn(b"smtp"),
        imap: with_alpn(b"imap"),
        pop3: with_alpn(b"pop3"),
        managesieve: {
            let mut c = server.clone();
            if acme {
                c.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            }
            TlsAcceptor::from(Arc::new(c))
        },
        http: with_alpn(b"http/1.1"),
        certificates,
    })
}

/// Validity of a generated certificate.
const SELF_SIGNED_DAYS: i64 = 365;
/// A generated certificate with less than this left is made anew at start.
const RENEW_DAYS: i64 = 30;

/// Paths of the generated certificate, creating it when missing, when it expires within
/// [`RENEW_DAYS`], or when it was made by a Corvus that did not record its expiry (those
/// were valid from 1975 to 4096 and named "rcgen self signed cert").
fn self_signed(config: &Config) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = config.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let expires_file = dir.join("cert.expires");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expires = std::fs::read_to_string(&expires_file)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    let fresh = expires.is_some_and(|e| e - now > RENEW_DAYS * 86_400);
    if cert.is_file() && key.is_file() && fresh {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let existed = cert.is_file();
    let mut names = vec![config.hostname.clone()];
    names.extend(config.domains.iter().cloned());
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, config.hostname.clone());
    let not_after = now + SELF_SIGNED_DAYS * 86_400;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    // A day back, for clients whose clocks run a little behind.
    params.not_before = at(now - 86_400);
    params.not_after = at(not_after);
    let signing_key = rcgen::KeyPair::generate()?;
    let generated = params.self_signed(&signing_key)?;
    write_private(&key, signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.pem()).map_err(io(&cert))?;
    std::fs::write(&expires_file, format!("{not_after}\n")).map_err(io(&expires_file))?;
    match expires {
        None if existed => {
            tracing::info!(cert = %cert.display(), days = SELF_SIGNED_DAYS, "replaced the old self-signed TLS certificate")
        }
        Some(_) => {
            tracing::info!(cert = %cert.display(), days = SELF_SIGNED_DAYS, "renewed the self-signed TLS certificate")
        }
        None => {
            tracing::info!(cert = %cert.display(), days = SELF_SIGNED_DAYS, "generated a self-signed TLS certificate")
        }
    }
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))
}

/// The roots outbound TLS is verified against: the compiled-in Mozilla set, the system's
/// bundle (`/etc/ssl/certs/ca-certificates.crt`, or `SSL_CERT_FILE`) and `[tls] trust_roots`.
/// Read once, at the first outbound connection.
pub fn outbound_roots(trust_roots: Option<&std::path::Path>) -> Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let system = std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
            for path in std::iter::once(system.as_path()).chain(trust_roots) {
                let Ok(pem) = std::fs::read(path) else {
                    if Some(path) == trust_roots {
                        tracing::error!(path = %path.display(), "tls.trust_roots: cannot read the file; its roots are not trusted");
                    }
                    continue;
                };
                let mut reader = pem.as_slice();
                let certs = rustls_pemfile::certs(&mut reader).filter_map(Result::ok);
                let (added, ignored) = roots.add_parsable_certificates(certs);
                tracing::debug!(path = %path.display(), added, ignored, "outbound TLS roots");
            }
            Arc::new(roots)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_is_valid_for_a_year_and_renewed_near_expiry() {
        let d = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: d.path().to_path_buf(),
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        let (cert, _) = self_signed(&config).unwrap();
        let pem = std::fs::read_to_string(&cert).unwrap();
        let expires: i64 = std::fs::read_to_string(d.path().join("tls/cert.expires"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((expires - now - 365 * 86_400).abs() < 60, "{expires} {now}");
        // Reused while fresh.
        self_signed(&config).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
        // Made anew when it expires within a month.
        std::fs::write(
            d.path().join("tls/cert.expires"),
            format!("{}", now + 86_400),
        )
        .unwrap();
        self_signed(&config).unwrap();
        assert_ne!(std::fs::read_to_string(&cert).unwrap(), pem);
        assert!(acceptors(&config).is_ok());
    }
}
