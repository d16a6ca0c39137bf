//! Milter client (Sendmail/Postfix milter protocol version 6, the MTA side), issue 24.
//!
//! [`codec`] is sans-I/O: commands to bytes, bytes to replies, and the option negotiation.
//! The session state machine and the tokio driver come on top of it and own no byte layouts.

mod client;
pub mod codec;
mod engine;

pub use engine::MilterHook;

#[cfg(test)]
mod tests;
