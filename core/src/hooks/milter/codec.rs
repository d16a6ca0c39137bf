//! Milter protocol version 6, MTA (client) side, sans I/O: [`Command`]s become bytes through
//! [`Command::encode`], bytes from the milter become [`Reply`] values through a streaming
//! [`Decoder`], and [`Negotiation::agree`] turns the milter's `OPTNEG` answer into the
//! [`Agreed`] set of events, replies and actions for the connection.
//!
//! Wire format (Sendmail `include/libmilter/mfdef.h`, Postfix `src/milter/milter8.c`): every
//! packet is a 4-byte big-endian length that counts the command byte and the data (so it is
//! at least 1), one command byte, then the data. Strings end in NUL, integers are u32
//! big-endian, the connect port is u16 big-endian.
//!
//! This module knows byte layouts only. What a reply means at a given stage (an `ACCEPT` at
//! connect accepts the connection, modifications only come after end of body, `%%` in a
//! reply text, header index semantics) is the session's business.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The protocol version we speak and offer.
pub const PROTOCOL_VERSION: u32 = 6;

/// The oldest milter protocol version we accept (Postfix's oldest event table is version 2).
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Largest body chunk one `SMFIC_BODY` packet may carry (`MILTER_CHUNK_SIZE`); libmilter
/// refuses bigger ones.
pub const MAX_BODY_CHUNK: usize = 65535;

/// Largest packet (command byte plus data) the [`Decoder`] accepts, and [`Command::encode`]
/// produces: 1 MiB plus 1 KiB for the command byte, integer fields and NULs.
///
/// libmilter itself caps packets at 64 KiB unless the MTA offers the internal
/// `SMFIP_MDS_256K`/`SMFIP_MDS_1M` bits, which we never do, so a conforming milter stays far
/// below this; the cap only bounds what a broken or hostile one can make us buffer. (Postfix
/// allows up to `INT_MAX / 2`.)
pub const MAX_PACKET_LEN: u32 = 1024 * 1024 + 1024;

// Commands, MTA to milter (SMFIC_*).
/// `SMFIC_OPTNEG`: option negotiation.
pub const SMFIC_OPTNEG: u8 = b'O';
/// `SMFIC_MACRO`: macro definitions for the next command.
pub const SMFIC_MACRO: u8 = b'D';
/// `SMFIC_CONNECT`: connection information.
pub const SMFIC_CONNECT: u8 = b'C';
/// `SMFIC_HELO`: HELO/EHLO name.
pub const SMFIC_HELO: u8 = b'H';
/// `SMFIC_MAIL`: MAIL FROM and its parameters.
pub const SMFIC_MAIL: u8 = b'M';
/// `SMFIC_RCPT`: RCPT TO and its parameters.
pub const SMFIC_RCPT: u8 = b'R';
/// `SMFIC_DATA`: the DATA command (protocol 4 and later).
pub const SMFIC_DATA: u8 = b'T';
/// `SMFIC_HEADER`: one header field.
pub const SMFIC_HEADER: u8 = b'L';
/// `SMFIC_EOH`: end of the header.
pub const SMFIC_EOH: u8 = b'N';
/// `SMFIC_BODY`: one body chunk.
pub const SMFIC_BODY: u8 = b'B';
/// `SMFIC_BODYEOB`: end of the body; the milter answers with modifications and a decision.
pub const SMFIC_BODYEOB: u8 = b'E';
/// `SMFIC_UNKNOWN`: an SMTP command the MTA did not recognise (protocol 3 and later).
pub const SMFIC_UNKNOWN: u8 = b'U';
/// `SMFIC_ABORT`: end the current message, keep the connection.
pub const SMFIC_ABORT: u8 = b'A';
/// `SMFIC_QUIT`: close the milter connection.
pub const SMFIC_QUIT: u8 = b'Q';
/// `SMFIC_QUIT_NC`: reset for a new SMTP connection on the same milter connection.
pub const SMFIC_QUIT_NC: u8 = b'K';

// Replies, milter to MTA (SMFIR_*).
/// `SMFIR_CONTINUE`.
pub const SMFIR_CONTINUE: u8 = b'c';
/// `SMFIR_ACCEPT`.
pub const SMFIR_ACCEPT: u8 = b'a';
/// `SMFIR_REJECT`.
pub const SMFIR_REJECT: u8 = b'r';
/// `SMFIR_TEMPFAIL`.
pub const SMFIR_TEMPFAIL: u8 = b't';
/// `SMFIR_DISCARD`.
pub const SMFIR_DISCARD: u8 = b'd';
/// `SMFIR_REPLYCODE`: a reject or tempfail with the milter's own SMTP reply.
pub const SMFIR_REPLYCODE: u8 = b'y';
/// `SMFIR_PROGRESS`: still working, keep waiting.
pub const SMFIR_PROGRESS: u8 = b'p';
/// `SMFIR_QUARANTINE`: quarantine the message (not a final decision).
pub const SMFIR_QUARANTINE: u8 = b'q';
/// `SMFIR_SKIP`: send no more events of this kind (body chunks).
pub const SMFIR_SKIP: u8 = b's';
/// `SMFIR_SHUTDOWN`: 421 and close.
pub const SMFIR_SHUTDOWN: u8 = b'4';
/// `SMFIR_CONN_FAIL`: the milter reports a connection failure.
pub const SMFIR_CONN_FAIL: u8 = b'f';
/// `SMFIR_ADDHEADER`: append a header field.
pub const SMFIR_ADDHEADER: u8 = b'h';
/// `SMFIR_INSHEADER`: insert a header field at an index among all fields.
pub const SMFIR_INSHEADER: u8 = b'i';
/// `SMFIR_CHGHEADER`: change or delete the Nth field of a name.
pub const SMFIR_CHGHEADER: u8 = b'm';
/// `SMFIR_CHGFROM`: change the envelope sender.
pub const SMFIR_CHGFROM: u8 = b'e';
/// `SMFIR_ADDRCPT`: add an envelope recipient.
pub const SMFIR_ADDRCPT: u8 = b'+';
/// `SMFIR_ADDRCPT_PAR`: add an envelope recipient with ESMTP parameters.
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
/// `SMFIR_DELRCPT`: remove an envelope recipient.
pub const SMFIR_DELRCPT: u8 = b'-';
/// `SMFIR_REPLBODY`: a piece of the replacement body.
pub const SMFIR_REPLBODY: u8 = b'b';

