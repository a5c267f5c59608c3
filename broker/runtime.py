"""Process-wide tuning applied by ``renkei serve`` (not by the app factory, which tests
and embedders call in their own processes)."""

from __future__ import annotations

import gc


def tune_gc(threshold: int) -> None:
    """Move what start-up allocated (modules, schemas, compiled contexts) out of the
    collector's sight and collect the young generation every ``threshold`` allocations
    instead of Python's 700; 0 changes nothing.

    The broker's allocations are mostly request payloads: acyclic dicts and lists that
    reference counting frees the moment a request is done. With the default threshold a
    1,000-entity batch triggers hundreds of collections, each re-scanning the entities
    still in flight and promoting them, so older generations are scanned again and again.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
