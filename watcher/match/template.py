"""Templates: a definition split into literals and keys, its optional ``[sections]`` expanded
into variants (longest first, as Toolkit does), each variant compiled to a regex fragment, plus
a slow exact matcher that explores every way to split a path and says where it stopped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from .keys import Key, SequenceKey

KEY_REF_RE = re.compile(r"\{([A-Za-z0-9_ .]+)\}")


class DefinitionError(ValueError):
    """The definition itself is malformed (brackets); the entry is skipped with a warning."""


class UndefinedKeyError(ValueError):
    """The definition uses a key that ``keys:`` does not define (a hard error)."""


class KeyClashError(ValueError):
    """Two different keys fill the same field in one template (a hard error)."""


def expand_sections(definition: str) -> list[str]:
    """Every variant of a definition with optional ``[...]`` sections, longest first.
    ``{a}[_{b}]`` -> ``['{a}_{b}', '{a}']``. Nested or unbalanced brackets are refused."""
    parts: list[tuple[bool, str]] = []
    buf: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(definition):
        if ch == "[":
            if depth:
                raise DefinitionError("nested optional sections ('[' inside '[...]') are not supported")
            parts.append((False, "".join(buf)))
            buf, depth, start = [], 1, i
        elif ch == "]":
            if not depth:
                raise DefinitionError(f"']' at position {i} closes no optional section")
            section = "".join(buf)
            if not KEY_REF_RE.search(section):
                raise DefinitionError(f"optional section '[{section}]' must contain a key")
            parts.append((True, section))
            buf, depth = [], 0
        else:
            buf.append(ch)
    if depth:
        raise DefinitionError(f"'[' at position {start} is never closed")
    parts.append((False, "".join(buf)))
    variants = [""]
    for optional, text in parts:
        if optional:
            variants = [v + text for v in variants] + variants
        else:
            variants = [v + text for v in variants]
    seen: dict[str, None] = {}
    for v in sorted(variants, key=len, reverse=True):
        seen.setdefault(v, None)
    return list(seen)


def tokenize(definition: str, keys: dict[str, Key], template: str) -> list[str | Key]:
    """Literals (str) and keys, in order. Raises for undefined keys and for two keys that
    would fill one field (``{version}`` and ``{version_four}`` both aliased ``version``)."""
    tokens: list[str | Key] = []
    by_field: dict[str, Key] = {}
    pos = 0
    for m in KEY_REF_RE.finditer(definition):
        if m.start() > pos:
            tokens.append(definition[pos:m.start()])
        key = keys.get(m.group(1))
        if key is None:
            raise UndefinedKeyError(f"template {template} uses key {{{m.group(1)}}}, which is not defined under keys:")
        other = by_field.setdefault(key.field, key)
        if other is not key:
            raise KeyClashError(f"template {template} uses keys {other.name} ({other.describe()}) and {key.name} "
                                f"({key.describe()}), which both fill the field '{key.field}'")
        tokens.append(key)
        pos = m.end()
    if pos < len(definition):
        tokens.append(definition[pos:])
    return tokens


@dataclass(eq=False)
class Variant:
    """One expanded form of a template. Rank: more literal characters first (fewer characters
    matched by keys), then more keys; equal ranks of different templates are ambiguous."""

    template: str
    definition: str
    tokens: list[str | Key]
    order: int
    literal_len: int = 0
    n_keys: int = 0
    frame_index: int | None = None  # index in tokens of the frame key occurrence
    frame_key: SequenceKey | None = None
    fields: list[tuple[str, Key]] = field(default_factory=list)  # distinct fields, first-seen order

    def __post_init__(self) -> None:
        self.literal_len = sum(len(t) for t in self.tokens if isinstance(t, str))
        self.n_keys = sum(1 for t in self.tokens if not isinstance(t, str))
        seen: dict[str, Key] = {}
        for i, t in enumerate(self.tokens):
            if isinstance(t, Key):
                seen.setdefault(t.field, t)
                if isinstance(t, SequenceKey):
                    self.frame_index, self.frame_key = i, t
        self.fields = list(seen.items())

    @property
    def rank(self) -> tuple[int, int]:
        return (-self.literal_len, -self.n_keys)

    # ---- regex ----------------------------------------------------------------------------
    def regex(self, prefix: str) -> tuple[str, list[tuple[str, Key]], str | None]:
        """A fragment with named groups ``{prefix}_{n}`` for each distinct field (repeats are
        backreferences), and a group for the frame occurrence. Returns (fragment, [(group,
        key)], frame group name)."""
        out: list[str] = []
        groups: list[tuple[str, Key]] = []
        first: dict[str, str] = {}
        frame_group = None
        for i, t in enumerate(self.tokens):
            if isinstance(t, str):
                out.append(re.escape(t))
                continue
            if t.field in first:
                ref = f"(?P={first[t.field]})"
                if i == self.frame_index:
                    frame_group = f"{prefix}_f"
                    ref = f"(?P<{frame_group}>{ref})"
                out.append(ref)
                continue
            g = f"{prefix}_{len(groups)}"
            first[t.field] = g
            groups.append((g, t))
            if i == self.frame_index:
                frame_group = g
            out.append(f"(?P<{g}>{t.pattern()})")
        return "".join(out), groups, frame_group

    # ---- slow exact matcher ---------------------------------------------------------------
    def parses(self, path: str, probe: "Probe | None" = None) -> Iterator[dict[str, tuple[str, Any, int, int]]]:
        """Every way ``path`` fits this variant, in regex order: {field: (text, value, start,
        end)}. ``probe`` records how far the furthest attempt got and why it stopped."""
        yield from self._walk(path, 0, 0, {}, probe)

    def _walk(self, path: str, ti: int, pos: int, vals: dict[str, tuple[str, Any, int, int]],
              probe: "Probe | None") -> Iterator[dict[str, tuple[str, Any, int, int]]]:
        tokens = self.tokens
        if ti == len(tokens):
            if pos == len(path):
                yield dict(vals)
            elif probe is not None:
                rest = path[pos:]
                what = (f"the path goes on with '{rest}' (more directory levels than the template)" if "/" in rest
                        else f"'{rest}' is left over at the end")
                probe.fail(pos, ti, what)
            return
        tok = tokens[ti]
        if isinstance(tok, str):
            if path.startswith(tok, pos):
                yield from self._walk(path, ti + 1, pos + len(tok), vals, probe)
            elif probe is not None:
                _literal_fail(probe, path, pos, tok, ti)
            return
        key = tok
        if key.field in vals:
            text = vals[key.field][0]
            if path.startswith(text, pos):
                vals2 = vals
                if ti == self.frame_index:
                    vals2 = dict(vals)
                    vals2[key.field] = (text, vals[key.field][1], pos, pos + len(text))
                yield from self._walk(path, ti + 1, pos + len(text), vals2, probe)
            elif probe is not None:
                here = path[pos:min(pos + len(text), _segment_end(path, pos))]
                probe.fail(pos, ti, f"key {key.field} is '{text}' earlier in the path but '{here}' here; "
                                    f"a repeated key must have the same value")
            return
        seg_end = _segment_end(path, pos)
        nxt = tokens[ti + 1] if ti + 1 < len(tokens) else None
        if isinstance(nxt, str) and nxt[0] == "/":
            ends = [seg_end] if seg_end > pos and path.startswith(nxt, seg_end) else []
        elif isinstance(nxt, str):
            ends = [e for e in range(pos + 1, seg_end + 1) if path.startswith(nxt, e)]
        elif nxt is None:
            ends = [len(path)] if seg_end == len(path) and pos < len(path) else []
        else:
            ends = list(range(pos + 1, seg_end + 1))
        if key.greedy:
            ends.reverse()
        first_error = None
        fits_error = None  # from a text that has the key's shape but fails a check: more telling
        for e in ends:
            text = path[pos:e]
            try:
                value = key.convert(text, check=True)
            except ValueError as err:
                if probe is not None:
                    first_error = first_error or str(err)
                    if fits_error is None and key.fits(text):
                        fits_error = str(err)
                continue
            vals[key.field] = (text, value, pos, e)
            try:
                yield from self._walk(path, ti + 1, e, vals, probe)
            finally:
                del vals[key.field]
        if probe is not None:
            if not ends and isinstance(nxt, str) and self._probe_literal(path, ti, pos, seg_end, probe):
                return
            if first_error:
                probe.fail(pos, ti, fits_error or first_error)
            elif not ends:
                if pos >= len(path):
                    probe.fail(pos, ti, f"the path ends where the template expects key {key.field}")
                elif isinstance(nxt, str):
                    probe.fail(pos, ti, f"'{nxt}' never follows key {key.field} in '{path[pos:seg_end]}'")
                else:
                    probe.fail(pos, ti, f"no value for key {key.field} in '{path[pos:seg_end]}'")


    def _probe_literal(self, path: str, ti: int, pos: int, seg_end: int, probe: "Probe") -> bool:
        """Diagnosis only: the literal after key ``ti`` is nowhere in the segment. Take the
        longest valid value for the key and report how the literal then differs (deeper, and
        more useful, than "the literal never follows")."""
        key, nxt = self.tokens[ti], self.tokens[ti + 1]
        assert isinstance(key, Key) and isinstance(nxt, str)  # the caller checked: a key, then a literal
        for e in range(seg_end, pos, -1):
            try:
                key.convert(path[pos:e], check=True)
            except ValueError:
                continue
            _literal_fail(probe, path, e, nxt, ti + 1)
            return True
        return False


def _literal_fail(probe: "Probe", path: str, pos: int, tok: str, ti: int) -> None:
    """Report where literal ``tok`` stops agreeing with the path at ``pos``."""
    n = 0
    while n < len(tok) and pos + n < len(path) and path[pos + n] == tok[n]:
        n += 1
    exp, got = tok[n:], path[pos + n:]
    if not got:
        probe.fail(pos + n, ti, f"the path ends where the template expects '{exp}'", n)
        return
    exp_seg = "/" if exp[0] == "/" else exp.split("/")[0]
    got_seg = "/" if got[0] == "/" else got.split("/")[0]
    probe.fail(pos + n, ti, f"expected '{exp_seg}' where the path has '{got_seg}'", n)


def _segment_end(path: str, pos: int) -> int:
    slash = path.find("/", pos)
    return len(path) if slash < 0 else slash


class Probe:
    """The furthest point a slow match reached, and why it could not go on."""

    __slots__ = ("pos", "token", "why", "offset")

    def __init__(self) -> None:
        self.pos, self.token, self.why, self.offset = -1, -1, "", 0

    def fail(self, pos: int, token: int, why: str, offset: int = 0) -> None:
        """``offset``: how far into a literal token the path still agreed."""
        if pos > self.pos:
            self.pos, self.token, self.why, self.offset = pos, token, why, offset


@dataclass(eq=False)
class Template:
    """A loaded ``paths:`` or ``strings:`` entry."""

    name: str
    definition: str  # after @refs, before [sections]
    kind: str  # "path" or "string"
    variants: list[Variant]
    root_name: str | None = None


def render_tokens(tokens: list[str | Key]) -> str:
    """A variant as the TD wrote it (``{name}.v{version}.nk``)."""
    return "".join(t if isinstance(t, str) else "{" + t.name + "}" for t in tokens)
