//! POP3 server (in progress).

pub mod session;
