"""Test helpers for the Kitsu backend: builders of real files + ``Publish`` records, and
``FakeZou``, a small stand-in for the error branches a real Zou cannot be made to produce on
demand (expired tokens, 429 with Retry-After, 5xx, answers lost after the write, slow answers).

``FakeZou`` speaks the same wire format as Zou 1.0.97 for the routes the backend uses, and
enforces what Zou enforces there: bearer auth (401 ``{"msg"}``, 422 for a malformed token),
validation errors in Zou's shape, 404 with Zou's generic body for unknown ids, the duplicate
output-file refusal ``{"error": "The given output file already exists."}``, a 500 for an
extension over 10 characters. Records are plain dicts in ``db``. Server lifecycle, the request
``log`` and the faults (``reply``, ``drop``, ``drop_after_apply``, ``slow``, ``pause``/``resume``)
come from ``tests/fakes.py``.
"""
from __future__ import annotations

import json
import re
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

from fileseq import FrameSet

from watcher.model import Entity, Publish

from .fakes import FakeServer, Request

# ---------------------------------------------------------------------------------------------
# Builders: real files under tmp_path and the Publish the pipeline would make of them


def _publish(path: str, *, name: str, version: int | None, entity: Entity, task: str, fields: dict,
             publish_type: str, size: int, template: str, **kw: Any) -> Publish:
    key = f"root|{template}|{json.dumps(fields, sort_keys=True)}|{name}|v{version}"
    return Publish(key=key, root="show", root_path="/", template=template, path=path, name=name,
                   publish_type=publish_type, version=version, entity=entity, task=task, fields=fields,
                   size=size, **kw)


def nuke_script(tmp_path: Path, *, shot: str | None = "SH010", sequence: str = "SQ01", version: int | None = 3,
                task: str = "comp", entity: Entity | None = None, fields: dict | None = None, ext: str = "nk",
                name: str | None = None) -> Publish:
    """A single file (a Nuke script by default) on a shot."""
    name = name or f"{(shot or 'asset').lower()}_{task}"
    folder = Path(tmp_path) / sequence / (shot or "asset") / task / "work"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}_v{version:03d}.{ext}" if version is not None else f"{name}.{ext}")
    path.write_text(f"#! nuke\n# {path.name}\n" + "Root { name %s }\n" % path * 40)
    if fields is None:
        fields = {"Sequence": sequence, "Shot": shot, "Step": task, "version": version}
    return _publish(str(path), name=name, version=version, entity=entity or Entity("Shot", shot or ""),
                    task=task, fields=fields, publish_type="Nuke Script", size=path.stat().st_size,
                    template="nuke_shot_work")


def render_sequence(tmp_path: Path, *, shot: str = "SH010", sequence: str = "SQ01", first: int = 1001,
                    count: int = 48, version: int | None = 1, holes: tuple[int, ...] = (), task: str = "comp",
                    name: str = "beauty", ext: str = "exr", payload: bytes = b"\x76\x2f\x31\x01") -> Publish:
    """A frame sequence ``<name>.%04d.<ext>`` with optional holes."""
    folder = Path(tmp_path) / sequence / shot / task / "render" / (f"v{version:03d}" if version else "latest")
    folder.mkdir(parents=True, exist_ok=True)
    last = first + count - 1
    size = 0
    for f in range(first, last + 1):
        if f in holes:
            continue
        p = folder / f"{name}.{f:04d}.{ext}"
        p.write_bytes(payload + f"frame {f}".encode() * 8)
        size += p.stat().st_size
    fields = {"Sequence": sequence, "Shot": shot, "Step": task, "version": version, "name": name}
    return _publish(str(folder / f"{name}.%04d.{ext}"), name=name, version=version, entity=Entity("Shot", shot),
                    task=task, fields=fields, publish_type="Rendered Image", size=size, template="shot_render",
                    frames=f"{first}-{last}", missing_frames=str(FrameSet(list(holes))) if holes else None,
                    frame_count=count - len(holes), padding=4)


