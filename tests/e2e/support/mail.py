"""Test messages, and helpers for the messages Corvus stores."""

from __future__ import annotations

import re
import time


def without_return_path(raw: bytes) -> bytes:
    """A stored message without the Return-Path line final delivery put on top, if any."""
    m = re.match(rb"Return-Path: <[^\r\n]*>\r\n", raw)
    return raw[m.end():] if m else raw


def split_received(raw: bytes) -> tuple[bytes, bytes]:
    """Split a stored message into the Received header Corvus prepended and the rest (after
    the Return-Path of final delivery, and the Authentication-Results header that the smtp
    listener puts on top of every message)."""
    raw = without_return_path(raw)
    if raw.startswith(b"Authentication-Results: "):
        m = re.search(rb"\r\n(?![ \t])", raw)
        raw = raw[m.end():]
    assert raw.startswith(b"Received: "), raw[:200]
    m = re.search(rb"\r\n(?![ \t])", raw)
    assert m, raw[:500]
    return raw[: m.end()], raw[m.end():]


def headers_of(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def checked_header(raw: bytes, body: bytes) -> tuple[bytes, list[bytes]]:
    """The header of a stored message and its field names (lower case), after checking that
    its body is `body` and that no header line is over 998 octets (RFC 5322 §2.1.1)."""
    head, got = raw.split(b"\r\n\r\n", 1)
    assert got == body, got[:200]
    lines = head.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines), [len(line) for line in lines]
    return head, [line.split(b":", 1)[0].lower() for line in lines if line[:1] not in (b" ", b"\t")]


def simple_message(subject="Test message", body="Hello world\r\n", frm="a@remote.test",
                   to="x@example.org", extra_headers="") -> bytes:
    """A small message with a unique Message-ID (CRLF lines)."""
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@t>\r\n"
            f"{extra_headers}\r\n{body}").encode()


def message(subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    """A small message whose Message-ID follows from `subject` (CRLF lines)."""
    return (
        "From: Sender <sender@remote.test>\r\n"
        "To: someone@example.org\r\n"
        "Subject: %s\r\n"
        "Message-ID: <%s@remote.test>\r\n"
        "Date: Mon, 04 Mar 2024 10:11:12 +0000\r\n"
        "%s"
        "\r\n%s" % (subject, subject.replace(" ", "-"), extra, body)
    ).encode()
