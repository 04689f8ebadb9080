"""CSV tables of rows (one dictionary per row): written atomically, read back as text.

Numbers are written with ``repr`` (the shortest text that reads back as the same float),
so a value read from the CSV equals the value computed, bit for bit. Missing values are
empty cells.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from primage.errors import PrimageInputError
from primage.io import write_text


def column_names(rows: Iterable[Mapping]) -> list[str]:
    """Column names in order of first appearance over all rows."""
    names: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                names.append(str(key))
    return names


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return "nan" if math.isnan(number) else repr(number)
    return str(value)


def csv_text(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """CSV text (header line, then one line per row) of ``rows``."""
    columns = list(columns) if columns is not None else column_names(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def write_csv(
    rows: Sequence[Mapping], path: str | os.PathLike, columns: Sequence[str] | None = None
) -> Path:
    """Write ``rows`` as CSV atomically (temporary file, then rename)."""
    return write_text(csv_text(rows, columns), path)


def read_csv(
    path: str | os.PathLike, *, role: str = "table"
) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV file with a header line; returns ``(columns, rows)`` with text cells."""
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"{role} file does not exist: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            lines = [line for line in reader if any(cell.strip() for cell in line)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise PrimageInputError(f"{role} {path} is not a readable CSV file ({error})") from None
    if not lines:
        raise PrimageInputError(f"{role} {path} is empty; a header line and rows are expected")
    columns = [cell.strip() for cell in lines[0]]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise PrimageInputError(f"{role} {path} has duplicate columns: {', '.join(duplicates)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(columns):
            raise PrimageInputError(
                f"{role} {path} line {number} has {len(line)} cells; the header has {len(columns)}"
            )
        rows.append({column: cell.strip() for column, cell in zip(columns, line, strict=True)})
    return columns, rows


def to_float(text: str) -> float | None:
    """A cell as a number (None when empty or not a number)."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None
