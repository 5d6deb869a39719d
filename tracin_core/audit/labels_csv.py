"""The labels CSV: one reader and one writer for ``index,label[,excluded,flag,duplicate_of]``.

A labels CSV overrides the given labels of a training set (``labels_override`` of a
workspace's ``[train]`` table). The Review page's "corrected labels" export writes all five
columns (:meth:`tracin_core.audit.review.ReviewStore.export_corrected_labels`); a hand-written
file needs only ``index`` and ``label``. Rules, the same for every reader in the project:

* columns in any order, matched case-insensitively; ``index`` and ``label`` are required;
* ``index``: an integer in ``0..num_items-1``, at most one row each ("2.0" counts as 2);
  items without a row keep ``base_labels`` (without ``base_labels`` every index must appear);
* ``label``: an integer ``>= 0`` (``< num_classes`` when that is given); ``-1`` or an empty
  cell marks the item excluded (it then keeps its base label); empty needs ``excluded=1``
  or a flag, so that a forgotten label is not a silent exclusion;
* ``excluded``: 1/0, true/false, yes/no, y/n, t/f (or empty = 0);
* ``flag``: empty or one of :data:`FLAGS`; a row marked excluded without a flag counts as
  flag "excluded". ``flagged`` (see :func:`flagged_set`) chooses which flagged rows are
  excluded: all (``"exclude"``, default), none (``"keep"``: they keep the row's label,
  the given label in an export) or the flags listed;
* ``duplicate_of``: empty or another item's index.

Errors are ``ValueError`` naming the file and the line (``FileNotFoundError`` for a
missing file).
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["FLAGS", "LABELS_CSV_COLUMNS", "atomic_write", "flagged_set", "read_labels_csv",
           "write_labels_csv"]

#: reviewer flags a labels CSV can carry (also final statuses of the review store)
FLAGS = ("excluded", "ambiguous", "outlier", "duplicate")
#: the columns :func:`write_labels_csv` writes, in order
LABELS_CSV_COLUMNS = ("index", "label", "excluded", "flag", "duplicate_of")

_TRUE = frozenset({"1", "1.0", "true", "yes", "y", "t"})
_FALSE = frozenset({"", "0", "0.0", "false", "no", "n", "f"})


def flagged_set(flagged: str | Iterable[str] = "exclude") -> frozenset[str]:
    """The flags (names in :data:`FLAGS`) whose items a labels override excludes.

    ``"exclude"``: all of them (excluded, ambiguous, outlier, duplicate); ``"keep"``:
    none, so flagged items stay in with the label the file gives them (their given
    label); or one flag name or a collection of them, e.g. ``["excluded", "duplicate"]``.
    Anything else raises ``ValueError`` naming ``flagged``.
    """
    expected = (f"flagged must be 'exclude', 'keep' or a list of flags among "
                f"{', '.join(FLAGS)}; got {flagged!r}")
    if isinstance(flagged, str):
        choice = flagged.strip().lower()
        if choice == "exclude":
            return frozenset(FLAGS)
        if choice == "keep":
            return frozenset()
        items: list[Any] = [choice]
    else:
        try:
            items = list(flagged)
        except TypeError:
            raise ValueError(expected) from None
    names = [i.strip().lower() if isinstance(i, str) else i for i in items]
    if any(name not in FLAGS for name in names):
        raise ValueError(expected)
    return frozenset(names)


def _row_flag(flag_text: str | None, excluded: bool, where: str) -> str:
    """The flag of one row: its ``flag`` cell, else "excluded" when the row is marked
    excluded, else "" (``where`` names the file and line in errors)."""
    flag = (flag_text or "").strip().lower()
    if flag and flag not in FLAGS:
        raise ValueError(f"{where}: flag {flag_text!r} is not one of {', '.join(FLAGS)} "
                         f"(or empty)")
    return flag or ("excluded" if excluded else "")


def _parse_int(text: str, what: str, where: str) -> int:
    """An integer cell; an integer-valued float ("2.0") counts, anything else raises."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not number.is_integer():
            raise ValueError(f"{where}: {what} {text!r} is not an integer") from None
        return int(number)


