//! The listeners Corvus serves (`[listen]` keys): which protocol each speaks and whether
//! TLS starts at once. One enum instead of names compared as strings; [`Listener::name`] is
//! what the config, logs, scripts (`ctx.listener`) and plugins see.

/// A kind of listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// SMTP on port 25: mail from other servers (and, if allowed, local clients).
    Smtp,
    /// Message submission with STARTTLS (port 587, RFC 6409).
    Submission,
    /// Message submission over implicit TLS (port 465, RFC 8314).
    Submissions,
    /// IMAP with STARTTLS (port 143).
    Imap,
    /// IMAP over implicit TLS (port 993).
    Imaps,
    /// POP3 with STLS (port 110).
    Pop3,
    /// POP3 over implicit TLS (port 995).
    Pop3s,
    /// ManageSieve with STARTTLS (port 4190, RFC 5804).
    ManageSieve,
    /// Not a socket: the outbound queue's own local deliveries, bounces and reports
    /// (`ctx.listener` is "queue" in their `on_delivery` hooks).
    Queue,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SMTP (inbound and submission).
    Smtp,
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
    /// ManageSieve.
    ManageSieve,
}

impl Protocol {
    /// Its name in logs and `[limits]`-style per-protocol counters.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::ManageSieve => "managesieve",
        }
    }
}

impl Listener {
    /// Every `[listen]` listener, in that table's order ([`Listener::Queue`] is none).
    pub const ALL: [Listener; 8] = [
        Listener::Smtp,
        Listener::Submission,
        Listener::Submissions,
        Listener::Imap,
        Listener::Imaps,
        Listener::Pop3,
        Listener::Pop3s,
        Listener::ManageSieve,
    ];

    /// The `[listen]` key, also `ctx.listener` in scripts and plugins.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Smtp => "smtp",
            Listener::Submission => "submission",
            Listener::Submissions => "submissions",
            Listener::Imap => "imap",
            Listener::Imaps => "imaps",
            Listener::Pop3 => "pop3",
            Listener::Pop3s => "pop3s",
            Listener::ManageSieve => "managesieve",
            Listener::Queue => "queue",
        }
    }

    /// The `[listen]` listener named `name`.
    pub fn from_name(name: &str) -> Option<Listener> {
        Listener::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The protocol it speaks.
    pub fn protocol(self) -> Protocol {
        match self {
            Listener::Smtp | Listener::Submission | Listener::Submissions | Listener::Queue => {
                Protocol::Smtp
            }
            Listener::Imap | Listener::Imaps => Protocol::Imap,
            Listener::Pop3 | Listener::Pop3s => Protocol::Pop3,
            Listener::ManageSieve => Protocol::ManageSieve,
        }
    }

    /// Whether TLS starts with the connection (no plaintext greeting).
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Listener::Submissions | Listener::Imaps | Listener::Pop3s
        )
    }

    /// Whether it is a submission port (AUTH required before MAIL).
    pub fn is_submission(self) -> bool {
        matches!(self, Listener::Submission | Listener::Submissions)
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_kinds() {
        for l in Listener::ALL {
            assert_eq!(Listener::from_name(l.name()), Some(l));
            assert_eq!(l.to_string(), l.name());
        }
        assert_eq!(Listener::from_name("smtps"), None);
        assert_eq!(Listener::from_name("queue"), None);
        assert_eq!(Listener::Queue.name(), "queue");
        let tls: Vec<_> = Listener::ALL
            .into_iter()
            .filter(|l| l.implicit_tls())
            .collect();
        assert_eq!(
            tls,
            [Listener::Submissions, Listener::Imaps, Listener::Pop3s]
        );
        assert!(Listener::Submission.is_submission() && !Listener::Smtp.is_submission());
        assert_eq!(Listener::Pop3s.protocol(), Protocol::Pop3);
    }
}
