"""Settings: one YAML file plus ``WATCHER_*`` environment overrides (nested keys joined with
``__``), validated into typed models. Every error names the file, the key path and the reason,
and start-up stops there (exit code 2)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

DEFAULT_CONFIG = "watcher.yml"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "watcher"


class EntityScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    name: str


class RootSettings(BaseModel):
    """One watched tree. ``project``/``entity`` pin a vendor drop folder to one show or shot:
    they override what the template says."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path
    templates: Path
    ignore: list[str] = Field(default_factory=list)
    observer: Literal["native", "polling"] = "native"
    poll_interval: float = Field(default=10.0, gt=0)
    settle_seconds: float | None = Field(default=None, ge=0)
    sequence_settle_seconds: float | None = Field(default=None, ge=0)
    republish: Literal["never", "new_version", "update"] = "never"
    project: str | None = None
    entity: EntityScope | None = None


class TrackerSettings(BaseModel):
    """``backend`` picks the plug-in; the other keys are that backend's own settings,
    validated by it at start-up."""

    model_config = ConfigDict(extra="allow")
    backend: str = "local"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WATCHER_", env_nested_delimiter="__", extra="forbid")

    roots: list[RootSettings] = Field(min_length=1)
    settle_seconds: float = Field(default=5.0, ge=0)
    sequence_settle_seconds: float | None = Field(default=None, ge=0)
    state_dir: Path = Field(default_factory=default_state_dir)
    journal: str | None = None
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    workers: int = Field(default=4, ge=1, le=64)
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_cap_seconds: float = Field(default=600.0, gt=0)
    rescan_interval: float = Field(default=3600.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    config_file: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (init carries the YAML).
        return (env_settings, init_settings)

    @field_validator("journal")
    @classmethod
    def _journal_url(cls, v: str | None) -> str | None:
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
        return self

    def journal_url(self) -> str:
        return self.journal or f"sqlite:///{self.state_dir / 'journal.db'}"

    def settle_for(self, root: RootSettings) -> tuple[float, float]:
        """(file quiet window, sequence quiet window) in force for a root."""
        settle = root.settle_seconds if root.settle_seconds is not None else self.settle_seconds
        seq = root.sequence_settle_seconds if root.sequence_settle_seconds is not None else self.sequence_settle_seconds
        return settle, settle if seq is None else seq


def key_path(loc: tuple[Any, ...]) -> str:
    """('roots', 1, 'path') -> 'roots[1].path'"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        path = key_path(loc)
        if prefix:
            path = prefix + ("" if path.startswith("[") else ".") + path if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see `watcher init` for the reference)"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None, *, check_paths: bool = True) -> Settings:
    """Read, validate and resolve the configuration. Relative paths in the file resolve
    against the file's folder. Raises ``ConfigError`` with one line per problem."""
    cfg = Path(path or os.environ.get("WATCHER_CONFIG") or DEFAULT_CONFIG)
    source = str(cfg)
    try:
        text = cfg.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file; create one with `watcher init` or pass -c/--config") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, not {type(data).__name__}")
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation(source, exc)) from None
    base = cfg.resolve().parent
    settings.config_file = cfg.resolve()
    problems = []
    for i, root in enumerate(settings.roots):
        root.path = _resolve(base, root.path)
        root.templates = _resolve(base, root.templates)
        if check_paths and not root.path.is_dir():
            what = "does not exist" if not root.path.exists() else "is not a directory"
            problems.append(f"{source}: roots[{i}].path: {root.path} {what}")
        if not root.templates.is_file():
            problems.append(f"{source}: roots[{i}].templates: {root.templates} does not exist")
    settings.state_dir = _resolve(base, settings.state_dir)
    if settings.journal and settings.journal.startswith("sqlite:///") and not settings.journal.startswith("sqlite:////"):
        rel = settings.journal[len("sqlite:///"):]
        settings.journal = f"sqlite:///{_resolve(base, Path(rel))}"
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


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
    path: {root_path}                 # relative paths resolve against this file's folder
    templates: {templates}            # Toolkit-style templates.yml (keys/paths/publishes)
    # observer: polling               # for NFS/SMB mounts, where the kernel sees no remote writes
    # poll_interval: 10
    # ignore: ["*.bak", "scratch/**"] # globs on the path relative to the root
    # republish: never                # a file changed after its publish: never | new_version | update
    # project: My Show                # pin a vendor drop folder to one project...
    # entity: {{type: Shot, name: sh010}}  # ...and one entity

settle_seconds: 5                     # a file is complete when unchanged for this long
# sequence_settle_seconds: 10         # a sequence when no new frame came for this long
journal: sqlite:///{journal}          # or postgresql://user@host/db to share the work
tracker:
  backend: local                      # local | shotgrid | ftrack | kitsu
workers: 4
"""