def png_bytes(width: int = 8, height: int = 4, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid PNG, no imaging library needed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def picture_sequence(tmp_path: Path, *, shot: str = "SH010", count: int = 5, version: int = 1) -> Publish:
    """A PNG sequence ``slap.%04d.png`` (frames 1..count), viewable in Kitsu."""
    folder = Path(tmp_path) / "SQ01" / shot / "comp" / "slap"
    folder.mkdir(parents=True, exist_ok=True)
    size = 0
    for f in range(1, count + 1):
        p = folder / f"slap.{f:04d}.png"
        p.write_bytes(png_bytes(rgb=(f * 40 % 256, 30, 30)))
        size += p.stat().st_size
    fields = {"Sequence": "SQ01", "Shot": shot, "Step": "comp", "version": version}
    return _publish(str(folder / "slap.%04d.png"), name="slap", version=version, entity=Entity("Shot", shot),
                    task="comp", fields=fields, publish_type="Slap Comp", size=size, template="shot_slap",
                    frames=f"1-{count}", frame_count=count, padding=4)


# ---------------------------------------------------------------------------------------------
# The fake server

NOT_FOUND = {"error": True, "message": "404 Not Found: The requested URL was not found on the server. "
                                       "If you entered the URL manually please check your spelling and try again.",
             "data": None}


class FakeZou(FakeServer):
    """A Zou stand-in on 127.0.0.1 (own thread, ephemeral port). Seeded with project
    'Fake Show' (with a file tree), sequence SQ01, shot SH010, task type Compositing and a
    Compositing task on the shot, status 'todo'/'wfa'. Credentials: bot token ``BOT_TOKEN``,
    user ``USER_EMAIL``/``USER_PASSWORD``."""

    name = "zou"

    BOT_TOKEN = "fake-bot-token"
    USER_EMAIL = "ingest@studio.example"
    USER_PASSWORD = "fake-pass-123"

    def __init__(self) -> None:
        super().__init__()
        self.logins = 0
        self.refreshes = 0
        self.valid_access: set[str] = {self.BOT_TOKEN}
        self.valid_refresh: set[str] = set()
        self.db: dict[str, dict[str, dict]] = {k: {} for k in (
            "projects", "entity_types", "entities", "task_types", "task_status", "tasks", "output_types",
            "output_files", "comments")}
        self._seed()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request received."""
        with self.lock:
            return [(r.method, r.path) for r in self.log]

    def error_body(self, status: int) -> Any:
        if status == 401:
            return {"msg": "Token has expired"}
        return {"error": True, "message": super().error_body(status)["error"]}

    def expire_access_tokens(self) -> None:
        """Every user access token stops working (refresh tokens still do)."""
        with self.lock:
            self.valid_access = {self.BOT_TOKEN}

    def revoke_everything(self) -> None:
        with self.lock:
            self.valid_access = {self.BOT_TOKEN}
            self.valid_refresh = set()

    def output_files(self) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.db["output_files"].values()]

    def comments(self) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.db["comments"].values()]

    def set_frame_range(self, entity_id: str, frame_in: Any, frame_out: Any) -> None:
        """Put ``frame_in``/``frame_out`` into the entity's ``data`` as Kitsu does."""
        with self.lock:
            data = dict(self.db["entities"][entity_id].get("data") or {})
            data.update(frame_in=frame_in, frame_out=frame_out)
            self.db["entities"][entity_id]["data"] = data

    # ---- data ----
    def _add(self, table: str, **row: Any) -> dict:
        row.setdefault("id", str(uuid.uuid4()))
        row.setdefault("type", {"projects": "Project", "entity_types": "EntityType", "task_types": "TaskType",
                                "task_status": "TaskStatus", "tasks": "Task", "output_types": "OutputType",
                                "output_files": "OutputFile", "comments": "Comment"}.get(table, "Entity"))
        self.db[table][row["id"]] = row
        return row

    def _seed(self) -> None:
        self.project = self._add("projects", name="Fake Show", file_tree={"output": {}})
        et = {n: self._add("entity_types", name=n) for n in ("Shot", "Sequence", "Episode", "Edit", "Character")}
        self.sequence = self._add("entities", type="Sequence", name="SQ01", project_id=self.project["id"],
                                  entity_type_id=et["Sequence"]["id"], parent_id=None, canceled=False)
        # Zou keeps a shot's frame range in its free-form ``data`` (``frame_in``/``frame_out``),
        # set from Kitsu's shot list or by ``PUT /data/shots/<id>``; ``set_frame_range`` seeds it
        self.shot = self._add("entities", type="Shot", name="SH010", project_id=self.project["id"],
                              entity_type_id=et["Shot"]["id"], parent_id=self.sequence["id"], canceled=False,
                              data={})
        self.comp = self._add("task_types", name="Compositing", short_name="comp", for_entity="Shot")
        self.todo = self._add("task_status", name="Todo", short_name="todo")
        self.wfa = self._add("task_status", name="Waiting For Approval", short_name="wfa")
        self.task = self._add("tasks", name="main", entity_id=self.shot["id"], task_type_id=self.comp["id"],
                              project_id=self.project["id"], task_status_id=self.todo["id"])

    # ---- HTTP ----
    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        query = {k: v[0] for k, v in request.query.items()}
        with self.lock:
            status, answer = self._route(request.method, request.path, query, request.json(),
                                         request.headers.get("Authorization", ""))
        return status, answer, {"Content-Type": "application/json"}

    def _auth(self, header: str, refresh: bool = False) -> tuple[int, Any] | None:
        if not header.startswith("Bearer "):
            return 401, {"msg": "Missing JWT in cookies or headers (Missing cookie \"access_token_cookie\"; "
                                "Missing Authorization Header)"}
        token = header[7:]
        if token.count(".") != 2 and token != self.BOT_TOKEN:
            return 422, {"msg": "Not enough segments"}
        if token not in (self.valid_refresh if refresh else self.valid_access):
            return 401, {"msg": "Token has expired"}
        return None

    def _route(self, method: str, path: str, q: dict[str, str], body: Any, auth: str) -> tuple[int, Any]:
        db = self.db
        if method == "GET" and path == "/":
            return 200, {"api": "Zou", "version": "1.0.97"}
        if method == "POST" and path == "/auth/login":
            body = body or {}
            if body.get("email") == self.USER_EMAIL and body.get("password") == self.USER_PASSWORD:
                self.logins += 1
                access, refresh = f"a.{uuid.uuid4().hex}.x", f"r.{uuid.uuid4().hex}.x"
                self.valid_access.add(access)
                self.valid_refresh.add(refresh)
                return 200, {"login": True, "access_token": access, "refresh_token": refresh, "user": {}}
            return 400, {"login": False, "message": "Wrong email or password."}
        if method == "GET" and path == "/auth/refresh-token":
            denied = self._auth(auth, refresh=True)
            if denied:
                return denied
            self.refreshes += 1
            access = f"a.{uuid.uuid4().hex}.x"
            self.valid_access.add(access)
            return 200, {"access_token": access}
        denied = self._auth(auth)
        if denied:
            return denied
        if method == "GET" and path == "/auth/authenticated":
            return 200, {"authenticated": True, "user": {"first_name": "fake", "last_name": "bot", "is_bot": True}}

        def listing(table: str, allowed: tuple[str, ...]) -> tuple[int, Any]:
            rows = list(db[table].values())
            for k, v in q.items():
                if k not in allowed:
                    continue
                if k == "name":
                    rows = [r for r in rows if str(r.get("name", "")).lower() == v.lower()]
                else:
                    rows = [r for r in rows if str(r.get(k)) == v]
            return 200, rows

        simple = {"/data/projects": ("projects", ("name",)), "/data/entity-types": ("entity_types", ("name",)),
                  "/data/task-types": ("task_types", ("name",)), "/data/task-status": ("task_status", ("name",)),
                  "/data/output-types": ("output_types", ("name",)),
                  "/data/entities": ("entities", ("project_id", "entity_type_id", "name", "parent_id")),
                  "/data/tasks": ("tasks", ("entity_id", "task_type_id"))}
        if method == "GET" and path in simple:
            return listing(*simple[path])
        if method == "POST" and path == "/data/output-types":
            if not body or not body.get("name") or "short_name" not in body:
                return 400, {"message": "One of the provided values has an invalid format."}
            if any(r["name"] == body["name"] for r in db["output_types"].values()):
                return 400, {"message": "A record with the same unique values already exists."}
            return 201, self._add("output_types", name=body["name"], short_name=body["short_name"])
        m = re.fullmatch(r"/data/tasks/([^/]+)", path)
        if method == "GET" and m:
            row = db["tasks"].get(m.group(1))
            return (200, row) if row else (404, NOT_FOUND)
        m = re.fullmatch(r"/data/entities/([^/]+)", path)
        if method == "GET" and m:
            row = db["entities"].get(m.group(1))
            return (200, row) if row else (404, NOT_FOUND)
        m = re.fullmatch(r"/data/entities/([^/]+)/output-files", path)
        if method == "GET" and m:
            if m.group(1) not in db["entities"]:
                return 404, NOT_FOUND
            rows = [r for r in db["output_files"].values() if r["entity_id"] == m.group(1)]
            for k in ("output_type_id", "task_type_id", "name", "representation"):
                if k in q:
                    rows = [r for r in rows if str(r.get(k)) == q[k]]
            return 200, sorted(rows, key=lambda r: -r["revision"])
        m = re.fullmatch(r"/data/entities/([^/]+)/output-files/new", path)
        if method == "POST" and m:
            return self._new_output_file(m.group(1), body or {})
        m = re.fullmatch(r"/data/output-files/([^/]+)", path)
        if method == "GET" and m:
            row = db["output_files"].get(m.group(1))
            return (200, row) if row else (404, NOT_FOUND)
        if method == "PUT" and m:
            row = db["output_files"].get(m.group(1))
            if row is None:
                return 404, NOT_FOUND
            body = body or {}
            if (body.get("size") or 0) > 2**31 - 1 or len(body.get("checksum") or "") > 32:
                return 400, {"message": "One of the provided values has an invalid format."}
            row.update({k: v for k, v in body.items() if k in ("path", "size", "checksum", "data", "revision",
                                                                     "nb_elements")})
            return 200, row
        m = re.fullmatch(r"/data/tasks/([^/]+)/comments", path)
        if method == "GET" and m:
            return 200, [c for c in db["comments"].values() if c["object_id"] == m.group(1)]
        m = re.fullmatch(r"/actions/tasks/([^/]+)/comment", path)
        if method == "POST" and m:
            task = db["tasks"].get(m.group(1))
            if task is None:
                return 404, NOT_FOUND
            if not (body or {}).get("task_status_id"):
                return 400, {"error": True, "message": "Validation error.",
                             "data": {"errors": [{"field": "task_status_id", "message": "Field required"}]}}
            task["task_status_id"] = body["task_status_id"]
            return 201, self._add("comments", object_id=task["id"], object_type="Task", text=body.get("comment", ""),
                                  task_status_id=body["task_status_id"], previews=[])
        return 404, NOT_FOUND

    def _new_output_file(self, entity_id: str, body: dict) -> tuple[int, Any]:
        db = self.db
        missing = [f for f in ("output_type_id", "task_type_id") if not body.get(f)]
        if missing:
            return 400, {"error": True, "message": "Validation error.",
                         "data": {"errors": [{"field": f, "message": "Field required"} for f in missing]}}
        if entity_id not in db["entities"] or body["task_type_id"] not in db["task_types"]:
            return 404, NOT_FOUND
        if body["output_type_id"] not in db["output_types"]:
            return 400, {"error": "Cannot find given output type."}
        if len(body.get("extension") or "") > 10:
            return 500, {"error": True, "message": "Internal server error."}
        name, rep = body.get("name", "main"), body.get("representation", "")
        same = [r for r in db["output_files"].values() if (r["entity_id"], r["output_type_id"], r["task_type_id"],
                r["name"], r["representation"]) == (entity_id, body["output_type_id"], body["task_type_id"], name, rep)]
        revision = int(body.get("revision") or 0)
        if revision < 1:
            revision = max([r["revision"] for r in same], default=0) + 1
        if any(r["revision"] == revision for r in same):
            return 400, {"error": "The given output file already exists."}
        return 201, self._add("output_files", entity_id=entity_id, output_type_id=body["output_type_id"],
                              task_type_id=body["task_type_id"], name=name, representation=rep, revision=revision,
                              extension=body.get("extension", ""), nb_elements=int(body.get("nb_elements") or 1),
                              comment=body.get("comment", ""), path=None, size=None, checksum=None, data=None,
                              canceled=False)