// Actions the milter may take (SMFIF_*), offered by the MTA in OPTNEG.
/// The milter may add header fields (`SMFIR_ADDHEADER`, `SMFIR_INSHEADER`).
pub const SMFIF_ADDHDRS: u32 = 0x01;
/// The milter may replace the body (`SMFIR_REPLBODY`).
pub const SMFIF_CHGBODY: u32 = 0x02;
/// The milter may add recipients (`SMFIR_ADDRCPT`).
pub const SMFIF_ADDRCPT: u32 = 0x04;
/// The milter may remove recipients (`SMFIR_DELRCPT`).
pub const SMFIF_DELRCPT: u32 = 0x08;
/// The milter may change or delete header fields (`SMFIR_CHGHEADER`).
pub const SMFIF_CHGHDRS: u32 = 0x10;
/// The milter may quarantine the message (`SMFIR_QUARANTINE`).
pub const SMFIF_QUARANTINE: u32 = 0x20;
/// The milter may change the envelope sender (`SMFIR_CHGFROM`).
pub const SMFIF_CHGFROM: u32 = 0x40;
/// The milter may add recipients with ESMTP parameters (`SMFIR_ADDRCPT_PAR`).
pub const SMFIF_ADDRCPT_PAR: u32 = 0x80;
/// The milter may send its own macro lists in the OPTNEG reply.
pub const SMFIF_SETSYMLIST: u32 = 0x100;
/// Every action bit of protocol version 6.
pub const SMFIF_ALL: u32 = 0x1FF;

// Protocol steps (SMFIP_*): "don't send me this" (NO*), "I won't reply to this" (NR_*), and
// a few extensions.
/// Don't send `SMFIC_CONNECT`.
pub const SMFIP_NOCONNECT: u32 = 0x1;
/// Don't send `SMFIC_HELO`.
pub const SMFIP_NOHELO: u32 = 0x2;
/// Don't send `SMFIC_MAIL`.
pub const SMFIP_NOMAIL: u32 = 0x4;
/// Don't send `SMFIC_RCPT`.
pub const SMFIP_NORCPT: u32 = 0x8;
/// Don't send `SMFIC_BODY`.
pub const SMFIP_NOBODY: u32 = 0x10;
/// Don't send `SMFIC_HEADER`.
pub const SMFIP_NOHDRS: u32 = 0x20;
/// Don't send `SMFIC_EOH`.
pub const SMFIP_NOEOH: u32 = 0x40;
/// No reply to `SMFIC_HEADER` (also known as `SMFIP_NOHREPL`).
pub const SMFIP_NR_HDR: u32 = 0x80;
/// Don't send `SMFIC_UNKNOWN`.
pub const SMFIP_NOUNKNOWN: u32 = 0x100;
/// Don't send `SMFIC_DATA`.
pub const SMFIP_NODATA: u32 = 0x200;
/// The MTA understands `SMFIR_SKIP`.
pub const SMFIP_SKIP: u32 = 0x400;
/// The milter wants recipients the MTA rejected too.
pub const SMFIP_RCPT_REJ: u32 = 0x800;
/// No reply to `SMFIC_CONNECT`.
pub const SMFIP_NR_CONN: u32 = 0x1000;
/// No reply to `SMFIC_HELO`.
pub const SMFIP_NR_HELO: u32 = 0x2000;
/// No reply to `SMFIC_MAIL`.
pub const SMFIP_NR_MAIL: u32 = 0x4000;
/// No reply to `SMFIC_RCPT`.
pub const SMFIP_NR_RCPT: u32 = 0x8000;
/// No reply to `SMFIC_DATA`.
pub const SMFIP_NR_DATA: u32 = 0x10000;
/// No reply to `SMFIC_UNKNOWN`.
pub const SMFIP_NR_UNKN: u32 = 0x20000;
/// No reply to `SMFIC_EOH`.
pub const SMFIP_NR_EOH: u32 = 0x40000;
/// No reply to `SMFIC_BODY`.
pub const SMFIP_NR_BODY: u32 = 0x80000;
/// Header values go both ways with the space after the colon kept.
pub const SMFIP_HDR_LEADSPC: u32 = 0x100000;
/// Every NO* bit.
pub const SMFIP_NOSEND_MASK: u32 = SMFIP_NOCONNECT
    | SMFIP_NOHELO
    | SMFIP_NOMAIL
    | SMFIP_NORCPT
    | SMFIP_NOBODY
    | SMFIP_NOHDRS
    | SMFIP_NOEOH
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA;
/// Every NR_* bit.
pub const SMFIP_NOREPLY_MASK: u32 = SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_UNKN
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY;
/// Every protocol bit of version 6 (`SMFI_CURR_PROT`).
pub const SMFIP_ALL: u32 = 0x1FFFFF;

