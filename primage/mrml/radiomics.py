"""Radiomic features of volume nodes x segments into table nodes (the logic behind the module).

Regions come from a segmentation node (each selected segment, put on each volume's voxel
grid by Slicer's nearest-neighbour resampler, parent transforms included) or a labelmap
volume node (each non-zero label, called "label N"). One table row per (volume, segment):
``image`` (the volume's name), ``segment``, the pyradiomics features, ``error``.
Diagnostics go to a second table node, to extra columns, or nowhere.

Two ways to run: :func:`extract_features_from_nodes` works in this process (scripts,
tests); :func:`start_extraction_job` and :func:`start_robustness_job` write the voxels to
a temporary folder and run the engine in a separate Python process
(:mod:`primage.mrml.jobs`), which a GUI polls (:meth:`RadiomicsJob.poll`) and can
cancel (:meth:`RadiomicsJob.cancel`) while it stays responsive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from primage.errors import PrimageInputError
from primage.mrml.jobs import BackgroundJob, new_job_folder, write_job_image
from primage.mrml.segmentations import (
    label_images_from_segmentation,
    segment_id_by_name,
    segmentations_made_on,
)
from primage.mrml.tables import rows_from_table_node, table_node_from_rows
from primage.mrml.volumes import check_scalar_volume_node, node_label, sitk_from_volume_node
from primage.progress import ProgressCallback
from primage.radiomics.extraction import (
    Region,
    build_tasks,
    check_label_map,
    result_rows,
    run_tasks,
)
from primage.radiomics.harmonize import combat
from primage.radiomics.params import load_params
from primage.radiomics.robustness import ICC_COLUMNS, Case, robustness
from primage.radiomics.tables import read_csv, to_float, write_csv

DIAGNOSTICS_MODES = ("table", "columns", "none")


# --- regions ------------------------------------------------------------------------------


def _segment_keys(segmentation_node, segment_ids: Sequence[str] | None) -> list[tuple[str, str]]:
    """(segment ID, key of label_images_from_segmentation) of the selected segments."""
    segmentation = segmentation_node.GetSegmentation()
    all_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(i).GetName() for i in all_ids]
    wanted = list(all_ids) if not segment_ids else list(segment_ids)
    keys = []
    for segment_id in wanted:
        if segment_id not in all_ids:
            by_name = [i for i, n in zip(all_ids, names, strict=True) if n == segment_id]
            if not by_name:
                raise PrimageInputError(
                    f"segmentation {node_label(segmentation_node)} has no segment "
                    f"{segment_id!r} (segments: {', '.join(names)})"
                )
            segment_id = by_name[0]
        name = segmentation.GetSegment(segment_id).GetName()
        keys.append((segment_id, name if names.count(name) == 1 else f"{name} [{segment_id}]"))
    return keys


def regions_for_volume(mask_node, volume_node, segment_ids: Sequence[str] | None = None):
    """Regions (name, binary or label image on the volume's grid, label) of a mask node.

    ``mask_node``: a segmentation (each selected segment; all when ``segment_ids`` is
    None; IDs or names) or a labelmap volume (every non-zero label, or the labels given
    as ``segment_ids`` like ``"3"``). An empty segment gives an empty mask: its row gets
    an error, the other rows are still computed.
    """
    check_scalar_volume_node(volume_node, role="volume")
    if mask_node is None:
        raise PrimageInputError("no segmentation or labelmap selected")
    if mask_node.IsA("vtkMRMLSegmentationNode"):
        keys = _segment_keys(mask_node, segment_ids)
        images = label_images_from_segmentation(mask_node, reference=volume_node)
        return [Region(key, images[key][0], 1) for _, key in keys]
    if mask_node.IsA("vtkMRMLScalarVolumeNode"):
        labels_image = sitk_from_volume_node(mask_node, role="labelmap")
        present = check_label_map(labels_image, role=f"labelmap {node_label(mask_node)}")
        on_grid = _labelmap_on_volume(mask_node, labels_image, volume_node)
        wanted = [int(s) for s in segment_ids] if segment_ids else present
        return [Region(f"label {label}", on_grid, int(label)) for label in wanted]
    raise PrimageInputError(
        f"{node_label(mask_node)} is neither a segmentation nor a labelmap volume"
    )


def _labelmap_on_volume(mask_node, labels_image: sitk.Image, volume_node) -> sitk.Image:
    """A labelmap node's labels on a volume's grid (nearest neighbour, transforms included)."""
    from primage.mrml.segmentations import (
        _geometry_from_volume_node,
        _transform_between,
        oriented_image_from_sitk,
        sitk_from_oriented_image,
    )

    geometry = _geometry_from_volume_node(volume_node)
    resampled = slicer.vtkOrientedImageData()
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        oriented_image_from_sitk(sitk.Cast(labels_image, sitk.sitkInt32)),
        geometry,
        resampled,
        False,
        False,
        _transform_between(mask_node, volume_node),
        0,
    )
    if not ok:
        raise PrimageInputError("could not resample the labelmap onto the volume grid")
    return sitk.Cast(sitk_from_oriented_image(resampled), sitk.sitkUInt32)


def _check_volumes(volume_nodes) -> list:
    volume_nodes = [node for node in (volume_nodes or []) if node is not None]
    if not volume_nodes:
        raise PrimageInputError("no volume selected")
    names = [node.GetName() for node in volume_nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PrimageInputError(f"two volumes are called {duplicates[0]!r}; rename one")
    for node in volume_nodes:
        check_scalar_volume_node(node, role="volume")
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise PrimageInputError(f"{node_label(node)} is a labelmap, not an image to measure")
    return volume_nodes


# --- tables ---------------------------------------------------------------------------------


def _numeric_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """CSV text cells as numbers where they are numbers (so table columns are numeric).

    An empty cell of a number column (a failed row's features) becomes missing (NaN in
    the table), not text, so the column stays numeric.
    """
    converted = []
    for row in rows:
        out = {}
        for key, value in row.items():
            if key in _TEXT_COLUMNS or not isinstance(value, str):
                out[key] = value
            elif value.strip() == "":
                out[key] = None
            else:
                number = to_float(value)
                out[key] = value if number is None else number
        converted.append(out)
    return converted


_TEXT_COLUMNS = {"image", "segment", "label", "case", "repetition", "error", "class", "feature"}


def _tables(rows, diagnostics, scene, name, diagnostics_mode, table_node, diagnostics_node):
    if diagnostics_mode == "columns":
        rows = [{**row, **side} for row, side in zip(rows, diagnostics, strict=True)]
    table = table_node_from_rows(rows, scene, name=name, node=table_node)
    side_table = None
    if diagnostics_mode == "table":
        side_table = table_node_from_rows(
            diagnostics, scene, name=f"{name} diagnostics", node=diagnostics_node
        )
    return table, side_table


def extract_features_from_nodes(
    volume_nodes: Sequence,
    mask_node,
    segment_ids: Sequence[str] | None = None,
    *,
    preset: str | None = None,
    params_file: str | os.PathLike | None = None,
    modalities: Mapping[str, str] | None = None,
    table_node=None,
    diagnostics: str = "table",
    diagnostics_node=None,
    workers: int | None = 1,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
):
    """Features of every (volume, segment) pair into a table node; returns ``(table, diagnostics)``.

    ``diagnostics``: ``"table"`` (a second table node "<name> diagnostics", returned),
    ``"columns"`` (extra columns of the feature table) or ``"none"``. ``workers``: worker
    processes (default 1: in this process; None: one per CPU). The table is created in
    the volumes' scene unless ``table_node`` is given.
    """
    if diagnostics not in DIAGNOSTICS_MODES:
        raise PrimageInputError(f"diagnostics must be one of {', '.join(DIAGNOSTICS_MODES)}")
    volume_nodes = _check_volumes(volume_nodes)
    scene = volume_nodes[0].GetScene()
    if scene is None:
        raise PrimageInputError(f"volume {node_label(volume_nodes[0])} is not in a scene")
    parameters = load_params(preset if params_file is None else None, params_file)
    tasks = []
    for volume_node in volume_nodes:
        image = sitk_from_volume_node(volume_node, role="volume")
        regions = regions_for_volume(mask_node, volume_node, segment_ids)
        explicit = dict(modalities or {})
        tasks += build_tasks(
            {volume_node.GetName(): image},
            regions,
            parameters,
            modalities={k: v for k, v in explicit.items() if k == volume_node.GetName()},
        )
    results = run_tasks(tasks, workers=workers, progress=progress, cancel=cancel)
    mode = "none" if diagnostics == "none" else "separate"
    rows, side = result_rows(results, region_column="segment", diagnostics=mode)
    return _tables(
        rows, side, scene, "Radiomics features", diagnostics, table_node, diagnostics_node
    )


# --- background jobs --------------------------------------------------------------------------


class RadiomicsJob(BackgroundJob):
    """A radiomics run in a separate process; poll it from a timer, cancel it, finish it.

    Create it with :func:`start_extraction_job` or :func:`start_robustness_job`. Its
    folder (temporary files and the output CSV) is removed by :meth:`cleanup` (called by
    :meth:`finish` and :meth:`cancel`).
    """

    label = "radiomics"

    def finish(self, table_node=None, diagnostics_node=None, diagnostics: str = "table"):
        """Table node(s) from a finished job: ``(table, diagnostics_or_None)``.

        Raises :class:`PrimageInputError` with the job's message when it failed.
        """
        try:
            self.finished_status()
            _, rows = read_csv(self.spec["output"], role="job output")
            if self.kind == "robustness":
                rows = _numeric_rows(rows)
                table = table_node_from_rows(
                    rows, self.scene, name="Radiomics robustness (ICC)", node=table_node
                )
                return table, None
            side = []
            if diagnostics != "none":
                _, side = read_csv(self.spec["diagnostics_output"], role="job diagnostics")
            rows = _numeric_rows(rows)
            return _tables(
                rows,
                side,
                self.scene,
                "Radiomics features",
                diagnostics,
                table_node,
                diagnostics_node,
            )
        finally:
            self.cleanup()


def start_extraction_job(
    volume_nodes: Sequence,
    mask_node,
    segment_ids: Sequence[str] | None = None,
    *,
    preset: str | None = None,
    params_file: str | os.PathLike | None = None,
    modalities: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> RadiomicsJob:
    """Start extracting (volume, segment) features in a separate process; returns the job.

    The parameters are validated here first, so a bad parameter file is refused at once.
    """
    volume_nodes = _check_volumes(volume_nodes)
    scene = volume_nodes[0].GetScene()
    load_params(preset if params_file is None else None, params_file)  # refuse bad ones now
    with new_job_folder("radiomics") as folder:
        images, pairs = {}, []
        for index, volume_node in enumerate(volume_nodes):
            name = volume_node.GetName()
            images[name] = write_job_image(
                sitk_from_volume_node(volume_node), folder / f"image{index}.nrrd"
            )
            for number, region in enumerate(
                regions_for_volume(mask_node, volume_node, segment_ids)
            ):
                pairs.append(
                    {
                        "image": name,
                        "name": region.name,
                        "label": region.label,
                        "mask": write_job_image(
                            region.mask, folder / f"image{index}_mask{number}.nrrd"
                        ),
                    }
                )
        # Each volume has its segments on its own grid: the spec lists (image, mask) pairs.
        spec = {
            "kind": "extract",
            "preset": preset if params_file is None else None,
            "params_file": str(params_file) if params_file is not None else None,
            "images": images,
            "pairs": pairs,
            "modalities": dict(modalities or {}),
            "workers": workers,
            "region_column": "segment",
            "output": str(folder / "features.csv"),
            "diagnostics_output": str(folder / "diagnostics.csv"),
        }
        return RadiomicsJob("extract", folder, spec, scene)


def robustness_cases_from_volumes(
    volume_nodes: Sequence, segment_name: str | None = None
) -> list[tuple[str, Any, list[tuple[Any, str]]]]:
    """Cases for the module's robustness section: one per volume.

    A case's masks are the segmentations made on that volume (their reference geometry
    volume, as the Segment Editor sets it), in name order; from each, the segment called
    ``segment_name`` (default: its first segment). Returns ``(name, volume, [(segmentation,
    segment ID), ...])`` per volume.
    """
    volume_nodes = _check_volumes(volume_nodes)
    cases = []
    for volume_node in volume_nodes:
        made_on = segmentations_made_on(volume_node)
        masks = [(node, segment_id_by_name(node, segment_name)) for node in made_on]
        cases.append((volume_node.GetName(), volume_node, masks))
    return cases


def _first_masks(cases, perturbations):
    # With perturbations a case's first segmentation is the one perturbed.
    if not perturbations:
        return list(cases)
    return [(name, volume, list(masks[:1])) for name, volume, masks in cases]


def _case_masks(volume_node, masks, folder: Path, index: int) -> list[str]:
    paths = []
    for number, (mask_node, segment_id) in enumerate(masks):
        region = regions_for_volume(mask_node, volume_node, [segment_id])[0]
        paths.append(write_job_image(region.mask, folder / f"case{index}_mask{number}.nrrd"))
    return paths


def start_robustness_job(
    cases: Sequence[tuple[str, Any, list[tuple[Any, str]]]],
    *,
    perturbations: Sequence[str] = (),
    preset: str | None = None,
    params_file: str | os.PathLike | None = None,
    workers: int | None = None,
) -> RadiomicsJob:
    """Start the ICC computation in a separate process; ``cases`` as from
    :func:`robustness_cases_from_volumes` (name, volume node, [(mask node, segment)])."""
    from primage.radiomics.robustness import check_cases, parse_perturbations

    perturbations = parse_perturbations(perturbations)
    cases = _first_masks(cases, perturbations)
    check_cases([Case(name, "", list(masks)) for name, _, masks in cases], perturbations)
    load_params(preset if params_file is None else None, params_file)
    if not cases:
        raise PrimageInputError("no case given")
    scene = cases[0][1].GetScene()
    with new_job_folder("radiomics") as folder:
        spec_cases = []
        for index, (name, volume_node, masks) in enumerate(cases):
            image = write_job_image(
                sitk_from_volume_node(volume_node), folder / f"case{index}.nrrd"
            )
            spec_cases.append(
                {
                    "name": name,
                    "image": image,
                    "masks": _case_masks(volume_node, masks, folder, index),
                    "modality": None,
                }
            )
        spec = {
            "kind": "robustness",
            "preset": preset if params_file is None else None,
            "params_file": str(params_file) if params_file is not None else None,
            "cases": spec_cases,
            "perturbations": list(perturbations),
            "workers": workers,
            "output": str(folder / "icc.csv"),
            "features_output": str(folder / "features.csv"),
        }
        return RadiomicsJob("robustness", folder, spec, scene)


def robustness_table_from_nodes(
    cases: Sequence[tuple[str, Any, list[tuple[Any, str]]]],
    *,
    perturbations: Sequence[str] = (),
    preset: str | None = None,
    params_file: str | os.PathLike | None = None,
    table_node=None,
    workers: int | None = 1,
    progress: ProgressCallback | None = None,
):
    """ICC table node (feature, icc, ci_low, ci_high, class) computed in this process."""
    if not cases:
        raise PrimageInputError("no case given")
    cases = _first_masks(cases, perturbations)
    parameters = load_params(preset if params_file is None else None, params_file)
    engine_cases = []
    for name, volume_node, masks in cases:
        image = sitk_from_volume_node(volume_node)
        regions = [
            regions_for_volume(mask_node, volume_node, [segment_id])[0]
            for mask_node, segment_id in masks
        ]
        engine_cases.append(Case(name, image, [r.mask for r in regions]))
    rows, _, _ = robustness(
        engine_cases,
        parameters=parameters,
        perturbations=perturbations,
        workers=workers,
        progress=progress,
    )
    scene = cases[0][1].GetScene()
    return table_node_from_rows(
        [{c: row[c] for c in ICC_COLUMNS} for row in rows],
        scene,
        name="Radiomics robustness (ICC)",
        node=table_node,
    )


# --- harmonisation and export -------------------------------------------------------------------


def harmonize_table_node(
    table_node, batch: str, covariates: Sequence[str] = (), *, output_node=None, scene=None
):
    """ComBat-harmonised copy of a cohort feature table node (new node unless given)."""
    rows = rows_from_table_node(table_node)
    table = table_node.GetTable()
    columns = [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    result = combat(rows, batch, covariates, columns=columns)
    scene = scene or table_node.GetScene()
    return table_node_from_rows(
        result.rows, scene, name=f"{table_node.GetName()} harmonised", node=output_node
    )


def export_table_csv(table_node, path: str | os.PathLike) -> Path:
    """Write a table node as CSV (atomically): the module's "Export CSV"."""
    rows = rows_from_table_node(table_node)
    table = table_node.GetTable()
    columns = [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    clean = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in rows
    ]
    return write_csv(clean, path, columns)
