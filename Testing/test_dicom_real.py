"""primage dicom on real archive DICOM (IBSI soft-tissue sarcoma: CT, PET in SUV, T1w MR and
their RT Structure Sets): roles without edits, images and tumour masks equal to IBSI's
reference NIfTI, frame-of-reference tokens, the summary line, symbolic links."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import SECRET
from _shared_data import IBSI_STS_CASES, REPO, ibsi_sts_dicom, ibsi_sts_nifti

from primage.cli import main
from primage.dicom import scan_folder
from primage.dicom.pseudonym import Pseudonymiser

#: IBSI series folder -> role and file stem in the case folder.
SERIES = {"CT": "ct", "PET": "pet", "MR_T1": "t1w"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """scan + assemble of the three real cases through the command line, no edits."""
    root = tmp_path_factory.mktemp("ibsi_sts")
    inventory = root / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(ibsi_sts_dicom()), "-o", str(inventory), "-q"]) == 0
    (root / "secret").write_text(SECRET)
    return {"root": root, "inventory": inventory, "cohort": root / "cohort"}


@pytest.fixture(scope="module")
def assembled(real):
    """The assembly as a user runs it (a separate process; summary line on stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "primage", "dicom", "assemble", "-i", str(ibsi_sts_dicom()),
         "--inventory", str(real["inventory"]), "-o", str(real["cohort"]),
         "--secret-file", str(real["root"] / "secret")],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip


def _case(real, case: str) -> Path:
    return real["cohort"] / Pseudonymiser(secret=SECRET.encode())(case)


def test_every_series_gets_its_role_without_edits(real):
    rows = [r for r in _rows(real["inventory"]) if r["series_uid"]]
    assert len(rows) == 18
    expected = {"CT": "ct", "PT": "pet", "MR": "t1w", "RTSTRUCT": "rtstruct"}
    for row in rows:
        assert row["proposed_role"] == expected[row["modality"]], row
        assert row["status"] == "ok", row["reason"]
    # The PET and MR are DERIVED, as resampled / SUV-converted archive series often are.
    assert {r["image_type"] for r in rows if r["modality"] == "PT"} == {"DERIVED\\SECONDARY"}
    assert all(
        r["image_type"].startswith("DERIVED\\PRIMARY") for r in rows if r["modality"] == "MR"
    )
    structure_sets = [r for r in rows if r["modality"] == "RTSTRUCT"]
    assert sorted(r["output"] for r in structure_sets) == sorted(
        f"tumour_{role}" for role in SERIES.values() for _ in IBSI_STS_CASES
    )


def test_assemble_writes_every_series_and_says_so(real, assembled):
    assert assembled.returncode == 0, assembled.stderr
    assert (
        "wrote 3 case folders to " in assembled.stderr
        and ": 18 series written as 18 files (9 of them tumour masks), 0 series not assembled, "
        "0 series skipped;"
        in assembled.stderr
    ), assembled.stderr
    report = _rows(real["cohort"] / "dicom_assembly.csv")
    assert len(report) == 18 and {r["status"] for r in report} == {"written"}


@pytest.mark.parametrize("case", IBSI_STS_CASES)
def test_images_and_tumour_masks_equal_ibsi_reference(real, assembled, case):
    folder = _case(real, case)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["case.json", *[f"{role}.nii.gz" for role in SERIES.values()],
         *[f"tumour_{role}.nii.gz" for role in SERIES.values()]]
    )  # fmt: skip
    record = json.loads((folder / "case.json").read_text())
    for series, role in SERIES.items():
        reference = sitk.ReadImage(str(ibsi_sts_nifti(case, series, "image")))
        image = sitk.ReadImage(str(folder / f"{role}.nii.gz"))
        mask = sitk.ReadImage(str(folder / f"tumour_{role}.nii.gz"))
        truth = sitk.ReadImage(str(ibsi_sts_nifti(case, series, "mask")))
        for ours in (image, mask):
            assert ours.GetSize() == reference.GetSize()
            np.testing.assert_allclose(ours.GetOrigin(), reference.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(ours.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
            np.testing.assert_allclose(ours.GetDirection(), reference.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference), rtol=1e-5, atol=1e-5
        )
        ours, theirs = sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) > 0
        dice = 2 * np.sum(ours & theirs) / (ours.sum() + theirs.sum())
        assert dice >= 0.95, (case, series, dice)
        assert abs(ours.sum() / theirs.sum() - 1) <= 0.02, (case, series, ours.sum(), theirs.sum())
        entry = record["files"][f"tumour_{role}.nii.gz"]
        assert entry["labels"] == {"1": f"GTV_Mass_{series}"}
        assert entry["image"] == f"{role}.nii.gz" and entry["source"] == "RT Structure Set"
        assert entry["voxels"] == {"1": int(theirs.sum())}


@pytest.mark.parametrize("case", IBSI_STS_CASES)
def test_frame_of_reference_is_a_token_shared_by_the_co_registered_series(real, assembled, case):
    record = json.loads((_case(real, case) / "case.json").read_text())
    tokens = {name: entry["frame_of_reference"] for name, entry in record["files"].items()}
    assert len(tokens) == 6 and set(tokens.values()) == {"FoR-1"}  # one FoR per case (README)


def test_no_frame_of_reference_uid_or_patient_id_in_any_output(real, assembled):
    uids, ids = set(), set()
    for path in ibsi_sts_dicom().rglob("*.dcm"):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        uids.add(str(dataset.FrameOfReferenceUID))
        ids.add(str(dataset.PatientID))
    assert len(uids) == 3 and ids == set(IBSI_STS_CASES)
    outputs = [p for p in real["cohort"].rglob("*") if p.is_file()]
    assert len(outputs) == 3 * 7 + 1
    for path in outputs:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data += gzip.decompress(data)
        for needle in uids | ids:
            assert needle.encode() not in data, (path, needle)
    for needle in uids | ids:
        assert needle not in assembled.stderr + assembled.stdout


def test_study_folders_linked_into_one_tree_are_scanned(tmp_path):
    tree = tmp_path / "archive"
    tree.mkdir()
    for case in IBSI_STS_CASES:
        os.symlink(ibsi_sts_dicom(case), tree / case, target_is_directory=True)
    os.symlink(tree, tree / "loop", target_is_directory=True)  # a link loop is walked once
    os.symlink(ibsi_sts_dicom(IBSI_STS_CASES[0]), tree / "again", target_is_directory=True)
    result = scan_folder(tree)
    assert len(result.studies) == 3 and len(result.series) == 18
    assert all(len(info.series.notes) == 0 for info in result.series)  # no duplicate copies