/// A protocol stage: the event a [`Command`] reports, and the stage a [`Command::Macro`]
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `SMFIC_CONNECT`.
    Connect,
    /// `SMFIC_HELO`.
    Helo,
    /// `SMFIC_MAIL`.
    Mail,
    /// `SMFIC_RCPT`.
    Rcpt,
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`.
    Header,
    /// `SMFIC_EOH`.
    EndOfHeaders,
    /// `SMFIC_BODY`.
    Body,
    /// `SMFIC_BODYEOB`.
    EndOfBody,
    /// `SMFIC_UNKNOWN`.
    Unknown,
}

impl Stage {
    /// Every stage, in the order of one SMTP session.
    pub const ALL: [Stage; 10] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::EndOfHeaders,
        Stage::Body,
        Stage::EndOfBody,
        Stage::Unknown,
    ];

    /// The command byte of the stage's event (also the first data byte of its `SMFIC_MACRO`).
    pub const fn command(self) -> u8 {
        match self {
            Stage::Connect => SMFIC_CONNECT,
            Stage::Helo => SMFIC_HELO,
            Stage::Mail => SMFIC_MAIL,
            Stage::Rcpt => SMFIC_RCPT,
            Stage::Data => SMFIC_DATA,
            Stage::Header => SMFIC_HEADER,
            Stage::EndOfHeaders => SMFIC_EOH,
            Stage::Body => SMFIC_BODY,
            Stage::EndOfBody => SMFIC_BODYEOB,
            Stage::Unknown => SMFIC_UNKNOWN,
        }
    }

    /// The NO* bit with which a milter declines this event (0 for end of body, which is
    /// always sent).
    pub const fn no_send_bit(self) -> u32 {
        match self {
            Stage::Connect => SMFIP_NOCONNECT,
            Stage::Helo => SMFIP_NOHELO,
            Stage::Mail => SMFIP_NOMAIL,
            Stage::Rcpt => SMFIP_NORCPT,
            Stage::Data => SMFIP_NODATA,
            Stage::Header => SMFIP_NOHDRS,
            Stage::EndOfHeaders => SMFIP_NOEOH,
            Stage::Body => SMFIP_NOBODY,
            Stage::EndOfBody => 0,
            Stage::Unknown => SMFIP_NOUNKNOWN,
        }
    }

    /// The NR_* bit with which a milter says it will not reply to this event (0 for end of
    /// body, which always gets a reply).
    pub const fn no_reply_bit(self) -> u32 {
        match self {
            Stage::Connect => SMFIP_NR_CONN,
            Stage::Helo => SMFIP_NR_HELO,
            Stage::Mail => SMFIP_NR_MAIL,
            Stage::Rcpt => SMFIP_NR_RCPT,
            Stage::Data => SMFIP_NR_DATA,
            Stage::Header => SMFIP_NR_HDR,
            Stage::EndOfHeaders => SMFIP_NR_EOH,
            Stage::Body => SMFIP_NR_BODY,
            Stage::EndOfBody => 0,
            Stage::Unknown => SMFIP_NR_UNKN,
        }
    }

    /// The first protocol version that has this event (Postfix `MILTER8_V*_PROTO_MASK`:
    /// `SMFIC_UNKNOWN` came with 3, `SMFIC_DATA` with 4).
    pub const fn min_version(self) -> u32 {
        match self {
            Stage::Unknown => 3,
            Stage::Data => 4,
            _ => 2,
        }
    }

    /// The stage a macro list index in the OPTNEG reply names (`SMFIM_*`: 0 connect,
    /// 1 helo, 2 mail, 3 rcpt, 4 data, 5 end of message, 6 end of header).
    pub const fn from_macro_list_index(index: u32) -> Option<Stage> {
        match index {
            0 => Some(Stage::Connect),
            1 => Some(Stage::Helo),
            2 => Some(Stage::Mail),
            3 => Some(Stage::Rcpt),
            4 => Some(Stage::Data),
            5 => Some(Stage::EndOfBody),
            6 => Some(Stage::EndOfHeaders),
            _ => None,
        }
    }
}

/// The client address in [`Command::Connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectAddress {
    /// IPv4 (family `4`).
    Inet {
        /// Client port.
        port: u16,
        /// Client address.
        addr: Ipv4Addr,
    },
    /// IPv6 (family `6`), sent in its usual text form without an `IPv6:` prefix (as Postfix).
    Inet6 {
        /// Client port.
        port: u16,
        /// Client address.
        addr: Ipv6Addr,
    },
    /// A local socket (family `L`), sent with port 0.
    Unix {
        /// Socket path.
        path: String,
    },
    /// Unknown family (`U`): nothing follows the family byte.
    Unknown,
}

