"""Two-group comparison of biomarker values: Mann-Whitney U, ROC AUC with a bootstrap CI,
Youden cut-off, Benjamini-Hochberg adjustment across values.

Conventions: the *positive* group is the one a high AUC points to (e.g. "malignant"); the
AUC is P(value of a positive case > value of a negative case) + 0.5 P(equal), so AUC < 0.5
means lower values indicate the positive group, and the cut-off then reads "value <= t".
The effect size is the rank-biserial correlation r = 2 AUC - 1 (-1..1). The p-value is
scipy's ``mannwhitneyu`` (two-sided; exact for small samples without ties, else the
normal approximation with tie and continuity corrections).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from primage.errors import PrimageInputError


def _clean(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def roc_auc(negative, positive) -> float:
    """ROC AUC of ``positive`` against ``negative`` values (ties count 1/2), from ranks."""
    from scipy.stats import rankdata

    negative, positive = _clean(negative), _clean(positive)
    if negative.size == 0 or positive.size == 0:
        raise PrimageInputError("the ROC AUC needs at least one value in each group")
    ranks = rankdata(np.concatenate([positive, negative]))
    rank_sum = ranks[: positive.size].sum()
    u_positive = rank_sum - positive.size * (positive.size + 1) / 2.0
    return float(u_positive / (positive.size * negative.size))


def bootstrap_auc_ci(
    negative, positive, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling each group with replacement
    (stratified, so every resample keeps both group sizes)."""
    from scipy.stats import rankdata

    negative, positive = _clean(negative), _clean(positive)
    if negative.size == 0 or positive.size == 0:
        raise PrimageInputError("the bootstrap needs at least one value in each group")
    if resamples < 100:
        raise PrimageInputError(f"use at least 100 bootstrap resamples, got {resamples}")
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    # Chunks keep memory at ~chunk x (n_pos + n_neg) values for large cohorts.
    chunk = max(1, min(resamples, 2_000_000 // (positive.size + negative.size)))
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        pos = positive[rng.integers(0, positive.size, (count, positive.size))]
        neg = negative[rng.integers(0, negative.size, (count, negative.size))]
        ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
        u = ranks[:, : positive.size].sum(axis=1) - positive.size * (positive.size + 1) / 2.0
        aucs[start : start + count] = u / (positive.size * negative.size)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return float(low), float(high)


def youden_cutoff(negative, positive) -> dict[str, Any]:
    """The cut-off maximising Youden's J = sensitivity + specificity - 1.

    The direction follows the AUC: ``>=`` (values at or above the cut-off are called
    positive) when AUC >= 0.5, else ``<=``. Candidate cut-offs are the observed values;
    among equal J the first in the direction of the rule wins.
    """
    negative, positive = _clean(negative), _clean(positive)
    direction = ">=" if roc_auc(negative, positive) >= 0.5 else "<="
    candidates = np.unique(np.concatenate([negative, positive]))
    if direction == "<=":
        candidates = candidates[::-1]
    best = None
    for cutoff in candidates:
        if direction == ">=":
            sensitivity = float(np.mean(positive >= cutoff))
            specificity = float(np.mean(negative < cutoff))
        else:
            sensitivity = float(np.mean(positive <= cutoff))
            specificity = float(np.mean(negative > cutoff))
        j = sensitivity + specificity - 1.0
        if best is None or j > best["youden_j"] + 1e-12:
            best = {
                "cutoff": float(cutoff),
                "direction": direction,
                "sensitivity": sensitivity,
                "specificity": specificity,
                "youden_j": j,
            }
    return best


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN stays NaN and is
    not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size == 0:
        return adjusted
    order = valid[np.argsort(p[valid])]
    m = valid.size
    scaled = p[order] * m / np.arange(1, m + 1)
    # Step-up: each adjusted value is the minimum of the scaled values from its rank on.
    scaled = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted


def compare_groups(negative, positive, *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every statistic of one value between two groups (see the module docstring)."""
    from scipy.stats import mannwhitneyu

    negative, positive = _clean(negative), _clean(positive)
    result: dict[str, Any] = {"n_negative": int(negative.size), "n_positive": int(positive.size)}
    if negative.size < 2 or positive.size < 2:
        result["error"] = "fewer than 2 values in a group"
        return result
    test = mannwhitneyu(positive, negative, alternative="two-sided")
    auc = roc_auc(negative, positive)
    low, high = bootstrap_auc_ci(negative, positive, resamples=resamples, seed=seed)
    result.update(
        {
            "median_negative": float(np.median(negative)),
            "median_positive": float(np.median(positive)),
            "u_statistic": float(test.statistic),
            "p_value": float(test.pvalue),
            "effect_size_rank_biserial": 2.0 * auc - 1.0,
            "auc": auc,
            "auc_ci_low": low,
            "auc_ci_high": high,
            **youden_cutoff(negative, positive),
            "error": "",
        }
    )
    return result


def _number(text: Any) -> float | None:
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def numeric_columns(
    columns: Sequence[str], rows: Sequence[Mapping[str, Any]], skip=()
) -> list[str]:
    """Columns whose non-empty cells are all numbers (and at least one is finite)."""
    chosen = []
    for column in columns:
        if column in skip:
            continue
        cells = [row.get(column) for row in rows]
        filled = [c for c in cells if c is not None and str(c).strip() != ""]
        numbers = [_number(c) for c in filled]
        if (
            filled
            and all(n is not None for n in numbers)
            and any(math.isfinite(n) for n in numbers)
        ):
            chosen.append(column)
    return chosen


def compare_table(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    group: str,
    *,
    values: Sequence[str] | None = None,
    positive: str | None = None,
    groups: Sequence[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Compare two groups of a table for each value column; one result row per column.

    ``group`` names the grouping column; with more than two labels, ``groups`` picks two.
    ``positive`` is the positive label (default: the second in sorted order). ``values``
    default to every numeric column except ``group`` and ``case``. Rows with an empty
    group or value are left out of that comparison. Adds ``p_adjusted`` (BH over values).
    """
    if group not in columns:
        raise PrimageInputError(
            f"the table has no column {group!r}; columns: {', '.join(columns[:20])}"
        )
    labels = sorted({str(r.get(group, "")).strip() for r in rows} - {""})
    if groups is not None:
        if len(groups) != 2 or groups[0] == groups[1]:
            raise PrimageInputError("--groups takes two different labels")
        missing = [g for g in groups if g not in labels]
        if missing:
            raise PrimageInputError(
                f"group label {missing[0]!r} is not in column {group!r} (labels: {', '.join(labels)})"
            )
        labels = list(groups)
    elif len(labels) != 2:
        raise PrimageInputError(
            f"column {group!r} has {len(labels)} labels ({', '.join(labels)}); the comparison "
            "needs exactly two (choose them with --groups A B)"
        )
    if positive is None:
        positive = labels[1]
    if positive not in labels:
        raise PrimageInputError(f"positive label {positive!r} is not one of {', '.join(labels)}")
    negative = labels[0] if labels[1] == positive else labels[1]
    if values is None:
        values = numeric_columns(columns, rows, skip=(group, "case"))
        if not values:
            raise PrimageInputError("the table has no numeric column to compare")
    else:
        unknown = [v for v in values if v not in columns]
        if unknown:
            raise PrimageInputError(f"the table has no column {unknown[0]!r}")
    results = []
    for value in values:
        by_label: dict[str, list[float]] = {negative: [], positive: []}
        non_numeric = 0
        for row in rows:
            label = str(row.get(group, "")).strip()
            if label not in by_label:
                continue
            number = _number(row.get(value))
            if number is None:
                non_numeric += str(row.get(value) or "").strip() != ""
                continue
            by_label[label].append(number)
        result = {"value": value, "group_negative": negative, "group_positive": positive}
        if non_numeric:
            result.update(error=f"{non_numeric} non-numeric cell(s)")
        else:
            result.update(
                compare_groups(
                    by_label[negative], by_label[positive], resamples=resamples, seed=seed
                )
            )
        results.append(result)
    adjusted = benjamini_hochberg([r.get("p_value", np.nan) for r in results])
    for result, p in zip(results, adjusted, strict=True):
        result["p_adjusted"] = None if np.isnan(p) else float(p)
    return results


#: Column order of the comparison table (``primage stats compare --output``).
RESULT_COLUMNS = (
    "value", "group_negative", "group_positive", "n_negative", "n_positive",
    "median_negative", "median_positive", "u_statistic", "p_value", "p_adjusted",
    "effect_size_rank_biserial", "auc", "auc_ci_low", "auc_ci_high", "cutoff", "direction",
    "sensitivity", "specificity", "youden_j", "error",
)  # fmt: skip
