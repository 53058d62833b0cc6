"""The journal: a durable ledger of every candidate publish, written before anything is sent.
``open_journal(url)`` picks the database from the URL (``sqlite://`` or ``postgresql://``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .ledger import Database, Journal


def _kind(url: str) -> str:
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError("journal: a postgresql:// journal needs psycopg; install it with "
                              "`pip install 'watcher[postgres]'`") from None
        return "postgres"
    raise ConfigError(f"journal: unsupported URL {url.split('://', 1)[0]}://...; use sqlite:////path/journal.db "
                      "or postgresql://...")


def open_database(url: str) -> "Database":
    """The connections behind a journal URL (the local registry keeps its table there too)."""
    if _kind(url) == "sqlite":
        from .sqlite import SqliteDatabase

        return SqliteDatabase(url)
    from .postgres import PostgresDatabase

    return PostgresDatabase(url)


def open_journal(url: str) -> "Journal":
    if _kind(url) == "sqlite":
        from .sqlite import SqliteJournal

        return SqliteJournal(url)
    from .postgres import PostgresJournal

    return PostgresJournal(url)