/// What the MTA sends to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `O`: our protocol version, the actions we allow (SMFIF_*), the steps we can leave out
    /// or go without a reply for (SMFIP_*). See [`Negotiation`].
    OptNeg {
        /// Protocol version.
        version: u32,
        /// SMFIF_* bits.
        actions: u32,
        /// SMFIP_* bits.
        protocol: u32,
    },
    /// `D`: macros for the event that follows. Never answered.
    Macro {
        /// The stage whose event follows.
        stage: Stage,
        /// `(name, value)` pairs; names as in the configured list (`j`, `{daemon_name}`).
        pairs: Vec<(String, String)>,
    },
    /// `C`: the client connected.
    Connect {
        /// Client host name, or `[ip]` when it has none (Postfix's form).
        hostname: String,
        /// Family, port and address.
        address: ConnectAddress,
    },
    /// `H`: HELO/EHLO argument.
    Helo(String),
    /// `M`: MAIL FROM.
    Mail {
        /// The reverse-path with its angle brackets (`<a@b.example>`, `<>`).
        sender: String,
        /// ESMTP parameters as given (`SIZE=100`, `BODY=8BITMIME`).
        params: Vec<String>,
    },
    /// `R`: RCPT TO.
    Rcpt {
        /// The forward-path with its angle brackets.
        rcpt: String,
        /// ESMTP parameters as given (`NOTIFY=NEVER`).
        params: Vec<String>,
    },
    /// `T`: DATA (protocol 4 and later).
    Data,
    /// `L`: one header field. Folded continuation lines are joined with `\n`.
    Header {
        /// Field name, without the colon.
        name: String,
        /// Field value: the space after the colon removed unless `SMFIP_HDR_LEADSPC` was
        /// agreed. Bytes, because a raw 8-bit header need not be UTF-8.
        value: Vec<u8>,
    },
    /// `N`: end of the header.
    EndOfHeaders,
    /// `B`: one body chunk of at most [`MAX_BODY_CHUNK`] bytes, CRLF line ends. Split a body
    /// with [`body_chunks`].
    Body(Vec<u8>),
    /// `E`: end of the body. Always answered: modifications, then one decision.
    EndOfBody,
    /// `U`: an SMTP command line the MTA did not recognise, without its CRLF.
    Unknown(String),
    /// `A`: forget the current message, keep the connection. Never answered.
    Abort,
    /// `Q`: close. Never answered.
    Quit,
    /// `K`: start over for a new SMTP connection on this milter connection. Never answered.
    QuitNewConnection,
}

/// Why a [`Command`] cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string field holds a NUL byte, which would end the string early on the other side
    /// and let the rest be read as the next field.
    #[error("milter command field {0} contains a NUL byte")]
    InteriorNul(&'static str),
    /// A body chunk longer than [`MAX_BODY_CHUNK`].
    #[error("milter body chunk of {0} bytes exceeds 65535")]
    BodyChunkTooLong(usize),
    /// The packet would be longer than [`MAX_PACKET_LEN`].
    #[error("milter command of {0} bytes exceeds the limit of 1 MiB + 1 KiB")]
    TooLong(usize),
}

impl Command {
    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => SMFIC_OPTNEG,
            Command::Macro { .. } => SMFIC_MACRO,
            Command::Connect { .. } => SMFIC_CONNECT,
            Command::Helo(_) => SMFIC_HELO,
            Command::Mail { .. } => SMFIC_MAIL,
            Command::Rcpt { .. } => SMFIC_RCPT,
            Command::Data => SMFIC_DATA,
            Command::Header { .. } => SMFIC_HEADER,
            Command::EndOfHeaders => SMFIC_EOH,
            Command::Body(_) => SMFIC_BODY,
            Command::EndOfBody => SMFIC_BODYEOB,
            Command::Unknown(_) => SMFIC_UNKNOWN,
            Command::Abort => SMFIC_ABORT,
            Command::Quit => SMFIC_QUIT,
            Command::QuitNewConnection => SMFIC_QUIT_NC,
        }
    }

    /// Appends the packet (length, command byte, data) to `out`. On error `out` is left as it
    /// was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.code());
        let result = self.encode_data(out).and_then(|()| {
            let len = out.len() - start - 4;
            u32::try_from(len)
                .ok()
                .filter(|&n| n <= MAX_PACKET_LEN)
                .ok_or(EncodeError::TooLong(len))
        });
        match result {
            Ok(len) => {
                out[start..start + 4].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn encode_data(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&actions.to_be_bytes());
                out.extend_from_slice(&protocol.to_be_bytes());
            }
            Command::Macro { stage, pairs } => {
                out.push(stage.command());
                for (name, value) in pairs {
                    put_str(out, name.as_bytes(), "macro name")?;
                    put_str(out, value.as_bytes(), "macro value")?;
                }
            }
            Command::Connect { hostname, address } => {
                put_str(out, hostname.as_bytes(), "hostname")?;
                match address {
                    ConnectAddress::Inet { port, addr } => {
                        out.push(b'4');
                        out.extend_from_slice(&port.to_be_bytes());
                        put_str(out, addr.to_string().as_bytes(), "address")?;
                    }
                    ConnectAddress::Inet6 { port, addr } => {
                        out.push(b'6');
                        out.extend_from_slice(&port.to_be_bytes());
                        put_str(out, addr.to_string().as_bytes(), "address")?;
                    }
                    ConnectAddress::Unix { path } => {
                        out.push(b'L');
                        out.extend_from_slice(&0u16.to_be_bytes());
                        put_str(out, path.as_bytes(), "socket path")?;
                    }
                    ConnectAddress::Unknown => out.push(b'U'),
                }
            }
            Command::Helo(name) => put_str(out, name.as_bytes(), "helo")?,
            Command::Mail { sender, params } => {
                put_str(out, sender.as_bytes(), "sender")?;
                for p in params {
                    put_str(out, p.as_bytes(), "mail parameter")?;
                }
            }
            Command::Rcpt { rcpt, params } => {
                put_str(out, rcpt.as_bytes(), "recipient")?;
                for p in params {
                    put_str(out, p.as_bytes(), "rcpt parameter")?;
                }
            }
            Command::Header { name, value } => {
                put_str(out, name.as_bytes(), "header name")?;
                put_str(out, value, "header value")?;
            }
            Command::Body(chunk) => {
                if chunk.len() > MAX_BODY_CHUNK {
                    return Err(EncodeError::BodyChunkTooLong(chunk.len()));
                }
                out.extend_from_slice(chunk);
            }
            Command::Unknown(line) => put_str(out, line.as_bytes(), "unknown command")?,
            Command::Data
            | Command::EndOfHeaders
            | Command::EndOfBody
            | Command::Abort
            | Command::Quit
            | Command::QuitNewConnection => {}
        }
        Ok(())
    }
}

