"""Support code of the end-to-end tests: one server harness, one DNS responder, raw clients.

- `net`: free ports, a port probe, the client TLS context (standard library only).
- `server`: `Server`, one `corvus serve` process with its config, data dir, CLI and clients.
- `dns`: `DnsServer`, the loopback DNS responder every server under test uses.
- `clients`: raw SMTP, IMAP and POP3 clients for transcripts.
- `mail`: message builders and helpers for stored messages.
- `wait`: polling a condition.
- `load`: client load on a server while a test changes something under it.
- `dovecot`, `postfix`: the reference servers of the differential tests.
- `embedded_probe`: runs `corvus serve` without a config (also as a script, in a network
  namespace).

`tests/e2e/conftest.py` wires these into pytest fixtures; the benchmark drivers in `bench/`
import them too (nothing here imports pytest).
"""
