"""The HTTP side of a server under test (issue 25: `[listen] http`/`https`): an admin API
client with a bearer token, Prometheus text parsed by prometheus_client's own parser, raw
HTTP/1.1 over a socket for requests a client library would tidy up (encoded dot segments,
headers sent slowly), and waiting for message traces (written asynchronously by the
server's trace writer).

Clients are independent of the server's code: `requests` (one connection per request,
`Connection: close`, so no pooled keep-alive connection meets a server-side timeout) and
`prometheus_client.parser` / `prometheus_client.openmetrics.parser`.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import warnings

import requests
import urllib3
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from .net import tls_context
from .wait import wait_for

_DEFAULT = object()


def create_token(server, name: str) -> str:
    """`corvus token create NAME`: the token, alone on the last line of stdout."""
    out = server.cli("token", "create", name).stdout
    token = out.strip().splitlines()[-1].strip()
    assert token and " " not in token, f"token create printed no token on its last line:\n{out}"
    return token


class Api:
    """Requests to one listener (`http` or `https`) of `server`, with `Authorization: Bearer
    token` unless a request says otherwise (`token=None`: no header)."""

    def __init__(self, server=None, token: str | None = None, listener: str = "http",
                 base: str | None = None):
        """`server`'s `listener`, or the listener at `base` ("http://127.0.0.1:PORT")."""
        if base is None:
            scheme = "https" if listener == "https" else "http"
            base = f"{scheme}://{server.host}:{server.ports[listener]}"
        self.base = base
        self.token = token

    def url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, token=_DEFAULT, headers: dict | None = None,
                timeout: float = 30, **kw) -> requests.Response:
        headers = {"Connection": "close", **(headers or {})}
        token = self.token if token is _DEFAULT else token
        if token is not None and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {token}"
        with warnings.catch_warnings():
            # The https listener's certificate is self-signed (pytest resets the filter
            # urllib3.disable_warnings sets).
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            return requests.request(method, self.url(path), headers=headers, timeout=timeout,
                                    verify=False, allow_redirects=False, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def describe(r: requests.Response) -> str:
    """`METHOD URL -> STATUS body` for assertion messages."""
    return f"{r.request.method} {r.request.url} -> {r.status_code} {r.text[:600]!r}"


def check(r: requests.Response, status: int):
    """Assert the status; return the JSON body (None when there is none)."""
    assert r.status_code == status, f"expected {status}: {describe(r)}"
    if not r.content:
        return None
    return r.json()


def check_error(r: requests.Response, status: int) -> str:
    """Assert an API error: `status`, a JSON `{"error": "<one line>"}` body; its text."""
    assert r.status_code == status, f"expected {status}: {describe(r)}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], describe(r)
    assert "\n" not in body["error"].strip(), describe(r)
    if status == 401:
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), (
            f"401 without WWW-Authenticate: Bearer: {describe(r)} {dict(r.headers)}")
    return body["error"]


# --- metrics ---------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset], float]


def parse_metrics(text: str) -> tuple[Samples, dict[str, str]]:
    """Prometheus text format 0.0.4 through prometheus_client's parser: ({(sample name,
    labels): value}, {family name: type}). The parser raises on anything malformed."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"sample {key} twice"
            samples[key] = s.value
    return samples, types


def parse_openmetrics(text: str) -> Samples:
    """OpenMetrics text through prometheus_client's (strict) OpenMetrics parser."""
    samples: Samples = {}
    for fam in om_families(text):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include every one of `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> list[dict]:
    """The label sets of the samples named `name`."""
    return [dict(ls) for (n, ls) in samples if n == name]


def scrape(api: Api, token: str | None = None) -> tuple[Samples, dict[str, str], str]:
    """GET /metrics (with the metrics token, if any), parsed: (samples, types, raw text)."""
    r = api.get("/metrics", token=token)
    assert r.status_code == 200, describe(r)
    samples, types = parse_metrics(r.text)
    return samples, types, r.text


# --- raw HTTP ----------------------------------------------------------------------------------

def raw_request(port: int, request: bytes, host: str = "127.0.0.1", tls: bool = False,
                timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Send `request` bytes as they are (the request should say `Connection: close`), read
    to EOF: (status, headers with lower-case names, body)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        s = tls_context().wrap_socket(sock) if tls else sock
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    assert m, f"not an HTTP response: {data[:300]!r}"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


def get_raw(port: int, path: str, **kw) -> tuple[int, dict[str, str], bytes]:
    """GET `path` exactly as given (no normalization, no re-encoding)."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode("latin-1")
    return raw_request(port, req, **kw)


def closed_within(sock: socket.socket, seconds: float, trickle: bytes | None = None,
                  every: float = 0.25) -> tuple[bool, float, bytes]:
    """Watch `sock` for up to `seconds`, sending `trickle` every `every` seconds if given:
    (whether the server closed it, when, what it sent before closing)."""
    start = time.monotonic()
    got = b""
    sock.settimeout(every)
    while time.monotonic() - start < seconds:
        if trickle is not None:
            try:
                sock.sendall(trickle)
            except OSError:
                return True, time.monotonic() - start, got
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True, time.monotonic() - start, got
        if not chunk:
            return True, time.monotonic() - start, got
        got += chunk
    return False, time.monotonic() - start, got


# --- message traces -----------------------------------------------------------------------------

def queued_id(reply: bytes | str) -> str:
    """The queue id in "250 2.0.0 Ok: queued as ID"."""
    text = reply.decode() if isinstance(reply, bytes) else reply
    m = re.search(r"queued as (\S+)", text)
    assert m, f"no queue id in {text!r}"
    return m.group(1)


def wait_trace(api: Api, id: str, until=lambda t: True, what: str = "the trace",
               timeout: float = 20) -> dict:
    """GET /api/trace/{id} until it answers 200 with a trace for which `until` is true (the
    trace writer works asynchronously); the trace."""
    last = {}

    def ready():
        r = api.get(f"/api/trace/{id}")
        if r.status_code == 200:
            last["trace"] = r.json()
            return last["trace"] if until(last["trace"]) else None
        last["response"] = describe(r)
        return None

    try:
        return wait_for(ready, what=f"{what} of {id}", timeout=timeout, interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {last}") from None
