"""primage dicom: scan, roles, assembly (geometry, b-values, times, SUV) and pseudonyms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import SECRET, leaks, same_voxels

from primage.cli import main
from primage.dicom import scan_folder
from primage.dicom.inventory import inventory_rows
from primage.dicom.pet import SuvRefused, suv_factor
from primage.dicom.pseudonym import Pseudonymiser
from primage.dicom.rules import classify, load_rules
from primage.dicom.synthetic import IDENTITIES, PET_EXAMPLE, PET_SUV, write_example_cohort
from primage.io import series_to_volumes


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example cohort, its inventory and its assembly through the command line."""
    root = tmp_path_factory.mktemp("dicom")
    truth = write_example_cohort(root / "in")
    inventory = root / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(root / "in"), "-o", str(inventory), "-q"]) == 0
    secret = root / "secret.txt"
    secret.write_text(SECRET + "\n")
    cohort = root / "cohort"
    code = main(
        ["dicom", "assemble", "-i", str(root / "in"), "--inventory", str(inventory),
         "-o", str(cohort), "--secret-file", str(secret), "-q"]
    )  # fmt: skip
    assert code == 0
    report = {row["series_id"]: row for row in _rows(cohort / "dicom_assembly.csv")}
    inventory_by_uid = {row["series_uid"]: row for row in _rows(inventory) if row["series_uid"]}
    cases = {}
    for row in report.values():
        if row["output"]:
            cases.setdefault(row["case"], set()).add(row["output"])
    return {
        "root": root,
        "truth": truth,
        "inventory": inventory_by_uid,
        "inventory_path": inventory,
        "cohort": cohort,
        "report": report,
        "cases": cases,
        "pseudonym": Pseudonymiser(secret=SECRET.encode()),
    }


def _case_of(example, patient: str, study_index: int | None = None) -> Path:
    name = example["pseudonym"](IDENTITIES[patient]["PatientID"])
    if study_index is not None:
        name = f"{name}_{study_index}"
    return example["cohort"] / name


def _inventory_row(example, key: str) -> dict:
    uid = example["truth"][key].series_uid.split(",")[0]
    return example["inventory"][uid]


# --- scan ---------------------------------------------------------------------------------


def test_scan_proposes_the_true_role_of_every_series(example):
    for key, series in example["truth"].items():
        for uid in series.series_uid.split(","):
            row = example["inventory"][uid]
            assert row["proposed_role"] == series.role, (key, row["rule"])
            assert row["role"] == row["proposed_role"]
            assert row["rule"] in {r["name"] for r in load_rules()["rules"]}
            assert row["status"] == "ok", (key, row["reason"])


def test_scan_describes_series(example):
    dwi = _inventory_row(example, "siemens/dwi")
    assert dwi["b_values"] == "0 50 100 200 400 600 800 1000"
    assert "Siemens private (0019,100C)" in dwi["b_value_source"]
    assert (dwi["rows"], dwi["columns"], dwi["slices"], dwi["frames"]) == ("32", "32", "8", "64")
    assert dwi["slice_spacing_mm"] == "5" and dwi["slice_check"] == "regular"
    assert dwi["pixel_spacing_mm"] == "4 4"
    dce = _inventory_row(example, "siemens/dce")
    assert dce["times_s"] == "0 5 10 15 20 30 45 60 90 120.5"
    assert dce["time_points"] == "10" and dce["time_source"].startswith("acquisition time")
    assert _inventory_row(example, "siemens/localizer")["orientation"] == "mixed"
    assert _inventory_row(example, "ge/dce")["rule"] == "dce-split-series"
    enhanced = _inventory_row(example, "philips/dwi_enhanced")
    assert enhanced["files"] == "1" and enhanced["frames"] == "64"
    assert enhanced["b_value_source"] == "standard (0018,9087)"
    philips = _inventory_row(example, "philips/dwi")
    assert philips["b_value_source"] == "standard (0018,9087) = Philips private (2001,1003)"
    ge = _inventory_row(example, "ge/dwi")
    assert ge["b_value_source"] == "GE private (0043,1039)"  # 1e9 flag removed
    assert ge["b_values"] == "0 50 100 200 400 600 800 1000"


