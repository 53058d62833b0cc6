"""Kitsu (Zou API) backend: each publish becomes one *output file* on the entity (shot,
asset, sequence, episode, edit), typed by an output type and a task type, linked to the task
by a comment on it (optionally a working file too), with the real path, size, md5 checksum
and frame range recorded.

Zou facts this module is built around (verified against a real Zou 1.0.97):

- Routes sit at the root of the API address (``/auth/login``, ``/data/...``); a full Kitsu
  install serves them under ``/api``, so ``url`` is whatever address answers
  ``GET /`` with ``{"api": "Zou"}``.
- Output-file uniqueness is only checked in Python on the server (the unique constraint
  contains NULL columns), so concurrent creates of the same key duplicate: ``serialize_key``
  keeps two of our workers off the same key, and every publish looks for the record before
  creating it.
- The create ignores ``path``/``size``/``checksum``/``data``; they are set by a follow-up
  ``PUT``. ``size`` is an int32 column and ``checksum`` 32 characters (md5 fits).
- A create that fails after the insert (no file tree on the project) leaves an orphan row that
  takes the revision; the project's file tree is therefore checked before the first create.
- Error bodies come as ``{"message"}``, ``{"error": "text"}``, ``{"error": true, "message"}``
  or flask-jwt's ``{"msg"}``; the server's words are kept in our messages.
"""
from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import ConfigError, PermanentError, RetryableError
from ..model import Job, Publish, TrackerRef
from ..secrets import read_secret
from .base import Backend, BackendContext, BackendSettings, CheckResult
from .http import HttpClient, HttpError

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
TRANSIENT_REFUSALS = 3  # attempts during which a refused update of our own record is retried
# Zou column limits (models/output_file.py, output_type.py)
MAX_NAME, MAX_REPRESENTATION, MAX_EXTENSION, MAX_PATH = 250, 20, 10, 400
MAX_OUTPUT_TYPE_NAME, MAX_OUTPUT_TYPE_SHORT = 40, 20
MOVIE_EXTENSIONS = frozenset({"mp4", "mov", "mkv", "avi", "webm", "wmv", "m4v"})
PICTURE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "jpe"})
SEQUENCE_KEYS = ("Sequence", "sequence", "seq", "sg_sequence")
EPISODE_KEYS = ("Episode", "episode", "ep", "sg_episode")
ASSET_TYPE_KEYS = ("AssetType", "asset_type", "sg_asset_type", "assettype")
_MISSING = object()


class KitsuSettings(BackendSettings):
    """The ``tracker:`` section for ``backend: kitsu``."""

    url: str = Field(description="Zou API root (a full Kitsu install serves it under /api)")
    token: SecretStr | None = None  # a bot's API token (WATCHER_TRACKER__TOKEN)
    token_file: Path | None = None
    email: str | None = None  # or a user login
    password: SecretStr | None = None  # WATCHER_TRACKER__PASSWORD
    password_file: Path | None = None
    project: str | None = None  # project name, or "{key}" to take it from a template field
    task_types: dict[str, str] = Field(default_factory=dict)  # step value -> Kitsu task type
    output_types: dict[str, str] = Field(default_factory=dict)  # extension or publish type -> output type
    create_output_types: bool = True
    create_missing_entities: bool = False  # create missing shots/sequences/episodes/assets and tasks
    review: bool | list[str] = False  # True, or the template names whose publishes go to review
    review_status: str = "wfa"  # task status (short name or name) of a review comment
    comment: bool = True  # a comment on the task for every publish (what Kitsu shows on the task)
    working_file: bool = False  # also record a working file on the task (assigns it to the bot)
    checksum: bool = True  # md5 of the file(s), stored in the output file
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_base: float = Field(0.5, ge=0)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    cache_ttl: float = Field(300.0, ge=0)  # seconds a looked-up project/entity/type stays cached

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) address such as https://kitsu.example/api, not {v!r}")
        return v

    @field_validator("task_types", "output_types")
    @classmethod
    def _no_blank(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not str(value).strip():
                raise ValueError(f"{key!r} maps to an empty name")
        return v

    @model_validator(mode="after")
    def _auth(self) -> "KitsuSettings":
        has_token = self.token is not None or self.token_file is not None
        has_login = self.email is not None
        if has_token and has_login:
            raise ValueError("give either token/token_file (a bot) or email + password, not both")
        if not has_token and not has_login:
            raise ValueError("no credentials: set token_file (or WATCHER_TRACKER__TOKEN) for a bot, "
                             "or email + password_file (or WATCHER_TRACKER__PASSWORD)")
        return self


def describe_zou_error(status: int, body: Any) -> str:
    """Zou's own words from any of its error shapes."""
    if isinstance(body, dict):
        errors = (body.get("data") or {}).get("errors") if isinstance(body.get("data"), dict) else None
        message = body.get("message") if isinstance(body.get("message"), str) else None
        if message is None and isinstance(body.get("error"), str):
            message = body["error"]
        if message is None and isinstance(body.get("msg"), str):
            message = body["msg"]
        if errors:
            detail = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors if isinstance(e, dict))
            message = f"{message or 'Validation error.'} ({detail})"
        if message:
            return f"HTTP {status}: {message}"
    text = str(body or "").strip()
    return f"HTTP {status}: {text[:300]}" if text else f"HTTP {status}"


