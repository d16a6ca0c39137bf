//! A DNS server on loopback for unit tests (the real resolver queries it over UDP): answers
//! from a zone the test fills, NXDOMAIN with an SOA for unknown names, and counts queries.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, PTR, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record};

/// name (lower case, trailing dot) → records.
type Zone = Arc<Mutex<HashMap<String, Vec<RData>>>>;

pub struct TestDns {
    /// Where it listens.
    pub addr: SocketAddr,
    zone: Zone,
    queries: Arc<Mutex<usize>>,
}

impl TestDns {
    /// Start serving on a fresh port.
    pub fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let zone: Zone = Default::default();
        let queries = Arc::new(Mutex::new(0usize));
        let (z, q) = (zone.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                *q.lock().unwrap() += 1;
                let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
                resp.metadata.recursion_desired = req.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                for query in &req.queries {
                    resp.add_query(query.clone());
                    let name = query.name().to_ascii().to_lowercase();
                    let zone = z.lock().unwrap();
                    match zone.get(&name) {
                        None => resp.metadata.response_code = ResponseCode::NXDomain,
                        Some(records) => {
                            for r in records {
                                if r.record_type() == query.query_type() {
                                    resp.add_answer(Record::from_rdata(
                                        query.name().clone(),
                                        300,
                                        r.clone(),
                                    ));
                                }
                            }
                        }
                    }
                    if resp.answers.is_empty() {
                        // As a real server does: the SOA makes the negative answer cacheable.
                        let root = Name::root();
                        let soa = SOA::new(root.clone(), root.clone(), 1, 3600, 600, 86400, 300);
                        resp.add_authority(Record::from_rdata(root, 300, RData::SOA(soa)));
                    }
                }
                if let Ok(v) = resp.to_vec() {
                    let _ = sock.send_to(&v, peer);
                }
            }
        });
        TestDns {
            addr,
            zone,
            queries,
        }
    }

    fn key(name: &str) -> String {
        format!("{}.", name.trim_end_matches('.').to_lowercase())
    }

    /// Add a TXT record (split into 255-byte strings).
    pub fn txt(&self, name: &str, text: &str) {
        let chunks = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        self.zone
            .lock()
            .unwrap()
            .entry(Self::key(name))
            .or_default()
            .push(RData::TXT(TXT::new(chunks)));
    }

    /// Add an A record.
    pub fn a(&self, name: &str, ip: &str) {
        self.zone
            .lock()
            .unwrap()
            .entry(Self::key(name))
            .or_default()
            .push(RData::A(A(ip.parse().unwrap())));
    }

    /// Add an MX record (preference 10).
    pub fn mx(&self, name: &str, exchange: &str) {
        self.zone
            .lock()
            .unwrap()
            .entry(Self::key(name))
            .or_default()
            .push(RData::MX(hickory_resolver::proto::rr::rdata::MX::new(
                10,
                Name::from_ascii(exchange).unwrap(),
            )));
    }

    /// Add a PTR record for `ip` naming `name`.
    pub fn ptr(&self, ip: std::net::IpAddr, name: &str) {
        let rev = hickory_resolver::proto::rr::Name::from(ip)
            .to_ascii()
            .to_lowercase();
        self.zone
            .lock()
            .unwrap()
            .entry(Self::key(&rev))
            .or_default()
            .push(RData::PTR(PTR(Name::from_ascii(name).unwrap())));
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        *self.queries.lock().unwrap()
    }
}
