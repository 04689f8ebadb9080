"""ComBat harmonisation of a cohort feature table across batches (sites, scanners).

ComBat (Johnson et al., Biostatistics 2007;8:118-127) removes additive and multiplicative
batch effects per feature, pooling information across features with empirical Bayes, while
keeping the effects of given biological covariates. The implementation is the
``neuroCombat`` package (Fortin et al., NeuroImage 2017/2018; PyPI ``neuroCombat``), the
Python ComBat used for multi-site imaging and radiomics harmonisation; this module only
prepares the table, checks it and puts the harmonised values back.

Feature columns are the numeric columns other than the batch, the covariates, the row
identifiers (``image``, ``label``, ``segment``, ``case``, ``repetition``, ``error``) and
diagnostics. Numeric covariates are kept as continuous, others as categorical. A feature
with missing values, or one that is constant, cannot be harmonised: it is left unchanged
and reported.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from primage.errors import PrimageInputError

#: Columns that identify rows rather than measure anything.
ID_COLUMNS = ("image", "label", "segment", "case", "repetition", "error")


@dataclass
class Harmonised:
    """ComBat's result: the rows with harmonised features, and what was left as it was."""

    rows: list[dict[str, Any]]
    features: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def feature_columns(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], exclude: Sequence[str]
) -> list[str]:
    """Columns holding numbers in every non-empty cell, minus ids, diagnostics, ``exclude``."""
    features = []
    for column in columns:
        if column in exclude or column in ID_COLUMNS or column.startswith("diagnostics"):
            continue
        values = [row.get(column) for row in rows]
        present = [v for v in values if v is not None and str(v).strip() != ""]
        if present and all(_number(v) is not None for v in present):
            features.append(column)
    return features


def combat(
    rows: Sequence[Mapping[str, Any]],
    batch: str,
    covariates: Sequence[str] = (),
    *,
    columns: Sequence[str] | None = None,
    empirical_bayes: bool = True,
) -> Harmonised:
    """Harmonise the feature columns of ``rows`` across the values of column ``batch``.

    Refuses a missing batch or covariate column, an empty batch cell, a single batch and
    a batch with fewer than two cases (ComBat estimates a variance per batch).
    """
    rows = [dict(row) for row in rows]
    if not rows:
        raise PrimageInputError("the feature table has no rows")
    columns = list(columns) if columns is not None else list(rows[0].keys())
    for column in (batch, *covariates):
        if column not in columns:
            raise PrimageInputError(
                f"column {column!r} is not in the feature table (columns: "
                f"{', '.join(columns[:8])}{', ...' if len(columns) > 8 else ''})"
            )
    if batch in covariates:
        raise PrimageInputError(f"the batch column {batch!r} cannot also be a covariate")
    batches = [str(row.get(batch, "")).strip() for row in rows]
    empty = [index + 2 for index, value in enumerate(batches) if not value]
    if empty:
        raise PrimageInputError(f"batch column {batch!r} is empty on line {empty[0]}")
    counts = {value: batches.count(value) for value in dict.fromkeys(batches)}
    if len(counts) < 2:
        raise PrimageInputError(
            f"ComBat needs at least two batches; column {batch!r} has only {next(iter(counts))!r}"
        )
    small = [f"{value!r} ({count})" for value, count in counts.items() if count < 2]
    if small:
        raise PrimageInputError(
            "every batch needs at least two cases for ComBat to estimate its variance; "
            f"too few in batch {', '.join(small)}"
        )
    continuous, categorical = [], []
    for covariate in covariates:
        values = [row.get(covariate) for row in rows]
        if any(v is None or str(v).strip() == "" for v in values):
            raise PrimageInputError(f"covariate {covariate!r} has empty cells")
        (continuous if all(_number(v) is not None for v in values) else categorical).append(
            covariate
        )

    features = feature_columns(columns, rows, [batch, *covariates])
    if not features:
        raise PrimageInputError("the feature table has no numeric feature column to harmonise")
    skipped: dict[str, str] = {}
    usable = []
    for feature in features:
        values = [_number(row.get(feature)) for row in rows]
        if any(v is None or not math.isfinite(v) for v in values):
            skipped[feature] = "missing or non-finite values"
        elif max(values) == min(values):
            skipped[feature] = "constant"
        else:
            usable.append(feature)
    if not usable:
        raise PrimageInputError(
            "no feature can be harmonised (every feature is constant or has missing values)"
        )

    if empirical_bayes and len(usable) < 2:
        raise PrimageInputError(
            "empirical Bayes ComBat pools its priors over features and needs at least two; "
            "with one feature use the plain location/scale adjustment (--no-empirical-bayes)"
        )
    data = np.array([[_number(row[f]) for row in rows] for f in usable], dtype=np.float64)
    harmonised = _run_neurocombat(
        data, batches, rows, continuous, categorical, batch, empirical_bayes
    )
    result_rows = [dict(row) for row in rows]
    done = []
    for index, feature in enumerate(usable):
        values = harmonised[index]
        if not np.all(np.isfinite(values)):
            # e.g. a feature constant within one batch: ComBat divides by its variance.
            skipped[feature] = "ComBat gave non-finite values (a batch without variance?)"
            continue
        for row, value in zip(result_rows, values, strict=True):
            row[feature] = float(value)
        done.append(feature)
    return Harmonised(result_rows, done, skipped)


def _run_neurocombat(data, batches, rows, continuous, categorical, batch, empirical_bayes):
    import pandas as pd
    from neuroCombat import neuroCombat

    covars = pd.DataFrame({"__batch__": batches})
    for name in continuous:
        covars[name] = [float(_number(row[name])) for row in rows]
    for name in categorical:
        covars[name] = [str(row[name]).strip() for row in rows]
    # neuroCombat prints each step to stdout; the CLI's stdout must stay clean.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        np.errstate(all="ignore"),
        warnings.catch_warnings(),
    ):
        # A degenerate feature warns inside numpy; it is reported as skipped below.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            output = neuroCombat(
                dat=data,  # a float64 array: a DataFrame would be cast to float32
                covars=covars,
                batch_col="__batch__",
                categorical_cols=list(categorical),
                continuous_cols=list(continuous),
                eb=empirical_bayes,
            )
        except np.linalg.LinAlgError:
            raise PrimageInputError(
                f"the design of batch {batch!r} and the covariates is singular (a covariate "
                "that is constant, or confounded with the batch?)"
            ) from None
    return np.asarray(output["data"], dtype=np.float64)