def server_words(exc: Exception) -> str:
    """The message of an HttpError without our ``METHOD path: HTTP nnn:`` prefix."""
    if isinstance(exc, HttpError):
        return describe_zou_error(exc.status, exc.body).split(": ", 1)[-1]
    return str(exc)


class _TTLCache:
    """Small thread-safe cache with expiry for lookups (positive results only)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is None or self._clock() - hit[0] > self.ttl:
                self._data.pop(key, None)
                return _MISSING
            return hit[1]

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            self._data[key] = (self._clock(), value)
        return value

    def drop(self, match: Callable[[Any], bool] = lambda _k: True) -> None:
        with self._lock:
            for key in [k for k in self._data if match(k)]:
                del self._data[key]


def _field(fields: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lower = {str(k).lower(): v for k, v in fields.items()}
    for key in keys:
        value = fields.get(key, lower.get(key.lower()))
        if value not in (None, ""):
            return str(value)
    return None


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").casefold() == (b or "").casefold()


def _marker(publish: Publish) -> str:
    """Stable tag put in the output file's comment at create time (the create drops ``data``),
    so a retry recognises a record it made even before the follow-up PUT landed."""
    return "[watcher " + hashlib.sha1(publish.key.encode()).hexdigest()[:16] + "]"


class _Auth:
    """A bot token used as is, or a user login done once and renewed on a 401 (refresh token
    first, then a new login). Never logs or echoes the secrets."""

    def __init__(self, backend: "KitsuBackend") -> None:
        self.backend = backend
        s = backend.settings
        self.is_bot = s.email is None
        self._lock = threading.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._token = read_secret(s.token, backend._resolve(s.token_file), "tracker.token") if self.is_bot else None
        self._password = (None if self.is_bot else
                          read_secret(s.password, backend._resolve(s.password_file), "tracker.password"))

    def who(self) -> str:
        return "the API token" if self.is_bot else f"the login {self.backend.settings.email}"

    def token(self) -> str:
        if self.is_bot:
            assert self._token
            return self._token
        with self._lock:
            if self._access is None:
                self._login()
            assert self._access
            return self._access

    def _login(self) -> None:
        body = {"email": self.backend.settings.email, "password": self._password}
        try:
            answer = self.backend.http.request("POST", "/auth/login", json=body)
        except HttpError as exc:
            raise PermanentError(f"Kitsu refused {self.who()}: {server_words(exc)}") from None
        if not isinstance(answer, dict) or not answer.get("access_token"):
            words = answer.get("message") if isinstance(answer, dict) else answer
            raise PermanentError(f"Kitsu refused {self.who()}: {words or 'no access token in the answer'}")
        self._access, self._refresh = answer["access_token"], answer.get("refresh_token")

    def renew(self, used: str) -> bool:
        """After a 401 with token ``used``: get a fresh one. False when nothing can help."""
        if self.is_bot:
            return False
        with self._lock:
            if self._access != used:  # another thread renewed it already
                return True
            self._access = None
            if self._refresh:
                try:
                    answer = self.backend.http.request(
                        "GET", "/auth/refresh-token", headers={"Authorization": f"Bearer {self._refresh}"})
                    if isinstance(answer, dict) and answer.get("access_token"):
                        self._access = answer["access_token"]
                        return True
                except HttpError:
                    pass  # refresh token revoked or expired: log in again
            self._refresh = None
            self._login()
            return True


class KitsuBackend(Backend):
    name = "kitsu"
    Settings = KitsuSettings

    def __init__(self, settings: KitsuSettings, context: BackendContext) -> None:
        super().__init__(settings, context)
        verify: bool | str = settings.verify_tls
        if settings.verify_tls and settings.ca_bundle is not None:
            verify = str(self._resolve(settings.ca_bundle))
        self.http = HttpClient(settings.url, timeout=settings.timeout, verify=verify, retries=settings.retries,
                               backoff_base=settings.backoff_base, describe_error=describe_zou_error)
        self.auth = _Auth(self)
        self.cache = _TTLCache(settings.cache_ttl)
        self._create_lock = threading.Lock()  # creating entities/types: rare, one at a time
        self._key_locks: "weakref.WeakValueDictionary[str, threading.Lock]" = weakref.WeakValueDictionary()
        self._key_locks_guard = threading.Lock()

    # ---- plumbing -----------------------------------------------------------------------------
    def _resolve(self, path: Path | None) -> Path | None:
        if path is None:
            return None
        path = Path(path).expanduser()
        return path if path.is_absolute() else Path(self.context.config_dir) / path

    def call(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """One authenticated request; a 401 renews a user login once, then fails clearly."""
        extra = kwargs.pop("headers", {})
        for attempt in (0, 1):
            token = self.auth.token()
            headers = {**extra, "Authorization": f"Bearer {token}"}
            try:
                return self.http.request(method, path, retry=retry, headers=headers, **kwargs)
            except HttpError as exc:
                auth_failure = exc.status == 401 or (exc.status == 422 and isinstance(exc.body, dict)
                                                     and "msg" in exc.body)
                if not auth_failure:
                    raise
                if attempt == 0 and self.auth.renew(token):
                    continue
                raise PermanentError(f"Kitsu refused {self.auth.who()} ({method} {path}): {server_words(exc)}; "
                                     + ("create a new bot token in Kitsu" if self.auth.is_bot
                                        else "check the email and password")) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.close()

    def _lock_for(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = threading.Lock()
                self._key_locks[key] = lock
            return lock

    # ---- names from the publish ------------------------------------------------------------------
    def project_name(self, publish: Publish) -> str:
        configured = self.settings.project
        if configured:
            m = re.fullmatch(r"\{(\w+)\}", configured.strip())
            if m:
                value = _field(publish.fields, (m.group(1),))
                if value:
                    return value
                raise PermanentError(f"tracker.project takes the project from template key {m.group(1)!r}, "
                                     f"which the path {publish.path} does not give")
        if publish.project:
            return publish.project
        if configured:
            return configured
        raise PermanentError(f"no Kitsu project for {publish.path}: set tracker.project or a template key for it")

    def task_type_name(self, publish: Publish) -> str:
        if not publish.task:
            raise PermanentError(f"{publish.path}: the template gives no task/step, and Kitsu output files need "
                                 f"a task type (map it in tracker.task_types)")
        mapping = {k.casefold(): v for k, v in self.settings.task_types.items()}
        return mapping.get(publish.task.casefold(), publish.task)

    def output_type_name(self, publish: Publish) -> str:
        mapping = {k.casefold().lstrip("."): v for k, v in self.settings.output_types.items()}
        for key in (publish.extension, (publish.publish_type or "").casefold()):
            if key and key in mapping:
                return mapping[key]
        return publish.publish_type or publish.extension.upper() or "File"

    def review_wanted(self, publish: Publish) -> bool:
        if publish.review:  # `review: true` on the template's publishes rule
            return True
        review = self.settings.review
        return review if isinstance(review, bool) else publish.template in review

    def serialize_key(self, job: Job) -> str:
        """The server-side uniqueness key of the output file (revision left out: Zou's automatic
        revision races on it too), so two workers never create the same record concurrently."""
        p = job.publish
        try:
            parts = [self.project_name(p), p.entity.type if p.entity else "", self._parent_hint(p),
                     p.entity.name if p.entity else "", self.task_type_name(p), self.output_type_name(p),
                     p.name, p.extension]
        except PermanentError:
            return f"kitsu|{p.key}"  # publish() will refuse it; no race to prevent
        return "kitsu|" + "|".join(str(x).casefold() for x in parts)

    @staticmethod
    def _parent_hint(p: Publish) -> str:
        return "/".join(v for v in (_field(p.fields, EPISODE_KEYS), _field(p.fields, SEQUENCE_KEYS),
                                    _field(p.fields, ASSET_TYPE_KEYS)) if v)

    # ---- lookups --------------------------------------------------------------------------------
    def _cached(self, key: Any, fetch: Callable[[], Any], fresh: bool = False) -> Any:
        if not fresh:
            hit = self.cache.get(key)
            if hit is not _MISSING:
                return hit
        value = fetch()
        if value is not None:
            self.cache.put(key, value)
        return value

    def project(self, name: str, fresh: bool = False) -> dict:
        def fetch() -> dict | None:
            found = [p for p in self.call("GET", "/data/projects", params={"name": name}) or []
                     if _same(p.get("name"), name)]
            return found[0] if found else None
        project = self._cached(("project", name.casefold()), fetch, fresh)
        if project is None:
            raise PermanentError(f"project {name!r} not found in Kitsu (or not visible to {self.auth.who()})")
        return project

    def _named(self, kind: str, path: str, name: str, fresh: bool = False) -> dict | None:
        rows = self._cached((kind,), lambda: self.call("GET", path), fresh)
        hit = next((r for r in rows if _same(r.get("name"), name)), None)
        if hit is None:
            hit = next((r for r in rows if _same(r.get("short_name"), name)), None)
        if hit is None and not fresh:
            return self._named(kind, path, name, fresh=True)
        return hit

    def entity_type(self, name: str) -> dict | None:
        return self._named("entity-types", "/data/entity-types", name)

    def task_type(self, name: str) -> dict:
        found = self._named("task-types", "/data/task-types", name)
        if found is None:
            known = ", ".join(sorted(t["name"] for t in self._cached(("task-types",), lambda: [])))
            raise PermanentError(f"task type {name!r} not found in Kitsu (known: {known}); "
                                 f"map the step in tracker.task_types")
        return found

    def task_status(self, name: str) -> dict:
        found = self._named("task-status", "/data/task-status", name)
        if found is None:
            raise PermanentError(f"task status {name!r} (tracker.review_status) not found in Kitsu")
        return found

    def output_type(self, name: str, short_name: str = "") -> dict:
        found = self._named("output-types", "/data/output-types", name)
        if found is not None:
            return found
        if not self.settings.create_output_types:
            raise PermanentError(f"output type {name!r} not found in Kitsu and tracker.create_output_types is "
                                 f"false; create it in Kitsu (Settings > Output types) or map the extension")
        if len(name) > MAX_OUTPUT_TYPE_NAME:
            raise PermanentError(f"output type name {name!r} is longer than Kitsu's {MAX_OUTPUT_TYPE_NAME} characters")
        with self._create_lock:
            found = self._named("output-types", "/data/output-types", name, fresh=True)
            if found is None:
                short = (short_name or name).lower()[:MAX_OUTPUT_TYPE_SHORT]
                try:
                    found = self.call("POST", "/data/output-types", json={"name": name, "short_name": short},
                                      retry=False)
                except HttpError as exc:  # created meanwhile by another agent?
                    found = self._named("output-types", "/data/output-types", name, fresh=True)
                    if found is None:
                        raise PermanentError(f"creating output type {name!r} in Kitsu failed: {server_words(exc)}") from None
                except RetryableError:
                    found = self._named("output-types", "/data/output-types", name, fresh=True)
                    if found is None:
                        raise
                log.info("created Kitsu output type %r", name)
                self.cache.drop(lambda k: k == ("output-types",))
            return found

    def _entities(self, project: dict, type_name: str, name: str, parent_id: str | None | object,
                  fresh: bool) -> list[dict]:
        etype = self.entity_type(type_name)
        if etype is None:
            return []
        key = ("entities", project["id"], etype["id"], name.casefold(), parent_id)

        def fetch() -> list[dict] | None:
            params: dict[str, Any] = {"project_id": project["id"], "entity_type_id": etype["id"], "name": name}
            if isinstance(parent_id, str):
                params["parent_id"] = parent_id
            rows = [e for e in self.call("GET", "/data/entities", params=params) or []
                    if _same(e.get("name"), name) and not e.get("canceled")]
            return rows or None
        return self._cached(key, fetch, fresh) or []

    def _one(self, rows: list[dict], what: str) -> dict | None:
        if len(rows) > 1:
            raise PermanentError(f"{what} is ambiguous in Kitsu ({len(rows)} matches); "
                                 f"give the parent (sequence/episode/asset type) in the template")
        return rows[0] if rows else None

    def entity(self, project: dict, publish: Publish) -> dict:
        """The Kitsu entity of ``publish.entity``, found (or created when allowed)."""
        if publish.entity is None:
            raise PermanentError(f"{publish.path}: the template names no entity (shot, asset...) to publish on")
        found = self._find_entity(project, publish, fresh=False)
        if found is None:
            found = self._find_entity(project, publish, fresh=True)  # created since we cached?
        if found is None:
            if not self.settings.create_missing_entities:
                raise PermanentError(f"{self._describe_entity(publish)} not found in Kitsu project "
                                     f"{project['name']!r} (create it, or set tracker.create_missing_entities)")
            with self._create_lock:
                found = self._find_entity(project, publish, fresh=True) or self._create_entity(project, publish)
        return found

    def _describe_entity(self, publish: Publish) -> str:
        assert publish.entity
        parent = self._parent_hint(publish)
        return f"{publish.entity.type} {parent + '/' if parent else ''}{publish.entity.name}"

    def _find_entity(self, project: dict, publish: Publish, fresh: bool) -> dict | None:
        assert publish.entity
        etype, name, fields = publish.entity.type, publish.entity.name, publish.fields
        kind = etype.casefold()
        if kind == "shot":
            seq_name = _field(fields, SEQUENCE_KEYS)
            if seq_name:
                seq = self._find_sequence(project, seq_name, _field(fields, EPISODE_KEYS), fresh)
                if seq is None:
                    return None
                return self._one(self._entities(project, "Shot", name, seq["id"], fresh),
                                 f"shot {seq_name}/{name}")
            return self._one(self._entities(project, "Shot", name, None, fresh), f"shot {name}")
        if kind == "sequence":
            return self._find_sequence(project, name, _field(fields, EPISODE_KEYS), fresh)
        if kind in ("episode", "edit", "scene", "concept"):
            return self._one(self._entities(project, etype.capitalize(), name, None, fresh), f"{kind} {name}")
        asset_type = _field(fields, ASSET_TYPE_KEYS)
        if kind != "asset":  # Entity("Character", "hero"): the type is the asset type
            asset_type = etype
        if asset_type:
            return self._one(self._entities(project, asset_type, name, None, fresh), f"asset {asset_type}/{name}")
        rows = [a for a in self._cached(
            ("assets", project["id"], name.casefold()),
            lambda: self.call("GET", "/data/assets/all", params={"project_id": project["id"], "name": name}) or None,
            fresh) or [] if _same(a.get("name"), name) and not a.get("canceled")]
        return self._one(rows, f"asset {name}")

    def _find_sequence(self, project: dict, name: str, episode: str | None, fresh: bool) -> dict | None:
        parent: str | None | object = _MISSING
        if episode:
            ep = self._one(self._entities(project, "Episode", episode, None, fresh), f"episode {episode}")
            if ep is None:
                return None
            parent = ep["id"]
        return self._one(self._entities(project, "Sequence", name, parent, fresh), f"sequence {name}")

    def _create_entity(self, project: dict, publish: Publish) -> dict:
        assert publish.entity
        pid, name, fields = project["id"], publish.entity.name, publish.fields
        kind = publish.entity.type.casefold()
        try:
            if kind == "shot":
                seq_name = _field(fields, SEQUENCE_KEYS)
                if not seq_name:
                    raise PermanentError(f"cannot create shot {name!r}: the template gives no sequence")
                seq = self._find_sequence(project, seq_name, _field(fields, EPISODE_KEYS), True) \
                    or self._create_sequence(project, seq_name, _field(fields, EPISODE_KEYS))
                made = self.call("POST", f"/data/projects/{pid}/shots", json={"name": name, "sequence_id": seq["id"]},
                                 retry=False)
            elif kind == "sequence":
                made = self._create_sequence(project, name, _field(fields, EPISODE_KEYS))
            elif kind == "episode":
                made = self.call("POST", f"/data/projects/{pid}/episodes", json={"name": name}, retry=False)
            else:
                asset_type = publish.entity.type if kind != "asset" else _field(fields, ASSET_TYPE_KEYS)
                at = self.entity_type(asset_type) if asset_type else None
                if at is None or kind in ("edit", "scene", "concept"):
                    raise PermanentError(f"cannot create {self._describe_entity(publish)} in Kitsu: "
                                         + ("unknown asset type" if kind == "asset" or at is None else "not supported"))
                made = self.call("POST", f"/data/projects/{pid}/asset-types/{at['id']}/assets/new",
                                 json={"name": name, "description": "created by watcher", "data": {}}, retry=False)
        except HttpError as exc:
            raise PermanentError(f"creating {self._describe_entity(publish)} in Kitsu failed: {server_words(exc)}") from None
        log.info("created Kitsu %s", self._describe_entity(publish))
        self.cache.drop(lambda k: k[0] in ("entities", "assets"))
        return made

    def _create_sequence(self, project: dict, name: str, episode: str | None) -> dict:
        body: dict[str, Any] = {"name": name}
        if episode:
            ep = self._one(self._entities(project, "Episode", episode, None, True), f"episode {episode}") \
                or self.call("POST", f"/data/projects/{project['id']}/episodes", json={"name": episode}, retry=False)
            body["episode_id"] = ep["id"]
        seq = self.call("POST", f"/data/projects/{project['id']}/sequences", json=body, retry=False)
        self.cache.drop(lambda k: k[0] == "entities")
        return seq

    def task(self, project: dict, entity: dict, task_type: dict, publish: Publish) -> dict:
        def fetch() -> dict | None:
            rows = self.call("GET", "/data/tasks", params={"entity_id": entity["id"], "task_type_id": task_type["id"]})
            rows = sorted(rows or [], key=lambda t: (t.get("name") != "main", t.get("created_at") or ""))
            return rows[0] if rows else None
        key = ("task", entity["id"], task_type["id"])
        found = self._cached(key, fetch) or self._cached(key, fetch, fresh=True)
        if found is not None:
            return found
        what = f"task {task_type['name']!r} on {self._describe_entity(publish)}"
        if not self.settings.create_missing_entities:
            raise PermanentError(f"{what} not found in Kitsu (create it, or set tracker.create_missing_entities)")
        with self._create_lock:
            found = self._cached(key, fetch, fresh=True)
            if found is None:
                kind = (entity.get("type") or "").lower()
                route = {"shot": "shots", "asset": "assets", "edit": "edits"}.get(kind)
                path = (f"/actions/projects/{project['id']}/task-types/{task_type['id']}/{route}/create-tasks" if route
                        else f"/actions/projects/{project['id']}/task-types/{task_type['id']}/create-tasks/{kind}")
                try:  # never an empty list: Zou then creates the task on every entity of the project
                    self.call("POST", path, json=[entity["id"]], retry=False)
                except HttpError as exc:
                    raise PermanentError(f"creating {what} failed: {server_words(exc)}") from None
                found = self._cached(key, fetch, fresh=True)
                if found is None:
                    raise PermanentError(f"creating {what} in Kitsu did not produce a task")
                log.info("created Kitsu %s", what)
            return found

    # ---- publish --------------------------------------------------------------------------------
    def publish(self, job: Job) -> TrackerRef:
        with self._lock_for(self.serialize_key(job)):
            return self._publish(job)

    def _publish(self, job: Job) -> TrackerRef:
        p = job.publish
        self._validate(p)
        project = self.project(self.project_name(p))
        if not project.get("file_tree"):
            project = self.project(project["name"], fresh=True)
            if not project.get("file_tree"):
                raise PermanentError(f"Kitsu project {project['name']!r} has no file tree, so Zou cannot place output "
                                     f"files (and leaves orphan rows when asked); set one in Kitsu's production "
                                     f"settings (watcher check reports this)")
        entity = self.entity(project, p)
        task_type = self.task_type(self.task_type_name(p))
        output_type = self.output_type(self.output_type_name(p), p.extension)
        review = self.review_wanted(p)
        need_task = self.settings.comment or self.settings.working_file or review
        task = self.task(project, entity, task_type, p) if need_task else None
        where = (f"{self._describe_entity(p)} (task type {task_type['name']!r}, output type "
                 f"{output_type['name']!r}, {p.name}{f' v{p.version}' if p.version is not None else ''})")

        output = self._find_output(entity, output_type, task_type, p, job)
        if output is None:
            working = self._working_file(task, p) if (self.settings.working_file and task) else None
            output = self._create_output(entity, output_type, task_type, p, job, working, where)
        job.remember(output_file_id=output["id"])
        output = self._record_file(output, p, job, task, where)
        if task is not None and (self.settings.comment or review):
            self._comment(task, output, p, job, review, where)
        return TrackerRef(id=output["id"], url=self._web_url(project, entity))

    def _validate(self, p: Publish) -> None:
        """Refuse what Zou would refuse with a 500 (retried forever) or a truncation error."""
        checks = [(p.name, MAX_NAME, "name"), (p.extension, MAX_REPRESENTATION, "representation"),
                  ("." + p.extension, MAX_EXTENSION, "extension")]
        for value, limit, what in checks:
            if len(value) > limit:
                raise PermanentError(f"{p.path}: {what} {value!r} is longer than Kitsu's limit of {limit} characters")
        if not p.extension:
            raise PermanentError(f"{p.path}: no file extension, Kitsu needs one for the representation")

    def _find_output(self, entity: dict, output_type: dict, task_type: dict, p: Publish, job: Job) -> dict | None:
        """An output file this publish already made (or an identical one), else None. A record
        with the same key that is not ours is a conflict, refused with its details."""
        rows = self.call("GET", f"/data/entities/{entity['id']}/output-files", params={
            "output_type_id": output_type["id"], "task_type_id": task_type["id"], "name": p.name,
            "representation": p.extension}) or []
        marker, known = _marker(p), job.state.get("output_file_id")

        def ours(row: dict) -> bool:
            data = row.get("data") or {}
            return (row.get("id") == known or data.get("watcher_key") == p.key
                    or marker in (row.get("comment") or ""))
        if p.version is not None and p.version > 0:
            same = [r for r in rows if r.get("revision") == p.version and not r.get("canceled")]
            mine = [r for r in same if ours(r)]
            if mine:
                return mine[0]
            if same:
                other = same[0]
                if other.get("path") == p.path:
                    return other  # the same file, published before under another key: adopt it
                raise PermanentError(
                    f"Kitsu already has output file {p.name!r} revision {p.version} ({p.extension}) on "
                    f"{self._describe_entity(p)} for task type {task_type['name']!r} and output type "
                    f"{output_type['name']!r} (id {other['id']}, path {other.get('path')}), not made for {p.path}")
            return None
        mine = [r for r in rows if ours(r)]
        return mine[0] if mine else None

    def _create_output(self, entity: dict, output_type: dict, task_type: dict, p: Publish, job: Job,
                       working: dict | None, where: str) -> dict:
        body: dict[str, Any] = {
            "output_type_id": output_type["id"], "task_type_id": task_type["id"], "name": p.name,
            "revision": p.version if p.version and p.version > 0 else 0, "representation": p.extension,
            "extension": "." + p.extension, "nb_elements": max(1, p.frame_count if p.is_sequence else 1),
            "comment": f"{p.description or 'published by watcher'} {_marker(p)}".strip(),
        }
        if working is not None:
            body["working_file_id"] = working["id"]
        path = f"/data/entities/{entity['id']}/output-files/new"
        try:
            # not retried blindly: a dropped answer may hide a created row, so look first
            return self.call("POST", path, json=body, retry=False)
        except RetryableError:
            found = self._retry_find(entity, output_type, task_type, p, job)
            if found is not None:
                return found
            raise
        except HttpError as exc:
            if exc.status == 400:
                found = self._find_output(entity, output_type, task_type, p, job)
                if found is not None:  # "already exists": another agent or an earlier attempt won
                    return found
            if exc.status == 404:
                self.cache.drop()
            raise PermanentError(f"Kitsu refused the output file on {where}: {server_words(exc)}") from None

    def _retry_find(self, entity: dict, output_type: dict, task_type: dict, p: Publish, job: Job) -> dict | None:
        try:
            return self._find_output(entity, output_type, task_type, p, job)
        except RetryableError:
            return None

    def _working_file(self, task: dict, p: Publish) -> dict:
        """A working file on the task (name + revision), the output file's ``source_file``."""
        rev = p.version if p.version and p.version > 0 else None
        rows = self.call("GET", f"/data/tasks/{task['id']}/working-files") or []
        for row in rows:
            if row.get("name") == p.name and (rev is None or row.get("revision") == rev):
                return row
        body = {"name": p.name, "comment": f"published by watcher: {p.path}", "mode": "working",
                "revision": rev or 0}
        try:
            return self.call("POST", f"/data/tasks/{task['id']}/working-files/new", json=body, retry=False)
        except (HttpError, RetryableError) as exc:
            rows = self.call("GET", f"/data/tasks/{task['id']}/working-files") or []
            for row in rows:
                if row.get("name") == p.name and (rev is None or row.get("revision") == rev):
                    return row
            if isinstance(exc, HttpError):
                raise PermanentError(f"Kitsu refused the working file {p.name!r} on task {task['id']}: "
                                     f"{server_words(exc)}") from None
            raise

    def _record_file(self, output: dict, p: Publish, job: Job, task: dict | None, where: str) -> dict:
        """PUT the real path, size, checksum and frame data (idempotent)."""
        size = p.size or self._disk_size(p)
        checksum = job.state.get("md5")
        if checksum is None and self.settings.checksum:
            checksum = self._md5(p)
            job.remember(md5=checksum)
        data = dict(output.get("data") or {})
        data.update({
            "source": "watcher", "watcher_key": p.key, "path": p.path, "size": size, "template": p.template,
            "root": p.root, "version": p.version, "publish_type": p.publish_type,
        })
        if p.is_sequence:
            nums = p.frame_numbers()
            data.update({"frames": p.frames, "missing_frames": p.missing_frames, "frame_count": p.frame_count,
                         "frame_in": min(nums) if nums else None, "frame_out": max(nums) if nums else None,
                         "padding": p.padding})
        if task is not None:
            data["task_id"] = task["id"]
        body: dict[str, Any] = {"data": data, "size": size if size <= INT32_MAX else None}
        if len(p.path) <= MAX_PATH:
            body["path"] = p.path
        else:
            log.warning("%s: path longer than Kitsu's %d characters, kept in data.path only", p.path, MAX_PATH)
        if checksum:
            body["checksum"] = checksum
        wanted = {k: v for k, v in body.items()}
        if all(output.get(k) == v for k, v in wanted.items()):
            return output
        try:
            return self.call("PUT", f"/data/output-files/{output['id']}", json=body)
        except HttpError as exc:
            message = (f"Kitsu refused path/size/checksum of output file {output['id']} on {where}: "
                       f"{server_words(exc)}")
            if job.attempts < TRANSIENT_REFUSALS:
                # The values were checked against Zou's column limits before sending; Zou answers
                # this 400 too when its database connection drops (seen while it shuts down).
                # The output file exists: a later attempt finds it and sends the update again.
                raise RetryableError(message + " (retrying)") from None
            raise PermanentError(message) from None

    @staticmethod
    def _disk_size(p: Publish) -> int:
        total = 0
        for f in p.file_paths():
            try:
                total += os.stat(f).st_size
            except OSError:
                pass
        return total

    @staticmethod
    def _md5(p: Publish) -> str:
        """md5 (Zou's checksum column holds 32 characters) of the file, or of the frames in
        order for a sequence."""
        digest = hashlib.md5()
        for f in p.file_paths():
            try:
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError as exc:
                raise PermanentError(f"cannot read {f} for its checksum: {exc.strerror or exc}") from None
        return digest.hexdigest()

    # ---- comment and review ------------------------------------------------------------------------
    def _comment_text(self, output: dict, p: Publish) -> str:
        what = f"{p.frame_count} frames {p.frames}" if p.is_sequence else "1 file"
        if p.missing_frames:
            what += f", missing {p.missing_frames}"
        return (f"Published **{p.name}** v{p.version if p.version is not None else output.get('revision')} "
                f"({p.extension}, {what}): `{p.path}` {_marker(p)}")

    def _comment(self, task: dict, output: dict, p: Publish, job: Job, review: bool, where: str) -> None:
        marker = _marker(p)
        comment = None
        if job.state.get("comment_id") or job.uncertain or job.attempts:
            for c in self.call("GET", f"/data/tasks/{task['id']}/comments") or []:
                if marker in (c.get("text") or ""):
                    comment = c
                    break
        if comment is None:
            status = self.task_status(self.settings.review_status)["id"] if review else None
            if status is None:  # keep the task's status as it is now
                current = self.call("GET", f"/data/tasks/{task['id']}")
                status = current["task_status_id"]
            try:
                comment = self.call("POST", f"/actions/tasks/{task['id']}/comment",
                                    json={"task_status_id": status, "comment": self._comment_text(output, p)},
                                    retry=False)
            except HttpError as exc:
                raise PermanentError(f"Kitsu refused the comment on task {task['id']} for {where}: "
                                     f"{server_words(exc)}") from None
        job.remember(comment_id=comment["id"])
        if review:
            self._preview(task, comment, p, job, where)

    def preview_source(self, p: Publish) -> str | None:
        """What reviewers can look at: a movie, a picture, or the middle frame of a picture
        sequence. EXR and other formats Kitsu cannot show get no preview."""
        ext = p.extension
        if ext in MOVIE_EXTENSIONS or (ext in PICTURE_EXTENSIONS and not p.is_sequence):
            return p.path
        if ext in PICTURE_EXTENSIONS:
            frames = p.frame_numbers()
            return p.frame_path(frames[len(frames) // 2]) if frames else None
        return None

    def _preview(self, task: dict, comment: dict, p: Publish, job: Job, where: str) -> None:
        source = self.preview_source(p)
        if source is None:
            log.info("%s: no previewable media (%s), review comment without preview", p.path, p.extension)
            return
        previews = comment.get("previews") or []
        preview = previews[0] if previews else None
        if preview is not None:  # the comment listing carries a summary only: read the record
            preview = self.call("GET", f"/data/preview-files/{preview if isinstance(preview, str) else preview['id']}")
        if preview is None:
            try:
                preview = self.call("POST", f"/actions/tasks/{task['id']}/comments/{comment['id']}/add-preview",
                                    json={}, retry=False)
            except HttpError as exc:
                raise PermanentError(f"Kitsu refused a preview on {where}: {server_words(exc)}") from None
        job.remember(preview_file_id=preview["id"])
        if preview.get("status") not in (None, "processing") and preview.get("file_size"):
            return  # uploaded by an earlier attempt
        mime = mimetypes.guess_type(source)[0] or "application/octet-stream"
        try:
            with open(source, "rb") as fh:
                self.call("POST", f"/pictures/preview-files/{preview['id']}", retry=False,
                          params={"no_job": "true", "normalize": "false"},
                          files={"file": (os.path.basename(source), fh, mime)},
                          timeout=max(self.settings.timeout, 120.0))
        except OSError as exc:
            raise PermanentError(f"cannot read preview {source}: {exc.strerror or exc}") from None
        except HttpError as exc:
            raise PermanentError(f"Kitsu refused the preview upload {source} for {where}: {server_words(exc)}") from None

    def _web_url(self, project: dict, entity: dict) -> str:
        base = self.settings.url[:-4] if self.settings.url.endswith("/api") else self.settings.url
        kind = (entity.get("type") or "").lower()
        section = {"shot": "shots", "asset": "assets", "sequence": "sequences", "episode": "episodes",
                   "edit": "edits"}.get(kind, "shots")
        return f"{base}/productions/{project['id']}/{section}/{entity['id']}"

    # ---- check ------------------------------------------------------------------------------------
    def check(self) -> list[CheckResult]:
        out: list[CheckResult] = []
        try:
            me = self.call("GET", "/auth/authenticated")
            user = (me or {}).get("user") or {}
            who = " ".join(x for x in (user.get("first_name"), user.get("last_name")) if x) or user.get("email", "?")
            out.append(CheckResult(True, f"credentials ({self.auth.who()})",
                                   f"authenticated as {who}{' (bot)' if user.get('is_bot') else ''}"))
        except (PermanentError, RetryableError, ConfigError) as exc:
            return [CheckResult(False, f"credentials ({self.auth.who()}) on {self.settings.url}", str(exc))]
        project = self.settings.project
        if project and not re.fullmatch(r"\{\w+\}", project.strip()):
            try:
                found = self.project(project, fresh=True)
                if found.get("file_tree"):
                    out.append(CheckResult(True, f"project {project!r}", "found, with a file tree"))
                else:
                    out.append(CheckResult(False, f"project {project!r}",
                                           "has no file tree: Zou cannot place output files; set one in the "
                                           "production settings"))
            except PermanentError as exc:
                out.append(CheckResult(False, f"project {project!r}", str(exc)))
        elif project:
            out.append(CheckResult(True, f"project {project!r}", "taken from the template, checked at publish time"))
        else:
            out.append(CheckResult(True, "project", "taken from each publish's project field"))
        for step, name in sorted(self.settings.task_types.items()):
            try:
                self.task_type(name)
                out.append(CheckResult(True, f"task type {name!r} (step {step!r})", "found"))
            except PermanentError as exc:
                out.append(CheckResult(False, f"task type {name!r} (step {step!r})", str(exc)))
        for ext, name in sorted(self.settings.output_types.items()):
            found = self._named("output-types", "/data/output-types", name, fresh=True)
            if found is not None:
                out.append(CheckResult(True, f"output type {name!r} ({ext})", "found"))
            elif self.settings.create_output_types:
                out.append(CheckResult(True, f"output type {name!r} ({ext})", "missing, created at the first publish"))
            else:
                out.append(CheckResult(False, f"output type {name!r} ({ext})",
                                       "not found in Kitsu and tracker.create_output_types is false"))
        if self.settings.review:
            try:
                self.task_status(self.settings.review_status)
                out.append(CheckResult(True, f"review status {self.settings.review_status!r}", "found"))
            except PermanentError as exc:
                out.append(CheckResult(False, f"review status {self.settings.review_status!r}", str(exc)))
        return out
