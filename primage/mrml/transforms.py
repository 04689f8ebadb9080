"""Transform nodes <-> SimpleITK transforms (linear, B-spline, displacement field, composite).

Convention (see :mod:`primage.mrml.geometry`): a SimpleITK transform here maps points of
the FIXED image to the MOVING image, in LPS, as ``sitk.Resample(moving, fixed, tx)`` uses
it. The matching Slicer transform node moves the moving volume onto the fixed one when
the moving volume is placed under it: its "to parent" transform is moving->fixed (RAS),
so the SimpleITK transform is stored as the node's "from parent" transform. This is what
Slicer's own transform reader (``vtkMRMLTransformStorageNode``) does with ITK files, and
the conversions below mirror its ``vtkITKTransformConverter`` directly through VTK
objects (no temporary files).

* Linear transforms (any SimpleITK transform with ``IsLinear()``) become a
  ``vtkMRMLLinearTransformNode``.
* ``BSplineTransform`` (order 3) becomes a ``vtkMRMLBSplineTransformNode`` holding a
  ``vtkOrientedBSplineTransform`` (zero displacement outside the grid, as in ITK).
* ``DisplacementFieldTransform`` becomes a ``vtkMRMLGridTransformNode`` holding a
  ``vtkOrientedGridTransform``. Interpolation between grid points is linear by default,
  as in ITK, so Slicer and SimpleITK move every point identically; Slicer's file reader
  uses cubic interpolation instead (``grid_interpolation="cubic"`` to match it), which
  agrees at the grid points only.
* ``CompositeTransform`` is flattened; consecutive linear parts are multiplied into one
  matrix. A single remaining part gives the node types above; several give a generic
  ``vtkMRMLTransformNode`` whose "from parent" is a ``vtkGeneralTransform`` chaining the
  parts in the same order.

Back from a node, parts that SimpleITK cannot hold exactly (a grid or B-spline stored as
"to parent", i.e. inverted, a thin-plate spline, an ITKv3 B-spline with an additive bulk
transform) are sampled into a displacement field on ``reference`` (a SimpleITK image
grid) or, when none is given, on the part's own grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.mrml.geometry import (
    grid_lps_from_ras,
    grid_ras_from_lps,
    ijk_to_ras_from_sitk,
    lps_matrix_from_ras,
    lps_to_ras_points,
    ras_matrix_from_lps,
    ras_to_lps_points,
)
from primage.mrml.volumes import node_label

GRID_INTERPOLATION = {
    "linear": "SetInterpolationModeToLinear",
    "cubic": "SetInterpolationModeToCubic",
}


# --- SimpleITK side helpers ------------------------------------------------------------


def matrix_from_linear_sitk(tx: sitk.Transform) -> np.ndarray:
    """4x4 homogeneous matrix (LPS, fixed->moving) of any linear 3D SimpleITK transform.

    Found by mapping the origin and the unit points, so centres, versors and composites of
    linear transforms are all handled the same way.
    """
    origin = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(tx.TransformPoint(unit)) - origin
    matrix[:3, 3] = origin
    return matrix


def affine_from_matrix(matrix_lps: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK AffineTransform (centre 0) from a 4x4 LPS matrix."""
    matrix_lps = np.asarray(matrix_lps, dtype=float)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix_lps[:3, :3].ravel().tolist())
    affine.SetTranslation(matrix_lps[:3, 3].tolist())
    return affine


def _flatten_sitk(tx: sitk.Transform) -> list[sitk.Transform]:
    """Parts of a (nested) composite transform, outermost first (``T0(T1(...(x)))``)."""
    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    if isinstance(tx, sitk.CompositeTransform):
        parts = []
        for index in range(tx.GetNumberOfTransforms()):
            parts.extend(_flatten_sitk(tx.GetNthTransform(index)))
        return parts
    return [tx]


def _merge_linear(parts: list[sitk.Transform]) -> list[sitk.Transform | np.ndarray]:
    """Replace runs of linear parts with one 4x4 LPS matrix (outermost first)."""
    merged: list[sitk.Transform | np.ndarray] = []
    for part in parts:
        if part.IsLinear():
            matrix = matrix_from_linear_sitk(part)
            if merged and isinstance(merged[-1], np.ndarray):
                merged[-1] = merged[-1] @ matrix  # previous part is applied after this one
            else:
                merged.append(matrix)
        else:
            merged.append(part)
    return merged


