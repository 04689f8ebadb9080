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

:func:`export_result_nodes` writes a whole result set at once (tumour SEG, habitat SEGs,
Parametric Maps and the TID 1500 SR with tumour volume and ROI values) with the engine's
:func:`primage.dicom.export.export_results`, as ``primage dicom export`` does; the Kinetics
and Pipeline modules' "Export to DICOM" call it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.dicom.export import (
    MAPS,
    ExportResult,
    Segment,
    SourceSeries,
    check_pseudonym,
    encode,
    export_results,
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


def source_files_of_node(node, files_for_series: Callable[[str], Iterable[str]]) -> list[str]:
    """The DICOM files of the series ``node`` was loaded from (``files_for_series``: in
    Slicer ``slicer.dicomDatabase.filesForSeries``)."""
    from primage.mrml.dicom import series_uid_of_node

    if node is None:
        raise PrimageInputError("select the source series (a volume loaded from DICOM)")
    uid = series_uid_of_node(node)
    if not uid:
        raise PrimageInputError(
            f"{node_label(node)} was not loaded from DICOM (no series UID); load the source "
            "series with the DICOM module"
        )
    files = [str(f) for f in files_for_series(uid)]
    if not files:
        raise PrimageInputError(f"the DICOM database has no files of {node_label(node)}'s series")
    return files


def _label_image(segmentation_node, reference: sitk.Image, role: str) -> tuple[sitk.Image, dict]:
    """Segments as labels 1, 2, ... (segment order) on the series grid, and their names."""
    images = label_images_from_segmentation(segmentation_node, reference=reference)
    labels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    names: dict[int, str] = {}
    for name, (mask, _color) in images.items():
        inside = sitk.GetArrayFromImage(mask) > 0
        if not inside.any():
            continue
        if (labels[inside] > 0).any():
            raise PrimageInputError(
                f"segments of {role} {node_label(segmentation_node)} overlap; export it with "
                "export_segmentation_node (a SEG without the report)"
            )
        names[len(names) + 1] = name
        labels[inside] = len(names)
    if not names:
        raise PrimageInputError(
            f"{role} {node_label(segmentation_node)} has no voxel on the source series' grid"
        )
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return image, names


def export_result_nodes(
    source,
    output_folder: str | Path,
    *,
    pseudonym: str,
    tumour_node=None,
    habitat_nodes: Mapping[str, object] | None = None,
    map_nodes: Mapping[str, object] | None = None,
    tumour_algorithm: str = "SEMIAUTOMATIC",
    deflate: bool = False,
) -> tuple[ExportResult, list[str]]:
    """Write result nodes as DICOM objects into ``output_folder`` (as ``primage dicom export``).

    ``source``: the source series (folder, list of files or :class:`SourceSeries`);
    ``tumour_node``: segmentation node, each non-overlapping segment one label of the tumour
    SEG and one measurement group of the SR; ``habitat_nodes``: FCF parameter (``adc``,
    ``iauc60``) -> habitat segmentation node; ``map_nodes``: map name (a key of
    :data:`~primage.dicom.export.MAPS`) -> volume node on the series grid. Returns the
    engine's :class:`ExportResult` and a reason for each map left out (a name without a
    DICOM code). Nothing is interpolated: a volume off the series grid is refused.
    """
    series = source_series(source)
    pseudonym = check_pseudonym(pseudonym, series)
    reference = series.reference
    skipped: list[str] = []
    maps = {}
    for name, node in (map_nodes or {}).items():
        if node is None:
            continue
        if name not in MAPS:
            skipped.append(f"{name}: no DICOM quantity code for this map")
            continue
        image = sitk_from_volume_node(node, world=True, role=f"map {name}")
        maps[name] = sitk.Cast(image, sitk.sitkFloat32)
    tumour, names = (None, None)
    if tumour_node is not None:
        tumour, names = _label_image(tumour_node, reference, "tumour")
    with tempfile.TemporaryDirectory(prefix="primage-dicom-export-") as temporary:
        folder = Path(temporary)
        habitats = []
        for parameter, node in (habitat_nodes or {}).items():
            if node is None:
                continue
            labels, _ = _label_image(node, reference, f"{parameter} habitats")
            path = folder / f"fcf_{parameter}_habitats.nii.gz"
            sitk.WriteImage(labels, str(path))
            habitats.append(path)
        # The exporter reads a folder: links to the series' files only.
        from primage.pipeline.dicom_out import staged_source

        files = [Path(ds.filename) for ds in series.datasets]
        result = export_results(
            staged_source(files, folder / "source"),
            output_folder,
            pseudonym=pseudonym,
            series_uid=series.series_uid,
            tumour=tumour,
            tumour_names=names,
            tumour_algorithm=tumour_algorithm,
            habitats=habitats,
            maps=maps,
            deflate=deflate,
        )
    return result, skipped
