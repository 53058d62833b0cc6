"""Typed errors. Every message says what is wrong and, where it can, what to do."""
from __future__ import annotations


class WatcherError(Exception):
    """Base of every error watcher raises on purpose."""


class ConfigError(WatcherError):
    """A configuration or template file is unusable; exit code 2 at start-up."""


class TemplateError(ConfigError):
    """A template file (or one entry of it) is invalid."""


class JournalError(WatcherError):
    """The journal could not be opened or an update was refused."""


class PublishError(WatcherError):
    """A publish did not happen. Subclasses say whether trying again can help."""

    retryable = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RetryableError(PublishError):
    """Transient: timeouts, 5xx, 429, dropped connections. The publish is retried with backoff.

    The outcome on the tracker side may be unknown (the request may have landed), so the next
    attempt runs with ``Job.uncertain`` set and the backend looks for what it may have created.
    """

    retryable = True


class PermanentError(PublishError):
    """The tracker refused the publish (validation error, missing entity...). Parked as
    ``failed`` with this message until someone runs ``watcher retry``."""
