"""The pipeline's DICOM export (``export.dicom: true``), end to end on a synthetic study.

A study with identifying data (T2w, DWI, DCE and the tumour as a DICOM SEG on the T2w) is
scanned and assembled, run through register, segment, kinetics and radiomics with the
export on, and every object of ``OUT/<case>/dicom/`` is read back with highdicom / pydicom
(no project code): SEG voxels equal to the pipeline's NIfTI masks, Parametric Map values
equal to its maps as float32, the SR's values equal to numpy on the NIfTI, all referencing
the T2w source series; no identifying value anywhere; a rerun skips the step; results off
the source grid are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import MR_T1, MR_T2, SECRET, leaks
from _dicom_readback import pm_values, seg_labels, values_on_grid

from primage.cli import main
from primage.dicom.synthetic import (
    EXAMPLE_FRAME_TIMES,
    IDENTITIES,
    Study,
    split_volumes,
    write_series,
    write_tumour_seg,
)
from primage.errors import PrimageInputError
from primage.pipeline import discover_cohort, run_cohort, validate_config
from primage.synthetic import make_digital_patient

STEPS = ["register", "segment", "kinetics", "radiomics"]


def _config(root: Path, **changes) -> dict:
    config = {
        "reference": "t2w",
        "steps": STEPS,
        "kinetics": {"margin_mm": 5},
        "radiomics": {"images": ["t2w", "adc"]},
        "export": {
            "dicom": True,
            "dicom_source": str(root / "dicom"),
            "inventory": str(root / "inventory.csv"),
        },
    }
    config.update(changes)
    return validate_config(config)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_dicom")
    patient = make_digital_patient(
        11, size=(20, 20, 6), spacing=(3.0, 3.0, 5.0), b_values=(0, 500, 1000),
        frame_times_s=EXAMPLE_FRAME_TIMES,
    )  # fmt: skip
    dicom = root / "dicom" / "Quernleigh_Ambrosine"  # folder names may hold the name too
    mr = Study(IDENTITIES["philips"], "Philips Medical Systems")
    t2w = write_series(
        dicom / "T2", mr, [patient.t2w], description="T2W_TSE", series_number=2,
        attributes=MR_T2,
    )  # fmt: skip
    write_series(
        dicom / "DWI", mr, split_volumes(patient.dwi), description="DWI_b0_1000",
        series_number=3, b_values=[0, 500, 1000],
    )  # fmt: skip
    write_series(
        dicom / "DCE", mr, split_volumes(patient.dce), description="T1_DYN", series_number=4,
        attributes=MR_T1, times_s=list(EXAMPLE_FRAME_TIMES),
    )  # fmt: skip
    write_tumour_seg(dicom / "SEG", t2w, patient.tumour)
    secret = root / "secret.txt"
    secret.write_text(SECRET)
    scan = ["dicom", "scan", "-i", str(root / "dicom"), "-o", str(root / "inventory.csv"), "-q"]
    assert main(scan) == 0
    assemble = ["dicom", "assemble", "-i", str(root / "dicom"), "--inventory",
                str(root / "inventory.csv"), "-o", str(root / "cohort"), "--secret-file",
                str(secret), "-q"]  # fmt: skip
    assert main(assemble) == 0
    cases = discover_cohort(root / "cohort")
    assert len(cases) == 1 and {"t2w", "dwi", "dce"} <= set(cases[0].series)
    assert "t2w" in cases[0].masks
    result = run_cohort(cases, _config(root), root / "out", workers=0)
    return root, cases[0], result, t2w


def _objects(root: Path, case) -> Path:
    return root / "out" / case.case_id / "dicom"


def test_objects_reference_the_t2w_source_series(study):
    root, case, result, t2w = study
    summary = result.summaries[0]
    assert summary["status"] != "failed", summary["message"]
    dicom = _objects(root, case)
    names = sorted(p.name for p in dicom.glob("*.dcm"))
    assert {"seg_tumour.dcm", "seg_fcf_adc_habitats.dcm", "seg_fcf_iauc60_habitats.dcm",
            "pm_adc.dcm", "pm_iauc60.dcm", "pm_fcf_adc_confidence.dcm",
            "sr_measurements.dcm"} <= set(names)  # fmt: skip
    assert sorted(summary["dicom"]["objects"]) == names
    assert summary["dicom"]["not_exported"] == []
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in t2w]
    for path in dicom.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == source[0].StudyInstanceUID
        if ds.Modality != "SR":
            assert ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
            referenced = ds.ReferencedSeriesSequence[0]
            assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
        assert ds.PatientID == case.case_id  # the pseudonym (case folder name)
    rows = {r["step"]: r["state"] for r in summary["steps"]}
    assert rows["dicom"] == "done"


def test_seg_and_parametric_maps_equal_the_pipeline_outputs(study):
    root, case, _, _ = study
    out = root / "out" / case.case_id
    dicom = _objects(root, case)
    for name, nifti_path in (
        ("tumour", out / "segment" / "tumour.nii.gz"),
        ("fcf_adc_habitats", out / "kinetics" / "fcf_adc_habitats.nii.gz"),
    ):
        nifti = sitk.ReadImage(str(nifti_path))
        read, segments = seg_labels(dicom / f"seg_{name}.dcm")
        labels, distance = values_on_grid(read, nifti)
        truth = sitk.GetArrayFromImage(nifti)
        numbers = {int(v): n for n, v in enumerate(np.unique(truth[truth > 0]), start=1)}
        expected = np.zeros_like(labels)
        for value, number in numbers.items():
            expected[truth == value] = number
        assert np.array_equal(labels, expected), name
        assert distance < 1e-3 and len(segments) == len(numbers)
    for name in ("adc", "iauc60", "ttp", "fcf_adc_confidence"):
        path = dicom / f"pm_{name}.dcm"
        nifti = sitk.ReadImage(str(out / "kinetics" / f"{name}.nii.gz"))
        values, _ = values_on_grid(pm_values(path), nifti, fill=np.nan)
        assert np.array_equal(values, sitk.GetArrayFromImage(nifti).astype(np.float32)), name
        pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
        read, _ = values_on_grid(pm.get_volume().to_simpleitk(), nifti, fill=np.nan)
        assert np.array_equal(read, values)


def test_structured_report_holds_the_case_values(study):
    root, case, _, _ = study
    out = root / "out" / case.case_id
    tumour = sitk.ReadImage(str(out / "segment" / "tumour.nii.gz"))
    inside = sitk.GetArrayFromImage(tumour) > 0
    sr = hd.sr.srread(_objects(root, case) / "sr_measurements.dcm")
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    measured = {
        (m.name.value, m.derivation.meaning if m.derivation is not None else None): m.value
        for m in groups["tumour"].get_measurements()
    }
    assert measured[("118565006", None)] == pytest.approx(
        inside.sum() * float(np.prod(tumour.GetSpacing()))
    )
    for code, name in (("113041", "adc"), ("126321", "iauc60")):
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "kinetics" / f"{name}.nii.gz")))
        values = values[inside].astype(float)
        values = values[values != 0]
        assert measured[(code, "Mean")] == pytest.approx(values.mean(), rel=1e-12)
        assert measured[(code, "Median")] == pytest.approx(np.median(values), rel=1e-12)
    # FCF habitat values of kinetics/fcf_adc.json, radiomic features of radiomics/adc.csv.
    table = json.loads((out / "kinetics" / "fcf_adc.json").read_text())["habitats"]
    habitat_groups = sorted(
        (g for name, g in groups.items() if name.startswith("FCF ADC habitat")),
        key=lambda g: g.tracking_identifier,
    )
    assert len(habitat_groups) == len(table)
    for group, habitat in zip(habitat_groups, table, strict=True):
        found = {m.name.value: m.value for m in group.get_measurements()}
        assert found["113041"] == pytest.approx(habitat["value"], rel=1e-12)
    features = {m.name.meaning: m.value for m in groups["tumour radiomics adc"].get_measurements()}
    row = (out / "radiomics" / "adc.csv").read_text().splitlines()
    header, values = row[0].split(","), row[1].split(",")
    mean = float(values[header.index("original_firstorder_Mean")])
    assert features["Mean"] == pytest.approx(mean, rel=1e-12)


def test_no_identifying_value_in_any_output(study):
    root, case, _, _ = study
    files = [p for p in (root / "out").rglob("*") if p.is_file()]
    files += [p for p in (root / "cohort").rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in files)
    assert leaks(files, also=["Quernleigh_Ambrosine"]) == []


def test_rerun_skips_the_export_and_keeps_the_objects(study):
    root, case, _, _ = study
    dicom = _objects(root, case)
    before = {p.name: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
              for p in dicom.glob("*.dcm")}  # fmt: skip
    again = run_cohort(discover_cohort(root / "cohort"), _config(root), root / "out", workers=0)
    rows = {r["step"]: r["state"] for r in again.summaries[0]["steps"]}
    assert rows["dicom"] == "up-to-date"
    after = {p.name: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
             for p in dicom.glob("*.dcm")}  # fmt: skip
    assert after == before


def test_results_off_the_source_grid_are_refused_with_the_reason(study, tmp_path):
    root, case, _, _ = study
    # The ct preset resamples to 1 mm: the tumour no longer lies on the T2w series' grid.
    config = _config(root, steps=["preprocess", "segment"], preprocess={"presets": {"t2w": "ct"}})
    result = run_cohort(discover_cohort(root / "cohort"), config, tmp_path / "out", workers=0)
    summary = result.summaries[0]
    assert summary["status"] == "failed" and summary["failed_step"] == "dicom"
    assert "not on the source series' voxel grid" in summary["message"]
    # The export runs last: its failure leaves the report's figures.
    assert {r["step"]: r["state"] for r in summary["steps"]}["figures"] == "done"
    assert not list((tmp_path / "out" / case.case_id / "dicom").glob("*.dcm"))


def test_export_configuration_is_validated(study, tmp_path):
    root, _, _, _ = study
    with pytest.raises(PrimageInputError, match="did you mean 'dicom_source'"):
        validate_config({"export": {"dicom": True, "dicom_sorce": "x"}})
    with pytest.raises(PrimageInputError, match="export.dicom_source"):
        validate_config({"export": {"dicom": True, "inventory": str(root / "inventory.csv")}})
    with pytest.raises(PrimageInputError, match="export.inventory"):
        validate_config({"export": {"dicom": True, "dicom_source": str(root / "dicom")}})
    with pytest.raises(PrimageInputError, match="did you mean 'adc'"):
        validate_config({"export": {"maps": ["adcc"]}})
    with pytest.raises(PrimageInputError, match="export.dicom"):
        validate_config({"export": {"dicom": "yes"}})
    # A case folder not written by assemble cannot be traced to its series.
    plain = tmp_path / "cohort" / "P1"
    plain.mkdir(parents=True)
    assembled = root / "cohort" / study[1].case_id
    (plain / "t2w.nii.gz").write_bytes((assembled / "t2w.nii.gz").read_bytes())
    (plain / "tumour.nii.gz").write_bytes((assembled / "tumour_t2w.nii.gz").read_bytes())
    config = _config(root, steps=["segment"])
    result = run_cohort(discover_cohort(tmp_path / "cohort"), config, tmp_path / "out", workers=0)
    assert result.summaries[0]["failed_step"] == "dicom"
    assert "case.json does not name the DICOM series" in result.summaries[0]["message"]


def test_default_configuration_text_documents_the_export():
    from primage.pipeline.config import DEFAULT_CONFIG, DEFAULT_CONFIG_TEXT, parse_yaml

    parsed = parse_yaml(DEFAULT_CONFIG_TEXT, "default")
    assert parsed["export"] == DEFAULT_CONFIG["export"]
    assert validate_config(parsed)["export"]["dicom"] is False
