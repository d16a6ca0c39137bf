//! IMAP server (IMAP4rev2, RFC 9051, and IMAP4rev1, RFC 3501, with the extensions clients
//! use): `codec` frames and parses commands without I/O, `mime` computes structure and
//! sections, `search` evaluates SEARCH, `sort` orders and threads
//! messages (SORT, THREAD) on the header keys `sort_keys` reads and caches, `mutf7` converts modified UTF-7 mailbox names, `url` parses
//! the IMAP URLs CATENATE uses,
//! `view` is a session's compact view of its selected mailbox, `session` is the tokio loop
//! and command handlers.

pub mod cmd;
pub mod codec;
pub mod esearch;
pub mod fetch_response;
pub mod list;
pub mod mime;
pub mod mutf7;
pub mod response;
pub mod search;
pub mod selected;
pub mod seqset;
pub mod session;
pub mod sort;
pub mod sort_keys;
pub mod state;
pub mod sync;
#[cfg(test)]
mod transcripts;
pub mod types;
pub mod url;
pub mod view;
