"""Template keys: the Toolkit key types (``str``, ``int``, ``sequence``, ``timestamp``).

A key knows two things about a piece of path text: the regular expression that proposes it
(one path segment at most, never ``/``) and how to turn the text into a typed value, refusing
it with a sentence a TD can act on. The matcher only proposes substrings; keys decide.
Semantics follow tk-core's ``templatekey.py``; the code is ours.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field  # the Key attribute `field` shadows the name in the class body
from typing import Any

from fileseq import PAD_STYLE_HASH1, FileSequence

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_ .]+$")

# Options we understand for every key type, and the ones Toolkit has that we accept but ignore.
_COMMON = {"type", "alias", "default", "choices", "exclusions", "length",
           "shotgun_entity_type", "shotgun_field_name"}
_BY_TYPE = {
    "str": _COMMON | {"filter_by"},
    "int": _COMMON | {"format_spec", "strict_matching"},
    "sequence": _COMMON | {"format_spec"},
    "timestamp": {"type", "alias", "default", "format_spec"},
}
_IGNORED = {"abstract", "subset", "subset_format"}

# Frame placeholders a sequence key accepts in place of a number (Toolkit's frame specs).
PLACEHOLDER_RE = r"%0?[0-9]*d|#+|@+|\$F[0-9]*|<UDIM>|\$UDIM"
PLACEHOLDER_NOTE = ("a frame placeholder (####, %04d, $F4, @@@@, <UDIM>) stands where the frame number goes: a "
                    "file literally named with a pattern is never a real frame, so it is never published; rename "
                    "or remove it")
_FRAME_RE = r"(?:-(?=[0-9]*[1-9])[0-9]+|[0-9]+)"  # "-0" is no frame: printf never writes it
_UDIM_RE = r"[1-9][0-9]{3}"


class KeyDefinitionError(ValueError):
    """A key's definition is unusable; the loader turns it into a TemplateError naming the file."""


class KeyValueError(ValueError):
    """A piece of path text is not a valid value for a key (the message says why)."""


