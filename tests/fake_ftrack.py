"""A fake ftrack server: a real HTTP server on 127.0.0.1 speaking the JSON API wire format.

``POST /api`` takes a JSON list of operations and answers a list of results in the same order
(https://developer.ftrack.com/api/endpoint). Shapes follow the official clients and the
ftrack-javascript test fixtures: ``query`` → ``{"action": "query", "data": [...], "metadata":
{"next": {"offset": N|null}}}``; ``create``/``update`` → ``{"action", "data": entity}``; errors →
ONE object ``{"exception", "content", "error_code"}`` (HTTP 200 unless the client sent
``ftrack-strict-api: true``; 401 for bad credentials), request-shape errors → 422 ``{"detail":
[{"loc", "msg", "type"}]}``.

It enforces what the real service enforces as far as the sources tell: the auth headers, the
``__entity_type__`` inside ``entity_data``, attribute names and types from ftrack's schemas
(unknown or immutable attributes refused), foreign keys that must point at an existing entity of
the right type, relation values that must be entity references ``{"__entity_type__", "id"}``,
client-chosen primary keys that must be new. Batches are all-or-nothing (the Python API documents
registering components "in a batch call. If any component causes an error then all components
will remain unregistered"); a knob breaks that on purpose. Exception names and texts of
refusals are the fake's own wording: the real server's are not documented.

Server lifecycle, the request ``log`` and the fault vocabulary (``reply``, ``drop``,
``drop_after_apply``, ``slow``, ``pause``/``resume``) come from ``tests/fakes.py``; faults can be
limited to requests holding an operation of one action (``action="create"``). Of its own this
fake has ``partial(ops)`` (apply some operations, then fail: a server that is not atomic) and
the bodies ``refusal(exception, content)`` (an error object) and ``detail(msg, loc)`` (a 422
detail body) to ``reply`` with. Inspection: ``records(type)``, ``get(id)``, ``log``.
"""
from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .fakes import Fault, FakeServer, Request

# ids used by ftrack itself (ftrack-python ``symbol.py``; schema fixture of ftrack-javascript)
LOCATION_IDS = {
    "ftrack.origin": "ce9b348f-8809-11e3-821c-20c9d081909b",
    "ftrack.unmanaged": "cb268ecc-8809-11e3-a7e2-20c9d081909b",
    "ftrack.review": "cd41be70-8809-11e3-b98a-20c9d081909b",
    "ftrack.server": "3a372bde-05bc-11e4-8908-20c9d081909b",
}
_NS = uuid.UUID("6a0b3c1e-0000-4000-8000-00000000f7ac")
OBJECT_TYPE_IDS = {
    "Task": "11c137c0-ee7e-4f9c-91c5-8c77cec22b2c",
    "Shot": "bad911de-3bd6-47b9-8b46-3476e237cb36",
    "Folder": "3c133785-51cb-11e3-980a-20c9d0831e59",
    **{n: str(uuid.uuid5(_NS, n)) for n in ("Sequence", "Episode", "Asset Build", "Milestone")},
}

