//! IMAP server (in progress).

pub mod session;
