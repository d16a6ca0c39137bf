"""Open-relay checks in the style of the classic relay test suites: every trick that has made
some MTA relay for unauthenticated clients, against every listener. None may be accepted for
delivery elsewhere: each recipient is refused, or accepted only as a (non-existent) local user
that then fails. Nothing may end up in the outbound queue."""

import smtplib

import pytest

from support.server import ALICE


# Local domain: example.org (with users alice and bob). Relay target: victim.test.
TRICKS = [
    "victim@victim.test",
    "<victim@victim.test>",
    "victim%victim.test@example.org",  # percent hack
    "victim%victim.test@[127.0.0.1]",
    "<@example.org:victim@victim.test>",  # source route
    "<@example.org,@mx.example.org:victim@victim.test>",
    '"victim@victim.test"@example.org',  # quoted local part
    '"victim%victim.test"@example.org',
    "victim@victim.test@example.org",  # user@other@local
    "victim.test!victim@example.org",  # bang path
    "victim.test!victim",
    "victim@victim.test.",
    "victim@[192.0.2.1]",  # address literal elsewhere
    "VICTIM@VICTIM.TEST",
    "victim@victim.test ",
    "alice@example.org@victim.test",
    "<alice@example.org>victim@victim.test",
]


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_no_relay_tricks_unauthenticated(server, listener):
    accepted = []
    for rcpt in TRICKS:
        # A fresh session per trick: refused recipients count towards max_errors.
        s = server.smtp(listener)
        s.ehlo("relaytest.example")
        code, _ = s.mail("<spammer@spam.test>")
        if code != 250:
            # Submission refuses MAIL without AUTH: that alone closes the relay.
            assert listener == "submission" and code == 530, (rcpt, code)
            s.quit()
            continue
        code, msg = s.docmd("RCPT TO:" + (rcpt if rcpt.startswith("<") else f"<{rcpt}>"))
        if code // 100 == 2:
            accepted.append((rcpt, code, msg))
        s.quit()
    assert not accepted, f"relay tricks accepted: {accepted}"
    assert "queue is empty" in server.cli("queue", "list").stdout


def test_relay_from_localhost_still_needs_auth(server):
    """Connecting from 127.0.0.1 grants nothing: no 'trusted networks' by default."""
    s = server.smtp("smtp")
    s.ehlo()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail("someone@example.org", ["victim@victim.test"], b"Subject: x\r\n\r\nx\r\n")
    s.quit()


def test_local_sender_does_not_open_relay(server):
    """MAIL FROM a local address (forged) does not allow relaying either."""
    s = server.smtp("smtp")
    s.ehlo()
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        s.sendmail(ALICE, ["victim@victim.test"], b"Subject: x\r\n\r\nx\r\n")
    s.quit()
    assert "queue is empty" in server.cli("queue", "list").stdout
