"""The I/O desk: one page for the people who live with watcher day to day (I/O coordinators,
TDs), so that what arrived, what published, what is stuck and why is visible without reading
logs or running CLI commands.

``DeskApp(settings, journal, read_only=...)`` is a plain WSGI callable. The agent's HTTP listener
mounts it at ``/``; ``watcher desk`` serves it alone (read-only) against a journal, for example
from another machine. Everything is rendered on the server (Jinja2, autoescaped: a file named
``<script>`` is shown, not run); a few lines of script re-fetch the page every few seconds and
swap its live sections, so there is no build step and the page works without script too.

Security: a non-loopback bind needs a token (``needs_token``); the token is accepted as
``Authorization: Bearer TOKEN``, or once as ``?token=TOKEN``, which sets an HttpOnly,
SameSite=Strict cookie. Actions are POST with a per-process CSRF token. The page shows no
settings beyond root names and paths, and the journal's URL only as ``journal.url`` (redacted)."""
from __future__ import annotations

import hmac
import json
import logging
import math
import re
import secrets
import socket
import time
from datetime import datetime
from html import escape
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlencode

from jinja2 import DictLoader, Environment, StrictUndefined

from .config import Settings, is_loopback, read_token
from .errors import WatcherError
from .journal.base import Row, Status
from .journal.ledger import Journal
from .logs import hide_url_password

log = logging.getLogger("watcher")

COOKIE = "watcher_desk_token"
STALE_AFTER = 10.0  # seconds: an agent writes status.json every 2 s
SEARCH_DAYS = 30  # a search looks this far back (the page re-runs it every few seconds)
MAX_BODY = 64 * 1024
# status.json keys the page shows in their own places; any other key is shown under "Waiting"
STATUS_SHOWN = {"agent", "time", "queue", "settling_candidates", "settling_files", "publishing",
                "published_this_run", "roots"}
# other status.json keys about work not yet published go under "Waiting" (held candidates and
# what each waits for, ...); the rest under the roots' agent details
WAITING_KEYS = re.compile(r"held|hold|settl|wait|candidate|incomplete|missing", re.I)
SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "script_key", "credential")

StartResponse = Callable[..., Any]


# -- binding rules -----------------------------------------------------------------------------
def needs_token(host: str) -> bool:
    """The rule: anything but a loopback bind requires the token."""
    return not is_loopback(host)


# -- formatting ----------------------------------------------------------------------------------
def local_time(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    t = datetime.fromtimestamp(ts)
    return t.strftime("%H:%M:%S") if t.date() == datetime.fromtimestamp(now).date() else t.strftime("%Y-%m-%d %H:%M")


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} d"