# --- schema subset (attribute -> kind), from ftrack's query_schemas fixture -------------------
# kinds: str int bool date | fk:<Family> (foreign key, a string id) | ref:<attr> (relation: an
# entity reference, stored in the foreign key <attr>) | ro (immutable/computed: not settable)
_COMMON_CONTEXT = {
    "id": "str", "name": "str", "context_type": "ro", "link": "ro", "thumbnail_id": "str",
    "created_at": "ro", "created_by_id": "ro",
}
_TYPED_CONTEXT = {
    **_COMMON_CONTEXT, "description": "str", "parent_id": "fk:Context", "project_id": "fk:Project",
    "object_type_id": "fk:ObjectType", "status_id": "fk:Status", "type_id": "str", "priority_id": "str",
    "bid": "int", "sort": "int", "start_date": "date", "end_date": "date",
    "parent": "ref:parent_id", "project": "ref:project_id", "object_type": "ref:object_type_id",
    "status": "ref:status_id",
}
_COMPONENT = {
    "id": "str", "name": "str", "file_type": "str", "size": "int", "system_type": "ro",
    "version_id": "fk:AssetVersion", "container_id": "fk:ContainerComponent",
    "version": "ref:version_id", "container": "ref:container_id",
}
SCHEMA: dict[str, dict[str, str]] = {
    "Project": {**_COMMON_CONTEXT, "full_name": "str", "status": "str", "is_private": "bool",
                "project_schema_id": "str", "root": "str", "parent_id": "ro", "project_id": "ro"},
    "TypedContext": _TYPED_CONTEXT,
    "ObjectType": {"id": "str", "name": "str", "is_leaf": "bool", "sort": "int"},
    "Status": {"id": "str", "name": "str", "is_active": "bool", "color": "str", "sort": "int"},
    "User": {"id": "str", "username": "str", "first_name": "str", "last_name": "str"},
    "AssetType": {"id": "str", "name": "str", "short": "str", "component": "str"},
    "Asset": {"id": "str", "name": "str", "context_id": "fk:Context", "type_id": "fk:AssetType",
              "parent": "ref:context_id", "type": "ref:type_id", "latest_version": "ro"},
    "AssetVersion": {
        "id": "str", "version": "int", "comment": "str", "is_published": "bool",
        "asset_id": "fk:Asset", "task_id": "fk:Task", "status_id": "fk:Status", "user_id": "fk:User",
        "thumbnail_id": "fk:Component", "date": "date",
        "asset": "ref:asset_id", "task": "ref:task_id", "status": "ref:status_id", "user": "ref:user_id",
        "is_latest_version": "ro", "link": "ro", "_link": "ro", "thumbnail_url": "ro",
    },
    "FileComponent": _COMPONENT,
    "SequenceComponent": {**_COMPONENT, "padding": "int"},
    "ContainerComponent": _COMPONENT,
    "ComponentLocation": {"id": "str", "resource_identifier": "str", "url": "ro",
                          "component_id": "fk:Component", "location_id": "fk:Location",
                          "component": "ref:component_id", "location": "ref:location_id"},
    "Location": {"id": "str", "name": "str", "label": "str", "description": "str"},
    # Custom attributes (ftrack-python: ``custom_attributes`` is a collection of
    # ``CustomAttributeValue`` entities keyed by ``configuration_id``, read by
    # ``CustomAttributeValue where configuration.key is fstart``; the primary key is
    # (configuration_id, entity_id): a value has no ``id`` of its own). kind ``any``: a value of
    # the configuration's type (a number attribute answers a JSON number, 1001.0).
    "CustomAttributeConfiguration": {"id": "str", "key": "str", "label": "str", "entity_type": "str",
                                     "object_type_id": "fk:ObjectType", "project_id": "str", "default": "any",
                                     "is_hierarchical": "bool", "object_type": "ref:object_type_id"},
    "CustomAttributeValue": {"configuration_id": "fk:CustomAttributeConfiguration", "entity_id": "str",
                             "value": "any", "configuration": "ref:configuration_id"},
}
# Which stored types answer a query ``from <Family>`` (Shot, Task... are TypedContexts told apart
# by object type, as in ftrack where they all alias the one Task table).
FAMILIES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "Context": lambda r: r["__entity_type__"] == "Project" or "object_type_id" in r,
    "TypedContext": lambda r: "object_type_id" in r,
    "Component": lambda r: r["__entity_type__"] in ("FileComponent", "SequenceComponent", "ContainerComponent"),
    "ContainerComponent": lambda r: r["__entity_type__"] in ("SequenceComponent", "ContainerComponent"),
}
CREATABLE = ("Asset", "AssetVersion", "FileComponent", "SequenceComponent", "ContainerComponent",
             "ComponentLocation", "Status", "AssetType", "Location")


def _schema_type(name: str) -> str:
    """Entity type name of an object type: "Asset Build" -> "AssetBuild"."""
    return name.replace(" ", "")


