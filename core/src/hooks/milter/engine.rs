//! A milter in the hook chain (`[[hooks]] milter = "127.0.0.1:8891"`). Each SMTP session
//! that passes through it has one milter connection, kept in the session's [`HookSession`]
//! and opened at the first hook point: connect, HELO, MAIL, RCPT and the end of data send the
//! matching events (with Postfix's macros), so a milter can refuse a recipient at RCPT.
//! Stages the session did not go through with this milter (an entry added by a reload, a
//! call outside a session) are caught up before the current one.
//!
//! Replies become verdicts: `reject`/`tempfail`/a reply code refuse the command (at RCPT only
//! that recipient), `discard` drops the message, `accept` stops this milter for the message
//! (or, at connect and HELO, for the session), `quarantine` files into Junk; modifications
//! at the end of the message become [`MessageEdits`]. A milter that fails (connection,
//! time-out, garbage) is dropped for the rest of the session and the entry's `on_error`
//! applies at that stage and the later ones.

use std::time::Duration;

use super::client::{Conn, ConnError};
use super::codec::{self, Command, ConnectAddress, Reply, Stage};
use crate::config::HookEntry;
use crate::hooks::edits::{HeaderEdit, MessageEdits};
use crate::hooks::filter_config::MilterSettings;
use crate::hooks::session::next_engine_id;
use crate::hooks::{
    Actions, HookCtx, HookEngine, HookError, HookFuture, HookPoint, HookSession, OnError, Route,
    Verdict,
};
use crate::message::header_end;

/// A milter in the hook chain.
pub struct MilterHook {
    id: u64,
    name: String,
    settings: MilterSettings,
    hostname: String,
    on_error: OnError,
}

/// How far the current session got with the milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sent {
    Nothing,
    Connect,
    Helo,
    Mail,
}

/// What a session keeps for one milter.
struct Slot {
    conn: Option<Conn>,
    sent: Sent,
    /// The milter accepted the connection at connect or HELO: nothing more goes to it.
    session_done: bool,
    /// The milter failed earlier in this session.
    failed: Option<String>,
    /// Message events went out since the last end of message or abort.
    in_message: bool,
    /// The milter accepted this message early: nothing more of it goes out.
    message_done: bool,
    /// Its decision on this message taken before the end of data (discard).
    message_verdict: Option<Verdict>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            conn: None,
            sent: Sent::Nothing,
            session_done: false,
            failed: None,
            in_message: false,
            message_done: false,
            message_verdict: None,
        }
    }
}

impl MilterHook {
    /// The engine of a `milter = ADDRESS` entry; `hostname` is the server's name (macro `j`).
    pub fn load(entry: &HookEntry, addr: &str, hostname: &str) -> Result<Self, String> {
        let settings = MilterSettings::from_entry(addr, &entry.config)?;
        Ok(MilterHook {
            id: next_engine_id(),
            name: format!("milter {}", settings.addr),
            settings,
            hostname: hostname.to_string(),
            on_error: entry.on_error,
        })
    }

    async fn run(
        &self,
        ctx: &HookCtx,
        session: Option<&HookSession>,
        actions: &mut Actions,
    ) -> Result<Verdict, HookError> {
        if !self.settings.listeners.contains(&ctx.listener) {
            return Ok(Verdict::Continue);
        }
        let mut slot = session
            .and_then(|s| s.take(self.id))
            .and_then(|b| b.downcast::<Slot>().ok())
            .map(|b| *b)
            .unwrap_or_else(Slot::new);
        let result = self.step(&mut slot, ctx, actions).await;
        let result = match result {
            Ok(v) => Ok(v),
            Err(e) => {
                slot.conn = None;
                let text = format!("{}: {e}", self.name);
                slot.failed = Some(text.clone());
                Err(HookError(text))
            }
        };
        match session {
            Some(s) => s.put(self.id, Box::new(slot)),
            None => drop(slot),
        }
        result
    }

