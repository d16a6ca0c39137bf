//! DANE for SMTP (RFC 7672): TLSA records, published under DNSSEC at `_25._tcp.<mx>`, make
//! TLS to that MX host mandatory and say which certificate it must present.
//!
//! Usable records (§3.1): DANE-EE (usage 3: the server's own certificate or key; its name and
//! dates are not checked) and DANE-TA (usage 2: a CA certificate or key in the chain the
//! server sends, from which the chain must verify for the MX name); selectors 0 (whole
//! certificate) and 1 (SubjectPublicKeyInfo); matching types 0 (exact), 1 (SHA-256) and 2
//! (SHA-512). PKIX usages 0 and 1 are unusable for SMTP and ignored.
//!
//! Here: the record model, matching, and the rustls verifier the SMTP client uses; the
//! DNSSEC lookups are in `dns.rs`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// One TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage (2 DANE-TA, 3 DANE-EE).
    pub usage: u8,
    /// 0 whole certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether RFC 7672 §3.1 lets SMTP use it.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether certificate `der` matches this record's selector and matching type.
    pub fn matches(&self, der: &[u8]) -> bool {
        let selected = match self.selector {
            0 => der.to_vec(),
            1 => match spki(der) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
            _ => return false,
        };
        digest == self.data
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// Verifies a server's chain against a usable TLSA RRset (never the system roots).
#[derive(Debug)]
pub struct Verifier {
    records: Vec<Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Verifier {
    /// A verifier for the usable records among `records`.
    pub fn new(records: &[Tlsa]) -> Verifier {
        Verifier {
            records: records.iter().filter(|r| r.usable()).cloned().collect(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// Whether `chain` (leaf first) satisfies a record, for `name`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        // DANE-EE: the leaf itself; name and validity dates do not matter (§3.1.1).
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && r.matches(end_entity))
        {
            return Ok(());
        }
        // DANE-TA: a certificate the server sent is the trust anchor; the chain must verify
        // from it for the MX name (§3.1.2).
        for ta in intermediates {
            if !self.records.iter().any(|r| r.usage == 2 && r.matches(ta)) {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(ta.clone()).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            return verifier
                .verify_server_cert(end_entity, intermediates, name, &[], now)
                .map(|_| ())
                .map_err(|e| {
                    format!("DANE-TA: the chain does not verify from the TLSA trust anchor: {e}")
                });
        }
        Err(format!(
            "no TLSA record matches the certificate ({} usable record(s))",
            self.records.len()
        ))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        (c.der().clone(), key)
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn dane_ee_matches_the_leaf_whatever_its_name() {
        let (leaf, _) = cert(&["other.example"]);
        let spki = spki(&leaf).unwrap();
        let name = ServerName::try_from("mx.b.test").unwrap();
        for r in [
            Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: sha256(&spki),
            },
            Tlsa {
                usage: 3,
                selector: 0,
                matching: 1,
                data: sha256(&leaf),
            },
            Tlsa {
                usage: 3,
                selector: 0,
                matching: 0,
                data: leaf.to_vec(),
            },
        ] {
            assert!(r.usable());
            let v = Verifier::new(std::slice::from_ref(&r));
            assert!(v.check(&leaf, &[], &name, UnixTime::now()).is_ok(), "{r:?}");
        }
        let wrong = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        };
        let v = Verifier::new(&[wrong]);
        let e = v.check(&leaf, &[], &name, UnixTime::now()).unwrap_err();
        assert!(e.contains("no TLSA record matches"), "{e}");
        // PKIX usages and bad lengths are unusable, so nothing matches.
        let pkix = Tlsa {
            usage: 1,
            selector: 1,
            matching: 1,
            data: sha256(&spki),
        };
        assert!(!pkix.usable());
        assert!(
            !Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![1; 31]
            }
            .usable()
        );
        assert!(
            Verifier::new(&[pkix])
                .check(&leaf, &[], &name, UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn dane_ta_needs_the_chain_to_verify_for_the_name() {
        // A CA and a leaf for mx.b.test signed by it.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test TA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.b.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let r = Tlsa {
            usage: 2,
            selector: 1,
            matching: 1,
            data: sha256(&spki(ca.der()).unwrap()),
        };
        let v = Verifier::new(&[r]);
        let chain = [ca.der().clone()];
        let ok = ServerName::try_from("mx.b.test").unwrap();
        let other = ServerName::try_from("mx.c.test").unwrap();
        assert!(v.check(leaf.der(), &chain, &ok, UnixTime::now()).is_ok());
        assert!(
            v.check(leaf.der(), &chain, &other, UnixTime::now())
                .is_err()
        );
        // Without the TA in the chain it cannot match.
        assert!(v.check(leaf.der(), &[], &ok, UnixTime::now()).is_err());
    }
}
