//! The control socket: a Unix socket in data_dir through which CLI commands reach a running
//! server (sled lets one process open the store). One JSON request line, one JSON reply line.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminCommand, execute};
use crate::store::Store;

/// Reply on the control socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Output or error text.
    pub text: String,
}

/// Reloads what a running server can reload (hook scripts); `Ok` text or `Err` problems.
pub type Reloader = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serve the control socket until `stop` fires.
pub async fn serve(
    path: &Path,
    store: Store,
    domains: Vec<String>,
    stop: CancellationToken,
    queue_wakeup: std::sync::Arc<tokio::sync::Notify>,
    reload: Reloader,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let path = path.to_path_buf();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let store = store.clone();
                    let domains = domains.clone();
                    let reload = reload.clone();
                    let wake = queue_wakeup.clone();
                    tokio::spawn(async move {
                        let _ = handle(stream, store, domains, reload).await;
                        // Queue commands may have made messages due now.
                        wake.notify_one();
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn handle(
    stream: UnixStream,
    store: Store,
    domains: Vec<String>,
    reload: Reloader,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(1 << 20).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<AdminCommand>(&line) {
        Ok(AdminCommand::Reload) => {
            tracing::info!(cmd = "reload", "control command");
            match tokio::task::spawn_blocking(move || reload()).await {
                Ok(Ok(text)) => ControlReply { ok: true, text },
                Ok(Err(text)) => ControlReply { ok: false, text },
                Err(e) => ControlReply {
                    ok: false,
                    text: format!("internal error: {e}"),
                },
            }
        }
        Ok(cmd) => {
            tracing::info!(cmd = %command_name(&cmd), "control command");
            match tokio::task::spawn_blocking(move || execute(&store, &domains, cmd)).await {
                Ok(Ok(text)) => ControlReply { ok: true, text },
                Ok(Err(e)) => ControlReply {
                    ok: false,
                    text: e.to_string(),
                },
                Err(e) => ControlReply {
                    ok: false,
                    text: format!("internal error: {e}"),
                },
            }
        }
        Err(e) => ControlReply {
            ok: false,
            text: format!("bad control request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await
}

fn command_name(cmd: &AdminCommand) -> String {
    serde_json::to_value(cmd)
        .ok()
        .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Send one command to a running server. `Ok(None)` when no server listens on `path`.
pub async fn send(path: &Path, cmd: &AdminCommand) -> std::io::Result<Option<ControlReply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut req = serde_json::to_vec(cmd)?;
    req.push(b'\n');
    w.write_all(&req).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(Some(serde_json::from_str(&line)?))
}
