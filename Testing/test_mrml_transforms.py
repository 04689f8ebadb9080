"""Transform nodes <-> SimpleITK transforms, proved against Slicer's transform file reader.

Convention under test: SimpleITK transforms map FIXED points to MOVING points (LPS), as
``sitk.Resample(moving, fixed, tx)`` uses them; the Slicer node's "to parent" maps moving
to fixed (RAS), so a moving volume placed under the node is aligned with the fixed one.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from primage.errors import PrimageInputError
from primage.mrml.transforms import sitk_from_transform_node, transform_node_from_sitk
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk

FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS, written out independently of the code


def _rotation(axis, angle) -> list[float]:
    return list(sitk.VersorTransform(axis, angle).GetMatrix())


def _rigid() -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform((4.0, -2.0, 6.0), 0.1, -0.2, 0.3, (2.0, -1.0, 1.5))


def _affine() -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.1, 0.05, 0.0, -0.1, 0.95, 0.02, 0.03, 0.0, 1.05])
    affine.SetTranslation((1.0, -2.0, 0.5))
    affine.SetCenter((3.0, 4.0, -5.0))
    return affine


def _grid_image(size, spacing, origin, direction) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _bspline(seed=1, amplitude=1.0) -> sitk.BSplineTransform:
    domain = _grid_image(
        (10, 10, 10), (2.0, 2.2, 2.4), (-9.0, -10.0, -11.0), _rotation((0, 0, 1), 0.3)
    )
    bspline = sitk.BSplineTransformInitializer(domain, [3, 3, 3], 3)
    rng = np.random.default_rng(seed)
    bspline.SetParameters((rng.normal(size=len(bspline.GetParameters())) * amplitude).tolist())
    return bspline


def _displacement(smooth=True, spacing=(3.0, 3.5, 4.0)) -> sitk.DisplacementFieldTransform:
    origin = -np.array(spacing) * np.array([3.7, 3.4, 2.5])
    grid = _grid_image((8, 7, 6), spacing, origin.tolist(), _rotation((1, 0, 0), 0.2))
    k, j, i = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    if smooth:
        field = np.stack([1.5 + 0.1 * j, -1.0 + 0.05 * i * k, 0.3 * np.sin(i / 2.0)], axis=-1)
    else:
        field = np.random.default_rng(2).normal(size=(6, 7, 8, 3))
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(image)


def _composite() -> sitk.CompositeTransform:
    return sitk.CompositeTransform(
        [
            _rigid(),
            _bspline(amplitude=0.5),
            sitk.TranslationTransform(3, (1.0, 1.0, 1.0)),
            _displacement(),
        ]
    )


def _load(scene, tx, tmp_path, class_name):
    """The same transform read by Slicer's own storage node from an ITK file."""
    path = tmp_path / "transform.h5"
    sitk.WriteTransform(tx, str(path))
    node = scene.AddNewNodeByClass(class_name, "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def _apply(vtk_transform, points_ras) -> np.ndarray:
    return np.array([vtk_transform.TransformPoint(*p) for p in points_ras])


def _sitk_apply(tx, points_lps) -> np.ndarray:
    return np.array([tx.TransformPoint(p.tolist()) for p in points_lps])


def _points(count=200, low=-25.0, high=25.0, seed=5) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=(count, 3))


def _inside(grid: sitk.Image, points_lps, margin=0.0) -> np.ndarray:
    index = np.array([grid.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points_lps])
    return np.all((index >= margin) & (index <= np.array(grid.GetSize()) - 1 - margin), axis=1)


