"""A result set of nodes (tumour, habitats, maps; real MRML from slicer-core) as DICOM SEG,
Parametric Maps and the TID 1500 SR (``export_result_nodes``, what the Kinetics and
Pipeline modules' "Export to DICOM" call), the source series found through the subject
hierarchy's DICOM UID; read back with highdicom / pydicom and compared with the images."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import MR_T2, leaks
from _dicom_readback import pm_values, seg_labels, values_on_grid

slicer = pytest.importorskip("slicer")

import highdicom as hd  # noqa: E402

from primage.dicom.synthetic import IDENTITIES, Study, flipped_slices, write_series  # noqa: E402
from primage.errors import PrimageInputError  # noqa: E402
from primage.mrml.dicom_export import export_result_nodes, source_files_of_node  # noqa: E402
from primage.mrml.segmentations import segmentation_from_label_image  # noqa: E402
from primage.mrml.volumes import volume_node_from_sitk  # noqa: E402
from primage.synthetic import make_digital_patient  # noqa: E402

PSEUDONYM = "PSN0003"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A T2w series written from the last slice, a two-part tumour, habitats and an ADC map."""
    folder = tmp_path_factory.mktemp("mrml_results")
    patient = make_digital_patient(9, size=(18, 16, 6), spacing=(2.5, 2.5, 5.0))
    study = Study(IDENTITIES["ge"], "GE MEDICAL SYSTEMS")
    files = write_series(
        folder / "t2w", study, [flipped_slices(patient.t2w)], description="T2 FSE",
        series_number=3, attributes=MR_T2,
    )  # fmt: skip
    tumour = sitk.GetArrayFromImage(patient.tumour) > 0
    labels = np.zeros(tumour.shape, np.uint8)
    labels[tumour] = 1
    labels[tumour & (np.arange(tumour.shape[2]) < tumour.shape[2] // 2)[None, None, :]] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(patient.tumour)
    adc = sitk.Cast(patient.truth_images["adc"], sitk.sitkFloat32)
    return files, label_image, adc


def _loaded(scene, files):
    """A volume node carrying its series' UID in the subject hierarchy, as Slicer's DICOM
    module leaves it, and the database lookup (slicer.dicomDatabase.filesForSeries)."""
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T2 FSE")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
    hierarchy.SetItemUID(item, "DICOM", uid)
    return node, (lambda asked: [str(f) for f in files] if asked == uid else [])


def test_result_nodes_to_seg_pm_and_sr(mrml_scene, series, tmp_path):
    files, labels, adc = series
    node, files_for_series = _loaded(mrml_scene, files)
    source = source_files_of_node(node, files_for_series)
    assert sorted(source) == sorted(str(f) for f in files)
    tumour = segmentation_from_label_image(
        labels, mrml_scene, {1: "GTV rim", 2: "GTV core"}, name="tumour"
    )
    habitats = segmentation_from_label_image(
        labels, mrml_scene, {1: "Habitat 1", 2: "Habitat 2"}, name="habitats"
    )
    maps = {
        "adc": volume_node_from_sitk(adc, mrml_scene, name="adc"),
        "fa": volume_node_from_sitk(adc, mrml_scene, name="fa"),  # no DICOM code: left out
    }
    result, skipped = export_result_nodes(
        source, tmp_path / "out", pseudonym=PSEUDONYM, tumour_node=tumour,
        habitat_nodes={"adc": habitats}, map_nodes=maps,
    )  # fmt: skip
    assert skipped == ["fa: no DICOM quantity code for this map"]
    written = {p.name for p in (tmp_path / "out").glob("*.dcm")}
    assert written == {"seg_tumour.dcm", "seg_fcf_adc_habitats.dcm", "pm_adc.dcm",
                       "sr_measurements.dcm"}  # fmt: skip
    truth = sitk.GetArrayFromImage(labels)
    read, segments = seg_labels(tmp_path / "out" / "seg_tumour.dcm")
    values, distance = values_on_grid(read, labels)
    assert distance < 1e-3 and np.array_equal(values, truth)
    assert [s.segment_label for s in segments] == ["GTV rim", "GTV core"]
    read, _ = seg_labels(tmp_path / "out" / "seg_fcf_adc_habitats.dcm")
    assert np.array_equal(values_on_grid(read, labels)[0], truth)
    pm, _ = values_on_grid(pm_values(tmp_path / "out" / "pm_adc.dcm"), adc, fill=np.nan)
    assert np.array_equal(pm, sitk.GetArrayFromImage(adc))
    sr = hd.sr.srread(tmp_path / "out" / "sr_measurements.dcm")
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    voxel = float(np.prod(labels.GetSpacing()))
    adc_values = sitk.GetArrayFromImage(adc)
    for label, name in ((1, "GTV rim"), (2, "GTV core")):
        found = {
            (m.name.value, m.derivation.meaning if m.derivation else None): m.value
            for m in groups[name].get_measurements()
        }
        assert found[("118565006", None)] == pytest.approx((truth == label).sum() * voxel)
        inside = adc_values[truth == label].astype(float)
        inside = inside[inside != 0]
        assert found[("113041", "Mean")] == pytest.approx(inside.mean(), rel=1e-12)
    ds = pydicom.dcmread(tmp_path / "out" / "seg_tumour.dcm", stop_before_pixels=True)
    assert (
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    )
    assert leaks(list((tmp_path / "out").iterdir())) == []


def test_bad_input_is_one_clear_message(mrml_scene, series, tmp_path):
    files, labels, adc = series
    plain = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not from DICOM")
    with pytest.raises(PrimageInputError, match="was not loaded from DICOM"):
        source_files_of_node(plain, lambda uid: [])
    node, _ = _loaded(mrml_scene, files)
    with pytest.raises(PrimageInputError, match="has no files"):
        source_files_of_node(node, lambda uid: [])
    whole = sitk.Cast(labels > 0, sitk.sitkUInt8)
    both = segmentation_from_label_image(whole, mrml_scene, {1: "all"}, name="both")
    extra = segmentation_from_label_image(whole, mrml_scene, {1: "copy"}, name="extra")
    both.GetSegmentation().CopySegmentFromSegmentation(
        extra.GetSegmentation(), extra.GetSegmentation().GetNthSegmentID(0)
    )
    with pytest.raises(PrimageInputError, match="overlap"):
        export_result_nodes([str(f) for f in files], tmp_path, pseudonym=PSEUDONYM,
                            tumour_node=both)  # fmt: skip
    shifted = sitk.Image(adc)
    shifted.SetOrigin([o + 1.0 for o in adc.GetOrigin()])
    off = volume_node_from_sitk(shifted, mrml_scene, name="shifted")
    with pytest.raises(PrimageInputError, match="not on the source series' voxel grid"):
        export_result_nodes([str(f) for f in files], tmp_path, pseudonym=PSEUDONYM,
                            map_nodes={"adc": off})  # fmt: skip
    with pytest.raises(PrimageInputError, match="pseudonym"):
        export_result_nodes([str(f) for f in files], tmp_path, pseudonym=IDENTITIES["ge"][
            "PatientID"], map_nodes={"adc": off})  # fmt: skip
    assert not list(tmp_path.glob("*.dcm"))


def test_kinetics_module_result_of_a_dwi_loaded_from_dicom(mrml_scene, tmp_path):
    """The Kinetics module's path: a DWI series loaded from DICOM, Fit-Cluster-Fit on it, the
    result (habitats, confidence map) and the tumour exported against the DWI series."""
    from primage.mrml.dicom_export import describe_export, export_kinetics_result
    from primage.mrml.kinetics import fcf_from_nodes
    from primage.mrml.selftest import dicom_export_inputs
    from primage.mrml.volumes import sitk_from_volume_node

    inputs = dicom_export_inputs(mrml_scene, tmp_path)
    dwi, segmentation, files_for_series = (
        inputs["dwi"],
        inputs["tumour"],
        inputs["files_for_series"],
    )
    from primage.mrml.segmentations import label_images_from_segmentation

    tumour = label_images_from_segmentation(segmentation)["tumour"][0]
    result = fcf_from_nodes(dwi, "adc", mask_node=segmentation)
    exported, skipped = export_kinetics_result(
        result, "fcf_adc", dwi, files_for_series, tmp_path / "out", pseudonym=PSEUDONYM, tumour_node=segmentation,
    )  # fmt: skip
    assert skipped == []
    assert {o.path.name for o in exported.objects} == {
        "seg_tumour.dcm", "seg_fcf_adc_habitats.dcm", "pm_fcf_adc_confidence.dcm",
        "sr_measurements.dcm",
    }  # fmt: skip
    confidence = sitk_from_volume_node(result.volumes["confidence"], world=True)
    pm, _ = values_on_grid(
        pm_values(tmp_path / "out" / "pm_fcf_adc_confidence.dcm"), confidence, fill=np.nan
    )
    assert np.array_equal(pm, sitk.GetArrayFromImage(confidence).astype(np.float32))
    read, _ = seg_labels(tmp_path / "out" / "seg_tumour.dcm")
    assert np.array_equal(values_on_grid(read, tumour)[0], sitk.GetArrayFromImage(tumour))
    assert "Wrote 2 SEG, 1 Parametric Map, 1 SR" in describe_export(exported, skipped)
    assert leaks(list((tmp_path / "out").iterdir())) == []
    with pytest.raises(PrimageInputError, match="pseudonym"):
        export_kinetics_result(result, "fcf_adc", dwi, lambda asked: [], tmp_path, pseudonym="")


def test_pipeline_module_result_exported_against_the_reference(mrml_scene, tmp_path):
    """The Pipeline module's path: "process this case" on a T2w and a DWI loaded from DICOM,
    then its result nodes (tumour, ADC map, ADC habitats) exported against the T2w series."""
    from primage.mrml.dicom_export import export_pipeline_result
    from primage.mrml.pipeline import process_case_nodes
    from primage.mrml.selftest import dicom_export_inputs
    from primage.mrml.volumes import sitk_from_volume_node

    inputs = dicom_export_inputs(mrml_scene, tmp_path)
    (tmp_path / "inventory.csv").write_text("series_id,series_uid\n")
    config = {
        "steps": ["segment", "kinetics"],
        "kinetics": {"dce": {"enabled": False}},
        # Scene nodes have no DICOM source in case.json: the pipeline's step is left out.
        "export": {
            "dicom": True,
            "dicom_source": str(tmp_path),
            "inventory": str(tmp_path / "inventory.csv"),
        },
    }
    nodes = process_case_nodes(
        {"t2w": inputs["t2w"], "dwi": inputs["dwi"]}, inputs["tumour"], config=config,
        case_name="P1",
    )  # fmt: skip
    assert nodes.summary["status"] != "failed", nodes.summary["message"]
    assert "dicom" not in {row["step"] for row in nodes.summary["steps"]}
    exported, skipped = export_pipeline_result(
        nodes, inputs["t2w"], inputs["files_for_series"], tmp_path / "out", pseudonym=PSEUDONYM
    )
    assert skipped == []
    assert {o.path.name for o in exported.objects} == {
        "seg_tumour.dcm", "seg_fcf_adc_habitats.dcm", "pm_adc.dcm", "sr_measurements.dcm"
    }  # fmt: skip
    adc = sitk_from_volume_node(nodes.maps["adc"], world=True)
    pm, _ = values_on_grid(pm_values(tmp_path / "out" / "pm_adc.dcm"), adc, fill=np.nan)
    assert np.array_equal(pm, sitk.GetArrayFromImage(adc).astype(np.float32))
    from primage.mrml.dicom import series_uid_of_node

    t2w_uid = series_uid_of_node(inputs["t2w"])
    seg = pydicom.dcmread(tmp_path / "out" / "seg_tumour.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t2w_uid
    assert leaks(list((tmp_path / "out").iterdir())) == []
