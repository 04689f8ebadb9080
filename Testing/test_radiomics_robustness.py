"""`primage radiomics robustness`: ICC(2,1) per feature over cases x repetitions."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from _primage_images import image_from_array
from _radiomics_data import FAST_PARAMS, textured_image

from primage.cli import main
from primage.errors import PrimageInputError
from primage.radiomics.params import load_params
from primage.radiomics.robustness import (
    Case,
    check_cases,
    icc_table,
    parse_perturbations,
    robustness,
)

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

SHAPE = (16, 24, 24)


def _ellipsoid(radii, centre=(8, 12, 12)) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True))
    return (inside <= 1.0).astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four cases of different tumour sizes; two observers (the second 1 voxel larger)."""
    folder = tmp_path_factory.mktemp("cohort")
    (folder / "fast.yaml").write_text(FAST_PARAMS)
    rows = []
    for index, radius in enumerate((3.0, 4.0, 5.0, 6.0)):
        name = f"case{index}"
        sitk.WriteImage(
            image_from_array(textured_image(SHAPE, seed=index)), str(folder / f"{name}.nii.gz")
        )
        for observer, grow in ((1, 0.0), (2, 0.7)):
            mask = _ellipsoid((radius * 0.6 + grow, radius + grow, radius + grow))
            path = folder / f"{name}_obs{observer}.nii.gz"
            sitk.WriteImage(image_from_array(mask * 3), str(path))  # label 3: any non-zero counts
            rows.append((name, f"{name}.nii.gz", path.name))
    with open(folder / "cases.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "image", "mask"])
        writer.writerows(rows)
    single = folder / "single.csv"
    with open(single, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "image", "mask"])
        writer.writerows([r for r in rows if r[2].endswith("obs1.nii.gz")])
    return folder


