"""Foundation: configuration errors, env overrides, the embedded default,
administration with the server running and stopped, store locking, clean SIGTERM."""

import json
import os
import pathlib
import shutil
import signal
import sys
import smtplib
import subprocess
import threading
import time
import uuid

import pytest

from support.net import free_port, port_open
from support.server import ALICE, CORVUS_BIN, E2E_STORE, child_env


def run_check(tmp_path, text):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    p = subprocess.run(
        [CORVUS_BIN, "-c", str(cfg), "check"], capture_output=True, text=True, timeout=30,
        env=child_env(),
    )
    return cfg, p


def error_lines(p):
    return [l for l in p.stderr.splitlines() if l.strip()]


def check_errors(tmp_path, text, count: int) -> list[str]:
    """`corvus check` of a config with `text`, which must fail with `count` error lines."""
    _, p = run_check(tmp_path, text)
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == count, p.stderr
    return lines


# --- configuration ------------------------------------------------------------------------


def test_check_accepts_a_good_config(corvus_factory):
    c = corvus_factory()
    p = c.cli("check")
    assert "configuration OK" in p.stdout


def test_check_unknown_key_names_file_and_key(tmp_path):
    cfg, p = run_check(tmp_path, 'hostname = "mx"\n[smtp]\nvrfyy = true\n')
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert str(cfg) in lines[0] or "bad.toml" in lines[0], lines
    assert "vrfyy" in lines[0], lines
    assert "smtp" in lines[0], lines


def test_check_unknown_top_level_key(tmp_path):
    cfg, p = run_check(tmp_path, 'hostnam = "mx"\n')
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr
    assert "bad.toml" in lines[0] and "hostnam" in lines[0], lines


def test_check_bad_address(tmp_path):
    lines = check_errors(tmp_path, '[listen]\nsmtp = "nonsense"\nsubmission = ["127.0.0.1:2587", "1.2.3.4"]\n', 2)
    assert any("listen.smtp" in l and '"nonsense"' in l for l in lines), lines
    assert any("listen.submission" in l and '"1.2.3.4"' in l for l in lines), lines


def test_check_missing_cert_file(tmp_path):
    lines = check_errors(tmp_path, '[tls]\ncert = "/nonexistent/cert.pem"\nkey = "/nonexistent/key.pem"\n', 2)
    assert any("tls.cert" in l and "/nonexistent/cert.pem" in l for l in lines), lines
    assert any("tls.key" in l and "/nonexistent/key.pem" in l for l in lines), lines


def test_check_cert_without_key(tmp_path):
    _, p = run_check(tmp_path, '[tls]\ncert = "/etc/hostname"\n')
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1 and "tls" in lines[0], p.stderr


def test_serve_refuses_bad_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[listen]\nsmtp = "nonsense"\n')
    p = subprocess.run(
        [CORVUS_BIN, "-c", str(cfg), "serve"], capture_output=True, text=True, timeout=30,
        env=child_env(),
    )
    assert p.returncode != 0
    assert "listen.smtp" in p.stderr


def test_env_override_wins_over_file(corvus_factory):
    c = corvus_factory(listeners=("smtp",))
    file_port = c.ports["smtp"]
    env_port = free_port()
    c.start(env={"CORVUS_LISTEN__SMTP": f"127.0.0.1:{env_port}"}, wait=False)
    c.wait_ready([env_port])
    assert not port_open(file_port), "the file's address must not be used when env overrides it"
    s = smtplib.SMTP("127.0.0.1", env_port, timeout=10)
    code, _ = s.ehlo("client.test")
    assert code == 250
    s.quit()
    out = c.stdout_path.read_text()
    assert f"127.0.0.1:{env_port}" in out


def test_env_override_of_a_nested_scalar(corvus_factory):
    c = corvus_factory(listeners=("smtp",), smtp={"vrfy": False})
    c.add_user(ALICE)
    c.start(env={"CORVUS_SMTP__VRFY": "true"})
    r = c.raw_smtp()
    r.expect(220)
    r.cmd("EHLO client.test")
    code, _ = r.cmd(f"VRFY <{ALICE}>")
    assert code == 250
    r.close()


