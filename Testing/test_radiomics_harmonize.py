"""`primage radiomics harmonize`: ComBat (neuroCombat) across a batch column."""

import csv

import numpy as np
import pytest

from primage.cli import main
from primage.errors import PrimageInputError
from primage.radiomics.harmonize import combat, feature_columns


def _cohort(seed=0, per_batch=(8, 10, 7)):
    """Rows with 3 sites: additive and multiplicative site effects, an age effect kept."""
    rng = np.random.default_rng(seed)
    rows = []
    shift = {"A": 0.0, "B": 3.0, "C": -2.0}
    scale = {"A": 1.0, "B": 2.0, "C": 0.6}
    for site, count in zip("ABC", per_batch, strict=True):
        for index in range(count):
            age = float(rng.uniform(1, 15))
            row = {"image": f"{site}{index}", "label": "1", "site": site, "age": age}
            for feature in range(6):
                # ComBat's model: y = a + age effect + site shift + site scale x error.
                noise = scale[site] * rng.normal(0.0, 1.0)
                row[f"f{feature}"] = 10.0 + feature + 0.5 * age + shift[site] + noise
            row["constant"] = 4.0
            rows.append(row)
    return rows


def _location_scale(rows, features, batch):
    """Independent non-empirical-Bayes ComBat (Johnson et al. 2007, eqs. 2.1-2.3 without
    shrinkage): per feature, standardise with the pooled OLS fit, then remove each batch's
    own mean and variance of the standardised residuals."""
    batches = sorted({row[batch] for row in rows})
    b = np.array([[row[batch] == level for level in batches] for row in rows], dtype=float)
    y = np.array([[row[f] for f in features] for row in rows], dtype=float)  # samples x features
    n = len(rows)
    beta, *_ = np.linalg.lstsq(b, y, rcond=None)
    grand = (b.sum(axis=0) / n) @ beta  # weighted mean of the batch means
    pooled = ((y - b @ beta) ** 2).mean(axis=0)
    z = (y - grand) / np.sqrt(pooled)
    out = np.empty_like(y)
    for index in range(len(batches)):
        members = b[:, index] == 1
        gamma = z[members].mean(axis=0)
        delta = z[members].var(axis=0, ddof=1)
        out[members] = (z[members] - gamma) / np.sqrt(delta) * np.sqrt(pooled) + grand
    return out


def test_equals_an_independent_location_scale_combat():
    rows = [{k: v for k, v in row.items() if k != "age"} for row in _cohort()]
    features = [f"f{i}" for i in range(6)]
    result = combat(rows, "site", empirical_bayes=False)
    assert result.features == features and result.skipped == {"constant": "constant"}
    ours = np.array([[row[f] for f in features] for row in result.rows])
    np.testing.assert_allclose(ours, _location_scale(rows, features, "site"), rtol=1e-9)


def test_empirical_bayes_removes_site_effects_and_keeps_the_covariate():
    rows = _cohort(seed=1, per_batch=(30, 30, 30))
    result = combat(rows, "site", ["age"])
    ages = {s: np.array([r["age"] for r in rows if r["site"] == s]) for s in "ABC"}

    def residuals(table, feature, site):
        # The feature with its age effect (0.5 / year) taken out.
        values = np.array([r[feature] for r in table if r["site"] == site])
        return values - 0.5 * ages[site]

    for feature in ("f0", "f3"):
        before = [residuals(rows, feature, s) for s in "ABC"]
        after = [residuals(result.rows, feature, s) for s in "ABC"]
        # Site shifts (0, +3, -2) are gone...
        assert np.ptp([v.mean() for v in after]) < 0.25 * np.ptp([v.mean() for v in before])
        # ... and site scales (1, 2, 0.6) too: SDs alike after, 3x apart before.
        sd_before, sd_after = [v.std() for v in before], [v.std() for v in after]
        assert max(sd_after) / min(sd_after) < 1.5 < sd_before[1] / sd_before[2]
        # The age effect survives harmonisation (pooled slope of the feature on age).
        age = np.array([r["age"] for r in result.rows])
        slope = np.polyfit(age, [r[feature] for r in result.rows], 1)[0]
        assert slope == pytest.approx(0.5, abs=0.15)
    assert result.rows[0]["image"] == rows[0]["image"] and result.rows[0]["constant"] == 4.0


def test_categorical_covariate_and_feature_detection():
    rows = _cohort(seed=2)
    for index, row in enumerate(rows):
        row["stage"] = "high" if index % 2 else "low"
        row["diagnostics_hash"] = "abc"
    columns = list(rows[0])
    assert feature_columns(columns, rows, ["site", "age", "stage"]) == [
        "f0", "f1", "f2", "f3", "f4", "f5", "constant"
    ]  # fmt: skip
    result = combat(rows, "site", ["age", "stage"])
    assert len(result.features) == 6


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: rows[:9], "at least two cases"),  # site B has a single case
        (lambda rows: [dict(r, site="A") for r in rows], "at least two batches"),
        (
            lambda rows: [dict(r, site="") if i == 3 else r for i, r in enumerate(rows)],
            "empty on line 5",
        ),
    ],
)
def test_bad_batches_are_refused(mutate, message):
    with pytest.raises(PrimageInputError, match=message):
        combat(mutate(_cohort()), "site")


def test_bad_columns_are_refused():
    rows = _cohort()
    with pytest.raises(PrimageInputError, match="'scanner' is not in the feature table"):
        combat(rows, "scanner")
    with pytest.raises(PrimageInputError, match="cannot also be a covariate"):
        combat(rows, "site", ["site"])
    one = [{"site": s, "f": float(i)} for i, s in enumerate("AABB")]
    with pytest.raises(PrimageInputError, match="needs at least two"):
        combat(one, "site")
    plain = [r["f"] for r in combat(one, "site", empirical_bayes=False).rows]
    assert np.mean(plain[:2]) == pytest.approx(np.mean(plain[2:]))  # batch shift removed
    with pytest.raises(PrimageInputError, match="no numeric feature"):
        combat([{"site": s, "name": "x"} for s in "AABB"], "site")


def _write(rows, path):
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_command_line(tmp_path, capsys):
    rows = _cohort()
    rows[0]["f5"] = ""  # a missing value: that feature is left as it is
    _write(rows, tmp_path / "cohort.csv")
    output = tmp_path / "harmonised.csv"
    code = main(
        ["radiomics", "harmonize", "--features", str(tmp_path / "cohort.csv"), "--batch", "site",
         "--covariate", "age", "--output", str(output)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 feature(s) left unchanged" in err and "primage: wrote" in err
    with open(output, newline="") as stream:
        harmonised = list(csv.DictReader(stream))
    assert list(harmonised[0]) == list(rows[0])
    assert harmonised[0]["f5"] == "" and harmonised[1]["f5"] == repr(rows[1]["f5"])
    assert float(harmonised[1]["f0"]) != rows[1]["f0"]

    small = _cohort(per_batch=(1, 5, 5))
    _write(small, tmp_path / "small.csv")
    code = main(
        ["radiomics", "harmonize", "--features", str(tmp_path / "small.csv"), "--batch", "site",
         "--output", str(tmp_path / "out.csv")]
    )  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "batch 'A' (1)" in lines[0]
    assert not (tmp_path / "out.csv").exists()
