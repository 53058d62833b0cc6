"""Backoff shared by the HTTP client (retries within one attempt) and the publisher
(retries across attempts): capped exponential with full jitter, honouring Retry-After."""
from __future__ import annotations

import random
from email.utils import parsedate_to_datetime
import time


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0,
                  retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0).

    Full jitter spreads a crowd of agents that all saw the same outage; a server's
    ``Retry-After`` is a floor, never shortened by the jitter."""
    r = rng or random
    delay = r.uniform(0, min(cap, base * (2 ** attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