def test_known_rigid_transform_in_both_conventions(tmp_path, mrml_scene):
    # Fixed -> moving in LPS: rotate 90 degrees about z, then shift 10 mm along x.
    tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, np.pi / 2, (10.0, 0.0, 0.0))
    p_fixed = np.array([1.0, 0.0, 0.0])
    p_moving = np.array(tx.TransformPoint(p_fixed.tolist()))
    np.testing.assert_allclose(p_moving, [10.0, 1.0, 0.0], atol=1e-12)

    node = transform_node_from_sitk(tx, mrml_scene, name="rigid")
    assert node.GetClassName() == "vtkMRMLLinearTransformNode"
    to_parent = slicer.util.arrayFromTransformMatrix(node)
    expected = np.array([[0, 1, 0, 0], [-1, 0, 0, -10], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    np.testing.assert_allclose(to_parent, expected, atol=1e-12)  # worked out by hand
    # To parent: moving -> fixed; from parent: fixed -> moving (RAS).
    np.testing.assert_allclose(
        node.GetTransformToParent().TransformPoint(*(p_moving * FLIP)), p_fixed * FLIP, atol=1e-12
    )
    np.testing.assert_allclose(
        node.GetTransformFromParent().TransformPoint(*(p_fixed * FLIP)), p_moving * FLIP, atol=1e-12
    )
    loaded = _load(mrml_scene, tx, tmp_path, "vtkMRMLLinearTransformNode")
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(loaded), expected, atol=1e-12)


KINDS = {
    "rigid": (_rigid, "vtkMRMLLinearTransformNode"),
    "affine": (_affine, "vtkMRMLLinearTransformNode"),
    "bspline": (_bspline, "vtkMRMLBSplineTransformNode"),
    "displacement": (_displacement, "vtkMRMLGridTransformNode"),
    "composite": (_composite, "vtkMRMLTransformNode"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_nodes_agree_with_slicers_own_transform_reader(tmp_path, mrml_scene, kind):
    make, class_name = KINDS[kind]
    tx = make()
    # Slicer's reader interpolates displacement fields cubically; ask for the same here.
    node = transform_node_from_sitk(tx, mrml_scene, name=kind, grid_interpolation="cubic")
    loaded = _load(mrml_scene, tx, tmp_path, class_name)
    assert node.GetClassName() == loaded.GetClassName() == class_name
    points = _points()  # many outside the B-spline and displacement grids on purpose
    np.testing.assert_allclose(
        _apply(node.GetTransformFromParent(), points),
        _apply(loaded.GetTransformFromParent(), points),
        atol=1e-9,
    )
    inner = _points(count=40, low=-6.0, high=6.0, seed=7)
    np.testing.assert_allclose(
        _apply(node.GetTransformToParent(), inner),
        _apply(loaded.GetTransformToParent(), inner),
        atol=1e-6,
    )


@pytest.mark.parametrize("kind", ["rigid", "affine", "bspline", "displacement", "composite"])
def test_from_parent_moves_points_like_simpleitk(mrml_scene, kind):
    make, _ = KINDS[kind]
    tx = make()
    node = transform_node_from_sitk(tx, mrml_scene)
    points = _points(count=400, low=-12.0, high=12.0)
    if kind == "bspline":
        domain = _grid_image(
            (10, 10, 10), (2.0, 2.2, 2.4), (-9.0, -10.0, -11.0), _rotation((0, 0, 1), 0.3)
        )
        points = points[_inside(domain, points)]
    elif kind == "displacement":
        # ITK and VTK differ outside a displacement grid; compare where both are defined.
        points = points[_inside(tx.GetDisplacementField(), points)]
    elif kind == "composite":
        points = _points(count=100, low=-3.0, high=3.0)  # stays inside every part's grid
    assert len(points) >= 20
    moved = _apply(node.GetTransformFromParent(), points * FLIP) * FLIP
    # Linear grid interpolation in VTK computes in single precision: 1e-4 mm.
    np.testing.assert_allclose(moved, _sitk_apply(tx, points), atol=1e-4)


def test_displacement_grid_points_are_exact_with_either_interpolation(mrml_scene):
    tx = _displacement(smooth=False)
    field = tx.GetDisplacementField()
    nodes = [
        transform_node_from_sitk(tx, mrml_scene, grid_interpolation=mode)
        for mode in ("linear", "cubic")
    ]
    size = field.GetSize()
    grid_points = np.array(
        [
            field.TransformIndexToPhysicalPoint((i, j, k))
            for k in range(1, size[2] - 1)
            for j in range(1, size[1] - 1)
            for i in range(1, size[0] - 1)
        ]
    )
    expected = _sitk_apply(tx, grid_points)
    for node in nodes:
        moved = _apply(node.GetTransformFromParent(), grid_points * FLIP) * FLIP
        np.testing.assert_allclose(moved, expected, atol=1e-4)
    between = grid_points[:10] + np.array([0.9, 1.1, 1.3])
    cubic = _apply(nodes[1].GetTransformFromParent(), between * FLIP) * FLIP
    assert np.abs(cubic - _sitk_apply(tx, between)).max() > 1e-2  # ITK interpolates linearly


@pytest.mark.parametrize("from_file", [False, True], ids=["direct", "storage-node"])
def test_round_trip_gives_the_same_simpleitk_transform(tmp_path, mrml_scene, from_file):
    for kind, (make, class_name) in KINDS.items():
        tx = make()
        node = (
            _load(mrml_scene, tx, tmp_path, class_name)
            if from_file
            else transform_node_from_sitk(tx, mrml_scene, name=kind)
        )
        back = sitk_from_transform_node(node)
        points = _points(count=100, low=-30, high=30)
        np.testing.assert_allclose(_sitk_apply(back, points), _sitk_apply(tx, points), atol=1e-9)
        if kind == "bspline":
            assert isinstance(back, sitk.BSplineTransform)
            np.testing.assert_allclose(
                back.GetFixedParameters(), tx.GetFixedParameters(), atol=1e-12
            )
            np.testing.assert_allclose(back.GetParameters(), tx.GetParameters(), atol=1e-12)
        if kind == "displacement":
            assert isinstance(back, sitk.DisplacementFieldTransform)
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(back.GetDisplacementField()),
                sitk.GetArrayFromImage(tx.GetDisplacementField()),
            )
        if kind == "composite":
            assert isinstance(back, sitk.CompositeTransform)
            # rigid, B-spline, translation+... merged: the translation cannot merge across
            # the non-linear parts, so four parts remain.
            assert back.GetNumberOfTransforms() == 4


def test_linear_composites_become_one_matrix(mrml_scene):
    scale = sitk.ScaleTransform(3, (1.5, 0.8, 1.2))
    tx = sitk.CompositeTransform([_rigid(), sitk.TranslationTransform(3, (5.0, -1.0, 2.0)), scale])
    node = transform_node_from_sitk(tx, mrml_scene)
    assert node.GetClassName() == "vtkMRMLLinearTransformNode"
    points = _points(count=20)
    moved = _apply(node.GetTransformFromParent(), points * FLIP) * FLIP
    np.testing.assert_allclose(moved, _sitk_apply(tx, points), atol=1e-9)


def _blob(size=(28, 26, 22)) -> sitk.Image:
    grid = _grid_image(
        size, (1.5, 1.2, 2.0), (-18.0, -14.0, -20.0), _rotation((0.2, 1.0, 0.3), 0.4)
    )
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    centre = np.array([13.0, 12.0, 10.0])
    values = np.exp(-((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2) / 6.0)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(grid)
    return image


def _centroid_lps(image: sitk.Image) -> np.ndarray:
    values = sitk.GetArrayFromImage(image).astype(float)
    k, j, i = np.meshgrid(*(np.arange(n) for n in values.shape), indexing="ij")
    index = [float((axis * values).sum() / values.sum()) for axis in (i, j, k)]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


@pytest.mark.parametrize("kind", ["rigid", "displacement"])
def test_resampling_agrees_with_slicer_applying_the_node(mrml_scene, kind):
    """sitk.Resample(moving, fixed, tx) and Slicer hardening the node on the moving volume
    put the blob at the same place; the inverse convention would miss by millimetres."""
    # The displacement grid covers the whole volume: outside it ITK and VTK differ.
    tx = _rigid() if kind == "rigid" else _displacement(spacing=(9.0, 9.0, 9.0))
    moving = _blob()
    fixed = moving  # same grid: the blob moves within it
    resampled = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0)

    volume = volume_node_from_sitk(moving, mrml_scene, name="moving")
    node = transform_node_from_sitk(tx, mrml_scene)
    volume.SetAndObserveTransformNodeID(node.GetID())
    assert volume.HardenTransform()
    hardened = sitk_from_volume_node(volume)

    np.testing.assert_allclose(_centroid_lps(hardened), _centroid_lps(resampled), atol=0.05)
    if kind == "rigid":
        inverse = tx.GetInverse()
    else:  # a smooth small field is inverted closely enough by negation for this check
        negated = sitk.GetImageFromArray(-sitk.GetArrayFromImage(tx.GetDisplacementField()), True)
        negated.CopyInformation(tx.GetDisplacementField())
        inverse = sitk.DisplacementFieldTransform(negated)
    wrong = sitk.Resample(moving, fixed, inverse, sitk.sitkLinear, 0.0)
    assert np.linalg.norm(_centroid_lps(wrong) - _centroid_lps(resampled)) > 2.0


def test_inverted_and_general_transforms_are_sampled(mrml_scene):
    tx = _displacement()
    node = transform_node_from_sitk(tx, mrml_scene)
    node.Inverse()  # now stored "to parent": no exact SimpleITK form for its from-parent
    sampled = sitk_from_transform_node(node)
    assert isinstance(sampled, sitk.DisplacementFieldTransform)
    field = sampled.GetDisplacementField()
    assert field.GetSize() == tx.GetDisplacementField().GetSize()
    points = np.array([field.TransformIndexToPhysicalPoint((i, 3, 2)) for i in range(1, 7)])
    expected = _apply(node.GetTransformFromParent(), points * FLIP) * FLIP
    np.testing.assert_allclose(_sitk_apply(sampled, points), expected, atol=1e-6)

    thin_plate = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (10, 0, 0), (0, 10, 0), (0, 0, 10), (10, 10, 10)]:
        source.InsertNextPoint(p)
        target.InsertNextPoint(np.add(p, (1.0, -0.5, 0.25)).tolist())
    thin_plate.SetSourceLandmarks(source)
    thin_plate.SetTargetLandmarks(target)
    thin_plate.SetBasisToR()
    general = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "thin plate")
    general.SetAndObserveTransformFromParent(thin_plate)
    with pytest.raises(PrimageInputError, match="reference image"):
        sitk_from_transform_node(general)
    reference = _grid_image(
        (5, 5, 5), (2.0, 2.0, 2.0), (-4.0, -4.0, 0.0), _rotation((0, 0, 1), 0.0)
    )
    sampled = sitk_from_transform_node(general, reference=reference)
    point = np.array(reference.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(
        sampled.TransformPoint(point.tolist()),
        np.array(thin_plate.TransformPoint(*(point * FLIP))) * FLIP,
        atol=1e-6,
    )


def test_refilling_nodes_and_clear_errors(mrml_scene):
    linear = transform_node_from_sitk(_rigid(), mrml_scene, name="first")
    assert transform_node_from_sitk(_affine(), mrml_scene, name="again", node=linear) is linear
    np.testing.assert_allclose(
        sitk_from_transform_node(linear).TransformPoint((1.0, 2.0, 3.0)),
        _affine().TransformPoint((1.0, 2.0, 3.0)),
        atol=1e-9,
    )
    with pytest.raises(PrimageInputError, match="cannot hold"):
        transform_node_from_sitk(_bspline(), mrml_scene, node=linear)
    with pytest.raises(PrimageInputError, match="3D"):
        transform_node_from_sitk(sitk.Euler2DTransform(), mrml_scene)
    with pytest.raises(PrimageInputError, match="not a transform node"):
        sitk_from_transform_node(mrml_scene.AddNewNodeByClass("vtkMRMLTableNode"))
    with pytest.raises(PrimageInputError, match="grid_interpolation"):
        transform_node_from_sitk(_displacement(), mrml_scene, grid_interpolation="spline")
