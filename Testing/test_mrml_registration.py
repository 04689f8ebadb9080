"""Registration and motion correction on real MRML nodes (slicer-core).

The transform-node direction is proven three ways: the shared scenario maps known points
with the node's "to parent"; a transform file written by the engine and read by Slicer's
own storage node, hardened on the moving volume, puts the moving tumour on the fixed one;
and a B-spline result node moves points exactly like the SimpleITK transform.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from primage.errors import PrimageInputError
from primage.mrml.geometry import lps_to_ras_points, ras_to_lps_points
from primage.mrml.registration import (
    SETTINGS_ATTRIBUTE,
    qc_from_node,
    qc_text,
    register_volume_nodes,
)
from primage.mrml.selftest import motion_scenario, registration_pair_nodes, registration_scenario
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk
from primage.registration import register_images, stages_from_names
from primage.registration.core import write_transform
from primage.registration.truth import synthetic_registration_pair


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayFromImage(a) > 0, sitk.GetArrayFromImage(b) > 0
    return float(2 * (x & y).sum() / (x.sum() + y.sum()))


def test_shared_registration_scenario(mrml_scene):
    node = registration_scenario(mrml_scene)
    assert qc_from_node(node)["verdict"] in ("ok", "review")
    assert node.GetAttribute(SETTINGS_ATTRIBUTE)
    assert qc_text(qc_from_node(node)).startswith("Verdict:")
    assert qc_text(None) == "No registration result yet."


def test_shared_motion_scenario(mrml_scene):
    sequence = motion_scenario(mrml_scene)
    assert sequence.GetNumberOfDataNodes() == 5 and sequence.GetIndexUnit() == "s"


def test_engine_transform_file_read_by_slicer_aligns_the_moving_volume(mrml_scene, tmp_path):
    fixed, moving, fixed_mask, moving_mask, _truth = synthetic_registration_pair()
    result = register_images(fixed, moving, {"stages": stages_from_names("rigid")})
    path = tmp_path / "moving_to_fixed.h5"
    write_transform(result.transform, path)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "from file")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    mask_node = volume_node_from_sitk(moving_mask, mrml_scene, name="moving tumour", labelmap=True)
    before = sitk.Resample(
        sitk_from_volume_node(mask_node), fixed, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    mask_node.SetAndObserveTransformNodeID(node.GetID())
    assert mask_node.HardenTransform()
    after = sitk.Resample(
        sitk_from_volume_node(mask_node), fixed, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    assert _dice(before, fixed_mask) < 0.7 < 0.85 < _dice(after, fixed_mask)
    # The opposite convention (the node inverted) moves the tumour further away.
    wrong_node = volume_node_from_sitk(moving_mask, mrml_scene, name="wrong", labelmap=True)
    node.Inverse()
    wrong_node.SetAndObserveTransformNodeID(node.GetID())
    assert wrong_node.HardenTransform()
    wrong = sitk.Resample(
        sitk_from_volume_node(wrong_node), fixed, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    assert _dice(wrong, fixed_mask) < _dice(before, fixed_mask)


def test_bspline_result_node_moves_points_like_simpleitk(mrml_scene):
    fixed_node, moving_node, _fm, _mm = registration_pair_nodes(mrml_scene)
    result = register_volume_nodes(
        fixed_node, moving_node, stages="rigid,bspline", bspline_spacing_mm=40.0
    )
    node = result.transform_node
    assert not node.IsLinear() and "jacobian_determinant" in result.qc
    fixed = sitk_from_volume_node(fixed_node)
    points = np.array(
        [fixed.TransformIndexToPhysicalPoint((i, j, 10)) for i in (10, 20, 30) for j in (12, 25)]
    )
    expected = np.array([result.result.transform.TransformPoint(p.tolist()) for p in points])
    from_parent = node.GetTransformFromParent()
    moved = ras_to_lps_points(
        np.array([from_parent.TransformPoint(*p) for p in lps_to_ras_points(points)])
    )
    np.testing.assert_allclose(moved, expected, atol=1e-3)
    assert moving_node.GetTransformNodeID() == node.GetID()


def test_fixed_parent_transform_and_rerun_ignore_the_previous_result(mrml_scene):
    fixed_node, moving_node, fixed_mask_node, moving_mask_node = registration_pair_nodes(mrml_scene)
    parent = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "patient position")
    fixed_node.SetAndObserveTransformNodeID(parent.GetID())
    first = register_volume_nodes(fixed_node, moving_node, stages="rigid", apply=True)
    assert first.transform_node.GetTransformNodeID() == parent.GetID()
    # The moving mask sits under the previous result too: both are read as before it.
    moving_mask_node.SetAndObserveTransformNodeID(first.transform_node.GetID())
    again = register_volume_nodes(
        fixed_node,
        moving_node,
        stages="rigid",
        fixed_mask_node=fixed_mask_node,
        moving_mask_node=moving_mask_node,
        output_transform_node=first.transform_node,
    )
    assert again.transform_node is first.transform_node
    assert again.qc["dice_after"] > 0.85
    assert moving_mask_node.GetTransformNodeID() == first.transform_node.GetID()  # restored


def test_bad_nodes_are_refused(mrml_scene):
    fixed_node, moving_node, _fm, _mm = registration_pair_nodes(mrml_scene)
    with pytest.raises(PrimageInputError, match="same node"):
        register_volume_nodes(fixed_node, fixed_node)
    outside = slicer.vtkMRMLScalarVolumeNode()
    volume_node_from_sitk(sitk_from_volume_node(moving_node), None, node=outside)
    with pytest.raises(PrimageInputError, match="same scene"):
        register_volume_nodes(fixed_node, outside)
    with pytest.raises(PrimageInputError, match="fixed volume"):
        register_volume_nodes(None, moving_node)
    linear = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "linear")
    with pytest.raises(PrimageInputError, match="cannot hold"):
        register_volume_nodes(
            fixed_node, moving_node, stages="bspline", output_transform_node=linear
        )
