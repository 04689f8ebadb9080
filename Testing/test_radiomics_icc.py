"""ICC(2,1) with its confidence interval, against published and independent computations."""

import math

import numpy as np
import pytest

from primage.radiomics.icc import icc_2_1, icc_class

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=float,
)


def test_shrout_fleiss_published_example():
    """ICC(2,1) = 0.29 (Shrout & Fleiss 1979); 95 % CI 0.019-0.76 as R psych::ICC reports."""
    icc, low, high = icc_2_1(SHROUT_FLEISS)
    assert icc == pytest.approx(0.29, abs=0.005)
    assert low == pytest.approx(0.019, abs=0.0005)
    assert high == pytest.approx(0.76, abs=0.005)


def _icc_by_least_squares(data: np.ndarray) -> float:
    """Independent route: mean squares from least-squares fits of the two-way ANOVA model."""
    n, k = data.shape
    y = data.ravel()
    subject = np.repeat(np.arange(n), k)
    rater = np.tile(np.arange(k), n)
    ones = np.ones((n * k, 1))
    subjects = np.eye(n)[subject][:, 1:]
    raters = np.eye(k)[rater][:, 1:]

    def rss(design):
        coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((y - design @ coefficients) ** 2))

    full = rss(np.hstack([ones, subjects, raters]))
    without_subjects = rss(np.hstack([ones, raters]))
    without_raters = rss(np.hstack([ones, subjects]))
    msr = (without_subjects - full) / (n - 1)
    msc = (without_raters - full) / (k - 1)
    mse = full / ((n - 1) * (k - 1))
    # Shrout & Fleiss' ICC(2,1) from the expected mean squares of the random model.
    sigma_subjects = (msr - mse) / k
    sigma_raters = (msc - mse) / n
    return sigma_subjects / (sigma_subjects + sigma_raters + mse)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_an_independent_least_squares_anova(seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 2, (9, 1)) + rng.normal(0, 0.7, (1, 3)) + rng.normal(0, 1, (9, 3))
    assert icc_2_1(data)[0] == pytest.approx(_icc_by_least_squares(data), rel=1e-10)


def test_simulated_coverage_of_the_confidence_interval():
    """Two-way random model with a known ICC: estimates centre on it, the CI covers ~95 %."""
    rng = np.random.default_rng(7)
    sd_subject, sd_rater, sd_error = 2.0, 0.5, 1.0
    truth = sd_subject**2 / (sd_subject**2 + sd_rater**2 + sd_error**2)  # 0.76
    estimates, covered = [], 0
    trials = 600
    for _ in range(trials):
        data = (
            rng.normal(0, sd_subject, (15, 1))
            + rng.normal(0, sd_rater, (1, 3))
            + rng.normal(0, sd_error, (15, 3))
        )
        icc, low, high = icc_2_1(data)
        estimates.append(icc)
        covered += low <= truth <= high
    assert np.median(estimates) == pytest.approx(truth, abs=0.05)
    assert 0.92 <= covered / trials <= 0.98


def test_edge_cases_and_classes():
    identical = np.repeat(np.arange(5.0)[:, None], 3, axis=1)
    assert icc_2_1(identical) == (1.0, 1.0, 1.0)
    constant = np.ones((4, 2))
    assert all(math.isnan(v) for v in icc_2_1(constant))
    # A rater offset lowers absolute agreement (consistency would ignore it).
    shifted = np.column_stack([np.arange(6.0), np.arange(6.0) + 3.0])
    assert icc_2_1(shifted)[0] < 0.6
    with pytest.raises(ValueError):
        icc_2_1(np.ones((1, 3)))
    with pytest.raises(ValueError):
        icc_2_1(np.array([[1.0, np.nan], [2.0, 3.0]]))
    assert [icc_class(v) for v in (0.95, 0.9, 0.8, 0.75, 0.5, math.nan)] == [
        "excellent", "excellent", "good", "good", "poor", "n/a"
    ]  # fmt: skip
