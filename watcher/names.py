"""File names as they come from the OS, made safe to compare, show and send.

POSIX names are bytes; Python hands them over as ``str`` with undecodable bytes as lone
surrogates (``surrogateescape``). Such a string crashes any UTF-8 encode (SQLite, JSON, HTTP,
logs), so every boundary that shows or stores a name goes through here."""
from __future__ import annotations

import unicodedata

_CONTROL = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f"}
_CONTROL |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"}
_CONTROL_ONLY = {c: v for c, v in _CONTROL.items() if c != ord("\\")}


def shown(name: str) -> str:
    """One printable line for logs and messages: control characters (a newline that would forge
    a log line) and undecodable bytes are escaped, everything else is kept as typed."""
    out = name.translate(_CONTROL)
    if _has_surrogates(out):
        out = out.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return out


def one_line(text: str) -> str:
    """``shown`` for text that is already storable (``stored``, a journal column): control
    characters escaped, a backslash kept (escaping it again would double ``stored``'s escapes)."""
    out = text.translate(_CONTROL_ONLY)
    return shown(out) if _has_surrogates(out) else out


def decodable(name: str) -> bool:
    """False when the name holds bytes that are not UTF-8 (it cannot be stored or sent as text)."""
    return not _has_surrogates(name)


def stored(name: str) -> str:
    """The name as a text column or JSON can hold it: itself, or escaped (``shown``) when it
    holds undecodable bytes. Escaping is per character, so a directory's stored form is a prefix
    of its files' stored forms."""
    return name if not _has_surrogates(name) else shown(name)


def nfc(text: str) -> str:
    """The one spelling used to compare names and send them to trackers: macOS and some copy tools
    write decomposed (NFD) accents, typed names are composed (NFC)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def respelled(text: str) -> bool:
    """True when ``text`` is not in the composed (NFC) spelling ``nfc`` compares names in."""
    return not text.isascii() and not unicodedata.is_normalized("NFC", text)


def _has_surrogates(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
