"""The one base of the tests' HTTP fakes (ShotGrid, ftrack, Kitsu/Zou, the lossy proxy in front of
the real Zou): a real ``ThreadingHTTPServer`` on 127.0.0.1, a request log and one fault
vocabulary. A fake only says how it answers a request (``respond``) and what its error bodies
look like (``error_body``); everything else lives here.

Lifecycle: ``start()`` binds an ephemeral port (``url``), ``stop()`` shuts the server and every
open connection down, ``with Fake() as f:`` does both; ``pause()`` refuses connections on the
same port until ``resume()``.

Faults, each for the next ``count`` matching requests (``count=None``: every one until
``clear_faults()``), matched on ``method``, a regular expression searched in ``path``, and the
fake's own filters (``**where``, e.g. ftrack's ``action="create"``):

- ``reply(status, retry_after=, body=, headers=)``: answer that status without processing the
  request (the body defaults to the fake's own error body for the status);
- ``drop()``: close the connection before processing (nothing applied, no answer);
- ``drop_after_apply()``: process the request, apply its effects, then close the connection
  (the write landed, its answer is lost);
- ``slow(delay)``: process, then wait ``delay`` seconds before answering.

Fakes may add kinds of their own through ``add_fault`` (ftrack's non-atomic ``partial``).
``log`` holds every request (``Request``: method, path, query, headers, raw, body, status; a
status of None means no answer was sent).
"""
from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from requests.structures import CaseInsensitiveDict

REPLY, DROP, DROP_AFTER_APPLY, SLOW = "reply", "drop", "drop_after_apply", "slow"
_DEFAULT: Any = object()


@dataclass
class Fault:
    kind: str
    count: int | None  # None: unlimited
    status: int = 503
    body: Any = _DEFAULT
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    method: str | None = None
    path: str | None = None  # regular expression searched in the request path
    where: dict[str, Any] = field(default_factory=dict)  # the fake's own filters
    params: dict[str, Any] = field(default_factory=dict)  # the fake's own parameters (custom kinds)


