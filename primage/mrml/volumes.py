"""Scalar volume nodes <-> SimpleITK images, keeping every voxel at its physical position.

The full IJK-to-RAS matrix of the node (oblique axes, flipped axes, slice order) is
converted by :mod:`primage.mrml.geometry`; voxel values are always copied, so the image and
the node never share memory.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.mrml.geometry import ijk_to_ras_from_sitk, sitk_geometry_from_ijk_to_ras

SCALAR_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"
LABELMAP_VOLUME_CLASS = "vtkMRMLLabelMapVolumeNode"


def node_label(node) -> str:
    """Name of a node for messages ("volume 'T2'")."""
    if node is None:
        return "no node"
    return f"'{node.GetName()}' ({node.GetClassName()})"


def ijk_to_ras_matrix(node, *, world: bool = False) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a volume node (mm).

    With ``world=True`` a linear parent transform is included; a non-linear one is refused
    (harden it first in Slicer's Transforms module).
    """
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    parent = node.GetParentTransformNode()
    if world and parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise PrimageInputError(
                f"volume {node_label(node)} is under a non-linear transform; harden the "
                "transform first (Transforms module) or remove it"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def check_scalar_volume_node(node, *, role: str = "volume") -> None:
    """Raise :class:`PrimageInputError` unless ``node`` is a scalar volume with voxels."""
    if node is None:
        raise PrimageInputError(f"no {role} node given")
    if not node.IsA(SCALAR_VOLUME_CLASS):
        raise PrimageInputError(
            f"{role} {node_label(node)} is not a scalar volume (a vtkMRMLScalarVolumeNode or "
            "labelmap volume is expected)"
        )
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise PrimageInputError(f"{role} {node_label(node)} has no image data (empty volume)")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise PrimageInputError(
            f"{role} {node_label(node)} has {image_data.GetNumberOfScalarComponents()} "
            "components per voxel; a scalar volume is expected"
        )


def sitk_from_volume_node(node, *, world: bool = False, role: str = "volume") -> sitk.Image:
    """3D SimpleITK image (LPS geometry, same pixel type) with a copy of a volume node's voxels.

    The node's own IJK-to-RAS geometry is used; with ``world=True`` a linear parent transform
    is applied too. Raises :class:`PrimageInputError` for a missing, empty or non-scalar node.
    """
    check_scalar_volume_node(node, role=role)
    # arrayFromVolume only accepts a few exact class names; read the scalars directly so
    # subclasses (e.g. from other extensions) work too. Array order is (k, j, i).
    image_data = node.GetImageData()
    dimensions = image_data.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    array = np.array(scalars.reshape(tuple(reversed(dimensions))), copy=True)
    image = sitk.GetImageFromArray(array, isVector=False)
    origin, spacing, direction = sitk_geometry_from_ijk_to_ras(ijk_to_ras_matrix(node, world=world))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _array_for_node(image: sitk.Image, labelmap: bool) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    if labelmap and np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise PrimageInputError(
                "a labelmap needs whole-number voxel values; this image has fractional or "
                "non-finite values"
            )
        array = array.astype(np.int32)
    if array.dtype in (np.int64, np.uint64):
        # Slicer does not display 64-bit integer volumes; keep the values exactly when they fit.
        info = np.iinfo(np.int32)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            array = array.astype(np.int32)
        else:
            array = array.astype(np.float64)
    return array


def volume_node_from_sitk(
    image: sitk.Image,
    scene,
    name: str | None = None,
    node=None,
    labelmap: bool = False,
):
    """Put a 3D scalar SimpleITK image into a volume node (created in ``scene`` unless given).

    Creates a ``vtkMRMLScalarVolumeNode`` (``vtkMRMLLabelMapVolumeNode`` with
    ``labelmap=True``) or updates ``node`` in place (its class wins over ``labelmap``). The
    pixel type is kept, except 64-bit integers (stored as 32-bit when the values fit) and
    float labelmaps (stored as 32-bit integers; fractional values are refused). A default
    display node is created when the scene supports it.
    """
    if image.GetDimension() != 3:
        raise PrimageInputError(
            f"a 3D image is expected for a volume node, got {image.GetDimension()}D"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PrimageInputError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; a "
            "scalar image is expected for a volume node"
        )
    if node is None:
        if scene is None:
            raise PrimageInputError("no MRML scene given to create the volume node in")
        class_name = LABELMAP_VOLUME_CLASS if labelmap else SCALAR_VOLUME_CLASS
        node = scene.AddNewNodeByClass(class_name, name or "volume")
    else:
        if not node.IsA(SCALAR_VOLUME_CLASS):
            raise PrimageInputError(f"output node {node_label(node)} is not a scalar volume node")
        if node.GetScene() is None and scene is not None:
            scene.AddNode(node)
        if name is not None:
            node.SetName(name)
    array = _array_for_node(image, node.IsA(LABELMAP_VOLUME_CLASS))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_sitk(image)))
    slicer.util.updateVolumeFromArray(node, array)
    if node.GetDisplayNode() is None and node.GetScene() is not None:
        try:
            node.CreateDefaultDisplayNodes()
        except Exception:
            pass  # a missing display node only affects viewing, not the data
    return node
