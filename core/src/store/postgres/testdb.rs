//! A throwaway PostgreSQL server for tests: started once per test process from the
//! installed server binaries (initdb into a temporary directory, `postgres` listening on a
//! Unix socket there only, as the unprivileged `postgres` user when the tests run as
//! root), a fresh database per test ([`database`]), and stopped with its directory removed
//! when the test process ends, however it ends.
//!
//! No server installed is a failure, not a skip: the message names the package.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The running server: its socket directory, and the supervising shell whose standard input
/// we hold (when this process ends, the pipe closes and the shell stops the server).
struct Server {
    dir: PathBuf,
    _supervisor: Child,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static CREATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The connection string of a new, empty database on the test server.
pub(crate) async fn database() -> String {
    let dir = &SERVER.get_or_init(start).dir;
    let name = format!("corvus_test_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    // CREATE DATABASE copies template1 and refuses while another one copies it.
    let _one = CREATE.lock().await;
    let admin = format!("host={} user=postgres dbname=postgres", dir.display());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    drop(client);
    let _ = conn.await;
    format!("host={} user=postgres dbname={name}", dir.display())
}

/// The directory of the server binaries: `CORVUS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORVUS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: the PostgreSQL backend's tests start a server of \
             their own from its binaries (/usr/lib/postgresql/<version>/bin, or set \
             CORVUS_PG_BIN). Install the Debian package `postgresql` (tests/run does)."
        ),
    }
}

/// `program args…`, as the `postgres` user when we are root (initdb and the server refuse
/// to run as root).
fn command(program: &Path, args: &[&str]) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn start() -> Server {
    let bin = bin_dir();
    let dir = std::env::temp_dir().join(format!(
        "corvus-pg-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).expect("create the test server's directory");
    if rustix::process::geteuid().is_root() {
        let ok = Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "chown postgres {} (is there a postgres user?)",
            dir.display()
        );
    }
    let data = dir.join("data");
    let d = dir.to_str().expect("utf-8 temp dir");
    let data_s = data.to_str().expect("utf-8 temp dir");
    let out = command(
        &bin.join("initdb"),
        &[
            "-D",
            data_s,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
    )
    .output()
    .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The shell stops the server when its standard input closes (this process ended), then
    // removes the directory.
    let script = format!(
        "'{postgres}' -D '{data_s}' -k '{d}' -c listen_addresses= -c fsync=off \
         -c synchronous_commit=on -c full_page_writes=off -c max_connections=300 \
         >'{d}/log' 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf '{d}'",
        postgres = bin.join("postgres").display(),
    );
    let supervisor = command(Path::new("/bin/sh"), &["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the test PostgreSQL server");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", d, "-U", "postgres"])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test PostgreSQL server did not start: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Server {
        dir,
        _supervisor: supervisor,
    }
}