# --- SimpleITK -> VTK ------------------------------------------------------------------


def _vtk_vectors(array_lps: np.ndarray) -> vtk.vtkDoubleArray:
    """(k, j, i, 3) LPS vectors to a 3-component VTK array of RAS vectors (i fastest)."""
    vectors = lps_to_ras_points(array_lps).reshape(-1, 3)
    return numpy_support.numpy_to_vtk(np.ascontiguousarray(vectors, dtype=np.float64), deep=True)


def _grid_image(
    origin_lps, spacing, direction_lps, size
) -> tuple[vtk.vtkImageData, vtk.vtkMatrix4x4]:
    origin_ras, direction_ras = grid_ras_from_lps(origin_lps, direction_lps)
    grid = vtk.vtkImageData()
    grid.SetOrigin(*origin_ras)
    grid.SetSpacing(*spacing)
    grid.SetDimensions(*size)
    direction = np.eye(4)
    direction[:3, :3] = direction_ras
    return grid, slicer.util.vtkMatrixFromArray(direction)


def _vtk_bspline_from_sitk(tx: sitk.Transform) -> slicer.vtkOrientedBSplineTransform:
    bspline = sitk.BSplineTransform(tx)
    if bspline.GetOrder() != 3:
        raise PrimageInputError(
            f"only cubic B-spline transforms are supported (order {bspline.GetOrder()})"
        )
    coefficients = bspline.GetCoefficientImages()
    first = coefficients[0]
    # Coefficient images hold one displacement component each (LPS); stack to (k, j, i, 3).
    array = np.stack([sitk.GetArrayFromImage(image) for image in coefficients], axis=-1)
    grid, direction = _grid_image(
        first.GetOrigin(), first.GetSpacing(), first.GetDirection(), first.GetSize()
    )
    grid.GetPointData().SetScalars(_vtk_vectors(array))
    result = slicer.vtkOrientedBSplineTransform()
    result.SetBorderModeToZero()  # ITK: no displacement outside the B-spline support
    result.SetGridDirectionMatrix(direction)
    result.SetCoefficientData(grid)
    return result


def _vtk_grid_from_sitk(tx: sitk.Transform, interpolation: str) -> slicer.vtkOrientedGridTransform:
    field = sitk.DisplacementFieldTransform(tx).GetDisplacementField()
    array = sitk.GetArrayFromImage(field)  # (k, j, i, 3), LPS
    grid, direction = _grid_image(
        field.GetOrigin(), field.GetSpacing(), field.GetDirection(), field.GetSize()
    )
    grid.GetPointData().SetScalars(_vtk_vectors(array))
    result = slicer.vtkOrientedGridTransform()
    result.SetGridDirectionMatrix(direction)
    result.SetDisplacementGridData(grid)
    getattr(result, GRID_INTERPOLATION[interpolation])()
    return result


def _vtk_from_part(part, interpolation: str):
    if isinstance(part, np.ndarray):
        linear = vtk.vtkTransform()
        linear.SetMatrix(slicer.util.vtkMatrixFromArray(ras_matrix_from_lps(part)))
        return linear
    if isinstance(part, sitk.BSplineTransform):
        return _vtk_bspline_from_sitk(part)
    if isinstance(part, sitk.DisplacementFieldTransform):
        return _vtk_grid_from_sitk(part, interpolation)
    raise PrimageInputError(
        f"SimpleITK transform {part.GetName()} cannot be put in a Slicer transform node "
        "(supported: linear, BSplineTransform, DisplacementFieldTransform and composites of these)"
    )


