"""The one labels CSV reader/writer (tracin_core.audit.labels_csv): round trip, the rules for
flags and exclusions, and errors that name the file and the line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracin_core.audit.labels_csv import FLAGS, read_labels_csv, write_labels_csv


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_round_trip_keeps_labels_flags_and_duplicates(tmp_path: Path) -> None:
    labels = [3, 1, 4, 1, 5, 9]
    flags = ["", "ambiguous", "", "duplicate", "excluded", ""]
    dup = [None, None, None, 0, None, None]
    path = write_labels_csv(tmp_path / "out.csv", labels, flags=flags, duplicate_of=dup)
    lines = path.read_text().splitlines()
    assert lines[0] == "index,label,excluded,flag,duplicate_of"
    assert lines[2] == "1,1,1,ambiguous," and lines[4] == "3,1,1,duplicate,0"
    got, excluded = read_labels_csv(path, 6)
    assert got.dtype == np.int64 and excluded.dtype == bool
    assert got.tolist() == labels
    assert excluded.tolist() == [False, True, False, True, True, False]
    # keep: flagged rows stay in with their label; a list excludes only those flags
    assert not read_labels_csv(path, 6, flagged="keep")[1].any()
    assert np.flatnonzero(read_labels_csv(path, 6, flagged=["duplicate"])[1]).tolist() == [3]
    assert set(FLAGS) >= {f for f in flags if f}


def test_exclusion_spellings_and_base_labels(tmp_path: Path) -> None:
    # -1 and an empty label (with excluded=1) exclude and keep the base label; rows not
    # listed keep their base label; excluded accepts 1/true/yes/y/t and "1.0"
    path = _write(tmp_path, "index,label,excluded\n0,2,0\n1,-1,\n2,,1\n3,1,yes\n4,1,T\n5,1,1.0\n")
    labels, excluded = read_labels_csv(path, 7, base_labels=[9] * 7, num_classes=10)
    assert labels.tolist() == [2, 9, 9, 1, 1, 1, 9]
    assert excluded.tolist() == [False, True, True, True, True, True, False]
    # any column order, integer-valued floats count
    path = _write(tmp_path, "label,index\n4.0,1\n2,0\n")
    assert read_labels_csv(path, 2)[0].tolist() == [2, 4]


@pytest.mark.parametrize("text, message", [
    ("index,label\n0,1\n5,2\n", "line 3: index 5 is out of range 0..1"),
    ("index,label\n0,1\nx,2\n", "line 3: index 'x' is not an integer"),
    ("index,label\n0,cat\n1,1\n", "line 2: label 'cat' is not an integer"),
    ("index,label\n0,1.5\n1,1\n", "line 2: label '1.5' is not an integer"),
    ("index,label\n0,1\n0,2\n", "line 3: index 0 appears more than once"),
    ("index,label\n0,12\n1,1\n", "line 2: label 12 is outside 0..9"),
    ("index,label\n0,-3\n1,1\n", "line 2: label must be >= 0"),
    ("index,label\n0,\n1,1\n", "line 2: empty label"),
    ("index,label,excluded\n0,1,maybe\n1,1,0\n", "line 2: excluded 'maybe'"),
    ("index,label,flag\n0,1,blurry\n1,1,\n", "line 2: flag 'blurry'"),
    ("index,label,duplicate_of\n0,1,0\n1,1,\n", "line 2: duplicate_of 0 must be another"),
    ("index,label\n0\n", "line 2: expected 2 columns"),
    ("idx,label\n0,1\n", "missing column(s) index"),
    ("", "is empty"),
    ("index,label\n1,3\n", "first missing index: 0"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text, "bad_labels.csv")
    with pytest.raises(ValueError) as info:
        read_labels_csv(path, 2, num_classes=10)
    assert "bad_labels.csv" in str(info.value)
    assert message in str(info.value)


def test_argument_errors_name_the_argument(tmp_path: Path) -> None:
    path = _write(tmp_path, "index,label\n0,1\n")
    with pytest.raises(ValueError, match="base_labels has 2 entries, expected num_items=1"):
        read_labels_csv(path, 1, base_labels=[0, 0])
    with pytest.raises(ValueError, match="flagged must be"):
        read_labels_csv(path, 1, flagged="drop")
    with pytest.raises(ValueError, match="num_items"):
        read_labels_csv(path, -1)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_labels_csv(tmp_path / "missing.csv", 1)
    with pytest.raises(ValueError, match="flags: 'blurry'"):
        write_labels_csv(tmp_path / "w.csv", [0], flags=["blurry"])
    with pytest.raises(ValueError, match=r"\.csv"):
        write_labels_csv(tmp_path / "w.json", [0])
    with pytest.raises(ValueError, match="duplicate_of has 2 entries"):
        write_labels_csv(tmp_path / "w.csv", [0], duplicate_of=[None, None])


@pytest.mark.parametrize("body, reads_at_once", [
    ("0,1\n1,0\n2,2\n", True),
    ("0,1\r\n2,2\r\n1,0\r\n", True),                  # any order, Windows line ends
    ("0,1.0\n1,0\n2,2\n", False),                      # an integer-valued float: the row reader
    ("0,1\n#1,0\n2,2\n", False),                       # not a comment: the row reader's error
    ("0,1\n1,7\n2,2\n", False),                        # out of range: the row reader's error
    ("0,1\n0,0\n2,2\n", False),                        # repeated index: the row reader's error
    ("0,1\n1,\n2,2\n", False),                         # empty label: the row reader's error
])
def test_plain_files_are_read_at_once_with_the_row_readers_result(tmp_path, monkeypatch, body, reads_at_once):
    """The vectorised reader of plain ``index,label`` files gives what the row-by-row reader
    gives, and leaves every other file (and every error) to it."""
    from tracin_core.audit import labels_csv as lc

    path = tmp_path / "labels.csv"
    path.write_text("index,label\n" + body)

    def read():
        try:
            return lc.read_labels_csv(path, 3, num_classes=3)
        except ValueError as exc:
            return str(exc)

    assert (lc._plain_labels(path.read_text(), 3, np.zeros(3, dtype=np.int64), True, 3) is not None) == reads_at_once
    at_once = read()
    monkeypatch.setattr(lc, "_plain_labels", lambda *a: None)
    by_row = read()
    if isinstance(by_row, str):
        assert at_once == by_row
    else:
        assert all(np.array_equal(a, b) for a, b in zip(at_once, by_row))
