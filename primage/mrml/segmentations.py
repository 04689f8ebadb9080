"""Segmentation nodes <-> label images, and masks from labelmap or segmentation nodes.

Segments are read from their binary labelmap representation. Slicer keeps several
segments in one shared labelmap layer with one label value each, so a segment is the set
of voxels equal to its label value in its layer; overlapping segments (in different
layers) are each read completely. Resampling onto another grid uses Slicer's own
nearest-neighbour resampler (``vtkOrientedImageDataResample``), and parent transforms of
the nodes involved are taken into account.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.mrml.geometry import ijk_to_ras_from_sitk, sitk_geometry_from_ijk_to_ras
from primage.mrml.volumes import (
    check_scalar_volume_node,
    ijk_to_ras_matrix,
    node_label,
    sitk_from_volume_node,
)

BINARY_LABELMAP = "Binary labelmap"
Color = tuple[float, float, float]


def ensure_segmentation_converters() -> None:
    """Make sure segment representations can be created and converted.

    The Slicer application registers the converter rules at startup; with ``slicer-core``
    they only appear once a segmentations logic has been attached to a scene, and without
    them even an empty segment cannot be added to a new segmentation.
    """
    if slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules():
        return
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    # A throw-away scene: registering the rules is all that is needed from the logic.
    logic.SetMRMLScene(slicer.vtkMRMLScene())


# --- vtkOrientedImageData <-> SimpleITK -------------------------------------------------


def oriented_image_from_sitk(image: sitk.Image) -> slicer.vtkOrientedImageData:
    """vtkOrientedImageData (RAS image-to-world matrix) with a copy of a 3D image's voxels."""
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    size_k, size_j, size_i = array.shape
    oriented = slicer.vtkOrientedImageData()
    oriented.SetExtent(0, size_i - 1, 0, size_j - 1, 0, size_k - 1)
    oriented.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_sitk(image)))
    # (k, j, i) C order puts i fastest, which is VTK's point order.
    oriented.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    return oriented


def sitk_from_oriented_image(oriented) -> sitk.Image:
    """3D SimpleITK image (LPS) with a copy of a vtkOrientedImageData's voxels.

    The image extent may start anywhere; the SimpleITK origin is moved to its first voxel.
    """
    matrix = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    extent = oriented.GetExtent()
    size = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    if min(size) <= 0 or oriented.GetPointData().GetScalars() is None:
        raise PrimageInputError("image data is empty")
    scalars = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())
    array = np.array(scalars.reshape(tuple(reversed(size))), copy=True)
    ijk_to_ras[:3, 3] = (ijk_to_ras @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    image = sitk.GetImageFromArray(array, isVector=False)
    origin, spacing, direction = sitk_geometry_from_ijk_to_ras(ijk_to_ras)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _geometry_from_volume_node(node) -> slicer.vtkOrientedImageData:
    check_scalar_volume_node(node, role="reference volume")
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(node.GetImageData().GetExtent())
    geometry.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix(node)))
    return geometry


def _geometry_from_sitk(image: sitk.Image) -> slicer.vtkOrientedImageData:
    geometry = slicer.vtkOrientedImageData()
    size = image.GetSize()
    geometry.SetExtent(0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    geometry.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_sitk(image)))
    return geometry


def _transform_between(source_node, target_node):
    """vtk transform from ``source_node``'s coordinates to ``target_node``'s (None: identity)."""
    source_parent = source_node.GetParentTransformNode() if source_node is not None else None
    target_parent = target_node.GetParentTransformNode() if target_node is not None else None
    if source_parent is target_parent:
        return None
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source_parent, target_parent, transform)
    return transform


