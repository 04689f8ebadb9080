"""DICOM out: SEG, Parametric Maps and the TID 1500 SR, read back with highdicom / pydicom.

Every object is compared with the NIfTI it was made from: geometry by physical points
(each read-back voxel centre must be a voxel centre of the NIfTI), SEG voxels identical,
Parametric Map values equal as float32, SR values equal to numbers computed here with
numpy from the NIfTI files. Sources: invented synthetic patients (oblique grids, classic,
4D and enhanced multi-frame series) and the real IBSI soft-tissue-sarcoma CT and PET.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import MR_T2, identifying_strings, leaks
from _dicom_readback import pm_values, seg_labels, seg_masks_pydicom, values_on_grid
from _shared_data import ibsi_sts_dicom, ibsi_sts_nifti

from primage.cli import main
from primage.dicom.export import export_results, feature_code
from primage.dicom.synthetic import IDENTITIES, Study, split_volumes, write_series
from primage.errors import PrimageInputError
from primage.synthetic import make_digital_patient

PSEUDONYM = "PSN0001"


def dicom_leaks(paths: list[Path], strings: list[str]) -> list[str]:
    """``leaks`` for identity strings of real data (the synthetic ones are checked by leaks)."""
    found = []
    for path in paths:
        blob = path.read_bytes().lower()
        found += [f"{path}: {s}" for s in strings if s.lower().encode() in blob]
    return found


# --- data ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A synthetic study (oblique grid): T2w classic, T2w enhanced, DWI 4D; result NIfTIs on it."""
    folder = tmp_path_factory.mktemp("export")
    patient = make_digital_patient(
        5, size=(24, 20, 8), spacing=(2.5, 2.5, 5.0), b_values=(0, 500, 1000)
    )
    study = Study(IDENTITIES["ge"], "GE MEDICAL SYSTEMS")
    write_series(
        folder / "t2w", study, [patient.t2w], description="T2 FSE", series_number=2,
        attributes=MR_T2,
    )  # fmt: skip
    write_series(
        folder / "t2w_enhanced", study, [patient.t2w], description="T2 FSE MF",
        series_number=3, attributes=MR_T2, enhanced=True,
    )  # fmt: skip
    write_series(
        folder / "dwi", study, split_volumes(patient.dwi), description="DWI", series_number=4,
        b_values=[0, 500, 1000], b_convention="ge",
    )  # fmt: skip
    results = folder / "results"
    results.mkdir()
    tumour = sitk.Cast(patient.tumour, sitk.sitkUInt8)
    sitk.WriteImage(tumour, str(results / "tumour.nii.gz"))
    adc = sitk.Cast(patient.truth_images["adc"], sitk.sitkFloat32)
    rng = np.random.default_rng(0)
    array = sitk.GetArrayFromImage(adc) * rng.uniform(0.9, 1.1, sitk.GetArrayFromImage(adc).shape)
    adc = sitk.GetImageFromArray(array.astype(np.float32))
    adc.CopyInformation(tumour)
    sitk.WriteImage(adc, str(results / "adc.nii.gz"))
    ktrans = sitk.GetImageFromArray(rng.uniform(0, 0.5, array.shape).astype(np.float32))
    ktrans.CopyInformation(tumour)
    sitk.WriteImage(ktrans, str(results / "ktrans.nii.gz"))
    # Habitats: ADC tertiles inside the tumour, labels 1-3 (as fcf_adc_habitats.nii.gz).
    inside = sitk.GetArrayFromImage(tumour) > 0
    cuts = np.quantile(array[inside], [1 / 3, 2 / 3])
    habitats = np.zeros(array.shape, np.uint8)
    habitats[inside] = 1 + np.digitize(array[inside], cuts)
    habitat_image = sitk.GetImageFromArray(habitats)
    habitat_image.CopyInformation(tumour)
    sitk.WriteImage(habitat_image, str(results / "fcf_adc_habitats.nii.gz"))
    values = [float(np.median(array[habitats == n])) for n in (1, 2, 3)]
    (results / "fcf_adc.json").write_text(
        json.dumps(
            {
                "parameter": "ADC",
                "unit": "mm^2/s",
                "habitats": [
                    {"label": n, "value": v} for n, v in zip((1, 2, 3), values, strict=True)
                ],
            }
        )
    )
    (results / "t2w.csv").write_text(
        "image,label,original_firstorder_Mean,original_firstorder_Kurtosis,"
        "original_shape_MeshVolume,original_glcm_JointAverage,"
        "wavelet-LLH_glszm_SmallAreaHighGrayLevelEmphasis,error\n"
        "t2w,1,412.5,3.25,20123.5,7.75,0.125,\n"
    )
    return folder, patient


