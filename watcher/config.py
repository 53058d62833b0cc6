"""Settings: one YAML file plus ``WATCHER_*`` environment overrides (nested keys joined with
``__``), validated into typed models. Every error names the file, the key path and the reason,
and start-up stops there (exit code 2)."""
from __future__ import annotations

import difflib
import ipaddress
import json
import os
import socket
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import paths
from .errors import ConfigError
from .names import shown
from .paths import OSPaths, RootPath, RootPathError

DEFAULT_CONFIG = "watcher.yml"
ENV_PREFIX = "WATCHER_"
# Environment variables that are not settings (read by the CLI or the tests, never validated).
NOT_SETTINGS = {"WATCHER_CONFIG", "WATCHER_SOAK_SEED"}


def default_state_dir(config_file: Path | None = None, journal: str | None = None) -> Path:
    """Where ``status.json``, the lock (and the default journal) live when ``state_dir`` is not
    set, so that two configurations never share one: ``$STATE_DIRECTORY`` under systemd (its
    first entry), else the folder of a SQLite journal, else one folder per configuration file in
    the OS's place for application state (``paths.agent_dirs``): Linux
    ``$XDG_STATE_HOME/watcher/<name>-<hash of its path>`` (``~/.local/state/...``, as always),
    macOS ``~/Library/Application Support/watcher/...``, Windows ``%LOCALAPPDATA%\\watcher\\...``."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if journal and journal.startswith("sqlite:///"):
        return Path(journal[len("sqlite:///"):]).parent
    return Path(paths.agent_dirs(None if config_file is None else str(config_file)).state)


class Observer(str, Enum):
    """``observer:`` of a root. AUTO is decided when the configuration loads (``resolve_observer``):
    POLLING on a network file system, NATIVE elsewhere."""

    AUTO = "auto"
    NATIVE = "native"
    POLLING = "polling"


class EntityScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    name: str


class RootSettings(BaseModel):
    """One watched tree. ``project``/``entity`` pin a vendor drop folder to one show or shot:
    they override what the template says."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    # this OS's spelling, as written (never resolved: a mapped P:\\ stays P:\\). In the file, a
    # path or a mapping per OS ({linux: ..., darwin: ..., windows: ...}, or Toolkit's roots.yml
    # keys); the whole mapping is ``os_paths``
    path: Path
    templates: Path
    ignore: list[str] = Field(default_factory=list)
    # a file at the top of the share: missing, the share is taken for not mounted (root down)
    marker: str | None = None
    observer: Literal["auto", "native", "polling"] = Observer.AUTO.value
    poll_interval: float = Field(default=10.0, gt=0)
    settle_seconds: float | None = Field(default=None, ge=0)
    sequence_settle_seconds: float | None = Field(default=None, ge=0)
    republish: Literal["never", "new_version", "update"] = "never"
    # files already on disk before the journal first saw this root: published like new ones, or
    # recorded as baseline (known, never published); see README "Adopting watcher on an existing tree"
    existing: Literal["publish", "baseline"] = "publish"
    # agents sharing a journal: "one" of them watches this root at a time (the others stand by and
    # take it over when it stops or goes silent: the storage-server deployment, where any agent
    # sees every write); "every" agent that has it watches it (workstations on a share, each
    # seeing only its own writes through a native observer)
    watched_by: Literal["one", "every"] = "one"
    project: str | None = None
    entity: EntityScope | None = None
    on_publish: list[str] = Field(default_factory=list)  # webhook URLs, added to the global ones
    _os_paths: OSPaths | None = PrivateAttr(default=None)  # the per-OS mapping, when the file gave one
    _observer_note: str | None = PrivateAttr(default=None)  # why `auto` chose what it chose (logged at load)
    _watch_note: str | None = PrivateAttr(default=None)  # a native network root one agent watches for all (warned)

    @field_validator("on_publish")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        return _webhook_urls(v)

    @field_validator("path", mode="before")
    @classmethod
    def _this_os(cls, v: Any, info: ValidationInfo) -> Any:
        """A per-OS mapping becomes this OS's spelling (every spelling checked in its OS's syntax);
        the error names the root and the key to add."""
        if isinstance(v, (str, os.PathLike)) or not isinstance(v, Mapping):
            return v  # a plain path (relative ones resolve against the file), or pydantic's own error
        try:
            return paths.root_spelling(str(info.data.get("name", "?")), v)
        except RootPathError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("marker")
    @classmethod
    def _marker(cls, v: str | None) -> str | None:
        if v is None:
            return v
        names = v.replace("\\", "/").split("/")
        if not v.strip() or v.startswith(("/", "\\")) or ":" in v or ".." in names or not all(names):
            raise ValueError(f"{v!r} is not a path inside the root; name a file at the top of the share, "
                             "for example .watcher-root")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _keep_os_paths(cls, data: Any, handler: Callable[[Any], "RootSettings"]) -> "RootSettings":
        root = handler(data)
        raw = data.get("path") if isinstance(data, Mapping) else None
        if isinstance(raw, Mapping):
            root._os_paths = paths.parse_os_paths(root.name, raw)  # valid: the field validator checked it
        return root

    @property
    def os_paths(self) -> OSPaths:
        """The root's spelling on every OS the configuration gives one for (the trackers match
        storages and locations through them); a plain ``path`` is the same on every OS."""
        if self._os_paths is not None:
            return self._os_paths
        return OSPaths(shared=str(self.path))

    @property
    def watch_note(self) -> str | None:
        """Why ``watched_by: one`` may miss files on this root (None: it will not), for the log."""
        return self._watch_note

    @property
    def observer_note(self) -> str | None:
        """What ``observer: auto`` chose and why (None: not decided by auto), for the log."""
        return self._observer_note


