"""Surface-distance colour map (real slicer-core): signed distances on the test surface."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.segmentation.metrics import signed_surface_distances
from primage.synthetic import make_grid

FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS, written out independently of the code
SPACING = (0.8, 0.8, 3.0)
#: Half the voxel diagonal (mm): the accuracy expected of a voxelised surface.
TOLERANCE = 0.5 * float(np.linalg.norm(SPACING))
GRID_CENTRE = np.array([4.0, -6.0, 12.0])  # LPS mm
REF_CENTRE, REF_RADIUS = GRID_CENTRE + [-1.0, 0.5, -2.0], 11.0
TEST_CENTRE, TEST_RADIUS = GRID_CENTRE + [3.0, -2.5, 4.0], 9.0


def _sphere(centre, radius, angles_deg=(10.0, 20.0, 30.0), *, mirror=False) -> sitk.Image:
    """Binary UInt8 ball (LPS centre, radius in mm) on an anisotropic, oblique grid."""
    grid = make_grid(size=(46, 46, 16), spacing=SPACING, centre=GRID_CENTRE, angles_deg=angles_deg)
    if mirror:  # a left-handed grid: flip the second axis about the grid centre
        direction = np.reshape(grid.GetDirection(), (3, 3)) @ np.diag([1.0, -1.0, 1.0])
        half = direction @ ((np.asarray(grid.GetSize()) - 1) * np.asarray(SPACING) / 2)
        grid.SetDirection(direction.ravel().tolist())
        grid.SetOrigin((GRID_CENTRE - half).tolist())
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    direction = np.reshape(grid.GetDirection(), (3, 3))
    points = np.asarray(grid.GetOrigin()) + (index * SPACING) @ direction.T
    inside = np.linalg.norm(points - centre, axis=1) <= radius
    image = sitk.GetImageFromArray(inside.reshape(k.shape).astype(np.uint8))
    image.CopyInformation(grid)
    return image


# --- engine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("angles", "mirror"),
    [((0.0, 0.0, 0.0), False), ((10.0, 20.0, 30.0), False), ((10.0, 20.0, 30.0), True)],
)
def test_engine_signed_distance_equals_the_analytic_value(angles, mirror):
    reference = _sphere(REF_CENTRE, REF_RADIUS, angles, mirror=mirror)
    rng = np.random.default_rng(1)
    points = REF_CENTRE + rng.uniform(-17.0, 17.0, size=(4000, 3))
    truth = np.linalg.norm(points - REF_CENTRE, axis=1) - REF_RADIUS
    distances = signed_surface_distances(reference, points)
    error = distances - truth
    assert np.abs(error).max() < TOLERANCE
    assert np.abs(error).mean() < 0.5
    clear = np.abs(truth) > TOLERANCE
    assert np.array_equal(np.sign(distances[clear]), np.sign(truth[clear]))
    assert (truth[clear] < 0).any() and (truth[clear] > 0).any()


def test_engine_bad_input():
    reference = _sphere(REF_CENTRE, REF_RADIUS)
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    with pytest.raises(PrimageInputError, match="reference mask is empty"):
        signed_surface_distances(empty, np.zeros((3, 3)))
    with pytest.raises(PrimageInputError, match=r"shape \(N, 3\)"):
        signed_surface_distances(reference, np.zeros((3, 2)))
    with pytest.raises(PrimageInputError, match="NaN"):
        signed_surface_distances(reference, np.full((1, 3), np.nan))
    assert signed_surface_distances(reference, np.zeros((0, 3))).shape == (0,)


# --- MRML ------------------------------------------------------------------------------


@pytest.fixture
def sphere_nodes(mrml_scene):
    pytest.importorskip("slicer")
    from primage.mrml.segmentations import segmentation_from_label_image

    reference = _sphere(REF_CENTRE, REF_RADIUS)
    test = _sphere(TEST_CENTRE, TEST_RADIUS)
    ref_node = segmentation_from_label_image(reference, mrml_scene, {1: "tumour"}, name="ref")
    # Label 2 has no voxel: "gone" is an empty segment.
    test_node = segmentation_from_label_image(
        test, mrml_scene, {1: "tumour", 2: "gone"}, name="test"
    )
    return ref_node, test_node


def _points_and_distances(model):
    from vtk.util import numpy_support

    polydata = model.GetPolyData()
    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float)
    scalars = polydata.GetPointData().GetScalars()
    return points, scalars, numpy_support.vtk_to_numpy(scalars).astype(float)


def test_model_holds_signed_distances_in_ras(mrml_scene, sphere_nodes):
    from primage.mrml.segmentation_metrics import DISTANCE_ARRAY, surface_distance_model

    ref_node, test_node = sphere_nodes
    model = surface_distance_model(ref_node, test_node, "tumour", "tumour")
    assert model.GetScene() is mrml_scene and model.IsA("vtkMRMLModelNode")
    assert model.GetName() == "tumour to tumour surface distance"
    points_ras, scalars, distances = _points_and_distances(model)
    assert scalars.GetName() == DISTANCE_ARRAY and len(distances) == len(points_ras) > 500
    # RAS, not LPS: the vertices surround the test sphere's centre with its radius.
    centre_ras = TEST_CENTRE * FLIP
    assert np.linalg.norm(points_ras.mean(axis=0) - centre_ras) < min(SPACING)
    radii = np.linalg.norm(points_ras - centre_ras, axis=1)
    assert abs(radii.mean() - TEST_RADIUS) < min(SPACING)
    # Signed distance to the reference sphere, evaluated at each vertex (LPS).
    points_lps = points_ras * FLIP
    truth = np.linalg.norm(points_lps - REF_CENTRE, axis=1) - REF_RADIUS
    error = distances - truth
    assert np.abs(error).max() < TOLERANCE
    assert np.abs(error).mean() < 0.5
    outside, inside = truth > TOLERANCE, truth < -TOLERANCE
    assert outside.any() and inside.any()
    assert np.all(distances[outside] > 0) and np.all(distances[inside] < 0)
    # Shown as a diverging map, symmetric about 0.
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == DISTANCE_ARRAY
    assert display.GetScalarVisibility()
    limit = np.abs(distances).max()
    assert display.GetScalarRange() == pytest.approx((-limit, limit), rel=1e-5)
    color = display.GetColorNode()
    assert color is not None and color.GetNumberOfColors() == 256
    low, middle, high = [0.0] * 4, [0.0] * 4, [0.0] * 4
    assert color.GetColor(0, low) and color.GetColor(128, middle) and color.GetColor(255, high)
    assert low[2] > low[0] and high[0] > high[2] and min(middle[:3]) > 0.95  # blue-white-red


def test_existing_model_volume_grid_ids_and_parent_transform(mrml_scene, sphere_nodes):
    from primage.mrml.segmentation_metrics import surface_distance_model
    from primage.mrml.volumes import volume_node_from_sitk

    ref_node, test_node = sphere_nodes
    first = surface_distance_model(ref_node, test_node, None, "tumour")
    _, _, expected = _points_and_distances(first)
    volume = volume_node_from_sitk(
        sitk.Cast(_sphere(REF_CENTRE, REF_RADIUS), sitk.sitkFloat32), mrml_scene, name="grid"
    )
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    ref_node.SetAndObserveTransformNodeID(transform.GetID())
    test_node.SetAndObserveTransformNodeID(transform.GetID())
    colours = mrml_scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")
    test_id = test_node.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    again = surface_distance_model(
        ref_node, test_node, "tumour", test_id, reference_volume=volume, model_node=first, name="m"
    )
    assert again is first and again.GetName() == "m"
    assert again.GetTransformNodeID() == transform.GetID()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == colours
    _, _, distances = _points_and_distances(again)
    np.testing.assert_allclose(distances, expected, atol=1e-4)


def test_bad_input_creates_no_node(mrml_scene, sphere_nodes):
    import slicer

    from primage.mrml.segmentation_metrics import surface_distance_model
    from primage.mrml.segmentations import segmentation_from_label_image

    ref_node, test_node = sphere_nodes
    other_scene = slicer.vtkMRMLScene()
    elsewhere = segmentation_from_label_image(
        _sphere(TEST_CENTRE, TEST_RADIUS), other_scene, {1: "tumour"}
    )
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode")
    count = mrml_scene.GetNumberOfNodes()
    cases = [
        ((ref_node, test_node, "tumour", "missing"), {}, "no segment 'missing'"),
        ((ref_node, test_node, "tumour", "gone"), {}, "'gone' of .* is empty"),
        ((ref_node, test_node, "tumour", None), {}, "has 2 segments; choose one"),
        ((ref_node, elsewhere, "tumour", "tumour"), {}, "not in the scene"),
        ((ref_node, test_node, "tumour", "tumour"), {"model_node": table}, "not a model node"),
        ((None, test_node, "tumour", "tumour"), {}, "select a reference"),
    ]
    for args, options, message in cases:
        with pytest.raises(PrimageInputError, match=message):
            surface_distance_model(*args, **options)
    assert mrml_scene.GetNumberOfNodes() == count