/// Appends `s` and its NUL terminator, refusing a NUL inside `s`.
fn put_str(out: &mut Vec<u8>, s: &[u8], field: &'static str) -> Result<(), EncodeError> {
    if s.contains(&0) {
        return Err(EncodeError::InteriorNul(field));
    }
    out.extend_from_slice(s);
    out.push(0);
    Ok(())
}

/// Splits a message body into the pieces of successive [`Command::Body`] packets, each at
/// most [`MAX_BODY_CHUNK`] bytes. An empty body gives no chunks.
pub fn body_chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.chunks(MAX_BODY_CHUNK)
}

/// What the milter sends to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `O`: the milter's side of the negotiation. See [`Negotiation::agree`].
    OptNeg {
        /// The milter's protocol version.
        version: u32,
        /// SMFIF_* actions it wants to use.
        actions: u32,
        /// SMFIP_* steps it wants left out or without a reply.
        protocol: u32,
        /// Macro lists it wants instead of ours (`SMFIF_SETSYMLIST`): the `SMFIM_*` index
        /// (see [`Stage::from_macro_list_index`]) and the names as sent, space separated.
        macro_lists: Vec<(u32, String)>,
    },
    /// `c`: go on (at end of body: accept).
    Continue,
    /// `a`: accept (at connect/HELO the whole connection, else this message).
    Accept,
    /// `r`: reject.
    Reject,
    /// `t`: temporary failure.
    TempFail,
    /// `d`: accept and drop the message.
    Discard,
    /// `y`: reject or tempfail with this SMTP reply.
    ReplyCode {
        /// The three-digit code, 4xx or 5xx.
        code: u16,
        /// The whole reply as sent: `550 5.7.1 text`, or lines joined by CRLF with `550-` on
        /// all but the last. Checked like Postfix does; `%%` not yet unescaped (see
        /// [`unescape_percent`]).
        text: String,
    },
    /// `p`: still working; keep waiting.
    Progress,
    /// `q`: quarantine, with a reason. Not a decision: one still follows.
    Quarantine(String),
    /// `s`: send no more events of this kind (body chunks); go on with end of body.
    Skip,
    /// `4`: 421 and close.
    Shutdown,
    /// `f`: connection failure.
    ConnFail,
    /// `h`: append a header field.
    AddHeader {
        /// Field name (not empty).
        name: String,
        /// Field value; may hold `\n` + whitespace folds.
        value: Vec<u8>,
    },
    /// `i`: insert a header field at `index` among all fields, 0 = the top.
    InsHeader {
        /// Position among all header fields.
        index: u32,
        /// Field name (not empty).
        name: String,
        /// Field value.
        value: Vec<u8>,
    },
    /// `m`: change the `index`th field called `name` (1-based, 0 treated as 1); an empty
    /// value deletes it.
    ChgHeader {
        /// Which occurrence of `name`.
        index: u32,
        /// Field name (not empty).
        name: String,
        /// New value, empty to delete.
        value: Vec<u8>,
    },
    /// `e`: change the envelope sender.
    ChgFrom {
        /// The new sender.
        sender: String,
        /// ESMTP parameters, if the milter sent any.
        args: Option<String>,
    },
    /// `+` (`args` is `None`) or `2` (`args` is `Some`, possibly empty): add a recipient.
    AddRcpt {
        /// The new recipient.
        rcpt: String,
        /// ESMTP parameters; `Some` only for `SMFIR_ADDRCPT_PAR`.
        args: Option<String>,
    },
    /// `-`: remove a recipient, named as it was given in RCPT (with angle brackets).
    DelRcpt(String),
    /// `b`: a piece of the new body; successive pieces concatenate.
    ReplBody(Vec<u8>),
}

impl Reply {
    /// The reply byte.
    pub fn code(&self) -> u8 {
        match self {
            Reply::OptNeg { .. } => SMFIC_OPTNEG,
            Reply::Continue => SMFIR_CONTINUE,
            Reply::Accept => SMFIR_ACCEPT,
            Reply::Reject => SMFIR_REJECT,
            Reply::TempFail => SMFIR_TEMPFAIL,
            Reply::Discard => SMFIR_DISCARD,
            Reply::ReplyCode { .. } => SMFIR_REPLYCODE,
            Reply::Progress => SMFIR_PROGRESS,
            Reply::Quarantine(_) => SMFIR_QUARANTINE,
            Reply::Skip => SMFIR_SKIP,
            Reply::Shutdown => SMFIR_SHUTDOWN,
            Reply::ConnFail => SMFIR_CONN_FAIL,
            Reply::AddHeader { .. } => SMFIR_ADDHEADER,
            Reply::InsHeader { .. } => SMFIR_INSHEADER,
            Reply::ChgHeader { .. } => SMFIR_CHGHEADER,
            Reply::ChgFrom { .. } => SMFIR_CHGFROM,
            Reply::AddRcpt { args: None, .. } => SMFIR_ADDRCPT,
            Reply::AddRcpt { args: Some(_), .. } => SMFIR_ADDRCPT_PAR,
            Reply::DelRcpt(_) => SMFIR_DELRCPT,
            Reply::ReplBody(_) => SMFIR_REPLBODY,
        }
    }
}

