//! The `corvus` command line.

use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use corvus::admin::{AdminCommand, execute_with_progress};
use corvus::config::{Config, HookKind, LogFormat};
use corvus::mailbox_io::Format;

/// mimalloc instead of glibc's malloc: a sixth to a third less CPU per SMTP message and a faster
/// plugin path (BENCHMARKS.md, "The allocator"). Built without transparent huge pages
/// (`no_thp`): with them, every fresh arena page fault cleared 2 MiB, and the base RSS tripled.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Corvus: a mail server (SMTP, submission, IMAP, POP3) you extend with Rhai scripts and
/// WASM plugins.
///
/// Start with `corvus serve` (no config file: loopback listeners on ports 2525/2587/2465/…,
/// data in ./corvus-data), then `corvus user add alice@localhost --password secret`.
/// Administrative commands work whether or not the server is running: they go through the
/// server's control socket when it runs, and open the store directly when it does not.
#[derive(Parser)]
#[command(name = "corvus", version, about, long_about)]
struct Cli {
    /// Config file (TOML). Without it, the embedded loopback defaults are used.
    /// Environment variables CORVUS_<KEY> (CORVUS_LISTEN__SMTP=…) override both.
    /// For `script test` it may instead be the script's config table as JSON ('{"delay":"1s"}').
    #[arg(short, long, global = true, env = "CORVUS_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT (then finish sessions and flush the store).
    Serve,
    /// Validate the configuration and everything it references; print one line per problem.
    Check,
    /// The store itself: the PostgreSQL schema, and moving a sled store into PostgreSQL.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage local domains.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Manage aliases (an address that delivers to one or more other addresses).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Look into an account's mailboxes, and copy its mail to or from Maildir and mbox
    /// (works while the server runs).
    #[command(subcommand)]
    Mailbox(MailboxCmd),
    /// Inspect and manage the outbound queue (works while the server runs).
    #[command(subcommand)]
    Queue(QueueCmd),
    /// DKIM signing keys for outbound mail.
    #[command(subcommand)]
    Dkim(DkimCmd),
    /// Tokens for the admin HTTP API and web console (`Authorization: Bearer <token>`).
    #[command(subcommand)]
    Token(TokenCmd),
    /// DNS: the records to publish for a local domain.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// The story of one message: connection, every hook's verdict and why, sender
    /// authentication, spam score, where each copy was filed, every delivery attempt.
    ///
    /// With ID (the queue id from "250 … queued as ID", or the Message-ID), that message's
    /// trace; without, a search (newest first) by --sender, --recipient, --message-id and
    /// time (--since/--until: RFC 3339 or Unix seconds). Traces are kept for
    /// `[trace] retention` (7 days by default).
    Trace(TraceArgs),
    /// Load-test a running Corvus with mixed SMTP, IMAP and POP3 traffic and report throughput,
    /// latency percentiles and errors. Point it only at servers you run.
    Bench(BenchArgs),
    /// Reload the hook scripts of the running server, like SIGHUP; if any new script fails to
    /// compile, the running ones stay.
    Reload,
    /// Work with hook scripts.
    #[command(subcommand)]
    Script(ScriptCmd),
    /// Work with WASM plugins.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Users' Sieve filters (RFC 5228): store, list, show, activate and delete them (what
    /// ManageSieve clients do), and check or try a script on a message without a server.
    #[command(subcommand)]
    Sieve(SieveCmd),
}

