"""Pytest fixtures of the end-to-end tests; the harness itself is the `support` package.

Each test gets its own server process (support/server.py; the IMAP tests of one module may
share `imap_server`): a temp config TOML (ports picked by binding port 0), its own data_dir,
and a loopback DNS responder (support/dns.py) so no lookup leaves the machine. Clients are independent of the server code: smtplib, imaplib,
poplib, and the raw clients of support/clients.py for transcripts. Every server still
running at the end of a test gets SIGTERM and must exit 0.

CORVUS_E2E_STORE=postgres runs every server on PostgreSQL (support/server.py): the session's
throwaway PostgreSQL is stopped at the end of the session, and the databases of servers no
longer in use are dropped after each test.
"""

from __future__ import annotations

import pytest

from support import postgres
from support.dns import DnsServer
from support.server import ALICE, BOB, E2E_STORE, HOOKS, IMAP, POP3, Server, stop_all, with_preset


def pytest_report_header(config):
    return f"corvus store backend: {E2E_STORE} (CORVUS_E2E_STORE)"


def pytest_terminal_summary(terminalreporter):
    pg = postgres.session_running()
    if pg is not None:
        terminalreporter.write_line(
            f"PostgreSQL store: {pg.n} databases made in {pg.dir}, {len(pg.by_dir)} still in use")


def pytest_unconfigure(config):
    """The very end of the session (after the summary): stop its PostgreSQL, if started."""
    postgres.close_session()


@pytest.fixture(autouse=True)
def _drop_unused_databases():
    """After each test: drop the PostgreSQL databases of servers no longer in use (those of
    this test's servers go after the next one: pytest keeps its fixture values until the
    end of its teardown)."""
    yield
    pg = postgres.session_running()
    if pg is not None:
        pg.drop_unused()


@pytest.fixture(scope="session")
def loopback_dns():
    """A responder with an empty zone (NXDOMAIN for every name), shared by all tests."""
    d = DnsServer()
    yield d
    d.close()


@pytest.fixture
def dns():
    """A responder of this test's own, whose zone the test fills."""
    d = DnsServer()
    yield d
    d.close()


@pytest.fixture
def corvus_factory(tmp_path, loopback_dns):
    """Make servers: `corvus_factory(name=None, **Server kwargs)`, not started, in
    tmp_path/name (default srv, srv1, srv2, …); they use `loopback_dns` unless given
    another `dns_addr`."""
    made: list[Server] = []

    def make(name: str | None = None, dns_addr: str | None = None, **kw) -> Server:
        name = name or ("srv%d" % len(made) if made else "srv")
        s = Server(tmp_path / name, dns_addr or loopback_dns.addr, **kw)
        made.append(s)
        return s

    yield make
    stop_all(made)


@pytest.fixture
def server_with(corvus_factory):
    """Start a server with alice and bob, given config overrides."""

    def make(**kw) -> Server:
        c = corvus_factory(**kw)
        c.add_user(ALICE)
        c.add_user(BOB)
        return c.start()

    return make


@pytest.fixture
def server(server_with) -> Server:
    return server_with()


# --- IMAP: a server per module, or per test with its own settings --------------------------

@pytest.fixture(scope="module")
def imap_server(tmp_path_factory, loopback_dns):
    """An IMAP server shared by the tests of one module (each test makes its own user)."""
    s = Server(tmp_path_factory.mktemp("imap"), loopback_dns.addr, **IMAP).start()
    yield s
    stop_all([s])


@pytest.fixture
def user(imap_server):
    return imap_server.add_user()


@pytest.fixture
def make_server(corvus_factory):
    """An IMAP server with its own [imap]/[smtp] settings: make_server(imap=…, smtp=…, extra=…)."""

    def make(start=True, **kw) -> Server:
        s = corvus_factory(**with_preset(IMAP, **kw))
        return s.start() if start else s

    return make


# --- POP3 and hooks -----------------------------------------------------------------------

@pytest.fixture
def pop3_server(corvus_factory):
    """A started POP3 server: pop3_server(pop3=…, smtp=…)."""
    return lambda **kw: corvus_factory(**with_preset(POP3, **kw)).start()


@pytest.fixture
def hook_server(corvus_factory):
    """A server for the hook tests, started unless `start` is false:
    hook_server(hooks=[{script=…|plugin=…, config={…}}], name=…, extra=…, pop3=…, dns_addr=…)."""

    def make(hooks: list[dict], pop3: bool = False, start: bool = True, **kw) -> Server:
        if pop3:
            kw = with_preset({"listeners": HOOKS["listeners"] + ("pop3",),
                              "pop3": {"allow_plaintext_auth": True}}, **kw)
        s = corvus_factory(**with_preset(HOOKS, hooks=hooks, **kw))
        return s.start() if start else s

    return make
