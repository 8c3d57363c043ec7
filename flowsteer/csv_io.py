"""Numeric CSV files: data for ``--data`` / ``--target``, and samples from ``sample --out x.csv``.

Reading (:func:`read_csv`): comma-separated numbers, one sample per row, with or without a header row.
The first row is a header when any of its fields is a word (not a number, not blank).  A header column named ``y`` or
``label`` (any case) holds integer class labels; every other column is a feature.  Blank lines are
skipped; a missing or non-numeric value elsewhere is an error naming its row and column.

Writing (:func:`write_csv`): ``[N, D]`` samples with the header ``x0,...,x{D-1}``, full float32
precision (``repr`` of each value), so reading the file back gives the same numbers.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .io import atomic_path

LABEL_COLUMNS = ("y", "label")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x [N, D] float64, labels [N] int64 or None)`` from a numeric CSV file (rules in the module docstring)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and any(field.strip() for field in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as a CSV file ({type(exc).__name__}); save it as UTF-8 "
                        "comma-separated numbers") from None
    if not rows:
        raise DataError(f"{path}: the CSV file is empty; give one sample per row")
    header = None
    if any(field.strip() and _number(field.strip()) is None for field in rows[0]):  # words, not blanks
        header, rows = [field.strip() for field in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0]) if rows else 0
    label_col = next((i for i, name in enumerate(header or []) if name.lower() in LABEL_COLUMNS), None)
    values = np.empty((len(rows), width), dtype=np.float64)
    for r, row in enumerate(rows):
        line = r + (2 if header else 1)
        if len(row) != width:
            raise DataError(f"{path}: row {line} has {len(row)} field(s), the first row {width}; give every row the "
                            "same columns")
        for c, field in enumerate(row):
            v = _number(field.strip())
            if v is None:
                name = f" ({header[c]!r})" if header else ""
                raise DataError(f"{path}: row {line}, column {c + 1}{name} is {field.strip()!r}, not a number; "
                                "fill in or remove that row")
            values[r, c] = v
    labels = None
    if label_col is not None:
        col = values[:, label_col]
        if not all(math.isfinite(v) and v == int(v) for v in col):
            raise DataError(f"{path}: the label column {header[label_col]!r} must hold whole class numbers; rename it "
                            "if it is a feature")
        labels = col.astype(np.int64)
        values = np.delete(values, label_col, axis=1)
    if values.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the labels; give at least one")
    return values, labels


def write_csv(x: np.ndarray, path: str | Path) -> None:
    """Write ``[N, D]`` samples as CSV with a header row (atomically)."""
    if x.ndim != 2:
        raise ConfigError(f"a CSV file holds vectors [N, D], but samples have shape {tuple(x.shape[1:])}; write .npy "
                          "or .png instead")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"x{i}" for i in range(x.shape[1])])
            writer.writerows([[repr(float(v)) for v in row] for row in x.astype(np.float32)])