def test_rules_are_data_and_a_custom_table_changes_the_roles(example, tmp_path):
    table = load_rules()
    custom = dict(table)
    custom["rules"] = [
        {
            "name": "everything-mr-is-t2w",
            "role": "t2w",
            "when": {"field": "modality", "equals": "MR"},
        },
        *table["rules"],
    ]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(custom))
    inventory = tmp_path / "inventory.csv"
    folder = example["root"] / "in" / "export_b"
    assert (
        main(["dicom", "scan", "-i", str(folder), "-o", str(inventory), "--rules", str(path), "-q"])
        == 0
    )
    rows = [r for r in _rows(inventory) if r["series_uid"]]
    assert rows and all(
        r["proposed_role"] == "t2w" and r["rule"] == "everything-mr-is-t2w" for r in rows
    )
    assert classify({"modality": "CT"}, custom) == ("ct", "ct-modality")


def test_pydicom_sample_files_are_scanned(tmp_path):
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm", "test-SR.dcm", "rtplan.dump"):
        path = get_testdata_file(name, download=False)
        (tmp_path / name).write_bytes(Path(path).read_bytes())
    result = scan_folder(tmp_path)
    rows = inventory_rows(result)
    by_description = {(r["modality"], r["status"]): r for r in rows if r["series_uid"]}
    assert by_description[("CT", "ok")]["proposed_role"] == "ct"  # a single axial CT slice
    # MR_truncated is a cut copy of MR_small (same SOP instance): the intact copy is used.
    mr = [r for r in rows if r["modality"] == "MR"]
    assert len(mr) == 1 and mr[0]["status"] == "ok" and "1 duplicate file(s)" in mr[0]["reason"]
    (tmp_path / "MR_small.dcm").unlink()
    mr = [r for r in inventory_rows(scan_folder(tmp_path)) if r["modality"] == "MR"]
    assert mr[0]["status"] == "error" and "truncated file" in mr[0]["reason"]
    sr = [r for r in rows if r["modality"] == "SR"]
    assert sr[0]["proposed_role"] == "unknown" and sr[0]["rule"] == "not-an-image"
    skipped = {r["file"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert skipped == {"rtplan.dump": "not a DICOM file"}


# --- assembly -----------------------------------------------------------------------------


def test_cases_follow_the_cohort_layout(example):
    cohort = example["cohort"]
    siemens = _case_of(example, "siemens")
    assert sorted(p.name for p in siemens.iterdir()) == [
        "adc_scanner.nii.gz", "case.json", "dce.nii.gz", "dce.times", "dwi.bval",
        "dwi.nii.gz", "t1w.nii.gz", "t1w_post.nii.gz", "t2w.nii.gz",
    ]  # fmt: skip
    # One patient with two studies: <pseudonym>_1 and _2 in study order.
    assert (_case_of(example, "philips", 1) / "t2w.nii.gz").is_file()
    assert (_case_of(example, "philips", 2) / "t1w.nii.gz").is_file()
    assert sorted(p.name for p in _case_of(example, "petct").iterdir()) == [
        "case.json", "ct.nii.gz", "pet.nii.gz", "tumour_ct.nii.gz",
    ]  # fmt: skip
    assert sorted(p.name for p in cohort.iterdir() if p.is_dir()) == sorted(example["cases"])
    assert not list(cohort.rglob("*.part*"))  # no temporary files left
    record = json.loads((siemens / "case.json").read_text())
    assert record["files"]["dwi.nii.gz"]["b_value_source"].startswith("Siemens private")
    assert record["files"]["dce.nii.gz"]["time_source"].startswith("acquisition time")
    # One frame of reference per study here: every file carries the same token.
    for case in (siemens, _case_of(example, "petct")):
        files = json.loads((case / "case.json").read_text())["files"]
        assert {entry["frame_of_reference"] for entry in files.values()} == {"FoR-1"}


@pytest.mark.parametrize(
    "key, case_index",
    [("siemens/t2w", None), ("siemens/t1w", None), ("siemens/t1w_post", None),
     ("siemens/adc", None), ("ge/t2w", None), ("philips/t2w", 1), ("philips/t1w", 2),
     ("petct/ct", None)],
)  # fmt: skip
def test_assembled_volumes_put_every_voxel_at_its_source_point(example, key, case_index):
    series = example["truth"][key]
    case = _case_of(example, series.patient, case_index)
    name = series.role  # the file stem of a role's primary series
    image = sitk.ReadImage(str(case / f"{name}.nii.gz"))
    same_voxels(image, series.images[0])
    # The voxel values are exact: integers stay integers (CT in HU through intercept -1024).
    assert image.GetPixelID() == sitk.sitkInt16


@pytest.mark.parametrize(
    "key, case_index",
    [("siemens/dwi", None), ("ge/dwi", None), ("philips/dwi", 1), ("philips/dwi_enhanced", 2)],
)
def test_dwi_b_values_and_volumes_are_exact(example, key, case_index):
    series = example["truth"][key]
    case = _case_of(example, series.patient, case_index)
    assert (case / "dwi.bval").read_text() == "0 50 100 200 400 600 800 1000\n"
    volumes = series_to_volumes(sitk.ReadImage(str(case / "dwi.nii.gz")))
    assert len(volumes) == len(series.values)
    for volume, source in zip(volumes, series.images, strict=True):
        same_voxels(volume, source)


@pytest.mark.parametrize("patient", ["siemens", "ge"])
def test_dce_times_and_frames_are_exact(example, patient):
    """One 4D series (Siemens) and one series per time point (GE) give the same result."""
    series = example["truth"][f"{patient}/dce"]
    case = _case_of(example, patient)
    times = [float(t) for t in (case / "dce.times").read_text().split()]
    assert times == [t - series.values[0] for t in series.values]
    volumes = series_to_volumes(sitk.ReadImage(str(case / "dce.nii.gz")))
    for volume, source in zip(volumes, series.images, strict=True):
        same_voxels(volume, source)


def test_the_example_seg_becomes_the_digital_patients_tumour_on_the_ct(example):
    case = _case_of(example, "petct")
    mask = sitk.ReadImage(str(case / "tumour_ct.nii.gz"))
    same_voxels(mask, example["truth"]["petct/seg"].images[0])
    assert sitk.GetArrayFromImage(mask).sum() > 20
    entry = json.loads((case / "case.json").read_text())["files"]["tumour_ct.nii.gz"]
    assert entry["labels"] == {"1": "Tumour"} and entry["seg_type"] == "BINARY"
    assert entry["frame_of_reference"] == "FoR-1" and "notes" not in entry


def test_pet_is_converted_to_suv_body_weight(example):
    series = example["truth"]["petct/pet"]
    suv = sitk.ReadImage(str(_case_of(example, "petct") / "pet.nii.gz"))
    assert suv.GetPixelID() == sitk.sitkFloat32
    # Hand computation from the DICOM values: SUV = Bq/ml x weight (g) / decayed dose (Bq).
    decay = 2.0 ** (-PET_EXAMPLE["uptake_s"] / PET_EXAMPLE["half_life_s"])
    factor = PET_EXAMPLE["weight_kg"] * 1000.0 / (PET_EXAMPLE["dose_bq"] * decay)
    stored = {}
    for path in series.files:
        ds = pydicom.dcmread(path)
        z = float(ds.ImagePositionPatient[2])
        stored[z] = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    bq_per_ml = np.stack([stored[z] for z in sorted(stored)])
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), bq_per_ml * factor, rtol=1e-6)
    # ... and against the truth SUV of each tissue (Int16 quantisation: < 0.01 %).
    truth = sitk.GetArrayFromImage(series.images[0]) * factor
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(suv), truth, rtol=0, atol=1e-4 * max(PET_SUV.values())
    )
    record = json.loads((_case_of(example, "petct") / "case.json").read_text())["files"][
        "pet.nii.gz"
    ]
    assert record["suv"]["units"] == "g/ml" and record["suv"]["decay_correction"] == "START"
    assert record["suv"]["uptake_time_s"] == pytest.approx(PET_EXAMPLE["uptake_s"], abs=1e-6)


