"""The pipeline and the DICOM frame of reference (generated cases): case.json tokens read by
discovery, a series in the reference's frame resampled only (identity), refined under the
"never worse" rule or registered as configured, the decision in QC, provenance,
features.csv and the report, and the setting in the unit key."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from _pipeline_data import files_containing, write_small_case

from primage.errors import PrimageInputError
from primage.pipeline import load_config, read_case, run_cohort
from primage.registration import resample_to_fixed
from primage.registration.core import read_transform
from primage.registration.truth import move_geometry, transform_error

#: The CT's header moved by this (mm, LPS): the known misalignment of the generated case.
SHIFT_MM = (2.0, -1.5, 0.0)
#: A frame-of-reference token as a careless hand-made case.json might hold it (a UID).
TOKEN = "1.2.840.113619.2.55.3.604688119.969.1234567890.123"


def _config(**register):
    return {"steps": ["register"], "register": {"snapshots": False, **register}}


def _shifted_case(folder, tokens):
    """A t2w + ct case whose CT header is moved by SHIFT_MM, with the given tokens."""
    write_small_case(folder, 4, roles=("ct",))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    shift = sitk.TranslationTransform(3, SHIFT_MM)
    sitk.WriteImage(move_geometry(ct, shift), str(folder / "ct.nii.gz"), useCompression=True)
    files = {name: {"frame_of_reference": token} for name, token in tokens.items()}
    (folder / "case.json").write_text(json.dumps({"files": files, "site": "S"}))
    return folder


def _qc(out, case="c1", role="ct"):
    return json.loads((out / case / "register" / f"{role}_qc.json").read_text())


def _finished(out, case="c1", role="ct"):
    manifest = json.loads((out / case / "register" / "step.json").read_text())
    return manifest["units"][role]["finished"]


def _is_identity(path):
    transform = read_transform(path)
    grid = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    grid.SetSpacing([20.0] * 3)
    grid.SetOrigin([-80.0] * 3)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    return transform_error(transform, identity, grid)["max_mm"] == 0.0


def test_discovery_reads_the_tokens(tmp_path):
    folder = write_small_case(tmp_path / "p", 0, roles=("ct", "dwi"))
    (folder / "tumour_ct.nii.gz").write_bytes((folder / "tumour.nii.gz").read_bytes())
    files = {
        "t2w.nii.gz": {"frame_of_reference": "FoR-1", "modality": "MR"},
        "ct.nii.gz": {"frame_of_reference": "FoR-2"},
        "tumour_ct.nii.gz": {"frame_of_reference": "FoR-2"},
        "dwi.nii.gz": {},  # no token: unknown
        "dwi.bval": {"frame_of_reference": "FoR-1"},  # not an image: ignored
    }
    (folder / "case.json").write_text(json.dumps({"files": files}))
    case = read_case(folder)
    assert case.problems == []
    assert case.frames_of_reference == {"t2w": "FoR-1", "ct": "FoR-2"}
    assert case.mask_frames_of_reference == {"ct": "FoR-2"}
    assert case.same_frame_of_reference("ct", "t2w") is False
    assert case.same_frame_of_reference("t2w", "t2w") is True
    assert case.same_frame_of_reference("dwi", "t2w") is None
    assert "files" not in case.metadata

    (folder / "case.json").write_text(
        json.dumps({"files": {"ct.nii.gz": {"frame_of_reference": 1.5}}})
    )
    assert "must be a non-empty text" in read_case(folder).problems[0]
    (folder / "case.json").write_text(json.dumps({"files": ["ct.nii.gz"]}))
    assert 'case.json "files" must map' in read_case(folder).problems[0]


def test_configuration_of_the_frame_of_reference(tmp_path):
    assert load_config(None)["register"]["same_frame_of_reference"] == "resample"
    path = tmp_path / "c.yaml"
    path.write_text("register: {same_frame_of_reference: refin}\n")
    with pytest.raises(
        PrimageInputError, match=r"must be one of resample, refine, register.*did you mean 'refine'"
    ):
        load_config(path)
    path.write_text("register: {same_frame_of_reference: {pet: resample, DWI: refine}}\n")
    assert load_config(path)["register"]["same_frame_of_reference"] == {
        "pet": "resample",
        "dwi": "refine",
    }
    path.write_text("register: {same_frame_of_reference: {dwi: registr}}\n")
    with pytest.raises(
        PrimageInputError, match=r"same_frame_of_reference.dwi' must be one of.*'register'"
    ):
        load_config(path)
    path.write_text("register: {refine_max_mm: -2}\n")
    with pytest.raises(PrimageInputError, match="'register.refine_max_mm' must be a number"):
        load_config(path)


def test_same_frame_is_resampled_only_and_the_setting_reruns_it(tmp_path):
    cohort = tmp_path / "cohort"
    folder = _shifted_case(cohort / "c1", {"t2w.nii.gz": TOKEN, "ct.nii.gz": TOKEN})
    out = tmp_path / "out"
    run_cohort(cohort, _config(), out, workers=0)
    assert files_containing(out, TOKEN) == []  # the token (maybe a UID) is never copied
    qc = _qc(out)
    # Same frame of reference: trusted as is, although the header was moved.
    assert qc["alignment"] == "resampled"
    assert qc["alignment_reason"] == "same frame of reference as t2w: resampled only"
    assert qc["registration"]["mode"] == "resample" and "stages" not in qc["registration"]
    assert qc["displacement_mm"] == {"mean": 0.0, "max": 0.0, "over": "tumour"}
    assert _is_identity(out / "c1" / "register" / "ct_to_t2w.tfm")
    t2w = sitk.ReadImage(str(folder / "t2w.nii.gz"))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    expected = sitk.GetArrayFromImage(resample_to_fixed(ct, t2w, sitk.Transform()))
    # Step images are plain NIfTI (ITK would also find a .nii.gz under the other name).
    assert not list((out / "c1").glob("*/ct.nii.gz"))
    assert {p.parent.name for p in (out / "c1").glob("*/ct.nii")} == {"register"}
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c1" / "register" / "ct.nii")))
    np.testing.assert_array_equal(written, expected)

    summary = json.loads((out / "c1" / "summary.json").read_text())
    assert "ct: same frame of reference as t2w: resampled only" in summary["notes"]
    provenance = json.loads((out / "c1" / "provenance.json").read_text())
    unit = provenance["steps"][0]["units"][0]
    assert unit["alignment"] == "resampled" and unit["displacement_mm"] == 0.0
    status = json.loads((out / "c1" / "status.json").read_text())
    assert "resampled only" in status["steps"][0]["message"]
    with open(out / "features.csv", newline="", encoding="utf-8") as stream:
        row = next(csv.DictReader(stream))
    assert row["qc_ct_alignment"] == "resampled"
    assert row["qc_ct_alignment_reason"] == "same frame of reference as t2w: resampled only"
    assert float(row["qc_ct_displacement_mm"]) == 0.0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "resampled: same frame of reference as t2w: resampled only" in report

    # The setting is part of the unit key: "register" reruns the unit and registers.
    first = _finished(out)
    run_cohort(cohort, _config(same_frame_of_reference="register"), out, workers=0)
    assert _finished(out) != first
    qc = _qc(out)
    assert qc["alignment"] == "registered" and "registered with mr-ct" in qc["alignment_reason"]
    grid = sitk.ReadImage(str(out / "c1" / "register" / "ct.nii"))
    truth = sitk.TranslationTransform(3, SHIFT_MM)
    found = read_transform(out / "c1" / "register" / "ct_to_t2w.tfm")
    assert transform_error(found, truth, grid)["mean_mm"] < 1.0  # the known shift is found
    assert qc["displacement_mm"]["mean"] > 1.5
    # Unchanged again: up to date.
    second = _finished(out)
    run_cohort(cohort, _config(same_frame_of_reference="register"), out, workers=0)
    assert _finished(out) == second


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ({"t2w.nii.gz": "A", "ct.nii.gz": "B"}, "other frame of reference than t2w"),
        ({"t2w.nii.gz": "A"}, "frame of reference unknown"),
    ],
)
def test_other_or_unknown_frame_is_registered(tmp_path, tokens, reason):
    _shifted_case(tmp_path / "cohort" / "c1", tokens)
    run_cohort(tmp_path / "cohort", _config(), tmp_path / "out", workers=0)
    qc = _qc(tmp_path / "out")
    assert qc["alignment"] == "registered"
    assert qc["alignment_reason"] == f"{reason}: registered with mr-ct"


def test_refinement_kept_only_when_better_and_within_the_bound(tmp_path):
    cohort = tmp_path / "cohort"
    _shifted_case(cohort / "c1", {"t2w.nii.gz": "A", "ct.nii.gz": "A"})
    out = tmp_path / "out"
    run_cohort(cohort, _config(same_frame_of_reference={"ct": "refine"}), out, workers=0)
    qc = _qc(out)
    check = qc["registration"]["refinement"]
    assert qc["alignment"] == "refined", qc["alignment_reason"]
    assert check["kept"] and check["mutual_information_after"] > check["mutual_information_before"]
    grid = sitk.ReadImage(str(out / "c1" / "register" / "ct.nii"))
    found = read_transform(out / "c1" / "register" / "ct_to_t2w.tfm")
    truth = sitk.TranslationTransform(3, SHIFT_MM)
    assert transform_error(found, truth, grid)["mean_mm"] < 1.0
    assert abs(qc["displacement_mm"]["mean"] - np.linalg.norm(SHIFT_MM)) < 1.0

    # A bound below the shift: the refinement is rejected and the start is kept.
    run_cohort(cohort, _config(same_frame_of_reference="refine", refine_max_mm=0.5), out, workers=0)
    qc = _qc(out)
    assert qc["alignment"] == "resampled" and not qc["registration"]["refinement"]["kept"]
    assert "more than refine_max_mm 0.5" in qc["alignment_reason"]
    assert qc["alignment_reason"].endswith("resampled only")
    assert _is_identity(out / "c1" / "register" / "ct_to_t2w.tfm")


def test_a_mask_in_the_reference_frame_needs_no_registration(tmp_path):
    folder = write_small_case(tmp_path / "cohort" / "c1", 6, roles=("ct",))
    (folder / "tumour.nii.gz").rename(folder / "tumour_ct.nii.gz")
    config = {"steps": ["segment"]}  # no register step: no transform for the CT mask
    for token, works in (("A", True), ("B", False)):
        files = {"t2w.nii.gz": {"frame_of_reference": "A"},
                 "tumour_ct.nii.gz": {"frame_of_reference": token}}  # fmt: skip
        (folder / "case.json").write_text(json.dumps({"files": files}))
        result = run_cohort(tmp_path / "cohort", config, tmp_path / "out", workers=0)
        summary = result.summaries[0]
        if works:
            assert summary["status"] == "ok", summary["message"]
            assert summary["tumour"]["voxels"] > 0
        else:
            assert summary["failed_step"] == "segment"
            assert "cannot be carried onto the reference" in summary["message"]


def _pet_ct_case(folder):
    """A t2w + PET/CT case: CT and PET share one frame of reference (another than the
    T2w's), the PET on the CT's grid, both headers moved by SHIFT_MM."""
    _shifted_case(folder, {"t2w.nii.gz": "FoR-1", "ct.nii.gz": "FoR-2", "pet.nii.gz": "FoR-2"})
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"), sitk.sitkFloat32)
    pet = sitk.Clamp(ct + 1000.0, lowerBound=0.0) / 400.0  # an uptake-like positive image
    sitk.WriteImage(pet, str(folder / "pet.nii.gz"), useCompression=True)
    return folder


def test_pet_follows_the_registered_ct_of_its_frame_of_reference(tmp_path):
    cohort = tmp_path / "cohort"
    _pet_ct_case(cohort / "c1")
    presets = {"presets": {"ct": "mr-ct", "pet": "pet-ct"}}
    out = tmp_path / "out"
    result = run_cohort(cohort, _config(**presets), out, workers=0)
    assert not result.failed
    assert _qc(out, role="ct")["alignment"] == "registered"
    pet_qc = _qc(out, role="pet")
    assert pet_qc["alignment"] == "followed" and "ct's transform" in pet_qc["alignment_reason"]
    folder = out / "c1" / "register"
    ct_tx, pet_tx = (read_transform(folder / f"{r}_to_t2w.tfm") for r in ("ct", "pet"))
    fixed = sitk.ReadImage(str(cohort / "c1" / "t2w.nii.gz"))
    assert transform_error(pet_tx, ct_tx, fixed)["max_mm"] == 0.0
    # The CT registration undid the header shift, so the PET is aligned too.
    assert transform_error(pet_tx, sitk.TranslationTransform(3, SHIFT_MM), fixed)["mean_mm"] < 1.0
    pet = sitk.ReadImage(str(cohort / "c1" / "pet.nii.gz"))
    expected = sitk.GetArrayFromImage(resample_to_fixed(pet, fixed, ct_tx))
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "pet.nii.gz")))
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-5)

    # Switched off, the PET gets a registration of its own (and the unit reruns).
    out_own = tmp_path / "own"
    config = _config(follow_frame_of_reference=False, **presets)
    assert not run_cohort(cohort, config, out_own, workers=0).failed
    assert _qc(out_own, role="pet")["alignment"] == "registered"


def test_follow_setting_must_be_a_boolean(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("register: {follow_frame_of_reference: maybe}\n")
    with pytest.raises(PrimageInputError, match="follow_frame_of_reference' must be true or false"):
        load_config(path)