def test_corvus_config_env_names_the_file(corvus_factory):
    """CORVUS_CONFIG is the CLI's -c, not a setting: it must not be refused as an unknown key."""
    c = corvus_factory(listeners=("smtp",))
    env = child_env({"CORVUS_CONFIG": str(c.config)})
    p = subprocess.run([CORVUS_BIN, "check"], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    assert f"configuration OK (1 listener; store: {E2E_STORE} at " in p.stdout, p.stdout
    p = subprocess.run([CORVUS_BIN, "user", "add", ALICE, "--password", "pw"],
                       capture_output=True, text=True, env=env, timeout=30, cwd=c.base)
    assert p.returncode == 0, p.stderr
    assert ALICE in c.cli("user", "list").stdout


def test_unknown_environment_setting_is_an_error(corvus_factory):
    c = corvus_factory()
    p = c.cli("check", env={"CORVUS_SMTP__VRFYY": "true"}, check=False)
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1 and "environment" in lines[0] and "vrfyy" in lines[0], p.stderr


def test_embedded_default(tmp_path):
    """`corvus serve` without -c listens on 127.0.0.1:2525/2587/2465 and says so."""
    from support.embedded_probe import EMBEDDED_PORTS, probe

    result = probe(str(tmp_path))
    if result["busy"]:
        # Another server holds the ports: repeat in a private network namespace if we can.
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.skip(f"embedded default ports busy on this machine: {result['busy']}")
        script = pathlib.Path(__file__).parent / "support" / "embedded_probe.py"
        p = subprocess.run(
            ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null || true; exec "$0" "$@"',
             sys.executable, str(script), str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )
        if p.returncode != 0 and "unshare" in p.stderr:
            pytest.skip(f"embedded default ports busy and no network namespace: {p.stderr}")
        assert p.returncode == 0, p.stderr
        result = json.loads(p.stdout)
        assert not result["busy"], result
    out = result["output"]
    assert result["not_listening"] == [], out
    code, msg = result["ehlo"]
    assert code == 250 and msg.startswith("localhost "), result
    for port in EMBEDDED_PORTS.values():
        assert f"127.0.0.1:{port}" in out, out
    assert "corvus user add" in out, "no hint how to add an account:\n" + out
    assert result["data_dir"], "no ./corvus-data created in the working directory"
    assert result["exit"] == 0, out


# --- administration -----------------------------------------------------------------------


def admin_round_trip(c):
    """user/domain/alias commands end to end; the same whether the server runs or not."""
    c.cli("user", "add", "carol@example.org", "--password", "pw1")
    p = c.cli("user", "add", "carol@example.org", "--password", "pw1", check=False)
    assert p.returncode != 0 and "exists" in p.stderr
    c.cli("user", "add", "dave@example.org", "--password-stdin", input="pw2\n")
    users = c.cli("user", "list").stdout.split()
    assert "carol@example.org" in users and "dave@example.org" in users
    c.cli("user", "passwd", "carol@example.org", "--password", "pw3")
    assert set(c.mailboxes("carol@example.org")) == {
        "INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"
    }
    c.cli("user", "del", "dave@example.org")
    assert "dave@example.org" not in c.cli("user", "list").stdout.split()
    p = c.cli("user", "del", "dave@example.org", check=False)
    assert p.returncode != 0 and "not found" in p.stderr

    c.cli("domain", "add", "other.test")
    domains = c.cli("domain", "list").stdout
    assert "other.test" in domains and "example.org" in domains
    p = c.cli("domain", "add", "bad domain", check=False)
    assert p.returncode != 0
    c.cli("domain", "del", "other.test")
    assert "other.test" not in c.cli("domain", "list").stdout

    c.cli("alias", "add", "sales@example.org", "carol@example.org", "root@example.org")
    aliases = c.cli("alias", "list").stdout
    assert "sales@example.org -> carol@example.org, root@example.org" in aliases
    p = c.cli("alias", "add", "notanaddress", "carol@example.org", check=False)
    assert p.returncode != 0
    c.cli("alias", "del", "sales@example.org")
    assert "sales@example.org" not in c.cli("alias", "list").stdout


def assert_round_trip_applied(c):
    """What admin_round_trip left, as the smtp listener sees it: carol is a recipient, dave
    is not."""
    s = c.smtp()
    s.ehlo()
    assert s.mail("x@remote.test")[0] == 250
    assert s.rcpt("carol@example.org")[0] == 250
    assert s.rcpt("dave@example.org")[0] == 550
    s.quit()


def test_admin_commands_with_server_stopped(corvus_factory):
    c = corvus_factory()
    admin_round_trip(c)
    # The changes are in the store the server then opens.
    c.start()
    assert_round_trip_applied(c)


def test_admin_commands_with_server_running(corvus_factory):
    c = corvus_factory()
    c.start()
    admin_round_trip(c)
    # Changes made through the control socket take effect in the running server.
    assert_round_trip_applied(c)
    s = c.submit_session("carol@example.org", "pw3")
    s.quit()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        c.submit_session("carol@example.org", "pw1")
    # And they were written to the store: still there after a restart.
    c.stop()
    assert "carol@example.org" in c.cli("user", "list").stdout.split()


def test_store_held_by_another_process(corvus_factory):
    a = corvus_factory("a")
    a.start()
    b = corvus_factory("b", data_dir=a.data_dir)
    t0 = time.monotonic()
    b.start(wait=False)
    try:
        rc = b.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        b.proc.kill()
        raise AssertionError("second server did not give up on a locked store within 10 s")
    assert time.monotonic() - t0 < 10
    assert rc != 0
    assert "in use by another process" in b.logs()
    # The first server is unharmed.
    s = a.smtp()
    assert s.noop()[0] == 250
    s.quit()


def send_loop(c, stop, accepted, errors, n):
    """Send messages until `stop`; record the Message-IDs that got 250 after DATA."""
    while not stop.is_set():
        try:
            s = c.smtp(timeout=10)
            s.ehlo()
            while not stop.is_set():
                mid = f"<{uuid.uuid4().hex}@client.test>"
                msg = (
                    f"From: x@remote.test\r\nTo: {ALICE}\r\nMessage-ID: {mid}\r\n"
                    f"Subject: load {n}\r\n\r\n" + "body line\r\n" * 50
                ).encode()
                if s.mail("x@remote.test")[0] != 250 or s.rcpt(ALICE)[0] != 250:
                    break
                code, _ = s.data(msg)
                if code == 250:
                    accepted.append(mid)
                else:
                    break
            try:
                s.quit()
            except Exception:
                pass
        except (OSError, smtplib.SMTPException):
            errors.append(1)
            time.sleep(0.05)


def message_ids(c, user):
    ids = []
    for raw in c.stored_messages(user):
        for line in raw.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
                break
    return ids


def test_sigterm_during_activity_loses_nothing(server):
    stop = threading.Event()
    accepted, errors = [], []
    threads = [
        threading.Thread(target=send_loop, args=(server, stop, accepted, errors, i))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(accepted) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(accepted) >= 100, server.logs()
    server.stop(expect=0)  # SIGTERM while the senders keep going
    stop.set()
    for t in threads:
        t.join(timeout=30)
    ids = message_ids(server, ALICE)  # store opened directly: the server is gone
    missing = set(accepted) - set(ids)
    assert not missing, f"{len(missing)} accepted messages lost"
    assert len(ids) == len(set(ids)), "a message was stored twice"
    # Restart on the same data: everything is still there.
    server.start()
    assert server.mailboxes(ALICE)["INBOX"] == len(ids)


# --- TLS files ----------------------------------------------------------------------------


def peer_cert(c, listener="submissions"):
    s = c.smtp(listener)
    der = s.sock.getpeercert(binary_form=True)
    s.quit()
    return der


def test_self_signed_certificate_generated_once_and_reused(corvus_factory):
    c = corvus_factory()
    c.start()
    first = peer_cert(c)
    assert (c.data_dir / "tls" / "cert.pem").is_file()
    assert (c.data_dir / "tls" / "key.pem").stat().st_mode & 0o077 == 0, "key readable by others"
    c.stop()
    c.start()
    assert peer_cert(c) == first


def test_configured_certificate_is_used(corvus_factory):
    a = corvus_factory("a")
    a.start()
    a_cert = peer_cert(a)
    a.stop()
    tls_dir = a.data_dir / "tls"
    b = corvus_factory(
        "b",
        extra=f'[tls]\ncert = "{tls_dir / "cert.pem"}"\nkey = "{tls_dir / "key.pem"}"\n',
    )
    assert "configuration OK" in b.cli("check").stdout
    b.start()
    assert peer_cert(b) == a_cert
    assert not (b.data_dir / "tls").exists(), "generated a certificate despite [tls]"


def test_check_rejects_unusable_certificate(corvus_factory, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not PEM\n")
    c = corvus_factory(extra=f'[tls]\ncert = "{junk}"\nkey = "{junk}"\n')
    p = c.cli("check", check=False)
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1 and str(junk) in lines[0], p.stderr


# --- shutdown -----------------------------------------------------------------------------


def test_shutdown_timeout_bounds_a_stuck_session(corvus_factory):
    """A client stalled in DATA cannot keep the server from exiting after SIGTERM."""
    c = corvus_factory(shutdown_timeout="2s", smtp={"data_timeout": "60s"})
    c.add_user(ALICE)
    c.start()
    r = c.raw_smtp()
    r.expect(220)
    r.cmd("EHLO client.test")
    r.cmd("MAIL FROM:<x@remote.test>")
    r.cmd(f"RCPT TO:<{ALICE}>")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: stuck\r\n\r\nhalf a message")
    t0 = time.monotonic()
    c.stop(expect=0, timeout=20)
    assert time.monotonic() - t0 < 8
    r.close()
    assert c.mailboxes(ALICE)["INBOX"] == 0


def test_sigint_is_a_clean_shutdown_too(corvus_factory):
    c = corvus_factory()
    c.start()
    c.proc.send_signal(signal.SIGINT)
    assert c.proc.wait(timeout=20) == 0
    assert not (c.data_dir / "control.sock").exists(), "control socket left behind"