def _read(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_observers_from_the_command_line(cohort, tmp_path, capsys):
    output = tmp_path / "icc.csv"
    code = main(
        ["radiomics", "robustness", "--cases", str(cohort / "cases.csv"), "--params",
         str(cohort / "fast.yaml"), "--output", str(output), "--features-output",
         str(tmp_path / "features.csv"), "--quiet", "--workers", "1"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with open(output) as stream:
        assert stream.readline().strip() == "feature,icc,ci_low,ci_high,class"
    rows = {row["feature"]: row for row in _read(output)}
    assert len(rows) == 14 + 18 + 3 + 2
    volume = rows["original_shape_VoxelVolume"]
    # Volumes differ a lot between cases and little between observers (but always in the
    # same direction): good or excellent agreement, inside its confidence interval.
    assert float(volume["icc"]) > 0.75 and volume["class"] in ("good", "excellent")
    assert float(volume["ci_low"]) <= float(volume["icc"]) <= float(volume["ci_high"])
    features = _read(tmp_path / "features.csv")
    assert [(r["case"], r["repetition"]) for r in features[:2]] == [
        ("case0", "observer 1"), ("case0", "observer 2")
    ]  # fmt: skip


def test_perturbations_from_the_command_line(cohort, tmp_path, capsys):
    """Translation and noise leave the region's shape as it is: shape ICCs are exactly 1,
    while intensity features (which see other voxels, or noisier ones) are not."""
    output = tmp_path / "icc.csv"
    code = main(
        ["radiomics", "robustness", "--cases", str(cohort / "single.csv"), "--perturb",
         "translate,noise", "--params", str(cohort / "fast.yaml"), "--output", str(output),
         "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = {row["feature"]: row for row in _read(output)}
    shape = {name: row for name, row in rows.items() if name.startswith("original_shape_")}
    assert len(shape) == 14 and all(float(row["icc"]) == 1.0 for row in shape.values())
    assert float(rows["original_firstorder_Mean"]["icc"]) < 1.0
    assert {row["class"] for row in rows.values()} <= {"excellent", "good", "poor", "n/a"}

    # Erosion and dilation by a voxel on these small tumours (radius 3-6 voxels) change
    # the volume as much as the tumours differ: the volume is then not robust.
    code = main(
        ["radiomics", "robustness", "--cases", str(cohort / "single.csv"), "--perturb",
         "erode,dilate", "--params", str(cohort / "fast.yaml"), "--output", str(output),
         "--quiet"]
    )  # fmt: skip
    assert code == 0
    volume = {row["feature"]: row for row in _read(output)}["original_shape_VoxelVolume"]
    assert float(volume["icc"]) < 0.75 and volume["class"] == "poor"


def test_identical_observers_agree_perfectly(cohort):
    parameters = load_params(params_file=cohort / "fast.yaml")
    cases = [
        Case(
            f"case{i}", str(cohort / f"case{i}.nii.gz"), [str(cohort / f"case{i}_obs1.nii.gz")] * 2
        )
        for i in range(3)
    ]
    rows, results, dropped = robustness(cases, parameters=parameters, workers=1)
    assert dropped == [] and len(results) == 6
    assert all(row["icc"] == 1.0 and row["class"] == "excellent" for row in rows)


def test_fewer_than_three_cases_is_refused(cohort, tmp_path, capsys):
    two = tmp_path / "two.csv"
    lines = (cohort / "cases.csv").read_text().splitlines()
    two.write_text("\n".join(lines[:5]) + "\n")  # header + 2 cases x 2 observers
    code = main(
        ["radiomics", "robustness", "--cases", str(two), "--output", str(tmp_path / "o.csv")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least 3 cases" in err[0]
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize(
    ("cases", "perturbations", "message"),
    [
        ([Case("a", "i", ["m"]), Case("b", "i", ["m"]), Case("c", "i", ["m"])], [], "two or more"),
        (
            [Case("a", "i", ["m", "n"]), Case("b", "i", ["m"]), Case("c", "i", ["m", "n"])],
            [],
            "has 1 mask",
        ),
        (
            [
                Case("a", "i", ["m", "n", "o"]),
                Case("b", "i", ["m", "n"]),
                Case("c", "i", ["m", "n"]),
            ],
            [],
            "same number",
        ),
        ([Case("a", "i", ["m", "n"])] * 3, ["erode"], "unique"),
        (
            [Case("a", "i", ["m", "n"]), Case("b", "i", ["m"]), Case("c", "i", ["m"])],
            ["erode"],
            "exactly one mask per case",
        ),
    ],
)
def test_case_checks(cases, perturbations, message):
    with pytest.raises(PrimageInputError, match=message):
        check_cases(cases, perturbations)


def test_bad_tables_and_perturbations(cohort, tmp_path, capsys):
    with pytest.raises(PrimageInputError, match="unknown perturbation 'shrink'"):
        parse_perturbations("erode,shrink")
    assert parse_perturbations("erode, dilate,erode") == ["erode", "dilate"]
    bad = tmp_path / "bad.csv"
    bad.write_text("case,image\na,b\n")
    code = main(
        ["radiomics", "robustness", "--cases", str(bad), "--output", str(tmp_path / "o.csv")]
    )
    assert code == 2 and "lacks column(s) mask" in capsys.readouterr().err
    bad.write_text("case,image,mask\na,missing.nii.gz,m.nii.gz\nb,x,y\nc,x,y\n")
    code = main(
        [
            "radiomics",
            "robustness",
            "--cases",
            str(bad),
            "--perturb",
            "erode",
            "--output",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2 and "file does not exist" in capsys.readouterr().err


def test_failed_repetitions_drop_the_case(cohort):
    """A case whose eroded mask vanishes is left out; with < 3 cases left, refused."""
    parameters = load_params(params_file=cohort / "fast.yaml")
    tiny = cohort / "tiny.nii.gz"
    mask = np.zeros(SHAPE, np.uint8)
    mask[8, 12, 12:14] = 1  # two voxels: erosion leaves nothing
    sitk.WriteImage(image_from_array(mask), str(tiny))
    cases = [
        Case(f"case{i}", str(cohort / f"case{i}.nii.gz"), [str(cohort / f"case{i}_obs1.nii.gz")])
        for i in range(3)
    ]
    cases.append(Case("tiny", str(cohort / "case3.nii.gz"), [str(tiny)]))
    rows, results, dropped = robustness(
        cases, parameters=parameters, perturbations=["erode"], workers=1
    )
    assert dropped == ["tiny"] and rows
    eroded = [r for r in results if r.task.meta["case"] == "tiny" and r.task.perturbation]
    assert "empty after the erode perturbation" in eroded[0].error
    with pytest.raises(PrimageInputError, match="only 2 case"):
        icc_table([r for r in results if r.task.meta["case"] in ("case0", "case1", "tiny")])
