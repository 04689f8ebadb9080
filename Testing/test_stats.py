"""primage.stats against scipy and hand-computed values, and `primage stats compare`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats as sps

from primage.cli import main
from primage.errors import PrimageInputError
from primage.stats import (
    benjamini_hochberg,
    bootstrap_auc_ci,
    compare_groups,
    compare_table,
    roc_auc,
    youden_cutoff,
)


def _groups(seed=0, shift=0.8, n=(23, 31)):
    rng = np.random.default_rng(seed)
    # Rounded: ties inside and across the groups, as in real feature tables.
    negative = np.round(rng.normal(0.0, 1.0, n[0]), 1)
    positive = np.round(rng.normal(shift, 1.0, n[1]), 1)
    return negative, positive


def test_auc_and_p_match_scipy_mann_whitney():
    negative, positive = _groups()
    result = compare_groups(negative, positive, resamples=500)
    test = sps.mannwhitneyu(positive, negative, alternative="two-sided")
    assert result["p_value"] == pytest.approx(test.pvalue, rel=1e-12)
    assert result["u_statistic"] == pytest.approx(test.statistic)
    auc = test.statistic / (negative.size * positive.size)
    assert result["auc"] == pytest.approx(auc, rel=1e-12)
    assert result["effect_size_rank_biserial"] == pytest.approx(2 * auc - 1)
    # Pairwise definition of the AUC, independently of ranks.
    pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    assert roc_auc(negative, positive) == pytest.approx(pairs.mean(), rel=1e-12)


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(1).uniform(0, 0.2, 40)
    p[3] = p[7]  # ties
    np.testing.assert_allclose(benjamini_hochberg(p), sps.false_discovery_control(p), rtol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    adjusted = benjamini_hochberg(with_nan)
    assert np.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2, 3]], sps.false_discovery_control([0.01, 0.04, 0.03]))


def test_youden_cutoff_on_a_hand_example():
    negative = [1.0, 2.0, 3.0, 4.0]
    positive = [3.5, 5.0, 6.0]
    best = youden_cutoff(negative, positive)
    # At >= 3.5: sensitivity 3/3, specificity 3/4 -> J = 0.75, the maximum.
    assert best == {
        "cutoff": 3.5,
        "direction": ">=",
        "sensitivity": 1.0,
        "specificity": 0.75,
        "youden_j": 0.75,
    }
    # Lower values pointing to the positive group: the rule turns around.
    flipped = youden_cutoff([-x for x in negative], [-x for x in positive])
    assert flipped["direction"] == "<=" and flipped["cutoff"] == -3.5
    assert flipped["youden_j"] == 0.75


def test_bootstrap_ci():
    negative, positive = _groups(seed=2)
    low, high = bootstrap_auc_ci(negative, positive, resamples=1000, seed=3)
    assert low < roc_auc(negative, positive) < high
    assert (low, high) == bootstrap_auc_ci(negative, positive, resamples=1000, seed=3)
    assert bootstrap_auc_ci([1, 2, 3], [7, 8, 9], resamples=200) == (1.0, 1.0)
    # Against scipy's own percentile bootstrap of the same statistic: close, not equal
    # (different resampling streams).
    reference = sps.bootstrap(
        (negative, positive),
        lambda n, p: roc_auc(n, p),
        n_resamples=1000,
        method="percentile",
        vectorized=False,
        random_state=np.random.default_rng(4),
    ).confidence_interval
    assert abs(low - reference.low) < 0.05 and abs(high - reference.high) < 0.05


def test_compare_table_groups_and_errors():
    columns = ["case", "histology", "adc", "note"]
    rows = [
        {
            "case": f"c{i}",
            "histology": "benign" if i < 6 else "malignant",
            "adc": str(2.0 - 0.1 * i),
        }
        for i in range(12)
    ]
    rows[0]["adc"] = ""  # a failed case: left out
    for row in rows:
        row["note"] = "x"
    results = compare_table(columns, rows, "histology", resamples=200)
    assert [r["value"] for r in results] == ["adc"]  # numeric columns only
    adc = results[0]
    assert (adc["group_negative"], adc["group_positive"]) == ("benign", "malignant")
    assert adc["n_negative"] == 5 and adc["auc"] == 0.0 and adc["direction"] == "<="
    assert adc["p_adjusted"] == pytest.approx(adc["p_value"])
    with pytest.raises(PrimageInputError, match="no column 'grade'"):
        compare_table(columns, rows, "grade")
    rows[1]["histology"] = "ganglioneuroma"
    with pytest.raises(PrimageInputError, match="3 labels"):
        compare_table(columns, rows, "histology")
    picked = compare_table(
        columns, rows, "histology", groups=["benign", "malignant"], positive="benign", resamples=200
    )
    assert picked[0]["group_positive"] == "benign" and picked[0]["auc"] == 1.0


def test_cli_stats_compare(tmp_path, capsys):
    negative, positive = _groups(seed=5, shift=1.5)
    table = tmp_path / "features.csv"
    with open(table, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "group", "fcf_adc", "noise"])
        rng = np.random.default_rng(6)
        for i, value in enumerate(negative):
            writer.writerow([f"n{i}", "benign", value, rng.normal()])
        for i, value in enumerate(positive):
            writer.writerow([f"p{i}", "malignant", value, rng.normal()])
    output = tmp_path / "stats.csv"
    code = main(["stats", "compare", "--table", str(table), "--group", "group", "--output",
                 str(output), "--bootstrap", "500"])  # fmt: skip
    assert code == 0
    with open(output, newline="", encoding="utf-8") as stream:
        results = {r["value"]: r for r in csv.DictReader(stream)}
    assert set(results) == {"fcf_adc", "noise"}
    expected = sps.mannwhitneyu(positive, negative, alternative="two-sided").pvalue
    assert float(results["fcf_adc"]["p_value"]) == pytest.approx(expected, rel=1e-9)
    adjusted = sps.false_discovery_control(
        [float(results["fcf_adc"]["p_value"]), float(results["noise"]["p_value"])]
    )
    assert float(results["fcf_adc"]["p_adjusted"]) == pytest.approx(adjusted[0], rel=1e-9)
    assert float(results["fcf_adc"]["auc_ci_low"]) <= float(results["fcf_adc"]["auc"])
    assert "smallest adjusted p" in capsys.readouterr().err
    # Bad input: one line, exit 2, nothing written.
    assert main(["stats", "compare", "--table", str(table), "--group", "site", "--output",
                 str(tmp_path / "x.csv")]) == 2  # fmt: skip
    assert not (tmp_path / "x.csv").exists()
    assert main(["stats", "compare", "--table", str(table), "--group", "group", "--output",
                 str(table)]) == 2  # fmt: skip