def resolve_observer(root: RootSettings, probe: Callable[[str], paths.Filesystem] = paths.filesystem_of) -> None:
    """``observer: auto`` becomes ``polling`` on a network file system (native events miss other
    machines' writes there) and ``native`` elsewhere; the choice, naming the file system type,
    is kept in ``observer_note`` for the log."""
    if root.observer != Observer.AUTO.value:
        if root.observer == Observer.NATIVE.value and root.watched_by == "one" and root._watch_note is None:
            fs = probe(str(root.path))
            if fs.network:  # native events there are this machine's writes only
                root._watch_note = (
                    f"root {root.name}: watched natively on a network file system ({fs.fstype}), where each machine "
                    "sees only its own writes; if several agents share this root, set `watched_by: every` on it (or "
                    "let `observer: auto` poll it), or the one agent that watches it misses the others' files")
        return
    fs = probe(str(root.path))
    if fs.network:
        root.observer = Observer.POLLING.value
        root._observer_note = (f"root {root.name}: {shown(str(root.path))} is on a network file system ({fs.fstype} "
                               f"at {shown(fs.mount_point)}): watching it by polling every {root.poll_interval:g} s "
                               "(set `observer: native` on the root to override)")
    else:
        root.observer = Observer.NATIVE.value
        what = f"a local file system ({fs.fstype})" if fs.fstype else "a file system of unknown type"
        root._observer_note = f"root {root.name}: {shown(str(root.path))} is on {what}: watching it natively"


def _webhook_urls(v: list[str]) -> list[str]:
    for url in v:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return v


def parse_http_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``":9464"`` (loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:9464)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address (127.0.0.0/8, ::1).
    An empty host, ``0.0.0.0`` and ``::`` mean every interface: not loopback."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace stripped); refuses an empty, unreadable or
    non-UTF-8 file, naming it (the one secret-file reader: ``secrets.read_secret``)."""
    from .secrets import read_secret

    return read_secret(None, Path(path), "http_token") or ""


def http_problem(http: str | None, token_file: Path | None) -> str | None:
    """Why ``http`` cannot be used as configured (None: it can)."""
    if not http:
        return None
    try:
        host, _ = parse_http_address(http)
    except ValueError as exc:
        return str(exc)
    if not is_loopback(host) and token_file is None:
        return (f"{http} is not a loopback address; set http_token_file to a file holding a token "
                "(clients then send 'Authorization: Bearer TOKEN')")
    return None


class HealthSettings(BaseModel):
    """Thresholds of `watcher status` and ``/healthz``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_pending_age: float = Field(default=3600.0, gt=0)  # oldest pending publish older than this: unhealthy
    fail_on_failed: bool = True  # parked (failed) publishes or webhook deliveries make the agent unhealthy