class ApiError(Exception):
    def __init__(self, exception: str, content: str, status: int = 400) -> None:
        super().__init__(content)
        self.exception, self.content, self.status = exception, content, status


def refusal(exception: str, content: str) -> dict[str, Any]:
    """ftrack's error object (answered with HTTP 200 when the client is not in strict mode)."""
    return {"exception": exception, "content": content, "error_code": None}


def detail(msg: str, loc: list[Any] | None = None) -> dict[str, Any]:
    """The request-shape error body (422)."""
    return {"detail": [{"loc": loc or ["body"], "msg": msg, "type": "value_error"}]}


class FtrackRequest(Request):
    @property
    def user(self) -> str | None:
        return self.headers.get("ftrack-user")

    @property
    def ops(self) -> list[Any]:
        ops = self.json()
        return ops if isinstance(ops, list) else [ops]


# --- the query language subset ------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)(?![\w.])|'
                    r'(?P<op>!=|=|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))')
_KEYWORDS = {"select", "from", "where", "and", "or", "not", "is", "is_not", "in", "not_in", "like",
             "not_like", "limit", "offset", "none", "null", "true", "false", "has", "any", "order", "by"}


def tokenize(text: str) -> list[tuple[str, Any]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ApiError("ParseError", f"Could not parse query at position {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("val", json.loads(m.group("str"))))
        elif m.group("num") is not None:
            n = m.group("num")
            out.append(("val", float(n) if "." in n else int(n)))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            w = m.group("word")
            lw = w.lower()
            if lw in ("none", "null"):
                out.append(("val", None))
            elif lw in ("true", "false"):
                out.append(("val", lw == "true"))
            elif lw in _KEYWORDS:
                out.append(("kw", lw))
            else:
                out.append(("name", w))
    return out


@dataclass
class Query:
    entity_type: str
    projections: list[str]
    where: Any
    limit: int | None
    offset: int


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.t, self.i = tokens, 0

    def peek(self) -> tuple[str, Any] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, kind: str | None = None, value: Any = None) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value is not None and tok[1] != value):
            raise ApiError("ParseError", f"Unexpected {tok[1] if tok else 'end of expression'!r}"
                           f" (expected {value or kind})")
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        if tok and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return True
        return False

    def query(self) -> Query:
        projections: list[str] = []
        if self.accept("kw", "select"):
            projections.append(self.take("name")[1])
            while self.accept("op", ","):
                projections.append(self.take("name")[1])
            self.take("kw", "from")
        entity_type = self.take("name")[1]
        where = None
        if self.accept("kw", "where"):
            where = self.or_()
        limit, offset = None, 0
        while self.peek():
            if self.accept("kw", "limit"):
                limit = int(self.take("val")[1])
            elif self.accept("kw", "offset"):
                offset = int(self.take("val")[1])
            else:
                raise ApiError("ParseError", f"Unexpected {self.peek()[1]!r}")
        return Query(entity_type, projections, where, limit, offset)

    def or_(self) -> Any:
        node = self.and_()
        while self.accept("kw", "or"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Any:
        node = self.term()
        while self.accept("kw", "and"):
            node = ("and", node, self.term())
        return node

    def term(self) -> Any:
        if self.accept("kw", "not"):
            return ("not", self.term())
        if self.accept("op", "("):
            node = self.or_()
            self.take("op", ")")
            return node
        path = self.take("name")[1]
        tok = self.peek()
        if tok is None:
            raise ApiError("ParseError", f"Expected an operator after {path!r}")
        self.i += 1
        op = tok[1]
        if op in ("is", "=", "is_not", "!=", "like", "not_like"):
            return (op, path, self.take("val")[1])
        if op in ("in", "not_in"):
            self.take("op", "(")
            values = [self.take("val")[1]]
            while self.accept("op", ","):
                values.append(self.take("val")[1])
            self.take("op", ")")
            return (op, path, values)
        raise ApiError("ParseError", f"Operator {op!r} is not supported (by this fake) after {path!r}")


def parse_query(expression: str) -> Query:
    return _Parser(tokenize(expression)).query()


def _eq(a: Any, v: Any) -> bool:
    if a is None or v is None:
        return a is None and v is None
    if isinstance(a, bool):
        return str(v).lower() in (("true", "1") if a else ("false", "0"))
    return str(a) == str(v)


def _like(a: Any, pattern: Any) -> bool:
    if a is None:
        return False
    rx = "^" + ".*".join(re.escape(part) for part in str(pattern).split("%")) + "$"
    return re.match(rx, str(a), re.IGNORECASE | re.DOTALL) is not None


# --- the server ------------------------------------------------------------------------------

class FakeFtrack(FakeServer):
    """Start with ``start()``; ``url`` is the server URL to configure (``{url}/api`` is the API)."""

    name = "ftrack"
    protocol_version = "HTTP/1.0"  # one request per connection, as before
    request_class = FtrackRequest

    def __init__(self, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.users = dict(users or {"watcher": "k3y-" + uuid.uuid4().hex})
        self._db: dict[str, dict[str, Any]] = {}
        self.unique_versions = False  # refuse a second AssetVersion with the same (asset, version)
        self._seed()

    # ---- seeding
    def _seed(self) -> None:
        for name, oid in OBJECT_TYPE_IDS.items():
            self._put("ObjectType", {"id": oid, "name": name, "is_leaf": name == "Task", "sort": 0})
        for name, lid in LOCATION_IDS.items():
            self._put("Location", {"id": lid, "name": name, "label": name, "description": ""})
        self.default_version_status = self.add_status("Pending Review")
        self.add_status("Not started")
        for username in self.users:
            self._put("User", {"id": str(uuid.uuid4()), "username": username, "first_name": "", "last_name": ""})

    def _put(self, entity_type: str, data: dict[str, Any]) -> str:
        rec = {"__entity_type__": entity_type, **data}
        rec.setdefault("id", str(uuid.uuid4()))
        with self.lock:
            self._db[rec["id"]] = rec
        return rec["id"]

    def add_project(self, name: str, full_name: str | None = None) -> str:
        return self._put("Project", {"name": name, "full_name": full_name or name, "status": "active",
                                     "context_type": "show", "is_private": False, "root": ""})

    def add_context(self, object_type: str, name: str, parent_id: str) -> str:
        """A Shot, Sequence, Asset Build, Folder, Task... under ``parent_id`` (project or context)."""
        parent = self._db[parent_id]
        project_id = parent_id if parent["__entity_type__"] == "Project" else parent["project_id"]
        return self._put(_schema_type(object_type), {
            "name": name, "parent_id": parent_id, "project_id": project_id,
            "object_type_id": OBJECT_TYPE_IDS[object_type], "context_type": "task",
            "status_id": self.default_version_status, "description": ""})

    def add_task(self, name: str, parent_id: str) -> str:
        return self.add_context("Task", name, parent_id)

    def add_asset_type(self, name: str, short: str) -> str:
        return self._put("AssetType", {"name": name, "short": short, "component": "main"})

    def add_status(self, name: str) -> str:
        return self._put("Status", {"name": name, "is_active": True, "color": "#000", "sort": 0})

    def add_location(self, name: str) -> str:
        return self._put("Location", {"name": name, "label": name, "description": ""})

    def add_custom_attribute(self, key: str, object_type: str = "Shot", default: Any = None) -> str:
        """A CustomAttributeConfiguration for entities of ``object_type`` (as ftrack's default
        schema has ``fstart``/``fend`` on Shot); its id."""
        return self._put("CustomAttributeConfiguration", {
            "key": key, "label": key, "entity_type": "task", "object_type_id": OBJECT_TYPE_IDS[object_type],
            "project_id": None, "default": default, "is_hierarchical": False})

    def set_custom_attribute(self, entity_id: str, key: str, value: Any) -> None:
        """Set (or, with None, remove) the value of custom attribute ``key`` on an entity."""
        with self.lock:
            entity = self._db[entity_id]
            conf = next(r for r in self._db.values() if r["__entity_type__"] == "CustomAttributeConfiguration"
                        and r["key"] == key and r["object_type_id"] == entity.get("object_type_id"))
            rid = f"cav:{conf['id']}:{entity_id}"
            if value is None:
                self._db.pop(rid, None)
            else:
                self._db[rid] = {"__entity_type__": "CustomAttributeValue", "id": rid, "configuration_id": conf["id"],
                                 "entity_id": entity_id, "value": value}

    # ---- faults of its own (the rest: tests/fakes.py)
    def partial(self, ops: int, *, action: str | None = "create") -> Fault:
        """The next request (with a create, by default) applies only its first ``ops`` operations
        (kept), then fails with 500: a server that is not atomic."""
        return self.add_fault("partial", 1, where={"action": action} if action else {}, params={"ops": ops})

    def fault_matches(self, fault: Fault, request: Request) -> bool:
        """``action=``: only requests with an operation of that action."""
        action = fault.where.get("action")
        return action is None or any(isinstance(o, dict) and o.get("action") == action
                                     for o in request.ops)  # type: ignore[attr-defined]

    def error_body(self, status: int) -> Any:
        if status == 401:
            return refusal("InvalidCredentialsError",
                           "The supplied API key is not valid. API keys are created from Settings "
                           "under the page API keys. The api key should be passed in the request "
                           "header \"ftrack-api-key\".")
        return refusal("ServerError", "Service temporarily unavailable")

    # ---- inspection
    def records(self, family: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self._db.values() if self._in_family(r, family)]

    def get(self, entity_id: str) -> dict[str, Any] | None:
        with self.lock:
            r = self._db.get(entity_id)
            return copy.deepcopy(r) if r else None

    def actions(self, action: str) -> list[dict[str, Any]]:
        """Every operation with that action the server was sent (answered or not)."""
        return [op for req in self.log for op in req.ops if isinstance(op, dict) and op.get("action") == action]

    # ---- request handling
    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        if request.method != "POST" or request.path.rstrip("/") != "/api":
            return 404, refusal("NotFound", f"No route {request.method} {request.target}"), {}
        fault = request.fault
        return self.handle(request.headers, request.raw,
                           limit=fault.params["ops"] if fault and fault.kind == "partial" else None)

    def handle(self, headers: Any, raw: bytes, limit: int | None = None) -> tuple[int, Any, dict[str, str]]:
        """(status, body, extra headers) of one POST /api; ``limit``: apply only that many
        operations, then fail (the ``partial`` fault)."""
        user, key = headers.get("ftrack-user"), headers.get("ftrack-api-key")
        strict = headers.get("ftrack-strict-api", "false").lower() == "true"
        try:
            ops = json.loads(raw.decode("utf-8") or "null")
        except ValueError as exc:
            return 422, {"detail": [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "value_error.json"}]}, {}
        if user is None or key is None or self.users.get(user) != key:
            return 401, self.error_body(401), {}
        if not isinstance(ops, list):
            return 422, {"detail": [{"loc": ["body"], "msg": "value is not a valid list", "type": "type_error.list"}]}, {}
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or "action" not in op:
                return 422, {"detail": [{"loc": ["body", i, "action"], "msg": "field required",
                                         "type": "value_error.missing"}]}, {}
        try:
            results = self.apply(ops, limit=limit)
        except ApiError as exc:
            return (exc.status if strict else 200), refusal(exc.exception, exc.content), {}
        if limit is not None:
            return 500, refusal("ServerError", "Internal error after partial commit"), {}
        return 200, results, {}

    def apply(self, ops: list[dict[str, Any]], limit: int | None = None) -> list[Any]:
        """Run a batch on a copy of the store and keep it only if every operation succeeds (or,
        with ``limit``, keep the first ``limit`` operations whatever follows)."""
        with self.lock:
            work = dict(self._db)
            results = []
            for i, op in enumerate(ops):
                if limit is not None and i >= limit:
                    break
                try:
                    results.append(self._op(work, op))
                except ApiError as exc:
                    raise ApiError(exc.exception, f"{exc.content} (operation {i}: {op.get('action')}"
                                   f" {op.get('entity_type', '')})".replace(" )", ")"), exc.status) from None
            self._db = work
            return results

    def _op(self, db: dict[str, dict[str, Any]], op: dict[str, Any]) -> Any:
        action = op["action"]
        if action == "query_server_information":
            return {"version": "4.13.8.fake", "schema_hash": "fake", "is_timezone_support_enabled": True,
                    "storage_scenario": {"scenario": "ftrack.automatic", "data": {}}}
        if action == "query_schemas":
            return [{"id": t, "primary_key": ["id"], "properties": {a: {} for a in attrs}}
                    for t, attrs in SCHEMA.items()]
        if action == "query":
            return self._query(db, op.get("expression") or "")
        if action == "create":
            return {"action": "create", "data": self._create(db, op)}
        if action == "update":
            return {"action": "update", "data": self._update(db, op)}
        if action == "delete":
            rec = self._resolve_key(db, op)
            del db[rec["id"]]
            return {"action": "delete", "data": True}
        raise ApiError("ValidationError", f"Unknown action {action!r}")

    # ---- query
    def _in_family(self, rec: dict[str, Any], family: str) -> bool:
        if family in FAMILIES:
            return FAMILIES[family](rec)
        return rec["__entity_type__"] == family

    def _family_schema(self, family: str) -> dict[str, str]:
        if family in SCHEMA:
            return SCHEMA[family]
        if family in ("Context",):
            return {**SCHEMA["TypedContext"], **{k: v for k, v in SCHEMA["Project"].items() if k in ("full_name",)}}
        if family == "Component":
            return SCHEMA["SequenceComponent"]
        if family in {_schema_type(n) for n in OBJECT_TYPE_IDS}:
            return SCHEMA["TypedContext"]
        raise ApiError("ValidationError", f"Unknown entity type {family!r}")

    def _value(self, db: dict[str, dict[str, Any]], rec: dict[str, Any] | None, path: str, family: str) -> Any:
        schema = self._family_schema(family)
        head, _, rest = path.partition(".")
        if rest:
            kind = schema.get(head, "")
            if not kind.startswith("ref:"):
                raise ApiError("ValidationError", f"{family} has no relation {head!r} (in {path!r})")
            fk = kind[4:]
            target_family = schema[fk][3:]
            target = db.get(rec.get(fk)) if rec else None
            return self._value(db, target, rest, target_family)
        if head not in schema or schema[head].startswith("ref:"):
            raise ApiError("ValidationError", f"{family} has no attribute {head!r}")
        return rec.get(head) if rec else None

    def _match(self, db: dict[str, dict[str, Any]], rec: dict[str, Any], node: Any, family: str) -> bool:
        if node is None:
            return True
        op = node[0]
        if op == "and":
            return self._match(db, rec, node[1], family) and self._match(db, rec, node[2], family)
        if op == "or":
            return self._match(db, rec, node[1], family) or self._match(db, rec, node[2], family)
        if op == "not":
            return not self._match(db, rec, node[1], family)
        value = self._value(db, rec, node[1], family)
        if op in ("is", "="):
            return _eq(value, node[2])
        if op in ("is_not", "!="):
            return not _eq(value, node[2])
        if op == "in":
            return any(_eq(value, v) for v in node[2])
        if op == "not_in":
            return not any(_eq(value, v) for v in node[2])
        if op == "like":
            return _like(value, node[2])
        if op == "not_like":
            return not _like(value, node[2])
        raise ApiError("ParseError", f"Unsupported operator {op!r}")

    def _query(self, db: dict[str, dict[str, Any]], expression: str) -> dict[str, Any]:
        q = parse_query(expression)
        if q.entity_type == "Task":
            family_ok = lambda r: r.get("object_type_id") == OBJECT_TYPE_IDS["Task"]  # noqa: E731
        elif q.entity_type in {_schema_type(n) for n in OBJECT_TYPE_IDS}:
            family_ok = lambda r: r["__entity_type__"] == q.entity_type  # noqa: E731
        else:
            self._family_schema(q.entity_type)  # unknown type -> error
            family_ok = lambda r: self._in_family(r, q.entity_type)  # noqa: E731
        for p in q.projections:
            self._value(db, None, p, q.entity_type)  # unknown attribute -> error
        rows = [r for r in db.values() if family_ok(r) and self._match(db, r, q.where, q.entity_type)]
        end = len(rows) if q.limit is None else q.offset + q.limit
        page = rows[q.offset:end]
        data = [self._project(db, r, q.projections or ["id"], q.entity_type) for r in page]
        return {"action": "query", "data": data,
                "metadata": {"next": {"offset": end if end < len(rows) else None}}}

    def _project(self, db: dict[str, dict[str, Any]], rec: dict[str, Any], projections: list[str],
                 family: str) -> dict[str, Any]:
        out: dict[str, Any] = {"__entity_type__": rec["__entity_type__"], "id": rec["id"]}
        if "id" not in self._family_schema(family):  # a composite primary key (CustomAttributeValue)
            out.pop("id")
        for p in projections:
            head, _, rest = p.partition(".")
            if not rest:
                out[head] = rec.get(head)
                continue
            schema = self._family_schema(family)
            fk = schema[head][4:]
            target = db.get(rec.get(fk))
            out[head] = None if target is None else {
                **(out.get(head) or {}), **self._project(db, target, [rest], schema[fk][3:])}
        return out

    # ---- create / update
    def _check_data(self, db: dict[str, dict[str, Any]], entity_type: str, data: Any,
                    creating: bool) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApiError("ValidationError", "entity_data must be an object")
        if data.get("__entity_type__") != entity_type:
            raise ApiError("ValidationError", f"entity_data.__entity_type__ must be {entity_type!r}"
                           f" (got {data.get('__entity_type__')!r})")
        schema = SCHEMA[entity_type]
        clean: dict[str, Any] = {}
        for attr, value in data.items():
            if attr == "__entity_type__":
                continue
            kind = schema.get(attr)
            if kind is None:
                raise ApiError("ValidationError", f"{entity_type} has no attribute {attr!r}")
            if kind == "ro" or (attr == "id" and not creating):
                raise ApiError("ValidationError", f"{entity_type}.{attr} cannot be set")
            if kind.startswith("ref:"):
                if not (isinstance(value, dict) and set(value) == {"__entity_type__", "id"}):
                    raise ApiError("ValidationError", f"{entity_type}.{attr} must be an entity reference"
                                   " {\"__entity_type__\": ..., \"id\": ...}")
                fk = kind[4:]
                self._check_fk(db, entity_type, fk, schema[fk][3:], value["id"], value["__entity_type__"])
                clean[fk] = value["id"]
            elif kind.startswith("fk:"):
                if value is not None:
                    self._check_fk(db, entity_type, attr, kind[3:], value, None)
                clean[attr] = value
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ApiError("ValidationError", f"{entity_type}.{attr} must be an integer, not {value!r}")
                clean[attr] = value
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise ApiError("ValidationError", f"{entity_type}.{attr} must be a boolean, not {value!r}")
                clean[attr] = value
            elif kind != "any":
                if value is not None and not isinstance(value, str):
                    raise ApiError("ValidationError", f"{entity_type}.{attr} must be a string, not {value!r}")
                clean[attr] = value
            else:
                clean[attr] = value
        return clean

    def _check_fk(self, db: dict[str, dict[str, Any]], entity_type: str, attr: str, family: str,
                  target_id: Any, ref_type: str | None) -> None:
        if not isinstance(target_id, str):
            raise ApiError("ValidationError", f"{entity_type}.{attr} must be an id string, not {target_id!r}")
        target = db.get(target_id)
        if target is None:
            raise ApiError("ValidationError", f"{entity_type}.{attr}: no {family} with id {target_id!r}")
        ok = (target.get("object_type_id") == OBJECT_TYPE_IDS["Task"]) if family == "Task" else self._in_family(target, family)
        if not ok:
            raise ApiError("ValidationError", f"{entity_type}.{attr}: {target_id!r} is a "
                           f"{target['__entity_type__']}, not a {family}")
        if ref_type is not None and ref_type != target["__entity_type__"] and not self._in_family(target, ref_type):
            raise ApiError("ValidationError", f"{entity_type}.{attr}: reference says {ref_type!r} but "
                           f"{target_id!r} is a {target['__entity_type__']}")

    def _create(self, db: dict[str, dict[str, Any]], op: dict[str, Any]) -> dict[str, Any]:
        entity_type = op.get("entity_type")
        if entity_type not in CREATABLE:
            raise ApiError("ValidationError", f"Cannot create entities of type {entity_type!r}")
        data = self._check_data(db, entity_type, op.get("entity_data"), creating=True)
        eid = data.setdefault("id", str(uuid.uuid4()))
        if "entity_key" in op and list(op["entity_key"] if isinstance(op["entity_key"], list) else [op["entity_key"]]) != [eid]:
            raise ApiError("ValidationError", "entity_key does not match entity_data.id")
        if eid in db:
            raise ApiError("IntegrityError", f"Duplicate entry {eid!r} for key 'PRIMARY'")
        if entity_type == "AssetVersion":
            if not data.get("asset_id"):
                raise ApiError("ValidationError", "AssetVersion.asset is required")
            siblings = [r.get("version") or 0 for r in db.values()
                        if r["__entity_type__"] == "AssetVersion" and r.get("asset_id") == data["asset_id"]]
            if data.get("version") is None:
                data["version"] = max(siblings, default=0) + 1
            elif self.unique_versions and data["version"] in siblings:
                raise ApiError("IntegrityError", f"Version {data['version']} already exists on asset {data['asset_id']!r}")
            data.setdefault("is_published", True)
            data.setdefault("comment", "")
            data.setdefault("status_id", self.default_version_status)
        if entity_type in ("FileComponent", "SequenceComponent", "ContainerComponent"):
            data.setdefault("name", "main")
            data.setdefault("size", 0)
            data["system_type"] = {"FileComponent": "file", "SequenceComponent": "sequence"}.get(entity_type, "container")
            if entity_type == "SequenceComponent":
                data.setdefault("padding", 0)
        if entity_type == "ComponentLocation":
            for req in ("component_id", "location_id"):
                if not data.get(req):
                    raise ApiError("ValidationError", f"ComponentLocation.{req} is required")
        rec = {"__entity_type__": entity_type, **data}
        db[eid] = rec
        return copy.deepcopy(rec)

    def _resolve_key(self, db: dict[str, dict[str, Any]], op: dict[str, Any]) -> dict[str, Any]:
        key = op.get("entity_key")
        key = key[0] if isinstance(key, list) and len(key) == 1 else key
        rec = db.get(key) if isinstance(key, str) else None
        if rec is None or not (rec["__entity_type__"] == op.get("entity_type")
                                or self._in_family(rec, op.get("entity_type") or "")):
            raise ApiError("ValidationError", f"No {op.get('entity_type')} with key {op.get('entity_key')!r}")
        return rec

    def _update(self, db: dict[str, dict[str, Any]], op: dict[str, Any]) -> dict[str, Any]:
        rec = self._resolve_key(db, op)
        if op.get("entity_type") != rec["__entity_type__"]:
            raise ApiError("ValidationError", f"entity_type {op.get('entity_type')!r} does not match "
                           f"{rec['__entity_type__']!r}")
        data = self._check_data(db, rec["__entity_type__"], op.get("entity_data"), creating=False)
        new = {**rec, **data}
        db[rec["id"]] = new
        return copy.deepcopy(new)
