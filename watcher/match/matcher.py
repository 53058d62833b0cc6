"""Matching relative paths against a TemplateSet, fast.

Index: path templates are grouped by the file extension they can end in (templates ending in a
free key join every group); each group is ONE combined regex whose alternatives are sorted by
rank, so the first alternative that matches is the most specific template. Templates of equal
rank in the group ("peers") are tried after it to detect ambiguity. A frame-stripped cache
serves the other frames of a sequence without running the regex; it is only used for groups
where the digits of a frame cannot change the outcome (see ``_digit_safe``). Keys the regex
cannot fully decide (exclusions, dates, int choices) are checked after it; if that fails, the
exact slow matcher (``Variant.parses``) decides. Misses explain themselves lazily.
"""
from __future__ import annotations

import datetime as _dt
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ..names import nfc, respelled
from .keys import PLACEHOLDER_NOTE, Key, SequenceKey, StrKey, printf_token
from .loader import rule_targets
from .publish import PublishRule, PublishSpec, SpecBuilder
from .template import Probe, Template, Variant, render_tokens

# the last run of digits in the file name (greedy .* backs off from the end: cost ~ the suffix)
_LAST_RUN = re.compile(r".*(?<![0-9])([0-9]+)(?=[^/]*\Z)")
_CACHE_MAX = 200_000
_DEFAULT_RULE = PublishRule("*")


@dataclass(frozen=True)
class Match:
    """A path that fits one template. ``fields`` are typed and include the frame key; text
    values are in the composed (NFC) spelling, whatever the path's own. ``relpath``,
    ``frame_span`` and ``pattern`` are the path as it is on disk: ``pattern`` is it with the
    frame replaced by its printf token (``%04d``; other ``%`` doubled), or the path itself when
    there is no frame. ``seq_padding`` is the padding of the sequence the frame belongs to (the
    candidate key's): ``padding`` but for a negative frame with zero-padded digits
    (``-0003`` in a ``%04d`` sequence). A ``placeholder`` (``####``, ``%04d``...) in place of the
    frame is a pattern, never a real frame: such a match never publishes (``publish`` None)."""

    template: str
    fields: dict[str, Any]
    frame_key: str | None
    frame: int | None
    frame_span: tuple[int, int] | None
    padding: int
    pattern: str
    publish: PublishSpec | None
    placeholder: bool = False
    relpath: str = ""
    seq_padding: int = 0

    def __bool__(self) -> Literal[True]:  # Literal: `if m` narrows Match | Miss for mypy
        return True

    def sequence_pattern(self) -> str:
        """``pattern`` at the sequence's padding (they differ for a ``-0003`` frame only)."""
        if self.seq_padding == self.padding or self.frame_span is None:
            return self.pattern
        s, e = self.frame_span
        return (self.relpath[:s].replace("%", "%%") + printf_token(self.seq_padding)
                + self.relpath[e:].replace("%", "%%"))


_new = object.__new__
_setattr = object.__setattr__


def _make_match(d: dict[str, Any]) -> Match:
    """A Match from its attribute dict, without the frozen dataclass ``__init__`` (which costs
    more than the whole cached lookup on the hot path). ``d`` must hold every field."""
    m = _new(Match)
    _setattr(m, "__dict__", d)
    return m


class Miss:
    """No template (or more than one, equally specific) fits. ``closest`` and ``reason`` are
    worked out on first use: a miss costs nothing until someone asks why."""

    __slots__ = ("relpath", "ambiguous", "_closest", "_reason", "_diagnose")

    def __init__(self, relpath: str, *, reason: str | None = None, closest: str | None = None,
                 ambiguous: tuple[str, ...] = (),
                 diagnose: Callable[[str], tuple[str | None, str]] | None = None) -> None:
        self.relpath = relpath
        self.ambiguous = ambiguous
        self._closest, self._reason, self._diagnose = closest, reason, diagnose

    def __bool__(self) -> Literal[False]:  # see Match.__bool__
        return False

    def _resolve(self) -> None:
        if self._reason is None:
            if self._diagnose is None:
                self._reason = "no template matches"
            else:
                self._closest, self._reason = self._diagnose(self.relpath)

    @property
    def reason(self) -> str:
        self._resolve()
        return self._reason or ""

    @property
    def closest(self) -> str | None:
        self._resolve()
        return self._closest

    def __str__(self) -> str:
        """The reason: ``log.debug("no template: %s", miss)`` works it out only if logged."""
        return self.reason

    def __repr__(self) -> str:
        return f"Miss({self.relpath!r}, reason={self.reason!r})"


