//! SMTP server (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES,
//! LIMITS, CHUNKING, DSN, STARTTLS, AUTH): `codec` and `data` parse bytes without I/O,
//! `session` is the tokio loop around them, `reply` is the one reply type, `trace_headers`
//! builds the fields added to accepted mail.

pub mod auth;
pub mod codec;
pub mod data;
pub mod ehlo;
pub mod end_of_data;
pub mod mail;
pub mod rcpt;
pub mod reply;
pub mod session;
pub mod trace_headers;
#[cfg(test)]
mod transcripts;
