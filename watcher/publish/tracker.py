"""The plumbing every HTTP tracker backend (ShotGrid, ftrack, Kitsu) needs, written once so that
the settings mean the same thing everywhere and a fix lands in all three.

A backend module keeps what is its own: the wire format, the record model and its exactly-once
strategy. From here it takes:

- ``TrackerSettings``: ``timeout``, ``retries``, ``backoff_base``, ``backoff_cap``, ``ca_bundle``,
  ``verify_tls``, ``cache_ttl`` with one meaning each; ``tracker_http()`` turns them into the
  shared ``HttpClient`` (TLS rule: ``verify_tls: false`` > ``ca_bundle`` > system CAs);
- ``config_path()`` for paths relative to the configuration file, ``line_secret()`` (a credential
  refused at start-up unless it is one clean line), ``Scrubber`` so no message can carry a
  configured secret in any spelling;
- ``LookupCache``: positive lookups for ``cache_ttl`` seconds (cachetools' ``TTLCache``);
- ``BearerAuth``: a bearer token kept, renewed before expiry and once after a 401;
- ``check_step()``, ``create_once()``, ``project_of()`` / ``field_value()`` and ``MOVIE_EXTENSIONS``;
- adoption (a record of the same file made by a peer tool is taken, never duplicated):
  ``adopt_once()`` (journaled as adopted before anything else is sent), ``adopted_ref()``,
  ``FolderListing`` (one lookup per folder, kept ``ADOPT_TTL`` seconds) and ``same_file()``;
- reading a publish's files: ``open_regular()`` / ``regular_size()``, the only way a backend reads
  them (never follow a symlink, never block on a FIFO or device swapped in for a file, never read
  outside the publish's root: ``UnsafeFile``);
- tracker frame ranges (``expect_frames: tracker``): ``frame_range_cached()`` (one lookup per
  entity per ``cache_ttl``, a missing range included) and ``frame_range_of()``.
"""
from __future__ import annotations

import errno
import importlib
import logging
import math
import os
import re
import stat as stat_mod
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Hashable, Iterable, TypeVar

from cachetools import TTLCache
from pydantic import Field

from ..errors import ConfigError, PermanentError, PublishError, RetryableError
from ..host import (FILE_ATTRIBUTE_NORMAL, FILE_FLAG_OPEN_REPARSE_POINT, FILE_FLAG_SEQUENTIAL_SCAN, FILE_SHARE_DELETE,
                    FILE_SHARE_READ, FILE_SHARE_WRITE, SHARING_ERRORS, Win32Files)