@pytest.mark.parametrize(
    "missing, message",
    [
        ("weight_kg", "PatientWeight"),
        ("dose_bq", "RadionuclideTotalDose"),
        ("half_life_s", "RadionuclideHalfLife"),
        ("injection_us", "RadiopharmaceuticalStartTime"),
        ("decay_correction", "no decay information"),
        ("units", "units"),
    ],
)
def test_suv_is_refused_when_a_needed_tag_is_missing(missing, message):
    tags = {
        "units": "BQML", "decay_correction": "START", "corrected_image": ["ATTN", "DECY"],
        "weight_kg": 20.0, "dose_bq": 1e8, "half_life_s": 6586.2, "injection_us": 0,
        "injection_source": "x", "series_us": 3_600_000_000,
    }  # fmt: skip
    assert suv_factor(tags, []).factor == pytest.approx(20000.0 / (1e8 * 2 ** (-3600 / 6586.2)))
    tags[missing] = None
    with pytest.raises(SuvRefused, match=message):
        suv_factor(tags, [])


def test_user_overrides_roles_in_the_inventory(example, tmp_path):
    rows = _rows(example["inventory_path"])
    mpr = _inventory_row(example, "siemens/mpr")["series_uid"]
    post = _inventory_row(example, "siemens/t1w_post")["series_uid"]
    for row in rows:
        if row["series_uid"] == mpr:
            row["role"] = "t2w"  # a second T2w: written as t2w_2
        if row["series_uid"] == post:
            row["role"] = "skip"
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    folder = example["root"] / "in" / "export_a"
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"patient_id,pseudonym\n{IDENTITIES['siemens']['PatientID']},case-007\n")
    cohort = tmp_path / "cohort"
    code = main(
        [
            "dicom",
            "assemble",
            "-i",
            str(folder),
            "--inventory",
            str(edited),
            "-o",
            str(cohort),
            "--pseudonym-map",
            str(mapping),
            "-q",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in (cohort / "case-007").iterdir())
    assert "t2w_2.nii.gz" in names and "t1w_post.nii.gz" not in names
    record = json.loads((cohort / "case-007" / "case.json").read_text())
    assert record["files"]["t2w_2.nii.gz"]["series_numbers"] == [8]
    assert record["pseudonym"] == "map"


def test_keyed_hash_pseudonyms_are_stable_and_need_the_secret():
    patient = IDENTITIES["ge"]["PatientID"]
    first = Pseudonymiser(secret=SECRET.encode())(patient)
    assert first == Pseudonymiser(secret=SECRET.encode())(patient)
    assert first != Pseudonymiser(secret=(SECRET + "x").encode())(patient)
    assert patient not in first and len(first) == 13


def test_no_identifying_data_in_any_output(example, capfd, tmp_path):
    """Every file written by scan and assemble, and the console output, are searched for the
    patients' names, IDs, birth dates and accession numbers (NIfTI opened from gzip)."""
    # Run once more to capture the console output (progress and summary lines included).
    code = main(
        ["dicom", "assemble", "-i", str(example["root"] / "in"), "--inventory",
         str(example["inventory_path"]), "-o", str(tmp_path / "again"), "--secret-file",
         str(example["root"] / "secret.txt")]
    )  # fmt: skip
    captured = capfd.readouterr()
    assert code == 0
    # The closing line counts what the report lists: written, not assembled by role, skipped.
    report = _rows(tmp_path / "again" / "dicom_assembly.csv")
    status = [r["status"] for r in report]
    not_assembled = sorted(r["role"] for r in report if r["status"] == "not assembled")
    assert status.count("written") > 20 and not_assembled == ["derived", "localizer"]
    files = len({(r["case"], r["output"]) for r in report if r["status"] == "written"})
    assert (
        f": {status.count('written')} series written as {files} files (1 of them tumour masks), "
        "2 series not assembled (1 derived, 1 localizer), 0 series skipped;" in captured.err
    ), captured.err
    outputs = [p for p in example["cohort"].rglob("*") if p.is_file()]
    outputs += [p for p in (tmp_path / "again").rglob("*") if p.is_file()]
    outputs.append(example["inventory_path"])
    assert len(outputs) > 30
    # FrameOfReferenceUIDs are replaced by per-case tokens in case.json (FoR-1, ...).
    frames = {
        str(pydicom.dcmread(series.files[0], stop_before_pixels=True).FrameOfReferenceUID)
        for series in example["truth"].values()
    }
    assert len(frames) >= 4
    assert leaks(outputs, captured.out + captured.err, also=sorted(frames)) == []
    # The check itself finds an identity where there is one.
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"x": IDENTITIES["ge"]["PatientBirthDate"]}))
    assert leaks([planted]) != []


