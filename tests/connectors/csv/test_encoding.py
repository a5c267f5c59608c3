import codecs

import pytest

from connectors.csv.encoding import DecodeError, decode, detect

TEXT = "名称,備考\r\n㈱髙島屋①,テスト\r\n"


def test_shift_jis_cannot_encode_what_cp932_can() -> None:
    for ch in "①㈱髙":
        with pytest.raises(UnicodeEncodeError):
            ch.encode("shift_jis")
        ch.encode("cp932")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (TEXT.encode("cp932"), "cp932"),
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
    ],
)
def test_detect(data: bytes, expected: str) -> None:
    assert detect(data) == expected
    text, used = decode(data)
    assert text == TEXT
    assert used == expected


def test_explicit_encoding_wins() -> None:
    data = "ｱｲｳ".encode("cp932")  # half-width kana: also valid as ... nothing else
    with pytest.raises(DecodeError):
        decode(data, "utf-8")
    assert decode(data, "Shift_JIS") == ("ｱｲｳ", "cp932")


def test_bad_bytes_reported_with_line() -> None:
    data = b"a,b\r\nc,d\r\n" + "髙".encode("cp932") + b"\r\n"
    with pytest.raises(DecodeError) as exc:
        decode(data, "utf-8")
    assert exc.value.line == 3
    assert "3行目" in exc.value.ja


def test_unknown_encoding() -> None:
    with pytest.raises(DecodeError, match="unknown encoding"):
        decode(b"a", "klingon")
