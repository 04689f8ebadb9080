"""Intraclass correlation ICC(2,1) with its confidence interval.

Two-way random effects, absolute agreement, single rater: ICC(2,1) in Shrout & Fleiss
(Psychol Bull 1979;86:420-428), ICC(A,1) in McGraw & Wong (Psychol Methods 1996;1:30-46),
the form Koo & Li (J Chiropr Med 2016;15:155-163) recommend for inter-rater reliability.
From the two-way ANOVA of an n subjects x k raters table (mean squares MSR for subjects,
MSC for raters, MSE residual)::

    ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

The confidence interval is McGraw & Wong's (their Table 7, case 2A) with Satterthwaite's
degrees of freedom, as in R's ``psych::ICC`` and ``irr::icc``. A few lines of numpy and
scipy: pingouin would add pandas, statsmodels, scikit-learn, matplotlib and seaborn for
this one formula. Validated in ``Testing/test_radiomics_icc.py`` against Shrout &
Fleiss' published example, an independent least-squares ANOVA and simulated data.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

#: Classes by the ICC point estimate (Koo & Li 2016, with "moderate" merged into poor).
EXCELLENT = 0.90
GOOD = 0.75


def icc_2_1(ratings: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """ICC(2,1) and its ``confidence`` interval for an (n subjects, k raters) table.

    Needs n >= 2 and k >= 2 finite values (drop incomplete subjects first). Returns
    ``(icc, low, high)``; NaN where undefined (no variance at all). A table without any
    residual or rater variance (perfect agreement) gives ``(1, 1, 1)``.
    """
    data = np.asarray(ratings, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 2:
        raise ValueError("ICC needs a table of at least 2 subjects x 2 raters")
    if not np.all(np.isfinite(data)):
        raise ValueError("ICC needs finite ratings (drop incomplete subjects first)")
    n, k = data.shape
    grand = data.mean()
    ss_rows = k * np.sum((data.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((data.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((data - grand) ** 2)
    ss_error = max(ss_total - ss_rows - ss_cols, 0.0)
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    # Relative to the data's scale: below this the residual is rounding noise.
    tiny = 1e-12 * max(ss_total, np.finfo(float).tiny)
    if ss_total <= np.finfo(float).tiny:
        return math.nan, math.nan, math.nan
    if ss_error <= tiny and ss_cols <= tiny:
        return 1.0, 1.0, 1.0
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    icc = (msr - mse) / denominator if denominator > 0 else math.nan
    low, high = _confidence_interval(icc, msr, msc, mse, n, k, confidence)
    return float(icc), low, high


def _confidence_interval(icc, msr, msc, mse, n, k, confidence) -> tuple[float, float]:
    if not math.isfinite(icc) or icc >= 1.0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    a = k * icc / (n * (1.0 - icc))
    b = 1.0 + k * icc * (n - 1) / (n * (1.0 - icc))
    numerator = (a * msc + b * mse) ** 2
    denominator = (a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1))
    if denominator <= 0:
        return math.nan, math.nan
    v = numerator / denominator
    f_low = stats.f.ppf(1.0 - alpha / 2.0, n - 1, v)
    f_high = stats.f.ppf(1.0 - alpha / 2.0, v, n - 1)
    spread = k * msc + (k * n - k - n) * mse
    low = n * (msr - f_low * mse) / (f_low * spread + n * msr)
    high = n * (f_high * msr - mse) / (spread + n * f_high * msr)
    return float(low), float(high)


def icc_class(icc: float) -> str:
    """``excellent`` (>= 0.90), ``good`` (>= 0.75), ``poor``, or ``n/a`` for NaN."""
    if not math.isfinite(icc):
        return "n/a"
    if icc >= EXCELLENT:
        return "excellent"
    if icc >= GOOD:
        return "good"
    return "poor"
