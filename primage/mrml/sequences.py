"""Sequence nodes of scalar volumes <-> series of SimpleITK images.

A diffusion series is stored with index name ``"b"`` and unit ``"s/mm2"``, a dynamic
series with ``"time"`` and ``"s"``. Index values are numbers, written with the shortest
text that reads back to the same float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer

from primage.errors import PrimageInputError
from primage.io import same_geometry, series_to_volumes, volumes_to_series
from primage.mrml.volumes import node_label, sitk_from_volume_node, volume_node_from_sitk


@dataclass
class VolumeSeries:
    """3D volumes on one grid with one index value each (b-value in s/mm^2, time in s, ...)."""

    volumes: list[sitk.Image]
    values: np.ndarray
    name: str = "time"
    unit: str = "s"

    def __post_init__(self) -> None:
        self.volumes = list(self.volumes)
        self.values = np.asarray(self.values, dtype=float).ravel()
        if not self.volumes:
            raise PrimageInputError("a series needs at least one volume")
        if len(self.values) != len(self.volumes):
            raise PrimageInputError(
                f"series has {len(self.volumes)} volumes but {len(self.values)} index values"
            )
        if not np.all(np.isfinite(self.values)):
            raise PrimageInputError(f"series index values must be finite numbers: {self.values}")

    @classmethod
    def from_image4d(
        cls, image: sitk.Image, values: Sequence[float], name: str = "time", unit: str = "s"
    ) -> VolumeSeries:
        """Split a 4D image (volumes along the 4th axis) into a series."""
        return cls(series_to_volumes(image), np.asarray(values, dtype=float), name, unit)

    def to_image4d(self) -> sitk.Image:
        """Join the volumes into one 4D image (4th-axis spacing 1; values are not stored)."""
        return volumes_to_series(self.volumes)


def format_index_value(value: float) -> str:
    """Shortest text for a numeric index value that reads back to the same float."""
    return np.format_float_positional(float(value), trim="-")


def sequence_node_from_series(
    series: VolumeSeries, scene, name: str = "series", node=None, *, labelmap: bool = False
):
    """Store a :class:`VolumeSeries` in a ``vtkMRMLSequenceNode`` (created unless given).

    Each volume becomes a scalar volume data node (copied into the sequence); an existing
    ``node`` is emptied first. Index values must be distinct; Slicer keeps the items sorted
    by index value, so a series read back comes in ascending order.
    """
    texts = [format_index_value(value) for value in series.values]
    if len(set(texts)) != len(texts):
        raise PrimageInputError(f"series index values must be distinct: {series.values.tolist()}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    else:
        if not node.IsA("vtkMRMLSequenceNode"):
            raise PrimageInputError(f"output node {node_label(node)} is not a sequence node")
        node.RemoveAllDataNodes()
        node.SetName(name)
    # Slicer treats numeric index values closer than a tolerance (0.001) as the same item.
    gaps = np.diff(np.sort(series.values))
    if gaps.size and gaps.min() <= node.GetNumericIndexValueTolerance():
        node.SetNumericIndexValueTolerance(float(gaps.min()) / 10.0)
    node.SetIndexName(series.name)
    node.SetIndexUnit(series.unit)
    node.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    for index, (volume, text) in enumerate(zip(series.volumes, texts, strict=True)):
        data_node = (
            slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
        )
        volume_node_from_sitk(volume, None, node=data_node, name=f"{name} {index}")
        node.SetDataNodeAtValue(data_node, text)  # the sequence keeps its own copy
    if node.GetNumberOfDataNodes() != len(texts):
        raise PrimageInputError(
            f"Slicer merged close index values of the series: {series.values.tolist()}"
        )
    return node


def series_from_sequence_node(node) -> VolumeSeries:
    """Read a sequence of scalar volumes into a :class:`VolumeSeries` (copies of the voxels).

    Refuses a sequence with no volumes, non-volume items, non-numeric index values or
    volumes on different grids.
    """
    if node is None or not node.IsA("vtkMRMLSequenceNode"):
        raise PrimageInputError(f"{node_label(node)} is not a sequence node")
    count = node.GetNumberOfDataNodes()
    if count == 0:
        raise PrimageInputError(f"sequence {node_label(node)} is empty")
    volumes, values = [], []
    for index in range(count):
        text = node.GetNthIndexValue(index)
        try:
            values.append(float(text))
        except ValueError:
            raise PrimageInputError(
                f"sequence {node_label(node)} has a non-numeric index value {text!r}"
            ) from None
        volume = sitk_from_volume_node(
            node.GetNthDataNode(index), role=f"item {index} of sequence '{node.GetName()}'"
        )
        if volumes and not same_geometry(volumes[0], volume):
            raise PrimageInputError(
                f"item {index} of sequence {node_label(node)} is on another voxel grid than item 0"
            )
        volumes.append(volume)
    return VolumeSeries(volumes, np.array(values), node.GetIndexName(), node.GetIndexUnit())


def add_sequence_browser(sequence_node, *, name: str | None = None, logic=None):
    """Create a sequence browser and its proxy volume (showing item 0) for a sequence node.

    In Slicer pass ``slicer.modules.sequences.logic()`` as ``logic``: it then also keeps
    the proxy in step with the selected item. Without it (``slicer-core``), a temporary
    logic registers the browser node class and fills the proxy once.
    """
    scene = sequence_node.GetScene()
    if scene is None:
        raise PrimageInputError("the sequence node is not in a scene")
    temporary = logic is None
    if temporary:
        logic = slicer.vtkSlicerSequencesLogic()
        logic.SetMRMLScene(scene)
    try:
        browser = scene.AddNewNodeByClass(
            "vtkMRMLSequenceBrowserNode", name or f"{sequence_node.GetName()} browser"
        )
        browser.SetAndObserveMasterSequenceNodeID(sequence_node.GetID())
        logic.UpdateProxyNodesFromSequences(browser)
    finally:
        if temporary:
            logic.SetMRMLScene(None)  # do not keep observing the scene
    return browser
