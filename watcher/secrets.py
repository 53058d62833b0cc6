"""Secrets come from the environment (``WATCHER_TRACKER__API_KEY``...) or from a file
(``api_key_file: /etc/watcher/ftrack.key``); they are held as ``SecretStr`` so that no repr,
log line or error message ever shows them."""
from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from .errors import ConfigError


def read_secret(value: SecretStr | None, file: Path | None, what: str, *, required: bool = True) -> str | None:
    """The secret's text from ``value`` or else ``file``, stripped of surrounding whitespace
    either way (``export X=$(cat key)`` or an editor's newline must not reach an HTTP header).

    ``what`` names the setting in the error (``tracker.api_key``); the secret itself never
    appears in a message."""
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    if file is not None:
        try:
            text = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}_file: cannot read {file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{what}_file: {file} is not UTF-8 text; put the secret in it as plain text") from None
        if not text:
            raise ConfigError(f"{what}_file: {file} is empty")
        return text
    if required:
        env = "WATCHER_" + what.upper().replace(".", "__")
        raise ConfigError(f"{what}: not set; set {env} in the environment or {what}_file to a file holding it")
    return None
