"""Reading an import file: every row is one number or a rejected row with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.importer import ImportFileError, count_rows, read_rows


def rows(tmp_path: Path, text: str | bytes) -> list[tuple[int, str | None, str | None]]:
    path = tmp_path / "numbers.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return [(r.line, r.fields.get("phone"), r.problem) for r in read_rows(path)]


def test_one_number_per_line(tmp_path: Path) -> None:
    found = rows(tmp_path, "0612345678\n\n0698765432,\n0611111111;0622222222\n06 1,06 2\n")
    assert found[:2] == [(1, "0612345678", None), (3, "0698765432", None)]
    assert found[2][:2] == (4, "0611111111;0622222222")
    assert (found[2][2] or "").startswith("several values in the phone cell (separated by ';')")
    assert found[3][:2] == (5, "06 1") and (found[3][2] or "").startswith("2 values on one line")


def test_with_a_header(tmp_path: Path) -> None:
    big = "x" * 140_000
    found = rows(
        tmp_path,
        f"Phone,Reason_Code\n0612345678,ok\n0612345679,a,b\n0612345670,{big}\n0612345671\n",
    )
    assert found[0] == (2, "0612345678", None)
    assert found[1][:2] == (3, "0612345679")
    assert found[1][2] == "3 cells where the header has 2: quote values that contain a comma"
    assert found[2] == (4, None, "unreadable CSV row: field larger than field limit (131072)")
    assert found[3] == (5, "0612345671", None)  # fewer cells: the optional ones are empty


def test_a_file_that_is_not_utf8_stops_before_anything_is_published(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"0612345678\n06\xe9\n")
    with pytest.raises(ImportFileError, match="is not UTF-8 text"):
        count_rows(path)