def transform_node_from_sitk(
    tx: sitk.Transform,
    scene,
    name: str = "transform",
    node=None,
    *,
    grid_interpolation: str = "linear",
):
    """Transform node equivalent to a SimpleITK fixed->moving transform (LPS).

    Placing the moving volume under the returned node aligns it with the fixed volume.
    A new node of the fitting class is created in ``scene`` unless ``node`` is given; a
    given node must be able to hold the transform (any ``vtkMRMLTransformNode`` can hold
    a non-linear one; only a linear node can hold a linear one as a matrix).
    """
    if grid_interpolation not in GRID_INTERPOLATION:
        raise PrimageInputError(f"grid_interpolation must be one of {sorted(GRID_INTERPOLATION)}")
    if tx.GetDimension() != 3:
        raise PrimageInputError(f"a 3D transform is expected, got {tx.GetDimension()}D")
    parts = _merge_linear(_flatten_sitk(tx))
    if not parts:
        parts = [np.eye(4)]
    if len(parts) == 1 and isinstance(parts[0], np.ndarray):
        class_name = "vtkMRMLLinearTransformNode"
    elif len(parts) == 1 and isinstance(parts[0], sitk.BSplineTransform):
        class_name = "vtkMRMLBSplineTransformNode"
    elif len(parts) == 1 and isinstance(parts[0], sitk.DisplacementFieldTransform):
        class_name = "vtkMRMLGridTransformNode"
    else:
        class_name = "vtkMRMLTransformNode"
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    else:
        if not node.IsA("vtkMRMLTransformNode"):
            raise PrimageInputError(f"output node {node_label(node)} is not a transform node")
        if class_name == "vtkMRMLLinearTransformNode" and not node.IsA(class_name):
            class_name = "vtkMRMLTransformNode"  # store the matrix as a general transform
        elif class_name != "vtkMRMLLinearTransformNode" and node.IsA("vtkMRMLLinearTransformNode"):
            raise PrimageInputError(
                f"output node {node_label(node)} is a linear transform node; it cannot hold "
                f"a non-linear {tx.GetName()}"
            )
        node.SetName(name)
    if class_name == "vtkMRMLLinearTransformNode":
        # Linear nodes conventionally store "to parent" (moving->fixed, RAS).
        node.SetMatrixTransformToParent(
            slicer.util.vtkMatrixFromArray(np.linalg.inv(ras_matrix_from_lps(parts[0])))
        )
    elif len(parts) == 1:
        node.SetAndObserveTransformFromParent(_vtk_from_part(parts[0], grid_interpolation))
    else:
        chain = vtk.vtkGeneralTransform()
        chain.PreMultiply()  # Concatenate(A), Concatenate(B) gives A(B(x)), like the composite
        for part in parts:
            chain.Concatenate(_vtk_from_part(part, grid_interpolation))
        node.SetAndObserveTransformFromParent(chain)
    return node


# --- VTK -> SimpleITK ------------------------------------------------------------------


def _numpy_from_vtk_matrix(matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(matrix)


def _grid_geometry(image_data, direction_matrix) -> tuple[tuple, tuple, tuple, tuple]:
    """LPS origin, spacing, flattened direction and size of a VTK grid with direction."""
    direction_ras = np.eye(3)
    if direction_matrix is not None:
        direction_ras = _numpy_from_vtk_matrix(direction_matrix)[:3, :3]
    origin, direction = grid_lps_from_ras(image_data.GetOrigin(), direction_ras)
    return (
        tuple(origin.tolist()),
        tuple(image_data.GetSpacing()),
        tuple(direction.ravel().tolist()),
        tuple(image_data.GetDimensions()),
    )


def _lps_vectors(image_data) -> np.ndarray:
    """(k, j, i, 3) LPS vectors from a 3-component VTK grid of RAS vectors."""
    size = image_data.GetDimensions()
    vectors = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return ras_to_lps_points(vectors.reshape(size[2], size[1], size[0], 3).astype(np.float64))


def _sitk_bspline_from_vtk(bspline) -> sitk.BSplineTransform:
    coefficients = bspline.GetCoefficientData()
    origin, spacing, direction, size = _grid_geometry(
        coefficients, bspline.GetGridDirectionMatrix()
    )
    array = _lps_vectors(coefficients) * bspline.GetDisplacementScale()
    result = sitk.BSplineTransform(3, 3)
    result.SetFixedParameters([*map(float, size), *origin, *spacing, *direction])
    # Parameters are all x components, then all y, then all z (each in i-fastest order).
    result.SetParameters(np.concatenate([array[..., axis].ravel() for axis in range(3)]).tolist())
    return result


def _sitk_grid_from_vtk(grid) -> sitk.DisplacementFieldTransform:
    grid.Update()  # the displacement grid may be computed lazily
    image_data = grid.GetDisplacementGrid()
    origin, spacing, direction, _ = _grid_geometry(image_data, grid.GetGridDirectionMatrix())
    array = _lps_vectors(image_data) * grid.GetDisplacementScale()
    # The shift is added to every RAS component; convert that RAS vector to LPS.
    array += ras_to_lps_points(np.full(3, grid.GetDisplacementShift()))
    field = sitk.GetImageFromArray(array, isVector=True)
    field.SetOrigin(origin)
    field.SetSpacing(spacing)
    field.SetDirection(direction)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def _own_grid(part) -> sitk.Image | None:
    """A grid to sample ``part`` on: its own displacement or coefficient grid, if it has one."""
    image_data, direction = None, None
    if isinstance(part, slicer.vtkOrientedGridTransform):
        part.Update()
        image_data, direction = part.GetDisplacementGrid(), part.GetGridDirectionMatrix()
    elif isinstance(part, slicer.vtkOrientedBSplineTransform):
        image_data, direction = part.GetCoefficientData(), part.GetGridDirectionMatrix()
    if image_data is None:
        return None
    origin, spacing, direction_lps, size = _grid_geometry(image_data, direction)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(origin)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction_lps)
    return grid