@pytest.fixture(scope="module")
def exported(case):
    folder, _ = case
    results = folder / "results"
    result = export_results(
        folder / "t2w",
        folder / "out",
        pseudonym=PSEUDONYM,
        tumour=results / "tumour.nii.gz",
        habitats=[results / "fcf_adc_habitats.nii.gz"],
        maps={"adc": results / "adc.nii.gz", "ktrans": results / "ktrans.nii.gz"},
        features=[results / "t2w.csv"],
    )
    return result, {o.name: o.path for o in result.objects}


def _source_headers(folder: Path) -> list:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))]


# --- tests ---------------------------------------------------------------------------------------


def test_seg_voxels_and_geometry_equal_the_nifti(case, exported):
    folder, _ = case
    _, files = exported
    source = _source_headers(folder / "t2w")
    nifti = sitk.ReadImage(str(folder / "results" / "tumour.nii.gz"))
    read, segments = seg_labels(files["tumour"])
    labels, distance = values_on_grid(read, nifti)
    assert np.array_equal(labels, sitk.GetArrayFromImage(nifti))
    assert distance < 1e-3
    assert [s.segment_label for s in segments] == ["tumour"]
    # The same voxels decoded by pydicom alone (bit-packed frames placed by position).
    masks = seg_masks_pydicom(files["tumour"], nifti)
    assert list(masks) == [1]
    assert np.array_equal(masks[1], sitk.GetArrayFromImage(nifti) > 0)
    assert segments[0].segmented_property_type.value == "108369006"  # SCT Tumor
    assert segments[0].segmented_property_category.value == "49755003"
    seg = pydicom.dcmread(files["tumour"])
    assert seg.SegmentationType == "BINARY"
    # Referencing: same study and frame of reference, the source series and its instances.
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} <= {
        d.SOPInstanceUID for d in source
    }
    # Every frame lies on a source slice, with the source's orientation and pixel spacing.
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in source[0].ImageOrientationPatient],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
        [float(v) for v in source[0].PixelSpacing],
    )
    slices = np.array([[float(v) for v in d.ImagePositionPatient] for d in source])
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        assert np.min(np.linalg.norm(slices - position, axis=1)) < 1e-3


def test_habitat_seg_keeps_one_segment_per_habitat(case, exported):
    folder, _ = case
    _, files = exported
    nifti = sitk.ReadImage(str(folder / "results" / "fcf_adc_habitats.nii.gz"))
    read, segments = seg_labels(files["fcf_adc_habitats"])
    labels, _ = values_on_grid(read, nifti)
    assert np.array_equal(labels, sitk.GetArrayFromImage(nifti))
    masks = seg_masks_pydicom(files["fcf_adc_habitats"], nifti)
    for number in (1, 2, 3):
        assert np.array_equal(masks[number], sitk.GetArrayFromImage(nifti) == number)
    table = json.loads((folder / "results" / "fcf_adc.json").read_text())
    assert len(segments) == 3
    for description, habitat in zip(segments, table["habitats"], strict=True):
        assert description.segment_label.startswith(f"FCF ADC habitat {habitat['label']}")
        assert f"{habitat['value']:.4g}" in description.segment_label


@pytest.mark.parametrize(
    "name, unit, quantity", [("adc", "mm2/s", "113041"), ("ktrans", "/min", "126312")]
)
def test_parametric_map_values_exact(case, exported, name, unit, quantity):
    folder, _ = case
    _, files = exported
    nifti = sitk.ReadImage(str(folder / "results" / f"{name}.nii.gz"))
    values, distance = values_on_grid(pm_values(files[name]), nifti, fill=np.nan)
    assert np.array_equal(values, sitk.GetArrayFromImage(nifti))  # float32, bit for bit
    ds = pydicom.dcmread(files[name])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == unit
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert float(mapping.RealWorldValueSlope) == 1.0
    assert float(mapping.RealWorldValueIntercept) == 0.0
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == quantity
    # highdicom's own reader gives the same real-world values.
    pm = hd.pm.ParametricMap.from_dataset(ds)
    read, _ = values_on_grid(pm.get_volume().to_simpleitk(), nifti, fill=np.nan)
    assert np.array_equal(read, sitk.GetArrayFromImage(nifti))