    /// One hook point's events, after catching up on the stages before it.
    async fn step(
        &self,
        slot: &mut Slot,
        ctx: &HookCtx,
        actions: &mut Actions,
    ) -> Result<Verdict, String> {
        if let Some(why) = &slot.failed {
            return Err(format!("failed earlier in this session ({why})"));
        }
        if slot.session_done {
            return Ok(Verdict::Continue);
        }
        if slot.conn.is_none() {
            let conn = Conn::open(&self.settings.addr, self.settings.connect_timeout)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            slot.conn = Some(conn);
            slot.sent = Sent::Nothing;
        }
        let point = ctx.point;
        // A new transaction: the milter forgets the last one (RSET, a refused MAIL, a
        // finished message all end up here).
        if point == HookPoint::Mail && slot.in_message {
            self.send(slot, &Command::Abort)?;
            slot.in_message = false;
            slot.message_done = false;
            slot.message_verdict = None;
            slot.sent = slot.sent.min(Sent::Helo);
        }
        if slot.sent < Sent::Connect {
            slot.sent = Sent::Connect;
            let v = self
                .event(slot, ctx, Stage::Connect, connect_command(ctx))
                .await?;
            if let Some(v) = self.session_level(slot, v) {
                return Ok(v);
            }
        }
        if point == HookPoint::Connect {
            return Ok(Verdict::Continue);
        }
        if slot.sent < Sent::Helo || point == HookPoint::Helo {
            slot.sent = Sent::Helo;
            let v = self
                .event(slot, ctx, Stage::Helo, Command::Helo(ctx.helo.clone()))
                .await?;
            if let Some(v) = self.session_level(slot, v) {
                return Ok(v);
            }
        }
        match point {
            HookPoint::Helo => Ok(Verdict::Continue),
            HookPoint::Mail => self.mail(slot, ctx).await,
            HookPoint::Rcpt => {
                if slot.sent < Sent::Mail {
                    let v = self.mail(slot, ctx).await?;
                    if v != Verdict::Continue {
                        return Ok(v);
                    }
                }
                self.rcpt(slot, ctx, &ctx.rcpt).await
            }
            HookPoint::Data => {
                if slot.sent < Sent::Mail {
                    let v = self.mail(slot, ctx).await?;
                    if v != Verdict::Continue {
                        return Ok(v);
                    }
                    for r in &ctx.rcpts {
                        let v = self.rcpt(slot, ctx, r).await?;
                        if v.ends_chain() && !matches!(v, Verdict::Discard) {
                            return Ok(v);
                        }
                    }
                }
                let v = self.message(slot, ctx, actions).await;
                // The next MAIL starts clean whatever happened.
                slot.sent = Sent::Helo;
                slot.in_message = false;
                slot.message_done = false;
                let early = slot.message_verdict.take();
                let v = v?;
                Ok(match (early, v) {
                    (Some(Verdict::Discard), Verdict::Continue | Verdict::Accept) => {
                        Verdict::Discard
                    }
                    (_, v) => v,
                })
            }
            _ => Ok(Verdict::Continue),
        }
    }

    /// An accept at connect or HELO covers the whole session; other verdicts pass through.
    fn session_level(&self, slot: &mut Slot, v: Decision) -> Option<Verdict> {
        match v {
            Decision::Accept => {
                slot.session_done = true;
                Some(Verdict::Continue)
            }
            Decision::Verdict(Verdict::Continue) | Decision::Skip => None,
            Decision::Verdict(v) => Some(v),
        }
    }

    async fn mail(&self, slot: &mut Slot, ctx: &HookCtx) -> Result<Verdict, String> {
        slot.sent = Sent::Mail;
        slot.in_message = true;
        slot.message_done = false;
        slot.message_verdict = None;
        let cmd = Command::Mail {
            sender: format!("<{}>", ctx.mail_from),
            params: Vec::new(),
        };
        let v = self.event(slot, ctx, Stage::Mail, cmd).await?;
        Ok(self.message_level(slot, v))
    }

    async fn rcpt(&self, slot: &mut Slot, ctx: &HookCtx, rcpt: &str) -> Result<Verdict, String> {
        if slot.message_done {
            return Ok(Verdict::Continue);
        }
        let mut c = ctx.clone();
        c.rcpt = rcpt.to_string();
        let cmd = Command::Rcpt {
            rcpt: format!("<{rcpt}>"),
            params: Vec::new(),
        };
        let v = self.event(slot, &c, Stage::Rcpt, cmd).await?;
        Ok(self.message_level(slot, v))
    }