def _plain_labels(text: str, num_items: int, labels: np.ndarray, every_row: bool,
                  num_classes: int | None) -> np.ndarray | None:
    """The common file, read by numpy at once: header ``index,label``, every cell a plain
    integer, indices unique and in range, labels in 0..num_classes-1 (every index present
    when ``every_row``). Returns the labels, or None when any of that does not hold: the
    row-by-row reader then reads the file and names the line at fault. (60,000 rows: 0.03 s
    instead of 0.6 s, a first visit's wait on the Fashion-MNIST workspace.)"""
    body = text.split("\n", 1)[1] if "\n" in text else ""
    if not body.strip():
        return None
    try:
        cells = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
        return None
    if cells.shape[1] != 2:
        return None
    index, label = cells[:, 0], cells[:, 1]
    if ((index < 0) | (index >= num_items)).any() or (label < 0).any():
        return None
    if num_classes is not None and (label >= num_classes).any():
        return None
    seen = np.bincount(index, minlength=num_items)
    if (seen > 1).any() or (every_row and (seen == 0).any()):
        return None
    out = labels.copy()
    out[index] = label
    return out


def read_labels_csv(path: str | os.PathLike[str], num_items: int, *,
                    base_labels: Sequence[int] | np.ndarray | None = None,
                    num_classes: int | None = None,
                    flagged: str | Iterable[str] = "exclude",
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Read a labels CSV for ``num_items`` training items (rules: the module docstring).

    Returns ``(labels, excluded)``: int64 and bool arrays of shape ``(num_items,)``.
    ``labels`` holds the label in effect (an excluded item keeps its row's label, or its
    base label when the row gives -1 or none). Raises ``FileNotFoundError`` or
    ``ValueError`` naming the file and the line (or the argument at fault).
    """
    if isinstance(num_items, bool) or not isinstance(num_items, (int, np.integer)) or num_items < 0:
        raise ValueError(f"num_items must be a non-negative integer, got {num_items!r}")
    num_items = int(num_items)
    excluding = flagged_set(flagged)
    if base_labels is not None and len(base_labels) != num_items:
        raise ValueError(f"base_labels has {len(base_labels)} entries, expected "
                         f"num_items={num_items}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels CSV {str(path)!r}: not a UTF-8 text CSV file ({exc})") from exc
    labels = (np.zeros(num_items, dtype=np.int64) if base_labels is None
              else np.asarray(base_labels, dtype=np.int64).reshape(-1).copy())
    excluded = np.zeros(num_items, dtype=bool)
    seen = np.zeros(num_items, dtype=bool)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"labels CSV {str(path)!r} is empty; expected a header "
                         f"'index,label[,excluded,flag,duplicate_of]'")
    cols = [c.strip().lower() for c in header]
    missing = [c for c in ("index", "label") if c not in cols]
    if missing:
        raise ValueError(f"labels CSV {str(path)!r}: missing column(s) {', '.join(missing)}; "
                         f"expected a header 'index,label[,excluded,flag,duplicate_of]', "
                         f"got {','.join(header)!r}")
    if cols == ["index", "label"]:
        fast = _plain_labels(text, num_items, labels, base_labels is None, num_classes)
        if fast is not None:
            return fast, excluded
    i_idx, i_lab = cols.index("index"), cols.index("label")
    i_exc = cols.index("excluded") if "excluded" in cols else None
    i_flag = cols.index("flag") if "flag" in cols else None
    i_dup = cols.index("duplicate_of") if "duplicate_of" in cols else None
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        where = f"labels CSV {str(path)!r}, line {reader.line_num}"
        if len(row) < len(cols):
            raise ValueError(f"{where}: expected {len(cols)} columns, got {len(row)}: {row!r}")
        index = _parse_int(row[i_idx], "index", where)
        if not 0 <= index < num_items:
            raise ValueError(f"{where}: index {index} is out of range 0..{num_items - 1}")
        if seen[index]:
            raise ValueError(f"{where}: index {index} appears more than once")
        seen[index] = True
        marked = False
        if i_exc is not None:
            raw = row[i_exc].strip().lower()
            if raw in _TRUE:
                marked = True
            elif raw not in _FALSE:
                raise ValueError(f"{where}: excluded {row[i_exc]!r} is not one of "
                                 f"1/0/true/false/yes/no")
        flag = _row_flag(row[i_flag] if i_flag is not None else None, False, where)
        if i_dup is not None and row[i_dup].strip():
            other = _parse_int(row[i_dup], "duplicate_of", where)
            if not 0 <= other < num_items or other == index:
                raise ValueError(f"{where}: duplicate_of {other} must be another item's "
                                 f"index in 0..{num_items - 1}")
        raw_label = row[i_lab].strip()
        label = -1 if raw_label == "" else _parse_int(raw_label, "label", where)
        if label == -1:
            if raw_label == "" and not (marked or flag):
                raise ValueError(f"{where}: empty label (use excluded=1 or label -1 to "
                                 f"exclude an item)")
            if base_labels is None:
                raise ValueError(f"{where}: label -1 (excluded) needs base_labels to know "
                                 f"the item's label")
            marked = True
        elif label < 0:
            raise ValueError(f"{where}: label must be >= 0 (or -1 to exclude), got {label}")
        elif num_classes is not None and label >= num_classes:
            raise ValueError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        else:
            labels[index] = label
        excluded[index] = (flag or ("excluded" if marked else "")) in excluding
    if base_labels is None and not seen.all():
        absent = np.flatnonzero(~seen)
        raise ValueError(f"labels CSV {str(path)!r}: {len(absent)} of {num_items} training "
                         f"items have no row (first missing index: {int(absent[0])}); without "
                         f"base_labels the file must list every index from 0 to "
                         f"{num_items - 1}")
    return labels, excluded


def atomic_write(path: Path, write: Callable[[IO[str]], Any]) -> None:
    """Write a text file through a temporary file in the same folder and ``os.replace``,
    so that a reader never sees half a file (``write(fh)`` writes the content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_labels_csv(path: str | os.PathLike[str], labels: Sequence[int] | np.ndarray, *,
                     flags: Sequence[str] | None = None,
                     duplicate_of: Sequence[int | None] | None = None) -> Path:
    """Write ``index,label,excluded,flag,duplicate_of`` for every item (atomically).

    ``labels``: ``(N,)`` non-negative integers; ``flags``: ``(N,)`` strings, each empty or
    one of :data:`FLAGS` (``excluded`` is written 1 exactly for flagged items);
    ``duplicate_of``: ``(N,)`` another item's index or ``None``. :func:`read_labels_csv`
    reads it back. Returns ``path``; raises ``ValueError`` naming the argument at fault.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"labels are written as CSV; path must end in .csv, got {str(path)!r}")
    values = [int(v) for v in labels]
    n = len(values)
    if any(v < 0 for v in values):
        raise ValueError(f"labels must be >= 0, got {min(values)}")
    flag_list = [str(f or "") for f in flags] if flags is not None else [""] * n
    dup_list = list(duplicate_of) if duplicate_of is not None else [None] * n
    if len(flag_list) != n:
        raise ValueError(f"flags has {len(flag_list)} entries, labels has {n}")
    if len(dup_list) != n:
        raise ValueError(f"duplicate_of has {len(dup_list)} entries, labels has {n}")
    bad = [f for f in flag_list if f and f not in FLAGS]
    if bad:
        raise ValueError(f"flags: {bad[0]!r} is not one of {', '.join(FLAGS)} (or empty)")

    def write(fh: IO[str]) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABELS_CSV_COLUMNS)
        for i in range(n):
            dup = dup_list[i]
            writer.writerow([i, values[i], int(bool(flag_list[i])), flag_list[i],
                             "" if dup is None else int(dup)])

    atomic_write(path, write)
    return path