class _Alt:
    """One variant as an alternative of a group regex."""

    __slots__ = ("variant", "template", "names", "fields", "ints", "convs", "checks", "frame_group",
                 "frame_field", "frame_key", "peers", "regex", "single", "spec")

    def __init__(self, variant: Variant, prefix: str) -> None:
        self.variant = variant
        self.template = variant.template
        frag, groups, frame_group = variant.regex(prefix)
        self.regex = frag
        self.names = tuple(g for g, _ in groups)
        self.fields = tuple(k.field for _, k in groups)
        self.ints = tuple(k.field for _, k in groups if k.type_name == "int" and not k.needs_check)
        # other sequence keys may hold a placeholder: their own conversion decides
        self.convs: tuple[tuple[str, Key], ...] = tuple((k.field, k) for _, k in groups
                           if isinstance(k, SequenceKey) and k is not variant.frame_key and not k.needs_check)
        self.checks = tuple((k.field, k) for _, k in groups if k.needs_check)
        self.frame_group = frame_group
        self.frame_key = variant.frame_key
        self.frame_field = variant.frame_key.field if variant.frame_key else None
        self.peers: list[_Alt] = []
        self.single: re.Pattern[str] | None = None
        self.spec: SpecBuilder | None = None


class _Group:
    """The templates that can end in one extension, as one regex in rank order."""

    def __init__(self, variants: list[Variant], specs: dict[int, SpecBuilder | None]) -> None:
        self.variants = variants
        alts = [_Alt(v, f"v{i}") for i, v in enumerate(variants)]
        for alt in alts:
            alt.spec = specs[alt.variant.order]
        parts = []
        self.by_index: dict[int, _Alt] = {}
        index = 1
        for alt in alts:
            parts.append(f"({alt.regex})")
            self.by_index[index] = alt
            index += 1 + re.compile(alt.regex).groups
        self.regex = re.compile("|".join(parts)) if parts else None
        for i, alt in enumerate(alts):
            for other in alts[i + 1:]:
                if other.variant.rank == alt.variant.rank and other.template != alt.template:
                    if other.single is None:
                        other.single = re.compile(other.regex)
                    alt.peers.append(other)
        self.digit_safe = all(_digit_safe(v) for v in variants)


def _digit_safe(v: Variant) -> bool:
    """True when changing the digits of a frame number (keeping its width, sign and leading zero)
    cannot change whether or how the file name part of ``v`` matches: no digits among its
    literals, no two keys side by side, no key that looks at digit values."""
    toks = v.tokens
    start = 0
    for i, t in enumerate(toks):
        if isinstance(t, str) and "/" in t:
            start = i
    prev_key = False
    for i, t in enumerate(toks[start:]):
        if isinstance(t, str):
            text = t[t.rfind("/") + 1:] if i == 0 else t
            if any(ch.isdigit() for ch in text):
                return False
            prev_key = False
        else:
            if prev_key or t.digit_sensitive:
                return False
            prev_key = True
    return True