    /// An accept before the end of data stops this milter for the message; a discard is
    /// kept for the end of data (other recipients may still come).
    fn message_level(&self, slot: &mut Slot, v: Decision) -> Verdict {
        match v {
            Decision::Accept => {
                slot.message_done = true;
                Verdict::Continue
            }
            Decision::Verdict(Verdict::Discard) => {
                slot.message_done = true;
                slot.message_verdict = Some(Verdict::Discard);
                Verdict::Continue
            }
            Decision::Verdict(v) => v,
            Decision::Skip => Verdict::Continue,
        }
    }

    /// DATA, the header fields, end of header, the body and end of message; the milter's
    /// modifications go into `actions.edits`.
    async fn message(
        &self,
        slot: &mut Slot,
        ctx: &HookCtx,
        actions: &mut Actions,
    ) -> Result<Verdict, String> {
        if slot.message_done {
            return Ok(Verdict::Continue);
        }
        let Some(msg) = ctx.message.as_deref() else {
            return Ok(Verdict::Continue);
        };
        let content = self.settings.content_timeout;
        let v = self.event(slot, ctx, Stage::Data, Command::Data).await?;
        if let Some(v) = self.early(slot, v) {
            return Ok(v);
        }
        let head_end = header_end(msg);
        let lead = agreed(slot)?.leading_space();
        for (name, value) in header_fields(&msg[..head_end], lead) {
            let v = self
                .event_within(
                    slot,
                    ctx,
                    Stage::Header,
                    Command::Header { name, value },
                    content,
                )
                .await?;
            if let Some(v) = self.early(slot, v) {
                return Ok(v);
            }
        }
        let v = self
            .event_within(
                slot,
                ctx,
                Stage::EndOfHeaders,
                Command::EndOfHeaders,
                content,
            )
            .await?;
        if let Some(v) = self.early(slot, v) {
            return Ok(v);
        }
        let body = &msg[head_end.min(msg.len())..];
        if agreed(slot)?.sends(Stage::Body) {
            for chunk in codec::body_chunks(body) {
                let v = self
                    .event_within(
                        slot,
                        ctx,
                        Stage::Body,
                        Command::Body(chunk.to_vec()),
                        content,
                    )
                    .await;
                match v? {
                    Decision::Verdict(Verdict::Continue) => {}
                    // SKIP: no more body; on to the end of message.
                    Decision::Skip => break,
                    other => {
                        if let Some(v) = self.early(slot, other) {
                            return Ok(v);
                        }
                    }
                }
            }
        }
        self.end_of_message(slot, ctx, actions).await
    }

    /// A verdict before the end of message ends the message (None: go on).
    fn early(&self, slot: &mut Slot, v: Decision) -> Option<Verdict> {
        match self.message_level(slot, v) {
            Verdict::Continue if slot.message_done => {
                Some(slot.message_verdict.clone().unwrap_or(Verdict::Continue))
            }
            Verdict::Continue => None,
            v => Some(v),
        }
    }

