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
  creating it. That look is one listing of the entity's output files, read twice: an output file
  of the same path (and revision) made by someone else is adopted, nothing is created.
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
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import PermanentError, RetryableError
from ..model import Job, Publish, TrackerRef
from ..names import shown
from ..paths import PathMappingError, RootPath, kitsu_path
from .base import Backend, BackendContext, CheckResult
from .http import HttpClient, HttpError, hide_url_password, without_credentials
from .tracker import (ADOPT_TTL, ASSET_TYPE_KEYS, EPISODE_KEYS, MOVIE_EXTENSIONS, SEQUENCE_KEYS, BearerAuth,
                      FolderListing, LookupCache, Scrubber, Token, TrackerSettings, adopt_once, adopted_ref, check_step,
                      config_path, field_value, frame_range_cached, frame_range_of, line_secret, no_blank_values,
                      open_regular, project_of, read_error, regular_size, same_file, tracker_http)

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
TRANSIENT_REFUSALS = 3  # attempts during which a refused update of our own record is retried
# Zou column limits (models/output_file.py, output_type.py)
MAX_NAME, MAX_REPRESENTATION, MAX_EXTENSION, MAX_PATH = 250, 20, 10, 400
MAX_OUTPUT_TYPE_NAME, MAX_OUTPUT_TYPE_SHORT = 40, 20
PICTURE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "jpe"})
_ANY_PARENT = object()  # _entities: do not filter on the parent


class KitsuSettings(TrackerSettings):
    """The ``tracker:`` section for ``backend: kitsu`` (timeouts, retries, TLS and cache from
    ``TrackerSettings``, with its defaults)."""

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
    # the studio's mount point of the roots as Kitsu users know it (e.g. /mnt/prod): an output
    # file's path is then it plus the file's `/` path below its root, whichever OS published it
    mount_point: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http(s) address such as https://kitsu.example/api, "
                             f"not {hide_url_password(v)!r}")
        return v

    @field_validator("task_types", "output_types")
    @classmethod
    def _no_blank(cls, v: dict[str, str]) -> dict[str, str]:
        return no_blank_values(v)

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, v: str | None) -> str | None:
        if v is not None and not v.strip().replace("\\", "/").rstrip("/"):
            raise ValueError("is empty; give the folder the roots are mounted under, such as /mnt/prod, or remove it")
        return v.strip() if v is not None else v

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


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").casefold() == (b or "").casefold()


def _marker(publish: Publish) -> str:
    """Stable tag put in the output file's comment at create time (the create drops ``data``),
    so a retry recognises a record it made even before the follow-up PUT landed."""
    return "[watcher " + hashlib.sha1(publish.key.encode()).hexdigest()[:16] + "]"


class _Auth(BearerAuth):
    """A bot token used as is, or a user login done once and renewed on a 401 (refresh token
    first, then a new login)."""

    def __init__(self, settings: KitsuSettings, token: str | None, password: str | None,
                 http: HttpClient) -> None:
        super().__init__(http)
        self.email = settings.email
        self.is_bot = token is not None
        self.renewable = not self.is_bot  # a bot token cannot be renewed: make a new one in Kitsu
        self._bot_token, self._password = token, password

    def who(self) -> str:
        return "the API token" if self.is_bot else f"the login {self.email}"

    def login(self) -> Token:
        if self._bot_token is not None:
            return Token(self._bot_token)
        try:
            answer = self.http.request("POST", "/auth/login", json={"email": self.email, "password": self._password})
        except HttpError as exc:
            raise PermanentError(f"Kitsu refused {self.who()}: {server_words(exc)}") from None
        if not isinstance(answer, dict) or not answer.get("access_token"):
            words = answer.get("message") if isinstance(answer, dict) else answer
            raise PermanentError(f"Kitsu refused {self.who()}: {words or 'no access token in the answer'}")
        return Token(answer["access_token"], answer.get("refresh_token"))

    def refresh(self, refresh_token: str) -> Token | None:
        answer = self.http.request("GET", "/auth/refresh-token", headers={"Authorization": f"Bearer {refresh_token}"})
        if isinstance(answer, dict) and answer.get("access_token"):
            return Token(answer["access_token"], refresh_token)
        return None

    def is_auth_failure(self, exc: HttpError) -> bool:
        # flask-jwt answers a malformed token with 422 {"msg": ...}
        return exc.status == 401 or (exc.status == 422 and isinstance(exc.body, dict) and "msg" in exc.body)

    def refused(self, exc: HttpError, method: str, path: str) -> PermanentError:
        return PermanentError(f"Kitsu refused {self.who()} ({method} {path}): {server_words(exc)}; "
                              + ("create a new bot token in Kitsu" if self.is_bot else "check the email and password"))


