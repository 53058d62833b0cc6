"""Reading a Toolkit-style templates file: YAML with line numbers, ``include``/``includes``,
``@name`` references, ``keys``/``paths``/``strings`` and our ``publishes:`` section.

Hard errors (the file cannot be trusted) raise TemplateError naming the file, the entry and the
line: YAML syntax, a bad key definition, an undefined key, two keys filling one field, a
malformed publishes rule. Entries we cannot use (broken ``@`` reference, odd brackets, a value
that is not a definition, unknown options) are reported once in ``warnings`` and skipped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import fnmatch
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import TemplateError
from ..names import nfc
from .keys import Key, KeyDefinitionError, make_key
from .publish import PublishRule, RuleError
from .template import (DefinitionError, KeyClashError, Template, UndefinedKeyError, Variant, expand_sections,
                       tokenize)

SECTIONS = ("keys", "paths", "strings", "publishes", "include", "includes")


if TYPE_CHECKING:  # pragma: no cover
    from .matcher import TemplateSet


class _LineDict(dict):
    """A mapping that remembers the line of each of its keys and any duplicate keys."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Any, int] = {}
        self.dups: list[tuple[Any, int, int]] = []


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    for knode, vnode in node.value:
        k = loader.construct_object(knode, deep=True)
        try:
            hash(k)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    knode.start_mark) from None
        v = loader.construct_object(vnode, deep=True)
        line = knode.start_mark.line + 1
        if k in out:
            out.dups.append((k, out.lines[k], line))
        out[k] = v
        out.lines[k] = line
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """Parse one YAML file; syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"{path}: cannot read template file: {e}") from None
    text = nfc(text)  # paths are matched in NFC: literals and choices typed decomposed must agree
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise TemplateError(f"{path}: YAML syntax error{where}: {problem}") from None


class _Raw:
    """The merged sections of a file and its includes, with where each entry came from."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {s: {} for s in ("keys", "paths", "strings", "publishes")}
        self.origin: dict[tuple[str, str], tuple[Path, int | None]] = {}
        self.has_publishes = False


def _load_raw(path: Path, raw: _Raw, warnings: list[str], chain: tuple[Path, ...] = ()) -> None:
    path = path.resolve()
    if path in chain:
        raise TemplateError(f"{path}: include cycle: " + " -> ".join(map(str, chain + (path,))))
    data = read_yaml(path)
    if data is None:
        return
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: a templates file must be a mapping with keys:, paths: (and strings:, "
                            f"publishes:), not a {type(data).__name__}")
    lines = getattr(data, "lines", {})
    for k in data:
        if k not in SECTIONS:
            warnings.append(f"{path}: top-level section '{k}' (line {lines.get(k)}) is not supported and is ignored")
    includes: list[Any] = []
    if data.get("include") is not None:
        includes.append(data["include"])
    if data.get("includes") is not None:
        inc = data["includes"]
        includes.extend(inc if isinstance(inc, list) else [inc])
    for inc in includes:
        if not isinstance(inc, str):
            raise TemplateError(f"{path}: include entries must be file paths, got {inc!r}")
        target = Path(os.path.expandvars(os.path.expanduser(inc)))
        if not target.is_absolute():
            target = path.parent / target
        if not target.is_file():
            raise TemplateError(f"{path}: include {inc!r} (line {lines.get('include', lines.get('includes'))}) "
                                f"does not exist: {target}")
        _load_raw(target, raw, warnings, chain + (path,))
    for section in raw.sections:
        body = data.get(section)
        if body is None:
            if section == "publishes" and "publishes" in data:
                raw.has_publishes = True
            continue
        if not isinstance(body, dict):
            raise TemplateError(f"{path}: section '{section}' (line {lines.get(section)}) must be a mapping")
        if section == "publishes":
            raw.has_publishes = True
        for name, first, second in getattr(body, "dups", []):
            if section == "keys":
                raise TemplateError(f"{path}: key '{name}' is defined twice (lines {first} and {second}); "
                                    f"keep one definition")
            warnings.append(f"{path}: {section} entry '{name}' is defined twice (lines {first} and {second}); "
                            f"the later one is used")
        blines = getattr(body, "lines", {})
        for name, value in body.items():
            raw.sections[section][str(name)] = value
            raw.origin[(section, str(name))] = (path, blines.get(name))


def _where(raw: _Raw, section: str, name: str, fallback: Path) -> str:
    path, line = raw.origin.get((section, name), (fallback, None))
    return f"{path}" + (f" line {line}" if line else "")


def _definition_of(value: Any) -> tuple[str | None, dict[str, Any], str]:
    """(definition, extras, problem) of a paths/strings entry."""
    if isinstance(value, str):
        return value, {}, ""
    if isinstance(value, dict):
        d = value.get("definition")
        if not isinstance(d, str) or not d:
            return None, {}, "has no 'definition' text"
        return d, {k: v for k, v in value.items() if k != "definition"}, ""
    return None, {}, f"is a {type(value).__name__}, not a definition string or a mapping with 'definition'"


