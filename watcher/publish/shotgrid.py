"""ShotGrid / Flow Production Tracking over its REST API (``requests``, no ``shotgun_api3``).

A publish becomes a ``PublishedFile`` with the fields Toolkit's ``sgtk.util.register_publish()``
writes (``code``, ``name``, ``version_number``, ``path`` as ``{relative_path, local_storage}``,
``path_cache``, ``entity``, ``project``, ``task``, ``published_file_type``, ``description``,
``created_by``), so Loader, Breakdown and ``find_publish`` treat it as their own: they look
publishes up by the exact ``path_cache`` string and ``path_cache_storage``, which the REST API
never computes (Toolkit's ``register_publish`` computes them on the client). Optionally a ``Version`` for review
is linked to it and a thumbnail is uploaded.

Exactly once: nothing on a ShotGrid site is unique, so after an uncertain outcome the backend
searches for a PublishedFile with the same ``path_cache``, storage and version before creating,
and creates are never retried blindly (``retry=False``); ids are remembered in the job state as
soon as they are known. Before the first create, a PublishedFile of the same file made by a peer
tool (tk-multi-publish2) is adopted instead (one search per folder, see ``tracker.FolderListing``)."""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import PermanentError, PublishError, RetryableError
from ..model import Job, Publish, TrackerRef
from ..names import shown
from ..paths import (SHOTGRID_FIELDS, OSFamily, OSPaths, PathMappingError, RootPath, current_os, render_path,
                     shotgrid_path, shotgrid_storage_for)
from .base import Backend, BackendContext, CheckResult
from .http import HttpError, hide_url_password, without_credentials
from .tracker import (ADOPT_TTL, ASSET_TYPE_KEYS, MOVIE_EXTENSIONS, SEQUENCE_KEYS, BearerAuth, FolderListing,
                      LookupCache, Scrubber, Token, TrackerSettings, UnsafeFile, adopt_once, adopted_ref, check_step,
                      config_path, create_once, field_value, frame_range_cached, frame_range_of, line_secret,
                      open_regular, project_of, read_error, regular_size, same_file, tracker_http)

log = logging.getLogger(__name__)

ARRAY_CT = "application/vnd+shotgun.api3_array+json"
HASH_CT = "application/vnd+shotgun.api3_hash+json"
DEFAULT_CREATABLE = ("Shot", "Asset", "Sequence")
REVIEW_EXTENSIONS = ["exr", "dpx", "jpg", "jpeg", "png", "tif", "tiff", "mov", "mp4"]
THUMBNAIL_EXTENSIONS = ["jpg", "jpeg", "png", "gif"]


