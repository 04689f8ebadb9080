"""Segmentation nodes <-> label images, and masks from nodes."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from primage.errors import PrimageInputError
from primage.mrml.segmentations import (
    label_images_from_segmentation,
    mask_from_node,
    oriented_image_from_sitk,
    segmentation_from_label_image,
)
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk

NAMES = {1: "tumour", 3: "necrosis", 9: "oedema"}
COLORS = {1: (1.0, 0.0, 0.0), 3: (0.25, 0.5, 0.75)}


def _label_image(make) -> sitk.Image:
    geometry = make(size=(10, 9, 8))
    labels = np.zeros((8, 9, 10), np.uint8)  # (k, j, i)
    labels[1:4, 2:6, 3:8] = 1
    labels[5:7, 1:3, 1:4] = 3
    labels[0, 0, 0] = 7  # a label nobody named
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(geometry)
    return image


def _slicer_export(scene, segmentation_node, segment_id, reference_node) -> np.ndarray:
    """Slicer's own export of one segment onto a reference volume (independent path)."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation_node,
        ids,
        labelmap,
        reference_node,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
    )
    return slicer.util.arrayFromVolume(labelmap) != 0


def test_label_image_round_trip_keeps_names_colours_and_voxels(mrml_scene, mrml_oblique_image):
    labels = _label_image(mrml_oblique_image)
    node = segmentation_from_label_image(labels, mrml_scene, NAMES, COLORS, name="lesions")
    segmentation = node.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    assert names == ["tumour", "necrosis", "Label 7", "oedema"]  # ordered by label value
    assert segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("tumour")).GetColor() == (
        pytest.approx(COLORS[1])
    )

    masks = label_images_from_segmentation(node)
    assert list(masks) == names
    array = sitk.GetArrayFromImage(labels)
    for label, name in [(1, "tumour"), (3, "necrosis"), (7, "Label 7"), (9, "oedema")]:
        mask, color = masks[name]
        assert mask.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(mask.GetOrigin(), labels.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(mask.GetDirection(), labels.GetDirection(), atol=1e-9)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), array == label)
        if label in COLORS:
            assert color == pytest.approx(COLORS[label])
    assert not np.any(sitk.GetArrayFromImage(masks["oedema"][0]))  # named, no voxels


def test_reading_agrees_with_slicers_own_export(mrml_scene, mrml_oblique_image):
    labels = _label_image(mrml_oblique_image)
    node = segmentation_from_label_image(labels, mrml_scene, NAMES)
    # A finer reference grid, offset by a quarter voxel so no voxel centre is a tie.
    reference = sitk.Image([20, 18, 16], sitk.sitkInt16)
    reference.SetSpacing([s / 2 for s in labels.GetSpacing()])
    reference.SetDirection(labels.GetDirection())
    reference.SetOrigin(labels.TransformContinuousIndexToPhysicalPoint((-0.25, -0.25, -0.25)))
    reference_node = volume_node_from_sitk(reference, mrml_scene, name="fine")

    masks = label_images_from_segmentation(node, reference_node)
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segment_id).GetName()
        if name == "oedema":
            continue  # Slicer cannot export an empty segment
        expected = _slicer_export(mrml_scene, node, segment_id, reference_node)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(masks[name][0]), expected)
        # ... and agrees with SimpleITK's nearest-neighbour resampling of the label image.
        label = {v: k for k, v in {**NAMES, 7: "Label 7"}.items()}[name]
        resampled = sitk.Resample(
            labels == label, reference, sitk.Transform(), sitk.sitkNearestNeighbor
        )
        np.testing.assert_array_equal(expected, sitk.GetArrayFromImage(resampled))

    same_from_image = label_images_from_segmentation(node, reference)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(same_from_image["tumour"][0]),
        sitk.GetArrayFromImage(masks["tumour"][0]),
    )


def test_overlapping_segments_are_each_read_completely(mrml_scene, mrml_oblique_image):
    geometry = mrml_oblique_image(size=(7, 6, 5))
    first = np.zeros((5, 6, 7), np.uint8)
    first[1:4, 1:4, 1:4] = 1
    second = np.zeros((5, 6, 7), np.uint8)
    second[2:5, 2:5, 2:5] = 1
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    for array, name in [(first, "A"), (second, "B")]:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(geometry)
        segment_id = node.GetSegmentation().AddEmptySegment("", name)
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            oriented_image_from_sitk(image), node, segment_id
        )
    assert node.GetSegmentation().GetNumberOfLayers() == 2  # they overlap
    reference = volume_node_from_sitk(geometry, mrml_scene)
    masks = label_images_from_segmentation(node, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(masks["A"][0]), first)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(masks["B"][0]), second)
    union = mask_from_node(node, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(union), first | second)


