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


def _label_image(
    segmentation_node, reference: sitk.Image, role: str, segment: str | None = None
) -> tuple[sitk.Image, dict]:
    """Segments as labels 1, 2, ... (segment order) on the series grid, and their names;
    only ``segment`` (a segment name or ID) when given."""
    images = label_images_from_segmentation(segmentation_node, reference=reference)
    if segment:
        segmentation = segmentation_node.GetSegmentation()
        by_id = segmentation.GetSegment(segment)
        wanted = by_id.GetName() if by_id is not None else segment
        if wanted not in images:
            raise PrimageInputError(
                f"{role} {node_label(segmentation_node)} has no segment {segment!r}"
            )
        images = {wanted: images[wanted]}
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
    tumour_segment: str | None = None,
    habitat_nodes: Mapping[str, object] | None = None,
    map_nodes: Mapping[str, object] | None = None,
    tumour_algorithm: str = "SEMIAUTOMATIC",
    deflate: bool = False,
) -> tuple[ExportResult, list[str]]:
    """Write result nodes as DICOM objects into ``output_folder`` (as ``primage dicom export``).

    ``source``: the source series (folder, list of files or :class:`SourceSeries`);
    ``tumour_node``: segmentation node, each non-overlapping segment one label of the tumour
    SEG and one measurement group of the SR (only ``tumour_segment``, a segment name or
    ID, when given); ``habitat_nodes``: FCF parameter (``adc``,
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
        tumour, names = _label_image(tumour_node, reference, "tumour", tumour_segment)
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


def _folder_and_pseudonym(output_folder, pseudonym: str) -> Path:
    if not str(output_folder or "").strip():
        raise PrimageInputError("choose the output folder for the DICOM objects")
    if not (pseudonym or "").strip():
        raise PrimageInputError("give the patient's pseudonym (PatientName / PatientID)")
    return Path(output_folder)


def export_kinetics_result(
    result,
    analysis: str,
    source_node,
    files_for_series: Callable[[str], Iterable[str]],
    output_folder: str | Path,
    *,
    pseudonym: str,
    tumour_node=None,
    tumour_segment: str | None = None,
) -> tuple[ExportResult, list[str]]:
    """The nodes of one Kinetics analysis (:class:`primage.mrml.kinetics.KineticsNodes`) as
    DICOM: its maps as Parametric Maps, its habitats (Fit-Cluster-Fit) as a SEG, and the
    tumour (``tumour_node``, optional) as a SEG with the SR of its volume and map values.
    ``source_node``: the series the maps lie on, loaded from DICOM (the analysed series)."""
    folder = _folder_and_pseudonym(output_folder, pseudonym)
    if result is None or not (result.volumes or result.segmentation is not None):
        raise PrimageInputError("run an analysis first: there is no result to export")
    parameter = {"fcf_adc": "adc", "fcf_iauc60": "iauc60"}.get(analysis)
    maps = {}
    for name, node in result.volumes.items():
        # Fit-Cluster-Fit's confidence volume is the project's fcf_<p>_confidence map.
        maps[f"fcf_{parameter}_confidence" if parameter and name == "confidence" else name] = node
    habitats = {parameter: result.segmentation} if parameter and result.segmentation else {}
    return export_result_nodes(
        source_files_of_node(source_node, files_for_series),
        folder,
        pseudonym=pseudonym,
        tumour_node=tumour_node,
        tumour_segment=tumour_segment,
        habitat_nodes=habitats,
        map_nodes=maps,
    )


def export_pipeline_result(
    result,
    source_node,
    files_for_series: Callable[[str], Iterable[str]],
    output_folder: str | Path,
    *,
    pseudonym: str,
) -> tuple[ExportResult, list[str]]:
    """The nodes of "process this case" (:class:`primage.mrml.pipeline.PipelineNodes`) as
    DICOM: tumour and habitat SEGs, the kinetic maps as Parametric Maps and the SR.
    ``source_node``: the reference volume as loaded from DICOM (results lie on its grid)."""
    folder = _folder_and_pseudonym(output_folder, pseudonym)
    if result is None or (result.segmentation is None and not result.maps):
        raise PrimageInputError("process the case first: there is no result to export")
    return export_result_nodes(
        source_files_of_node(source_node, files_for_series),
        folder,
        pseudonym=pseudonym,
        tumour_node=result.segmentation,
        habitat_nodes=dict(result.habitats),
        map_nodes=dict(result.maps),
    )


def describe_export(result: ExportResult, skipped: Sequence[str]) -> str:
    """One line for a module's status label: what was written where, and what was not."""
    kinds = {"seg": "SEG", "pm": "Parametric Map", "sr": "SR"}
    counts: dict[str, int] = {}
    for obj in result.objects:
        counts[kinds.get(obj.kind, obj.kind)] = counts.get(kinds.get(obj.kind, obj.kind), 0) + 1
    text = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    text = f"Wrote {text} to {result.manifest.parent}"
    if skipped:
        text += "; not exported: " + "; ".join(skipped)
    return text + "."