def _extensions(v: Variant) -> set[str] | None:
    """The extensions a path matching ``v`` can have, or None when any (ends in a free key)."""
    toks = v.tokens
    tail = toks[-1]
    if isinstance(tail, str):
        base = tail[tail.rfind("/") + 1:]
        if "." in base:
            return {base[base.rfind(".") + 1:]}
        if "/" in tail or len(toks) == 1:
            return {""}
        return None
    if isinstance(tail, StrKey) and tail.choices and len(toks) > 1 and isinstance(toks[-2], str):
        before = toks[-2][toks[-2].rfind("/") + 1:]
        out = set()
        for c in tail.choices:
            if "." in c:
                out.add(c[c.rfind(".") + 1:])
            elif "." in before:
                out.add(before[before.rfind(".") + 1:] + c)
            else:
                return None
        return out
    return None


class _FrameHit:
    """A cached answer for every frame of one sequence: only the frame number changes."""

    __slots__ = ("proto", "fields", "frame_field", "sign", "s", "n", "z")

    def __init__(self, m: Match, sign: int, s: int, n: int, z: bool) -> None:
        assert m.frame_key is not None  # cached for framed matches only
        self.frame_field, self.sign, self.fields = m.frame_key, sign, dict(m.fields)
        self.proto = dict(m.__dict__)
        # the key is prefix+suffix: the run's position, width and leading zero must agree too
        self.s, self.n, self.z = s, n, z


