# ruff: noqa: RUF001, RUF002  (Japanese text: full-width brackets are intended)
"""Cell values: parse what city systems write, and format it back the standard way.

Every parser takes the cell text (already NFKC-normalised when the column asks for it)
and returns the value to store, or raises :class:`CellError` with a message in Japanese
and English. Every formatter is the inverse for values in canonical form, which is what
makes import followed by export give the same rows.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata

__all__ = [
    "CellError",
    "check_digit",
    "format_number",
    "nfkc",
    "parse_date",
    "parse_integer",
    "parse_lg_code",
    "parse_number",
    "parse_time",
]


class CellError(ValueError):
    """A cell that cannot be read; ``ja`` and ``en`` say why, for the line-numbered report."""

    def __init__(self, ja: str, en: str) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en


def nfkc(text: str) -> str:
    """NFKC: full-width digits and letters to half width, （） to (), half-width kana to full."""
    return unicodedata.normalize("NFKC", text)


# -- numbers -----------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d+")
_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_GROUPED_RE = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")


def _clean_number(text: str) -> str:
    text = text.strip().replace("−", "-")
    if _GROUPED_RE.fullmatch(text):  # 4,315 (thousands separators, seen in population data)
        text = text.replace(",", "")
    return text


def parse_number(text: str) -> int | float:
    """A decimal number; integers stay integers so that ``30`` is written back as ``30``."""
    text = _clean_number(text)
    if _INT_RE.fullmatch(text):
        return int(text)
    if _NUM_RE.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    raise CellError(f"数値ではありません（{text}）", f"not a number ({text})")


def parse_integer(text: str) -> int:
    text = _clean_number(text)
    if _INT_RE.fullmatch(text):
        return int(text)
    raise CellError(f"整数ではありません（{text}）", f"not an integer ({text})")


def format_number(value: object) -> str:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    return str(value)


# -- dates -------------------------------------------------------------------------------

# Era name, its one-letter abbreviation, first day and last day (inclusive).
_ERAS: dict[str, tuple[dt.date, dt.date | None]] = {
    "令和": (dt.date(2019, 5, 1), None),
    "平成": (dt.date(1989, 1, 8), dt.date(2019, 4, 30)),
    "昭和": (dt.date(1926, 12, 25), dt.date(1989, 1, 7)),
    "大正": (dt.date(1912, 7, 30), dt.date(1926, 12, 25)),
    "明治": (dt.date(1868, 10, 23), dt.date(1912, 7, 30)),
}
_ERA_LETTERS = {"R": "令和", "H": "平成", "S": "昭和", "T": "大正", "M": "明治"}

_ERA_RE = re.compile(
    r"(?P<era>令和|平成|昭和|大正|明治|[RHSTMrhstm])\s*(?P<y>元|\d{1,2})\s*"
    r"(?:年\s*(?P<m1>\d{1,2})\s*月\s*(?P<d1>\d{1,2})\s*日?"
    r"|[./\-](?P<m2>\d{1,2})[./\-](?P<d2>\d{1,2}))"
)
_GREG_RE = re.compile(
    r"(?P<y>\d{4})(?:"
    r"-(?P<m1>\d{1,2})-(?P<d1>\d{1,2})"
    r"|/(?P<m2>\d{1,2})/(?P<d2>\d{1,2})"
    r"|\.(?P<m3>\d{1,2})\.(?P<d3>\d{1,2})"
    r"|年\s*(?P<m4>\d{1,2})\s*月\s*(?P<d4>\d{1,2})\s*日?"
    r"|(?P<m5>\d{2})(?P<d5>\d{2}))"
)


def _group(m: re.Match[str], name: str, count: int) -> int:
    for i in range(1, count + 1):
        value = m.group(f"{name}{i}")
        if value is not None:
            return int(value)
    raise AssertionError("the pattern always captures a month and a day")


def _make_date(year: int, month: int, day: int, text: str) -> dt.date:
    try:
        return dt.date(year, month, day)
    except ValueError:
        raise CellError(f"存在しない日付です（{text}）", f"no such date ({text})") from None


def parse_date(text: str) -> str:
    """ISO 8601 (``YYYY-MM-DD``) from Gregorian or Japanese-era dates.

    Accepted: ``2024-04-01``, ``2024/4/1``, ``2024.4.1``, ``2024年4月1日``, ``20240401``,
    ``令和6年4月1日``, ``令和元年5月1日``, ``R6.4.1``, ``H31.4.30``, ``S64/1/7``. An era date
    outside its era (``平成31年5月1日``, ``令和元年4月30日``) is refused, like 2月30日.
    """
    text = text.strip()
    m = _ERA_RE.fullmatch(text)
    if m:
        era = m.group("era")
        era = _ERA_LETTERS.get(era.upper(), era)
        first, last = _ERAS[era]
        era_year = 1 if m.group("y") == "元" else int(m.group("y"))
        if era_year < 1:
            raise CellError(f"存在しない日付です（{text}）", f"no such date ({text})")
        month = int(m.group("m1") or m.group("m2"))
        day = int(m.group("d1") or m.group("d2"))
        date = _make_date(first.year + era_year - 1, month, day, text)
        if date < first or (last is not None and date > last):
            span = f"{first.isoformat()}〜{last.isoformat() if last else ''}"
            raise CellError(
                f"{era}の期間外の日付です（{text}; {era}は{span}）",
                f"date outside the {era} era ({text}; {era} is {span})",
            )
        return date.isoformat()
    m = _GREG_RE.fullmatch(text)
    if m:
        return _make_date(int(m.group("y")), _group(m, "m", 5), _group(m, "d", 5), text).isoformat()
    raise CellError(
        f"日付として読めません（{text}）",
        f"not a date ({text}); expected e.g. 2024-04-01 or R6.4.1",
    )


_TIME_RE = re.compile(r"(?P<h>\d{1,2})(?::|時)(?P<m>\d{2})分?(?::(?P<s>\d{2}))?")


def parse_time(text: str) -> str:
    """``hh:mm`` (or ``hh:mm:ss`` when seconds are given); ``9:00`` and ``9時00分`` too."""
    text = text.strip()
    m = _TIME_RE.fullmatch(text)
    if m:
        h, mi = int(m.group("h")), int(m.group("m"))
        s = m.group("s")
        if h <= 24 and mi < 60 and (s is None or int(s) < 60) and (h < 24 or mi == 0):
            return f"{h:02d}:{mi:02d}" + (f":{s}" if s is not None else "")
    raise CellError(
        f"時刻として読めません（{text}）", f"not a time of day ({text}); expected hh:mm"
    )


# -- 全国地方公共団体コード ----------------------------------------------------------------


def check_digit(five: str) -> str:
    """Check digit of a 5-digit 団体コード: weights 6,5,4,3,2; 11 - (sum mod 11); last digit."""
    total = sum(int(c) * w for c, w in zip(five, (6, 5, 4, 3, 2), strict=True))
    return str((11 - total % 11) % 10)


def parse_lg_code(text: str) -> str:
    """A 6-digit 全国地方公共団体コード, restoring a lost leading zero (92011 -> 092011).

    Five digits are read as a 6-digit code that lost its leading zero when that passes the
    check digit, else as a 5-digit 団体コード, to which the check digit is added.
    """
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) not in (5, 6):
        raise CellError(
            f"全国地方公共団体コードは6桁の数字です（{text}）",
            f"a local government code has 6 digits ({text})",
        )
    if len(text) == 5:
        padded = "0" + text
        text = padded if check_digit(padded[:5]) == padded[5] else text + check_digit(text)
    if check_digit(text[:5]) != text[5]:
        raise CellError(
            f"全国地方公共団体コードの検査数字が正しくありません（{text}、正しくは{text[:5]}{check_digit(text[:5])}）",
            f"wrong check digit in local government code {text} (expected {text[:5]}{check_digit(text[:5])})",
        )
    return text
