"""Segmentation and volume nodes (real MRML, slicer-core) to DICOM SEG and Parametric Maps,
read back with highdicom / pydicom and compared with the images the nodes were made from."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import MR_T2, leaks
from _dicom_readback import pm_values, values_on_grid

slicer = pytest.importorskip("slicer")

import highdicom as hd  # noqa: E402

from primage.dicom.synthetic import IDENTITIES, Study, flipped_slices, write_series  # noqa: E402
from primage.errors import PrimageInputError  # noqa: E402
from primage.mrml.dicom import load_dicom_files  # noqa: E402
from primage.mrml.dicom_export import (  # noqa: E402
    export_segmentation_node,
    export_volume_node,
)
from primage.mrml.segmentations import segmentation_from_label_image  # noqa: E402
from primage.mrml.volumes import volume_node_from_sitk  # noqa: E402
from primage.synthetic import make_digital_patient  # noqa: E402

PSEUDONYM = "PSN0002"
COLORS = {1: (0.9, 0.2, 0.1), 2: (0.1, 0.3, 0.8)}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A T2w series written from the last slice (Slicer reverses its index order)."""
    folder = tmp_path_factory.mktemp("mrml_export")
    patient = make_digital_patient(7, size=(20, 18, 7), spacing=(2.5, 2.5, 5.0))
    study = Study(IDENTITIES["philips"], "Philips")
    files = write_series(
        folder / "t2w", study, [flipped_slices(patient.t2w)], description="T2W_TSE",
        series_number=5, attributes=MR_T2,
    )  # fmt: skip
    tumour = sitk.GetArrayFromImage(patient.tumour) > 0
    labels = np.zeros(tumour.shape, np.uint8)
    labels[tumour] = 1
    core = np.zeros_like(tumour)
    core[:, : tumour.shape[1] // 2] = True
    labels[tumour & core] = 2  # a second segment: half of the tumour
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(patient.tumour)
    adc = sitk.Cast(patient.truth_images["adc"], sitk.sitkFloat32)
    return folder, files, label_image, adc


def test_segmentation_node_to_seg(mrml_scene, series, tmp_path):
    folder, files, labels, _ = series
    node = segmentation_from_label_image(
        labels, mrml_scene, {1: "tumour", 2: "enhancing core"}, COLORS, name="lesion"
    )
    path = export_segmentation_node(
        node, [str(f) for f in files], tmp_path / "seg.dcm", pseudonym=PSEUDONYM
    )
    seg = hd.seg.segread(path)
    expected = sitk.GetArrayFromImage(labels)
    names = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        names[description.segment_label] = number
        color = hd.color.CIELabColor.from_dicom_value(
            description.RecommendedDisplayCIELabValue
        ).to_rgb()
        label = {"tumour": 1, "enhancing core": 2}[description.segment_label]
        assert np.allclose(np.asarray(color) / 255.0, COLORS[label], atol=0.01)
        volume = seg.get_volume(segment_numbers=[number], combine_segments=True)
        values, distance = values_on_grid(volume.to_simpleitk(), labels)
        assert distance < 1e-3
        np.testing.assert_array_equal(values > 0, expected == label)
    assert set(names) == {"tumour", "enhancing core"}
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.PatientID == PSEUDONYM
    assert leaks([path]) == []


def test_volume_node_loaded_from_dicom_to_parametric_map(mrml_scene, series, tmp_path):
    folder, files, _, adc = series
    # The node is on the series' grid as Slicer loads it (reversed slice order).
    nodes, skipped = load_dicom_files(mrml_scene, [str(f) for f in files])
    assert nodes and not skipped
    values = sitk.GetArrayFromImage(adc)
    volume = volume_node_from_sitk(adc, mrml_scene, name="adc")
    path = export_volume_node(
        volume, "adc", folder / "t2w", tmp_path / "pm.dcm", pseudonym=PSEUDONYM
    )
    read, _ = values_on_grid(pm_values(path), adc, fill=np.nan)
    assert np.array_equal(read, values)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "mm2/s"
    assert leaks([path]) == []


def test_volume_node_off_the_grid_is_refused(mrml_scene, series, tmp_path):
    folder, _, _, adc = series
    shifted = sitk.Image(adc)
    shifted.SetOrigin([o + 1.0 for o in adc.GetOrigin()])
    volume = volume_node_from_sitk(shifted, mrml_scene, name="shifted")
    with pytest.raises(PrimageInputError, match="not on the source series' voxel grid"):
        export_volume_node(volume, "adc", folder / "t2w", tmp_path / "pm.dcm", pseudonym=PSEUDONYM)
    with pytest.raises(PrimageInputError, match="unknown map name"):
        export_volume_node(volume, "fa", folder / "t2w", tmp_path / "pm.dcm", pseudonym=PSEUDONYM)
    assert not (tmp_path / "pm.dcm").exists()
