"""A fake ShotGrid (Flow Production Tracking) site that speaks the REST API v1 wire format on
127.0.0.1, for the ShotGrid backend's tests and the end-to-end tests.

What it enforces is what the real service enforces, as recorded in
``../shared/research/shotgrid.md`` (the official nodejs/ruby REST clients and the
``sg-groundtruth`` probes of a live site):

- ``POST /api/v1/auth/access_token``: form-encoded only; grants ``client_credentials``,
  ``password``, ``refresh_token``; ``{token_type, access_token, expires_in, refresh_token}``;
  every other route needs ``Authorization: Bearer`` with a live token, else 401.
- entity slugs: plural snake case, CamelCase and singular tolerated, unknown type -> 404
  ``Entity type 'x' does not exist.``; ``PATCH`` -> 404.
- create: ``application/json``, flat body, links as ``{type, id}`` (a bare int -> 400), unknown
  field -> 400, missing ``project`` on project-scoped types -> 400, not-editable fields -> 400;
  ``path`` resolved against LocalStorages (``local_path`` / ``relative_path + local_storage`` /
  ``url``), backslashes refused; ``path_cache_storage`` filled, ``path_cache`` never filled;
  nothing is unique.
- ``_search``: vendor content types (``application/json`` -> 415), array or hash filters,
  dotted paths, case-insensitive text, unknown field/operator -> 400, unknown names in
  ``fields`` dropped silently, ``sort``, ``page {size, number}`` (body or query), default 500,
  ``links.self``/``links.next`` on every page.
- uploads: ``GET .../{id}/{field}/_upload?filename=`` -> presigned-like ``links.upload`` +
  ``links.complete_upload``; ``PUT`` bytes; ``POST`` complete -> 201.
- errors always ``{"errors": [{id, status, code, title, detail, source, meta}]}``.

Server lifecycle, the request ``log`` and the fault vocabulary (``reply``, ``drop``,
``drop_after_apply``, ``slow``, ``pause``/``resume``) come from ``tests/fakes.py``; of its own this
fake has ``expire_tokens()`` and ``token_ttl``. ``records()``/``find()`` inspect the data; ``add_*``
seed it.
"""
from __future__ import annotations

import json
import mimetypes
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from .fakes import FakeServer, Request

ARRAY_CT = "application/vnd+shotgun.api3_array+json"
HASH_CT = "application/vnd+shotgun.api3_hash+json"

# field kinds
TEXT, NUMBER, ENTITY, MULTI, URL, STATUS, DATETIME, IMAGE, CHECKBOX = (
    "text", "number", "entity", "multi_entity", "url", "status_list", "date_time", "image", "checkbox")

STATUSES = ["wtg", "rdy", "ip", "rev", "cmpt", "apr", "na", "fin"]
# Site-wide types have no project field; every other type is project-scoped (create needs it).
SITE_TYPES = {"Project", "LocalStorage", "PublishedFileType", "HumanUser", "ApiUser", "Step"}
# Set by the server only; a create or update naming them is refused.
NOT_EDITABLE = {"id", "updated_at", "updated_by", "cached_display_name", "image"}
CREATE_ONLY = {"created_at", "created_by"}


def _entity(*types: str) -> tuple[str, tuple[str, ...]]:
    return (ENTITY, types)


def _multi(*types: str) -> tuple[str, tuple[str, ...]]:
    return (MULTI, types)


LINKABLE = ("Asset", "Shot", "Sequence", "Episode", "Project")


def default_schema() -> dict[str, dict[str, Any]]:
    """The stock fields the tests and the backend touch (a real site has many more)."""
    common = {"created_at": DATETIME, "updated_at": DATETIME, "created_by": _entity("HumanUser", "ApiUser"),
              "updated_by": _entity("HumanUser", "ApiUser"), "cached_display_name": TEXT, "image": IMAGE}
    project_scoped = {"project": _entity("Project")}
    s: dict[str, dict[str, Any]] = {
        "Project": {"name": TEXT, "tank_name": TEXT, "sg_status": TEXT, "code": TEXT},
        "LocalStorage": {"code": TEXT, "linux_path": TEXT, "mac_path": TEXT, "windows_path": TEXT,
                         "description": TEXT},
        "PublishedFileType": {"code": TEXT, "short_name": TEXT, "description": TEXT},
        "HumanUser": {"login": TEXT, "name": TEXT, "email": TEXT, "sg_status_list": STATUS},
        "ApiUser": {"firstname": TEXT, "lastname": TEXT, "description": TEXT},
        "Step": {"code": TEXT, "short_name": TEXT, "entity_type": TEXT},
        "Sequence": {"code": TEXT, "description": TEXT, "sg_status_list": STATUS},
        "Episode": {"code": TEXT, "description": TEXT, "sg_status_list": STATUS},
        "Shot": {"code": TEXT, "description": TEXT, "sg_status_list": STATUS,
                 "sg_sequence": _entity("Sequence"), "sg_cut_in": NUMBER, "sg_cut_out": NUMBER},
        "Asset": {"code": TEXT, "description": TEXT, "sg_status_list": STATUS, "sg_asset_type": TEXT},
        "Task": {"content": TEXT, "entity": _entity(*LINKABLE), "step": _entity("Step"),
                 "sg_status_list": STATUS},
        "PublishedFile": {
            "code": TEXT, "name": TEXT, "description": TEXT, "version_number": NUMBER, "path": URL,
            "path_cache": TEXT, "path_cache_storage": _entity("LocalStorage"),
            "entity": _entity(*LINKABLE), "task": _entity("Task"),
            "published_file_type": _entity("PublishedFileType"), "version": _entity("Version"),
            "sg_status_list": STATUS, "upstream_published_files": _multi("PublishedFile"),
            "downstream_published_files": _multi("PublishedFile")},
        "Version": {
            "code": TEXT, "description": TEXT, "entity": _entity(*LINKABLE), "sg_task": _entity("Task"),
            "sg_status_list": STATUS, "sg_path_to_frames": TEXT, "sg_path_to_movie": TEXT,
            "sg_first_frame": NUMBER, "sg_last_frame": NUMBER, "frame_count": NUMBER, "frame_range": TEXT,
            "published_files": _multi("PublishedFile"), "user": _entity("HumanUser"),
            "sg_uploaded_movie": URL},
    }
    for t, fields in s.items():
        fields.update(common)
        if t not in SITE_TYPES:
            fields.update(project_scoped)
    return s


