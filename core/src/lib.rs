//! Corvus: a mail server framework. SMTP in, durable store, IMAP/POP3 out, hooks everywhere.
//!
//! Code map (ARCHITECTURE.md has the long one): [`config`] (figment settings), [`store`] (the
//! storage traits, the sled and memory backends, the metadata cache layer), [`delivery`]
//! (the one path from an accepted message to the store), [`blocking`] (async calls from
//! synchronous code), [`accounts`] and [`admin`] (users, domains, aliases), [`control`]
//! (CLI ↔ server socket), [`listener`] (the kinds of listener), [`tls`], [`dns`], [`net`]
//! (streams and limits), [`session`] (the session kit every protocol uses), [`login`] (the
//! one login path) and [`sasl`] (SASL responses), [`hooks`] (Rhai scripts and WASM plugins
//! behind one contract), [`routing`] (recipients), [`sender_auth`] (SPF/DKIM/DMARC/ARC of
//! inbound mail), [`smtp`], [`imap`] and [`pop3`] (protocols, one file per command family),
//! [`queue`] (outbound delivery), [`mailbox_io`] (Maildir and mbox import and export),
//! [`server`] (listeners, each session kind's dependencies, lifecycle).

pub mod accounts;
pub mod acme;
pub mod admin;
pub mod api_tokens;
pub mod autoconfig;
pub mod bench;
pub mod blocking;
pub mod config;
pub mod control;
pub mod dane;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod dns_records;
pub mod hooks;
pub mod http;
pub mod https;
pub mod imap;
pub mod ipnet;
pub mod listener;
pub mod logging;
pub mod login;
pub mod mailbox_io;
pub mod managesieve;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod mta_sts;
pub mod net;
pub mod pop3;
pub mod queue;
pub mod routing;
pub mod sasl;
pub mod sender_auth;
pub mod server;
pub mod session;
pub mod sieve;
pub mod smtp;
pub mod store;
#[cfg(test)]
mod test_dns;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod tls_report;
pub mod trace;
pub mod ttl_cache;
