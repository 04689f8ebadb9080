"""b-values and frame times: parsing and validation.

A list of numbers comes from a text file (whitespace- or comma-separated, so an FSL
``.bval`` file works as is; lines starting with ``#`` are comments), from a comma-separated
list on the command line ("0,50,400,800"), or from any sequence of numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from primage.errors import PrimageInputError

_SEPARATORS = re.compile(r"[\s,;]+")


def _numbers_from_text(text: str, role: str, where: str) -> np.ndarray:
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    tokens = [token for token in _SEPARATORS.split(" ".join(lines)) if token]
    if not tokens:
        raise PrimageInputError(f"{role} {where} holds no numbers")
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise PrimageInputError(f"{role} {where}: {token!r} is not a number") from None
    return np.asarray(values, dtype=float)


def parse_values(source: str | Path | Sequence[float] | np.ndarray, *, role: str) -> np.ndarray:
    """Numbers from a file path, a comma-separated string or a sequence (1D float array).

    ``role`` names the values in messages ("b-values", "frame times"). Non-finite values
    are refused.
    """
    if isinstance(source, (str, Path)):
        text = str(source).strip()
        path = Path(text)
        if path.is_file():
            try:
                content = path.read_text(encoding="utf-8", errors="strict")
            except (OSError, UnicodeDecodeError) as error:
                raise PrimageInputError(f"cannot read {role} file {path}: {error}") from None
            values = _numbers_from_text(content, role, f"file {path}")
        elif re.fullmatch(r"[\s,;0-9eE.+-]+", text) and re.search(r"[0-9]", text):
            values = _numbers_from_text(text, role, f"list {text!r}")
        else:
            raise PrimageInputError(
                f"{role}: {text!r} is neither an existing file nor a comma-separated list of numbers"
            )
    else:
        try:
            values = np.asarray(source, dtype=float).ravel()
        except (TypeError, ValueError):
            raise PrimageInputError(f"{role} must be numbers, got {source!r}") from None
    if values.size == 0:
        raise PrimageInputError(f"no {role} given")
    if not np.all(np.isfinite(values)):
        raise PrimageInputError(f"{role} must be finite numbers: {values.tolist()}")
    return values


def check_b_values(b_values: np.ndarray, frames: int, *, role: str = "DWI") -> np.ndarray:
    """b-values (s/mm^2) for a series of ``frames`` volumes: one per volume, >= 0, >= 2 distinct."""
    b_values = np.asarray(b_values, dtype=float).ravel()
    if b_values.size != frames:
        raise PrimageInputError(
            f"{b_values.size} b-values given but the {role} series has {frames} volumes; give "
            "one b-value per volume, in the order of the volumes"
        )
    if np.any(b_values < 0):
        raise PrimageInputError(f"b-values must be >= 0 s/mm^2: {b_values.tolist()}")
    if np.unique(b_values).size < 2:
        raise PrimageInputError(
            f"at least two distinct b-values are needed to fit a decay; got {b_values.tolist()}"
        )
    return b_values


def check_frame_times(times: np.ndarray, frames: int, *, role: str = "DCE") -> np.ndarray:
    """Frame times (s) for a series of ``frames`` volumes: one per volume, strictly increasing."""
    times = np.asarray(times, dtype=float).ravel()
    if times.size != frames:
        raise PrimageInputError(
            f"{times.size} frame times given but the {role} series has {frames} volumes; give "
            "one time (s) per volume"
        )
    if frames < 3:
        raise PrimageInputError(f"a dynamic series needs at least 3 frames, got {frames}")
    steps = np.diff(times)
    if np.any(steps <= 0):
        first = int(np.argmax(steps <= 0))
        kind = "duplicate" if steps[first] == 0 else "unsorted"
        raise PrimageInputError(
            f"frame times must be strictly increasing (s); {kind} times at positions {first} "
            f"and {first + 1}: {times[first]:g}, {times[first + 1]:g}"
        )
    return times


def format_values(values: Sequence[float]) -> str:
    """Comma-separated text of numbers, shortest exact form ("0, 50, 400.5")."""
    return ", ".join(np.format_float_positional(float(v), trim="-") for v in values)