class ShotGridSettings(TrackerSettings):
    """The ``tracker:`` section for ``backend: shotgrid`` (timeouts, retries, TLS and cache from
    ``TrackerSettings``, with its defaults)."""

    url: str = Field(description="site URL, e.g. https://studio.shotgrid.autodesk.com")
    # script credentials (client_credentials grant) ...
    script_name: str | None = None
    script_key: SecretStr | None = None
    script_key_file: Path | None = None
    # ... or a person's login (password grant)
    login: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sudo_as_login: str | None = None  # act as this person (token scope sudo_as_login:<login>)

    project: int | str | None = None  # Project id, or its name / tank_name
    project_key: str | None = None  # template key whose value names the project (wins when present)
    storages: dict[str, int | str] = Field(default_factory=dict)  # root name -> LocalStorage code or id

    page_size: int = Field(500, ge=1, le=5000)

    create_publish_types: bool = True  # register_publish creates a missing PublishedFileType
    publish_types: list[str] = Field(default_factory=list)  # checked by `watcher check`
    create_missing_entities: bool | list[str] = False  # True = Shot, Asset, Sequence
    require_task: bool = True  # a publish naming a task that does not exist fails
    frame_range_field: str | None = None  # PublishedFile field for "1001-1100" (e.g. sg_frame_range)
    # the entity's first and last frame for `expect_frames: tracker` (head/tail: sg_head_in, sg_tail_out)
    frame_range_fields: list[str] = Field(default_factory=lambda: ["sg_cut_in", "sg_cut_out"], min_length=2,
                                          max_length=2)
    size_field: str | None = None  # a number field of PublishedFile for the size in bytes (none is standard)
    created_by: int | None = None  # HumanUser id written as created_by
    status: str | None = None  # sg_status_list of new publishes (None: the site's default)
    extra_fields: dict[str, Any] = Field(default_factory=dict)  # like register_publish's sg_fields

    version_for_review: bool = False
    review_extensions: list[str] = Field(default_factory=lambda: list(REVIEW_EXTENSIONS))
    version_status: str | None = None

    thumbnail: bool = False
    thumbnail_command: list[str] | None = None  # argv with {input} and {output} placeholders
    thumbnail_extensions: list[str] = Field(default_factory=lambda: list(THUMBNAIL_EXTENSIONS))
    thumbnail_timeout: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _site(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        v = re.sub(r"/api/v1(\.\d+)?$", "", v)
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be the site URL starting with https://, got {hide_url_password(v)!r}")
        return v

    @field_validator("project")
    @classmethod
    def _project_id(cls, v: int | str | None) -> int | str | None:
        # env overrides arrive as text: WATCHER_TRACKER__PROJECT=123 means the id
        return int(v) if isinstance(v, str) and v.strip().isdigit() else v

    @model_validator(mode="after")
    def _auth(self) -> "ShotGridSettings":
        script = self.script_name is not None
        person = self.login is not None
        if script == person:
            raise ValueError("set either script_name (with script_key or script_key_file) or login "
                             "(with password or password_file), not both or neither")
        return self


def slug(entity_type: str) -> str:
    """REST route name of a type: ``PublishedFile`` -> ``published_files``."""
    words = [w.lower() for w in re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", entity_type)]
    last = words[-1]
    if last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    elif last.endswith(("s", "x", "ch")):
        last += "es"
    else:
        last += "s"
    return "_".join(words[:-1] + [last])


def link(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if rec is None else {"type": rec["type"], "id": rec["id"]}


def describe_error(status: int, body: Any) -> str:
    """The server's own words from ``{"errors": [{title, detail, source}]}``."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        texts = []
        for e in body["errors"]:
            text = str(e.get("title") or "")
            if e.get("detail"):
                text += f": {e['detail']}"
            elif e.get("source"):
                text += f" {json.dumps(e['source'])}"
            texts.append(text)
        return f"ShotGrid {status}: " + "; ".join(texts)
    return f"ShotGrid {status}: {body}"


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """A REST record (``attributes`` + ``relationships``) as one flat dict, as the Python API gives."""
    out: dict[str, Any] = {"type": rec.get("type"), "id": rec.get("id")}
    out.update(rec.get("attributes") or {})
    for name, rel in (rec.get("relationships") or {}).items():
        out[name] = rel.get("data") if isinstance(rel, dict) else rel
    return out


class ShotGridClient(BearerAuth):
    """The REST wire: bearer token (``BearerAuth``: cached, refreshed before expiry, one re-auth
    on 401), ``search`` with pagination, create/update/read, uploads. Thread-safe."""

    def __init__(self, settings: ShotGridSettings, config_dir: Path, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.site = settings.url
        if settings.script_name is not None:
            secret = line_secret(settings.script_key, config_path(settings.script_key_file, config_dir),
                                 "tracker.script_key")
            self._grant = {"grant_type": "client_credentials", "client_id": settings.script_name,
                           "client_secret": secret or ""}
            self.who = f"script '{settings.script_name}'"
        else:
            secret = line_secret(settings.password, config_path(settings.password_file, config_dir),
                                 "tracker.password")
            self._grant = {"grant_type": "password", "username": settings.login or "", "password": secret or ""}
            self.who = f"user '{settings.login}'"
        if settings.sudo_as_login:
            self._grant["scope"] = f"sudo_as_login:{settings.sudo_as_login}"
        http = tracker_http(settings, config_dir, f"{self.site}/api/v1", scrub=Scrubber(secret),
                            headers={"Accept": "application/json"}, describe_error=describe_error)
        super().__init__(http, clock=clock)

    # ---- auth (BearerAuth) ----------------------------------------------------------------------
    def _fetch_token(self, form: dict[str, str]) -> Token:
        try:
            body = self.http.request("POST", "auth/access_token", data=form,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        except HttpError as exc:
            raise PermanentError(f"ShotGrid at {self.site} refused the credentials of {self.who}: "
                                 f"{exc.message}") from None
        if not isinstance(body, dict) or "access_token" not in body:
            raise PermanentError(f"ShotGrid at {self.site}: unexpected answer from auth/access_token")
        ttl = float(body.get("expires_in") or 600)
        # renew ahead of expiry: a minute on a real site, a tenth of the lifetime when short
        return Token(body["access_token"], body.get("refresh_token"), self._clock() + ttl - min(60.0, ttl / 10))

    def login(self) -> Token:
        return self._fetch_token(self._grant)

    def refresh(self, refresh_token: str) -> Token | None:
        return self._fetch_token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def refused(self, exc: HttpError, method: str, path: str) -> PermanentError:
        return PermanentError(f"ShotGrid at {self.site} refused a fresh access token for {self.who}: {exc.message}")

    # ---- entities -------------------------------------------------------------------------------
    def search(self, entity_type: str, filters: list[Any] | dict[str, Any], fields: list[str], *,
               sort: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """``POST /entity/{type}/_search``, every page (stops on a short or empty page)."""
        ctype = ARRAY_CT if isinstance(filters, list) else HASH_CT
        size = min(limit or self.settings.page_size, self.settings.page_size)
        out: list[dict[str, Any]] = []
        for number in range(1, 10_000):
            body: dict[str, Any] = {"filters": filters, "fields": fields, "page": {"size": size, "number": number}}
            if sort:
                body["sort"] = sort
            resp = self.request("POST", f"entity/{slug(entity_type)}/_search", data=json.dumps(body),
                                headers={"Content-Type": ctype})
            rows = (resp or {}).get("data") or []
            out.extend(flatten(r) for r in rows)
            if limit is not None and len(out) >= limit:
                return out[:limit]
            if len(rows) < size:
                break
        return out

    def find_one(self, entity_type: str, filters: list[Any] | dict[str, Any], fields: list[str],
                 *, sort: str | None = "id") -> dict[str, Any] | None:
        rows = self.search(entity_type, filters, fields, sort=sort, limit=1)
        return rows[0] if rows else None

    def read(self, entity_type: str, rid: int, fields: list[str]) -> dict[str, Any] | None:
        resp = self.request("GET", f"entity/{slug(entity_type)}/{rid}", params={"fields": ",".join(fields)},
                            ok_statuses=(404,))
        if not isinstance(resp, dict) or "data" not in resp:
            return None
        return flatten(resp["data"])

    def create(self, entity_type: str, data: dict[str, Any]) -> dict[str, Any]:
        """Never retried here: whether a failed create landed is unknown, the caller searches."""
        resp = self.request("POST", f"entity/{slug(entity_type)}", retry=False, data=json.dumps(data),
                            headers={"Content-Type": "application/json"})
        return flatten(resp["data"])

    def field_exists(self, entity_type: str, name: str) -> bool:
        resp = self.request("GET", f"schema/{entity_type}/fields/{name}", ok_statuses=(404,))
        return isinstance(resp, dict) and "data" in resp

    def upload(self, entity_type: str, rid: int, field: str, path: str, *, root: str | None) -> None:
        """The three-step upload: ask for a target, PUT the bytes, complete. ``path`` is read
        only if it is a regular file inside ``root`` (checked again when opened)."""
        name = os.path.basename(path)
        info = self.request("GET", f"entity/{slug(entity_type)}/{rid}/{field}/_upload", params={"filename": name})
        target = urlsplit(info["links"]["upload"])
        site = urlsplit(self.site)
        if target.hostname == site.hostname:  # the API guesses scheme/port for on-site storage
            target = target._replace(scheme=site.scheme, netloc=site.netloc)
        ctype = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif"}.get(
            name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
        with open_regular(path, "upload", root=root) as fh:
            try:
                payload = fh.read()
            except OSError as exc:
                raise read_error(path, "upload", exc) from None
        # a presigned URL: no bearer token (the storage service would refuse it)
        self.http.request("PUT", urlunsplit(target), data=payload, headers={"Content-Type": ctype})
        complete = info["links"]["complete_upload"]
        complete = re.sub(r"^/api/v1(\.\d+)?", "", complete)
        self.request("POST", complete, data=json.dumps({"upload_info": info["data"], "upload_data": {}}),
                     headers={"Content-Type": "application/json"})

    def close(self) -> None:
        self.http.close()


class ShotGridBackend(Backend):
    name = "shotgrid"
    Settings = ShotGridSettings

    def __init__(self, settings: ShotGridSettings, context: BackendContext) -> None:
        super().__init__(settings, context)
        self.os = current_os()  # whose LocalStorage field (linux_path, mac_path, windows_path) holds the roots here
        self.os_field = SHOTGRID_FIELDS[self.os]
        self.client = ShotGridClient(settings, context.config_dir)
        self.cache = LookupCache(settings.cache_ttl)
        self._listing = FolderListing(min(ADOPT_TTL, settings.cache_ttl))  # existing publishes per folder
        # Creating a shared record (a PublishedFileType, a Shot) that many publishes use: one
        # lock per record, so two publishes never both create it. (Publishes of one key are
        # already serialised by the workers.)
        self._create_locks: dict[Any, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ---- publish --------------------------------------------------------------------------------
    def publish(self, job: Job) -> TrackerRef:
        p = job.publish
        project = self._project(p)
        storage, rel = self._storage(p)
        site = without_credentials(self.client.site)  # a link kept in the journal: never a password
        page = lambda rid: f"{site}/detail/PublishedFile/{rid}"  # noqa: E731
        if job.amend:
            return self._amend(job, project, storage, rel, page)
        # before the entity/task/type lookups: an adopted file needs none of them
        if self.settings.adopt and adopt_once(job, "published_file_id", "publish_sent",
                                              lambda: self._existing_published_file(project, storage, rel, p.version)):
            return adopted_ref(job, "published_file_id", page)  # type: ignore[return-value]
        thumbnail = self.settings.thumbnail and not job.state.get("thumbnail_done")
        # checked before anything is created: a frame swapped for a link or a FIFO fails the publish here
        source = self._thumbnail_source(p) if thumbnail else None
        entity = self._entity(p, project) if p.entity else None
        task = self._task(p, project, entity) if p.task else None
        pftype = self._publish_type(p.publish_type) if p.publish_type else None
        where = self._where(p, project)
        pf_id = self._create_once(
            job, "PublishedFile", "published_file_id", "publish_sent", f"the PublishedFile for {where}",
            lambda: self._find_published_file(project, storage, rel, p.version),
            lambda: self._published_file_data(p, project, storage, rel, entity, task, pftype))
        self._listing.add(self._folder_key(project, storage, rel), {"id": pf_id, "path_cache": rel,
                                                                    "version_number": p.version})
        pf = {"type": "PublishedFile", "id": pf_id}

        version = None
        if (self.settings.version_for_review or p.review) and p.extension in {e.lower() for e in self.settings.review_extensions}:
            version = self._version(job, p, project, entity, task, pf, where)
        if thumbnail:
            self._thumbnail(job, p, source, [pf] + ([version] if version else []))
        return TrackerRef(id=str(pf_id), url=page(pf_id))

    def _where(self, p: Publish, project: dict[str, Any]) -> str:
        ent = f"{p.entity.type} '{p.entity.name}'" if p.entity else "the project"
        bits = [ent, f"project '{project.get('name')}'"]
        if p.task:
            bits.append(f"task '{p.task}'")
        if p.publish_type:
            bits.append(f"type '{p.publish_type}'")
        return ", ".join(bits)

    def _published_file_data(self, p: Publish, project: dict[str, Any], storage: dict[str, Any], rel: str,
                             entity: dict[str, Any] | None, task: dict[str, Any] | None,
                             pftype: dict[str, Any] | None) -> dict[str, Any]:
        """register_publish's dict, in its order: the four overridable fields, then sg_fields
        (``extra_fields``), then everything else."""
        data: dict[str, Any] = {"description": p.description or None, "name": p.name, "task": link(task),
                                "version_number": p.version}
        data.update(self.settings.extra_fields)
        if self.settings.created_by is not None:
            data["created_by"] = {"type": "HumanUser", "id": self.settings.created_by}
        if pftype is not None:
            data["published_file_type"] = link(pftype)
        data["entity"] = link(entity) if entity else link(project)
        data["project"] = link(project)
        data["code"] = rel.rsplit("/", 1)[-1]
        data["path"] = {"relative_path": rel, "local_storage": link(storage)}
        data["path_cache"] = rel
        data["path_cache_storage"] = link(storage)
        if self.settings.status:
            data["sg_status_list"] = self.settings.status
        if self.settings.frame_range_field and p.frames:
            data[self.settings.frame_range_field] = p.frames
        if self.settings.size_field:
            data[self.settings.size_field] = p.size
        return data

    # ---- amend ------------------------------------------------------------------------------------
    def _amend(self, job: Job, project: dict[str, Any], storage: dict[str, Any], rel: str,
               page: Callable[[Any], str]) -> TrackerRef:
        """The files of a publish changed after it was registered (a late write, ``republish:
        update``): update its PublishedFile in place. ``path``/``path_cache``, ``code``,
        ``version_number`` and the links stay; ``description``, ``frame_range_field`` and
        ``size_field`` (when configured) get the new values, and a review Version made by the
        first publish gets the new first/last frame and count. One ``PUT`` per record: an update
        is idempotent, so a retry after a lost answer sends the same values again."""
        p = job.publish
        rid = job.state.get("published_file_id") or job.previous_id
        if rid is None:  # nothing journaled: the record made before is found like after a crash
            found = self._find_published_file(project, storage, rel, p.version)
            if found is None:
                raise PermanentError(f"cannot amend the publish of {p.path}: no PublishedFile id was journaled "
                                     f"and none has path_cache {rel!r} (version {p.version})")
            rid = found["id"]
        rid = int(rid)
        if job.state.get("published_file_id") != rid:
            job.remember(published_file_id=rid)
        data: dict[str, Any] = {}
        if not job.state.get("adopted"):  # someone else's record keeps their description
            data["description"] = p.description or None
        if self.settings.frame_range_field and p.frames:
            data[self.settings.frame_range_field] = p.frames
        if self.settings.size_field:
            data[self.settings.size_field] = p.size
        if data:
            self._update("PublishedFile", rid, data, f"the PublishedFile of {p.path}")
        vid = job.state.get("version_id")
        frames = p.frame_numbers()
        if vid is not None and frames:
            first, last = min(frames), max(frames)
            self._update("Version", int(vid), {"sg_first_frame": first, "sg_last_frame": last,
                                               "frame_count": last - first + 1, "frame_range": f"{first}-{last}"},
                         f"the review Version of {p.path}")
        log.info("ShotGrid: amended PublishedFile %s (%s)", rid, ", ".join(sorted(data)) or "nothing to update")
        return TrackerRef(id=str(rid), url=page(rid))

    def _update(self, entity_type: str, rid: int, data: dict[str, Any], what: str) -> None:
        try:
            resp = self.client.request("PUT", f"entity/{slug(entity_type)}/{rid}", data=json.dumps(data),
                                       headers={"Content-Type": "application/json"}, ok_statuses=(404,))
        except HttpError as exc:
            raise PermanentError(f"ShotGrid refused to update {what} ({entity_type} {rid}): {exc.message}") from None
        if isinstance(resp, dict) and "errors" in resp:  # the 404 body
            raise PermanentError(f"cannot update {what}: {entity_type} {rid} no longer exists on {self.client.site}")

    # ---- tracker frame range ------------------------------------------------------------------------
    def frame_range(self, publish: Publish) -> tuple[int, int] | None:
        """The entity's ``frame_range_fields`` (Shot ``sg_cut_in``/``sg_cut_out`` by default), read
        once per entity per ``cache_ttl``. None when the entity, or either value, is not there."""
        if publish.entity is None:
            return None
        project = self._project(publish)
        etype, code = publish.entity.type, publish.entity.name
        first_f, last_f = self.settings.frame_range_fields
        key = (etype, project["id"], code.lower())
        entity = self.cache.get(key) or self._find_entity(etype, code, project, publish.fields)
        if entity is None:
            return None
        self.cache.put(key, entity)

        def load() -> tuple[int, int] | None:
            try:
                rec = self.client.read(etype, entity["id"], [first_f, last_f])
            except HttpError as exc:
                raise PermanentError(f"cannot read {first_f}/{last_f} of {etype} '{code}': {exc.message}") from None
            if rec is None:
                return None
            return frame_range_of(rec.get(first_f), rec.get(last_f), (first_f, last_f), f"ShotGrid {etype} '{code}'")
        return frame_range_cached(self.cache, (etype, entity["id"], first_f, last_f), load)

    # ---- versions already on the tracker --------------------------------------------------------------
    def versions_used(self, publish: Publish) -> set[int]:
        """The ``version_number`` of every PublishedFile of the same stream: same project, entity
        (the project itself when the publish has none), ``name`` and ``published_file_type``.
        One search; a missing entity or publish type means no version is taken (nothing is
        created)."""
        p = publish
        project = self._project(p)
        parent: dict[str, Any] = project
        if p.entity is not None:
            etype, code = p.entity.type, p.entity.name
            key = (etype, project["id"], code.lower())
            entity = self.cache.get(key) or self._find_entity(etype, code, project, p.fields)
            if entity is None:
                return set()
            parent = self.cache.put(key, entity)
        pftype = None
        if p.publish_type:
            pftype = self.publish_type(p.publish_type, create=False)
            if pftype is None:
                return set()
        try:
            rows = self.client.search("PublishedFile", [
                ["project", "is", link(project)], ["entity", "is", link(parent)], ["name", "is", p.name],
                ["published_file_type", "is", link(pftype)]], ["version_number"], sort="id")
        except HttpError as exc:
            raise PermanentError(f"cannot list the PublishedFiles '{p.name}' of {self._where(p, project)}: "
                                 f"{exc.message}") from None
        return {int(r["version_number"]) for r in rows if isinstance(r.get("version_number"), int)}

    def _find_published_file(self, project: dict[str, Any], storage: dict[str, Any], rel: str,
                             version: int | None) -> dict[str, Any] | None:
        """The idempotency probe: same project, storage, path_cache and version number."""
        return self.client.find_one("PublishedFile", [
            ["project", "is", link(project)], ["path_cache_storage", "is", link(storage)],
            ["path_cache", "is", rel], ["version_number", "is", version]], ["code", "path_cache"])

    @staticmethod
    def _folder_key(project: dict[str, Any], storage: dict[str, Any], rel: str) -> tuple[Any, ...]:
        return ("PublishedFile folder", project["id"], storage["id"], rel.rsplit("/", 1)[0].lower())

    def _existing_published_file(self, project: dict[str, Any], storage: dict[str, Any], rel: str,
                                 version: int | None) -> int | None:
        """A PublishedFile of this file made by anyone (tk-multi-publish2, register_publish): same
        ``path_cache`` and storage, and version number when the publish has one. Toolkit finds
        publishes by these same fields. One search lists the whole folder (kept ``ADOPT_TTL``
        seconds), so the files of one folder cost one request together."""
        folder = rel.rsplit("/", 1)[0]
        rows = self._listing.get(self._folder_key(project, storage, rel), lambda: [
            r for r in self.client.search("PublishedFile", [
                ["project", "is", link(project)], ["path_cache_storage", "is", link(storage)],
                ["path_cache", "starts_with", folder + "/"]], ["path_cache", "version_number"], sort="id")
            if str(r.get("path_cache") or "").rsplit("/", 1)[0].lower() == folder.lower()])
        rec = same_file(rows, rel, version, path_of=lambda r: r.get("path_cache"),
                        version_of=lambda r: r.get("version_number"), ignore_case=True)
        return rec["id"] if rec else None

    # ---- lookups --------------------------------------------------------------------------------
    def _lock_for(self, key: Any) -> threading.Lock:
        with self._locks_lock:
            return self._create_locks.setdefault(key, threading.Lock())

    def _project(self, p: Publish) -> dict[str, Any]:
        ref = project_of(p, self.settings.project, key=self.settings.project_key)
        # digits are an id, as for tracker.project (a publish carries tracker.project as text)
        return self.project(int(ref) if isinstance(ref, str) and ref.strip().isdigit() else ref)

    def project(self, ref: int | str) -> dict[str, Any]:
        """A Project by id, else by ``name`` or ``tank_name`` (the project folder)."""
        key = ("Project", ref)
        hit = self.cache.get(key)
        if hit:
            return hit
        fields = ["name", "tank_name"]
        if isinstance(ref, int):
            rec = self.client.read("Project", ref, fields)
            if rec is None:
                raise PermanentError(f"no Project with id {ref} on {self.client.site}")
        else:
            rows = self.client.search("Project", {"logical_operator": "or", "conditions": [
                ["name", "is", ref], ["tank_name", "is", ref]]}, fields, sort="id")
            if not rows:
                raise PermanentError(f"no Project named '{ref}' (by name or tank_name) on {self.client.site}")
            rows.sort(key=lambda r: (str(r.get("name") or "").lower() != ref.lower(), r["id"]))
            rec = rows[0]
        return self.cache.put(key, rec)

    def storages(self) -> list[dict[str, Any]]:
        hit = self.cache.get("LocalStorage")
        if hit is not None:
            return hit
        rows = self.client.search("LocalStorage", [], ["code", "linux_path", "mac_path", "windows_path"], sort="id")
        return self.cache.put("LocalStorage", rows)

    def storage_for_root(self, root_name: str, root: OSPaths | str) -> dict[str, Any]:
        """The LocalStorage holding a root: the one ``storages:`` (or the root's Toolkit
        ``shotgun_storage_id``) names, else the one whose path for this OS holds the root's
        spelling here (the deepest wins). With a per-OS root, the storage must hold the root at
        the same place on every OS both give a path for. Paths compare as Toolkit compares them:
        ``/`` and ``\\`` alike, case ignored."""
        paths = root if isinstance(root, OSPaths) else OSPaths(shared=root)
        here = paths.get(self.os) or ""
        wanted = self.settings.storages.get(root_name, paths.storage_id)
        pool = self.storages()
        if wanted is not None:
            pool = [s for s in pool if wanted in (s["id"], s.get("code"))]
            if not pool:
                raise PermanentError(f"tracker.storages names LocalStorage {wanted!r} for root '{root_name}', "
                                     "but the site has none by that code or id")
            for s in pool:
                if not s.get(self.os_field):
                    raise PermanentError(f"LocalStorage '{s.get('code')}' (named for root '{root_name}' in "
                                         f"tracker.storages) has no {self.os_field}")
        try:
            found = shotgrid_storage_for(pool, root_name, paths, self.os, case_insensitive=True)
        except PathMappingError as exc:
            raise PermanentError(str(exc)) from None
        if found is not None:
            return dict(found)
        if wanted is not None:
            s = pool[-1]
            raise PermanentError(f"LocalStorage '{s.get('code')}' ({self.os_field} {s.get(self.os_field)}) "
                                 f"does not hold root '{root_name}' at {shown(here)}")
        known = ", ".join(f"{s.get('code')} ({s.get(self.os_field) or 'no ' + self.os_field})"
                          for s in self.storages()) or "none"
        raise PermanentError(f"no LocalStorage holds root '{root_name}' at {shown(here)}: add one in Site "
                             f"Preferences > File Management whose {self.os_field} is that path or a parent "
                             f"(storages on the site: {known})")

    def _storage(self, p: Publish) -> tuple[dict[str, Any], str]:
        """The publish's LocalStorage and its ``path_cache``: the file's path below the storage's
        path for this OS, ``/``-separated and NFC, with the file's own case (as Toolkit keeps it)."""
        storage = self.storage_for_root(p.root, self.context.os_paths(p.root, p.root_path))
        where = shotgrid_path(storage, p.path, self.os, case_insensitive=True)
        if where is None:
            raise PermanentError(f"{shown(p.path)} is not under LocalStorage '{storage.get('code')}' at "
                                 f"{shown(str(storage.get(self.os_field)))}")
        return storage, where.relative_path

    def _creatable(self, entity_type: str) -> bool:
        allowed = self.settings.create_missing_entities
        if allowed is True:
            return entity_type in DEFAULT_CREATABLE
        return bool(allowed) and entity_type in allowed

    def _entity(self, p: Publish, project: dict[str, Any]) -> dict[str, Any]:
        assert p.entity is not None
        return self.entity(p.entity.type, p.entity.name, project, p.fields)

    def entity(self, entity_type: str, code: str, project: dict[str, Any],
               fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Shot/Asset/Sequence/... by ``code`` in the project; created when the rule allows."""
        key = (entity_type, project["id"], code.lower())
        hit = self.cache.get(key)
        if hit:
            return hit
        rec = self._find_entity(entity_type, code, project, fields or {})
        if rec is None and self._creatable(entity_type):
            with self._lock_for(key):
                rec = self._find_entity(entity_type, code, project, fields or {}) or \
                    self._create_entity(entity_type, code, project, fields or {})
        if rec is None:
            raise PermanentError(f"no {entity_type} '{code}' in project '{project.get('name')}' "
                                 f"(create it in ShotGrid, or allow tracker.create_missing_entities)")
        return self.cache.put(key, rec)

    def _find_entity(self, entity_type: str, code: str, project: dict[str, Any],
                     fields: dict[str, Any]) -> dict[str, Any] | None:
        want = ["code"] + (["sg_sequence"] if entity_type == "Shot" else [])
        try:
            rows = self.client.search(entity_type, [["project", "is", link(project)], ["code", "is", code]],
                                      want, sort="id")
        except HttpError as exc:
            raise PermanentError(f"cannot look up {entity_type} '{code}' in project '{project.get('name')}': "
                                 f"{exc.message}") from None
        sequence = field_value(fields, SEQUENCE_KEYS)
        if len(rows) > 1 and entity_type == "Shot" and sequence:
            seq = sequence.lower()
            narrowed = [r for r in rows if str((r.get("sg_sequence") or {}).get("name") or "").lower() == seq]
            rows = narrowed or rows
        if len(rows) > 1:
            log.warning("%d %s named '%s' in project '%s'; using id %s", len(rows), entity_type, code,
                        project.get("name"), rows[0]["id"])
        return rows[0] if rows else None

    def _create_entity(self, entity_type: str, code: str, project: dict[str, Any],
                       fields: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"project": link(project), "code": code}
        sequence, asset_type = field_value(fields, SEQUENCE_KEYS), field_value(fields, ASSET_TYPE_KEYS)
        if entity_type == "Shot" and sequence:
            data["sg_sequence"] = link(self.entity("Sequence", sequence, project))
        if entity_type == "Asset" and asset_type:
            data["sg_asset_type"] = asset_type
        try:
            rec = self.client.create(entity_type, data)
        except HttpError as exc:
            raise PermanentError(f"ShotGrid refused to create {entity_type} '{code}' in project "
                                 f"'{project.get('name')}': {exc.message}") from None
        log.info("created %s '%s' (id %s) in project '%s'", entity_type, code, rec["id"], project.get("name"))
        return rec

    def _task(self, p: Publish, project: dict[str, Any], entity: dict[str, Any] | None) -> dict[str, Any] | None:
        assert p.task is not None
        parent = entity or project
        key = ("Task", parent["type"], parent["id"], p.task.lower())
        hit = self.cache.get(key)
        if hit:
            return hit
        name = p.task
        try:
            rows = self.client.search("Task", {"logical_operator": "and", "conditions": [
                ["entity", "is", link(parent)],
                {"logical_operator": "or", "conditions": [
                    ["content", "is", name], ["step.Step.code", "is", name], ["step.Step.short_name", "is", name]]}]},
                ["content", "step"], sort="id")
        except HttpError as exc:
            raise PermanentError(f"cannot look up Task '{name}' on {parent['type']} {parent['id']}: "
                                 f"{exc.message}") from None
        if not rows:
            if not self.settings.require_task:
                return None
            what = f"{p.entity.type} '{p.entity.name}'" if p.entity else f"project '{project.get('name')}'"
            raise PermanentError(f"no Task '{name}' on {what} (looked for a Task whose content or Step "
                                 "code/short name is that); create it, or set tracker.require_task: false")
        exact = [r for r in rows if str(r.get("content") or "").lower() == name.lower()]
        chosen = (exact or rows)[0]
        if len(exact or rows) > 1:
            log.warning("%d tasks match '%s' on %s %s; using '%s' (id %s)", len(exact or rows), name,
                        parent["type"], parent["id"], chosen.get("content"), chosen["id"])
        return self.cache.put(key, chosen)

    def publish_type(self, code: str, *, create: bool | None = None) -> dict[str, Any] | None:
        key = ("PublishedFileType", code.lower())
        hit = self.cache.get(key)
        if hit:
            return hit
        rec = self.client.find_one("PublishedFileType", [["code", "is", code]], ["code"])
        if rec is None and (self.settings.create_publish_types if create is None else create):
            with self._lock_for(key):
                rec = self.client.find_one("PublishedFileType", [["code", "is", code]], ["code"])
                if rec is None:
                    try:
                        rec = self.client.create("PublishedFileType", {"code": code})
                    except HttpError as exc:
                        raise PermanentError(f"ShotGrid refused to create PublishedFileType '{code}': "
                                             f"{exc.message}") from None
                    log.info("created PublishedFileType '%s' (id %s)", code, rec["id"])
        return self.cache.put(key, rec)

    def _publish_type(self, code: str) -> dict[str, Any]:
        rec = self.publish_type(code)
        if rec is None:
            raise PermanentError(f"no PublishedFileType '{code}' on {self.client.site} (create it, or set "
                                 "tracker.create_publish_types: true)")
        return rec

    # ---- review Version and thumbnail -------------------------------------------------------------
    def _version(self, job: Job, p: Publish, project: dict[str, Any], entity: dict[str, Any] | None,
                 task: dict[str, Any] | None, pf: dict[str, Any], where: str) -> dict[str, Any]:
        vid = self._create_once(
            job, "Version", "version_id", "version_sent", f"the review Version for {where}",
            lambda: self.client.find_one("Version", [["project", "is", link(project)],
                                                     ["published_files", "is", pf]], ["code"]),
            lambda: self._version_data(p, project, entity, task, pf))
        return {"type": "Version", "id": vid}

    def _create_once(self, job: Job, entity_type: str, id_key: str, sent_key: str, what: str,
                     find: Callable[[], dict[str, Any] | None], make: Callable[[], dict[str, Any]]) -> int:
        """``create_once`` with ShotGrid's find and create (nothing on a site is unique)."""
        def create() -> int:
            data = make()
            try:
                return self.client.create(entity_type, data)["id"]
            except HttpError as exc:
                raise PermanentError(f"ShotGrid refused {what} ('{data['code']}'): {exc.message}") from None

        def found() -> int | None:
            rec = find()
            return rec["id"] if rec else None
        return create_once(job, id_key, sent_key, found, create)

    def _version_data(self, p: Publish, project: dict[str, Any], entity: dict[str, Any] | None,
                      task: dict[str, Any] | None, pf: dict[str, Any]) -> dict[str, Any]:
        base = os.path.splitext(os.path.basename(p.path))[0]
        code = re.sub(r"[._]?(%0?\d*d|#+|@+)$", "", base) or base
        data: dict[str, Any] = {"project": link(project), "code": code, "entity": link(entity or project),
                                "sg_task": link(task), "description": p.description or None,
                                "published_files": [pf]}
        if p.extension in MOVIE_EXTENSIONS:
            data["sg_path_to_movie"] = p.path
        else:
            data["sg_path_to_frames"] = p.path
        frames = p.frame_numbers()
        if frames:
            first, last = min(frames), max(frames)
            data.update(sg_first_frame=first, sg_last_frame=last, frame_count=last - first + 1,
                        frame_range=f"{first}-{last}")
        if self.settings.created_by is not None:
            data["created_by"] = {"type": "HumanUser", "id": self.settings.created_by}
            data["user"] = {"type": "HumanUser", "id": self.settings.created_by}
        if self.settings.version_status:
            data["sg_status_list"] = self.settings.version_status
        return data

    def _thumbnail_source(self, p: Publish) -> str | None:
        """The frame a thumbnail would be read from, checked now (a regular file inside the
        root), or None when there is none to make. A file swapped for a link, a FIFO or a
        device (``UnsafeFile``) fails the publish; a vanished or unreadable one is logged and the
        publish goes on without a thumbnail."""
        source = p.middle_frame_path()
        if source is None or not (self.settings.thumbnail_command or p.extension in
                                  {e.lower() for e in self.settings.thumbnail_extensions}):
            return None
        try:  # a command would hang on a FIFO or read through a symlink: it is checked as any read
            regular_size(source, "thumbnail", root=p.root_path)
        except UnsafeFile:
            raise
        except PublishError as exc:
            log.warning("thumbnail for %s not made: %s", shown(p.path), exc.message)
            return None
        return source

    def _thumbnail(self, job: Job, p: Publish, source: str | None, targets: list[dict[str, Any]]) -> None:
        """Upload a thumbnail of ``source`` (see ``_thumbnail_source``) to the publish (and its
        Version). A refusal or a failing command is logged, not fatal: the publish itself exists;
        a transient error retries the job, and a file swapped meanwhile for something unsafe
        (``UnsafeFile``, checked again right before the read) fails it."""
        if source is not None and self.settings.thumbnail_command:
            source = self._thumbnail_source(p)  # again: the command reads it outside open_regular
        with tempfile.TemporaryDirectory(prefix="watcher-thumb-") as tmp:
            made = self._thumbnail_image(source, tmp, p.root_path) if source else None
            if made is None:
                job.remember(thumbnail_done=True)
                return
            image, root = made
            for target in targets:
                try:
                    self.client.upload(target["type"], target["id"], "image", image, root=root)
                except (RetryableError, UnsafeFile):
                    raise
                except PublishError as exc:
                    log.warning("thumbnail for %s %s not uploaded: %s", target["type"], target["id"], exc.message)
        job.remember(thumbnail_done=True)

    def _thumbnail_image(self, source: str, tmp: str, root: str) -> tuple[str, str | None] | None:
        """(the image to upload, the folder it must stay inside) or None: the command's output
        in ``tmp`` (made here, read as is), else the frame itself (re-checked at upload)."""
        if self.settings.thumbnail_command:
            out = os.path.join(tmp, "thumbnail.jpg")
            argv = [a.replace("{input}", source).replace("{output}", out) for a in self.settings.thumbnail_command]
            try:
                done = subprocess.run(argv, capture_output=True, timeout=self.settings.thumbnail_timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("thumbnail command %s failed: %s", shown(shlex.join(argv)), exc)
                return None
            if done.returncode != 0 or not os.path.isfile(out):
                log.warning("thumbnail command %s exited %s: %s", shown(shlex.join(argv)), done.returncode,
                            done.stderr.decode(errors="replace")[-500:])
                return None
            return out, tmp
        return source, root

    # ---- check ----------------------------------------------------------------------------------
    def check(self) -> list[CheckResult]:
        s = self.settings
        out = [check_step("credentials", self._check_credentials)]
        if not out[0].ok:
            return out
        out.append(check_step("project", self._check_project))
        names = list(dict.fromkeys([*s.publish_types, *self.context.publish_types]))
        for name in names:
            out.append(check_step(f"publish type '{name}'", partial(self._check_type, name)))
        if not names:
            out.append(check_step("publish types", self._check_types_readable))
        for root_name, root_path in sorted(self.context.roots.items()):
            out.append(check_step(f"local storage for root '{root_name}'",
                                  partial(self._check_storage, root_name, str(root_path))))
        if s.created_by is not None:
            out.append(check_step(f"created_by HumanUser {s.created_by}", self._check_user))
        fields = [("PublishedFile", f) for f in ([s.frame_range_field] if s.frame_range_field else [])
                  + ([s.size_field] if s.size_field else []) + list(s.extra_fields)]
        if s.version_for_review:
            fields += [("Version", f) for f in ("sg_path_to_frames", "sg_first_frame", "sg_last_frame",
                                                "frame_range", "published_files")]
        for etype, fname in fields:
            out.append(check_step(f"field {etype}.{fname}", partial(self._check_field, etype, fname)))
        return out

    def _check_credentials(self) -> str:
        self.client.authenticate()
        return f"{self.client.who} at {self.client.site}"

    def _check_project(self) -> str:
        if self.settings.project is None:
            if self.settings.project_key:
                return f"taken per publish from template key '{self.settings.project_key}'"
            return "not set: each publish must name its project (publishes: rule)"
        rec = self.project(self.settings.project)
        tank = rec.get("tank_name")
        detail = f"'{rec.get('name')}' (id {rec['id']}, tank_name '{tank}')"
        if not tank:
            detail += "; tank_name is empty, Toolkit paths will not resolve"
        return detail

    def _check_type(self, name: str) -> str:
        rec = self.publish_type(name, create=False)
        if rec is not None:
            return f"id {rec['id']}"
        if self.settings.create_publish_types:
            return "missing; it will be created on the first publish (create_publish_types: true)"
        raise PermanentError(f"no PublishedFileType '{name}' and create_publish_types is false")

    def _check_types_readable(self) -> str:
        rows = self.client.search("PublishedFileType", [], ["code"], limit=self.settings.page_size)
        return f"{len(rows)} on the site" + ("" if self.settings.create_publish_types else "; creation off")

    def _check_storage(self, root_name: str, root_path: str) -> str:
        paths = self.context.os_paths(root_name, root_path)
        st = self.storage_for_root(root_name, paths)
        base = RootPath.of(str(st[self.os_field]), self.os, case_insensitive=True)
        rel = base.relative(str(paths.get(self.os) or root_path)) or ""
        others = [f"{SHOTGRID_FIELDS[f]} {shown(render_path(str(st[SHOTGRID_FIELDS[f]]), rel, f))}"
                  for f in OSFamily if f is not self.os and f in paths.by_os and st.get(SHOTGRID_FIELDS[f])]
        return (f"LocalStorage '{st.get('code')}' (id {st['id']}, {self.os_field} {st[self.os_field]}); "
                f"path_cache starts '{rel + '/' if rel else ''}...'"
                + (f"; the root on the other OSes: {', '.join(others)}" if others else ""))

    def _check_user(self) -> str:
        rec = self.client.read("HumanUser", int(self.settings.created_by or 0), ["login", "name"])
        if rec is None:
            raise PermanentError(f"no HumanUser with id {self.settings.created_by}")
        return f"'{rec.get('name')}' (login {rec.get('login')})"

    def _check_field(self, etype: str, fname: str) -> str:
        if not self.client.field_exists(etype, fname):
            raise PermanentError(f"{etype} has no field '{fname}' on this site (add it in the field "
                                 "settings, or fix the name)")
        return "exists"

    def scrub(self, value: Any) -> Any:
        return self.client.http.scrub(value)

    def close(self) -> None:
        self.client.close()


__all__ = ["ShotGridBackend", "ShotGridSettings", "ShotGridClient", "slug", "describe_error"]