def test_structured_report_values(case, exported):
    folder, _ = case
    _, files = exported
    results = folder / "results"
    tumour = sitk.ReadImage(str(results / "tumour.nii.gz"))
    inside = sitk.GetArrayFromImage(tumour) > 0
    adc = sitk.GetArrayFromImage(sitk.ReadImage(str(results / "adc.nii.gz")))
    sr = hd.sr.srread(files["measurements"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    tumour_group = groups["tumour"]
    seg_uid = pydicom.dcmread(files["tumour"], stop_before_pixels=True).SOPInstanceUID
    assert tumour_group.referenced_segment.referenced_sop_instance_uid == seg_uid
    measured = {}
    for m in tumour_group.get_measurements():
        derivation = m.derivation.meaning if m.derivation is not None else None
        measured[(m.name.value, derivation)] = (m.value, m.unit.value)
    voxel_volume = float(np.prod(tumour.GetSpacing()))
    assert measured[("118565006", None)] == (pytest.approx(inside.sum() * voxel_volume), "mm3")
    volume = next(m for m in tumour_group.get_measurements() if m.name.value == "118565006")
    assert volume.method.value == "126030"  # Sum of segmented voxel method for volume
    values = adc[inside].astype(float)
    values = values[values != 0]
    assert measured[("113041", "Mean")][0] == pytest.approx(values.mean(), rel=1e-12)
    assert measured[("113041", "Median")][0] == pytest.approx(np.median(values), rel=1e-12)
    assert measured[("113041", "Median")][1] == "mm2/s"
    assert measured[("126312", "Mean")][1] == "/min"
    # Each map value names the Parametric Map it was measured on.
    pm_uid = pydicom.dcmread(files["adc"], stop_before_pixels=True).SOPInstanceUID
    adc_mean = next(
        m
        for m in tumour_group.get_measurements()
        if m.name.value == "113041" and m.derivation.meaning == "Mean"
    )
    source = adc_mean.referenced_images[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == pm_uid
    assert source.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    # Habitats: one group each, value from fcf_adc.json, volume from the habitat image.
    habitats = sitk.GetArrayFromImage(sitk.ReadImage(str(results / "fcf_adc_habitats.nii.gz")))
    table = json.loads((results / "fcf_adc.json").read_text())["habitats"]
    habitat_groups = [g for name, g in groups.items() if name.startswith("FCF ADC habitat")]
    assert len(habitat_groups) == 3
    for group, habitat in zip(
        sorted(habitat_groups, key=lambda g: g.tracking_identifier), table, strict=True
    ):
        found = {m.name.value: m.value for m in group.get_measurements()}
        assert found["113041"] == pytest.approx(habitat["value"], rel=1e-12)
        assert found["118565006"] == pytest.approx(
            (habitats == habitat["label"]).sum() * voxel_volume
        )
    # Radiomics: IBSI codes where pyradiomics matches IBSI, private codes otherwise.
    features = {
        (m.name.scheme_designator, m.name.value): (m.name.meaning, m.value)
        for m in groups["tumour radiomics t2w"].get_measurements()
    }
    assert features[("IBSI", "Q4LE")] == ("Mean", 412.5)
    assert features[("IBSI", "RNU0")] == ("Volume of Mesh", 20123.5)
    assert features[("IBSI", "60VM")] == ("Joint Average of GLCM", 7.75)
    private = {
        meaning: value for (scheme, _), (meaning, value) in features.items() if scheme == "99PYRAD"
    }
    # pyradiomics' kurtosis is not IBSI's excess kurtosis: it keeps its own name.
    assert private == {
        "original_firstorder_Kurtosis": 3.25,
        "wavelet-LLH_glszm_SmallAreaHighGrayLevelEmphasis": 0.125,
    }
    # The SR lists the SEG and the maps as evidence.
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg_uid in evidence


def test_real_pyradiomics_table_in_the_report(case, tmp_path):
    """A table written by the project's radiomics extraction: every feature reaches the SR,
    coded IBSI exactly where the IBSI table maps it and pyradiomics agrees with IBSI."""
    from primage.radiomics.extraction import extract, result_rows
    from primage.radiomics.ibsi import FEATURES, KNOWN_DIFFERENCES
    from primage.radiomics.tables import write_csv

    folder, patient = case
    tumour = folder / "results" / "tumour.nii.gz"
    rows, _ = result_rows(extract({"t2w": patient.t2w}, str(tumour), labels=[1], workers=0))
    write_csv(rows, tmp_path / "t2w.csv")
    result = export_results(
        folder / "t2w", tmp_path / "out", pseudonym=PSEUDONYM, tumour=tumour,
        features=[tmp_path / "t2w.csv"],
    )  # fmt: skip
    sr = hd.sr.srread(next(o.path for o in result.objects if o.kind == "sr"))
    group = next(
        g
        for g in sr.content.get_volumetric_roi_measurement_groups()
        if g.tracking_identifier == "tumour radiomics t2w"
    )
    found = {
        m.name.meaning: m for m in group.get_measurements() if m.name.scheme_designator == "99PYRAD"
    }
    ibsi = {m.name.value: m for m in group.get_measurements() if m.name.scheme_designator == "IBSI"}
    features = {k: float(v) for k, v in rows[0].items() if k.startswith("original_")}
    assert len(found) + len(ibsi) == len(features) > 90
    # IBSI-coded: in the IBSI table (3D mode), not a known difference; value unchanged.
    from primage.dicom.export import IBSI_CODES

    tags = {}
    for name, tag, mode in FEATURES:
        base = tag.removesuffix("_3D_avg").removesuffix("_3D")
        if mode == "3D" and base in IBSI_CODES and base not in KNOWN_DIFFERENCES:
            tags.setdefault(name, IBSI_CODES[base][0])
    for name, value in features.items():
        if name in tags:
            assert ibsi[tags[name]].value == pytest.approx(value, rel=1e-12), name
        else:
            assert found[name].value == pytest.approx(value, rel=1e-12), name
    assert ibsi["RNU0"].unit.value == "mm3"


def test_feature_codes_come_from_the_ibsi_table():
    from pydicom.sr.codedict import codes

    concept, unit = feature_code("original_glszm_SmallAreaEmphasis")
    assert (concept.value, concept.scheme_designator, unit) == ("5QRC", "IBSI", "1")
    # DICOM's own IBSI code list agrees with the table where it has the feature.
    assert codes.IBSI.SmallZoneEmphasis.value == concept.value
    assert codes.IBSI.Sphericity.value == feature_code("original_shape_Sphericity")[0].value
    concept, unit = feature_code("original_firstorder_Median", intensity_unit="[hnsf'U]")
    assert (concept.value, unit) == ("Y12H", "[hnsf'U]")
    concept, _ = feature_code("original_shape_MajorAxisLength")  # PCA normalisation differs
    assert concept.scheme_designator == "99PYRAD" and len(concept.value) <= 16


def test_identity_is_the_pseudonym_only(case, exported):
    result, files = exported
    paths = [o.path for o in result.objects] + [result.manifest]
    assert leaks(paths) == []
    for path in files.values():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientID == PSEUDONYM
        assert ds.PatientName.family_name == PSEUDONYM
        assert not ds.get("PatientBirthDate")
        assert not ds.get("AccessionNumber")
        assert ds.PatientIdentityRemoved == "YES"
    assert sorted(identifying_strings())  # the check has something to look for


def test_4d_and_multiframe_sources(case, tmp_path):
    folder, _ = case
    results = folder / "results"
    nifti = sitk.ReadImage(str(results / "adc.nii.gz"))
    for name in ("dwi", "t2w_enhanced"):
        out = tmp_path / name
        result = export_results(
            folder / name, out, pseudonym=PSEUDONYM, maps={"adc": results / "adc.nii.gz"},
            tumour=results / "tumour.nii.gz",
        )  # fmt: skip
        files = {o.name: o.path for o in result.objects}
        values, _ = values_on_grid(pm_values(files["adc"]), nifti, fill=np.nan)
        assert np.array_equal(values, sitk.GetArrayFromImage(nifti)), name
        labels, _ = values_on_grid(seg_labels(files["tumour"])[0], nifti)
        assert np.array_equal(
            labels, sitk.GetArrayFromImage(sitk.ReadImage(str(results / "tumour.nii.gz")))
        )
        source = _source_headers(folder / name)
        seg = pydicom.dcmread(files["tumour"], stop_before_pixels=True)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
        assert leaks([o.path for o in result.objects]) == []


def test_nan_values_and_deflated_objects(case, tmp_path):
    folder, _ = case
    results = folder / "results"
    adc = sitk.ReadImage(str(results / "adc.nii.gz"))
    array = sitk.GetArrayFromImage(adc)
    array[0, 0, :3] = np.nan  # no fit: NaN is stored as NaN, not replaced
    with_nan = sitk.GetImageFromArray(array)
    with_nan.CopyInformation(adc)
    tumour = sitk.ReadImage(str(results / "tumour.nii.gz"))
    sizes = {}
    for deflate in (False, True):
        result = export_results(
            folder / "t2w", tmp_path / str(deflate), pseudonym=PSEUDONYM, tumour=tumour,
            maps={"adc": with_nan}, deflate=deflate,
        )  # fmt: skip
        files = {o.name: o.path for o in result.objects}
        values, _ = values_on_grid(pm_values(files["adc"]), adc)
        assert np.array_equal(values, array, equal_nan=True)
        assert np.count_nonzero(np.isnan(values)) == 3
        labels, _ = values_on_grid(seg_labels(files["tumour"])[0], tumour)
        assert np.array_equal(labels, sitk.GetArrayFromImage(tumour))
        syntax = pydicom.dcmread(files["tumour"]).file_meta.TransferSyntaxUID
        assert syntax == ("1.2.840.10008.1.2.1.99" if deflate else "1.2.840.10008.1.2.1")
        sizes[deflate] = {name: path.stat().st_size for name, path in files.items()}
        assert leaks(list(files.values())) == []
    assert sizes[True]["tumour"] < sizes[False]["tumour"] / 3
    assert sizes[True]["adc"] < sizes[False]["adc"]


def test_flipped_index_order_is_the_same_grid(case, tmp_path):
    folder, _ = case
    tumour = sitk.ReadImage(str(folder / "results" / "tumour.nii.gz"))
    flipped = sitk.Flip(tumour, [False, True, True])  # same voxel centres, other index order
    result = export_results(folder / "t2w", tmp_path, pseudonym=PSEUDONYM, tumour=flipped)
    labels, _ = values_on_grid(seg_labels(result.objects[0].path)[0], tumour)
    assert np.array_equal(labels, sitk.GetArrayFromImage(tumour))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "primage", "dicom", "export", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_exports_and_prints_no_identity(case, tmp_path):
    folder, _ = case
    results = folder / "results"
    run = _cli(
        "--source", str(folder / "t2w"), "-o", str(tmp_path / "out"),
        "--tumour", str(results / "tumour.nii.gz"), "--segment-name", "1=GTV",
        "--tumour-algorithm", "MANUAL",
        "--map", str(results / "adc.nii.gz"), "--map", f"ve={results / 'ktrans.nii.gz'}",
        "--pseudonym", PSEUDONYM,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "wrote 4 DICOM objects" in run.stderr
    assert leaks(sorted((tmp_path / "out").iterdir()), run.stdout + run.stderr) == []
    _, segments = seg_labels(tmp_path / "out" / "seg_tumour.dcm")
    assert segments[0].segment_label == "GTV"
    assert segments[0].algorithm_type.value == "MANUAL"
    ve = pydicom.dcmread(tmp_path / "out" / "pm_ve.dcm", stop_before_pixels=True)
    unit = ve.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert unit.MeasurementUnitsCodeSequence[0].CodeValue == "{ratio}"
    manifest = json.loads((tmp_path / "out" / "dicom_export.json").read_text())
    assert all(
        o["agreement"]["max_abs_difference"] == 0 for o in manifest["objects"] if "agreement" in o
    )


def test_case_folder_of_the_pipeline(case, tmp_path, capsys):
    """``--case``: the results where the pipeline writes them (OUT/<case>/<step>/...)."""
    import shutil

    folder, _ = case
    results = folder / "results"
    case_dir = tmp_path / "P0007"
    for step, names in {
        "segment": ["tumour.nii.gz"],
        "kinetics": ["adc.nii.gz", "ktrans.nii.gz", "fcf_adc_habitats.nii.gz", "fcf_adc.json"],
        "radiomics": ["t2w.csv"],
    }.items():
        (case_dir / step).mkdir(parents=True)
        for name in names:
            shutil.copy(results / name, case_dir / step / name)
    (case_dir / "radiomics" / "t2w.diagnostics.csv").write_text("image,label,x\nt2w,1,2\n")
    out = tmp_path / "dicom"
    code = main(
        ["dicom", "export", "--source", str(folder / "t2w"), "--case", str(case_dir),
         "-o", str(out), "--pseudonym", PSEUDONYM, "-q"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.glob("*.dcm"))
    assert written == [
        "pm_adc.dcm", "pm_ktrans.dcm", "seg_fcf_adc_habitats.dcm", "seg_tumour.dcm",
        "sr_measurements.dcm",
    ]  # fmt: skip
    values, _ = values_on_grid(
        pm_values(out / "pm_ktrans.dcm"), sitk.ReadImage(str(results / "ktrans.nii.gz"))
    )
    assert np.array_equal(
        values, sitk.GetArrayFromImage(sitk.ReadImage(str(results / "ktrans.nii.gz")))
    )
    sr = hd.sr.srread(out / "sr_measurements.dcm")
    ids = {g.tracking_identifier for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert {"tumour", "tumour radiomics t2w"} <= ids and len(ids) == 5  # + 3 habitats
    code = main(["dicom", "export", "--source", str(folder / "t2w"), "--case", str(tmp_path),
                 "-o", str(out), "--pseudonym", PSEUDONYM])  # fmt: skip
    assert code == 2 and "holds no pipeline results" in capsys.readouterr().err
    # The pseudonym from a map, as for assemble.
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"patient_id,pseudonym\n{IDENTITIES['ge']['PatientID']},GEP0042\n")
    code = main(
        ["dicom", "export", "--source", str(folder / "t2w"), "--tumour", str(results / "tumour.nii.gz"),
         "-o", str(tmp_path / "mapped"), "--pseudonym-map", str(mapping), "-q"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert pydicom.dcmread(tmp_path / "mapped" / "seg_tumour.dcm").PatientID == "GEP0042"
    mapping.write_text("patient_id,pseudonym\nSOMEONE,GEP0043\n")
    code = main(
        ["dicom", "export", "--source", str(folder / "t2w"), "--tumour", str(results / "tumour.nii.gz"),
         "-o", str(tmp_path / "mapped2"), "--pseudonym-map", str(mapping)]
    )  # fmt: skip
    assert code == 2 and "no entry" in capsys.readouterr().err


def test_bad_input_is_one_clear_message(case, tmp_path, capsys):
    folder, _ = case
    results = folder / "results"
    tumour = sitk.ReadImage(str(results / "tumour.nii.gz"))
    shifted = sitk.Image(tumour)
    shifted.SetOrigin(
        [o + 0.5 * s for o, s in zip(tumour.GetOrigin(), tumour.GetSpacing(), strict=True)]
    )
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    both = tmp_path / "both"
    both.mkdir()
    for name in ("t2w", "dwi"):
        (both / name).symlink_to(folder / name)
    base = ["-o", str(tmp_path / "out"), "--pseudonym", PSEUDONYM]
    cases = {
        "not on the source series' voxel grid": [
            "--source", str(folder / "t2w"), "--tumour", str(tmp_path / "shifted.nii.gz"),
        ],
        "unknown map name 'fa'": ["--source", str(folder / "t2w"), "--map", f"fa={results / 'adc.nii.gz'}"],
        "source series folder does not exist": [
            "--source", str(tmp_path / "missing"), "--map", str(results / "adc.nii.gz"),
        ],
        "holds 2 image series": ["--source", str(both), "--map", str(results / "adc.nii.gz")],
        "contains the source patient's name or ID": [
            "--source", str(folder / "t2w"), "--map", str(results / "adc.nii.gz"),
            "--pseudonym", IDENTITIES["ge"]["PatientID"],
        ],
    }  # fmt: skip
    for expected, args in cases.items():
        code = main(["dicom", "export", *base, *args])  # in process: a traceback fails the test
        err = capsys.readouterr().err
        assert code == 2, (expected, err)
        assert expected in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    code = main(
        ["dicom", "export", "--source", str(folder / "t2w"), "-o", str(tmp_path / "o2"),
         "--map", str(results / "adc.nii.gz")]
    )  # fmt: skip
    assert code == 2 and "pseudonym" in capsys.readouterr().err
    with pytest.raises(PrimageInputError, match="nothing to export"):
        export_results(folder / "t2w", tmp_path / "o3", pseudonym=PSEUDONYM)


def test_real_ibsi_sts_ct_mask_and_pet_suv(tmp_path):
    """Real archive DICOM: IBSI's STS_003 CT mask as SEG on the CT, PET SUV as a Parametric Map."""
    ct_mask = sitk.ReadImage(str(ibsi_sts_nifti("STS_003", "CT", "mask")))
    result = export_results(
        ibsi_sts_dicom("STS_003") / "CT" / "image", tmp_path / "ct", pseudonym="STSX0001",
        tumour=ct_mask, tumour_names={1: "GTV"},
    )  # fmt: skip
    files = {o.name: o.path for o in result.objects}
    labels, distance = values_on_grid(seg_labels(files["tumour"])[0], ct_mask)
    assert np.array_equal(labels, sitk.GetArrayFromImage(ct_mask))
    assert distance < 1e-3
    assert np.array_equal(
        seg_masks_pydicom(files["tumour"], ct_mask)[1], sitk.GetArrayFromImage(ct_mask) > 0
    )
    ct = _source_headers(ibsi_sts_dicom("STS_003") / "CT" / "image")
    seg = pydicom.dcmread(files["tumour"], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    pet = sitk.ReadImage(str(ibsi_sts_nifti("STS_003", "PET")))
    pet_mask = sitk.ReadImage(str(ibsi_sts_nifti("STS_003", "PET", "mask")))
    # The whole case folder (CT, PET, MR and their RT Structure Sets): the PET is the only
    # series on the results' grid.
    result = export_results(
        ibsi_sts_dicom("STS_003"), tmp_path / "pet", pseudonym="STSX0001",
        tumour=pet_mask, maps={"suv": pet},
    )  # fmt: skip
    pet_series = _source_headers(ibsi_sts_dicom("STS_003") / "PET" / "image")[0].SeriesInstanceUID
    for obj in result.objects[:2]:
        ds = pydicom.dcmread(obj.path, stop_before_pixels=True)
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == pet_series
    files = {o.name: o.path for o in result.objects}
    values, _ = values_on_grid(pm_values(files["suv"]), pet, fill=np.nan)
    assert np.array_equal(values, sitk.GetArrayFromImage(pet).astype(np.float32))
    sr = hd.sr.srread(files["measurements"])
    group = sr.content.get_volumetric_roi_measurement_groups()[0]
    found = {
        (m.name.value, m.derivation.meaning if m.derivation else None): m.value
        for m in group.get_measurements()
    }
    suv = sitk.GetArrayFromImage(pet)[sitk.GetArrayFromImage(pet_mask) > 0].astype(float)
    suv = suv[suv != 0]
    assert found[("126401", "Mean")] == pytest.approx(suv.mean(), rel=1e-9)
    assert found[("118565006", None)] == pytest.approx(
        (sitk.GetArrayFromImage(pet_mask) > 0).sum() * np.prod(pet.GetSpacing())
    )
    # The real patient's identity (name and ID "STS_003") is in no exported object.
    identity = {str(ct[0].PatientID), str(ct[0].PatientName)}
    outputs = sorted((tmp_path / "ct").iterdir()) + sorted((tmp_path / "pet").iterdir())
    assert dicom_leaks(outputs, sorted(identity)) == []
    # Values that had to lose the identity still fit their VR (the source's StudyID
    # "IBSI_1_STS_003_CT" cannot hold the pseudonym in 16 characters: emptied).
    limits = {"SH": 16, "CS": 16, "LO": 64}
    for path in outputs:
        if path.suffix == ".dcm":
            for element in pydicom.dcmread(path, stop_before_pixels=True).iterall():
                if element.VR in limits and isinstance(element.value, str):
                    assert len(element.value) <= limits[element.VR], (path.name, element)