class TemplateSet:
    """Loaded templates, ready to match. Build it with ``load_templates``."""

    def __init__(self, source: Path, keys: dict[str, Key], templates: dict[str, Template],
                 strings: dict[str, Template], rules: list[PublishRule], has_publishes: bool,
                 warnings: list[str]) -> None:
        self.source = source
        self.keys = keys
        self.templates = templates
        self.strings = strings
        self.rules = rules
        self.has_publishes = has_publishes
        self.warnings = warnings
        self.names = list(templates)
        self._notes: dict[str, str] = {}
        self._rule_of = self._assign_rules()
        self._variants = sorted((v for t in templates.values() for v in t.variants), key=lambda v: (v.rank, v.order))
        self._build_index()
        self._fcache: dict[str, _FrameHit] = {}  # file path minus its last digit run -> answer

    # ---- set-up ---------------------------------------------------------------------------
    def _assign_rules(self) -> dict[str, PublishRule | None]:
        if not self.has_publishes:
            out_all: dict[str, PublishRule | None] = {}
            for name, t in self.templates.items():
                if not _file_like(t):
                    out_all[name] = None
                    self._notes[name] = (f"matches {name}, which looks like a directory template (no '.' in its "
                                         f"last part), so it does not publish by default; name it in a "
                                         f"publishes: section to publish it")
                elif _publish_like(name, t):
                    out_all[name] = _DEFAULT_RULE
                else:
                    out_all[name] = None
                    self._notes[name] = (f"matches {name}, which is not a publish template (neither its name "
                                         f"(*_pub*, *_publish*) nor its folders (a 'publish' folder) say so), so "
                                         f"it does not publish by default: work files, snapshots, autosaves and "
                                         f"work renders stay the artist's; name it in a publishes: section to "
                                         f"publish it")
            return out_all
        out: dict[str, PublishRule | None] = {n: None for n in self.names}
        exact = {r.pattern for r in self.rules if r.pattern in self.templates}
        rule: PublishRule | None  # the second loop below reads `out`, whose values may be None
        for rule in self.rules:
            targets = rule_targets(rule, self.names)
            if not targets:
                self.warnings.append(f"{self.source}: publishes rule '{rule.pattern}' names no loaded template")
            for name in targets:
                if name in exact and rule.pattern != name:
                    continue  # an exact rule wins over patterns
                if out[name] is not None and rule.pattern != name:
                    continue  # the first matching pattern wins
                out[name] = rule
        for name, rule in out.items():
            if rule is None:
                continue
            if not rule.enabled:
                self._notes[name] = f"matches {name}, whose publishes rule '{rule.pattern}' is false"
                out[name] = None
                continue
            have = {f for v in self.templates[name].variants for f, _ in v.fields}
            missing = sorted(rule.references() - have)
            if missing:
                msg = (f"publishes rule '{rule.pattern}' reads {', '.join(missing)}, which template {name} does "
                       f"not have; {name} will not publish")
                self.warnings.append(f"{self.source}: {msg}")
                self._notes[name] = f"matches {name}, but its {msg}"
                out[name] = None
        return out

    def _build_index(self) -> None:
        by_ext: dict[str, list[Variant]] = {}
        wild: list[Variant] = []
        for v in self._variants:
            exts = _extensions(v)
            if exts is None:
                wild.append(v)
            else:
                for e in exts:
                    by_ext.setdefault(e, []).append(v)
        key = lambda v: (v.rank, v.order)  # noqa: E731
        self._specs: dict[int, SpecBuilder | None] = {}
        for v in self._variants:
            rule = self._rule_of.get(v.template)
            tail = v.tokens[-1] if isinstance(v.tokens[-1], str) else None
            tail = tail[tail.rfind("/") + 1:] if tail else None
            self._specs[v.order] = SpecBuilder(rule, {f for f, _ in v.fields}, tail) if rule else None
        self._groups = {e: _Group(sorted(vs + wild, key=key), self._specs) for e, vs in by_ext.items()}
        self._wild = _Group(wild, self._specs) if wild else None
        self._exts = set(by_ext)

    # ---- matching -------------------------------------------------------------------------
    def match(self, relpath: str) -> Match | Miss:
        """Match a POSIX path relative to the root (no leading ``/``). A path spelled otherwise
        than in composed Unicode (NFC: macOS and some copy tools write decomposed accents) is
        matched, keyed and validated in NFC; the match keeps its spelling on disk for I/O."""
        if not relpath.isascii() and respelled(relpath):
            return self._respelled(relpath, self._match(nfc(relpath)))
        return self._match(relpath)

    def _match(self, relpath: str) -> Match | Miss:
        run = _LAST_RUN.match(relpath)
        if run is not None:  # another frame of a sequence seen before? (inlined: the hot path)
            s, e = run.span(1)
            hit = self._fcache.get(relpath[:s] + relpath[e:])
            if hit is not None and hit.s == s and hit.n == e - s and hit.z == (relpath[s] == "0") \
                    and not (hit.sign and relpath[s:e].count("0") == e - s):  # "-00" is no frame
                fs = s - hit.sign
                frame = int(relpath[fs:e])
                fields = hit.fields.copy()
                fields[hit.frame_field] = frame
                d = hit.proto.copy()
                d["fields"], d["frame"], d["frame_span"], d["relpath"] = fields, frame, (fs, e), relpath
                out = _new(Match)
                _setattr(out, "__dict__", d)
                return out
        group = self._groups.get(_ext_of(relpath), self._wild)
        if group is None or group.regex is None or not relpath or relpath[0] == "/":
            return self._miss(relpath)
        m = group.regex.fullmatch(relpath)
        if m is None:
            return self._miss(relpath)
        assert m.lastindex is not None  # every alternative is a group: the one that matched is set
        alt = group.by_index[m.lastindex]
        names = alt.names
        fields = dict(zip(alt.fields, m.group(*names) if len(names) > 1 else (m.group(names[0]),)))
        for f in alt.ints:
            fields[f] = int(fields[f])
        for f, k in alt.convs:
            fields[f] = k.convert(fields[f], check=False)
        if alt.checks:
            try:
                for f, k in alt.checks:
                    fields[f] = k.convert(fields[f], check=True)
            except ValueError:
                return self._slow(relpath, group)
        for peer in alt.peers:
            assert peer.single is not None  # compiled when it became a peer (_Group)
            if peer.single.fullmatch(relpath) and self._slow_one(peer.variant, relpath) is not None:
                return self._ambiguous(relpath, alt.template, peer.template)
        if alt.frame_field is None:  # a single file: no frame, no cache (inlined: the second hot path)
            out = _new(Match)
            spec = alt.spec
            _setattr(out, "__dict__", {
                "template": alt.template, "fields": fields, "frame_key": None, "frame": None, "frame_span": None,
                "padding": 0, "pattern": relpath, "publish": None if spec is None else spec(fields, relpath, None),
                "placeholder": False, "relpath": relpath, "seq_padding": 0})
            return out
        result = self._finish(relpath, alt, fields, m)
        # checks that passed here pass for every same-shaped frame: digit_safe keeps value-checked
        # keys out of file names, and the directory part is the same text
        if run is not None and result.frame is not None and group.digit_safe:
            s, e = run.span(1)
            assert result.frame_span is not None  # a match with a frame has its span
            sign = s - result.frame_span[0]
            if result.frame_span[1] == e and sign in (0, 1):
                if len(self._fcache) >= _CACHE_MAX:
                    self._fcache.clear()
                self._fcache[relpath[:s] + relpath[e:]] = _FrameHit(result, sign, s, e - s, relpath[s] == "0")
        return result

    def _respelled(self, raw: str, m: Match | Miss) -> Match | Miss:
        """The match of a path's NFC spelling, carried back to the path as spelled on disk (the
        frame span and pattern are positions in ``raw``)."""
        if not isinstance(m, Match):
            return m
        d = dict(m.__dict__)
        d["relpath"] = raw
        if m.frame_span is None:
            d["pattern"] = raw
            return _make_match(d)
        s, e = m.frame_span
        composed, text = m.relpath, m.relpath[s:e]
        i = raw.find(text)
        while i >= 0:  # the frame (ASCII) splits both spellings at the same point
            j = i + len(text)
            if nfc(raw[:i]) == composed[:s] and nfc(raw[j:]) == composed[e:]:
                d["frame_span"] = (i, j)
                d["pattern"] = (raw[:i].replace("%", "%%") + printf_token(m.padding)
                                + raw[j:].replace("%", "%%"))
                return _make_match(d)
            i = raw.find(text, i + 1)
        return Miss(raw, closest=m.template,
                    reason=f"matches {m.template} once its decomposed (NFD) accents are composed, but its frame "
                           f"cannot be located in the name as spelled; rename it in composed (NFC) form")

    def _finish(self, relpath: str, alt: _Alt, fields: dict[str, Any], m: re.Match[str]) -> Match:
        """A Match whose template has a frame key."""
        assert alt.frame_group is not None and alt.frame_key is not None  # callers: alt.frame_field is set
        span = m.span(alt.frame_group)
        return _framed(alt.template, fields, alt.frame_key, m.group(alt.frame_group), span, alt.spec, relpath)

    # ---- exact (slow) path ----------------------------------------------------------------
    def _slow_one(self, v: Variant, relpath: str) -> dict[str, tuple[str, Any, int, int]] | None:
        return next(v.parses(relpath), None)

    def _slow(self, relpath: str, group: _Group) -> Match | Miss:
        """Rank order over the group with the exact matcher (used when a post-regex check failed)."""
        best: tuple[Variant, dict[str, tuple[str, Any, int, int]]] | None = None
        for v in group.variants:
            if best is not None and v.rank != best[0].rank:
                break
            parsed = self._slow_one(v, relpath)
            if parsed is None:
                continue
            if best is None:
                best = (v, parsed)
            elif v.template != best[0].template:
                return self._ambiguous(relpath, best[0].template, v.template)
        if best is None:
            return self._miss(relpath)
        v, parsed = best
        fields = {f: val for f, (_, val, _, _) in parsed.items()}
        spec = self._specs[v.order]
        if v.frame_key is None:
            return Match(v.template, fields, None, None, None, 0, relpath, _spec(spec, fields, relpath, None),
                         False, relpath)
        text, _, s, e = parsed[v.frame_key.field]
        return _framed(v.template, fields, v.frame_key, text, (s, e), spec, relpath)

    def _ambiguous(self, relpath: str, a: str, b: str) -> Miss:
        return Miss(relpath, closest=a, ambiguous=(a, b),
                    reason=f"ambiguous: templates {a} and {b} both match with the same specificity "
                           f"(same literal text and key count); make one of them more specific. "
                           f"Not published to either.")

    def _miss(self, relpath: str) -> Miss:
        return Miss(relpath, diagnose=self._diagnose)

    def _diagnose(self, relpath: str) -> tuple[str | None, str]:
        """Closest template (the one the exact matcher follows furthest) and where it stopped."""
        if not relpath:
            return None, "empty path"
        if relpath.startswith("/"):
            return None, f"'{relpath}' is absolute; match paths relative to the root (no leading '/')"
        if not self._variants:
            return None, f"{self.source} defines no path templates"
        best: tuple[tuple[int, bool, bool, int], Variant, Probe] | None = None
        depth = relpath.count("/")
        ext = _ext_of(relpath)
        for v in self._variants:
            probe = Probe()
            if next(v.parses(relpath, probe), None) is not None:
                probe.pos, probe.why = len(relpath) + 1, "matches, but a more specific template was refused"
            # furthest progress first; then the same extension, the same depth, the longest common ending
            rendered = render_tokens(v.tokens)
            score = (probe.pos, ext in (_extensions(v) or ()), rendered.count("/") == depth,
                     _common_suffix(relpath, rendered))
            if best is None or score > best[0]:
                best = (score, v, probe)
        assert best is not None
        score, v, probe = best
        if score[0] <= 0:
            starts = sorted({t.definition.split("/", 1)[0].split("{", 1)[0] for t in self.templates.values()} - {""})
            hint = f"; templates start with {', '.join(s + '/' for s in starts)}" if starts else ""
            return None, f"no template starts like '{relpath.split('/', 1)[0]}'{hint}"
        detail = f"template {v.template}: {_explain_stop(relpath, v, probe)}"
        if ext not in self._exts:
            first = relpath.split("/", 1)[0] + "/" if "/" in relpath else ""
            under = ""
            if first and any(t.definition.startswith(first) for t in self.templates.values()):
                under = f" under '{first}'"
            what = f".{ext}" if ext else "a name without extension"
            return v.template, f"no template ends in {what}{under}; closest is {detail}"
        return v.template, detail

    # ---- reporting ------------------------------------------------------------------------
    def explain(self, relpath: str) -> dict[str, Any]:
        """What ``match`` decides, as JSON-able data (for ``watcher explain``)."""
        m = self.match(relpath)
        if not m:
            return {"matched": False, "closest": m.closest, "reason": m.reason, "ambiguous": list(m.ambiguous)}
        out: dict[str, Any] = {
            "matched": True, "template": m.template, "definition": self.templates[m.template].definition,
            "fields": {k: _jsonable(v) for k, v in m.fields.items()},
            "publish": m.publish.to_dict() if m.publish else None,
            "frame_key": m.frame_key, "frame": m.frame, "padding": m.seq_padding, "placeholder": m.placeholder,
            "pattern": m.sequence_pattern(),
        }
        if m.placeholder:
            out["note"] = PLACEHOLDER_NOTE
        elif m.publish is None:
            out["note"] = self._notes.get(m.template, f"matches {m.template}, which has no publishes rule")
        return out

    def publish_types(self) -> list[str]:
        """The publish types the rules fix (by name, or by a template's fixed file ending); types
        read from each file's own extension are not known until files arrive."""
        return sorted({b.ptype for b in self._specs.values() if b is not None and b.ptype and "{" not in b.ptype})

    def publishing(self) -> list[str]:
        """The templates whose matches publish, in file order (`watcher check` lists them)."""
        return [n for n in self.names if self._rule_of.get(n) is not None]

    def publish_rule(self, template: str) -> PublishRule | None:
        """The rule a template publishes with (None: it does not publish)."""
        return self._rule_of.get(template)

    def match_string(self, text: str, name: str | None = None) -> Match | Miss:
        """Match text against the ``strings:`` templates (all, or the one named)."""
        pool = [self.strings[name]] if name is not None else list(self.strings.values())
        variants = sorted((v for t in pool for v in t.variants), key=lambda v: (v.rank, v.order))
        for v in variants:
            parsed = next(v.parses(text), None)
            if parsed is not None:
                fields = {f: val for f, (_, val, _, _) in parsed.items()}
                return Match(v.template, fields, None, None, None, 0, text, None, False, text)
        return Miss(text, reason=f"no strings template matches '{text}'")


