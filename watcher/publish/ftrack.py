"""ftrack backend over the JSON API: ``POST {server}/api`` with a list of operations, answered by
a list of results in the same order (https://developer.ftrack.com/api/endpoint).

The records follow ftrack's own publishing model, so versions look like ones made by ftrack's
publishers: an ``Asset`` (name + asset type) under the task's parent context (Shot, Asset Build,
Folder... any object type), an ``AssetVersion`` linked to the task, carrying the file name's
version number, and its components: a ``FileComponent`` for a single file, or a
``SequenceComponent`` (with ``padding``) holding one member ``FileComponent`` per frame. Each
component is registered in a location (``ftrack.unmanaged`` by default: the files stay where they
are and the resource identifier is their absolute path) by a ``ComponentLocation``.

Exactly once: ftrack lets the client choose primary keys, so the ids of the Asset, AssetVersion
and component are generated here and saved in the journal (``job.remember``) *before* the create
batch is sent; per-frame ids are derived from the component id (uuid5). A retry after an unknown
outcome looks the records up (by name/number and by those ids) and creates only what is missing,
whether the server applied the earlier batch wholly, partly or not at all. The version is created
unpublished and flagged published by a last, separate update once all its components exist.

Adoption: the same lookup request asks for a ComponentLocation in the configured location whose
resource identifier is this file; one registered by someone else (ftrack Connect, a publisher
script) is adopted: its AssetVersion is the publish, nothing is created.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import PermanentError, PublishError, RetryableError
from ..model import Job, Publish, TrackerRef
from ..names import shown
from ..paths import (OSFamily, PathMappingError, RootPath, RootPathError, current_os, ftrack_identifier,
                     parse_os_paths)
from .base import Backend, BackendContext, CheckResult
from .http import hide_url_password, without_credentials
from .tracker import (LookupCache, Scrubber, TrackerSettings, adopt_once, adopted_ref, check_step, config_path,
                      frame_range_cached, frame_range_of, line_secret, no_blank_values, project_of, regular_size,
                      tracker_http)

log = logging.getLogger(__name__)

DEFAULT_OBJECT_TYPES = {"Asset": "Asset Build"}  # Toolkit-style templates say Asset; ftrack says Asset Build


class FtrackSettings(TrackerSettings):
    """The ``tracker:`` section for ``backend: ftrack``. A query batch can be slow on a big
    site, so the transport defaults are more patient than ``TrackerSettings``'."""

    server_url: str  # https://studio.ftrackapp.com
    api_user: str  # the user (or API-key owner) the key belongs to
    api_key: SecretStr | None = None  # or WATCHER_TRACKER__API_KEY, or api_key_file
    api_key_file: Path | None = None
    project: str | None = None  # Project.name (short name); a publish's own project wins
    # publish_type ("Rendered Image") or extension ("exr") -> AssetType.short ("img")
    asset_types: dict[str, str] = Field(default_factory=dict)
    default_asset_type: str | None = None  # short code when nothing in asset_types matches
    # template entity type -> ftrack object type name
    object_types: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_OBJECT_TYPES))
    require_task: bool = True  # a missing task fails the publish instead of publishing without one
    location: str = "ftrack.unmanaged"
    resource_identifier: Literal["absolute", "root_relative"] = "absolute"
    # the location's disk prefix on each OS: a path, or {linux: ..., darwin: ..., windows: ...}
    # (Toolkit's *_path keys too). Set, the resource identifier is the file's `/` path below this
    # OS's prefix (NFC): the same identifier from every OS, each joining it to its own prefix
    location_prefix: str | dict[str, Any] | None = None
    component_name: str = "main"
    component_names: dict[str, str] = Field(default_factory=dict)  # publish_type/extension -> name
    sequence_members: bool = True  # one member FileComponent per frame
    # custom attributes (keys) holding the entity's first and last frame, for `expect_frames: tracker`
    frame_range_attributes: list[str] = Field(default_factory=lambda: ["fstart", "fend"], min_length=2, max_length=2)
    version_status: str | None = None  # Status.name for new versions; None: the server's default
    comment: str = ""  # AssetVersion.comment when the publish has no description
    version_url: str | None = None  # e.g. "{server}/#entityType=assetversion&entityId={id}"
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=4, ge=0)
    backoff_base: float = Field(default=1.0, ge=0)
    backoff_cap: float = Field(default=60.0, ge=0)
    batch_size: int = Field(default=500, ge=10)  # operations per create request
    page_size: int = Field(default=500, ge=1, le=5000)  # query page ("limit")

    @field_validator("server_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("https://", "http://")):
            raise ValueError(f"{hide_url_password(v)!r} is not a URL; use https://<workspace>.ftrackapp.com")
        if v.endswith("/api"):
            v = v[: -len("/api")]
        return v

    @field_validator("asset_types", "component_names", "object_types")
    @classmethod
    def _no_blank(cls, v: dict[str, str]) -> dict[str, str]:
        return no_blank_values(v)

    @field_validator("location_prefix")
    @classmethod
    def _prefix(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if v is not None:
            prefix_here(v)  # every spelling absolute in its OS's syntax, and one for this OS
        return v

    @model_validator(mode="after")
    def _prefix_identifiers(self) -> "FtrackSettings":
        if self.location_prefix is not None and "resource_identifier" in self.model_fields_set \
                and self.resource_identifier == "absolute":
            raise ValueError("location_prefix makes resource identifiers relative to the prefix; remove "
                             "resource_identifier: absolute, or remove location_prefix")
        return self


def prefix_here(value: str | dict[str, Any], flavour: OSFamily | None = None) -> str:
    """This OS's spelling of ``location_prefix`` (ValueError naming the missing key)."""
    where, f = "location_prefix", flavour or current_os()
    try:
        found = parse_os_paths("", value, where=where)
        if found.shared is not None:
            RootPath.of(found.shared, f)  # a plain path: absolute in this OS's syntax
        here = found.get(f)
    except RootPathError as exc:
        text = str(exc)
        raise ValueError(text[len(where) + 1:].lstrip() if text.startswith(where) else text) from None
    if here is None:
        has = ", ".join(x.value for x in found.known())
        raise ValueError(f"no {f.value!r} entry, and this machine runs {f.value} (it has: {has}); add the "
                         f"location's prefix on {f.value}")
    return here


@dataclass(frozen=True)
class _Context:
    """Where a publish lands: the project, the Asset's parent context and the task."""

    project_id: str
    project: str
    context_id: str
    label: str  # "Shot 'sh010'" (for messages)
    task_id: str | None
    task: str | None


@dataclass
class _Found:
    """What already exists of a publish on the server."""

    asset: dict[str, Any] | None = None
    version: dict[str, Any] | None = None
    existing: set[str] | None = None  # ids of our components/component locations already there
    done: bool = False  # an equal component is already registered (nothing to create)
    adopt: str | None = None  # AssetVersion id of someone else's component registered at this file


def describe_error(status: int, body: Any) -> str:
    """A sentence from either ftrack error shape: ``{exception, content, error_code}`` (the API's
    own, with HTTP 200 in non-strict mode or an error status) or a validation ``{detail: [...]}``."""
    prefix = f"HTTP {status} " if status >= 300 else ""
    if isinstance(body, dict):
        if "exception" in body:
            text = f"{body.get('exception')}: {body.get('content') or body.get('error') or ''}".rstrip(": ")
            if body.get("error_code"):
                text += f" (error_code {body['error_code']})"
            return prefix + text
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc") or [])
                    parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
                else:
                    parts.append(str(d))
            return prefix + "request rejected: " + "; ".join(parts)
        if isinstance(detail, str):
            return prefix + detail
    text = str(body).strip()[:500] if body else ""
    return f"HTTP {status}" + (f": {text}" if text else "")


def _quote(value: str, what: str) -> str:
    """A value for the query language. The sources show no escaping rule, so refuse the
    characters that could not be sent safely instead of guessing."""
    if '"' in value or "\n" in value or "\\" in value:
        raise PermanentError(f"{what} {value!r} contains a quote, backslash or newline, which an ftrack query cannot carry")
    return f'"{value}"'


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class FtrackBackend(Backend):
    name = "ftrack"
    Settings = FtrackSettings

    def __init__(self, settings: FtrackSettings | dict[str, Any], context: BackendContext) -> None:
        if isinstance(settings, dict):
            settings = FtrackSettings.model_validate(settings)
        super().__init__(settings, context)
        s: FtrackSettings = settings
        # this OS's location prefix (validated with the settings), or None: identifiers as configured
        self._os = current_os()
        self._prefix: str | None = None if s.location_prefix is None else prefix_here(s.location_prefix, self._os)
        key = line_secret(s.api_key, config_path(s.api_key_file, context.config_dir), "tracker.api_key", header=True)
        self.http = tracker_http(
            s, context.config_dir, s.server_url, scrub=Scrubber(key),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "ftrack-user": s.api_user,
                "ftrack-api-key": key,
                # Errors then come back as HTTP 200 + an ``exception`` body, so an error status
                # means trouble in transport (what HttpClient retries), never a refusal.
                "ftrack-strict-api": "false",
            },
            describe_error=describe_error,
        )
        self.cache = LookupCache(s.cache_ttl)
        # the configured location is looked up once a day: it is configuration, not data
        self._location_cache = LookupCache(86400.0)

    # ------------------------------------------------------------------ plumbing

    def call(self, ops: list[dict[str, Any]], *, what: str, retry: bool = True) -> list[Any]:
        """Send one batch; the results in operation order. ``what`` says in errors what was being
        done, naming the entity/task/type; the server's own words follow it."""
        try:
            body = self.http.request("POST", "api", json=ops, retry=retry)
        except RetryableError as exc:
            raise RetryableError(f"ftrack: {what}: {exc.message}", retry_after=exc.retry_after) from None
        except PublishError as exc:
            raise PermanentError(f"ftrack refused {what}: {exc.message}") from None
        if isinstance(body, dict):  # one error object instead of the result list
            raise PermanentError(f"ftrack refused {what}: {self.http.scrub(describe_error(200, body))}")
        if not isinstance(body, list) or len(body) != len(ops):
            raise RetryableError(f"ftrack: {what}: unexpected reply to {len(ops)} operations: {str(body)[:200]}")
        return body

    def query(self, expression: str, *, what: str) -> list[dict[str, Any]]:
        return self.query_many([expression], what=what)[0]

    def query_many(self, expressions: list[str], *, what: str) -> list[list[dict[str, Any]]]:
        """Several queries in one request, each followed through its pages
        (``metadata.next.offset``) like the official clients do."""
        size = self.settings.page_size
        ops = [{"action": "query", "expression": f"{e} offset 0 limit {size}"} for e in expressions]
        results = self.call(ops, what=what) if ops else []
        out: list[list[dict[str, Any]]] = []
        for expr, res in zip(expressions, results):
            rows = list(res.get("data") or [])
            offset = self._next_offset(res)
            while offset is not None and offset >= len(rows) > 0:
                more = self.call([{"action": "query", "expression": f"{expr} offset {offset} limit {size}"}], what=what)[0]
                page = list(more.get("data") or [])
                if not page:
                    break
                rows.extend(page)
                offset = self._next_offset(more)
            out.append(rows)
        return out

    @staticmethod
    def _next_offset(result: dict[str, Any]) -> int | None:
        nxt = ((result.get("metadata") or {}).get("next") or {}).get("offset")
        return int(nxt) if nxt is not None else None

    # ------------------------------------------------------------------ lookups

    def _project(self, name: str) -> dict[str, Any]:
        key = ("project", name)
        hit = self.cache.get(key)
        if hit:
            return hit
        q = _quote(name, "project")
        by_name, by_full = self.query_many(
            [f"select id, name, full_name from Project where name is {q}",
             f"select id, name, full_name from Project where full_name is {q}"],
            what=f"the lookup of project {name!r}")
        rows = by_name or by_full
        if not rows:
            raise PermanentError(f"ftrack: project {name!r} not found (looked up Project.name and full_name)")
        if len(rows) > 1:
            raise PermanentError(f"ftrack: {len(rows)} projects are named {name!r}; set tracker.project to the short name")
        return self.cache.put(key, rows[0])

    def _object_types(self) -> dict[str, dict[str, Any]]:
        hit = self.cache.get(("object_types",))
        if hit:
            return hit
        rows = self.query("select id, name from ObjectType", what="the lookup of object types")
        return self.cache.put(("object_types",), {str(r["name"]).lower(): r for r in rows})

    def _object_type(self, entity_type: str) -> dict[str, Any]:
        wanted = self.settings.object_types.get(entity_type, entity_type)
        known = self._object_types()
        row = known.get(wanted.lower())
        if row is None:
            names = ", ".join(sorted(r["name"] for r in known.values()))
            via = f" (tracker.object_types maps {entity_type!r} to it)" if wanted != entity_type else ""
            raise PermanentError(f"ftrack: object type {wanted!r}{via} does not exist; known: {names}")
        return row

    def _asset_types(self) -> dict[str, dict[str, Any]]:
        hit = self.cache.get(("asset_types",))
        if hit:
            return hit
        rows = self.query("select id, name, short from AssetType", what="the lookup of asset types")
        return self.cache.put(("asset_types",), {str(r["short"]): r for r in rows})

    def asset_type_code(self, p: Publish) -> str:
        """The configured short code for a publish: by publish type, then extension."""
        table = self.settings.asset_types
        ext = p.extension
        for key in (p.publish_type, ext, "." + ext):
            if key in table:
                return table[key]
        lowered = {k.lower().lstrip("."): v for k, v in table.items()}
        for key in (p.publish_type.lower(), ext):
            if key in lowered:
                return lowered[key]
        if self.settings.default_asset_type:
            return self.settings.default_asset_type
        raise PermanentError(
            f"ftrack: no asset type for publish type {p.publish_type!r} / extension {ext!r}: "
            f"add one of them to tracker.asset_types (or set tracker.default_asset_type)")

    def _asset_type(self, p: Publish) -> dict[str, Any]:
        short = self.asset_type_code(p)
        known = self._asset_types()
        row = known.get(short)
        if row is None:
            raise PermanentError(
                f"ftrack: asset type short code {short!r} (for publish type {p.publish_type!r}) does not exist; "
                f"known: {', '.join(sorted(known)) or 'none'}")
        return row

    def _location_id(self) -> str:
        return self._id_by_name("Location", self.settings.location, "tracker.location", self._location_cache)

    def _status_id(self) -> str | None:
        name = self.settings.version_status
        return self._id_by_name("Status", name, "tracker.version_status") if name else None

    def _id_by_name(self, entity_type: str, name: str, setting: str, cache: LookupCache | None = None) -> str:
        """The id of a configured record looked up by name (cached)."""
        cache = cache or self.cache
        key = (entity_type.lower(), name)
        hit = cache.get(key)
        if hit:
            return hit
        rows = self.query(f"select id, name from {entity_type} where name is {_quote(name, entity_type.lower())}",
                          what=f"the lookup of {entity_type.lower()} {name!r}")
        if not rows:
            raise PermanentError(f"ftrack: {entity_type.lower()} {name!r} ({setting}) does not exist")
        return cache.put(key, rows[0]["id"])

    def _context(self, p: Publish) -> _Context:
        """Project, Asset parent and task for a publish (each lookup cached once found)."""
        project_name = str(project_of(p, self.settings.project))
        project = self._project(project_name)
        if p.entity is None:
            ctx_id, label, task = project["id"], f"project {project_name!r}", None
        else:
            ot = self._object_type(p.entity.type)
            row = self._find_entity(project, ot, p.entity.name, p.fields)
            label = f"{ot['name']} {p.entity.name!r}"
            if ot["name"].lower() == "task":  # the entity is the task itself: the asset goes on its parent
                ctx_id, task = row["parent_id"], row
            else:
                ctx_id, task = row["id"], None
        if task is None and p.task:
            task = self._find_task(ctx_id, p.task, label, project_name)
        return _Context(project_id=project["id"], project=project_name, context_id=ctx_id, label=label,
                        task_id=task["id"] if task else None, task=task["name"] if task else None)

    def _find_entity(self, project: dict[str, Any], ot: dict[str, Any], name: str,
                     fields: dict[str, Any], *, missing_ok: bool = False) -> dict[str, Any]:
        key = ("entity", project["id"], ot["id"], name)
        rows = self.cache.get(key) or self.query(
            f"select id, name, parent_id, object_type_id from TypedContext where project_id is {_quote(project['id'], 'id')}"
            f" and object_type_id is {_quote(ot['id'], 'id')} and name is {_quote(name, ot['name'])}",
            what=f"the lookup of {ot['name']} {name!r}")
        if not rows and missing_ok:
            return None  # type: ignore[return-value]
        if not rows:
            raise PermanentError(f"ftrack: {ot['name']} {name!r} not found in project {project['name']!r}")
        self.cache.put(key, rows)
        if len(rows) == 1:
            return rows[0]
        # Same name under several parents (sh010 in two sequences): the template's other fields
        # (Sequence: sq02) say which parent is meant.
        pkey = ("parents",) + key[1:]
        parents = self.cache.get(pkey) or self.cache.put(pkey, {r["id"]: r for r in self.query(
            "select id, name, object_type_id from TypedContext where id in ("
            + ", ".join(_quote(r["parent_id"], "id") for r in rows if r.get("parent_id")) + ")",
            what=f"the lookup of the parents of {ot['name']} {name!r}")})
        names = {v["id"]: k for k, v in self._object_types().items()}
        wanted = {str(k).lower(): str(v) for k, v in fields.items()}
        for tmpl, ft in self.settings.object_types.items():  # template key "Asset" for "Asset Build"
            if tmpl.lower() in wanted:
                wanted.setdefault(ft.lower(), wanted[tmpl.lower()])
        keep = []
        for r in rows:
            parent = parents.get(r.get("parent_id"))
            if parent and wanted.get(names.get(parent["object_type_id"], "")) == parent["name"]:
                keep.append(r)
        if len(keep) == 1:
            return keep[0]
        under = ", ".join(sorted(repr(p["name"]) for p in parents.values()))
        raise PermanentError(
            f"ftrack: {len(rows)} {ot['name']}s are named {name!r} in project {project['name']!r} (under {under}); "
            "the template's fields do not say which one (add the parent, e.g. a Sequence key, to the template)")

    def _find_task(self, parent_id: str, task: str, label: str, project: str) -> dict[str, Any] | None:
        key = ("task", parent_id, task)
        hit = self.cache.get(key)
        if hit:
            return hit
        rows = self.query(
            f"select id, name, parent_id from Task where parent_id is {_quote(parent_id, 'id')} and name is {_quote(task, 'task')}",
            what=f"the lookup of task {task!r} on {label}")
        if rows:
            return self.cache.put(key, rows[0])
        if self.settings.require_task:
            raise PermanentError(f"ftrack: task {task!r} not found on {label} in project {project!r}")
        log.warning("ftrack: task %r not found on %s; publishing without a task", task, label)
        return None

    # ------------------------------------------------------------------ publish

    def component_name(self, p: Publish) -> str:
        names = self.settings.component_names
        for key in (p.publish_type, p.extension, "." + p.extension):
            if key in names:
                return names[key]
        return self.settings.component_name

    def serialize_key(self, job: Job) -> str:
        """Publishes to the same Asset run one after the other, so two versions of a new asset
        never both create it."""
        p = job.publish
        try:
            short = self.asset_type_code(p)
        except PermanentError:
            short = "?"
        ent = f"{p.entity.type}:{p.entity.name}" if p.entity else "-"
        return f"ftrack|{p.project or self.settings.project}|{ent}|{p.name}|{short}"

    def publish(self, job: Job) -> TrackerRef:
        p = job.publish
        if job.amend:
            return self._amend(job)
        ctx = self._context(p)
        atype = self._asset_type(p)
        location_id = self._location_id()
        status_id = self._status_id()
        comp_name = self.component_name(p)
        what = (f"AssetVersion {p.name!r} {self._vlabel(p)} ({atype['short']}) on {ctx.label}"
                + (f", task {ctx.task!r}" if ctx.task else "") + f" in project {ctx.project!r}")

        page = lambda vid: self._url(vid, ctx)  # noqa: E731
        ids: dict[str, Any] = dict(job.state.get("ftrack") or {})
        if self.settings.adopt and adopted_ref(job, "adopted_version") is not None:
            return adopted_ref(job, "adopted_version", page)  # type: ignore[return-value]
        found = self._find(p, ctx, atype, ids, what, location_id)
        if found.adopt and self.settings.adopt:
            adopt_once(job, "adopted_version", None, lambda: found.adopt)
            log.info("ftrack: %s is registered already in %s (AssetVersion %s): adopted", p.path,
                     self.settings.location, found.adopt)
            return adopted_ref(job, "adopted_version", page)  # type: ignore[return-value]
        if found.asset:
            ids["asset"] = found.asset["id"]
        if found.version:
            own = found.version["id"] == ids.get("version") and ids.get("own_version", True)
            ids["version"], ids["own_version"] = found.version["id"], bool(own)
        ids.setdefault("asset", str(uuid.uuid4()))
        ids.setdefault("version", str(uuid.uuid4()))
        ids.setdefault("own_version", True)
        ids.setdefault("component", str(uuid.uuid4()))
        if ids != job.state.get("ftrack"):
            job.remember(ftrack=ids)  # before anything that uses these ids is sent

        if found.version:
            self._find_components(p, ids, comp_name, location_id, found, what)
        if not found.done:
            ops = []
            if not found.asset:
                ops.append(self._create("Asset", ids["asset"], name=p.name, context_id=ctx.context_id,
                                        type_id=atype["id"]))
            if not found.version:
                data: dict[str, Any] = {"asset_id": ids["asset"], "is_published": False,
                                        "comment": p.description or self.settings.comment}
                if p.version is not None:
                    data["version"] = p.version
                if ctx.task_id:
                    data["task_id"] = ctx.task_id
                if status_id:
                    data["status_id"] = status_id
                ops.append(self._create("AssetVersion", ids["version"], **data))
            ops += self._component_ops(p, ids, comp_name, location_id, found.existing or set())
            for chunk in _chunks(ops, self.settings.batch_size):
                # Not retried blindly inside the client: after an unknown outcome the next attempt
                # looks up what landed (job.uncertain) and sends only what is missing.
                self.call(chunk, what=f"creating {what}", retry=False)
            log.debug("ftrack: %s: %d records created", what, len(ops))
        version_published = bool(found.version and found.version.get("is_published"))
        if ids["own_version"] and not version_published:
            self.call([{"action": "update", "entity_type": "AssetVersion", "entity_key": [ids["version"]],
                        "entity_data": {"__entity_type__": "AssetVersion", "is_published": True}}],
                      what=f"publishing {what}")
        log.info("ftrack: published %s (AssetVersion %s)", what, ids["version"])
        return TrackerRef(id=ids["version"], url=self._url(ids["version"], ctx))

    @staticmethod
    def _vlabel(p: Publish) -> str:
        return f"v{p.version:03d}" if p.version is not None else "(next version)"

    def _url(self, version_id: str, ctx: _Context) -> str | None:
        tmpl = self.settings.version_url
        if not tmpl:
            return None
        server = without_credentials(self.settings.server_url)  # a link kept in the journal: never a password
        return tmpl.format(server=server, id=version_id, project_id=ctx.project_id)

    @staticmethod
    def _create(entity_type: str, entity_id: str, **data: Any) -> dict[str, Any]:
        return {"action": "create", "entity_type": entity_type,
                "entity_data": {"__entity_type__": entity_type, "id": entity_id, **data}}

    def _find(self, p: Publish, ctx: _Context, atype: dict[str, Any], ids: dict[str, Any], what: str,
              location_id: str) -> _Found:
        """The Asset (name + type under the context) and the AssetVersion (its number, or the
        id this job created before) that already exist, and (``adopt``) the version of a
        component already registered at this file in the location by someone else; one request."""
        name, context, type_id = (_quote(p.name, "asset name"), _quote(ctx.context_id, "id"),
                                  _quote(atype["id"], "id"))
        adopt = self.settings.adopt
        exprs = [f"select id, name, context_id, type_id from Asset"
                 f" where context_id is {context} and name is {name} and type_id is {type_id}"]
        fields = "select id, version, asset_id, is_published, task_id from AssetVersion"
        if p.version is not None:
            exprs.append(f"{fields} where asset.context_id is {context} and asset.name is {name}"
                         f" and asset.type_id is {type_id} and version is {int(p.version)}")
        elif ids.get("version"):
            exprs.append(f"{fields} where id is {_quote(ids['version'], 'id')}")
        if adopt:
            exprs.append(self._registered_query(p, location_id))
        results = self.query_many(exprs, what=f"the lookup of {what}")
        found = _Found()
        if adopt:
            found.adopt = self._adoptable(p, results.pop(), ids)
        if results[0]:
            found.asset = next((a for a in results[0] if a["id"] == ids.get("asset")), results[0][0])
        if len(results) > 1 and results[1]:
            found.version = next((v for v in results[1] if v["id"] == ids.get("version")), results[1][0])
            if not found.asset or found.asset["id"] != found.version.get("asset_id"):
                found.asset = {"id": found.version["asset_id"]}
        return found

    def _registered_query(self, p: Publish, location_id: str) -> str:
        """ComponentLocations in the configured location whose resource identifier is this file:
        the path (a sequence's printf pattern, also as ftrack's API writes a collection,
        ``pattern [first-last]``) or, for a sequence, its first frame present (a member)."""
        mine = self._resource_identifier(p, p.path)
        terms = [f"resource_identifier is {_quote(mine, 'path')}"]
        if p.is_sequence:
            terms.append(f"resource_identifier like {_quote(mine + ' [%', 'path')}")
            frames = p.frame_numbers()
            if frames:
                terms.append(f"resource_identifier is {_quote(self._resource_identifier(p, p.frame_path(frames[0])), 'path')}")
        return ("select id, resource_identifier, component_id, component.version_id, component.container_id,"
                " component.container.version_id from ComponentLocation"
                f" where location_id is {_quote(location_id, 'id')} and ({' or '.join(terms)})")

    def _adoptable(self, p: Publish, rows: list[dict[str, Any]], ids: dict[str, Any]) -> str | None:
        """The AssetVersion of a component registered at this file that is not this job's own
        (ids journaled before an earlier attempt sent them), else None."""
        mine = self._resource_identifier(p, p.path)
        frames = p.frame_numbers()
        first = self._resource_identifier(p, p.frame_path(frames[0])) if frames else None
        own = ids.get("component")
        versions = []
        for row in rows:
            ri = str(row.get("resource_identifier") or "")
            if not (ri == mine or (p.is_sequence and (ri.startswith(mine + " [") or ri == first))):
                continue  # `like` is wider than wanted ('%' in a printf pattern is a wildcard)
            comp = row.get("component") or {}
            if own and own in (row.get("component_id"), comp.get("container_id")):
                return None  # our own earlier attempt landed: the normal path completes it
            version = comp.get("version_id") or (comp.get("container") or {}).get("version_id")
            if version:
                versions.append(str(version))
        return versions[0] if versions else None

    def _find_components(self, p: Publish, ids: dict[str, Any], comp_name: str, location_id: str,
                         found: _Found, what: str) -> None:
        """With an existing version: which of our records exist, or whether an equal component
        (same name, same file in the same location) is there already."""
        vid = _quote(ids["version"], "id")
        rows = self.query(f"select id, name, version_id from Component where version_id is {vid}"
                          f" and name is {_quote(comp_name, 'component name')}",
                          what=f"the lookup of component {comp_name!r} of {what}")
        ours = [r for r in rows if r["id"] == ids["component"]]
        if ours:
            cid = _quote(ids["component"], "id")
            exprs = [f"select id, component_id from ComponentLocation where component_id is {cid}"
                     f" or component.container_id is {cid}"]
            if p.is_sequence and self.settings.sequence_members:
                exprs.append(f"select id, name from FileComponent where container_id is {cid}")
            results = self.query_many(exprs, what=f"the lookup of the components of {what}")
            found.existing = {ids["component"]} | {r["id"] for res in results for r in res}
            return
        if not rows:
            found.existing = set()
            return
        # Someone else's component of that name: the same file registered already is our publish
        # done (journal lost, say); anything else would be a second "main" on the version.
        other = rows[0]
        locs = self.query(f"select id, resource_identifier, location_id from ComponentLocation"
                          f" where component_id is {_quote(other['id'], 'id')}",
                          what=f"the lookup of component {comp_name!r} of {what}")
        mine = self._resource_identifier(p, p.path)
        if any(loc.get("location_id") == location_id and loc.get("resource_identifier") == mine for loc in locs):
            found.done = True
            return
        where = ", ".join(sorted(str(loc.get("resource_identifier")) for loc in locs)) or "no location"
        raise PermanentError(
            f"ftrack: {what} already exists with a component {comp_name!r} registered at {where}, "
            f"not at {mine}; refusing to add a second one (set tracker.component_names to publish under another name)")

    def _resource_identifier(self, p: Publish, path: str) -> str:
        """The file's identifier in the location: below this OS's ``location_prefix`` when one
        is set, below its root with ``root_relative`` (both ``/``-separated, NFC), else its path."""
        if self._prefix is not None:
            try:
                return ftrack_identifier(self._prefix, path, self._os)
            except PathMappingError as exc:
                raise PermanentError(f"ftrack: {exc}") from None
        if self.settings.resource_identifier == "root_relative":
            rel = RootPath.of(p.root_path, self._os).relative(path)
            if rel is None:
                raise PermanentError(f"ftrack: {shown(path)} is not below its root {shown(p.root_path)}")
            return rel
        return path

    def _component_ops(self, p: Publish, ids: dict[str, Any], comp_name: str, location_id: str,
                       existing: set[str]) -> list[dict[str, Any]]:
        """Create operations for the component(s) and their locations that do not exist yet,
        parents first: container, members, then the ComponentLocations."""
        cid = ids["component"]
        ns = uuid.UUID(cid)
        file_type = os.path.splitext(p.path)[1]
        comps: list[dict[str, Any]] = []
        locs: list[dict[str, Any]] = []

        def location(component_id: str, loc_id: str, path: str) -> None:
            if loc_id not in existing:
                locs.append(self._create("ComponentLocation", loc_id, component_id=component_id,
                                         location_id=location_id,
                                         resource_identifier=self._resource_identifier(p, path)))

        if not p.is_sequence:
            if cid not in existing:
                comps.append(self._create("FileComponent", cid, name=comp_name, version_id=ids["version"],
                                          file_type=file_type, size=self._size(p, p.path)))
            location(cid, str(uuid.uuid5(ns, "location")), p.path)
            return comps + locs

        frames = p.frame_numbers()
        members = [(f, str(uuid.uuid5(ns, f"member:{f}"))) for f in frames] if self.settings.sequence_members else []
        missing_members = [(f, mid) for f, mid in members if mid not in existing]
        sizes = {f: self._size(p, p.frame_path(f)) for f, _ in missing_members}
        if cid not in existing:
            total = sum(sizes.values()) if len(sizes) == len(frames) else sum(self._size(p, x) for x in p.file_paths())
            comps.append(self._create("SequenceComponent", cid, name=comp_name, version_id=ids["version"],
                                      file_type=file_type, padding=p.padding, size=total))
        for f, mid in missing_members:
            comps.append(self._create("FileComponent", mid, name=f"{f:0{p.padding}d}", container_id=cid,
                                      file_type=file_type, size=sizes[f]))
        location(cid, str(uuid.uuid5(ns, "location")), p.path)
        for f, mid in members:
            location(mid, str(uuid.uuid5(ns, f"location:{f}")), p.frame_path(f))
        return comps + locs

    @staticmethod
    def _size(p: Publish, path: str) -> int:
        # lstat: a symlink is not followed, a FIFO is refused, a file now outside the root is refused
        return regular_size(path, "size", root=p.root_path)

    # ------------------------------------------------------------------ amend

    def _amend(self, job: Job) -> TrackerRef:
        """The files of a publish changed after it was registered (a late write, ``republish:
        update``): update its component in place. The component's ``size`` (a sequence: the
        total), a sequence's ``padding``, each member ``FileComponent``'s ``size``, and the members
        (with their ``ComponentLocation``) of frames that were not there before are created, with
        ids derived from the component id as at the first publish. Nothing else is created: no
        Asset, AssetVersion or second component. Every attempt reads what exists first, so an
        attempt whose answer was lost is completed, never repeated."""
        p = job.publish
        ids: dict[str, Any] = dict(job.state.get("ftrack") or {})
        adopted = bool(job.state.get("adopted"))
        version_id = (job.state.get("adopted_version") if adopted else ids.get("version")) or job.previous_id
        comp_name = self.component_name(p)
        if not version_id:
            raise PermanentError(f"ftrack: cannot amend the publish of {p.path}: no AssetVersion id was journaled")
        what = f"component {comp_name!r} of AssetVersion {version_id} ({p.path})"
        location_id = self._location_id()
        cid = None if adopted else ids.get("component")
        if cid is None:
            rows = self.query(f"select id from Component where version_id is {_quote(version_id, 'id')}"
                              f" and name is {_quote(comp_name, 'component name')}", what=f"the lookup of {what}")
            if not rows:
                raise PermanentError(f"ftrack: cannot amend {what}: the version has no such component")
            cid = rows[0]["id"]
        q = _quote(cid, "id")
        exprs = [f"select id, size from Component where id is {q}",
                 f"select id, component_id from ComponentLocation where component_id is {q}"
                 f" or component.container_id is {q}"]
        members_wanted = p.is_sequence and self.settings.sequence_members
        if members_wanted:
            exprs.append(f"select id, name, size from FileComponent where container_id is {q}")
        results = self.query_many(exprs, what=f"the lookup of {what}")
        if not results[0]:
            raise PermanentError(f"ftrack: cannot amend {what}: component {cid} no longer exists")
        comp = results[0][0]
        located = {r.get("component_id") for r in results[1]}
        members = {str(r.get("name")): r for r in (results[2] if members_wanted else [])}
        try:
            ns = uuid.UUID(str(cid))
        except ValueError:
            ns = uuid.uuid5(uuid.NAMESPACE_URL, str(cid))

        def update(rec: dict[str, Any], **data: Any) -> dict[str, Any]:
            etype = rec.get("__entity_type__") or "FileComponent"
            return {"action": "update", "entity_type": etype, "entity_key": [rec["id"]],
                    "entity_data": {"__entity_type__": etype, **data}}

        creates: list[dict[str, Any]] = []
        locs: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        file_type = os.path.splitext(p.path)[1]
        if not p.is_sequence:
            total = self._size(p, p.path)
        else:
            frames = p.frame_numbers()
            sizes = {f: self._size(p, p.frame_path(f)) for f in frames}
            total = sum(sizes.values())
            for f in frames if members_wanted else []:
                name = f"{f:0{p.padding}d}"
                member = members.get(name)
                if member is None:
                    mid = str(uuid.uuid5(ns, f"member:{f}"))
                    creates.append(self._create("FileComponent", mid, name=name, container_id=cid,
                                                file_type=file_type, size=sizes[f]))
                else:
                    mid = member["id"]
                    if member.get("size") != sizes[f]:
                        updates.append(update(member, size=sizes[f]))
                if mid not in located:
                    locs.append(self._create("ComponentLocation", str(uuid.uuid5(ns, f"location:{f}")),
                                             component_id=mid, location_id=location_id,
                                             resource_identifier=self._resource_identifier(p, p.frame_path(f))))
        changes: dict[str, Any] = {}
        if comp.get("size") != total:
            changes["size"] = total
        if p.is_sequence and comp.get("__entity_type__") == "SequenceComponent" and p.padding:
            changes["padding"] = p.padding
        if changes:
            updates.append(update(comp, **changes))
        if cid not in located:
            locs.append(self._create("ComponentLocation", str(uuid.uuid5(ns, "location")), component_id=cid,
                                     location_id=location_id, resource_identifier=self._resource_identifier(p, p.path)))
        ops = creates + locs + updates
        for chunk in _chunks(ops, self.settings.batch_size):
            # creates carry ids of their own: after a lost answer the next attempt reads them back
            self.call(chunk, what=f"amending {what}", retry=False)
        if job.state.get("ftrack", {}).get("component") != cid and not adopted:
            job.remember(ftrack={**ids, "component": cid, "version": version_id})
        log.info("ftrack: amended %s: size %s, %d members created, %d updated", what, total, len(creates),
                 len(updates))
        url = self._url(version_id, self._context(p)) if self.settings.version_url else None
        return TrackerRef(id=str(version_id), url=url)

    # ------------------------------------------------------------------ tracker frame range

    def frame_range(self, publish: Publish) -> tuple[int, int] | None:
        """The entity's ``frame_range_attributes`` custom attributes (Shot ``fstart``/``fend``),
        read as ftrack's API reads them: ``CustomAttributeValue`` rows of the entity whose
        ``configuration.key`` is one of them (one query per entity per ``cache_ttl``). None when
        the entity or either value is not set."""
        if publish.entity is None:
            return None
        project = self._project(str(project_of(publish, self.settings.project)))
        ot = self._object_type(publish.entity.type)
        row = self._find_entity(project, ot, publish.entity.name, publish.fields, missing_ok=True)
        if row is None:
            return None
        first_k, last_k = self.settings.frame_range_attributes
        label = f"ftrack {ot['name']} {publish.entity.name!r}"

        def load() -> tuple[int, int] | None:
            rows = self.query(
                "select value, entity_id, configuration_id, configuration.key from CustomAttributeValue"
                f" where entity_id is {_quote(row['id'], 'id')} and configuration.key in"
                f" ({_quote(first_k, 'custom attribute')}, {_quote(last_k, 'custom attribute')})",
                what=f"the lookup of custom attributes {first_k}/{last_k} of {label}")
            values: dict[str, Any] = {}
            for r in rows:
                key = (r.get("configuration") or {}).get("key")
                if key is not None and key not in values:
                    values[key] = r.get("value")
            return frame_range_of(values.get(first_k), values.get(last_k), (first_k, last_k), label)
        return frame_range_cached(self.cache, ("ftrack entity", row["id"], first_k, last_k), load)

    # ------------------------------------------------------------------ versions already on the server

    def versions_used(self, publish: Publish) -> set[int]:
        """The ``version`` of every AssetVersion of the Asset this publish goes to: same name and
        asset type under the same context (the entity; a Task entity's parent; the project when
        there is no entity), as ``_context``/``_find`` resolve it. One query; a missing entity or
        asset type means no version is taken (nothing is created)."""
        p = publish
        project_name = str(project_of(p, self.settings.project))
        project = self._project(project_name)
        if p.entity is None:
            ctx_id, label = project["id"], f"project {project_name!r}"
        else:
            ot = self._object_type(p.entity.type)
            row = self._find_entity(project, ot, p.entity.name, p.fields, missing_ok=True)
            if row is None:
                return set()
            label = f"{ot['name']} {p.entity.name!r}"
            ctx_id = row["parent_id"] if ot["name"].lower() == "task" else row["id"]
        atype = self._asset_types().get(self.asset_type_code(p))
        if atype is None:
            return set()
        rows = self.query(
            "select id, version from AssetVersion"
            f" where asset.context_id is {_quote(ctx_id, 'id')} and asset.name is {_quote(p.name, 'asset name')}"
            f" and asset.type_id is {_quote(atype['id'], 'id')}",
            what=f"the lookup of the versions of asset {p.name!r} ({atype['short']}) on {label}")
        return {int(r["version"]) for r in rows if isinstance(r.get("version"), int)}

    # ------------------------------------------------------------------ check

    def check(self) -> list[CheckResult]:
        """Credentials, project, asset types, object types, location and status, each named."""
        s: FtrackSettings = self.settings
        out: list[CheckResult] = []
        try:
            info, users = self.call(
                [{"action": "query_server_information"},
                 {"action": "query", "expression": f"select id, username from User where username is {_quote(s.api_user, 'api_user')}"}],
                what=f"the credentials of api_user {s.api_user!r}")
        except PublishError as exc:
            return [CheckResult(False, "credentials", exc.message)]
        version = info.get("version", "?") if isinstance(info, dict) else "?"
        if not (users or {}).get("data"):
            out.append(CheckResult(False, "credentials", f"the key works but user {s.api_user!r} was not found"))
        else:
            out.append(CheckResult(True, "credentials", f"{s.api_user} on {s.server_url} (ftrack {version})"))
        project = s.project  # a local: narrowed by the `if` inside the lambda too
        if project:
            out.append(check_step(f"project {project!r}", lambda: f"id {self._project(project)['id']}"))
        codes = sorted(set(s.asset_types.values()) | ({s.default_asset_type} if s.default_asset_type else set()))
        if not codes:
            out.append(CheckResult(False, "asset types", "tracker.asset_types is empty and no default_asset_type is set"))
        for code in codes:
            def one(code: str = code) -> str:
                known = self._asset_types()
                if code not in known:
                    raise PermanentError(f"no AssetType with short code {code!r}; known: {', '.join(sorted(known)) or 'none'}")
                return f"{known[code]['name']}"
            out.append(check_step(f"asset type {code!r}", one))
        for tmpl, ftype in sorted(s.object_types.items()):
            def object_type(tmpl: str = tmpl) -> str:
                return f"id {self._object_type(tmpl)['id']}"
            out.append(check_step(f"object type {ftype!r}", object_type))
        out.append(check_step(f"location {s.location!r}", lambda: f"id {self._location_id()}"))
        if s.version_status:
            out.append(check_step(f"status {s.version_status!r}", lambda: f"id {self._status_id()}"))
        return out

    def scrub(self, value: Any) -> Any:
        return self.http.scrub(value)

    def close(self) -> None:
        self.http.close()
