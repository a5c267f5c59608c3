# ruff: noqa: RUF001  (Japanese text: full-width brackets are intended)
"""Text encoding of city-system CSVs: UTF-8, UTF-8 with a BOM, or CP932.

CP932 (Windows-31J) rather than Shift_JIS: legacy Windows systems write ①, ㈱ and 髙,
which CP932 has and Shift_JIS does not. Detection is by strict decoding: a BOM means
UTF-8; text that decodes as UTF-8 is UTF-8 (CP932 text of any length rarely does);
otherwise CP932. An encoding given by the user always wins.
"""

from __future__ import annotations

import codecs

__all__ = ["DecodeError", "decode", "detect"]

_ALIASES = {"shift_jis": "cp932", "sjis": "cp932", "shift-jis": "cp932", "windows-31j": "cp932"}


class DecodeError(ValueError):
    def __init__(self, ja: str, en: str, line: int | None = None) -> None:
        super().__init__(en)
        self.ja = ja
        self.en = en
        self.line = line


def _canonical(encoding: str) -> str:
    name = encoding.strip().lower()
    name = _ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise DecodeError(
            f"不明な文字コードです: {encoding}", f"unknown encoding: {encoding}"
        ) from None


def detect(data: bytes) -> str:
    """The encoding of ``data``: ``utf-8-sig``, ``utf-8`` or ``cp932``."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "cp932"
    return "utf-8"


def decode(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """(text, encoding used). A byte sequence that does not decode is reported by line."""
    if encoding:
        used = _canonical(encoding)
        if used == "utf-8" and data.startswith(codecs.BOM_UTF8):
            used = "utf-8-sig"
        # Shift_JIS files are nearly always written by Windows: read them as CP932.
        if used == "shift_jis":
            used = "cp932"
    else:
        used = detect(data)
    try:
        return data.decode(used), used
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DecodeError(
            f"{line}行目: 文字コード {used} として読めないバイトがあります（--encoding で指定できます）",
            f"line {line}: bytes that are not valid {used} (use --encoding to choose one)",
            line,
        ) from None