/// A malformed reply stream. After one, the [`Decoder`] returns the same error forever: the
/// connection is out of step and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A length field of 0 (every packet has at least its command byte).
    #[error("milter packet with length 0")]
    ZeroLength,
    /// A length field over [`MAX_PACKET_LEN`]; refused before anything is buffered.
    #[error("milter packet of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length field.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A reply byte we don't know (or `l`, which only exists inside `O`).
    #[error("unknown milter reply {0:?}")]
    UnknownReply(char),
    /// A string field without its NUL terminator.
    #[error("milter reply {0:?}: string without NUL terminator")]
    MissingNul(char),
    /// Fewer than four bytes left where a u32 belongs.
    #[error("milter reply {0:?}: packet too short for a 32-bit integer")]
    ShortInteger(char),
    /// Bytes after the last field of a reply.
    #[error("milter reply {reply:?}: {extra} unexpected bytes after its data")]
    TrailingData {
        /// The reply byte.
        reply: char,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A text field that is not UTF-8.
    #[error("milter reply {0:?}: text that is not UTF-8")]
    NotUtf8(char),
    /// A header modification with an empty field name.
    #[error("milter reply {0:?}: empty header name")]
    EmptyHeaderName(char),
    /// A `SMFIR_REPLYCODE` text that is not a 4xx/5xx SMTP reply.
    #[error("malformed milter reply code {0:?}")]
    BadReplyCode(String),
    /// The stream ended inside a packet (see [`Decoder::finish`]).
    #[error("milter connection closed inside a packet")]
    Truncated,
}

/// Streaming reply decoder: feed it bytes as they arrive, split anywhere, and take complete
/// [`Reply`] values out. It buffers at most one packet, and a packet is at most
/// [`MAX_PACKET_LEN`] bytes.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The length field read so far.
    head: [u8; 4],
    /// How many bytes of `head` we have.
    head_len: usize,
    /// Command byte and data of the current packet (valid once `head_len == 4`).
    packet: Vec<u8>,
    /// Set after the first error; returned again on every later call.
    failed: Option<Error>,
}

/// Above this the packet buffer is dropped after use rather than kept for the next packet, so
/// one large reply body does not pin a megabyte for the life of the connection.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes bytes from the front of `input` and returns the next complete reply, or
    /// `Ok(None)` once `input` is used up without completing one. It stops right after a
    /// complete reply, so call it again while `input` is not empty.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Reply>, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while self.head_len < 4 {
            let Some((&b, rest)) = input.split_first() else {
                return Ok(None);
            };
            self.head[self.head_len] = b;
            self.head_len += 1;
            *input = rest;
            if self.head_len == 4 {
                let len = u32::from_be_bytes(self.head);
                if len == 0 {
                    return Err(self.fail(Error::ZeroLength));
                }
                if len > MAX_PACKET_LEN {
                    return Err(self.fail(Error::TooLong {
                        len,
                        max: MAX_PACKET_LEN,
                    }));
                }
            }
        }
        // At most MAX_PACKET_LEN, checked above; u32 to usize is lossless on our targets.
        let len = u32::from_be_bytes(self.head) as usize;
        let take = (len - self.packet.len()).min(input.len());
        let (now, rest) = input.split_at(take);
        self.packet.extend_from_slice(now);
        *input = rest;
        if self.packet.len() < len {
            return Ok(None);
        }
        let parsed = parse_reply(&self.packet);
        self.head_len = 0;
        if self.packet.capacity() > KEEP_CAPACITY {
            self.packet = Vec::new();
        } else {
            self.packet.clear();
        }
        match parsed {
            Ok(reply) => Ok(Some(reply)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Whether part of a packet is buffered (the stream must not end here).
    pub fn is_mid_packet(&self) -> bool {
        self.head_len > 0
    }

    /// Call when the milter closed the connection: an error if it did so inside a packet.
    pub fn finish(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.is_mid_packet() => Err(Error::Truncated),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e.clone());
        self.packet = Vec::new();
        e
    }
}

/// Reads the fields of one reply's data.
struct Fields<'a> {
    reply: char,
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Result<u32, Error> {
        let Some((n, rest)) = self.data.split_first_chunk::<4>() else {
            return Err(Error::ShortInteger(self.reply));
        };
        self.data = rest;
        Ok(u32::from_be_bytes(*n))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let Some(nul) = self.data.iter().position(|&b| b == 0) else {
            return Err(Error::MissingNul(self.reply));
        };
        let s = &self.data[..nul];
        self.data = &self.data[nul + 1..];
        Ok(s)
    }

    fn string(&mut self) -> Result<String, Error> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::NotUtf8(self.reply))
    }

    fn header_name(&mut self) -> Result<String, Error> {
        let name = self.string()?;
        if name.is_empty() {
            return Err(Error::EmptyHeaderName(self.reply));
        }
        Ok(name)
    }

    fn optional_string(&mut self) -> Result<Option<String>, Error> {
        if self.data.is_empty() {
            Ok(None)
        } else {
            self.string().map(Some)
        }
    }

    fn end<T>(self, value: T) -> Result<T, Error> {
        if self.data.is_empty() {
            Ok(value)
        } else {
            Err(Error::TrailingData {
                reply: self.reply,
                extra: self.data.len(),
            })
        }
    }
}