    async fn end_of_message(
        &self,
        slot: &mut Slot,
        ctx: &HookCtx,
        actions: &mut Actions,
    ) -> Result<Verdict, String> {
        self.macros(slot, ctx, Stage::EndOfBody)?;
        self.send(slot, &Command::EndOfBody)?;
        let timeout = self.settings.content_timeout;
        let mut edits = MessageEdits::default();
        let mut quarantine: Option<String> = None;
        let mut body: Option<Vec<u8>> = None;
        let conn = slot.conn.as_mut().ok_or("no connection")?;
        let verdict = loop {
            let reply = conn.exchange(timeout).await.map_err(describe)?;
            let allows = |bit| conn.agreed.allows(bit);
            let refused = |what: &str| {
                tracing::warn!(milter = %self.name, what, "milter modification not negotiated; ignored");
            };
            match reply {
                Reply::AddHeader { name, value } if allows(codec::SMFIF_ADDHDRS) => push(
                    &mut edits,
                    HeaderEdit::Add {
                        name,
                        value: text(value),
                    },
                ),
                Reply::InsHeader { index, name, value } if allows(codec::SMFIF_ADDHDRS) => push(
                    &mut edits,
                    HeaderEdit::Insert {
                        index: index as usize,
                        name,
                        value: text(value),
                    },
                ),
                Reply::ChgHeader { index, name, value } if allows(codec::SMFIF_CHGHDRS) => push(
                    &mut edits,
                    HeaderEdit::Change {
                        name,
                        index: (index as usize).max(1),
                        value: text(value),
                    },
                ),
                Reply::ChgFrom { sender, .. } if allows(codec::SMFIF_CHGFROM) => {
                    if let Err(e) = edits.set_mail_from(&sender) {
                        tracing::warn!(milter = %self.name, error = %e, "milter sender change ignored");
                    }
                }
                Reply::AddRcpt { rcpt, args }
                    if allows(codec::SMFIF_ADDRCPT)
                        || (args.is_some() && allows(codec::SMFIF_ADDRCPT_PAR)) =>
                {
                    if let Err(e) = edits.add_rcpt(&rcpt) {
                        tracing::warn!(milter = %self.name, error = %e, "milter recipient ignored");
                    }
                }
                Reply::DelRcpt(rcpt) if allows(codec::SMFIF_DELRCPT) => {
                    if let Err(e) = edits.del_rcpt(&rcpt) {
                        tracing::warn!(milter = %self.name, error = %e, "milter recipient removal ignored");
                    }
                }
                Reply::ReplBody(piece) if allows(codec::SMFIF_CHGBODY) => {
                    let b = body.get_or_insert_with(Vec::new);
                    if b.len() + piece.len() > MAX_NEW_BODY {
                        return Err(format!("new body larger than {MAX_NEW_BODY} bytes"));
                    }
                    b.extend_from_slice(&piece);
                }
                Reply::Quarantine(reason) if allows(codec::SMFIF_QUARANTINE) => {
                    quarantine = Some(reason)
                }
                r @ (Reply::AddHeader { .. }
                | Reply::InsHeader { .. }
                | Reply::ChgHeader { .. }
                | Reply::ChgFrom { .. }
                | Reply::AddRcpt { .. }
                | Reply::DelRcpt(_)
                | Reply::ReplBody(_)
                | Reply::Quarantine(_)) => refused(&format!("{:?}", char::from(r.code()))),
                other => match decision(other)? {
                    Decision::Accept => break Verdict::Continue,
                    Decision::Skip => return Err("SKIP at end of message".into()),
                    Decision::Verdict(v) => break v,
                },
            }
        };
        edits.body = body;
        actions.edits.merge(edits);
        Ok(match (verdict, quarantine) {
            (Verdict::Continue | Verdict::Accept, Some(reason)) => Verdict::quarantine(&format!(
                "{}: {}",
                self.name,
                if reason.is_empty() {
                    "quarantined"
                } else {
                    &reason
                }
            )),
            (v, _) => v,
        })
    }

    fn send(&self, slot: &mut Slot, cmd: &Command) -> Result<(), String> {
        slot.conn
            .as_mut()
            .ok_or("no connection")?
            .queue(cmd)
            .map_err(describe)
    }

    /// Queue the macros of `stage` (the milter's list, or ours).
    fn macros(&self, slot: &mut Slot, ctx: &HookCtx, stage: Stage) -> Result<(), String> {
        let agreed = agreed(slot)?;
        if !agreed.sends_macros(stage) {
            return Ok(());
        }
        let names: Vec<&str> = match agreed.macros(stage) {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => default_macros(stage).to_vec(),
        };
        let pairs: Vec<(String, String)> = names
            .into_iter()
            .filter_map(|n| self.macro_value(n, ctx).map(|v| (n.to_string(), v)))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        self.send(slot, &Command::Macro { stage, pairs })
    }

    /// An event with its macros, within the command timeout.
    async fn event(
        &self,
        slot: &mut Slot,
        ctx: &HookCtx,
        stage: Stage,
        cmd: Command,
    ) -> Result<Decision, String> {
        self.event_within(slot, ctx, stage, cmd, self.settings.command_timeout)
            .await
    }