class TrackerSettings(BaseModel):
    """``backend`` picks the plug-in; the other keys are that backend's own settings,
    validated by it at start-up."""

    model_config = ConfigDict(extra="allow")
    backend: str = "local"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        # here, not at start-up: the error then names WATCHER_TRACKER__BACKEND when it set the value
        from importlib.metadata import entry_points

        from .publish import BUILTIN

        if v not in BUILTIN:
            known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group="watcher.backends")})
            if v not in known:
                raise ValueError(f"unknown backend {v!r}; known: {', '.join(known)}")
        return v

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    # no inf/nan: WATCHER_SETTLE_SECONDS=inf would hold every file forever without a word
    model_config = SettingsConfigDict(env_prefix="WATCHER_", env_nested_delimiter="__", extra="forbid",
                                      allow_inf_nan=False)

    roots: list[RootSettings] = Field(min_length=1)
    settle_seconds: float = Field(default=5.0, ge=0)
    sequence_settle_seconds: float | None = Field(default=None, ge=0)
    # a sequence seen as one frame waits this long for a second (a farm's first frame may come
    # well before the next); a sequence's quiet window stretches to pace_factor x the longest gap
    # seen between its frames; max_wait bounds every wait, after it a candidate is decided
    first_frame_wait: float = Field(default=30.0, ge=0)
    pace_factor: float = Field(default=3.0, ge=1)
    max_wait: float = Field(default=4 * 3600.0, gt=0)
    # a file rewritten this soon after its publish amends that publish (same record, new size)
    amend_window: float = Field(default=300.0, ge=0)
    state_dir: Path | None = None  # resolved by load_settings / the validator: see default_state_dir
    journal: str | None = None
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    workers: int = Field(default=4, ge=1, le=64)
    max_attempts: int = Field(default=8, ge=1)
    # files held in memory while they settle; beyond it, new arrivals are left on disk and their
    # folders rescanned once the backlog drains (a huge drop cannot exhaust memory)
    max_settling_files: int = Field(default=500_000, ge=100)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_cap_seconds: float = Field(default=600.0, gt=0)
    rescan_interval: float = Field(default=3600.0, ge=0)
    # a publish being made is its agent's this long without renewal (renewed every sixth of it);
    # a frozen or cut-off agent's claims move to another agent after it
    lease_seconds: float = Field(default=900.0, ge=5)
    # an agent silent this long (no heartbeat; it beats every third of it) is taken as gone: the
    # roots it watched are taken over by another agent, which rescans them
    agent_timeout_seconds: float = Field(default=30.0, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # the log in a file, rotated (10 MB x 5), instead of stderr; without a console (pythonw) the
    # default is <the OS's log folder>/watcher/<config>-<hash>/watcher.log
    log_file: Path | None = None
    http: str | None = None  # "127.0.0.1:9464": /metrics and /healthz; off when unset
    http_token_file: Path | None = None  # required when http binds anything but loopback
    on_publish: list[str] = Field(default_factory=list)  # webhook URLs for every root
    webhook_secret: SecretStr | None = None  # HMAC-SHA256 key; or webhook_secret_file
    webhook_secret_file: Path | None = None
    webhook_max_attempts: int = Field(default=20, ge=1)
    webhook_timeout: float = Field(default=10.0, gt=0)
    health: HealthSettings = Field(default_factory=HealthSettings)
    config_file: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: load_settings merges the environment into the file itself
        # (list-aware, so WATCHER_ROOTS__0__PATH works, and errors name the variable).
        return (init_settings,)

    @field_validator("on_publish")
    @classmethod
    def _hook_urls(cls, v: list[str]) -> list[str]:
        return _webhook_urls(v)

    @field_validator("http")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None:
            parse_http_address(v)
        return v

    @field_validator("journal")
    @classmethod
    def _journal_url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:  # a plain path holds no password: safe to echo
            raise ValueError(f"{v!r} is a path, not a journal URL; write sqlite:///{v} "
                             "(four slashes for an absolute path) or postgresql://user@host/db")
        if v is not None and not v.startswith(("sqlite://", "postgresql://", "postgres://")):
            scheme = v.split("://", 1)[0] if "://" in v else v[:12]  # never echo a password in the URL
            raise ValueError(f"'{scheme}://...' is not a journal URL; use sqlite:////abs/path.db or "
                             "postgresql://user@host/db")
        return v

    @model_validator(mode="after")
    def _unique_roots(self) -> "Settings":
        seen: set[str] = set()
        for root in self.roots:
            if root.name in seen:
                raise ValueError(f"two roots are named {root.name!r}; root names must be unique")
            seen.add(root.name)
        problem = http_problem(self.http, self.http_token_file)
        if problem:
            raise ValueError(f"http: {problem}")
        if self.state_dir is None:
            self.state_dir = default_state_dir(None, self.journal)
        return self

    def webhook_key(self) -> bytes | None:
        """The HMAC key for webhook signatures (None: deliveries are not signed)."""
        from .secrets import read_secret

        text = read_secret(self.webhook_secret, self.webhook_secret_file, "webhook_secret", required=False)
        return text.encode() if text else None

    def http_token(self) -> str | None:
        return None if self.http_token_file is None else read_token(self.http_token_file)

    def hooks_for(self, root: str) -> list[str]:
        """Webhook URLs for a publish of ``root``: the global ones, then the root's own."""
        own = next((r.on_publish for r in self.roots if r.name == root), [])
        return list(dict.fromkeys([*self.on_publish, *own]))

    def journal_url(self) -> str:
        assert self.state_dir is not None  # set by the validator
        return self.journal or f"sqlite:///{self.state_dir / 'journal.db'}"

    def settle_for(self, root: RootSettings) -> tuple[float, float]:
        """(file quiet window, sequence quiet window) in force for a root."""
        settle = root.settle_seconds if root.settle_seconds is not None else self.settle_seconds
        if root.settle_seconds is None and root.observer == "polling":
            # NFS/SMB: another host's writes show only at the next poll, and attribute caches
            # (actimeo) can hide growth for seconds more: be patient by default
            settle = max(settle, 3 * root.poll_interval)
        seq = root.sequence_settle_seconds if root.sequence_settle_seconds is not None else self.sequence_settle_seconds
        return settle, settle if seq is None else seq


# pydantic error types of a value with the wrong shape (a string where a list or mapping belongs)
_LIST_ERRORS = frozenset({"list_type", "tuple_type"})
_MAPPING_ERRORS = frozenset({"dict_type", "model_type", "model_attributes_type"})


def key_path(loc: tuple[Any, ...]) -> str:
    """('roots', 1, 'path') -> 'roots[1].path'"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The setting names valid at ``loc`` (for "did you mean"); [] when unknown (extras)."""
    from typing import get_args

    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        nxt = None
        for t in (field.annotation, *get_args(field.annotation)):
            for a in (t, *get_args(t)):
                if isinstance(a, type) and issubclass(a, BaseModel):
                    nxt = a
        model = nxt
    return list(getattr(model, "model_fields", {})) if model is not None else []


def format_validation(source: str, exc: ValidationError, prefix: str = "",
                      env: Mapping[tuple[str, ...], str] | None = None, model: Any = None) -> str:
    """One line per problem: ``SOURCE: key.path: reason``. ``env`` maps key paths set from the
    environment to their variable, which is then named instead of the file."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        path = key_path(loc)
        if prefix:
            path = prefix + ("" if path.startswith("[") else ".") + path if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            valid = (_fields_at(model, loc[:-1]) if model is not None
                     else _fields_at(Settings, (*prefix.split("."), *loc[:-1]) if prefix else loc[:-1]))
            valid = [v for v in valid if v != "config_file"]
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6) if loc else []
            msg = (f"unknown setting; did you mean {close[0]!r}?" if close
                   else "unknown setting (check the spelling; see `watcher init` for the reference)")
        where = source
        full = tuple(str(p).lower() for p in ((*prefix.split("."), *loc) if prefix else loc))
        for keys, var in (env or {}).items():
            if full[:len(keys)] == keys:
                where = f"{var} (environment)"
                if err["type"] in _LIST_ERRORS and len(keys) == len(full):
                    msg += f"; write the list as JSON ({var}='[...]'), or set one entry with {var}__0=..."
                elif err["type"] in _MAPPING_ERRORS and len(keys) == len(full):
                    msg += f"; write the mapping as JSON ({var}='{{\"key\": ...}}'), or set one key with {var}__KEY=..."
                break
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``WATCHER_A__B__0__C=v`` -> {("a", "b", "0", "c"): ("WATCHER_A__B__0__C", v)}. A value
    that is a JSON list or object (``WATCHER_ON_PUBLISH='["https://..."]'``) is decoded."""
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for var, value in sorted(environ.items()):
        if not var.upper().startswith(ENV_PREFIX) or var.upper() in NOT_SETTINGS:
            continue
        keys = tuple(k.lower() for k in var[len(ENV_PREFIX):].split("__"))
        if not all(keys):
            continue
        parsed: Any = value
        if value.strip().startswith(("[", "{")):
            try:
                parsed = json.loads(value)
            except ValueError:
                pass
        out[keys] = (var, parsed)
    return out


def apply_env(data: dict[str, Any], overrides: Mapping[tuple[str, ...], tuple[str, Any]]) -> dict[str, Any]:
    """Merge the environment over the file's data. A number after a list setting indexes it
    (``WATCHER_ROOTS__0__PATH``); the index one past the end appends an entry."""
    for keys, (var, value) in overrides.items():
        node: Any = data
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) > len(node):
                    raise ConfigError(f"{var} (environment): {key_path(keys[:i])} has {len(node)} entries; "
                                      f"use an index from 0 to {len(node)}")
                idx = int(k)
                if idx == len(node):
                    node.append({})
                if last:
                    node[idx] = value
                else:
                    if not isinstance(node[idx], (dict, list)):
                        node[idx] = {}
                    node = node[idx]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"{var} (environment): {key_path(keys[:i])} is not a mapping")
            match = next((n for n in node if isinstance(n, str) and n.lower() == k), k)
            if last:
                node[match] = value
            else:
                if not isinstance(node.get(match), (dict, list)):
                    node[match] = {}
                node = node[match]
    return data