/// Parses one packet: the command byte, then its data.
fn parse_reply(packet: &[u8]) -> Result<Reply, Error> {
    let Some((&code, data)) = packet.split_first() else {
        return Err(Error::ZeroLength);
    };
    let mut f = Fields {
        reply: char::from(code),
        data,
    };
    match code {
        SMFIC_OPTNEG => {
            let version = f.u32()?;
            let actions = f.u32()?;
            let protocol = f.u32()?;
            let mut macro_lists = Vec::new();
            while !f.data.is_empty() {
                let index = f.u32()?;
                macro_lists.push((index, f.string()?));
            }
            Ok(Reply::OptNeg {
                version,
                actions,
                protocol,
                macro_lists,
            })
        }
        SMFIR_CONTINUE => f.end(Reply::Continue),
        SMFIR_ACCEPT => f.end(Reply::Accept),
        SMFIR_REJECT => f.end(Reply::Reject),
        SMFIR_TEMPFAIL => f.end(Reply::TempFail),
        SMFIR_DISCARD => f.end(Reply::Discard),
        SMFIR_PROGRESS => f.end(Reply::Progress),
        SMFIR_SKIP => f.end(Reply::Skip),
        SMFIR_SHUTDOWN => f.end(Reply::Shutdown),
        SMFIR_CONN_FAIL => f.end(Reply::ConnFail),
        SMFIR_REPLYCODE => {
            let text = f.string()?;
            let code = check_reply_code(&text)?;
            f.end(Reply::ReplyCode { code, text })
        }
        SMFIR_QUARANTINE => {
            let reason = f.string()?;
            f.end(Reply::Quarantine(reason))
        }
        SMFIR_ADDHEADER => {
            let name = f.header_name()?;
            let value = f.bytes()?.to_vec();
            f.end(Reply::AddHeader { name, value })
        }
        SMFIR_INSHEADER | SMFIR_CHGHEADER => {
            let index = f.u32()?;
            let name = f.header_name()?;
            let value = f.bytes()?.to_vec();
            f.end(if code == SMFIR_INSHEADER {
                Reply::InsHeader { index, name, value }
            } else {
                Reply::ChgHeader { index, name, value }
            })
        }
        SMFIR_CHGFROM => {
            let sender = f.string()?;
            let args = f.optional_string()?;
            f.end(Reply::ChgFrom { sender, args })
        }
        SMFIR_ADDRCPT => {
            let rcpt = f.string()?;
            f.end(Reply::AddRcpt { rcpt, args: None })
        }
        SMFIR_ADDRCPT_PAR => {
            let rcpt = f.string()?;
            let args = f.optional_string()?.unwrap_or_default();
            f.end(Reply::AddRcpt {
                rcpt,
                args: Some(args),
            })
        }
        SMFIR_DELRCPT => {
            let rcpt = f.string()?;
            f.end(Reply::DelRcpt(rcpt))
        }
        SMFIR_REPLBODY => Ok(Reply::ReplBody(data.to_vec())),
        other => Err(Error::UnknownReply(char::from(other))),
    }
}

/// Checks a `SMFIR_REPLYCODE` text the way Postfix's `milter8_valid_smtp_reply` does, and
/// returns its code: every line is `[45]dd` then `-` (all lines but the last) or a space (the
/// last), lines are joined by CRLF with no other CR or LF, an enhanced status code right
/// after it starts with the same digit, and (stricter than Postfix's stable release) every
/// line carries the same code.
fn check_reply_code(text: &str) -> Result<u16, Error> {
    let bad = || Error::BadReplyCode(text.to_string());
    let mut code: Option<&[u8]> = None;
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let separator = if lines.peek().is_none() { b' ' } else { b'-' };
        let b = line.as_bytes();
        if b.len() < 4
            || !matches!(b[0], b'4' | b'5')
            || !b[1].is_ascii_digit()
            || !b[2].is_ascii_digit()
            || b[3] != separator
            || (b.len() > 4 && b[4].is_ascii_digit() && b[4] != b[0])
            || b.iter().any(|&c| c == b'\r' || c == b'\n')
        {
            return Err(bad());
        }
        match code {
            None => code = Some(&b[..3]),
            Some(c) if c != &b[..3] => return Err(bad()),
            Some(_) => {}
        }
    }
    let c = code.ok_or_else(bad)?;
    Ok(c.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')))
}

