"""One HTTP client for every tracker backend: a ``requests.Session`` per thread (connection
reuse without sharing a session across threads), a timeout on every call, TLS verification as
the caller resolved it (``verify``), and retries with backoff on 429/5xx/connection errors.

Errors come out typed: ``RetryableError`` when trying again later can help (the request may
have landed: callers treat the outcome as unknown), ``HttpError`` (a ``PermanentError``)
carrying the status and the server's body otherwise. Nothing here ever logs headers or
bodies, so secrets in them never reach a log; ``scrub`` masks secrets a server echoes back in the
messages and bodies of the errors raised."""
from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import requests
import truststore
from requests.adapters import HTTPAdapter

from ..errors import PermanentError, RetryableError
from ..logs import hide_url_password
from .retry import backoff_delay, parse_retry_after

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part: what a link (a publish's page on the
    tracker, kept in the journal and shown on the desk) may hold."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return hide_url_password(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class HttpError(PermanentError):
    """The server answered with a 4xx (other than 429) or an unretryable status."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def body_of(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:2000]


def _tls_reason(exc: Exception) -> str:
    """The innermost reason of a TLS failure ("certificate verify failed: self-signed ...")."""
    import re

    m = re.search(r"certificate verify failed: ([^(')]+)", str(exc))
    return ("certificate verify failed: " + m.group(1).strip()) if m else type(exc).__name__


class OsTrustAdapter(HTTPAdapter):
    """Verifies servers against the operating system's trust store (macOS Keychain, the Windows
    certificate store, OpenSSL's store on Linux) instead of requests' bundled certifi list:
    studios install their internal CA there, once, for every program. Used when neither
    ``verify_tls: false`` nor ``ca_bundle`` says otherwise."""

    def __init__(self) -> None:
        self._context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)


class HttpClient:
    """``request()`` returns the decoded JSON body (or None for an empty body).

    ``describe_error(status, body)`` turns a server's error body into a sentence; backends pass
    their own because each tracker words its errors differently."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, verify: bool | str = True,
                 retries: int = 3, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 headers: dict[str, str] | None = None,
                 describe_error: Callable[[int, Any], str] | None = None,
                 scrub: Callable[[Any], Any] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.shown_url = hide_url_password(self.base_url)  # for messages: never a password
        self.timeout = timeout
        self.verify = verify
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.headers = dict(headers or {})
        self.describe_error = describe_error or (lambda status, body: f"HTTP {status}: {body}")
        self.scrub: Callable[[Any], Any] = scrub or (lambda v: hide_url_password(v) if isinstance(v, str) else v)
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.verify = self.verify
            if self.verify is True:  # no studio bundle named: the OS's own trust store
                s.mount("https://", OsTrustAdapter())
            s.headers.update(self.headers)
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, retry: bool = True,
                ok_statuses: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Send with retries. ``ok_statuses`` are non-2xx statuses returned as a body instead of
        raised (callers that branch on 404, say). ``retry=False`` for calls that must not be
        repeated blindly."""
        kwargs.setdefault("timeout", self.timeout)
        # per request: a session-level verify loses to $REQUESTS_CA_BUNDLE in requests' merge
        kwargs.setdefault("verify", self.verify)
        attempts = self.retries + 1 if retry else 1
        last: RetryableError | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(backoff_delay(attempt - 1, base=self.backoff_base, cap=self.backoff_cap,
                                          retry_after=last.retry_after if last else None))
            try:
                resp = self.session.request(method, self.url(path), **kwargs)
            except requests.exceptions.SSLError as exc:  # before ConnectionError, its base: retrying cannot help
                raise PermanentError(self.scrub(
                    f"{method} {path}: TLS certificate check failed for {self.shown_url} ({_tls_reason(exc)}); "
                    "set tracker.ca_bundle to your studio CA's PEM file, or tracker.verify_tls: false to turn "
                    "certificate checks off (not recommended)")) from None
            except requests.Timeout as exc:
                last = RetryableError(self.scrub(f"{method} {path}: no answer within {self.timeout:g} s "
                                                 f"({type(exc).__name__})"))
                continue
            except requests.ConnectionError as exc:
                last = RetryableError(self.scrub(f"{method} {path}: cannot connect to {self.shown_url} "
                                                 f"({type(exc).__name__})"))
                continue
            except requests.RequestException as exc:
                raise PermanentError(self.scrub(f"{method} {path}: {type(exc).__name__}: {exc}")) from None
            if resp.status_code < 300 or resp.status_code in ok_statuses:
                return body_of(resp) if resp.content else None
            body = self.scrub(body_of(resp))
            message = self.scrub(f"{method} {path}: {self.describe_error(resp.status_code, body)}")
            if resp.status_code in RETRY_STATUSES:
                last = RetryableError(message, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
                continue
            raise HttpError(message, status=resp.status_code, body=body)
        assert last is not None
        raise last

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()
        self._local = threading.local()