def _redact(value: Any) -> Any:
    """status.json as shown: values under secret-sounding keys are masked."""
    if isinstance(value, dict):
        return {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _safe_url(url: str | None) -> str | None:
    """Only http(s) links are rendered (a tracker URL is never a ``javascript:`` link), and
    never with a ``user:password@`` part (a row journaled from a site URL holding credentials)."""
    from .publish.http import without_credentials

    return without_credentials(url) if url and url.lower().startswith(("http://", "https://")) else None


# -- the app -----------------------------------------------------------------------------------
class DeskApp:
    """The I/O desk as a WSGI callable.

    ``read_only``: no Retry button and POSTs are refused (``watcher desk``). ``token``: when
    set, every request must carry it (the listener passes it for a non-loopback bind).
    ``on_requeue``: called after a Retry (the agent passes its publishers' ``wake``)."""

    def __init__(self, settings: Settings, journal: Journal, *, read_only: bool, token: str | None = None,
                 on_requeue: Callable[[], None] | None = None, refresh_seconds: float = 3.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.journal = journal
        self.read_only = read_only
        self.token = token
        self.on_requeue = on_requeue
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._csrf = secrets.token_urlsafe(32)  # per process: a page from before a restart must reload
        self._env = Environment(loader=DictLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True)
        self._env.filters.update(when=lambda ts: local_time(ts, self._clock()), iso=_iso, duration=_duration)
        self._env.globals.update(kind=_kind)

    # -- WSGI --------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            status, headers, body = self._dispatch(environ)
        except WatcherError as exc:  # journal trouble: its messages never hold a password
            status, headers, body = "503 Service Unavailable", [], self._message("The journal cannot be read", str(exc))
        except Exception:
            log.exception("desk: error while answering %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            status, headers, body = "500 Internal Server Error", [], self._message(
                "Something went wrong", "The error is in the agent's log.")
        data = body.encode("utf-8") if isinstance(body, str) else body
        base = [("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                ("X-Frame-Options", "DENY"),
                ("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; "
                                            "img-src 'self'; connect-src 'self'; form-action 'self'; "
                                            "frame-ancestors 'none'; base-uri 'none'")]
        if not any(k.lower() == "content-type" for k, _ in headers):
            base.append(("Content-Type", "text/html; charset=utf-8"))
        start_response(status, base + headers)
        return [data] if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    def _dispatch(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], str | bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""))
        base = environ.get("SCRIPT_NAME", "").rstrip("/")
        if self.token is not None:
            denied = self._authorize(environ, query, base, path)
            if denied is not None:
                return denied
        if path.startswith("/static/") and method in ("GET", "HEAD"):
            asset = STATIC.get(path[len("/static/"):])
            if asset is None:
                return "404 Not Found", [], self._message("Not found", path)
            return "200 OK", [("Content-Type", asset[0])], asset[1]
        if path == "/" and method in ("GET", "HEAD"):
            return "200 OK", [], self.page(query, base)
        if path == "/retry":
            if method != "POST":
                return "405 Method Not Allowed", [("Allow", "POST")], self._message("Use the Retry button", "")
            return self._retry(environ, base)
        return "404 Not Found", [], self._message("Not found", path)

    def _authorize(self, environ: dict[str, Any], query: dict[str, list[str]], base: str,
                   path: str) -> tuple[str, list[tuple[str, str]], str] | None:
        assert self.token is not None
        given = [v for v in query.get("token", [])]
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        cookie = SimpleCookie()
        try:
            cookie.load(environ.get("HTTP_COOKIE", ""))
        except Exception:
            pass
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
        if not any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
            return "401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="watcher"')], self._message(
                "A token is needed", "This desk listens beyond this machine: open it once as "
                                     "…/?token=TOKEN (the token is in the agent's http_token_file), "
                                     "or send 'Authorization: Bearer TOKEN'.")
        if query.get("token"):  # remember it in a cookie and take it out of the address bar
            rest = {k: v for k, v in query.items() if k != "token"}
            loc = f"{base}{path}" + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            return "303 See Other", [("Location", loc), ("Set-Cookie", f"{COOKIE}={self.token}; HttpOnly; "
                                                                        f"SameSite=Strict; Path={base or '/'}")], ""
        return None

    def _retry(self, environ: dict[str, Any], base: str) -> tuple[str, list[tuple[str, str]], str]:
        if self.read_only:
            return "403 Forbidden", [], self._message("Read-only", "This desk is a read-only view; "
                                                                   "run `watcher retry ID` where the agent runs.")
        try:
            size = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_BODY)
        except ValueError:
            size = 0
        form = parse_qs(environ["wsgi.input"].read(size).decode("utf-8", "replace")) if size else {}
        csrf = (form.get("csrf") or [""])[0]
        if not hmac.compare_digest(csrf.encode(), self._csrf.encode()):
            return "403 Forbidden", [], self._message("The page was out of date",
                                                      "Reload the page and press Retry again.")
        try:
            ids = [int(i) for i in form.get("id", [])]
        except ValueError:
            ids = []
        moved = self.journal.requeue(ids) if ids else []
        if moved and self.on_requeue is not None:
            self.on_requeue()
        note = {"retried": ",".join(map(str, moved))} if moved else {"not_retried": ",".join(map(str, ids))}
        return "303 See Other", [("Location", f"{base}/?{urlencode(note)}")], ""

    def _message(self, title: str, detail: str) -> str:
        return (f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
                f"<h1>{escape(title)}</h1><p>{escape(detail)}</p>")

    # -- the page ----------------------------------------------------------------------------
    def page(self, query: dict[str, list[str]], base: str = "") -> str:
        """The whole page; the script re-fetches it and swaps its ``data-live`` sections."""
        now = self._clock()
        q = (query.get("q") or [""])[0].strip()[:200]
        explain_for = (query.get("explain") or [""])[0].strip()[:4096]
        return self._env.get_template("page.html").render(
            base=base, q=q, now=now, read_only=self.read_only, csrf=self._csrf, refresh=self.refresh_seconds,
            journal_url=self.journal.url, notice=self._notice(query), explain_for=explain_for,
            explained=self._explain(explain_for) if explain_for else None, **self.snapshot(q, now))

    def snapshot(self, q: str, now: float) -> dict[str, Any]:
        """Everything the page shows, read once per request."""
        from .unmatched import entries, summary

        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        db = self.journal.db
        today = db.read(lambda c: c.execute("SELECT COUNT(*) FROM publishes WHERE status=? AND published_at>=?",
                                            (Status.PUBLISHED.value, midnight)).fetchone()[0])
        agents = [f"{a['agent']} ({', '.join(a['roots']) or 'no roots'}"
                  + (f"; the one watching {', '.join(a['watching'])}" if a["watching"] else "")
                  + f"; publishing {a['publishing']})"
                  for a in self.journal.agents(self.settings.agent_timeout_seconds) if a["live"]]
        needle = q.lower()
        keep = (lambda r: needle in _haystack(r)) if needle else (lambda r: True)
        recent = self.journal.newest(limit=150, keep=keep, since=now - SEARCH_DAYS * 86400 if needle else None)
        failed = self.journal.newest(status=Status.FAILED, limit=100, keep=keep)
        status, age = self._status(now)
        roots = []
        for rc in self.settings.roots:
            reported = dict((status or {}).get("roots", {}).get(rc.name) or {})
            roots.append({"name": rc.name, "path": str(rc.path), "observer": reported.pop("observer", rc.observer),
                          "up": reported.pop("up", None), "rescans": reported.pop("rescans", None),
                          "last_rescan_reason": reported.pop("last_rescan_reason", None),
                          "path_live": reported.pop("path", None),
                          "unmatched": reported.pop("unmatched_files", None), "extra": reported})
        extra = {k: v for k, v in (status or {}).items() if k not in STATUS_SHOWN}
        waiting = {k: v for k, v in extra.items() if WAITING_KEYS.search(k)}
        agent_details = {k: v for k, v in extra.items() if k not in waiting}
        return {
            "counts": self.journal.counts(), "today": today, "agents": agents,
            "publishes": [self._pub(r, now) for r in recent], "failed": [self._pub(r, now) for r in failed],
            "status": status, "status_age": age, "stale": age is None or age > STALE_AFTER,
            "waiting": waiting, "agent_details": agent_details, "roots": roots,
            "unmatched": [self._entry(e) for e in entries(db, search=q or None, limit=200)],
            "unmatched_summary": summary(db),
        }

    def _pub(self, r: Row, now: float) -> dict[str, Any]:
        p = r.publish
        rel = p.path[len(p.root_path) + 1:] if p.root_path and p.path.startswith(p.root_path + "/") else p.path
        directory, _, name = rel.rpartition("/")
        return {
            "id": r.id, "status": r.status.value, "root": p.root, "dir": directory + "/" if directory else "", "file": name,
            "path": p.path, "frames": p.frames, "holes": p.missing_frames, "frame_count": p.frame_count,
            "entity": f"{p.entity.type} {p.entity.name}" if p.entity else None, "task": p.task, "name": p.name,
            "version": p.version, "type": p.publish_type, "tracker": r.tracker, "tracker_id": r.tracker_id,
            "tracker_url": _safe_url(r.tracker_url),
            "error": hide_url_password(r.last_error) if r.last_error else r.last_error, "attempts": r.attempts,
            "created_at": r.created_at, "published_at": r.published_at, "updated_at": r.updated_at,
            "latency": (r.published_at - p.mtime) if r.published_at and p.mtime else None,
            "next_attempt_in": (r.next_attempt_at - now) if r.status is Status.PENDING and r.next_attempt_at else None,
            "uncertain": r.uncertain,
        }

    def _entry(self, e: Any) -> dict[str, Any]:
        base = next((str(r.path).rstrip("/") for r in self.settings.roots if r.name == e.root), None)
        rel = e.path[len(base) + 1:] if base and e.path.startswith(base + "/") else e.path
        return {"root": e.root, "path": e.path, "rel": rel, "arrived_at": e.arrived_at, "closest": e.closest,
                "reason": e.reason, "ignored": e.ignored}

    def _status(self, now: float) -> tuple[dict[str, Any] | None, float | None]:
        assert self.settings.state_dir is not None  # set by the settings validator
        path = Path(self.settings.state_dir) / "status.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        if not isinstance(data, dict):
            return None, None
        roots = data.get("roots")
        if not isinstance(roots, dict) or not all(isinstance(r, dict) for r in roots.values()):
            data["roots"] = {}  # a damaged file: the roots are shown from the configuration alone
        ts = data.get("time")
        return _redact(data), (now - ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None

    def _notice(self, query: dict[str, list[str]]) -> str | None:
        def ids(key: str) -> str:
            raw = (query.get(key) or [""])[0]
            return ", ".join(i for i in raw.split(",") if i.isdigit())

        if ids("retried"):
            return f"Re-queued publish {ids('retried')}: it publishes again within a few seconds."
        if ids("not_retried"):
            return f"Publish {ids('not_retried')} was not failed any more (already re-queued?); nothing to retry."
        return None

    def _explain(self, raw: str) -> dict[str, Any]:
        """`watcher explain` for one path, with the templates as they are on disk now."""
        from .explain import explain_path, explain_text
        from .roots import load_roots

        try:
            res = explain_path(load_roots(self.settings), raw)
        except WatcherError as exc:
            return {"matched": False, "text": f"{raw}\n  cannot explain: {exc}"}
        return {"matched": bool(res.get("matched")), "text": explain_text(res)}


def _haystack(r: Row) -> str:
    p = r.publish
    ent = f"{p.entity.type} {p.entity.name}" if p.entity else ""
    return "\n".join(x for x in (p.path, p.root, p.name, ent, p.task or "", p.template) if x).lower()


def _kind(value: Any) -> str:
    """For the generic renderer of status.json values: which shape it has."""
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return "table"
        return "list"
    return "scalar"


# -- standalone server (`watcher desk`) ----------------------------------------------------------
def serve(app: Any, host: str, port: int) -> Any:
    """A foreground-able wsgiref server for ``app`` (one request at a time: the journal's
    connections are per thread, and the page is cheap). Returns the server; the caller runs
    ``serve_forever`` and ``server_close``."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Quiet(WSGIRequestHandler):
        timeout = 15  # a client that stops sending does not hold the one request slot

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref's name
            log.debug("desk: %s " + format, self.address_string(), *args)

    class Server(WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return make_server(host, port, app, server_class=Server, handler_class=Quiet)


# -- templates and assets ------------------------------------------------------------------------
TEMPLATES = {
    "show.html": """{% macro show(value) %}
{% set k = kind(value) %}
{% if k == 'table' %}
  {% set cols = [] %}{% for row in value %}{% for c in row %}{% if c not in cols %}{% set _ = cols.append(c) %}{% endif %}{% endfor %}{% endfor %}
  <table class="generic"><thead><tr>{% for c in cols %}<th>{{ c|replace('_', ' ') }}</th>{% endfor %}</tr></thead><tbody>
  {% for row in value %}<tr>{% for c in cols %}<td>{% if c in row %}{{ show(row[c]) }}{% endif %}</td>{% endfor %}</tr>{% endfor %}
  </tbody></table>
{% elif k == 'dict' and not value %}<span class="muted">none</span>
{% elif k == 'dict' %}
  <dl class="generic">{% for kk, vv in value.items() %}<dt>{{ kk|replace('_', ' ') }}</dt><dd>{{ show(vv) }}</dd>{% endfor %}</dl>
{% elif k == 'list' %}
  {% if value %}{% for v in value %}{{ show(v) }}{{ ', ' if not loop.last }}{% endfor %}{% else %}<span class="muted">none</span>{% endif %}
{% else %}{{ '-' if value is none else value }}{% endif %}
{% endmacro %}
""",
    "page.html": """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>watcher · I/O desk</title>
<link rel="stylesheet" href="{{ base }}/static/desk.css">
</head>
<body>
<header class="top">
  <h1>watcher <span>I/O desk</span></h1>
  {% if read_only %}<span class="chip ro" title="watcher desk: a view of the journal; actions happen where the agent runs">read-only</span>{% endif %}
  <form class="search" method="get" action="{{ base }}/" role="search">
    <input type="search" name="q" value="{{ q }}" placeholder="Search path, entity, name, root…" aria-label="Search publishes and unmatched files">
    <button type="submit">Search</button>
    {% if q %}<a class="clear" href="{{ base }}/">clear</a>{% endif %}
  </form>
  <span class="refreshed" id="refreshed" data-live>{{ now|when }}</span>
</header>
{% if notice %}<p class="notice" role="status">{{ notice }}</p>{% endif %}
{% include "tiles.html" %}
<main class="grid">
  <div class="col wide">
    {% include "failed.html" %}
    {% include "publishes.html" %}
  </div>
  <div class="col">
    {% include "waiting.html" %}
    {% include "unmatched.html" %}
    <section class="card" id="explain">
      <h2>Try a path</h2>
      <form method="get" action="{{ base }}/">
        {% if q %}<input type="hidden" name="q" value="{{ q }}">{% endif %}
        <input type="text" name="explain" value="{{ explain_for }}" placeholder="/mnt/shows/…/beauty.1001.exr" aria-label="Path to explain" class="path-input">
        <button type="submit">Explain</button>
      </form>
      {% if explained %}<pre class="explain {{ 'ok' if explained.matched else 'miss' }}" id="explain-result">{{ explained.text }}</pre>{% endif %}
    </section>
    {% include "roots.html" %}
  </div>
</main>
<footer>journal {{ journal_url }} · refreshes every {{ refresh|round|int }} s</footer>
<script src="{{ base }}/static/desk.js" data-refresh="{{ refresh }}"></script>
</body>
</html>
""",
    "tiles.html": """<section class="tiles" id="tiles" data-live>
  <div class="tile"><b>{{ today }}</b><span>published today</span></div>
  <div class="tile {{ 'busy' if counts.pending or counts.publishing else '' }}"><b>{{ counts.pending + counts.publishing }}</b><span>queued / publishing</span></div>
  <div class="tile {{ 'bad' if counts.failed else '' }}"><b>{{ counts.failed }}</b><span>failed</span></div>
  <div class="tile"><b>{{ status.settling_files if status and status.settling_files is defined else '-' }}</b><span>files settling</span></div>
  <div class="tile {{ 'warn' if unmatched_summary else '' }}"><b>{{ unmatched_summary.values()|sum(attribute='files') }}</b><span>unmatched / ignored</span></div>
  <div class="tile {{ 'bad' if stale else '' }}">
    {% if status and not stale %}<b>up</b><span>agent · status {{ status_age|duration }} old</span>
    {% elif status %}<b>stale</b><span>agent status {{ status_age|duration }} old</span>
    {% else %}<b>—</b><span>no agent status here</span>{% endif %}
  </div>
</section>
""",
    "failed.html": """<section class="card attention" id="failed" data-live>
  <h2>Failed <span class="count">{{ failed|length }}</span></h2>
  {% if not failed %}<p class="empty">Nothing failed{{ ' matching the search' if q else '' }}.</p>{% else %}
  <table>
    <thead><tr><th>File</th><th>What the tracker said</th><th></th></tr></thead>
    <tbody>
    {% for p in failed %}
      <tr class="failed" data-id="{{ p.id }}">
        <td class="path">{% include "path.html" %}<div class="meta">#{{ p.id }} · {{ p.root }} · {{ p.entity or '-' }} · {{ p.name }}{% if p.version is not none %} v{{ '%03d'|format(p.version) }}{% endif %} · {{ p.attempts }} attempt(s) · {{ p.updated_at|when }}</div></td>
        <td class="error">{{ p.error or '(no message)' }}</td>
        <td class="act">{% if not read_only %}
          <form method="post" action="{{ base }}/retry"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="id" value="{{ p.id }}"><button type="submit" class="retry">Retry</button></form>
        {% else %}<span class="muted" title="read-only view">watcher retry {{ p.id }}</span>{% endif %}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>{% endif %}
</section>
""",
    "path.html": """<span class="dir" title="{{ p.path }}">{{ p.dir }}</span><wbr><span class="file" title="{{ p.path }}">{{ p.file }}</span>{% if p.frames %} <span class="frames">[{{ p.frames }}]</span>{% if p.holes %} <span class="holes" title="missing frames">holes {{ p.holes }}</span>{% endif %}{% endif %}""",
    "publishes.html": """<section class="card" id="publishes" data-live>
  <h2>Publishes {% if q %}matching “{{ q }}”{% else %}newest first{% endif %} <span class="count">{{ publishes|length }}</span></h2>
  {% if not publishes %}<p class="empty">{{ 'Nothing matches the search.' if q else 'No publishes yet.' }}</p>{% else %}
  <table>
    <thead><tr><th>When</th><th>File</th><th>Entity · task</th><th>Name</th><th>Tracker</th><th class="num">Latency</th></tr></thead>
    <tbody>
    {% for p in publishes %}
      <tr class="pub st-{{ p.status }}" data-id="{{ p.id }}">
        <td class="when"><time datetime="{{ (p.published_at or p.created_at)|iso }}">{{ (p.published_at or p.created_at)|when }}</time><div><span class="chip st-{{ p.status }}">{{ p.status }}</span></div></td>
        <td class="path">{% include "path.html" %}<div class="meta">{{ p.root }} · {{ p.type }}</div></td>
        <td>{{ p.entity or '-' }}{% if p.task %} · {{ p.task }}{% endif %}</td>
        <td>{{ p.name }}{% if p.version is not none %} <span class="ver">v{{ '%03d'|format(p.version) }}</span>{% endif %}</td>
        <td class="tracker">{% if p.tracker_id %}{% if p.tracker_url %}<a href="{{ p.tracker_url }}" target="_blank" rel="noopener noreferrer">{{ p.tracker }} {{ p.tracker_id }}</a>{% else %}{{ p.tracker }} {{ p.tracker_id }}{% endif %}
          {% elif p.status == 'pending' and p.error %}<span class="warn" title="{{ p.error }}">retrying{% if p.next_attempt_in is not none %} in {{ p.next_attempt_in|duration }}{% endif %}</span>
          {% elif p.status == 'failed' %}<span class="bad">failed</span>{% else %}<span class="muted">{{ p.status }}…</span>{% endif %}</td>
        <td class="num">{{ p.latency|duration if p.latency is not none else '-' }}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>{% endif %}
</section>
""",
    "waiting.html": """{% from "show.html" import show %}
<section class="card" id="waiting" data-live>
  <h2>Waiting</h2>
  {% if not status %}<p class="empty">No agent status in this state folder (the agent writes status.json every 2 s).</p>
  {% else %}
  <p class="line">{{ status.settling_files if status.settling_files is defined else '-' }} file(s) settling in {{ status.settling_candidates if status.settling_candidates is defined else '-' }} candidate(s) · queue {{ status.queue if status.queue is defined else '-' }} · publishing {{ status.publishing if status.publishing is defined else '-' }}{% if stale %} · <span class="bad">status {{ status_age|duration if status_age is not none else '' }} old: is the agent running?</span>{% endif %}</p>
  {% for key, value in waiting|dictsort %}
    <h3>{{ key|replace('_', ' ') }}</h3>
    {{ show(value) }}
  {% endfor %}
  {% endif %}
</section>
""",
    "unmatched.html": """<section class="card" id="unmatched" data-live>
  <h2>Unmatched and ignored <span class="count">{{ unmatched|length }}</span></h2>
  {% for root, s in unmatched_summary|dictsort %}{% if s.dropped %}<p class="line warn">{{ root }}: {{ s.dropped }} older entr{{ 'y' if s.dropped == 1 else 'ies' }} dropped to keep the list bounded.</p>{% endif %}{% endfor %}
  {% if not unmatched %}<p class="empty">{{ 'Nothing matches the search.' if q else 'Every file that arrived matched a template.' }}</p>{% else %}
  <ul class="unmatched">
  {% for e in unmatched %}
    <li class="{{ 'ignored' if e.ignored else 'miss' }}">
      <div class="path"><span class="file" title="{{ e.path }}">{{ e.rel }}</span></div>
      <div class="meta">{{ e.root }} · arrived {{ e.arrived_at|when }}{% if e.closest %} · closest <b>{{ e.closest }}</b>{% endif %}</div>
      <div class="reason">{{ e.reason }}</div>
    </li>
  {% endfor %}
  </ul>{% endif %}
</section>
""",
    "roots.html": """{% from "show.html" import show %}
<section class="card" id="roots" data-live>
  <h2>Roots</h2>
  <table>
    <thead><tr><th>Root</th><th>Watch</th><th>State</th><th>Rescans</th></tr></thead>
    <tbody>
    {% for r in roots %}
      <tr data-root="{{ r.name }}">
        <td><b>{{ r.name }}</b><div class="meta">{{ r.path }}</div>{% set u = unmatched_summary.get(r.name) %}{% if u and u.files %}<div class="meta warn">{{ u.files }} unmatched or ignored file(s)</div>{% endif %}</td>
        <td>{{ 'native (inotify)' if r.observer == 'native' else ('polled' if r.observer == 'polling' else r.observer) }}</td>
        <td>{% if r.up is none %}<span class="muted">unknown</span>{% elif r.up %}<span class="ok">up</span>{% else %}<span class="bad">DOWN</span>{% endif %}</td>
        <td>{{ r.rescans if r.rescans is not none else '-' }}{% if r.last_rescan_reason %}<div class="meta">last: {{ r.last_rescan_reason }}</div>{% endif %}
          {% for k, v in r.extra|dictsort %}<div class="meta">{{ k|replace('_', ' ') }}: {{ v }}</div>{% endfor %}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>
  {% if status %}<p class="line meta">agent {{ status.agent }}</p>{% endif %}
  {% if agent_details %}<details class="meta"><summary>agent details</summary>{% for key, value in agent_details|dictsort %}<h3>{{ key|replace('_', ' ') }}</h3>{{ show(value) }}{% endfor %}</details>{% endif %}
  {% if agents %}<p class="line meta">agents on this journal: {{ agents|join(' · ') }}</p>{% endif %}
</section>
""",
}

CSS = """
:root { --bg:#f4f5f7; --card:#fff; --ink:#1c2430; --muted:#667085; --line:#e3e6ea; --ok:#137a3a; --bad:#b42318;
  --warn:#a15c07; --accent:#2459c6; --chip:#eef1f5; }
@media (prefers-color-scheme: dark) { :root { --bg:#111418; --card:#1a1f26; --ink:#e6e9ee; --muted:#98a2b3;
  --line:#2a313b; --ok:#4ade80; --bad:#f87171; --warn:#fbbf24; --accent:#7aa2ff; --chip:#252c36; } }
* { box-sizing: border-box; }
html { font-size: 15px; }
@media (min-width: 1800px) { html { font-size: 19px; } }
@media (min-width: 2500px) { html { font-size: 24px; } }
body { margin: 0; background: var(--bg); color: var(--ink); font: 1rem/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.top { display: flex; align-items: center; gap: 1rem; padding: .7rem 1.2rem; background: var(--card); border-bottom: 1px solid var(--line); flex-wrap: wrap; }
.top h1 { font-size: 1.25rem; margin: 0; } .top h1 span { color: var(--muted); font-weight: 500; }
.search { display: flex; gap: .4rem; flex: 1; min-width: 16rem; max-width: 40rem; align-items: center; }
.search input { flex: 1; }
input[type=search], input[type=text] { font: inherit; padding: .35rem .6rem; border: 1px solid var(--line); border-radius: 6px; background: var(--bg); color: var(--ink); }
button { font: inherit; padding: .35rem .8rem; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; }
button.retry { background: var(--card); color: var(--accent); font-weight: 600; }
button.retry:hover { background: var(--accent); color: #fff; }
a { color: var(--accent); } a.clear { font-size: .9rem; }
.refreshed { margin-left: auto; color: var(--muted); font-size: .85rem; font-variant-numeric: tabular-nums; }
.notice { margin: .8rem 1.2rem 0; padding: .5rem .8rem; background: #e7f6ec; color: #0b5227; border-radius: 6px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(9.5rem, 1fr)); gap: .7rem; padding: .9rem 1.2rem 0; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .6rem .8rem; }
.tile b { display: block; font-size: 1.7rem; font-variant-numeric: tabular-nums; line-height: 1.1; }
.tile span { color: var(--muted); font-size: .85rem; }
.tile.bad { border-color: var(--bad); } .tile.bad b { color: var(--bad); }
.tile.warn b { color: var(--warn); } .tile.busy b { color: var(--accent); }
.grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: .9rem; padding: .9rem 1.2rem; align-items: start; }
@media (max-width: 1100px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.col { display: flex; flex-direction: column; gap: .9rem; min-width: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .7rem .9rem; min-width: 0; }
.card.attention { border-left: 4px solid var(--bad); }
.card h2 { font-size: 1.05rem; margin: 0 0 .5rem; } .card h3 { font-size: .95rem; margin: .7rem 0 .3rem; text-transform: capitalize; }
.count { color: var(--muted); font-weight: 500; font-size: .9rem; }
table { width: 100%; border-collapse: collapse; font-size: .92rem; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: .8rem; border-bottom: 1px solid var(--line); padding: .25rem .4rem; }
td { border-bottom: 1px solid var(--line); padding: .35rem .4rem; vertical-align: top; }
tr:last-child td { border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.when { white-space: nowrap; font-variant-numeric: tabular-nums; }
.path { overflow-wrap: break-word; } .path .dir, ul.unmatched .file { overflow-wrap: anywhere; }
.path .dir { color: var(--muted); font-size: .85em; } .path .file { font-weight: 600; }
.frames { font-variant-numeric: tabular-nums; white-space: nowrap; }
.holes { color: var(--warn); font-weight: 600; white-space: nowrap; }
.ver { color: var(--muted); }
.meta { color: var(--muted); font-size: .82rem; overflow-wrap: anywhere; }
.error { color: var(--bad); overflow-wrap: anywhere; }
.act { white-space: nowrap; text-align: right; }
.chip { display: inline-block; padding: 0 .45rem; border-radius: 999px; background: var(--chip); font-size: .75rem; color: var(--muted); }
.chip.st-published { color: var(--ok); } .chip.st-failed { color: #fff; background: var(--bad); }
.chip.st-pending, .chip.st-publishing { color: var(--accent); }
.chip.ro { background: var(--warn); color: #fff; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; } .warn { color: var(--warn); }
.muted, .empty { color: var(--muted); } .empty { margin: .2rem 0; }
.line { margin: .2rem 0 .4rem; }
ul.unmatched { list-style: none; margin: 0; padding: 0; max-height: 28rem; overflow: auto; }
ul.unmatched li { padding: .4rem 0; border-bottom: 1px solid var(--line); }
ul.unmatched li:last-child { border-bottom: 0; }
ul.unmatched .reason { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .82rem; overflow-wrap: anywhere; }
ul.unmatched li.ignored .reason { color: var(--muted); }
#explain form { display: flex; gap: .4rem; } .path-input { flex: 1; min-width: 0; }
pre.explain { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--bg); padding: .5rem .7rem; border-radius: 6px; font-size: .85rem; margin: .6rem 0 0; }
pre.explain.miss { border-left: 3px solid var(--warn); } pre.explain.ok { border-left: 3px solid var(--ok); }
table.generic { font-size: .85rem; } dl.generic { margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: .1rem .7rem; font-size: .85rem; }
dl.generic dt { color: var(--muted); } dl.generic dd { margin: 0; overflow-wrap: anywhere; }
details.meta summary { cursor: pointer; margin-top: .3rem; }
footer { color: var(--muted); font-size: .8rem; padding: 0 1.2rem 1rem; }
body.offline .refreshed { color: var(--bad); }
"""

JS = """// Re-fetch the page every few seconds and swap its live sections (the search box and the
// "try a path" box are left alone). Without script the page still works; it just does not refresh.
(function () {
  "use strict";
  var me = document.currentScript;
  var every = Math.max(1, Number((me && me.dataset.refresh) || 3)) * 1000;
  var busy = false;
  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    var url = new URL(window.location.href);
    ["explain", "retried", "not_retried"].forEach(function (k) { url.searchParams.delete(k); });
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        doc.querySelectorAll("[data-live]").forEach(function (fresh) {
          var old = fresh.id && document.getElementById(fresh.id);
          if (old) { old.replaceWith(document.importNode(fresh, true)); }
        });
        document.body.classList.remove("offline");
      })
      .catch(function () { document.body.classList.add("offline"); })
      .finally(function () { busy = false; });
  }
  setInterval(tick, every);
  document.addEventListener("visibilitychange", tick);
})();
"""

STATIC: dict[str, tuple[str, bytes]] = {
    "desk.css": ("text/css; charset=utf-8", CSS.encode()),
    "desk.js": ("text/javascript; charset=utf-8", JS.encode()),
}

__all__ = ["DeskApp", "is_loopback", "local_time", "needs_token", "read_token", "serve"]
