"""Segmentation and volume nodes -> DICOM SEG and Parametric Maps (the engine's exporter).

The source series is given as its files (in Slicer
``slicer.dicomDatabase.filesForSeries(series_uid)``; :func:`primage.mrml.dicom.series_uid_of_node`
finds the UID of a node loaded from DICOM) or as a folder. Segments are taken on the
series' voxel grid with the segmentation bridge (:func:`label_images_from_segmentation`,
Slicer's nearest-neighbour resampler, parent transforms included); a volume node must
already lie on that grid (its voxels are not interpolated).

From Slicer's Python console::

    from primage.mrml.dicom import series_uid_of_node
    from primage.mrml.dicom_export import export_segmentation_node, export_volume_node
    files = slicer.dicomDatabase.filesForSeries(series_uid_of_node(t2wNode))
    export_segmentation_node(segNode, files, "/tmp/out/seg_tumour.dcm", pseudonym="P0001")
    export_volume_node(adcNode, "adc", files, "/tmp/out/pm_adc.dcm", pseudonym="P0001")

then import the folder into the DICOM database and send it to PACS with Slicer's DICOM module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.dicom.export import (
    Segment,
    SourceSeries,
    check_pseudonym,
    encode,
    parametric_map_dataset,
    read_source_files,
    read_source_series,
    segmentation_from_masks,
)
from primage.errors import PrimageInputError
from primage.io import write_bytes
from primage.mrml.segmentations import label_images_from_segmentation
from primage.mrml.volumes import node_label, sitk_from_volume_node


def source_series(source: str | Path | Sequence[str | Path] | SourceSeries) -> SourceSeries:
    """The source series from a folder, a list of its files, or as already read."""
    if isinstance(source, SourceSeries):
        return source
    if isinstance(source, (str, Path)):
        return read_source_series(source)
    files = list(source)
    if not files:
        raise PrimageInputError("the source series has no files (is it in the DICOM database?)")
    return read_source_files(files)


def export_segmentation_node(
    segmentation_node,
    source,
    output: str | Path,
    *,
    pseudonym: str,
    algorithm: str = "SEMIAUTOMATIC",
    deflate: bool = False,
) -> Path:
    """Write every non-empty segment of ``segmentation_node`` as one binary DICOM SEG file.

    Segments keep their names and colours (overlaps allowed); each is taken on the source
    series' grid. ``deflate``: lossless deflated transfer syntax. Returns the path written.
    """
    series = source_series(source)
    pseudonym = check_pseudonym(pseudonym, series)
    masks = []
    images = label_images_from_segmentation(segmentation_node, reference=series.reference)
    for number, (name, (mask, color)) in enumerate(images.items(), start=1):
        inside = sitk.GetArrayFromImage(mask) > 0
        if inside.any():
            masks.append((Segment(number, name, algorithm=algorithm, color=color), inside))
    if not masks:
        raise PrimageInputError(
            f"segmentation {node_label(segmentation_node)} has no voxel on the source series' grid"
        )
    dataset = segmentation_from_masks(
        series, masks, pseudonym=pseudonym, description=f"PRIMAGE {segmentation_node.GetName()}"
    )
    return write_bytes(encode(dataset, deflate=deflate), Path(output))


def export_volume_node(
    volume_node,
    map_name: str,
    source,
    output: str | Path,
    *,
    pseudonym: str,
    deflate: bool = False,
) -> Path:
    """Write a scalar volume node (a map on the source series' grid) as a Parametric Map.

    ``map_name`` is a key of :data:`primage.dicom.export.MAPS` (``adc``, ``ktrans``, ...),
    which fixes the coded quantity and UCUM unit. Values are stored as float32.
    """
    series = source_series(source)
    pseudonym = check_pseudonym(pseudonym, series)
    image = sitk_from_volume_node(volume_node, world=True, role=f"map {map_name}")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        image = sitk.Cast(image, sitk.sitkFloat32)
    dataset = parametric_map_dataset(series, image, map_name, pseudonym=pseudonym)
    return write_bytes(encode(dataset, deflate=deflate), Path(output))