from ..ignore import inside
from ..model import Job, Publish, TrackerRef
from ..names import shown
from ..secrets import read_secret
from .base import BackendSettings, CheckResult
from .http import HttpClient, HttpError, hide_url_password

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Extensions played as movies (a ShotGrid Version's ``sg_path_to_movie``, a Kitsu preview).
MOVIE_EXTENSIONS = frozenset({"mov", "mp4", "m4v", "avi", "mkv", "webm", "wmv"})

#: Template keys naming a publish's parents, most specific spelling first.
SEQUENCE_KEYS = ("Sequence", "sequence", "seq", "sg_sequence")
EPISODE_KEYS = ("Episode", "episode", "ep", "sg_episode")
ASSET_TYPE_KEYS = ("AssetType", "asset_type", "sg_asset_type", "assettype")


class TrackerSettings(BackendSettings):
    """Settings every HTTP tracker shares. A backend's ``Settings`` subclasses this and
    overrides a default where its tracker needs another (ftrack: slower server, longer timeout)."""

    timeout: float = Field(30.0, gt=0)  # seconds, on every request
    retries: int = Field(3, ge=0)  # per request, on 429/5xx/connection errors
    backoff_base: float = Field(0.5, ge=0)  # seconds, doubled per retry, with jitter
    backoff_cap: float = Field(30.0, ge=0)  # longest wait between two retries
    verify_tls: bool = True  # false: no certificate check at all (a warning is logged)
    ca_bundle: Path | None = None  # PEM file of the studio CA; relative to the configuration file
    cache_ttl: float = Field(300.0, ge=0)  # seconds a looked-up record stays cached; 0: no cache
    adopt: bool = True  # before creating, take a record of the same file the tracker already has


def no_blank_values(mapping: dict[str, str]) -> dict[str, str]:
    """For a name mapping setting (``task_types``, ``asset_types``...): a blank name would match
    nothing on the tracker, so refuse it at start-up rather than at the first publish."""
    for key, value in mapping.items():
        if not str(value).strip():
            raise ValueError(f"{key!r} maps to an empty name")
    return mapping


def config_path(path: Path | str | None, config_dir: Path) -> Path | None:
    """``path`` with ``~`` expanded, relative paths read from the configuration file's folder
    (so a config works wherever the service starts)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(config_dir) / p


def tls_verify(settings: TrackerSettings, config_dir: Path) -> bool | str:
    """What ``requests`` gets as ``verify``: False when ``verify_tls`` is off, else the CA bundle
    when one is set (it must be a file), else True (the system's CAs)."""
    if not settings.verify_tls:
        log.warning("tracker.verify_tls is false: the tracker's TLS certificate is NOT checked%s; "
                    "set tracker.ca_bundle to your studio CA instead",
                    " (tracker.ca_bundle is ignored)" if settings.ca_bundle is not None else "")
        return False
    bundle = config_path(settings.ca_bundle, config_dir)
    if bundle is None:
        return True
    if not bundle.is_file():
        raise ConfigError(f"tracker.ca_bundle: {bundle} is not a file; point it at the PEM file of your "
                          "studio CA (a relative path is read from the configuration file's folder)")
    return str(bundle)


class Scrubber:
    """Replaces the configured secrets by ``***`` in text, and in any str/list/dict value
    (a server may echo a submitted credential in its error body). Each secret is masked in
    every spelling a message may carry it: as is, escaped as ``repr``/JSON write it (a library's
    "invalid header value 'k3y\\n...'"), percent-encoded (a form body echoed back), and line by
    line (a two-line key file). A password in any ``scheme://user:password@host`` is masked too.

    A secret shorter than ``SHORT`` characters is masked only where it stands alone: masking
    every ``t`` of a one-letter test token would garble the message and hide nothing."""

    MASK = "***"
    SHORT = 8

    def __init__(self, *secrets: str | None) -> None:
        found = sorted({v for s in secrets if s for v in spellings(s)}, key=len, reverse=True)
        self._pattern = re.compile("|".join(
            re.escape(s) if len(s) >= self.SHORT else rf"(?<!\w){re.escape(s)}(?!\w)" for s in found)) if found else None

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return hide_url_password(self._pattern.sub(self.MASK, value) if self._pattern else value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self(v) for v in value)
        return value


def spellings(secret: str) -> set[str]:
    """Every way a message may spell ``secret`` (see ``Scrubber``); blank lines left out."""
    import json
    from urllib.parse import quote, quote_plus

    out = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    lines = [line.strip() for line in secret.splitlines()]
    if len(lines) > 1:
        out.update(line for line in lines if line)
    return {s for s in out if s.strip()}


def line_secret(value: Any, file: Path | None, what: str, *, header: bool = False) -> str:
    """A tracker credential from ``value`` (a ``SecretStr``, set in the file or by
    ``WATCHER_TRACKER__...``) or else ``file`` (``read_secret``: surrounding whitespace and an
    editor's final newline stripped), refused at start-up when it is not one line of printable
    characters: a line break inside (a key file holding two lines, a pasted ``\\r``) would reach
    an HTTP header, or be refused by the HTTP library with the secret in its message. ``header``:
    sent in a header, so ASCII only. The message names the setting or the file, never the secret."""
    text = read_secret(value, file, what) or ""  # names an unreadable, empty or non-UTF-8 file itself
    from_file = not (value is not None and value.get_secret_value().strip())
    where = f"{what}_file: {file}" if from_file else f"{what} (or WATCHER_{what.upper().replace('.', '__')})"
    lines = len(text.splitlines())
    if lines > 1:
        raise ConfigError(f"{where}: the secret holds {lines} lines; keep the secret alone, on one line")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ConfigError(f"{where}: the secret holds a control character; keep the secret alone, on one line")
    if header and not text.isascii():
        raise ConfigError(f"{where}: the secret holds a character that is not ASCII (it is sent in an HTTP header); "
                          "check that it was copied whole")
    return text


def tracker_http(settings: TrackerSettings, config_dir: Path, base_url: str, *, scrub: Scrubber,
                 headers: dict[str, str] | None = None,
                 describe_error: Callable[[int, Any], str] | None = None) -> HttpClient:
    """The shared transport configured from the common settings; every error it raises has
    passed through ``scrub``."""
    return HttpClient(base_url, timeout=settings.timeout, verify=tls_verify(settings, config_dir),
                      retries=settings.retries, backoff_base=settings.backoff_base,
                      backoff_cap=settings.backoff_cap, headers=headers, describe_error=describe_error,
                      scrub=scrub)


_MISS = object()


class LookupCache:
    """Positive lookups (projects, entities, types...) kept for ``ttl`` seconds. A miss is not
    kept, so a record created on the tracker meanwhile is found on the next ask. Thread-safe:
    the publisher workers share one backend."""

    def __init__(self, ttl: float, *, maxsize: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._data: TTLCache[Hashable, Any] | None = TTLCache(maxsize, ttl, timer=clock) if ttl > 0 else None
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        if self._data is None:
            return default
        with self._lock:
            return self._data.get(key, default)

    def put(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` unless it is None (a miss); returns it, so ``return cache.put(k, v)``."""
        if value is not None and self._data is not None:
            with self._lock:
                self._data[key] = value
        return value

    def fetch(self, key: Hashable, load: Callable[[], Any], *, fresh: bool = False) -> Any:
        """The cached value, else ``load()`` (kept when not None). ``fresh`` skips the cache."""
        if not fresh:
            hit = self.get(key, _MISS)
            if hit is not _MISS:
                return hit
        return self.put(key, load())

    def drop(self, match: Callable[[Hashable], bool] = lambda _key: True) -> None:
        """Forget the keys ``match`` selects (all by default), e.g. after creating a record."""
        if self._data is None:
            return
        with self._lock:
            for key in [k for k in list(self._data.keys()) if match(k)]:
                self._data.pop(key, None)


@dataclass(frozen=True)
class Token:
    access: str
    refresh: str | None = None
    expires_at: float = math.inf  # on the clock of the BearerAuth that fetched it


class BearerAuth(ABC):
    """Bearer-token requests: the token is kept, renewed before it expires and once after a
    401 (refresh token first, then the credentials). A second refusal is permanent, in the
    tracker's words (``refused``). Thread-safe; one renewal when several threads see the 401."""

    renewable = True  # False for a fixed token (a Kitsu bot): a 401 cannot be helped

    def __init__(self, http: HttpClient, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self._clock = clock
        self._token: Token | None = None
        self._token_lock = threading.Lock()

    @abstractmethod
    def login(self) -> Token:
        """A new token from the configured credentials."""

    def refresh(self, refresh_token: str) -> Token | None:
        """A new token from a refresh token; None (or a PermanentError) falls back to ``login``."""
        return None

    @abstractmethod
    def refused(self, exc: HttpError, method: str, path: str) -> PublishError:
        """The error for a request refused even with a fresh token."""

    def is_auth_failure(self, exc: HttpError) -> bool:
        return exc.status == 401

    def authenticate(self) -> None:
        """Log in now (``watcher check``), whatever token is held."""
        with self._token_lock:
            self._token = self.login()

    def token(self, *, stale: str | None = None) -> str:
        """A live access token. ``stale``: the token a 401 just refused (renewed unless another
        thread already did)."""
        with self._token_lock:
            tok = self._token
            if tok is not None and tok.access != stale and self._clock() < tok.expires_at:
                return tok.access
            new = None
            if tok is not None and tok.refresh:
                try:
                    new = self.refresh(tok.refresh)
                except PermanentError:
                    new = None  # refresh refused: fall back to the credentials
            self._token = new or self.login()
            return self._token.access

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """``HttpClient.request`` with the token; a 401 renews it once, a second is permanent."""
        headers = dict(kwargs.pop("headers", None) or {})
        stale: str | None = None
        for attempt in (0, 1):
            tok = self.token(stale=stale)
            try:
                return self.http.request(method, path, retry=retry,
                                         headers={**headers, "Authorization": f"Bearer {tok}"}, **kwargs)
            except HttpError as exc:
                if not self.is_auth_failure(exc):
                    raise
                if attempt or not self.renewable:
                    raise self.refused(exc, method, path) from None
                stale = tok
        raise AssertionError("unreachable")  # pragma: no cover


def check_step(what: str, step: Callable[[], str | None]) -> CheckResult:
    """One ``watcher check`` line: ``step`` returns the detail, or raises with the tracker's
    words (a PublishError, or a ConfigError for a setting it cannot use)."""
    try:
        return CheckResult(True, what, step() or "")
    except (PublishError, ConfigError) as exc:
        return CheckResult(False, what, str(exc))


def create_once(job: Job, id_key: str, sent_key: str, find: Callable[[], Any | None],
                create: Callable[[], Any]) -> Any:
    """Create one record exactly once across attempts, for a tracker with no uniqueness of its
    own. The id is journaled under ``id_key``; ``sent_key`` is journaled before the create goes
    out, so after an uncertain outcome (or a create whose answer was lost) ``find()`` runs
    first and the create is never resent blindly. ``find``/``create`` return the record's id."""
    rid = job.state.get(id_key)
    if rid is None and (job.uncertain or job.state.get(sent_key)):
        rid = find()
    if rid is None:
        job.remember(**{sent_key: True})
        rid = create()
    if job.state.get(id_key) != rid:
        job.remember(**{id_key: rid})
    return rid


#: Seconds a folder's listing of existing records is kept for adoption: long enough for the files
#: of one folder settling together to share one lookup, short enough that a peer's publish made
#: meanwhile is seen by the next folder visit.
ADOPT_TTL = 10.0


def adopt_once(job: Job, id_key: str, sent_key: str | None, lookup: Callable[[], Any | None]) -> Any | None:
    """The id of a record of the same file that the tracker already holds (made by a peer
    publisher: Toolkit, ftrack Connect, Kitsu), or None. It runs before this job's first create
    only: once ``sent_key`` is journaled the record may be our own, and ``create_once``'s
    ``find`` decides. A hit is journaled as ``{id_key: id, "adopted": True}`` before returning,
    so a retry keeps the adoption and never creates."""
    if job.state.get("adopted"):
        return job.state.get(id_key)
    if job.state.get(id_key) is not None or (sent_key and job.state.get(sent_key)):
        return None
    rid = lookup()
    if rid is not None:
        job.remember(**{id_key: rid, "adopted": True})
    return rid


def adopted_ref(job: Job, id_key: str, url: Callable[[Any], str | None] = lambda _id: None) -> TrackerRef | None:
    """The ``TrackerRef`` of a job that adopted a record (see ``adopt_once``), else None."""
    if not job.state.get("adopted") or job.state.get(id_key) is None:
        return None
    rid = job.state[id_key]
    return TrackerRef(id=str(rid), url=url(rid), adopted=True)


def same_file(records: Iterable[T], path: str, version: int | None, *, path_of: Callable[[T], Any],
              version_of: Callable[[T], Any], ignore_case: bool = False) -> T | None:
    """The record registering ``path`` (and ``version`` when the publish has one: a
    ``republish: new_version`` of the same file is a new record, not the old one), else None.
    With several, the oldest as listed."""
    want = path.lower() if ignore_case else path
    for rec in records:
        got = path_of(rec)
        if got is None:
            continue
        got = str(got).lower() if ignore_case else str(got)
        if got == want and (version is None or version_of(rec) == version):
            return rec
    return None


class FolderListing:
    """What the tracker holds in one folder, fetched once per folder and kept ``ttl`` seconds
    (``ADOPT_TTL``), so the files of one folder settling together cost one lookup, not one
    each. ``add`` keeps a listing right after our own create or update (a record with the same
    ``id`` is replaced)."""

    def __init__(self, ttl: float = ADOPT_TTL, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cache = LookupCache(ttl, clock=clock)

    def get(self, key: Hashable, load: Callable[[], list[Any]]) -> list[Any]:
        return self.cache.fetch(key, load)

    def add(self, key: Hashable, record: Any) -> None:
        rows = self.cache.get(key)
        if rows is not None:
            rid = record.get("id") if isinstance(record, dict) else None
            self.cache.put(key, [r for r in rows if rid is None or not isinstance(r, dict) or r.get("id") != rid]
                           + [record])


def field_value(fields: dict[str, Any], keys: Iterable[str]) -> str | None:
    """The first non-empty template field among ``keys``; exact spelling first, then any case."""
    lower = {str(k).lower(): v for k, v in fields.items()}
    for key in keys:
        value = fields.get(key, lower.get(key.lower()))
        if value not in (None, ""):
            return str(value)
    return None


def project_of(p: Publish, setting: int | str | None, *, key: str | None = None) -> int | str:
    """The project a publish goes to: the template key ``key`` when its fields give it, else
    the publishes rule's project, else ``tracker.project`` (``setting``)."""
    if key:
        value = field_value(p.fields, (key,))
        if value:
            return value
    if p.project:
        return p.project
    if setting not in (None, ""):
        return setting
    tried = ([f"its path gives no template key '{key}'"] if key else []) + \
        ["its publishes rule names no project", "tracker.project is not set"]
    raise PermanentError(f"no project for {p.path}: " + ", ".join(tried)
                         + "; set tracker.project or name the project in the publishes rule")


# ---- reading a publish's files ----------------------------------------------------------------
#
# Admission (roots.py) checks a file when it arrives; a publish reads it seconds or hours later.
# In between it can be replaced: by a symlink (or a parent folder by a symlink) to a file outside
# the root, by a FIFO or a device. Every read for a publish (checksums, sizes, thumbnails,
# previews, uploads) therefore goes through ``open_regular`` / ``regular_size``, which check
# again at read time what is actually opened.
#
# On Windows a read must never get in an artist's way: the file is opened sharing read, write
# and delete (a re-render, or a save that renames over the file, goes through while watcher
# reads), and a sharing violation (a writer that shares nothing) is a retry, never a failure.
# Callers hold a file only while reading it (``with open_regular(...)``), never across a wait.

#: Whether reads go through ``CreateFileW`` (Windows) or ``os.open`` (POSIX). A module value so
#: tests on Linux can drive the Windows code with a fake kernel32.
WINDOWS = sys.platform == "win32"

#: errnos of a read that a later attempt may get through (the rest are permanent).
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EINTR, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                               errno.ETIMEDOUT, errno.ESTALE})
_KINDS = ((stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISCHR, "a character device"),
          (stat_mod.S_ISBLK, "a block device"), (stat_mod.S_ISSOCK, "a socket"), (stat_mod.S_ISDIR, "a directory"),
          (stat_mod.S_ISLNK, "a symlink"))


class UnsafeFile(PermanentError):
    """The file is no longer what admission saw: a symlink, a FIFO, a device or a folder, or it
    now resolves outside its root. Nothing of it is read or sent, and retrying cannot help."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_error(path: str, what: str, exc: OSError) -> PublishError:
    """The publish error for an ``OSError`` met while opening or reading ``path``."""
    words = exc.strerror or str(exc)
    if getattr(exc, "winerror", None) in SHARING_ERRORS:
        return RetryableError(f"cannot read {shown(path)} for its {what}: another program is writing it or holds it "
                              "without sharing (a Windows sharing or lock violation); trying again later")
    if exc.errno == errno.ENOENT:
        return PermanentError(f"{shown(path)} vanished before it was published (its {what} was not read)")
    if exc.errno == errno.ELOOP:
        return UnsafeFile(f"{shown(path)} is a symlink; watcher reads only regular files for the {what} "
                          "(publish the file itself)")
    if exc.errno in _TRANSIENT_ERRNOS:
        return RetryableError(f"cannot read {shown(path)} for its {what}: {words}")
    return PermanentError(f"cannot read {shown(path)} for its {what}: {words}")


def _admit(path: str, what: str, st: os.stat_result, root: str | None) -> None:
    """The one read-time check: ``st`` (of the opened descriptor, or ``lstat``) is a regular
    file, and the path, every symlink followed, is inside ``root`` (a parent folder swapped for
    a link is caught here: ``O_NOFOLLOW`` only guards the last name)."""
    if not stat_mod.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{shown(path)} is {_kind(st.st_mode)}, not a regular file; its {what} is not read")
    if root:
        real_root = os.path.realpath(root)
        if not inside(real_root, path):
            raise UnsafeFile(f"{shown(path)} resolves to {shown(os.path.realpath(path))}, outside its root "
                             f"{shown(root)}; its {what} is not read (a folder or file replaced by a link after it "
                             "settled)")


def open_regular(path: str, what: str = "publish", *, root: str | None = None) -> BinaryIO:
    """``path`` opened for reading, refusing anything but a regular file inside ``root`` (the
    publish's ``root_path``; None only for files watcher made itself, a thumbnail in a temporary
    folder): ``O_NOFOLLOW`` (a symlink is never followed) and ``O_NONBLOCK`` (a FIFO or device
    swapped in for the file never blocks the worker), then ``fstat`` on the open descriptor and
    the containment of its real path, and the real path must still name the very file opened (a
    swap between the two is caught). ``what`` names the read in errors ("checksum",
    "thumbnail", "preview"). Refusals are ``UnsafeFile`` or ``PermanentError``; a transient
    I/O error is a ``RetryableError``.

    On Windows the file is opened by ``CreateFileW`` sharing read, write and delete, with
    ``FILE_FLAG_OPEN_REPARSE_POINT`` for ``O_NOFOLLOW`` (a symlink is opened as itself, and
    ``fstat`` then refuses it); a sharing violation is a ``RetryableError``. Close the file
    before any wait: a handle kept open keeps the file busy for Windows' own checks."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = _open_shared(path) if WINDOWS else os.open(path, flags)
    except OSError as exc:
        raise read_error(path, what, exc) from None
    try:
        st = os.fstat(fd)
        _admit(path, what, st, root)
        if root:
            again = os.stat(os.path.realpath(path))
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                raise RetryableError(f"{shown(path)} was replaced while it was opened for its {what}; "
                                     "trying again later")
        if sys.platform != "win32" and not WINDOWS:
            # a regular file never blocks; clear the flag so reads behave as usual
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise read_error(path, what, exc) from None
    except BaseException:
        os.close(fd)
        raise


def _open_shared(path: str) -> int:
    """Windows: a read-only descriptor on ``path`` from ``CreateFileW`` sharing read, write and
    delete, never following a final symlink; ``Win32Error`` (an ``OSError``) when refused."""
    files = Win32Files()
    handle = files.open(path, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                        flags=FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_SEQUENTIAL_SCAN)
    try:
        fd: int = importlib.import_module("msvcrt").open_osfhandle(handle, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except BaseException:
        files.close(handle)  # the descriptor owns the handle only once it exists
        raise
    return fd


def regular_size(path: str, what: str = "size", *, root: str | None = None) -> int:
    """The size of ``path`` (``lstat``: a symlink is not followed), with the checks of
    ``open_regular`` (a regular file, inside ``root``); nothing is opened for reading (on Windows
    ``lstat`` asks for attributes only, which no share mode refuses)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise read_error(path, what, exc) from None
    _admit(path, what, st, root)
    return st.st_size


# ---- tracker frame ranges ---------------------------------------------------------------------

def frame_range_cached(cache: LookupCache, key: Hashable,
                       load: Callable[[], tuple[int, int] | None]) -> tuple[int, int] | None:
    """``load()`` once per ``key`` (an entity) for the cache's ``cache_ttl``: a range, and also
    the absence of one (so a held candidate polling an entity without a range does not ask the
    tracker each time)."""
    return cache.fetch(("frame range", key), lambda: (load(),))[0]


def _frame(value: Any, name: str, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or number != int(number):
        raise PermanentError(f"{where}: {name} is {value!r}, not a frame number; fix it on the tracker "
                             "or use a literal expect_frames range")
    return int(number)


def frame_range_of(first: Any, last: Any, names: tuple[str, str], where: str) -> tuple[int, int] | None:
    """``(first, last)`` from a tracker's two values (numbers, or numbers as text), None when
    either is unset. A value that is not a whole number, or a range ending before it starts, is a
    ``PermanentError`` naming the fields."""
    a, b = _frame(first, names[0], where), _frame(last, names[1], where)
    if a is None or b is None:
        return None
    if b < a:
        raise PermanentError(f"{where}: {names[1]} {b} is before {names[0]} {a}")
    return a, b


__all__ = ["TrackerSettings", "no_blank_values", "config_path", "tls_verify", "Scrubber", "spellings",
           "line_secret", "tracker_http", "LookupCache", "Token",
           "BearerAuth", "check_step", "create_once", "adopt_once", "adopted_ref", "same_file", "FolderListing",
           "ADOPT_TTL", "field_value", "project_of", "MOVIE_EXTENSIONS",
           "SEQUENCE_KEYS", "EPISODE_KEYS", "ASSET_TYPE_KEYS", "open_regular", "regular_size", "read_error",
           "UnsafeFile",
           "frame_range_cached", "frame_range_of"]
