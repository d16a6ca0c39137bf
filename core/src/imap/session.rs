//! IMAP session loop.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::server::Shared;

/// Serve one connection. `implicit_tls` for the TLS-only listener.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: &'static str,
    implicit_tls: bool,
) {
    let _ = (shared, tcp, peer, listener, implicit_tls);
}
