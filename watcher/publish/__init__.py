"""Publishing: the backend interface (``base``), the shared HTTP client and backoff, and one
module per tracker. ``load_backend(name)`` finds a backend class by its ``tracker.backend``
name: built-ins first, then the ``watcher.backends`` entry-point group for third-party ones."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Backend, BackendContext, BackendSettings, CheckResult

BUILTIN: dict[str, str] = {
    "local": "watcher.publish.local:LocalBackend",
    "shotgrid": "watcher.publish.shotgrid:ShotGridBackend",
    "ftrack": "watcher.publish.ftrack:FtrackBackend",
    "kitsu": "watcher.publish.kitsu:KitsuBackend",
}


def load_backend(name: str) -> type[Backend]:
    target = BUILTIN.get(name)
    if target is None:
        for ep in entry_points(group="watcher.backends"):
            if ep.name == name:
                return ep.load()
        known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group="watcher.backends")})
        raise ConfigError(f"tracker.backend: unknown backend {name!r}; known: {', '.join(known)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["Backend", "BackendContext", "BackendSettings", "CheckResult", "load_backend", "BUILTIN"]
