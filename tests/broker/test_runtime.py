"""Process tuning applied by ``renkei serve``."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker.runtime import tune_gc
from broker.settings import get_settings


@pytest.fixture
def gc_state() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("gc_state")
def test_tune_gc_spaces_young_collections_and_freezes_startup_objects() -> None:
    older = gc.get_threshold()[1:]
    kept: list[str] = ["start-up"]  # tracked, alive across the call
    tune_gc(10_000)
    assert gc.get_threshold() == (10_000, *older)
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen: no longer scanned


@pytest.mark.usefixtures("gc_state")
def test_tune_gc_zero_keeps_python_defaults() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_gc_threshold_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().gc_threshold == 10_000
    monkeypatch.setenv("RENKEI_GC_THRESHOLD", "0")
    assert get_settings().gc_threshold == 0
    monkeypatch.setenv("RENKEI_GC_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="gc_threshold"):
        get_settings()
