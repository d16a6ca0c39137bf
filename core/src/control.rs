//! The control socket: a Unix socket in data_dir through which CLI commands reach a running
//! server (sled lets one process open the store). One JSON request line; zero or more
//! progress lines (`"progress": true`) from long commands; one JSON reply line.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminCommand, execute_with_progress};
use crate::store::Store;

/// Reply on the control socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Output or error text.
    pub text: String,
    /// An interim progress line; the final reply follows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
}

impl ControlReply {
    fn done(ok: bool, text: String) -> Self {
        ControlReply {
            ok,
            text,
            progress: false,
        }
    }
}

/// Reloads what a running server can reload (hook scripts); `Ok` text or `Err` problems.
pub type Reloader = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serve the control socket until `stop` fires.
pub async fn serve(
    path: &Path,
    store: Store,
    config: std::sync::Arc<crate::config::Config>,
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
                    let config = config.clone();
                    let reload = reload.clone();
                    let wake = queue_wakeup.clone();
                    tokio::spawn(async move {
                        let _ = handle(stream, store, config, reload).await;
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
    config: std::sync::Arc<crate::config::Config>,
    reload: Reloader,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(1 << 20).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<AdminCommand>(&line) {
        Ok(AdminCommand::Reload) => {
            tracing::info!(cmd = "reload", "control command");
            match tokio::task::spawn_blocking(move || reload()).await {
                Ok(Ok(text)) => ControlReply::done(true, text),
                Ok(Err(text)) => ControlReply::done(false, text),
                Err(e) => ControlReply::done(false, format!("internal error: {e}")),
            }
        }
        Ok(cmd) => {
            tracing::info!(cmd = %command_name(&cmd), "control command");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let store2 = store.clone();
            let task = tokio::task::spawn_blocking(move || {
                execute_with_progress(&store2, &config, cmd, &mut |line| {
                    let _ = tx.send(line.to_string());
                })
            });
            // Forward progress until the command is done (its sender is then dropped). A
            // client that went away does not stop the command.
            let mut client_gone = false;
            while let Some(text) = rx.recv().await {
                tracing::info!(progress = %text, "control command");
                if !client_gone {
                    let r = ControlReply {
                        ok: true,
                        text,
                        progress: true,
                    };
                    client_gone = write_reply(&mut w, &r).await.is_err();
                }
            }
            match task.await {
                // Changes made for the CLI are durable before it hears about them.
                Ok(Ok(text)) => match store.commit().await {
                    Ok(()) => ControlReply::done(true, text),
                    Err(e) => ControlReply::done(false, e.to_string()),
                },
                Ok(Err(e)) => ControlReply::done(false, e.to_string()),
                Err(e) => ControlReply::done(false, format!("internal error: {e}")),
            }
        }
        Err(e) => ControlReply::done(false, format!("bad control request: {e}")),
    };
    write_reply(&mut w, &reply).await
}

async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &ControlReply,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(reply)?;
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
    send_with_progress(path, cmd, &mut |_| {}).await
}

/// [`send`], handing each progress line of a long command to `on_progress`.
pub async fn send_with_progress(
    path: &Path,
    cmd: &AdminCommand,
    on_progress: &mut dyn FnMut(&str),
) -> std::io::Result<Option<ControlReply>> {
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
    let mut reader = BufReader::new(r);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the control connection without a reply",
            ));
        }
        let reply: ControlReply = serde_json::from_str(&line)?;
        if reply.progress {
            on_progress(&reply.text);
        } else {
            return Ok(Some(reply));
        }
    }
}