def test_duplicate_segment_names_get_the_segment_id(mrml_scene, mrml_oblique_image):
    labels = _label_image(mrml_oblique_image)
    node = segmentation_from_label_image(labels, mrml_scene, {1: "lesion", 3: "lesion"})
    keys = list(label_images_from_segmentation(node))
    assert len(keys) == 3 and all(k.startswith("lesion [") for k in keys[:2])


def test_mask_from_segmentation_by_name_id_or_all(mrml_scene, mrml_oblique_image):
    labels = _label_image(mrml_oblique_image)
    node = segmentation_from_label_image(labels, mrml_scene, NAMES)
    reference = volume_node_from_sitk(mrml_oblique_image(size=(10, 9, 8)), mrml_scene)
    array = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(mask_from_node(node, reference)), array > 0
    )
    by_name = mask_from_node(node, reference, "necrosis")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_name), array == 3)
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    by_id = mask_from_node(node, reference, segment_id)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(by_id), array == 1)
    with pytest.raises(PrimageInputError, match="no segment 'liver'.*tumour, necrosis"):
        mask_from_node(node, reference, "liver")
    with pytest.raises(PrimageInputError, match="empty"):
        mask_from_node(node, reference, "oedema")


def test_mask_from_labelmap_on_another_grid_and_under_a_transform(mrml_scene, mrml_oblique_image):
    reference_image = mrml_oblique_image(size=(10, 9, 8), left_handed=False)
    reference = volume_node_from_sitk(reference_image, mrml_scene, name="reference")
    mask_array = np.zeros((8, 9, 10), np.uint8)
    mask_array[2:5, 3:6, 4:8] = 2
    mask_image = sitk.GetImageFromArray(mask_array)
    mask_image.CopyInformation(reference_image)
    labelmap = volume_node_from_sitk(mask_image, mrml_scene, labelmap=True)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(mask_from_node(labelmap, reference)), mask_array > 0
    )

    # Move the labelmap by exactly one voxel along i with a parent transform: the mask on
    # the reference grid must move by one voxel along i.
    step_ras = np.array(reference_image.GetDirection()).reshape(3, 3)[:, 0] * 0.7
    step_ras = step_ras * np.array([-1.0, -1.0, 1.0])
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = step_ras
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    labelmap.SetAndObserveTransformNodeID(transform.GetID())
    moved = sitk.GetArrayFromImage(mask_from_node(labelmap, reference))
    np.testing.assert_array_equal(moved, np.roll(mask_array > 0, 1, axis=2))

    # A float scalar volume works as a mask too (non-zero is inside).
    scalar = volume_node_from_sitk(sitk.Cast(mask_image, sitk.sitkFloat32) * 0.5, mrml_scene)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(mask_from_node(scalar, reference)), mask_array > 0
    )


def test_clear_errors(mrml_scene, mrml_oblique_image):
    reference = volume_node_from_sitk(mrml_oblique_image(), mrml_scene)
    with pytest.raises(PrimageInputError, match="no mask node"):
        mask_from_node(None, reference)
    with pytest.raises(PrimageInputError, match="labelmap volume or a segmentation"):
        mask_from_node(mrml_scene.AddNewNodeByClass("vtkMRMLTableNode"), reference)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing")
    with pytest.raises(PrimageInputError, match="no segments"):
        mask_from_node(empty, reference)
    zeros = sitk.Image(3, 3, 3, sitk.sitkUInt8)
    zero_node = volume_node_from_sitk(zeros, mrml_scene, labelmap=True)
    with pytest.raises(PrimageInputError, match="empty"):
        mask_from_node(zero_node, reference)
    with pytest.raises(PrimageInputError, match="a segment was chosen"):
        mask_from_node(zero_node, reference, "tumour")
    with pytest.raises(PrimageInputError, match="fractional"):
        segmentation_from_label_image(sitk.Cast(zeros, sitk.sitkFloat32) + 0.5, mrml_scene, {})
    with pytest.raises(PrimageInputError, match="0..1"):
        segmentation_from_label_image(zeros, mrml_scene, {1: "a"}, {1: (255, 0, 0)})
    assert sitk_from_volume_node(reference).GetSize() == (7, 6, 5)