class KitsuBackend(Backend):
    name = "kitsu"
    Settings = KitsuSettings

    def __init__(self, settings: KitsuSettings, context: BackendContext) -> None:
        super().__init__(settings, context)
        is_bot = settings.email is None
        token = line_secret(settings.token, config_path(settings.token_file, context.config_dir), "tracker.token",
                            header=True) if is_bot else None
        password = None if is_bot else line_secret(
            settings.password, config_path(settings.password_file, context.config_dir), "tracker.password")
        self.http = tracker_http(settings, context.config_dir, settings.url, scrub=Scrubber(token, password),
                                 describe_error=describe_zou_error)
        self.auth = _Auth(settings, token, password, self.http)
        self.cache = LookupCache(settings.cache_ttl)
        self._listing = FolderListing(min(ADOPT_TTL, settings.cache_ttl))  # output files per entity
        # Creating a shared record (entity, task, output type) many publishes use: rare, one at a
        # time. Publishes of one serialize_key are already serialised by the workers.
        self._create_lock = threading.Lock()

    def call(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """One authenticated request (a 401 renews a user login once, then fails clearly)."""
        return self.auth.request(method, path, retry=retry, **kwargs)

    def scrub(self, value: Any) -> Any:
        return self.http.scrub(value)

    def close(self) -> None:
        self.http.close()

    # ---- names from the publish ------------------------------------------------------------------
    def project_name(self, publish: Publish) -> str:
        """``tracker.project`` may be ``"{Key}"``: the value of that template key."""
        configured = (self.settings.project or "").strip()
        m = re.fullmatch(r"\{(\w+)\}", configured)
        return str(project_of(publish, None if m else configured, key=m.group(1) if m else None))

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
        return "/".join(v for v in (field_value(p.fields, EPISODE_KEYS), field_value(p.fields, SEQUENCE_KEYS),
                                    field_value(p.fields, ASSET_TYPE_KEYS)) if v)

    # ---- lookups --------------------------------------------------------------------------------
    def project(self, name: str, fresh: bool = False) -> dict:
        def fetch() -> dict | None:
            found = [p for p in self.call("GET", "/data/projects", params={"name": name}) or []
                     if _same(p.get("name"), name)]
            return found[0] if found else None
        project = self.cache.fetch(("project", name.casefold()), fetch, fresh=fresh)
        if project is None:
            raise PermanentError(f"project {name!r} not found in Kitsu (or not visible to {self.auth.who()})")
        return project

    def _named(self, kind: str, path: str, name: str, fresh: bool = False) -> dict | None:
        rows = self.cache.fetch((kind,), lambda: self.call("GET", path), fresh=fresh)
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
            known = ", ".join(sorted(t["name"] for t in self.cache.get(("task-types",)) or []))
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
        return self.cache.fetch(key, fetch, fresh=fresh) or []

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
            seq_name = field_value(fields, SEQUENCE_KEYS)
            if seq_name:
                seq = self._find_sequence(project, seq_name, field_value(fields, EPISODE_KEYS), fresh)
                if seq is None:
                    return None
                return self._one(self._entities(project, "Shot", name, seq["id"], fresh),
                                 f"shot {seq_name}/{name}")
            return self._one(self._entities(project, "Shot", name, None, fresh), f"shot {name}")
        if kind == "sequence":
            return self._find_sequence(project, name, field_value(fields, EPISODE_KEYS), fresh)
        if kind in ("episode", "edit", "scene", "concept"):
            return self._one(self._entities(project, etype.capitalize(), name, None, fresh), f"{kind} {name}")
        asset_type = field_value(fields, ASSET_TYPE_KEYS)
        if kind != "asset":  # Entity("Character", "hero"): the type is the asset type
            asset_type = etype
        if asset_type:
            return self._one(self._entities(project, asset_type, name, None, fresh), f"asset {asset_type}/{name}")
        rows = [a for a in self.cache.fetch(
            ("assets", project["id"], name.casefold()),
            lambda: self.call("GET", "/data/assets/all", params={"project_id": project["id"], "name": name}) or None,
            fresh=fresh) or [] if _same(a.get("name"), name) and not a.get("canceled")]
        return self._one(rows, f"asset {name}")

    def _find_sequence(self, project: dict, name: str, episode: str | None, fresh: bool) -> dict | None:
        parent: str | None | object = _ANY_PARENT
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
                seq_name = field_value(fields, SEQUENCE_KEYS)
                if not seq_name:
                    raise PermanentError(f"cannot create shot {name!r}: the template gives no sequence")
                seq = self._find_sequence(project, seq_name, field_value(fields, EPISODE_KEYS), True) \
                    or self._create_sequence(project, seq_name, field_value(fields, EPISODE_KEYS))
                made = self.call("POST", f"/data/projects/{pid}/shots", json={"name": name, "sequence_id": seq["id"]},
                                 retry=False)
            elif kind == "sequence":
                made = self._create_sequence(project, name, field_value(fields, EPISODE_KEYS))
            elif kind == "episode":
                made = self.call("POST", f"/data/projects/{pid}/episodes", json={"name": name}, retry=False)
            else:
                asset_type = publish.entity.type if kind != "asset" else field_value(fields, ASSET_TYPE_KEYS)
                at = self.entity_type(asset_type) if asset_type else None
                if at is None or kind in ("edit", "scene", "concept"):
                    raise PermanentError(f"cannot create {self._describe_entity(publish)} in Kitsu: "
                                         + ("unknown asset type" if kind == "asset" or at is None else "not supported"))
                made = self.call("POST", f"/data/projects/{pid}/asset-types/{at['id']}/assets/new",
                                 json={"name": name, "description": "created by watcher", "data": {}}, retry=False)
        except HttpError as exc:
            raise PermanentError(f"creating {self._describe_entity(publish)} in Kitsu failed: {server_words(exc)}") from None
        log.info("created Kitsu %s", self._describe_entity(publish))
        self.cache.drop(lambda k: isinstance(k, tuple) and k[0] in ("entities", "assets"))  # keys are tuples
        return made

    def _create_sequence(self, project: dict, name: str, episode: str | None) -> dict:
        body: dict[str, Any] = {"name": name}
        if episode:
            ep = self._one(self._entities(project, "Episode", episode, None, True), f"episode {episode}") \
                or self.call("POST", f"/data/projects/{project['id']}/episodes", json={"name": episode}, retry=False)
            body["episode_id"] = ep["id"]
        seq = self.call("POST", f"/data/projects/{project['id']}/sequences", json=body, retry=False)
        self.cache.drop(lambda k: isinstance(k, tuple) and k[0] == "entities")  # keys are tuples
        return seq

    def task(self, project: dict, entity: dict, task_type: dict, publish: Publish) -> dict:
        def fetch() -> dict | None:
            rows = self.call("GET", "/data/tasks", params={"entity_id": entity["id"], "task_type_id": task_type["id"]})
            rows = sorted(rows or [], key=lambda t: (t.get("name") != "main", t.get("created_at") or ""))
            return rows[0] if rows else None
        key = ("task", entity["id"], task_type["id"])
        found = self.cache.fetch(key, fetch) or self.cache.fetch(key, fetch, fresh=True)
        if found is not None:
            return found
        what = f"task {task_type['name']!r} on {self._describe_entity(publish)}"
        if not self.settings.create_missing_entities:
            raise PermanentError(f"{what} not found in Kitsu (create it, or set tracker.create_missing_entities)")
        with self._create_lock:
            found = self.cache.fetch(key, fetch, fresh=True)
            if found is None:
                kind = (entity.get("type") or "").lower()
                route = {"shot": "shots", "asset": "assets", "edit": "edits"}.get(kind)
                path = (f"/actions/projects/{project['id']}/task-types/{task_type['id']}/{route}/create-tasks" if route
                        else f"/actions/projects/{project['id']}/task-types/{task_type['id']}/create-tasks/{kind}")
                try:  # never an empty list: Zou then creates the task on every entity of the project
                    self.call("POST", path, json=[entity["id"]], retry=False)
                except HttpError as exc:
                    raise PermanentError(f"creating {what} failed: {server_words(exc)}") from None
                found = self.cache.fetch(key, fetch, fresh=True)
                if found is None:
                    raise PermanentError(f"creating {what} in Kitsu did not produce a task")
                log.info("created Kitsu %s", what)
            return found

    # ---- publish --------------------------------------------------------------------------------
    def publish(self, job: Job) -> TrackerRef:
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
        page = lambda _id: self._web_url(project, entity)  # noqa: E731
        if job.amend:
            return self._amend(job, entity, page)
        # before the type/task lookups: an adopted file needs none of them
        if self.settings.adopt and adopt_once(job, "output_file_id", None,
                                              lambda: self._existing_output(entity, p, job)):
            return adopted_ref(job, "output_file_id", page)  # type: ignore[return-value]
        task_type = self.task_type(self.task_type_name(p))
        output_type = self.output_type(self.output_type_name(p), p.extension)
        review = self.review_wanted(p)
        need_task = self.settings.comment or self.settings.working_file or review
        task = self.task(project, entity, task_type, p) if need_task else None
        where = (f"{self._describe_entity(p)} (task type {task_type['name']!r}, output type "
                 f"{output_type['name']!r}, {p.name}{f' v{p.version}' if p.version is not None else ''})")

        if self.settings.checksum and job.state.get("md5") is None:
            # read before anything is created: a file swapped for a FIFO, a device or a link out of
            # the root fails the publish here, leaving no output file behind on the tracker
            job.remember(md5=self._md5(p))
        output = self._find_output(entity, output_type, task_type, p, job)
        if output is None:
            working = self._working_file(task, p) if (self.settings.working_file and task) else None
            output = self._create_output(entity, output_type, task_type, p, job, working, where)
        job.remember(output_file_id=output["id"])
        output = self._record_file(output, p, job, task, where)
        self._listing.add(("output-files", entity["id"]), output)  # with its path: the next publish reads it
        if task is not None and (self.settings.comment or review):
            self._comment(task, output, p, job, review, where)
        return TrackerRef(id=output["id"], url=self._web_url(project, entity))

    def _amend(self, job: Job, entity: dict, page: Any) -> TrackerRef:
        """The files of a publish changed after it was registered (a late write, ``republish:
        update``): its output file gets the new ``size``, ``checksum`` (md5, computed again) and
        ``nb_elements``, and in ``data`` the new size and frames (``frames``, ``frame_in``/``frame_out``,
        ``frame_count``, ``missing_frames``). One ``PUT`` of the record: idempotent, so a retry after a
        lost answer sends the same values again. No output file, comment or preview is created."""
        p = job.publish
        oid = job.state.get("output_file_id") or job.previous_id
        if oid is None:
            raise PermanentError(f"cannot amend the publish of {p.path}: no Kitsu output file id was journaled")
        where = f"{self._describe_entity(p)} ({p.name})"
        try:
            output = self.call("GET", f"/data/output-files/{oid}")
        except HttpError as exc:
            raise PermanentError(f"cannot amend output file {oid} on {where}: {server_words(exc)}") from None
        if self.settings.checksum:
            job.remember(md5=self._md5(p))  # the file changed: the checksum of the first publish is stale
        output = self._record_file(output, p, job, None, where)
        self._listing.add(("output-files", entity["id"]), output)
        log.info("Kitsu: amended output file %s of %s (size %s)", oid, where, output.get("size"))
        return TrackerRef(id=str(oid), url=page(oid))

    # ---- tracker frame range ------------------------------------------------------------------------
    def frame_range(self, publish: Publish) -> tuple[int, int] | None:
        """The entity's ``data.frame_in``/``data.frame_out`` (where Kitsu keeps a shot's range),
        read once per entity per ``cache_ttl``. None when the entity or either value is not there."""
        if publish.entity is None:
            return None
        project = self.project(self.project_name(publish))
        entity = self._find_entity(project, publish, fresh=False)
        if entity is None:
            return None
        label = f"Kitsu {self._describe_entity(publish)}"

        def load() -> tuple[int, int] | None:
            try:
                row = self.call("GET", f"/data/entities/{entity['id']}")
            except HttpError as exc:
                raise PermanentError(f"cannot read the frame range of {label}: {server_words(exc)}") from None
            data = (row or {}).get("data") or {}
            return frame_range_of(data.get("frame_in"), data.get("frame_out"), ("data.frame_in", "data.frame_out"),
                                  label)
        return frame_range_cached(self.cache, ("kitsu entity", entity["id"]), load)

    # ---- versions already on the tracker --------------------------------------------------------------
    def versions_used(self, publish: Publish) -> set[int]:
        """The ``revision`` of every output file of the entity with the same name, output type,
        task type and representation (extension): the key ``_find_output`` matches on. The
        entity's output files are read afresh (one request); a missing entity, task type or
        output type means no revision is taken (nothing is created)."""
        p = publish
        if p.entity is None:
            return set()
        project = self.project(self.project_name(p))
        entity = self._find_entity(project, p, fresh=False)
        if entity is None:
            return set()
        task_type = self._named("task-types", "/data/task-types", self.task_type_name(p))
        output_type = self._named("output-types", "/data/output-types", self.output_type_name(p))
        if task_type is None or output_type is None:
            return set()
        want = {"output_type_id": output_type["id"], "task_type_id": task_type["id"], "name": p.name,
                "representation": p.extension}
        try:
            rows = self._outputs(entity, fresh=True)
        except HttpError as exc:
            raise PermanentError(f"cannot list the output files of {self._describe_entity(p)}: "
                                 f"{server_words(exc)}") from None
        return {int(r["revision"]) for r in rows
                if all(r.get(k) == v for k, v in want.items()) and isinstance(r.get("revision"), int)}

    def output_path(self, p: Publish) -> str:
        """An output file's ``path``: with ``mount_point``, the mount point and the file's ``/``
        path below its root (NFC), one value whichever OS published it; else the file's path."""
        mount = self.settings.mount_point
        if mount is None:
            return p.path
        rel = RootPath.of(p.root_path).relative(p.path)
        if rel is None:
            raise PermanentError(f"{shown(p.path)} is not below its root {shown(p.root_path)}")
        try:
            return kitsu_path(mount, rel)
        except PathMappingError as exc:
            raise PermanentError(str(exc)) from None

    def _validate(self, p: Publish) -> None:
        """Refuse what Zou would refuse with a 500 (retried forever) or a truncation error."""
        checks = [(p.name, MAX_NAME, "name"), (p.extension, MAX_REPRESENTATION, "representation"),
                  ("." + p.extension, MAX_EXTENSION, "extension")]
        for value, limit, what in checks:
            if len(value) > limit:
                raise PermanentError(f"{p.path}: {what} {value!r} is longer than Kitsu's limit of {limit} characters")
        if not p.extension:
            raise PermanentError(f"{p.path}: no file extension, Kitsu needs one for the representation")

    def _outputs(self, entity: dict, *, fresh: bool = False) -> list[dict]:
        """Every output file of the entity: one request, kept ``ADOPT_TTL`` seconds so that the
        publishes of one shot share it; both the adoption (by path) and the key search read it."""
        return self._listing.cache.fetch(
            ("output-files", entity["id"]),
            lambda: list(self.call("GET", f"/data/entities/{entity['id']}/output-files") or []), fresh=fresh)

    @staticmethod
    def _ours(row: dict, p: Publish, job: Job) -> bool:
        """Made by this publish: its id journaled, or our key/marker on it."""
        data = row.get("data") or {}
        return (row.get("id") == job.state.get("output_file_id") or data.get("watcher_key") == p.key
                or _marker(p) in (row.get("comment") or ""))

    def _existing_output(self, entity: dict, p: Publish, job: Job) -> str | None:
        """An output file of this file (same path, and revision when the publish has a version)
        made by someone else (a Kitsu publisher, gazu), whatever its name or types."""
        rows = [r for r in self._outputs(entity, fresh=job.uncertain)
                if not r.get("canceled") and not self._ours(r, p, job)]
        rec = same_file(rows, self.output_path(p), p.version if p.version and p.version > 0 else None,
                        path_of=lambda r: r.get("path"), version_of=lambda r: r.get("revision"))
        return rec["id"] if rec else None

    def _find_output(self, entity: dict, output_type: dict, task_type: dict, p: Publish, job: Job,
                     *, fresh: bool = False) -> dict | None:
        """An output file this publish already made (or an identical one), else None. A record
        with the same key that is not ours is a conflict, refused with its details."""
        want = {"output_type_id": output_type["id"], "task_type_id": task_type["id"], "name": p.name,
                "representation": p.extension}
        rows = sorted((r for r in self._outputs(entity, fresh=fresh or job.uncertain)
                       if all(r.get(k) == v for k, v in want.items())), key=lambda r: -(r.get("revision") or 0))

        def ours(row: dict) -> bool:
            return self._ours(row, p, job)
        if p.version is not None and p.version > 0:
            same = [r for r in rows if r.get("revision") == p.version and not r.get("canceled")]
            mine = [r for r in same if ours(r)]
            if mine:
                return mine[0]
            if same:
                other = same[0]
                if other.get("path") == self.output_path(p):
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
            created = self.call("POST", path, json=body, retry=False)
            self._listing.add(("output-files", entity["id"]), created)
            return created
        except RetryableError:
            found = self._retry_find(entity, output_type, task_type, p, job)
            if found is not None:
                return found
            raise
        except HttpError as exc:
            if exc.status == 400:
                found = self._find_output(entity, output_type, task_type, p, job, fresh=True)
                if found is not None:  # "already exists": another agent or an earlier attempt won
                    return found
            if exc.status == 404:
                self.cache.drop()
            raise PermanentError(f"Kitsu refused the output file on {where}: {server_words(exc)}") from None

    def _retry_find(self, entity: dict, output_type: dict, task_type: dict, p: Publish, job: Job) -> dict | None:
        try:
            return self._find_output(entity, output_type, task_type, p, job, fresh=True)
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
            "source": "watcher", "watcher_key": p.key, "path": self.output_path(p), "size": size, "template": p.template,
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
        if p.is_sequence:
            body["nb_elements"] = max(1, p.frame_count)
        path = self.output_path(p)
        if len(path) <= MAX_PATH:
            body["path"] = path
        else:
            log.warning("%s: path longer than Kitsu's %d characters, kept in data.path only", path, MAX_PATH)
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
        # a symlink, a FIFO or a file now outside the root is refused
        return sum(regular_size(f, root=p.root_path) for f in p.file_paths())

    @staticmethod
    def _md5(p: Publish) -> str:
        """md5 (Zou's checksum column holds 32 characters) of the file, or of the frames in
        order for a sequence."""
        digest = hashlib.md5()
        for f in p.file_paths():
            # never follows a symlink, never blocks on a FIFO, never reads outside the root
            with open_regular(f, "checksum", root=p.root_path) as fh:
                try:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                except OSError as exc:
                    raise read_error(f, "checksum", exc) from None
        return digest.hexdigest()

    # ---- comment and review ------------------------------------------------------------------------
    def _comment_text(self, output: dict, p: Publish) -> str:
        what = f"{p.frame_count} frames {p.frames}" if p.is_sequence else "1 file"
        if p.missing_frames:
            what += f", missing {p.missing_frames}"
        return (f"Published **{p.name}** v{p.version if p.version is not None else output.get('revision')} "
                f"({p.extension}, {what}): `{self.output_path(p)}` {_marker(p)}")

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
        if p.extension in MOVIE_EXTENSIONS:
            return p.path
        return p.middle_frame_path() if p.extension in PICTURE_EXTENSIONS else None

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
            with open_regular(source, "preview", root=p.root_path) as fh:
                self.call("POST", f"/pictures/preview-files/{preview['id']}", retry=False,
                          params={"no_job": "true", "normalize": "false"},
                          files={"file": (os.path.basename(source), fh, mime)},
                          timeout=max(self.settings.timeout, 120.0))
        except OSError as exc:
            raise read_error(source, "preview", exc) from None
        except HttpError as exc:
            raise PermanentError(f"Kitsu refused the preview upload {source} for {where}: {server_words(exc)}") from None

    def _web_url(self, project: dict, entity: dict) -> str:
        url = without_credentials(self.settings.url)  # a link kept in the journal: never a password
        base = url[:-4] if url.endswith("/api") else url
        kind = (entity.get("type") or "").lower()
        section = {"shot": "shots", "asset": "assets", "sequence": "sequences", "episode": "episodes",
                   "edit": "edits"}.get(kind, "shots")
        return f"{base}/productions/{project['id']}/{section}/{entity['id']}"

    # ---- check ------------------------------------------------------------------------------------
    def check(self) -> list[CheckResult]:
        out = [check_step(f"credentials ({self.auth.who()})", self._check_credentials)]
        if not out[0].ok:
            return [CheckResult(False, f"credentials ({self.auth.who()}) on {self.settings.url}", out[0].detail)]
        project = self.settings.project
        if project and not re.fullmatch(r"\{\w+\}", project.strip()):
            out.append(check_step(f"project {project!r}", lambda: self._check_project(project)))
        elif project:
            out.append(CheckResult(True, f"project {project!r}", "taken from the template, checked at publish time"))
        else:
            out.append(CheckResult(True, "project", "taken from each publish's project field"))
        for step, name in sorted(self.settings.task_types.items()):
            def task_type_found(n: str = name) -> str | None:  # task_type raises when it is missing
                return "found" if self.task_type(n) else None
            out.append(check_step(f"task type {name!r} (step {step!r})", task_type_found))
        for ext, name in sorted(self.settings.output_types.items()):
            out.append(check_step(f"output type {name!r} ({ext})", partial(self._check_output_type, name)))
        if self.settings.review:
            status = self.settings.review_status
            out.append(check_step(f"review status {status!r}", lambda: "found" if self.task_status(status) else None))
        return out

    def _check_credentials(self) -> str:
        user = (self.call("GET", "/auth/authenticated") or {}).get("user") or {}
        who = " ".join(x for x in (user.get("first_name"), user.get("last_name")) if x) or user.get("email", "?")
        return f"authenticated as {who}{' (bot)' if user.get('is_bot') else ''}"

    def _check_project(self, name: str) -> str:
        if not self.project(name, fresh=True).get("file_tree"):
            raise PermanentError("has no file tree: Zou cannot place output files; set one in the production settings")
        return "found, with a file tree"

    def _check_output_type(self, name: str) -> str:
        if self._named("output-types", "/data/output-types", name, fresh=True) is not None:
            return "found"
        if not self.settings.create_output_types:
            raise PermanentError("not found in Kitsu and tracker.create_output_types is false")
        return "missing, created at the first publish"