#[derive(Subcommand)]
enum SieveCmd {
    /// Store FILE as one of USER's scripts, named after the file without `.sieve`; a script
    /// that does not compile is refused with its line and column.
    Put {
        /// The account's address.
        user: String,
        /// The script file.
        file: PathBuf,
        /// Also make it the active script.
        #[arg(long)]
        activate: bool,
    },
    /// List USER's scripts, one per line; the active one is followed by a tab and `active`.
    List {
        /// The account's address.
        user: String,
    },
    /// Print one of USER's scripts.
    Get {
        /// The account's address.
        user: String,
        /// The script's name.
        name: String,
    },
    /// Make NAME USER's active script (the one that runs on delivery); "" deactivates.
    Activate {
        /// The account's address.
        user: String,
        /// The script's name.
        name: String,
    },
    /// Delete one of USER's scripts (not the active one: deactivate it first).
    Delete {
        /// The account's address.
        user: String,
        /// The script's name.
        name: String,
    },
    /// Check a script file: `FILE: ok`, or `FILE: line L, column C: what is wrong`.
    Check {
        /// The script file.
        file: PathBuf,
    },
    /// Run a script on a message file and print the actions, one per line (`store MAILBOX
    /// [flags ...]`, `redirect ADDRESS`, `reject REASON`, `vacation ADDRESS subject S`,
    /// `discard`, `error ...`). Needs no server and no config.
    Test {
        /// The script file.
        file: PathBuf,
        /// The message file (RFC 5322).
        message: PathBuf,
        /// Envelope sender (default: the message's From).
        #[arg(long)]
        from: Option<String>,
        /// Envelope recipient (default: the message's first To).
        #[arg(long)]
        to: Option<String>,
        /// A mailbox that exists (for `mailboxexists` and `fileinto` without `:create`);
        /// repeat for more. INBOX always exists.
        #[arg(long = "mailbox")]
        mailboxes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Create the database schema, or upgrade it to this Corvus's version (PostgreSQL; run
    /// once before the first `serve`, and after installing a newer Corvus).
    Migrate,
    /// Copy a sled store into a PostgreSQL database, keeping every client's IMAP state, then
    /// verify the copy.
    ///
    /// Copies accounts (with their password hashes), domains, aliases, subscriptions, every
    /// mailbox with its UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, special use and \Recent mark,
    /// every message with its UID, flags and keywords, internal date, MODSEQ and body, the
    /// expunge log QRESYNC answers from, the outbound queue, and the key-value area (DKIM
    /// keys, script and plugin state; expired entries are left out). IMAP clients keep
    /// their caches: nothing to download again.
    ///
    /// Before: stop the server that uses the sled store (the copy refuses a locked store),
    /// and run `corvus store migrate` with the new config (the copy refuses a database
    /// without the schema). No server may run on the database during the copy.
    ///
    /// Running it again, after an interruption or to pick up what arrived since, writes
    /// only what the database lacks. A mailbox the database holds under the same name with
    /// another UIDVALIDITY, or with changes of its own (a server ran on it), is refused with
    /// a one-line error before anything of it is written.
    ///
    /// At the end both sides are compared: per mailbox its state, a message count and a
    /// checksum over UIDs, flags, dates, MODSEQs and bodies, and its expunge log; accounts,
    /// aliases, queue and key-value entries one by one. The summary goes to standard output,
    /// progress to standard error; the exit status is 1 when anything differs.
    Copy {
        /// The store to copy: sled:PATH, PATH being the stopped server's data_dir (or the
        /// store directory in it).
        #[arg(long, value_name = "sled:PATH")]
        from: String,
        /// The PostgreSQL database to fill, in the syntax of [store] url:
        /// postgresql://user@host/db or "host=/run/postgresql user=corvus dbname=corvus". A
        /// password in it is visible in the process list: prefer a Unix socket with peer
        /// authentication.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Run a plugin (.wasm) against a synthetic event; print the verdict, actions and log
    /// lines. Same options as `script test`.
    Test(ScriptTestArgs),
}

#[derive(Subcommand)]
enum ScriptCmd {
    /// Run a script against a synthetic event; print the verdict, actions and log lines.
    ///
    /// The script's config table comes from `--config '{"json":…}'`, or from the [[hooks]]
    /// entry for the same file in the config file given with -c; kv state lives in a throwaway
    /// store (use --repeat to run the event several times against it).
    Test(ScriptTestArgs),
}

#[derive(Args)]
struct ScriptTestArgs {
    /// The script file.
    file: PathBuf,
    /// Hook point: connect, helo, auth, mail, rcpt, data, delivery or fetch.
    #[arg(long)]
    hook: String,
    /// Envelope sender (MAIL FROM).
    #[arg(long, default_value = "")]
    from: String,
    /// Recipient; repeat for several (on rcpt the last is the current one).
    #[arg(long)]
    to: Vec<String>,
    /// Message file for data and delivery (LF line ends are fine); a small one is made up
    /// otherwise.
    #[arg(long)]
    message: Option<PathBuf>,
    /// Client IP address.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Verified PTR name of the client.
    #[arg(long, default_value = "")]
    ptr: String,
    /// HELO/EHLO name.
    #[arg(long, default_value = "client.example")]
    helo: String,
    /// Listener: smtp, submission, submissions, imap, imaps, pop3, pop3s.
    #[arg(long, default_value = "smtp")]
    listener: String,
    /// The connection uses TLS.
    #[arg(long)]
    tls: bool,
    /// Authenticated user.
    #[arg(long, default_value = "")]
    user: String,
    /// on_auth: username given (default: --user).
    #[arg(long)]
    username: Option<String>,
    /// on_auth: password given.
    #[arg(long, default_value = "")]
    password: String,
    /// on_auth: SASL mechanism.
    #[arg(long, default_value = "PLAIN")]
    mechanism: String,
    /// on_auth: the account store accepted the password.
    #[arg(long)]
    password_valid: bool,
    /// on_fetch: mailbox.
    #[arg(long, default_value = "INBOX")]
    mailbox: String,
    /// on_fetch: message UID.
    #[arg(long, default_value_t = 1)]
    uid: u32,
    /// on_fetch: "imap" or "pop3".
    #[arg(long, default_value = "imap")]
    protocol: String,
    /// on_delivery: deliver to this remote MX (ctx.remote is then true).
    #[arg(long)]
    mx: Option<String>,
    /// on_error policy to show for a failing call: tempfail, continue or reject.
    #[arg(long)]
    on_error: Option<String>,
    /// Run the event this many times against the same kv state.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account with the default mailboxes (INBOX, Sent, Drafts, Trash, Junk, Archive).
    Add {
        /// The account's address, e.g. alice@example.org.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Make the address's domain a local domain if it is not one yet (without this flag an
        /// address outside the local domains is refused: all mail to that domain would stay
        /// here).
        #[arg(long)]
        create_domain: bool,
    },
    /// Delete an account and all its mail.
    Del {
        /// The account's address.
        address: String,
    },
    /// List accounts.
    List,
    /// Change an account's password.
    Passwd {
        /// The account's address.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(Args)]
struct PasswordArgs {
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Add a local domain (mail for it is delivered here).
    Add {
        /// Domain name.
        domain: String,
    },
    /// Remove a local domain.
    Del {
        /// Domain name.
        domain: String,
    },
    /// List local domains (from the config and added ones).
    List,
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Make ALIAS deliver to one or more TARGET addresses.
    Add {
        /// The alias address.
        alias: String,
        /// Target addresses.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove an alias.
    Del {
        /// The alias address.
        alias: String,
    },
    /// List aliases.
    List,
}

#[derive(Args)]
struct BenchArgs {
    /// SMTP listener (plain) to send to, e.g. 127.0.0.1:2525.
    #[arg(long)]
    smtp: Option<std::net::SocketAddr>,
    /// IMAP listener (plain; the server needs imap.allow_plaintext_auth).
    #[arg(long)]
    imap: Option<std::net::SocketAddr>,
    /// POP3 listener (plain; plaintext login must be allowed).
    #[arg(long)]
    pop3: Option<std::net::SocketAddr>,
    /// Account that receives the SMTP traffic and is read over IMAP/POP3.
    #[arg(long, default_value = "bench@localhost")]
    user: String,
    /// Its password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// Concurrent clients per protocol.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// How long to run, e.g. 60s or 10m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
    /// Message size in bytes.
    #[arg(long, default_value_t = 5120)]
    size: usize,
    /// PID of the server, to report its memory over time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Steady state for long runs: IMAP client i reads USER's derived account <local>i@<domain>
    /// and POP3 client i <local>(clients+i)@<domain> (create the 2×clients accounts first,
    /// same password); SMTP sends to them in turn, and sessions delete what they read.
    #[arg(long)]
    per_client_accounts: bool,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued messages: id, sender, attempts, next attempt, recipients and last error.
    List,
    /// Show one queued message: envelope, attempts, hook decisions and headers.
    Show {
        /// Queue id (from `corvus queue list`).
        id: String,
    },
    /// Retry now: one message, or every queued message without an id.
    Flush {
        /// Queue id.
        id: Option<String>,
    },
    /// Remove a message from the queue without delivering or bouncing it.
    Delete {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Print, as zone-file lines, every record DOMAIN should publish for this server: MX,
    /// SPF, each DKIM key, DMARC, MTA-STS (policy host and id), TLS-RPT, the autoconfig host
    /// and the RFC 6186 SRV records of the client listeners. The admin API's
    /// `GET /api/domains/DOMAIN/dns` shows the same with what DNS answers now.
    Records {
        /// A local domain.
        domain: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token named NAME. The token is printed once, alone on the last line; only its
    /// hash is stored.
    Create {
        /// A name for it (letters, digits, '-', '_', '.'), e.g. the script or person using it.
        name: String,
    },
    /// List tokens by name and creation time.
    List,
    /// Revoke the token NAME: requests with it get 401 from now on.
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Args)]
struct TraceArgs {
    /// Queue id or Message-ID; omit to search.
    id: Option<String>,
    /// Search: the envelope sender contains this.
    #[arg(long)]
    sender: Option<String>,
    /// Search: a recipient contains this.
    #[arg(long)]
    recipient: Option<String>,
    /// Search: the Message-ID contains this.
    #[arg(long)]
    message_id: Option<String>,
    /// Search: from this time on (RFC 3339 or Unix seconds).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Search: before this time (RFC 3339 or Unix seconds).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Search: at most this many.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.timestamp()))
        .map_err(|_| {
            format!("{s:?} is not a time: give RFC 3339 (2026-12-07T10:00:00Z) or Unix seconds")
        })
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Create a signing key for DOMAIN, store it, and print the DNS TXT record to publish.
    Generate {
        /// The sending domain, e.g. example.org.
        domain: String,
        /// Selector (the DNS label before `._domainkey`).
        #[arg(long, default_value = "corvus")]
        selector: String,
        /// Key type.
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "rsa"])]
        algorithm: String,
    },
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// List the account's mailboxes with message counts, or the messages (UID and size) of
    /// FOLDER.
    List {
        /// The account's address.
        address: String,
        /// A mailbox whose messages to list.
        folder: Option<String>,
    },
    /// Write one message's raw bytes to standard output.
    Cat {
        /// The account's address.
        address: String,
        /// Mailbox name, e.g. INBOX.
        folder: String,
        /// The message's UID (see `corvus mailbox list ADDRESS FOLDER`).
        uid: u32,
    },
    /// Write every folder of ADDRESS into DEST, keeping flags and internal dates.
    ///
    /// maildir: a Maildir++ tree (INBOX in DEST/cur, folder Work/2024 in DEST/.Work.2024/).
    /// mbox: one mboxrd file per folder (DEST/INBOX, DEST/Work.2024), flags in Status and
    /// X-Status. DEST is created, or must be empty.
    Export {
        /// The account's address.
        address: String,
        /// Output format.
        #[arg(long, value_enum)]
        format: Format,
        /// Destination directory.
        dest: PathBuf,
    },
    /// Read a Maildir++ tree, an mbox file or a directory of mbox files into ADDRESS.
    ///
    /// The top level (a Maildir's cur/ and new/, a single mbox file, or the INBOX file of a
    /// directory) goes into --folder; the other folders keep their names, below --folder when
    /// it is given.
    Import {
        /// The account's address.
        address: String,
        /// Input format.
        #[arg(long, value_enum)]
        format: Format,
        /// Maildir directory, mbox file, or directory of mbox files.
        src: PathBuf,
        /// Folder for the top level of SRC.
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
}

fn read_password(p: PasswordArgs) -> Result<String, String> {
    if let Some(pw) = p.password {
        return Ok(pw);
    }
    if !p.password_stdin {
        eprint!("Password: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        Err("the password must not be empty".into())
    } else {
        Ok(pw)
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // rustls warns about every client that sends an IP address as its TLS server name (mail
    // clients do, connecting by address); that is the client's business, not the admin's.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},rustls::msgs::handshake=error",
            config.log.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.fmt_fields(corvus::logging::SafeFields).init(),
    }
}

fn main() -> ExitCode {
    corvus::server::private_umask();
    let cli = Cli::parse();
    match cli.command {
        Command::Script(ScriptCmd::Test(args)) | Command::Plugin(PluginCmd::Test(args)) => {
            return script_test(cli.config.as_deref(), args);
        }
        Command::Sieve(SieveCmd::Check { file }) => return sieve_check(&file),
        Command::Sieve(SieveCmd::Test {
            file,
            message,
            from,
            to,
            mailboxes,
        }) => return sieve_test(&file, &message, from, to, &mailboxes),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return ExitCode::from(2);
        }
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if let Command::Bench(b) = cli.command {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let errors = rt.block_on(corvus::bench::run(corvus::bench::BenchOptions {
            smtp: b.smtp,
            imap: b.imap,
            pop3: b.pop3,
            user: b.user,
            password: b.password,
            clients: b.clients,
            duration: b.duration,
            size: b.size,
            server_pid: b.server_pid,
            per_client_accounts: b.per_client_accounts,
        }));
        return if errors == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let admin = match cli.command {
        Command::Bench(_) => unreachable!("handled above"),
        Command::Serve => {
            init_logging(&config);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            return match rt.block_on(corvus::server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Store(StoreCmd::Migrate) => {
            return match corvus::server::migrate_store(&config) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Store(StoreCmd::Copy { from, to }) => {
            let mut progress = |line: &str| eprintln!("{line}");
            return match corvus::server::copy_store(&from, &to, &mut progress) {
                Ok((summary, verified)) => {
                    println!("{summary}");
                    if verified {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Check => {
            // Config::load already validated keys, addresses and files; also prove TLS loads
            // and every hook script compiles (one `file:line:column: message` line each).
            let mut bad = false;
            if let Err(e) = corvus::tls::acceptors(&config) {
                eprintln!("error: {e}");
                bad = true;
            }
            if config.hooks.iter().any(|h| h.plugin.is_some())
                && let Err(e) = corvus::hooks::wasm::configure((&config.plugins).into())
            {
                eprintln!("error: {e}");
                bad = true;
            }
            let mut filters = 0;
            for (i, h) in config.hooks.iter().enumerate() {
                let checked = match h.kind() {
                    HookKind::Plugin(p) => corvus::hooks::wasm::check_plugin(
                        p,
                        &h.config,
                        Some(config.data_dir.join("plugin-cache")),
                    )
                    .map(|_| ()),
                    HookKind::Script(s) => corvus::hooks::rhai::check_script(s),
                    // Filters may start after Corvus: one that does not answer is a warning.
                    HookKind::Rspamd(_) | HookKind::Milter(_) => {
                        filters += 1;
                        if let Err(e) = corvus::hooks::reachable(h) {
                            eprintln!("warning: hooks[{i}]: {e}");
                        }
                        Ok(())
                    }
                };
                if let Err(e) = checked {
                    eprintln!("{e}");
                    bad = true;
                }
            }
            let store = match corvus::server::check_store(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    bad = true;
                    String::new()
                }
            };
            if bad {
                return ExitCode::from(2);
            }
            let plugins = config.hooks.iter().filter(|h| h.plugin.is_some()).count();
            let scripts = config.hooks.len() - plugins - filters;
            let count = |n: usize, what: &str| match n {
                0 => String::new(),
                1 => format!(", 1 {what}"),
                n => format!(", {n} {what}s"),
            };
            let listeners = match config.listeners().len() {
                1 => "1 listener".to_string(),
                n => format!("{n} listeners"),
            };
            println!(
                "configuration OK ({listeners}{}{}{}; {store})",
                count(scripts, "hook script"),
                count(plugins, "plugin"),
                count(filters, "filter"),
            );
            return ExitCode::SUCCESS;
        }
        Command::Sieve(SieveCmd::Check { .. } | SieveCmd::Test { .. }) => {
            unreachable!("handled before the config is loaded")
        }
        Command::Sieve(SieveCmd::Put {
            user,
            file,
            activate,
        }) => {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return fail(&format!("{}: {e}", file.display())),
            };
            if let Err(e) = corvus::sieve::compile(&text) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".sieve").to_string())
                .unwrap_or_default();
            AdminCommand::SievePut {
                address: user,
                name,
                script: text,
                activate,
            }
        }
        Command::Sieve(SieveCmd::List { user }) => AdminCommand::SieveList { address: user },
        Command::Sieve(SieveCmd::Get { user, name }) => AdminCommand::SieveGet {
            address: user,
            name,
        },
        Command::Sieve(SieveCmd::Activate { user, name }) => AdminCommand::SieveActivate {
            address: user,
            name,
        },
        Command::Sieve(SieveCmd::Delete { user, name }) => AdminCommand::SieveDelete {
            address: user,
            name,
        },
        Command::Script(_) | Command::Plugin(_) => {
            unreachable!("handled before the config is loaded")
        }
        Command::Reload => AdminCommand::Reload,
        Command::User(UserCmd::Add {
            address,
            password,
            create_domain,
        }) => match read_password(password) {
            Ok(password) => AdminCommand::UserAdd {
                address,
                password,
                create_domain,
            },
            Err(e) => return fail(&e),
        },
        Command::User(UserCmd::Del { address }) => AdminCommand::UserDel { address },
        Command::User(UserCmd::List) => AdminCommand::UserList,
        Command::User(UserCmd::Passwd { address, password }) => match read_password(password) {
            Ok(password) => AdminCommand::UserPasswd { address, password },
            Err(e) => return fail(&e),
        },
        Command::Domain(DomainCmd::Add { domain }) => AdminCommand::DomainAdd { domain },
        Command::Domain(DomainCmd::Del { domain }) => AdminCommand::DomainDel { domain },
        Command::Domain(DomainCmd::List) => AdminCommand::DomainList,
        Command::Alias(AliasCmd::Add { alias, targets }) => {
            AdminCommand::AliasAdd { alias, targets }
        }
        Command::Alias(AliasCmd::Del { alias }) => AdminCommand::AliasDel { alias },
        Command::Alias(AliasCmd::List) => AdminCommand::AliasList,
        Command::Token(TokenCmd::Create { name }) => AdminCommand::TokenCreate { name },
        Command::Token(TokenCmd::List) => AdminCommand::TokenList,
        Command::Dns(DnsCmd::Records { domain }) => AdminCommand::DnsRecords { domain },
        Command::Token(TokenCmd::Revoke { name }) => AdminCommand::TokenRevoke { name },
        Command::Trace(TraceArgs { id: Some(id), .. }) => AdminCommand::Trace { id },
        Command::Trace(a) => AdminCommand::TraceSearch {
            query: corvus::trace::Query {
                sender: a.sender,
                recipient: a.recipient,
                message_id: a.message_id,
                since: a.since,
                until: a.until,
                limit: Some(a.limit),
            },
        },
        Command::Queue(QueueCmd::List) => AdminCommand::QueueList,
        Command::Queue(QueueCmd::Show { id }) => AdminCommand::QueueShow { id },
        Command::Queue(QueueCmd::Flush { id }) => AdminCommand::QueueFlush { id },
        Command::Queue(QueueCmd::Delete { id }) => AdminCommand::QueueDelete { id },
        Command::Dkim(DkimCmd::Generate {
            domain,
            selector,
            algorithm,
        }) => AdminCommand::DkimGenerate {
            domain,
            selector,
            algorithm,
        },
        Command::Mailbox(MailboxCmd::List { address, folder }) => {
            AdminCommand::MailboxList { address, folder }
        }
        Command::Mailbox(MailboxCmd::Cat {
            address,
            folder,
            uid,
        }) => AdminCommand::MailboxCat {
            address,
            folder,
            uid,
        },
        Command::Mailbox(MailboxCmd::Export {
            address,
            format,
            dest,
        }) => match std::path::absolute(&dest) {
            Ok(dest) => AdminCommand::MailboxExport {
                address,
                format,
                dest,
            },
            Err(e) => return fail(&format!("{}: {e}", dest.display())),
        },
        Command::Mailbox(MailboxCmd::Import {
            address,
            format,
            src,
            folder,
        }) => match std::path::absolute(&src) {
            Ok(src) => AdminCommand::MailboxImport {
                address,
                format,
                src,
                folder: (!folder.eq_ignore_ascii_case("INBOX")).then_some(folder),
            },
            Err(e) => return fail(&format!("{}: {e}", src.display())),
        },
    };
    run_admin(&config, admin)
}

fn script_test(config: Option<&Path>, a: ScriptTestArgs) -> ExitCode {
    use corvus::hooks::OnError;
    use corvus::hooks::script_test::{TestEvent, parse_listener, parse_point, run, to_crlf};
    let point = match parse_point(&a.hook) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let listener = match parse_listener(&a.listener) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    // -c is either inline JSON for the script or a config file whose entry for this script
    // gives the table and the on_error policy.
    let mut table = serde_json::Map::new();
    let mut on_error = OnError::Tempfail;
    match config.map(|p| p.to_string_lossy().into_owned()) {
        Some(text) if text.trim_start().starts_with('{') => {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(m)) => table = m,
                Ok(_) | Err(_) => {
                    return fail(&format!("--config {text:?} is not a JSON object"));
                }
            }
        }
        Some(_) => {
            let cfg = match Config::load(config) {
                Ok(c) => c,
                Err(problems) => return fail(&problems.join("\n")),
            };
            let want = std::fs::canonicalize(&a.file).ok();
            if let Some(h) = cfg.hooks.iter().find(|h| {
                std::fs::canonicalize(h.plugin.as_ref().unwrap_or(&h.script)).ok() == want
            }) {
                table = h.config.clone();
                on_error = h.on_error;
            }
        }
        None => {}
    }
    if let Some(p) = &a.on_error {
        on_error = match p.as_str() {
            "tempfail" => OnError::Tempfail,
            "continue" => OnError::Continue,
            "reject" => OnError::Reject,
            _ => return fail("--on-error: use tempfail, continue or reject"),
        };
    }
    let message = match &a.message {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(to_crlf(&b)),
            Err(e) => return fail(&format!("--message {}: {e}", p.display())),
        },
        None => None,
    };
    let fetch_protocol = if a.protocol == "pop3" { "pop3" } else { "imap" };
    let event = TestEvent {
        point,
        listener,
        ip: a.ip,
        ptr: a.ptr,
        helo: a.helo,
        tls: a.tls,
        user: a.user.clone(),
        from: a.from,
        to: a.to,
        message,
        credentials: Some((a.username.unwrap_or(a.user), a.password, a.mechanism)),
        credentials_valid: a.password_valid,
        fetch: Some((a.mailbox, a.uid, fetch_protocol)),
        mx: a.mx,
    };
    match run(&a.file, table, on_error, &event, a.repeat) {
        Ok(report) => {
            print!("{}", report.text);
            if report.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Print a command's output: text with a newline, or for `mailbox cat` the raw message
/// bytes decoded from the base64 reply.
fn print_output(text: &str, raw: bool) -> ExitCode {
    use base64::Engine as _;
    use std::io::Write as _;
    if !raw {
        if !text.is_empty() {
            println!("{text}");
        }
        return ExitCode::SUCCESS;
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(b) => b,
        Err(e) => return fail(&format!("undecodable message from the server: {e}")),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("writing the message: {e}")),
    }
}

/// `corvus sieve check FILE`.
fn sieve_check(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(&format!("{}: {e}", file.display())),
    };
    match corvus::sieve::compile(&text) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `corvus sieve test FILE MESSAGE`.
fn sieve_test(
    file: &std::path::Path,
    message: &std::path::Path,
    from: Option<String>,
    to: Option<String>,
    mailboxes: &[String],
) -> ExitCode {
    use corvus::sieve::{eval, vacation};
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(&format!("{}: {e}", file.display())),
    };
    let msg = match std::fs::read(message) {
        Ok(m) => m,
        Err(e) => return fail(&format!("{}: {e}", message.display())),
    };
    let script = match corvus::sieve::compile(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let first = |h: &str| {
        corvus::message::header_values(&msg, h, true)
            .first()
            .map(|v| eval::addresses_in(v).into_iter().next().unwrap_or_default())
            .unwrap_or_default()
    };
    let from = from.unwrap_or_else(|| first("From"));
    let to = to.unwrap_or_else(|| first("To"));
    let exists = |m: &str| {
        corvus::store::is_inbox(m)
            || mailboxes
                .iter()
                .any(|x| corvus::store::canonical_mailbox(x) == corvus::store::canonical_mailbox(m))
    };
    let ctx = eval::Context {
        message: &msg,
        from: &from,
        to: &to,
        mailbox_exists: &exists,
        limits: eval::RunLimits::default(),
        now: chrono::Local::now().fixed_offset(),
    };
    let outcome = eval::run(&script, &ctx);
    let lines = corvus::sieve::describe(&outcome, |v| {
        if vacation::refusal(&msg, &from, &to, &to, v).is_some() {
            return None;
        }
        let subject = match &v.subject {
            Some(s) => s.clone(),
            None => format!(
                "Auto: {}",
                corvus::message::header_values(&msg, "Subject", true)
                    .first()
                    .cloned()
                    .unwrap_or_default()
            ),
        };
        Some(format!("vacation {from} subject {subject}"))
    });
    for l in lines {
        println!("{l}");
    }
    ExitCode::SUCCESS
}

fn run_admin(config: &Config, cmd: AdminCommand) -> ExitCode {
    let raw = matches!(cmd, AdminCommand::MailboxCat { .. });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // A running server owns the store: go through its control socket.
    let mut progress = |line: &str| eprintln!("{line}");
    match rt.block_on(corvus::control::send_with_progress(
        &config.control_socket(),
        &cmd,
        &mut progress,
    )) {
        Ok(Some(reply)) => {
            return if reply.ok {
                print_output(&reply.text, raw)
            } else {
                fail(&reply.text)
            };
        }
        Ok(None) => {}
        Err(e) => {
            return fail(&format!(
                "control socket {}: {e}",
                config.control_socket().display()
            ));
        }
    }
    // On the embedded defaults, a store that does not exist yet is someone's mistake (another
    // directory, a forgotten -c): creating an empty one would "succeed" where no server looks.
    if config.source.is_none()
        && config.store.backend == corvus::config::StoreBackend::Sled
        && !config.store_path().exists()
    {
        return fail(&format!(
            "no Corvus store at {} (the default data_dir, relative to this directory) and no \
             server running here; run this where `corvus serve` runs, or pass the server's \
             config with -c FILE",
            config.store_path().display()
        ));
    }
    let store = match corvus::server::open_store(config) {
        Ok(s) => s,
        Err(e) => return fail(&format!("{e:#}")),
    };
    let result = execute_with_progress(&store, config, cmd, &mut progress);
    let flushed = rt.block_on(store.commit());
    match (result, flushed) {
        (Ok(text), Ok(())) => print_output(&text, raw),
        (Err(e), _) => fail(&e.to_string()),
        (_, Err(e)) => fail(&e.to_string()),
    }
}
