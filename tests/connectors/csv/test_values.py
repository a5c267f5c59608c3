# ruff: noqa: RUF001  (Japanese fixtures: full-width digits and brackets are intended)
import pytest

from connectors.csv.values import (
    CellError,
    check_digit,
    nfkc,
    parse_date,
    parse_integer,
    parse_lg_code,
    parse_number,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("令和6年4月1日", "2024-04-01"),
        ("令和元年5月1日", "2019-05-01"),
        ("R6.4.1", "2024-04-01"),
        ("r6/4/1", "2024-04-01"),
        ("H31.4.30", "2019-04-30"),
        ("平成元年1月8日", "1989-01-08"),
        ("昭和64年1月7日", "1989-01-07"),
        ("S50.10.1", "1975-10-01"),
        ("2024/4/1", "2024-04-01"),
        ("2024年4月1日", "2024-04-01"),
        ("20240401", "2024-04-01"),
        ("2024-04-01", "2024-04-01"),
        (nfkc("令和６年１２月３１日"), "2024-12-31"),
    ],
)
def test_dates_to_iso(text: str, iso: str) -> None:
    assert parse_date(text) == iso


@pytest.mark.parametrize(
    "text",
    [
        "平成31年5月1日",  # Heisei ended on 30 April 2019
        "令和元年4月30日",  # Reiwa began on 1 May 2019
        "H1.1.7",  # still Showa
        "昭和64年1月8日",
        "R6.2.30",
        "2023-02-29",
        "令和0年1月1日",
        "来年",
    ],
)
def test_impossible_dates_are_refused(text: str) -> None:
    with pytest.raises(CellError):
        parse_date(text)


def test_numbers() -> None:
    assert parse_number(nfkc("１２．５")) == 12.5
    assert parse_number(nfkc("８５０")) == 850
    assert parse_integer("4,315 ") == 4315
    assert parse_number("-3") == -3
    with pytest.raises(CellError) as exc:
        parse_number("abc")
    assert exc.value.ja.startswith("数値ではありません")
    with pytest.raises(CellError):
        parse_integer("1.5")
    with pytest.raises(CellError):
        parse_number("nan")


def test_times() -> None:
    assert parse_time("9:00") == "09:00"
    assert parse_time("9時30分") == "09:30"
    assert parse_time("24:00") == "24:00"
    with pytest.raises(CellError):
        parse_time("25:00")


def test_local_government_code_check_digit() -> None:
    assert check_digit("01100") == "2"
    assert check_digit("13101") == "6"
    assert check_digit("01000") == "6"
    assert parse_lg_code("131016") == "131016"
    assert parse_lg_code("92011") == "092011"  # lost leading zero
    assert parse_lg_code("13101") == "131016"  # 5-digit 団体コード, check digit added
    with pytest.raises(CellError) as exc:
        parse_lg_code("131017")
    assert "131016" in exc.value.en
    with pytest.raises(CellError):
        parse_lg_code("1310")