@dataclass(eq=False)
class Key:
    """Base of the key types. ``name`` is the config name (``nuke.output``); ``field`` the name
    the value gets in ``Match.fields`` (the ``alias`` when given, as Toolkit does)."""

    name: str
    field: str
    default: Any = None
    choices: list[Any] = dataclass_field(default_factory=list)
    exclusions: list[str] = dataclass_field(default_factory=list)
    length: int | None = None
    shotgun_entity_type: str | None = None
    shotgun_field_name: str | None = None

    type_name = "key"
    #: True when the regex alone cannot decide (choices on ints, exclusions, dates...): the
    #: matcher then calls ``convert`` with ``check=True`` after the regex matched.
    needs_check = False
    #: True when acceptance depends on the digits themselves, not only on their count and a
    #: leading zero: the frame-stripped cache stays away from templates using such keys.
    digit_sensitive = False
    #: Greedy keys (numbers) try the longest text first, like their regex does.
    greedy = False

    def pattern(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def fits(self, text: str) -> bool:
        """Whether ``text`` has the shape the key's regex proposes (values are checked by convert)."""
        full = self.__dict__.get("_full")
        if full is None:
            full = self.__dict__["_full"] = re.compile(self.pattern())
        return full.fullmatch(text) is not None

    def convert(self, text: str, check: bool = True) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        return self.type_name

    def _check_common(self, text: str) -> None:
        if self.exclusions and text.lower() in {str(x).lower() for x in self.exclusions}:
            raise KeyValueError(f"'{text}' is excluded for key {self.field} ({self.describe()})")
        if self.length is not None and len(text) != self.length:
            raise KeyValueError(f"'{text}' is not {self.length} characters long, as key {self.field} requires")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class StrKey(Key):
    """One path segment of text, optionally limited by ``filter_by`` or ``choices``."""

    type_name = "str"

    def __init__(self, *, filter_by: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.filter_by = filter_by
        self._custom: re.Pattern[str] | None = None
        if filter_by not in (None, "alphanumeric", "alpha"):
            if not isinstance(filter_by, str):
                raise KeyDefinitionError(f"key {self.name}: filter_by must be alphanumeric, alpha or a regex")
            try:
                self._custom = re.compile(filter_by)
            except re.error as e:
                raise KeyDefinitionError(f"key {self.name}: filter_by {filter_by!r} is not a valid regex: {e}") from None
            if self._custom.groups:
                # capturing groups would collide inside the combined regexes
                self._custom = re.compile(_non_capturing(filter_by))
        for c in self.choices:
            if "/" in str(c):
                raise KeyDefinitionError(f"key {self.name}: choice {c!r} contains '/'; a key is one path segment")
        self.choices = [str(c) for c in self.choices]
        # the regex encodes choices, filters and length; these it cannot
        self.needs_check = bool(self.exclusions or self._custom is not None or (self.length and self.choices))
        self.digit_sensitive = self.needs_check or any(ch.isdigit() for c in self.choices for ch in c)

    def pattern(self) -> str:
        if self.choices:
            alts = sorted(self.choices, key=lambda c: (-len(c), c))
            return "(?:" + "|".join(re.escape(c) for c in alts) + ")"
        if self._custom is not None:
            src = self._custom.pattern
            if src.startswith("^"):
                src = src[1:]
            inner = src[:-1] if src.endswith("$") else src
            if "|" in src or "^" in src or "$" in inner:
                return "[^/]+?"  # too clever to embed: propose any segment, the check decides
            # Toolkit applies filter_by with re.match: a prefix of the value must fit. A trailing
            # `$` pins the end of the value, so the rest of the segment must be empty.
            if src.endswith("$") and not src.endswith("\\$"):
                return f"(?:{src[:-1]})"
            return f"(?:{src})[^/]*?"
        cls = {"alphanumeric": r"[^\W_]", "alpha": r"[^\W_0-9]"}.get(self.filter_by or "", "[^/]")
        if self.length is not None:
            return f"{cls}{{{self.length}}}"
        return cls + "+?"

    def convert(self, text: str, check: bool = True) -> Any:
        if check:
            if "/" in text:
                raise KeyValueError(f"'{text}' spans directories; key {self.field} matches one path segment only")
            if not text:
                raise KeyValueError(f"key {self.field} cannot be empty")
            if self.choices and text not in self.choices:
                raise KeyValueError(f"'{text}' is not one of {', '.join(self.choices)} for key {self.field}")
            if self._custom is not None and not self._custom.match(text):
                raise KeyValueError(f"'{text}' does not fit filter_by {self.filter_by!r} of key {self.field}")
            self._check_common(text)
            if not self.choices and self._custom is None and not self.fits(text):
                raise KeyValueError(f"'{text}' is not a valid value for key {self.field} ({self.describe()})")
        return text

    def describe(self) -> str:
        if self.choices:
            return "str, one of " + ", ".join(self.choices)
        if self._custom is not None:
            return f"str, filter_by {self.filter_by!r}"
        return {"alphanumeric": "str, letters and digits only", "alpha": "str, letters only"}.get(
            self.filter_by or "", "str")


class IntKey(Key):
    """Digits, with Toolkit's ``format_spec`` padding and ``strict_matching`` rules: strict (the
    default with a format_spec) means at least the padded width, and wider numbers must not start
    with 0 (``{version:03}`` takes 001..999 and 1000, not 0100)."""

    type_name = "int"
    greedy = True

    def __init__(self, *, format_spec: Any = None, strict_matching: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.format_spec: str | None = None
        self.zero_padded = False
        self.width = 0
        if format_spec is not None:
            spec = str(format_spec) if isinstance(format_spec, int) else format_spec
            m = re.fullmatch(r"(0?)([1-9][0-9]*)", spec) if isinstance(spec, str) else None
            if not m:
                raise KeyDefinitionError(f"key {self.name}: format_spec {format_spec!r} must be a width like '3' or '03'")
            self.format_spec, self.zero_padded, self.width = spec, m.group(1) == "0", int(m.group(2))
        if strict_matching is not None and not isinstance(strict_matching, bool):
            raise KeyDefinitionError(f"key {self.name}: strict_matching must be true or false, not {strict_matching!r}")
        if strict_matching is not None and self.format_spec is None:
            raise KeyDefinitionError(f"key {self.name}: strict_matching needs a format_spec")
        self.strict = bool(self.format_spec is not None and strict_matching is not False)
        try:
            self.choices = [int(c) for c in self.choices]
        except (TypeError, ValueError):
            raise KeyDefinitionError(f"key {self.name}: choices must be integers") from None
        self.needs_check = bool(self.choices or self.exclusions or self.length is not None)
        self.digit_sensitive = bool(self.choices or self.exclusions)

    def pattern(self) -> str:
        w = self.width
        if not self.strict:
            return "[0-9]+" if self.zero_padded or not self.format_spec else " *[0-9]+"
        wider = f"[1-9][0-9]{{{w},}}"
        if self.zero_padded:
            return f"(?:{wider}|[0-9]{{{w}}})"
        exact = [f" {{{k}}}[1-9][0-9]{{{w - k - 1}}}" for k in range(w)] + [f" {{{w - 1}}}0"]
        return "(?:" + "|".join([wider] + exact) + ")"

    def convert(self, text: str, check: bool = True) -> Any:
        if check:
            if not self.fits(text):
                raise KeyValueError(f"'{text}' is not a valid value for key {self.field} ({self.describe()})")
            self._check_common(text)
        value = int(text)
        if check and self.choices and value not in self.choices:
            raise KeyValueError(f"{value} is not one of {', '.join(map(str, self.choices))} for key {self.field}")
        return value

    def describe(self) -> str:
        if self.format_spec is None:
            return "int"
        return f"int, format {self.format_spec}" + ("" if self.strict else ", any width")

    def format(self, value: int) -> str:
        return f"%{self.format_spec}d" % value if self.format_spec else "%d" % value


class SequenceKey(IntKey):
    """A frame number: any width, negative allowed, or a placeholder (``%04d``, ``####``,
    ``@@@@``, ``$F4``, ``<UDIM>``). A UDIM key (named UDIM, or defaulting to ``<UDIM>``) takes
    4-digit tiles."""

    type_name = "sequence"

    def __init__(self, **kw: Any) -> None:
        kw.pop("strict_matching", None)
        super().__init__(**kw)
        self.strict = False
        self.udim = self.name.split(".")[-1].upper() == "UDIM" or str(self.default) in ("<UDIM>", "$UDIM")
        # Toolkit treats "01" (its default) as unpadded; UDIM tiles are always 4 digits.
        if self.width <= 1:
            self.zero_padded, self.width = (True, 4) if self.udim else (False, 0)

    def pattern(self) -> str:
        return f"(?:{_UDIM_RE if self.udim else _FRAME_RE}|{PLACEHOLDER_RE})"

    def convert(self, text: str, check: bool = True) -> Any:
        if check and not self.fits(text):
            raise KeyValueError(f"'{text}' is not a frame number or frame placeholder for key {self.field} "
                                f"({self.describe()})")
        if text[0] in "-0123456789":
            if check:
                self._check_common(text)
            return int(text)
        return text  # a placeholder stays text; Match.frame is None then

    def describe(self) -> str:
        if self.udim:
            return "sequence, UDIM tiles"
        return f"sequence, format {self.format_spec}" if self.width else "sequence"

    def padding(self, text: str) -> int:
        """The printf width that writes ``text`` back exactly (0 = ``%d``)."""
        if text[0] not in "-0123456789":
            return placeholder_padding(text)
        return frame_padding(text, self.width)

    def sequence_padding(self, text: str) -> int:
        """The padding of the sequence this frame belongs to (see ``sequence_padding``)."""
        if text[0] not in "-0123456789":
            return placeholder_padding(text)
        return sequence_padding(text, self.width)


class TimestampKey(Key):
    """A date/time written with a strftime ``format_spec`` (Toolkit default
    ``%Y-%m-%d-%H-%M-%S``); the value is a ``datetime``."""

    type_name = "timestamp"
    needs_check = True
    digit_sensitive = True
    greedy = True
    _DIRECTIVES = {"Y": "[0-9]{4}", "y": "[0-9]{2}", "m": "[0-9]{1,2}", "d": "[0-9]{1,2}", "H": "[0-9]{1,2}",
                   "I": "[0-9]{1,2}", "M": "[0-9]{1,2}", "S": "[0-9]{1,2}", "f": "[0-9]{1,6}", "j": "[0-9]{1,3}",
                   "p": "[A-Za-z]+", "b": "[A-Za-z]+", "B": "[A-Za-z]+", "a": "[A-Za-z]+", "A": "[A-Za-z]+",
                   "z": "[+-][0-9]{4}", "%": "%"}

    def __init__(self, *, format_spec: Any = "%Y-%m-%d-%H-%M-%S", **kw: Any) -> None:
        super().__init__(**kw)
        if not isinstance(format_spec, str) or not format_spec:
            raise KeyDefinitionError(f"key {self.name}: format_spec must be a strftime string like '%Y-%m-%d'")
        self.format_spec = format_spec
        parts, i = [], 0
        while i < len(format_spec):
            ch = format_spec[i]
            if ch == "%" and i + 1 < len(format_spec):
                d = format_spec[i + 1]
                if d not in self._DIRECTIVES:
                    raise KeyDefinitionError(f"key {self.name}: format_spec directive %{d} is not supported")
                parts.append(self._DIRECTIVES[d])
                i += 2
            else:
                if ch == "/":
                    raise KeyDefinitionError(f"key {self.name}: format_spec must not contain '/'")
                parts.append(re.escape(ch))
                i += 1
        self._pattern = "".join(parts)

    def pattern(self) -> str:
        return self._pattern

    def convert(self, text: str, check: bool = True) -> Any:
        try:
            if check and not self.fits(text):
                raise ValueError(text)
            return _dt.datetime.strptime(text, self.format_spec)
        except ValueError:
            raise KeyValueError(f"'{text}' is not a date in the format {self.format_spec} of key {self.field}") from None

    def describe(self) -> str:
        return f"timestamp, format {self.format_spec}"


KEY_TYPES: dict[str, type[Key]] = {"str": StrKey, "int": IntKey, "sequence": SequenceKey, "timestamp": TimestampKey}


def make_key(name: str, data: Any) -> tuple[Key, list[str]]:
    """Build one key from its ``keys:`` entry. Returns the key and the notes about options it
    ignores; raises KeyDefinitionError for a definition that cannot work."""
    if not isinstance(name, str) or not KEY_NAME_RE.match(name):
        raise KeyDefinitionError(f"key {name!r}: names may only use letters, digits, '_', '.' and spaces")
    if not isinstance(data, dict):
        raise KeyDefinitionError(f"key {name}: expected a mapping with a 'type', got {type(data).__name__}")
    kind = data.get("type")
    if kind not in KEY_TYPES:
        got = "no type" if kind is None else f"type {kind!r}"
        raise KeyDefinitionError(f"key {name}: {got}; valid types are {', '.join(KEY_TYPES)}")
    notes = []
    kw: dict[str, Any] = {}
    for opt, value in data.items():
        if opt in _BY_TYPE[kind]:
            if opt not in ("type", "alias"):
                kw[opt] = value
        elif opt in _IGNORED:
            notes.append(f"key {name}: option '{opt}' is not supported and is ignored")
        else:
            notes.append(f"key {name}: unknown option '{opt}' for a {kind} key is ignored")
    alias = data.get("alias") or name
    if not isinstance(alias, str) or not KEY_NAME_RE.match(alias):
        raise KeyDefinitionError(f"key {name}: alias {alias!r} is not a valid key name")
    choices = kw.pop("choices", None)
    if isinstance(choices, dict):
        choices = list(choices)  # Toolkit's {value: label} form: the keys are the values
    elif choices is not None and not isinstance(choices, list):
        raise KeyDefinitionError(f"key {name}: choices must be a list or a mapping")
    exclusions = kw.pop("exclusions", None) or []
    if not isinstance(exclusions, list):
        raise KeyDefinitionError(f"key {name}: exclusions must be a list")
    length = kw.pop("length", None)
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise KeyDefinitionError(f"key {name}: length must be a positive integer")
    key = KEY_TYPES[kind](name=name, field=alias, choices=list(choices or []),
                          exclusions=[str(x) for x in exclusions], length=length, **kw)
    _check_default(key)
    return key, notes


def _check_default(key: Key) -> None:
    d = key.default
    if d is None or isinstance(key, TimestampKey):
        return
    try:
        text = d if isinstance(d, str) else str(d)
        if isinstance(key, IntKey) and not isinstance(key, SequenceKey) and not isinstance(d, str):
            text = key.format(int(d))
        key.convert(text, check=True)
    except (KeyValueError, ValueError) as e:
        raise KeyDefinitionError(f"key {key.name}: default {d!r} is not valid: {e}") from None


def _non_capturing(src: str) -> str:
    """Turn ``(`` groups of a user regex into ``(?:`` so they cannot shift our group numbers."""
    return re.sub(r"(?<!\\)\((?![?*])", "(?:", src)


# ---- frames -------------------------------------------------------------------------------

def placeholder_padding(token: str) -> int:
    """Width of a frame placeholder (``####`` 4, ``%04d`` 4, ``$F4`` 4, ``<UDIM>`` 4, ``%d`` 0),
    read with fileseq (one ``#`` per digit, as Toolkit writes them)."""
    try:
        n = FileSequence.getPaddingNum(token, pad_style=PAD_STYLE_HASH1)
    except Exception:  # fileseq raises its own ValueError subclasses on odd tokens
        return 0
    return n if n > 1 else 0


def frame_padding(text: str, width: int = 0) -> int:
    """The printf width that reproduces ``text`` (``'%0{p}d' % int(text) == text``; 0 means
    ``%d``). ``width`` is the key's format_spec width: a 4-padded key keeps ``1001`` and
    ``10000`` in one sequence."""
    digits = text.lstrip("-")
    if len(digits) > 1 and digits[0] == "0":
        return len(text)
    if width > 1 and len(text) >= width:
        return width
    return 0


def sequence_padding(text: str, width: int = 0) -> int:
    """The padding of the sequence a frame belongs to (what its candidate key holds), where
    ``frame_padding`` is the printf width of this one text. They differ in one case: a negative
    frame whose digits are zero-padded to the key's width (``-0003`` beside ``0002``, as some
    writers pad the digits and not the sign; printf writes ``-003``) belongs to the sequence of
    that width. Without a key width the two spellings cannot be told apart; printf's is used."""
    p = frame_padding(text, width)
    if width > 1 and text[0] == "-" and len(text) == width + 1 and p == width + 1:
        return width
    return p


def printf_token(padding: int) -> str:
    return f"%0{padding}d" if padding else "%d"


def format_frame(frame: int, padding: int) -> str:
    """The frame as it appears on disk for a sequence of this padding."""
    return printf_token(padding) % frame
