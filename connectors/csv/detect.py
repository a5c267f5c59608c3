# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""Which layout a CSV header is written for.

A header fits a layout when at least half of the layout's required (値必須) columns are
in it (all its columns when it marks none required). Standard layouts share many
columns (name, address, coordinates, phone), so counting the columns a header has in
common with a layout is not enough: an AED list has 23 of the 39 evacuation-site
columns, but only 3 of its 13 required ones (the hazard flags are missing). The
required columns are what make a dataset what it is.

:func:`detect_layout` scores every standard layout against a header: the share of the
header's cells the layout recognises first, then the share of its required columns
present. The best layout is chosen only when the header fits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from connectors.csv.layout import Layout, dataset_slugs, load_dataset

__all__ = ["Fit", "detect_layout", "fit", "mismatch_message", "standard_layouts"]


@dataclass(frozen=True)
class Fit:
    """How a header matches a layout."""

    layout: Layout
    #: header cells (non-blank) the layout recognises, and how many non-blank cells there are
    known: int
    cells: int
    #: the layout's key columns (required ones, or all when none is required) present
    present: int
    wanted: int

    @property
    def fits(self) -> bool:
        return self.wanted == 0 or 2 * self.present >= self.wanted

    @property
    def score(self) -> tuple[float, float]:
        return (
            self.known / self.cells if self.cells else 0.0,
            self.present / self.wanted if self.wanted else 0.0,
        )


def fit(layout: Layout, header: list[str]) -> Fit:
    cells = [h for h in header if h.strip()]
    found = {c for h in cells if (c := layout.column_for(h)) is not None}
    key = [c for c in layout.columns if c.required] or list(layout.columns)
    return Fit(
        layout=layout,
        known=sum(1 for h in cells if layout.column_for(h) is not None),
        cells=len(cells),
        present=sum(1 for c in key if c in found),
        wanted=len(key),
    )


@cache
def standard_layouts() -> tuple[Layout, ...]:
    """The standard layouts shipped in ``schemas/datasets`` (read once)."""
    return tuple(load_dataset(slug) for slug in dataset_slugs())


def detect_layout(header: list[str], layouts: tuple[Layout, ...] | None = None) -> Fit | None:
    """The standard layout the header is written for, or None when it fits none."""
    if layouts is None:
        layouts = standard_layouts()
    fits = [fit(layout, header) for layout in layouts]
    fitting = [f for f in fits if f.fits and f.known]
    if not fitting:
        return None
    return max(fitting, key=lambda f: f.score)


def _label(layout: Layout) -> tuple[str, str]:
    ja = layout.title.get("ja")
    en = layout.title.get("en")
    return (
        f"{layout.name}（{ja}）" if ja else layout.name,
        f"{layout.name} ({en})" if en else layout.name,
    )


def mismatch_message(wrong: Fit, header: list[str]) -> tuple[str, str]:
    """(ja, en): why the header does not fit ``wrong.layout`` and which layout it fits."""
    name = wrong.layout.name
    what_ja = "必須の列" if any(c.required for c in wrong.layout.columns) else "列"
    what_en = "required columns" if what_ja == "必須の列" else "columns"
    ja = (
        f"見出しがレイアウト {name} に合いません（{what_ja}{wrong.wanted}のうち"
        f"{wrong.present}しかありません）。"
    )
    en = (
        f"the header does not fit the layout {name} (only {wrong.present} of its "
        f"{wrong.wanted} {what_en} are there); "
    )
    others = tuple(lay for lay in standard_layouts() if lay.name != name)
    best = detect_layout(header, others)
    if best is None:
        ja += (
            "どの標準データセットにも合いません（--mapping でマッピングファイルを指定してください）"
        )
        en += "it fits no standard dataset either (write a mapping file and use --mapping)"
    else:
        label_ja, label_en = _label(best.layout)
        ja += f"見出しは {label_ja} に合います（--dataset {best.layout.name}）"
        en += f"it matches {label_en}: use --dataset {best.layout.name}"
    return ja, en
