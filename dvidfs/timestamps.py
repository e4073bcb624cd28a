"""The one clock and the one timestamp format of dvidfs.

Records (nodes, repos, mutation logs) store seconds since the epoch as floats
(`now()`); whatever shows a time to a person or to a DVID client writes it with
`iso()`: RFC 3339 in UTC with a trailing Z, as DVID's JSON does.
"""
from __future__ import annotations

import time


def now() -> float:
    """Seconds since the epoch."""
    return time.time()


def iso(t: float | None = None) -> str:
    """`t` (default: now) as RFC 3339 UTC, e.g. 2026-12-02T03:30:07Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now() if t is None else t))
