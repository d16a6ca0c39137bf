//! POP3 server (RFC 1939 with CAPA, RFC 2449; STLS, RFC 2595; AUTH PLAIN, RFC 5034).
//!
//! Layout: [`codec`] parses command lines and writes responses without I/O; [`maildrop`]
//! is the per-session INBOX snapshot with its deletion marks;
//! [`session`] is the tokio loop that moves bytes, TLS included.
//!
//! Architecture invariant: messages marked with DELE are removed only in the UPDATE state
//! after QUIT, and `+OK` to that QUIT is sent only once the removal is on disk.

pub mod codec;
pub mod maildrop;
pub mod session;