    async fn event_within(
        &self,
        slot: &mut Slot,
        ctx: &HookCtx,
        stage: Stage,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Decision, String> {
        self.macros(slot, ctx, stage)?;
        let agreed = agreed(slot)?;
        if !agreed.sends(stage) {
            return Ok(Decision::Verdict(Verdict::Continue));
        }
        let wait = agreed.expects_reply(stage);
        self.send(slot, &cmd)?;
        let conn = slot.conn.as_mut().ok_or("no connection")?;
        if !wait {
            conn.flush().await.map_err(describe)?;
            return Ok(Decision::Verdict(Verdict::Continue));
        }
        let reply = conn.exchange(timeout).await.map_err(describe)?;
        match reply {
            Reply::Skip if stage == Stage::Body => Ok(Decision::Skip),
            other => decision(other),
        }
    }

    /// The value of macro `name` in this session, if known.
    fn macro_value(&self, name: &str, ctx: &HookCtx) -> Option<String> {
        let bare = name.trim_start_matches('{').trim_end_matches('}');
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        match bare {
            "j" => Some(self.hostname.clone()),
            "daemon_name" => Some(ctx.listener.name().to_string()),
            "v" => Some(format!("Corvus {}", env!("CARGO_PKG_VERSION"))),
            "_" => Some(match ctx.client_ptr.as_str() {
                "" => format!("unknown [{}]", ctx.client_ip),
                ptr => format!("{ptr} [{}]", ctx.client_ip),
            }),
            "client_addr" => Some(ctx.client_ip.to_string()),
            "client_port" => Some(ctx.client_port.to_string()),
            "client_name" | "client_ptr" => {
                Some(nonempty(&ctx.client_ptr).unwrap_or_else(|| "unknown".into()))
            }
            "i" => nonempty(&ctx.queue_id),
            "auth_authen" => nonempty(&ctx.user),
            "auth_type" if !ctx.user.is_empty() => nonempty(&ctx.auth_mechanism),
            "tls_version" => ctx.tls_info.split(' ').next().and_then(nonempty),
            "cipher" => ctx.tls_info.split(' ').nth(1).and_then(nonempty),
            "mail_addr" => Some(ctx.mail_from.clone()),
            "rcpt_addr" => nonempty(&ctx.rcpt),
            "rcpt_host" => ctx.rcpt.rsplit_once('@').map(|(_, d)| d.to_string()),
            "rcpt_mailer" => match ctx.route {
                Some(Route::Local(_)) => Some("local".into()),
                Some(Route::Remote) => Some("smtp".into()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The largest body a milter may put in place of the message's.
const MAX_NEW_BODY: usize = 64 << 20;

/// What a reply to an event means.
#[derive(Debug)]
enum Decision {
    /// Accept: this milter is done (for the session at connect/HELO, else the message).
    Accept,
    /// Skip the rest of the body.
    Skip,
    /// A verdict (Continue to go on).
    Verdict(Verdict),
}

fn decision(reply: Reply) -> Result<Decision, String> {
    let tempfail = |code, enhanced: &str, text: &str| Verdict::Tempfail {
        code,
        enhanced: Some(crate::hooks::Enhanced::known(enhanced)),
        text: text.into(),
    };
    Ok(Decision::Verdict(match reply {
        Reply::Continue => Verdict::Continue,
        Reply::Accept => return Ok(Decision::Accept),
        Reply::Skip => return Ok(Decision::Verdict(Verdict::Continue)),
        // Postfix's words for a milter's plain reject and tempfail.
        Reply::Reject => Verdict::Reject {
            code: 550,
            enhanced: Some(crate::hooks::Enhanced::known("5.7.1")),
            text: "Command rejected".into(),
        },
        Reply::TempFail => tempfail(451, "4.7.1", "Service unavailable - try again later"),
        Reply::Discard => Verdict::Discard,
        Reply::Shutdown => tempfail(421, "4.7.0", "Server closing connection"),
        Reply::ConnFail => tempfail(451, "4.7.1", "Service unavailable - try again later"),
        Reply::ReplyCode { code, text } => reply_code(code, &text)?,
        other => {
            return Err(format!(
                "reply {:?} where a decision was due",
                char::from(other.code())
            ));
        }
    }))
}

/// SMFIR_REPLYCODE's reply (`550 5.7.1 text`, or several lines joined by CRLF) as a verdict:
/// the code, and the text of its lines without their codes, `%%` unescaped.
fn reply_code(code: u16, full: &str) -> Result<Verdict, String> {
    let prefix = code.to_string();
    let text: Vec<String> = full
        .split("\r\n")
        .map(|line| {
            let rest = line.strip_prefix(prefix.as_str()).unwrap_or(line);
            codec::unescape_percent(rest.trim_start_matches(['-', ' ']))
        })
        .collect();
    let text = text.join(" ");
    let v = match code {
        400..=499 => Verdict::tempfail(i64::from(code), &text),
        _ => Verdict::reject(i64::from(code), &text),
    };
    v.map_err(|e| format!("reply code: {e}"))
}

fn agreed(slot: &Slot) -> Result<&codec::Agreed, String> {
    Ok(&slot.conn.as_ref().ok_or("no connection")?.agreed)
}

fn describe(e: ConnError) -> String {
    e.to_string()
}

fn push(edits: &mut MessageEdits, edit: HeaderEdit) {
    if let Err(e) = edits.header(edit) {
        tracing::warn!(error = %e, "milter header change ignored");
    }
}

/// A header value from a milter as text (`\n` folds kept; `apply` makes them CRLF).
fn text(value: Vec<u8>) -> String {
    String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The `C` event: the client's name (`[ip]` without one, as Postfix) and address.
fn connect_command(ctx: &HookCtx) -> Command {
    let hostname = if ctx.client_ptr.is_empty() {
        format!("[{}]", ctx.client_ip)
    } else {
        ctx.client_ptr.clone()
    };
    let address = match ctx.client_ip {
        std::net::IpAddr::V4(addr) => ConnectAddress::Inet {
            port: ctx.client_port,
            addr,
        },
        std::net::IpAddr::V6(addr) => ConnectAddress::Inet6 {
            port: ctx.client_port,
            addr,
        },
    };
    Command::Connect { hostname, address }
}

/// Postfix's default macro lists (`milter_*_macros`), plus `{client_addr}` and
/// `{client_port}` at connect.
fn default_macros(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Connect => &[
            "j",
            "{daemon_name}",
            "v",
            "_",
            "{client_addr}",
            "{client_port}",
            "{client_name}",
            "{client_ptr}",
        ],
        Stage::Helo => &["{tls_version}", "{cipher}"],
        Stage::Mail => &["i", "{auth_type}", "{auth_authen}", "{mail_addr}"],
        Stage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        Stage::Data | Stage::Header | Stage::EndOfHeaders | Stage::Body | Stage::EndOfBody => {
            &["i"]
        }
        Stage::Unknown => &[],
    }
}

/// The header fields of `head` as the milter gets them: the name, and the value with folds
/// as `\n` and, unless `lead`, the one space after the colon taken off.
fn header_fields(head: &[u8], lead: bool) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some((_, v)) = fields.last_mut() {
                v.push(b'\n');
                v.extend_from_slice(line);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        let mut value = &line[colon + 1..];
        if !lead && value.first() == Some(&b' ') {
            value = &value[1..];
        }
        // A NUL would end the string on the milter's side; messages carry none (refused at
        // DATA), but a filter's input is checked anyway.
        fields.push((
            name,
            value
                .iter()
                .map(|&b| if b == 0 { b' ' } else { b })
                .collect(),
        ));
    }
    fields
}

impl HookEngine for MilterHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, point: HookPoint) -> bool {
        matches!(
            point,
            HookPoint::Connect
                | HookPoint::Helo
                | HookPoint::Mail
                | HookPoint::Rcpt
                | HookPoint::Data
        )
    }

    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        crate::blocking::wait(self.run(ctx, None, actions))
    }

    fn call_async<'a>(
        &'a self,
        ctx: &'a HookCtx,
        session: Option<&'a HookSession>,
        actions: &'a mut Actions,
    ) -> HookFuture<'a> {
        Box::pin(self.run(ctx, session, actions))
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_become_verdicts_with_their_text() {
        assert_eq!(
            reply_code(550, "550 5.7.1 forbidden %%keyword").unwrap(),
            Verdict::reject(550, "5.7.1 forbidden %keyword").unwrap()
        );
        assert_eq!(
            reply_code(451, "451-4.7.1 first\r\n451 4.7.1 second").unwrap(),
            Verdict::tempfail(451, "4.7.1 first 4.7.1 second").unwrap()
        );
        assert!(reply_code(250, "250 ok").is_err());
    }

    #[test]
    fn header_fields_as_milters_get_them() {
        let head = b"Subject: hi\r\nX-Fold: a\r\n\tb\r\nX-Empty:\r\n\r\n";
        assert_eq!(
            header_fields(head, false),
            vec![
                ("Subject".to_string(), b"hi".to_vec()),
                ("X-Fold".to_string(), b"a\n\tb".to_vec()),
                ("X-Empty".to_string(), b"".to_vec()),
            ]
        );
        assert_eq!(header_fields(head, true)[0].1, b" hi");
    }
}
