"""TLS to the database (issue 23): with `sslmode=require` in `[store] url`, Corvus talks to
PostgreSQL over TLS and verifies its certificate against `[tls] trust_roots`; a certificate
from a CA it does not trust is refused, naming the cause. The server is a throwaway
PostgreSQL on loopback TCP with `ssl = on` and a certificate made here with openssl."""

import subprocess

import pytest

from support.net import free_port
from support.postgres import Postgres
from support.server import CORVUS_BIN, child_env


def openssl(*args: str, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name: str):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory):
    d = tmp_path_factory.mktemp("pgtls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
    port = free_port()
    pg = Postgres(tcp_port=port, tls=(str(d / "server.crt"), str(d / "server.key")))
    yield pg, port, d
    pg.close()


def check(tmp_path, url: str, trust: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'hostname = "mx.example.org"\ndomains = ["example.org"]\n'
                   f'data_dir = "{tmp_path / "data"}"\n'
                   f'[tls]\ntrust_roots = "{trust}"\n'
                   f'[store]\nbackend = "postgres"\nurl = "{url}"\n')
    return subprocess.run([CORVUS_BIN, "-c", str(cfg), *("store", "migrate")],
                          capture_output=True, text=True, env=child_env(), timeout=60)


def test_sslmode_require_verifies_the_database_certificate(tls_postgres, tmp_path):
    pg, port, d = tls_postgres
    name = pg.database().split("dbname=")[1]
    url = f"host=127.0.0.1 port={port} user=postgres dbname={name} sslmode=require"
    p = check(tmp_path, url, str(d / "ca.pem"))
    assert p.returncode == 0, p.stderr
    assert "created the Corvus schema" in p.stdout, p.stdout
    # A CA Corvus does not trust: the handshake fails, and the error says so (which also
    # shows the first connection was TLS, verified).
    p = check(tmp_path, url, str(d / "other-ca.pem"))
    assert p.returncode != 0
    assert "unavailable" in p.stderr and ("certificate" in p.stderr.lower()
                                           or "tls" in p.stderr.lower()), p.stderr