def test_assembled_dwi_runs_through_the_kinetics_command(example, tmp_path):
    """The case layout is what the next steps read: ADC of the assembled DWI matches the
    digital patient's diffusion coefficient in the tumour."""
    pytest.importorskip("primage.kinetics")
    case = _case_of(example, "siemens")
    out = tmp_path / "adc"
    code = main(
        [
            "kinetics",
            "adc",
            "--dwi",
            str(case / "dwi.nii.gz"),
            "--bvalues",
            str(case / "dwi.bval"),
            "--output-dir",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    adc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "adc.nii.gz")))
    truth = sitk.GetArrayFromImage(example["truth"]["siemens/adc"].images[0]) / 1e6
    tumour = np.isclose(truth, 0.8e-3)
    assert tumour.sum() > 10
    assert np.median(adc[tumour]) == pytest.approx(0.8e-3, rel=0.15)


def test_dce_times_from_trigger_times_when_acquisition_times_are_missing(tmp_path):
    from primage.dicom.synthetic import Study, split_volumes, write_series
    from primage.synthetic import make_digital_patient

    times = [0.0, 2.5, 5.0, 12.25]
    patient = make_digital_patient(
        4, size=(8, 8, 3), spacing=(10.0, 10.0, 10.0), frame_times_s=times
    )
    write_series(
        tmp_path / "in", Study(IDENTITIES["ge"], "GE"), split_volumes(patient.dce),
        description="DCE multiphase", series_number=5, times_s=times, slice_time_s=0.05,
        time_tags=("TriggerTime",), attributes={"EchoTime": "2", "RepetitionTime": "5"},
    )  # fmt: skip
    result = scan_folder(tmp_path / "in")
    (info,) = result.series
    assert info.role == "dce" and info.status == "ok", info.reason
    from primage.dicom.scan import plan_study

    (plan,) = plan_study([info])
    assert plan.layout.source == "trigger time (0018,1060)"
    assert plan.layout.values == times


def test_compressed_pixel_data_is_read_through_gdcm():
    """GDCM reads what pydicom cannot decode; on a file both read, they agree."""
    from pydicom.data import get_testdata_file

    from primage.dicom.assemble import PixelReader, _gdcm_array
    from primage.dicom.headers import read_header

    path = get_testdata_file("MR_small_RLE.dcm", download=False)
    (frame,) = read_header(path).frames
    np.testing.assert_array_equal(PixelReader().frame(frame), _gdcm_array(path).reshape(64, 64))