DISPLAY_FIELD = {"Project": "name", "Task": "content", "HumanUser": "name", "ApiUser": "firstname"}


class ApiError(Exception):
    def __init__(self, status: int, title: str, *, code: int = 103, detail: str | None = None,
                 source: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(title)
        self.status, self.title, self.code, self.detail, self.source = status, title, code, detail, source
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"errors": [{"id": uuid.uuid4().hex, "status": self.status, "code": self.code,
                            "title": self.title, "detail": self.detail, "source": self.source, "meta": None}]}


def _ruby_repr(value: Any) -> str:
    """How the real server echoes a bad value in its messages (Ruby inspect, roughly)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} => {_ruby_repr(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "nil"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _type_words(name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", name)]


@dataclass
class Token:
    user: dict[str, Any]
    expires: float
    refresh: str
    credentials: tuple[str, str]


class FakeShotGrid(FakeServer):
    """The fake site. ``start()`` binds an ephemeral port on 127.0.0.1; ``url`` is the site URL."""

    name = "shotgrid"

    def __init__(self, *, token_ttl: float = 600.0, page_cap: int = 5000) -> None:
        super().__init__()
        self.schema = default_schema()
        self.token_ttl = token_ttl
        self.page_cap = page_cap
        self.status_default = {"PublishedFile": "wtg", "Version": "rev", "Shot": "wtg", "Asset": "wtg",
                               "Sequence": "wtg", "Task": "wtg", "HumanUser": "act"}
        self.data: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in self.schema}
        self.ids = 0
        self.attachment_ids = 1000
        self.scripts: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.thumbnails: dict[tuple[str, int], bytes] = {}

    # ---- the wire (lifecycle, log and faults: tests/fakes.py) -----------------------------------
    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        try:
            status, body = _Router(self, request).route()
        except ApiError as err:
            return err.status, err.body(), err.headers
        return status, body, {}

    def error_body(self, status: int) -> Any:
        return ApiError(status, {401: "Unauthorized", 429: "Too Many Requests", 503: "Service Unavailable"}.get(
            status, "Internal Server Error"), code=0).body()

    # ---- knobs -------------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # ---- seeding -------------------------------------------------------------------------------
    def add_script(self, name: str, key: str) -> dict[str, Any]:
        self.scripts[name] = key
        return self.add("ApiUser", firstname=name)

    def add_user(self, login: str, password: str | None = None, name: str | None = None) -> dict[str, Any]:
        if password is not None:
            self.passwords[login] = password
        return self.add("HumanUser", login=login, name=name or login, sg_status_list="act")

    def add_field(self, entity_type: str, name: str, kind: Any = TEXT) -> None:
        with self.lock:
            self.schema[entity_type][name] = kind

    def add(self, entity_type: str, /, **values: Any) -> dict[str, Any]:
        """Seed a record directly (no validation); returns its link ``{type, id}``."""
        with self.lock:
            self.ids += 1
            rec = {"type": entity_type, "id": self.ids, "created_at": _now(), "updated_at": _now()}
            rec.update(values)
            self.data[entity_type][self.ids] = rec
            return {"type": entity_type, "id": self.ids}

    def records(self, entity_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(r)) for _, r in sorted(self.data[entity_type].items())]

    def find(self, entity_type: str, **eq: Any) -> list[dict[str, Any]]:
        return [r for r in self.records(entity_type) if all(r.get(k) == v for k, v in eq.items())]

    def get(self, entity_type: str, rid: int) -> dict[str, Any] | None:
        with self.lock:
            rec = self.data[entity_type].get(rid)
            return json.loads(json.dumps(rec)) if rec else None

    # ---- type names ----------------------------------------------------------------------------
    def type_for_slug(self, slug: str) -> str:
        words = slug.lower().split("_") if "_" in slug else _type_words(slug)
        for t in self.schema:
            tw = _type_words(t)
            if words == tw or words[:-1] == tw[:-1] and _singular(words[-1]) == tw[-1]:
                return t
        raise ApiError(404, "Not Found", detail=f"Entity type '{slug.lower()}' does not exist.")

    def slug(self, entity_type: str) -> str:
        words = _type_words(entity_type)
        return "_".join(words[:-1] + [_plural(words[-1])])

    # ---- auth ----------------------------------------------------------------------------------
    def issue_token(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type")
        with self.lock:
            if grant == "client_credentials":
                name, key = form.get("client_id"), form.get("client_secret")
                if not name or not key:
                    raise ApiError(400, "Missing or invalid authentication arguments", code=102)
                if self.scripts.get(name) != key:
                    raise ApiError(400, f"Can't authenticate script '{name}'", code=102)
                user = self._first("ApiUser", "firstname", name)
                creds = ("script", name)
            elif grant == "password":
                login, pw = form.get("username"), form.get("password")
                if not login or not pw:
                    raise ApiError(400, "Missing or invalid authentication arguments", code=102)
                if self.passwords.get(login) != pw:
                    raise ApiError(400, "Can't authenticate user", code=102,
                                   detail="The login or password you entered is incorrect.")
                user = self._first("HumanUser", "login", login)
                creds = ("user", login)
            elif grant == "refresh_token":
                rt = form.get("refresh_token", "")
                if rt not in self.refresh_tokens:
                    raise ApiError(400, "Invalid refresh token", code=102)
                creds = self.refresh_tokens.pop(rt)
                user = (self._first("ApiUser", "firstname", creds[1]) if creds[0] == "script"
                        else self._first("HumanUser", "login", creds[1]))
            else:
                raise ApiError(400, "Unsupported grant_type", code=103, detail=f"grant_type: {grant!r}")
            access, refresh = "fake." + secrets.token_hex(16), "fakerefresh." + secrets.token_hex(16)
            self.tokens[access] = Token({"type": user["type"], "id": user["id"]},
                                        time.monotonic() + self.token_ttl, refresh, creds)
            self.refresh_tokens[refresh] = creds
        ttl = int(self.token_ttl) if float(self.token_ttl).is_integer() else self.token_ttl
        return {"token_type": "Bearer", "access_token": access, "expires_in": ttl, "refresh_token": refresh}

    def _first(self, entity_type: str, fld: str, value: str) -> dict[str, Any]:
        for r in self.data[entity_type].values():
            if r.get(fld) == value:
                return r
        raise ApiError(400, f"{entity_type} {value!r} not found", code=102)

    def user_for(self, header: str | None) -> dict[str, Any]:
        if not header or not header.startswith("Bearer "):
            raise ApiError(401, "Unauthorized", code=102, detail="Missing Authorization header.")
        with self.lock:
            tok = self.tokens.get(header[7:])
            if tok is None:
                raise ApiError(401, "Unauthorized", code=102, detail="Invalid or expired token.")
            if time.monotonic() >= tok.expires:
                del self.tokens[header[7:]]
                raise ApiError(401, "Unauthorized", code=102, detail="Token expired.")
            return tok.user

    # ---- values ----------------------------------------------------------------------------------
    def display_name(self, rec: dict[str, Any]) -> str | None:
        return rec.get(DISPLAY_FIELD.get(rec["type"], "code"))

    def link(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        rec = self.data.get(value["type"], {}).get(value["id"])
        return {"type": value["type"], "id": value["id"], "name": self.display_name(rec) if rec else None}

    def check_value(self, verb: str, etype: str, fname: str, kind: Any, value: Any) -> Any:
        """Validate one field of a write the way the server does; returns the stored value."""
        where = f"API {verb}() {etype}.{fname}"
        k = kind[0] if isinstance(kind, tuple) else kind
        if value is None:
            return None
        if k == ENTITY:
            if not isinstance(value, dict):
                raise ApiError(400, f"{where} expected [Hash, NilClass] data type(s) but got "
                                    f"{_ruby_type(value)}: {_ruby_repr(value)}")
            return self._check_link(where, kind[1], value)
        if k == MULTI:
            if not isinstance(value, list):
                raise ApiError(400, f"{where} expected [Array, NilClass] data type(s) but got "
                                    f"{_ruby_type(value)}: {_ruby_repr(value)}")
            return [self._check_link(where, kind[1], v) for v in value]
        if k in (TEXT, DATETIME):
            if not isinstance(value, str):
                raise ApiError(400, f"{where} expected [String, NilClass] data type(s) but got "
                                    f"{_ruby_type(value)}: {_ruby_repr(value)}")
            return value
        if k == NUMBER:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(400, f"{where} expected [Integer, NilClass] data type(s) but got "
                                    f"{_ruby_type(value)}: {_ruby_repr(value)}")
            return value
        if k == CHECKBOX:
            if not isinstance(value, bool):
                raise ApiError(400, f"{where} expected [TrueClass, FalseClass] but got {_ruby_repr(value)}")
            return value
        if k == STATUS:
            if value not in STATUSES + ["act", "dis"]:
                raise ApiError(400, f"{where} status '{value}' is not a valid value", code=104)
            return value
        if k == URL:
            return self.resolve_path(verb, etype, fname, value)
        raise ApiError(400, f"{where} is not editable", code=104)

    def _check_link(self, where: str, valid: tuple[str, ...], value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or "type" not in value or "id" not in value:
            raise ApiError(400, f"{where} expected [Hash, NilClass] data type(s) but got "
                                f"{_ruby_type(value)}: {_ruby_repr(value)}")
        if not isinstance(value["id"], int) or isinstance(value["id"], bool):
            raise ApiError(400, f"{where} entity id must be an Integer: {_ruby_repr(value)}")
        if value["type"] not in valid:
            raise ApiError(400, f"{where} entity type '{value['type']}' is not a valid type; valid "
                                f"types are: {', '.join(valid)}")
        if value["id"] not in self.data.get(value["type"], {}):
            raise ApiError(400, f"{where} {value['type']} with id {value['id']} does not exist", code=104)
        return {"type": value["type"], "id": value["id"]}

    def resolve_path(self, verb: str, etype: str, fname: str, value: Any) -> dict[str, Any]:
        where = f"API {verb}() {etype}.{fname}"
        if not isinstance(value, dict):
            raise ApiError(400, f"{where} expected [Hash, ActiveSupport::HashWithIndifferentAccess, NilClass] "
                                f"data type(s) but got {_ruby_type(value)}: {_ruby_repr(value)}")
        self.attachment_ids += 1
        if "url" in value:
            return {"link_type": "web", "url": value["url"], "name": value.get("name") or value["url"],
                    "content_type": None, "type": "Attachment", "id": self.attachment_ids}
        if "local_path" in value:
            lp = value["local_path"]
            storage, rel = self._storage_for_local_path(lp) if "\\" not in lp else (None, None)
            if storage is None:
                raise ApiError(400, f"Create failed for [Attachment]: Path {lp} doesn't match any defined "
                                    "Local Storage.", code=104)
        elif "relative_path" in value:
            rel = value["relative_path"]
            ls = value.get("local_storage")
            if not isinstance(ls, dict):
                raise ApiError(400, f"API {verb}() invalid/missing url hash string 'url': {_ruby_repr(value)}")
            if "\\" in rel or rel.startswith("/"):
                raise ApiError(400, f"API {verb}() invalid/missing relative_path hash string 'relative_path': "
                                    f"{_ruby_repr(value)}")
            if "id" in ls:
                storage = self.data["LocalStorage"].get(ls["id"]) if ls.get("type") == "LocalStorage" else None
            else:
                storage = next((s for s in self.data["LocalStorage"].values() if s.get("code") == ls.get("name")),
                               None)
            if storage is None:
                raise ApiError(400, f"API {verb}() local_storage {_ruby_repr(ls)} doesn't exist", code=104)
        else:
            raise ApiError(400, f"API {verb}() invalid/missing url hash string 'url': {_ruby_repr(value)}")
        name = value.get("name") or rel.rsplit("/", 1)[-1]

        def under(root: str | None, sep: str) -> str | None:
            return None if not root else root.rstrip("/\\") + sep + rel.replace("/", sep)

        return {"link_type": "local", "name": name,
                "content_type": value.get("content_type") or mimetypes.guess_type(name)[0],
                "local_storage": {"type": "LocalStorage", "id": storage["id"], "name": storage.get("code")},
                "relative_path": rel, "local_path_linux": under(storage.get("linux_path"), "/"),
                "local_path_mac": under(storage.get("mac_path"), "/"),
                "local_path_windows": under(storage.get("windows_path"), "\\"),
                "type": "Attachment", "id": self.attachment_ids}

    def _storage_for_local_path(self, path: str) -> tuple[dict[str, Any] | None, str | None]:
        """Deepest root wins; any OS column matches; identical roots -> higher id (probes)."""
        best: tuple[int, int, dict[str, Any], str] | None = None
        low = path.lower()
        for s in self.data["LocalStorage"].values():
            for col in ("linux_path", "mac_path", "windows_path"):
                root = (s.get(col) or "").replace("\\", "/").rstrip("/")
                if root and (low == root.lower() or low.startswith(root.lower() + "/")):
                    cand = (len(root), s["id"], s, path[len(root):].lstrip("/"))
                    if best is None or cand[:2] > best[:2]:
                        best = cand
        return (best[2], best[3]) if best else (None, None)

    # ---- writes ----------------------------------------------------------------------------------
    def create(self, etype: str, body: Any, user: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # validation reads other records; ids are handed out in order
            return self._create(etype, body, user)

    def _create(self, etype: str, body: Any, user: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request body", detail="Expected a JSON object of field values.")
        fields = self.schema[etype]
        if etype not in SITE_TYPES and "project" not in body:
            raise ApiError(400, f"API create() missing 'project' attribute: {_ruby_repr(body)}")
        rec: dict[str, Any] = {}
        for fname, value in body.items():
            if fname not in fields:
                raise ApiError(400, f"API create() {etype}.{fname} doesn't exist.")
            if fname in NOT_EDITABLE:
                raise ApiError(400, f"API create() {etype}.{fname} is not editable.", code=104)
            if fname == "created_by":
                rec[fname] = self._check_link(f"API create() {etype}.created_by", ("HumanUser", "ApiUser"), value)
                continue
            rec[fname] = self.check_value("create", etype, fname, fields[fname], value)
        self.ids += 1
        rid = self.ids
        now = _now()
        rec = {"type": etype, "id": rid, "created_at": rec.pop("created_at", None) or now, "updated_at": now,
               "created_by": rec.pop("created_by", None) or dict(user), "updated_by": dict(user), **rec}
        if "sg_status_list" in fields and "sg_status_list" not in body:
            rec["sg_status_list"] = self.status_default.get(etype)
        if etype == "PublishedFile":
            if "code" not in body:
                rec["code"] = f"New Published File {rid}"
            path = rec.get("path")
            if path and path.get("link_type") == "local" and "path_cache_storage" not in body:
                rec["path_cache_storage"] = {"type": "LocalStorage", "id": path["local_storage"]["id"]}
        if etype == "Version":
            for pf in rec.get("published_files") or []:  # the reverse of PublishedFile.version
                self.data["PublishedFile"][pf["id"]]["version"] = {"type": "Version", "id": rid}
        self.data[etype][rid] = rec
        return rec

    def update(self, etype: str, rid: int, body: Any) -> dict[str, Any]:
        with self.lock:
            return self._update(etype, rid, body)

    def _update(self, etype: str, rid: int, body: Any) -> dict[str, Any]:
        rec = self.data[etype].get(rid)
        if rec is None:
            raise ApiError(404, "Not Found", detail=f"Record not found: {etype} with id {rid}")
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid request body")
        fields = self.schema[etype]
        changes = {}
        for fname, value in body.items():
            if fname not in fields:
                raise ApiError(400, f"API update() {etype}.{fname} doesn't exist.")
            if fname in CREATE_ONLY:
                raise ApiError(400, f"API update() {etype}.{fname} is editable on create only.")
            if fname in NOT_EDITABLE:
                raise ApiError(400, f"API update() {etype}.{fname} is not editable.", code=104)
            changes[fname] = self.check_value("update", etype, fname, fields[fname], value)
        rec.update(changes)
        rec["updated_at"] = _now()
        return rec

    # ---- reads ----------------------------------------------------------------------------------
    def render(self, rec: dict[str, Any], fields: list[str] | None, prefix: str) -> dict[str, Any]:
        schema = self.schema[rec["type"]]
        names = list(schema) if fields is None or "*" in fields else fields
        attrs, rels = {}, {}
        for f in names:
            if "." in f:
                attrs[f] = self.field_value(rec, f)
                continue
            if f not in schema:
                continue  # unknown names are dropped silently
            kind = schema[f]
            k = kind[0] if isinstance(kind, tuple) else kind
            if k == ENTITY:
                rels[f] = {"data": self.link(rec.get(f))}
            elif k == MULTI:
                rels[f] = {"data": [self.link(v) for v in rec.get(f) or []]}
            else:
                attrs[f] = rec.get(f)
        slug = self.slug(rec["type"])
        return {"type": rec["type"], "id": rec["id"], "attributes": attrs, "relationships": rels,
                "links": {"self": f"{prefix}/entity/{slug}/{rec['id']}"}}

    def field_value(self, rec: dict[str, Any] | None, path: str) -> Any:
        """``step.Step.code`` style paths; raises for an unknown field."""
        parts = path.split(".")
        if rec is None:
            return None
        fname = parts[0]
        schema = self.schema[rec["type"]]
        if fname not in schema and fname != "id":
            raise ApiError(400, "Request Parameters invalid.",
                           source={"filters": f"{rec['type']}.{fname} doesn't exist"})
        value = rec.get(fname)
        if len(parts) == 1:
            return value
        if len(parts) < 3:
            raise ApiError(400, "Request Parameters invalid.", source={"filters": f"bad field path {path}"})
        linked_type, rest = parts[1], ".".join(parts[2:])
        if linked_type not in self.schema:
            raise ApiError(400, "Request Parameters invalid.", source={"filters": f"bad field path {path}"})
        if isinstance(value, list):
            return [self.field_value(self.data[linked_type].get(v["id"]), rest) for v in value
                    if v["type"] == linked_type]
        if not value or value.get("type") != linked_type:
            return None
        return self.field_value(self.data[linked_type].get(value["id"]), rest)

    def kind_of(self, etype: str, path: str) -> str:
        parts = path.split(".")
        while len(parts) >= 3:
            etype, parts = parts[1], parts[2:]
        if parts[0] == "id":
            return NUMBER
        kind = self.schema.get(etype, {}).get(parts[0], TEXT)
        return kind[0] if isinstance(kind, tuple) else kind

    def matches(self, etype: str, rec: dict[str, Any], flt: Any) -> bool:
        if isinstance(flt, dict):
            op = flt.get("logical_operator", "and")
            conds = flt.get("conditions")
            if op not in ("and", "or") or not isinstance(conds, list):
                raise ApiError(400, "Request Parameters invalid.",
                               source={"filters": "expected logical_operator and/or with a conditions list"})
            results = (self.matches(etype, rec, c) for c in conds)
            return all(results) if op == "and" else any(results)
        if not isinstance(flt, list) or len(flt) < 3 or not isinstance(flt[0], str):
            raise ApiError(400, "Request Parameters invalid.", source={"filters": f"bad condition {flt!r}"})
        path, op, value = flt[0], flt[1], flt[2] if len(flt) == 3 else flt[2:]
        kind = self.kind_of(etype, path)
        actual = self.field_value(rec, path)
        if kind in (ENTITY, MULTI):
            for v in value if op in ("in", "not_in") and isinstance(value, list) else [value]:
                if v is not None and not (isinstance(v, dict) and "type" in v and "id" in v):
                    raise ApiError(400, "Request Parameters invalid.",
                                   source={"filters": f"{path}: entity values must be hashes with type and id"})
        return _compare(op, kind, actual, value, path)

    def validate_filter(self, etype: str, flt: Any) -> None:
        """Refuse bad operators, fields and entity values even when no row would be compared."""
        probe = {"type": etype, "id": 0}
        if isinstance(flt, dict):
            for c in flt.get("conditions") or []:
                self.validate_filter(etype, c)
            self.matches(etype, probe, {**flt, "conditions": []})
            return
        self.matches(etype, probe, flt)

    def search(self, etype: str, filters: Any, fields: list[str] | None, sort: list[str],
               page_size: int, page_number: int, prefix: str) -> dict[str, Any]:
        if page_size <= 0:
            raise ApiError(400, "Request Parameters invalid.",
                           source={"page": {"size": ["size must be greater than 0"]}})
        if page_size > self.page_cap:
            raise ApiError(400, "Request Parameters invalid.",
                           source={"page": {"size": [f"size must be less than {self.page_cap}"]}})
        with self.lock:
            self.validate_filter(etype, filters)
            rows = [r for r in self.data[etype].values() if self.matches(etype, r, filters)]
            for key in reversed(sort or ["id"]):
                desc = key.startswith("-")
                name = key.lstrip("-")
                rows.sort(key=lambda r: _sort_key(r.get(name)), reverse=desc)
            start = (page_number - 1) * page_size
            page = [self.render(r, fields, prefix) for r in rows[start:start + page_size]]
        slug = self.slug(etype)
        links = {"self": f"{prefix}/entity/{slug}/_search?page[number]={page_number}&page[size]={page_size}",
                 "next": f"{prefix}/entity/{slug}/_search?page[number]={page_number + 1}&page[size]={page_size}"}
        if page_number > 1:
            links["prev"] = f"{prefix}/entity/{slug}/_search?page[number]={page_number - 1}&page[size]={page_size}"
        return {"data": page, "links": links}


def _ruby_type(value: Any) -> str:
    return {str: "String", int: "Integer", float: "Float", bool: "TrueClass", list: "Array",
            dict: "Hash"}.get(type(value), type(value).__name__)


def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "ches")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch")):
        return word + "es"
    return word + "s"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sort_key(v: Any) -> tuple:
    return (v is None, str(v).lower() if isinstance(v, str) else v if isinstance(v, (int, float)) else str(v))


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return v.lower()  # server text comparisons are case-insensitive
    if isinstance(v, dict) and "type" in v:
        return (v["type"], v["id"])
    return v


def _compare(op: str, kind: str, actual: Any, value: Any, path: str) -> bool:
    many = isinstance(actual, list)
    acts = [_norm(a) for a in actual] if many else [_norm(actual)]
    if op in ("is", "is_not"):
        hit = _norm(value) in acts if many else acts[0] == _norm(value)
        if many and value is None:
            hit = not acts
        return hit if op == "is" else not hit
    if op in ("in", "not_in"):
        vals = value if isinstance(value, list) else [value]
        hit = any(_norm(v) in acts for v in vals)
        return hit if op == "in" else not hit
    if op in ("contains", "not_contains", "starts_with", "ends_with"):
        if kind not in (TEXT, STATUS):
            raise ApiError(400, "Request Parameters invalid.", source={"filters": f"{op} is not valid for {path}"})
        a, v = (acts[0] or ""), str(value).lower()
        hit = {"contains": v in a, "not_contains": v not in a, "starts_with": a.startswith(v),
               "ends_with": a.endswith(v)}[op]
        return hit
    if op in ("greater_than", "less_than"):
        if acts[0] is None:
            return False
        return acts[0] > _norm(value) if op == "greater_than" else acts[0] < _norm(value)
    raise ApiError(400, "Request Parameters invalid.",
                   source={"filters": f"Invalid operator '{op}'; valid operators: is, is_not, in, not_in, contains, "
                                      "not_contains, starts_with, ends_with, greater_than, less_than"})


class _Router:
    """Answers one request (the fake's REST routes)."""

    def __init__(self, fake: FakeShotGrid, request: Request) -> None:
        self.server_fake, self.request, self.headers = fake, request, request.headers

    def route(self) -> tuple[int, Any]:
        r = self.request
        return self._route(r.method, r.path, r.query, r.raw, r)

    def _json(self, raw: bytes, ctypes: tuple[str, ...]) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ctypes:
            raise ApiError(415, f"Unsupported Content-Type '{ctype}'",
                           source={"content_type": "Content-Type must be one of: "
                                                   + ", ".join(f"'{c}'" for c in ctypes) + "."})
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise ApiError(400, "Invalid JSON body", source={"body": str(exc)}) from None

    def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes,
               entry: Request) -> tuple[int, Any]:
        fake = self.server_fake
        m = re.match(r"^/fake_s3/([0-9a-f]+)$", path)
        if m and method == "PUT":  # the presigned upload URL: no bearer token
            with fake.lock:
                if m.group(1) not in fake.uploads:
                    raise ApiError(403, "SignatureDoesNotMatch")
                fake.uploads[m.group(1)]["bytes"] = raw
                fake.uploads[m.group(1)]["content_type"] = self.headers.get("Content-Type")
            return 200, None
        m = re.match(r"^(/api/v1(?:\.1)?)(/.*)?$", path)
        if not m or method == "PATCH":
            raise ApiError(404, "Not Found", detail=f"No route matches {method} {path}")
        prefix, rest = m.group(1), m.group(2) or "/"
        if rest == "/auth/access_token" and method == "POST":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype == "application/json":
                raise ApiError(400, "Invalid JSON body", source={"body": "Empty input"})
            if ctype and ctype != "application/x-www-form-urlencoded":
                raise ApiError(415, f"Unsupported Content-Type '{ctype}'", source={
                    "content_type": "Content-Type must be one of: 'application/x-www-form-urlencoded'."})
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            form.update({k: v[0] for k, v in query.items() if k not in form})
            entry.body = {k: form[k] for k in ("grant_type", "scope", "client_id", "username") if k in form}
            return 200, fake.issue_token(form)
        user = fake.user_for(self.headers.get("Authorization"))
        m = re.match(r"^/schema/([A-Za-z0-9_]+)/fields/([A-Za-z0-9_]+)$", rest)
        if m and method == "GET":
            etype, fname = m.group(1), m.group(2)
            kind = fake.schema.get(etype, {}).get(fname)
            if kind is None:
                raise ApiError(404, "Not Found", detail=f"Field '{fname}' does not exist on {etype}.")
            k = kind[0] if isinstance(kind, tuple) else kind
            props = {"valid_types": {"value": list(kind[1])}} if isinstance(kind, tuple) else {}
            return 200, {"data": {"name": {"value": fname}, "data_type": {"value": k},
                                  "editable": {"value": fname not in NOT_EDITABLE}, "properties": props}}
        m = re.match(r"^/entity/([A-Za-z0-9_]+)(?:/(_search|\d+))?(?:/([a-z0-9_]+)/_upload)?$", rest)
        if not m:
            raise ApiError(404, "Not Found", detail=f"No route matches {method} {rest}")
        etype = fake.type_for_slug(m.group(1))
        target, upload_field = m.group(2), m.group(3)
        if upload_field:
            return self._upload(method, etype, int(target), upload_field, query, raw, prefix)
        if target == "_search" and method == "POST":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            body = self._json(raw, (ARRAY_CT, HASH_CT)) or {}
            entry.body = body
            filters = body.get("filters", [] if ctype == ARRAY_CT else {})
            if ctype == ARRAY_CT and not isinstance(filters, list):
                raise ApiError(400, "Request Parameters invalid.", source={"filters": "expected an array of filters"})
            if ctype == HASH_CT and not isinstance(filters, dict):
                raise ApiError(400, "Request Parameters invalid.", source={"filters": "expected a hash of filters"})
            if isinstance(filters, list):
                filters = {"logical_operator": "and", "conditions": filters}
            fields = body.get("fields", query.get("fields", [None])[0])
            sort = body.get("sort", query.get("sort", [None])[0])
            page = body.get("page") or {}
            size = int(page.get("size", query.get("page[size]", [500])[0]))
            number = int(page.get("number", query.get("page[number]", [1])[0]))
            return 200, fake.search(etype, filters, _names(fields), _names(sort) or [], size, number, prefix)
        if target is None and method == "GET":
            conds = [[k[7:-1], "is", v[0]] for k, v in query.items() if k.startswith("filter[")]
            size = int(query.get("page[size]", [500])[0])
            number = int(query.get("page[number]", [1])[0])
            return 200, fake.search(etype, {"logical_operator": "and", "conditions": conds},
                                    _names(query.get("fields", [None])[0]),
                                    _names(query.get("sort", [None])[0]) or [], size, number, prefix)
        if target is None and method == "POST":
            body = self._json(raw, ("application/json",))
            entry.body = body
            rec = fake.create(etype, body, user)
            shown = list(body) + ["code", "created_at", "updated_at", "created_by", "sg_status_list",
                                  "path_cache_storage", "cached_display_name"]
            return 201, {"data": fake.render(rec, shown, prefix)}
        if target and target.isdigit():
            rid = int(target)
            if method == "GET":
                with fake.lock:
                    rec = fake.data[etype].get(rid)
                if rec is None:
                    raise ApiError(404, "Not Found", detail=f"Record not found: {etype} with id {rid}")
                return 200, {"data": fake.render(rec, _names(query.get("fields", [None])[0]), prefix)}
            if method == "PUT":
                body = self._json(raw, ("application/json",))
                entry.body = body
                rec = fake.update(etype, rid, body)
                return 200, {"data": fake.render(rec, None, prefix)}
            if method == "DELETE":
                with fake.lock:
                    if fake.data[etype].pop(rid, None) is None:
                        raise ApiError(404, "Not Found", detail=f"Record not found: {etype} with id {rid}")
                return 204, None
        raise ApiError(404, "Not Found", detail=f"No route matches {method} {rest}")

    def _upload(self, method: str, etype: str, rid: int, fname: str, query: dict[str, list[str]],
                raw: bytes, prefix: str) -> tuple[int, Any]:
        fake = self.server_fake
        with fake.lock:
            if rid not in fake.data[etype]:
                raise ApiError(404, "Not Found", detail=f"Record not found: {etype} with id {rid}")
        if fname != "image" and fake.kind_of(etype, fname) != URL:
            raise ApiError(400, f"{etype}.{fname} is not a file field")
        complete = f"{prefix}/entity/{fake.slug(etype)}/{rid}/{fname}/_upload"
        if method == "GET":
            filename = query.get("filename", [""])[0]
            if not filename:
                raise ApiError(400, "Request Parameters invalid.", source={"filename": "is required"})
            upload_id = uuid.uuid4().hex
            info = {"timestamp": _now(), "upload_type": "Thumbnail" if fname == "image" else "Attachment",
                    "upload_id": upload_id, "storage_service": "s3", "original_filename": filename,
                    "multipart_upload": False}
            with fake.lock:
                fake.uploads[upload_id] = {"info": info, "bytes": None}
            return 200, {"data": info, "links": {"upload": f"{fake.url}/fake_s3/{upload_id}",
                                                 "complete_upload": complete}}
        if method == "POST":
            body = self._json(raw, ("application/json",))
            info = (body or {}).get("upload_info") or {}
            with fake.lock:
                up = fake.uploads.get(info.get("upload_id", ""))
                if up is None or up["bytes"] is None:
                    raise ApiError(400, "Upload not found or not complete", source={"upload_info": info})
                fake.thumbnails[(etype, rid)] = up["bytes"]
                fake.data[etype][rid]["image"] = f"{fake.url}/images/status/transient/thumbnail_pending.png"
            return 201, None
        raise ApiError(404, "Not Found")


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def standard_site(fake: FakeShotGrid, studio_root: str, *, project: str = "Demo Project",
                  tank_name: str = "demo", script: tuple[str, str] = ("watcher", "s3cret-key-value"),
                  user: tuple[str, str] | None = ("jdoe", "pa55word")) -> dict[str, Any]:
    """Seed what a configured Toolkit site has: a script user, a person, a project with its
    ``tank_name``, a LocalStorage ``primary`` at ``studio_root`` (plus an unrelated Windows-only
    one), steps, a sequence with a shot and its comp/light tasks, an asset, two publish types."""
    ids: dict[str, Any] = {}
    ids["script"] = fake.add_script(*script)
    if user:
        ids["user"] = fake.add_user(user[0], user[1], name="Jane Doe")
    ids["project"] = fake.add("Project", name=project, tank_name=tank_name)
    ids["storage"] = fake.add("LocalStorage", code="primary", linux_path=studio_root, mac_path="/Volumes/studio",
                              windows_path="P:\\studio")
    ids["win_storage"] = fake.add("LocalStorage", code="archive", windows_path="Q:\\archive")
    ids["step_comp"] = fake.add("Step", code="Compositing", short_name="comp", entity_type="Shot")
    ids["step_light"] = fake.add("Step", code="Lighting", short_name="light", entity_type="Shot")
    ids["step_model"] = fake.add("Step", code="Model", short_name="model", entity_type="Asset")
    p = ids["project"]
    ids["seq"] = fake.add("Sequence", code="sq01", project=p)
    ids["shot"] = fake.add("Shot", code="sh010", project=p, sg_sequence=ids["seq"])
    ids["task_comp"] = fake.add("Task", content="comp", project=p, entity=ids["shot"], step=ids["step_comp"])
    ids["task_light"] = fake.add("Task", content="Lighting main", project=p, entity=ids["shot"],
                                 step=ids["step_light"])
    ids["asset"] = fake.add("Asset", code="hero", project=p, sg_asset_type="Character")
    ids["task_model"] = fake.add("Task", content="model", project=p, entity=ids["asset"], step=ids["step_model"])
    ids["type_render"] = fake.add("PublishedFileType", code="Rendered Image")
    ids["type_nuke"] = fake.add("PublishedFileType", code="Nuke Script")
    return ids

