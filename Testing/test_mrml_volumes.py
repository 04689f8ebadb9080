"""Volume nodes <-> SimpleITK: geometry proved against Slicer's own file reader and writer."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from primage.errors import PrimageInputError
from primage.mrml.geometry import (
    ijk_to_ras_from_sitk,
    itk_matrix_from_slicer_to_parent,
    lps_to_ras_points,
    ras_to_lps_points,
    sitk_geometry_from_ijk_to_ras,
    slicer_to_parent_from_itk_matrix,
)
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk

FLIP = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS, written out independently of the code


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _load_with_storage_node(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def _voxel_centres_lps(image: sitk.Image) -> np.ndarray:
    """Physical point of every voxel (k, j, i order) from SimpleITK itself."""
    size = image.GetSize()
    return np.array(
        [
            image.TransformIndexToPhysicalPoint((i, j, k))
            for k in range(size[2])
            for j in range(size[1])
            for i in range(size[0])
        ]
    )


def _assert_same_voxels_in_space(node, image: sitk.Image) -> None:
    """Every voxel of ``image`` sits on a voxel centre of ``node`` with the same value."""
    centres_ras = _voxel_centres_lps(image) * FLIP
    homogeneous = np.c_[centres_ras, np.ones(len(centres_ras))]
    ijk = (np.linalg.inv(_ijk_to_ras(node)) @ homogeneous.T)[:3].T
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-4)
    ijk = np.round(ijk).astype(int)
    size = node.GetImageData().GetDimensions()
    assert np.all(ijk >= 0) and np.all(ijk < np.array(size))
    # One-to-one: no two sitk voxels land on the same node voxel.
    assert len({tuple(v) for v in ijk}) == len(ijk) == np.prod(size)
    node_values = slicer.util.arrayFromVolume(node)[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    np.testing.assert_array_equal(node_values, sitk.GetArrayFromImage(image).ravel())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("left_handed", [True, False], ids=["flipped-axis", "rotation-only"])
def test_storage_node_and_simpleitk_read_the_same_voxels_at_the_same_points(
    tmp_path, mrml_scene, mrml_oblique_image, suffix, left_handed
):
    image = mrml_oblique_image(left_handed=left_handed, dtype=np.int16)
    path = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(image, str(path))
    file_image = sitk.ReadImage(str(path))
    node = _load_with_storage_node(mrml_scene, path)

    _assert_same_voxels_in_space(node, file_image)

    converted = sitk_from_volume_node(node)
    assert converted.GetPixelID() == file_image.GetPixelID()
    assert converted.GetSize() == file_image.GetSize()
    np.testing.assert_allclose(converted.GetSpacing(), file_image.GetSpacing(), atol=1e-5)
    if left_handed:
        # Slicer's reader reverses the slice order of a left-handed grid: the same voxels at
        # the same points, indexed from the other end. Resampling onto the file grid with
        # nearest neighbour must then reproduce the file exactly.
        assert np.linalg.det(np.reshape(converted.GetDirection(), (3, 3))) > 0
        on_file_grid = sitk.Resample(
            converted, file_image, sitk.Transform(), sitk.sitkNearestNeighbor, -9999
        )
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(on_file_grid), sitk.GetArrayFromImage(file_image)
        )
        np.testing.assert_allclose(
            np.sort(_voxel_centres_lps(converted), axis=0),
            np.sort(_voxel_centres_lps(file_image), axis=0),
            atol=1e-4,
        )
    else:
        np.testing.assert_allclose(converted.GetOrigin(), file_image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(converted.GetDirection(), file_image.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(file_image)
        )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_node_written_by_storage_node_reads_back_identically_in_simpleitk(
    tmp_path, mrml_scene, mrml_oblique_image, suffix
):
    image = mrml_oblique_image(left_handed=True, dtype=np.float32)
    node = volume_node_from_sitk(image, mrml_scene, name="to write")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / f"written{suffix}"))
    assert storage.WriteData(node) == 1

    written = sitk.ReadImage(str(tmp_path / f"written{suffix}"))
    assert written.GetSize() == image.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]
)
def test_volume_round_trip_keeps_values_geometry_and_pixel_type(
    mrml_scene, mrml_oblique_image, dtype
):
    image = mrml_oblique_image(dtype=dtype, seed=3)
    node = volume_node_from_sitk(image, mrml_scene, name="round trip")
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert node.GetName() == "round trip"
    back = sitk_from_volume_node(node)
    assert back.GetPixelID() == image.GetPixelID()
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_ijk_to_ras_matches_hand_computed_matrix(mrml_scene):
    image = sitk.Image(4, 3, 2, sitk.sitkUInt8)
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetSpacing((0.5, 2.0, 4.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))  # swapped i/j, inverted k
    expected = np.array(
        [
            [0.0, -2.0, 0.0, -1.0],  # RAS x = -(LPS x) = -(j * 2.0 + 1)
            [-0.5, 0.0, 0.0, -2.0],  # RAS y = -(LPS y) = -(i * 0.5 + 2)
            [0.0, 0.0, -4.0, 3.0],  # RAS z = LPS z = -k * 4 + 3
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(ijk_to_ras_from_sitk(image), expected)
    node = volume_node_from_sitk(image, mrml_scene)
    np.testing.assert_allclose(_ijk_to_ras(node), expected)
    origin, spacing, direction = sitk_geometry_from_ijk_to_ras(expected)
    assert origin == pytest.approx(image.GetOrigin())
    assert spacing == pytest.approx(image.GetSpacing())
    assert direction == pytest.approx(image.GetDirection())


def test_point_and_matrix_conversions_are_consistent():
    points = np.array([[1.0, -2.0, 3.0], [0.0, 5.0, -7.5]])
    np.testing.assert_array_equal(lps_to_ras_points(points), points * FLIP)
    np.testing.assert_array_equal(ras_to_lps_points(lps_to_ras_points(points)), points)
    # ITK translation by t (fixed -> moving, LPS) is a Slicer "to parent" translation by
    # -t expressed in RAS.
    itk = np.eye(4)
    itk[:3, 3] = [1.0, 2.0, 3.0]
    to_parent = slicer_to_parent_from_itk_matrix(itk)
    np.testing.assert_allclose(to_parent[:3, 3], [1.0, 2.0, -3.0])
    np.testing.assert_allclose(itk_matrix_from_slicer_to_parent(to_parent), itk)


def test_labelmap_nodes_and_label_types(mrml_scene, mrml_oblique_image):
    labels = sitk.Cast(sitk.Round(mrml_oblique_image(seed=1) / 40.0), sitk.sitkFloat32)
    node = volume_node_from_sitk(labels, mrml_scene, labelmap=True)
    assert node.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    back = sitk_from_volume_node(node)
    assert back.GetPixelID() == sitk.sitkInt32  # whole-number float labels become integers
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    with pytest.raises(PrimageInputError, match="whole-number"):
        volume_node_from_sitk(labels + 0.5, mrml_scene, labelmap=True)


def test_int64_images_are_stored_as_int32_when_the_values_fit(mrml_scene, mrml_oblique_image):
    image = mrml_oblique_image(dtype=np.int64)
    back = sitk_from_volume_node(volume_node_from_sitk(image, mrml_scene))
    assert back.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_updating_a_given_node_keeps_its_identity_and_data_is_copied(
    mrml_scene, mrml_oblique_image
):
    first = volume_node_from_sitk(mrml_oblique_image(seed=1), mrml_scene, name="target")
    node_id = first.GetID()
    replacement = mrml_oblique_image(size=(4, 5, 6), left_handed=False, seed=2)
    again = volume_node_from_sitk(replacement, mrml_scene, node=first)
    assert again is first and again.GetID() == node_id and again.GetName() == "target"
    assert again.GetImageData().GetDimensions() == (4, 5, 6)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1

    extracted = sitk_from_volume_node(again)
    extracted[0, 0, 0] = -12345.0  # the image owns its voxels
    assert slicer.util.arrayFromVolume(again)[0, 0, 0] != -12345.0
    assert again.GetDisplayNode() is not None


def test_world_geometry_includes_a_linear_parent_transform(mrml_scene, mrml_oblique_image):
    image = mrml_oblique_image()
    node = volume_node_from_sitk(image, mrml_scene)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    to_parent = np.eye(4)
    to_parent[:3, 3] = [5.0, -3.0, 2.0]  # RAS translation
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    node.SetAndObserveTransformNodeID(transform.GetID())

    local = sitk_from_volume_node(node)
    world = sitk_from_volume_node(node, world=True)
    np.testing.assert_allclose(local.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(
        np.array(world.GetOrigin()), np.array(image.GetOrigin()) + [-5.0, 3.0, 2.0], atol=1e-9
    )
    # Slicer's own hardening gives the same grid.
    node.HardenTransform()
    np.testing.assert_allclose(
        sitk_from_volume_node(node).GetOrigin(), world.GetOrigin(), atol=1e-9
    )


def test_clear_errors_for_unusable_nodes(mrml_scene, mrml_oblique_image):
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(PrimageInputError, match="no image data"):
        sitk_from_volume_node(empty)
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "a table")
    with pytest.raises(PrimageInputError, match="not a scalar volume"):
        sitk_from_volume_node(table)
    with pytest.raises(PrimageInputError, match="no volume node"):
        sitk_from_volume_node(None)
    vector = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    vector.SetAndObserveImageData(vtk.vtkImageData())
    vector.GetImageData().SetDimensions(2, 2, 2)
    vector.GetImageData().AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    with pytest.raises(PrimageInputError, match="not a scalar volume|components"):
        sitk_from_volume_node(vector)
    with pytest.raises(PrimageInputError, match="3D"):
        volume_node_from_sitk(sitk.Image(3, 3, sitk.sitkUInt8), mrml_scene)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(PrimageInputError, match="not a scalar volume"):
        volume_node_from_sitk(mrml_oblique_image(), mrml_scene, node=transform)
