"""Waiting for a condition that another process makes true."""

from __future__ import annotations

import time


def poll(cond, timeout: float = 5.0, interval: float = 0.05):
    """Call `cond` until it returns something true or `timeout` seconds pass; return its last
    value (false on timeout: the caller decides whether that is a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return cond()


def wait_for(cond, what: str = "condition", timeout: float = 20.0, interval: float = 0.1):
    """`poll`, but a timeout is an AssertionError naming `what`."""
    v = poll(cond, timeout, interval)
    if not v:
        raise AssertionError(f"timed out waiting for {what}")
    return v
