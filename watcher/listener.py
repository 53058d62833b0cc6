"""The agent's one HTTP listener: a WSGI app served by ``wsgiref`` in a thread the service owns.

``/metrics`` (Prometheus text format) and ``/healthz`` (the `watcher status` verdict: 200 or
503 with the JSON) are ours. Other WSGI apps mount under a path prefix, the longest prefix
winning::

    Listener(addr, metrics=..., health=..., apps={"/": desk_app})
    listener.mount("/desk", other_app)   # before start()

A mounted app sees ``SCRIPT_NAME`` set to its prefix and ``PATH_INFO`` to the rest, as WSGI
middleware expects. When a token is configured (``http_token_file``; required for any
non-loopback address) every request, mounted apps included, must carry
``Authorization: Bearer TOKEN``."""
from __future__ import annotations

import hmac
import json
import logging
import socketserver
import threading
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .errors import ConfigError

log = logging.getLogger("watcher")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
RESERVED = ("/metrics", "/healthz")


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds up shutdown
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref's signature
        log.debug("http: " + format, *args)


class Listener:
    def __init__(self, host: str, port: int, *, metrics: Callable[[], bytes], health: Callable[[], dict[str, Any]],
                 token: str | None = None, apps: dict[str, WSGIApp] | None = None) -> None:
        self.host, self.port = host, port
        self._metrics, self._health, self._token = metrics, health, token
        self._apps: dict[str, WSGIApp] = {}
        for prefix, app in (apps or {}).items():
            self.mount(prefix, app)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- routes ------------------------------------------------------------------------------
    def mount(self, prefix: str, app: WSGIApp) -> None:
        """Serve ``app`` at ``prefix`` and below (``"/"`` for everything that is not ours)."""
        norm = "/" + prefix.strip("/")
        if any(norm == r or norm.startswith(r + "/") for r in RESERVED):
            raise ValueError(f"{prefix}: {', '.join(RESERVED)} belong to the agent; mount the app elsewhere")
        self._apps[norm] = app

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._token is not None and not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return _send(start_response, "401 Unauthorized", b"missing or wrong bearer token\n",
                         extra=[("WWW-Authenticate", "Bearer")])
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return _send(start_response, "200 OK", self._metrics(), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            verdict = self._health()
            return _send(start_response, "200 OK" if verdict["ok"] else "503 Service Unavailable",
                         json.dumps(verdict, indent=1).encode() + b"\n", "application/json")
        for prefix in sorted(self._apps, key=len, reverse=True):
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                env = dict(environ)
                if prefix != "/":
                    env["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                    env["PATH_INFO"] = path[len(prefix):]
                return self._apps[prefix](env, start_response)
        return _send(start_response, "404 Not Found", b"not found; try /metrics or /healthz\n")

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), (self._token or "").encode())

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._server = make_server(self.host, self.port, self.app, server_class=_Server, handler_class=_Quiet)
        except OSError as exc:
            raise ConfigError(f"http: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                              "choose another address with `http:` or --http") from None
        self.port = self._server.server_port  # port 0 picks a free one
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-listener", daemon=True)
        self._thread.start()
        log.info("http: /metrics and /healthz on http://%s:%d%s", self.host, self.port,
                 " (bearer token required)" if self._token else "")

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # returns once serve_forever has returned
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(2.0)


def _send(start_response: Callable[..., Any], status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *(extra or [])])
    return [body]


__all__ = ["Listener", "WSGIApp", "RESERVED"]