@dataclass
class Request:
    """One request as received. ``body`` is what the fake chose to record (parsed JSON by
    default); ``status`` is what was answered, None when the connection was closed instead."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: CaseInsensitiveDict
    raw: bytes
    target: str = ""  # the request line's target, query string included
    body: Any = None
    status: int | None = None
    fault: Fault | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.raw or b"null")
        except ValueError:
            return None


Response = tuple  # (status, body, headers): body is JSON-encoded unless bytes; None = empty


class FakeServer:
    """Base of the fakes. Subclasses implement ``respond(request) -> (status, body, headers)``."""

    name: ClassVar[str] = "fake"
    protocol_version: ClassVar[str] = "HTTP/1.1"
    request_class: ClassVar[type[Request]] = Request

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # ---- what a fake provides ---------------------------------------------------------------
    def respond(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        """The tracker's own body for an injected ``reply(status)`` without a body."""
        return {"error": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"}

    def fault_matches(self, fault: Fault, request: Request) -> bool:
        """The fake's own filters (``**where``); none by default."""
        if fault.where:
            raise TypeError(f"{type(self).__name__} has no fault filters {sorted(fault.where)}")
        return True

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        fake = self

        class Handler(_Handler):
            server_fake = fake
            protocol_version = fake.protocol_version

        for _ in range(100):  # resume() rebinds the same port; TIME_WAIT can delay it briefly
            try:
                self._httpd = _Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                if not self.port:
                    raise
                time.sleep(0.05)
        else:  # pragma: no cover
            raise RuntimeError(f"cannot rebind 127.0.0.1:{self.port}")
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self.lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:  # keep-alive connections would otherwise go on being served
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def pause(self) -> None:
        """Connection refused from now on (the port stays ours for ``resume``)."""
        self.stop()

    def resume(self) -> None:
        if self._httpd is None:
            self.start()

    def __enter__(self) -> "FakeServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- faults ---------------------------------------------------------------------------
    def add_fault(self, kind: str, count: int | None = 1, *, method: str | None = None, path: str | None = None,
                  where: dict[str, Any] | None = None, **spec: Any) -> Fault:
        fault = Fault(kind, count, method=method, path=path, where=dict(where or {}), **spec)
        with self.lock:
            self.faults.append(fault)
        return fault

    def reply(self, status: int, *, count: int | None = 1, retry_after: float | str | None = None,
              body: Any = _DEFAULT, headers: dict[str, str] | None = None, method: str | None = None,
              path: str | None = None, **where: Any) -> Fault:
        """The next ``count`` matching requests are answered ``status`` (with ``Retry-After`` and
        ``body`` when given) and not processed."""
        h = dict(headers or {})
        if retry_after is not None:
            h["Retry-After"] = str(retry_after)
        return self.add_fault(REPLY, count, status=status, body=body, headers=h, method=method, path=path,
                              where=where)

    def drop(self, *, count: int | None = 1, method: str | None = None, path: str | None = None,
             **where: Any) -> Fault:
        """Close the connection before processing: nothing applied, no answer."""
        return self.add_fault(DROP, count, method=method, path=path, where=where)

    def drop_after_apply(self, *, count: int | None = 1, method: str | None = None, path: str | None = None,
                         **where: Any) -> Fault:
        """Process the request and apply its effects, then close the connection: the answer is lost."""
        return self.add_fault(DROP_AFTER_APPLY, count, method=method, path=path, where=where)

    def slow(self, delay: float, *, count: int | None = 1, method: str | None = None, path: str | None = None,
             **where: Any) -> Fault:
        """Process, then wait ``delay`` seconds before answering."""
        return self.add_fault(SLOW, count, delay=delay, method=method, path=path, where=where)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if ((fault.method is None or fault.method == request.method)
                        and (fault.path is None or re.search(fault.path, request.path))
                        and self.fault_matches(fault, request)):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    # ---- inspection -----------------------------------------------------------------------
    def requests_to(self, method: str, path_part: str) -> list[Request]:
        """Requests with that method whose path contains ``path_part``."""
        with self.lock:
            return [r for r in self.log if r.method == method and path_part in r.path]

    def count(self, method: str, regex: str) -> int:
        """How many requests with that method had a path matching ``regex`` (searched)."""
        with self.lock:
            return sum(1 for r in self.log if r.method == method and re.search(regex, r.path))

    def answered(self, status: int) -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.status == status]

    def lost(self) -> int:
        """Requests processed whose answer was dropped."""
        with self.lock:
            return sum(1 for r in self.log if r.status is None and r.fault is not None
                       and r.fault.kind == DROP_AFTER_APPLY)

    # ---- the wire ---------------------------------------------------------------------------
    def _serve(self, h: "_Handler") -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        request = self.request_class(h.command, split.path, parse_qs(split.query),
                                     CaseInsensitiveDict(h.headers.items()), raw, target=h.path)
        with self.lock:
            self.log.append(request)
            request.fault = fault = self._take_fault(request)
        kind = fault.kind if fault else None
        if kind == DROP:
            return h.hang_up()
        if kind == REPLY:
            body = self.error_body(fault.status) if fault.body is _DEFAULT else fault.body
            return h.send(request, fault.status, body, fault.headers)
        try:
            status, body, headers = self.respond(request)
        except Exception as exc:  # pragma: no cover - a bug in a fake must not hang the client
            status, body, headers = 500, {"error": f"fake {self.name} crashed: {exc!r}"}, {}
        if kind == DROP_AFTER_APPLY:
            return h.hang_up()
        if kind == SLOW:
            time.sleep(fault.delay)
        h.send(request, status, body, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # a burst of parallel workers is not refused by the listen backlog

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the client went away (a timeout, a dropped test)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeServer
    wbufsize = -1  # headers and body in one segment, flushed per request
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per answer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_fake.lock:
            self.server_fake._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            with self.server_fake.lock:
                self.server_fake._conns.discard(self.connection)

    def _any(self) -> None:
        self.server_fake._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

    def hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, request: Request, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        request.status = status
        payload = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        headers = dict(headers or {})
        try:
            self.send_response(status)
            if payload and not any(k.lower() == "content-type" for k in headers):
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass
