//! ManageSieve (RFC 5804): users upload, check and activate their Sieve filters from their
//! mail clients. [`codec`] is the sans-I/O command parser and response writer; [`session`]
//! drives it over a connection, storing scripts through `crate::sieve::storage`.

pub mod codec;
pub mod session;
