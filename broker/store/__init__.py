"""Store backends behind one contract (the protocols of ``base``), chosen by URL scheme."""

from __future__ import annotations

from broker.store.base import Store


def open_store(url: str) -> Store:
    """Build the backend for a store URL; backends are imported only when chosen."""
    if url.startswith("sqlite://"):
        from broker.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from broker.store.mongodb import MongoStore

        return MongoStore.from_url(url)
    raise ValueError(f"unknown store URL scheme: {url}")


__all__ = ["Store", "open_store"]