def load_settings(path: str | os.PathLike[str] | None = None, *, check_paths: bool = True,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and resolve the configuration. Relative paths in the file resolve
    against the file's folder; ``WATCHER_*`` variables override the file. Raises
    ``ConfigError`` with one line per problem, naming the file or the variable."""
    cfg = Path(path or os.environ.get("WATCHER_CONFIG") or DEFAULT_CONFIG)
    source = str(cfg)
    try:
        text = cfg.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file; create one with `watcher init` or pass -c/--config") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({_undecodable(exc)}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, not {type(data).__name__}")
    overrides = env_overrides(os.environ if environ is None else environ)
    data = apply_env(data, overrides)
    env_keys = {keys: var for keys, (var, _) in overrides.items()}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc, env=env_keys)) from None
    base = cfg.resolve().parent
    settings.config_file = cfg.resolve()
    _refuse_nul(settings, source, env_keys)
    problems = []
    for i, root in enumerate(settings.roots):
        # as the studio declares it (a symlinked mount, autofs): what the tracker is sent and
        # what storages are matched against; containment checks use the real path (roots.py)
        root.path = _absolute(base, root.path)
        root.templates = _resolve(base, root.templates)
        if check_paths and not root.path.is_dir():
            what = "does not exist" if not root.path.exists() else "is not a directory"
            problems.append(f"{_source(source, env_keys, ('roots', str(i), 'path'))}: roots[{i}].path: {root.path} {what}")
        if not root.templates.is_file():
            problems.append(f"{_source(source, env_keys, ('roots', str(i), 'templates'))}: roots[{i}].templates: "
                            f"{root.templates} does not exist")
    for i, j, why in overlapping_roots(settings.roots):
        a, b = settings.roots[i], settings.roots[j]
        problems.append(f"{_source(source, env_keys, ('roots', str(j), 'path'))}: roots[{j}].path: root {b.name!r} "
                        f"({b.path}) and root {a.name!r} ({a.path}) overlap: {why}; every file there would be "
                        "published twice. Keep one, or add the inner folder to the outer root's `ignore` "
                        "(e.g. \"vendor/\")")
    if settings.journal and settings.journal.startswith("sqlite:///") and not settings.journal.startswith("sqlite:////"):
        rel = settings.journal[len("sqlite:///"):]
        settings.journal = f"sqlite:///{_resolve(base, Path(rel))}"
    if "state_dir" in data:
        settings.state_dir = _resolve(base, Path(data["state_dir"]))
    else:
        settings.state_dir = default_state_dir(settings.config_file, settings.journal)
    for attr in ("http_token_file", "webhook_secret_file", "log_file"):
        if getattr(settings, attr) is not None:
            setattr(settings, attr, _resolve(base, getattr(settings, attr)))
    if problems:
        raise ConfigError("\n".join(problems))
    for root in settings.roots:
        resolve_observer(root)
    if check_paths:
        problem = sqlite_on_network(settings)
        if problem:
            raise ConfigError(f"{_source(source, env_keys, ('journal',))}: journal: {problem}")
    return settings


def sqlite_on_network(settings: Settings) -> str | None:
    """Why the SQLite journal cannot be used where it is (None: it can, or it is not SQLite):
    on a network file system (a network home folder, an NFS state_dir) SQLite's file locks and
    its write-ahead log's shared memory do not work, and the journal corrupts or stalls."""
    url = settings.journal_url()
    if not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    db = url[len("sqlite:///"):]
    fs = paths.filesystem_of(os.path.dirname(db) or ".")
    if not fs.network:
        return None
    return (f"{shown(db)} is on a network file system ({fs.fstype} at {shown(fs.mount_point)}); SQLite's locking "
            "and WAL do not work there: set state_dir to a local folder or use a postgresql:// journal")


def _source(source: str, env: Mapping[tuple[str, ...], str], keys: tuple[str, ...]) -> str:
    for k, var in env.items():
        if keys[:len(k)] == k:
            return f"{var} (environment)"
    return source


def _refuse_nul(settings: Settings, source: str, env: Mapping[tuple[str, ...], str]) -> None:
    """A path holding a NUL character (``"\\0"`` in YAML, or from the environment) cannot name a
    file: refused here, naming the key, rather than by the first ``stat``."""
    found: list[tuple[tuple[str, ...], Any]] = [
        (("state_dir",), settings.state_dir), (("http_token_file",), settings.http_token_file),
        (("webhook_secret_file",), settings.webhook_secret_file), (("journal",), settings.journal),
        (("log_file",), settings.log_file)]
    for i, r in enumerate(settings.roots):
        found += [(("roots", str(i), "path"), r.path), (("roots", str(i), "templates"), r.templates),
                  (("roots", str(i), "marker"), r.marker)]
    for keys, value in found:
        if value is not None and "\0" in str(value):
            where = key_path(tuple(int(k) if k.isdigit() else k for k in keys))
            raise ConfigError(f"{_source(source, env, keys)}: {where}: holds a NUL character (\\0); no path can")


def _undecodable(exc: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is: ``line 3, byte 0xff``."""
    line = exc.object[:exc.start].count(b"\n") + 1
    return f"line {line}, byte 0x{exc.object[exc.start]:02x}"


def overlapping_roots(roots: list[RootSettings]) -> list[tuple[int, int, str]]:
    """Pairs of roots ``(i, j, why)`` that watch the same files: the same folder, or one inside
    the other, once symlinks and ``..`` are resolved (``root`` and ``./root/``, a link to it). Each
    file there would be seen, and published, once per root. Nesting is allowed when the outer
    root's ``ignore`` excludes the inner root's folder (a vendor drop kept apart)."""
    from .ignore import Ignorer

    real = [os.path.realpath(r.path) for r in roots]
    found = []
    for i in range(len(roots)):
        for j in range(i + 1, len(roots)):
            a, b = real[i], real[j]
            if _same(a, b):
                found.append((i, j, f"both are {a}"))
                continue
            rel_b, rel_a = _below(b, a), _below(a, b)
            outer, inner, rel = (i, j, rel_b) if rel_b is not None else (j, i, rel_a) if rel_a is not None \
                else (None, None, None)
            if outer is None or inner is None or rel is None:
                continue
            if Ignorer(roots[outer].ignore).ignored_dir(rel):
                continue
            found.append((i, j, f"{real[inner]} is inside {real[outer]}"))
    return found


def _below(path: str, parent: str) -> str | None:
    """``path`` relative to ``parent`` (POSIX), separator- and drive-aware (``P:\\`` holds
    ``P:\\a``); None when it is not below it."""
    try:
        return RootPath.of(parent).relative(path)
    except RootPathError:
        return None


def _same(a: str, b: str) -> bool:
    try:
        return RootPath.of(a).same(b)
    except RootPathError:
        return a == b


def _absolute(base: Path, p: Path) -> Path:
    """Absolute and normalised, symbolic links kept (``/mnt/show`` stays ``/mnt/show`` when it
    links to ``/net/fs3/show``)."""
    p = Path(os.path.expandvars(str(p))).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _resolve(base: Path, p: Path) -> Path:
    p = Path(os.path.expandvars(str(p))).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def shipped_template(name: str) -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "templates" / name, here.parent / "templates" / name):
        if cand.is_file():
            return cand
    raise ConfigError(f"shipped template {name} not found next to the package; reinstall watcher with `pip install -e .`")


STARTER = """\
# watcher configuration. Every key not set here has a default; see README "Configuration".
# Environment variables override this file: WATCHER_SETTLE_SECONDS=10,
# WATCHER_TRACKER__BACKEND=local, WATCHER_TRACKER__SCRIPT_KEY=... (secrets belong there or in *_file).

roots:
  - name: {root_name}                 # a short name, shown in logs and `watcher publishes`
    path: {root_path}                 # relative paths resolve against this file's folder; or one per OS:
    #                                 #   {{linux: /mnt/shows, darwin: /Volumes/shows, windows: 'P:\\shows'}}
    templates: {templates}            # Toolkit-style templates.yml (keys/paths/publishes)
    # observer: auto                  # auto: polling on network file systems (NFS/SMB, where the
    #                                 # kernel sees no remote writes), native events elsewhere
    # poll_interval: 10
    # marker: .watcher-root           # a file at the top of the share: missing = not mounted, root down
    # ignore: ["*.bak", "scratch/**"] # globs on the path relative to the root
    # republish: never                # a file changed after its publish: never | new_version | update
    existing: publish                 # files already in the tree when watcher first starts on it:
    #                                 #   publish  = published like new files (years of work become publishes)
    #                                 #   baseline = recorded as known, never published; only what arrives
    #                                 #              after the first start publishes. Or run `watcher baseline`
    #                                 #              once before the first start. `watcher check` counts them.
    # project: My Show                # pin a vendor drop folder to one project...
    # entity: {{type: Shot, name: sh010}}  # ...and one entity

settle_seconds: 5                     # a file is complete when unchanged for this long
# sequence_settle_seconds: 10         # a sequence when no new frame came for this long
# state_dir: /var/lib/watcher         # status.json and the default journal. Default: $STATE_DIRECTORY under
#                                     # systemd, else beside a SQLite journal, else one folder per config file
#                                     # under ~/.local/state/watcher (here: {state_dir})
# journal: sqlite:////var/lib/watcher/journal.db  # default: <state_dir>/journal.db;
#                                     # postgresql://user@host/db to share the work between machines
# http: 127.0.0.1:9464                # /metrics (Prometheus) and /healthz; other addresses need http_token_file
# log_file: watcher.log               # the agent's log, rotated, instead of stderr
# on_publish: [https://hooks.example/transcode]  # webhooks, signed with webhook_secret_file (HMAC-SHA256)
tracker:
  backend: local                      # local | shotgrid | ftrack | kitsu
workers: 4
"""