class _RefResolver:
    """Toolkit's ``@name`` references (longest matching name among paths and strings; ``@@``
    is a literal ``@``), with cycle detection."""

    def __init__(self, raw: _Raw) -> None:
        self.defs: dict[tuple[str, str], str | None] = {}
        for section in ("paths", "strings"):
            for name, value in raw.sections[section].items():
                self.defs[(section, name)] = _definition_of(value)[0]
        self.names = sorted({n for _, n in self.defs}, key=len, reverse=True)
        self.done: dict[tuple[str, str], str] = {}

    def resolve(self, section: str, name: str, chain: tuple[str, ...] = ()) -> str:
        if (section, name) in self.done:
            return self.done[(section, name)]
        if name in chain:
            raise DefinitionError("cyclic @ reference: " + " -> ".join(chain + (name,)))
        text = self.defs[(section, name)]
        if text is None:
            raise DefinitionError(f"@{name} refers to an entry without a definition")
        out = []
        for chunk in text.split("@@"):
            parts = chunk.split("@")
            res = [parts[0]]
            for part in parts[1:]:
                ref = next((n for n in self.names if part.startswith(n)), None)
                if ref is None:
                    raise DefinitionError(f"'@{part}' refers to no paths or strings entry")
                ref_section = "paths" if ("paths", ref) in self.defs else "strings"
                res.append(self.resolve(ref_section, ref, chain + (name,)) + part[len(ref):])
            out.append("".join(res))
        resolved = "@@".join(out)
        self.done[(section, name)] = resolved
        return resolved


def load_templates(path: Path | str) -> "TemplateSet":
    """Load a templates file (and its includes) into a TemplateSet ready to match."""
    from .matcher import TemplateSet

    path = Path(path)
    warnings: list[str] = []
    raw = _Raw()
    _load_raw(path, raw, warnings)
    keys = _make_keys(raw, path, warnings)
    resolver = _RefResolver(raw)
    templates: dict[str, Template] = {}
    strings: dict[str, Template] = {}
    order = 0
    for section, kind, target in (("paths", "path", templates), ("strings", "string", strings)):
        for name, value in raw.sections[section].items():
            where = _where(raw, section, name, path)
            definition, extra, problem = _definition_of(value)
            if definition is None:
                warnings.append(f"{where}: {section} entry '{name}' {problem}; skipped")
                continue
            try:
                resolved = resolver.resolve(section, name).replace("@@", "@")
                variants = []
                for text in expand_sections(resolved):
                    variants.append(Variant(name, text, tokenize(text, keys, name), order))
                    order += 1
            except DefinitionError as e:
                warnings.append(f"{where}: {section} entry '{name}': {e}; skipped")
                continue
            except (UndefinedKeyError, KeyClashError) as e:
                raise TemplateError(f"{where}: {e}") from None
            if kind == "path" and resolved.startswith("/"):
                warnings.append(f"{where}: paths entry '{name}' starts with '/'; definitions are relative to the "
                                f"root; skipped")
                continue
            root_name = extra.pop("root_name", None) if kind == "path" else None
            extra.pop("validate_with", None)
            for opt in extra:
                warnings.append(f"{where}: {section} entry '{name}': option '{opt}' is not supported and is ignored")
            target[name] = Template(name, resolved, kind, variants, root_name=root_name)
    _warn_duplicate_definitions(templates, raw, path, warnings)
    rules = _make_rules(raw, path)
    return TemplateSet(path, keys, templates, strings, rules, raw.has_publishes, warnings)


def _make_keys(raw: _Raw, path: Path, warnings: list[str]) -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for name, data in raw.sections["keys"].items():
        try:
            key, notes = make_key(name, data)
        except KeyDefinitionError as e:
            raise TemplateError(f"{_where(raw, 'keys', name, path)}: {e}") from None
        where = _where(raw, "keys", name, path)
        warnings.extend(f"{where}: {n}" for n in notes)
        keys[name] = key
    return keys


def _warn_duplicate_definitions(templates: dict[str, Template], raw: _Raw, path: Path,
                                warnings: list[str]) -> None:
    seen: dict[tuple[str | None, str], str] = {}
    for t in templates.values():
        other = seen.setdefault((t.root_name, t.definition), t.name)
        if other != t.name:
            warnings.append(f"{_where(raw, 'paths', t.name, path)}: paths entries '{other}' and '{t.name}' have "
                            f"the same definition; files matching it are ambiguous and never publish")


def _make_rules(raw: _Raw, path: Path) -> list[PublishRule]:
    rules = []
    for pattern, data in raw.sections["publishes"].items():
        try:
            rules.append(PublishRule.parse(pattern, data))
        except RuleError as e:
            raise TemplateError(f"{_where(raw, 'publishes', pattern, path)}: {e}") from None
    return rules


def rule_targets(rule: PublishRule, names: list[str]) -> list[str]:
    """Template names a rule covers: the exact name, else fnmatch."""
    if rule.pattern in names:
        return [rule.pattern]
    if any(c in rule.pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, rule.pattern)]
    return []