def _explain_stop(relpath: str, v: Variant, probe: Probe) -> str:
    pos = min(max(probe.pos, 0), len(relpath))
    ps = relpath.rfind("/", 0, pos) + 1 if pos < len(relpath) and relpath[pos] != "/" else relpath.rfind("/", 0, pos) + 1
    pe = relpath.find("/", pos)
    pseg = relpath[ps:len(relpath) if pe < 0 else pe]
    rendered = render_tokens(v.tokens)
    tpos = len(render_tokens(v.tokens[:probe.token])) if 0 <= probe.token <= len(v.tokens) else len(rendered)
    tpos += probe.offset
    ts = rendered.rfind("/", 0, tpos) + 1
    te = rendered.find("/", tpos)
    tseg = rendered[ts:len(rendered) if te < 0 else te]
    text = f"'{pseg}' does not fit '{tseg}': {probe.why}"
    depth_p, depth_t = relpath.count("/"), rendered.count("/")
    if depth_p != depth_t:
        text += f" (the path has {_levels(depth_p + 1)}, the template {depth_t + 1})"
    return text


def _file_like(t: Template) -> bool:
    """A template whose last part has a literal '.' names files (``{name}.v{version}.nk``);
    without one it names folders (Toolkit's ``shot_root``, work areas)."""
    last = []
    for tok in reversed(t.variants[0].tokens):
        if isinstance(tok, str):
            last.append(tok[tok.rfind("/") + 1:])
            if "/" in tok:
                break
    return any("." in x for x in last)


