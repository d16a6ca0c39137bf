"""Load on a server while a test changes something under it (reloads, failing hooks)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable


@contextlib.contextmanager
def under_load(srv, send: Callable[[object], None], threads: int = 3, per_session: int = 20,
               join: float = 120):
    """`threads` clients send through `srv` in sessions of `per_session` messages
    (`send(smtp)` sends one) until the block ends. Yields (errors, sent): the clients'
    exceptions, and [number of messages sent]."""
    stop = threading.Event()
    errors, sent = [], [0]

    def sender():
        try:
            while not stop.is_set():
                with srv.smtp() as s:
                    for _ in range(per_session):
                        send(s)
                        sent[0] += 1
                        if stop.is_set():
                            break
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            errors.append(repr(e))

    workers = [threading.Thread(target=sender) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield errors, sent
    finally:
        stop.set()
        for t in workers:
            t.join(join)


def served_meanwhile(srv, session: Callable[[int], None], threads: int, send: Callable[[object, int], None],
                     join: float = 120) -> float:
    """Run `session(n)` in `threads` threads, and meanwhile send five messages through one
    other session (`send(smtp, i)`); return how long those five took."""
    workers = [threading.Thread(target=session, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    started = time.monotonic()
    with srv.smtp() as s:
        for i in range(5):
            send(s, i)
    took = time.monotonic() - started
    for t in workers:
        t.join(join)
    return took