def displacement_field_from_vtk_transform(
    transform, grid: sitk.Image
) -> sitk.DisplacementFieldTransform:
    """Sample a VTK transform acting on RAS points into a displacement field on ``grid`` (LPS)."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in reversed(size)), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    points_ras = (ijk_to_ras_from_sitk(grid) @ ijk)[:3].T
    source = vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras), deep=True))
    target = vtk.vtkPoints()
    transform.TransformPoints(source, target)
    moved_ras = numpy_support.vtk_to_numpy(target.GetData()).astype(np.float64)
    displacement = ras_to_lps_points(moved_ras - points_ras).reshape(size[2], size[1], size[0], 3)
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field)


def _sitk_from_vtk_part(part, reference: sitk.Image | None) -> sitk.Transform:
    if isinstance(part, vtk.vtkHomogeneousTransform):
        return affine_from_matrix(lps_matrix_from_ras(_numpy_from_vtk_matrix(part.GetMatrix())))
    part.Update()  # refreshes the inverse flag of transforms defined by their inverse
    exact = not part.GetInverseFlag()
    if exact and isinstance(part, slicer.vtkOrientedBSplineTransform):
        bulk = part.GetBulkTransformMatrix()
        if bulk is None or np.allclose(_numpy_from_vtk_matrix(bulk), np.eye(4)):
            return _sitk_bspline_from_vtk(part)
    elif exact and isinstance(part, slicer.vtkOrientedGridTransform):
        return _sitk_grid_from_vtk(part)
    grid = reference if reference is not None else _own_grid(part)
    if grid is None:
        raise PrimageInputError(
            f"a {part.GetClassName()} transform has no exact SimpleITK form and no grid of its "
            "own; give a reference image to sample it on"
        )
    return displacement_field_from_vtk_transform(part, grid)


def sitk_from_transform_node(node, *, reference: sitk.Image | None = None) -> sitk.Transform:
    """SimpleITK fixed->moving (LPS) transform equivalent to a transform node's own transform.

    Uses the node's transform relative to its parent (not to world). Linear nodes give an
    ``AffineTransform``; grid and B-spline nodes give the exact SimpleITK transform when
    stored as "from parent"; anything else is sampled into a displacement field on
    ``reference`` (a SimpleITK image defining the grid) or the part's own grid.
    """
    if node is None or not node.IsA("vtkMRMLTransformNode"):
        raise PrimageInputError(f"{node_label(node)} is not a transform node")
    if node.IsLinear():
        to_parent = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToParent(to_parent)
        return affine_from_matrix(
            lps_matrix_from_ras(np.linalg.inv(_numpy_from_vtk_matrix(to_parent)))
        )
    from_parent = node.GetTransformFromParent()
    if from_parent is None:
        raise PrimageInputError(f"transform node {node_label(node)} holds no transform")
    flattened = vtk.vtkCollection()
    slicer.vtkMRMLTransformNode.FlattenGeneralTransform(flattened, from_parent)
    # The flattened list is in order of application; SimpleITK composites list the
    # outermost (last applied) transform first.
    parts = [
        _sitk_from_vtk_part(flattened.GetItemAsObject(index), reference)
        for index in range(flattened.GetNumberOfItems())
    ]
    if not parts:
        return sitk.AffineTransform(3)
    if len(parts) == 1:
        return parts[0]
    return sitk.CompositeTransform(list(reversed(parts)))