/// Undoes Sendmail's format-string escaping in a reply text the way Postfix does: `%%`
/// becomes `%`, and a lone `%` is dropped.
pub fn unescape_percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Our side of the option negotiation: what we send in [`Command::OptNeg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiation {
    /// Protocol version we speak.
    pub version: u32,
    /// SMFIF_* actions we can apply.
    pub actions: u32,
    /// SMFIP_* steps we can leave out, send without waiting for a reply, or extensions we
    /// support.
    pub protocol: u32,
}

impl Default for Negotiation {
    fn default() -> Negotiation {
        Negotiation::CORVUS
    }
}

/// Why a milter's `OPTNEG` answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The first reply was not `O`.
    #[error("milter answered option negotiation with {0:?}")]
    NotOptNeg(char),
    /// The milter's version is older than [`MIN_PROTOCOL_VERSION`].
    #[error("milter protocol version {0} is too old (at least 2)")]
    VersionTooOld(u32),
    /// The milter's version is newer than the one we offered (Postfix refuses this too).
    #[error("milter protocol version {milter} is newer than ours ({ours})")]
    VersionTooNew {
        /// What the milter said.
        milter: u32,
        /// What we offered.
        ours: u32,
    },
    /// The milter wants actions we did not offer.
    #[error("milter wants actions {wanted:#x}, we offered {offered:#x}")]
    ActionsNotOffered {
        /// What the milter asked for.
        wanted: u32,
        /// What we offered.
        offered: u32,
    },
}

impl Negotiation {
    /// What Corvus offers: version 6, every action (libmilter drops the connection when a
    /// filter registered an action the MTA does not offer, and Postfix offers all of them
    /// too), every NO* and NR_* step, `SMFIP_SKIP` and `SMFIP_HDR_LEADSPC`. Not
    /// `SMFIP_RCPT_REJ`: we don't report rejected recipients to milters.
    pub const CORVUS: Negotiation = Negotiation {
        version: PROTOCOL_VERSION,
        actions: SMFIF_ALL,
        protocol: SMFIP_NOSEND_MASK | SMFIP_NOREPLY_MASK | SMFIP_SKIP | SMFIP_HDR_LEADSPC,
    };

    /// The `OPTNEG` command to send.
    pub fn command(&self) -> Command {
        Command::OptNeg {
            version: self.version,
            actions: self.actions,
            protocol: self.protocol,
        }
    }

    /// Checks the milter's answer to [`Negotiation::command`] and works out what to send and
    /// what to wait for (Postfix `milter8_connect`). Refused: a version below
    /// [`MIN_PROTOCOL_VERSION`] or above ours, and actions we did not offer. Protocol bits
    /// are taken as the milter sent them (a milter that says it won't reply must not be
    /// waited for, offered or not), except `SMFIP_SKIP` and `SMFIP_RCPT_REJ`, which need our
    /// support and count only if we offered them; bits above version 6 are dropped.
    pub fn agree(&self, reply: &Reply) -> Result<Agreed, NegotiationError> {
        let Reply::OptNeg {
            version,
            actions,
            protocol,
            macro_lists,
        } = reply
        else {
            return Err(NegotiationError::NotOptNeg(char::from(reply.code())));
        };
        let (version, actions, protocol) = (*version, *actions, *protocol);
        if version < MIN_PROTOCOL_VERSION {
            return Err(NegotiationError::VersionTooOld(version));
        }
        if version > self.version {
            return Err(NegotiationError::VersionTooNew {
                milter: version,
                ours: self.version,
            });
        }
        if actions & self.actions != actions {
            return Err(NegotiationError::ActionsNotOffered {
                wanted: actions,
                offered: self.actions,
            });
        }
        let ours_only = SMFIP_SKIP | SMFIP_RCPT_REJ;
        let protocol = (protocol & SMFIP_ALL & !ours_only) | (protocol & self.protocol & ours_only);
        // Postfix: once the milter sends any list, stages it left out get no macros.
        let macros = if macro_lists.is_empty() {
            None
        } else {
            let mut lists: Vec<(Stage, Vec<String>)> = Vec::new();
            for (index, names) in macro_lists {
                // Postfix ignores unknown indexes too (with a warning).
                if let Some(stage) = Stage::from_macro_list_index(*index) {
                    let names = names
                        .split([' ', ',', '\t'])
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                    lists.retain(|(s, _)| *s != stage);
                    lists.push((stage, names));
                }
            }
            Some(lists)
        };
        Ok(Agreed {
            version,
            actions,
            protocol,
            macros,
        })
    }
}

/// The outcome of the negotiation, for one milter connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The milter's protocol version (at most ours).
    pub version: u32,
    /// The SMFIF_* actions the milter may take.
    pub actions: u32,
    /// The effective SMFIP_* bits.
    pub protocol: u32,
    /// The milter's own macro lists (`None`: use ours).
    macros: Option<Vec<(Stage, Vec<String>)>>,
}

impl Agreed {
    /// Whether the stage exists in the milter's protocol version. If not, neither its event
    /// nor its macros go out (Postfix `np_mask`).
    pub fn sends_macros(&self, stage: Stage) -> bool {
        stage.min_version() <= self.version
    }

    /// Whether to send the stage's event. Its macros go out even when the milter declined
    /// the event itself (as Postfix does), see [`Agreed::sends_macros`].
    pub fn sends(&self, stage: Stage) -> bool {
        self.sends_macros(stage) && self.protocol & stage.no_send_bit() == 0
    }

    /// Whether to wait for a reply after sending the stage's event. End of body is always
    /// answered.
    pub fn expects_reply(&self, stage: Stage) -> bool {
        self.sends(stage) && self.protocol & stage.no_reply_bit() == 0
    }

    /// Whether the milter negotiated every action in `action` (SMFIF_* bits).
    pub fn allows(&self, action: u32) -> bool {
        self.actions & action == action
    }

    /// Whether `SMFIR_SKIP` is allowed (we offered it and the milter kept it).
    pub fn skip_allowed(&self) -> bool {
        self.protocol & SMFIP_SKIP != 0
    }

    /// Whether header values keep their leading space, both in `SMFIC_HEADER` and in the
    /// milter's header modifications (otherwise we strip one, and add one back).
    pub fn leading_space(&self) -> bool {
        self.protocol & SMFIP_HDR_LEADSPC != 0
    }

    /// Whether the milter wants rejected recipients as well (only if we offered it).
    pub fn wants_rejected_rcpts(&self) -> bool {
        self.protocol & SMFIP_RCPT_REJ != 0
    }

    /// The macro names the milter asked for at this stage, or `None` to use our own list.
    /// Header and body events use the end-of-header and end-of-message lists, as in Postfix.
    /// When the milter sent any list, a stage it left out gets an empty one.
    pub fn macros(&self, stage: Stage) -> Option<&[String]> {
        let lists = self.macros.as_ref()?;
        let stage = match stage {
            Stage::Header => Stage::EndOfHeaders,
            Stage::Body => Stage::EndOfBody,
            s => s,
        };
        Some(
            lists
                .iter()
                .find(|(s, _)| *s == stage)
                .map_or(&[][..], |(_, names)| names.as_slice()),
        )
    }
}

#[cfg(test)]
mod tests;
