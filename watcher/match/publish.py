"""``publishes:`` rules (our extension to Toolkit files): which templates publish, and how a
match becomes what the tracker needs (entity, task, name, version, type, project).

A rule value is a field name (``Shot``), a literal (``=comp``), or a small format string
(``{Shot}_{name}``). Defaults follow Toolkit habits: entity from Shot/Asset/Sequence/Episode,
version from ``version``, task from ``task_name`` or ``Step``, name from ``name`` or the file
name without version and frame (tk-multi-publish2 ``get_publish_name``; ``name_style:
publish2`` always uses the latter), type from the extension.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ValidationError

from ..completion import COMPLETION_KEYS, RuleCompletion

ENTITY_KEYS = (("Shot", "Shot"), ("shot", "Shot"), ("Asset", "Asset"), ("asset", "Asset"),
               ("Sequence", "Sequence"), ("sequence", "Sequence"), ("Episode", "Episode"), ("episode", "Episode"))

PUBLISH_TYPES = {
    "exr": "Rendered Image", "dpx": "Rendered Image", "jpg": "Rendered Image", "jpeg": "Rendered Image",
    "png": "Rendered Image", "tif": "Rendered Image", "tiff": "Rendered Image", "tga": "Rendered Image",
    "nk": "Nuke Script", "nknc": "Nuke Script", "ma": "Maya Scene", "mb": "Maya Scene",
    "hip": "Houdini Scene", "hipnc": "Houdini Scene", "hiplc": "Houdini Scene", "abc": "Alembic Cache",
    "mov": "Movie", "mp4": "Movie", "psd": "Photoshop Image", "psb": "Photoshop Image",
    "bgeo.sc": "Houdini Cache", "bgeo": "Houdini Cache", "bgeo.gz": "Houdini Cache", "vdb": "VDB Cache",
    "aep": "After Effects Project", "max": "3dsmax Scene", "hrox": "Hiero Project",
}
_COMPOUND_EXT = ("bgeo.sc", "bgeo.gz")

# tk-multi-publish2 path_info: a version "v###" just after '.', '_' or '-', before the extension(s)
_VERSION_RE = re.compile(r"^(?P<prefix>.+?)[._-][vV][0-9]+(?P<ext>(?:\.[^.]+){0,2})$")
_REF_RE = re.compile(r"\{([A-Za-z0-9_ .]+)\}")
_RULE_OPTIONS = {"entity", "task", "name", "type", "version", "project", "review", "name_style"} | COMPLETION_KEYS
#: How a rule without ``name:`` names publishes. ``toolkit``: the ``name`` field, as Toolkit's
#: register_publish documents (``foreground.v034.nk`` -> ``foreground``); ``publish2``: the file
#: name without version and frame, extension kept, as tk-multi-publish2 names its publishes
#: (``scene.v001.ma`` -> ``scene.ma``), so watcher's versions group with the artists' own.
NAME_STYLES = ("toolkit", "publish2")


class RuleError(ValueError):
    """A ``publishes:`` entry is malformed (the loader names the file and entry)."""


@dataclass(frozen=True)
class PublishSpec:
    """What one match publishes as. ``entity_type``/``entity_name`` are None for project-level
    publishes."""

    entity_type: str | None
    entity_name: str | None
    task: str | None
    name: str
    version: int | None
    publish_type: str
    project: str | None = None
    review: bool = False  # the rule asks for a review item (a Version, a review comment)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": ({"type": self.entity_type, "name": self.entity_name} if self.entity_type else None),
                "entity_type": self.entity_type, "entity_name": self.entity_name, "task": self.task,
                "name": self.name, "version": self.version, "publish_type": self.publish_type,
                "project": self.project, "review": self.review}


@dataclass(frozen=True)
class PublishRule:
    """One ``publishes:`` entry. ``pattern`` is a template name or an fnmatch pattern;
    ``enabled`` False (``name: false``) means "matches, but does not publish". Each value is
    a field name, ``=literal``, ``{field}`` format, or None for the default rule."""

    pattern: str
    enabled: bool = True
    entity_type: str | None = None
    entity: str | None = None
    task: str | None = None
    name: str | None = None
    publish_type: str | None = None
    version: str | None = None
    project: str | None = None
    review: bool = False
    name_style: str = "toolkit"  # see NAME_STYLES
    completion: RuleCompletion | None = None  # when its candidates count as complete (completion.py)

    @classmethod
    def parse(cls, pattern: str, data: Any) -> "PublishRule":
        if data is False:
            return cls(pattern, enabled=False)
        if data is None or data is True:
            return cls(pattern)
        if not isinstance(data, dict):
            raise RuleError(f"publishes rule '{pattern}': expected a mapping, true or false, "
                            f"got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - _RULE_OPTIONS)
        if unknown:
            raise RuleError(f"publishes rule '{pattern}': unknown option(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(_RULE_OPTIONS))}")
        kw: dict[str, Any] = {}
        ent = data.get("entity")
        if isinstance(ent, str):
            kw["entity_type"], kw["entity"] = ent, ent
        elif isinstance(ent, dict):
            extra = sorted(set(map(str, ent)) - {"type", "key", "name"})
            if extra or not isinstance(ent.get("type"), str):
                raise RuleError(f"publishes rule '{pattern}': entity must be {{type: Shot, key: Shot}}")
            kw["entity_type"] = ent["type"]
            kw["entity"] = _text(pattern, "entity.key", ent.get("key", ent.get("name", ent["type"])))
        elif ent is not None:
            raise RuleError(f"publishes rule '{pattern}': entity must be a type name or {{type: ..., key: ...}}")
        if "name_style" in data:
            if data["name_style"] not in NAME_STYLES:
                raise RuleError(f"publishes rule '{pattern}': name_style must be one of {', '.join(NAME_STYLES)}, "
                                f"got {data['name_style']!r}")
            kw["name_style"] = data["name_style"]
        done = {k: data[k] for k in COMPLETION_KEYS if k in data}
        if done:
            try:
                kw["completion"] = RuleCompletion.model_validate(done)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(x) for x in first["loc"])
                raise RuleError(f"publishes rule '{pattern}': {where}: "
                                f"{first['msg'].removeprefix('Value error, ')}") from None
        if "review" in data:
            if not isinstance(data["review"], bool):
                raise RuleError(f"publishes rule '{pattern}': review must be true or false")
            kw["review"] = data["review"]
        for opt, attr in (("task", "task"), ("name", "name"), ("type", "publish_type"),
                          ("version", "version"), ("project", "project")):
            if data.get(opt) is not None:
                kw[attr] = _text(pattern, opt, data[opt])
        for attr in ("entity", "task", "name", "version", "project"):
            if kw.get(attr) and "{" in kw[attr] and not kw[attr].startswith("="):
                try:
                    _Format(kw[attr])
                except RuleError as e:
                    raise RuleError(f"publishes rule '{pattern}': {attr} {e}") from None
        return cls(pattern, **kw)

    def references(self) -> set[str]:
        """Field names this rule reads (literals and the publish type excluded)."""
        out: set[str] = set()
        for v in (self.entity, self.task, self.name, self.version, self.project):
            if v is None or v.startswith("="):
                continue
            if "{" in v:
                out.update(_Format(v).variants[-1][1])  # fields in [optional] parts may be absent
            else:
                out.add(v)
        return out


def _text(pattern: str, opt: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RuleError(f"publishes rule '{pattern}': {opt} must be a key name, '=literal' or '{{key}}' text")
    return str(value)


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def extension_of(filename: str) -> str:
    """Lower-case extension, compound ones kept whole (``bgeo.sc``)."""
    low = filename.lower()
    for ext in _COMPOUND_EXT:
        if low.endswith("." + ext):
            return ext
    dot = low.rfind(".")
    return low[dot + 1:] if dot > 0 else ""


def publish_type_for(filename: str) -> str:
    ext = extension_of(filename)
    if not ext:
        return "File"
    return PUBLISH_TYPES.get(ext) or ext.upper() + " File"


def default_name(basename: str, frame_span: tuple[int, int] | None) -> str:
    """The file name without frame and version: ``sh010_comp_v003.1001.exr`` -> ``sh010_comp.exr``
    (``frame_span`` is relative to ``basename``)."""
    name = basename
    if frame_span is not None:
        s, e = frame_span
        if s > 0 and name[s - 1] in "._-":
            s -= 1
        name = name[:s] + name[e:]
    m = _VERSION_RE.match(name)
    if m:
        name = m.group("prefix") + m.group("ext")
    return name


_new = object.__new__
_setattr = object.__setattr__


def _compile(expr: str | None) -> str | Callable[[dict[str, Any]], Any] | None:
    """A rule value: a field name stays a str (read with ``fields.get``); '=lit' and
    '{a}_{b}' become functions of the fields."""
    if expr is None:
        return None
    if expr.startswith("="):
        lit = expr[1:]
        return lambda fields: lit
    if "{" in expr:
        return _Format(expr)
    return expr


class _Format:
    """``{Shot}_{name}[_{aov}]``: fields filled in; an optional ``[...]`` part is dropped when a
    field in it is missing (longest variant that can be filled wins)."""

    def __init__(self, expr: str) -> None:
        from .template import DefinitionError, expand_sections

        try:
            self.variants = [(v, _REF_RE.findall(v)) for v in expand_sections(expr)]
        except DefinitionError as e:
            raise RuleError(f"'{expr}': {e}") from None

    def __call__(self, fields: dict[str, Any]) -> str:
        for text, refs in self.variants:
            if all(fields.get(r) is not None for r in refs):
                return _REF_RE.sub(lambda m: _str(fields[m.group(1)]), text)
        text = self.variants[-1][0]
        return _REF_RE.sub(lambda m: _str(fields.get(m.group(1))), text)


class SpecBuilder:
    """A rule (or the defaults) resolved once for one template variant: which field gives the
    entity, task, name, version and project is decided here, not per file."""

    __slots__ = ("etype", "entity", "task", "name", "version", "project", "ptype", "review")

    def __init__(self, rule: PublishRule, fields: set[str], tail: str | None = None) -> None:
        self.etype, self.entity = rule.entity_type, _compile(rule.entity)
        if self.etype is None:
            found = next(((k, t) for k, t in ENTITY_KEYS if k in fields), None)
            if found:
                self.etype, self.entity = found[1], found[0]
        default_task = "task_name" if "task_name" in fields else ("Step" if "Step" in fields else None)
        self.task = _compile(rule.task) if rule.task is not None else default_task
        if rule.name is not None:
            self.name = _compile(rule.name)
        elif rule.name_style == "publish2":
            self.name = None  # the file name without version and frame, extension kept
        else:
            self.name = "name" if "name" in fields else None
        self.version = _compile(rule.version) if rule.version else ("version" if "version" in fields else None)
        self.project = _compile(rule.project) if rule.project else ("Project" if "Project" in fields else None)
        # a fixed ending ("….bgeo.sc") fixes the type; a free one is read from each file name
        self.ptype = rule.publish_type or (publish_type_for("x" + tail) if tail and "." in tail else None)
        self.review = rule.review

    def __call__(self, fields: dict[str, Any], relpath: str, frame_span: tuple[int, int] | None) -> PublishSpec:
        """``frame_span`` is relative to ``relpath``. (Getters inlined: this runs per file.)"""
        # a getter is a field name or a callable; `__class__ is str` (cheaper than isinstance
        # here) does not narrow for mypy, hence Any
        g: Any = self.entity
        ent = None if g is None else (fields.get(g) if g.__class__ is str else g(fields))
        g = self.name
        name = None if g is None else (fields.get(g) if g.__class__ is str else g(fields))
        if name is None or name == "":
            b = relpath.rfind("/") + 1
            name = default_name(relpath[b:], (frame_span[0] - b, frame_span[1] - b) if frame_span else None)
        g = self.version
        version = None if g is None else (fields.get(g) if g.__class__ is str else g(fields))
        if version is not None and version.__class__ is not int:
            try:
                version = int(str(version).lstrip("vV"))
            except ValueError:
                version = None
        g = self.task
        task = None if g is None else (fields.get(g) if g.__class__ is str else g(fields))
        g = self.project
        project = None if g is None else (fields.get(g) if g.__class__ is str else g(fields))
        spec = _new(PublishSpec)
        _setattr(spec, "__dict__", {
            "entity_type": None if ent is None else self.etype,
            "entity_name": ent if ent is None or ent.__class__ is str else str(ent),
            "task": task if task is None or task.__class__ is str else str(task),
            "name": name if name.__class__ is str else str(name), "version": version,
            "publish_type": self.ptype or publish_type_for(relpath[relpath.rfind("/") + 1:]),
            "project": project if project is None or project.__class__ is str else str(project),
            "review": self.review})
        return spec