def _publish_like(name: str, t: Template) -> bool:
    """Without a ``publishes:`` section, only templates that say they are publishes publish: by
    name (Toolkit's ``*_pub*``/``*_publish*``: ``nuke_shot_pub``, ``maya_shot_publish``) or by a
    ``publish`` folder in their definition (``@shot_root/publish/elements/...``). Work files,
    snapshots and work renders match but stay the artist's (tk-config-default2 names them so)."""
    low = name.lower()
    if fnmatch.fnmatchcase(low, "*_pub*") or low.startswith("pub"):
        return True
    return any(part.lower() == "publish" for part in t.definition.split("/"))


def _ext_of(relpath: str) -> str:
    """What follows the last '.' of the file name ('' when none): the index key."""
    dot = relpath.rfind(".")
    return relpath[dot + 1:] if dot > relpath.rfind("/") else ""


def _framed(template: str, fields: dict[str, Any], key: SequenceKey, text: str, span: tuple[int, int],
            spec: SpecBuilder | None, relpath: str) -> Match:
    """A Match for a template with a frame key, the frame text found at ``span``."""
    padding = key.padding(text)
    placeholder = text[0] not in "-0123456789"
    frame = None if placeholder else int(text)
    fields[key.field] = text if placeholder else frame
    pattern = relpath[:span[0]].replace("%", "%%") + printf_token(padding) + relpath[span[1]:].replace("%", "%%")
    return _make_match({"template": template, "fields": fields, "frame_key": key.field, "frame": frame,
                        "frame_span": span, "padding": padding, "pattern": pattern,
                        "publish": None if placeholder else _spec(spec, fields, relpath, span),
                        "placeholder": placeholder, "relpath": relpath,
                        "seq_padding": padding if placeholder else key.sequence_padding(text)})


def _spec(builder: SpecBuilder | None, fields: dict[str, Any], relpath: str,
          span: tuple[int, int] | None) -> PublishSpec | None:
    return None if builder is None else builder(fields, relpath, span)


def _levels(n: int) -> str:
    return "1 level" if n == 1 else f"{n} levels"


def _common_suffix(a: str, b: str) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _jsonable(v: Any) -> Any:
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return v
