"""The cohort pipeline on the three real ibsi-sts cases, assembled from their DICOM with
`primage dicom scan` + `assemble`: CT, PET and T1w MR share one FrameOfReferenceUID
(co-registered by the data's authors), so with reference ct the PET and the MR must be
left where they are (identity, resampled only) and the report must say so; radiomics runs
on the RT-structure masks."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from _shared_data import IBSI_STS_CASES, ibsi_sts_dicom

from primage.cli import main
from primage.pipeline import discover_cohort, run_cohort
from primage.pipeline.config import step_image_name
from primage.registration import resample_to_fixed
from primage.registration.core import read_transform
from primage.registration.truth import transform_error

CONFIG = {
    "reference": "ct",
    "steps": ["register", "segment", "radiomics"],
    "radiomics": {"images": ["ct", "pet"]},
}
MOVING = ("pet", "t1w")
IDENTITY = sitk.Transform(3, sitk.sitkIdentity)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ibsi_sts")
    secret = root / "secret.txt"
    secret.write_text("pipeline-test-secret-0123456789abcdef")
    dicom = ibsi_sts_dicom()
    assert main(["dicom", "scan", "-i", str(dicom), "-o", str(root / "inventory.csv"), "-q"]) == 0
    code = main(["dicom", "assemble", "-i", str(dicom), "--inventory", str(root / "inventory.csv"),
                 "-o", str(root / "cohort"), "--secret-file", str(secret), "-q"])  # fmt: skip
    assert code == 0
    cases = discover_cohort(root / "cohort")
    result = run_cohort(cases, CONFIG, root / "out", workers=0)
    return cases, result, root / "out"


def test_assembled_cases_share_the_frame_of_reference(run):
    cases, _, _ = run
    assert len(cases) == len(IBSI_STS_CASES)
    for case in cases:
        assert case.problems == []
        assert {"ct", "pet", "t1w"} <= set(case.series)
        assert {"ct", "pet", "t1w"} <= set(case.masks)
        assert case.same_frame_of_reference("pet", "ct") is True
        assert case.same_frame_of_reference("t1w", "ct") is True
        assert case.metadata == {}  # assemble's bookkeeping is not a feature column


def test_coregistered_series_are_left_where_they_are(run):
    cases, result, out = run
    assert result.exit_code == 0
    for case in cases:
        fixed = sitk.ReadImage(str(case.series["ct"]))
        for role in MOVING:
            folder = out / case.case_id / "register"
            qc = json.loads((folder / f"{role}_qc.json").read_text())
            assert qc["alignment"] == "resampled"
            assert qc["alignment_reason"] == "same frame of reference as ct: resampled only"
            assert (
                qc["displacement_mm"]["mean"] == 0.0 and qc["displacement_mm"]["over"] == "tumour"
            )
            transform = read_transform(folder / f"{role}_to_ct.tfm")
            assert transform_error(transform, IDENTITY, fixed)["max_mm"] == 0.0
            # On the CT grid exactly as the scanner coordinates put it.
            moving = sitk.ReadImage(str(case.series[role]))
            expected = resample_to_fixed(moving, fixed, sitk.Transform())
            written = sitk.ReadImage(str(folder / step_image_name(role)))
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected)
            )
            # The RT structures drawn on each series agree where the scanner put them.
            assert qc["dice_after"] > 0.9, (case.case_id, role, qc["dice_after"])
            assert qc["verdict"] == "ok", qc["reason"]


def test_report_features_and_provenance_say_so(run):
    cases, result, out = run
    by_case = {s["case_id"]: s for s in result.summaries}
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("resampled: same frame of reference as ct: resampled only") == 2 * len(
        cases
    )
    with open(out / "features.csv", newline="", encoding="utf-8") as stream:
        rows = {r["case"]: r for r in csv.DictReader(stream)}
    for case in cases:
        summary = by_case[case.case_id]
        assert summary["status"] == "ok", summary["message"]
        row = rows[case.case_id]
        for role in MOVING:
            assert row[f"qc_{role}_alignment"] == "resampled"
            assert (
                row[f"qc_{role}_alignment_reason"]
                == "same frame of reference as ct: resampled only"
            )
            assert float(row[f"qc_{role}_displacement_mm"]) == 0.0
            assert f"{role}: same frame of reference as ct: resampled only" in summary["notes"]
        # Radiomics on the CT's RT-structure mask, for the CT and the PET resampled onto it.
        assert float(row["ct_original_shape_MeshVolume"]) > 1000  # mm^3
        assert float(row["pet_original_firstorder_Maximum"]) > float(
            row["pet_original_firstorder_Mean"]
        )
        provenance = json.loads((out / case.case_id / "provenance.json").read_text())
        register = next(s for s in provenance["steps"] if s["step"] == "register")
        assert {u["unit"]: u["alignment"] for u in register["units"]} == dict.fromkeys(
            MOVING, "resampled"
        )