def _resample_binary(binary: sitk.Image, geometry, transform=None) -> sitk.Image:
    """Nearest-neighbour resampling of a UInt8 image onto ``geometry`` (Slicer's resampler)."""
    resampled = slicer.vtkOrientedImageData()
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        oriented_image_from_sitk(binary), geometry, resampled, False, False, transform, 0
    )
    if not ok:
        raise PrimageInputError("could not resample the mask onto the reference grid")
    return sitk.Cast(sitk.NotEqual(sitk_from_oriented_image(resampled), 0), sitk.sitkUInt8)


# --- segmentation -> label images ------------------------------------------------------


def _check_segmentation_node(node) -> None:
    ensure_segmentation_converters()
    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        raise PrimageInputError(f"{node_label(node)} is not a segmentation node")
    segmentation = node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise PrimageInputError(f"segmentation {node_label(node)} has no segments")
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        # e.g. segments imported from surface models: Slicer can rasterise them.
        if not segmentation.CreateRepresentation(BINARY_LABELMAP):
            raise PrimageInputError(
                f"segmentation {node_label(node)} has no binary labelmap representation and "
                "none could be created"
            )


def segment_binary_image(segmentation_node, segment_id: str) -> sitk.Image | None:
    """A segment as a UInt8 0/1 image on its own labelmap grid (None if it has no voxels)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise PrimageInputError(
            f"segmentation {node_label(segmentation_node)} has no segment with ID {segment_id!r}"
        )
    layer = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, layer, False
    )
    extent = layer.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None
    # The representation is the whole shared layer: keep only this segment's label value.
    return sitk.Cast(
        sitk.Equal(sitk_from_oriented_image(layer), int(segment.GetLabelValue())), sitk.sitkUInt8
    )


def _reference_geometry(segmentation_node, reference):
    """Geometry (vtkOrientedImageData without voxels) to export segments on."""
    if reference is None:
        segmentation = segmentation_node.GetSegmentation()
        text = _reference_geometry_text(segmentation)
        if not text:
            ids = vtk.vtkStringArray()
            segmentation.GetSegmentIDs(ids)
            text = segmentation.DetermineCommonLabelmapGeometry(
                slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS, ids
            )
        geometry = slicer.vtkOrientedImageData()
        if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(
            text, geometry, False
        ):
            raise PrimageInputError(
                f"segmentation {node_label(segmentation_node)} has no reference geometry; "
                "give a reference volume"
            )
        return geometry, None
    if isinstance(reference, sitk.Image):
        return _geometry_from_sitk(reference), None
    return _geometry_from_volume_node(reference), _transform_between(segmentation_node, reference)


def _reference_geometry_text(segmentation) -> str:
    # GetConversionParameter logs a VTK error for a missing parameter: parse the list instead.
    wanted = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    for entry in segmentation.SerializeAllConversionParameters().split("&"):
        fields = entry.split("|")
        if len(fields) >= 2 and fields[0] == wanted:
            return fields[1]
    return ""


def label_images_from_segmentation(
    segmentation_node, reference=None
) -> dict[str, tuple[sitk.Image, Color]]:
    """Every segment as a binary UInt8 image on one grid, keyed by segment name.

    ``reference`` chooses the grid: a volume node (its parent transform is taken into
    account), a SimpleITK image (taken in the segmentation's own coordinates), or None for
    the segmentation's reference geometry. Values are ``(mask, (r, g, b))`` with colours
    in 0..1. A name used by several segments gets the segment ID appended ("name [ID]").
    """
    _check_segmentation_node(segmentation_node)
    geometry, transform = _reference_geometry(segmentation_node, reference)
    segmentation = segmentation_node.GetSegmentation()
    names = [
        segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
    ]
    result: dict[str, tuple[sitk.Image, Color]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        key = segment.GetName()
        if names.count(key) > 1:
            key = f"{key} [{segment_id}]"
        binary = segment_binary_image(segmentation_node, segment_id)
        if binary is None:
            mask = _empty_mask(geometry)
        else:
            mask = _resample_binary(binary, geometry, transform)
        result[key] = (mask, tuple(float(c) for c in segment.GetColor()))
    return result


def _empty_mask(geometry) -> sitk.Image:
    allocated = slicer.vtkOrientedImageData()
    allocated.DeepCopy(geometry)
    allocated.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    allocated.GetPointData().GetScalars().Fill(0)
    return sitk_from_oriented_image(allocated)


# --- label image -> segmentation -------------------------------------------------------


def _check_colors(colors: dict[int, Color] | None) -> dict[int, Color]:
    checked = {}
    for label, color in (colors or {}).items():
        values = tuple(float(c) for c in color)
        if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
            raise PrimageInputError(
                f"colour of label {label} must be three numbers in 0..1 (r, g, b), got {color}"
            )
        checked[int(label)] = values
    return checked


def segmentation_from_label_image(
    label_image: sitk.Image,
    scene,
    names: dict[int, str],
    colors: dict[int, Color] | None = None,
    reference_volume_node=None,
    *,
    name: str = "segmentation",
    node=None,
):
    """Segmentation node with one segment per label value of a 3D label image.

    ``names`` maps label values to segment names (a named label without voxels becomes an
    empty segment; an unnamed label present in the image is called "Label <value>");
    ``colors`` maps label values to (r, g, b) in 0..1 (Slicer picks the others). Segments are
    ordered by label value and keep the label image's voxel grid; the segmentation's
    reference geometry is ``reference_volume_node`` when given, else the label image grid.
    An existing ``node`` is emptied and refilled.
    """
    if label_image.GetDimension() != 3 or label_image.GetNumberOfComponentsPerPixel() != 1:
        raise PrimageInputError("a 3D scalar label image is expected")
    array = sitk.GetArrayViewFromImage(label_image)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise PrimageInputError("label image has fractional values; labels must be whole numbers")
    ensure_segmentation_converters()
    colors = _check_colors(colors)
    names = {int(label): str(text) for label, text in names.items()}
    if any(label <= 0 for label in names):
        raise PrimageInputError("label values to name must be positive (0 is background)")
    present = [int(v) for v in np.unique(array) if v != 0]
    if any(v < 0 for v in present):
        raise PrimageInputError("label image has negative values; labels must be >= 0")
    labels = np.asarray(sitk.GetArrayFromImage(label_image))
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        if not node.IsA("vtkMRMLSegmentationNode"):
            raise PrimageInputError(f"output node {node_label(node)} is not a segmentation node")
        node.GetSegmentation().RemoveAllSegments()
        node.SetName(name)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    if reference_volume_node is not None:
        check_scalar_volume_node(reference_volume_node, role="reference volume")
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    else:
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
            slicer.vtkSegmentationConverter.SerializeImageGeometry(
                _geometry_from_sitk(label_image)
            ),
        )
    # Import with 16-bit labels or wider so label values survive as the layer's values.
    typed = sitk.GetImageFromArray(
        labels.astype(np.int32 if labels.max(initial=0) > 32767 else np.int16)
    )
    typed.CopyInformation(label_image)
    by_label: dict[int, str] = {}
    if present:
        before = {
            segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
        }
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            oriented_image_from_sitk(typed), node, ""
        ):
            raise PrimageInputError("Slicer could not import the label image as segments")
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            if segment_id not in before:
                by_label[int(segmentation.GetSegment(segment_id).GetLabelValue())] = segment_id
    for label in sorted(set(names) | set(present)):
        text = names.get(label, f"Label {label}")
        if label in by_label:
            segment = segmentation.GetSegment(by_label[label])
            segment.SetName(text)
            if label in colors:
                segment.SetColor(*colors[label])
        else:
            color = colors.get(label)
            segment_id = segmentation.AddEmptySegment("", text, list(color) if color else None)
            by_label[label] = segment_id
    # Keep segments ordered by label value (empty ones were appended at the end).
    for position, label in enumerate(sorted(by_label)):
        segment_id = by_label[label]
        if segmentation.GetSegmentIndex(segment_id) != position:
            segmentation.SetSegmentIndex(segment_id, position)
    return node


# --- masks -----------------------------------------------------------------------------


def _segment_ids(segmentation_node, segment: str | None) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    if segment is None:
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if segmentation.GetSegment(segment) is not None:
        return [segment]
    segment_id = segmentation.GetSegmentIdBySegmentName(segment)
    if not segment_id:
        available = ", ".join(
            segmentation.GetNthSegment(i).GetName()
            for i in range(segmentation.GetNumberOfSegments())
        )
        raise PrimageInputError(
            f"segmentation {node_label(segmentation_node)} has no segment {segment!r} "
            f"(segments: {available})"
        )
    return [segment_id]


def mask_from_node(node, reference_volume_node, segment: str | None = None) -> sitk.Image:
    """Binary UInt8 mask (0/1) on the voxel grid of ``reference_volume_node``.

    ``node`` is a labelmap (or scalar) volume node, where every non-zero voxel is inside, or
    a segmentation node, where ``segment`` (an ID or a name) is used, or the union of all
    segments when it is None. Different grids and parent transforms are handled by
    nearest-neighbour resampling. An empty result is refused.
    """
    if node is None:
        raise PrimageInputError("no mask node given")
    geometry = _geometry_from_volume_node(reference_volume_node)
    if not node.IsA("vtkMRMLSegmentationNode") and not node.IsA("vtkMRMLScalarVolumeNode"):
        raise PrimageInputError(
            f"mask {node_label(node)} must be a labelmap volume or a segmentation"
        )
    transform = _transform_between(node, reference_volume_node)
    mask = None
    if node.IsA("vtkMRMLSegmentationNode"):
        _check_segmentation_node(node)
        for segment_id in _segment_ids(node, segment):
            binary = segment_binary_image(node, segment_id)
            if binary is None:
                continue
            resampled = _resample_binary(binary, geometry, transform)
            mask = resampled if mask is None else sitk.Or(mask, resampled)
    else:
        if segment is not None:
            raise PrimageInputError(
                f"a segment was chosen but mask {node_label(node)} is a volume, not a segmentation"
            )
        binary = sitk.Cast(
            sitk.NotEqual(sitk_from_volume_node(node, role="mask"), 0), sitk.sitkUInt8
        )
        mask = _resample_binary(binary, geometry, transform)
    if mask is None or not np.any(sitk.GetArrayViewFromImage(mask)):
        raise PrimageInputError(
            f"mask {node_label(node)} is empty on the grid of {node_label(reference_volume_node)}"
        )
    return mask


#: Node reference role the Segment Editor sets to the volume a segmentation was made on.
REFERENCE_GEOMETRY_ROLE = "referenceImageGeometryRef"


def segmentations_made_on(volume_node) -> list:
    """Segmentation nodes whose reference geometry is ``volume_node`` (as the Segment Editor
    sets it) and that hold at least one segment, in name order."""
    scene = volume_node.GetScene()
    nodes = [
        scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
    ]
    made_on = [
        node
        for node in nodes
        if node.GetNodeReference(REFERENCE_GEOMETRY_ROLE) is volume_node
        and node.GetSegmentation().GetNumberOfSegments() > 0
    ]
    return sorted(made_on, key=lambda node: node.GetName())


def segment_id_by_name(segmentation_node, segment_name: str | None = None) -> str:
    """ID of the segment called ``segment_name`` (default: the first segment); a missing
    segment is refused naming the segmentation."""
    segmentation = segmentation_node.GetSegmentation()
    if not segment_name:
        if segmentation.GetNumberOfSegments() == 0:
            raise PrimageInputError(f"segmentation {node_label(segmentation_node)} is empty")
        return segmentation.GetNthSegmentID(0)
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        raise PrimageInputError(
            f"segmentation {node_label(segmentation_node)} has no segment {segment_name!r}"
        )
    return segment_id
