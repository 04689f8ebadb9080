"""Sequence nodes <-> series of SimpleITK volumes (b-values, time points)."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from primage.errors import PrimageInputError
from primage.mrml.sequences import (
    VolumeSeries,
    add_sequence_browser,
    format_index_value,
    sequence_node_from_series,
    series_from_sequence_node,
)


def _series(make, values, name="b", unit="s/mm2"):
    base = make(seed=0)
    volumes = []
    for index in range(len(values)):
        volume = sitk.Cast(base * float(index + 1) + float(index), sitk.sitkFloat32)
        volume.CopyInformation(base)
        volumes.append(volume)
    return VolumeSeries(volumes, np.asarray(values, dtype=float), name, unit)


def test_diffusion_series_round_trip(mrml_scene, mrml_oblique_image):
    # Unsorted on purpose, and two values closer than Slicer's default tolerance (0.001).
    series = _series(mrml_oblique_image, [0.0, 800.5, 50.0, 400.0, 1e-7])
    node = sequence_node_from_series(series, mrml_scene, name="DWI")
    assert node.GetIndexName() == "b" and node.GetIndexUnit() == "s/mm2"
    assert node.GetIndexType() == slicer.vtkMRMLSequenceNode.NumericIndex
    # Slicer keeps the items sorted by index value.
    assert [node.GetNthIndexValue(i) for i in range(node.GetNumberOfDataNodes())] == [
        "0",
        "0.0000001",
        "50",
        "400",
        "800.5",
    ]
    back = series_from_sequence_node(node)
    assert (back.name, back.unit) == ("b", "s/mm2")
    order = np.argsort(series.values)
    np.testing.assert_array_equal(back.values, series.values[order])
    for position, read in zip(order, back.volumes, strict=True):
        original = series.volumes[position]
        assert read.GetPixelID() == original.GetPixelID()
        np.testing.assert_allclose(read.GetOrigin(), original.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(read.GetDirection(), original.GetDirection(), atol=1e-9)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(original)
        )


def test_index_values_read_back_as_the_same_float():
    for value in [0.0, 1.0 / 3.0, 2.5e-9, 123456789.125, -4.0]:
        assert float(format_index_value(value)) == value


def test_4d_image_helpers_round_trip(mrml_oblique_image):
    series = _series(mrml_oblique_image, [0.0, 1.5, 3.0], name="time", unit="s")
    image4d = series.to_image4d()
    assert image4d.GetDimension() == 4 and image4d.GetSize()[3] == 3
    again = VolumeSeries.from_image4d(image4d, series.values, "time", "s")
    for original, read in zip(series.volumes, again.volumes, strict=True):
        np.testing.assert_allclose(read.GetDirection(), original.GetDirection(), atol=1e-12)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(original)
        )


def test_series_read_from_4d_nrrd_by_slicer_matches_simpleitk(
    tmp_path, mrml_scene, mrml_oblique_image
):
    """Slicer's 4D reader and SimpleITK put each volume's voxels at the same points."""
    series = _series(mrml_oblique_image, [0.0, 1.0, 2.0])
    path = tmp_path / "series.nrrd"
    sitk.WriteImage(series.to_image4d(), str(path))
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1

    read = series_from_sequence_node(node)
    np.testing.assert_array_equal(read.values, [0.0, 1.0, 2.0])
    for original, volume in zip(series.volumes, read.volumes, strict=True):
        # Same voxels at the same points (Slicer may index a left-handed grid from the
        # other end), so nearest-neighbour resampling onto the original grid is exact.
        on_grid = sitk.Resample(volume, original, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(on_grid), sitk.GetArrayFromImage(original)
        )


def test_sequence_written_by_slicer_keeps_index_values(tmp_path, mrml_scene, mrml_oblique_image):
    series = _series(mrml_oblique_image, [0.0, 10.0, 20.0, 30.5], name="time", unit="s")
    node = sequence_node_from_series(series, mrml_scene)
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    storage.SetFileName(str(tmp_path / "series.seq.nrrd"))
    assert storage.WriteData(node) == 1
    again = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    reader = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    reader.SetFileName(str(tmp_path / "series.seq.nrrd"))
    assert reader.ReadData(again) == 1
    read = series_from_sequence_node(again)
    np.testing.assert_array_equal(read.values, series.values)
    assert read.name == "time"


def test_refilling_a_sequence_and_browsing_it(mrml_scene, mrml_oblique_image):
    node = sequence_node_from_series(_series(mrml_oblique_image, [0, 1, 2]), mrml_scene)
    series = _series(mrml_oblique_image, [5.0, 6.0])
    assert sequence_node_from_series(series, mrml_scene, name="again", node=node) is node
    assert node.GetNumberOfDataNodes() == 2

    browser = add_sequence_browser(node)
    proxy = browser.GetProxyNode(node)
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(proxy), sitk.GetArrayFromImage(series.volumes[0])
    )
    # With a long-lived logic (Slicer's own in the application) the proxy follows the
    # selected item.
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(mrml_scene)
    browser.SetSelectedItemNumber(1)
    logic.UpdateProxyNodesFromSequences(browser)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(proxy), sitk.GetArrayFromImage(series.volumes[1])
    )
    logic.SetMRMLScene(None)


def test_clear_errors(mrml_scene, mrml_oblique_image):
    with pytest.raises(PrimageInputError, match="2 volumes but 3"):
        VolumeSeries([mrml_oblique_image(), mrml_oblique_image()], [0, 1, 2])
    with pytest.raises(PrimageInputError, match="distinct"):
        sequence_node_from_series(_series(mrml_oblique_image, [1.0, 1.0]), mrml_scene)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "empty")
    with pytest.raises(PrimageInputError, match="empty"):
        series_from_sequence_node(empty)
    with pytest.raises(PrimageInputError, match="not a sequence"):
        series_from_sequence_node(mrml_scene.AddNewNodeByClass("vtkMRMLTableNode"))

    labelled = mrml_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "text index")
    labelled.SetIndexType(slicer.vtkMRMLSequenceNode.TextIndex)
    volume = slicer.vtkMRMLScalarVolumeNode()
    slicer.util.updateVolumeFromArray(volume, np.zeros((2, 2, 2), np.float32))
    labelled.SetDataNodeAtValue(volume, "baseline")
    with pytest.raises(PrimageInputError, match="non-numeric index value 'baseline'"):
        series_from_sequence_node(labelled)

    mixed = sequence_node_from_series(_series(mrml_oblique_image, [0.0]), mrml_scene)
    other = slicer.vtkMRMLScalarVolumeNode()
    slicer.util.updateVolumeFromArray(other, np.zeros((2, 2, 2), np.float32))
    mixed.SetDataNodeAtValue(other, "1")
    with pytest.raises(PrimageInputError, match="another voxel grid"):
        series_from_sequence_node(mixed)
